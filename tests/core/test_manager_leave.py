"""Tests of a server's planned stop at the manager: heartbeats that say `leaving` start the
server's drain, and each is answered with where the drain stands (`DrainReported`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._manager_events import (
    DeathCause,
    DrainProgressed,
    FailoverCompleted,
    FailoverStarted,
    HandoffStarted,
    MapChange,
    MapCommitted,
    ServerDeclaredDead,
    ServerJoined,
    ServerLeaving,
)
from forehand.core._membership import MemberState
from forehand.core.messages import DrainReported, HandoffAssigned, HandoffCompleted
from forehand.placement import ServerState
from forehand.wire import ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, HeldCommit, ManagerHarness, opened_refs
else:
    from _manager_helpers import MANAGER, HeldCommit, ManagerHarness, opened_refs


def complete_failover(harness: ManagerHarness, survivors: tuple[str, ...]) -> None:
    """The survivors answer every fence they got; the failover commits."""
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    harness.tick(100, alive=survivors)


SERVERS = ("s1", "s2", "s3", "s4")
PARTS = ("auth", "cart", "feed", "chat", "mail", "pay", "game", "news", "maps", "docs")


def roles(harness: ManagerHarness, server_id: str) -> int:
    parts = harness.map.parts_for(server_id)
    return len(parts.primary) + len(parts.replica)


def play(
    harness: ManagerHarness,
    *,
    rounds: int,
    held: list[HandoffAssigned] | None = None,
    alive: tuple[str, ...] = SERVERS,
) -> None:
    """Let time pass in 100 ms rounds, the `alive` servers heartbeating and every source among
    them reporting its assigned handoffs done (with `held`, the first is kept back in it)."""
    for _ in range(rounds):
        for server_id in alive:
            for assigned in harness.take(server_id, HandoffAssigned):
                if assigned.source != server_id:
                    continue
                if held is not None and not held:
                    held.append(assigned)
                    continue
                done = HandoffCompleted(
                    handoff_id=assigned.handoff_id, server_id=server_id, parts=assigned.parts
                )
                harness.router.send(server_id, MANAGER, done)
        harness.tick(100, alive=alive)


def test_a_leaving_server_is_drained_and_told_when_it_may_stop() -> None:
    """The first leaving heartbeat starts a drain (DRAINING in the map, PLANNED_MAINTENANCE
    handoffs) and emits `ServerLeaving` once; every leaving heartbeat gets a `DrainReported`,
    whose counts fall to 0 and which says `finished` once nothing is left and no handoff of it
    runs. The other servers get none."""
    harness = ManagerHarness(handoffs_per_server_max=8)
    harness.join(*SERVERS)
    assert harness.open_session(PARTS) is not None
    total = roles(harness, "s2")
    assert total > 0
    harness.leaving.add("s2")
    harness.tick(100, alive=SERVERS)
    (leaving,) = harness.events(ServerLeaving)
    assert (leaving.server_id, leaving.drain_started, leaving.roles) == ("s2", True, total)
    assert harness.map.server("s2").state is ServerState.DRAINING
    first = harness.take("s2", DrainReported)
    assert first and not first[-1].finished and first[-1].roles_left == total
    play(harness, rounds=60)
    assert roles(harness, "s2") == 0
    reports = harness.take("s2", DrainReported)
    assert reports[-1].finished and reports[-1].roles_left == 0
    left = [r.roles_left for r in reports]
    assert left == sorted(left, reverse=True)
    assert len(harness.events(ServerLeaving)) == 1
    started = harness.events(HandoffStarted)
    assert started and all(e.source == "s2" for e in started)
    assert all(e.reason is ReasonCode.PLANNED_MAINTENANCE for e in started)
    assert harness.events(DrainProgressed)[-1].finished
    for server_id in ("s1", "s3", "s4"):
        assert not harness.take(server_id, DrainReported)


def test_a_leaving_server_is_not_finished_while_its_last_handoff_runs() -> None:
    """The map moves a part at the handoff's assignment: with nothing left in the map but a
    handoff of it still running, the reports say not finished, as stopping then would send the
    part through failover; they say finished once that handoff ended."""
    harness = ManagerHarness(handoffs_per_server_max=8, handoff_deadline_ms=10_000)
    harness.join(*SERVERS)
    assert harness.open_session(PARTS) is not None
    harness.leaving.add("s2")
    held_back: list[HandoffAssigned] = []
    play(harness, rounds=30, held=held_back)
    assert roles(harness, "s2") == 0 and held_back
    reports = harness.take("s2", DrainReported)
    assert reports[-1].roles_left == 0 and not any(r.finished for r in reports)
    (late,) = held_back
    done = HandoffCompleted(handoff_id=late.handoff_id, server_id="s2", parts=late.parts)
    harness.router.send("s2", MANAGER, done)
    harness.tick(100, alive=SERVERS)
    drain_report = harness.take("s2", DrainReported)[-1]
    assert drain_report.finished and drain_report.failed_over is False


def test_the_last_active_server_leaving_reports_every_role_waiting() -> None:
    """Nowhere to go: the only server leaves; its report counts every role as waiting, so it
    stops at once instead of waiting out its timeout."""
    harness = ManagerHarness()
    harness.join("s1")
    opened = harness.open_session(("auth", "cart"))
    assert opened is not None
    harness.leaving.add("s1")
    harness.tick(1_000, alive=("s1",))
    report = harness.take("s1", DrainReported)[-1]
    assert report.roles_left == report.roles_waiting == report.primaries_left == 2
    assert not report.finished
    for ref in opened_refs(opened):
        assert harness.placement(ref).primary == "s1"


def test_a_restarted_server_is_active_again_and_may_leave_again() -> None:
    """After it left and stopped, the server's new incarnation joins as ACTIVE (the drain does
    not outlive the process that asked for it), takes parts again, and a second leave is a new
    `ServerLeaving`."""
    harness = ManagerHarness(handoffs_per_server_max=8)
    harness.join(*SERVERS)
    assert harness.open_session(PARTS) is not None
    harness.leaving.add("s2")
    play(harness, rounds=60)
    assert harness.take("s2", DrainReported)[-1].finished
    alive = tuple(s for s in SERVERS if s != "s2")
    harness.tick(3_000, alive=alive)
    assert [e.server_id for e in harness.events(ServerDeclaredDead)] == ["s2"]
    harness.leaving.discard("s2")
    harness.announce("s2", incarnation=2)
    harness.tick(1_000, alive=SERVERS)
    assert harness.map.server("s2").state is ServerState.ACTIVE
    assert harness.open_session(PARTS, client="c2") is not None
    harness.leaving.add("s2")
    harness.tick(100, alive=SERVERS)
    assert [(e.incarnation, e.drain_started) for e in harness.events(ServerLeaving)] == [
        (1, True),
        (2, True),
    ]


def beat(harness: ManagerHarness, server_id: str, *, left: bool = False) -> None:
    """One heartbeat of `server_id` that says `leaving` (and `left`: its last)."""
    group = harness.departed if left else harness.leaving
    group.add(server_id)
    harness.heartbeat(server_id)
    group.discard(server_id)


def leave_and_finish(harness: ManagerHarness, server_id: str) -> tuple[str, ...]:
    """Drain `server_id` by its leaving heartbeats until it is told `finished`; the others."""
    harness.leaving.add(server_id)
    play(harness, rounds=60)
    assert harness.take(server_id, DrainReported)[-1].finished
    harness.leaving.discard(server_id)
    return tuple(s for s in SERVERS if s != server_id)


def test_a_server_that_left_is_dead_at_once_and_leaves_the_map_with_no_failover() -> None:
    """The last heartbeat says `left`: s2 is dead at once with cause LEFT (not a failure
    timeout later, by silence), its entry leaves the map in a SERVER_LEFT version, no failover
    runs, and it gets no more DrainReported. Its next incarnation joins again as ACTIVE."""
    harness = ManagerHarness(handoffs_per_server_max=8)
    harness.join(*SERVERS)
    assert harness.open_session(PARTS) is not None
    others = leave_and_finish(harness, "s2")
    beat(harness, "s2", left=True)
    (dead,) = harness.events(ServerDeclaredDead)
    assert (dead.server_id, dead.cause, dead.primary_parts) == ("s2", DeathCause.LEFT, 0)
    harness.tick(5_000, alive=others)
    assert "s2" not in {entry.server_id for entry in harness.map.servers}
    (removed,) = [e for e in harness.events(MapCommitted) if e.change is MapChange.SERVER_LEFT]
    assert removed.servers == ("s2",)
    assert len(harness.events(ServerDeclaredDead)) == 1
    assert not harness.events(FailoverStarted) and not harness.events(FailoverCompleted)
    assert not harness.take("s2", DrainReported)
    harness.announce("s2", incarnation=2)
    harness.tick(1_000, alive=SERVERS)
    assert harness.map.server("s2").state is ServerState.ACTIVE
    assert harness.open_session(PARTS, client="c2") is not None


def test_a_leaving_server_declared_dead_meanwhile_is_told_to_stop_not_readmitted() -> None:
    """s2's drain finished, then it was cut off past the failure timeout: dead by silence, a
    failover of nothing. Its leaving heartbeats come through late: it is told it may stop
    (`finished`), and not readmitted, so its `left` changes nothing. Before, the late heartbeat
    readmitted it, and the exited process joined the map as ACTIVE, to be failed over again
    (`leave-faults` seeds 232 and 388)."""
    harness = ManagerHarness(handoffs_per_server_max=8)
    harness.join(*SERVERS)
    assert harness.open_session(PARTS) is not None
    others = leave_and_finish(harness, "s2")
    harness.tick(4_000, alive=others)
    (dead,) = harness.events(ServerDeclaredDead)
    assert dead.cause is DeathCause.SILENCE
    failovers = len(harness.events(FailoverStarted))
    beat(harness, "s2")
    drain_report = harness.take("s2", DrainReported)[-1]
    assert drain_report.finished and drain_report.failed_over is True
    beat(harness, "s2", left=True)
    harness.tick(4_000, alive=others)
    assert harness.manager.membership.state_of("s2") is MemberState.DEAD
    assert harness.map.server("s2").state is ServerState.DEAD
    assert [e.server_id for e in harness.events(ServerJoined)].count("s2") == 1
    assert len(harness.events(ServerDeclaredDead)) == 1
    assert len(harness.events(FailoverStarted)) == failovers


def test_a_readmitted_server_that_leaves_before_its_join_commits_does_not_join() -> None:
    """Dead by silence, s2 is heard again and readmitted; SIGTERM comes while its join waits in
    the store: it holds nothing, is told so, and its `left` makes it dead again, so the join is
    dropped instead of listing the gone process ACTIVE."""
    harness = ManagerHarness(handoffs_per_server_max=8)
    harness.join(*SERVERS)
    assert harness.open_session(PARTS) is not None
    others = tuple(s for s in SERVERS if s != "s2")
    harness.tick(4_000, alive=others)
    complete_failover(harness, others)
    held = HeldCommit(harness)
    harness.router.store_executors[MANAGER] = held
    harness.heartbeat("s2")
    assert harness.manager.membership.state_of("s2") is MemberState.JOINING and held.held
    beat(harness, "s2")
    assert harness.take("s2", DrainReported)[-1].finished
    beat(harness, "s2", left=True)
    assert harness.manager.membership.state_of("s2") is MemberState.DEAD
    held.release()
    harness.router.store_executors[MANAGER] = harness.execute
    harness.tick(2_000, alive=others)
    assert harness.map.server("s2").state is not ServerState.ACTIVE
    assert [e.cause for e in harness.events(ServerDeclaredDead)] == [
        DeathCause.SILENCE,
        DeathCause.LEFT,
    ]


def test_left_before_the_drain_finished_counts_as_leaving_and_silence_fails_it_over() -> None:
    """A heartbeat that says `left` while the map still gives the server roles (a sender that
    got it wrong, or a role given since): nothing is removed; it is a leaving heartbeat, and
    the server's silence then fails over what it holds, as at any stop."""
    harness = ManagerHarness(handoffs_per_server_max=8)
    harness.join(*SERVERS)
    assert harness.open_session(PARTS) is not None
    harness.departed.add("s2")
    harness.tick(100, alive=SERVERS)
    assert not harness.events(ServerDeclaredDead)
    assert harness.map.server("s2").state is ServerState.DRAINING
    assert harness.take("s2", DrainReported)
    harness.departed.discard("s2")
    harness.tick(5_000, alive=("s1", "s3", "s4"))
    (dead,) = harness.events(ServerDeclaredDead)
    assert (dead.server_id, dead.cause) == ("s2", DeathCause.SILENCE)
    assert harness.events(FailoverStarted)
    assert not any(e.change is MapChange.SERVER_LEFT for e in harness.events(MapCommitted))


def test_a_manager_that_loads_an_emptied_drain_reports_it_finished() -> None:
    """The leave's drain emptied s2, and the manager restarted (or a standby took over) before
    s2 heard `finished`: the successor resumes the drain from the map, finds s2 empty, and
    reports it finished. Before, nothing ended that drain, and s2 waited out its timeout."""
    first = ManagerHarness(handoffs_per_server_max=8)
    first.join(*SERVERS)
    assert first.open_session(PARTS) is not None
    first.leaving.add("s2")
    play(first, rounds=60)
    assert roles(first, "s2") == 0
    successor = ManagerHarness(store=first.store, handoffs_per_server_max=8)
    successor.leaving.add("s2")
    successor.tick(2_000, alive=SERVERS)
    assert successor.take("s2", DrainReported)[-1].finished
    assert not successor.manager.draining("s2")


def test_an_operator_drain_then_a_manager_restart_then_sigterm_finishes_at_once() -> None:
    """`forehand drain s2` (finished), a manager restart, then SIGTERM of s2: it is told it may
    stop, not left waiting for a drain nothing ends."""
    first = ManagerHarness(handoffs_per_server_max=8)
    first.join(*SERVERS)
    assert first.open_session(PARTS) is not None
    assert first.manager.drain("s2", now_us=first.router.now_us)
    play(first, rounds=60)
    assert first.events(DrainProgressed)[-1].finished
    successor = ManagerHarness(store=first.store, handoffs_per_server_max=8)
    successor.leaving.add("s2")
    successor.tick(2_000, alive=SERVERS)
    assert successor.take("s2", DrainReported)[-1].finished


def test_on_a_fleet_of_two_nothing_counts_as_waiting_while_a_handoff_of_it_runs() -> None:
    """Fleet of two: s1 leaves; its primaries go to s2 and its replica roles must stay. While
    its last handoff still runs (assigned, not reported), no role counts as waiting, so s1 does
    not stop mid-handoff on the nowhere-to-go rule; once the handoff ended, they all do."""
    servers = ("s1", "s2")
    harness = ManagerHarness(handoffs_per_server_max=8, handoff_deadline_ms=20_000)
    harness.join(*servers)
    for index in range(4):
        assert harness.open_session(PARTS, client=f"c{index}") is not None
    harness.leaving.add("s1")
    held: list[HandoffAssigned] = []
    play(harness, rounds=40, held=held, alive=servers)
    assert held and not harness.map.parts_for("s1").primary
    reports = harness.take("s1", DrainReported)
    assert reports and all(r.roles_waiting == 0 and not r.finished for r in reports)
    (late,) = held
    done = HandoffCompleted(handoff_id=late.handoff_id, server_id="s1", parts=late.parts)
    harness.router.send("s1", MANAGER, done)
    harness.tick(1_000, alive=servers)
    last = harness.take("s1", DrainReported)[-1]
    assert 0 < last.roles_left == last.roles_waiting and last.primaries_left == 0


def test_a_merely_suspected_peer_does_not_make_the_roles_count_as_waiting() -> None:
    """Two servers; s2 falls silent (suspected, not dead) while s1 leaves: its primaries cannot
    move for now, but s2 may be back in a moment (or be failed over), so nothing counts as
    waiting and s1 does not stop with every primary; once s2 heartbeats again they move."""
    servers = ("s1", "s2")
    harness = ManagerHarness(suspect_timeout_ms=300, failure_timeout_ms=5_000)
    harness.join(*servers)
    for index in range(3):
        assert harness.open_session(PARTS, client=f"c{index}") is not None
    harness.tick(500, alive=servers)
    harness.leaving.add("s1")
    harness.tick(2_500, alive=("s1",))
    reports = harness.take("s1", DrainReported)
    assert reports and reports[-1].primaries_left > 0
    assert all(r.roles_waiting == 0 for r in reports)


def test_after_a_manager_restart_a_server_not_heard_from_takes_no_part() -> None:
    """A manager that loaded the map knows s4 only from it: s4 may have died while no manager
    watched. A leave right after the restart used to hand parts to it, which then failed over
    in turn; they now go only to servers heard from since."""
    first = ManagerHarness(handoffs_per_server_max=8)
    first.join(*SERVERS)
    for index in range(4):
        assert first.open_session(PARTS, client=f"c{index}") is not None
    successor = ManagerHarness(store=first.store, handoffs_per_server_max=8)
    alive = ("s1", "s2", "s3")
    successor.leaving.add("s2")
    play(successor, rounds=20, alive=alive)
    targets = {e.target for e in successor.events(HandoffStarted)}
    assert targets and "s4" not in targets
