"""A handoff whose target is a stale primary (a failover replaced it, unfenced, and it missed the
maps that say so) waits for the sealed log; before, it reported the handoff done without one and
served its stale copy, losing the promoted primary's acknowledged write (found by a reading)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._part import Part, PartState
from forehand.core.messages import HandoffCompleted

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, Cluster, ref
else:
    from _server_helpers import MANAGER, Cluster, ref

COUNTER = ref("counter")


def _held(cluster: Cluster, server: str) -> Part:
    part = cluster.server(server).part(COUNTER)
    assert part is not None
    return part


def test_a_stale_primary_targeted_by_a_handoff_waits_for_the_seal() -> None:
    cluster = Cluster(("s1", "s2", "s3"), replica_count=1)
    cluster.place("counter", "s2", "s1")  # s2 leads, s1 replicates
    cluster.request("s2", "counter", "add", b"1")
    assert [r.payload for r in cluster.responses()] == [b"1"]
    cluster.router.advance(ms=200)
    assert _held(cluster, "s1").applied_seq == 1
    stale_version = cluster.map.version
    # s2 is cut off from the manager: it never sees the failover that promotes s1 (its fence
    # and the promotion are lost on its broken connection).
    cluster.prepare_failover([COUNTER], to=["s1", "s3"])
    cluster.place("counter", "s1", "s3", to=["s1", "s3"])
    assert _held(cluster, "s1").state is PartState.PRIMARY
    # s1 acknowledges a write of the new history.
    cluster.request("s1", "counter", "add", b"10")
    assert [r.payload for r in cluster.responses()] == [b"11"]
    # Back on a new connection, s2 is ALIVE and ACTIVE for the manager, which hands the part
    # to it: the delta (gap: buffered, map asked for) and then HandoffAssigned. The seal from s1
    # has not arrived yet (s1-s2 is slow here).
    cut = cluster.router.partition("s1", "s2")
    cluster.place("counter", "s2", "s1")
    assert cluster.server("s2").map_version == stale_version  # the gap is buffered
    cluster.take(MANAGER, HandoffCompleted)
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    completed = [m for m in cluster.take(MANAGER, HandoffCompleted) if m.server_id == "s2"]
    part = cluster.server("s2").part(COUNTER)
    assert part is not None
    reported_early = bool(completed)
    # The manager took s2's report: the handoff is BACKING_UP, and the source dying now only
    # completes it (ManagerCore._participant_died); s1's primaries in the map no longer include
    # the part, so nothing fails it over. s1 crashes before its seal got through.
    cluster.router.remove("s1")
    cluster.router.heal(cut)
    cluster.publish_full(to=["s2"])  # s2's map request is answered
    cluster.router.advance(ms=6_000)
    read = cluster.request("s2", "counter", "get", b"", client="c2")
    answers = {r.request_id: r.payload for r in cluster.responses("c2")}
    # ...and must not serve the part from its stale state: s1 acknowledged the write of 10.
    assert not reported_early, (
        f"s2 reported the handoff done without a seal (state {part.state}, epoch {part.epoch}), "
        f"then served the part: get -> {answers.get(read)!r}"
    )


def test_a_handing_off_stale_primary_targeted_by_a_handoff_waits_for_the_seal() -> None:
    cluster = Cluster(("s1", "s2", "s3"), replica_count=1)
    cluster.place("counter", "s2", "s1")
    cluster.request("s2", "counter", "add", b"1")
    cluster.router.advance(ms=200)
    # The fence for s2 is lost; s1 is promoted and s2 gets that version (in order).
    cut = cluster.router.partition("s1", "s2")
    cluster.prepare_failover([COUNTER], to=["s1", "s3"])
    cluster.place("counter", "s1", "s3")
    assert _held(cluster, "s1").state is PartState.PRIMARY
    assert _held(cluster, "s2").state is PartState.HANDING_OFF
    cluster.request("s1", "counter", "add", b"10")
    cluster.responses()
    # The move back to s2: its delta is lost with a connection, HandoffAssigned gets through.
    cluster.place("counter", "s2", "s1", to=["s1", "s3"])
    cluster.take(MANAGER, HandoffCompleted)
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    completed = [m for m in cluster.take(MANAGER, HandoffCompleted) if m.server_id == "s2"]
    part = cluster.server("s2").part(COUNTER)
    assert part is not None
    assert completed == [], f"s2 reported the handoff done: {part.state}, epoch {part.epoch}"
    cluster.router.heal(cut)
