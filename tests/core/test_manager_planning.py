"""Tests of the manager's planning helpers: replicas, rendezvous order, stability, endpoints."""

from __future__ import annotations

import random

from forehand.core._manager_planning import (
    endpoint_for,
    fill_replicas,
    rendezvous_order,
    stabilize,
    stabilize_additions,
)
from forehand.placement import (
    PartKey,
    PlacementConfig,
    ServerJoined,
    ShardMap,
    new_session_id,
)

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
