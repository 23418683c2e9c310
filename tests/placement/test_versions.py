"""Map versions cost what they change: the lineage fast paths equal the full computations."""

from __future__ import annotations

import gc
import random
import weakref
from collections import Counter
from dataclasses import replace

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
    UnknownPartKeyError,
    new_session_id,
)
from forehand.placement._diff import (
    BULK_PLACEMENTS_MIN,
    PartMoved,
    changes_between,
    placement_of_hash,
    placements_of_hashes,
    same_servers,
)
from forehand.placement._lineage import STEPS_MAX, new_lineage
from forehand.placement._state import count_pinned_active, load_bounds

_PARTS = ("auth", "cart", "feature/video")


def _cluster(
    config: PlacementConfig, servers: int, sessions: int, seed: int, *, zones: int = 3
) -> ShardMap:
    rng = random.Random(seed)
    shard_map = ShardMap.empty(config=config)
    joins = [
        ServerJoined(server_id=f"s{index:02d}", address=f"h{index}:1", zone=f"z{index % zones}")
        for index in range(servers)
    ]
    shard_map = shard_map.apply(shard_map.delta(*joins))
    adds = [
        PartsAdded(session_id=new_session_id(now_ms=index, rng=rng), parts=_PARTS)
        for index in range(sessions)
    ]
    return shard_map.apply(shard_map.delta(*adds))


def _full(shard_map: ShardMap) -> ShardMap:
    """The same version without its lineage: every reader takes the whole-map path."""
    return ShardMap(replace(shard_map._state, lineage=new_lineage()))


def _handoff(shard_map: ShardMap, key: PartKey, rng: random.Random) -> Operation:
    live = [e.server_id for e in shard_map.servers if e.state is not ServerState.DEAD]
    chosen = rng.sample(live, min(len(live), rng.randint(1, 3)))
    placement = Placement(primary=chosen[0], replicas=tuple(chosen[1:]))
    return PlacementOverridden(
        session_id=key.session_id,
        part=key.part,
        placement=None if rng.random() < 0.25 else placement,
    )


def _operation(shard_map: ShardMap, rng: random.Random, counter: list[int]) -> Operation:
    """Mostly handoffs, some sessions opened and closed, now and then a server change."""
    keys = sorted(shard_map.part_keys())
    roll = rng.random()
    if roll < 0.6 and keys:
        return _handoff(shard_map, rng.choice(keys), rng)
    if roll < 0.75 or not keys:
        counter[0] += 1
        session_id = new_session_id(now_ms=10_000 + counter[0], rng=rng)
        return PartsAdded(session_id=session_id, parts=tuple(rng.sample(_PARTS, 2)))
    if roll < 0.9:
        key = rng.choice(keys)
        return PartsRemoved(session_id=key.session_id, parts=(key.part,))
    server_id = rng.choice(shard_map.servers).server_id
    if roll < 0.93:
        counter[0] += 1
        return ServerJoined(server_id=f"j{counter[0]}", address="h:2", zone=f"z{counter[0] % 3}")
    return rng.choice(
        (
            ServerDrained(server_id=server_id),
            ServerUndrained(server_id=server_id),
            ServerMarkedDead(server_id=server_id),
            ServerReweighted(server_id=server_id, weight=rng.choice((0.5, 2.0))),
        )
    )


def _counted_loads(shard_map: ShardMap) -> dict[str, int]:
    """Primary counts by looking every part up."""
    active = {e.server_id for e in shard_map.servers if e.state is ServerState.ACTIVE}
    counts = Counter(shard_map.primary_of(key) for key in shard_map.part_keys())
    return {server_id: counts.get(server_id, 0) for server_id in sorted(active)}


def _check_version(shard_map: ShardMap) -> None:
    state = shard_map._state
    assert shard_map.servers == tuple(entry for _, entry in sorted(state.servers.items()))
    assert state.pinned_active == count_pinned_active(state.pinned, state.eligible)
    loads = shard_map.primary_loads()
    assert loads == _full(shard_map).primary_loads() == _counted_loads(shard_map)
    # The admin view's counts, without listing the parts, equal the lists' lengths.
    sessions = shard_map.primary_sessions()
    assert set(sessions) == {entry.server_id for entry in shard_map.servers}
    replica_loads = shard_map.replica_loads()
    active = {e.server_id for e in shard_map.servers if e.state is ServerState.ACTIVE}
    assert set(replica_loads) == active
    for entry in shard_map.servers:
        held = shard_map.parts_for(entry.server_id)
        assert shard_map.part_counts(entry.server_id) == (len(held.primary), len(held.replica))
        assert sessions[entry.server_id] == len({key.session_id for key in held.primary})
        if entry.server_id in active:
            assert replica_loads[entry.server_id] == len(held.replica)
    names = state.eligible.names
    weights = [state.servers[name].weight_milli for name in names]
    expected = load_bounds(state.config, weights, sum(loads.values()))
    assert shard_map.load_bounds() == dict(zip(names, expected, strict=True))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(["ring", "ring", "maglev"]),
    replica_count=st.integers(0, 2),
    epsilon=st.sampled_from([0.05, 0.25]),
)
@pytest.mark.slow
def test_version_fast_paths_equal_the_full_computation(
    seed: int, strategy: str, replica_count: int, epsilon: float
) -> None:
    """Over random delta sequences, diff (both ways, across up to 40 versions), primary_loads,
    servers, load_bounds and the count of override primaries equal the whole-map computations."""
    rng = random.Random(seed)
    config = PlacementConfig(
        strategy=strategy,
        replica_count=replica_count,
        load_epsilon=epsilon,
        ring_points_per_weight=16,
        maglev_table_size=251,
    )
    versions = [_cluster(config, servers=8, sessions=40, seed=seed)]
    counter = [0]
    while len(versions) < 45:
        current = versions[-1]
        operations = [_operation(current, rng, counter) for _ in range(rng.randint(1, 6))]
        try:
            following = current.apply(current.delta(*operations))
        except InvalidDeltaError:
            continue
        versions.append(following)
        if rng.random() < 0.3:
            _check_version(following)
        older = versions[max(0, len(versions) - 1 - rng.randint(1, 40))]
        for source, target in ((current, following), (older, following), (following, older)):
            assert source.diff(target) == _full(source).diff(_full(target))
    _check_version(versions[-1])


def test_consecutive_versions_name_only_what_the_delta_wrote() -> None:
    """A handoff's version records a few buckets and arrays, and its diff finds the one move."""
    config = PlacementConfig(ring_points_per_weight=16)
    before = _cluster(config, servers=30, sessions=200, seed=3)
    key = min(before.part_keys())
    placement = before.lookup(key)
    target = next(e.server_id for e in before.servers if e.server_id not in placement.servers)
    after = before.apply(before.override_placement(key, Placement(primary=target)))
    changes = changes_between(before._state, after._state)
    assert changes is not None and changes.arrays is not None
    assert len(changes.override_buckets) == 1 and not changes.part_buckets
    assert 0 < len(changes.arrays) < 30
    assert changes.pinned == {target}
    diff = before.diff(after)
    moved = {change.key for change in diff.moved}
    assert key in moved and diff.added == () and diff.removed == ()
    assert diff == _full(before).diff(_full(after))


def test_unrelated_and_distant_versions_take_the_full_path() -> None:
    """Versions built apart share no lineage, and one more than STEPS_MAX deltas back is not
    remembered: both compare in full, and still diff correctly."""
    config = PlacementConfig(ring_points_per_weight=16)
    first = _cluster(config, servers=10, sessions=50, seed=5)
    built = ShardMap.decode(first.encode())
    assert changes_between(first._state, built._state) is None
    assert first.diff(built).moved == ()
    rng = random.Random(9)
    current = first
    keys = sorted(first.part_keys())
    for _ in range(STEPS_MAX + 2):
        current = current.apply(current.delta(_handoff(current, rng.choice(keys), rng)))
    assert len(current._state.lineage.steps) == STEPS_MAX
    assert changes_between(first._state, current._state) is None
    assert first.diff(current) == _full(first).diff(_full(current))


def test_lineage_keeps_no_older_version_alive() -> None:
    """A version remembers what changed, not the versions before it: an array only an old
    version held is freed once that version is dropped."""
    config = PlacementConfig(ring_points_per_weight=16, replica_count=0)
    first = _cluster(config, servers=10, sessions=50, seed=7)
    first.primary_loads()
    key = min(first.part_keys())
    primary = first.primary_of(key)
    position = first._state.eligible.index[primary]
    held = weakref.ref(first._state.engine.members[position])
    other = next(e.server_id for e in first.servers if e.server_id != primary)
    second = first.apply(first.override_placement(key, Placement(primary=other)))
    assert second._state.engine.members[position] is not held()
    del first
    gc.collect()
    assert held() is None
    assert second.primary_loads() == _counted_loads(second)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    strategy=st.sampled_from(["ring", "ring", "maglev", "rendezvous"]),
    replica_count=st.integers(0, 3),
    zones=st.sampled_from([1, 2, 3, 8]),
    points=st.sampled_from([4, 16, 1000]),
    epsilon=st.sampled_from([0.02, 0.25]),
)
def test_bulk_placements_equal_one_at_a_time(
    *, seed: int, strategy: str, replica_count: int, zones: int, points: int, epsilon: float
) -> None:
    """`placements_of_hashes` (a diff over many parts) and `ShardMap.lookup_many` (a failover)
    give every part the placement a lookup gives it, with overrides, bounded-load walks and any
    zone layout; and a server's death diffs the same in bulk as one part at a time."""
    rng = random.Random(seed)
    config = PlacementConfig(
        strategy=strategy,
        replica_count=replica_count,
        load_epsilon=epsilon,
        ring_points_per_weight=points,
        maglev_table_size=251,
    )
    shard_map = _cluster(config, servers=8, sessions=150, seed=seed, zones=zones)
    servers = [entry.server_id for entry in shard_map.servers]
    keys = sorted(shard_map.part_keys())
    pins = []
    for key in rng.sample(keys, 40):
        chosen = rng.sample(servers, rng.randint(1, replica_count + 1))
        placement = Placement(primary=chosen[0], replicas=tuple(chosen[1:]))
        pins.append(
            PlacementOverridden(session_id=key.session_id, part=key.part, placement=placement)
        )
    before = shard_map.apply(shard_map.delta(*pins))
    state = before._state
    hashes = sorted(key.key_hash for key in keys)
    assert placements_of_hashes(state, hashes) == [placement_of_hash(state, h) for h in hashes]
    # The map's own bulk lookup, in any order of keys, in bulk and one at a time.
    shuffled = rng.sample(keys, len(keys))
    assert before.lookup_many(shuffled) == [before.lookup(key) for key in shuffled]
    assert before.lookup_many(shuffled[:5]) == [before.lookup(key) for key in shuffled[:5]]
    after = before.apply(before.delta(ServerMarkedDead(server_id=rng.choice(servers))))
    diff = before.diff(after)
    assert len(keys) >= BULK_PLACEMENTS_MIN
    expected = []
    for key in keys:
        source, target = before.lookup(key), after.lookup(key)
        if not same_servers(source, target):
            expected.append(PartMoved(key=key, source=source, target=target))
    assert list(diff.moved) == expected
    assert diff.unchanged_count == len(keys) - len(expected)


def test_lookup_many_refuses_a_key_not_in_the_map() -> None:
    """A bulk lookup fails like one lookup on a key the map does not hold."""
    shard_map = _cluster(PlacementConfig(replica_count=1), servers=4, sessions=200, seed=3)
    keys = sorted(shard_map.part_keys())
    missing = PartKey(session_id=new_session_id(now_ms=1, rng=random.Random(9)), part="other")
    for batch in (keys[:3], keys):
        with pytest.raises(UnknownPartKeyError):
            shard_map.lookup_many([*batch, missing])
