"""Consistent-hashing strategies behind one small registry (STYLE.md rule 15).

A strategy turns the active servers (ids and integer weights) into a `Layout`: for a 64-bit key
hash it names the first server, and it walks every server exactly once in the key's order of
preference. Bounded loads, replicas and zones are built on top of the walk by the engine, the same
for every strategy. docs/ARCHITECTURE.md explains, with the benchmark's figures, why `ring` is the
default.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import Protocol

from forehand.errors import ConfigError
from forehand.placement._config import PlacementConfig
from forehand.placement._hashing import HASH_LIMIT, mix64, server_hash, server_points

__all__ = [
    "Layout",
    "LayoutFactory",
    "MaglevLayout",
    "RendezvousLayout",
    "RingLayout",
    "build_layout",
    "register_strategy",
    "strategy_names",
]

_OWNER_BITS = 16
_OWNER_MASK = (1 << _OWNER_BITS) - 1
_EMPTY_SLOT = 0xFFFF
_MERGE_RATIO = 8


class Layout(Protocol):
    """Where keys go among a fixed set of servers, indexed 0..server_count-1."""

    @property
    def server_count(self) -> int:
        """How many servers the layout spreads keys over."""
        ...

    def first(self, key_hash: int) -> int:
        """The most preferred server for `key_hash`."""
        ...

    def walk(self, key_hash: int) -> Iterator[int]:
        """Every server exactly once, most preferred first."""
        ...

    def firsts(self, sorted_hashes: Sequence[int]) -> list[int]:
        """`first` of each hash; the hashes come in ascending order, so a merge may be used."""
        ...


LayoutFactory = Callable[[Sequence[str], Sequence[int], PlacementConfig], Layout]
"""Builds a layout from server ids, their weights in thousandths, and the configuration."""

_REGISTRY: dict[str, LayoutFactory] = {}


def register_strategy(name: str, factory: LayoutFactory) -> None:
    """Make a strategy available under `name` (the value of `PlacementConfig.strategy`)."""
    if name in _REGISTRY:
        raise ConfigError(f"strategy {name!r} is already registered")
    _REGISTRY[name] = factory


def strategy_names() -> tuple[str, ...]:
    """The registered strategy names, sorted."""
    return tuple(sorted(_REGISTRY))


def build_layout(
    server_ids: Sequence[str], weights_milli: Sequence[int], config: PlacementConfig
) -> Layout:
    """The layout of the configured strategy over these servers."""
    assert len(server_ids) == len(weights_milli)
    try:
        factory = _REGISTRY[config.strategy]
    except KeyError:
        raise ConfigError(
            f"unknown placement strategy {config.strategy!r}; known: {strategy_names()}"
        ) from None
    return factory(server_ids, weights_milli, config)


def _distinct(owners: Iterator[int], server_count: int) -> Iterator[int]:
    seen: set[int] = set()
    for owner in owners:
        if owner not in seen:
            seen.add(owner)
            yield owner
            if len(seen) == server_count:
                return


class RingLayout:
    """A hash ring with weighted virtual nodes; a key belongs to the first point at or after it.

    Points live in a flat `array('Q')` with their owners in an `array('H')` beside it: 10 bytes a
    point instead of about 80 in a list of ints, and bisection over it stays in cache better.
    """

    __slots__ = ("_owners", "_points", "_server_count")

    def __init__(
        self, server_ids: Sequence[str], weights_milli: Sequence[int], config: PlacementConfig
    ) -> None:
        tagged: list[int] = []
        for index, server_id in enumerate(server_ids):
            count = max(1, config.ring_points_per_weight * weights_milli[index] // 1000)
            tagged.extend(
                [point << _OWNER_BITS | index for point in server_points(server_id, count)]
            )
        # Equal points (a 2**-64 event) order by owner index, which keeps the sort total.
        tagged.sort()
        self._points = array("Q", [value >> _OWNER_BITS for value in tagged])
        self._owners = array("H", [value & _OWNER_MASK for value in tagged])
        self._server_count = len(server_ids)

    @property
    def server_count(self) -> int:
        return self._server_count

    @property
    def point_count(self) -> int:
        """How many virtual nodes the ring has."""
        return len(self._points)

    def first(self, key_hash: int) -> int:
        position = bisect_left(self._points, key_hash)
        return self._owners[position if position < len(self._owners) else 0]

    def walk(self, key_hash: int) -> Iterator[int]:
        owners = self._owners
        start = bisect_left(self._points, key_hash)
        if start == len(owners):
            start = 0
        positions = chain(range(start, len(owners)), range(start))
        return _distinct((owners[position] for position in positions), self._server_count)

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


class MaglevLayout:
    """Maglev hashing (Eisenbud et al., NSDI 2016): a prime-sized table filled by permutations.

    Lookups are one modulo and one index; the table is balanced to one entry per server. The walk
    continues along the table from the key's slot.
    """

    __slots__ = ("_server_count", "_table")

    def __init__(
        self, server_ids: Sequence[str], weights_milli: Sequence[int], config: PlacementConfig
    ) -> None:
        size = config.maglev_table_size
        if len(server_ids) > size:
            raise ConfigError("maglev_table_size must exceed the number of servers")
        self._server_count = len(server_ids)
        self._table = _maglev_table(server_ids, weights_milli, size)

    @property
    def server_count(self) -> int:
        return self._server_count

    def first(self, key_hash: int) -> int:
        return self._table[key_hash % len(self._table)]

    def walk(self, key_hash: int) -> Iterator[int]:
        table = self._table
        start = key_hash % len(table)
        slots = chain(range(start, len(table)), range(start))
        return _distinct((table[slot] for slot in slots), self._server_count)

    def firsts(self, sorted_hashes: Sequence[int]) -> list[int]:
        table = self._table
        size = len(table)
        return [table[key_hash % size] for key_hash in sorted_hashes]


def _maglev_table(server_ids: Sequence[str], weights_milli: Sequence[int], size: int) -> array[int]:
    table = array("H", [_EMPTY_SLOT]) * size
    if not server_ids:
        return table
    offsets = [server_hash(server_id, b"maglev-offset") % size for server_id in server_ids]
    skips = [server_hash(server_id, b"maglev-skip") % (size - 1) + 1 for server_id in server_ids]
    tried = [0] * len(server_ids)
    credits = [0] * len(server_ids)
    heaviest = max(weights_milli)
    filled = 0
    while True:
        for index, weight in enumerate(weights_milli):
            # Weighted turns: a server takes an entry each time its credit reaches the heaviest
            # weight, so entries split in proportion to weight.
            credits[index] += weight
            while credits[index] >= heaviest:
                credits[index] -= heaviest
                offset, skip, attempt = offsets[index], skips[index], tried[index]
                slot = (offset + attempt * skip) % size
                while table[slot] != _EMPTY_SLOT:
                    attempt += 1
                    slot = (offset + attempt * skip) % size
                table[slot] = index
                tried[index] = attempt + 1
                filled += 1
                if filled == size:
                    return table


class RendezvousLayout:
    """Weighted rendezvous (highest random weight) hashing: score every server, take the best.

    Minimal disruption at every rank, but O(servers) per lookup. Weighted scores use
    `-weight / ln(u)` (Schindelhauer and Schomaker), which needs a float logarithm: identical on
    IEEE-754 platforms with the same libm, which is why the integer-only ring is the default.
    """

    __slots__ = ("_log_weights", "_seeds")

    def __init__(
        self, server_ids: Sequence[str], weights_milli: Sequence[int], config: PlacementConfig
    ) -> None:
        self._seeds = [server_hash(server_id, b"rendezvous") for server_id in server_ids]
        self._log_weights = [float(weight) for weight in weights_milli]

    @property
    def server_count(self) -> int:
        return len(self._seeds)

    def _scores(self, key_hash: int) -> list[tuple[float, int]]:
        scores = []
        for index, seed in enumerate(self._seeds):
            unit = (mix64(key_hash ^ seed) + 0.5) / HASH_LIMIT
            scores.append((-self._log_weights[index] / math.log(unit), index))
        return scores

    def first(self, key_hash: int) -> int:
        return max(self._scores(key_hash))[1]

    def walk(self, key_hash: int) -> Iterator[int]:
        return (index for _, index in sorted(self._scores(key_hash), reverse=True))

    def firsts(self, sorted_hashes: Sequence[int]) -> list[int]:
        return [self.first(key_hash) for key_hash in sorted_hashes]


register_strategy("ring", RingLayout)
register_strategy("maglev", MaglevLayout)
register_strategy("rendezvous", RendezvousLayout)
