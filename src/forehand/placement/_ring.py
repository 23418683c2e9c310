"""The default strategy: a hash ring with weighted virtual nodes and an O(1) bucket index.

A server of weight w owns `ring_points_per_weight x w` points; a key belongs to the first point at
or after its hash and walks on clockwise. Points live in a flat `array('Q')` with their owners in
an `array('H')` beside it (10 bytes a point instead of about 80 in a list of ints). A bucket index
over the top bits of the hash replaces the bisection: the key's bucket gives the first candidate
position and a scan of about one point finds the owner, which matters at a million points, where
each of a bisection's twenty probes misses the cache.

When only a few servers change, the new ring is derived from the previous one (points of the
servers that left are filtered out, the newcomers' points merged in) instead of hashed and sorted
again; the result is identical, since a server's points depend only on its id and weight. One
server leaving or entering (what a server change of the map does, a new weight being one of each)
takes work in proportion to its points: they are found by hashing its id again and searching, the
arrays are copied around them (a memory copy, the one pass over every point left) and the bucket
index moves a stretch of buckets at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from forehand.placement._config import PlacementConfig
from forehand.placement._hashing import server_points_bytes
from forehand.placement._layout import Layout, choose_replicas, distinct

__all__ = ["RingLayout"]

_BUCKET_BITS_MAX = 22
"""The bucket index has at most 2**22 entries (16 MiB), a point or so per bucket below that."""
_MERGE_RATIO = 8
"""Below one key per this many points, locate each key alone instead of in one sorted pass."""
_DERIVE_RATIO = 4
"""Derive from the previous ring when the newcomers bring under 1/this of its points."""

_STRETCH_RATIO = 16
"""The bucket index moves by stretches while under one changed point per this many buckets."""

_HASH_MAX = (1 << 64) - 1
_ZONE_CHUNK = 1 << 20
"""Keys per step of the bulk replica choice, which bounds its temporary arrays (about 50 MiB)."""
_GONE = 0xFFFF
"""Owner translation of a server that is not in the new ring (indices stay below 2**16 - 1)."""
_Points = npt.NDArray[np.uint64]
_Item = TypeVar("_Item", bound=np.generic)
_Owners = npt.NDArray[np.uint16]


def _point_count(weight_milli: int, points_per_weight: int) -> int:
    return max(1, points_per_weight * weight_milli // 1000)


def _server_points(name: str, weight_milli: int, points_per_weight: int) -> _Points:
    count = _point_count(weight_milli, points_per_weight)
    return np.frombuffer(server_points_bytes(name, count), dtype="<u8").astype(np.uint64)


def _sorted_ring(chunks: Sequence[_Points], indices: Sequence[int]) -> tuple[_Points, _Owners]:
    # Equal points (a 2**-64 event) order by owner index, which keeps the order total and the
    # same as any other way of building it.
    if not chunks:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint16)
    points = np.concatenate(chunks)
    owners = np.repeat(np.asarray(indices, dtype=np.uint16), [len(chunk) for chunk in chunks])
    order = np.argsort(points)
    points, owners = points[order], owners[order]
    if np.any(points[1:] == points[:-1]):
        order = np.lexsort((owners, points))
        points, owners = points[order], owners[order]
    return points, owners


def _fresh(
    names: Sequence[str], weights: Sequence[int], points_per_weight: int
) -> tuple[_Points, _Owners]:
    chunks = [
        _server_points(name, weights[index], points_per_weight) for index, name in enumerate(names)
    ]
    return _sorted_ring(chunks, range(len(names)))


def _inserted(
    array: npt.NDArray[_Item], positions: npt.NDArray[np.intp], values: npt.NDArray[_Item]
) -> npt.NDArray[_Item]:
    """`array` with `values[i]` before `array[positions[i]]` (`positions` ascending): the stretches
    between them are copied as they are. For one server's points (about 1,000 into 10,000,000)
    this is 14 ms against np.insert's 20; it costs a slice per value, so many values go through
    np.insert instead (`_merge`)."""
    pieces = []
    start = 0
    for index, position in enumerate(positions.tolist()):
        pieces.append(array[start:position])
        pieces.append(values[index : index + 1])
        start = position
    pieces.append(array[start:])
    return np.concatenate(pieces)


def _removed(array: npt.NDArray[_Item], positions: npt.NDArray[np.intp]) -> npt.NDArray[_Item]:
    """`array` without the elements at `positions` (ascending, distinct), copied by stretches
    (one server's points: 12 ms against np.delete's 16 at 10,000,000 points)."""
    pieces = []
    start = 0
    for position in positions.tolist():
        pieces.append(array[start:position])
        start = position + 1
    pieces.append(array[start:])
    return np.concatenate(pieces)


def _merge(
    points: _Points, owners: _Owners, added: _Points, added_owners: _Owners
) -> tuple[_Points, _Owners]:
    order = np.argsort(added, kind="stable")
    added, added_owners = added[order], added_owners[order]
    positions = np.searchsorted(points, added, side="left")
    if _ties(points, positions, added):
        # Equal points order by owner index: rare enough to sort the whole ring again.
        merged_points = np.concatenate((points, added))
        merged_owners = np.concatenate((owners, added_owners))
        order = np.lexsort((merged_owners, merged_points))
        return merged_points[order], merged_owners[order]
    # Many newcomers at once: np.insert (a copy by stretches, `_inserted`, costs a slice per
    # value: 171 ms against 5 ms for 200,000 values into 1,000,000 points).
    return np.insert(points, positions, added), np.insert(owners, positions, added_owners)


def _ties(points: _Points, positions: npt.NDArray[np.intp], added: _Points) -> bool:
    """Whether sorted `added`, to be inserted at `positions`, has a point equal to one of the
    ring's or to another of its own."""
    inside = positions < len(points)
    if np.any(points[positions[inside]] == added[inside]):
        return True
    return bool(np.any(added[1:] == added[:-1]))


def _one_left(
    previous: RingLayout, server: int, points_per_weight: int
) -> tuple[_Points, _Owners, _Points, _Points] | None:
    """The previous ring without server `server` (the servers after it one index lower), in
    proportion to its points; None when equal points make the general path necessary."""
    points, owners = previous.points_array, previous.owners_array
    gone = np.sort(
        _server_points(previous.names[server], previous.weights[server], points_per_weight)
    )
    positions = np.searchsorted(points, gone, side="left")
    if (
        np.any(positions >= len(points))
        or np.any(positions[1:] == positions[:-1])
        or np.any(owners[positions] != server)
    ):
        # An equal point of a lower owner comes first: found by the filter over every point.
        return None
    kept_owners = _removed(owners, positions)
    if server < len(previous.names) - 1:
        np.subtract(kept_owners, kept_owners > server, out=kept_owners, casting="unsafe")
    return _removed(points, positions), kept_owners, gone, np.zeros(0, dtype=np.uint64)


def _one_joined(
    previous: RingLayout, server: int, name: str, weight_milli: int, points_per_weight: int
) -> tuple[_Points, _Owners, _Points, _Points] | None:
    """The previous ring with server `name` at index `server` (the servers from it on one index
    higher), in proportion to its points; None when it has a point equal to another."""
    points, owners = previous.points_array, previous.owners_array
    new_points = np.sort(_server_points(name, weight_milli, points_per_weight))
    positions = np.searchsorted(points, new_points, side="left")
    if _ties(points, positions, new_points):
        return None
    new_owners = np.full(len(new_points), server, dtype=np.uint16)
    merged_owners = _inserted(owners, positions, new_owners)
    if server < len(previous.names):
        np.add(merged_owners, merged_owners >= server, out=merged_owners, casting="unsafe")
        merged_owners[positions + np.arange(len(positions))] = server
    merged_points = _inserted(points, positions, new_points)
    return merged_points, merged_owners, np.zeros(0, dtype=np.uint64), new_points


def _derive(
    previous: RingLayout, names: Sequence[str], weights: Sequence[int], points_per_weight: int
) -> tuple[_Points, _Owners, _Points, _Points] | None:
    # The previous ring without the servers that left or changed weight, plus the newcomers'
    # points; also the points removed and added, from which the bucket index is derived.
    change = _one_change(previous, names, weights)
    if change is not None:
        joined, server = change
        if joined:
            if _point_count(weights[server], points_per_weight) * _DERIVE_RATIO > (
                len(previous.points) + 1
            ):
                return None
            single = _one_joined(
                previous, server, names[server], weights[server], points_per_weight
            )
        else:
            single = _one_left(previous, server, points_per_weight)
        if single is not None:
            return single
    new_index = {name: index for index, name in enumerate(names)}
    translate: list[int] = []
    for old, name in enumerate(previous.names):
        index = new_index.get(name, -1)
        same_weight = index >= 0 and weights[index] == previous.weights[old]
        translate.append(index if same_weight else _GONE)
    kept = set(translate)
    added = [index for index in range(len(names)) if index not in kept]
    added_points = sum(_point_count(weights[index], points_per_weight) for index in added)
    if added_points * _DERIVE_RATIO > len(previous.points) + 1:
        return None
    points = previous.points_array
    owners = previous.owners_array
    removed = np.zeros(0, dtype=np.uint64)
    if translate != list(range(len(translate))):
        mapped = np.asarray(translate, dtype=np.uint16)[owners]
        keep = mapped != _GONE
        removed = points[~keep]
        points = points[keep]
        owners = mapped[keep]
    if not added:
        return points, owners, removed, np.zeros(0, dtype=np.uint64)
    chunks = [_server_points(names[index], weights[index], points_per_weight) for index in added]
    added_owners = np.repeat(np.asarray(added, dtype=np.uint16), [len(chunk) for chunk in chunks])
    new_points = np.concatenate(chunks)
    merged = _merge(points, owners, new_points, added_owners)
    return merged[0], merged[1], removed, new_points


def _one_change(
    previous: RingLayout, names: Sequence[str], weights: Sequence[int]
) -> tuple[bool, int] | None:
    """(joined, index) when the servers differ from the previous ring's by exactly one that
    entered (or left) at `index`, every other keeping its weight; None for any other change.
    Slices compare in C, so this costs no pass over the servers in Python beyond the prefix."""
    new_names, new_weights = tuple(names), tuple(weights)
    old_names, old_weights = previous.names, previous.weights
    if len(new_names) == len(old_names) + 1:
        joined, longer, shorter = True, (new_names, new_weights), (old_names, old_weights)
    elif len(new_names) == len(old_names) - 1:
        joined, longer, shorter = False, (old_names, old_weights), (new_names, new_weights)
    else:
        return None
    index = next(
        (at for at, (a, b) in enumerate(zip(shorter[0], longer[0], strict=False)) if a != b),
        len(shorter[0]),
    )
    for short, long in zip(shorter, longer, strict=True):
        if short[:index] != long[:index] or short[index:] != long[index + 1 :]:
            return None
    return joined, index


def _bucket_bits(point_count: int) -> int:
    return min(_BUCKET_BITS_MAX, max(1, (point_count - 1).bit_length()))


def _bucket_index(points: _Points) -> npt.NDArray[np.uint32]:
    bits = _bucket_bits(len(points))
    counts = np.bincount((points >> np.uint64(64 - bits)).astype(np.intp), minlength=1 << bits)
    # starts[b] counts the points of the buckets before b: the first position of bucket b.
    starts = np.zeros((1 << bits) + 1, dtype=np.uint32)
    np.cumsum(counts, out=starts[1:])
    return starts


def _derived_bucket_index(
    starts: npt.NDArray[np.uint32], shift: int, removed: _Points, added: _Points
) -> npt.NDArray[np.uint32]:
    # Only the points that left or came change the counts; the starts move by their running sum,
    # which is constant between two changed buckets: each such stretch moves at once.
    size = len(starts)
    steps = np.concatenate(
        ((added >> np.uint64(shift)).astype(np.intp), (removed >> np.uint64(shift)).astype(np.intp))
    )
    if len(steps) * _STRETCH_RATIO > size:
        change = np.bincount(steps[: len(added)] + 1, minlength=size)
        change -= np.bincount(steps[len(added) :] + 1, minlength=size)
        return (starts + np.cumsum(change)).astype(np.uint32)
    if not len(steps):
        return starts  # Never mutated: the rings share it.
    signs = np.concatenate(
        (np.ones(len(added), dtype=np.int64), np.full(len(removed), -1, dtype=np.int64))
    )
    order = np.argsort(steps, kind="stable")
    # A point in bucket b moves the start of every bucket after b.
    bounds, firsts = np.unique(steps[order] + 1, return_index=True)
    running = np.cumsum(np.add.reduceat(signs[order], firsts))
    result = starts.copy()
    ends = [*bounds[1:].tolist(), size]
    for low, high, amount in zip(bounds.tolist(), ends, running.tolist(), strict=True):
        if amount > 0:
            result[low:high] += np.uint32(amount)
        elif amount < 0:
            result[low:high] -= np.uint32(-amount)
    return result


def sorted_hashes_array(sorted_hashes: Sequence[int]) -> _Points:
    """Hashes as a numpy array."""
    return np.fromiter(sorted_hashes, dtype=np.uint64, count=len(sorted_hashes))


class RingLayout:
    """A weighted hash ring; see the module docstring."""

    __slots__ = (
        "_names",
        "_owners",
        "_owners_array",
        "_points",
        "_points_array",
        "_points_per_weight",
        "_shift",
        "_starts",
        "_starts_array",
        "_weights",
    )
    _points_array: _Points
    _owners_array: _Owners
    _starts_array: npt.NDArray[np.uint32]
    _points: memoryview
    _owners: memoryview
    _starts: memoryview
    _shift: int

    def __init__(
        self,
        server_ids: Sequence[str],
        weights_milli: Sequence[int],
        config: PlacementConfig,
        *,
        previous: Layout | None = None,
    ) -> None:
        self._names = tuple(server_ids)
        self._weights = tuple(weights_milli)
        self._points_per_weight = config.ring_points_per_weight
        derived = None
        if isinstance(previous, RingLayout) and previous._points_per_weight == (
            self._points_per_weight
        ):
            derived = _derive(previous, self._names, self._weights, self._points_per_weight)
        if derived is None:
            points, owners = _fresh(self._names, self._weights, self._points_per_weight)
            starts = _bucket_index(points)
        else:
            assert isinstance(previous, RingLayout)
            points, owners, removed, added = derived
            if _bucket_bits(len(points)) == _bucket_bits(len(previous.points)):
                starts = _derived_bucket_index(
                    previous._starts_array, previous._shift, removed, added
                )
            else:
                starts = _bucket_index(points)
        self._shift = 64 - _bucket_bits(len(points))
        # numpy arrays for the bulk operations, memoryviews of them for the per-key loops
        # (indexing a memoryview is about 1.6x faster than indexing numpy).
        self._points_array = points
        self._owners_array = owners
        self._starts_array = starts
        self._points = points.data
        self._owners = owners.data
        self._starts = starts.data

    @property
    def names(self) -> tuple[str, ...]:
        """The server ids, by index."""
        return self._names

    @property
    def weights(self) -> tuple[int, ...]:
        """The server weights in thousandths, by index."""
        return self._weights

    @property
    def points(self) -> memoryview:
        """The ring points, ascending (never mutate)."""
        return self._points

    @property
    def owners(self) -> memoryview:
        """The owner index of each point (never mutate)."""
        return self._owners

    @property
    def points_array(self) -> _Points:
        """The ring points as a numpy array (never mutate)."""
        return self._points_array

    @property
    def owners_array(self) -> _Owners:
        """The owners as a numpy array (never mutate)."""
        return self._owners_array

    def positions_of(self, server: int) -> list[int]:
        """The ring positions of one server's points, ascending."""
        return [int(position) for position in np.flatnonzero(self.owners_array == server)]

    def arcs_near(
        self,
        server: int,
        *,
        distinct_needed: int,
        zones: Sequence[int] | None,
        per_zone: bool = False,
    ) -> list[tuple[int, int, int, bool]] | None:
        """Hash ranges whose keys may meet `server` among the first servers of their walk.

        From each point of `server` the scan goes back until the points passed hold
        `distinct_needed` distinct zones (distinct servers when `zones` is None; with `per_zone`,
        that many distinct servers in every zone), or another point of `server`; a key before
        that has chosen its first servers by the time it reaches the point. Each range is
        (low, high, owner, own): the keys with low < hash <= high, whose first server other than
        `server` is `owner`, and `own` when their first server is `server` itself. None when a
        scan goes round the whole ring (tiny clusters).
        """
        points = self._points
        owners = self._owners
        size = len(points)
        ranges: list[tuple[int, int, int, bool]] = []
        for position in self.positions_of(server):
            start = self._scan_back(position, server, distinct_needed, zones, per_zone=per_zone)
            if start is None:
                return None
            current = start
            while True:
                successor = current
                while owners[successor] == server:
                    successor = successor + 1 if successor + 1 < size else 0
                own = owners[current] == server
                high = points[current]
                if current:
                    ranges.append((points[current - 1], high, owners[successor], own))
                else:
                    ranges.append((points[size - 1], _HASH_MAX, owners[successor], own))
                    ranges.append((-1, high, owners[successor], own))
                if current == position:
                    break
                current = current + 1 if current + 1 < size else 0
        return ranges

    def _scan_back(
        self,
        position: int,
        server: int,
        distinct_needed: int,
        zones: Sequence[int] | None,
        *,
        per_zone: bool,
    ) -> int | None:
        # The first position whose keys may still reach `position` with choices left open.
        owners = self._owners
        size = len(owners)
        seen: set[int] = set()
        by_zone: dict[int, set[int]] = {}
        zone_total = len(set(zones)) if per_zone and zones is not None else 0
        full_zones = 0
        current = position
        for _ in range(size):
            previous = current - 1 if current else size - 1
            owner = owners[previous]
            if owner == server:
                return current
            if per_zone and zones is not None:
                held = by_zone.setdefault(zones[owner], set())
                if owner not in held:
                    held.add(owner)
                    full_zones += len(held) == distinct_needed
                if full_zones == zone_total:
                    return current
            else:
                seen.add(owner if zones is None else zones[owner])
                if len(seen) >= distinct_needed:
                    return current
            current = previous
        return None

    @property
    def server_count(self) -> int:
        return len(self._names)

    def position(self, key_hash: int) -> int:
        """The position of the first point at or after `key_hash`, wrapping to 0."""
        points = self._points
        size = len(points)
        position = self._starts[key_hash >> self._shift]
        while position < size and points[position] < key_hash:
            position += 1
        return position if position < size else 0

    def first(self, key_hash: int) -> int:
        points = self._points
        size = len(points)
        position = self._starts[key_hash >> self._shift]
        while position < size and points[position] < key_hash:
            position += 1
        return self._owners[position if position < size else 0]

    def walk(self, key_hash: int) -> Iterator[int]:
        owners = self._owners
        start = self.position(key_hash)
        positions = chain(range(start, len(owners)), range(start))
        return distinct((owners[position] for position in positions), len(self._names))

    def firsts(self, sorted_hashes: Sequence[int]) -> list[int]:
        if len(sorted_hashes) * _MERGE_RATIO < len(self._points):
            return [self.first(key_hash) for key_hash in sorted_hashes]
        positions = self._positions(sorted_hashes)
        return self.owners_array[positions].tolist()  # type: ignore[no-any-return]

    def _positions(self, sorted_hashes: Sequence[int]) -> npt.NDArray[np.intp]:
        points = self.points_array
        positions = np.searchsorted(points, sorted_hashes_array(sorted_hashes), side="left")
        positions[positions == len(points)] = 0
        return positions

    def first_owners(self, hashes: _Points) -> npt.NDArray[np.intp]:
        """`firsts` of a numpy array of hashes, as a numpy array."""
        return self._owners_array[self._positions_array(hashes)].astype(np.intp)

    def _positions_array(self, hashes: _Points) -> npt.NDArray[np.intp]:
        points = self._points_array
        positions = np.searchsorted(points, hashes, side="left")
        positions[positions == len(points)] = 0
        return positions

    def zone_replicas(
        self,
        hashes: _Points,
        primaries: npt.NDArray[np.intp],
        *,
        want: int,
        zones: Sequence[int],
    ) -> npt.NDArray[np.intp]:
        """`replicas` of many keys at once when there are more zones than replicas.

        The rule then takes, in walk order, the first server of each zone other than the
        primary's: the nearest point of each zone after the key, the `want` nearest zones.
        """
        # Zones as columns 0..zone_count-1, whatever numbers the caller gave them.
        zone_values, zone_array = np.unique(np.asarray(zones, dtype=np.intp), return_inverse=True)
        zone_count = len(zone_values)
        assert zone_count > want
        point_zones = zone_array[self._owners_array]
        zone_places = [np.flatnonzero(point_zones == zone) for zone in range(zone_count)]
        del point_zones
        size = len(self._points_array)
        result = np.empty((len(hashes), want), dtype=np.intp)
        for start in range(0, len(hashes), _ZONE_CHUNK):
            chunk = slice(start, start + _ZONE_CHUNK)
            positions = self._positions_array(hashes[chunk])
            distance = np.empty((len(positions), zone_count), dtype=np.int64)
            nearest = np.empty((len(positions), zone_count), dtype=np.int64)
            for zone, places in enumerate(zone_places):
                following = places[np.searchsorted(places, positions) % len(places)]
                nearest[:, zone] = following
                distance[:, zone] = (following - positions) % size
            rows = np.arange(len(positions))
            distance[rows, zone_array[primaries[chunk]]] = np.iinfo(np.int64).max
            picked = np.argsort(distance, axis=1, kind="stable")[:, :want]
            result[chunk] = self._owners_array[np.take_along_axis(nearest, picked, axis=1)]
        return result

    def replicas(
        self, key_hash: int, *, primary: int, want: int, zones: Sequence[int], zone_count: int
    ) -> tuple[int, ...]:
        # The rule of `choose_replicas` over `walk`, in loops over the owner array: this runs for
        # every lookup and for every key of a rebuild, so the common cases get their own loops.
        if want == 0:
            return ()
        position = self.position(key_hash)
        if zone_count > want:
            return self._zone_firsts(position, zones[primary], want, zones)
        if zone_count == 1:
            return self._distinct_after(position, primary, want)
        return choose_replicas(
            self.walk(key_hash), primary=primary, want=want, zones=zones, zone_count=zone_count
        )

    def replicas_sorted(
        self,
        sorted_hashes: Sequence[int],
        primaries: Sequence[int],
        *,
        want: int,
        zones: Sequence[int],
        zone_count: int,
    ) -> list[tuple[int, ...]]:
        if want == 0 or len(sorted_hashes) * _MERGE_RATIO < len(self._points):
            return [
                self.replicas(h, primary=p, want=want, zones=zones, zone_count=zone_count)
                for h, p in zip(sorted_hashes, primaries, strict=True)
            ]
        # A rebuild (or a diff over many keys): locate every key at once, and reuse the answer
        # of the previous key when it starts at the same point with the same primary (with more
        # zones than replicas, from the same zone): the replicas depend on nothing else.
        by_zone = zone_count > want
        result: list[tuple[int, ...]] = []
        last: tuple[int, int] = (-1, -1)
        chosen: tuple[int, ...] = ()
        positions = self._positions(sorted_hashes).tolist()
        for key_hash, position, primary in zip(sorted_hashes, positions, primaries, strict=True):
            start = (position, zones[primary] if by_zone else primary)
            if start != last:
                if by_zone:
                    chosen = self._zone_firsts(position, start[1], want, zones)
                elif zone_count == 1:
                    chosen = self._distinct_after(position, primary, want)
                else:
                    chosen = choose_replicas(
                        self.walk(key_hash),
                        primary=primary,
                        want=want,
                        zones=zones,
                        zone_count=zone_count,
                    )
                last = start
            result.append(chosen)
        return result

    def _zone_firsts(
        self, position: int, primary_zone: int, want: int, zones: Sequence[int]
    ) -> tuple[int, ...]:
        # With more zones than replicas the rule picks the first server of each zone not yet
        # holding a copy; servers of different zones are distinct, so no `seen` set is needed.
        owners = self._owners
        size = len(owners)
        chosen: list[int] = []
        used = [primary_zone]
        while True:
            owner = owners[position]
            position += 1
            if position == size:
                position = 0
            zone = zones[owner]
            if zone not in used:
                used.append(zone)
                chosen.append(owner)
                if len(chosen) == want:
                    return tuple(chosen)

    def _distinct_after(self, position: int, primary: int, want: int) -> tuple[int, ...]:
        owners = self._owners
        size = len(owners)
        want = min(want, len(self._names) - 1)
        chosen: list[int] = []
        seen = {primary}
        while len(chosen) < want:
            owner = owners[position]
            position += 1
            if position == size:
                position = 0
            if owner not in seen:
                seen.add(owner)
                chosen.append(owner)
        return tuple(chosen)
