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
from collections.abc import Iterator, Sequence
from itertools import chain

from forehand.errors import ConfigError
from forehand.placement._config import PlacementConfig
from forehand.placement._hashing import HASH_LIMIT, mix64, server_hash
from forehand.placement._layout import Layout, LayoutFactory, choose_replicas, distinct
from forehand.placement._ring import RingLayout

__all__ = [
    "Layout",
    "LayoutFactory",
    "MaglevLayout",
    "RendezvousLayout",
    "build_layout",
    "register_strategy",
    "strategy_names",
]

_EMPTY_SLOT = 0xFFFF


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
    server_ids: Sequence[str],
    weights_milli: Sequence[int],
    config: PlacementConfig,
    *,
    previous: Layout | None = None,
) -> Layout:
    """The layout of the configured strategy over these servers."""
    assert len(server_ids) == len(weights_milli)
    try:
        factory = _REGISTRY[config.strategy]
    except KeyError:
        raise ConfigError(
            f"unknown placement strategy {config.strategy!r}; known: {strategy_names()}"
        ) from None
    return factory(server_ids, weights_milli, config, previous=previous)


class MaglevLayout:
    """Maglev hashing (Eisenbud et al., NSDI 2016): a prime-sized table filled by permutations.

    Lookups are one modulo and one index; the table is balanced to one entry per server. The walk
    continues along the table from the key's slot.
    """

    __slots__ = ("_server_count", "_table")

    def __init__(
        self,
        server_ids: Sequence[str],
        weights_milli: Sequence[int],
        config: PlacementConfig,
        *,
        previous: Layout | None = None,
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
        return distinct((table[slot] for slot in slots), self._server_count)

    def firsts(self, sorted_hashes: Sequence[int]) -> list[int]:
        table = self._table
        size = len(table)
        return [table[key_hash % size] for key_hash in sorted_hashes]

    def replicas(
        self, key_hash: int, *, primary: int, want: int, zones: Sequence[int], zone_count: int
    ) -> tuple[int, ...]:
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
        return [
            self.replicas(key_hash, primary=primary, want=want, zones=zones, zone_count=zone_count)
            for key_hash, primary in zip(sorted_hashes, primaries, strict=True)
        ]


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
        self,
        server_ids: Sequence[str],
        weights_milli: Sequence[int],
        config: PlacementConfig,
        *,
        previous: Layout | None = None,
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

    def replicas(
        self, key_hash: int, *, primary: int, want: int, zones: Sequence[int], zone_count: int
    ) -> tuple[int, ...]:
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
        return [
            self.replicas(key_hash, primary=primary, want=want, zones=zones, zone_count=zone_count)
            for key_hash, primary in zip(sorted_hashes, primaries, strict=True)
        ]


register_strategy("ring", RingLayout)
register_strategy("maglev", MaglevLayout)
register_strategy("rendezvous", RendezvousLayout)
