"""Tests of a server's planned stop (`ServerCore.leave`): it asks the manager to drain it in
its heartbeats and says when it may stop (`ServerLeft`) from the manager's `DrainReported`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from forehand.core._server_events import (
    LeaveProgressed,
    ProtocolViolationDetected,
    RarePathTaken,
    ServerLeft,
)
from forehand.core.messages import DrainReported, HeartbeatReported
from forehand.core.server import LEAVE_STUCK_MS
from forehand.placement import ServerMarkedDead

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, Cluster
else:
    from _server_helpers import MANAGER, Cluster


def report(
    roles: int, primaries: int = 0, waiting: int = 0, *, finished: bool = False
) -> DrainReported:
    return DrainReported(
        map_version=1,
        roles_left=roles,
        primaries_left=primaries,
        roles_waiting=waiting,
        finished=finished,
    )


def beats(cluster: Cluster, server_id: str = "s1") -> list[HeartbeatReported]:
    return [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == server_id]


def leaving_cluster() -> Cluster:
    cluster = Cluster()
    cluster.router.advance(ms=0)
    cluster.take(MANAGER, HeartbeatReported)
    cluster.server("s1").leave(now_us=cluster.router.now_us)
    return cluster


def test_a_leaving_server_says_so_at_once_and_in_every_heartbeat_after() -> None:
    """`leave` sends a heartbeat that says `leaving` at once (not at the next interval), and
    every later heartbeat says it too; the other servers' do not."""
    cluster = Cluster()
    cluster.router.advance(ms=100)
    assert [b.leaving for b in beats(cluster)] == [False]
    server = cluster.server("s1")
    leaving = [server.leaving]
    server.leave(now_us=cluster.router.now_us)
    server.leave(now_us=cluster.router.now_us)
    cluster.router.advance(ms=0)
    leaving.append(server.leaving)
    assert leaving == [False, True]
    assert [b.leaving for b in beats(cluster)] == [True]
    cluster.router.advance(ms=1_000)
    sent = cluster.take(MANAGER, HeartbeatReported)
    assert [b.leaving for b in sent if b.server_id == "s1"] == [True, True]
    assert [b.leaving for b in sent if b.server_id == "s2"] == [False, False]


def test_progress_is_reported_when_it_changes_and_the_server_leaves_when_finished() -> None:
    """Each change of the counts is one `LeaveProgressed`; a repeated report adds none; the
    report that says `finished` ends it with `ServerLeft` (nothing left), once."""
    cluster = leaving_cluster()
    for message in (report(9, 3), report(9, 3), report(4, 0), report(0, 0), report(0, 0)):
        cluster.router.send(MANAGER, "s1", message)
    progress = cluster.events("s1", LeaveProgressed)
    assert [(p.roles_left, p.primaries_left) for p in progress] == [(9, 3), (4, 0), (0, 0)]
    assert not cluster.events("s1", ServerLeft)
    cluster.router.send(MANAGER, "s1", report(0, finished=True))
    (left,) = cluster.events("s1", ServerLeft)
    assert (left.roles_left, left.primaries_left) == (0, 0)
    cluster.router.send(MANAGER, "s1", report(0, finished=True))
    assert len(cluster.events("s1", ServerLeft)) == 1
    assert [e.name for e in cluster.events("s1", RarePathTaken)] == ["drain-report-not-leaving"]


def test_a_server_the_manager_failed_over_while_it_left_says_so() -> None:
    """Declared dead while leaving (cut off past the failure timeout), its parts failed over,
    the server is then told `finished` with `failed_over`: its `ServerLeft` says it was failed
    over, not drained (the map it holds need not say so: the manager sends a dead member no
    map). From a manager before the field, its map listing it dead says the same. A drain
    that finished says no such thing."""
    drained = leaving_cluster()
    drained.router.send(MANAGER, "s1", report(0, finished=True))
    assert [left.failed_over for left in drained.events("s1", ServerLeft)] == [False]
    told = leaving_cluster()
    told.router.send(
        MANAGER, "s1", msgspec.structs.replace(report(0, finished=True), failed_over=True)
    )
    assert [left.failed_over for left in told.events("s1", ServerLeft)] == [True]
    listed_dead = leaving_cluster()
    listed_dead.publish(ServerMarkedDead(server_id="s1"))
    listed_dead.router.send(MANAGER, "s1", report(0, finished=True))
    assert [left.failed_over for left in listed_dead.events("s1", ServerLeft)] == [True]


def test_a_finished_drain_sends_one_last_heartbeat_saying_left_and_no_more() -> None:
    """`finished`: the server sends at once one heartbeat that says `left`, so the manager
    takes it out of the map instead of waiting out its silence; no heartbeat follows. The
    heartbeats before all said `left` false."""
    cluster = leaving_cluster()
    cluster.router.advance(ms=1_000)
    before = beats(cluster)
    assert before and not any(b.left for b in before)
    cluster.router.send(MANAGER, "s1", report(0, finished=True))
    (last,) = beats(cluster)
    assert last.left and last.leaving
    assert last.sequence == before[-1].sequence + 1
    cluster.router.advance(ms=5_000)
    assert not beats(cluster)


def test_a_server_that_stops_with_roles_left_never_says_left() -> None:
    """Stuck (every role waiting): the server stops, and what it held fails over; its
    heartbeats never say `left`, which would take it out of the map with those roles."""
    cluster = leaving_cluster()
    cluster.router.send(MANAGER, "s1", report(3, 1, 3))
    cluster.router.advance(ms=LEAVE_STUCK_MS)
    cluster.router.send(MANAGER, "s1", report(3, 1, 3))
    assert cluster.events("s1", ServerLeft)
    cluster.router.advance(ms=1_000)
    sent = beats(cluster)
    assert sent and not any(b.left for b in sent)


def test_a_server_whose_roles_have_nowhere_to_go_leaves_after_they_stay_stuck() -> None:
    """Roles all waiting for another server: the server leaves once that has lasted
    `LEAVE_STUCK_MS`, saying what it leaves behind; a report in between where something can
    move again starts the wait over."""
    cluster = leaving_cluster()
    step_ms = LEAVE_STUCK_MS // 2
    cluster.router.send(MANAGER, "s1", report(3, 1, 3))
    cluster.router.advance(ms=step_ms)
    cluster.router.send(MANAGER, "s1", report(3, 1, 2))
    cluster.router.advance(ms=step_ms)
    cluster.router.send(MANAGER, "s1", report(3, 1, 3))
    cluster.router.advance(ms=step_ms)
    cluster.router.send(MANAGER, "s1", report(3, 1, 3))
    assert not cluster.events("s1", ServerLeft)
    cluster.router.advance(ms=LEAVE_STUCK_MS - step_ms)
    cluster.router.send(MANAGER, "s1", report(3, 1, 3))
    (left,) = cluster.events("s1", ServerLeft)
    assert (left.roles_left, left.primaries_left) == (3, 1)


def test_drain_reports_to_a_server_not_leaving_or_from_a_peer_change_nothing() -> None:
    """A report to a server that is not leaving is ignored (a rare path); one from another
    server is a protocol violation that closes only that connection."""
    cluster = Cluster()
    cluster.router.send(MANAGER, "s1", report(0, finished=True))
    assert not cluster.events("s1", ServerLeft)
    assert [e.name for e in cluster.events("s1", RarePathTaken)] == ["drain-report-not-leaving"]
    cluster.server("s1").leave(now_us=cluster.router.now_us)
    cluster.router.send("s9", "s1", report(0, finished=True))
    assert not cluster.events("s1", ServerLeft)
    (violation,) = cluster.events("s1", ProtocolViolationDetected)
    assert violation.peer == "s9"


def test_a_server_that_never_joined_leaves_at_once() -> None:
    """A server with no map yet (it never joined, or its manager is unreachable since it
    started) holds nothing to hand off: `leave` says at once that it may stop."""
    cluster = Cluster()
    server = cluster.start("s4")
    server.leave(now_us=cluster.router.now_us)
    cluster.router.run()
    (left,) = cluster.events("s4", ServerLeft)
    assert (left.roles_left, left.primaries_left) == (0, 0)
