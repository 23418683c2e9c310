"""Tests of log shipping between server cores: batches, losses, reconnects, trimming, snapshots."""

from __future__ import annotations

from collections import Counter
from itertools import count
from random import Random
from typing import TYPE_CHECKING, Any

import pytest

from forehand.core._driver import ConnectionOpened
from forehand.core._part import HandlerResult, PartSpec
from forehand.core._replication import Replication
from forehand.core._server_events import (
    ReplicaDivergenceDetected,
    SnapshotInstalled,
    StateNotEncodable,
)
from forehand.core.messages import LogAcknowledged, LogShipped, PartRef, SnapshotShipped
from forehand.placement import ServerMarkedDead, new_session_id

if TYPE_CHECKING:
    from tests.core._server_helpers import SPECS, Cluster, ref
else:
    from _server_helpers import SPECS, Cluster, ref

COUNTER = ref("counter")


def replica_position(cluster: Cluster, server: str) -> tuple[object, int]:
    """(state, applied seq) of `counter` on `server`."""
    part = cluster.server(server).part(COUNTER)
    assert part is not None
    return part.data, part.applied_seq


def write(cluster: Cluster, times: int) -> None:
    """`times` additions of 1 at s1."""
    for _ in range(times):
        cluster.request("s1", "counter")
    cluster.responses()


def test_batches_respect_log_batch_entries_max() -> None:
    """Ten writes travel in batches of at most three entries and arrive complete."""
    cluster = Cluster(log_batch_entries_max=3, replication_inflight_batches_max=8)
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=20)
    write(cluster, 10)
    cluster.router.advance(ms=20)
    sizes = [len(m.entries) for m in cluster.router.sent(LogShipped, source="s1") if m.entries]
    assert max(sizes) == 3
    assert sum(sizes) == 10
    assert replica_position(cluster, "s2") == (10, 10)


def test_lost_batch_resumes_from_the_last_acked_seq() -> None:
    """A dropped batch makes the replica ack its position; shipping resumes from there."""
    cluster = Cluster(log_batch_entries_max=2, replication_inflight_batches_max=4)
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=20)
    dropped: list[LogShipped] = []

    def drop_once(source: str, destination: str, message: object) -> bool:
        if isinstance(message, LogShipped) and message.entries and not dropped:
            dropped.append(message)
            return True
        return False

    cluster.router.filters.append(drop_once)
    write(cluster, 6)
    cluster.router.advance(ms=20)
    assert dropped and dropped[0].prev_seq == 0
    assert replica_position(cluster, "s2") == (6, 6)
    acks = [m.acked_seq for m in cluster.router.sent(LogAcknowledged, source="s2")]
    assert 0 in acks


def test_silent_loss_is_resent_after_the_retry_interval() -> None:
    """When every message of a round is lost, the primary resends after replication_retry_ms."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=20)
    cut = cluster.router.partition("s1", "s2")
    write(cluster, 3)
    cluster.router.advance(ms=20)
    cluster.router.heal(cut)
    cluster.router.advance(ms=100)
    assert replica_position(cluster, "s2") == (0, 0)
    cluster.router.advance(ms=500)
    assert replica_position(cluster, "s2") == (3, 3)


def test_reconnect_reprobes_and_catches_up() -> None:
    """After ConnectionLost the primary probes the replica again and ships what it lacks."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=20)
    cut = cluster.router.partition("s1", "s2")
    write(cluster, 4)
    cluster.router.advance(ms=20)
    cluster.router.heal(cut)
    probes_before = len(cluster.router.sent(LogShipped, source="s1"))
    cluster.router.disconnect("s1", "s2")
    cluster.router.advance(ms=20)
    shipped = cluster.router.sent(LogShipped, source="s1")[probes_before:]
    assert shipped[0].entries == ()
    assert replica_position(cluster, "s2") == (4, 4)


def test_primary_trims_what_every_replica_acked() -> None:
    """The log keeps only entries some replica has not acknowledged."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.router.advance(ms=20)
    write(cluster, 5)
    cluster.router.advance(ms=20)
    primary = cluster.server("s1").part(COUNTER)
    assert primary is not None and len(primary.log) == 0
    cut = cluster.router.partition("s1", "s3")
    write(cluster, 3)
    cluster.router.advance(ms=20)
    assert [entry.seq for entry in primary.log.entries()] == [6, 7, 8]
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    assert len(primary.log) == 0
    assert replica_position(cluster, "s3") == (8, 8)


def test_replica_behind_the_retained_log_gets_a_snapshot() -> None:
    """Beyond log_entries_max unacked entries, the lagging replica is sent the whole state."""
    cluster = Cluster(log_entries_max=4)
    cluster.place("counter", "s1", "s2", "s3")
    cluster.router.advance(ms=20)
    cut = cluster.router.partition("s1", "s3")
    write(cluster, 10)
    cluster.router.advance(ms=20)
    primary = cluster.server("s1").part(COUNTER)
    assert primary is not None and len(primary.log) <= 4
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    assert cluster.router.sent(SnapshotShipped, source="s1")
    (installed,) = cluster.events("s3", SnapshotInstalled)
    assert installed.log_index == 10
    assert replica_position(cluster, "s3") == (10, 10)
    replica = cluster.server("s3").part(COUNTER)
    assert replica is not None and replica.dedup.get(4) is not None


def test_non_deterministic_handler_is_reported_on_the_replica() -> None:
    """A replica whose re-execution answers differently reports a divergence."""
    calls = count()

    def drifting(state: Any, op: str, payload: bytes) -> HandlerResult:
        return HandlerResult(state=state, status=0, result=str(next(calls)).encode())

    specs = dict(SPECS, counter=PartSpec(handler=drifting, initial_state=lambda: 0))
    cluster = Cluster(specs=specs)
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=20)
    (divergence,) = cluster.events("s2", ReplicaDivergenceDetected)
    assert (divergence.log_index, divergence.detail) == (1, "result")


def test_a_peer_that_stays_down_is_probed_per_resend_time_not_per_lost_connection() -> None:
    """s2, replica of five parts s1 leads, dies; s1's dials to it fail every 100 ms (each a lost
    connection). s2 is tried with one message at the first loss and then only at its resend
    times (0.5 and 1 s apart): three messages in 3 s in all, where each part probed at its own
    resend times (fifteen) and, before that, at every loss (some thirty a part)."""
    cluster = Cluster()
    sessions = [new_session_id(now_ms=1_700_000_000_000 + n, rng=Random(n)) for n in range(5)]
    for session in sessions:
        cluster.place("counter", "s1", "s2", session=session)
    cluster.router.advance(ms=20)
    cluster.router.remove("s2")
    for _ in range(30):
        cluster.router.disconnect("s1", "s2", reason="refused")
        cluster.router.advance(ms=100)
    probes = Counter(
        message.ref.session_id
        for message in cluster.router.take("s2", LogShipped)
        if not message.entries
    )
    assert sum(probes.values()) == 3 and set(probes) <= set(sessions)


def test_a_peer_back_after_a_long_outage_is_shipped_to_at_once() -> None:
    """s2, replica of a part s1 leads, is down for 6 s (dials failing every 100 ms), so s1's
    resends back off to seconds apart; s2 restarts and s1's connection to it comes up: the
    entries reach s2 within a replication round, not at the next backed-off resend."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=20)
    write(cluster, 3)
    cluster.router.advance(ms=50)
    cluster.router.remove("s2")
    for _ in range(60):
        cluster.router.disconnect("s1", "s2", reason="refused")
        cluster.router.advance(ms=100)
    cluster.start("s2")
    cluster.publish_full(to=["s2"])
    s1 = cluster.server("s1")
    s1.receive_message(ConnectionOpened(peer="s2"), source="s2", now_us=cluster.router.now_us)
    cluster.router.advance(ms=50)
    assert replica_position(cluster, "s2") == (3, 3)


def test_parts_wait_for_a_peer_that_is_down_and_ship_when_it_is_back() -> None:
    """s2 replicates five parts s1 leads; its connection is lost and s1 keeps writing to them.
    While s2 is down, s1 ships nothing to it but its one message per resend time, however many
    parts wait (writes and resend times included); s3 still gets every write. When the
    connection opens, every waiting part ships at once and s2 catches up."""
    cluster = Cluster()
    sessions = [new_session_id(now_ms=1_700_000_000_000 + n, rng=Random(n)) for n in range(5)]
    for session in sessions:
        cluster.place("counter", "s1", "s2", "s3", session=session)
    cluster.router.advance(ms=20)
    cut = cluster.router.partition("s1", "s2")
    cluster.router.disconnect("s1", "s2", reason="reset")
    for session in sessions:
        cluster.request("s1", "counter", session=session)
    cluster.responses()
    cluster.router.advance(ms=1_600)
    to_s2 = [
        message
        for source, destination, message in cluster.router.dropped
        if (source, destination) == ("s1", "s2") and isinstance(message, LogShipped)
    ]
    assert len(to_s2) == 3  # at the loss, then 0.5 and 1 s later: one part's message each time
    for session in sessions:
        s3_part = cluster.server("s3").part(ref("counter", session))
        assert s3_part is not None and s3_part.applied_seq == 1
    cluster.router.heal(cut)
    s1 = cluster.server("s1")
    s1.receive_message(ConnectionOpened(peer="s2"), source="s2", now_us=cluster.router.now_us)
    cluster.router.advance(ms=50)
    for session in sessions:
        s2_part = cluster.server("s2").part(ref("counter", session))
        assert s2_part is not None and s2_part.applied_seq == 1


def test_an_answer_from_a_peer_that_is_down_brings_it_back() -> None:
    """A peer's acknowledgement shows it is reachable even before its connection's notice: the
    parts waiting for it ship at once."""
    cluster = Cluster()
    sessions = [new_session_id(now_ms=1_700_000_000_000 + n, rng=Random(n)) for n in range(3)]
    for session in sessions:
        cluster.place("counter", "s1", "s2", session=session)
    cluster.router.advance(ms=20)
    cluster.router.disconnect("s1", "s2", reason="reset")
    for session in sessions:
        cluster.request("s1", "counter", session=session)
    cluster.responses()
    # The one message at the loss reaches s2 (the link is fine) and its answer comes back.
    cluster.router.advance(ms=50)
    for session in sessions:
        part = cluster.server("s2").part(ref("counter", session))
        assert part is not None and part.applied_seq == 1


def test_a_replica_dropped_from_a_placement_ships_nothing_to_the_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A map that only drops a replica (a dead server's) from a part's placement leaves the
    streams to the other replicas as they were: the part is not even looked at by the next
    replication round, where a death on a small fleet used to have a survivor walk every part
    it leads."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.router.advance(ms=20)
    write(cluster, 2)
    cluster.router.advance(ms=50)
    shipped = len(cluster.router.sent(LogShipped, source="s1"))
    walked: list[PartRef] = []
    ship = Replication.ship

    def counted(self: Replication, part: Any, **kwargs: Any) -> Any:
        walked.append(part.ref)
        return ship(self, part, **kwargs)

    monkeypatch.setattr(Replication, "ship", counted)
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=1_000)
    assert walked == []
    assert len(cluster.router.sent(LogShipped, source="s1")) == shipped
    write(cluster, 1)
    cluster.router.advance(ms=20)
    primary = cluster.server("s1").part(COUNTER)
    assert primary is not None
    assert walked and replica_position(cluster, "s2") == (primary.data, primary.applied_seq)


def count_pending_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record each `Replication.pending` call (a part shipped while a peer is down asks which
    of its streams wait for it); the list the calls append to."""
    asked: list[int] = []
    pending = Replication.pending

    def counted(self: Replication, last_seq: int) -> Any:
        asked.append(last_seq)
        return pending(self, last_seq)

    monkeypatch.setattr(Replication, "pending", counted)
    return asked


def test_a_down_peer_the_map_declares_dead_is_no_longer_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """s2, replica of five parts s1 leads, is down; the failover's version marks it dead and
    drops it from the placements. s1 forgets it was down: the writes that follow ship to s3
    without asking each part which of its streams wait for s2 (after a failover, every part a
    survivor ships did), also when a dial to it fails again."""
    cluster = Cluster()
    sessions = [new_session_id(now_ms=1_700_000_000_000 + n, rng=Random(n)) for n in range(5)]
    for session in sessions:
        cluster.place("counter", "s1", "s2", "s3", session=session)
    cluster.router.advance(ms=20)
    cluster.router.remove("s2")
    cluster.router.disconnect("s1", "s2", reason="refused")
    cluster.router.advance(ms=100)
    asked = count_pending_calls(monkeypatch)
    cluster.request("s1", "counter", session=sessions[0])
    cluster.router.advance(ms=20)
    assert asked  # s2 is down: the part's streams are asked about
    cluster.publish(ServerMarkedDead(server_id="s2"))
    for session in sessions:
        cluster.place("counter", "s1", "s3", session=session)
    cluster.router.advance(ms=20)
    # A dial to it failing again does not make it a peer that is down again.
    cluster.router.disconnect("s1", "s2", reason="refused")
    asked.clear()
    for session in sessions:
        cluster.request("s1", "counter", session=session)
    cluster.router.advance(ms=20)
    assert asked == []
    for session in sessions:
        part = cluster.server("s3").part(ref("counter", session))
        assert part is not None and part.applied_seq == (2 if session == sessions[0] else 1)


def hand_off_to_a_dead_s2(
    cluster: Cluster, sessions: list[bytes], *, deadline_ms: int
) -> list[PartRef]:
    """s2 crashes; the map then moves each session's `counter` from s1 to s2 (replica s3) and
    s1 is assigned the handoff, whose dial to s2 is refused; returns the parts."""
    cluster.router.remove("s2")
    for session in sessions:
        cluster.place("counter", "s2", "s3", session=session)
    refs = [ref("counter", session) for session in sessions]
    cluster.assign_handoff(refs, source="s1", target="s2", deadline_ms=deadline_ms, to=["s1"])
    cluster.router.advance(ms=10)
    cluster.router.disconnect("s1", "s2", reason="refused")
    return refs


def test_sealed_streams_to_a_dead_handoff_target_are_tried_once_per_resend_time() -> None:
    """s1 hands five parts to s2, which dies before acknowledging the seals; the failover's
    version marks s2 dead and places the parts on s3 and s4, without s1. Until the handoff's
    deadline s1 keeps the parts, each with a sealed stream to s2: s2 stays a peer that is down
    while they do, so the dials that keep failing try it with one message per resend time, not
    with every part again (5 s: 3 messages; treated as a server the map does not list: 20)."""
    cluster = Cluster(("s1", "s2", "s3", "s4"))
    sessions = [new_session_id(now_ms=1_700_000_000_000 + n, rng=Random(n)) for n in range(5)]
    for session in sessions:
        cluster.place("counter", "s1", "s3", session=session)
    cluster.router.advance(ms=20)
    for session in sessions:
        cluster.request("s1", "counter", session=session)
    cluster.router.advance(ms=50)
    cluster.responses()
    refs = hand_off_to_a_dead_s2(cluster, sessions, deadline_ms=8_000)
    cluster.router.advance(ms=100)
    cluster.router.take("s2", LogShipped)
    cluster.prepare_failover(refs, to=["s1", "s3"])
    cluster.router.advance(ms=10)
    cluster.publish(ServerMarkedDead(server_id="s2"))
    for session in sessions:
        cluster.place("counter", "s3", "s4", session=session)
    cluster.router.advance(ms=10)
    for _ in range(50):
        cluster.router.disconnect("s1", "s2", reason="refused")
        cluster.router.advance(ms=100)
    assert len(cluster.router.take("s2", LogShipped)) <= 3


def test_a_dead_peer_is_down_no_more_once_its_last_sealed_stream_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, with a part s1 keeps leading (replicated on s3): once the handoff to the dead
    s2 has ended and its sealed streams with it, s2 is no longer down, and the writes s1 ships
    stop asking which of their streams wait for it."""
    cluster = Cluster(("s1", "s2", "s3", "s4"))
    kept = new_session_id(now_ms=1_700_000_000_100, rng=Random(100))
    cluster.place("counter", "s1", "s3", session=kept)
    sessions = [new_session_id(now_ms=1_700_000_000_000 + n, rng=Random(n)) for n in range(3)]
    for session in sessions:
        cluster.place("counter", "s1", "s3", session=session)
    cluster.router.advance(ms=20)
    refs = hand_off_to_a_dead_s2(cluster, sessions, deadline_ms=2_000)
    cluster.prepare_failover(refs, to=["s1", "s3"])
    cluster.publish(ServerMarkedDead(server_id="s2"))
    for session in sessions:
        cluster.place("counter", "s3", "s4", session=session)
    asked = count_pending_calls(monkeypatch)
    cluster.request("s1", "counter", session=kept)
    cluster.router.advance(ms=20)
    assert asked  # the sealed streams still go to s2: it is down
    for _ in range(100):
        cluster.router.disconnect("s1", "s2", reason="refused")
        cluster.router.advance(ms=100)
    asked.clear()
    cluster.request("s1", "counter", session=kept)
    cluster.router.advance(ms=20)
    assert asked == []
    part = cluster.server("s3").part(ref("counter", kept))
    assert part is not None and part.applied_seq == 2


def test_a_state_a_handler_left_unencodable_is_reported_and_breaks_no_link() -> None:
    """A lagging replica needs a snapshot of a state that holds 2**64 (a handler's overflow):
    the primary reports StateNotEncodable, keeps serving, and sends the snapshot once a write
    brings the state back within 64 bits (before, the encoder's OverflowError escaped the core
    at each acknowledgement and the runtime closed the link to the replica)."""
    cluster = Cluster(log_entries_max=4)
    cluster.place("counter", "s1", "s2", "s3")
    cluster.router.advance(ms=20)
    cut = cluster.router.partition("s1", "s3")
    write(cluster, 5)
    cluster.request("s1", "counter", payload=str(2**64).encode())
    cluster.responses()
    cluster.router.advance(ms=20)
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    reported = cluster.events("s1", StateNotEncodable)
    assert reported and (COUNTER, "s3") in {(e.ref, e.replica) for e in reported}
    assert "OverflowError" in reported[0].detail
    assert not cluster.router.sent(SnapshotShipped, source="s1")
    cluster.request("s1", "counter", payload=str(-(2**64)).encode())
    cluster.responses()
    cluster.router.advance(ms=5_000)
    assert cluster.router.sent(SnapshotShipped, source="s1")
    assert replica_position(cluster, "s3") == (5, 7)


def test_a_snapshot_past_the_bound_is_reported_not_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A part whose state and remembered answers pass SNAPSHOT_BYTES_MAX cannot be carried by
    one cluster message: a walkthrough's chat log of 40 MB failed at the transport ("body of
    81005052 bytes exceeds frame_bytes_max", a line per resend), its handoff timed out and a
    replica stayed empty. It is now StateNotEncodable naming the bound, and no snapshot goes."""
    from forehand.core import _replication

    monkeypatch.setattr(_replication, "SNAPSHOT_BYTES_MAX", 2)
    cluster = Cluster(log_entries_max=4)
    cluster.place("counter", "s1", "s2", "s3")
    cluster.router.advance(ms=20)
    cut = cluster.router.partition("s1", "s3")
    write(cluster, 5)
    cluster.request("s1", "counter", payload=b"1")
    cluster.responses()
    cluster.router.advance(ms=20)
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    reported = cluster.events("s1", StateNotEncodable)
    assert reported and (COUNTER, "s3") in {(e.ref, e.replica) for e in reported}
    assert "over the 2 one snapshot may carry" in reported[0].detail
    assert not cluster.router.sent(SnapshotShipped, source="s1")


def test_the_snapshot_bound_fits_a_cluster_frame() -> None:
    from forehand.core._replication import SNAPSHOT_BYTES_MAX
    from forehand.runtime.transport import CLUSTER_FRAME_BYTES_MAX

    # The message's other fields (ids, sequence numbers, the entries' framing) fit the rest.
    assert SNAPSHOT_BYTES_MAX <= CLUSTER_FRAME_BYTES_MAX - (1 << 20)
