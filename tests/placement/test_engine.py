"""The bounded-load engine: incremental edits equal the greedy rebuild; loads stay bounded."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from forehand.placement import PlacementConfig, build_layout
from forehand.placement._engine import CLOSED, UNBOUNDED, Engine, build_engine
from forehand.placement._layout import Layout, choose_replicas


def _rebuild(engine: Engine, keys: set[int]) -> Engine:
    return build_engine(
        layout=engine.layout,
        zones=engine.zones,
        replica_count=engine.replica_target,
        capacities=engine.capacities,
        sorted_hashes=sorted(keys),
    )


def _assert_same(incremental: Engine, rebuilt: Engine) -> None:
    assert incremental.capacities == rebuilt.capacities
    assert incremental.thresholds == rebuilt.thresholds
    for table in ("members", "skipped", "replicas"):
        assert [list(values) for values in getattr(incremental, table)] == [
            list(values) for values in getattr(rebuilt, table)
        ], table


def _greedy_reference(layout: Layout, capacities: list[int], keys: list[int]) -> dict[int, int]:
    loads = [0] * layout.server_count
    owner = {}
    for key in sorted(keys):
        server = next(s for s in layout.walk(key) if loads[s] < capacities[s])
        loads[server] += 1
        owner[key] = server
    return owner


@settings(max_examples=80, deadline=None)
@given(
    strategy=st.sampled_from(["ring", "maglev", "rendezvous"]),
    server_count=st.integers(1, 7),
    seed=st.integers(0, 2**32),
    steps=st.integers(1, 120),
)
def test_incremental_edits_equal_rebuild(
    strategy: str, server_count: int, seed: int, steps: int
) -> None:
    """Any interleaving of inserts, deletes and capacity changes ends where a rebuild does."""
    rng = random.Random(seed)
    config = PlacementConfig(strategy=strategy, ring_points_per_weight=8, maglev_table_size=101)
    names = [f"s{index}" for index in range(server_count)]
    layout = build_layout(names, [rng.choice((500, 1000, 2000)) for _ in names], config)
    zones = [rng.randrange(3) for _ in names]
    capacities = [rng.randrange(0, 6) for _ in names]
    capacities[0] += 1
    keys = {rng.getrandbits(64) for _ in range(rng.randrange(0, sum(capacities)))}
    engine = build_engine(
        layout=layout,
        zones=zones,
        replica_count=2,
        capacities=capacities,
        sorted_hashes=sorted(keys),
    )
    for _ in range(steps):
        writer = engine.writer()
        action = rng.randrange(4)
        server = rng.randrange(server_count)
        if action == 0 and len(keys) < sum(writer.capacities):
            key = rng.getrandbits(64)
            keys.add(key)
            writer.insert(key)
        elif action == 1 and keys:
            key = rng.choice(sorted(keys))
            keys.remove(key)
            writer.delete(key)
        elif action == 2:
            writer.raise_capacity(server, writer.capacities[server] + rng.randrange(1, 3))
        elif writer.capacities[server] > 0 and len(keys) < sum(writer.capacities):
            writer.lower_capacity(server, writer.capacities[server] - 1)
        engine = writer.freeze()
        _assert_same(engine, _rebuild(engine, keys))
    reference = _greedy_reference(layout, list(engine.capacities), list(keys))
    for key, server in reference.items():
        assert engine.primary_of(key) == server


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), server_count=st.integers(1, 9))
def test_thresholds_summarize_the_assignment(seed: int, server_count: int) -> None:
    """A full server's threshold is its largest key; others are UNBOUNDED, or CLOSED at zero."""
    rng = random.Random(seed)
    names = [f"s{index}" for index in range(server_count)]
    layout = build_layout(names, [1000] * server_count, PlacementConfig(ring_points_per_weight=4))
    capacities = [rng.randrange(0, 8) for _ in names]
    capacities[-1] += 1
    keys = sorted({rng.getrandbits(64) for _ in range(rng.randrange(0, sum(capacities) + 1))})
    engine = build_engine(
        layout=layout,
        zones=[0] * server_count,
        replica_count=1,
        capacities=capacities,
        sorted_hashes=keys,
    )
    for server in range(server_count):
        members = engine.members[server]
        assert len(members) <= capacities[server]
        if capacities[server] == 0:
            assert engine.thresholds[server] == CLOSED
        elif len(members) == capacities[server]:
            assert engine.thresholds[server] == members[-1]
        else:
            assert engine.thresholds[server] == UNBOUNDED
        assert all(key > engine.thresholds[server] for key in engine.skipped[server])


def _reference_engine(
    layout: Layout, zones: list[int], replica_count: int, capacities: list[int], keys: list[int]
) -> tuple[list[list[int]], list[list[int]], list[list[int]]]:
    """The greedy rule written plainly: members, skipped and replicas per server."""
    count = layout.server_count
    members: list[list[int]] = [[] for _ in range(count)]
    skipped: list[list[int]] = [[] for _ in range(count)]
    replicas: list[list[int]] = [[] for _ in range(count)]
    want = max(0, min(replica_count, count - 1))
    for key in sorted(keys):
        for server in layout.walk(key):
            if len(members[server]) < capacities[server]:
                members[server].append(key)
                break
            skipped[server].append(key)
        chosen = choose_replicas(
            layout.walk(key), primary=server, want=want, zones=zones, zone_count=len(set(zones))
        )
        for replica in chosen:
            replicas[replica].append(key)
    return members, skipped, replicas


@settings(max_examples=60, deadline=None)
@given(
    strategy=st.sampled_from(["ring", "ring", "maglev", "rendezvous"]),
    server_count=st.integers(1, 12),
    zone_numbers=st.integers(1, 5),
    replica_count=st.integers(0, 3),
    seed=st.integers(0, 2**32),
)
def test_bulk_build_equals_the_greedy_rule(
    strategy: str, server_count: int, zone_numbers: int, replica_count: int, seed: int
) -> None:
    """The bulk build (first choices, then overflow inserted; replicas chosen at once) gives the
    members, skipped keys and replicas of the plain greedy rule, for every strategy and zoning."""
    rng = random.Random(seed)
    config = PlacementConfig(strategy=strategy, ring_points_per_weight=16, maglev_table_size=101)
    names = [f"s{index}" for index in range(server_count)]
    layout = build_layout(names, [rng.choice((500, 1000, 2000)) for _ in names], config)
    zones = [rng.randrange(zone_numbers) * 7 for _ in names]
    capacities = [rng.randrange(0, 25) for _ in names]
    capacities[0] += 1
    keys = sorted({rng.getrandbits(64) for _ in range(rng.randrange(0, sum(capacities) + 1))})
    engine = build_engine(
        layout=layout,
        zones=zones,
        replica_count=replica_count,
        capacities=capacities,
        sorted_hashes=keys,
    )
    members, skipped, replicas = _reference_engine(layout, zones, replica_count, capacities, keys)
    assert [list(values) for values in engine.members] == members
    assert [list(values) for values in engine.skipped] == skipped
    assert [list(values) for values in engine.replicas] == replicas
