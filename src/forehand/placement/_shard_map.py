"""The versioned shard map: part key -> primary and replicas, immutable, one integer version.

Placement comes from consistent hashing with bounded loads; handoffs and failovers record explicit
overrides, so the map holds one small entry per moved part and nothing per part that follows the
hash. `apply(delta)` returns the next version and leaves this one untouched, sharing everything
that did not change; what a version derives from its contents (the sorted server entries, the
primary counts) it derives from its parent's in what the delta changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from forehand.placement._apply import apply_delta
from forehand.placement._codec import (
    decode_delta,
    decode_map,
    encode_built,
    encode_delta,
    encode_map,
)
from forehand.placement._config import PlacementConfig
from forehand.placement._delta import (
    Delta,
    Operation,
    PartsAdded,
    PartsRemoved,
    Placement,
    PlacementOverridden,
    ServerDrained,
    ServerJoined,
    ServerLeft,
    ServerMarkedDead,
    ServerReweighted,
    ServerUndrained,
)
from forehand.placement._diff import (
    BULK_PLACEMENTS_MIN,
    MapDiff,
    diff_states,
    placement_of_hash,
    placements_of_hashes,
)
from forehand.placement._errors import UnknownPartKeyError
from forehand.placement._ids import PartKey
from forehand.placement._lineage import MEMBERS, Lineage
from forehand.placement._servers import DrainCause, ServerEntry, ServerState
from forehand.placement._state import MapState, build_state, load_bounds, pinned_placement

__all__ = ["ServerParts", "ShardMap"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerParts:
    """The parts one server must hold in one map version."""

    server_id: str
    """The server."""
    primary: tuple[PartKey, ...]
    """Parts it serves as primary, sorted."""
    replica: tuple[PartKey, ...]
    """Parts it holds a replica of, sorted."""


class ShardMap:
    """One immutable version of the shard map."""

    __slots__ = ("_encoded", "_entries", "_loads", "_loads_base", "_state")

    def __init__(self, state: MapState) -> None:
        """Wrap a built state; use `empty`, `build` or `decode` instead."""
        self._state = state
        self._encoded: bytes | None = None
        self._entries: tuple[ServerEntry, ...] | None = None
        self._loads: dict[str, int] | None = None
        # The primary counts of an ancestor (by lineage), from which this version's derive.
        self._loads_base: tuple[Lineage, dict[str, int]] | None = None

    # Construction.

    @classmethod
    def empty(cls, *, config: PlacementConfig | None = None) -> ShardMap:
        """Version 0: no servers, no parts."""
        return cls.build(config=config or PlacementConfig(), version=0, servers=(), parts=())

    @classmethod
    def build(
        cls,
        *,
        config: PlacementConfig,
        version: int,
        servers: Iterable[ServerEntry],
        parts: Iterable[PartKey],
        overrides: Iterable[tuple[PartKey, Placement]] = (),
    ) -> ShardMap:
        """A version built from its contents in one go (start-up, tests, decoding)."""
        return cls(
            build_state(
                config=config, version=version, servers=servers, parts=parts, overrides=overrides
            )
        )

    @classmethod
    def decode(cls, data: bytes) -> ShardMap:
        """The map encoded by `encode`; malformed input raises RemoteProtocolError."""
        return cls(decode_map(data))

    def encode(self) -> bytes:
        """This whole version, compactly (msgpack), for MAP_UPDATE frames and the store.

        A version never changes, so its encoding is kept: the manager sends the whole map to a
        server that joins with no map or falls behind past its delta history, and at a million
        sessions an encoding takes seconds.
        """
        if self._encoded is None:
            self._encoded = encode_map(self._state)
        return self._encoded

    @staticmethod
    def encode_built(
        *,
        config: PlacementConfig,
        version: int,
        servers: Iterable[ServerEntry],
        parts: Iterable[PartKey],
    ) -> bytes:
        """What `build(...).encode()` gives for a map without overrides, without building it
        (a store's first snapshot of millions of parts: the assignment is not encoded)."""
        return encode_built(config=config, version=version, servers=servers, parts=parts)

    @staticmethod
    def encode_delta(delta: Delta) -> bytes:
        """A delta, compactly (msgpack)."""
        return encode_delta(delta)

    @staticmethod
    def decode_delta(data: bytes) -> Delta:
        """The delta encoded by `encode_delta`; malformed input raises RemoteProtocolError."""
        return decode_delta(data)

    # Contents.

    @property
    def version(self) -> int:
        """The map version; it only grows."""
        return self._state.version

    @property
    def config(self) -> PlacementConfig:
        """How this map places parts."""
        return self._state.config

    @property
    def servers(self) -> tuple[ServerEntry, ...]:
        """Every server of the map, sorted by id (sorted once, and shared by the versions that
        follow until a delta changes a server)."""
        entries = self._entries
        if entries is None:
            entries = tuple(entry for _, entry in sorted(self._state.servers.items()))
            self._entries = entries
        return entries

    def server(self, server_id: str) -> ServerEntry:
        """The entry of one server; KeyError when it is not in the map."""
        return self._state.servers[server_id]

    def __len__(self) -> int:
        return len(self._state.parts)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, PartKey):
            return False
        stored = self._state.parts.get(key.key_hash)
        return stored is not None and (stored is key or stored == key)

    def part_keys(self) -> Iterator[PartKey]:
        """Every part key, in no particular order."""
        return self._state.parts.values()

    @property
    def override_count(self) -> int:
        """How many parts have an explicit placement."""
        return len(self._state.overrides)

    def overrides(self) -> Iterator[tuple[PartKey, Placement]]:
        """Every explicit placement, in no particular order."""
        parts = self._state.parts
        for key_hash, pinned in self._state.overrides.items():
            key = parts.get(key_hash)
            assert key is not None
            yield key, pinned_placement(pinned)

    # Placement.

    def _checked_hash(self, key: PartKey) -> int:
        key_hash = key.key_hash
        stored = self._state.parts.get(key_hash)
        if stored is None or (stored is not key and stored != key):
            raise UnknownPartKeyError(f"{key} is not in shard map version {self.version}")
        return key_hash

    def lookup(self, key: PartKey) -> Placement:
        """Where `key` lives; UnknownPartKeyError when it is not in the map."""
        return placement_of_hash(self._state, self._checked_hash(key))

    def lookup_many(self, keys: Sequence[PartKey]) -> list[Placement]:
        """`lookup` of each of `keys`, in their order; UnknownPartKeyError when one is not in
        the map. From `BULK_PLACEMENTS_MIN` keys on they are placed in bulk (one pass over the
        ring for all of them): a failover looks up every part of a dead server."""
        state = self._state
        hashes = [self._checked_hash(key) for key in keys]
        if len(hashes) < BULK_PLACEMENTS_MIN:
            return [placement_of_hash(state, key_hash) for key_hash in hashes]
        order = sorted(range(len(hashes)), key=hashes.__getitem__)
        placed = placements_of_hashes(state, [hashes[at] for at in order])
        result: list[Placement] = [placed[0]] * len(hashes)
        for at, placement in zip(order, placed, strict=True):
            result[at] = placement
        return result

    def primary_of(self, key: PartKey) -> str:
        """The primary server of `key` (the fast path of `lookup`, with its calls inlined)."""
        state = self._state
        key_hash = key.key_hash
        stored = state.parts.get(key_hash)
        if stored is not key and (stored is None or stored != key):
            raise UnknownPartKeyError(f"{key} is not in shard map version {self.version}")
        overrides = state.overrides
        if len(overrides):
            override = overrides.get(key_hash)
            if override is not None:
                return override[0]
        engine = state.engine
        server = engine.layout.first(key_hash)
        if key_hash > engine.thresholds[server]:
            server = engine.primary_of(key_hash)
        return state.eligible.names[server]

    def is_overridden(self, key: PartKey) -> bool:
        """Whether `key` has an explicit placement rather than following the hash."""
        return self._checked_hash(key) in self._state.overrides

    def parts_for(self, server_id: str) -> ServerParts:
        """The parts `server_id` must hold, as primary and as replica."""
        state = self._state
        if server_id not in state.servers:
            raise KeyError(server_id)
        primary: list[PartKey] = []
        replica: list[PartKey] = []
        position = state.eligible.index.get(server_id)
        if position is not None:
            primary.extend(_keys(state, state.engine.members[position]))
            replica.extend(_keys(state, state.engine.replicas[position]))
        for key_hash, pinned in state.overrides.items():
            if server_id in pinned:
                key = state.parts.get(key_hash)
                assert key is not None
                (primary if pinned[0] == server_id else replica).append(key)
        return ServerParts(
            server_id=server_id, primary=tuple(sorted(primary)), replica=tuple(sorted(replica))
        )

    def part_counts(self, server_id: str) -> tuple[int, int]:
        """How many parts `server_id` holds as primary and as replica (`parts_for`'s lengths),
        without listing them: O(overrides)."""
        state = self._state
        if server_id not in state.servers:
            raise KeyError(server_id)
        primary = replica = 0
        position = state.eligible.index.get(server_id)
        if position is not None:
            primary = len(state.engine.members[position])
            replica = len(state.engine.replicas[position])
        for pinned in state.overrides.values():
            if server_id in pinned:
                if pinned[0] == server_id:
                    primary += 1
                else:
                    replica += 1
        return primary, replica

    def primary_sessions(self) -> dict[str, int]:
        """Per server of the map: how many distinct sessions it is primary of some part of.

        O(parts): a pass over every part. The version never changes, so this may run on another
        thread than the one that applies deltas (the admin view does, on big maps).
        """
        state = self._state
        parts = state.parts
        sessions: dict[str, set[bytes]] = {server_id: set() for server_id in state.servers}
        for name, held in zip(state.eligible.names, state.engine.members, strict=True):
            target = sessions[name]
            for key_hash in held:
                key = parts.get(key_hash)
                assert key is not None, "engine and part index out of sync"
                target.add(key.session_id)
        for key_hash, pinned in state.overrides.items():
            key = parts.get(key_hash)
            assert key is not None, "override and part index out of sync"
            sessions.setdefault(pinned[0], set()).add(key.session_id)
        return {server_id: len(ids) for server_id, ids in sessions.items()}

    def primary_loads(self) -> dict[str, int]:
        """Per ACTIVE server: how many parts it serves as primary (hash-placed and overrides).

        A new dict each call. The counts are kept per version once asked for, and a version
        whose ancestor's counts were asked for derives its own from them, recounting only the
        servers the deltas in between changed.
        """
        loads = self._loads
        if loads is None:
            loads = self._derived_loads()
            if loads is None:
                state = self._state
                pinned = state.pinned
                loads = {
                    name: len(held) + pinned.get(name, 0)
                    for name, held in zip(state.eligible.names, state.engine.members, strict=True)
                }
            self._loads = loads
            self._loads_base = None
        return dict(loads)

    def _derived_loads(self) -> dict[str, int] | None:
        """This version's primary counts from an ancestor's, or None when they cannot be."""
        if self._loads_base is None:
            return None
        state = self._state
        lineage, base = self._loads_base
        changes = state.lineage.since(lineage)
        if changes is None or changes.arrays is None:
            return None
        names, index = state.eligible.names, state.eligible.index
        touched = {names[server] for table, server in changes.arrays if table == MEMBERS}
        touched.update(name for name in changes.pinned if name in index)
        loads = dict(base)
        members, pinned = state.engine.members, state.pinned
        for name in touched:
            loads[name] = len(members[index[name]]) + pinned.get(name, 0)
        return loads

    def replica_loads(self) -> dict[str, int]:
        """Per ACTIVE server: how many parts it holds a replica of (hash-placed and overrides),
        counted in one pass over the overrides: O(servers + overrides), a new dict each call."""
        state = self._state
        loads = {
            name: len(held)
            for name, held in zip(state.eligible.names, state.engine.replicas, strict=True)
        }
        for pinned in state.overrides.values():
            for name in pinned[1:]:
                if name in loads:
                    loads[name] += 1
        return loads

    def load_bounds(self) -> dict[str, int]:
        """Per ACTIVE server: the most primaries bounded loads lets the hash give it.

        ceil((1 + epsilon) x (parts whose primary is ACTIVE) x weight / total ACTIVE weight).
        Overrides are explicit decisions and may go beyond it; the hash never does.
        """
        state = self._state
        names = state.eligible.names
        active_parts = len(state.parts) - len(state.overrides) + state.pinned_active
        weights = [state.servers[name].weight_milli for name in names]
        return dict(zip(names, load_bounds(state.config, weights, active_parts), strict=True))

    # Versions.

    def apply(self, delta: Delta) -> ShardMap:
        """The next version; StaleDeltaError when `delta.base_version` is not this version."""
        state = apply_delta(self._state, delta)
        following = ShardMap(state)
        if state.servers is self._state.servers:
            following._entries = self._entries
        if self._loads is not None:
            following._loads_base = (self._state.lineage, self._loads)
        else:
            following._loads_base = self._loads_base
        return following

    def diff(self, other: ShardMap) -> MapDiff:
        """What changed from this version to `other`: parts added, removed, moved; servers."""
        return diff_states(self._state, other._state)

    # Delta constructors: each returns a one-operation delta against this version.

    def delta(self, *operations: Operation) -> Delta:
        """A delta of several operations against this version, applied in order, atomically."""
        return Delta(base_version=self.version, operations=operations)

    def add_session_parts(self, session_id: bytes, parts: Iterable[str]) -> Delta:
        """Add a session's parts; they follow the hash."""
        return self.delta(PartsAdded(session_id=session_id, parts=tuple(parts)))

    def remove_session_parts(self, session_id: bytes, parts: Iterable[str]) -> Delta:
        """Remove a session's parts (with their overrides)."""
        return self.delta(PartsRemoved(session_id=session_id, parts=tuple(parts)))

    def override_placement(self, key: PartKey, placement: Placement | None) -> Delta:
        """Pin `key` to `placement` (handoff, failover), or None to follow the hash again."""
        return self.delta(
            PlacementOverridden(session_id=key.session_id, part=key.part, placement=placement)
        )

    def join_server(self, *, server_id: str, address: str, zone: str, weight: float = 1.0) -> Delta:
        """Add an ACTIVE server."""
        return self.delta(
            ServerJoined(server_id=server_id, address=address, zone=zone, weight=weight)
        )

    def leave_server(self, server_id: str) -> Delta:
        """Remove a DRAINING or DEAD server that no override names."""
        return self.delta(ServerLeft(server_id=server_id))

    def drain_server(self, server_id: str, *, cause: DrainCause = DrainCause.OPERATOR) -> Delta:
        """Start draining: pin the server's parts where they are and place nothing new on it (or,
        as an operator, take over the risk policy's mark)."""
        return self.delta(ServerDrained(server_id=server_id, cause=cause))

    def undrain_server(self, server_id: str) -> Delta:
        """Make a DRAINING server ACTIVE again (its pins stay until overridden)."""
        return self.delta(ServerUndrained(server_id=server_id))

    def mark_server_dead(self, server_id: str) -> Delta:
        """Declare a server dead; its hash-placed parts fall to the next servers of their walk."""
        return self.delta(ServerMarkedDead(server_id=server_id))

    def reweight_server(self, server_id: str, weight: float) -> Delta:
        """Change a server's weight."""
        return self.delta(ServerReweighted(server_id=server_id, weight=weight))

    def __repr__(self) -> str:
        state = self._state
        active = sum(1 for e in state.servers.values() if e.state is ServerState.ACTIVE)
        return (
            f"ShardMap(version={state.version}, servers={len(state.servers)}, active={active}, "
            f"parts={len(state.parts)}, overrides={len(state.overrides)})"
        )


def _keys(state: MapState, hashes: Iterable[int]) -> Iterator[PartKey]:
    parts = state.parts
    for key_hash in hashes:
        key = parts.get(key_hash)
        assert key is not None, "engine and part index out of sync"
        yield key
