"""One frozen, keyword-only msgspec Struct per `forehand/1` frame.

These are the messages the sans-IO cores exchange; they carry Python values (enums, str, tuples)
and know nothing about bytes. `forehand.wire` encodes and decodes them as docs/PROTOCOL.md says.
msgspec Structs are used rather than dataclasses because they construct and compare about ten
times faster, which matters for REQUEST and RESPONSE.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import msgspec

from forehand.wire._enums import (
    ErrorCode,
    FrameType,
    HandoffFlag,
    HandoffState,
    ReasonCode,
    ResponseStatus,
    ResumeRejectReason,
)

__all__ = [
    "ClusterMessage",
    "CloseSession",
    "Credential",
    "Endpoint",
    "Error",
    "Extension",
    "Frame",
    "GoAway",
    "Handoff",
    "HandoffStatus",
    "Hello",
    "MapRequest",
    "MapUpdate",
    "OpenSession",
    "PathSample",
    "Ping",
    "Placement",
    "Pong",
    "Redirect",
    "Request",
    "Response",
    "Resume",
    "ResumeOk",
    "ResumeReject",
    "SessionOpened",
    "Welcome",
]


class Endpoint(msgspec.Struct, frozen=True, kw_only=True, gc=False, cache_hash=True):
    """Where a server listens, and which server that is."""

    server_id: str
    """The server's stable id, the name its certificate is checked against."""
    host: str
    """An IPv4 literal, an IPv6 literal (no zone) or a DNS name."""
    port: int
    """UDP port for QUIC, TCP port for TLS; 1-65535."""


class Credential(NamedTuple):
    """A session credential a client presents in HELLO or MAP_REQUEST."""

    session_id: bytes
    """The session (16 bytes)."""
    credential: bytes
    """The credential SESSION_OPENED or RESUME_OK gave for it."""


class Placement(NamedTuple):
    """Where one part of a session lives."""

    part: str
    """The part name."""
    primary: Endpoint
    """The server that executes the part's requests."""
    replicas: tuple[Endpoint, ...]
    """Servers holding copies, in promotion order."""


class Extension(NamedTuple):
    """A TLV extension of HANDOFF; unknown types are kept and ignored."""

    type: int
    """The extension type (a variable-length integer)."""
    value: bytes
    """The extension's value, opaque to this layer."""


class PathSample(NamedTuple):
    """A client's measurement of its path to one server, reported in PING."""

    server_id: str
    """The server at the other end of the path."""
    rtt_us: int | None = None
    """Smoothed round-trip time in microseconds, if measured."""
    jitter_us: int | None = None
    """Round-trip time variation in microseconds, if measured."""
    loss_ppm: int | None = None
    """Packet loss in parts per million, if measured."""
    throughput_bps: int | None = None
    """Delivered throughput in bits per second, if measured."""
    rtt_min_us: int | None = None
    """Lowest round-trip time seen on the path in microseconds, if measured."""
    retransmissions: int | None = None
    """Packets or segments retransmitted since the previous report, if measured."""
    probe: bool = False
    """True when the client does not use the server now and measured the path by probing it."""


class _Frame(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Common base: every frame names its wire type."""

    frame_type: ClassVar[FrameType]


class Hello(_Frame, frozen=True, kw_only=True, gc=False):
    """First frame a client sends on a connection."""

    frame_type: ClassVar[FrameType] = FrameType.HELLO
    versions: tuple[int, ...]
    """Protocol versions the client speaks, most preferred first (may include greased ones)."""
    client_id: bytes
    """The client's stable id (16 bytes); one pooled connection serves all its sessions."""
    credentials: tuple[Credential, ...] = ()
    """Credentials of sessions the client already holds and wants to use on this connection."""


class Welcome(_Frame, frozen=True, kw_only=True, gc=False):
    """The server's answer to HELLO: the connection is established."""

    frame_type: ClassVar[FrameType] = FrameType.WELCOME
    version: int
    """The version selected from the HELLO's list."""
    server_id: str
    """The id of the server that answered."""
    map_version: int
    """The newest shard-map version this server knows."""
    frame_bytes_max: int
    """Largest frame body this server accepts."""
    idle_timeout_ms: int
    """The server closes the connection after this long without a frame."""


class Settings(_Frame, frozen=True, kw_only=True, gc=False):
    """Values of the sending server's configuration a client adapts to (0: not said).

    On the wire a list of (id, value) pairs: a receiver ignores ids it does not know, and a
    value of 0 is not sent. A receiver that does not know the frame skips it (its type is in
    the extension range), so servers send it to any client."""

    frame_type: ClassVar[FrameType] = FrameType.SETTINGS
    credential_lifetime_ms: int = 0
    """How long the session credentials this server issues are valid (SESSION_OPENED's from
    the manager, RESUME_OK's from a server): a client renews each well within it."""
    client_sessions_max: int = 0
    """The session manager's bound on the sessions it keeps bound to one client connection: a
    client holding more could not close the oldest (CLOSE_SESSION proves nothing by itself), so
    it opens no more."""


class OpenSession(_Frame, frozen=True, kw_only=True, gc=False):
    """A client asks for a new session with the given parts."""

    frame_type: ClassVar[FrameType] = FrameType.OPEN_SESSION
    request_id: int
    """Client-chosen id that SESSION_OPENED echoes."""
    parts: tuple[str, ...]
    """The part names the session starts with."""


class SessionOpened(_Frame, frozen=True, kw_only=True, gc=False):
    """The session exists; here is where its parts live."""

    frame_type: ClassVar[FrameType] = FrameType.SESSION_OPENED
    request_id: int
    """The OPEN_SESSION being answered."""
    session_id: bytes
    """The new session's id (16 bytes, UUIDv7)."""
    credential: bytes
    """The credential the client presents in HELLO to use this session on another connection."""
    map_version: int
    """The shard-map version the placements come from."""
    placements: tuple[Placement, ...]
    """One placement per part."""
    token: bytes
    """A resumption token for RESUME after a failover."""


class OpenSessionRefused(_Frame, frozen=True, kw_only=True, gc=False):
    """The manager will not open the session an OPEN_SESSION asked for, now (the manager is
    busy: `retry_after_ms` > 0) or at all (a part no server's app declares, a full map: 0).
    The connection stays open."""

    frame_type: ClassVar[FrameType] = FrameType.OPEN_SESSION_REFUSED
    request_id: int
    """The OPEN_SESSION refused."""
    reason: str = ""
    """Why, for the caller and logs."""
    retry_after_ms: int = 0
    """0: sending the same OPEN_SESSION again would not help; otherwise the client may send it
    again after at least this many milliseconds."""


class CloseSession(_Frame, frozen=True, kw_only=True, gc=False):
    """The sender ends a session; its state may be discarded."""

    frame_type: ClassVar[FrameType] = FrameType.CLOSE_SESSION
    session_id: bytes
    """The session being closed (16 bytes)."""


class Request(_Frame, frozen=True, kw_only=True, gc=False, repr_omit_defaults=True):
    """A client asks a part's primary to run one operation."""

    frame_type: ClassVar[FrameType] = FrameType.REQUEST
    request_id: int
    """Client-chosen id, unique per session (62 bits); retries reuse it for exactly-once."""
    session_id: bytes
    """The session (16 bytes)."""
    part: str
    """The part the operation runs on."""
    op: str
    """The operation name."""
    map_version: int
    """The newest shard-map version the client knows."""
    payload: bytes
    """The operation's argument, opaque to the protocol."""
    wait_budget_ms: int | None = None
    """How long the caller can still wait for the answer (0 to 2**32-1 ms), or None: a server
    parks a waiting read for at most this long. Sent when the call has a timeout of its own."""


class Response(_Frame, frozen=True, kw_only=True, gc=False):
    """The outcome of one REQUEST."""

    frame_type: ClassVar[FrameType] = FrameType.RESPONSE
    request_id: int
    """The REQUEST being answered."""
    session_id: bytes
    """The session (16 bytes)."""
    status: ResponseStatus
    """OK, or why not."""
    map_version: int
    """The shard-map version the server executed under."""
    payload: bytes
    """The result (or error detail), opaque to the protocol."""


class Redirect(_Frame, frozen=True, kw_only=True, gc=False):
    """The request named a part this server does not serve at the client's stale map version."""

    frame_type: ClassVar[FrameType] = FrameType.REDIRECT
    request_id: int
    """The REQUEST being redirected; the client re-sends it to a target."""
    session_id: bytes
    """The session (16 bytes)."""
    part: str
    """The part that lives elsewhere."""
    map_version: int
    """The newer shard-map version that moved it."""
    targets: tuple[Endpoint, ...]
    """Where the part lives now, most preferred first."""


class Handoff(_Frame, frozen=True, kw_only=True, gc=False):
    """The server asks the client to move parts of a session to another server."""

    frame_type: ClassVar[FrameType] = FrameType.HANDOFF
    sequence: int
    """Grows with every HANDOFF this server sends; a client ignores one not newer than the last."""
    session_id: bytes
    """The session (16 bytes)."""
    parts: tuple[str, ...]
    """The parts that move."""
    map_version: int
    """The shard-map version that assigns them to the targets."""
    reason: ReasonCode
    """Why they move."""
    flags: HandoffFlag
    """URGENT, MAKE_BEFORE_BREAK_REQUIRED, PREWARMED; unknown bits are kept."""
    deadline_ms: int
    """Milliseconds from receipt within which the client should have resumed on a target."""
    current: Endpoint
    """The server sending this frame, as the client knows it."""
    targets: tuple[Endpoint, ...]
    """Servers to resume on, most preferred first."""
    token: bytes
    """The resumption token RESUME presents to a target."""
    extensions: tuple[Extension, ...] = ()
    """TLV extensions; a receiver ignores types it does not know."""


class HandoffStatus(_Frame, frozen=True, kw_only=True, gc=False):
    """The client tells the source server how a HANDOFF is going."""

    frame_type: ClassVar[FrameType] = FrameType.HANDOFF_STATUS
    sequence: int
    """The HANDOFF's sequence number."""
    session_id: bytes
    """The session (16 bytes)."""
    state: HandoffState
    """ACCEPTED, COMPLETED, DECLINED or FAILED."""
    detail_code: int
    """Why, for DECLINED and FAILED: a ResumeRejectReason or ErrorCode value, else 0."""


class Resume(_Frame, frozen=True, kw_only=True, gc=False):
    """The client resumes parts of a session on this server with a token."""

    frame_type: ClassVar[FrameType] = FrameType.RESUME
    session_id: bytes
    """The session (16 bytes)."""
    token: bytes
    """The resumption token from HANDOFF or SESSION_OPENED."""
    parts: tuple[str, ...]
    """The parts to resume."""
    map_version: int
    """The newest shard-map version the client knows."""
    unanswered: tuple[int, ...] = ()
    """Request ids the client will re-send because it has no answer for them."""


class ResumeOk(_Frame, frozen=True, kw_only=True, gc=False):
    """The server accepts a RESUME and now serves the parts."""

    frame_type: ClassVar[FrameType] = FrameType.RESUME_OK
    session_id: bytes
    """The session (16 bytes)."""
    parts: tuple[str, ...]
    """The parts this server now serves."""
    map_version: int
    """The shard-map version it serves them under."""
    credential: bytes = b""
    """A fresh session credential, or empty to keep the old one."""


class ResumeReject(_Frame, frozen=True, kw_only=True, gc=False):
    """The server refuses a RESUME."""

    frame_type: ClassVar[FrameType] = FrameType.RESUME_REJECT
    session_id: bytes
    """The session (16 bytes)."""
    reason: ResumeRejectReason
    """Why."""
    message: str = ""
    """Human-readable detail for logs."""


class MapRequest(_Frame, frozen=True, kw_only=True, gc=False):
    """The client asks for shard-map entries newer than the version it has."""

    frame_type: ClassVar[FrameType] = FrameType.MAP_REQUEST
    map_version: int
    """The lowest map version the client holds among the parts it asks about."""
    credentials: tuple[Credential, ...] = ()
    """Credentials of sessions the client asks about, bound to the connection as HELLO's are."""


class MapUpdate(_Frame, frozen=True, kw_only=True, gc=False):
    """Shard-map entries, as a full map or as a delta from a base version."""

    frame_type: ClassVar[FrameType] = FrameType.MAP_UPDATE
    map_version: int
    """The version the receiver has after applying the body."""
    base_version: int
    """The version the delta applies to; 0 means the body is a full map."""
    encoding: int
    """The shard-map codec of the body, defined by forehand.placement."""
    body: bytes
    """The encoded entries, opaque to this layer."""


class Ping(_Frame, frozen=True, kw_only=True, gc=False):
    """An RTT probe; a client's PING also reports its path telemetry."""

    frame_type: ClassVar[FrameType] = FrameType.PING
    sequence: int
    """Chosen by the sender; PONG echoes it."""
    sent_us: int
    """The sender's clock when it sent the PING, in microseconds; PONG echoes it."""
    telemetry: tuple[PathSample, ...] = ()
    """The client's recent measurements of its paths to servers."""


class Pong(_Frame, frozen=True, kw_only=True, gc=False):
    """The answer to PING."""

    frame_type: ClassVar[FrameType] = FrameType.PONG
    sequence: int
    """The PING's sequence."""
    sent_us: int
    """The PING's sent_us, echoed."""


class GoAway(_Frame, frozen=True, kw_only=True, gc=False):
    """The server is draining: no new requests on this connection after last_request_id."""

    frame_type: ClassVar[FrameType] = FrameType.GOAWAY
    map_version: int
    """The shard-map version the client should fetch to find the parts' new homes."""
    reason: ReasonCode
    """Why the server drains."""
    last_request_id: int
    """Requests with higher ids were not and will not be processed; re-send them elsewhere."""


class Error(_Frame, frozen=True, kw_only=True, gc=False):
    """The sender closes the connection because of a protocol or internal error."""

    frame_type: ClassVar[FrameType] = FrameType.ERROR
    code: ErrorCode
    """What went wrong."""
    reason: str = ""
    """Human-readable detail for logs."""


class ClusterMessage(_Frame, frozen=True, kw_only=True, gc=False):
    """A cluster-internal message between servers and managers (forehand.core defines kinds)."""

    frame_type: ClassVar[FrameType] = FrameType.CLUSTER_MESSAGE
    kind: int
    """Which cluster message the body holds."""
    body: bytes
    """A msgpack message defined by forehand.core."""


Frame = (
    Hello
    | Welcome
    | Settings
    | OpenSession
    | SessionOpened
    | OpenSessionRefused
    | CloseSession
    | Request
    | Response
    | Redirect
    | Handoff
    | HandoffStatus
    | Resume
    | ResumeOk
    | ResumeReject
    | MapRequest
    | MapUpdate
    | Ping
    | Pong
    | GoAway
    | Error
    | ClusterMessage
)
"""Any `forehand/1` frame."""

FRAME_CLASSES: dict[FrameType, type[Frame]] = {
    cls.frame_type: cls
    for cls in (
        Hello,
        Welcome,
        Settings,
        OpenSession,
        SessionOpened,
        OpenSessionRefused,
        CloseSession,
        Request,
        Response,
        Redirect,
        Handoff,
        HandoffStatus,
        Resume,
        ResumeOk,
        ResumeReject,
        MapRequest,
        MapUpdate,
        Ping,
        Pong,
        GoAway,
        Error,
        ClusterMessage,
    )
}
"""The frame class of each frame type."""
