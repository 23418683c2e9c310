"""The network model: loss, duplicates, reordering, FIFO, partitions, ramps, bandwidth."""

from __future__ import annotations

import math

import pytest

from forehand.core import CoreDriver, NodeId
from forehand.core._driver import ConnectionCloseRequested, ConnectionOpened
from forehand.errors import ConfigError
from forehand.sim import (
    ConnectionLost,
    JitterDistribution,
    Link,
    PartitionDirection,
    Ramp,
    RampShape,
    Simulator,
    Transport,
)

from ._cores import Note, RecorderCore
from ._helpers import recorder, recorder_sim, send_at

DATAGRAM = Transport.DATAGRAM


def _within(observed: int, *, trials: int, probability: float, sigmas: float = 4.0) -> bool:
    expected = trials * probability
    spread = sigmas * math.sqrt(trials * probability * (1 - probability))
    return abs(observed - expected) <= spread


def test_datagram_loss_rate_is_within_statistical_bounds() -> None:
    """A 10% loss link delivers 90% of 20 000 datagrams, within four standard deviations."""
    trials = 20_000
    sim = recorder_sim("a", "b", link=Link(transport=DATAGRAM, loss_probability=0.1))
    send_at(sim, "a", "b", range(trials), at_us=0)
    result = sim.run(until_us=1_000_000)
    received = len(recorder(sim, "b").notes())
    assert _within(trials - received, trials=trials, probability=0.1)
    assert result.counters["datagram-lost"] == trials - received


def test_datagram_duplication_rate_is_within_statistical_bounds() -> None:
    """A 5% duplication link delivers about 5% extra copies, and only of messages sent."""
    trials = 10_000
    sim = recorder_sim("a", "b", link=Link(transport=DATAGRAM, duplicate_probability=0.05))
    send_at(sim, "a", "b", range(trials), at_us=0)
    sim.run(until_us=1_000_000)
    notes = recorder(sim, "b").notes()
    assert set(notes) == set(range(trials))
    assert _within(len(notes) - trials, trials=trials, probability=0.05)


def test_datagram_jitter_and_explicit_reordering_reorder_messages() -> None:
    """Datagrams overtake each other, both through jitter and through held-back messages."""
    jittery = recorder_sim("a", "b", link=Link(transport=DATAGRAM, delay_us=1_000, jitter_us=5_000))
    held = recorder_sim(
        "a",
        "b",
        link=Link(transport=DATAGRAM, reorder_probability=0.1, reorder_delay_us=20_000),
    )
    for sim in (jittery, held):
        for number in range(200):
            send_at(sim, "a", "b", [number], at_us=number * 1_000)
        sim.run(until_us=1_000_000)
        notes = recorder(sim, "b").notes()
        assert sorted(notes) == list(range(200))
        assert notes != list(range(200))
    assert held.counters["datagram-held-back"] > 0


def test_connection_is_fifo_without_duplicates_despite_jitter_and_loss() -> None:
    """A connection delivers every message once and in order, with losses turned into delay."""
    link = Link(
        delay_us=1_000,
        jitter_us=5_000,
        jitter_distribution=JitterDistribution.LOGNORMAL,
        loss_probability=0.2,
        retransmissions_max=30,
    )
    sim = recorder_sim("a", "b", link=link)
    for number in range(2_000):
        send_at(sim, "a", "b", [number], at_us=number * 100)
    result = sim.run(until_us=5_000_000)
    received = recorder(sim, "b").messages()
    assert [item.message.number for item in received] == list(range(2_000))  # type: ignore[attr-defined]
    times = [item.now_us for item in received]
    assert times == sorted(times)
    assert result.counters["retransmission"] > 0
    assert recorder(sim, "a").losses() == []


def test_connection_pays_a_handshake_on_first_message_only() -> None:
    """The first message of a connection waits one extra round trip; later ones do not."""
    sim = recorder_sim("a", "b", link=Link(delay_us=1_000))
    send_at(sim, "a", "b", [1], at_us=0)
    send_at(sim, "a", "b", [2], at_us=10_000)
    sim.run(until_us=100_000)
    times = [item.now_us for item in recorder(sim, "b").messages()]
    assert times == [3_000, 11_000]


def test_datagram_partition_drops_then_heals() -> None:
    """Datagrams across a partition are dropped; after it heals they flow again."""
    sim = recorder_sim("a", "b", link=Link(transport=DATAGRAM))
    sim.call_at(10_000, lambda: tokens.append(sim.start_partition(["a"], ["b"])), label="cut")
    tokens: list[int] = []
    send_at(sim, "a", "b", [1], at_us=20_000)
    sim.call_at(30_000, lambda: sim.end_partition(tokens[0]), label="heal")
    send_at(sim, "a", "b", [2], at_us=40_000)
    result = sim.run(until_us=100_000)
    assert recorder(sim, "b").notes() == [2]
    assert result.counters["datagram-partitioned"] == 1


def test_asymmetric_partition_cuts_one_direction_only() -> None:
    """A partition from side a to side b drops a->b traffic and lets b->a through."""
    sim = recorder_sim("a", "b", link=Link(transport=DATAGRAM))
    sim.start_partition(["a"], ["b"], direction=PartitionDirection.A_TO_B)
    send_at(sim, "a", "b", [1], at_us=0)
    send_at(sim, "b", "a", [2], at_us=0)
    sim.run(until_us=100_000)
    assert recorder(sim, "b").notes() == []
    assert recorder(sim, "a").notes() == [2]


def test_short_partition_only_delays_a_connection() -> None:
    """A connection cut for less than its timeout delivers everything, in order, after healing."""
    sim = recorder_sim("a", "b", connection_timeout_us=1_000_000)
    send_at(sim, "a", "b", [0], at_us=0)
    tokens: list[int] = []
    sim.call_at(10_000, lambda: tokens.append(sim.start_partition(["a"], ["b"])), label="cut")
    send_at(sim, "a", "b", [1, 2], at_us=20_000)
    send_at(sim, "a", "b", [3], at_us=30_000)
    sim.call_at(500_000, lambda: sim.end_partition(tokens[0]), label="heal")
    send_at(sim, "a", "b", [4], at_us=500_000)
    sim.run(until_us=2_000_000)
    received = recorder(sim, "b").messages()
    assert recorder(sim, "b").notes() == [0, 1, 2, 3, 4]
    assert all(item.now_us > 500_000 for item in received[1:])
    assert recorder(sim, "a").losses() == [] and recorder(sim, "b").losses() == []


def test_long_partition_resets_the_connection_at_both_ends() -> None:
    """A connection stalled past its timeout breaks: both ends are told, stalled data is lost."""
    sim = recorder_sim("a", "b", connection_timeout_us=200_000)
    send_at(sim, "a", "b", [0], at_us=0)
    tokens: list[int] = []
    sim.call_at(10_000, lambda: tokens.append(sim.start_partition(["a"], ["b"])), label="cut")
    send_at(sim, "a", "b", [1], at_us=20_000)
    sim.call_at(500_000, lambda: sim.end_partition(tokens[0]), label="heal")
    send_at(sim, "a", "b", [2], at_us=600_000)
    sim.run(until_us=2_000_000)
    assert recorder(sim, "b").notes() == [0, 2]
    for node_id, peer in (("a", "b"), ("b", "a")):
        losses = [
            item
            for item in recorder(sim, node_id).notices()
            if isinstance(item.message, ConnectionLost)
        ]
        assert [(item.message.peer, item.message.reason, item.now_us) for item in losses] == [  # type: ignore[attr-defined]
            (peer, "timeout", 220_000)
        ]


def test_sends_on_a_broken_connection_are_dropped_until_the_notice() -> None:
    """After a reset a sender's messages vanish until it is told; then a new connection works."""
    sim = recorder_sim("a", "b", link=Link(delay_us=1_000, reset_probability=1.0))
    send_at(sim, "a", "b", [1], at_us=0)
    sim.call_at(1, lambda: sim.set_link("a", "b", Link(delay_us=1_000)), label="stop resets")
    send_at(sim, "a", "b", [2], at_us=500)
    send_at(sim, "a", "b", [3], at_us=5_000)
    result = sim.run(until_us=100_000)
    assert recorder(sim, "b").notes() == [3]
    assert [loss.reason for loss in recorder(sim, "a").losses()] == ["reset"]
    # The reset came before the handshake finished, so b never learned of that connection.
    assert recorder(sim, "b").losses() == []
    assert result.counters["send-on-broken-connection"] == 1


class _SendsAgainOnLoss(RecorderCore):
    """Sends a Note (number 9) to the peer as soon as it handles the loss of its connection, as
    a client re-dials its manager."""

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        super().receive_message(message, source=source, now_us=now_us)
        if isinstance(message, ConnectionLost):
            self.send(source, Note(number=9))


def _reset_with_b_told_later() -> Simulator:
    """a sends b Note 1; at 20 ms their connection breaks, a told at once (it sends Note 9 as it
    handles the loss), b 50 ms later."""
    sim = recorder_sim("b", link=Link(delay_us=1_000))
    sim.add_node("a", lambda start: _SendsAgainOnLoss(start.node_id))
    send_at(sim, "a", "b", [1], at_us=0)

    def reset() -> None:
        network = sim._network
        connection = network._connections[("a", "b")]
        network.break_connection(connection, sim.now_us, "reset", notify={"a": 0, "b": 50_000})

    sim.call_at(20_000, reset, label="reset, b told later")
    return sim


def test_a_send_after_handling_the_loss_opens_a_new_connection_once_the_peer_is_told() -> None:
    """An end that handled its notice of a break and sends again while the other end's notice
    is still on its way: the send opens the next connection once that notice is delivered (a
    new socket, in a real network). It was dropped as a send on the broken connection, with no
    notice, and a client waited for its manager's WELCOME for ever (seed 16201118)."""
    sim = _reset_with_b_told_later()
    result = sim.run(until_us=200_000)
    assert recorder(sim, "b").notes() == [1, 9]
    messages = recorder(sim, "b").messages()
    (delivered,) = [item for item in messages if item.message == Note(number=9)]
    assert delivered.now_us > 70_000  # after b's notice (at 70 ms) and a new handshake
    assert result.counters.get("send-on-broken-connection", 0) == 0
    assert result.counters["send-after-break-waits-for-the-peer-notice"] == 1


@pytest.mark.parametrize("restarts", [False, True])
def test_what_a_crashed_end_sent_after_its_notice_is_not_delivered(restarts: bool) -> None:
    """The end that sent after handling its notice crashes (and restarts) before the other end
    is told: what it sent died with it, and its new incarnation is not handed a connection it
    never opened (a second reading found both)."""
    sim = _reset_with_b_told_later()
    sim.call_at(30_000, lambda: sim.crash("a"), label="crash a")
    if restarts:
        sim.call_at(40_000, lambda: sim.restart("a"), label="restart a")
    sim.run(until_us=200_000)
    assert recorder(sim, "b").notes() == [1]
    if restarts:
        received = recorder(sim, "a").received
        assert not any(isinstance(item.message, ConnectionOpened) for item in received)


def test_exhausted_retransmissions_break_the_connection() -> None:
    """A connection that loses every packet gives up after its retransmission bound."""
    sim = recorder_sim("a", "b", link=Link(loss_probability=1.0, retransmissions_max=3))
    send_at(sim, "a", "b", [1], at_us=0)
    result = sim.run(until_us=100_000)
    assert recorder(sim, "b").notes() == []
    assert [loss.reason for loss in recorder(sim, "a").losses()] == ["timeout"]
    assert result.counters["retransmissions-exhausted"] == 1


def test_crash_resets_connections_and_refuses_new_ones() -> None:
    """A crashed peer's connection resets (in-flight data lost); later sends are refused."""
    sim = recorder_sim("a", "b", link=Link(delay_us=1_000))
    send_at(sim, "a", "b", [0], at_us=0)
    send_at(sim, "a", "b", [1], at_us=10_000)
    sim.call_at(10_500, lambda: sim.crash("b"), label="crash")
    send_at(sim, "a", "b", [2], at_us=20_000)
    sim.run(until_us=100_000)
    losses = [
        item for item in recorder(sim, "a").notices() if isinstance(item.message, ConnectionLost)
    ]
    assert [(item.message.reason, item.now_us) for item in losses] == [  # type: ignore[attr-defined]
        ("peer-crashed", 11_500),
        ("refused", 22_000),
    ]
    assert sim.counters["in-flight-lost-to-reset"] == 1


def test_silent_crash_is_noticed_only_after_the_connection_timeout() -> None:
    """A dead host sends no reset: its peers learn through their connection timeout."""
    sim = recorder_sim("a", "b", connection_timeout_us=300_000)
    send_at(sim, "a", "b", [0], at_us=0)
    sim.call_at(10_000, lambda: sim.crash("b", silent=True), label="crash")
    sim.run(until_us=1_000_000)
    losses = [
        item for item in recorder(sim, "a").notices() if isinstance(item.message, ConnectionLost)
    ]
    assert [item.now_us for item in losses] == [310_000]


def test_delay_ramp_raises_latency_over_time() -> None:
    """A linear delay ramp adds nothing before it starts, half at mid-rise, all at its peak."""
    sim = recorder_sim("a", "b", link=Link(transport=DATAGRAM, delay_us=1_000))
    ramp = Ramp(start_us=1_000_000, peak_us=2_000_000, peak_value=100_000.0)
    sim.add_link_degradation("a", "b", delay_ramp=ramp)
    for at_us in (500_000, 1_500_000, 2_500_000):
        send_at(sim, "a", "b", [at_us], at_us=at_us)
    sim.run(until_us=3_000_000)
    latencies = [item.now_us - item.message.number for item in recorder(sim, "b").messages()]  # type: ignore[attr-defined]
    assert latencies == [1_000, 51_000, 101_000]


def test_exponential_ramp_rises_late() -> None:
    """An exponential ramp stays below a linear one until the peak, then both hold."""
    linear = Ramp(start_us=0, peak_us=100, peak_value=1.0)
    steep = Ramp(start_us=0, peak_us=100, peak_value=1.0, shape=RampShape.EXPONENTIAL)
    assert steep.value_at(50) < linear.value_at(50) / 2
    assert steep.value_at(100) == linear.value_at(100) == steep.value_at(10_000) == 1.0


def test_loss_ramp_loses_more_as_it_rises() -> None:
    """A loss ramp to 50% drops nothing before it starts and about half at its peak."""
    sim = recorder_sim("a", "b", link=Link(transport=DATAGRAM))
    sim.add_link_degradation(
        "a", "b", loss_ramp=Ramp(start_us=100_000, peak_us=200_000, peak_value=0.5)
    )
    send_at(sim, "a", "b", range(0, 2_000), at_us=50_000)
    send_at(sim, "a", "b", range(10_000, 12_000), at_us=300_000)
    sim.run(until_us=1_000_000)
    notes = recorder(sim, "b").notes()
    assert len([n for n in notes if n < 10_000]) == 2_000
    assert _within(2_000 - len([n for n in notes if n >= 10_000]), trials=2_000, probability=0.5)


def test_bandwidth_queues_large_messages() -> None:
    """At 1 MB/s a 100 kB message takes 100 ms to serialize, and a small one waits behind it."""
    link = Link(transport=DATAGRAM, delay_us=1_000, bandwidth_bytes_per_s=1_000_000)
    sim = recorder_sim("a", "b", link=link)
    send_at(sim, "a", "b", [1], at_us=0, padding="x" * 100_000)
    send_at(sim, "a", "b", [2], at_us=1, padding="x" * 1_000)
    sim.run(until_us=1_000_000)
    times = [item.now_us for item in recorder(sim, "b").messages()]
    assert times == [101_000, 102_000]


def test_bandwidth_queue_bound_drops_datagrams_and_resets_connections() -> None:
    """Bytes beyond the queue bound drop a datagram, or break a connection."""
    for transport in (Transport.DATAGRAM, Transport.CONNECTION):
        link = Link(transport=transport, bandwidth_bytes_per_s=1_000_000, queue_bytes_max=250_000)
        sim = recorder_sim("a", "b", link=link)
        send_at(sim, "a", "b", [1, 2, 3], at_us=0, padding="x" * 100_000)
        result = sim.run(until_us=1_000_000)
        assert recorder(sim, "b").notes() == ([1, 2] if transport is DATAGRAM else [])
        if transport is DATAGRAM:
            assert result.counters["datagram-queue-overflow"] == 1
        else:
            assert [loss.reason for loss in recorder(sim, "a").losses()] == ["send-queue-overflow"]


def test_link_validation_rejects_impossible_settings() -> None:
    """Links refuse probabilities outside [0, 1] and duplication on a connection."""
    with pytest.raises(ConfigError):
        Link(loss_probability=1.5)
    with pytest.raises(ConfigError):
        Link(duplicate_probability=0.1)
    with pytest.raises(ConfigError):
        Link(transport=DATAGRAM, reorder_probability=0.1)


def test_randomized_links_and_processes_are_valid_and_seeded() -> None:
    """Links and process models drawn from a generator validate, and repeat per seed."""
    import random

    from forehand.sim import ProcessModel

    for seed in range(20):
        for transport in Transport:
            assert Link.randomized(random.Random(seed), transport=transport) == Link.randomized(
                random.Random(seed), transport=transport
            )
        assert ProcessModel.randomized(random.Random(seed)) == ProcessModel.randomized(
            random.Random(seed)
        )


def test_each_direction_of_a_stalled_connection_resumes_on_its_own() -> None:
    """When only one direction's cut heals, that direction flows again, in order."""
    sim = recorder_sim("a", "b", connection_timeout_us=1_000_000)
    cut_a = sim.start_partition(["a"], ["b"], direction=PartitionDirection.A_TO_B)
    sim.start_partition(["a"], ["b"], direction=PartitionDirection.B_TO_A)
    send_at(sim, "a", "b", [1, 2], at_us=20_000)
    send_at(sim, "b", "a", [9], at_us=20_000)
    sim.call_at(100_000, lambda: sim.end_partition(cut_a), label="heal a->b")
    sim.run(until_us=500_000)
    assert recorder(sim, "b").notes() == [1, 2]
    assert all(item.now_us > 100_000 for item in recorder(sim, "b").messages())
    assert recorder(sim, "a").notes() == []


def test_connection_opened_reaches_each_end_before_any_frame() -> None:
    """Both ends hear ConnectionOpened after the handshake, and before any frame of the peer."""
    sim = recorder_sim("a", "b", link=Link(delay_us=1_000))
    send_at(sim, "a", "b", [1], at_us=0)
    send_at(sim, "b", "a", [2], at_us=500)
    sim.run(until_us=100_000)
    seen_by_a = [(type(item.message).__name__, item.now_us) for item in recorder(sim, "a").received]
    seen_by_b = [(type(item.message).__name__, item.now_us) for item in recorder(sim, "b").received]
    assert seen_by_b == [("ConnectionOpened", 1_000), ("Note", 3_000)]
    assert seen_by_a == [("ConnectionOpened", 2_000), ("Note", 2_001)]


def test_close_request_delivers_what_was_sent_then_tells_both_ends() -> None:
    """A close lets the closer's frames arrive, tells both ends, and drops the peer's in-flight."""
    sim = recorder_sim("a", "b", link=Link(delay_us=1_000, handshake_round_trips=0))
    send_at(sim, "a", "b", [1], at_us=0)
    send_at(sim, "b", "a", [9], at_us=5_000)

    def close(core: CoreDriver, now_us: int) -> None:
        assert isinstance(core, RecorderCore)
        core.send("b", Note(number=2))
        core.send("b", ConnectionCloseRequested(peer="b", error_code=1, reason="bad"))

    sim.command("a", close, at_us=5_500)
    send_at(sim, "a", "b", [3], at_us=20_000)
    sim.run(until_us=100_000)
    seen_by_a = [(repr(item.message), item.now_us) for item in recorder(sim, "a").received]
    seen_by_b = [(repr(item.message), item.now_us) for item in recorder(sim, "b").received]
    assert seen_by_a == [
        ("ConnectionOpened(peer='b', origin='')", 0),
        ("ConnectionLost(peer='b', reason='closed: bad')", 5_500),
        ("ConnectionOpened(peer='b', origin='')", 20_000),
    ]
    assert seen_by_b == [
        ("ConnectionOpened(peer='a', origin='')", 0),
        ("Note(number=1, padding='')", 1_000),
        ("Note(number=2, padding='')", 6_500),
        ("ConnectionLost(peer='a', reason='closed: bad')", 6_501),
        ("ConnectionOpened(peer='a', origin='')", 20_000),
        ("Note(number=3, padding='')", 21_000),
    ]
