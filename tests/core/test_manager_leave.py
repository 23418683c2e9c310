"""Tests of a server's planned stop at the manager: heartbeats that say `leaving` start the
server's drain, and each is answered with where the drain stands (`DrainReported`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._manager_events import (
    DrainProgressed,
    HandoffStarted,
    ServerDeclaredDead,
    ServerLeaving,
)
from forehand.core.messages import DrainReported, HandoffAssigned, HandoffCompleted
from forehand.placement import ServerState
from forehand.wire import ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness, opened_refs
else:
    from _manager_helpers import MANAGER, ManagerHarness, opened_refs

SERVERS = ("s1", "s2", "s3", "s4")
PARTS = ("auth", "cart", "feed", "chat", "mail", "pay", "game", "news", "maps", "docs")


def roles(harness: ManagerHarness, server_id: str) -> int:
    parts = harness.map.parts_for(server_id)
    return len(parts.primary) + len(parts.replica)


def play(
    harness: ManagerHarness, *, rounds: int, held: list[HandoffAssigned] | None = None
) -> None:
    """Let time pass in 100 ms rounds, every source reporting its assigned handoffs done (with
    `held`, the first is kept back in it instead)."""
    for _ in range(rounds):
        for server_id in SERVERS:
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
        harness.tick(100, alive=SERVERS)


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
    assert harness.take("s2", DrainReported)[-1].finished


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
