"""Hashing strategies: registry, complete walks, replica rule, minimal movement, derived rings."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forehand.errors import ConfigError
from forehand.placement import (
    PlacementConfig,
    _ring,
    build_layout,
    register_strategy,
    strategy_names,
)
from forehand.placement._layout import Layout, choose_replicas
from forehand.placement._ring import RingLayout

_KEY_RNG = random.Random(11)
_KEYS = [_KEY_RNG.getrandbits(64) for _ in range(100_000)]


def _names(count: int, prefix: str = "server") -> list[str]:
    return [f"{prefix}-{index:03d}" for index in range(count)]


def _layout(names: Sequence[str], strategy: str = "ring", **config: int) -> Layout:
    return build_layout(names, [1000] * len(names), PlacementConfig(strategy=strategy, **config))


def _owner_names(layout: Layout, names: Sequence[str], keys: Sequence[int]) -> list[str]:
    return [names[layout.first(key)] for key in keys]


def test_registry_lists_and_refuses() -> None:
    """The built-in strategies are registered; unknown or duplicate names are config errors."""
    assert {"ring", "maglev", "rendezvous"} <= set(strategy_names())
    with pytest.raises(ConfigError):
        build_layout(["a"], [1000], PlacementConfig(strategy="no-such-strategy"))
    with pytest.raises(ConfigError):
        register_strategy("ring", RingLayout)


@pytest.mark.parametrize("strategy", ["ring", "maglev", "rendezvous"])
def test_walk_visits_every_server_once_starting_with_first(strategy: str) -> None:
    """Each walk is a permutation of the servers that starts with `first`."""
    names = _names(17)
    layout = _layout(names, strategy, maglev_table_size=1009, ring_points_per_weight=50)
    for key in _KEYS[:200]:
        walk = list(layout.walk(key))
        assert sorted(walk) == list(range(17))
        assert walk[0] == layout.first(key)


@pytest.mark.parametrize("strategy", ["ring", "maglev", "rendezvous"])
def test_firsts_matches_first(strategy: str) -> None:
    """The batch form used by rebuilds agrees with single lookups."""
    layout = _layout(_names(9), strategy, maglev_table_size=1009, ring_points_per_weight=20)
    keys = sorted(_KEYS[:3000])
    assert layout.firsts(keys) == [layout.first(key) for key in keys]


@settings(max_examples=60, deadline=None)
@given(
    server_count=st.integers(1, 12),
    zone_count=st.integers(1, 5),
    want=st.integers(0, 4),
    seed=st.integers(0, 2**16),
)
def test_ring_replica_loops_follow_the_generic_rule(
    server_count: int, zone_count: int, want: int, seed: int
) -> None:
    """The ring's fast replica paths give exactly `choose_replicas` over its walk."""
    rng = random.Random(seed)
    names = _names(server_count)
    zones = [rng.randrange(zone_count) for _ in names]
    distinct_zones = len(set(zones))
    layout = _layout(names, ring_points_per_weight=8)
    assert isinstance(layout, RingLayout)
    want = min(want, server_count - 1)
    keys = sorted(rng.getrandbits(64) for _ in range(300))
    primaries = [rng.randrange(server_count) for _ in keys]
    expected = [
        choose_replicas(
            layout.walk(key), primary=primary, want=want, zones=zones, zone_count=distinct_zones
        )
        for key, primary in zip(keys, primaries, strict=True)
    ]
    one_by_one = [
        layout.replicas(key, primary=primary, want=want, zones=zones, zone_count=distinct_zones)
        for key, primary in zip(keys, primaries, strict=True)
    ]
    batch = layout.replicas_sorted(
        keys, primaries, want=want, zones=zones, zone_count=distinct_zones
    )
    assert one_by_one == expected
    assert batch == expected


@settings(max_examples=40, deadline=None)
@given(
    before=st.sets(st.integers(0, 30), min_size=1, max_size=20),
    after=st.sets(st.integers(0, 30), min_size=1, max_size=20),
    reweighted=st.sets(st.integers(0, 30), max_size=3),
)
def test_derived_ring_equals_fresh_ring(
    before: set[int], after: set[int], reweighted: set[int]
) -> None:
    """A ring derived from the previous one is identical to one built from scratch."""
    config = PlacementConfig(ring_points_per_weight=40)
    old_names = [f"s{index:02d}" for index in sorted(before)]
    new_names = [f"s{index:02d}" for index in sorted(after)]
    new_weights = [2000 if int(name[1:]) in reweighted else 1000 for name in new_names]
    previous = RingLayout(old_names, [1000] * len(old_names), config)
    derived = RingLayout(new_names, new_weights, config, previous=previous)
    fresh = RingLayout(new_names, new_weights, config)
    assert derived.points == fresh.points
    assert derived.owners == fresh.owners
    for key in _KEYS[:500]:
        assert derived.first(key) == fresh.first(key)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    servers=st.integers(16, 30),
    points_per_weight=st.sampled_from([1, 40, 300]),
    steps=st.lists(st.sampled_from(["join", "leave", "reweight"]), min_size=1, max_size=6),
)
def test_one_server_at_a_time_derives_the_fresh_ring(
    seed: int, servers: int, points_per_weight: int, steps: list[str]
) -> None:
    """A chain of single-server changes (a join anywhere in the sorted ids, a leave, a new weight
    as a leave then a join, as the map's reshape does) gives, at every step, the points, owners
    and bucket index of a ring built from scratch, and takes the proportional path each time
    (the server changed brings well under a quarter of the ring's points)."""
    rng = random.Random(seed)
    config = PlacementConfig(ring_points_per_weight=points_per_weight)
    weights = {f"s{index:03d}": rng.choice((1000, 2000)) for index in range(servers)}
    layout = RingLayout(sorted(weights), [weights[n] for n in sorted(weights)], config)
    taken = Counter[str]()

    def counted(name: str, function: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            result = function(*args, **kwargs)
            taken[name] += result is not None
            return result

        return wrapper

    changes: list[dict[str, int]] = []
    for step in steps:
        name = rng.choice(sorted(weights))
        if step == "join":
            # A fresh id anywhere in the sorted order: a drawn id already in the ring is no join.
            joined = f"s{rng.randrange(1000):03d}x"
            while joined in weights:
                joined = f"{joined}x"
            changes.append({**weights, joined: rng.choice((500, 1000))})
        elif step == "leave":
            changes.append({n: w for n, w in weights.items() if n != name})
        else:
            changes.append({n: w for n, w in weights.items() if n != name})
            changes.append({**changes[-1], name: 1500 if weights[name] == 1000 else 1000})
        weights = changes[-1]
    with (
        mock.patch.object(_ring, "_one_left", counted("left", _ring._one_left)),
        mock.patch.object(_ring, "_one_joined", counted("joined", _ring._one_joined)),
    ):
        for change in changes:
            names = sorted(change)
            new_weights = [change[n] for n in names]
            layout = RingLayout(names, new_weights, config, previous=layout)
            fresh = RingLayout(names, new_weights, config)
            assert layout.points_array.tobytes() == fresh.points_array.tobytes()
            assert layout.owners_array.tobytes() == fresh.owners_array.tobytes()
            assert layout._starts_array.tobytes() == fresh._starts_array.tobytes()
    assert sum(taken.values()) == len(changes)


@pytest.mark.parametrize("server_count", [10, 25])
def test_ring_join_moves_within_ten_percent_of_the_minimum(server_count: int) -> None:
    """Adding one server to n moves 1/(n+1) of the keys, within 10%, all to the newcomer."""
    names = _names(server_count)
    before = _owner_names(_layout(names), names, _KEYS)
    joined = [*names, "newcomer"]
    after = _owner_names(_layout(joined), joined, _KEYS)
    moved = [index for index, owner in enumerate(after) if owner != before[index]]
    minimum = 1 / (server_count + 1)
    assert abs(len(moved) / len(_KEYS) / minimum - 1) <= 0.10
    assert all(after[index] == "newcomer" for index in moved)


@pytest.mark.parametrize("server_count", [10, 25])
@pytest.mark.parametrize("leaver", [0, 3, 7])
def test_ring_leave_moves_within_ten_percent_of_the_minimum(server_count: int, leaver: int) -> None:
    """Removing one server of n moves 1/n of the keys, within 10%: only the leaver's keys."""
    names = _names(server_count)
    before = _owner_names(_layout(names), names, _KEYS)
    remaining = [name for index, name in enumerate(names) if index != leaver]
    after = _owner_names(_layout(remaining), remaining, _KEYS)
    moved = [index for index, owner in enumerate(after) if owner != before[index]]
    minimum = 1 / server_count
    assert abs(len(moved) / len(_KEYS) / minimum - 1) <= 0.10
    assert all(before[index] == names[leaver] for index in moved)


@pytest.mark.parametrize("strategy", ["ring", "maglev"])
def test_weights_split_keys_proportionally(strategy: str) -> None:
    """A server of weight 3 receives about three times the keys of a server of weight 1."""
    names = _names(6)
    weights = [1000, 1000, 3000, 1000, 2000, 1000]
    config = PlacementConfig(strategy=strategy, maglev_table_size=65537)
    layout = build_layout(names, weights, config)
    counts = Counter(layout.first(key) for key in _KEYS)
    unit = len(_KEYS) / (sum(weights) / 1000)
    for index, weight in enumerate(weights):
        assert abs(counts[index] / (unit * weight / 1000) - 1) < 0.10


def test_maglev_table_is_balanced() -> None:
    """Maglev gives every server the same number of table entries, give or take one."""
    names = _names(13)
    layout = build_layout(names, [1000] * 13, PlacementConfig(strategy="maglev"))
    table = getattr(layout, "_table")  # noqa: B009  (the table is private by design)
    counts = Counter(table)
    assert max(counts.values()) - min(counts.values()) <= 1
