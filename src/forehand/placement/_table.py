"""A persistent per-server table: a vector split into chunks that versions share.

The engine keeps three arrays per eligible server (primaries, skipped keys, replicas). A delta
that hands off a few parts writes a few of them, but copying a flat tuple of ten thousand
pointers per table per version costs more than the writes. A `Table` is a tuple of chunks of
`CHUNK_SIZE` entries; its writer copies the chunk list (a few hundred pointers) and only the
chunks it writes, so a version costs what it changes, and every older version stays as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Generic, TypeVar

__all__ = ["CHUNK_BITS", "Table", "TableWriter"]

CHUNK_BITS = 6
"""Entries per chunk: 64, so a writer copies at most 64 pointers per entry it writes, and the
chunk list of 10,000 servers is 157 pointers long."""
CHUNK_SIZE = 1 << CHUNK_BITS
_MASK = CHUNK_SIZE - 1

T = TypeVar("T")


class Table(Generic[T]):
    """An immutable sequence of per-server values, chunked; `writer()` starts the next one."""

    __slots__ = ("_chunks", "_length")

    def __init__(self, chunks: tuple[list[T], ...], length: int) -> None:
        self._chunks = chunks
        self._length = length

    @classmethod
    def of(cls, values: Iterable[T]) -> Table[T]:
        """A table holding `values` in order."""
        flat = list(values)
        starts = range(0, len(flat), CHUNK_SIZE)
        chunks = tuple(flat[start : start + CHUNK_SIZE] for start in starts)
        return cls(chunks, len(flat))

    def __getitem__(self, index: int) -> T:
        assert 0 <= index < self._length, "table index out of range"
        return self._chunks[index >> CHUNK_BITS][index & _MASK]

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[T]:
        return chain.from_iterable(self._chunks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Table):
            return NotImplemented
        return self._length == other._length and all(
            mine is theirs or mine == theirs
            for mine, theirs in zip(self._chunks, other._chunks, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]

    def chunk_pairs(self, other: Table[T]) -> Iterator[tuple[int, list[T], list[T]]]:
        """(first index, chunk, other's chunk) for each chunk the two tables do not share; both
        must have the same length."""
        assert self._length == other._length
        for number, (mine, theirs) in enumerate(zip(self._chunks, other._chunks, strict=True)):
            if mine is not theirs:
                yield number << CHUNK_BITS, mine, theirs

    def writer(self) -> TableWriter[T]:
        """A builder of the next table; this one stays as it is."""
        return TableWriter(self)


class TableWriter(Generic[T]):
    """Copy-on-write edits on top of a `Table`, chunk by chunk."""

    __slots__ = ("_chunks", "_length", "_owned")

    def __init__(self, base: Table[T]) -> None:
        self._chunks = list(base._chunks)
        self._length = base._length
        self._owned: set[int] = set()

    def __getitem__(self, index: int) -> T:
        assert 0 <= index < self._length, "table index out of range"
        return self._chunks[index >> CHUNK_BITS][index & _MASK]

    def __setitem__(self, index: int, value: T) -> None:
        assert 0 <= index < self._length, "table index out of range"
        number = index >> CHUNK_BITS
        chunk = self._chunks[number]
        if number not in self._owned:
            chunk = chunk[:]
            self._chunks[number] = chunk
            self._owned.add(number)
        chunk[index & _MASK] = value

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[T]:
        return chain.from_iterable(self._chunks)

    def freeze(self) -> Table[T]:
        """The finished table; the writer must not be used afterwards."""
        return Table(tuple(self._chunks), self._length)
