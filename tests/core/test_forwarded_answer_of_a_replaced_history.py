"""A handoff's source, put back as primary by a failover while the target was cut off, must not
relay the target's late answer to a write it forwarded during the handoff: the target executed it
on a history the failover replaced.

Found by the simulator (`forehand sim --scenario all --seed 9200900`): the target was paused
mid-handoff and declared dead; the failover reinstated the source; the target, resumed, took the
part over with the seal still queued for it, executed the forwarded write at the handoff's epoch,
and the source relayed the answer, acknowledging a write that its own history does not hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._part import PartState
from forehand.core._server_events import WriteAcknowledged
from forehand.core.server import _holds_entry
from forehand.wire import ResponseStatus

if TYPE_CHECKING:
    from tests.core._server_helpers import Cluster, ref
    from tests.core.test_replication import primary_with
else:
    from _server_helpers import Cluster, ref
    from test_replication import primary_with

COUNTER = ref("counter")


def replaced_target_answers(promoted: str) -> tuple[Cluster, int]:
    """s1 hands the part to s2, which is cut off (its messages wait); a write reaching s1 is
    forwarded to s2. s2 is declared dead: the failover fences s1 and s3 and promotes
    `promoted`. s2 then gets what waited: it takes the part over with the old seal and
    executes the write. The cluster, and the write's request id, once s1 answered the client:
    TRY_AGAIN, not s2's OK (checked here)."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    for _ in range(2):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK] * 2
    held: list[tuple[str, object]] = []

    def hold(source: str, destination: str, message: object) -> bool:
        if destination == "s2" and source != "manager":
            held.append((source, message))
            return True
        return False

    cluster.router.filters.append(hold)
    cluster.place("counter", "s2", "s1", "s3")
    cluster.assign_handoff([COUNTER], source="s1", target="s2", deadline_ms=5_000)
    cluster.router.advance(ms=20)
    lost = cluster.request("s1", "counter", payload=b"10")
    cluster.router.advance(ms=20)
    assert cluster.responses() == []
    other = "s3" if promoted == "s1" else "s1"
    cluster.prepare_failover([COUNTER], to=["s1", "s3"])
    cluster.place("counter", promoted, other, to=["s1", "s3"])
    cluster.router.advance(ms=50)
    source = cluster.server(promoted).part(COUNTER)
    assert source is not None and source.state is PartState.PRIMARY
    # s2 comes back with its old map and gets what waited for it.
    cluster.router.filters.remove(hold)
    for origin, message in held:
        cluster.router.send(origin, "s2", message)
    cluster.router.advance(ms=50)
    answers = [r for r in cluster.responses() if r.request_id == lost]
    assert [r.status for r in answers] == [ResponseStatus.TRY_AGAIN]
    relayed = [
        e
        for e in cluster.events("s1", WriteAcknowledged)
        if e.request_id == lost and e.client_facing
    ]
    assert relayed == []
    return cluster, lost


def test_a_late_answer_of_a_replaced_handoff_target_is_not_relayed() -> None:
    """The failover puts s1, the source, back as primary: s1 answers the client TRY_AGAIN
    instead of relaying s2's OK, and the write, sent again, is executed once, in s1's
    history."""
    cluster, lost = replaced_target_answers("s1")
    cluster.request("s1", "counter", payload=b"10", request_id=lost)
    cluster.router.advance(ms=50)
    (again,) = [r for r in cluster.responses() if r.request_id == lost]
    assert (again.status, again.payload) == (ResponseStatus.OK, b"12")


def test_an_entry_trimmed_from_the_log_still_counts_as_held_through_the_dedup_table() -> None:
    """Whether the source holds the write a late answer names: by its log, or once trimmed from
    it by its dedup table; a write of another epoch, or one it never executed, is not held."""
    part = primary_with(5)
    assert _holds_entry(part, request_id=3, seq=3, epoch=1)
    part.log.trim_through(4)
    assert part.log.epoch_at(3) is None
    assert _holds_entry(part, request_id=3, seq=3, epoch=1)
    assert not _holds_entry(part, request_id=3, seq=3, epoch=2)
    assert not _holds_entry(part, request_id=99, seq=3, epoch=1)
    assert not _holds_entry(part, request_id=6, seq=6, epoch=1)


def test_a_late_answer_of_a_replaced_target_is_not_relayed_once_a_third_server_leads() -> None:
    """The failover promotes s3, not the source: s1, now s3's replica, still waits for s2's
    answer to the write it forwarded, and its map names s3 as the primary, so it answers
    TRY_AGAIN instead of relaying the OK, which named a write s3's history does not hold
    (`forehand sim --scenario leave-faults --seed 745`: the source was a server leaving on
    SIGTERM)."""
    replaced_target_answers("s3")
