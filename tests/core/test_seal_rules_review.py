"""Second reading of the seal rules (69e195f, f610789, d865c3f, fc6dce4): legitimate handoffs
whose sealed acknowledgement was lost must still complete when the source sends the seal again.

The target has taken the part over; the source, still HANDING_OFF, resends its seal after a
retry or a reconnect. Meanwhile the target went on: it trimmed its log past the sealed entry,
or shipped its own new entries to the source (its replica in the new map), which the source
applied. Each test stages one of these between real server cores and expects the handoff to end
with the source BACKUP, not aborted at its deadline into a failover.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._part import PartState
from forehand.core._server_events import RarePathTaken
from forehand.core.messages import LogAcknowledged, LogShipped

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


def rare(cluster: Cluster, server: str) -> list[str]:
    """The rare paths `server` took so far."""
    return [event.name for event in cluster.events(server, RarePathTaken)]


def drop_first_sealed_ack(cluster: Cluster, source: str, destination: str) -> list[object]:
    """Drop the first sealed `LogAcknowledged` from `source` to `destination`; returns the list
    the dropped message is put in."""
    dropped: list[object] = []

    def rule(sender: str, receiver: str, message: object) -> bool:
        if (
            not dropped
            and (sender, receiver) == (source, destination)
            and isinstance(message, LogAcknowledged)
            and message.sealed
        ):
            dropped.append(message)
            return True
        return False

    cluster.router.filters.append(rule)
    return dropped


def handed_to_s2_with_its_seal_ack_lost(cluster: Cluster, *replicas: str) -> None:
    """Two writes on s1, then the part moves to s2 (with `replicas`) and s2's first sealed
    acknowledgement is dropped: s2 is PRIMARY, s1 still HANDING_OFF."""
    cluster.place("counter", "s1", "s2", "s3")
    for _ in range(2):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    assert len(cluster.responses()) == 2
    dropped = drop_first_sealed_ack(cluster, "s2", "s1")
    cluster.place("counter", "s2", *replicas)
    assert dropped and state(cluster, "s2") is PartState.PRIMARY
    assert state(cluster, "s1") is PartState.HANDING_OFF


def test_a_seal_resent_after_a_reconnect_to_a_target_that_trimmed_past_it_is_acknowledged() -> None:
    """s1 hands the part to s2 (s1 not kept as a replica, as in a drain); s2's sealed
    acknowledgement is lost and the connection breaks. s2 serves and trims its log past the
    sealed entry, so its answer to s1's sealed probe carries epoch 0 (unknown): s1 takes that as
    the seal's acknowledgement, not as a diverged history: with one batch in flight per stream
    the refused snapshot would otherwise be all s1 sends, again after every retry, until the
    handoff's deadline (with more, a full snapshot wasted before the seal)."""
    cluster = Cluster(replication_inflight_batches_max=1)
    # s1 leaves the map: it seals at 2, s2 takes over.
    handed_to_s2_with_its_seal_ack_lost(cluster, "s3")
    cut = cluster.router.partition("s1", "s2")
    for _ in range(3):
        cluster.request("s2", "counter", client="c2")
    cluster.router.advance(ms=50)
    assert [answer.payload for answer in cluster.responses("c2")] == [b"3", b"4", b"5"]
    target = cluster.server("s2").part(COUNTER)
    assert target is not None and target.log.epoch_at(2) is None  # Trimmed past the seal.
    cluster.router.heal(cut)
    cluster.router.disconnect("s1", "s2")  # s1 probes s2 again, sealed.
    cluster.router.advance(ms=1_000)
    assert state(cluster, "s1") is PartState.BACKUP
    assert "replica-history-diverged" not in rare(cluster, "s1")
    assert "snapshot-to-primary-refused" not in rare(cluster, "s2")


def test_a_seal_resent_after_the_source_applied_the_targets_new_entries_is_acknowledged() -> None:
    """s1 hands the part to s2 and stays its replica; s2's sealed acknowledgement is lost. s2
    serves a write and ships it to s1, which applies it while still HANDING_OFF, so the sealed
    batch s1 sends next ends past the sequence s2 took over at: s2 holds that entry (its own),
    acknowledges, and s1 becomes BACKUP instead of aborting at its deadline (fc6dce4 made s2
    acknowledge only a seal ending exactly where it took over)."""
    cluster = Cluster()
    handed_to_s2_with_its_seal_ack_lost(cluster, "s1", "s3")
    cluster.request("s2", "counter", client="c2")
    cluster.router.advance(ms=50)
    ((answer),) = cluster.responses("c2")
    assert answer.payload == b"3"
    source = cluster.server("s1").part(COUNTER)
    assert source is not None and source.applied_seq == 3  # s2's entry 3, applied by s1.
    cluster.router.advance(ms=1_000)
    assert state(cluster, "s1") is PartState.BACKUP
    assert "seal-of-another-history-refused" not in rare(cluster, "s2")


def test_a_sealed_probe_after_the_source_applied_the_targets_new_entries_is_answered() -> None:
    """As above, but the connection breaks instead: s1 probes s2 again with its log past the
    seal. The probe carries the seal (an unsealed one is never answered by a primary, so s1
    would probe again and again until its deadline) and s2 acknowledges it."""
    cluster = Cluster()
    handed_to_s2_with_its_seal_ack_lost(cluster, "s1", "s3")

    def shipments_from_s1(source: str, destination: str, message: object) -> bool:
        return (source, destination) == ("s1", "s2") and isinstance(message, LogShipped)

    cluster.router.filters.append(shipments_from_s1)  # s1's resent seals are lost.
    cluster.request("s2", "counter", client="c2")
    cluster.router.advance(ms=20)
    cluster.router.heal(shipments_from_s1)
    source = cluster.server("s1").part(COUNTER)
    assert source is not None and source.applied_seq == 3
    assert state(cluster, "s1") is PartState.HANDING_OFF
    cluster.router.disconnect("s1", "s2")
    cluster.router.advance(ms=1_000)
    assert state(cluster, "s1") is PartState.BACKUP
    assert "same-epoch-primaries" not in rare(cluster, "s2")


def test_a_probe_answer_of_epoch_0_matches_only_as_a_seals_acknowledgement() -> None:
    """On a stream probed again, a sealed answer of epoch 0 at the seal (a target that took over
    with it and trimmed since) acknowledges the seal; an unsealed answer of epoch 0 past 0 still
    counts as a diverged history (nothing else answers so)."""
    part = primary_with(3)
    shipper = replication()
    shipper.seal_towards("t", seal_seq=3)
    shipper.ship(part, epoch=2, now_us=0)
    shipper.on_ack(part, ack(3), source="t")
    shipper.streams["t"].reprobe()
    ((_, probe),) = shipper.ship(part, epoch=2, now_us=1)
    assert isinstance(probe, LogShipped) and probe.sealed
    outcome = shipper.on_ack(part, ack(3, acked_epoch=0, sealed=True), source="t")
    assert outcome.sealed and not outcome.diverged

    other = replication()
    other.set_replicas(["r"])
    other.ship(part, epoch=2, now_us=0)
    assert other.on_ack(part, ack(3, acked_epoch=0), source="r").diverged


def test_a_probe_is_sealed_once_the_log_has_grown_past_the_seal() -> None:
    """A source whose log passed the seal (it applied the new primary's entries as its replica)
    probes again with the seal, once the stream's history was checked; never before."""
    part = primary_with(2)
    shipper = replication()
    shipper.seal_towards("t", seal_seq=2)
    ((_, first),) = shipper.ship(part, epoch=2, now_us=0)
    assert isinstance(first, LogShipped) and not first.sealed  # History not checked yet.
    shipper.on_ack(part, ack(2), source="t")
    part.execute(request_id=9, op="add", payload=b"1")  # Stands for the new primary's entry 3.
    shipper.streams["t"].reprobe()
    ((_, probe),) = shipper.ship(part, epoch=2, now_us=1)
    assert isinstance(probe, LogShipped)
    assert (probe.prev_seq, probe.sealed) == (3, True)
    assert shipper.on_ack(part, ack(3, sealed=True), source="t").sealed
