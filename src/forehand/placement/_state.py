"""The contents of one shard-map version, and how its assignment is computed from scratch.

A version holds what was decided (servers, part keys, explicit overrides) and one thing derived
from it, the bounded-load `Engine` for the parts that follow the hash. Everything is immutable and
shared with the versions before and after it where unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from forehand.placement._config import PlacementConfig
from forehand.placement._delta import Placement
from forehand.placement._engine import Engine, build_engine
from forehand.placement._errors import InvalidDeltaError, PartKeyCollisionError
from forehand.placement._ids import PartKey
from forehand.placement._index import HashIndex
from forehand.placement._lineage import Lineage, new_lineage
from forehand.placement._servers import DrainCause, ServerEntry, ServerState
from forehand.placement._strategies import build_layout

__all__ = [
    "OVERRIDE_BUCKET_BITS",
    "Eligible",
    "Pinned",
    "MapState",
    "build_state",
    "check_override",
    "check_server_entry",
    "count_pinned_active",
    "new_override_index",
    "pinned_placement",
    "pinned_servers",
    "hash_capacities",
    "rebuild_engine",
]


Pinned = tuple[str, ...]
"""An override as stored: (primary, *replicas), with the map's own server-id strings. A tuple of
shared strings costs 40 + 8 x servers bytes, against about 90 for a Placement and its tuple."""

OVERRIDE_BUCKET_BITS = 9
"""Overrides are far fewer than parts: 512 buckets keep small override tables small."""


def new_override_index() -> HashIndex[Pinned]:
    """An empty override table."""
    return HashIndex(bucket_bits=OVERRIDE_BUCKET_BITS)


def pinned_servers(servers: Mapping[str, ServerEntry], placement: Placement) -> Pinned:
    """The stored form of an override, reusing the server-id strings of the map's entries."""
    return tuple(servers[server_id].server_id for server_id in placement.servers)


def pinned_placement(pinned: Pinned) -> Placement:
    """The Placement an override stands for."""
    return Placement(primary=pinned[0], replicas=pinned[1:])


@dataclass(frozen=True, slots=True)
class Eligible:
    """The ACTIVE servers, the only ones that receive hash-placed parts, in id order."""

    names: tuple[str, ...]
    """Their ids; a server's position is its index in the engine."""
    index: Mapping[str, int]
    """Id -> position."""
    weights_milli: tuple[int, ...]
    """Their weights in thousandths, by position."""


@dataclass(frozen=True, slots=True)
class MapState:
    """One version of the shard map."""

    version: int
    """The map version."""
    config: PlacementConfig
    """How parts are placed."""
    servers: Mapping[str, ServerEntry]
    """Every server in the map, by id (never mutated)."""
    parts: HashIndex[PartKey]
    """Every part key, by its stable hash."""
    overrides: HashIndex[Pinned]
    """Explicit placements as (primary, *replicas), by part-key hash."""
    pinned: Mapping[str, int]
    """Per server id: how many overrides make it primary (never mutated)."""
    eligible: Eligible
    """The servers the hash places parts on."""
    engine: Engine
    """The bounded-load assignment of the parts without override."""
    pinned_active: int
    """How many overrides make an eligible server primary (`pinned`, summed over `eligible`)."""
    lineage: Lineage
    """This version's identity and what the deltas before it changed (`_lineage.py`)."""


def hash_capacities(
    config: PlacementConfig, weights_milli: Sequence[int], pinned: Sequence[int], hash_parts: int
) -> list[int]:
    """Per eligible server: the load bound minus the primaries overrides already give it.

    The bound is ceil((1 + epsilon) x active_parts x weight / total_weight), in integers, where
    active_parts counts every part whose primary is an eligible server. The capacities add up to
    at least the number of hash-placed parts, so the greedy assignment never runs out of room.
    """
    bounds = load_bounds(config, weights_milli, hash_parts + sum(pinned))
    return [max(0, bound - count) for bound, count in zip(bounds, pinned, strict=True)]


def load_bounds(
    config: PlacementConfig,
    weights_milli: Sequence[int],
    active_parts: int,
    total_weight: int | None = None,
) -> list[int]:
    """Per weight: the most primaries bounded loads lets a server of that weight hold.

    `total_weight` is the eligible servers' total, `sum(weights_milli)` when not given.
    """
    factor = config.load_factor
    if total_weight is None:
        total_weight = sum(weights_milli)
    if not total_weight:
        return []
    denominator = factor.denominator * total_weight
    numerator = factor.numerator * active_parts
    return [-(-(numerator * weight) // denominator) for weight in weights_milli]


def eligible_servers(servers: Mapping[str, ServerEntry]) -> list[ServerEntry]:
    """The ACTIVE servers, sorted by id (the engine's index order)."""
    return sorted(
        (entry for entry in servers.values() if entry.state is ServerState.ACTIVE),
        key=lambda entry: entry.server_id,
    )


def rebuild_engine(
    config: PlacementConfig,
    servers: Mapping[str, ServerEntry],
    parts: HashIndex[PartKey],
    overrides: HashIndex[Pinned],
    pinned: Mapping[str, int],
    *,
    previous: Engine | None = None,
) -> tuple[Eligible, Engine]:
    """The eligible servers and the assignment, computed from scratch.

    `previous` lends its layout to strategies that can derive the new one from it.
    """
    entries = eligible_servers(servers)
    names = tuple(entry.server_id for entry in entries)
    weights = [entry.weight_milli for entry in entries]
    zone_names = sorted({entry.zone for entry in entries})
    zones = [zone_names.index(entry.zone) for entry in entries]
    hash_keys = np.fromiter(parts.keys(), dtype=np.uint64, count=len(parts))
    if len(overrides):
        pinned_keys = np.fromiter(overrides.keys(), dtype=np.uint64, count=len(overrides))
        hash_keys = hash_keys[np.isin(hash_keys, pinned_keys, invert=True)]
    hash_keys.sort()
    if len(hash_keys) and not names:
        raise InvalidDeltaError(f"no ACTIVE server is left for {len(hash_keys)} hash-placed parts")
    pinned_counts = [pinned.get(name, 0) for name in names]
    engine = build_engine(
        layout=build_layout(
            names, weights, config, previous=None if previous is None else previous.layout
        ),
        zones=zones,
        replica_count=config.replica_count,
        capacities=hash_capacities(config, weights, pinned_counts, len(hash_keys)),
        sorted_hashes=hash_keys,
    )
    index = {name: position for position, name in enumerate(names)}
    return Eligible(names=names, index=index, weights_milli=tuple(weights)), engine


def check_server_entry(config: PlacementConfig, entry: ServerEntry) -> None:
    """Raise InvalidDeltaError when an entry breaks the configured bounds."""
    if not entry.server_id or len(entry.server_id) > config.server_id_length_max:
        raise InvalidDeltaError(f"server id {entry.server_id!r} is empty or too long")
    if len(entry.address) > config.address_length_max:
        raise InvalidDeltaError(f"address of {entry.server_id!r} is too long")
    if not entry.zone or len(entry.zone) > config.zone_length_max:
        raise InvalidDeltaError(f"zone of {entry.server_id!r} is empty or too long")
    if not 0.001 <= entry.weight <= config.server_weight_max:
        raise InvalidDeltaError(
            f"weight of {entry.server_id!r} must be in [0.001, {config.server_weight_max}]"
        )
    if entry.drain_cause is not DrainCause.OPERATOR and entry.state is not ServerState.DRAINING:
        raise InvalidDeltaError(
            f"{entry.server_id!r} is {entry.state.value}: only a DRAINING server has a drain cause"
        )


def check_override(
    config: PlacementConfig,
    servers: Mapping[str, ServerEntry],
    placement: Placement,
    *,
    allow_dead: bool = False,
) -> None:
    """Raise InvalidDeltaError unless every server of `placement` is in the map (and alive).

    A new override may not name a DEAD server; an existing one may, since a server can die after
    it was named (the manager then overrides again), so a whole map is checked with `allow_dead`.
    """
    if len(placement.replicas) > config.replica_count:
        raise InvalidDeltaError(
            f"an override names at most {config.replica_count} replicas: {placement}"
        )
    for server_id in placement.servers:
        entry = servers.get(server_id)
        if entry is None:
            raise InvalidDeltaError(f"override names unknown server {server_id!r}")
        if entry.state is ServerState.DEAD and not allow_dead:
            raise InvalidDeltaError(f"override names dead server {server_id!r}")


def build_state(
    *,
    config: PlacementConfig,
    version: int,
    servers: Iterable[ServerEntry],
    parts: Iterable[PartKey],
    overrides: Iterable[tuple[PartKey, Placement]] = (),
) -> MapState:
    """A map version built from scratch, with every input checked."""
    if version < 0:
        raise InvalidDeltaError("a map version is not negative")
    server_by_id: dict[str, ServerEntry] = {}
    for entry in servers:
        check_server_entry(config, entry)
        if entry.server_id in server_by_id:
            raise InvalidDeltaError(f"server {entry.server_id!r} is listed twice")
        server_by_id[entry.server_id] = entry
    if len(server_by_id) > config.servers_max:
        raise InvalidDeltaError(f"more than servers_max={config.servers_max} servers")
    index_writer = HashIndex[PartKey]().writer()
    put_new = index_writer.put_new
    for key in parts:
        existing = put_new(key.key_hash, key)
        if existing is not None:
            if existing == key:
                raise InvalidDeltaError(f"part {key} is listed twice")
            raise PartKeyCollisionError(f"{key} and {existing} have the same stable hash")
    if len(index_writer) > config.parts_max:
        raise InvalidDeltaError(f"more than parts_max={config.parts_max} parts")
    part_index = index_writer.freeze()
    override_writer = new_override_index().writer()
    pinned: dict[str, int] = {}
    for key, placement in overrides:
        if part_index.get(key.key_hash) != key:
            raise InvalidDeltaError(f"override for {key}, which is not in the map")
        if override_writer.get(key.key_hash) is not None:
            raise InvalidDeltaError(f"two overrides for {key}")
        check_override(config, server_by_id, placement, allow_dead=True)
        override_writer.put(key.key_hash, pinned_servers(server_by_id, placement))
        pinned[placement.primary] = pinned.get(placement.primary, 0) + 1
    override_index = override_writer.freeze()
    eligible, engine = rebuild_engine(config, server_by_id, part_index, override_index, pinned)
    return MapState(
        version=version,
        config=config,
        servers=server_by_id,
        parts=part_index,
        overrides=override_index,
        pinned=pinned,
        eligible=eligible,
        engine=engine,
        pinned_active=count_pinned_active(pinned, eligible),
        lineage=new_lineage(),
    )


def count_pinned_active(pinned: Mapping[str, int], eligible: Eligible) -> int:
    """How many overrides make an eligible server primary."""
    index = eligible.index
    return sum(count for name, count in pinned.items() if name in index)
