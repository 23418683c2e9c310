"""What the manager tells clients about placements: only their own sessions, and only news.

A client asks with MAP_REQUEST where the parts of its sessions live (after losing a server
without HANDOFF). The manager answers a connection only about the sessions that connection proved
it holds: opened on it, or presented with a valid credential in its HELLO. Whole shard maps go
only to servers. The request carries the lowest map version the client holds for the parts it
asks about; when no placement of those sessions changed after it, a small "nothing newer" answer
(a client-placements delta listing nothing) says so.

Knowing when a session's placement last changed takes no diff: `PlacementChanges` reads each
committed delta. Operations that name a session (parts added or removed, an override) change that
session; the live primaries a delta moves without naming them (stabilize could not pin them back)
are reported by the builder; an operation on servers (join, drain, death, ...) may change any
part, and so may a delta whose builder did not report what it moved implicitly. The tracker errs
on the side of "changed": a wrong "nothing newer" would send a client back to a server that lost
its part, while a wrong "changed" only costs a larger answer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from forehand.core._client_map import (
    CLIENT_PLACEMENTS_ENCODING,
    SessionPlacement,
    encode_client_placements,
)
from forehand.core._driver import NodeId
from forehand.core._paths import client_bucket
from forehand.placement import (
    Delta,
    PartKey,
    PartsAdded,
    PartsRemoved,
    PlacementOverridden,
    ShardMap,
)
from forehand.wire import MapUpdate, Placement

__all__ = [
    "HELD_SESSIONS_MAX",
    "SESSION_OPERATIONS",
    "HeldMapRequests",
    "HeldRequest",
    "PlacementChanges",
    "SessionBuckets",
    "placements_answer",
]

HELD_SESSIONS_MAX = 262_144
"""Most sessions the held MAP_REQUESTs present in all (about 100 bytes each); past it a request
is answered at once, as if nothing were held."""

SESSION_OPERATIONS = (PartsAdded, PartsRemoved, PlacementOverridden)
"""Operations that change the placement of the session they name, and of no other."""


class PlacementChanges:
    """Per session, the map version at which its placement last changed (as an upper bound)."""

    def __init__(self, *, sessions_max: int) -> None:
        self._sessions_max = sessions_max
        self._sessions: dict[bytes, int] = {}
        self._everything_version = 0

    def everything_changed(self, version: int) -> None:
        """Any placement may have changed at `version` (a server change, a reloaded map)."""
        self._everything_version = max(self._everything_version, version)
        # Older per-session records say nothing the new floor does not already say.
        self._sessions.clear()

    def committed(
        self, delta: Delta, version: int, implicit_moves: tuple[PartKey, ...] | None
    ) -> None:
        """Record the sessions a committed delta changed (`implicit_moves`: None if unknown)."""
        if implicit_moves is None or not all(
            isinstance(operation, SESSION_OPERATIONS) for operation in delta.operations
        ):
            self.everything_changed(version)
            return
        for operation in delta.operations:
            assert isinstance(operation, SESSION_OPERATIONS)
            self._sessions[operation.session_id] = version
        for key in implicit_moves:
            self._sessions[key.session_id] = version
        if len(self._sessions) > self._sessions_max:
            # Bounded memory: forgetting which sessions changed means assuming all did.
            self.everything_changed(version)

    def changed_after(self, session_id: bytes) -> int:
        """An upper bound on the last version that changed the session's placement."""
        return max(self._everything_version, self._sessions.get(session_id, 0))


class SessionBuckets:
    """Per session, the path-report bucket of its client, so a move can read that client's paths.

    Servers aggregate their clients' path reports by a bucket of the client id each HELLO
    carries (`forehand.core._paths.client_bucket`). The manager learns which client a session
    belongs to where it already does: the connection that opens the session, and the HELLO that
    presents the session's credential (after a restart of either side). It hashes that client id
    the same way, so the bucket names the same path reports the servers send. Bounded: past
    `sessions_max` the oldest binding goes, and that session's moves fall back to the target's
    average path risk.
    """

    __slots__ = ("_buckets", "_sessions", "_sessions_max")

    def __init__(self, *, buckets: int, sessions_max: int) -> None:
        assert buckets >= 1 and sessions_max >= 1, (buckets, sessions_max)
        self._buckets = buckets
        self._sessions_max = sessions_max
        # Insertion order is binding order, so the first entry is the oldest.
        self._sessions: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def bind(self, session_id: bytes, client_id: bytes) -> None:
        """Record that `client_id` holds the session (the newest binding wins)."""
        sessions = self._sessions
        sessions.pop(session_id, None)
        while len(sessions) >= self._sessions_max:
            del sessions[next(iter(sessions))]
        sessions[session_id] = client_bucket(client_id, buckets=self._buckets)

    def bucket_of(self, session_id: bytes) -> int | None:
        """The client bucket of the session, or None when the manager does not know it."""
        return self._sessions.get(session_id)

    def forget(self, session_id: bytes) -> None:
        """The session closed."""
        self._sessions.pop(session_id, None)


def placements_answer(
    *,
    current: ShardMap,
    sessions: Iterable[bytes],
    parts_of: Callable[[bytes], tuple[str, ...]],
    placement_of: Callable[[PartKey], Placement],
    changes: PlacementChanges,
    client_version: int,
) -> MapUpdate:
    """The MAP_UPDATE that answers a client's MAP_REQUEST about `sessions` (its proven ones).

    "Nothing newer" (base version = what the client holds, no entries) when every session still
    exists and none changed after the client's version; otherwise the complete placements of
    every part of those sessions (base version 0; a session the map no longer holds is left out,
    which tells the client it is unknown).
    """
    known = tuple(sessions)
    # A delta's base must stay below its version: a client claiming the newest version (or a
    # newer one) is answered against the version before.
    base = min(client_version, current.version - 1)
    if base > 0 and known and all(parts_of(s) and changes.changed_after(s) <= base for s in known):
        return MapUpdate(
            map_version=current.version,
            base_version=base,
            encoding=CLIENT_PLACEMENTS_ENCODING,
            body=encode_client_placements(()),
        )
    entries = tuple(
        SessionPlacement(
            session_id=session_id,
            placement=placement_of(PartKey(session_id=session_id, part=part)),
        )
        for session_id in known
        for part in parts_of(session_id)
    )
    return MapUpdate(
        map_version=current.version,
        base_version=0,
        encoding=CLIENT_PLACEMENTS_ENCODING,
        body=encode_client_placements(entries),
    )


@dataclass(slots=True, kw_only=True)
class HeldRequest:
    """A MAP_REQUEST the manager answers later (`HeldMapRequests`)."""

    map_version: int
    """The version the request carried: the answer is computed against it when it goes."""
    deadline_us: int
    """When it is answered at the latest."""
    sessions: tuple[bytes, ...]
    """The bound sessions it presented: a committed move of one of them answers it."""


class HeldMapRequests:
    """MAP_REQUESTs held until there is news, at most one per client connection.

    After a crash, the clients of the dead server ask the manager where their parts went, and
    until the failover commits the answer is "nothing newer": each client polled with a growing
    backoff (up to 2 s), so it learned the failover up to that much after it committed. A held
    request is answered when a committed version moves a session it presented, when the manager
    hears from the server again, or at its deadline, whichever comes first; the manager decides
    what to hold (`ManagerCore._on_map_request`). A newer request from the same connection
    replaces the held one (the client re-sent after its own timeout) and keeps its deadline, so
    a client that re-sends faster than the hold is still answered at least that often.

    Bounded: one request per connection, and `sessions_max` presented sessions in all.
    """

    __slots__ = ("_by_session", "_hold_us", "_requests", "_sessions_max")

    def __init__(self, *, hold_us: int, sessions_max: int = HELD_SESSIONS_MAX) -> None:
        assert hold_us >= 0 and sessions_max >= 0, (hold_us, sessions_max)
        self._hold_us = hold_us
        self._sessions_max = sessions_max
        # Deadline order: a new request goes last with the latest deadline, and a replaced one
        # keeps its place and its deadline.
        self._requests: OrderedDict[NodeId, HeldRequest] = OrderedDict()
        # Which connection's held request presented each session (the newest, if several did).
        self._by_session: dict[bytes, NodeId] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def __contains__(self, source: object) -> bool:
        return source in self._requests

    @property
    def sessions(self) -> int:
        """Presented sessions indexed now."""
        return len(self._by_session)

    def hold(
        self, source: NodeId, *, map_version: int, sessions: tuple[bytes, ...], now_us: int
    ) -> bool:
        """Hold the connection's request (replacing one it holds). False when holding is off or
        the sessions would pass the bound: the caller answers at once, and nothing of the
        connection is held any more."""
        previous = self._requests.get(source)
        if previous is not None:
            self._unindex(source, previous)
        if self._hold_us == 0 or len(self._by_session) + len(sessions) > self._sessions_max:
            if previous is not None:
                del self._requests[source]
            return False
        deadline_us = now_us + self._hold_us if previous is None else previous.deadline_us
        self._requests[source] = HeldRequest(
            map_version=map_version, deadline_us=deadline_us, sessions=sessions
        )
        by_session = self._by_session
        for session_id in sessions:
            by_session[session_id] = source
        return True

    def take(self, source: NodeId) -> HeldRequest | None:
        """Stop holding the connection's request (answered, or the connection is gone)."""
        request = self._requests.pop(source, None)
        if request is not None:
            self._unindex(source, request)
        return request

    def take_expired(self, now_us: int) -> list[tuple[NodeId, HeldRequest]]:
        """The requests whose deadline has come, oldest first."""
        due: list[tuple[NodeId, HeldRequest]] = []
        requests = self._requests
        while requests:
            source, request = next(iter(requests.items()))
            if request.deadline_us > now_us:
                break
            self.take(source)
            due.append((source, request))
        return due

    def take_sessions(self, session_ids: Iterable[bytes]) -> list[tuple[NodeId, HeldRequest]]:
        """The requests that presented any of `session_ids`, each once."""
        by_session = self._by_session
        due: list[tuple[NodeId, HeldRequest]] = []
        for session_id in session_ids:
            source = by_session.get(session_id)
            if source is None:
                continue
            request = self.take(source)
            if request is not None:
                due.append((source, request))
        return due

    def take_all(self) -> list[tuple[NodeId, HeldRequest]]:
        """Every held request, oldest first."""
        due = list(self._requests.items())
        self._requests.clear()
        self._by_session.clear()
        return due

    def deadline_us(self) -> int | None:
        """The earliest deadline, or None when nothing is held."""
        for request in self._requests.values():
            return request.deadline_us
        return None

    def _unindex(self, source: NodeId, request: HeldRequest) -> None:
        by_session = self._by_session
        for session_id in request.sessions:
            if by_session.get(session_id) == source:
                del by_session[session_id]
