"""Placement: forehand's shard map beside uhashring's ketama ring, on the same keys, in one run.

Full size: 1,000 servers and 1,000,000 part keys (`--quick`: 100 servers, 50,000 keys). Measured:

- lookups per second: `primary_of` against ketama's `get_node` (one server each), and the full
  placement `lookup` (primary and two zone-spread replicas) against ketama's `range(size=3)`;
- parts moved when one server joins or leaves, as a fraction and as a multiple of the minimum
  1/n: the hash layer alone ("before spill") and the whole map with bounded loads;
- the max/mean primary load, with bounded loads, without them, and for ketama;
- memory per override entry, against the `dict[str, str]` one would keep beside uhashring to pin
  keys, and memory per part key held by the map;
- what the manager pays: building the map, a join and a one-session delta;
- server changes at scale (`--parts`, 300 parts per server like the scale study): a death, a
  drain, a join and a new weight, each derived from the previous map, against rebuilding the
  whole bounded-load assignment (what a server change cost before) in the same run; the diff
  across the death, a whole-map encode and `primary_of` for every part;
- the three registered strategies side by side on a smaller cluster (rendezvous is O(servers) per
  lookup), which is the measurement behind the default strategy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from uhashring import HashRing

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    Comparison,
    Metric,
    compare,
    print_comparisons,
    print_metrics,
    record,
)

from forehand.placement import (
    PartKey,
    Placement,
    PlacementConfig,
    PlacementOverridden,
    ServerEntry,
    ServerState,
    ShardMap,
    build_layout,
    format_session_id,
    new_session_id,
)
from forehand.placement._state import new_override_index, rebuild_engine

_PARTS = ("auth", "cart", "feature/video")
_ZONES = 3
_OVERRIDES = 20_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Size:
    """How big a run is."""

    servers: int
    """Servers in the cluster."""
    keys: int
    """Part keys placed."""
    strategy_servers: int
    """Servers in the strategy comparison."""
    strategy_keys: int
    """Keys in the strategy comparison."""
    memory_keys: int
    """Keys of the map whose memory is traced."""


FULL = Size(
    servers=1000, keys=1_000_000, strategy_servers=100, strategy_keys=50_000, memory_keys=100_000
)
QUICK = Size(
    servers=100, keys=50_000, strategy_servers=30, strategy_keys=10_000, memory_keys=20_000
)


def _server_ids(count: int) -> list[str]:
    return [f"server-{index:04d}" for index in range(count)]


def _servers(count: int) -> list[ServerEntry]:
    return [
        ServerEntry(
            server_id=server_id,
            address=f"10.{index // 250}.{index % 250}.1:4433",
            zone=f"zone-{index % _ZONES}",
            weight=1.0,
            state=ServerState.ACTIVE,
        )
        for index, server_id in enumerate(_server_ids(count))
    ]


def _keys(count: int, seed: int = 1) -> list[PartKey]:
    rng = random.Random(seed)
    keys: list[PartKey] = []
    while len(keys) < count:
        session_id = new_session_id(now_ms=1_700_000_000_000 + len(keys), rng=rng)
        keys.extend(PartKey(session_id=session_id, part=part) for part in _PARTS)
    return keys[:count]


def _ketama_key(key: PartKey) -> str:
    return f"{format_session_id(key.session_id)}/{key.part}"


def _timed(action: Callable[[], object]) -> tuple[float, object]:
    gc.collect()
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def _rates(shard_map: ShardMap, ketama: HashRing, keys: list[PartKey]) -> list[Comparison]:
    strings = [_ketama_key(key) for key in keys]
    count = len(keys)
    range_count = min(count, 20_000)

    def primary(n: int) -> None:
        lookup = shard_map.primary_of
        for key in keys[:n]:
            lookup(key)

    def placement(n: int) -> None:
        lookup = shard_map.lookup
        for key in keys[:n]:
            lookup(key)

    def ketama_node(n: int) -> None:
        get_node = ketama.get_node
        for string in strings[:n]:
            get_node(string)

    def ketama_range(n: int) -> None:
        for string in strings[:n]:
            list(ketama.range(string, size=3))

    def primary_from_raw(n: int) -> None:
        lookup = shard_map.primary_of
        for key in keys[:n]:
            lookup(PartKey(session_id=key.session_id, part=key.part))

    def ketama_from_raw(n: int) -> None:
        get_node = ketama.get_node
        for key in keys[:n]:
            get_node(f"{key.session_id.hex()}/{key.part}")

    return [
        compare(
            "primary lookup", candidate=primary, baseline=ketama_node,
            baseline_name="uhashring ketama get_node", count=count, rounds=3,
        ),
        compare(
            "placement lookup (1 + 2 replicas)", candidate=placement, baseline=ketama_range,
            baseline_name="uhashring ketama range(size=3)", count=range_count, rounds=3,
        ),
        compare(
            "primary lookup, key built per call", candidate=primary_from_raw,
            baseline=ketama_from_raw, baseline_name="uhashring get_node, key built per call",
            count=min(count, 200_000), rounds=3,
        ),
    ]  # fmt: skip


def _ketama_owners(ketama: HashRing, strings: Sequence[str]) -> list[str]:
    get_node = ketama.get_node
    return [get_node(string) for string in strings]


def _moved_fraction(before: Sequence[str], after: Sequence[str]) -> float:
    return sum(1 for one, other in zip(before, after, strict=True) if one != other) / len(before)


def _hash_owners(ids: Sequence[str], config: PlacementConfig, hashes: Sequence[int]) -> list[str]:
    layout = build_layout(ids, [1000] * len(ids), config)
    return [ids[layout.first(key_hash)] for key_hash in hashes]


def _movement(
    shard_map: ShardMap, ketama: HashRing, keys: list[PartKey], servers: int
) -> list[tuple[str, str, str]]:
    ids = _server_ids(servers)
    hashes = [key.key_hash for key in keys]
    strings = [_ketama_key(key) for key in keys]
    config = shard_map.config
    base = _hash_owners(ids, config, hashes)
    joined = _hash_owners([*ids, "server-new"], config, hashes)
    left = _hash_owners(ids[1:], config, hashes)
    ketama_base = _ketama_owners(ketama, strings)
    ketama.add_node("server-new")
    ketama_joined = _ketama_owners(ketama, strings)
    ketama.remove_node("server-new")
    ketama.remove_node(ids[0])
    ketama_left = _ketama_owners(ketama, strings)
    ketama.add_node(ids[0])
    after_join = shard_map.apply(
        shard_map.join_server(server_id="server-new", address="10.9.9.9:4433", zone="zone-0")
    )
    after_death = shard_map.apply(shard_map.mark_server_dead(ids[0]))
    bounded_join = _primary_moves(shard_map, after_join)
    bounded_leave = _primary_moves(shard_map, after_death)

    def row(name: str, ours: float, theirs: float | None, minimum: float) -> tuple[str, str, str]:
        other = "-" if theirs is None else f"{theirs:.5f} ({theirs / minimum:.3f}x)"
        return name, f"{ours:.5f} ({ours / minimum:.3f}x)", other

    join_minimum, leave_minimum = 1 / (servers + 1), 1 / servers
    return [
        row(
            "moved on join, hash only", _moved_fraction(base, joined),
            _moved_fraction(ketama_base, ketama_joined), join_minimum,
        ),
        row(
            "moved on leave, hash only", _moved_fraction(base, left),
            _moved_fraction(ketama_base, ketama_left), leave_minimum,
        ),
        row("moved on join, bounded loads", bounded_join, None, join_minimum),
        row("moved on leave, bounded loads", bounded_leave, None, leave_minimum),
    ]  # fmt: skip


def _primary_moves(before: ShardMap, after: ShardMap) -> float:
    diff = before.diff(after)
    moved = sum(1 for move in diff.moved if move.source.primary != move.target.primary)
    return moved / (len(diff.moved) + diff.unchanged_count)


def _loads(
    shard_map: ShardMap, ketama: HashRing, keys: list[PartKey]
) -> list[tuple[str, str, str]]:
    mean = len(keys) / len(shard_map.primary_loads())
    bounded = max(shard_map.primary_loads().values()) / mean
    layout = build_layout(
        [entry.server_id for entry in shard_map.servers],
        [1000] * len(shard_map.servers),
        shard_map.config,
    )
    unbounded = max(Counter(layout.first(key.key_hash) for key in keys).values()) / mean
    ketama_max = max(Counter(_ketama_owners(ketama, [_ketama_key(key) for key in keys])).values())
    epsilon = shard_map.config.load_epsilon
    return [
        ("max/mean primaries, bounded loads", f"{bounded:.4f} (bound {1 + epsilon:.2f})", "-"),
        ("max/mean primaries, hash only", f"{unbounded:.4f}", f"{ketama_max / mean:.4f}"),
    ]  # fmt: skip


def _tight_bound(keys: list[PartKey], servers: int) -> list[tuple[str, str, str]]:
    """Bounded loads at work: epsilon 0.05 forces spills, and spills add movement."""
    epsilon = 0.05
    shard_map = ShardMap.build(
        config=PlacementConfig(load_epsilon=epsilon),
        version=1,
        servers=_servers(servers),
        parts=keys,
    )
    loads = shard_map.primary_loads()
    max_mean = max(loads.values()) / (len(keys) / len(loads))
    joined = shard_map.apply(
        shard_map.join_server(server_id="server-new", address="10.9.9.9:4433", zone="zone-0")
    )
    dead = shard_map.apply(shard_map.mark_server_dead(_server_ids(servers)[0]))
    join_moves = _primary_moves(shard_map, joined)
    leave_moves = _primary_moves(shard_map, dead)
    join_x, leave_x = join_moves * (servers + 1), leave_moves * servers
    return [
        (f"max/mean primaries, epsilon {epsilon}", f"{max_mean:.4f} (bound {1 + epsilon})", "-"),
        (f"moved on join, epsilon {epsilon}", f"{join_moves:.5f} ({join_x:.3f}x)", "-"),
        (f"moved on leave, epsilon {epsilon}", f"{leave_moves:.5f} ({leave_x:.3f}x)", "-"),
    ]


def _override_memory(keys: list[PartKey], servers: int) -> tuple[str, str, str]:
    ids = _server_ids(servers)
    rng = random.Random(5)
    sample = keys[:_OVERRIDES]
    chosen = [rng.sample(ids, 3) for _ in sample]
    strings = [_ketama_key(key) for key in sample]
    # Both sides store the same facts (a primary and two replicas per key) the way they keep them
    # (the map stores an override as a tuple of its own server-id strings and builds the Placement
    # on lookup); the objects that hold them are created inside the traced region, the keys and
    # server ids exist beforehand on both sides.
    gc.collect()
    tracemalloc.start()
    writer = new_override_index().writer()
    for key, servers_of in zip(sample, chosen, strict=True):
        writer.put(key.key_hash, (*servers_of,))
    index = writer.freeze()
    ours = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    gc.collect()
    tracemalloc.start()
    pinned = {string: (*servers_of,) for string, servers_of in zip(strings, chosen, strict=True)}
    theirs = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(index) == len(pinned) == len(sample)
    return (
        "bytes per override entry",
        f"{ours / len(sample):.0f} (hash -> server tuple)",
        f"{theirs / len(sample):.0f} (dict str -> 3-tuple beside it)",
    )


def _map_memory(size: Size) -> tuple[str, str, str]:
    gc.collect()
    tracemalloc.start()
    keys = _keys(size.memory_keys, seed=9)
    shard_map = ShardMap.build(
        config=PlacementConfig(), version=1, servers=_servers(size.servers), parts=keys
    )
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(shard_map) == len(keys)
    return (
        f"bytes per part key ({size.memory_keys:,} parts)",
        f"{held / len(keys):.0f} (keys, index, engine)",
        "-",
    )


def _manager_costs(shard_map: ShardMap, keys: list[PartKey], size: Size) -> list[str]:
    join_s, joined = _timed(
        lambda: shard_map.apply(
            shard_map.join_server(server_id="server-extra", address="h:1", zone="zone-1")
        )
    )
    assert isinstance(joined, ShardMap)
    diff_s, _ = _timed(lambda: shard_map.diff(joined))
    rng = random.Random(8)
    sessions = [new_session_id(now_ms=index, rng=rng) for index in range(300)]
    current = shard_map

    def open_sessions() -> ShardMap:
        nonlocal current
        for session_id in sessions:
            current = current.apply(current.add_session_parts(session_id, _PARTS))
        return current

    add_s, _ = _timed(open_sessions)
    encode_s, encoded = _timed(shard_map.encode)
    assert isinstance(encoded, bytes)
    return [
        f"join ({len(keys):,} parts):               {join_s * 1000:,.0f} ms",
        f"diff across that join:               {diff_s * 1000:,.0f} ms",
        f"open-session delta (3 parts):        {add_s / len(sessions) * 1e6:,.0f} us",
        f"encode whole map:                    {encode_s * 1000:,.0f} ms, {len(encoded):,} bytes",
    ]


def _scale_servers(parts: int) -> int:
    # The scale study's density: 300 parts (100 sessions of 3 parts) per server.
    return max(10, parts // 300)


def _rebuilt_engine(shard_map: ShardMap) -> object:
    # What applying a server change cost before it was derived incrementally: the whole
    # bounded-load assignment computed again over every hash-placed part.
    state = shard_map._state
    return rebuild_engine(
        state.config,
        state.servers,
        state.parts,
        state.overrides,
        state.pinned,
        previous=state.engine,
    )


def _fleet(count: int) -> list[ServerEntry]:
    """`count` ACTIVE servers of weight 1 in `_ZONES` zones, named with five digits (the large
    fleets of the server-change and map-version steps)."""
    return [
        ServerEntry(
            server_id=f"server-{index:05d}",
            address=f"10.{index >> 8 & 255}.{index & 255}.1:4433",
            zone=f"zone-{index % _ZONES}",
            weight=1.0,
            state=ServerState.ACTIVE,
        )
        for index in range(count)
    ]


def _server_changes(parts: int) -> tuple[list[str], list[Comparison]]:
    """Server deaths, drains, joins and new weights at `parts` parts, against a full rebuild."""
    servers = _scale_servers(parts)
    keys = _keys(parts, seed=11)
    config = PlacementConfig(servers_max=max(4096, 2 * servers))
    entries = _fleet(servers)
    build_s, built = _timed(
        lambda: ShardMap.build(config=config, version=1, servers=entries, parts=keys)
    )
    assert isinstance(built, ShardMap)
    victim = entries[servers // 2].server_id
    changes = {
        "server death": built.mark_server_dead(victim),
        "server drain": built.drain_server(victim),
        "server join": built.join_server(server_id="server-new", address="h:1", zone="zone-1"),
        "server weight 1 -> 2": built.reweight_server(victim, 2.0),
    }
    comparisons: list[Comparison] = []
    lines = [f"build the map: {build_s:.2f} s ({servers:,} servers, {parts:,} parts)"]
    for name, delta in changes.items():
        after = built.apply(delta)
        _assert_same_as_rebuild(after)
        comparisons.append(
            compare(
                f"{name} at {parts:,} parts",
                candidate=lambda n, delta=delta: [built.apply(delta) for _ in range(n)],  # type: ignore[misc]
                baseline=lambda n, after=after: [_rebuilt_engine(after) for _ in range(n)],  # type: ignore[misc]
                baseline_name="full rebuild of the assignment",
                count=1,
                rounds=2,
            )
        )
        row = comparisons[-1]
        lines.append(
            f"{name}: {1000 / row.candidate_per_second:,.0f} ms derived, "
            f"{1000 / row.baseline_per_second:,.0f} ms to rebuild ({row.ratio:.1f}x)"
        )
        if name == "server death":
            diff_s, diff = _timed(lambda after=after: built.diff(after))  # type: ignore[misc]
            moved = len(diff.moved)  # type: ignore[attr-defined]
            lines.append(f"diff across the death: {diff_s * 1000:,.0f} ms ({moved:,} parts moved)")
    encode_s, encoded = _timed(built.encode)
    assert isinstance(encoded, bytes)
    lines.append(f"encode the whole map: {encode_s:.2f} s, {len(encoded):,} bytes")
    lookup_s, _ = _timed(lambda: [built.primary_of(key) for key in keys])
    lines.append(f"primary_of for every part: {lookup_s:.2f} s")
    return lines, comparisons


def _assert_same_as_rebuild(shard_map: ShardMap) -> None:
    state = shard_map._state
    _, engine = rebuild_engine(
        state.config, state.servers, state.parts, state.overrides, state.pinned
    )
    assert engine.thresholds == state.engine.thresholds, "incremental result differs"
    assert engine.members == state.engine.members, "incremental result differs"


def _strategies(size: Size) -> list[str]:
    ids = _server_ids(size.strategy_servers)
    hashes = [key.key_hash for key in _keys(size.strategy_keys, seed=3)]
    lines = [
        f"{'strategy':<12} {'lookups/s':>12} {'join x min':>11} {'leave x min':>12} {'max/mean':>9}"
    ]
    for name in ("ring", "maglev", "rendezvous"):
        config = PlacementConfig(strategy=name)
        layout = build_layout(ids, [1000] * len(ids), config)
        rate_s, _ = _timed(lambda layout=layout: [layout.first(h) for h in hashes])  # type: ignore[misc]
        base = [ids[layout.first(h)] for h in hashes]
        joined = _hash_owners([*ids, "server-new"], config, hashes)
        left = _hash_owners(ids[1:], config, hashes)
        counts = Counter(base)
        join_x = _moved_fraction(base, joined) * (len(ids) + 1)
        leave_x = _moved_fraction(base, left) * len(ids)
        max_mean = max(counts.values()) / (len(hashes) / len(ids))
        lines.append(
            f"{name:<12} {len(hashes) / rate_s:>12,.0f} {join_x:>11.3f} {leave_x:>12.3f} "
            f"{max_mean:>9.3f}"
        )
    return lines


# Map versions: what one planned-handoff batch costs the placement, step by step.

_VERSION_SERVERS = 10_000
_VERSION_MOVES = (1, 8, 64)
_VERSION_CHAIN = 12
"""Versions in a row per batch size; each step's time is the median over them."""
_STANDING_OVERRIDES = 2_000
"""Overrides the map holds before the chain starts, as after a while of handoffs."""


def _handoff_operations(
    current: ShardMap, keys: Sequence[PartKey], rng: random.Random, moves: int
) -> tuple[list[PlacementOverridden], set[PartKey]]:
    """`moves` parts handed off to their first replica, the old primary kept as a replica (what
    the manager's handoff build writes)."""
    operations: list[PlacementOverridden] = []
    moving: set[PartKey] = set()
    while len(operations) < moves:
        key = keys[rng.randrange(len(keys))]
        if key in moving:
            continue
        placement = current.lookup(key)
        if not placement.replicas:
            continue
        target = Placement(
            primary=placement.replicas[0], replicas=(*placement.replicas[1:], placement.primary)
        )
        operations.append(
            PlacementOverridden(session_id=key.session_id, part=key.part, placement=target)
        )
        moving.add(key)
    return operations, moving


def _version_steps(parts: int, servers: int, seed: int = 21) -> dict[str, float]:
    """Microseconds per step of a chain of map versions, each a batch of handoffs, median."""
    # The manager's planning helpers: imported here so that the rest of the benchmark needs only
    # the placement.
    from forehand.core._manager_planning import stabilize

    keys = _keys(parts, seed=seed)
    config = PlacementConfig(servers_max=max(4096, 2 * servers), parts_max=max(parts, 1_000_000))
    entries = _fleet(servers)
    current = ShardMap.build(config=config, version=1, servers=entries, parts=keys)
    rng = random.Random(seed)
    standing, _ = _handoff_operations(current, keys, rng, _STANDING_OVERRIDES)
    current = current.apply(current.delta(*standing))
    current.primary_loads()
    current.servers  # noqa: B018 (a read: the sorted entries, as the manager asks each version)
    samples: dict[str, list[float]] = {}

    def timed(name: str, action: Callable[[], object]) -> object:
        started = time.perf_counter()
        result = action()
        samples.setdefault(name, []).append((time.perf_counter() - started) * 1e6)
        return result

    gc.collect()
    gc.disable()
    try:
        for moves in _VERSION_MOVES:
            for _ in range(_VERSION_CHAIN):
                operations, moving = _handoff_operations(current, keys, rng, moves)
                base = current
                started = time.perf_counter()
                stable = stabilize(base, operations, intended=moving.__contains__)
                samples.setdefault(f"stabilize {moves}", []).append(
                    (time.perf_counter() - started) * 1e6
                )
                timed(f"apply {moves}", lambda: base.apply(stable.delta))  # noqa: B023
                following = stable.new_map
                timed(f"diff {moves}", lambda: base.diff(following))  # noqa: B023
                timed(f"primary_loads {moves}", following.primary_loads)
                timed(f"servers {moves}", lambda: following.servers)  # noqa: B023
                current = following
    finally:
        gc.enable()
    return {name: statistics.median(values) for name, values in samples.items()}


_VERSION_STEP_NAMES = {
    "stabilize": "stabilize (the manager's build)",
    "apply": "apply the delta",
    "diff": "diff of consecutive versions",
    "primary_loads": "primary_loads",
    "servers": "servers (sorted entries)",
}


def _version_steps_in(source: Path | None, parts: int, servers: int) -> dict[str, float]:
    """`_version_steps` in a child process, importing forehand from `source`/src when given."""
    environment = dict(os.environ)
    if source is not None:
        environment["PYTHONPATH"] = str(source / "src")
    completed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--version-steps-json",
            "--parts",
            str(parts),
            "--version-servers",
            str(servers),
        ],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    steps: dict[str, float] = json.loads(completed.stdout.splitlines()[-1])
    return steps


def _versions(parts: int, servers: int, baseline: Path | None, rounds: int) -> None:
    """Print the version steps, beside the same steps of `baseline`'s code when given."""
    print(f"map versions ({servers:,} servers, {parts:,} parts, {_STANDING_OVERRIDES:,} overrides)")
    ours: dict[str, float] = {}
    theirs: dict[str, float] = {}
    for _ in range(rounds):
        # Interleaved, best of the rounds for each step: both see the same machine load.
        if baseline is not None:
            for name, value in _version_steps_in(baseline, parts, servers).items():
                theirs[name] = min(value, theirs.get(name, value))
        for name, value in _version_steps_in(None, parts, servers).items():
            ours[name] = min(value, ours.get(name, value))
    rows = []
    for name, value in ours.items():
        step, moves = name.rsplit(" ", 1)
        rows.append(
            Metric(
                name=f"{_VERSION_STEP_NAMES[step]}, batch of {moves}",
                value=value,
                unit="us",
                baseline=theirs.get(name),
                baseline_name="" if baseline is None else f"code at {baseline}",
            )
        )
    record("map_versions", {"parts": parts, "servers": servers, "ours": ours, "baseline": theirs})
    print_metrics(
        "map versions: us per step, median over a chain of versions (ratio: this code / baseline)",
        rows,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100 servers, 50,000 keys")
    parser.add_argument(
        "--parts",
        type=int,
        default=None,
        help="parts of the server-change section, at 300 parts per server "
        "(default 300,000; 30,000 with --quick; the scale study's full size is 3,000,000)",
    )
    parser.add_argument(
        "--only-server-changes", action="store_true", help="run the server-change section alone"
    )
    parser.add_argument(
        "--versions",
        action="store_true",
        help="run the map-version section alone (at --parts parts, default 300,000)",
    )
    parser.add_argument(
        "--version-servers",
        type=int,
        default=None,
        help=f"servers of the map-version section (default {_VERSION_SERVERS:,}; 100 with --quick)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="a checkout of other code (its src/ is imported): the map-version steps run with "
        "it too, in their own processes, interleaved with this code's, side by side",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="map-version runs per code, best of (default 1)"
    )
    parser.add_argument("--version-steps-json", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    size = QUICK if arguments.quick else FULL
    parts = arguments.parts or (30_000 if arguments.quick else 300_000)
    version_servers = arguments.version_servers or (100 if arguments.quick else _VERSION_SERVERS)
    if arguments.version_steps_json:
        print(json.dumps(_version_steps(parts, version_servers)))
        return
    if arguments.versions:
        _versions(parts, version_servers, arguments.baseline_src, arguments.rounds)
        return
    if not arguments.only_server_changes:
        _main_tables(size)
    print()
    print(f"server changes at scale ({_scale_servers(parts):,} servers, {parts:,} parts, 3 zones)")
    lines, comparisons = _server_changes(parts)
    for line in lines:
        print(f"  {line}")
    print_comparisons("server changes: derived from the last map vs full rebuild", comparisons)
    print()
    _versions(parts, version_servers, arguments.baseline_src, arguments.rounds)


def _main_tables(size: Size) -> None:
    print(f"placement: {size.servers:,} servers, {size.keys:,} part keys, {_ZONES} zones")
    keys = _keys(size.keys)
    build_s, built = _timed(
        lambda: ShardMap.build(
            config=PlacementConfig(), version=1, servers=_servers(size.servers), parts=keys
        )
    )
    assert isinstance(built, ShardMap)
    ketama = HashRing(nodes=_server_ids(size.servers), hash_fn="ketama")
    print(f"build: {build_s:.2f} s for {len(keys):,} parts")
    print()
    print_comparisons("lookups", _rates(built, ketama, keys))
    print()
    rows = [
        *_movement(built, ketama, keys, size.servers),
        *_loads(built, ketama, keys),
        *_tight_bound(keys, size.servers),
        _override_memory(keys, size.servers),
        _map_memory(size),
    ]
    print(f"{'measure':<36} {'forehand':>30} {'uhashring ketama':>36}")
    print("-" * 104)
    for name, ours, theirs in rows:
        print(f"{name:<36} {ours:>30} {theirs:>36}")
    print()
    print("manager costs")
    for line in _manager_costs(built, keys, size):
        print(f"  {line}")
    print()
    print(f"strategies ({size.strategy_servers} servers, {size.strategy_keys:,} keys, hash only)")
    for line in _strategies(size):
        print(f"  {line}")


if __name__ == "__main__":
    main()
