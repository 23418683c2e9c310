"""Opens steer every new part off the servers the risk policy avoids, alone and grouped, and
off the servers whose app does not declare it."""

from __future__ import annotations

import random

from forehand.core._manager_commits import Built
from forehand.core._manager_planning import fill_replicas, ref_of, steer_additions
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


def test_an_open_places_a_part_only_on_servers_whose_app_declares_it() -> None:
    """s4's app does not declare `b` (an old version in a rolling upgrade): every new `b` part,
    primary and replicas, lands on s1 to s3, while `a` and `c` still go to s4 too."""
    landed: list[tuple[int, PartKey]] = []
    on_s4: set[str] = set()
    for seed in range(120):
        rng = random.Random(seed)
        current = small_map(rng)
        session_id = new_session_id(now_ms=1, rng=rng)
        added = [PartKey(session_id=session_id, part=part) for part in ("a", "b", "c")]
        stable = steer_additions(
            current,
            [PartsAdded(session_id=session_id, parts=("a", "b", "c"))],
            added=added,
            avoid=frozenset(),
            eligible=list(SERVERS),
            lacking={"b": frozenset({"s4"})},
        )
        for key in added:
            servers = stable.new_map.lookup(key).servers
            if key.part == "b" and "s4" in servers:
                landed.append((seed, key))
            if "s4" in servers:
                on_s4.add(key.part)
    assert landed == []
    assert on_s4 == {"a", "c"}


def test_replicas_go_to_servers_lacking_the_part_last() -> None:
    key = PartKey(session_id=new_session_id(now_ms=1, rng=random.Random(3)), part="b")
    servers = ["s1", "s2", "s3", "s4", "s5"]
    for lacking in (frozenset({"s2", "s3"}), frozenset({"s4", "s5"})):
        replicas = fill_replicas(
            key, primary="s1", keep=(), eligible=servers, count=2, lacking=lacking
        )
        assert set(replicas) == set(servers) - {"s1"} - lacking
    # Too few declare it: the rest come from those lacking it, rather than no replica.
    replicas = fill_replicas(
        key, primary="s1", keep=(), eligible=servers, count=2, lacking=frozenset(servers[1:4])
    )
    assert replicas[0] == "s5" and replicas[1] in {"s2", "s3", "s4"}


def test_a_server_lacking_the_part_is_worse_than_one_the_risk_policy_avoids() -> None:
    """Only s1 declares `b`, and the risk policy avoids s1: `b` still goes to s1, where it is
    served, rather than to a server that would answer its every call UNKNOWN_OP."""
    elsewhere: list[tuple[int, str]] = []
    for seed in range(60):
        rng = random.Random(seed)
        current = small_map(rng)
        session_id = new_session_id(now_ms=1, rng=rng)
        added = [PartKey(session_id=session_id, part="b")]
        stable = steer_additions(
            current,
            [PartsAdded(session_id=session_id, parts=("b",))],
            added=added,
            avoid=frozenset({"s1"}),
            eligible=list(SERVERS),
            lacking={"b": frozenset({"s2", "s3", "s4"})},
        )
        if (primary := stable.new_map.primary_of(added[0])) != "s1":
            elsewhere.append((seed, primary))
    assert elsewhere == []


def test_replicas_among_many_servers_go_to_the_few_that_declare_the_part() -> None:
    """1,000 servers, 20 of them on the app version that declares `b`: the replica candidates
    are a sample of 32 along the part's walk, which holds one of the 20 or none; the replicas
    still go to declaring servers (before: 405 of 600 did not)."""
    servers = [f"s{index:04d}" for index in range(1000)]
    lacking = frozenset(servers[20:])
    rng = random.Random(1)
    misplaced = 0
    for _ in range(300):
        key = PartKey(session_id=new_session_id(now_ms=1, rng=rng), part="b")
        replicas = fill_replicas(
            key, primary="s0000", keep=(), eligible=servers, count=2, lacking=lacking
        )
        assert len(replicas) == 2
        misplaced += sum(1 for server_id in replicas if server_id in lacking)
    assert misplaced == 0
