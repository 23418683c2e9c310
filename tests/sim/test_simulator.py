"""The simulator loop: timers, determinism, trace digest, failures and observation dispatch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from forehand.core import CoreDriver, NodeId
from forehand.errors import LocalProtocolError
from forehand.sim import Simulator, SimulatorConfig
from forehand.sim.observations import MapVersionObserved, Observation, Observed, RarePathReached

from ._cores import PongObserved, RecorderCore
from ._helpers import recorder, recorder_sim, send_at
from .scenarios import build_log, build_ping_mesh

REPOSITORY = Path(__file__).resolve().parents[2]


def test_timers_fire_in_deadline_order_at_their_deadlines() -> None:
    """A core's deadlines fire in time order, each exactly when due."""
    sim = Simulator(seed=0)
    sim.add_node("a", lambda start: RecorderCore(start.node_id, deadlines=(5_000, 1_000, 3_000)))
    sim.run(until_us=10_000)
    assert [item.now_us for item in recorder(sim, "a").received] == [1_000, 3_000, 5_000]


def test_only_the_latest_deadline_counts() -> None:
    """When a core moves its deadline, the earlier one never fires."""
    sim = Simulator(seed=0)
    sim.add_node("a", lambda start: RecorderCore(start.node_id, deadlines=(10_000,)))

    def postpone(core: CoreDriver, now_us: int) -> None:
        assert isinstance(core, RecorderCore)
        core.pending_deadlines = [20_000]
        core.deadline_us = 20_000

    sim.command("a", postpone, at_us=5_000)
    sim.run(until_us=30_000)
    timers = [item.now_us for item in recorder(sim, "a").received if item.kind == "timer"]
    assert timers == [20_000]


def test_a_timer_that_never_advances_fails_the_run() -> None:
    """A core that keeps its deadline in the past after handling it is reported, not looped on."""

    class Stuck(RecorderCore):
        def handle_timer(self, *, now_us: int) -> None:
            self.deadline_us = now_us

    sim = Simulator(seed=0, config=SimulatorConfig(timer_spins_max=50))
    sim.add_node("a", lambda start: Stuck(start.node_id, deadlines=(1_000,)))
    result = sim.run(until_us=10_000)
    assert result.failure is not None
    assert result.failure.checker == "exception"
    assert "keeps its timer" in result.failure.message


def test_same_seed_same_digest_and_different_seeds_differ() -> None:
    """Two runs of one seed hash to the same digest; other seeds give other digests."""
    first = build_ping_mesh(7).run()
    again = build_ping_mesh(7).run()
    other = build_ping_mesh(8).run()
    assert first.ok and again.ok
    assert first.digest == again.digest
    assert (first.events, first.counters) == (again.events, again.counters)
    assert other.digest != first.digest


def test_digest_does_not_depend_on_the_hash_seed() -> None:
    """Two processes with different PYTHONHASHSEED replay a seed to the same digest."""
    digests: set[str] = set()
    for hash_seed in ("1", "2"):
        environment = dict(os.environ, PYTHONHASHSEED=hash_seed)
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "forehand.sim",
                "--import",
                "tests.sim.scenarios",
                "--scenario",
                "log-failover",
                "--seed",
                "3",
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPOSITORY,
            env=environment,
        )
        digests.update(line for line in completed.stdout.splitlines() if line.startswith("digest="))
    assert len(digests) == 1
    assert digests == {f"digest={build_log(3).run().digest}"}


def test_trace_lines_are_kept_on_request_and_match_the_digest() -> None:
    """A retained trace lists every input, and keeping it does not change the digest."""
    plain = build_log(2).run()
    traced_sim = build_log(2)
    traced_sim.retain_trace()
    traced = traced_sim.run()
    lines = traced_sim.trace_lines
    assert traced.digest == plain.digest
    assert lines[0] == "0 start s1 0"
    assert any(" crash s1 " in line for line in lines)


def test_unstable_repr_in_a_message_fails_the_run() -> None:
    """A message whose repr shows an object address cannot be replayed; the run says so."""
    sim = recorder_sim("a", "b")

    def send(core: CoreDriver, now_us: int) -> None:
        assert isinstance(core, RecorderCore)
        core.send("b", object())

    sim.command("a", send, at_us=0)
    result = sim.run(until_us=100_000)
    assert result.failure is not None
    assert "no stable repr" in result.failure.message


def test_a_core_exception_fails_the_run_with_its_traceback() -> None:
    """An exception raised by a core stops the run and is reported with where it happened."""

    class Fragile(RecorderCore):
        def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
            raise ValueError("bad input")

    sim = recorder_sim("a")
    sim.add_node("b", lambda start: Fragile(start.node_id))
    send_at(sim, "a", "b", [1], at_us=10_000)
    send_at(sim, "a", "b", [2], at_us=20_000)
    result = sim.run(until_us=100_000)
    assert result.failure is not None
    assert result.failure.message == "ValueError: bad input"
    assert "receive_message" in result.failure.details
    assert result.failure.time_us < 20_000


def test_event_budget_stops_a_livelock() -> None:
    """A run that exceeds its event budget fails instead of running forever."""
    sim = build_ping_mesh(1)
    sim.config = SimulatorConfig(duration_us=5_000_000, events_max=500)
    result = sim.run()
    assert result.failure is not None and result.failure.checker == "event-budget"
    assert result.events == 500


def test_a_simulator_runs_once() -> None:
    """Running a simulator twice is refused: replays build a fresh one."""
    sim = recorder_sim("a")
    sim.run(until_us=10)
    with pytest.raises(LocalProtocolError):
        sim.run(until_us=20)


def test_observers_see_observations_with_node_time_and_index() -> None:
    """Observers get every observation with the emitting node, the time and the event index."""
    sim = build_ping_mesh(2, duration_us=1_200_000)
    seen: list[Observed] = []
    sim.add_observer(seen.append)
    result = sim.run()
    pongs = [event for event in seen if isinstance(event.observation, PongObserved)]
    assert pongs
    assert all(event.node == event.observation.node for event in pongs)  # type: ignore[attr-defined]
    assert [event.index for event in seen] == sorted(event.index for event in seen)
    assert max(event.index for event in seen) <= result.events


def test_translator_maps_core_events_and_rare_paths_are_counted() -> None:
    """A translator turns raw core events into observations; rare paths land in the counters."""

    def translate(node_id: NodeId, event: object) -> Iterable[Observation]:
        if event == "bumped":
            return (
                MapVersionObserved(node=node_id, map_version=2),
                RarePathReached(node=node_id, name="bump"),
            )
        return ()

    sim = Simulator(seed=0, translate=translate)
    sim.add_node("a", lambda start: RecorderCore(start.node_id))
    seen: list[Observed] = []
    sim.add_observer(seen.append)

    def bump(core: CoreDriver, now_us: int) -> None:
        assert isinstance(core, RecorderCore)
        core.events.append("bumped")
        core.events.append("ignored")

    sim.command("a", bump, at_us=5)
    result = sim.run(until_us=10)
    assert [type(event.observation).__name__ for event in seen] == [
        "MapVersionObserved",
        "RarePathReached",
    ]
    assert result.counters == {"bump": 1}


def test_named_generators_derive_from_the_seed() -> None:
    """`sim.rng(name)` is the same stream for the same seed and name, another for another name."""
    first, second = Simulator(seed=5), Simulator(seed=5)
    assert first.rng("workload").random() == second.rng("workload").random()
    assert Simulator(seed=5).rng("faults").random() != Simulator(seed=5).rng("workload").random()
    assert Simulator(seed=6).rng("workload").random() != Simulator(seed=5).rng("workload").random()
