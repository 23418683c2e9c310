"""A change of the ACTIVE server set, derived from the previous assignment instead of rebuilt.

When one server leaves the ACTIVE set (death, drain), enters it (join, undrain) or changes its
weight, only some keys must move: the ones it held, the ones it now takes, and the ones bounded
loads displaces in turn. The engine's primitives do exactly that (`EngineWriter.remove_server`,
`add_server`, `set_capacities`), and the result is the same assignment a rebuild computes, array
for array, so every process that applies the delta derives the same map whichever path it took.

The derivation needs a ring layout (a server's points are its own, so the others keep their
order along every walk) and the same replica rule before and after (the same zones, the same
replica count). Otherwise it returns None and the caller rebuilds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from forehand.placement._config import PlacementConfig
from forehand.placement._engine import Engine
from forehand.placement._ring import RingLayout
from forehand.placement._servers import ServerEntry
from forehand.placement._state import Eligible, eligible_servers, hash_capacities
from forehand.placement._strategies import Layout, build_layout

__all__ = ["reshape_engine"]


def reshape_engine(
    config: PlacementConfig,
    engine: Engine,
    *,
    eligible: Eligible,
    servers: Mapping[str, ServerEntry],
    pinned: Mapping[str, int],
    hash_parts: int,
) -> tuple[Eligible, Engine] | None:
    """The eligible servers and assignment after one server joined, left or was re-weighted.

    `engine` must be current for `eligible` (every part change flushed) and `servers` holds
    the new entries. None when the change cannot be derived (see the module docstring).
    """
    entries = eligible_servers(servers)
    names = tuple(entry.server_id for entry in entries)
    weights = tuple(entry.weight_milli for entry in entries)
    old_weights = dict(zip(eligible.names, eligible.weights_milli, strict=True))
    new_weights = dict(zip(names, weights, strict=True))
    removed = [n for n, w in old_weights.items() if new_weights.get(n) != w]
    added = [n for n, w in new_weights.items() if old_weights.get(n) != w]
    changed = set(removed) | set(added)
    if len(changed) != 1 or not isinstance(engine.layout, RingLayout):
        return None
    (server_id,) = changed
    zone_names = sorted({entry.zone for entry in entries if entry.server_id != server_id})
    if servers[server_id].zone not in zone_names or not _same_rule(config, engine, len(names)):
        return None
    zone_of = {name: zone_names.index(servers[name].zone) for name in (*eligible.names, *names)}
    if engine.zones != tuple(zone_of[name] for name in eligible.names):
        return None
    writer = engine.writer()
    layout: Layout = engine.layout
    if removed:
        position = eligible.index[server_id]
        rest = [name for name in eligible.names if name != server_id]
        if not rest or not _same_rule(config, engine, len(rest)):
            return None
        rest_weights = [old_weights[name] for name in rest]
        layout = build_layout(rest, rest_weights, config, previous=layout)
        room = _capacities(config, rest, rest_weights, pinned, hash_parts)
        room.insert(position, 0)
        writer.remove_server(
            position, layout=layout, zones=[zone_of[name] for name in rest], room=room
        )
    if added:
        grown = build_layout(names, weights, config, previous=layout)
        assert isinstance(grown, RingLayout)
        zones = [zone_of[name] for name in names]
        if not writer.add_server(names.index(server_id), layout=grown, zones=zones):
            return None
    writer.set_capacities(_capacities(config, names, weights, pinned, hash_parts))
    index = {name: position for position, name in enumerate(names)}
    return Eligible(names=names, index=index, weights_milli=weights), writer.freeze()


def _same_rule(config: PlacementConfig, engine: Engine, server_count: int) -> bool:
    # The replica count stays that of `engine` (it is lower in clusters of few servers).
    want = engine.replica_target
    return server_count >= 2 and max(0, min(config.replica_count, server_count - 1)) == want


def _capacities(
    config: PlacementConfig,
    names: Sequence[str],
    weights: Sequence[int],
    pinned: Mapping[str, int],
    hash_parts: int,
) -> list[int]:
    return hash_capacities(config, weights, [pinned.get(name, 0) for name in names], hash_parts)
