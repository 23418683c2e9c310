"""Tests of `forehand.core._replication`: probing, batching, acks, resends, snapshots, seals."""

from __future__ import annotations

from typing import Any

from forehand.core._part import HandlerResult, Part, PartSpec
from forehand.core._replication import Replication, Shipment
from forehand.core.messages import LogAcknowledged, LogShipped, PartRef, SnapshotShipped

REF = PartRef(session_id=b"s" * 16, part="counter")


def add(state: Any, op: str, payload: bytes) -> HandlerResult:
    """Adds the payload's integer to the state."""
    total = int(state) + int(payload)
    return HandlerResult(state=total, status=0, result=str(total).encode())


SPEC = PartSpec(handler=add, initial_state=lambda: 0)


def logs(shipments: list[tuple[str, Shipment]]) -> list[LogShipped]:
    """The `LogShipped` messages among shipments (asserting there is nothing else)."""
    out = [message for _, message in shipments if isinstance(message, LogShipped)]
    assert len(out) == len(shipments)
    return out


def primary_with(entries: int, *, log_entries_max: int = 64) -> Part:
    """A primary part that executed `entries` additions at epoch 1."""
    part = Part(ref=REF, spec=SPEC, epoch=1, log_entries_max=log_entries_max, dedup_entries_max=64)
    for request_id in range(1, entries + 1):
        part.execute(request_id=request_id, op="add", payload=b"1")
    return part


def replication(*, batch: int = 3, inflight: int = 2, retry_us: int = 1000) -> Replication:
    """A shipper with small bounds."""
    return Replication(batch_entries_max=batch, inflight_batches_max=inflight, retry_us=retry_us)


def ack(seq: int, *, epoch: int = 1, acked_epoch: int = 1, sealed: bool = False) -> LogAcknowledged:
    """A replica's acknowledgement of `seq`."""
    return LogAcknowledged(
        ref=REF, epoch=epoch, acked_seq=seq, acked_epoch=acked_epoch if seq else 0, sealed=sealed
    )


def test_new_stream_probes_first_and_only_once() -> None:
    """A new replica gets one empty probe at the last seq, not repeated while unanswered."""
    part = primary_with(5)
    shipper = replication()
    shipper.set_replicas(["r1"])
    (node, probe), *rest = shipper.ship(part, epoch=1, now_us=0)
    assert not rest
    assert node == "r1"
    assert isinstance(probe, LogShipped)
    assert (probe.prev_seq, probe.entries, probe.sealed) == (5, (), False)
    assert shipper.ship(part, epoch=1, now_us=10) == []


def test_batches_respect_size_and_inflight_bounds() -> None:
    """After a probe answered at 0, batches of 3 go out, at most 2 unacknowledged."""
    part = primary_with(10)
    shipper = replication()
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=1, now_us=0)
    assert shipper.on_ack(part, ack(0), source="r1").known
    batches = logs(shipper.ship(part, epoch=1, now_us=1))
    assert [(batch.prev_seq, len(batch.entries)) for batch in batches] == [(0, 3), (3, 3)]
    shipper.on_ack(part, ack(3), source="r1")
    more = logs(shipper.ship(part, epoch=1, now_us=2))
    assert [(batch.prev_seq, len(batch.entries)) for batch in more] == [(6, 3)]
    assert shipper.acked_max() == 3


def test_ack_below_inflight_resumes_from_acked_seq() -> None:
    """A replica that missed a batch acks what it has; shipping restarts from there."""
    part = primary_with(6)
    shipper = replication()
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(0), source="r1")
    shipper.ship(part, epoch=1, now_us=1)
    shipper.on_ack(part, ack(0), source="r1")
    resent = [message for _, message in shipper.ship(part, epoch=1, now_us=2)]
    assert isinstance(resent[0], LogShipped)
    assert resent[0].prev_seq == 0


def test_unacked_batch_is_resent_after_retry_interval() -> None:
    """Without any ack for `retry_us`, the stream resends from the last acked seq."""
    part = primary_with(4)
    shipper = replication(batch=10)
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(2), source="r1")
    first = shipper.ship(part, epoch=1, now_us=10)
    assert shipper.ship(part, epoch=1, now_us=500) == []
    again = shipper.ship(part, epoch=1, now_us=1010)
    assert first == again
    assert isinstance(again[0][1], LogShipped)
    assert again[0][1].prev_seq == 2


def test_a_silent_replica_is_resent_to_less_and_less_often() -> None:
    """A replica that never answers gets the probe again after retry_us, then 2, 4 and 8 times
    that (`RESEND_DOUBLINGS_MAX`), never less often; `resend_due_us` names each instant, and an
    answer brings the wait back to retry_us."""
    part = primary_with(4)
    shipper = replication(retry_us=1000)
    shipper.set_replicas(["r1"])
    sent_at = [0]
    assert len(shipper.ship(part, epoch=1, now_us=0)) == 1
    for wait_us in (1000, 2000, 4000, 8000, 8000):
        due_us = shipper.resend_due_us()
        assert due_us == sent_at[-1] + wait_us
        assert shipper.ship(part, epoch=1, now_us=due_us - 1) == []
        assert len(shipper.ship(part, epoch=1, now_us=due_us)) == 1
        sent_at.append(due_us)
    shipper.on_ack(part, ack(4), source="r1")
    assert shipper.resend_due_us() is None
    part.execute(request_id=99, op="add", payload=b"1")
    now_us = sent_at[-1] + 10
    assert len(shipper.ship(part, epoch=1, now_us=now_us)) == 1
    assert shipper.resend_due_us() == now_us + 1000


def test_replica_behind_retained_log_gets_snapshot() -> None:
    """A replica at 0 when the log starts at 5 receives the whole state, then entries."""
    part = primary_with(10, log_entries_max=6)
    shipper = replication()
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(0), source="r1")
    (_, snapshot), *_ = shipper.ship(part, epoch=1, now_us=1)
    assert isinstance(snapshot, SnapshotShipped)
    assert (snapshot.seq, snapshot.seq_epoch) == (10, 1)
    assert len(snapshot.dedup) == 10


def test_a_state_that_does_not_encode_sends_no_snapshot_and_is_tried_again_later() -> None:
    """A handler left an integer beyond 64 bits in the state: the snapshot a replica needs
    cannot be encoded. Nothing is sent, the failure is recorded for the server to report, and
    the snapshot is tried again at the resend time (backing off); once a write brings the
    state back to what msgpack carries, it goes (before, the encoder's exception escaped)."""
    part = primary_with(10, log_entries_max=6)
    part.data = 2**64
    shipper = replication(retry_us=1000)
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(0), source="r1")
    assert shipper.ship(part, epoch=1, now_us=1) == []
    failures = shipper.take_unencodable()
    assert [node for node, _ in failures] == ["r1"]
    assert "OverflowError" in failures[0][1]
    assert shipper.take_unencodable() == []
    assert shipper.ship(part, epoch=1, now_us=500) == []
    assert shipper.ship(part, epoch=1, now_us=1001) == []
    assert len(shipper.take_unencodable()) == 1
    assert shipper.resend_due_us() == 1001 + 2000
    part.data = 7
    (_, snapshot), *_ = shipper.ship(part, epoch=1, now_us=3001)
    assert isinstance(snapshot, SnapshotShipped)
    assert shipper.take_unencodable() == []


def test_diverged_history_gets_snapshot() -> None:
    """A probe answer whose entry epoch differs from the primary's triggers a snapshot."""
    part = primary_with(5)
    shipper = replication()
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=2, now_us=0)
    outcome = shipper.on_ack(part, ack(4, acked_epoch=7), source="r1")
    assert outcome.diverged
    (_, snapshot), *_ = shipper.ship(part, epoch=2, now_us=1)
    assert isinstance(snapshot, SnapshotShipped)


def test_replica_ahead_of_primary_is_diverged() -> None:
    """A replica claiming more entries than the primary has is replaced by a snapshot."""
    part = primary_with(3)
    shipper = replication()
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=2, now_us=0)
    assert shipper.on_ack(part, ack(9), source="r1").diverged


def test_seal_is_marked_on_last_batch_and_acknowledged() -> None:
    """The batch reaching the seal seq is sealed; only a sealed ack completes it."""
    part = primary_with(4)
    shipper = replication(batch=3)
    shipper.set_replicas(["t"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(0), source="t")
    shipper.seal_towards("t", seal_seq=4)
    batches = logs(shipper.ship(part, epoch=5, now_us=1))
    assert [(batch.sealed, batch.epoch) for batch in batches] == [(False, 5), (True, 5)]
    assert not shipper.on_ack(part, ack(4), source="t").sealed
    assert shipper.on_ack(part, ack(4, sealed=True), source="t").sealed


def test_seal_with_nothing_left_sends_empty_sealed_batch() -> None:
    """A target already holding everything gets an empty sealed batch."""
    part = primary_with(2)
    shipper = replication()
    shipper.set_replicas(["t"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(2), source="t")
    shipper.seal_towards("t", seal_seq=2)
    ((_, tail),) = shipper.ship(part, epoch=3, now_us=1)
    assert isinstance(tail, LogShipped)
    assert (tail.prev_seq, tail.entries, tail.sealed) == (2, (), True)


def test_a_replicas_stream_made_the_target_ships_again_at_once_under_the_new_epoch() -> None:
    """A replica's stream made the handoff target restarts from the acknowledged sequence with
    its resend wait reset: its batches in flight went out under the older epoch, which a target
    that knows of the move ignores, and the sealed batch waited behind them past the deadline
    (`forehand sim --scenario drain-one-way --seed 17600131`)."""
    part = primary_with(8)
    shipper = replication(batch=3, inflight=2, retry_us=1000)
    shipper.set_replicas(["t"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(2), source="t")
    for now_us in (1, 1001, 3001, 7001):
        # Unanswered: resent less and less often.
        assert len(logs(shipper.ship(part, epoch=1, now_us=now_us))) == 2
    for request_id in range(9, 14):
        part.execute(request_id=request_id, op="add", payload=b"1")
    shipper.seal_towards("t", seal_seq=13)
    batches = logs(shipper.ship(part, epoch=13, now_us=7002))
    assert [(batch.prev_seq, len(batch.entries), batch.epoch) for batch in batches] == [
        (2, 3, 13),
        (5, 3, 13),
    ]
    assert shipper.resend_due_us() == 8002
    shipper.on_ack(part, ack(8, epoch=13), source="t")
    rest = logs(shipper.ship(part, epoch=13, now_us=7003))
    assert [(batch.prev_seq, len(batch.entries), batch.sealed) for batch in rest] == [
        (8, 3, False),
        (11, 2, True),
    ]


def test_a_target_that_ignored_the_batches_in_flight_gets_them_in_the_sealed_log() -> None:
    """The sealed batch of a replica's stream made the target carries the entries shipped under
    the older epoch, not an empty seal after them, which a target holding none of them answers
    below the seal (`forehand sim --scenario drain-one-way --seed 17600168`)."""
    part = primary_with(4)
    shipper = replication(batch=8)
    shipper.set_replicas(["t"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(0), source="t")
    assert len(logs(shipper.ship(part, epoch=1, now_us=1))) == 1
    shipper.seal_towards("t", seal_seq=4)
    ((_, sealed),) = shipper.ship(part, epoch=5, now_us=2)
    assert isinstance(sealed, LogShipped)
    assert (sealed.prev_seq, len(sealed.entries), sealed.sealed) == (0, 4, True)


def test_probe_carries_the_seal_only_once_the_targets_history_was_checked() -> None:
    """A fresh target's probe is not sealed (an empty sealed batch would let a target holding an
    as long but different log take over); once its answer matched, the seal follows, and a
    probe after a reconnect carries it."""
    part = primary_with(2)
    shipper = replication()
    shipper.seal_towards("t", seal_seq=2)
    ((_, probe),) = shipper.ship(part, epoch=3, now_us=0)
    assert isinstance(probe, LogShipped)
    assert not probe.sealed
    shipper.on_ack(part, ack(2), source="t")
    ((_, tail),) = shipper.ship(part, epoch=3, now_us=1)
    assert isinstance(tail, LogShipped)
    assert (tail.prev_seq, tail.entries, tail.sealed) == (2, (), True)
    shipper.streams["t"].reprobe()
    ((_, again),) = shipper.ship(part, epoch=3, now_us=2)
    assert isinstance(again, LogShipped)
    assert (again.prev_seq, again.entries, again.sealed) == (2, (), True)


def test_set_replicas_keeps_progress_and_target() -> None:
    """Changing the replica set keeps surviving streams and the handoff target."""
    part = primary_with(3)
    shipper = replication()
    shipper.set_replicas(["a", "b"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(3), source="a")
    shipper.seal_towards("t", seal_seq=3)
    shipper.set_replicas(["a", "c"])
    assert sorted(shipper.streams) == ["a", "c", "t"]
    assert shipper.streams["a"].acked_seq == 3
    assert shipper.acked_min() == 0
    shipper.only_target()
    assert sorted(shipper.streams) == ["t"]
    assert not shipper.on_ack(part, ack(1), source="zz").known


def test_settled_only_when_every_replica_holds_everything() -> None:
    """`settled` (nothing to ship until the log grows) needs every stream acknowledged at the
    last entry with nothing in flight, and no stream waiting for a snapshot."""
    part = primary_with(2)
    shipper = replication()
    shipper.set_replicas(["r1", "r2"])
    assert not shipper.settled(part.log.last_seq)  # Nobody probed yet.
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(2), source="r1")
    shipper.on_ack(part, ack(2), source="r2")
    assert shipper.settled(part.log.last_seq)
    part.execute(request_id=3, op="add", payload=b"1")
    assert not shipper.settled(part.log.last_seq)
    shipper.ship(part, epoch=1, now_us=1)
    shipper.on_ack(part, ack(3), source="r1")
    assert not shipper.settled(part.log.last_seq)  # r2 has not acknowledged entry 3.
    shipper.on_ack(part, ack(3), source="r2")
    assert shipper.settled(part.log.last_seq)
    empty = primary_with(0)
    diverged = replication()
    diverged.set_replicas(["r1"])
    diverged.ship(empty, epoch=2, now_us=0)
    assert diverged.on_ack(empty, ack(1, acked_epoch=7), source="r1").diverged
    assert diverged.idle(empty.log.last_seq) and not diverged.settled(empty.log.last_seq)
