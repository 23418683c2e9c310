"""A replica working through a backlog of old shipments answers each with the same position; the
primary restarts shipping from it once, not once per answer.

Found by the simulator (`forehand sim --scenario partition-mid-handoff --seed 990168`): after a
partition healed, a replica answered hundreds of probes queued during it, each answer restarted
the stream and resent every batch in flight, the resends queued behind the backlog, and the
replica never caught up (its inbox overflowed, its connection was reset over and over, and the
manager declared it dead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.core.test_replication import ack, logs, primary_with, replication
else:
    from test_replication import ack, logs, primary_with, replication


def test_the_same_low_acknowledgement_restarts_shipping_once() -> None:
    """Batches 1-3 and 4-6 go out; the replica answers 0 three times (old probes' answers): the
    first answer resends from 1, the next two resend nothing, and the retry timer resends a
    resend that was lost as well. A new position restarts again."""
    part = primary_with(9)
    shipper = replication(batch=3, inflight=2, retry_us=1000)
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(0), source="r1")
    first = logs(shipper.ship(part, epoch=1, now_us=1))
    assert [batch.prev_seq for batch in first] == [0, 3]
    shipper.on_ack(part, ack(0), source="r1")  # Below the oldest batch in flight: restart.
    resent = logs(shipper.ship(part, epoch=1, now_us=2))
    assert [batch.prev_seq for batch in resent] == [0, 3]
    for now_us in (3, 4):
        shipper.on_ack(part, ack(0), source="r1")  # The same answer again: nothing more.
        assert shipper.ship(part, epoch=1, now_us=now_us) == []
    again = logs(shipper.ship(part, epoch=1, now_us=2 + 1000))  # The resend was lost too.
    assert [batch.prev_seq for batch in again] == [0, 3]
    shipper.on_ack(part, ack(3), source="r1")  # Batch 1-3 arrived, 4-6 did not.
    assert [batch.prev_seq for batch in logs(shipper.ship(part, epoch=1, now_us=1003))] == [6]
    shipper.on_ack(part, ack(3), source="r1")  # Behind 4-6 at a new position: restart.
    after = logs(shipper.ship(part, epoch=1, now_us=1004))
    assert [batch.prev_seq for batch in after] == [3, 6]
    assert shipper.acked_max() == 3
