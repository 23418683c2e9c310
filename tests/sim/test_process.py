"""The process model: pauses queue inputs, crashes lose state, restarts rebuild, CPU queues."""

from __future__ import annotations

import functools

import pytest

from forehand.core import CoreDriver
from forehand.errors import ConfigError, LocalProtocolError
from forehand.sim import (
    ConnectionLost,
    ConnectionOpened,
    Link,
    NodeStart,
    NodeState,
    ProcessModel,
    Ramp,
    Simulator,
    Transport,
)
from forehand.sim.observations import NodeCrashed, NodeRestarted, Observed

from ._cores import RecorderCore
from ._helpers import recorder, recorder_sim, send_at

DATAGRAM_LINK = Link(transport=Transport.DATAGRAM, delay_us=1_000)


def test_pause_holds_inputs_and_timers_until_resume() -> None:
    """A paused node handles nothing; on resume it gets its messages in order, then its timer."""
    sim = Simulator(seed=3)
    sim.add_node("a", lambda start: RecorderCore(start.node_id))
    sim.add_node("b", lambda start: RecorderCore(start.node_id, deadlines=(50_000,)))
    sim.call_at(10_000, lambda: sim.pause("b"), label="pause")
    send_at(sim, "a", "b", [1], at_us=20_000)
    send_at(sim, "a", "b", [2], at_us=30_000)
    sim.call_at(100_000, lambda: sim.resume("b"), label="resume")
    sim.run(until_us=200_000)
    notices = (ConnectionOpened, ConnectionLost)
    received = [
        item for item in recorder(sim, "b").received if not isinstance(item.message, notices)
    ]
    assert [(item.kind, item.now_us) for item in received] == [
        ("message", 100_000),
        ("message", 100_000),
        ("timer", 100_000),
    ]
    assert recorder(sim, "b").notes() == [1, 2]


def test_crash_loses_the_core_and_restart_builds_a_fresh_one() -> None:
    """A crash drops the core and its inputs; a restart calls the factory with a new incarnation."""
    starts: list[NodeStart] = []

    def build(start: NodeStart) -> RecorderCore:
        starts.append(start)
        return RecorderCore(start.node_id)

    sim = Simulator(seed=4)
    sim.add_node("a", lambda start: RecorderCore(start.node_id))
    first = sim.add_node("b", build)
    seen: list[Observed] = []
    sim.add_observer(seen.append)
    sim.set_link("a", "b", DATAGRAM_LINK)
    send_at(sim, "a", "b", [1], at_us=0)
    sim.call_at(5_000, lambda: sim.crash("b"), label="crash")
    send_at(sim, "a", "b", [2], at_us=6_000)
    sim.call_at(10_000, lambda: sim.restart("b"), label="restart")
    send_at(sim, "a", "b", [3], at_us=20_000)
    result = sim.run(until_us=100_000)
    second = sim.core("b")
    assert isinstance(first, RecorderCore) and isinstance(second, RecorderCore)
    assert second is not first
    assert first.notes() == [1] and second.notes() == [3]
    assert [(start.incarnation, start.now_us) for start in starts] == [(0, 0), (1, 10_000)]
    assert [type(event.observation) for event in seen] == [NodeCrashed, NodeRestarted]
    assert result.counters["input-to-crashed-node"] == 1
    assert sim.node_state("b") is NodeState.UP


def test_illegal_process_transitions_raise() -> None:
    """Pausing a crashed node or resuming a running one is a programming error."""
    sim = recorder_sim("a")
    with pytest.raises(LocalProtocolError):
        sim.resume("a")
    sim.crash("a")
    with pytest.raises(LocalProtocolError):
        sim.pause("a")


def test_service_time_queues_inputs_behind_the_cpu() -> None:
    """With 1 ms of CPU per input, ten simultaneous messages finish 1 ms apart; load stretches."""
    for base_load, spacing_us in ((0.0, 1_000), (0.5, 2_000)):
        process = ProcessModel(service_time_us=1_000, base_load=base_load)
        sim = recorder_sim("a", "b", link=DATAGRAM_LINK, process=process)
        send_at(sim, "a", "b", range(10), at_us=0)
        sim.run(until_us=1_000_000)
        times = [item.now_us for item in recorder(sim, "b").messages()]
        # The sender's command costs CPU too, then the link adds 1 ms.
        assert times == [spacing_us + 1_000 + spacing_us * (k + 1) for k in range(10)]


def test_load_ramp_slows_the_node_and_shows_in_its_stats() -> None:
    """A load ramp to 0.75 quadruples service time at its peak, as process stats report."""
    sim = recorder_sim("a", "b", link=DATAGRAM_LINK, process=ProcessModel(service_time_us=1_000))
    sim.add_load_ramp("b", Ramp(start_us=0, peak_us=100_000, peak_value=0.75))
    send_at(sim, "a", "b", [1], at_us=200_000)
    stats: list[float] = []
    sim.call_at(200_000, lambda: stats.append(sim.process_stats("b").slowdown), label="probe")
    sim.run(until_us=1_000_000)
    assert stats == [4.0]
    # 1 ms of the sender's CPU, 1 ms on the link, then 4 ms of the loaded receiver's CPU.
    assert [item.now_us for item in recorder(sim, "b").messages()] == [206_000]


def test_inbox_overflow_resets_the_feeding_connection() -> None:
    """An inbox at its bound refuses more: the connection feeding it is reset."""
    process = ProcessModel(service_time_us=10_000, inbox_messages_max=5)
    sim = recorder_sim("a", "b", process=process)
    send_at(sim, "a", "b", range(20), at_us=0)
    result = sim.run(until_us=1_000_000)
    assert result.counters["inbox-overflow"] >= 1
    assert [loss.reason for loss in recorder(sim, "a").losses()] == ["receiver-overloaded"]
    # The connection's opened notice takes the first of the five inbox slots.
    assert recorder(sim, "b").notices()[0].message == ConnectionOpened(peer="a")
    assert recorder(sim, "b").notes() == [0, 1, 2, 3]


def test_store_requests_complete_in_order_after_their_latency() -> None:
    """Store results come back in submission order, each after the configured latency."""
    applied: list[object] = []

    def execute(request: object) -> object:
        applied.append(request)
        return ("done", request)

    process = ProcessModel(store_latency_us=2_000, store_jitter_us=5_000)
    sim = recorder_sim("a", process=process, executor=execute)

    def store(core: CoreDriver, now_us: int) -> None:
        assert isinstance(core, RecorderCore)
        for number in range(20):
            core.store(number)

    sim.command("a", store, at_us=1_000)
    sim.run(until_us=1_000_000)
    results = [item for item in recorder(sim, "a").received if item.kind == "store"]
    assert [item.message for item in results] == [("done", number) for number in range(20)]
    assert all(item.now_us >= 3_000 for item in results)
    assert applied == list(range(20))


def test_crash_lands_a_prefix_of_unfinished_store_requests() -> None:
    """Store requests in flight at a crash land as a seed-drawn prefix; the rest never happen."""
    outcomes: set[int] = set()
    for seed in range(12):
        applied: list[object] = []
        sim = recorder_sim("a", seed=seed, executor=applied.append)

        def store(core: CoreDriver, now_us: int) -> None:
            assert isinstance(core, RecorderCore)
            for number in range(5):
                core.store(number)

        sim.command("a", store, at_us=0)
        sim.call_at(500, functools.partial(sim.crash, "a"), label="crash")
        result = sim.run(until_us=100_000)
        assert applied == list(range(len(applied)))
        landed = result.counters.get("store-request-landed-at-crash", 0)
        assert landed == len(applied)
        assert landed + result.counters.get("store-request-lost-at-crash", 0) == 5
        outcomes.add(landed)
    assert len(outcomes) > 1


def test_store_request_without_executor_fails_the_run() -> None:
    """A node that emits store requests needs an executor; the run reports the mistake."""
    sim = recorder_sim("a")

    def store(core: CoreDriver, now_us: int) -> None:
        assert isinstance(core, RecorderCore)
        core.store("x")

    sim.command("a", store, at_us=0)
    result = sim.run(until_us=1_000)
    assert result.failure is not None and "no executor" in result.failure.message


def test_process_model_validation() -> None:
    """Process models refuse negative times and empty inboxes."""
    with pytest.raises(ConfigError):
        ProcessModel(service_time_us=-1)
    with pytest.raises(ConfigError):
        ProcessModel(inbox_messages_max=0)
