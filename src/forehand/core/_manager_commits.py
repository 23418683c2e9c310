"""The manager's commit pipeline: one map change in flight at a time, a bounded queue behind it.

Every change to the shard map is a `Change`: a kind, a `build` function that computes its delta
against whatever the map is when its turn comes (so a change queued behind others, or re-planned
after a rejection, never applies to a version it was not computed for), and callbacks for when it
commits or is dropped. The pipeline turns the head of the queue into a store request, waits for
the result, and reports it. A rejection (the store's map moved on: another manager won) or a
store that stays silent for `store_timeout_ms` reloads the map; the change goes back to the head
of the queue and is built again against the reloaded map.

Changes marked `groupable` (handoff assignments, session opens) of one kind that wait next to
each other commit as one version, up to `group_changes_max` of them: each is built on top of the
one before, then a `merge` callback turns the builds into one delta against the current map.
Every version costs the manager one push to every live server and the store one delta, so a
planning pass that starts thirty handoffs at once makes one version, not thirty, and so do
thirty session opens that arrive while a commit is in flight.

`MapHistory` keeps the newest published deltas, so that a server coming back with the version it
holds (a readmitted server, a server that saw a gap) is sent the deltas since that version
instead of the whole map: a whole map of millions of parts costs seconds to encode and megabytes
to send, the deltas of a few versions kilobytes.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from forehand.core._manager_events import MapChange
from forehand.core.messages import MapPublished, PartRef
from forehand.errors import LocalProtocolError
from forehand.placement import Delta, PartKey, PlacementConfig, ShardMap

# The message module only: the package also exports the SQLite store, which a core must not load.
from forehand.stores._messages import (
    DeltaCommitRequested,
    DeltaCommitted,
    DeltaRejected,
    MapLoaded,
    MapLoadRequested,
    RejectionReason,
    SnapshotRejected,
    SnapshotSaved,
    SnapshotSaveRequested,
    StoreFailed,
    StoreRequest,
)

__all__ = [
    "Built",
    "Change",
    "CommitPipeline",
    "Committed",
    "Loaded",
    "MapHistory",
    "Rejected",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Built:
    """A change computed against one map version, ready to commit."""

    delta: Delta | None
    """The delta (its base is the current version); None when the map already has the change."""
    new_map: ShardMap
    """The version it produces."""
    parts: tuple[PartRef, ...]
    """Parts whose placement the change means to alter (for events)."""
    servers: tuple[str, ...]
    """Servers the change is about (for events)."""
    payload: object = None
    """Whatever the change's `committed` callback needs from the build."""
    implicit_moves: tuple[PartKey, ...] | None = None
    """Live primaries the delta moves without an operation naming them (stabilize could not pin
    them back); None when the builder does not say, and then any part may have moved."""


@dataclass(slots=True, kw_only=True)
class Change:
    """A map change waiting for its turn."""

    kind: MapChange
    """What kind of change (for events)."""
    build: Callable[[ShardMap], Built | None]
    """Computes the delta against the current map; None when there is nothing left to do."""
    committed: Callable[[Built, int], None]
    """Called with the build and `now_us` once the store accepted it."""
    dropped: Callable[[str, int], None]
    """Called with a cause and `now_us` when the change will never commit."""
    urgent: bool = False
    """Failover promotions: go first, bypass the queue bound, commit while others wait."""
    groupable: bool = False
    """May commit in one version with the groupable changes of its kind queued right behind it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Committed:
    """Outcome: the change in flight committed."""

    change: Change
    """The change."""
    built: Built
    """What was committed."""
    previous: ShardMap
    """The version it applied to."""
    members: tuple[tuple[Change, Built], ...] = ()
    """For a group commit: each change with its own build (parts, payload), the delta and map
    being the group's; empty for a single change."""


Merge = Callable[[ShardMap, Sequence[Built]], Built]
"""Turns builds made one on top of the other into one build against the first's base map."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """Outcome: the store refused the change in flight (or went silent); the map reloads."""

    change: Change
    """The change, back at the head of the queue."""
    built: Built
    """What was refused."""
    detail: str
    """Why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Loaded:
    """Outcome: the map was (re)loaded from the store."""

    shard_map: ShardMap
    """The loaded version."""
    previous: ShardMap | None
    """The version held before, None at start-up."""
    encoded: bytes | None = None
    """The store's snapshot when it is the loaded version itself (no delta applied on top): the
    whole map's bytes without encoding it again."""


Outcome = Committed | Rejected | Loaded


class _Kind(enum.Enum):
    LOAD = "load"
    COMMIT = "commit"
    SNAPSHOT = "snapshot"


@dataclass(slots=True, kw_only=True)
class _InFlight:
    request_id: int
    kind: _Kind
    sent_us: int
    change: Change | None = None
    built: Built | None = None
    members: tuple[tuple[Change, Built], ...] = ()


class CommitPipeline:
    """The queue of changes, the store request in flight, and the map as last committed."""

    def __init__(
        self,
        *,
        placement_config: PlacementConfig,
        pending_max: int,
        timeout_us: int,
        snapshot_interval_deltas: int,
        group_changes_max: int = 1,
        merge: Merge | None = None,
        retry_backoff_us: int = 100_000,
        retry_backoff_max_us: int = 5_000_000,
    ) -> None:
        assert group_changes_max == 1 or merge is not None, "grouping needs a merge"
        self._retry_backoff_us = retry_backoff_us
        self._retry_backoff_max_us = retry_backoff_max_us
        self._failures = 0
        """Store requests failed (or went unanswered) in a row."""
        self._reload_at_us: int | None = None
        """When the reload after a failure is due, while it waits (nothing goes to the store
        until then)."""
        self._group_changes_max = group_changes_max
        self._ungrouped = 0
        self._merge = merge
        self._placement_config = placement_config
        self._pending_max = pending_max
        self._timeout_us = timeout_us
        self._snapshot_interval = snapshot_interval_deltas
        self._queue: deque[Change] = deque()
        self._in_flight: _InFlight | None = None
        self._next_request_id = 1
        self._map: ShardMap | None = None
        self._requests: list[StoreRequest] = []
        self._deltas_since_snapshot = 0
        self._snapshot_due = False

    @property
    def shard_map(self) -> ShardMap | None:
        """The newest map known committed, or None before the first load."""
        return self._map

    @property
    def busy(self) -> bool:
        """A store request is in flight."""
        return self._in_flight is not None

    @property
    def pending(self) -> int:
        """Changes waiting behind the one in flight."""
        return len(self._queue)

    @property
    def free_slots(self) -> int:
        """How many more non-urgent changes the queue takes."""
        return max(0, self._pending_max - len(self._queue))

    def in_flight_change(self) -> Change | None:
        """The change being committed right now, if any."""
        return None if self._in_flight is None else self._in_flight.change

    def requests(self) -> list[StoreRequest]:
        """Drain the store requests produced since the last call."""
        requests, self._requests = self._requests, []
        return requests

    def _send(self, kind: _Kind, now_us: int) -> _InFlight:
        assert self._in_flight is None, "one store request at a time"
        request_id = self._next_request_id
        self._next_request_id += 1
        self._in_flight = _InFlight(request_id=request_id, kind=kind, sent_us=now_us)
        return self._in_flight

    def load(self, *, now_us: int) -> None:
        """Ask the store for the map (start-up, or after a rejection or a silence)."""
        self._reload_at_us = None
        in_flight = self._send(_Kind.LOAD, now_us)
        self._requests.append(MapLoadRequested(request_id=in_flight.request_id))

    def submit(self, change: Change) -> bool:
        """Queue a change; False when the queue is full (urgent changes always get in)."""
        if change.urgent:
            self._queue.appendleft(change)
            return True
        if len(self._queue) >= self._pending_max:
            return False
        self._queue.append(change)
        return True

    def pump(self, *, now_us: int, hold: bool) -> list[Committed]:
        """Start the next store request if none is in flight (only urgent commits while `hold`).

        Returns the changes that turned out to be in the map already (no commit needed).
        """
        done: list[Committed] = []
        while self._map is not None and self._in_flight is None and self._reload_at_us is None:
            if self._snapshot_due or self._deltas_since_snapshot >= self._snapshot_interval:
                self._save_snapshot(self._map, now_us)
                break
            if not self._queue or (hold and not self._queue[0].urgent):
                break
            change = self._queue.popleft()
            built = self._build(change, self._map, now_us)
            if built is None:
                continue
            if built.delta is None:
                done.append(Committed(change=change, built=built, previous=self._map))
                continue
            members = self._group(change, built, now_us, done)
            if len(members) > 1:
                assert self._merge is not None
                built = self._merge(self._map, [member for _, member in members])
            delta = built.delta
            assert delta is not None, "a merge of deltas is a delta"
            in_flight = self._send(_Kind.COMMIT, now_us)
            in_flight.change, in_flight.built = change, built
            in_flight.members = members if len(members) > 1 else ()
            self._requests.append(
                DeltaCommitRequested(
                    request_id=in_flight.request_id,
                    base_version=delta.base_version,
                    delta=ShardMap.encode_delta(delta),
                )
            )
        return done

    def _group(
        self, head: Change, built: Built, now_us: int, done: list[Committed]
    ) -> tuple[tuple[Change, Built], ...]:
        """The head change and the groupable ones queued right behind it, each built on top of
        the one before (those already in the map go to `done`)."""
        members = [(head, built)]
        if self._ungrouped:
            self._ungrouped -= 1
            return tuple(members)
        if not head.groupable:
            return tuple(members)
        running = built.new_map
        while (
            self._queue
            and self._queue[0].groupable
            and self._queue[0].kind is head.kind
            and not self._queue[0].urgent
            and len(members) < self._group_changes_max
        ):
            change = self._queue.popleft()
            following = self._build(change, running, now_us)
            if following is None:
                continue
            if following.delta is None:
                done.append(Committed(change=change, built=following, previous=running))
                continue
            members.append((change, following))
            running = following.new_map
        return tuple(members)

    def _pending_members(self, in_flight: _InFlight) -> list[Change]:
        """The changes of the request in flight, in queue order."""
        if in_flight.members:
            return [change for change, _ in in_flight.members]
        assert in_flight.change is not None
        return [in_flight.change]

    def _requeue(self, in_flight: _InFlight) -> None:
        """Put the changes of a commit that did not land back at the head of the queue."""
        for change in reversed(self._pending_members(in_flight)):
            self._queue.appendleft(change)

    @staticmethod
    def _build(change: Change, current: ShardMap, now_us: int) -> Built | None:
        try:
            built = change.build(current)
        except LocalProtocolError as error:
            change.dropped(f"cannot apply: {error}", now_us)
            return None
        if built is None:
            change.dropped("nothing left to change", now_us)
            return None
        if built.delta is not None:
            assert built.delta.base_version == current.version
            assert built.new_map.version == current.version + 1
        return built

    def _save_snapshot(self, current: ShardMap, now_us: int) -> None:
        in_flight = self._send(_Kind.SNAPSHOT, now_us)
        self._requests.append(
            SnapshotSaveRequested(
                request_id=in_flight.request_id, version=current.version, snapshot=current.encode()
            )
        )

    def excuse(self, *, stalled_us: int, now_us: int) -> None:
        """The manager could not read the store's answer for `stalled_us` up to `now_us`: that
        time does not count towards the request's timeout (the answer may be waiting)."""
        in_flight = self._in_flight
        if in_flight is not None:
            in_flight.sent_us = min(in_flight.sent_us + stalled_us, now_us)

    def deadline_us(self) -> int | None:
        """When the request in flight is abandoned, or a reload waiting after a failure is due."""
        if self._in_flight is None:
            return self._reload_at_us
        return self._in_flight.sent_us + self._timeout_us

    def result(self, result: object, *, now_us: int) -> Outcome | None:
        """Take a store result; late or unknown ones are ignored (None)."""
        in_flight = self._in_flight
        request_id = getattr(result, "request_id", None)
        if in_flight is None or request_id != in_flight.request_id:
            return None
        if not isinstance(result, StoreFailed):
            self._failures = 0  # The store answers again.
        match result:
            case MapLoaded() if in_flight.kind is _Kind.LOAD:
                return self._loaded(result)
            case DeltaCommitted() if in_flight.kind is _Kind.COMMIT:
                return self._committed(in_flight)
            case DeltaRejected() if in_flight.kind is _Kind.COMMIT:
                return self._rejected(in_flight, result, now_us=now_us)
            case SnapshotSaved() | SnapshotRejected() if in_flight.kind is _Kind.SNAPSHOT:
                self._in_flight = None
                self._deltas_since_snapshot = 0
                self._snapshot_due = False
                return None
            case StoreFailed():
                return self._failed(in_flight, f"store failed: {result.reason}", now_us=now_us)
        return None

    def _loaded(self, result: MapLoaded) -> Loaded:
        shard_map = (
            ShardMap.empty(config=self._placement_config)
            if result.snapshot is None
            else ShardMap.decode(result.snapshot)
        )
        for encoded in result.deltas:
            shard_map = shard_map.apply(ShardMap.decode_delta(encoded))
        assert shard_map.version == result.version, (shard_map.version, result.version)
        self._in_flight = None
        self._deltas_since_snapshot = len(result.deltas)
        previous = self._map
        self._map = shard_map
        whole = result.snapshot if not result.deltas else None
        return Loaded(shard_map=shard_map, previous=previous, encoded=whole)

    def _committed(self, in_flight: _InFlight) -> Committed:
        assert in_flight.change is not None and in_flight.built is not None
        assert self._map is not None
        self._in_flight = None
        self._deltas_since_snapshot += 1
        previous = self._map
        built = in_flight.built
        self._map = built.new_map
        members = tuple(
            (change, replace(member, delta=built.delta, new_map=built.new_map))
            for change, member in in_flight.members
        )
        return Committed(change=in_flight.change, built=built, previous=previous, members=members)

    def _rejected(self, in_flight: _InFlight, result: DeltaRejected, *, now_us: int) -> Outcome:
        assert in_flight.change is not None and in_flight.built is not None
        change, built = in_flight.change, in_flight.built
        self._in_flight = None
        if result.reason is RejectionReason.TOO_LARGE:
            if in_flight.members:
                # Too large together: the changes go again, one version each.
                self._ungrouped = len(in_flight.members)
                self._requeue(in_flight)
                return Rejected(change=change, built=built, detail=result.reason.value)
            change.dropped("the store refused the delta as too large", now_us)
            return Rejected(change=change, built=built, detail=result.reason.value)
        self._requeue(in_flight)
        if result.reason is RejectionReason.SNAPSHOT_REQUIRED:
            self._snapshot_due = True
            return Rejected(change=change, built=built, detail=result.reason.value)
        self.load(now_us=now_us)
        return Rejected(change=change, built=built, detail=result.reason.value)

    def _failed(self, in_flight: _InFlight, detail: str, *, now_us: int) -> Outcome | None:
        """Nothing is known of the request: reload the map, and retry a commit after it.

        If a commit did land, the reload shows it and the change's rebuild finds it done (or
        nothing left to change).
        """
        self._in_flight = None
        self._failures += 1
        if in_flight.change is not None and in_flight.built is not None:
            self._requeue(in_flight)
            self._reload_after_failure(now_us)
            return Rejected(change=in_flight.change, built=in_flight.built, detail=detail)
        self._reload_after_failure(now_us)
        return None

    def _reload_after_failure(self, now_us: int) -> None:
        """Reload at once after a first failure; after more in a row, wait a backoff that
        doubles up to its bound (a store that fails at once would otherwise be asked again
        and again as fast as it answers)."""
        if self._failures <= 1:
            self.load(now_us=now_us)
            return
        doublings = min(self._failures - 2, 32)
        wait_us = min(self._retry_backoff_us << doublings, self._retry_backoff_max_us)
        self._reload_at_us = now_us + wait_us

    def timed_out(self, *, now_us: int) -> Outcome | None:
        """The store stayed silent past `store_timeout_ms`: abandon the request, as if failed.
        A reload waiting after failures starts once due."""
        in_flight = self._in_flight
        if in_flight is None:
            if self._reload_at_us is not None and now_us >= self._reload_at_us:
                self._reload_at_us = None
                self.load(now_us=now_us)
            return None
        if now_us < in_flight.sent_us + self._timeout_us:
            return None
        return self._failed(in_flight, "store request timed out", now_us=now_us)


class MapHistory:
    """The newest published deltas, consecutive, within a count and a byte bound.

    Entries chain: each one's `base_version` is the `map_version` of the one before. A reload of
    the map starts a new history (the versions before it may not be this manager's).

    It also keeps, per server that joined holding no map and has reported no version since, the
    version just before its join (which does not list it): a catch-up starts there, whole, and
    goes on with the deltas, so the server learns from the join's delta which live primaries
    the join moved onto it (`since_join`). Given the map of its join whole, it could not tell
    such a part from a new one and installed it empty, losing what the old primary had
    acknowledged (`forehand sim --seed 17800769`). One version per such server, and a version
    shares all but what later deltas changed with the current one.
    """

    def __init__(self, *, deltas_max: int, bytes_max: int) -> None:
        self._deltas_max = deltas_max
        self._bytes_max = bytes_max
        self._deltas: deque[MapPublished] = deque()
        self._bytes = 0
        self._join_bases: dict[str, ShardMap] = {}

    def joined(self, server_id: str, base: ShardMap) -> None:
        """`server_id`, holding no map, joined in the version after `base`, which does not list
        it."""
        self._join_bases[server_id] = base

    def reported(self, server_id: str, map_version: int) -> None:
        """`server_id` reported holding `map_version`: past its join base, it is forgotten."""
        base = self._join_bases.get(server_id)
        if base is not None and map_version > base.version:
            del self._join_bases[server_id]

    def forget(self, server_id: str) -> None:
        """`server_id` died or holds a map: catch-ups start from what it holds."""
        self._join_bases.pop(server_id, None)

    def since_join(
        self, server_id: str, target_version: int
    ) -> tuple[ShardMap, list[MapPublished]] | None:
        """For a server that joined holding no map: the version before its join and the deltas
        from there to `target_version`; None when it has no such base, or the deltas are gone."""
        base = self._join_bases.get(server_id)
        if base is None:
            return None
        chain = self.since(base.version, target_version)
        return None if chain is None else (base, chain)

    def __len__(self) -> int:
        return len(self._deltas)

    @property
    def bytes(self) -> int:
        """Body bytes held."""
        return self._bytes

    def clear(self) -> None:
        """Forget every delta and join base (the map was reloaded)."""
        self._deltas.clear()
        self._bytes = 0
        self._join_bases.clear()

    def record(self, published: MapPublished) -> None:
        """Keep a delta just published, forgetting the oldest beyond the bounds."""
        deltas = self._deltas
        if deltas and deltas[-1].map_version != published.base_version:
            # Not the next version (cannot happen between reloads): start again from this one.
            self.clear()
        if published.base_version == 0:
            # The first version's base, 0, reads as "a whole map" in MapPublished: a server
            # holding nothing gets the whole map anyway.
            return
        deltas.append(published)
        self._bytes += len(published.body)
        while deltas and (len(deltas) > self._deltas_max or self._bytes > self._bytes_max):
            self._bytes -= len(deltas.popleft().body)

    def since(self, held_version: int, target_version: int) -> list[MapPublished] | None:
        """The deltas that take `held_version` to `target_version`, in order; None when the
        history does not reach back that far (or forward that far): send the whole map."""
        deltas = self._deltas
        if not deltas or not 0 < held_version < target_version:
            return None
        first = deltas[0].base_version
        if held_version < first or target_version > deltas[-1].map_version:
            return None
        # Consecutive versions: the delta from `held_version` sits at a known offset.
        start = held_version - first
        chain = [deltas[index] for index in range(start, start + target_version - held_version)]
        assert chain[0].base_version == held_version and chain[-1].map_version == target_version
        return chain
