"""`ClientCore`: the sans-IO client of `forehand/1`.

The client holds sessions (each split into parts), a pool of connections keyed by server and
shared by all sessions, and a bounded table of requests in flight keyed by request id. It follows
HANDOFF make-before-break: it resumes at the target with the token while the source still
answers, re-sends what is unanswered with the same request ids, and only then switches. It follows
REDIRECT to newer placements, and when a connection dies without HANDOFF it asks the manager
where the parts live now (MAP_REQUEST, presenting the credentials of the sessions it locates, in
turns) and retries, with bounded, jittered backoff. Request ids never change across re-sends, so
the servers' dedup tables make each request execute once.

Transitions live in tables: `forehand.core._pool` (connections) and
`forehand.core._client_session` (part routes).
"""

from __future__ import annotations

import enum
import heapq
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from forehand.core._client_config import ClientConfig
from forehand.core._client_events import (
    ClientEvent,
    ConnectionClosed,
    ConnectionEstablished,
    CredentialRenewed,
    HandoffAbandoned,
    HandoffFollowed,
    HandoffIgnored,
    HandoffIgnoredWhy,
    HandoffStarted,
    MapVersionAdopted,
    PartRedirected,
    PartRelocated,
    ProtocolViolationDetected,
    RarePathTaken,
    RequestFailed,
    RequestFailedWhy,
    ResponseReceived,
    SessionClosed,
    SessionEstablished,
    SessionOpenFailed,
    SessionResumed,
    SessionResumeRejected,
)
from forehand.core._client_map import (
    PlacementView,
    Unchanged,
    endpoint_from_address,
    placement_view,
)
from forehand.core._client_session import InFlight, PartRoute, RouteState, RouteTrigger, Session
from forehand.core._driver import (
    ConnectionCloseRequested,
    ConnectionLost,
    ConnectionOpened,
    NodeId,
    Outbound,
)
from forehand.core._pool import (
    Connection,
    ConnectionPool,
    ConnectionState,
    ConnectionTrigger,
    PathStats,
    TransportCounters,
)
from forehand.core._server_config import CREDENTIAL_LIFETIME_MIN_MS
from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.placement import ShardMap, check_part_name
from forehand.wire import (
    DEFAULT_CONFIG,
    FRAME_BYTES_MAX_FLOOR,
    PROTOCOL_VERSION,
    SESSION_ID_BYTES,
    CloseSession,
    Credential,
    Endpoint,
    Error,
    ErrorCode,
    GoAway,
    Handoff,
    HandoffState,
    HandoffStatus,
    Hello,
    MapRequest,
    MapUpdate,
    OpenSession,
    OpenSessionRefused,
    PathSample,
    Ping,
    Placement,
    Pong,
    ReasonCode,
    Redirect,
    Request,
    Response,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
    SessionOpened,
    Settings,
    Welcome,
    WireConfig,
    encode_frame,
)

__all__ = [
    "CALL_TIMEOUT_MS_MAX",
    "REQUEST_ID_BITS",
    "BackpressureError",
    "ClientCore",
    "RouteView",
    "SessionSnapshot",
]

TRY_AGAIN_LOCATE_AFTER = 3
"""A request its part's primary answers TRY_AGAIN this many times (since the part was last
located for it) has the part located again (MAP_REQUEST) instead of being sent back there: a
primary fenced by a failover it cannot hear the end of (cut off from the manager) answers
TRY_AGAIN until its partition heals, while the manager already names the promoted replica."""

REQUEST_ID_BITS = 62
"""Request ids are 62-bit integers (a variable-length integer holds them)."""
_REQUEST_ID_START_BITS = 61
"""The first id is drawn below 2**61, so counting up never wraps in any realistic lifetime."""
_NO_DEADLINE_US = 1 << 126
"""Above every real deadline: what `timer_us` starts from."""
_RENEWAL_HEAP_SLACK = 1024
"""Stale entries the renewal heap may hold beyond twice the sessions before it is rebuilt."""
CALL_TIMEOUT_MS_MAX = 600_000
"""The longest timeout one call may ask for (`call(..., timeout_ms=)`): 10 minutes, twice the
longest wait of a waiting read."""
RENEW_INTERVAL_FLOOR_US = CREDENTIAL_LIFETIME_MIN_MS * 1000 // 2
"""The shortest renewal interval a credential lifetime stated in SETTINGS can bring (a second:
half the shortest lifetime a manager or server takes)."""
_BEFORE_WELCOME: frozenset[type] = frozenset({Welcome, Error, ConnectionOpened, ConnectionLost})
"""What a connection this client opened may carry before its WELCOME (docs/PROTOCOL.md section
3): anything else there is FRAME_UNEXPECTED."""

_HEARD_FRAMES: frozenset[type] = frozenset(
    {Welcome, Settings, Response, Redirect, Handoff, ResumeOk, ResumeReject, Ping, Pong, GoAway}
)
"""Frames that show a server found silent was not lost (`ClientCore._heard_again`): every
frame a server sends but ERROR, which closes the connection."""

_HELLO_REFUSALS = frozenset(
    {ResumeRejectReason.HELLO_CREDENTIAL_EXPIRED, ResumeRejectReason.CREDENTIAL_REFUSED}
)
"""The RESUME_REJECT reasons a server sends unasked after WELCOME: a credential in HELLO did not
bind (expired, or did not verify), so that session is not bound on the connection."""

_REQUEST_HEAD_BYTES_MAX = 64 + DEFAULT_CONFIG.part_name_bytes_max + DEFAULT_CONFIG.op_name_bytes_max
"""A REQUEST's frame beyond its payload, whatever its part and op (its header, fixed head and
wait budget take under 64 bytes)."""
_PAYLOAD_ALWAYS_FITS_BYTES = FRAME_BYTES_MAX_FLOOR - _REQUEST_HEAD_BYTES_MAX
"""A REQUEST whose payload is at most this long fits any server's `frame_bytes_max` (none may
announce less than the floor): only longer ones are encoded to check that they fit."""


class BackpressureError(LocalProtocolError):
    """The in-flight table (or the session table) is full: wait for answers before issuing more."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteView:
    """A read-only view of where one part is served, for applications and tests."""

    state: RouteState
    """The route's state."""
    primary: NodeId
    """The server requests go to (the old one while a handoff is in progress)."""
    backups: tuple[NodeId, ...]
    """Known backups, in promotion order."""
    map_version: int
    """The newest map version of the client's placement information for the part."""
    inflight: tuple[int, ...]
    """Unanswered request ids, in call order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSnapshot:
    """What an application persists to resume a session after a client restart."""

    session_id: bytes
    """The session."""
    credential: bytes
    """Its current credential (presented in HELLO when `resume_session` picks it up)."""
    placements: tuple[Placement, ...]
    """Where each part is served, as far as the client knows."""
    map_version: int
    """The newest map version among the parts' placements."""


class _ResumeKind(enum.Enum):
    HANDOFF = "handoff"
    RESTART = "restart"


class _Resumption:
    """A resumption in progress: following a HANDOFF (RESUME to each target in turn), or after a
    client restart (the credential presented in HELLO to the part's primary)."""

    __slots__ = (
        "deadline_us",
        "index",
        "kind",
        "map_version",
        "parts",
        "reason",
        "received_us",
        "sequence",
        "session_id",
        "source",
        "target_deadline_us",
        "targets",
        "token",
        "versions",
    )

    def __init__(
        self,
        *,
        kind: _ResumeKind,
        session_id: bytes,
        parts: tuple[str, ...],
        source: NodeId,
        targets: tuple[NodeId, ...],
        token: bytes,
        map_version: int,
        received_us: int,
        deadline_us: int,
        reason: ReasonCode = ReasonCode.UNSPECIFIED,
        sequence: int = 0,
        versions: dict[str, int] | None = None,
    ) -> None:
        self.kind = kind
        self.session_id = session_id
        self.parts = parts
        self.source = source
        self.targets = targets
        self.index = 0
        self.token = token
        self.map_version = map_version
        self.received_us = received_us
        self.deadline_us = deadline_us
        self.target_deadline_us = deadline_us
        self.reason = reason
        self.sequence = sequence
        self.versions = versions or {}
        """Each part's route map version before a HANDOFF raised it to the move's version."""

    @property
    def target(self) -> NodeId:
        return self.targets[self.index]


class _PendingOpen:
    """An OPEN_SESSION awaiting SESSION_OPENED."""

    __slots__ = ("attempts", "deadline_us", "issued_us", "parts", "request_id", "retry_at_us")

    def __init__(
        self, *, request_id: int, parts: tuple[str, ...], issued_us: int, deadline_us: int
    ) -> None:
        self.request_id = request_id
        self.parts = parts
        self.issued_us = issued_us
        self.deadline_us = deadline_us
        self.attempts = 0
        self.retry_at_us: int | None = None


_Handler = Callable[[Any, NodeId, int], None]


class ClientCore:
    """The client side of Forehand as a sans-IO state machine (see the module docstring)."""

    def __init__(self, *, config: ClientConfig, client_id: bytes, rng: random.Random) -> None:
        if len(client_id) != SESSION_ID_BYTES:
            raise LocalProtocolError(f"client ids are {SESSION_ID_BYTES} bytes")
        self._config = config
        self._client_id = client_id
        self._rng = rng
        self._pool = ConnectionPool(
            connections_max=config.connections_max,
            queue_frames_max=config.connection_queue_frames_max,
            rtt_samples_max=config.rtt_samples_max,
            paths_max=config.known_servers_max,
        )
        self._sessions: dict[bytes, Session] = {}
        self._init_requests()
        self._opens: dict[int, _PendingOpen] = {}
        self._resumptions: dict[tuple[bytes, NodeId], _Resumption] = {}
        self._parked: dict[tuple[bytes, NodeId], deque[_Resumption]] = {}
        """HANDOFF resumptions waiting while a RESUME of the same session at the same target is
        unanswered (one per key at a time: RESUME_OK and RESUME_REJECT name no request): sent
        once every RESUME there is answered (`_unpark`). At most one per HANDOFF of a held
        session."""
        # The servers the client trusts (from the manager's placements), each with the map
        # version its endpoint was learned at: a placement, HANDOFF or REDIRECT of a newer
        # version that names another address for the server replaces it (a restarted server
        # may listen elsewhere), an older one does not.
        self._endpoints: dict[NodeId, tuple[Endpoint, int]] = {}
        self._locating: dict[tuple[bytes, str], None] = {}
        self._closing: dict[NodeId, int] = {}
        self._bound: dict[NodeId, set[bytes]] = {}
        self._presented: dict[NodeId, set[bytes]] = {}
        self._binds: dict[tuple[bytes, NodeId], int] = {}
        self._resume_kinds: dict[tuple[bytes, NodeId], deque[bool]] = {}
        self._renewals: list[tuple[int, bytes]] = []
        """(due, session id) of each session's next credential renewal, a heap; an entry whose
        due time is no longer the session's (`_renew_due`) is skipped when it comes up, and the
        heap is rebuilt past twice the sessions plus `_RENEWAL_HEAP_SLACK` entries."""
        self._renew_due: dict[bytes, int] = {}
        """Each held session's next credential renewal (so at most `sessions_max` entries)."""
        self._renewing: dict[tuple[bytes, NodeId], bytes] = {}
        """(session, server) of the binding RESUMEs that renew a credential, unanswered, with
        the credential each sent."""
        self._stated = Settings()
        """What SETTINGS said: the shortest credential lifetime any cluster node stated, and the
        manager's `client_sessions_max` as its latest stated it (0: not said)."""
        self._probe_window_us = self._prewarm_due_us = self._probes_in_window = 0
        self._map_sent_us: int | None = None
        self._map_round_us = 0
        """When the newest MAP_REQUEST went: the backoff to the next round counts from it."""
        self._map_retry_us: int | None = None
        self._rechecks: dict[NodeId, dict[tuple[bytes, str], tuple[tuple[NodeId, ...], int]]] = {}
        """By server: the idle parts an answer placed back on the server they were lost from,
        waiting for a dial to check it (`_recheck`), with the answer's replicas and version. At
        most one entry per part the client holds (so bounded by `sessions_max`), and only while
        a connection to that server is opening: its WELCOME or its loss drops them."""
        self._map_held = False
        """While an input is handled: a MAP_REQUEST round that falls due waits for its end, so
        one round presents every session that input stranded (a lost connection strands all
        its sessions at once), not only the first."""
        self._map_rounds = 0
        self._map_presented: frozenset[bytes] = frozenset()
        """The sessions whose credentials the outstanding MAP_REQUEST presented: the manager's
        answer speaks for them, and a round without news counts against their parts only."""
        self._shard_map: ShardMap | None = None
        self._retry_heap: list[tuple[int, int]] = []
        self._deferred: list[tuple[Session, PartRoute]] = []
        """Parts whose calls wait for `send_deferred`, in call order (a part may repeat); at
        most `inflight_requests_max` (past that, calls go out at once)."""
        self._ping_due_us = _NO_DEADLINE_US
        """At most the earliest `next_ping_us` of the pool's connections: lowered wherever one is
        set, made exact again by `_send_pings`. Kept so that `timer_us`, which the driver asks after
        every input, does not walk the pool; a connection that went away since leaves it early,
        which costs one timer firing that finds nothing due."""
        self._next_request_id = rng.randrange(1, 1 << _REQUEST_ID_START_BITS)
        self._map_version = 0
        self._outbox: list[Outbound] = []
        self._events: deque[ClientEvent] = deque()
        self._handlers: dict[type, _Handler] = {
            Welcome: self._on_welcome,
            Settings: self._on_settings,
            SessionOpened: self._on_session_opened,
            OpenSessionRefused: self._on_open_session_refused,
            Response: self._on_response,
            Redirect: self._on_redirect,
            Handoff: self._on_handoff,
            ResumeOk: self._on_resume_ok,
            ResumeReject: self._on_resume_reject,
            MapUpdate: self._on_map_update,
            Ping: self._on_ping,
            Pong: self._on_pong,
            GoAway: self._on_goaway,
            CloseSession: self._on_close_session,
            Error: self._on_error,
            ConnectionLost: self._on_connection_lost,
            ConnectionOpened: self._on_connection_opened,
        }

    # Driver shape.

    @property
    def node_id(self) -> NodeId:
        """This client's node name."""
        return self._config.node_id

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        """Feed one frame (or connection input) that arrived from `source`.

        Nothing a peer sends raises out of the core: a frame the client does not accept, or one
        that does not decode, gets ERROR and closes that peer's connection only.
        """
        kind = type(message)
        handler = self._handlers.get(kind)
        self._map_held = True
        try:
            if handler is None:
                raise RemoteProtocolError(
                    f"a client does not accept {kind.__name__}",
                    error_code=ErrorCode.FRAME_UNEXPECTED,
                )
            if kind not in _BEFORE_WELCOME:
                connection = self._pool.get(source)
                if connection is not None and connection.state is ConnectionState.CONNECTING:
                    raise RemoteProtocolError(
                        f"{kind.__name__} before WELCOME", error_code=ErrorCode.FRAME_UNEXPECTED
                    )
            if self._silent_marked and source in self._silent_marked and kind in _HEARD_FRAMES:
                # Any frame from a server found silent says it was not lost (a late PONG, an
                # answer, a REDIRECT of a planned move): before its handler re-sends anything.
                self._heard_again(source)
            handler(message, source, now_us)
            if self._parked:
                self._unpark(now_us)
        except RemoteProtocolError as error:
            self._reject_peer(source, ErrorCode.from_wire(error.error_code), str(error), now_us)
        finally:
            self._map_held = False
        if self._map_retry_us is not None:
            # Only while parts are being located: most inputs are answers to calls.
            self._send_due_map_request(now_us)

    def handle_timer(self, *, now_us: int) -> None:
        """Fail expired requests, retry, time out resumes, re-ask the manager, ping servers."""
        self._map_held = True
        try:
            self._expire_requests(now_us)
            self._expire_opens(now_us)
            self._run_retries(now_us)
            self._check_resumptions(now_us)
            if self._parked:
                self._unpark(now_us)
            self._renew_credentials(now_us)
        finally:
            self._map_held = False
        self._check_map_request(now_us)
        self._send_pings(now_us)

    def store_result(self, result: object, *, now_us: int) -> None:
        """The client emits no store requests, so no result can be due."""
        raise LocalProtocolError("ClientCore issues no store requests")

    def messages_to_send(self) -> list[Outbound]:
        """Drain the frames produced since the last call, in send order."""
        outbox, self._outbox = self._outbox, []
        return outbox

    def store_requests(self) -> list[object]:
        """Always empty: the client keeps no durable state of its own."""
        return []

    def next_event(self) -> ClientEvent | None:
        """Pop the oldest event, or None."""
        return self._events.popleft() if self._events else None

    def timer_us(self) -> int | None:
        """The earliest deadline among requests, retries, resumes, map requests and pings."""
        # The driver asks after every input, so this builds no list and walks no table that is
        # not empty: requests time out in call order (the oldest is first), and the pings' due
        # time is kept as it changes.
        earliest = self._ping_due_us
        if self._timed:
            earliest = min(earliest, next(iter(self._timed.values())).deadline_us)
        if self._own_deadlines:
            # Perhaps of a request answered since: the timer then finds nothing to do.
            earliest = min(earliest, self._own_deadlines[0][0])
        if self._opens:
            earliest = min(earliest, next(iter(self._opens.values())).deadline_us)
        if self._retry_heap:
            earliest = min(earliest, self._retry_heap[0][0])
        if self._resumptions:
            for resumption in self._resumptions.values():
                earliest = min(earliest, resumption.target_deadline_us)
        if self._parked:
            for waiting in self._parked.values():
                for resumption in waiting:
                    earliest = min(earliest, resumption.deadline_us)
        if self._map_sent_us is not None:
            earliest = min(earliest, self._map_sent_us + self._config.map_request_timeout_ms * 1000)
        if self._map_retry_us is not None:
            earliest = min(earliest, self._map_retry_us)
        if self._sessions and self._config.prewarm_probe_targets:
            earliest = min(earliest, self._prewarm_due_us)
        if self._renewals:
            earliest = min(earliest, self._renewals[0][0])
        return None if earliest == _NO_DEADLINE_US else earliest

    # Read-only views.

    @property
    def client_id(self) -> bytes:
        """The 16-byte client id HELLO presents."""
        return self._client_id

    @property
    def map_version(self) -> int:
        """The newest shard-map version the client has seen (never decreases)."""
        return self._map_version

    @property
    def inflight_count(self) -> int:
        """Requests and session opens awaiting an answer (bounded by `inflight_requests_max`)."""
        return len(self._inflight) + len(self._opens)

    def session_ids(self) -> tuple[bytes, ...]:
        """The sessions the client holds, in the order they were opened."""
        return tuple(self._sessions)

    def route(self, session_id: bytes, part: str) -> RouteView:
        """Where `part` of `session_id` is served, as the client knows it."""
        route = self._route(session_id, part)
        return RouteView(
            state=route.state,
            primary=route.primary,
            backups=route.backups,
            map_version=route.map_version,
            inflight=tuple(route.inflight),
        )

    def connection_state(self, server: NodeId) -> ConnectionState:
        """The pooled connection's state (CLOSED when there is none)."""
        connection = self._pool.get(server)
        return ConnectionState.CLOSED if connection is None else connection.state

    def endpoint(self, server: NodeId) -> Endpoint | None:
        """Where `server` listens, as placements told the client; the runtime connects there."""
        known = self._endpoints.get(server)
        return None if known is None else known[0]

    def path_stats(self) -> dict[NodeId, PathStats]:
        """RTT statistics per server measured with PING/PONG (bounded samples)."""
        return self._pool.paths()

    def closes_unsent(self) -> int:
        """CLOSE_SESSIONs still queued behind a connection that is opening (a closed session
        whose manager or server connection was not up yet): the SDK's `Client.close` waits for
        them to go, or a session closed just before the client would stay open there."""
        return sum(
            sum(1 for frame in connection.queue if isinstance(frame, CloseSession))
            for connection in self._pool
        )

    def session_snapshot(self, session_id: bytes) -> SessionSnapshot:
        """What to persist so `resume_session` can pick the session up after a restart."""
        session = self._session(session_id)
        placements = tuple(
            Placement(
                part=route.name,
                primary=self._endpoint_or_bare(route.primary),
                replicas=tuple(self._endpoint_or_bare(b) for b in route.backups),
            )
            for route in session.parts.values()
        )
        return SessionSnapshot(
            session_id=session_id,
            credential=session.credential,
            placements=placements,
            map_version=max((r.map_version for r in session.parts.values()), default=0),
        )

    # Commands.

    def open_session(self, parts: tuple[str, ...], *, now_us: int) -> int:
        """Ask the manager for a new session with `parts`; returns the request id to match.

        LocalProtocolError at once for parts the manager would refuse (none, repeated, more
        than 64, a name that is not a part name), rather than a refusal that closes the
        manager connection and an open that fails only when its retries run out."""
        if not isinstance(parts, tuple):
            # A str would open one part per letter.
            raise LocalProtocolError(f"parts must be a tuple of part names, got {parts!r}")
        for part in parts:
            check_part_name(part)
        if not parts or len(set(parts)) != len(parts) or len(parts) > DEFAULT_CONFIG.parts_max:
            raise LocalProtocolError(f"a session needs distinct parts (at most 64), got {parts!r}")
        self._check_session_room()
        self._check_inflight_room()
        request_id = self._new_request_id()
        pending = _PendingOpen(
            request_id=request_id,
            parts=tuple(parts),
            issued_us=now_us,
            deadline_us=now_us + self._config.request_timeout_ms * 1000,
        )
        self._opens[request_id] = pending
        self._send_open(pending, now_us)
        return request_id

    def resume_session(
        self,
        session_id: bytes,
        credential: bytes,
        placements: tuple[Placement, ...],
        *,
        map_version: int,
        now_us: int,
    ) -> None:
        """Take a session back after a client restart: its credential goes to each primary.

        The credential (long-lived, reusable) rides in the HELLO of the connection to each part's
        primary; calls wait until that server answers WELCOME (`SessionResumed`), and the
        credential is renewed at once. A server that refuses the credential closes the
        connection (or, for an expired one, follows its WELCOME with RESUME_REJECT), and the
        parts are located through the manager (`SessionResumeRejected`). No RESUME is sent to
        take the parts back: a single-use token could not cover primaries on several servers.
        """
        if session_id in self._sessions:
            raise LocalProtocolError("the client already holds this session")
        self._check_session_room()
        session = self._new_session(session_id, credential, placements, map_version, now_us)
        by_primary: dict[NodeId, list[str]] = {}
        for route in session.parts.values():
            by_primary.setdefault(route.primary, []).append(route.name)
        for primary, names in by_primary.items():
            for name in names:
                session.parts[name].fire(RouteTrigger.RESTARTED)
            resumption = _Resumption(
                kind=_ResumeKind.RESTART,
                session_id=session_id,
                parts=tuple(names),
                source=primary,
                targets=(primary,),
                token=b"",
                map_version=map_version,
                received_us=now_us,
                deadline_us=now_us + self._config.resume_timeout_ms * 1000,
            )
            self._present_credential(resumption, now_us)

    def _init_requests(self) -> None:
        """The requests in flight, and when each times out."""
        self._inflight: dict[int, InFlight] = {}
        self._timed: dict[int, InFlight] = {}
        """The requests in flight with the default `request_timeout_ms`, in call order, which is
        the order of their deadlines: the oldest times out first."""
        self._own_deadlines: list[tuple[int, int]] = []
        """(deadline, request id) of the requests in flight with a timeout of their own
        (`call(..., timeout_ms=)`), a heap: an entry whose request was answered is skipped when
        it comes up, and the heap is rebuilt past twice the requests in flight plus
        `_RENEWAL_HEAP_SLACK` entries."""
        self._silent_marked: set[NodeId] = set()
        """Servers found silent with calls in flight there (`InFlight.lost_on`), until a frame
        from them (`_heard_again`) or the loss of their connection: at most the pool's
        connections."""

    def call(
        self,
        session_id: bytes,
        part: str,
        op: str,
        payload: bytes,
        *,
        now_us: int,
        defer_send: bool = False,
        timeout_ms: int | None = None,
    ) -> int:
        """Send one operation to a part; returns its request id (the answer comes as an event).

        `timeout_ms` (1 to `CALL_TIMEOUT_MS_MAX`) replaces `request_timeout_ms` for this call:
        a waiting read (an op the server parks until a write, up to its `wait_ms`) needs longer.

        With `defer_send`, a request that would go out now waits for `send_deferred`: a driver
        that issues many calls in one turn of its loop sends them together (grouped by server),
        instead of draining the core after each. The request is issued all the same (its id,
        its `issued_us`, its deadline, its place in the part's call order); only its frame is
        built later, from what the client knows then.
        """
        session = self._session(session_id)
        route = session.parts.get(part)
        if route is None:
            raise LocalProtocolError(f"session {session_id.hex()} has no part {part!r}")
        self._check_request_fits(session_id, route, op, payload)
        self._check_inflight_room()
        if timeout_ms is not None and (
            isinstance(timeout_ms, bool)
            or not isinstance(timeout_ms, int)
            or not 1 <= timeout_ms <= CALL_TIMEOUT_MS_MAX
        ):
            raise LocalProtocolError(
                f"timeout_ms must be an int from 1 to {CALL_TIMEOUT_MS_MAX}, got {timeout_ms!r}"
            )
        request_id = self._new_request_id()
        route.issue_counter += 1
        entry = InFlight(
            request_id=request_id,
            session_id=session_id,
            part=part,
            op=op,
            payload=payload,
            issue_sequence=route.issue_counter,
            issued_us=now_us,
            deadline_us=now_us + (timeout_ms or self._config.request_timeout_ms) * 1000,
            own_timeout=timeout_ms is not None,
        )
        self._inflight[request_id] = entry
        if timeout_ms is None:
            self._timed[request_id] = entry
        else:
            self._own_deadline(entry)
        route.inflight[request_id] = entry
        if route.state is RouteState.ACTIVE:
            if defer_send and len(self._deferred) < self._config.inflight_requests_max:
                self._deferred.append((session, route))
                return request_id
            if len(route.inflight) == 1:
                # Nothing earlier of the part is unanswered: the flush would send this one alone.
                self._dispatch(session, route, entry, now_us)
                return request_id
        if route.state is RouteState.LOCATING and (session_id, part) not in self._locating:
            # The part gave up locating earlier; a new call is a reason to try again.
            route.locate_attempts = 0
            self._start_locating(session, route, now_us)
        # Through the flush, so that the call waits behind earlier ones held for a retry.
        self._flush(session, route, now_us, moved=False)
        return request_id

    def send_deferred(self, *, now_us: int) -> None:
        """Send the requests `call(..., defer_send=True)` left waiting, in call order per part,
        the parts grouped by primary so that each server's frames leave together.

        A part that stopped being ACTIVE meanwhile holds its requests as any held request: they
        go out, in order, when it is ACTIVE again.
        """
        deferred, self._deferred = self._deferred, []
        by_primary: dict[NodeId, list[tuple[Session, PartRoute]]] = {}
        for session, route in deferred:
            if route.state is RouteState.ACTIVE:
                by_primary.setdefault(route.primary, []).append((session, route))
        for routes in by_primary.values():
            for session, route in routes:
                self._flush(session, route, now_us, moved=False)

    def close_session(self, session_id: bytes, *, now_us: int) -> None:
        """End a session: its unanswered requests fail, the manager and servers are told."""
        self._end_session(self._session(session_id), now_us, closed_by=None)

    def _end_session(
        self, session: Session, now_us: int, *, closed_by: NodeId | None, detail: str = ""
    ) -> None:
        """Fail the session's requests, tell every peer but `closed_by`, forget it."""
        session_id = session.session_id
        for route in session.parts.values():
            for entry in list(route.inflight.values()):
                self._fail(entry, RequestFailedWhy.SESSION_CLOSED, now_us)
            route.fire(RouteTrigger.SESSION_CLOSED)
            self._locating.pop((session_id, route.name), None)
        for key in [k for k in self._resumptions if k[0] == session_id]:
            del self._resumptions[key]
        for key in [k for k in self._parked if k[0] == session_id]:
            del self._parked[key]
        for key in [k for k in self._binds if k[0] == session_id]:
            del self._binds[key]
        self._renew_due.pop(session_id, None)
        for key in [k for k in self._renewing if k[0] == session_id]:
            del self._renewing[key]
        servers = dict.fromkeys(r.primary for r in session.parts.values())
        for server in servers:
            connection = self._pool.get(server)
            if server != closed_by and connection is not None and connection.authenticated:
                self._outbox.append(
                    Outbound(destination=server, message=CloseSession(session_id=session_id))
                )
        if closed_by != self._config.manager_node_id:
            self._send(self._config.manager_node_id, CloseSession(session_id=session_id), now_us)
        del self._sessions[session_id]
        for bound in self._bound.values():
            bound.discard(session_id)
        self._emit(
            SessionClosed(
                node=self.node_id, session_id=session_id, closed_by=closed_by, detail=detail
            )
        )

    def _on_close_session(self, frame: CloseSession, source: NodeId, now_us: int) -> None:
        """A server or the manager ended a session (CLOSE_SESSION goes either way, section 5.5):
        a server only for a session bound on its connection, the manager for any of this
        client's; anything else is ignored."""
        session = self._sessions.get(frame.session_id)
        bound = source == self._config.manager_node_id or frame.session_id in self._bound.get(
            source, ()
        )
        if session is None or not bound:
            self._rare("close-session-not-bound")
            return
        self._end_session(session, now_us, closed_by=source)

    def prewarm(self, session_id: bytes, part: str, *, now_us: int) -> NodeId | None:
        """Open the connection to the part's first backup before any handoff needs it."""
        route = self._route(session_id, part)
        backup = next((b for b in route.backups if b != route.primary), None)
        if backup is None:
            return None
        if self._pool.get(backup) is None and self._connect(backup, now_us) is None:
            return None
        return backup

    # Helpers shared by the handlers.

    def _emit(self, event: ClientEvent) -> None:
        self._events.append(event)

    def _rare(self, name: str) -> None:
        self._emit(RarePathTaken(node=self.node_id, name=name))

    def _session(self, session_id: bytes) -> Session:
        session = self._sessions.get(session_id)
        if session is None:
            raise LocalProtocolError(f"unknown session {session_id.hex()}")
        return session

    def _route(self, session_id: bytes, part: str) -> PartRoute:
        route = self._session(session_id).parts.get(part)
        if route is None:
            raise LocalProtocolError(f"session {session_id.hex()} has no part {part!r}")
        return route

    def _endpoint_or_bare(self, server: NodeId) -> Endpoint:
        known = self._endpoints.get(server)
        return endpoint_from_address(server, "") if known is None else known[0]

    def _check_request_fits(
        self, session_id: bytes, route: PartRoute, op: str, payload: bytes
    ) -> None:
        """Refuse, before anything is issued, a call whose REQUEST the wire would not encode, or
        that is longer than the part's server announced it accepts: its frame is built later (a
        deferred send, a re-send), where the error would reach no caller and could take the
        frames sent with it down too."""
        if type(op) is not str:
            raise LocalProtocolError(
                f"the call cannot be sent: op must be a string, not {type(op).__name__}"
            )
        op_bytes = len(op.encode())
        if not 0 < op_bytes <= DEFAULT_CONFIG.op_name_bytes_max:
            raise LocalProtocolError(
                f"the call cannot be sent: op {op[:80]!r} is {op_bytes} bytes, not 1 to "
                f"op_name_bytes_max={DEFAULT_CONFIG.op_name_bytes_max}"
            )
        if len(payload) <= _PAYLOAD_ALWAYS_FITS_BYTES:
            return
        frame = Request(
            request_id=0,
            session_id=session_id,
            part=route.name,
            op=op,
            map_version=0,
            payload=payload,
        )
        if len(payload) > DEFAULT_CONFIG.frame_bytes_max - _REQUEST_HEAD_BYTES_MAX:
            try:
                encode_frame(frame, config=DEFAULT_CONFIG)
            except LocalProtocolError as error:
                raise LocalProtocolError(f"the call cannot be sent: {error}") from None
        announced = self._announced_wire(route.primary)
        if self._too_long(frame, announced):
            assert announced is not None
            raise LocalProtocolError(
                f"the call cannot be sent: its REQUEST is longer than the frame_bytes_max="
                f"{announced.frame_bytes_max} that {route.primary}, the part's server, accepts"
            )

    def _announced_wire(self, server: NodeId) -> WireConfig | None:
        """The bounds of the server's WELCOME, when it accepts less than the client's own."""
        connection = self._pool.get(server)
        return None if connection is None else connection.announced_wire

    @staticmethod
    def _too_long(frame: Request, announced: WireConfig | None) -> bool:
        """Whether `frame` is longer than a server that announced `announced` accepts (None:
        the client's own bound, which `call` already checked)."""
        if announced is None or len(frame.payload) <= (
            announced.frame_bytes_max - _REQUEST_HEAD_BYTES_MAX
        ):
            return False
        try:
            encode_frame(frame, config=announced)
        except LocalProtocolError:
            return True
        return False

    def _own_deadline(self, entry: InFlight) -> None:
        deadlines = self._own_deadlines
        heapq.heappush(deadlines, (entry.deadline_us, entry.request_id))
        if len(deadlines) > 2 * len(self._inflight) + _RENEWAL_HEAP_SLACK:
            inflight = self._inflight
            deadlines[:] = [(due, key) for due, key in deadlines if key in inflight]
            heapq.heapify(deadlines)

    def _check_inflight_room(self) -> None:
        if len(self._inflight) + len(self._opens) >= self._config.inflight_requests_max:
            raise BackpressureError(
                f"inflight_requests_max={self._config.inflight_requests_max} requests await "
                "answers; wait for some before calling again"
            )

    def _check_session_room(self) -> None:
        """BackpressureError unless the client may hold one more session: below its own
        `sessions_max` and the manager's `client_sessions_max` (SETTINGS), past which the
        manager forgets the oldest sessions of the connection and ignores their CLOSE_SESSION."""
        held = len(self._sessions) + len(self._opens)
        own = self._config.sessions_max
        if held >= own:
            raise BackpressureError(
                f"the client holds sessions_max={own} sessions (opening or open); close some, "
                "or raise ClientConfig.sessions_max"
            )
        stated = self._stated.client_sessions_max
        if stated and held >= stated:
            raise BackpressureError(
                f"the client holds {held} sessions (opening or open), the most the manager keeps "
                f"for one client (its client_sessions_max={stated}); close some, or raise the "
                "manager's client_sessions_max"
            )

    def _new_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id = request_id + 1 if request_id + 1 < 1 << REQUEST_ID_BITS else 1
        return request_id

    def _backoff_us(self, attempt: int) -> int:
        """Delay before retry number `attempt` (0: none), exponential, capped, jittered."""
        if attempt <= 0:
            return 0
        config = self._config
        base_ms = min(config.retry_backoff_ms << min(attempt - 1, 30), config.retry_backoff_max_ms)
        ratio = config.retry_jitter_ratio
        factor = self._rng.uniform(1.0 - ratio, 1.0 + ratio) if ratio else 1.0
        return max(1, int(base_ms * 1000 * factor))

    def _adopt_map_version(self, map_version: int) -> None:
        if map_version > self._map_version:
            previous, self._map_version = self._map_version, map_version
            self._emit(
                MapVersionAdopted(
                    node=self.node_id, map_version=map_version, previous_map_version=previous
                )
            )

    def _remember(self, endpoint: Endpoint, map_version: int) -> None:
        """Trust `endpoint` as a cluster member (it came from the manager's placements of
        `map_version`), unless a newer version named the server at another address."""
        server_id = endpoint.server_id
        if server_id not in self._endpoints and len(self._endpoints) >= (
            self._config.known_servers_max
        ):
            self._rare("known-servers-full")
        elif server_id not in self._endpoints or map_version >= self._endpoints[server_id][1]:
            self._endpoints[server_id] = (endpoint, map_version)

    def _readdress(self, targets: tuple[Endpoint, ...], map_version: int) -> None:
        """A HANDOFF or REDIRECT of `map_version` from a server names `targets`, each a known
        server: one whose address differs from the one known, learned at an older version, is
        dialled at the new one (a restarted server on another port or host; before, the client
        dialled the old address, failed, and asked the manager). The target still has to prove
        its id with its certificate. The new address keeps the old one's version, so the
        manager's next placement of it, whatever it says, wins over a server's word; and a
        placeholder (a server whose map had no address for the target) changes nothing."""
        for target in targets:
            known = self._endpoints.get(target.server_id)
            if (
                known is not None
                and known[0] != target
                and map_version > known[1]
                and target != endpoint_from_address(target.server_id, "")
            ):
                self._endpoints[target.server_id] = (target, known[1])
                self._rare("endpoint-readdressed")

    def _new_session(
        self,
        session_id: bytes,
        credential: bytes,
        placements: tuple[Placement, ...],
        map_version: int,
        now_us: int,
    ) -> Session:
        session = Session(session_id, credential=credential)
        self._renew_at(session_id, now_us + self._renew_interval_us())
        for placement in placements:
            self._remember(placement.primary, map_version)
            for replica in placement.replicas:
                self._remember(replica, map_version)
            session.parts[placement.part] = PartRoute(
                placement.part,
                primary=placement.primary.server_id,
                backups=tuple(r.server_id for r in placement.replicas),
                map_version=map_version,
            )
        self._sessions[session_id] = session
        self._adopt_map_version(map_version)
        return session

    # Connections.

    def _send(self, destination: NodeId, frame: object, now_us: int) -> bool:
        """Send now when the connection is up, queue it while connecting, connect when absent."""
        connection = self._pool.get(destination)
        if connection is None:
            connection = self._connect(destination, now_us)
            if connection is None:
                return False
        if connection.state is ConnectionState.CONNECTING:
            if connection.enqueue(frame):
                return True
            self._rare("connection-queue-full")
            return False
        self._outbox.append(Outbound(destination=destination, message=frame))
        return True

    def _connect(self, server: NodeId, now_us: int) -> Connection | None:
        connection = self._pool.open(server, now_us=now_us)
        if connection is None and self._evict_idle_connection(now_us):
            connection = self._pool.open(server, now_us=now_us)
        if connection is None:
            self._rare("connection-pool-full")
            return None
        hello = Hello(
            versions=(PROTOCOL_VERSION,),
            client_id=self._client_id,
            credentials=self._credentials_for(server),
        )
        self._presented[server] = {credential.session_id for credential in hello.credentials}
        if server == self._config.manager_node_id:
            for credential in hello.credentials:
                self._sessions[credential.session_id].manager_credential = credential.credential
        self._bound.pop(server, None)
        if self._closing.get(server):
            # The previous connection's loss notice is still due: a frame sent now could go out
            # on the dying connection, so HELLO (and what queues behind it) waits for the notice.
            connection.deferred_hello = hello
        else:
            self._outbox.append(Outbound(destination=server, message=hello))
        return connection

    def _credentials_for(self, server: NodeId) -> tuple[Credential, ...]:
        """Credentials for HELLO, at most `hello_credentials_max` of them.

        To a server: the sessions with a part on it (primary or backup); the others' would only
        make it open more credentials. To the manager:
        every session, those with a part that is not ACTIVE first, since the manager answers
        MAP_REQUEST only for the sessions a connection proved it holds.
        """
        if server == self._config.manager_node_id:
            sessions = sorted(
                self._sessions.values(),
                key=lambda s: all(r.state is RouteState.ACTIVE for r in s.parts.values()),
            )
        else:
            sessions = [
                session
                for session in self._sessions.values()
                if any(server in route.servers() for route in session.parts.values())
            ]
        return tuple(
            Credential(session_id=session.session_id, credential=session.credential)
            for session in sessions[: self._config.hello_credentials_max]
        )

    def _on_connection_opened(self, message: ConnectionOpened, source: NodeId, now_us: int) -> None:
        """The transport is up; HELLO (already sent or queued by the driver) does the rest."""

    def _on_welcome(self, frame: Welcome, source: NodeId, now_us: int) -> None:
        connection = self._pool.get(source)
        if connection is None:
            self._rare("welcome-without-hello")
            return
        if connection.state is not ConnectionState.CONNECTING:
            self._reject_peer(source, ErrorCode.FRAME_UNEXPECTED, "second WELCOME", now_us)
            return
        connection.fire(ConnectionTrigger.WELCOME_RECEIVED)
        connection.map_version = frame.map_version
        connection.announced_wire = (
            replace(DEFAULT_CONFIG, frame_bytes_max=frame.frame_bytes_max)
            if frame.frame_bytes_max < DEFAULT_CONFIG.frame_bytes_max
            else None
        )
        # A WELCOME binds every session the HELLO presented, but those a RESUME_REJECT
        # (HELLO_CREDENTIAL_EXPIRED, CREDENTIAL_REFUSED) right after it unbinds.
        self._bound.setdefault(source, set()).update(self._presented.pop(source, set()))
        self._adopt_map_version(frame.map_version)
        announced = connection.announced_wire
        while connection.queue:
            queued = connection.queue.popleft()
            if type(queued) is Request and self._too_long(queued, announced):
                # Queued before WELCOME said how much this server accepts: sent, it would close
                # the connection (FRAME_TOO_LARGE).
                # A copy left here after the request went to another server is only dropped.
                entry = self._inflight.get(queued.request_id)
                if entry is not None and entry.server == source:
                    self._rare("request-too-large-for-server")
                    self._fail(entry, RequestFailedWhy.TOO_LARGE, now_us)
                continue
            self._outbox.append(Outbound(destination=source, message=queued))
        if source != self._config.manager_node_id:
            connection.next_ping_us = now_us + self._config.ping_interval_ms * 1000
            self._ping_due_us = min(self._ping_due_us, connection.next_ping_us)
            if source in self._rechecks:
                self._recheck_passed(source, now_us)
        elif self._map_sent_us is not None:
            # A MAP_REQUEST queued for this connection went out with the queue.
            self._ping_manager_soon(now_us)
        self._emit(
            ConnectionEstablished(node=self.node_id, server=source, map_version=frame.map_version)
        )
        for key, resumption in list(self._resumptions.items()):
            if key[1] == source and resumption.kind is _ResumeKind.RESTART:
                self._restart_resumed(resumption, now_us)

    def _evict_idle_connection(self, now_us: int) -> bool:
        """Close the oldest connection nothing uses (no primary, request, resume or manager)."""
        busy = {self._config.manager_node_id}
        busy.update(key[1] for key in self._resumptions)
        busy.update(entry.server for entry in self._inflight.values() if entry.server is not None)
        for session in self._sessions.values():
            busy.update(route.primary for route in session.parts.values())
        idle = next((c.server for c in self._pool if c.server not in busy), None)
        if idle is None:
            return False
        self._rare("idle-connection-evicted")
        self._request_close(idle, ErrorCode.NO_ERROR, "idle connection evicted", now_us)
        return True

    def _reject_peer(self, peer: NodeId, code: ErrorCode, reason: str, now_us: int) -> None:
        """The peer broke the protocol: tell it why, close only its connection, move on."""
        self._emit(
            ProtocolViolationDetected(
                node=self.node_id, peer=peer, error_code=int(code), reason=reason
            )
        )
        self._outbox.append(Outbound(destination=peer, message=Error(code=code, reason=reason)))
        self._request_close(peer, code, reason, now_us)

    def _request_close(self, peer: NodeId, code: ErrorCode, reason: str, now_us: int) -> None:
        """Ask the driver to close the connection to `peer`; its loss notice is then expected."""
        close = ConnectionCloseRequested(peer=peer, error_code=int(code), reason=reason)
        self._outbox.append(Outbound(destination=peer, message=close))
        # One loss notice is due per closed connection; each is consumed when it arrives.
        self._closing[peer] = self._closing.get(peer, 0) + 1
        self._close(peer, ConnectionTrigger.CLOSE_REQUESTED, f"closed by client: {reason}", now_us)

    def _on_connection_lost(self, message: ConnectionLost, source: NodeId, now_us: int) -> None:
        peer = message.peer
        expected = self._closing.get(peer, 0)
        if not expected:
            self._close(peer, ConnectionTrigger.LOST, message.reason or "lost", now_us)
            return
        # The notice of a connection this client already closed: a newer connection to the same
        # peer is not the one that was lost, and may now say HELLO.
        if expected > 1:
            self._closing[peer] = expected - 1
            return
        del self._closing[peer]
        connection = self._pool.get(peer)
        if connection is not None and connection.deferred_hello is not None:
            hello, connection.deferred_hello = connection.deferred_hello, None
            self._outbox.append(Outbound(destination=peer, message=hello))

    def _on_error(self, frame: Error, source: NodeId, now_us: int) -> None:
        """The peer closes the connection: close it from this side too and move on."""
        connection = self._pool.get(source)
        if connection is None:
            self._rare("error-on-closed-connection")
            return
        detail = f"ERROR {frame.code.name}: {frame.reason}"
        close = ConnectionCloseRequested(peer=source, error_code=int(frame.code), reason=detail)
        self._outbox.append(Outbound(destination=source, message=close))
        self._closing[source] = self._closing.get(source, 0) + 1
        self._close(source, ConnectionTrigger.ERROR_RECEIVED, detail, now_us)

    def _close(self, peer: NodeId, trigger: ConnectionTrigger, detail: str, now_us: int) -> None:
        """A connection is gone: move what depended on it elsewhere."""
        if self._pool.close(peer, trigger) is None:
            return
        self._forget_bindings(peer)
        self._silent_marked.discard(peer)
        # A failed check leaves its parts LOCATING, in the rounds' turns.
        self._rechecks.pop(peer, None)
        self._emit(ConnectionClosed(node=self.node_id, server=peer, detail=detail))
        if peer == self._config.manager_node_id:
            self._manager_lost(detail, now_us)
            return
        for key, resumption in list(self._resumptions.items()):
            if key[1] == peer:
                self._target_failed(resumption, f"connection lost: {detail}", 0, now_us)
        for session in list(self._sessions.values()):
            for route in session.parts.values():
                self._server_lost(session, route, peer, now_us)

    def _server_lost(self, session: Session, route: PartRoute, peer: NodeId, now_us: int) -> None:
        stranded = [entry for entry in route.inflight.values() if entry.server == peer]
        for entry in stranded:
            entry.server = None
            entry.lost_on = peer
        if route.state is RouteState.ACTIVE:
            if route.primary == peer:
                self._lose_part(session, route, RouteTrigger.SERVER_LOST, now_us)
            elif stranded:
                # Sent to the lost server before the part moved: re-send to its primary.
                self._flush(session, route, now_us, moved=False)

    def _on_goaway(self, frame: GoAway, source: NodeId, now_us: int) -> None:
        connection = self._pool.get(source)
        if connection is None or not connection.authenticated:
            self._rare("goaway-unauthenticated")
            return
        connection.fire(ConnectionTrigger.GOAWAY_RECEIVED)
        self._adopt_map_version(frame.map_version)
        for session in list(self._sessions.values()):
            for route in session.parts.values():
                if route.state is RouteState.ACTIVE and route.primary == source:
                    self._lose_part(session, route, RouteTrigger.NOT_SERVED, now_us)

    def _on_ping(self, frame: Ping, source: NodeId, now_us: int) -> None:
        connection = self._pool.get(source)
        if connection is not None and connection.authenticated:
            pong = Pong(sequence=frame.sequence, sent_us=frame.sent_us)
            self._outbox.append(Outbound(destination=source, message=pong))

    def _on_pong(self, frame: Pong, source: NodeId, now_us: int) -> None:
        connection = self._pool.get(source)
        sent_us = None if connection is None else connection.pings.pop(frame.sequence, None)
        if connection is None or sent_us is None:
            self._rare("unsolicited-pong")
            return
        if not connection.pings:
            connection.silent_asks = 0
        if source == self._config.manager_node_id:
            # Pinged only to keep its connection heard while a MAP_REQUEST awaits: the manager
            # is no server, and its path no sample.
            return
        # The RTT comes from the client's own record of the send time, not from the echo.
        self._pool.path(source).add(max(0, now_us - sent_us))

    def record_transport_counters(
        self, server: NodeId, counters: TransportCounters, *, now_us: int
    ) -> None:
        """The runtime's reading of the transport counters of the connection to `server`; two
        readings give the path's loss, retransmissions and throughput for telemetry."""
        if self._pool.get(server) is None:
            return
        self._pool.path(server).add_counters(counters, now_us=now_us)

    def _serving_servers(self) -> set[NodeId]:
        """Servers that are primary of a part of some session: their paths are not probes."""
        return {
            route.primary for session in self._sessions.values() for route in session.parts.values()
        }

    def _send_pings(self, now_us: int) -> None:
        """PING every READY connection when due: every `ping_interval_ms` where a part is
        served, every `probe_interval_ms` elsewhere (at most `probes_per_second_max` probes per
        second), each PING carrying the client's path samples."""
        config = self._config
        prewarm = config.prewarm_probe_targets and self._sessions and now_us >= self._prewarm_due_us
        due: list[Connection] = []
        ping_due_us = _NO_DEADLINE_US
        for connection in self._pool:
            ping_us = connection.next_ping_us
            if ping_us is None:
                continue
            if ping_us <= now_us:
                due.append(connection)
            elif ping_us < ping_due_us:
                ping_due_us = ping_us
        # Exact for the connections not due; those sent a PING below lower it again.
        self._ping_due_us = ping_due_us
        if not due and not prewarm:
            return  # The timer fired for something else: no walk over the sessions.
        serving = self._serving_servers()
        if prewarm:
            self._prewarm_due_us = now_us + config.probe_interval_ms * 1000
            self._prewarm_probe_targets(serving, now_us)
        if now_us >= self._probe_window_us + 1_000_000:
            self._probe_window_us, self._probes_in_window = now_us, 0
        telemetry: tuple[PathSample, ...] | None = None
        # Before this round's PINGs join the unanswered ones.
        silent = [c for c in due if c.server in serving and c.authenticated and self._silent(c)]
        for connection in due:
            if not connection.authenticated:
                connection.next_ping_us = None
                continue
            manager = connection.server == config.manager_node_id
            if manager and self._map_sent_us is None:
                connection.next_ping_us = None
                continue
            probe = connection.server not in serving and not manager
            if probe and self._probes_in_window >= config.probes_per_second_max:
                connection.next_ping_us = self._probe_window_us + 1_000_000
                continue
            self._probes_in_window += probe
            connection.ping_sequence += 1
            connection.pings[connection.ping_sequence] = now_us
            while len(connection.pings) > config.pings_outstanding_max:
                del connection.pings[next(iter(connection.pings))]
            if telemetry is None:
                telemetry = self._telemetry(serving)
            # The manager reads no path samples, and its RTT is none.
            samples = () if manager else telemetry
            ping = Ping(sequence=connection.ping_sequence, sent_us=now_us, telemetry=samples)
            self._outbox.append(Outbound(destination=connection.server, message=ping))
            interval_ms = config.probe_interval_ms if probe else config.ping_interval_ms
            connection.next_ping_us = now_us + interval_ms * 1000
        for connection in due:
            ping_us = connection.next_ping_us
            if ping_us is not None and ping_us < self._ping_due_us:
                self._ping_due_us = ping_us
        for connection in silent:
            self._locate_while_silent(connection, now_us)

    def _silent(self, connection: Connection) -> bool:
        """Whether enough of `connection`'s PINGs are unanswered to ask the manager (again)."""
        pings = self._config.silent_locate_pings
        return pings is not None and len(connection.pings) >= pings << connection.silent_asks

    def _locate_while_silent(self, connection: Connection, now_us: int) -> None:
        """`connection`'s PINGs went unanswered (`ClientConfig.silent_locate_pings`): ask the
        manager where the parts whose requests wait on it live now, keeping the connection and
        the parts ACTIVE. An answer that places a part elsewhere moves it and re-sends its
        requests there (`_apply_placement`); one naming the same server changes nothing. The
        manager holds the question while it cannot reach the server either, and answers when
        its failover commits (`ManagerConfig.map_request_hold_ms`).

        Only between locating rounds (none out, none due): a round that is out already asks,
        and its answer is applied to every part it names. Not counted then, so the next PING
        asks instead."""
        asking = self._map_sent_us is None and self._map_retry_us is None
        server = connection.server
        waiting: dict[bytes, int] = {}
        limit = self._config.hello_credentials_max
        # The requests sent there, oldest first (at most `inflight_requests_max`).
        for entry in self._inflight.values():
            if entry.server != server:
                continue
            # Sent elsewhere while this server is still silent, it was in flight on a lost one
            # (`_dispatch`); a frame from the server first takes the mark back (`_heard_again`).
            entry.lost_on = server
            self._silent_marked.add(server)
            if not asking:
                continue
            route = self._sessions[entry.session_id].parts[entry.part]
            if route.state is RouteState.ACTIVE and route.primary == server:
                session_id = entry.session_id
                if session_id in waiting or len(waiting) < limit:
                    waiting[session_id] = min(
                        waiting.get(session_id, route.map_version), route.map_version
                    )
        if not waiting:
            return
        connection.silent_asks += 1
        self._rare("silent-server-asked")
        self._ask_manager(tuple(waiting), min(waiting.values()), now_us)

    def _ping_manager_soon(self, now_us: int) -> None:
        """While a MAP_REQUEST awaits its answer, the manager's connection is pinged every
        `ping_interval_ms` (it is not pinged otherwise; from its WELCOME on if the request was
        queued for it): the manager may hold the request for a while
        (`ManagerConfig.map_request_hold_ms`), and with nothing coming back the driver would
        take the connection for dead after five ping intervals."""
        connection = self._pool.get(self._config.manager_node_id)
        if connection is None or not connection.authenticated:
            return
        due_us = now_us + self._config.ping_interval_ms * 1000
        if connection.next_ping_us is None or due_us < connection.next_ping_us:
            connection.next_ping_us = due_us
            self._ping_due_us = min(self._ping_due_us, due_us)

    def _prewarm_probe_targets(self, serving: set[NodeId], now_us: int) -> None:
        """Connect to the backups of the client's parts, the servers a handoff would move them
        to, so they can be probed: at most `probe_targets_max`, only while the pool has room."""
        config = self._config
        targets: dict[NodeId, None] = {}
        for session in self._sessions.values():
            for route in session.parts.values():
                for backup in route.backups:
                    if backup not in serving and backup in self._endpoints:
                        targets[backup] = None
        for target in list(targets)[: config.probe_targets_max]:
            if (
                self._pool.get(target) is None
                and len(self._pool) < config.connections_max
                and self._connect(target, now_us) is not None
            ):
                self._rare("probe-target-prewarmed")

    def _telemetry(self, serving: set[NodeId]) -> tuple[PathSample, ...]:
        samples = [
            PathSample(
                server_id=server,
                rtt_us=stats.srtt_us,
                jitter_us=stats.rttvar_us,
                loss_ppm=None if stats.loss_ratio is None else round(stats.loss_ratio * 1e6),
                throughput_bps=(
                    None
                    if stats.throughput_bytes_per_second is None
                    else round(stats.throughput_bytes_per_second * 8)
                ),
                rtt_min_us=stats.rtt_min_us,
                retransmissions=stats.retransmissions,
                probe=server not in serving,
            )
            for server, stats in self._pool.paths().items()
            if stats.srtt_us is not None and self._pool.get(server) is not None
        ]
        return tuple(samples[: self._config.telemetry_samples_max])

    # Sessions.

    def _send_open(self, pending: _PendingOpen, now_us: int) -> None:
        pending.attempts += 1
        pending.retry_at_us = None
        frame = OpenSession(request_id=pending.request_id, parts=pending.parts)
        self._send(self._config.manager_node_id, frame, now_us)

    def _on_session_opened(self, frame: SessionOpened, source: NodeId, now_us: int) -> None:
        pending = self._opens.pop(frame.request_id, None)
        if pending is None:
            # A retried OPEN_SESSION may have opened a second session: release the orphan.
            if frame.session_id not in self._sessions:
                self._rare("orphan-session-closed")
                self._send(source, CloseSession(session_id=frame.session_id), now_us)
            return
        # The manager's token is not kept: a restart resumes with the credential instead.
        self._new_session(
            frame.session_id, frame.credential, frame.placements, frame.map_version, now_us
        )
        self._emit(
            SessionEstablished(
                node=self.node_id,
                request_id=frame.request_id,
                session_id=frame.session_id,
                parts=tuple(p.part for p in frame.placements),
                map_version=frame.map_version,
            )
        )

    def _on_open_session_refused(
        self, frame: OpenSessionRefused, source: NodeId, now_us: int
    ) -> None:
        """The manager will not open it: with no `retry_after_ms` (a part no server's app
        declares, a full map, the connection at `client_sessions_max`) failed at once with the
        manager's reason; otherwise (the manager busy, or no server able to take the parts yet)
        sent again after at least that long, within `retry_attempts_max` sends and the open's
        deadline. Only the manager's counts: opens go to it, and a server naming a
        request id would fail an open it never saw."""
        if source != self._config.manager_node_id:
            self._rare("open-refused-by-a-server")
            return
        pending = self._opens.get(frame.request_id)
        if pending is None or pending.retry_at_us is not None:
            # Answered already, or a second refusal of a send already due again.
            self._rare("late-open-refused")
            return
        if frame.retry_after_ms and pending.attempts < self._config.retry_attempts_max:
            wait_us = max(frame.retry_after_ms * 1000, self._backoff_us(pending.attempts))
            pending.retry_at_us = now_us + wait_us
            heapq.heappush(self._retry_heap, (pending.retry_at_us, pending.request_id))
            return
        del self._opens[frame.request_id]
        tries = f" ({pending.attempts} attempts)" if frame.retry_after_ms else ""
        self._emit(
            SessionOpenFailed(
                node=self.node_id,
                request_id=frame.request_id,
                detail=f"the manager refused it: {frame.reason}{tries}",
            )
        )

    def _expire_opens(self, now_us: int) -> None:
        while self._opens:
            pending = next(iter(self._opens.values()))
            if pending.deadline_us > now_us:
                return
            del self._opens[pending.request_id]
            self._emit(
                SessionOpenFailed(
                    node=self.node_id, request_id=pending.request_id, detail="no answer in time"
                )
            )

    def _manager_lost(self, detail: str, now_us: int) -> None:
        for pending in list(self._opens.values()):
            if pending.attempts >= self._config.retry_attempts_max:
                del self._opens[pending.request_id]
                # The last connection's end says why (a refused dial, a certificate not
                # verified, the manager's ERROR): without it the caller sees only the count.
                failed = f"retries exhausted; the manager connection's last end: {detail}"
                self._emit(
                    SessionOpenFailed(
                        node=self.node_id, request_id=pending.request_id, detail=failed
                    )
                )
                continue
            pending.retry_at_us = now_us + self._backoff_us(pending.attempts)
            heapq.heappush(self._retry_heap, (pending.retry_at_us, pending.request_id))
        if self._map_sent_us is not None:
            self._map_sent_us = None
            self._unresolved_round(now_us, progressed=False)

    # Requests.

    def _dispatch(self, session: Session, route: PartRoute, entry: InFlight, now_us: int) -> None:
        """Send `entry` to the part's primary if the route is ACTIVE; otherwise hold it."""
        entry.server = None
        if route.state is not RouteState.ACTIVE:
            return
        primary = route.primary
        if entry.lost_on is not None and self._lost_too_often(entry, primary, now_us):
            return
        connection = self._pool.get(primary)
        frame = Request(
            request_id=entry.request_id,
            session_id=entry.session_id,
            part=entry.part,
            op=entry.op,
            map_version=route.map_version,
            payload=entry.payload,
            wait_budget_ms=(
                self._wait_budget_ms(entry, now_us) if entry.own_timeout or entry.attempts else None
            ),
        )
        if len(entry.payload) > _PAYLOAD_ALWAYS_FITS_BYTES and self._too_long(
            frame, self._announced_wire(primary)
        ):
            # The part moved to a server that accepts less than the one the call was checked
            # against: sent, it would close the connection (FRAME_TOO_LARGE).
            self._rare("request-too-large-for-server")
            self._fail(entry, RequestFailedWhy.TOO_LARGE, now_us)
            return
        if connection is not None and connection.state is ConnectionState.READY:
            if entry.session_id in self._bound.get(primary, ()):
                # The common case, as `_send` would take it: straight out, the session bound.
                self._outbox.append(Outbound(destination=primary, message=frame))
                entry.server = primary
                entry.attempts += 1
                entry.retry_at_us = None
                return
        elif connection is not None and connection.state is ConnectionState.DRAINING:
            self._lose_part(session, route, RouteTrigger.NOT_SERVED, now_us)
            return
        if not self._bound_at(session, primary, now_us):
            return
        if self._send(primary, frame, now_us):
            entry.server = primary
            entry.attempts += 1
            entry.retry_at_us = None

    def _lost_too_often(self, entry: InFlight, primary: NodeId, now_us: int) -> bool:
        """Count the loss of the server `entry` was in flight on as it goes to another; True,
        and the request failed, once `call_servers_lost_max` were lost (see that bound)."""
        lost_on, entry.lost_on = entry.lost_on, None
        if lost_on == primary:
            return False  # Back on the server it was lost on: that one came back.
        entry.servers_lost += 1
        if entry.servers_lost < self._config.call_servers_lost_max:
            return False
        self._rare("call-servers-lost")
        self._fail(entry, RequestFailedWhy.SERVERS_LOST, now_us)
        return True

    def _heard_again(self, server: NodeId) -> None:
        """A frame came from `server` (any but ERROR): the calls marked as in flight on a lost
        server there were not (a pause shorter than the manager's failure timeout, a slow
        path)."""
        self._silent_marked.discard(server)
        for entry in self._inflight.values():
            if entry.lost_on == server:
                entry.lost_on = None

    def _wait_budget_ms(self, entry: InFlight, now_us: int) -> int:
        """How long the server may keep this send of `entry` waiting: what is left of the call's
        timeout, less `wait_budget_margin_ms` for the answer's trip. Computed at each send, so a
        re-send (after a reconnection, a RESUME, a handoff) asks for no more than is left, and a
        waiting read answers "nothing yet" before the call would time out. Sent with every send
        of a call of its own timeout, and with the re-sends of the others: their first send
        keeps its bytes (the common REQUEST), a re-sent one must not wait `wait_ms` anew."""
        left_ms = (entry.deadline_us - now_us) // 1000 - self._config.wait_budget_margin_ms
        return max(0, left_ms)

    def _flush(self, session: Session, route: PartRoute, now_us: int, *, moved: bool) -> int:
        """Send, in call order, the requests of an ACTIVE part not yet sent to its primary.

        Per-part order is the order of calls, so a request never overtakes an earlier one: the
        first request waiting out a TRY_AGAIN backoff stops the flush, and the rest follow it when
        its timer fires. When the part `moved` to another server the backoffs (which were about
        the old server) are void and everything goes, in order.
        """
        sent = 0
        for entry in list(route.inflight.values()):
            if route.state is not RouteState.ACTIVE:
                break
            if entry.server == route.primary:
                continue
            if entry.retry_at_us is not None and not moved:
                break
            self._dispatch(session, route, entry, now_us)
            sent += 1
        return sent

    def _finish(self, entry: InFlight) -> PartRoute | None:
        del self._inflight[entry.request_id]
        self._timed.pop(entry.request_id, None)
        session = self._sessions.get(entry.session_id)
        route = None if session is None else session.parts.get(entry.part)
        if route is not None:
            route.inflight.pop(entry.request_id, None)
        return route

    def _fail(self, entry: InFlight, why: RequestFailedWhy, now_us: int) -> None:
        self._finish(entry)
        self._emit(
            RequestFailed(
                node=self.node_id,
                request_id=entry.request_id,
                session_id=entry.session_id,
                part=entry.part,
                issue_sequence=entry.issue_sequence,
                why=why,
                attempts=entry.attempts,
                elapsed_us=now_us - entry.issued_us,
            )
        )

    def _expire_requests(self, now_us: int) -> None:
        while self._timed:
            entry = next(iter(self._timed.values()))
            if entry.deadline_us > now_us:
                break
            self._expire(entry, now_us)
        deadlines = self._own_deadlines
        while deadlines and deadlines[0][0] <= now_us:
            _, request_id = heapq.heappop(deadlines)
            owned = self._inflight.get(request_id)
            if owned is not None:
                self._expire(owned, now_us)

    def _expire(self, entry: InFlight, now_us: int) -> None:
        session = self._sessions.get(entry.session_id)
        route = None if session is None else session.parts.get(entry.part)
        locating = route is not None and route.state is RouteState.LOCATING
        why = RequestFailedWhy.PLACEMENT_UNKNOWN if locating else RequestFailedWhy.TIMEOUT
        self._fail(entry, why, now_us)

    def _on_response(self, frame: Response, source: NodeId, now_us: int) -> None:
        request_id = frame.request_id
        entry = self._inflight.get(request_id)
        if entry is None or entry.session_id != frame.session_id:
            self._rare("duplicate-response")
            return
        if frame.map_version > self._map_version:
            self._adopt_map_version(frame.map_version)
        session = self._sessions[entry.session_id]
        route = session.parts[entry.part]
        status = frame.status
        if status is ResponseStatus.TRY_AGAIN:
            entry.try_agains += 1
            # A server stamps its answers with its own map version. The part's primary answering
            # from a map older than the one that named it primary to this client has not learned
            # of its placement yet (a failover kept it, fenced, while the manager's messages to
            # it were lost): it serves once it does, so only the request's deadline bounds the
            # wait, not `retry_attempts_max`, which is for servers that refuse knowing the map.
            behind = route.primary == source and frame.map_version < route.map_version
            if (
                entry.try_agains >= TRY_AGAIN_LOCATE_AFTER
                and route.state is RouteState.ACTIVE
                and route.primary == source
            ):
                if behind or self._count_retry(entry, now_us):
                    entry.try_agains = 0
                    self._rare("try-again-relocates")
                    self._lose_part(session, route, RouteTrigger.NOT_SERVED, now_us)
                return
            if behind:
                self._rare("try-again-primary-behind")
                self._wait_for_primary(entry, now_us)
                return
            self._retry_later(entry, now_us)
            return
        if status is ResponseStatus.NOT_FOUND and self._count_retry(entry, now_us):
            # The server does not know the session: the client's placement is stale.
            entry.server = None
            if route.state is RouteState.ACTIVE and route.primary == source:
                self._lose_part(session, route, RouteTrigger.NOT_SERVED, now_us)
            elif route.state is RouteState.ACTIVE:
                self._flush(session, route, now_us, moved=False)
            return
        if status is ResponseStatus.NOT_FOUND:
            return
        # `_finish`, with the route already at hand.
        del self._inflight[request_id]
        if self._timed:
            self._timed.pop(request_id, None)
        route.inflight.pop(request_id, None)
        route.locate_attempts = 0
        self._events.append(
            ResponseReceived(
                node=self._config.node_id,
                request_id=request_id,
                session_id=entry.session_id,
                part=entry.part,
                issue_sequence=entry.issue_sequence,
                status=status,
                payload=frame.payload,
                map_version=frame.map_version,
                server=source,
                attempts=entry.attempts,
                latency_us=now_us - entry.issued_us,
            )
        )

    def _count_retry(self, entry: InFlight, now_us: int) -> bool:
        """Count a server-requested re-send; False (and the request failed) past the bound."""
        entry.retries += 1
        if entry.retries > self._config.retry_attempts_max:
            self._fail(entry, RequestFailedWhy.RETRIES_EXHAUSTED, now_us)
            return False
        return True

    def _retry_later(self, entry: InFlight, now_us: int) -> None:
        if not self._count_retry(entry, now_us):
            return
        entry.server = None
        entry.retry_at_us = now_us + self._backoff_us(entry.retries)
        heapq.heappush(self._retry_heap, (entry.retry_at_us, entry.request_id))

    def _wait_for_primary(self, entry: InFlight, now_us: int) -> None:
        """Re-send after a backoff that grows with the sends, uncounted: the primary is behind
        the map that named it (see `_on_response`), and the request's deadline ends the wait."""
        entry.server = None
        entry.retry_at_us = now_us + self._backoff_us(max(entry.retries, entry.attempts))
        heapq.heappush(self._retry_heap, (entry.retry_at_us, entry.request_id))

    def _run_retries(self, now_us: int) -> None:
        heap = self._retry_heap
        while heap and heap[0][0] <= now_us:
            due_us, request_id = heapq.heappop(heap)
            entry = self._inflight.get(request_id)
            if entry is not None and entry.retry_at_us == due_us:
                entry.retry_at_us = None
                session = self._sessions[entry.session_id]
                self._flush(session, session.parts[entry.part], now_us, moved=False)
                continue
            pending = self._opens.get(request_id)
            if pending is not None and pending.retry_at_us == due_us:
                self._send_open(pending, now_us)

    def _on_redirect(self, frame: Redirect, source: NodeId, now_us: int) -> None:
        entry = self._inflight.get(frame.request_id)
        if entry is None or entry.session_id != frame.session_id or entry.server != source:
            # Already answered, or already re-sent elsewhere after an earlier move.
            self._rare("stale-redirect")
            return
        session = self._sessions[entry.session_id]
        route = session.parts[entry.part]
        moved = frame.map_version > route.map_version
        # A REDIRECT naming the server itself, of a newer version, says only "send again with
        # that version" (the part's epoch is newer than the request's map version): progress,
        # since each such REDIRECT needs a newer version than the last, so it is not counted.
        # Counted, it failed a call the server had just become able to serve, whose retries
        # the part's fenced spell had used up (`drain-one-way` seed 17,600,251).
        refresh = moved and bool(frame.targets) and frame.targets[0].server_id == source
        if not refresh and not self._count_retry(entry, now_us):
            return
        if route.state is not RouteState.ACTIVE:
            entry.server = None
            return
        if moved:
            if not frame.targets or not all(t.server_id in self._endpoints for t in frame.targets):
                # A target the client cannot vouch for: ask the manager instead.
                self._lose_part(session, route, RouteTrigger.NOT_SERVED, now_us)
                return
            self._readdress(frame.targets, frame.map_version)
            route.adopt(
                primary=frame.targets[0].server_id,
                backups=tuple(t.server_id for t in frame.targets[1:]),
                map_version=frame.map_version,
            )
            route.fire(RouteTrigger.REDIRECTED)
            self._adopt_map_version(frame.map_version)
            if route.primary != source:
                # A REDIRECT naming the server itself only brings a newer map version (the part
                # stayed where it was): no move to tell the application of.
                self._emit(
                    PartRedirected(
                        node=self.node_id,
                        session_id=session.session_id,
                        part=route.name,
                        source=source,
                        target=route.primary,
                        map_version=frame.map_version,
                    )
                )
        elif route.primary == source:
            # The client's newest placement says this server, which disowns the part.
            self._lose_part(session, route, RouteTrigger.NOT_SERVED, now_us)
            return
        for other in route.inflight.values():
            if other.server == source:
                other.server = None
        self._flush(session, route, now_us, moved=moved)

    # Relocation after a loss without HANDOFF.

    def _lose_part(
        self, session: Session, route: PartRoute, trigger: RouteTrigger, now_us: int
    ) -> None:
        """The part's server is gone or disowns it: hold its requests and ask the manager."""
        route.fire(trigger)
        route.lost_us = now_us
        for entry in route.inflight.values():
            entry.server = None
        route.locate_attempts += 1
        self._start_locating(session, route, now_us)

    def _start_locating(self, session: Session, route: PartRoute, now_us: int) -> None:
        if route.locate_attempts > self._config.retry_attempts_max and not route.inflight:
            self._give_up_locating(session, route)
            return
        self._locating[(session.session_id, route.name)] = None
        if self._map_sent_us is not None:
            return
        # From when the last round went, as in `_unresolved_round`: after a held round, the
        # reconnect to the server it still named has failed, and the next round goes at once.
        due_us = max(now_us, self._map_round_us + self._backoff_us(route.locate_attempts - 1))
        if self._map_retry_us is None or due_us < self._map_retry_us:
            self._map_retry_us = due_us
        self._send_due_map_request(now_us)

    def _send_due_map_request(self, now_us: int) -> None:
        """Send the MAP_REQUEST round that is due, unless one is out or an input is still being
        handled (`_map_held`)."""
        due_us = self._map_retry_us
        idle = not self._map_held and self._map_sent_us is None
        if idle and due_us is not None and due_us <= now_us:
            self._send_map_request(now_us)

    def _give_up_locating(self, session: Session, route: PartRoute) -> None:
        """Stop locating a part no request waits for (a new call starts over). A part with
        requests waiting goes on locating past `retry_attempts_max` rounds: its requests end at
        their own deadline, PLACEMENT_UNKNOWN if it was still being located (`_expire_requests`).
        A crash is found and failed over by the manager in seconds (the failure timeout, then
        the promotion), while the rounds that name the dead server until then each cost an
        attempt, and so does each reconnect to it: the attempts ran out first, failing calls
        the failover would have served well within their timeout."""
        assert not route.inflight
        self._locating.pop((session.session_id, route.name), None)

    def _send_map_request(self, now_us: int) -> None:
        self._map_retry_us = None
        presented = self._take_turns()
        chosen = frozenset(presented)
        versions = [
            self._sessions[session_id].parts[part].map_version
            for session_id, part in self._locating
            if session_id in chosen
        ]
        if not versions:
            return
        self._ask_manager(presented, min(versions), now_us)

    def _take_turns(self) -> tuple[bytes, ...]:
        """The locating sessions the next MAP_REQUEST presents, at most `hello_credentials_max`.

        The first ones in `_locating` go, and their entries move to its end: the rounds take
        turns, so each locating session is presented within ceil(locating sessions / bound)
        rounds, however many locate at once. The first round, and each round right after one
        that placed a part elsewhere (the manager has failed the server over, and answers now
        move parts), present the sessions with requests waiting first: after a crash that
        strands tens of thousands of parts, the calls waiting on a few of them go out in the
        round after the failover, not in their turn among every idle part. Rounds that place
        nothing keep to the turns, so waiting parts do not spend an attempt in each of them
        while the manager has not seen the loss yet.
        """
        limit = self._config.hello_credentials_max
        chosen: dict[bytes, None] = {}
        if self._map_rounds == 0:
            sessions = self._sessions
            for session_id, part in self._locating:
                if len(chosen) == limit:
                    break
                if sessions[session_id].parts[part].inflight:
                    chosen[session_id] = None
        for session_id, _ in self._locating:
            if len(chosen) == limit:
                break
            chosen[session_id] = None
        for key in [key for key in self._locating if key[0] in chosen]:
            del self._locating[key]
            self._locating[key] = None
        return tuple(chosen)

    def _ask_manager(self, presented: tuple[bytes, ...], map_version: int, now_us: int) -> None:
        """One MAP_REQUEST round, presenting the credentials of the `presented` sessions: the
        manager answers only about sessions bound to the connection, and its HELLO proved at
        most `hello_credentials_max` of them (which the manager may since have forgotten)."""
        sessions = self._sessions
        for session_id in presented:
            session = sessions[session_id]
            session.manager_credential = session.credential
        credentials = tuple(
            Credential(session_id=session_id, credential=sessions[session_id].credential)
            for session_id in presented
        )
        self._map_sent_us = self._map_round_us = now_us
        self._map_presented = frozenset(presented)
        frame = MapRequest(map_version=map_version, credentials=credentials)
        self._send(self._config.manager_node_id, frame, now_us)
        self._ping_manager_soon(now_us)

    def _check_map_request(self, now_us: int) -> None:
        timeout_us = self._config.map_request_timeout_ms * 1000
        if self._map_sent_us is not None and now_us >= self._map_sent_us + timeout_us:
            self._map_sent_us = None
            self._unresolved_round(now_us, progressed=False)
        if self._map_retry_us is not None and now_us >= self._map_retry_us:
            self._send_map_request(now_us)

    def _unresolved_round(self, now_us: int, *, progressed: bool) -> None:
        """A MAP_REQUEST round ended without placing every locating part: back off, or give up.

        The round counts as a failed attempt only for the parts of the sessions it presented
        (the manager could say nothing about the others). A round that moved some part to
        another server made progress: the next one goes at once and the backoff starts over.
        The backoff counts from when the round went, not from its answer: a manager holds a
        round that has no news while the lost server is still being failed over
        (`ManagerConfig.map_request_hold_ms`), and a backoff no longer than the hold then sends
        the next round as soon as the held one is answered, so no failover commits unheard.
        """
        presented, self._map_presented = self._map_presented, frozenset()
        for session_id, part in list(self._locating):
            if session_id not in presented:
                continue
            route = self._sessions[session_id].parts[part]
            route.locate_attempts += 1
            if route.locate_attempts > self._config.retry_attempts_max and not route.inflight:
                self._give_up_locating(self._sessions[session_id], route)
        if not self._locating:
            self._map_rounds = 0
            return
        self._map_rounds = 0 if progressed else self._map_rounds + 1
        self._map_retry_us = max(now_us, self._map_round_us + self._backoff_us(self._map_rounds))
        self._send_due_map_request(now_us)

    def _on_map_update(self, frame: MapUpdate, source: NodeId, now_us: int) -> None:
        connection = self._pool.get(source)
        if connection is None or not connection.authenticated:
            self._rare("map-update-unauthenticated")
            return
        view = placement_view(frame, self._shard_map)
        if source == self._config.manager_node_id:
            self._map_sent_us = None
        # The answer speaks for the sessions bound to the connection; those this round presented
        # surely are (an unchanged part of another session may have moved unseen by it).
        manager = source == self._config.manager_node_id
        vouched = self._map_presented if manager else frozenset()
        progressed = False
        if view is None:
            self._rare("map-update-unreadable")
        else:
            if view.shard_map is not None and view.map_version > self._shard_map_version():
                self._shard_map = view.shard_map
            self._adopt_map_version(frame.map_version)
            for endpoint in view.endpoints():
                self._remember(endpoint, frame.map_version)
            # A list of placements speaks only for the sessions it names, and "unchanged" only
            # for those vouched for: the others are skipped (at 30,000 sessions, applying every
            # answer to every part took half a second an answer).
            named = None if view.shard_map is not None else view.session_ids() | vouched
            for session in list(self._sessions.values()):
                if named is not None and session.session_id not in named:
                    continue
                for route in session.parts.values():
                    moved = self._apply_placement(session, route, view, vouched, now_us)
                    progressed = progressed or moved
        if not self._locating:
            self._map_rounds = 0
        elif self._map_sent_us is None and self._map_retry_us is None:
            self._unresolved_round(now_us, progressed=progressed)
            return
        if manager and self._map_sent_us is None:
            self._map_presented = frozenset()

    def _shard_map_version(self) -> int:
        return -1 if self._shard_map is None else self._shard_map.version

    def _apply_placement(
        self,
        session: Session,
        route: PartRoute,
        view: PlacementView,
        vouched: frozenset[bytes],
        now_us: int,
    ) -> bool:
        """Adopt what a MAP_UPDATE says about one part, if it is news; "unchanged" only for a
        `vouched` session. True when it moved a part being located to another server."""
        if route.state is RouteState.CLOSED or view.map_version < route.map_version:
            return False
        found = view.lookup(session.session_id, route.name, known_since=route.map_version)
        if found is None or (isinstance(found, Unchanged) and session.session_id not in vouched):
            return False
        if route.state is RouteState.LOCATING:
            lost = route.primary
            primary, backups = (lost, route.backups) if isinstance(found, Unchanged) else found
            if primary == lost and session.session_id not in vouched:
                # Still placed where the client lost it, and not asked about: reconnecting now
                # would cost the part an attempt in every round until the manager sees the loss.
                # It waits for its turn, or for an answer that places it elsewhere.
                return False
            if primary == lost and not route.inflight:
                # Still placed where the client lost it (the manager has not seen the loss yet,
                # or there was none), and no request waits to dial it: a dial checks it.
                self._recheck(session, route, backups, view.map_version, now_us)
                return False
            located = self._relocate(
                session,
                route,
                primary=primary,
                backups=backups,
                map_version=view.map_version,
                now_us=now_us,
            )
            return located and primary != lost
        if view.map_version == route.map_version:
            return False
        if route.state is not RouteState.ACTIVE:
            self._overtake_resumption(session, route, found, view.map_version, now_us)
            return False
        primary, backups = (route.primary, route.backups) if isinstance(found, Unchanged) else found
        previous = route.primary
        moved = primary != previous
        route.adopt(primary=primary, backups=backups, map_version=view.map_version)
        if moved:
            route.fire(RouteTrigger.PLACEMENT_RECEIVED)
            left = self._pool.get(previous)
            if left is not None and left.silent_asks:
                # Moved off a server its PINGs found silent: the question paid off.
                self._rare("silent-server-left")
            # The application hears of every move of a part, also of one a map answer brings
            # before any HANDOFF or lost connection does.
            self._emit(
                PartRelocated(
                    node=self.node_id,
                    session_id=session.session_id,
                    part=route.name,
                    server=primary,
                    map_version=view.map_version,
                    duration_us=0,
                    previous=previous,
                    lost=False,
                )
            )
            self._flush(session, route, now_us, moved=True)
        return False

    def _recheck(
        self,
        session: Session,
        route: PartRoute,
        backups: tuple[NodeId, ...],
        map_version: int,
        now_us: int,
    ) -> None:
        """An idle part an answer placed back on the server it was lost from stays LOCATING
        while a dial checks that server: it goes ACTIVE there at the server's WELCOME
        (`_recheck_passed`), and if the dial fails it is simply still being located, in the
        rounds' turns and backoff. Put back ACTIVE undialled, it stayed on a crashed server
        after the failover had moved it, until its next call; put back and dialled, each
        failed dial cost it an attempt and brought the next round forward."""
        server = route.primary
        connection = self._pool.get(server)
        if connection is not None and connection.state is ConnectionState.DRAINING:
            return
        if connection is None:
            connection = self._connect(server, now_us)
            if connection is None:
                # The pool is full: the part waits for the next answer, a dial then.
                return
        checks = self._rechecks.setdefault(server, {})
        checks[(session.session_id, route.name)] = (backups, map_version)
        if connection.state is ConnectionState.READY:
            self._recheck_passed(server, now_us)

    def _recheck_passed(self, server: NodeId, now_us: int) -> None:
        """`server` answered a dial: the parts waiting on its check go ACTIVE there."""
        for (session_id, part), (backups, map_version) in self._rechecks.pop(server, {}).items():
            session = self._sessions.get(session_id)
            route = None if session is None else session.parts.get(part)
            if session is None or route is None:
                continue
            if route.state is RouteState.LOCATING and route.primary == server:
                self._relocate(
                    session,
                    route,
                    primary=server,
                    backups=backups,
                    map_version=max(map_version, route.map_version),
                    now_us=now_us,
                    # Only a session the server has bound: a READY connection another session
                    # opened says nothing of this one (its RESUME may be refused each time).
                    confirmed=session_id in self._bound.get(server, ()),
                )
        if not self._locating:
            # As when an answer places the last locating part: the next loss starts afresh
            # (its first round presents the sessions with calls waiting first).
            self._map_rounds = 0

    def _overtake_resumption(
        self,
        session: Session,
        route: PartRoute,
        found: tuple[NodeId, tuple[NodeId, ...]] | Unchanged,
        map_version: int,
        now_us: int,
    ) -> None:
        """A newer map names another server than the resume in flight: the map wins."""
        targets = {
            key[1]
            for key, resumption in self._pending_resumptions()
            if key[0] == session.session_id and route.name in resumption.parts
        }
        # While a part resumes, its route still names the old server but the version of the
        # move: UNCHANGED (or the target itself) confirms the move, so the resume goes on.
        if isinstance(found, Unchanged) or found[0] in targets:
            return
        self._cancel_resumptions(session, route.name, now_us)
        route.adopt(primary=found[0], backups=found[1], map_version=map_version)
        route.fire(RouteTrigger.PLACEMENT_RECEIVED)
        self._flush(session, route, now_us, moved=True)

    def _relocate(
        self,
        session: Session,
        route: PartRoute,
        *,
        primary: NodeId,
        backups: tuple[NodeId, ...],
        map_version: int,
        now_us: int,
        confirmed: bool = False,
    ) -> bool:
        """A located part goes ACTIVE on `primary` and its held requests go out, in call order;
        False when it stays LOCATING. Placed on another server than the one it was lost from,
        or on that one once it bound the session (`confirmed`), the relocation is over: its
        attempts start over, as an answered call's do. An idle part (no call to answer) kept
        them otherwise, one or more per loss, and after a few crashes over its life the next
        loss gave it up at once, unlocated until its next call."""
        connection = self._pool.get(primary)
        if connection is not None and connection.state is ConnectionState.DRAINING:
            # Still on a server that said GOAWAY: the move has not been published yet.
            return False
        previous = route.primary
        moved = primary != previous
        if confirmed or moved:
            route.locate_attempts = 0
        route.adopt(primary=primary, backups=backups, map_version=map_version)
        route.fire(RouteTrigger.PLACEMENT_RECEIVED)
        self._locating.pop((session.session_id, route.name), None)
        if moved or confirmed or (connection is not None and connection.authenticated):
            # Put back, unconfirmed, on the server it was lost from while no connection to it
            # is up (a manager not yet aware of a crash names it still) is no relocation: the
            # application would be told of a move to a server that may be dead, before the
            # real one. Put back on a server still connected (a handoff abandoned), it is.
            self._emit(
                PartRelocated(
                    node=self.node_id,
                    session_id=session.session_id,
                    part=route.name,
                    server=primary,
                    map_version=map_version,
                    duration_us=now_us - route.lost_us,
                    previous=previous,
                )
            )
        self._flush(session, route, now_us, moved=True)
        return True

    # HANDOFF.

    def _on_handoff(self, frame: Handoff, source: NodeId, now_us: int) -> None:
        why = self._handoff_refusal(frame, source)
        if why is not None:
            self._emit(
                HandoffIgnored(
                    node=self.node_id,
                    source=source,
                    session_id=frame.session_id,
                    sequence=frame.sequence,
                    map_version=frame.map_version,
                    why=why,
                )
            )
            if why is HandoffIgnoredWhy.UNKNOWN_TARGET:
                # Do not trust the server's word for a member the client has never heard of, but
                # ask the manager: if the parts did move there, its answer moves them.
                self._refresh_map(self._sessions[frame.session_id], frame.parts, now_us)
            return
        self._accept_handoff(frame, source, now_us)

    def _refresh_map(self, session: Session, parts: tuple[str, ...], now_us: int) -> None:
        """Ask the manager for placements once (no retries: nothing waits on the answer)."""
        if self._map_sent_us is not None:
            return
        version = min(session.parts[part].map_version for part in parts)
        self._ask_manager((session.session_id,), version, now_us)

    def _handoff_refusal(self, frame: Handoff, source: NodeId) -> HandoffIgnoredWhy | None:
        """Why a HANDOFF must be ignored, or None to follow it (records its sequence).

        PROTOCOL.md 5.11 rules 2 and 3: an authenticated server connection, `current` naming the
        sender, a newer sequence on that connection, a session and parts the client holds with
        the sender among each part's servers, a newer map version, targets the manager named.
        """
        connection = self._pool.get(source)
        if connection is None or not connection.authenticated:
            return HandoffIgnoredWhy.NOT_AUTHENTICATED
        if source == self._config.manager_node_id:
            return HandoffIgnoredWhy.NOT_AUTHENTICATED
        if frame.current.server_id != source:
            return HandoffIgnoredWhy.NOT_FROM_CURRENT
        if frame.sequence <= connection.handoff_sequence_last:
            return HandoffIgnoredWhy.STALE_SEQUENCE
        connection.handoff_sequence_last = frame.sequence
        session = self._sessions.get(frame.session_id)
        if session is None:
            return HandoffIgnoredWhy.UNKNOWN_SESSION
        routes = [session.parts.get(part) for part in frame.parts]
        if not routes or any(route is None for route in routes):
            return HandoffIgnoredWhy.UNKNOWN_PART
        known = [route for route in routes if route is not None]
        if any(source not in route.servers() for route in known):
            return HandoffIgnoredWhy.NOT_BOUND
        if frame.map_version <= max(route.map_version for route in known):
            return HandoffIgnoredWhy.STALE_MAP_VERSION
        if not frame.targets:
            return HandoffIgnoredWhy.NO_TARGET
        if not all(target.server_id in self._endpoints for target in frame.targets):
            return HandoffIgnoredWhy.UNKNOWN_TARGET
        # A part already HANDING_OFF follows this newer HANDOFF instead (its map version is
        # greater, checked above): the move in flight is superseded (`_supersede`).
        busy = (RouteState.RESUMING, RouteState.CLOSED)
        if any(route.state in busy for route in known):
            return HandoffIgnoredWhy.PART_BUSY
        return None

    def _accept_handoff(self, frame: Handoff, source: NodeId, now_us: int) -> None:
        self._readdress(frame.targets, frame.map_version)
        session = self._sessions[frame.session_id]
        versions = {part: session.parts[part].map_version for part in frame.parts}
        versions.update(self._supersede(frame))
        status = HandoffStatus(
            sequence=frame.sequence,
            session_id=frame.session_id,
            state=HandoffState.ACCEPTED,
            detail_code=0,
        )
        self._outbox.append(Outbound(destination=source, message=status))
        for part in frame.parts:
            route = session.parts[part]
            route.map_version = frame.map_version
            route.fire(RouteTrigger.HANDOFF_ACCEPTED)
            self._locating.pop((session.session_id, part), None)
        self._adopt_map_version(frame.map_version)
        deadline_ms = min(
            frame.deadline_ms or self._config.handoff_deadline_ms_max,
            self._config.handoff_deadline_ms_max,
        )
        resumption = _Resumption(
            kind=_ResumeKind.HANDOFF,
            session_id=frame.session_id,
            parts=tuple(frame.parts),
            source=source,
            targets=tuple(t.server_id for t in frame.targets),
            token=frame.token,
            map_version=frame.map_version,
            received_us=now_us,
            deadline_us=now_us + deadline_ms * 1000,
            reason=frame.reason,
            sequence=frame.sequence,
            versions=versions,
        )
        self._emit(
            HandoffStarted(
                node=self.node_id,
                session_id=frame.session_id,
                parts=resumption.parts,
                source=source,
                targets=resumption.targets,
                sequence=frame.sequence,
                map_version=frame.map_version,
                reason=frame.reason,
                flags=frame.flags,
            )
        )
        # Followed at once whatever the flags say: the client adds no pacing of its own (the
        # servers spread their HANDOFF frames), so URGENT has nothing to skip, and it always
        # keeps the source until RESUME_OK as if MAKE_BEFORE_BREAK_REQUIRED were set.
        self._try_target(resumption, now_us)

    def _supersede(self, frame: Handoff) -> dict[str, int]:
        """A newer HANDOFF moves parts that a RESUME is in flight for: those parts leave that
        resumption (a resumption left with none is dropped and its source told DECLINED, as
        PROTOCOL.md 5.11 rule 4 says for a newer map placing the parts elsewhere first). A late
        answer to the dropped RESUME then finds nothing to complete; a parked resumption left
        with none is told DECLINED when its turn comes. Returns each superseded part's map
        version from before the first HANDOFF, which an abandon restores."""
        moving = set(frame.parts)
        versions: dict[str, int] = {}
        for key, resumption in self._pending_resumptions():
            if key[0] != frame.session_id or resumption.kind is not _ResumeKind.HANDOFF:
                continue
            taken = [part for part in resumption.parts if part in moving]
            if not taken:
                continue
            self._rare("handoff-superseded")
            for part in taken:
                if part in resumption.versions:
                    versions[part] = resumption.versions[part]
            resumption.parts = tuple(part for part in resumption.parts if part not in moving)
            if not resumption.parts and self._resumptions.get(key) is resumption:
                del self._resumptions[key]
                self._handoff_status(resumption, HandoffState.DECLINED, 0)
        return versions

    def _try_target(self, resumption: _Resumption, now_us: int) -> None:
        """Send RESUME to the current target, skipping unusable ones; abandon when none is left."""
        session = self._sessions[resumption.session_id]
        while resumption.index < len(resumption.targets):
            target = resumption.target
            key = (resumption.session_id, target)
            busy = self._resumptions.get(key)
            if busy is None and not self._resume_kinds.get(key):
                unanswered = [
                    request_id
                    for part in resumption.parts
                    for request_id in session.parts[part].inflight
                ]
                frame = Resume(
                    session_id=resumption.session_id,
                    token=resumption.token,
                    parts=resumption.parts,
                    map_version=resumption.map_version,
                    unanswered=tuple(unanswered[: self._config.unanswered_ids_max]),
                )
                if self._send(target, frame, now_us):
                    self._resume_kinds.setdefault(key, deque()).append(False)
                    self._resumptions[key] = resumption
                    resumption.target_deadline_us = min(
                        resumption.deadline_us, now_us + self._config.resume_timeout_ms * 1000
                    )
                    return
            elif resumption.kind is _ResumeKind.HANDOFF and (
                busy is None or busy.kind is _ResumeKind.HANDOFF
            ):
                # A RESUME of the session is unanswered at this target (another HANDOFF's, a
                # drain's next batch say, or one dropped since whose answer is still owed):
                # answers name no request, so this one follows once it is answered. Skipping
                # the target abandoned these parts to the manager (a relocation, later) in
                # every drain.
                self._rare("resume-parked")
                self._parked.setdefault(key, deque()).append(resumption)
                return
            else:
                self._rare("resume-target-busy")
            resumption.index += 1
        self._abandon(resumption, "no target could be reached", 0, now_us)

    def _unpark(self, now_us: int) -> None:
        """Parked resumptions: each keeps only the parts it still moves (a newer HANDOFF or map
        answer may have taken some: their route left HANDING_OFF, or took another version), and
        one left with none is DECLINED; one past its deadline is abandoned; then the first of
        each key whose RESUMEs are all answered is sent."""
        for key in list(self._parked):
            waiting = self._parked.pop(key)
            kept: deque[_Resumption] = deque()
            for resumption in waiting:
                session = self._sessions.get(resumption.session_id)
                if session is None:
                    continue
                resumption.parts = tuple(
                    part
                    for part in resumption.parts
                    if session.parts[part].state is RouteState.HANDING_OFF
                    and session.parts[part].map_version == resumption.map_version
                )
                if not resumption.parts:
                    self._handoff_status(resumption, HandoffState.DECLINED, 0)
                elif now_us >= resumption.deadline_us:
                    self._abandon(resumption, "RESUME timed out", 0, now_us)
                else:
                    kept.append(resumption)
            while kept and key not in self._resumptions and not self._resume_kinds.get(key):
                # Sent, it makes the key busy and the others park again behind it; not sent (no
                # connection there), it went on to its next target and the next one may go.
                self._try_target(kept.popleft(), now_us)
            if kept:
                self._parked.setdefault(key, deque()).extend(kept)

    def _pending_resumptions(self) -> list[tuple[tuple[bytes, NodeId], _Resumption]]:
        """Every resumption with its key: those whose RESUME is in flight, then the parked."""
        pending = list(self._resumptions.items())
        pending.extend((key, r) for key, waiting in self._parked.items() for r in waiting)
        return pending

    def _present_credential(self, resumption: _Resumption, now_us: int) -> None:
        """After a restart: the primary's HELLO carries the credential; WELCOME completes it."""
        connection = self._pool.get(resumption.target)
        if connection is None:
            connection = self._connect(resumption.target, now_us)
            if connection is None:
                self._abandon(resumption, "no connection to the primary", 0, now_us)
                return
        resumption.target_deadline_us = resumption.deadline_us
        self._resumptions[(resumption.session_id, resumption.target)] = resumption
        if connection.authenticated:
            # Already welcomed (the HELLO predates the session): the first call binds the session
            # to this connection with a RESUME carrying the credential (`_bound_at`).
            self._restart_resumed(resumption, now_us)

    def _restart_resumed(self, resumption: _Resumption, now_us: int) -> None:
        """The primary welcomed the connection that presented the credential: calls may go."""
        del self._resumptions[(resumption.session_id, resumption.target)]
        session = self._sessions[resumption.session_id]
        for part in resumption.parts:
            route = session.parts[part]
            if route.state is RouteState.RESUMING:
                route.fire(RouteTrigger.WELCOMED)
                route.locate_attempts = 0
                self._flush(session, route, now_us, moved=True)
        # Another part of the session sent here meanwhile (a REDIRECT from a stale primary) held
        # its requests behind this resumption (`_bound_at`): they go now, or bind first.
        self._flush_at(session, resumption.target, now_us)
        # A credential from a snapshot may be of any age: renewed at once, not an interval on.
        self._renew_at(session.session_id, now_us)
        self._emit(
            SessionResumed(
                node=self.node_id,
                session_id=session.session_id,
                parts=resumption.parts,
                server=resumption.target,
                map_version=resumption.map_version,
            )
        )

    def _target_failed(
        self, resumption: _Resumption, detail: str, detail_code: int, now_us: int
    ) -> None:
        """The current target refused, timed out or vanished: try the next one."""
        failed = resumption.target
        self._resumptions.pop((resumption.session_id, failed), None)
        if resumption.kind is _ResumeKind.RESTART or now_us >= resumption.deadline_us:
            self._abandon(resumption, detail, detail_code, now_us)
        else:
            routes = self._sessions[resumption.session_id].parts
            for part in resumption.parts:
                routes[part].fire(RouteTrigger.TARGET_FAILED)
            resumption.index += 1
            if resumption.index >= len(resumption.targets):
                self._abandon(resumption, detail, detail_code, now_us)
            else:
                self._try_target(resumption, now_us)
        # Requests of the session's other parts placed on the failed target waited for this
        # resumption (`_bound_at`); with it gone from there they bind by themselves.
        session = self._sessions.get(resumption.session_id)
        if session is not None and (resumption.session_id, failed) not in self._resumptions:
            self._flush_at(session, failed, now_us)

    def _abandon(self, resumption: _Resumption, detail: str, detail_code: int, now_us: int) -> None:
        """No target took the parts: tell the source, then ask the manager (reactive path)."""
        session = self._sessions[resumption.session_id]
        if resumption.kind is _ResumeKind.HANDOFF:
            self._handoff_status(resumption, HandoffState.FAILED, detail_code)
            self._emit(
                HandoffAbandoned(
                    node=self.node_id,
                    session_id=session.session_id,
                    parts=resumption.parts,
                    source=resumption.source,
                    detail=detail,
                )
            )
        else:
            self._emit(
                SessionResumeRejected(
                    node=self.node_id,
                    session_id=session.session_id,
                    server=resumption.source,
                    reason=ResumeRejectReason.from_wire(detail_code),
                    detail=detail,
                )
            )
        self._locate_parts(session, resumption, resumption.parts, now_us)

    def _locate_parts(
        self, session: Session, resumption: _Resumption, parts: tuple[str, ...], now_us: int
    ) -> None:
        """Parts a resumption no longer covers fall back to the reactive path."""
        is_handoff = resumption.kind is _ResumeKind.HANDOFF
        trigger = RouteTrigger.TARGETS_EXHAUSTED if is_handoff else RouteTrigger.RESTART_FAILED
        expected = RouteState.HANDING_OFF if is_handoff else RouteState.RESUMING
        for part in parts:
            route = session.parts[part]
            if route.state is expected:
                # The route took the move's version with the HANDOFF but never reached the
                # target: it knows the part only as of before, so the manager's answer (and a
                # REDIRECT at the move's version) must still count as news.
                route.map_version = min(
                    route.map_version, resumption.versions.get(part, route.map_version)
                )
                self._lose_part(session, route, trigger, now_us)

    def _handoff_status(self, resumption: _Resumption, state: HandoffState, detail: int) -> None:
        """Tell the source how its HANDOFF went, if its connection is still up."""
        connection = self._pool.get(resumption.source)
        if connection is None or not connection.authenticated:
            return
        status = HandoffStatus(
            sequence=resumption.sequence,
            session_id=resumption.session_id,
            state=state,
            detail_code=detail,
        )
        self._outbox.append(Outbound(destination=resumption.source, message=status))

    def _cancel_resumptions(self, session: Session, part: str, now_us: int) -> None:
        """Stop resuming `part`; the other parts of the same RESUME ask the manager instead."""
        for key, resumption in list(self._resumptions.items()):
            if key[0] == session.session_id and part in resumption.parts:
                del self._resumptions[key]
                if resumption.kind is _ResumeKind.HANDOFF:
                    self._handoff_status(resumption, HandoffState.DECLINED, 0)
                others = tuple(p for p in resumption.parts if p != part)
                self._locate_parts(session, resumption, others, now_us)

    def _check_resumptions(self, now_us: int) -> None:
        for resumption in list(self._resumptions.values()):
            if resumption.target_deadline_us <= now_us:
                self._target_failed(resumption, "RESUME timed out", 0, now_us)

    def _on_resume_reject(self, frame: ResumeReject, source: NodeId, now_us: int) -> None:
        key = (frame.session_id, source)
        if source == self._config.manager_node_id:
            self._manager_refused(frame, now_us)
            return
        if frame.reason in _HELLO_REFUSALS:
            # Unasked, answering no RESUME of ours: the server left a session our HELLO
            # presented unbound (its credential expired, or did not verify). It is not bound
            # there after all; its parts there are located anew (the manager has the last word).
            bound = self._bound.get(source)
            if bound is not None and frame.session_id in bound:
                bound.discard(frame.session_id)
                self._bind_rejected(frame, source, now_us)
            return
        if self._answers_bind(key):
            if key in self._renewing:
                # The session stays bound on that connection; only the renewal failed.
                sent = self._renewing.pop(key)
                self._renewal_failed(frame, source, sent, now_us)
                return
            self._bind_rejected(frame, source, now_us)
            return
        resumption = self._resumptions.get((frame.session_id, source))
        if resumption is None or resumption.kind is not _ResumeKind.HANDOFF:
            self._rare("late-resume-reject")
        else:
            detail = f"RESUME_REJECT {frame.reason.name}: {frame.message}"
            self._target_failed(resumption, detail, int(frame.reason), now_us)
        session = self._sessions.get(frame.session_id)
        if session is not None:
            # Other parts of the session there waited for that RESUME: they bind by credential.
            self._flush_at(session, source, now_us)

    def _on_resume_ok(self, frame: ResumeOk, source: NodeId, now_us: int) -> None:
        is_bind = self._answers_bind((frame.session_id, source))
        session = self._sessions.get(frame.session_id)
        if is_bind:
            self._renewing.pop((frame.session_id, source), None)
            if session is not None and frame.credential:
                self._renewed(session, frame.credential, now_us)
        if session is not None and self._pool.get(source) is not None:
            self._bound.setdefault(source, set()).add(frame.session_id)
        if is_bind or session is None:
            if session is not None:
                self._flush_at(session, source, now_us)
            return
        self._follow_resume_ok(frame, source, now_us)
        # Other parts of the session at the target waited for this binding.
        self._flush_at(session, source, now_us)

    def _follow_resume_ok(self, frame: ResumeOk, source: NodeId, now_us: int) -> None:
        resumption = self._resumptions.get((frame.session_id, source))
        if resumption is None or resumption.kind is not _ResumeKind.HANDOFF:
            # No RESUME is outstanding there (a restart presents the credential, not a token).
            self._rare("late-resume-ok")
            return
        del self._resumptions[(frame.session_id, source)]
        session = self._sessions[frame.session_id]
        if frame.credential:
            self._renewed(session, frame.credential, now_us)
        self._adopt_map_version(frame.map_version)
        granted = set(frame.parts)
        moved = tuple(part for part in resumption.parts if part in granted)
        refused = tuple(part for part in resumption.parts if part not in granted)
        if refused:
            leftover = _Resumption(
                kind=resumption.kind,
                session_id=resumption.session_id,
                parts=refused,
                source=resumption.source,
                targets=resumption.targets,
                token=resumption.token,
                map_version=resumption.map_version,
                received_us=resumption.received_us,
                deadline_us=now_us,
                reason=resumption.reason,
                sequence=resumption.sequence,
                versions=resumption.versions,
            )
            self._abandon(leftover, "RESUME_OK left parts out", 0, now_us)
        resent = sum(
            self._switch_part(session, part, resumption, frame, target=source, now_us=now_us)
            for part in moved
        )
        self._handoff_status(resumption, HandoffState.COMPLETED, 0)
        self._emit(
            HandoffFollowed(
                node=self.node_id,
                session_id=session.session_id,
                parts=moved,
                source=resumption.source,
                target=source,
                reason=resumption.reason,
                map_version=max(resumption.map_version, frame.map_version),
                resent_requests=resent,
                duration_us=now_us - resumption.received_us,
            )
        )

    # Session binding (PROTOCOL.md 3 and 5.13): a server serves a session only on connections
    # that proved it, by a credential in HELLO or in RESUME, or by a token in RESUME.

    def _bound_at(self, session: Session, server: NodeId, now_us: int) -> bool:
        """Whether requests of `session` may go to `server` now; if not, bind it (RESUME with
        the credential) unless a RESUME there is outstanding, and the caller holds them."""
        session_id = session.session_id
        if session_id in self._bound.get(server, ()):
            return True
        connection = self._pool.get(server)
        if connection is None:
            connection = self._connect(server, now_us)
            if connection is None:
                return False
        if connection.state is ConnectionState.CONNECTING and session_id in self._presented.get(
            server, ()
        ):
            return True
        key = (session_id, server)
        if key in self._binds or key in self._resumptions:
            return False
        parts = tuple(name for name, route in session.parts.items() if route.primary == server)
        self._send_bind(session, server, parts, now_us)
        return False

    def _send_bind(
        self, session: Session, server: NodeId, parts: tuple[str, ...], now_us: int
    ) -> bool:
        """A binding RESUME with the session's credential to `server`, naming `parts`
        (the session's parts there); False when it could not be sent (no connection slot)."""
        parts = parts[: DEFAULT_CONFIG.parts_max]
        frame = Resume(
            session_id=session.session_id,
            token=session.credential,
            parts=parts,
            map_version=max(session.parts[name].map_version for name in parts),
            unanswered=(),
        )
        if not self._send(server, frame, now_us):
            return False
        key = (session.session_id, server)
        self._binds[key] = now_us
        self._resume_kinds.setdefault(key, deque()).append(True)
        return True

    def _answers_bind(self, key: tuple[bytes, NodeId]) -> bool:
        """Whether a RESUME_OK or RESUME_REJECT for `key` answers a binding RESUME: a server
        answers the RESUMEs of a connection in the order they were sent."""
        kinds = self._resume_kinds.get(key)
        if not kinds:
            return False
        is_bind = kinds.popleft()
        if not kinds:
            del self._resume_kinds[key]
        if is_bind:
            self._binds.pop(key, None)
        return is_bind

    # Credential renewal: a session outlives any one credential (they expire after the cluster's
    # `credential_lifetime_ms`), so each is traded for a fresh one every
    # `credential_renew_interval_ms`, or every half of the lifetime the cluster's nodes state in
    # SETTINGS if that is shorter, by a binding RESUME to the primary of one of its parts.

    def _on_settings(self, frame: Settings, source: NodeId, now_us: int) -> None:
        """A cluster node states its configuration: the shortest credential lifetime stated
        sets the renewal interval from now on, and renewals due later than an interval from
        now are brought forward (a session opened or resumed before it was known). The
        manager's bound on a connection's sessions caps the sessions this client holds."""
        stated = self._stated
        if frame.client_sessions_max and source == self._config.manager_node_id:
            stated = self._stated = msgspec.structs.replace(
                stated, client_sessions_max=frame.client_sessions_max
            )
        lifetime_ms = frame.credential_lifetime_ms
        if lifetime_ms <= 0 or 0 < stated.credential_lifetime_ms <= lifetime_ms:
            return
        self._stated = msgspec.structs.replace(stated, credential_lifetime_ms=lifetime_ms)
        interval_us = self._renew_interval_us()
        latest_us = now_us + interval_us
        for session_id, due_us in list(self._renew_due.items()):
            if due_us > latest_us:
                # Spread over the second half of the interval, so that the sessions brought
                # forward together do not renew in one burst, and in step ever after.
                self._renew_at(session_id, latest_us - self._rng.randrange(interval_us // 2 + 1))

    def _renew_interval_us(self) -> int:
        """`credential_renew_interval_ms`, or half the shortest credential lifetime a cluster
        node stated (`_stated`) if that is shorter, and never below
        `RENEW_INTERVAL_FLOOR_US` for a stated one (a node stating a lifetime of a millisecond
        does not make the client renew every session a thousand times a second)."""
        interval_us = self._config.credential_renew_interval_ms * 1000
        lifetime_ms = self._stated.credential_lifetime_ms
        if lifetime_ms:
            half_us = max(lifetime_ms * 1000 // 2, RENEW_INTERVAL_FLOOR_US)
            interval_us = min(interval_us, half_us)
        return interval_us

    def _renew_at(self, session_id: bytes, due_us: int) -> None:
        self._renew_due[session_id] = due_us
        heapq.heappush(self._renewals, (due_us, session_id))
        if len(self._renewals) > 2 * len(self._renew_due) + _RENEWAL_HEAP_SLACK:
            # Entries whose session renewed or closed since: drop them.
            due = self._renew_due
            self._renewals = [entry for entry in self._renewals if due.get(entry[1]) == entry[0]]
            heapq.heapify(self._renewals)

    def _renew_credentials(self, now_us: int) -> None:
        heap = self._renewals
        retry_us = max(self._renew_interval_us() // 8, 1)
        while heap and heap[0][0] <= now_us:
            due_us, session_id = heapq.heappop(heap)
            session = self._sessions.get(session_id)
            if session is None or self._renew_due.get(session_id) != due_us:
                continue
            # Tried again after an eighth of the interval unless a fresh credential comes first.
            self._renew_at(session_id, now_us + retry_us)
            self._send_renewal(session, now_us)

    def _send_renewal(self, session: Session, now_us: int) -> None:
        """A binding RESUME with the session's credential to the primary of one of its ACTIVE
        parts: over a READY connection when one is up (picked at random, so that a retry does
        not always ask the same server), else dialling one (an idle session may have none up,
        and its credential must not expire unrenewed). None when no part is ACTIVE (the retry
        time then tries again)."""
        session_id = session.session_id
        by_server: dict[NodeId, list[str]] = {}
        for name, route in session.parts.items():
            if route.state is RouteState.ACTIVE:
                by_server.setdefault(route.primary, []).append(name)
        free = [
            server
            for server in by_server
            if (session_id, server) not in self._binds
            and (session_id, server) not in self._resumptions
        ]
        if not free:
            return
        ready = [
            server
            for server in free
            if (connection := self._pool.get(server)) is not None
            and connection.state is ConnectionState.READY
        ]
        candidates = ready or free
        server = candidates[0] if len(candidates) == 1 else self._rng.choice(candidates)
        if self._send_bind(session, server, tuple(by_server[server]), now_us):
            self._renewing[(session_id, server)] = session.credential

    def _manager_refused(self, frame: ResumeReject, now_us: int) -> None:
        """The manager refused a credential this client presented to it (CREDENTIAL_REFUSED):
        it says nothing about that session on this connection, so no part of it can be located
        any more; the session ends, its calls failing as closed with the manager's reason,
        instead of at each call's timeout. Unless the session holds another credential since
        it was presented (a renewal came meanwhile), or a renewal is in flight: the next round
        presents the credential it then holds."""
        session = self._sessions.get(frame.session_id)
        if (
            frame.reason is not ResumeRejectReason.CREDENTIAL_REFUSED
            or session is None
            or session.manager_credential != session.credential
            or any(key[0] == frame.session_id for key in self._renewing)
        ):
            # A renewal in flight may bring a fresh credential: the next round presents it.
            self._rare("manager-resume-reject-ignored")
            return
        self._emit(
            SessionResumeRejected(
                node=self.node_id,
                session_id=session.session_id,
                server=self._config.manager_node_id,
                reason=frame.reason,
                detail=frame.message,
            )
        )
        self._end_session(
            session,
            now_us,
            closed_by=self._config.manager_node_id,
            detail=frame.message or "the session manager refused the session's credential",
        )

    def _renewed(self, session: Session, credential: bytes, now_us: int) -> None:
        """A fresh credential (RESUME_OK): presented from now on, renewed in an interval."""
        session.credential = credential
        self._renew_at(session.session_id, now_us + self._renew_interval_us())
        self._emit(CredentialRenewed(node=self.node_id, session_id=session.session_id))

    def _renewal_failed(
        self, frame: ResumeReject, source: NodeId, sent: bytes, now_us: int
    ) -> None:
        """A renewal's RESUME was refused (a table full, the credential expired meanwhile):
        reported; the session stays bound where it is, and the retry time tries again, unless
        the credential it sent expired and is still the session's (no retry mends that; a
        fresher one that came meanwhile renews as usual)."""
        session = self._sessions.get(frame.session_id)
        expired = frame.reason is ResumeRejectReason.TOKEN_EXPIRED
        if expired and session is not None and session.credential == sent:
            self._renew_due.pop(frame.session_id, None)
        self._emit(
            SessionResumeRejected(
                node=self.node_id,
                session_id=frame.session_id,
                server=source,
                reason=frame.reason,
                detail=f"credential renewal: {frame.message}",
            )
        )

    def _bind_rejected(self, frame: ResumeReject, source: NodeId, now_us: int) -> None:
        """The server refused the credential: the parts there are located anew (bounded by
        `retry_attempts_max` rounds, after which their requests fail)."""
        session = self._sessions.get(frame.session_id)
        if session is None:
            return
        self._emit(
            SessionResumeRejected(
                node=self.node_id,
                session_id=session.session_id,
                server=source,
                reason=frame.reason,
                detail=frame.message,
            )
        )
        for route in session.parts.values():
            if route.state is RouteState.ACTIVE and route.primary == source:
                self._lose_part(session, route, RouteTrigger.NOT_SERVED, now_us)

    def _flush_at(self, session: Session, server: NodeId, now_us: int) -> None:
        """Send what the ACTIVE parts of `session` at `server` hold back."""
        for route in session.parts.values():
            if route.state is RouteState.ACTIVE and route.primary == server:
                self._flush(session, route, now_us, moved=False)

    def _forget_bindings(self, server: NodeId) -> None:
        """A connection is gone, and with it what it proved and the RESUMEs it owed answers to."""
        self._bound.pop(server, None)
        self._presented.pop(server, None)
        for key in [k for k in self._binds if k[1] == server]:
            del self._binds[key]
        for key in [k for k in self._resume_kinds if k[1] == server]:
            del self._resume_kinds[key]
        # A renewal that went there gets no answer now; its session's retry time stands.
        for key in [k for k in self._renewing if k[1] == server]:
            del self._renewing[key]

    def _switch_part(
        self,
        session: Session,
        part: str,
        resumption: _Resumption,
        frame: ResumeOk,
        *,
        target: NodeId,
        now_us: int,
    ) -> int:
        """Point a part at the server that answered RESUME_OK and re-send what is unanswered."""
        route = session.parts[part]
        map_version = max(route.map_version, frame.map_version)
        backups = (resumption.source, *route.servers())
        route.adopt(primary=target, backups=backups, map_version=map_version)
        route.fire(RouteTrigger.RESUME_OK)
        route.locate_attempts = 0
        return self._flush(session, route, now_us, moved=True)
