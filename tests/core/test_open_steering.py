"""Opens steer every new part off the servers the risk policy avoids, alone and grouped."""

from __future__ import annotations

import random

from forehand.core._manager_commits import Built
from forehand.core._manager_planning import ref_of, steer_additions
from forehand.core.manager import _merge_builds
from forehand.placement import PartKey, PartsAdded, PlacementConfig, ShardMap, new_session_id

SERVERS = ("s1", "s2", "s3", "s4")
AVOIDED = frozenset({"s4"})


def small_map(rng: random.Random) -> ShardMap:
    """Four servers, one zone each, and a few one-part sessions (bounded loads bind often)."""
    current = ShardMap.empty(config=PlacementConfig())
    for server_id in SERVERS:
        current = current.apply(
            current.join_server(server_id=server_id, address="h:1", zone=server_id)
        )
    sessions = [
        PartsAdded(session_id=new_session_id(now_ms=1, rng=rng), parts=("a",))
        for _ in range(rng.randrange(0, 12))
    ]
    return current.apply(current.delta(*sessions)) if sessions else current


def open_build(current: ShardMap, rng: random.Random, keys: list[PartKey]) -> Built:
    """A session open built as the manager builds it, steered off the avoided server."""
    session_id = new_session_id(now_ms=1, rng=rng)
    parts = ("a", "b", "c")[: rng.randrange(1, 4)]
    added = [PartKey(session_id=session_id, part=part) for part in parts]
    keys.extend(added)
    stable = steer_additions(
        current,
        [PartsAdded(session_id=session_id, parts=parts)],
        added=added,
        avoid=AVOIDED,
        eligible=list(SERVERS),
    )
    return Built(
        delta=stable.delta,
        new_map=stable.new_map,
        parts=tuple(ref_of(key) for key in added),
        servers=(),
        implicit_moves=stable.implicit_moves,
    )


def test_a_group_of_opens_places_every_new_part_where_its_own_build_did() -> None:
    """Opens merged into one version keep the placements their builds chose (and steered off a
    server the risk policy avoids): a later open of the group pushing an earlier one's new part
    along its walk left it wherever the push took it, an avoided server included."""
    differing: list[tuple[int, PartKey]] = []
    for seed in range(120):
        rng = random.Random(seed)
        current = small_map(rng)
        running, builds = current, []
        keys: list[PartKey] = []
        for _ in range(rng.randrange(2, 6)):
            builds.append(open_build(running, rng, keys))
            running = builds[-1].new_map
        merged = _merge_builds(current, builds)
        assert merged.new_map.version == current.version + 1
        differing.extend(
            (seed, key) for key in keys if merged.new_map.lookup(key) != running.lookup(key)
        )
    assert differing == []


def test_an_open_steers_every_new_part_off_an_avoided_server() -> None:
    """An open's new parts all land off the servers the risk policy avoids: pinning the first
    ones it found there changed the hash-placed counts, and bounded loads then pushed another
    new part onto an avoided server, where it stayed."""
    landed: list[tuple[int, PartKey]] = []
    for seed in range(120):
        rng = random.Random(seed)
        current = small_map(rng)
        keys: list[PartKey] = []
        built = open_build(current, rng, keys)
        landed.extend((seed, key) for key in keys if built.new_map.primary_of(key) in AVOIDED)
    assert landed == []
