"""Review tests of the manager's failover and commit paths (each failed before its fix)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from forehand.core._manager_events import (
    DeathCause,
    FailoverCompleted,
    FailoverStarted,
    PartsLost,
    PartsUnreplicated,
    ServerDeclaredDead,
)
from forehand.core._membership import MemberState
from forehand.core.messages import HeartbeatReported, PartRef
from forehand.placement import ServerState
from forehand.stores import DeltaCommitRequested
from forehand.wire import CloseSession

if TYPE_CHECKING:
    from tests.core._manager_helpers import (
        IDLE,
        MANAGER,
        HeldCommit,
        ManagerHarness,
        execute,
        opened_refs,
    )
else:
    from _manager_helpers import (
        IDLE,
        MANAGER,
        HeldCommit,
        ManagerHarness,
        execute,
        opened_refs,
    )

SERVERS = ("s1", "s2", "s3", "s4")
PARTS = ("auth", "cart", "feed", "chat", "mail", "pay")


def cluster(replica_count: int = 2, **overrides: Any) -> tuple[ManagerHarness, list[PartRef]]:
    """Four servers and one session of six parts."""
    harness = ManagerHarness(replica_count=replica_count, **overrides)
    harness.join(*SERVERS)
    opened = harness.open_session(PARTS)
    assert opened is not None
    return harness, opened_refs(opened)


def kill(harness: ManagerHarness, victim: str) -> list[str]:
    """Let `victim` fall silent until it is declared dead; the survivors."""
    survivors = [s for s in SERVERS if s != victim]
    harness.tick(700, alive=survivors)
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == [victim]
    return survivors


def test_a_candidate_fenced_in_several_messages_counts_once_it_answered_them_all() -> None:
    """With the parts split over several FailoverPrepared, the job waits for every answer."""
    harness, _ = cluster(failover_prepare_parts_max=1)
    victim = max(SERVERS, key=lambda server_id: len(harness.primaries(server_id)))
    victim_parts = harness.primaries(victim)
    assert len(victim_parts) >= 2
    replicas = {ref: harness.placement(ref).replicas for ref in victim_parts}
    survivors = kill(harness, victim)
    later: list[tuple[str, int, dict[PartRef, int]]] = []
    for server_id in survivors:
        for index, prepared in enumerate(harness.prepared(server_id)):
            assert len(prepared.parts) == 1
            # The last replica in promotion order is the most advanced one, on every part.
            seqs = {ref: 10 + replicas[ref].index(server_id) * 5 for ref in prepared.parts}
            if index == 0:
                harness.positions(server_id, prepared.map_version, seqs)
            else:
                later.append((server_id, prepared.map_version, seqs))
    assert later, "some candidate holds more than one of the dead primary's parts"
    # Each candidate answered its first message only: the others are still due.
    assert harness.events(FailoverCompleted) == []
    for server_id, fence_version, seqs in later:
        harness.positions(server_id, fence_version, seqs)
    (done,) = harness.events(FailoverCompleted)
    assert harness.events(PartsLost) == []
    assert {p.ref for p in done.promotions} == set(victim_parts)
    for promoted in done.promotions:
        assert promoted.primary == replicas[promoted.ref][-1]
        assert harness.placement(promoted.ref).primary == promoted.primary


def test_a_candidate_dead_before_answering_does_not_hold_the_promotion_to_its_deadline() -> None:
    """When the last candidate still awaited dies (here: restarts), the job promotes at once."""
    harness, _ = cluster(failover_prepare_timeout_ms=60_000)
    victim_parts = harness.primaries("s1")
    survivors = kill(harness, "s1")
    prepares = {server_id: harness.prepared(server_id) for server_id in survivors}
    restarting = next(server_id for server_id in survivors if prepares[server_id])
    for server_id in survivors:
        if server_id != restarting:
            for prepared in prepares[server_id]:
                seqs = dict.fromkeys(prepared.parts, 4)
                harness.positions(server_id, prepared.map_version, seqs)
    assert harness.events(FailoverCompleted) == []
    # The one candidate still awaited restarts: its new incarnation holds nothing, and the old
    # one will never answer.
    harness.announce(restarting, incarnation=2)
    completed = harness.events(FailoverCompleted)
    assert [done.servers for done in completed][:1] == [("s1",)]
    assert {p.ref for p in completed[0].promotions} <= set(victim_parts)
    for promoted in completed[0].promotions:
        assert promoted.primary != restarting


@pytest.mark.parametrize("answer", ["late", "lost"])
def test_a_new_server_dead_while_its_join_commits_is_failed_over(answer: str) -> None:
    """A server declared dead while its first join is in flight does not stay in the map."""
    harness, _ = cluster(store_timeout_ms=5_000)
    for _ in range(10):
        assert harness.open_session(("auth", "cart", "feed", "chat"))
    held = HeldCommit(harness)
    harness.router.store_executors[MANAGER] = held
    harness.announce("s5")
    harness.router.run()
    assert held.held and "s5" not in {entry.server_id for entry in harness.map.servers}
    # s5 never heartbeats: it dies while its join is in the store but not yet answered.
    harness.tick(700, alive=SERVERS)
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s5"]
    if answer == "late":
        held.release()
    else:
        held.held = []
        harness.tick(5_000, alive=SERVERS)
    harness.tick(1_000, alive=SERVERS)
    assert harness.manager.membership.state_of("s5") is MemberState.DEAD
    assert harness.map.server("s5").state is ServerState.DEAD
    roles = harness.map.parts_for("s5")
    assert not roles.primary and not roles.replica


@pytest.mark.parametrize("replica_count", [0, 2])
def test_a_promotion_whose_answer_is_lost_still_reports_its_decisions(replica_count: int) -> None:
    """The promotion lands but its answer is lost: the reload's rebuild still reports every
    part promoted (FailoverCompleted) or lost (PartsLost), not an empty failover."""
    harness, _ = cluster(replica_count=replica_count, store_timeout_ms=300)
    for _ in range(5):
        assert harness.open_session(("auth", "cart", "feed", "chat"))
    victim_parts = set(harness.primaries("s1"))
    held = HeldCommit(harness)
    harness.router.store_executors[MANAGER] = held
    survivors = kill(harness, "s1")
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 3))
    assert held.held, "the promotion's answer was kept back"
    held.held = []
    harness.tick(1_000, alive=survivors)
    (done,) = harness.events(FailoverCompleted)
    promoted = {p.ref for p in done.promotions}
    lost = {ref for event in harness.events(PartsLost) for ref in event.parts}
    assert promoted | lost == victim_parts
    if replica_count == 0:
        assert lost == victim_parts
    for promotion in done.promotions:
        assert harness.placement(promotion.ref).primary == promotion.primary


def s1_left_alone(harness: ManagerHarness, refs: list[PartRef]) -> PartRef:
    """Every server but s1 falls silent and is failed over (s1 holds the newest logs): a part
    s1 was a replica of ends with s1 its primary and no replica; that part."""
    ref = next(r for r in refs if "s1" in harness.placement(r).replicas)
    harness.tick(700, alive=["s1"])
    for server_id in ("s2", "s3", "s4"):
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 0))
    for prepared in harness.prepared("s1"):
        harness.positions("s1", prepared.map_version, dict.fromkeys(prepared.parts, 5))
    harness.tick(300, alive=["s1"])
    assert harness.placement(ref).primary == "s1" and harness.placement(ref).replicas == ()
    return ref


def test_a_restarted_manager_tops_up_the_replicas_its_predecessor_left_short() -> None:
    """The repair a join queued dies with its manager: the next one loading the map does it."""
    harness, refs = cluster()
    ref = s1_left_alone(harness, refs)
    # s2 comes back; its join commits, and the manager stops before the repair behind it does.
    commits: list[DeltaCommitRequested] = []

    def stopping(request: object) -> object:
        if isinstance(request, DeltaCommitRequested):
            commits.append(request)
            if len(commits) > 1:
                return None
        return execute(harness.store, request)

    harness.router.store_executors[MANAGER] = stopping
    harness.announce("s2", incarnation=2)
    harness.tick(100, alive=["s1", "s2"])
    assert len(commits) == 2, "the join and the repair behind it"
    assert harness.map.server("s2").state is ServerState.ACTIVE
    restarted = ManagerHarness(store=harness.store)
    restarted.tick(1_000, alive=["s1", "s2"])
    assert restarted.placement(ref).replicas == ("s2",)


def test_a_server_restarted_while_no_manager_watched_is_not_taken_for_its_old_self() -> None:
    """A new manager hears from a restarted server (no map, so none of its old parts) by a
    heartbeat before its announcement: the old incarnation is declared dead and fails over."""
    harness, _ = cluster()
    held = harness.primaries("s1")
    assert held
    successor = ManagerHarness(store=harness.store)
    # s1's process restarted while the old manager was gone: its first heartbeat holds no map,
    # and the announcement it sends with every such heartbeat follows.
    fresh = HeartbeatReported(
        server_id="s1",
        incarnation=2,
        sequence=1,
        map_version=0,
        load=IDLE,
        parts=(),
    )
    successor.router.send("s1", MANAGER, fresh)
    successor.announce("s1", incarnation=2)
    (dead,) = successor.events(ServerDeclaredDead)
    assert dead.server_id == "s1" and dead.cause is DeathCause.RESTARTED
    # Nobody answers the fence: the live holders get it once more, then their heartbeats decide.
    successor.tick(500, alive=["s2", "s3", "s4"])
    assert set(held).isdisjoint(successor.primaries("s1"))


def test_a_failover_opened_by_a_dropped_change_prepares_without_waiting_for_another_input() -> None:
    """A failover a rebuilt change opens (the reload shows a dead member's join landed) fences
    the survivors right away, not at whatever input comes next."""
    harness, _ = cluster(store_timeout_ms=5_000)
    for _ in range(10):
        assert harness.open_session(("auth", "cart", "feed", "chat"))
    held = HeldCommit(harness)
    harness.router.store_executors[MANAGER] = held
    announced_us = harness.router.now_us
    harness.announce("s5")
    harness.router.run()
    harness.tick(4_900, alive=SERVERS)
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s5"]
    held.held = []
    assert harness.events(FailoverStarted) == []
    # Nothing but the store's silence: the reload shows the join, its rebuild is dropped.
    harness.router.advance_to(announced_us + 5_000 * 1000)
    (started,) = harness.events(FailoverStarted)
    assert started.servers == ("s5",)


def test_a_session_closed_while_the_commit_queue_is_full_is_still_removed() -> None:
    """CLOSE_SESSION that meets a full queue (a failover holds it) is kept, not forgotten: the
    session's parts leave the map once the queue drains."""
    harness, _ = cluster(pending_deltas_max=4, failover_prepare_timeout_ms=5_000)
    closing = harness.open_session(("auth", "cart"), client="c2")
    assert closing is not None
    survivors = kill(harness, "s1")
    # While positions are collected nothing commits: sessions opened now fill the queue.
    for index in range(6):
        assert harness.open_session(("late",), client=f"c{10 + index}") is None
    harness.router.send("c2", MANAGER, CloseSession(session_id=closing.session_id))
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    harness.tick(2_000, alive=survivors)
    assert harness.events(FailoverCompleted)
    remaining = [key for key in harness.map.part_keys() if key.session_id == closing.session_id]
    assert remaining == []


def test_a_replica_repair_that_met_a_full_queue_is_queued_later() -> None:
    """A join whose commit lands while the queue is full still gets its replica repair."""
    harness, refs = cluster(pending_deltas_max=4, store_timeout_ms=5_000)
    ref = s1_left_alone(harness, refs)
    held = HeldCommit(harness)
    harness.router.store_executors[MANAGER] = held
    harness.announce("s2", incarnation=2)
    harness.router.run()
    assert held.held, "the join's answer is kept back"
    # Sessions open behind the join until the queue is full; then the join's answer comes.
    for index in range(6):
        assert harness.open_session(("late",), client=f"c{10 + index}") is None
    held.release()
    harness.tick(500, alive=["s1", "s2"])
    assert harness.placement(ref).replicas == ("s2",)


def test_a_failover_counts_the_hash_placed_parts_it_left_without_their_replica() -> None:
    """Two servers, one replica each: s1 dies and every part ends on s2 alone, those s2 already
    led (their only replica was s1) as well as those promoted: all are counted and reported."""
    harness = ManagerHarness(replica_count=1)
    harness.join("s1", "s2")
    opened = harness.open_session(PARTS)
    assert opened is not None
    refs = opened_refs(opened)
    assert any(harness.placement(ref).primary == "s2" for ref in refs)
    harness.tick(700, alive=["s2"])
    for prepared in harness.prepared("s2"):
        harness.positions("s2", prepared.map_version, dict.fromkeys(prepared.parts, 1))
    harness.tick(300, alive=["s2"])
    assert all(harness.placement(ref).replicas == () for ref in refs)
    (done,) = harness.events(FailoverCompleted)
    (unreplicated,) = harness.events(PartsUnreplicated)
    assert done.parts_without_replica == unreplicated.parts == len(refs)


def _unreplicated(harness: ManagerHarness) -> int:
    """Parts the committed map gives no replica."""
    current = harness.map
    return sum(1 for key in current.part_keys() if not current.lookup(key).replicas)


def test_a_promotion_whose_answer_is_lost_still_counts_the_parts_it_left_without_replica() -> None:
    """The promotion that leaves s1 alone lands but its answer is lost: the reload's rebuild,
    which has nothing left to change, still reports the parts the landed map left with no
    replica."""
    harness, refs = cluster(store_timeout_ms=300)
    held = HeldCommit(harness)
    harness.router.store_executors[MANAGER] = held
    harness.tick(700, alive=["s1"])
    for server_id in ("s2", "s3", "s4"):
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 0))
    for prepared in harness.prepared("s1"):
        harness.positions("s1", prepared.map_version, dict.fromkeys(prepared.parts, 5))
    assert held.held, "the promotion's answer was kept back"
    held.held = []
    harness.tick(1_000, alive=["s1"])
    expected = _unreplicated(harness)
    assert expected == len(refs)
    (done,) = harness.events(FailoverCompleted)
    (unreplicated,) = harness.events(PartsUnreplicated)
    assert done.parts_without_replica == unreplicated.parts == expected
