"""Bounded-load assignment of hash-placed parts, built in full or kept up to date incrementally.

The rule (consistent hashing with bounded loads, Mirrokni, Thorup and Zadimoghaddam, SODA 2018):
take the hash-placed keys in ascending hash order; each goes to the first server of its walk that
still has capacity. The result is a pure function of (layout, capacities, key set). It is summed
up by one number per server, its *threshold*: the hash of the key that filled it (the largest hash
it admitted), `UNBOUNDED` while it is not full, `CLOSED` when its capacity is zero. A key is then
placed, without any per-key table, on the first server of its walk whose threshold is at or above
its hash, and a lookup costs one `first()` and one comparison in the common case.

To keep thresholds current when keys or capacities change, the engine keeps per server the sorted
hashes it holds as primary (`members`), the hashes that walked past it because it was full
(`skipped`), and the hashes it holds as replica (`replicas`, for `parts_for`). Every change
decomposes into four primitives, each of which moves at most one key per step along a chain:

- insert a key: it takes the first server with room; if that server was full, its largest key is
  pushed out and continues its own walk (the server now fills one key earlier);
- delete a key: its server has room for one more, and the smallest key that skipped it comes
  back, which frees a place on that key's server, and so on;
- raise a capacity by one: as for a delete, without removing anything;
- lower a capacity by one: as for an insert, without adding anything.

Tests check that any sequence of primitives ends in the same state as a full rebuild. A change of
the server set is built from the same primitives (`remove_server`, `add_server`,
`set_capacities`), and so is the full build, which places the keys that do not fit their first
server through `insert`.
"""

from __future__ import annotations

import dataclasses
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forehand.placement._hashing import HASH_LIMIT
from forehand.placement._ring import RingLayout
from forehand.placement._strategies import Layout
from forehand.placement._table import Table, TableWriter

__all__ = ["CLOSED", "UNBOUNDED", "Engine", "EngineWriter", "build_engine"]

UNBOUNDED = HASH_LIMIT
"""Threshold of a server that is not full: every hash is below it."""
CLOSED = -1
"""Threshold of a server without capacity: no hash is at or below it."""


def _empty() -> array[int]:
    return array("Q")


@dataclass(frozen=True, slots=True)
class Engine:
    """The bounded-load assignment of one map version (immutable; arrays are never mutated)."""

    layout: Layout
    """The consistent-hashing layout over the eligible servers."""
    zones: tuple[int, ...]
    """Zone number of each eligible server."""
    zone_count: int
    """How many distinct zones the eligible servers span."""
    replica_target: int
    """Replicas each hash-placed key gets: the configured count, at most servers - 1."""
    capacities: tuple[int, ...]
    """How many hash-placed primaries each server may hold."""
    thresholds: tuple[int, ...]
    """Per server: the largest hash it admitted when full, else UNBOUNDED or CLOSED."""
    members: Table[array[int]]
    """Per server: sorted hashes of the hash-placed keys it holds as primary (a chunked table,
    so that versions share the chunks a delta did not write)."""
    skipped: Table[array[int]]
    """Per server: sorted hashes of the keys that walked past it because it was full."""
    replicas: Table[array[int]]
    """Per server: sorted hashes of the hash-placed keys it holds as replica."""

    def primary_of(self, key_hash: int) -> int:
        """The server index that holds `key_hash` as primary."""
        thresholds = self.thresholds
        first = self.layout.first(key_hash)
        if key_hash <= thresholds[first]:
            return first
        for server in self.layout.walk(key_hash):
            if key_hash <= thresholds[server]:
                return server
        raise AssertionError("bounded loads left a key without a server")

    def replica_set(self, key_hash: int, primary: int) -> tuple[int, ...]:
        """The replica server indices of a key whose primary is `primary`."""
        return self.layout.replicas(
            key_hash,
            primary=primary,
            want=self.replica_target,
            zones=self.zones,
            zone_count=self.zone_count,
        )

    def writer(self) -> EngineWriter:
        """A builder of the next version's assignment."""
        return EngineWriter(self)


def _walk_after(layout: Layout, key_hash: int, server: int) -> Iterator[int]:
    walk = layout.walk(key_hash)
    for candidate in walk:
        if candidate == server:
            break
    return walk


def _between(values: array[int], low: int, high: int) -> array[int]:
    """The values v with low < v <= high (sorted input)."""
    return values[bisect_right(values, low) : bisect_right(values, high)]


def _remove(values: array[int], key_hash: int) -> None:
    position = bisect_left(values, key_hash)
    assert position < len(values) and values[position] == key_hash, "engine index out of sync"
    del values[position]


def build_engine(
    *,
    layout: Layout,
    zones: Sequence[int],
    replica_count: int,
    capacities: Sequence[int],
    sorted_hashes: Sequence[int] | npt.NDArray[np.uint64],
) -> Engine:
    """The assignment computed from scratch: keys in ascending hash order, greedy.

    Greedy in ascending hash order is the one stable assignment when every server prefers
    smaller hashes, so it is computed in bulk: each server keeps the smallest of the keys whose
    first server it is, up to its capacity, and the rest are inserted one by one with the
    incremental primitive (which keeps the greedy result for the keys so far). Replicas are
    then chosen for all keys at once.
    """
    count = layout.server_count
    assert len(zones) == count and len(capacities) == count
    if isinstance(sorted_hashes, np.ndarray):
        hashes = sorted_hashes.astype(np.uint64, copy=False)
    else:
        hashes = np.fromiter(sorted_hashes, dtype=np.uint64, count=len(sorted_hashes))
    members, overflow = _first_choices(layout, capacities, hashes)
    zone_count = len(set(zones))
    engine = Engine(
        layout=layout,
        zones=tuple(zones),
        zone_count=zone_count,
        replica_target=0,
        capacities=tuple(capacities),
        thresholds=tuple(
            _threshold(members[server], capacities[server]) for server in range(count)
        ),
        members=Table.of(members),
        skipped=Table.of(_empty() for _ in range(count)),
        replicas=Table.of(_empty() for _ in range(count)),
    )
    if len(overflow):
        writer = engine.writer()
        for key_hash in overflow.tolist():
            writer.insert(key_hash)
        engine = writer.freeze()
    replica_target = max(0, min(replica_count, count - 1))
    replicas = engine.replicas
    if replica_target and len(hashes):
        replicas = _replica_arrays(engine, hashes, replica_target)
    return dataclasses.replace(engine, replica_target=replica_target, replicas=replicas)


def _first_choices(
    layout: Layout, capacities: Sequence[int], hashes: npt.NDArray[np.uint64]
) -> tuple[list[array[int]], npt.NDArray[np.uint64]]:
    # Per server, the smallest keys whose first server it is, up to its capacity (a valid greedy
    # assignment of those keys: none of them walks on); and the other keys, ascending.
    count = layout.server_count
    if not len(hashes):
        return [_empty() for _ in range(count)], hashes
    if isinstance(layout, RingLayout):
        firsts = layout.first_owners(hashes)
    else:
        firsts = np.asarray(layout.firsts(hashes.tolist()), dtype=np.intp)
    grouped = hashes[np.argsort(firsts, kind="stable")]
    sizes = np.bincount(firsts, minlength=count).tolist()
    members: list[array[int]] = []
    overflow: list[npt.NDArray[np.uint64]] = []
    start = 0
    for server, size in enumerate(sizes):
        kept = min(size, capacities[server])
        members.append(array("Q", grouped[start : start + kept].tobytes()))
        if kept < size:
            overflow.append(grouped[start + kept : start + size])
        start += size
    if not overflow:
        return members, np.zeros(0, dtype=np.uint64)
    return members, np.sort(np.concatenate(overflow))


def _replica_arrays(engine: Engine, hashes: npt.NDArray[np.uint64], want: int) -> Table[array[int]]:
    count = engine.layout.server_count
    primaries = np.empty(len(hashes), dtype=np.intp)
    for server, held in enumerate(engine.members):
        if len(held):
            primaries[np.searchsorted(hashes, np.frombuffer(held, dtype=np.uint64))] = server
    layout = engine.layout
    if isinstance(layout, RingLayout) and engine.zone_count > want:
        chosen = layout.zone_replicas(hashes, primaries, want=want, zones=engine.zones)
    else:
        sets = layout.replicas_sorted(
            hashes.tolist(),
            primaries.tolist(),
            want=want,
            zones=engine.zones,
            zone_count=engine.zone_count,
        )
        chosen = np.asarray(sets, dtype=np.intp).reshape(len(hashes), -1)
    servers = chosen.ravel()
    order = np.argsort(servers, kind="stable")
    copies = np.repeat(hashes, chosen.shape[1])[order]
    result: list[array[int]] = []
    start = 0
    for size in np.bincount(servers, minlength=count).tolist():
        result.append(array("Q", copies[start : start + size].tobytes()))
        start += size
    return Table.of(result)


def _threshold(members: array[int], capacity: int) -> int:
    if capacity == 0:
        return CLOSED
    return members[-1] if len(members) == capacity else UNBOUNDED


class EngineWriter:
    """Incremental edits of an `Engine`, copying only the per-server arrays they touch."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._layout = engine.layout
        self._zones = engine.zones
        self._zone_count = engine.zone_count
        self._replica_target = engine.replica_target
        self._capacities = list(engine.capacities)
        self._thresholds = list(engine.thresholds)
        # The array tables are copied chunk by chunk as they are written, the capacities and
        # thresholds (read on every step of every walk) flat.
        self._members = engine.members.writer()
        self._skipped = engine.skipped.writer()
        self._replicas = engine.replicas.writer()
        self._owned: set[tuple[int, int]] = set()
        self._members_changed: set[int] = set()

    @property
    def capacities(self) -> list[int]:
        """Current capacities (read only)."""
        return self._capacities

    def written(self) -> frozenset[tuple[int, int]]:
        """The arrays this writer copied, as (table, server): 0 members, 1 skipped, 2 replicas.

        Every other array is its engine's own. Positions are those of the engine's servers, so
        this is meaningful only when the writer changed no server set (`remove_server`,
        `add_server`).
        """
        return frozenset(self._owned)

    def members_changed(self) -> frozenset[int]:
        """The hashes that entered or left some member array (perhaps both, perhaps back).

        With the same servers at the same positions (see `written`), a hash-placed key whose
        primary or replicas differ between the engine and the writer's result is among them:
        its replicas follow from its primary. Meaningful under the same condition as `written`.
        """
        return frozenset(self._members_changed)

    def _array(self, table: TableWriter[array[int]], kind: int, server: int) -> array[int]:
        if (kind, server) not in self._owned:
            table[server] = table[server][:]
            self._owned.add((kind, server))
        return table[server]

    def _add_member(self, server: int, key_hash: int) -> array[int]:
        members = self._array(self._members, 0, server)
        insort(members, key_hash)
        self._members_changed.add(key_hash)
        return members

    def _skip(self, server: int, key_hash: int) -> None:
        insort(self._array(self._skipped, 1, server), key_hash)

    def _unskip(self, server: int, key_hash: int) -> None:
        _remove(self._array(self._skipped, 1, server), key_hash)

    def _replica_set(self, key_hash: int, primary: int) -> tuple[int, ...]:
        return self._layout.replicas(
            key_hash,
            primary=primary,
            want=self._replica_target,
            zones=self._zones,
            zone_count=self._zone_count,
        )

    def _set_replicas(self, key_hash: int, primary: int, *, present: bool) -> None:
        if not self._replica_target:
            return
        for server in self._replica_set(key_hash, primary):
            replicas = self._array(self._replicas, 2, server)
            if present:
                insort(replicas, key_hash)
            else:
                _remove(replicas, key_hash)

    def insert(self, key_hash: int) -> None:
        """Add a hash-placed key."""
        self._place(key_hash, self._layout.walk(key_hash))

    def delete(self, key_hash: int) -> None:
        """Remove a hash-placed key."""
        thresholds = self._thresholds
        for server in self._layout.walk(key_hash):
            if key_hash <= thresholds[server]:
                break
            self._unskip(server, key_hash)
        else:
            raise AssertionError("deleting a key the engine does not hold")
        self._set_replicas(key_hash, server, present=False)
        _remove(self._array(self._members, 0, server), key_hash)
        self._members_changed.add(key_hash)
        self._refill(server)

    def raise_capacity(self, server: int, capacity: int) -> None:
        """Raise a server's capacity to `capacity`, one step at a time."""
        while self._capacities[server] < capacity:
            self._capacities[server] += 1
            self._refill(server)

    def lower_capacity(self, server: int, capacity: int) -> None:
        """Lower a server's capacity to `capacity`, one step at a time."""
        while self._capacities[server] > capacity:
            self._capacities[server] -= 1
            self._shrink(server)

    def _place(self, key_hash: int, walk: Iterator[int]) -> None:
        # Each round places one key; a full server pushes out its largest key, which goes on
        # along its own walk in the next round.
        thresholds = self._thresholds
        while True:
            for server in walk:
                if key_hash <= thresholds[server]:
                    break
                self._skip(server, key_hash)
            else:
                raise AssertionError("capacities leave no room for every key")
            members = self._add_member(server, key_hash)
            self._set_replicas(key_hash, server, present=True)
            if thresholds[server] == UNBOUNDED:
                if len(members) == self._capacities[server]:
                    thresholds[server] = members[-1]
                return
            evicted = members.pop()
            self._members_changed.add(evicted)
            thresholds[server] = members[-1]
            self._set_replicas(evicted, server, present=False)
            self._skip(server, evicted)
            key_hash = evicted
            walk = _walk_after(self._layout, evicted, server)

    def _refill(self, server: int) -> None:
        # `server` has room for exactly one more key than it holds. The smallest key that walked
        # past it comes back; that frees a place on the key's current server, and so on.
        thresholds = self._thresholds
        while thresholds[server] != UNBOUNDED:
            waiting = self._skipped[server]
            if not waiting:
                thresholds[server] = UNBOUNDED
                return
            returning = waiting[0]
            del self._array(self._skipped, 1, server)[0]
            for holder in _walk_after(self._layout, returning, server):
                if returning <= thresholds[holder]:
                    break
                self._unskip(holder, returning)
            else:
                raise AssertionError("a skipped key has no primary")
            self._set_replicas(returning, holder, present=False)
            _remove(self._array(self._members, 0, holder), returning)
            # Every key that skipped `server` is above all its members, so this appends.
            self._array(self._members, 0, server).append(returning)
            self._members_changed.add(returning)
            thresholds[server] = returning
            self._set_replicas(returning, server, present=True)
            server = holder

    def _shrink(self, server: int) -> None:
        members = self._members[server]
        capacity = self._capacities[server]
        if self._thresholds[server] == UNBOUNDED:
            if len(members) == capacity:
                self._thresholds[server] = members[-1] if capacity else CLOSED
            return
        members = self._array(self._members, 0, server)
        evicted = members.pop()
        self._members_changed.add(evicted)
        self._thresholds[server] = members[-1] if capacity else CLOSED
        self._set_replicas(evicted, server, present=False)
        self._skip(server, evicted)
        self._place(evicted, _walk_after(self._layout, evicted, server))

    # Changes of the server set (ring layouts only; see docs/ARCHITECTURE.md, bounded loads).

    def primary_of(self, key_hash: int) -> int:
        """The server that holds `key_hash` as primary in the assignment being built."""
        thresholds = self._thresholds
        for server in self._layout.walk(key_hash):
            if key_hash <= thresholds[server]:
                return server
        raise AssertionError("bounded loads left a key without a server")

    def set_capacities(self, capacities: Sequence[int]) -> None:
        """Every capacity to its new value: raises first, so there is always room, then lowers."""
        assert len(capacities) == len(self._capacities)
        for server, capacity in enumerate(capacities):
            self.raise_capacity(server, capacity)
        for server, capacity in enumerate(capacities):
            self.lower_capacity(server, capacity)

    def remove_server(
        self, server: int, *, layout: Layout, zones: Sequence[int], room: Sequence[int]
    ) -> None:
        """Take `server` out of the layout; `layout` is the current one without it.

        The others first get at least the capacities in `room` (by current index), then the
        server's capacity falls to zero, which walks each of its keys on exactly as if it were
        not there. Then its slot goes, and the keys it held as replica get their new replicas.
        """
        for other, capacity in enumerate(room):
            if other != server:
                self.raise_capacity(other, capacity)
        self.lower_capacity(server, 0)
        assert not self._members[server]
        before = self._replica_sets(self._replicas[server])
        old_to_new = [index if index < server else index - 1 for index in range(len(room))]
        old_to_new[server] = -1
        self._reindex(old_to_new, len(room) - 1)
        self._layout = layout
        self._zones = tuple(zones)
        self._update_replicas(before, old_to_new)

    def add_server(self, server: int, *, layout: RingLayout, zones: Sequence[int]) -> bool:
        """Put `server` (its index in `layout`, the current ring plus it) in at capacity zero.

        Nothing moves yet: the server is closed, so every key whose walk now meets it before
        its holder skips it. `set_capacities` then opens it. The keys whose replica sets it
        enters are found from the ring around its points (`RingLayout.arcs_near`). False, and
        nothing changed, when the ring is too small for that scan.
        """
        want = self._replica_target
        # Distinct zones when there are more zones than replicas, distinct servers with one zone;
        # otherwise (passed-over servers fill in) want + 1 distinct servers of every zone, after
        # which the last zone to appear brings `want` more servers, all chosen.
        arcs = layout.arcs_near(
            server,
            distinct_needed=want + 1,
            zones=None if self._zone_count == 1 else zones,
            per_zone=1 < self._zone_count <= want,
        )
        if arcs is None:
            return False
        candidates: set[int] = set()
        own: set[int] = set()
        for low, high, owner, is_own in arcs:
            old = owner if owner < server else owner - 1
            found = [
                *_between(self._members[old], low, high),
                *_between(self._skipped[old], low, high),
            ]
            candidates.update(found)
            if is_own:
                own.update(found)
        old_to_new = [index if index < server else index + 1 for index in range(len(self._members))]
        passing = self._passing(server, layout, old_to_new, own)
        primaries = [(key_hash, self.primary_of(key_hash)) for key_hash in sorted(candidates)]
        old_layout, old_zones = self._layout, self._zones
        self._reindex(old_to_new, len(old_to_new) + 1)
        self._layout = layout
        self._zones = tuple(zones)
        self._skipped[server] = array("Q", sorted(own | passing))
        if not want:
            return True
        # Only keys whose new replica set names the server change (see `_update_replicas`).
        before = []
        for key_hash, primary in primaries:
            if server in self._replica_set(key_hash, old_to_new[primary]):
                old_set = old_layout.replicas(
                    key_hash,
                    primary=primary,
                    want=want,
                    zones=old_zones,
                    zone_count=self._zone_count,
                )
                before.append((key_hash, primary, old_set))
        self._update_replicas(before, old_to_new)
        return True

    def _passing(
        self, server: int, layout: RingLayout, old_to_new: Sequence[int], own: set[int]
    ) -> set[int]:
        # Keys that walked past full servers (every such key is in some skipped array) and whose
        # walk in the new ring meets `server` before the server that holds them.
        overflowed: set[int] = set()
        for waiting in self._skipped:
            overflowed.update(waiting)
        overflowed -= own
        passing: set[int] = set()
        for key_hash in overflowed:
            holder = old_to_new[self.primary_of(key_hash)]
            for candidate in layout.walk(key_hash):
                if candidate == server:
                    passing.add(key_hash)
                    break
                if candidate == holder:
                    break
        return passing

    def _replica_sets(self, hashes: Iterable[int]) -> list[tuple[int, int, tuple[int, ...]]]:
        if not self._replica_target:
            return []
        result = []
        for key_hash in list(hashes):
            primary = self.primary_of(key_hash)
            result.append((key_hash, primary, self._replica_set(key_hash, primary)))
        return result

    def _update_replicas(
        self, before: list[tuple[int, int, tuple[int, ...]]], old_to_new: Sequence[int]
    ) -> None:
        for key_hash, primary, old_set in before:
            kept = [old_to_new[server] for server in old_set if old_to_new[server] >= 0]
            new_set = self._replica_set(key_hash, old_to_new[primary])
            for server in kept:
                if server not in new_set:
                    _remove(self._array(self._replicas, 2, server), key_hash)
            for server in new_set:
                if server not in kept:
                    insort(self._array(self._replicas, 2, server), key_hash)

    def _reindex(self, old_to_new: Sequence[int], count: int) -> None:
        # Per-server tables follow the new indices; a new slot starts closed and empty.
        tables: list[list[array[int] | None]] = [[None] * count for _ in range(3)]
        capacities = [0] * count
        thresholds = [CLOSED] * count
        sources = (self._members, self._skipped, self._replicas)
        for old, new in enumerate(old_to_new):
            if new < 0:
                continue
            for table, source in zip(tables, sources, strict=True):
                table[new] = source[old]
            capacities[new] = self._capacities[old]
            thresholds[new] = self._thresholds[old]
        owned = {(kind, old_to_new[s]) for kind, s in self._owned if old_to_new[s] >= 0}
        for kind, table in enumerate(tables):
            for new in range(count):
                if table[new] is None:
                    table[new] = _empty()
                    owned.add((kind, new))
        self._members, self._skipped, self._replicas = (
            Table.of([values for values in table if values is not None]).writer()
            for table in tables
        )
        self._capacities = capacities
        self._thresholds = thresholds
        self._owned = owned

    def freeze(self) -> Engine:
        """The finished assignment; the writer must not be used afterwards."""
        return Engine(
            layout=self._layout,
            zones=self._zones,
            zone_count=self._zone_count,
            replica_target=self._replica_target,
            capacities=tuple(self._capacities),
            thresholds=tuple(self._thresholds),
            members=self._members.freeze(),
            skipped=self._skipped.freeze(),
            replicas=self._replicas.freeze(),
        )
