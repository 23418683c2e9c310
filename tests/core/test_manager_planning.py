"""Tests of the manager's planning helpers: replicas, rendezvous order, stability, endpoints."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from forehand.core._manager_events import (
    HandoffStarted,
    MovesDropped,
    RiskFlagged,
    SessionRegistered,
)
from forehand.core._manager_planning import (
    REPLICA_CANDIDATES_MAX,
    candidate_window,
    endpoint_for,
    fill_replicas,
    rendezvous_order,
    stabilize,
    stabilize_additions,
    steer_additions,
)
from forehand.placement import (
    PartKey,
    PlacementConfig,
    ServerJoined,
    ServerState,
    ShardMap,
    new_session_id,
)

if TYPE_CHECKING:
    from tests.core._manager_helpers import ManagerHarness, complete_handoffs
else:
    from _manager_helpers import ManagerHarness, complete_handoffs

SERVERS = ("a", "b", "c", "d")


def populated(sessions: int = 200, seed: int = 3) -> ShardMap:
    """A map of four servers and `sessions` two-part sessions."""
    rng = random.Random(seed)
    current = ShardMap.empty(config=PlacementConfig(replica_count=2))
    for server_id in SERVERS:
        current = current.apply(
            current.join_server(server_id=server_id, address=f"{server_id}:1", zone=server_id)
        )
    for index in range(sessions):
        session_id = new_session_id(now_ms=1_000 + index, rng=rng)
        current = current.apply(current.add_session_parts(session_id, ["auth", "cart"]))
    return current


def key(index: int = 0) -> PartKey:
    return PartKey(session_id=new_session_id(now_ms=5, rng=random.Random(index)), part="auth")


def test_rendezvous_order_is_stable_and_spreads() -> None:
    """The order depends only on key and server ids; different keys get different leaders."""
    assert rendezvous_order(key(1), SERVERS) == rendezvous_order(key(1), reversed(SERVERS))
    leaders = {rendezvous_order(key(i), SERVERS)[0] for i in range(40)}
    assert len(leaders) == len(SERVERS)


def test_fill_replicas_keeps_then_tops_up() -> None:
    """Kept servers come first (minus the primary), then rendezvous picks, up to the count."""
    chosen = fill_replicas(key(), primary="a", keep=["a", "b"], eligible=SERVERS, count=3)
    assert chosen[0] == "b" and len(chosen) == 3 and "a" not in chosen
    assert len(set(chosen)) == 3
    assert fill_replicas(key(), primary="a", keep=[], eligible=["a"], count=2) == ()


def test_stabilize_pins_most_primaries_a_join_would_move() -> None:
    """A join moves many primaries by hash; the stabilized change moves far fewer."""
    current = populated()
    join = ServerJoined(server_id="e", address="e:1", zone="e")
    raw = current.apply(current.delta(join))
    raw_moves = sum(
        1 for moved in current.diff(raw).moved if moved.source.primary != moved.target.primary
    )
    stable = stabilize(current, [join], intended=lambda k: False)
    assert raw_moves > 20
    assert len(stable.implicit_moves) < raw_moves / 3
    assert stable.pinned and stable.new_map.version == current.version + 1
    for pinned in stable.pinned:
        assert stable.new_map.primary_of(pinned) == current.primary_of(pinned)


def test_stabilize_leaves_intended_moves_alone() -> None:
    """Parts the change means to move are never pinned back."""
    current = populated(50)
    victim = "a"
    moving = set(current.parts_for(victim).primary)
    stable = stabilize(
        current, current.mark_server_dead(victim).operations, intended=moving.__contains__
    )
    assert not moving & set(stable.pinned)
    for part in moving:
        assert stable.new_map.primary_of(part) != victim


def test_endpoint_for_parses_addresses_and_falls_back() -> None:
    """host:port becomes an endpoint; an unusable address names the server on the default port."""
    assert endpoint_for("s1", "10.0.0.1:7000").port == 7000
    assert endpoint_for("s1", "[::1]:7000").host == "::1"
    fallback = endpoint_for("s1", "")
    assert (fallback.host, fallback.port) == ("s1", 4433)


def test_additions_fast_path_never_misses_a_push() -> None:
    """Under tight bounds new sessions push existing parts; the count check always notices."""
    rng = random.Random(1)
    current = ShardMap.empty(config=PlacementConfig(replica_count=1, load_epsilon=0.05))
    for server_id in ("a", "b", "c"):
        current = current.apply(
            current.join_server(server_id=server_id, address=f"{server_id}:1", zone=server_id)
        )
    pushes = 0
    for index in range(300):
        session_id = new_session_id(now_ms=1_000 + index, rng=rng)
        operations = current.add_session_parts(session_id, ["auth", "cart"]).operations
        keys = [PartKey(session_id=session_id, part=part) for part in ("auth", "cart")]
        raw = current.apply(current.delta(*operations))
        moved = [m for m in current.diff(raw).moved if m.source.primary != m.target.primary]
        stable = stabilize_additions(current, operations, added=keys)
        if moved:
            pushes += 1
            assert stable.pinned or stable.implicit_moves
        else:
            assert stable.pinned == () and stable.implicit_moves == ()
        current = stable.new_map
    assert pushes > 10


def test_steer_additions_keeps_new_parts_off_avoided_servers() -> None:
    """New parts that hash onto an avoided server go elsewhere (without avoidance, some land)."""
    rng = random.Random(5)
    current = populated(100)
    landed = steered = 0
    for index in range(60):
        session_id = new_session_id(now_ms=9_000 + index, rng=rng)
        operations = current.add_session_parts(session_id, ["auth", "cart"]).operations
        keys = [PartKey(session_id=session_id, part=part) for part in ("auth", "cart")]
        plain = stabilize_additions(current, operations, added=keys)
        landed += sum(1 for key in keys if plain.new_map.primary_of(key) == "a")
        stable = steer_additions(
            current, operations, added=keys, avoid=frozenset({"a"}), eligible=SERVERS
        )
        steered += sum(1 for key in keys if stable.new_map.primary_of(key) == "a")
        current = stable.new_map
    assert landed > 10 and steered == 0
    last = new_session_id(now_ms=99_000, rng=rng)
    everyone = steer_additions(
        current,
        current.add_session_parts(last, ["auth"]).operations,
        added=[PartKey(session_id=last, part="auth")],
        avoid=frozenset(SERVERS),
        eligible=SERVERS,
    )
    assert everyone.pinned == ()  # every server avoided: the hash decides


FLAGGED = "s1"
MANAGER_SERVERS = ("s1", "s2", "s3", "s4")


def test_a_flagged_server_is_emptied_without_parts_spilling_back() -> None:
    """Under the default load_epsilon every primary moves off a flagged server and stays off.

    Bounded loads alone would push parts back onto it (PART_MOVED) once the others are at their
    bound; the risk drain mark takes it out of hash placement until its alarm ends.
    """
    harness = ManagerHarness(
        overload_parts_fraction=1.0,
        overload_cooldown_ms=2_000,
        handoffs_per_server_max=8,
        handoff_parts_max=16,
    )
    harness.join(*MANAGER_SERVERS)
    for _ in range(50):
        assert harness.open_session(("auth", "cart", "feed", "chat", "mail", "pay", "game", "news"))
    before = len(harness.primaries(FLAGGED))
    assert before > 60
    harness.heartbeat(FLAGGED, cpu=0.97)
    counts = complete_handoffs(harness, MANAGER_SERVERS, 40, counted=FLAGGED)
    assert counts[-1] == 0, counts
    assert all(b <= a for a, b in zip([before, *counts], counts, strict=False)), counts
    assert harness.map.server(FLAGGED).state is ServerState.DRAINING
    flags = harness.events(RiskFlagged)
    assert flags and all(flag.server_id == FLAGGED for flag in flags)
    opened = harness.open_session(("auth", "cart", "feed", "chat"))
    assert all(p.primary.server_id != FLAGGED for p in opened.placements)
    harness.heartbeat(FLAGGED, cpu=0.1)
    harness.tick(3_000, alive=MANAGER_SERVERS)
    assert harness.map.server(FLAGGED).state is ServerState.ACTIVE


def test_candidate_windows_cover_every_server_once_per_round() -> None:
    """Successive windows of a key's walk partition the servers; few servers: all, ranked."""
    servers = [f"s{index:03d}" for index in range(103)]
    for index in range(5):
        seen: list[str] = []
        for window in range(-(-len(servers) // 8)):
            group = candidate_window(key(index), servers, count=8, window=window)
            assert 0 < len(group) <= 8
            assert group == rendezvous_order(key(index), group)
            seen.extend(group)
        assert sorted(seen) == servers
        assert candidate_window(key(index), servers, count=8, window=13) == candidate_window(
            key(index), servers, count=8, window=0
        )
    few = servers[:6]
    assert candidate_window(key(1), few, count=8, window=3) == rendezvous_order(key(1), few)


def test_fill_replicas_ranks_a_bounded_sample_in_a_large_fleet() -> None:
    """With more eligible servers than the bound, picks come from the key's first window."""
    servers = [f"s{index:05d}" for index in range(5_000)]
    chosen = fill_replicas(key(2), primary="s00000", keep=[], eligible=servers, count=2)
    sample = candidate_window(key(2), servers, count=REPLICA_CANDIDATES_MAX + 1)
    assert len(set(chosen)) == 2 and set(chosen) <= set(sample) and "s00000" not in chosen


BUSY_CPU = 0.8
"""Above the target CPU bound (0.75), below the rule's overload threshold (0.9)."""


def fleet(count: int) -> tuple[str, ...]:
    """Server ids s01, s02, ..."""
    return tuple(f"s{index:02d}" for index in range(1, count + 1))


def busy_harness(servers: tuple[str, ...], *, free: tuple[str, ...], **overrides: Any) -> Any:
    """A manager over `servers`, every one busy (no target) except `free`, with sessions."""
    harness = ManagerHarness(handoff_target_candidates_max=4, **overrides)
    harness.join(*servers)
    for _ in range(60):
        assert harness.open_session(("auth", "cart"))
    for server_id in servers:
        harness.heartbeat(server_id, cpu=0.1 if server_id in free else BUSY_CPU)
    return harness


def test_a_planning_pass_examines_at_most_k_candidates_per_move() -> None:
    """No target anywhere: one pass looks at K servers per move, and inputs before the retry
    timer plan nothing more (planning runs on its timer, not after every input)."""
    servers = fleet(40)
    harness = busy_harness(servers, free=())
    manager = harness.manager
    session_id = harness.events(SessionRegistered)[0].session_id
    before = manager.target_candidates_examined
    queued = manager.handoff(session_id, now_us=harness.router.now_us)
    harness.router.run()
    examined = manager.target_candidates_examined - before
    assert queued == 2 and 0 < examined <= 2 * 4
    for server_id in servers:
        harness.heartbeat(server_id)
    assert manager.target_candidates_examined - before == examined
    assert manager.orchestrator.queued_moves == 2


def test_queued_moves_are_all_placed_when_a_target_exists() -> None:
    """One server of thirty has headroom: every primary of a drained server reaches it, though
    each pass looks at only K candidates per move (the windows walk the whole fleet)."""
    servers = fleet(30)
    harness = busy_harness(servers, free=("s17",), replica_count=1)
    drained = "s03"
    held = harness.primaries(drained)
    assert held
    assert harness.manager.drain(drained, now_us=harness.router.now_us)
    complete_handoffs(harness, servers, 60, tick_ms=200)
    assert harness.primaries(drained) == []
    for ref in held:
        assert harness.placement(ref).primary == "s17"
    assert not harness.events(MovesDropped)


def test_no_move_lands_on_a_flagged_or_draining_server() -> None:
    """Moves pick neither the server the risk policy flagged nor the one being drained, even
    when both have the most headroom."""
    servers = fleet(12)
    flagged, drained = "s01", "s02"
    harness = busy_harness(
        servers,
        free=(flagged, drained, "s07", "s11"),
        overload_latency_us_p99=100_000,
        overload_cooldown_ms=600_000,
    )
    harness.heartbeat(flagged, cpu=0.05, latency_us_p99=500_000)
    assert harness.events(RiskFlagged)
    assert harness.manager.drain(drained, now_us=harness.router.now_us)
    for session in harness.events(SessionRegistered)[:30]:
        harness.manager.handoff(session.session_id, now_us=harness.router.now_us)
    complete_handoffs(harness, servers, 40, tick_ms=200)
    started = harness.events(HandoffStarted)
    assert len(started) > 10
    assert all(handoff.target not in (flagged, drained) for handoff in started)
    assert {handoff.target for handoff in started} <= {"s07", "s11"}
