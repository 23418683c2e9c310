"""Second reading of log shipping: acknowledgements that arrive late, lost seals, retries, settling.

Each test stages one way the primary's side of replication could go wrong (an acknowledgement
counted for the wrong batch, a stream that stops retrying, a write answered too early) between
real server cores; dropped and delayed messages are router filters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._part import PartState
from forehand.core.messages import LogAcknowledged, LogShipped, SnapshotShipped

if TYPE_CHECKING:
    from tests.core._server_helpers import Cluster, ref
    from tests.core.test_replication import ack, primary_with, replication
else:
    from _server_helpers import Cluster, ref
    from test_replication import ack, primary_with, replication

COUNTER = ref("counter")


def state(cluster: Cluster, server: str) -> PartState | None:
    """The state of `counter` on `server`."""
    part = cluster.server(server).part(COUNTER)
    return None if part is None else part.state


def test_lost_seal_is_resent_after_an_earlier_batch_is_acknowledged_past_it() -> None:
    """The acknowledgement of an unsealed batch that reaches the seal's sequence, arriving after
    the sealed batch went out, leaves the seal in flight: when the sealed batch is lost it is
    resent after replication_retry_ms and the handoff completes before its deadline."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=20)
    delayed: list[LogAcknowledged] = []
    seals_dropped: list[LogShipped] = []

    def delay_ack_drop_seal(source: str, destination: str, message: object) -> bool:
        if (
            isinstance(message, LogAcknowledged)
            and (source, destination) == ("s2", "s1")
            and message.acked_seq == 1
            and not delayed
        ):
            delayed.append(message)
            return True
        if isinstance(message, LogShipped) and message.sealed and not seals_dropped:
            seals_dropped.append(message)
            return True
        return False

    cluster.router.filters.append(delay_ack_drop_seal)
    cluster.request("s1", "counter")
    cluster.router.advance(ms=20)  # The batch of entry 1 went out; its acknowledgement is slow.
    assert delayed
    # s1 seals at 1: the replica's stream made the target ships entry 1 again, under the move's
    # epoch, in the sealed batch, which is lost.
    cluster.place("counter", "s2", "s1")
    assert seals_dropped and [entry.seq for entry in seals_dropped[0].entries] == [1]
    assert state(cluster, "s1") is PartState.HANDING_OFF
    cluster.router.send("s2", "s1", delayed[0])  # The slow acknowledgement of entry 1.
    cluster.router.advance(ms=600)
    assert state(cluster, "s2") is PartState.PRIMARY
    assert state(cluster, "s1") is PartState.BACKUP


def test_sealed_log_reaches_a_target_whose_history_was_never_checked() -> None:
    """A handoff towards a replica whose history the source never compared (its probe was lost)
    does not let the target take over on an empty sealed probe: the target held a longer log of
    an older primary, so it first gets the source's snapshot and then the seal, and serves the
    source's state (the write the source executed after the failover included)."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    for _ in range(3):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.router.partition("s1", "s2")
    for _ in range(2):
        cluster.request("s1", "counter")  # Entries 4 and 5 reach s3 only.
    cluster.router.advance(ms=50)
    cluster.router.remove("s1")  # s1 is lost; s3 is cut off from s2 (and the manager).
    cut = cluster.router.partition("s2", "s3")
    cluster.prepare_failover([COUNTER], to=["s2"])
    cluster.place("counter", "s2", "s3")  # s2 promoted with entries 1-3; its probe of s3 is lost.
    assert state(cluster, "s2") is PartState.PRIMARY
    cluster.responses()
    cluster.request("s2", "counter", client="c2")  # Entry 4 of s2's history: 4 in all.
    (answer,) = cluster.responses("c2")
    assert answer.payload == b"4"
    cluster.place("counter", "s3", "s2")  # The part moves on to s3.
    assert state(cluster, "s2") is PartState.HANDING_OFF
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    target = cluster.server("s3").part(COUNTER)
    assert target is not None and target.state is PartState.PRIMARY
    assert (target.data, target.applied_seq) == (4, 4)
    assert state(cluster, "s2") is PartState.BACKUP


def test_a_target_brought_in_line_by_a_snapshot_gets_a_sealed_probe_after_a_reconnect() -> None:
    """A target whose probe answer diverged counts as checked once it acknowledges the snapshot
    at the primary's position and epoch, so a probe after a reconnect carries the seal again
    (a target that already took over answers only a sealed one)."""
    part = primary_with(3)
    shipper = replication()
    shipper.seal_towards("t", seal_seq=3)
    shipper.ship(part, epoch=2, now_us=0)
    assert shipper.on_ack(part, ack(3, acked_epoch=9), source="t").diverged
    (_, snapshot), (_, tail) = shipper.ship(part, epoch=2, now_us=1)
    assert isinstance(snapshot, SnapshotShipped) and isinstance(tail, LogShipped) and tail.sealed
    shipper.on_ack(part, ack(3), source="t")  # The snapshot's acknowledgement.
    shipper.streams["t"].reprobe()  # The connection broke before the sealed acknowledgement.
    ((_, probe),) = shipper.ship(part, epoch=2, now_us=2)
    assert isinstance(probe, LogShipped)
    assert (probe.prev_seq, probe.entries, probe.sealed) == (3, (), True)


def test_seal_and_new_replicas_keep_a_part_unsettled() -> None:
    """`settled` (which skips the shipping pass after an acknowledgement) stays false while a
    seal waits for its acknowledgement, even with every entry acknowledged, and when a replica
    joins; the sealed batch stays in flight until acknowledged as sealed."""
    part = primary_with(2)
    shipper = replication()
    shipper.set_replicas(["r1"])
    shipper.ship(part, epoch=1, now_us=0)
    shipper.on_ack(part, ack(2), source="r1")
    assert shipper.settled(part.log.last_seq)
    shipper.set_replicas(["r1", "r2"])
    assert not shipper.settled(part.log.last_seq)
    shipper.set_replicas(["r1"])
    shipper.seal_towards("r1", seal_seq=2)
    assert not shipper.settled(part.log.last_seq)
    ((_, tail),) = shipper.ship(part, epoch=1, now_us=1)
    assert isinstance(tail, LogShipped) and tail.sealed
    assert not shipper.on_ack(part, ack(2), source="r1").sealed
    assert shipper.streams["r1"].inflight and not shipper.settled(part.log.last_seq)
    assert shipper.on_ack(part, ack(2, sealed=True), source="r1").sealed
    assert shipper.settled(part.log.last_seq)
