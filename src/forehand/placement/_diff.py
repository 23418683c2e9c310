"""What changed between two shard-map versions: parts added, removed and moved, servers changed.

Only candidates are compared. A part whose primary or replica set changed shows up in the difference
of some server's member or replica array, or in a changed override bucket, and arrays that two
versions share are skipped by identity. When one version descends from the other by a few deltas,
their lineage (`_lineage.py`) names the buckets those deltas wrote and the hashes that entered or
left a member array, and only those are looked at: the diff of consecutive versions costs what
the delta touched, not a pass over every server and bucket, nor over the arrays it wrote (a
server's member array holds its share of every part: with three servers, a third of the map).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import msgspec

from forehand.placement._delta import Placement
from forehand.placement._ids import PartKey
from forehand.placement._lineage import Changes
from forehand.placement._servers import ServerEntry
from forehand.placement._state import MapState, Pinned, pinned_placement
from forehand.placement._table import Table

__all__ = [
    "MapDiff",
    "PartMoved",
    "changes_between",
    "diff_states",
    "placement_of_hash",
    "placements_of_hashes",
    "same_servers",
]


class PartMoved(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A part present in both versions whose placement differs (a msgspec Struct, built in C:
    a server's death on a small fleet moves every part, and a diff lists each)."""

    key: PartKey
    """The part."""
    source: Placement
    """Its placement in the older version."""
    target: Placement
    """Its placement in the newer version."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MapDiff:
    """The changes from version `source_version` to version `target_version`."""

    source_version: int
    """The version compared from."""
    target_version: int
    """The version compared to."""
    added: tuple[PartKey, ...]
    """Parts only in the target version, sorted."""
    removed: tuple[PartKey, ...]
    """Parts only in the source version, sorted."""
    moved: tuple[PartMoved, ...]
    """Parts in both whose primary or set of replicas differ, sorted by key. A new order of the
    same replicas moves no data and is not listed."""
    servers_added: tuple[ServerEntry, ...]
    """Servers only in the target version, by id."""
    servers_removed: tuple[ServerEntry, ...]
    """Servers only in the source version, by id."""
    servers_changed: tuple[ServerEntry, ...]
    """Target-version entries of servers whose state, weight, zone, address or drain cause
    changed, by id (an operator's takeover of a risk mark changes the cause alone)."""
    unchanged_count: int
    """Parts present in both versions whose placement stayed the same."""

    @property
    def moved_fraction(self) -> float:
        """Moved parts over the parts present in both versions (0 when there are none)."""
        common = len(self.moved) + self.unchanged_count
        return len(self.moved) / common if common else 0.0


def placement_of_hash(state: MapState, key_hash: int) -> Placement:
    """The placement of a part known to be in `state`, by its stable hash."""
    override = state.overrides.get(key_hash)
    if override is not None:
        return pinned_placement(override)
    engine = state.engine
    names = state.eligible.names
    primary = engine.primary_of(key_hash)
    replicas = engine.replica_set(key_hash, primary)
    return Placement(primary=names[primary], replicas=tuple(names[index] for index in replicas))


BULK_PLACEMENTS_MIN = 256
"""From this many parts `diff_states` places the candidates in bulk (`placements_of_hashes`)."""


def placements_of_hashes(state: MapState, sorted_hashes: Sequence[int]) -> list[Placement]:
    """`placement_of_hash` of each of `sorted_hashes` (ascending, all in `state`), in bulk.

    The layout locates the keys in one pass, keys that start at the same point share their
    replicas, and equal placements share one `Placement`: when a server leaves, every part of
    a small fleet may change placement, and a diff places each of them in two versions.
    """
    overrides = state.overrides
    engine = state.engine
    names = state.eligible.names
    thresholds = engine.thresholds
    result: list[Placement | None] = [None] * len(sorted_hashes)
    plain_hashes: list[int] = []
    plain_at: list[int] = []
    pinned: dict[Pinned, Placement] = {}
    check_overrides = len(overrides) > 0
    for at, key_hash in enumerate(sorted_hashes):
        override = overrides.get(key_hash) if check_overrides else None
        if override is None:
            plain_hashes.append(key_hash)
            plain_at.append(at)
            continue
        placement = pinned.get(override)
        if placement is None:
            placement = pinned[override] = pinned_placement(override)
        result[at] = placement
    if plain_hashes:
        layout = engine.layout
        primaries = [
            first if key_hash <= thresholds[first] else engine.primary_of(key_hash)
            for key_hash, first in zip(plain_hashes, layout.firsts(plain_hashes), strict=True)
        ]
        replica_sets = layout.replicas_sorted(
            plain_hashes,
            primaries,
            want=engine.replica_target,
            zones=engine.zones,
            zone_count=engine.zone_count,
        )
        shared: dict[tuple[int, tuple[int, ...]], Placement] = {}
        for at, primary, replicas in zip(plain_at, primaries, replica_sets, strict=True):
            placement = shared.get((primary, replicas))
            if placement is None:
                placement = shared[(primary, replicas)] = Placement(
                    primary=names[primary], replicas=tuple(names[index] for index in replicas)
                )
            result[at] = placement
    return result  # type: ignore[return-value]


def same_servers(one: Placement, other: Placement) -> bool:
    """Whether two placements keep the same primary and the same set of replicas."""
    return one.primary == other.primary and set(one.replicas) == set(other.replicas)


def _array_changes(source: MapState, target: MapState, table: str) -> Iterator[Iterable[int]]:
    source_index = source.eligible.index
    target_index = target.eligible.index
    source_arrays: Table[array[int]] = getattr(source.engine, table)
    target_arrays: Table[array[int]] = getattr(target.engine, table)
    if source.eligible is target.eligible:
        # The same servers at the same positions: skip the chunks the tables share, compare
        # the arrays of the others pairwise.
        for _, before_chunk, after_chunk in source_arrays.chunk_pairs(target_arrays):
            for before, after in zip(before_chunk, after_chunk, strict=True):
                if before is not after:
                    yield set(before).symmetric_difference(after)
        return
    for name, position in source_index.items():
        other = target_index.get(name)
        if other is None:
            yield source_arrays[position]
        elif source_arrays[position] is not target_arrays[other]:
            yield set(source_arrays[position]).symmetric_difference(target_arrays[other])
    for name, position in target_index.items():
        if name not in source_index:
            yield target_arrays[position]


def _candidates(source: MapState, target: MapState, changes: Changes | None) -> set[int]:
    buckets = None if changes is None else changes.override_buckets
    candidates = set(source.overrides.changed_hashes(target.overrides, buckets))
    if changes is not None and changes.arrays is not None:
        # The same servers at the same positions all along: a hash-placed key whose placement
        # differs entered or left a member array at some step (its replicas follow from its
        # primary), and the steps name those hashes, so no array is compared.
        assert source.eligible is target.eligible, "arrays named across a server-set change"
        candidates.update(changes.member_hashes)
        return candidates
    for table in ("members", "replicas"):
        for changed in _array_changes(source, target, table):
            candidates.update(changed)
    return candidates


def changes_between(source: MapState, target: MapState) -> Changes | None:
    """What the deltas between two versions wrote, when one descends from the other recently."""
    changes = target.lineage.since(source.lineage)
    if changes is None:
        changes = source.lineage.since(target.lineage)
    return changes


def diff_states(source: MapState, target: MapState) -> MapDiff:
    """The changes that take `source` to `target` (any two versions of one map)."""
    changes = changes_between(source, target)
    added: list[PartKey] = []
    removed: list[PartKey] = []
    part_buckets = None if changes is None else changes.part_buckets
    for key_hash in source.parts.changed_hashes(target.parts, part_buckets):
        before = source.parts.get(key_hash)
        after = target.parts.get(key_hash)
        if before is not None and before != after:
            removed.append(before)
        if after is not None and after != before:
            added.append(after)
    moved: list[PartMoved] = []
    source_get, target_get = source.parts.get, target.parts.get
    # Versions whose deltas wrote no part share their parts (whether or not the same table).
    same_parts = source.parts is target.parts or (changes is not None and not part_buckets)
    common_hashes = sorted(
        key_hash
        for key_hash in _candidates(source, target, changes)
        if key_hash in source.parts and (same_parts or target_get(key_hash) == source_get(key_hash))
    )
    if len(common_hashes) >= BULK_PLACEMENTS_MIN:
        befores = placements_of_hashes(source, common_hashes)
        afters = placements_of_hashes(target, common_hashes)
        # Bulk placements share one object per distinct placement (a handful on a small fleet,
        # against tens of thousands of parts), and both lists keep them alive: compare each
        # pair of objects once.
        same: dict[tuple[int, int], bool] = {}
        for key_hash, before_placement, after_placement in zip(
            common_hashes, befores, afters, strict=True
        ):
            if before_placement is after_placement:
                continue
            pair = (id(before_placement), id(after_placement))
            kept = same.get(pair)
            if kept is None:
                kept = same[pair] = same_servers(before_placement, after_placement)
            if not kept:
                key = source_get(key_hash)
                assert key is not None
                moved.append(PartMoved(key=key, source=before_placement, target=after_placement))
    else:
        for key_hash in common_hashes:
            before_placement = placement_of_hash(source, key_hash)
            after_placement = placement_of_hash(target, key_hash)
            if not same_servers(before_placement, after_placement):
                key = source_get(key_hash)
                assert key is not None
                moved.append(PartMoved(key=key, source=before_placement, target=after_placement))
    common = len(source.parts) - len(removed)
    servers_added: list[ServerEntry] = []
    servers_removed: list[ServerEntry] = []
    servers_changed: list[ServerEntry] = []
    if source.servers is not target.servers:
        servers_added = [e for i, e in target.servers.items() if i not in source.servers]
        servers_removed = [e for i, e in source.servers.items() if i not in target.servers]
        servers_changed = [
            entry
            for server_id, entry in target.servers.items()
            if server_id in source.servers and source.servers[server_id] != entry
        ]
    return MapDiff(
        source_version=source.version,
        target_version=target.version,
        added=tuple(sorted(added)),
        removed=tuple(sorted(removed)),
        moved=tuple(sorted(moved, key=lambda change: change.key)),
        servers_added=tuple(sorted(servers_added, key=lambda entry: entry.server_id)),
        servers_removed=tuple(sorted(servers_removed, key=lambda entry: entry.server_id)),
        servers_changed=tuple(sorted(servers_changed, key=lambda entry: entry.server_id)),
        unchanged_count=common - len(moved),
    )
