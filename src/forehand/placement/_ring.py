"""The default strategy: a hash ring with weighted virtual nodes and an O(1) bucket index.

A server of weight w owns `ring_points_per_weight x w` points; a key belongs to the first point at
or after its hash and walks on clockwise. Points live in a flat `array('Q')` with their owners in
an `array('H')` beside it (10 bytes a point instead of about 80 in a list of ints). A bucket index
over the top bits of the hash replaces the bisection: the key's bucket gives the first candidate
position and a scan of about one point finds the owner, which matters at a million points, where
each of a bisection's twenty probes misses the cache.

When only a few servers change, the new ring is derived from the previous one (points of the
servers that left are filtered out, the newcomers' points merged in) instead of hashed and sorted
again; the result is identical, since a server's points depend only on its id and weight.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate, chain, compress

from forehand.placement._config import PlacementConfig
from forehand.placement._hashing import server_points
from forehand.placement._layout import Layout, choose_replicas, distinct

__all__ = ["RingLayout"]

_OWNER_BITS = 16
_OWNER_MASK = (1 << _OWNER_BITS) - 1
_BUCKET_BITS_MAX = 22
"""The bucket index has at most 2**22 entries (16 MiB), a point or so per bucket below that."""
_MERGE_RATIO = 8
"""Below one key per this many points, bisect each key instead of merging with the ring."""
_DERIVE_RATIO = 4
"""Derive from the previous ring when the newcomers bring under 1/this of its points."""


def _point_count(weight_milli: int, points_per_weight: int) -> int:
    return max(1, points_per_weight * weight_milli // 1000)


def _fresh(
    names: Sequence[str], weights: Sequence[int], points_per_weight: int
) -> tuple[array[int], array[int]]:
    tagged: list[int] = []
    for index, name in enumerate(names):
        count = _point_count(weights[index], points_per_weight)
        tagged.extend([point << _OWNER_BITS | index for point in server_points(name, count)])
    # Equal points (a 2**-64 event) order by owner index, which keeps the order total.
    tagged.sort()
    points = array("Q", [value >> _OWNER_BITS for value in tagged])
    owners = array("H", [value & _OWNER_MASK for value in tagged])
    return points, owners


def _merge(
    points: array[int], owners: array[int], tagged: list[int]
) -> tuple[array[int], array[int]]:
    merged_points: array[int] = array("Q")
    merged_owners: array[int] = array("H")
    cut = 0
    for value in tagged:
        point, owner = value >> _OWNER_BITS, value & _OWNER_MASK
        end = bisect_left(points, point, cut)
        while end < len(points) and points[end] == point and owners[end] < owner:
            end += 1
        merged_points.extend(points[cut:end])
        merged_owners.extend(owners[cut:end])
        merged_points.append(point)
        merged_owners.append(owner)
        cut = end
    merged_points.extend(points[cut:])
    merged_owners.extend(owners[cut:])
    return merged_points, merged_owners


def _derive(
    previous: RingLayout, names: Sequence[str], weights: Sequence[int], points_per_weight: int
) -> tuple[array[int], array[int]] | None:
    new_index = {name: index for index, name in enumerate(names)}
    translate: list[int] = []
    for old, name in enumerate(previous.names):
        index = new_index.get(name, -1)
        same_weight = index >= 0 and weights[index] == previous.weights[old]
        translate.append(index if same_weight else -1)
    kept = set(translate)
    added = [index for index in range(len(names)) if index not in kept]
    added_points = sum(_point_count(weights[index], points_per_weight) for index in added)
    if added_points * _DERIVE_RATIO > len(previous.points) + 1:
        return None
    points, owners = previous.points, previous.owners
    if -1 in kept:
        mask = [translate[owner] >= 0 for owner in owners]
        points = array("Q", compress(points, mask))
        owners = array("H", compress(owners, mask))
    if translate != list(range(len(translate))):
        owners = array("H", [translate[owner] for owner in owners])
    tagged = sorted(
        point << _OWNER_BITS | index
        for index in added
        for point in server_points(names[index], _point_count(weights[index], points_per_weight))
    )
    return _merge(points, owners, tagged) if tagged else (points, owners)


def _bucket_index(points: array[int]) -> tuple[int, array[int]]:
    bits = min(_BUCKET_BITS_MAX, max(1, (len(points) - 1).bit_length()))
    shift = 64 - bits
    counts = [0] * ((1 << bits) + 1)
    for point in points:
        counts[(point >> shift) + 1] += 1
    # starts[b] counts the points of the buckets before b: the first position of bucket b.
    return shift, array("I", accumulate(counts))


class RingLayout:
    """A weighted hash ring; see the module docstring."""

    __slots__ = (
        "_names",
        "_owners",
        "_points",
        "_points_per_weight",
        "_shift",
        "_starts",
        "_weights",
    )

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
            derived = _fresh(self._names, self._weights, self._points_per_weight)
        self._points, self._owners = derived
        self._shift, self._starts = _bucket_index(self._points)

    @property
    def names(self) -> tuple[str, ...]:
        """The server ids, by index."""
        return self._names

    @property
    def weights(self) -> tuple[int, ...]:
        """The server weights in thousandths, by index."""
        return self._weights

    @property
    def points(self) -> array[int]:
        """The ring points, ascending (never mutate)."""
        return self._points

    @property
    def owners(self) -> array[int]:
        """The owner index of each point (never mutate)."""
        return self._owners

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
        points = self._points
        owners = self._owners
        size = len(points)
        if len(sorted_hashes) * _MERGE_RATIO < size:
            return [self.first(key_hash) for key_hash in sorted_hashes]
        result: list[int] = []
        append = result.append
        position = 0
        for key_hash in sorted_hashes:
            while position < size and points[position] < key_hash:
                position += 1
            append(owners[position] if position < size else owners[0])
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
        if want == 0 or zone_count <= want or len(sorted_hashes) * _MERGE_RATIO < len(self._points):
            return [
                self.replicas(h, primary=p, want=want, zones=zones, zone_count=zone_count)
                for h, p in zip(sorted_hashes, primaries, strict=True)
            ]
        # A rebuild: merge the keys with the ring instead of locating each one, and reuse the
        # answer of the previous key when it starts at the same point from the same zone.
        points = self._points
        size = len(points)
        result: list[tuple[int, ...]] = []
        position = 0
        last: tuple[int, int] = (-1, -1)
        chosen: tuple[int, ...] = ()
        for key_hash, primary in zip(sorted_hashes, primaries, strict=True):
            while position < size and points[position] < key_hash:
                position += 1
            start = (position if position < size else 0, zones[primary])
            if start != last:
                chosen = self._zone_firsts(start[0], start[1], want, zones)
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
