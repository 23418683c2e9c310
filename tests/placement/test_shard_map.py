"""The shard map: deltas equal rebuilds, stale deltas fail, loads stay bounded, replicas spread."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forehand.placement import (
    Delta,
    InvalidDeltaError,
    Operation,
    PartKey,
    PartKeyCollisionError,
    PartsAdded,
    PartsRemoved,
    Placement,
    PlacementConfig,
    PlacementOverridden,
    ServerDrained,
    ServerJoined,
    ServerLeft,
    ServerMarkedDead,
    ServerReweighted,
    ServerState,
    ServerUndrained,
    ShardMap,
    StaleDeltaError,
    UnknownPartKeyError,
    new_session_id,
)

_PARTS = ("auth", "cart", "feature/video", "profile")


def _cluster(
    server_count: int, *, zones: int = 3, config: PlacementConfig | None = None
) -> ShardMap:
    shard_map = ShardMap.empty(config=config or PlacementConfig(ring_points_per_weight=64))
    joins = [
        ServerJoined(
            server_id=f"server-{index:02d}",
            address=f"10.0.0.{index}:4433",
            zone=f"zone-{index % zones}",
        )
        for index in range(server_count)
    ]
    return shard_map.apply(shard_map.delta(*joins))


def _with_sessions(
    shard_map: ShardMap, count: int, *, seed: int = 1, parts: tuple[str, ...] = ("auth", "cart")
) -> tuple[ShardMap, list[PartKey]]:
    rng = random.Random(seed)
    operations: list[Operation] = []
    keys: list[PartKey] = []
    for index in range(count):
        session_id = new_session_id(now_ms=1_700_000_000_000 + index, rng=rng)
        operations.append(PartsAdded(session_id=session_id, parts=parts))
        keys.extend(PartKey(session_id=session_id, part=part) for part in parts)
    return shard_map.apply(shard_map.delta(*operations)), keys


def _rebuild(shard_map: ShardMap) -> ShardMap:
    return ShardMap.build(
        config=shard_map.config,
        version=shard_map.version,
        servers=shard_map.servers,
        parts=list(shard_map.part_keys()),
        overrides=list(shard_map.overrides()),
    )


def _assert_same_map(incremental: ShardMap, rebuilt: ShardMap) -> None:
    assert incremental.version == rebuilt.version
    assert incremental.servers == rebuilt.servers
    for key in rebuilt.part_keys():
        assert incremental.lookup(key) == rebuilt.lookup(key)
    one, other = incremental._state.engine, rebuilt._state.engine
    assert one.capacities == other.capacities
    assert one.thresholds == other.thresholds
    for table in ("members", "skipped", "replicas"):
        assert [list(a) for a in getattr(one, table)] == [list(a) for a in getattr(other, table)]
    assert incremental.encode() == rebuilt.encode()


def _random_operation(shard_map: ShardMap, rng: random.Random, counter: list[int]) -> Operation:
    servers = shard_map.servers
    keys = sorted(shard_map.part_keys())
    live = [entry.server_id for entry in servers if entry.state is not ServerState.DEAD]
    roll = rng.random()
    if roll < 0.08 or not servers:
        counter[0] += 1
        return ServerJoined(
            server_id=f"joined-{counter[0]}",
            address="10.1.0.1:4433",
            zone=f"zone-{rng.randrange(3)}",
            weight=rng.choice((0.5, 1.0, 2.0)),
        )
    if roll < 0.45 or not keys:
        counter[0] += 1
        session_id = new_session_id(now_ms=counter[0], rng=rng)
        return PartsAdded(session_id=session_id, parts=tuple(rng.sample(_PARTS, rng.randint(1, 3))))
    key = rng.choice(keys)
    if roll < 0.6:
        return PartsRemoved(session_id=key.session_id, parts=(key.part,))
    if roll < 0.8 and live:
        chosen = rng.sample(live, min(len(live), rng.randint(1, 3)))
        placement = Placement(primary=chosen[0], replicas=tuple(chosen[1:]))
        return PlacementOverridden(
            session_id=key.session_id,
            part=key.part,
            placement=None if rng.random() < 0.3 else placement,
        )
    server_id = rng.choice(servers).server_id
    return rng.choice(
        (
            ServerDrained(server_id=server_id),
            ServerUndrained(server_id=server_id),
            ServerMarkedDead(server_id=server_id),
            ServerLeft(server_id=server_id),
            ServerReweighted(server_id=server_id, weight=rng.choice((0.5, 1.0, 3.0))),
        )
    )


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(["ring", "ring", "maglev", "rendezvous"]),
    epsilon=st.sampled_from([0.02, 0.1, 0.5]),
    replica_count=st.integers(0, 3),
)
def test_deltas_applied_in_order_equal_a_rebuild(
    seed: int, strategy: str, epsilon: float, replica_count: int
) -> None:
    """After every delta the map equals one built from scratch from its contents."""
    rng = random.Random(seed)
    config = PlacementConfig(
        strategy=strategy,
        load_epsilon=epsilon,
        replica_count=replica_count,
        ring_points_per_weight=16,
        maglev_table_size=251,
    )
    shard_map = _cluster(4, config=config)
    counter = [0]
    for _ in range(25):
        operations = [_random_operation(shard_map, rng, counter) for _ in range(rng.randint(1, 4))]
        try:
            updated = shard_map.apply(shard_map.delta(*operations))
        except InvalidDeltaError:
            continue
        assert updated.version == shard_map.version + 1
        _assert_same_map(updated, _rebuild(updated))
        shard_map = updated


def test_stale_delta_is_refused() -> None:
    """A delta whose base is not the current version raises StaleDeltaError, in both directions."""
    shard_map = _cluster(3)
    delta = shard_map.add_session_parts(new_session_id(now_ms=1, rng=random.Random(1)), ["auth"])
    newer = shard_map.apply(delta)
    with pytest.raises(StaleDeltaError) as raised:
        newer.apply(delta)
    assert raised.value.base_version == shard_map.version
    assert raised.value.current_version == newer.version
    with pytest.raises(StaleDeltaError):
        shard_map.apply(Delta(base_version=shard_map.version + 5, operations=()))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    epsilon=st.sampled_from([0.01, 0.05, 0.25, 1.0]),
    server_count=st.integers(1, 12),
    sessions=st.integers(0, 400),
)
def test_no_server_exceeds_the_load_bound(
    seed: int, epsilon: float, server_count: int, sessions: int
) -> None:
    """Every ACTIVE server holds at most ceil((1 + epsilon) x its weighted share) primaries."""
    rng = random.Random(seed)
    config = PlacementConfig(load_epsilon=epsilon, ring_points_per_weight=32)
    shard_map = ShardMap.empty(config=config)
    weights = [rng.choice((0.5, 1.0, 1.0, 2.0, 4.0)) for _ in range(server_count)]
    joins = [
        ServerJoined(server_id=f"s{index}", address="a:1", zone="z", weight=weight)
        for index, weight in enumerate(weights)
    ]
    shard_map = shard_map.apply(shard_map.delta(*joins))
    shard_map, keys = _with_sessions(shard_map, sessions, seed=seed)
    for key in keys[: len(keys) // 3]:
        shard_map = shard_map.apply(shard_map.remove_session_parts(key.session_id, [key.part]))
    loads = shard_map.primary_loads()
    bounds = shard_map.load_bounds()
    active = sum(loads.values())
    assert active == len(shard_map)
    total_weight = sum(round(weight * 1000) for weight in weights)
    for index, weight in enumerate(weights):
        server_id = f"s{index}"
        share = (1 + epsilon) * active * round(weight * 1000) / total_weight
        assert loads[server_id] <= bounds[server_id] <= share + 1


@settings(max_examples=30, deadline=None)
@given(
    zones=st.integers(1, 5),
    server_count=st.integers(1, 10),
    replica_count=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_replicas_are_distinct_and_span_zones(
    zones: int, server_count: int, replica_count: int, seed: int
) -> None:
    """Copies of a part sit on distinct servers, in as many zones as there are copies or zones."""
    config = PlacementConfig(replica_count=replica_count, ring_points_per_weight=32)
    shard_map, keys = _with_sessions(
        _cluster(server_count, zones=zones, config=config), 60, seed=seed
    )
    zone_of = {entry.server_id: entry.zone for entry in shard_map.servers}
    zone_count = len(set(zone_of.values()))
    for key in keys:
        placement = shard_map.lookup(key)
        copies = placement.servers
        assert len(set(copies)) == len(copies) == 1 + min(replica_count, server_count - 1)
        assert len({zone_of[server] for server in copies}) == min(len(copies), zone_count)


def test_lookup_of_an_unknown_key_raises() -> None:
    """A part that is not in the map has no placement."""
    shard_map, _ = _with_sessions(_cluster(3), 5)
    stranger = PartKey(session_id=new_session_id(now_ms=9, rng=random.Random(9)), part="auth")
    assert stranger not in shard_map
    with pytest.raises(UnknownPartKeyError):
        shard_map.lookup(stranger)
    with pytest.raises(UnknownPartKeyError):
        shard_map.primary_of(stranger)


def test_parts_for_agrees_with_lookups() -> None:
    """Each server's primary and replica lists are exactly the lookups that name it."""
    shard_map, keys = _with_sessions(_cluster(6), 150)
    shard_map = shard_map.apply(
        shard_map.override_placement(keys[0], Placement(primary="server-03", replicas=()))
    )
    for entry in shard_map.servers:
        held = shard_map.parts_for(entry.server_id)
        expected_primary = sorted(k for k in keys if shard_map.lookup(k).primary == entry.server_id)
        expected_replica = sorted(
            k for k in keys if entry.server_id in shard_map.lookup(k).replicas
        )
        assert list(held.primary) == expected_primary
        assert list(held.replica) == expected_replica
        assert shard_map.primary_of(keys[0]) == "server-03"


def test_overrides_pin_and_release() -> None:
    """An override wins over the hash; clearing it restores the hash placement exactly."""
    shard_map, keys = _with_sessions(_cluster(5), 40)
    key = keys[7]
    hashed = shard_map.lookup(key)
    target = next(e.server_id for e in shard_map.servers if e.server_id != hashed.primary)
    pinned = shard_map.apply(
        shard_map.override_placement(key, Placement(primary=target, replicas=(hashed.primary,)))
    )
    assert pinned.lookup(key) == Placement(primary=target, replicas=(hashed.primary,))
    assert pinned.is_overridden(key)
    assert pinned.override_count == 1
    released = pinned.apply(pinned.override_placement(key, None))
    assert released.lookup(key) == hashed
    assert not released.is_overridden(key)
    _assert_same_map(released, _rebuild(released))


def test_drain_pins_parts_and_places_nothing_new() -> None:
    """Draining keeps every part where it is and sends new parts elsewhere."""
    shard_map, keys = _with_sessions(_cluster(5), 200)
    before = {key: shard_map.lookup(key) for key in keys}
    drained = shard_map.apply(shard_map.drain_server("server-02"))
    assert drained.server("server-02").state is ServerState.DRAINING
    holding = [key for key in keys if "server-02" in before[key].servers]
    assert holding
    for key in holding:
        assert drained.lookup(key) == before[key]
        assert drained.is_overridden(key)
    more, new_keys = _with_sessions(drained, 100, seed=77)
    for key in new_keys:
        assert "server-02" not in more.lookup(key).servers
    _assert_same_map(more, _rebuild(more))


def test_mark_dead_takes_a_server_out_of_hash_placement() -> None:
    """A dead server's hash-placed parts move; other parts mostly keep their primary."""
    shard_map, keys = _with_sessions(_cluster(8), 400)
    before = {key: shard_map.lookup(key) for key in keys}
    dead = shard_map.apply(shard_map.mark_server_dead("server-05"))
    others = [key for key in keys if before[key].primary != "server-05"]
    kept = sum(dead.lookup(key).primary == before[key].primary for key in others)
    assert kept / len(others) > 0.95
    for key in keys:
        assert "server-05" not in dead.lookup(key).servers
    with pytest.raises(InvalidDeltaError):
        dead.apply(dead.override_placement(keys[0], Placement(primary="server-05")))


def test_leaving_requires_drain_or_death_and_no_override() -> None:
    """ACTIVE servers cannot leave; a server named by an override cannot leave until it is moved."""
    shard_map, _ = _with_sessions(_cluster(4), 20)
    with pytest.raises(InvalidDeltaError):
        shard_map.apply(shard_map.leave_server("server-01"))
    drained = shard_map.apply(shard_map.drain_server("server-01"))
    with pytest.raises(InvalidDeltaError):
        drained.apply(drained.leave_server("server-01"))
    pinned = [key for key, placement in drained.overrides() if "server-01" in placement.servers]
    moved = drained.apply(
        drained.delta(
            *(
                PlacementOverridden(session_id=key.session_id, part=key.part, placement=None)
                for key in pinned
            )
        )
    )
    gone = moved.apply(moved.leave_server("server-01"))
    assert "server-01" not in {entry.server_id for entry in gone.servers}
    assert gone.parts_for("server-00").primary


def test_invalid_deltas_change_nothing() -> None:
    """A refused delta raises and leaves the map as it was (all or nothing)."""
    shard_map, keys = _with_sessions(_cluster(3), 10)
    encoded = shard_map.encode()
    session_id = new_session_id(now_ms=5, rng=random.Random(5))
    refused = [
        shard_map.delta(
            PartsAdded(session_id=session_id, parts=("auth",)),
            PartsAdded(session_id=keys[0].session_id, parts=(keys[0].part,)),
        ),
        shard_map.remove_session_parts(session_id, ["auth"]),
        shard_map.override_placement(keys[0], Placement(primary="nobody")),
        shard_map.undrain_server("server-00"),
        shard_map.mark_server_dead("no-such-server"),
        shard_map.join_server(server_id="server-00", address="a:1", zone="z"),
        shard_map.reweight_server("server-00", 1000.0),
    ]
    for delta in refused:
        with pytest.raises(InvalidDeltaError):
            shard_map.apply(delta)
    assert shard_map.encode() == encoded


def test_last_active_server_cannot_die_with_hash_parts() -> None:
    """Hash-placed parts need an ACTIVE server: the last one must drain (pinning) before dying."""
    shard_map, _ = _with_sessions(_cluster(1), 5)
    with pytest.raises(InvalidDeltaError):
        shard_map.apply(shard_map.mark_server_dead("server-00"))
    drained = shard_map.apply(shard_map.drain_server("server-00"))
    assert drained.override_count == len(drained)
    dead = drained.apply(drained.mark_server_dead("server-00"))
    assert dead.server("server-00").state is ServerState.DEAD


def test_colliding_key_hashes_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two different keys with the same stable hash cannot both be in the map."""
    shard_map = _cluster(2)
    monkeypatch.setattr("forehand.placement._ids.part_key_hash", lambda session_id, part: 42)
    session_id = new_session_id(now_ms=1, rng=random.Random(1))
    with pytest.raises(PartKeyCollisionError):
        shard_map.apply(shard_map.add_session_parts(session_id, ["auth", "cart"]))


def test_map_version_counts_deltas() -> None:
    """Each applied delta adds one to the version; the older map is unchanged."""
    shard_map = _cluster(2)
    version = shard_map.version
    updated = shard_map.apply(shard_map.delta())
    assert updated.version == version + 1
    assert shard_map.version == version


def _walk_all(shard_map: ShardMap) -> Iterator[tuple[PartKey, Placement]]:
    for key in sorted(shard_map.part_keys()):
        yield key, shard_map.lookup(key)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_diff_reports_exactly_what_changed(seed: int) -> None:
    """diff(a, b) lists the added, removed and moved parts a brute-force comparison finds.

    A part moved when its primary or its set of replicas changed.
    """
    rng = random.Random(seed)
    config = PlacementConfig(load_epsilon=0.05, ring_points_per_weight=16)
    versions = [_cluster(4, config=config)]
    counter = [0]
    while len(versions) < 10:
        current = versions[-1]
        operations = [_random_operation(current, rng, counter) for _ in range(rng.randint(1, 3))]
        try:
            versions.append(current.apply(current.delta(*operations)))
        except InvalidDeltaError:
            continue
    source, target = rng.sample(versions, 2)
    diff = source.diff(target)
    before = dict(_walk_all(source))
    after = dict(_walk_all(target))
    assert list(diff.added) == sorted(set(after) - set(before))
    assert list(diff.removed) == sorted(set(before) - set(after))
    expected_moves = sorted(
        key
        for key in set(before) & set(after)
        if before[key].primary != after[key].primary
        or set(before[key].replicas) != set(after[key].replicas)
    )
    assert [move.key for move in diff.moved] == expected_moves
    for move in diff.moved:
        assert move.source == before[move.key]
        assert move.target == after[move.key]
    assert diff.unchanged_count == len(set(before) & set(after)) - len(expected_moves)
    source_ids = {entry.server_id for entry in source.servers}
    target_ids = {entry.server_id for entry in target.servers}
    assert {e.server_id for e in diff.servers_added} == target_ids - source_ids
    assert {e.server_id for e in diff.servers_removed} == source_ids - target_ids
