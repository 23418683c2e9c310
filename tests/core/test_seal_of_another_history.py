"""A primary replaced by a failover while it was cut off (paused) comes back, finds itself out of
the map and hands its log to the promoted primary: a write it executed after the failover must
not be acknowledged as replicated, since the promoted primary holds another entry at its place.

Found by the simulator (`forehand sim --scenario all --seed 7202560`: the promoted primary
answered the replaced one's seal with its own position, and the replaced primary counted that as
its write replicated). The source refuses an acknowledgement whose epoch is not its entry's; the
promoted primary acknowledges again only the seal it took over with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._part import PartState
from forehand.core.messages import LogAcknowledged
from forehand.wire import ResponseStatus

if TYPE_CHECKING:
    from tests.core._server_helpers import Cluster, ref
    from tests.core.test_replication import REF, ack, primary_with, replication
else:
    from _server_helpers import Cluster, ref
    from test_replication import REF, ack, primary_with, replication

LEDGER = ref("ledger")


def test_an_acknowledgement_of_another_history_counts_for_nothing() -> None:
    """A handoff target that answers the sealed batch with another epoch at the sealed sequence
    has not got this log: the seal is not acknowledged, nothing counts as replicated by it, and
    it gets a snapshot (a peer that no longer knows the epoch, 0, is not judged)."""
    part = primary_with(3)
    shipper = replication()
    shipper.seal_towards("t", seal_seq=3)
    shipper.ship(part, epoch=1, now_us=0)
    assert shipper.on_ack(part, ack(2), source="t").known  # The probe matched at 2.
    shipper.ship(part, epoch=1, now_us=1)  # Entry 3, sealed.
    outcome = shipper.on_ack(part, ack(3, acked_epoch=9, sealed=True), source="t")
    assert outcome.diverged and not outcome.sealed
    assert shipper.acked_max() == 0
    assert shipper.streams["t"].needs_snapshot

    other = replication()
    other.seal_towards("t", seal_seq=3)
    other.ship(part, epoch=1, now_us=0)
    other.on_ack(part, ack(2), source="t")
    other.ship(part, epoch=1, now_us=1)
    unknown = LogAcknowledged(ref=REF, epoch=1, acked_seq=3, acked_epoch=0, sealed=True)
    assert other.on_ack(part, unknown, source="t").sealed
    assert other.acked_max() == 3


def test_a_write_of_a_replaced_primary_is_not_acknowledged_by_the_promoted_primarys_seal() -> None:
    """s1 is cut off; s2 is promoted by a failover and writes entry 3 of its own history; s1,
    not knowing, executes another entry 3 for c1. Back in touch, s1 learns the map and hands its
    log to s2: s2 refuses the seal, and c1 never hears its write succeeded (it was not kept)."""
    cluster = Cluster()
    cluster.place("ledger", "s1", "s2", "s3")
    for _ in range(2):
        cluster.request("s1", "ledger")
    cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK] * 2
    cuts = [cluster.router.partition("s1", other) for other in ("s2", "s3")]
    cluster.prepare_failover([LEDGER], to=["s2", "s3"])
    cluster.place("ledger", "s2", "s3", to=["s2", "s3"])  # s1 is cut off from the manager too.
    cluster.router.advance(ms=50)
    cluster.request("s2", "ledger", payload=b"10", client="c2")
    cluster.router.advance(ms=50)
    (kept,) = cluster.responses("c2")
    assert (kept.status, kept.payload) == (ResponseStatus.OK, b"12")
    lost = cluster.request("s1", "ledger", payload=b"100")  # s1's own entry 3.
    cluster.router.advance(ms=50)
    assert cluster.responses() == []
    for cut in cuts:
        cluster.router.heal(cut)
    cluster.publish_full(to=["s1"])
    cluster.router.advance(ms=2_000)
    promoted = cluster.server("s2").part(LEDGER)
    assert promoted is not None and promoted.state is PartState.PRIMARY
    assert (promoted.data, promoted.applied_seq) == (12, 3)
    answered_ok = [
        r for r in cluster.responses() if r.request_id == lost and r.status is ResponseStatus.OK
    ]
    assert answered_ok == [], "a write the promoted primary does not hold was acknowledged"
