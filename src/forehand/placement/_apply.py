"""Applying a delta: the next map version, built incrementally on top of the current one.

Part additions, removals and overrides are collected and handed to the engine in one batch
(capacities raised first, then deletions, insertions, and capacities lowered last, so that the
capacities always leave room for every key). A change of the eligible server set (join, drain,
undrain, death, a new weight) flushes those first, then derives the next assignment from the
current one (`_reshape.py`); when it cannot (another strategy than the ring, a zone emptied or
opened, no ACTIVE server left on the way), the assignment is rebuilt from scratch once, at the
end of the delta, or earlier when a drain needs the placement in force at that point.
"""

from __future__ import annotations

from dataclasses import replace

from forehand.placement._delta import (
    Delta,
    Operation,
    PartsAdded,
    PartsRemoved,
    PlacementOverridden,
    ServerDrained,
    ServerJoined,
    ServerLeft,
    ServerMarkedDead,
    ServerReweighted,
    ServerUndrained,
)
from forehand.placement._errors import InvalidDeltaError, PartKeyCollisionError, StaleDeltaError
from forehand.placement._ids import PartKey
from forehand.placement._lineage import Step
from forehand.placement._reshape import reshape_engine
from forehand.placement._servers import (
    DrainCause,
    ServerEntry,
    ServerState,
    ServerTransition,
    next_server_state,
)
from forehand.placement._state import (
    MapState,
    check_override,
    check_server_entry,
    count_pinned_active,
    load_bounds,
    pinned_servers,
    rebuild_engine,
)

__all__ = ["apply_delta"]


def apply_delta(state: MapState, delta: Delta) -> MapState:
    """The version `delta` makes of `state`; `state` itself does not change."""
    if delta.base_version != state.version:
        raise StaleDeltaError(base_version=delta.base_version, current_version=state.version)
    if len(delta.operations) > state.config.delta_operations_max:
        raise InvalidDeltaError(
            f"a delta carries at most {state.config.delta_operations_max} operations"
        )
    writer = _DeltaWriter(state)
    for operation in delta.operations:
        writer.apply(operation)
    return writer.finish()


class _DeltaWriter:
    """One delta in progress; nothing it does is visible until `finish`."""

    def __init__(self, state: MapState) -> None:
        self._state = state
        self._config = state.config
        self._servers = state.servers
        self._servers_owned = False
        self._parts = state.parts.writer()
        self._overrides = state.overrides.writer()
        self._pinned = state.pinned
        self._pinned_owned = False
        self._eligible = state.eligible
        self._engine = state.engine
        self._layout_stale = False
        self._inserts: set[int] = set()
        self._deletes: set[int] = set()
        self._pins_touched: set[str] = set()
        self._pinned_active = state.pinned_active
        self._active_parts = len(state.parts) - len(state.overrides) + state.pinned_active
        self._weights_total: int | None = None
        # What this delta writes, for the next version's lineage: every pinned count changed,
        # and the engine arrays copied (None once the eligible servers change).
        self._pins_changed: set[str] = set()
        self._arrays: set[tuple[int, int]] | None = set()
        self._member_hashes: set[int] = set()

    def apply(self, operation: Operation) -> None:
        match operation:
            case PartsAdded():
                self._add_parts(operation)
            case PartsRemoved():
                self._remove_parts(operation)
            case PlacementOverridden():
                self._override(operation)
            case ServerJoined():
                self._join(operation)
            case ServerLeft():
                self._leave(operation.server_id)
            case ServerDrained():
                self._drain(operation.server_id, operation.cause)
            case ServerUndrained():
                self._transition(operation.server_id, ServerTransition.UNDRAIN)
            case ServerMarkedDead():
                self._transition(operation.server_id, ServerTransition.MARK_DEAD)
            case ServerReweighted():
                self._transition(
                    operation.server_id, ServerTransition.REWEIGHT, weight=operation.weight
                )

    # Parts.

    def _add_parts(self, operation: PartsAdded) -> None:
        if len(operation.parts) > self._config.parts_per_session_max:
            raise InvalidDeltaError(
                f"a session has at most {self._config.parts_per_session_max} parts"
            )
        for part in operation.parts:
            key = PartKey(session_id=operation.session_id, part=part)
            existing = self._parts.get(key.key_hash)
            if existing is not None:
                if existing == key:
                    raise InvalidDeltaError(f"{key} is already in the map")
                raise PartKeyCollisionError(f"{key} and {existing} have the same stable hash")
            if len(self._parts) >= self._config.parts_max:
                raise InvalidDeltaError(f"the map holds at most {self._config.parts_max} parts")
            self._parts.put(key.key_hash, key)
            self._hash_insert(key.key_hash)

    def _remove_parts(self, operation: PartsRemoved) -> None:
        for part in operation.parts:
            key = self._existing_key(operation.session_id, part)
            self._parts.pop(key.key_hash)
            override = self._overrides.pop(key.key_hash)
            if override is None:
                self._hash_delete(key.key_hash)
            else:
                self._pin(override[0], -1)

    def _override(self, operation: PlacementOverridden) -> None:
        key = self._existing_key(operation.session_id, operation.part)
        previous = self._overrides.get(key.key_hash)
        placement = operation.placement
        if placement is None:
            if previous is not None:
                self._overrides.pop(key.key_hash)
                self._pin(previous[0], -1)
                self._hash_insert(key.key_hash)
            return
        check_override(self._config, self._servers, placement)
        self._overrides.put(key.key_hash, pinned_servers(self._servers, placement))
        self._pin(placement.primary, +1)
        if previous is None:
            self._hash_delete(key.key_hash)
        else:
            self._pin(previous[0], -1)

    def _existing_key(self, session_id: bytes, part: str) -> PartKey:
        key = PartKey(session_id=session_id, part=part)
        if self._parts.get(key.key_hash) != key:
            raise InvalidDeltaError(f"{key} is not in the map")
        return key

    def _hash_insert(self, key_hash: int) -> None:
        if key_hash in self._deletes:
            self._deletes.remove(key_hash)
        else:
            self._inserts.add(key_hash)

    def _hash_delete(self, key_hash: int) -> None:
        if key_hash in self._inserts:
            self._inserts.remove(key_hash)
        else:
            self._deletes.add(key_hash)

    def _pin(self, server_id: str, change: int) -> None:
        if not self._pinned_owned:
            self._pinned = dict(self._pinned)
            self._pinned_owned = True
        assert isinstance(self._pinned, dict)
        self._pins_touched.add(server_id)
        self._pins_changed.add(server_id)
        if server_id in self._eligible.index:
            self._pinned_active += change
        count = self._pinned.get(server_id, 0) + change
        assert count >= 0, "pinned counts out of sync"
        if count:
            self._pinned[server_id] = count
        else:
            self._pinned.pop(server_id, None)

    # Servers.

    def _writable_servers(self) -> dict[str, ServerEntry]:
        if not self._servers_owned:
            self._servers = dict(self._servers)
            self._servers_owned = True
        assert isinstance(self._servers, dict)
        return self._servers

    def _entry(self, server_id: str) -> ServerEntry:
        entry = self._servers.get(server_id)
        if entry is None:
            raise InvalidDeltaError(f"server {server_id!r} is not in the map")
        return entry

    def _join(self, operation: ServerJoined) -> None:
        if operation.server_id in self._servers:
            raise InvalidDeltaError(f"server {operation.server_id!r} is already in the map")
        if len(self._servers) >= self._config.servers_max:
            raise InvalidDeltaError(f"the map lists at most {self._config.servers_max} servers")
        entry = ServerEntry(
            server_id=operation.server_id,
            address=operation.address,
            zone=operation.zone,
            weight=operation.weight,
            state=ServerState.ACTIVE,
        )
        check_server_entry(self._config, entry)
        self._writable_servers()[entry.server_id] = entry
        self._reshape()

    def _leave(self, server_id: str) -> None:
        entry = self._entry(server_id)
        next_server_state(server_id, entry.state, ServerTransition.LEAVE)
        for _, pinned in self._overrides.items():
            if server_id in pinned:
                raise InvalidDeltaError(
                    f"server {server_id!r} cannot leave: an override still names it {pinned}"
                )
        del self._writable_servers()[server_id]

    def _drain(self, server_id: str, cause: DrainCause) -> None:
        entry = self._entry(server_id)
        if entry.state is ServerState.DRAINING and cause is DrainCause.OPERATOR:
            # The risk policy's mark already pinned the server's parts: only the cause changes.
            if entry.drain_cause is not DrainCause.RISK:
                raise InvalidDeltaError(f"server {server_id!r} is already drained by an operator")
            self._transition(server_id, ServerTransition.TAKE_OVER, cause=cause)
            return
        next_server_state(server_id, entry.state, ServerTransition.DRAIN)
        self._settle()
        position = self._eligible.index[server_id]
        engine = self._engine
        names = self._eligible.names
        held = sorted({*engine.members[position], *engine.replicas[position]})
        for key_hash in held:
            primary = engine.primary_of(key_hash)
            replicas = engine.replica_set(key_hash, primary)
            self._overrides.put(key_hash, (names[primary], *(names[index] for index in replicas)))
            self._pin(names[primary], +1)
            self._hash_delete(key_hash)
        self._transition(server_id, ServerTransition.DRAIN, cause=cause)

    def _transition(
        self,
        server_id: str,
        transition: ServerTransition,
        *,
        weight: float | None = None,
        cause: DrainCause | None = None,
    ) -> None:
        """Move the entry along the table. The drain cause lasts while the server is DRAINING (a
        reweight keeps it) and is OPERATOR again once it leaves that state."""
        entry = self._entry(server_id)
        state = next_server_state(server_id, entry.state, transition)
        assert state is not None
        if cause is None:
            cause = entry.drain_cause if state is ServerState.DRAINING else DrainCause.OPERATOR
        updated = replace(
            entry,
            state=state,
            weight=entry.weight if weight is None else weight,
            drain_cause=cause,
        )
        check_server_entry(self._config, updated)
        self._writable_servers()[server_id] = updated
        was_eligible = entry.state is ServerState.ACTIVE
        if was_eligible != (state is ServerState.ACTIVE) or (
            was_eligible and updated.weight_milli != entry.weight_milli
        ):
            self._reshape()

    # The assignment.

    def _settle(self) -> None:
        """Bring the engine up to date with every operation so far."""
        if self._layout_stale:
            self._rebuild()
        else:
            self._flush()

    def _reshape(self) -> None:
        """The ACTIVE set changed by one server: derive the assignment, or rebuild at the end."""
        if self._layout_stale or not self._eligible.names:
            self._layout_stale = True
            return
        self._flush()
        reshaped = reshape_engine(
            self._config,
            self._engine,
            eligible=self._eligible,
            servers=self._servers,
            pinned=self._pinned,
            hash_parts=len(self._parts) - len(self._overrides),
        )
        if reshaped is None:
            self._layout_stale = True
        else:
            self._eligible, self._engine = reshaped
            self._engine_computed()

    def _engine_computed(self) -> None:
        # The engine's capacities were just computed from the current counts, for every server,
        # over a new eligible set: the totals over it are counted again, and the arrays moved.
        self._pinned_active = count_pinned_active(self._pinned, self._eligible)
        self._active_parts = len(self._parts) - len(self._overrides) + self._pinned_active
        self._weights_total = None
        self._arrays = None
        self._pins_touched.clear()

    def _rebuild(self) -> None:
        self._eligible, self._engine = rebuild_engine(
            self._config,
            self._servers,
            self._parts.view(),
            self._overrides.view(),
            self._pinned,
            previous=self._engine,
        )
        self._layout_stale = False
        self._inserts.clear()
        self._deletes.clear()
        self._engine_computed()

    def _flush(self) -> None:
        hash_parts = len(self._parts) - len(self._overrides)
        names = self._eligible.names
        if hash_parts and not names:
            raise InvalidDeltaError(f"no ACTIVE server is left for {hash_parts} hash-placed parts")
        if not self._inserts and not self._deletes and not self._pins_touched:
            return
        capacities = self._changed_capacities(hash_parts)
        writer = self._engine.writer()
        for server, capacity in capacities.items():
            writer.raise_capacity(server, capacity)
        for key_hash in sorted(self._deletes):
            writer.delete(key_hash)
        for key_hash in sorted(self._inserts):
            writer.insert(key_hash)
        for server, capacity in capacities.items():
            writer.lower_capacity(server, capacity)
        self._engine = writer.freeze()
        if self._arrays is not None:
            self._arrays.update(writer.written())
            self._member_hashes.update(writer.members_changed())
        self._inserts.clear()
        self._deletes.clear()

    def _changed_capacities(self, hash_parts: int) -> dict[int, int]:
        """The capacities that differ from the engine's, by server position.

        A capacity is the load bound of the server's weight minus the primaries overrides give
        it; the bound changes for all servers of a weight at once, and only when the number of
        active parts crosses one of its steps, so most deltas touch a few servers, not all.
        """
        eligible = self._eligible
        weights = eligible.weights_milli
        active = hash_parts + self._pinned_active
        if self._weights_total is None:
            self._weights_total = sum(weights)
        total = self._weights_total
        touched = {eligible.index[name] for name in self._pins_touched if name in eligible.index}
        if active != self._active_parts:
            distinct = sorted(set(weights))
            before = load_bounds(self._config, distinct, self._active_parts, total)
            after = load_bounds(self._config, distinct, active, total)
            moved = {
                w for w, one, other in zip(distinct, before, after, strict=True) if one != other
            }
            if moved:
                touched.update(i for i, weight in enumerate(weights) if weight in moved)
        self._active_parts = active
        self._pins_touched.clear()
        if not touched:
            return {}
        distinct = sorted({weights[server] for server in touched})
        bound_of = dict(
            zip(distinct, load_bounds(self._config, distinct, active, total), strict=True)
        )
        old = self._engine.capacities
        changed: dict[int, int] = {}
        for server in sorted(touched):
            pinned = self._pinned.get(eligible.names[server], 0)
            capacity = max(0, bound_of[weights[server]] - pinned)
            if capacity != old[server]:
                changed[server] = capacity
        return changed

    def finish(self) -> MapState:
        self._settle()
        if len(self._pinned) <= _CHECKED_PINNED_MAX:
            recount = count_pinned_active(self._pinned, self._eligible)
            assert self._pinned_active == recount, "override primaries count out of sync"
        step = Step(
            base=self._state.lineage.token,
            part_buckets=self._parts.written_buckets(),
            override_buckets=self._overrides.written_buckets(),
            arrays=None if self._arrays is None else frozenset(self._arrays),
            pinned=frozenset(self._pins_changed),
            member_hashes=frozenset() if self._arrays is None else frozenset(self._member_hashes),
        )
        return MapState(
            version=self._state.version + 1,
            config=self._config,
            servers=self._servers,
            parts=self._parts.freeze(),
            overrides=self._overrides.freeze(),
            pinned=self._pinned,
            eligible=self._eligible,
            engine=self._engine,
            pinned_active=self._pinned_active,
            lineage=self._state.lineage.after(step),
        )


_CHECKED_PINNED_MAX = 64
"""Maps with at most this many servers primary of an override check the running count of
override primaries on eligible servers against a recount after every delta (small maps are the
tests'; at scale the recount would cost O(servers) a version)."""
