"""The client's view of one session: per part, where it is served and what is in flight.

Each part has a route with a small state machine. ACTIVE parts send requests straight to their
primary. While a part is HANDING_OFF (a HANDOFF was accepted, RESUME sent to a target), RESUMING
(after a client restart, the session's credential presented to the primary in HELLO) or LOCATING
(its server was lost without HANDOFF and the client asks the manager where it lives), new calls
are held, in call order, and go out when the part is ACTIVE again; unanswered ones are re-sent
with the same request ids, which the servers' dedup tables turn into exactly-once execution.
"""

from __future__ import annotations

import enum

import msgspec

from forehand.core._driver import NodeId
from forehand.errors import LocalProtocolError

__all__ = [
    "ROUTE_TRANSITIONS",
    "InFlight",
    "PartRoute",
    "RouteState",
    "RouteTrigger",
    "Session",
    "route_transition_table",
]


class RouteState(enum.Enum):
    """Where a part's route stands."""

    ACTIVE = "active"
    """The primary is known; requests go to it."""
    HANDING_OFF = "handing-off"
    """Following a HANDOFF: RESUME sent to a target while the old server still answers; a newer
    HANDOFF for the part supersedes the one in flight."""
    RESUMING = "resuming"
    """After a client restart: the credential went to the primary in HELLO; calls await WELCOME."""
    LOCATING = "locating"
    """The part's server is gone; the client asks the manager (MAP_REQUEST) where it lives now."""
    CLOSED = "closed"
    """The session was closed."""


class RouteTrigger(enum.Enum):
    """What moves a part's route."""

    HANDOFF_ACCEPTED = "handoff-accepted"
    RESTARTED = "restarted"
    WELCOMED = "welcomed"
    RESTART_FAILED = "restart-failed"
    RESUME_OK = "resume-ok"
    TARGET_FAILED = "target-failed"
    TARGETS_EXHAUSTED = "targets-exhausted"
    REDIRECTED = "redirected"
    SERVER_LOST = "server-lost"
    NOT_SERVED = "not-served"
    PLACEMENT_RECEIVED = "placement-received"
    SESSION_CLOSED = "session-closed"


_A = RouteState.ACTIVE
_H = RouteState.HANDING_OFF
_R = RouteState.RESUMING
_L = RouteState.LOCATING
_C = RouteState.CLOSED

ROUTE_TRANSITIONS: dict[tuple[RouteState, RouteTrigger], RouteState] = {
    (_A, RouteTrigger.HANDOFF_ACCEPTED): _H,
    (_A, RouteTrigger.RESTARTED): _R,
    (_A, RouteTrigger.REDIRECTED): _A,
    (_A, RouteTrigger.PLACEMENT_RECEIVED): _A,
    (_A, RouteTrigger.SERVER_LOST): _L,
    (_A, RouteTrigger.NOT_SERVED): _L,
    (_A, RouteTrigger.SESSION_CLOSED): _C,
    (_H, RouteTrigger.HANDOFF_ACCEPTED): _H,
    (_H, RouteTrigger.TARGET_FAILED): _H,
    (_H, RouteTrigger.RESUME_OK): _A,
    (_H, RouteTrigger.TARGETS_EXHAUSTED): _L,
    (_H, RouteTrigger.PLACEMENT_RECEIVED): _A,
    (_H, RouteTrigger.SESSION_CLOSED): _C,
    (_R, RouteTrigger.WELCOMED): _A,
    (_R, RouteTrigger.RESTART_FAILED): _L,
    (_R, RouteTrigger.PLACEMENT_RECEIVED): _A,
    (_R, RouteTrigger.SESSION_CLOSED): _C,
    (_L, RouteTrigger.PLACEMENT_RECEIVED): _A,
    (_L, RouteTrigger.HANDOFF_ACCEPTED): _H,
    (_L, RouteTrigger.SESSION_CLOSED): _C,
}
"""Every legal route transition; anything else raises `LocalProtocolError`."""


def route_transition_table() -> list[tuple[RouteState, RouteTrigger, RouteState]]:
    """The part-route state machine as (from, trigger, to) rows, for generated diagrams."""
    return [(source, trigger, target) for (source, trigger), target in ROUTE_TRANSITIONS.items()]


class InFlight(msgspec.Struct, kw_only=True, gc=False):
    """One request awaiting its final answer.

    A (mutable) msgspec Struct: the client builds one per call, and C sets its fields in a
    fraction of what a Python `__init__` takes. It holds no containers, so the garbage collector
    need not track it (`gc=False`).
    """

    request_id: int
    """The id, kept across every re-send."""
    session_id: bytes
    """The session."""
    part: str
    """The part."""
    op: str
    """The operation."""
    payload: bytes
    """The argument."""
    issue_sequence: int
    """Per-part call counter (1, 2, ...)."""
    issued_us: int
    """When `call` issued it."""
    deadline_us: int
    """When it fails unless answered."""
    own_timeout: bool = False
    """Whether the call set a timeout of its own: each REQUEST for it then carries the wait
    budget left at its sending."""
    attempts: int = 0
    """How many times it was sent."""
    retries: int = 0
    """Re-sends a server asked for (TRY_AGAIN, NOT_FOUND, REDIRECT); bounded by config."""
    try_agains: int = 0
    """TRY_AGAIN answers since the part was last located for it (`TRY_AGAIN_LOCATE_AFTER`)."""
    server: NodeId | None = None
    """The server it was last sent to; None while held (not sent since the last move)."""
    retry_at_us: int | None = None
    """When a TRY_AGAIN answer asked for a re-send; None otherwise."""
    lost_on: NodeId | None = None
    """The server it was in flight on when that server was lost (its connection closed, or its
    PINGs went unanswered while the call waited there); None once it is sent again, or once
    a frame comes from that server after a silence (`ClientCore._heard_again`)."""
    servers_lost: int = 0
    """Servers it was in flight on that were lost, counted as it is sent to another
    (`ClientConfig.call_servers_lost_max`)."""


class PartRoute:
    """Where one part of a session is served, and its requests in call order."""

    __slots__ = (
        "backups",
        "inflight",
        "issue_counter",
        "locate_attempts",
        "lost_us",
        "map_version",
        "name",
        "primary",
        "state",
    )

    def __init__(
        self, name: str, *, primary: NodeId, backups: tuple[NodeId, ...], map_version: int
    ) -> None:
        self.name = name
        """The part name."""
        self.state = RouteState.ACTIVE
        """Where the route stands."""
        self.primary = primary
        """The server requests go to."""
        self.backups = backups
        """Known backups (replicas, a handoff source in its backup period), in promotion order."""
        self.map_version = map_version
        """The newest map version of placement information about this part (never decreases)."""
        self.issue_counter = 0
        """Calls issued on this part so far."""
        self.inflight: dict[int, InFlight] = {}
        """Unanswered requests by id, in call order (dicts keep insertion order)."""
        self.locate_attempts = 0
        """MAP_REQUEST rounds since the part was last served; bounded by `retry_attempts_max`."""
        self.lost_us = 0
        """When the part's server was lost (start of the current relocation)."""

    def fire(self, trigger: RouteTrigger) -> RouteState:
        """Apply `trigger`, or raise `LocalProtocolError` when the table does not allow it."""
        try:
            self.state = ROUTE_TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise LocalProtocolError(
                f"part {self.name!r}: no transition from {self.state.value} on {trigger.value}"
            ) from None
        return self.state

    def servers(self) -> tuple[NodeId, ...]:
        """The active-server list: the primary first, then the known backups."""
        return (self.primary, *(b for b in self.backups if b != self.primary))

    def adopt(self, *, primary: NodeId, backups: tuple[NodeId, ...], map_version: int) -> None:
        """Take newer placement information (callers check that it is newer).

        The backups keep their order, without the primary and without repeats: callers build
        them by prepending a server (a handoff source) to a list that may already hold it.
        """
        assert map_version >= self.map_version, (map_version, self.map_version)
        self.primary = primary
        self.backups = tuple(dict.fromkeys(b for b in backups if b != primary))
        self.map_version = map_version


class Session:
    """One session the client holds."""

    __slots__ = ("credential", "manager_credential", "parts", "session_id")

    def __init__(self, session_id: bytes, *, credential: bytes) -> None:
        self.session_id = session_id
        """The session id (16 bytes)."""
        self.credential = credential
        """The session credential presented in HELLO (also after a restart); RESUME_OK may renew
        it."""
        self.manager_credential = b""
        """The credential last presented to the session manager (HELLO, MAP_REQUEST): its
        refusal ends the session only while that is still the session's credential."""
        self.parts: dict[str, PartRoute] = {}
        """The parts, by name, in the order the session was opened with."""
