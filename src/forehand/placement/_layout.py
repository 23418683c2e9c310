"""The interface every consistent-hashing strategy implements, and the replica rule on top of it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol

from forehand.placement._config import PlacementConfig

__all__ = ["Layout", "LayoutFactory", "choose_replicas", "distinct"]


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

    def replicas(
        self, key_hash: int, *, primary: int, want: int, zones: Sequence[int], zone_count: int
    ) -> tuple[int, ...]:
        """`choose_replicas` over `walk(key_hash)`; layouts may compute it faster."""
        ...

    def replicas_sorted(
        self,
        sorted_hashes: Sequence[int],
        primaries: Sequence[int],
        *,
        want: int,
        zones: Sequence[int],
        zone_count: int,
    ) -> list[tuple[int, ...]]:
        """`replicas` of each hash (ascending) with its primary, for a rebuild."""
        ...


class LayoutFactory(Protocol):
    """Builds a layout from server ids, their weights in thousandths, and the configuration.

    `previous` is the layout of the version before, which a strategy may reuse when only a few
    servers changed; the result must be the same as without it.
    """

    def __call__(
        self,
        server_ids: Sequence[str],
        weights_milli: Sequence[int],
        config: PlacementConfig,
        *,
        previous: Layout | None = None,
    ) -> Layout: ...


def choose_replicas(
    walk: Iterable[int], *, primary: int, want: int, zones: Sequence[int], zone_count: int
) -> tuple[int, ...]:
    """The first `want` servers of the walk other than `primary`, spread over zones.

    A server whose zone already holds a copy is passed over while some zone holds none; when the
    walk ends short, passed-over servers fill the remaining places in walk order.
    """
    if want == 0:
        return ()
    chosen: list[int] = []
    if zone_count <= 1:
        for server in walk:
            if server != primary:
                chosen.append(server)
                if len(chosen) == want:
                    break
        return tuple(chosen)
    used = {zones[primary]}
    passed: list[int] = []
    for server in walk:
        if server == primary:
            continue
        zone = zones[server]
        if zone in used and len(used) < zone_count:
            passed.append(server)
            continue
        chosen.append(server)
        used.add(zone)
        if len(chosen) == want:
            return tuple(chosen)
    chosen.extend(passed[: want - len(chosen)])
    return tuple(chosen)


def distinct(owners: Iterator[int], server_count: int) -> Iterator[int]:
    seen: set[int] = set()
    for owner in owners:
        if owner not in seen:
            seen.add(owner)
            yield owner
            if len(seen) == server_count:
                return
