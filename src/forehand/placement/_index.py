"""A persistent map from 64-bit key hashes to values, shared between shard-map versions.

The map is split into a fixed number of buckets by the low bits of the hash. A new version copies
the bucket list (a few thousand pointers) and only the buckets it changes, so applying a delta to
a map of a million parts costs microseconds, not a copy of the million, and every older version
stays valid and unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Generic, TypeVar

__all__ = ["BUCKET_BITS", "HashIndex", "HashIndexWriter"]

BUCKET_BITS = 12
"""Default: 4096 buckets per index, the bucket being the hash's low bits."""

V = TypeVar("V")


class HashIndex(Generic[V]):
    """An immutable hash -> value map; `writer()` starts the next version."""

    __slots__ = ("_buckets", "_count", "_mask")

    def __init__(
        self,
        buckets: list[dict[int, V] | None] | None = None,
        count: int = 0,
        *,
        bucket_bits: int = BUCKET_BITS,
    ) -> None:
        self._buckets: list[dict[int, V] | None] = (
            buckets if buckets is not None else [None] * (1 << bucket_bits)
        )
        self._count = count
        self._mask = len(self._buckets) - 1
        assert len(self._buckets) & self._mask == 0, "bucket count is a power of two"

    def __len__(self) -> int:
        return self._count

    def get(self, key_hash: int) -> V | None:
        """The value stored under `key_hash`, or None."""
        bucket = self._buckets[key_hash & self._mask]
        return None if bucket is None else bucket.get(key_hash)

    def __contains__(self, key_hash: int) -> bool:
        bucket = self._buckets[key_hash & self._mask]
        return bucket is not None and key_hash in bucket

    def items(self) -> Iterator[tuple[int, V]]:
        """Every (hash, value) pair, in no particular order."""
        for bucket in self._buckets:
            if bucket:
                yield from bucket.items()

    def keys(self) -> Iterator[int]:
        """Every hash, in no particular order."""
        for bucket in self._buckets:
            if bucket:
                yield from bucket

    def values(self) -> Iterator[V]:
        """Every value, in no particular order."""
        return chain.from_iterable(bucket.values() for bucket in self._buckets if bucket)

    def changed_hashes(
        self, other: HashIndex[V], buckets: Iterable[int] | None = None
    ) -> Iterator[int]:
        """Hashes whose presence or value may differ from `other`: those of unshared buckets.

        `buckets`, when given, holds every bucket number whose dicts the two may not share (a
        lineage's record), and only those are compared.
        """
        pairs: Iterable[tuple[dict[int, V] | None, dict[int, V] | None]]
        if buckets is None:
            pairs = zip(self._buckets, other._buckets, strict=True)
        else:
            assert len(self._buckets) == len(other._buckets)
            pairs = ((self._buckets[n], other._buckets[n]) for n in sorted(buckets))
        for mine, theirs in pairs:
            if mine is theirs:
                continue
            keys = set(mine or ()) | set(theirs or ())
            for key_hash in keys:
                if (mine or {}).get(key_hash) is not (theirs or {}).get(key_hash):
                    yield key_hash

    def writer(self) -> HashIndexWriter[V]:
        """A builder of the next version; this index stays as it is."""
        return HashIndexWriter(self)


class HashIndexWriter(Generic[V]):
    """Copy-on-write edits on top of a `HashIndex`."""

    __slots__ = ("_buckets", "_count", "_mask", "_owned")

    def __init__(self, base: HashIndex[V]) -> None:
        self._buckets = list(base._buckets)
        self._count = base._count
        self._mask = base._mask
        self._owned: set[int] = set()

    def __len__(self) -> int:
        return self._count

    def get(self, key_hash: int) -> V | None:
        """The value stored under `key_hash` in the version being built, or None."""
        bucket = self._buckets[key_hash & self._mask]
        return None if bucket is None else bucket.get(key_hash)

    def _bucket_for_write(self, key_hash: int) -> dict[int, V]:
        number = key_hash & self._mask
        bucket = self._buckets[number]
        if number not in self._owned:
            bucket = {} if bucket is None else dict(bucket)
            self._buckets[number] = bucket
            self._owned.add(number)
        assert bucket is not None
        return bucket

    def put(self, key_hash: int, value: V) -> None:
        """Store `value` under `key_hash`, replacing what was there."""
        bucket = self._bucket_for_write(key_hash)
        if key_hash not in bucket:
            self._count += 1
        bucket[key_hash] = value

    def put_new(self, key_hash: int, value: V) -> V | None:
        """Store `value` unless `key_hash` is present; return what was there (None if stored)."""
        number = key_hash & self._mask
        bucket = self._buckets[number]
        if bucket is not None:
            existing = bucket.get(key_hash)
            if existing is not None:
                return existing
        if number not in self._owned:
            bucket = {} if bucket is None else dict(bucket)
            self._buckets[number] = bucket
            self._owned.add(number)
        assert bucket is not None
        bucket[key_hash] = value
        self._count += 1
        return None

    def pop(self, key_hash: int) -> V | None:
        """Remove and return the value under `key_hash`, or None when there is none."""
        if self.get(key_hash) is None:
            return None
        self._count -= 1
        return self._bucket_for_write(key_hash).pop(key_hash)

    def items(self) -> Iterator[tuple[int, V]]:
        """Every (hash, value) pair of the version being built, in no particular order."""
        for bucket in self._buckets:
            if bucket:
                yield from bucket.items()

    def written_buckets(self) -> frozenset[int]:
        """The buckets this writer copied (the only ones whose contents may differ from its
        base's)."""
        return frozenset(self._owned)

    def view(self) -> HashIndex[V]:
        """A read-only view of the version being built, valid only until the next write."""
        return HashIndex(self._buckets, self._count)

    def freeze(self) -> HashIndex[V]:
        """The finished version; the writer must not be used afterwards."""
        for number in self._owned:
            if not self._buckets[number]:
                self._buckets[number] = None
        return HashIndex(self._buckets, self._count)
