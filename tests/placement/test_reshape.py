"""Server-set changes derived from the last assignment equal a rebuild and move only what must."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forehand.placement import (
    InvalidDeltaError,
    Operation,
    PartKey,
    PartsAdded,
    PartsRemoved,
    Placement,
    PlacementConfig,
    PlacementOverridden,
    ServerDrained,
    ServerJoined,
    ServerMarkedDead,
    ServerReweighted,
    ServerState,
    ServerUndrained,
    ShardMap,
    _apply,
    _reshape,
    _ring,
    new_session_id,
)
from forehand.placement._ring import RingLayout

_PARTS = ("auth", "cart", "feature/video")


def _cluster(config: PlacementConfig, server_count: int, zones: int) -> ShardMap:
    shard_map = ShardMap.empty(config=config)
    joins = [
        ServerJoined(
            server_id=f"server-{index:02d}",
            address=f"10.0.0.{index}:4433",
            zone=f"zone-{index % zones}",
        )
        for index in range(server_count)
    ]
    return shard_map.apply(shard_map.delta(*joins))


def _with_sessions(shard_map: ShardMap, count: int, rng: random.Random) -> ShardMap:
    operations: list[Operation] = [
        PartsAdded(session_id=new_session_id(now_ms=1_700_000_000_000 + i, rng=rng), parts=_PARTS)
        for i in range(count)
    ]
    return shard_map.apply(shard_map.delta(*operations))


def _rebuild(shard_map: ShardMap) -> ShardMap:
    return ShardMap.build(
        config=shard_map.config,
        version=shard_map.version,
        servers=shard_map.servers,
        parts=list(shard_map.part_keys()),
        overrides=list(shard_map.overrides()),
    )


def _assert_same_map(incremental: ShardMap, rebuilt: ShardMap) -> None:
    assert incremental.servers == rebuilt.servers
    one, other = incremental._state.engine, rebuilt._state.engine
    assert incremental._state.eligible.names == rebuilt._state.eligible.names
    assert one.zones == other.zones and one.zone_count == other.zone_count
    assert one.capacities == other.capacities
    assert one.thresholds == other.thresholds
    for table in ("members", "skipped", "replicas"):
        assert [list(a) for a in getattr(one, table)] == [list(a) for a in getattr(other, table)]
    assert list(one.layout.points) == list(other.layout.points)  # type: ignore[attr-defined]
    assert list(one.layout.owners) == list(other.layout.owners)  # type: ignore[attr-defined]
    assert incremental.encode() == rebuilt.encode()


def _engine_contents(shard_map: ShardMap) -> list[list[list[int]]]:
    engine = shard_map._state.engine
    return [[list(a) for a in getattr(engine, t)] for t in ("members", "skipped", "replicas")]


@contextmanager
def _counting_reshapes() -> Iterator[list[int]]:
    """Counts server-set changes derived incrementally ([0]) and left to a rebuild ([1])."""
    counts = [0, 0]
    original: Callable[..., Any] = _reshape.reshape_engine

    def counted(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        counts[0 if result is not None else 1] += 1
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_apply, "reshape_engine", counted)
        yield counts


def _server_operation(
    shard_map: ShardMap, rng: random.Random, counter: list[int], zones: int
) -> Operation:
    servers = shard_map.servers
    active = [e.server_id for e in servers if e.state is ServerState.ACTIVE]
    draining = [e.server_id for e in servers if e.state is ServerState.DRAINING]
    roll = rng.random()
    if roll < 0.2 or len(active) < 4:
        counter[0] += 1
        return ServerJoined(
            server_id=f"joined-{counter[0]:03d}",
            address="10.1.0.1:4433",
            zone=f"zone-{rng.randrange(zones)}",
            weight=rng.choice((0.5, 1.0, 2.0)),
        )
    if roll < 0.4 and draining:
        return ServerUndrained(server_id=rng.choice(draining))
    server_id = rng.choice(active)
    if roll < 0.6:
        return ServerMarkedDead(server_id=server_id)
    if roll < 0.8:
        return ServerDrained(server_id=server_id)
    return ServerReweighted(server_id=server_id, weight=rng.choice((0.5, 1.0, 1.5, 3.0)))


def _part_operation(shard_map: ShardMap, rng: random.Random, counter: list[int]) -> Operation:
    keys = sorted(shard_map.part_keys())
    live = [e.server_id for e in shard_map.servers if e.state is not ServerState.DEAD]
    roll = rng.random()
    if roll < 0.5 or not keys:
        counter[0] += 1
        return PartsAdded(session_id=new_session_id(now_ms=counter[0], rng=rng), parts=("auth",))
    key = rng.choice(keys)
    if roll < 0.75:
        return PartsRemoved(session_id=key.session_id, parts=(key.part,))
    chosen = rng.sample(live, 2)
    placement = Placement(primary=chosen[0], replicas=(chosen[1],))
    return PlacementOverridden(
        session_id=key.session_id,
        part=key.part,
        placement=None if rng.random() < 0.3 else placement,
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    epsilon=st.sampled_from([0.02, 0.1, 0.25, 1.0]),
    replica_count=st.integers(0, 2),
    zones=st.sampled_from([1, 2, 3, 4]),
)
def test_server_changes_equal_a_rebuild(
    seed: int, epsilon: float, replica_count: int, zones: int
) -> None:
    """Deaths, drains, undrains, joins and new weights, mixed with part changes in one delta,
    derive exactly the map a rebuild computes, most of them without rebuilding, and leave the
    version they apply to as it was."""
    rng = random.Random(seed)
    config = PlacementConfig(
        load_epsilon=epsilon, replica_count=replica_count, ring_points_per_weight=16
    )
    shard_map = _with_sessions(_cluster(config, 12, zones), 150, rng)
    counter = [0]
    with _counting_reshapes() as counts:
        for _ in range(14):
            operations = [_server_operation(shard_map, rng, counter, zones)]
            operations += [
                _part_operation(shard_map, rng, counter) for _ in range(rng.randrange(3))
            ]
            rng.shuffle(operations)
            before = _engine_contents(shard_map)
            try:
                updated = shard_map.apply(shard_map.delta(*operations))
            except InvalidDeltaError:
                continue
            finally:
                assert _engine_contents(shard_map) == before, "a delta changed its base version"
            _assert_same_map(updated, _rebuild(updated))
            shard_map = updated
    assert counts[0] > counts[1]


def _primaries(shard_map: ShardMap) -> dict[PartKey, str]:
    return {key: shard_map.primary_of(key) for key in shard_map.part_keys()}


def _big_map(epsilon: float) -> ShardMap:
    config = PlacementConfig(load_epsilon=epsilon, ring_points_per_weight=100)
    return _with_sessions(_cluster(config, 40, 3), 1_000, random.Random(5))


def _refuse_rebuilds(patch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a server change rebuilt the whole assignment")

    patch.setattr(_apply, "rebuild_engine", refuse)


def test_death_moves_only_the_dead_servers_parts_without_a_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room everywhere, a death moves exactly the dead server's primaries, each to the next
    server of its walk, and it is derived without a rebuild."""
    shard_map = _big_map(1.0)
    before = _primaries(shard_map)
    _refuse_rebuilds(monkeypatch)
    dead = shard_map.apply(shard_map.mark_server_dead("server-07"))
    after = _primaries(dead)
    moved = {key for key in before if before[key] != after[key]}
    assert moved == {key for key, server in before.items() if server == "server-07"}
    monkeypatch.undo()
    _assert_same_map(dead, _rebuild(dead))


def test_join_takes_parts_only_onto_the_newcomer(monkeypatch: pytest.MonkeyPatch) -> None:
    """With room everywhere, every part a join moves goes to the new server."""
    shard_map = _big_map(1.0)
    before = _primaries(shard_map)
    _refuse_rebuilds(monkeypatch)
    joined = shard_map.apply(
        shard_map.join_server(server_id="server-99", address="10.0.0.99:4433", zone="zone-1")
    )
    after = _primaries(joined)
    moved = {key for key in before if before[key] != after[key]}
    assert moved
    assert {after[key] for key in moved} == {"server-99"}
    monkeypatch.undo()
    _assert_same_map(joined, _rebuild(joined))


@pytest.mark.parametrize("change", ["dead", "drain", "reweight", "join"])
def test_tight_bounds_move_few_parts_and_hold_the_bound(
    change: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At epsilon 0.05 a server change displaces parts beyond the changed server's own, but few,
    and no ACTIVE server goes over its bound."""
    shard_map = _big_map(0.05)
    before = _primaries(shard_map)
    delta = {
        "dead": shard_map.mark_server_dead("server-11"),
        "drain": shard_map.drain_server("server-11"),
        "reweight": shard_map.reweight_server("server-11", 2.0),
        "join": shard_map.join_server(server_id="server-99", address="a:1", zone="zone-0"),
    }[change]
    _refuse_rebuilds(monkeypatch)
    updated = shard_map.apply(delta)
    monkeypatch.undo()
    after = _primaries(updated)
    own = sum(1 for server in before.values() if server == "server-11")
    moved = sum(1 for key in before if before[key] != after[key])
    assert moved <= 3 * max(own, len(before) // 40)
    bounds = updated.load_bounds()
    for server_id, load in updated.primary_loads().items():
        assert load <= bounds[server_id]
    _assert_same_map(updated, _rebuild(updated))


def test_two_zones_and_two_replicas_are_derived_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """With as many replicas as zones (passed-over servers fill the last places) a death and a
    join are still derived, and equal a rebuild."""
    config = PlacementConfig(replica_count=2, ring_points_per_weight=100)
    shard_map = _with_sessions(_cluster(config, 30, 2), 500, random.Random(4))
    _refuse_rebuilds(monkeypatch)
    dead = shard_map.apply(shard_map.mark_server_dead("server-08"))
    joined = dead.apply(dead.join_server(server_id="server-99", address="a:1", zone="zone-1"))
    monkeypatch.undo()
    _assert_same_map(dead, _rebuild(dead))
    _assert_same_map(joined, _rebuild(joined))


def test_a_zone_emptied_falls_back_to_a_rebuild() -> None:
    """When a change empties a zone the replica rule changes for every part: the map rebuilds,
    and the result is the same as one built from scratch."""
    config = PlacementConfig(replica_count=2, ring_points_per_weight=16)
    shard_map = _with_sessions(_cluster(config, 7, 4), 60, random.Random(3))
    with _counting_reshapes() as counts:
        dead = shard_map.apply(shard_map.mark_server_dead("server-03"))
    assert counts == [0, 1]
    _assert_same_map(dead, _rebuild(dead))


def test_ring_points_that_tie_order_by_owner_however_the_ring_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Equal points (forced here) order by owner index in a fresh ring and in one derived from the
    previous ring by a leave, a join and a new weight."""

    def few_points(server_id: str, count: int) -> bytes:
        rng = random.Random(server_id)
        return b"".join(rng.randrange(40).to_bytes(8, "little") for _ in range(count))

    monkeypatch.setattr(_ring, "server_points_bytes", few_points)
    config = PlacementConfig(ring_points_per_weight=20)
    names = [f"s{index}" for index in range(8)]
    weights = [1000] * 8
    first = RingLayout(names, weights, config)
    pairs = sorted(zip(first.points, first.owners, strict=True))
    assert list(first.points) == [point for point, _ in pairs]
    assert list(first.owners) == [owner for _, owner in pairs]
    assert any(a == b for a, b in zip(first.points, first.points[1:], strict=False))
    for new_names, new_weights in (
        (names[:3] + names[4:], [1000] * 7),
        ([*names, "s9"], [1000] * 9),
        (names, [1000, 1000, 3000, 1000, 1000, 1000, 1000, 1000]),
    ):
        derived = RingLayout(new_names, new_weights, config, previous=first)
        fresh = RingLayout(new_names, new_weights, config)
        assert list(derived.points) == list(fresh.points)
        assert list(derived.owners) == list(fresh.owners)
        assert list(derived._starts) == list(fresh._starts)
