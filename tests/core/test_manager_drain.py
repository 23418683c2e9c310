"""Tests of drains: planned handoffs of every role off a server, capped, jittered, with progress."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forehand.core._manager_events import (
    DrainProgressed,
    FailoverCompleted,
    HandoffStarted,
    MapChange,
    MapCommitted,
    PartsUnreplicated,
)
from forehand.core.messages import (
    HandoffAssigned,
    HandoffCompleted,
    LoadReport,
    PartLoad,
    PartRef,
)
from forehand.placement import PartKey, Placement, ServerState
from forehand.wire import ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness, opened_refs
    from tests.core._manager_helpers import complete_handoffs as play_handoffs
else:
    from _manager_helpers import MANAGER, ManagerHarness, opened_refs
    from _manager_helpers import complete_handoffs as play_handoffs

SERVERS = ("s1", "s2", "s3", "s4")
PARTS = ("auth", "cart", "feed", "chat", "mail", "pay", "game", "news", "maps", "docs")


def cluster(**overrides: Any) -> tuple[ManagerHarness, list[PartRef]]:
    """Four servers, one session of ten parts."""
    harness = ManagerHarness(**overrides)
    harness.join(*SERVERS)
    opened = harness.open_session(PARTS)
    assert opened is not None
    return harness, opened_refs(opened)


def held(harness: ManagerHarness, server_id: str) -> int:
    """Roles (primary and replica) the map gives `server_id`."""
    parts = harness.map.parts_for(server_id)
    return len(parts.primary) + len(parts.replica)


def complete_handoffs(harness: ManagerHarness, rounds: int = 40) -> list[int]:
    """Play the sources: report each assigned handoff done; the concurrency seen each round."""
    concurrency = []
    for _ in range(rounds):
        concurrency.append(len(harness.manager.orchestrator.handoffs()))
        for server_id in SERVERS:
            for assigned in harness.take(server_id, HandoffAssigned):
                if assigned.source == server_id:
                    message = HandoffCompleted(
                        handoff_id=assigned.handoff_id, server_id=server_id, parts=assigned.parts
                    )
                    harness.router.send(server_id, MANAGER, message)
        harness.tick(100, alive=SERVERS)
    return concurrency


def test_drain_marks_the_server_and_moves_every_role_away() -> None:
    """DRAINING in the map, PLANNED_MAINTENANCE handoffs, replica roles moved, then finished."""
    harness, refs = cluster()
    total = held(harness, "s2")
    assert total > 0
    assert harness.manager.drain("s2", now_us=harness.router.now_us)
    harness.router.run()
    assert harness.map.server("s2").state is ServerState.DRAINING
    first = harness.events(DrainProgressed)[0]
    assert (first.parts_moved, first.parts_total, first.finished) == (0, total, False)
    complete_handoffs(harness)
    assert held(harness, "s2") == 0
    progress = harness.events(DrainProgressed)
    assert progress[-1].finished and progress[-1].parts_moved == progress[-1].parts_total == total
    moved = [p.parts_moved for p in progress]
    assert moved == sorted(moved)
    started = harness.events(HandoffStarted)
    assert started and all(e.reason is ReasonCode.PLANNED_MAINTENANCE for e in started)
    assert all(e.source == "s2" and e.target != "s2" for e in started)
    changes = {c.change for c in harness.events(MapCommitted)}
    assert {MapChange.DRAIN_MARKED, MapChange.HANDOFF_ASSIGNED} <= changes
    for ref in refs:
        assert "s2" not in harness.placement(ref).servers


def test_a_drain_moves_the_busiest_primaries_first() -> None:
    """The primaries the server reports busiest go first (a leave that times out fails over the
    parts least in use); one part per handoff, one handoff at a time, so the order shows."""
    harness, _ = cluster(handoffs_per_server_max=1, drain_handoff_parts_max=1)
    drained = max(SERVERS, key=lambda server_id: len(harness.primaries(server_id)))
    primaries = harness.primaries(drained)
    assert len(primaries) >= 3
    busiest = list(reversed(primaries))
    harness.loads[drained] = LoadReport(
        cpu_utilization=0.1,
        queue_depth=0,
        latency_us_p99=1_000,
        error_ratio=0.0,
        requests_per_second=10.0,
        part_loads=tuple(
            PartLoad(ref=ref, requests_per_second=float(len(busiest) - rank))
            for rank, ref in enumerate(busiest)
        ),
    )
    harness.tick(100, alive=SERVERS)
    assert harness.manager.drain(drained, now_us=harness.router.now_us)
    complete_handoffs(harness)
    moved = [e.parts[0] for e in harness.events(HandoffStarted) if e.source == drained]
    assert moved[: len(busiest)] == busiest


def test_a_drain_is_finished_only_once_its_last_handoff_ended() -> None:
    """The map moves a part when its handoff is assigned, before the source shipped its sealed
    log: with the server holding nothing in the map but a handoff of it still running, the
    drain is not finished (an operator stopping the server then sent those parts through
    failover); it finishes when that handoff ends."""
    harness, _ = cluster(handoffs_per_server_max=8, handoff_deadline_ms=10_000)
    assert harness.manager.drain("s2", now_us=harness.router.now_us)
    held_back: list[HandoffAssigned] = []
    for _ in range(30):  # 3 s: within the handoff deadline
        for server_id in SERVERS:
            for assigned in harness.take(server_id, HandoffAssigned):
                if assigned.source != server_id:
                    continue
                if not held_back:
                    held_back.append(assigned)  # the source never reports this one yet
                    continue
                message = HandoffCompleted(
                    handoff_id=assigned.handoff_id, server_id=server_id, parts=assigned.parts
                )
                harness.router.send(server_id, MANAGER, message)
        harness.tick(100, alive=SERVERS)
    assert held(harness, "s2") == 0 and held_back
    assert not any(p.finished for p in harness.events(DrainProgressed))
    (late,) = held_back
    harness.router.send(
        "s2",
        MANAGER,
        HandoffCompleted(handoff_id=late.handoff_id, server_id="s2", parts=late.parts),
    )
    harness.tick(100, alive=SERVERS)
    progress = harness.events(DrainProgressed)
    assert progress[-1].finished and sum(p.finished for p in progress) == 1


def test_a_drain_handoff_that_falls_back_to_failover_keeping_the_source_goes_on() -> None:
    """A drain's handoff that no side reports falls back to failover, which keeps the part on
    the drained source (it answered with the longer log): the drain is not finished while that
    failover runs, and moves the part again afterwards. Before, it finished at the abort and
    the server stayed DRAINING with the part still led there, moved by nothing."""
    harness, _ = cluster(handoffs_per_server_max=8)
    assert harness.manager.drain("s2", now_us=harness.router.now_us)
    held_back: list[HandoffAssigned] = []
    for _ in range(60):
        for server_id in SERVERS:
            for assigned in harness.take(server_id, HandoffAssigned):
                if assigned.source != server_id:
                    continue
                if not held_back:
                    held_back.append(assigned)  # silent until its deadline: failover
                    continue
                message = HandoffCompleted(
                    handoff_id=assigned.handoff_id, server_id=server_id, parts=assigned.parts
                )
                harness.router.send(server_id, MANAGER, message)
        for prepared in harness.prepared("s2"):
            # The source answers the fence with the longer log: it keeps the part.
            harness.positions("s2", prepared.map_version, {ref: 9 for ref in prepared.parts})
        harness.tick(100, alive=SERVERS)
    (late,) = held_back
    assert harness.events(FailoverCompleted)
    assert held(harness, "s2") == 0
    progress = harness.events(DrainProgressed)
    assert progress[-1].finished and sum(p.finished for p in progress) == 1
    moved_again = [e for e in harness.events(HandoffStarted) if late.parts[0] in e.parts]
    assert len(moved_again) == 2


def test_drain_respects_the_per_server_cap() -> None:
    """Never more than handoffs_per_server_max handoffs off the drained server at once."""
    harness, _ = cluster(handoffs_per_server_max=1, drain_handoff_parts_max=1)
    harness.manager.drain("s1", now_us=harness.router.now_us)
    concurrency = complete_handoffs(harness, rounds=60)
    assert max(concurrency) <= 1
    assert harness.events(DrainProgressed)[-1].finished


def test_drain_batches_are_jittered() -> None:
    """With jitter, the drain's handoffs start at spread-out instants."""
    harness, _ = cluster(handoff_parts_max=1, handoff_jitter_ms_max=200, handoffs_per_server_max=4)
    harness.manager.drain("s3", now_us=harness.router.now_us)
    complete_handoffs(harness)
    starts = [e.assigned_us for e in harness.events(HandoffStarted)]
    assert len(starts) >= 2 and len(set(starts)) == len(starts)


def test_a_draining_server_takes_no_new_parts_or_handoffs() -> None:
    """New sessions and other servers' handoffs avoid the draining server."""
    harness, _ = cluster()
    harness.manager.drain("s4", now_us=harness.router.now_us)
    harness.router.run()
    opened = harness.open_session(("extra", "more", "other"), client="c2")
    assert opened is not None
    for placement in opened.placements:
        assert placement.primary.server_id != "s4"
    complete_handoffs(harness)
    assert all(e.target != "s4" for e in harness.events(HandoffStarted))


def test_undrain_stops_the_drain() -> None:
    """undrain forgets queued moves and makes the server ACTIVE again."""
    harness, _ = cluster(handoffs_per_server_max=1, drain_handoff_parts_max=1)
    harness.manager.drain("s1", now_us=harness.router.now_us)
    harness.router.run()
    assert harness.manager.undrain("s1", now_us=harness.router.now_us)
    harness.router.run()
    assert harness.map.server("s1").state is ServerState.ACTIVE
    assert harness.manager.orchestrator.moves_of("s1") == []
    assert harness.events(MapCommitted)[-1].change is MapChange.DRAIN_CLEARED


def test_drain_refuses_unknown_and_repeated_requests() -> None:
    """Only an ACTIVE server of the map can start draining, once."""
    harness, _ = cluster()
    assert not harness.manager.drain("nobody", now_us=0)
    assert harness.manager.drain("s1", now_us=0)
    harness.router.run()
    assert not harness.manager.drain("s1", now_us=0)
    assert not harness.manager.undrain("s2", now_us=0)


def test_a_drained_server_dying_finishes_its_drain_through_failover() -> None:
    """If the draining server dies, failover takes what is left and the drain ends."""
    harness, refs = cluster(handoffs_per_server_max=1, handoff_parts_max=1)
    harness.manager.drain("s2", now_us=harness.router.now_us)
    harness.router.run()
    harness.tick(1_500, alive=["s1", "s3", "s4"])
    assert harness.events(DrainProgressed)[-1].finished
    for ref in refs:
        key = PartKey(session_id=ref.session_id, part=ref.part)
        if key in harness.map:
            assert harness.placement(ref).primary != "s2"


def test_a_drain_keeps_each_part_s_last_replica_while_no_other_server_can_take_it() -> None:
    """Two servers, one replica each part: draining s1 moves its primaries to s2 but leaves s1
    the replica of every part (dropping it would leave `replicated` parts unable to acknowledge
    a write while s1 is still up); the drain waits, saying how many roles wait, and once a third
    server joins they move to it and the drain finishes."""
    harness = ManagerHarness(replica_count=1)
    harness.join("s1", "s2")
    opened = harness.open_session(PARTS)
    assert opened is not None
    refs = opened_refs(opened)
    assert harness.manager.drain("s1", now_us=harness.router.now_us)
    play_handoffs(harness, ("s1", "s2"), 30)
    for ref in refs:
        assert harness.placement(ref) == Placement(primary="s2", replicas=("s1",))
    progress = harness.events(DrainProgressed)
    assert progress[0].primaries_left > 0
    last = progress[-1]
    assert not last.finished
    assert last.parts_waiting == held(harness, "s1") == len(refs)
    assert last.primaries_left == 0  # it serves nothing, though no role count went down
    # Waiting costs nothing: no pass over the server's replica roles until the map or the
    # eligible servers change (each pass looks up every role; at 100,000 parts, a second).
    manager = harness.manager
    passes = []
    build = manager._build_replica_moves

    def counted(current: Any, server_id: str) -> Any:
        passes.append(server_id)
        return build(current, server_id)

    manager._build_replica_moves = counted  # type: ignore[method-assign]
    play_handoffs(harness, ("s1", "s2"), 20)
    assert passes == []
    harness.join("s3")
    play_handoffs(harness, ("s1", "s2", "s3"), 30)
    for ref in refs:
        assert harness.placement(ref) == Placement(primary="s2", replicas=("s3",))
    assert passes
    last = harness.events(DrainProgressed)[-1]
    assert last.finished and last.parts_waiting == 0


def test_a_drain_of_the_last_active_server_says_every_role_waits() -> None:
    """With the other server drained too, nothing can move: every role of s2 waits."""
    harness = ManagerHarness(replica_count=1)
    harness.join("s1", "s2")
    harness.open_session(PARTS)
    assert harness.manager.drain("s1", now_us=harness.router.now_us)
    play_handoffs(harness, ("s1", "s2"), 30)
    assert harness.manager.drain("s2", now_us=harness.router.now_us)
    play_handoffs(harness, ("s1", "s2"), 10)
    progress = [e for e in harness.events(DrainProgressed) if e.server_id == "s2"]
    assert progress[-1].parts_waiting == held(harness, "s2") == len(PARTS)
    assert progress[-1].primaries_left == len(PARTS)
    assert not progress[-1].finished


def test_an_undrain_tops_up_the_replicas_a_failover_during_a_drain_could_not_place() -> None:
    """s3 drained and then s1 dead: the failover finds one live holder for each part and no
    ACTIVE server to add, so the parts keep no replica, which it reports (`PartsUnreplicated`,
    naming s3 as the server to undrain); undraining s3 tops them up."""
    harness = ManagerHarness()
    harness.join("s1", "s2", "s3")
    opened = harness.open_session(PARTS)
    assert opened is not None
    refs = opened_refs(opened)
    assert harness.manager.drain("s3", now_us=harness.router.now_us)
    play_handoffs(harness, ("s1", "s2", "s3"), 30)
    assert held(harness, "s3") == 0
    alive = ("s2", "s3")
    harness.tick(700, alive=alive)
    for server_id in alive:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    harness.tick(300, alive=alive)
    for ref in refs:
        assert harness.placement(ref) == Placement(primary="s2", replicas=())
    # Said, not left to the clients' timed-out writes to tell.
    (completed,) = harness.events(FailoverCompleted)
    assert completed.parts_without_replica == len(refs)
    (unreplicated,) = harness.events(PartsUnreplicated)
    assert (unreplicated.parts, unreplicated.servers, unreplicated.draining) == (
        len(refs),
        ("s1",),
        ("s3",),
    )
    assert harness.manager.undrain("s3", now_us=harness.router.now_us)
    harness.tick(600, alive=alive)
    for ref in refs:
        assert harness.placement(ref) == Placement(primary="s2", replicas=("s3",))
