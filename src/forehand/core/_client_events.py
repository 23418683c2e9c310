"""Events of the client core, drained with `ClientCore.next_event()`.

Each is a frozen, keyword-only msgspec Struct (slotted, built in C) named noun + past participle.
They carry what the application needs (responses, failures) and what the simulator's checkers read
(`node`, the part, request ids, per-part issue order, map versions). A Struct, not a frozen
dataclass, because the client builds a `ResponseReceived` per answered call: 0.2 us against 2.7 us
for the eleven fields set one by one through `object.__setattr__`. They hold no mutable
containers, so the garbage collector need not track them (`gc=False`).
"""

from __future__ import annotations

import enum

import msgspec

from forehand.core._driver import NodeId
from forehand.wire import HandoffFlag, ReasonCode, ResponseStatus, ResumeRejectReason

__all__ = [
    "ClientEvent",
    "ConnectionClosed",
    "ConnectionEstablished",
    "HandoffAbandoned",
    "HandoffFollowed",
    "HandoffIgnored",
    "HandoffIgnoredWhy",
    "HandoffStarted",
    "MapVersionAdopted",
    "PartRedirected",
    "PartRelocated",
    "ProtocolViolationDetected",
    "RarePathTaken",
    "RequestFailed",
    "RequestFailedWhy",
    "ResponseReceived",
    "SessionClosed",
    "SessionEstablished",
    "SessionOpenFailed",
    "SessionResumed",
    "SessionResumeRejected",
    "CredentialRenewed",
]


class HandoffIgnoredWhy(enum.Enum):
    """Why the client did not follow a HANDOFF."""

    NOT_AUTHENTICATED = "not-authenticated"
    """It came on a connection that has not been welcomed (or from a node that is no server)."""
    NOT_FROM_CURRENT = "not-from-current"
    """Its `current` endpoint names another server than the one that sent it."""
    NOT_BOUND = "not-bound"
    """The sender is not a server of every named part (primary or known backup) for the client,
    so the session is not bound to that connection for those parts."""
    UNKNOWN_SESSION = "unknown-session"
    """The client holds no such session."""
    UNKNOWN_PART = "unknown-part"
    """It names a part the session does not have."""
    STALE_SEQUENCE = "stale-sequence"
    """Its sequence is not newer than the last one this connection sent."""
    STALE_MAP_VERSION = "stale-map-version"
    """Its map version is not newer than what the client knows for the parts."""
    UNKNOWN_TARGET = "unknown-target"
    """A target is not a server the client knows from placements or the shard map."""
    NO_TARGET = "no-target"
    """It names no target at all."""
    PART_BUSY = "part-busy"
    """A part is already moving or resuming; the newer information will come that way."""


class RequestFailedWhy(enum.Enum):
    """Why a request ended without a response."""

    TIMEOUT = "timeout"
    """No final answer within `request_timeout_ms`."""
    RETRIES_EXHAUSTED = "retries-exhausted"
    """It was sent `retry_attempts_max` times without a final answer."""
    PLACEMENT_UNKNOWN = "placement-unknown"
    """The part was still being located at the request's deadline (`request_timeout_ms`): the
    manager named no server that answered, round after round."""
    SESSION_CLOSED = "session-closed"
    """The application closed the session while the request was in flight."""
    SERVERS_LOST = "servers-lost"
    """`ClientConfig.call_servers_lost_max` servers were lost in turn while it was in flight
    there (a handler that blocks each server it runs on past the failure timeout does that);
    it was not sent to another. It may have been executed."""
    TOO_LARGE = "too-large"
    """Its REQUEST is longer than the `frame_bytes_max` the part's server announced in WELCOME
    (a part handed to a server with a smaller limit than its last one); it was not sent there,
    but it may have been sent to (and executed by) the part's previous server."""


class SessionEstablished(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The manager opened a session the client asked for."""

    node: NodeId
    """The client node."""
    request_id: int
    """The id `open_session` returned."""
    session_id: bytes
    """The new session (16 bytes)."""
    parts: tuple[str, ...]
    """Its parts."""
    map_version: int
    """The map version its placements come from."""


class SessionOpenFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A session open got no answer in time (or the manager refused it)."""

    node: NodeId
    """The client node."""
    request_id: int
    """The id `open_session` returned."""
    detail: str
    """Why, for logs."""


class SessionResumed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """After `resume_session` (a client restart), a primary welcomed the connection that
    presented the session's credential: calls for its parts go out."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""
    parts: tuple[str, ...]
    """The parts the server now serves to this client."""
    server: NodeId
    """The server that welcomed the client."""
    map_version: int
    """The map version of the client's placements for those parts."""


class SessionResumeRejected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """After `resume_session`, a primary refused the credential (closed the connection), or could
    not be reached in time; the client locates the parts through the manager instead."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""
    server: NodeId
    """The server that refused."""
    reason: ResumeRejectReason
    """Why, when the server gave a reason (UNSPECIFIED otherwise)."""
    detail: str = ""
    """Why, for logs (the ERROR that closed the connection, a timeout)."""


class CredentialRenewed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A server's RESUME_OK gave the session a fresh credential (valid for the cluster's
    `credential_lifetime_ms` from then); HELLO and RESUME present it from now on."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""


class SessionClosed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A session ended: the application closed it, or a peer it was bound to sent
    CLOSE_SESSION; its unanswered requests failed."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""
    closed_by: NodeId | None = None
    """The server or manager whose CLOSE_SESSION (or, the manager, RESUME_REJECT
    CREDENTIAL_REFUSED) ended it; None when the application did."""
    detail: str = ""
    """Why, when the peer said: the manager's refusal of the session's credential."""


class ResponseReceived(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The final answer to a request; each request id gets at most one."""

    node: NodeId
    """The client node."""
    request_id: int
    """The request."""
    session_id: bytes
    """Its session."""
    part: str
    """Its part."""
    issue_sequence: int
    """Per-part counter at `call` (1, 2, ...): the order the application issued calls in."""
    status: ResponseStatus
    """The server's status."""
    payload: bytes
    """The result."""
    map_version: int
    """The map version the answering server executed under."""
    server: NodeId
    """The node the answer arrived from (a handoff source relays its target's answers)."""
    attempts: int
    """How many times the request was sent (1 when no retry was needed)."""
    latency_us: int
    """From `call` to this answer."""


class RequestFailed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A request ended without an answer: the client ran out of options."""

    node: NodeId
    """The client node."""
    request_id: int
    """The request."""
    session_id: bytes
    """Its session."""
    part: str
    """Its part."""
    issue_sequence: int
    """Per-part counter at `call`."""
    why: RequestFailedWhy
    """Which bound ran out."""
    attempts: int
    """How many times it was sent."""
    elapsed_us: int
    """From `call` to the failure."""


class HandoffStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The client accepted a HANDOFF and is resuming at a target (make-before-break)."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""
    parts: tuple[str, ...]
    """The parts that move."""
    source: NodeId
    """The server that sent the HANDOFF."""
    targets: tuple[NodeId, ...]
    """The targets, in the order the client tries them."""
    sequence: int
    """The HANDOFF's sequence."""
    map_version: int
    """The map version that assigns the parts to the targets."""
    reason: ReasonCode
    """Why the server moves them."""
    flags: HandoffFlag = HandoffFlag.NONE
    """The HANDOFF's flags as received (the client acts the same whatever they say)."""


class HandoffFollowed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A target answered RESUME_OK: the parts now go there and unanswered requests were re-sent."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""
    parts: tuple[str, ...]
    """The parts that moved."""
    source: NodeId
    """The server they left."""
    target: NodeId
    """The server they moved to."""
    reason: ReasonCode
    """The HANDOFF's reason."""
    map_version: int
    """The map version they are served under now."""
    resent_requests: int
    """How many unanswered requests were re-sent to the target."""
    duration_us: int
    """From receiving the HANDOFF to RESUME_OK."""


class HandoffIgnored(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A HANDOFF the client did not follow, and why."""

    node: NodeId
    """The client node."""
    source: NodeId
    """The node it came from."""
    session_id: bytes
    """The session it named."""
    sequence: int
    """Its sequence."""
    map_version: int
    """Its map version."""
    why: HandoffIgnoredWhy
    """Why it was ignored."""


class HandoffAbandoned(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Every target refused or timed out: the client falls back to asking the manager."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""
    parts: tuple[str, ...]
    """The parts that were moving."""
    source: NodeId
    """The server that sent the HANDOFF."""
    detail: str
    """The last target's failure, for logs."""


class PartRedirected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A server answered REDIRECT and the client adopted the newer placement."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""
    part: str
    """The part."""
    source: NodeId
    """The server that redirected."""
    target: NodeId
    """The new primary."""
    map_version: int
    """The map version of the new placement."""


class PartRelocated(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The manager's placement put a part on another server: after a lost connection (no
    HANDOFF), or in a newer map answer that moved an active part."""

    node: NodeId
    """The client node."""
    session_id: bytes
    """The session."""
    part: str
    """The part."""
    server: NodeId
    """Its primary now."""
    map_version: int
    """The map version of the placement."""
    duration_us: int
    """From losing the part's server to knowing where it is (0 for an active part's move)."""
    previous: NodeId | None = None
    """Its primary before (the server lost, or the one a map answer moved it from)."""
    lost: bool = True
    """Whether the client had lost the part (its connection, an abandoned handoff); False for
    an active part a newer map answer moved before any HANDOFF for it came (a planned move
    published first, as in a drain)."""


class MapVersionAdopted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The newest shard-map version the client has seen grew (it never goes back)."""

    node: NodeId
    """The client node."""
    map_version: int
    """The new version."""
    previous_map_version: int
    """The version before."""


class ConnectionEstablished(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A server answered HELLO with WELCOME."""

    node: NodeId
    """The client node."""
    server: NodeId
    """The server."""
    map_version: int
    """The map version the server announced."""


class ConnectionClosed(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A pooled connection closed (lost, refused, or closed by the server with ERROR)."""

    node: NodeId
    """The client node."""
    server: NodeId
    """The server."""
    detail: str
    """Why, for logs."""


class ProtocolViolationDetected(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A server or the manager broke the protocol: it got ERROR and its connection is closing."""

    node: NodeId
    """The client node."""
    peer: NodeId
    """The offender."""
    error_code: int
    """The `ErrorCode` sent."""
    reason: str
    """Why, for logs."""


class RarePathTaken(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The client went down a rare path (a late answer, a stale redirect, ...): coverage."""

    node: NodeId
    """The client node."""
    name: str
    """A stable name for the path, such as `duplicate-response`."""


ClientEvent = (
    SessionEstablished
    | SessionOpenFailed
    | SessionResumed
    | SessionResumeRejected
    | CredentialRenewed
    | SessionClosed
    | ResponseReceived
    | RequestFailed
    | HandoffStarted
    | HandoffFollowed
    | HandoffIgnored
    | HandoffAbandoned
    | PartRedirected
    | PartRelocated
    | MapVersionAdopted
    | ConnectionEstablished
    | ConnectionClosed
    | ProtocolViolationDetected
    | RarePathTaken
)
"""Any event of the client core."""
