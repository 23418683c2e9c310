"""`ServerCore`: hosts parts as primary or replica, sans-IO.

The core executes the requests of each part one at a time, in arrival order, through the part's
deterministic handler; appends each write to the part's log; answers (at once for `async` parts,
after a replica's acknowledgement for `replicated` ones); ships the log to the replicas in batches;
answers retries from the dedup table; fences stale map versions; and runs the server's side of the
handoff procedure (steps 3 to 5 as source, catching up as target) and of failover (fencing on
`FailoverPrepared`, promotion when the map names a fenced replica primary).

Inputs: `receive_message` (frames from clients, cluster messages from servers and the manager,
`ConnectionOpened`/`ConnectionLost` from the driver), `handle_timer` and the command
`report_load`. Outputs: `messages_to_send`, `next_event`, `timer_us` (no store requests: servers
keep no durable state of their own). A peer that breaks the protocol gets an `Error` frame followed
by a `ConnectionCloseRequested` for its connection; nothing a peer sends raises out of the core.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from forehand.core._driver import (
    ConnectionCloseRequested,
    ConnectionLost,
    ConnectionOpened,
    NodeId,
    Outbound,
)
from forehand.core._handoff import (
    STEP_OF_TRIGGER,
    HandoffPhase,
    HandoffRun,
    HandoffSide,
    HandoffTrigger,
    Notification,
)
from forehand.core._part import Durability, Part, PartSpec, PartState, PartTrigger
from forehand.core._paths import PathTable, client_bucket, path_report
from forehand.core._replication import RESEND_DOUBLINGS_MAX, Replication
from forehand.core._server_config import ServerConfig
from forehand.core._server_events import (
    ClientHandedOff,
    HandoffStepCompleted,
    HandoffStepMissed,
    InstallCause,
    LeaveProgressed,
    LogEntryApplied,
    MapVersionAdopted,
    PartFenced,
    PartRoleChanged,
    PrimaryAcceptedWrite,
    PrimaryInstalled,
    ProtocolViolationDetected,
    RarePathTaken,
    ReplicaDivergenceDetected,
    ReplicatedWritesStalled,
    RequestExecuted,
    RequestForwardedOut,
    RequestRedirected,
    RequestRefused,
    ResumeAccepted,
    ResumeRejected,
    ServerEvent,
    ServerLeft,
    ServerSuperseded,
    SnapshotInstalled,
    StaleEpochRefused,
    StateNotEncodable,
    WriteAcknowledged,
)
from forehand.core._server_load import PartLoadMeter
from forehand.core._server_map import ServerMap, decode_published, endpoint_for
from forehand.core._waiting import ParkedRead, WaitingReads
from forehand.core.messages import (
    ANNOUNCED_PARTS_MAX,
    DrainReported,
    FailoverPrepared,
    HandoffAborted,
    HandoffAssigned,
    HandoffCompleted,
    HeartbeatReported,
    LoadReport,
    LogAcknowledged,
    LogEntry,
    LogShipped,
    MapPublished,
    MapRequested,
    PartLoad,
    PartProgress,
    PartRef,
    PositionsReported,
    RequestForwarded,
    ResponseForwarded,
    ServerAnnounced,
    SnapshotShipped,
    decode_cluster_message,
    superseded_incarnation,
)
from forehand.core.tokens import (
    ReplayCache,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenSealer,
)
from forehand.errors import RemoteProtocolError
from forehand.placement import Placement
from forehand.wire import DEFAULT_CONFIG as DEFAULT_WIRE
from forehand.wire import (
    PROTOCOL_VERSION,
    CloseSession,
    ClusterMessage,
    Endpoint,
    Error,
    ErrorCode,
    Handoff,
    HandoffFlag,
    HandoffStatus,
    Hello,
    MapRequest,
    Ping,
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
    Settings,
    Welcome,
)

__all__ = ["ServerCore"]

_NO_LOAD = LoadReport(
    cpu_utilization=0.0, queue_depth=0, latency_us_p99=0, error_ratio=0.0, requests_per_second=0.0
)
_STATUSES = {int(status): status for status in ResponseStatus}
"""Response statuses by value (the handler's statuses are validated where they are produced)."""
_SHIPPING_STATES = (PartState.PRIMARY, PartState.HANDING_OFF)
"""States in which a part's log is shipped from here."""
_SOURCE_STATES = (PartState.PRIMARY, PartState.HANDING_OFF, PartState.ABORTING)
"""States that step down when a newer epoch's primary shows up."""
_SERVING_STATES = (PartState.PRIMARY, PartState.RECEIVING)
"""States in which a client may resume a part here."""
_TAKEOVER_STATES = (PartState.REPLICA, PartState.RECEIVING, PartState.BACKUP)
"""States from which a sealed log makes this server the primary."""
LEAVE_STUCK_MS = 2_000
"""How long everything a leaving server still holds must have had nowhere to go (the manager's
`DrainReported`: every role left is waiting) before it stops anyway (`ServerLeft`): a server
that joins meanwhile takes the roles. `forehand drain` waits as long before its exit 3."""
REPLICATION_STALL_HEARTBEATS = 3
"""Heartbeat intervals a part's oldest held `replicated` answer may wait with no progress before
the server reports the stall (`ReplicatedWritesStalled`): 1.5 s at the default 500 ms."""
RESEND_HEAP_SLACK = 1024
"""Stale entries the resend heap may hold beyond twice the parts it schedules before it is
compacted (a part that settles leaves its entry until the entry falls due)."""
PLACEMENT_CACHE_ENTRIES_MAX = 4096
"""Placements of the current map a server remembers (looked up on every log shipment it gets),
or twice the parts it holds when that is more; past this many the cache starts over, so a
server's memory for it stays bounded by its own state. A new map version forgets only the parts
it moved."""
_NOT_BOUND = "session not bound to this connection: present its credential (HELLO or RESUME)"
"""The RESPONSE detail of a REQUEST for a session its connection has not proved."""
_BINDINGS_FULL = "this connection has bound connection_sessions_max sessions"
"""The RESUME_REJECT message when a connection's table of bound sessions is full."""
_CATCH_UP_QUEUE_FULL = "receiving_queue_requests_max requests wait for a replica to catch up"
"""The OVERLOADED detail when a part a failover promoted here queues no more requests."""

RESPONSE_HEAD_BYTES_MAX = 64
"""Most bytes a RESPONSE body holds besides its payload (request id, session id, status, map
version, the payload's length). A server sends frames of up to the larger of its
`frame_bytes_max` and the default 1 MiB (the setting bounds what it accepts, not what it sends;
clients decode with at least the default), less this for the rest of the body."""
_RESPONSE_PAYLOAD_MAX = DEFAULT_WIRE.frame_bytes_max - RESPONSE_HEAD_BYTES_MAX
"""The longest result every server can send (checked first: most results are far shorter)."""


def _declared_names(specs: Mapping[str, PartSpec]) -> tuple[str, ...]:
    """The app's part names, sorted; none (not said) past `ANNOUNCED_PARTS_MAX`, since a list
    cut short would have the manager refuse the parts left out."""
    names = tuple(sorted(specs))
    return names if len(names) <= ANNOUNCED_PARTS_MAX else ()


MAP_FOLLOWERS_MAX = 16
"""Peers that asked this server for its maps and get the manager's next deltas as they come
(`_on_map_requested`); past it, the one that asked longest ago is dropped."""
_PARTS_NAMED_MAX = 16
"""Parts of the app an UNKNOWN_OP answer for an undeclared part names (the rest are counted)."""

FORWARDED_READ_WAIT_DIVISOR = 2
"""A forwarded waiting read is parked for at most `forwarded_request_timeout_ms` divided by this
from its arrival: the forwarder, whose clock for it started earlier, must have the answer before
its own timeout answers the client TRY_AGAIN; half leaves room for both links and the queue."""


class _Inbound(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A request to run, as it reached this server: straight from a client or forwarded.

    Untracked by the garbage collector (`gc=False`): its fields are immutable, so it cannot be
    part of a reference cycle; one is built per request.
    """

    request_id: int
    session_id: bytes
    part: str
    op: str
    payload: bytes
    map_version: int
    hops: int
    client: NodeId
    reply_to: NodeId
    forwarded: bool
    budget_until_us: int | None = None
    """When the caller's wait budget ends (arrival plus the REQUEST's `wait_budget_ms`), or
    None when it sent none; a forward passes on what is left of it."""
    wait_until_us: int | None = None
    """The latest time a waiting read may be parked until (None: no bound but its `wait_ms`):
    `budget_until_us`, and for a forwarded one at most `forwarded_request_timeout_ms` /
    `FORWARDED_READ_WAIT_DIVISOR` after its arrival."""


class _Forward(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A request this server forwarded and owes an answer for."""

    ref: PartRef
    target: NodeId
    reply_to: NodeId
    forwarded: bool
    sent_us: int


class _DownPeer:
    """A server whose connection was lost: what waits for it, and when to try it again."""

    __slots__ = ("probe_due_us", "probes", "waiting")

    def __init__(self, *, probe_due_us: int) -> None:
        self.probe_due_us: int | None = probe_due_us
        """When to send it the next message of a waiting part (None: nothing waits)."""
        self.probes = 0
        """Messages sent to it since it went down: each doubles the wait before the next, up
        to `RESEND_DOUBLINGS_MAX` doublings of `replication_retry_ms`, as resends do."""
        self.waiting: dict[PartRef, None] = {}
        """Parts with something to ship to it, in the order they were put aside."""


class ServerCore:
    """The server's sans-IO state machine (see the module docstring)."""

    def __init__(
        self,
        *,
        config: ServerConfig,
        parts: Mapping[str, PartSpec],
        sealer: TokenSealer,
        rng: random.Random,
    ) -> None:
        self._config = config
        self._me = config.server_id
        """This server's id (read for every event and message)."""
        self._specs = dict(parts)
        # The part names the app declares, as announcements and heartbeats say them
        # (`_declared_names`), and whether the next heartbeat names them: the first one, and
        # the first on each new connection to the manager, whose leader may have changed.
        self._declared, self._declare_in_heartbeat = _declared_names(self._specs), True
        self._sealer, self._rng = sealer, rng
        self._outbox: list[Outbound] = []
        self._events: deque[ServerEvent] = deque()
        self._parts: dict[PartRef, Part] = {}
        self._shippers: dict[PartRef, Replication] = {}
        self._shipping: dict[PartRef, None] = {}
        """Parts with something to ship at the next replication round (new entries, a new
        replica, a probe to send again), in the order they were marked."""
        self._replication_due_us: int | None = None
        self._resend_due: dict[PartRef, int] = {}
        """Parts whose every stream waits for acknowledgements, by when the oldest batch in
        flight is due to be sent again; a round walks none of them."""
        # (due, tie-break, part) of `_resend_due`, with stale entries popped lazily.
        self._resend_heap: list[tuple[int, int, PartRef]] = []
        self._resend_pushes = 0
        self._down: dict[NodeId, _DownPeer] = {}
        """Servers whose connection was lost and not opened again: streams to them send nothing
        but one message at a time (`_probe_down`), and the parts waiting on them are kept
        aside until the connection opens."""
        self._held: dict[PartRef, deque[tuple[int, _Inbound, bool]]] = {}
        # Per part holding answers: the sequence of its oldest held answer at the last
        # heartbeat, and for how many heartbeats in a row it has been that one; and how many
        # parts stalled (`_check_held_progress`).
        self._held_heads: dict[PartRef, tuple[int, int]] = {}
        self._queues: dict[PartRef, deque[_Inbound]] = {}
        self._waiting: WaitingReads[_Inbound] = WaitingReads(reads_max=config.waiting_reads_max)
        """Waiting reads parked on primary parts until a write answers them or their wait ends."""
        self._forwards: dict[tuple[NodeId, bytes, int], _Forward] = {}
        self._runs: dict[int, HandoffRun] = {}
        self._run_of: dict[PartRef, int] = {}
        self._next_run_key = 1
        self._source_runs: dict[int, tuple[int, tuple[PartRef, ...]]] = {}
        """Per handoff id: how many source runs of it this server has (several when implicit
        runs, one per part, were named by one assignment: `_adopt_implicit_run`), and the parts
        of those that ended their backup period, reported when the last run goes."""
        self._notified: dict[int, set[tuple[NodeId, bytes]]] = {}
        self._handoffs_seen: OrderedDict[tuple[HandoffSide, int], None] = OrderedDict()
        self._attached: dict[bytes, OrderedDict[NodeId, None]] = {}
        self._client_sessions: dict[NodeId, set[bytes]] = {}
        self._bound: dict[NodeId, dict[bytes, None]] = {}
        self._session_parts: dict[bytes, dict[str, None]] = {}
        # Sessions given a fresh credential since the last heartbeat, for the manager's expiry:
        # each a session held when renewed, at most `parts_max` (past it no credential is
        # issued: none goes unreported).
        self._renewed: dict[bytes, None] = {}
        self._init_map_state()
        self._unsettled: dict[PartRef, int] = {}
        self._unsettled_retry_us = self._part_loads_due_us = self._stalled_parts = 0
        self._load = _NO_LOAD
        self._part_loads = PartLoadMeter(parts_max=config.parts_max)
        self._busiest: tuple[PartLoad, ...] = ()
        self._heartbeat_sequence = self._heartbeat_due_us = self._heartbeat_cursor = 0
        self._paths = PathTable(
            reports_max=config.path_reports_max, ttl_ms=config.path_report_ttl_ms
        )
        self._path_buckets: dict[NodeId, int] = {}
        self._handoff_sequence = 0
        self._replay_cache = ReplayCache(entries_max=config.replay_cache_entries_max)
        self._leave: _Leave | None = None
        self._announce()

    def _init_map_state(self) -> None:
        """The shard map held, and what waits for the maps to come."""
        self._catching_up: dict[PartRef, tuple[int, int]] = {}
        """`replicated` parts failovers made primary here whose requests wait, with the sequence
        taken over and until when they wait (`ServerConfig.failover_catch_up_ms`; at most the
        parts primary here), in deadline order."""
        self._behind: set[PartRef] = set()
        """Those of `_catching_up` whose history no replica has acknowledged yet. Every part
        of `_catching_up` waits while any is behind: a request that stalls this server, run on
        a part whose replicas caught up, would lose the history of another taken over with it
        (`forehand sim --scenario stall --seed 1478`)."""
        self._map: ServerMap | None = None
        self._placements: dict[PartRef, Placement | None] = {}
        self._map_deltas: dict[int, MapPublished] = {}
        self._fenced: dict[PartRef, None] = {}
        self._deferred: dict[PartRef, None] = {}
        self._map_retry_us: int | None = None
        # The newest map version a MapPublished from the manager itself carried (the heartbeat's
        # `manager_map_version`): the map held may be newer, learned from a peer.
        self._manager_map_version = 0
        # A peer whose refusal of a shipment fenced a part here, the map version that settles
        # it, and when to ask: the peer was fenced by the manager's failover, so it gets that
        # failover's map, and this server asks it for the map when the manager's does not come
        # (`_ask_witness`). One at a time. And the last peer asked, whose deltas are taken.
        self._map_witness: tuple[NodeId, int, int] | None = None
        self._map_peer_asked: NodeId | None = None
        # Peers that asked for this server's maps (`_on_map_requested`), each until when it gets
        # the manager's next deltas as they come, in the order they asked.
        self._map_followers: dict[NodeId, int] = {}
        # Its deltas received, by base version, until they chain from the version held to the
        # one that settles the fence (at most `map_deltas_buffered_max`).
        self._peer_deltas: dict[int, MapPublished] = {}
        # The newest deltas from the manager, consecutive, that reached the map held: a peer
        # that asks gets the chain from its version (`_on_map_requested`).
        self._map_deltas_kept: deque[MapPublished] = deque(maxlen=self._config.map_deltas_kept_max)

    def _announce(self) -> None:
        config = self._config
        self._send(
            config.manager_id,
            ServerAnnounced(
                server_id=config.server_id,
                incarnation=config.incarnation,
                address=config.address,
                zone=config.zone,
                weight=config.weight,
                credential_lifetime_ms=config.credential_lifetime_ms,
                parts=self._declared,
                heartbeat_interval_ms=config.heartbeat_interval_ms,
                transport=config.transport,
                key_fingerprints=self._sealer.key_ring.fingerprints(),
                sealing_key_id=self._sealer.key_ring.current_key_id,
            ),
        )

    # The driver shape.

    @property
    def node_id(self) -> NodeId:
        """This server's id."""
        return self._config.server_id

    @property
    def map_version(self) -> int:
        """The newest shard-map version adopted (0 before the first map)."""
        return 0 if self._map is None else self._map.version

    def server_address(self, server_id: str) -> str | None:
        """The `host:port` the newest map lists for `server_id`, or None; the runtime connects
        there when the core sends to a server it has no connection to."""
        return None if self._map is None else self._map.address(server_id)

    def part(self, ref: PartRef) -> Part | None:
        """The part held for `ref`, for inspection (tests, admin API); do not mutate it."""
        return self._parts.get(ref)

    def parts(self) -> list[Part]:
        """Every part held, in the order they were created here."""
        return list(self._parts.values())

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        """Feed one message from `source`; a protocol violation closes only that peer."""
        handler = _DISPATCH.get(type(message))
        try:
            if handler is None:
                raise RemoteProtocolError(
                    f"unexpected {type(message).__name__} at a server",
                    error_code=ErrorCode.FRAME_UNEXPECTED,
                )
            handler(self, message, source, now_us)
        except RemoteProtocolError as error:
            self._violation(source, error.error_code, str(error))

    def handle_timer(self, *, now_us: int) -> None:
        """Run whatever is due: heartbeat, replication round, handoff steps, retries."""
        if now_us >= self._heartbeat_due_us and not self._departed():
            self._heartbeat(now_us)
        if self._replication_due_us is not None and now_us >= self._replication_due_us:
            self._replication_round(now_us)
        if self._resend_heap and now_us >= self._resend_heap[0][0]:
            self._resend_round(now_us)
        if self._down:
            self._probe_down(now_us)
        for key in list(self._runs):
            run = self._runs.get(key)
            due = None if run is None else run.next_due_us()
            if run is not None and due is not None and now_us >= due:
                self._run_due(key, run, now_us)
        if self._map_retry_us is not None and now_us >= self._map_retry_us:
            self._request_map(now_us)
        if self._map_witness is not None and now_us >= self._map_witness[2]:
            self._ask_witness(now_us)
        self._expire_forwards(now_us)
        if self._catching_up:
            self._catch_up_timeouts(now_us)
        if self._waiting:
            for read in self._waiting.take_due(now_us):
                self._answer_not_yet(read)

    def store_result(self, result: object, *, now_us: int) -> None:
        """Servers emit no store requests, so a store result is a driver bug."""
        raise AssertionError(f"ServerCore got a store result it never asked for: {result!r}")

    def messages_to_send(self) -> list[Outbound]:
        """Drain the messages produced so far, in order."""
        out, self._outbox = self._outbox, []
        return out

    def store_requests(self) -> list[object]:
        """Servers keep no durable state of their own: always empty."""
        return []

    def next_event(self) -> ServerEvent | None:
        """Pop the oldest event."""
        return self._events.popleft() if self._events else None

    def timer_us(self) -> int | None:
        """The earliest time `handle_timer` has something to do."""
        candidates: list[int] = [] if self._departed() else [self._heartbeat_due_us]
        if self._replication_due_us is not None:
            candidates.append(self._replication_due_us)
        if self._resend_heap:
            candidates.append(self._resend_heap[0][0])
        if self._map_retry_us is not None:
            candidates.append(self._map_retry_us)
        if self._map_witness is not None:
            candidates.append(self._map_witness[2])
        for down in self._down.values():
            if down.probe_due_us is not None:
                candidates.append(down.probe_due_us)
        for run in self._runs.values():
            due = run.next_due_us()
            if due is not None:
                candidates.append(due)
        if self._forwards:
            oldest = next(iter(self._forwards.values()))
            candidates.append(oldest.sent_us + self._forward_timeout_us)
        if self._waiting:
            read_due_us = self._waiting.due_us()
            if read_due_us is not None:
                candidates.append(read_due_us)
        if self._catching_up:
            # At once when none is behind any more (a demotion or a fence cleared the last).
            candidates.append(next(iter(self._catching_up.values()))[1] if self._behind else 0)
        return min(candidates, default=None)

    # Commands.

    def report_load(self, load: LoadReport) -> None:
        """The runtime's (or simulator's) latest sample of this server's load, for heartbeats."""
        self._load = load

    @property
    def requests_waiting_count(self) -> int:
        """Requests received and not answered yet: queued at a handoff target or at a failover's
        new primary waiting for a replica, answers held for a replica's acknowledgement, and
        requests forwarded to another server."""
        queued = sum(len(queue) for queue in self._queues.values())
        held = sum(len(answers) for answers in self._held.values())
        return queued + held + len(self._forwards)

    @property
    def reads_parked_count(self) -> int:
        """Waiting reads parked until a write or their deadline answers them (not counted in
        `requests_waiting_count`: they wait for the application, not for this server)."""
        return len(self._waiting)

    def leave(self, *, now_us: int) -> None:
        """Command: this server is stopping (SIGTERM) and asks the manager to drain it first.
        Every heartbeat from now on says `leaving` (the first goes at once); the manager drains
        the server as an operator's drain would and answers each with `DrainReported`. The
        server keeps serving meanwhile (forwarding, backups); `ServerLeft` says when it may
        stop without a failover. Idempotent."""
        if self._leave is not None:
            return
        self._leave = _Leave(started_us=now_us)
        if self._map is None:
            # Never joined (or joined no map yet): it holds nothing to hand off.
            self._leave.left = True
            self._emit(ServerLeft(node=self._me, roles_left=0, primaries_left=0))
            return
        self._heartbeat_due_us = min(self._heartbeat_due_us, now_us)

    @property
    def leaving(self) -> bool:
        """Whether `leave` was called."""
        return self._leave is not None

    def _departed(self) -> bool:
        """Whether this server's drain finished and its last heartbeat (`left`) went."""
        return self._leave is not None and self._leave.departed

    def answer_waiting_reads(self, *, now_us: int) -> None:
        """Answer every parked read "nothing yet" at once (the server is shutting down): each
        client calls again, at whichever server serves the part next."""
        for read in self._waiting.take_all():
            self._answer_not_yet(read)

    # Plumbing.

    @property
    def _forward_timeout_us(self) -> int:
        return self._config.forwarded_request_timeout_ms * 1000

    def _send(self, destination: NodeId, message: object) -> None:
        self._outbox.append(Outbound(destination=destination, message=message))

    def _emit(self, event: ServerEvent) -> None:
        self._events.append(event)

    def _rare(self, name: str) -> None:
        self._emit(RarePathTaken(node=self._me, name=name))

    def _violation(self, peer: NodeId, code: int, reason: str) -> None:
        error_code = ErrorCode.from_wire(code)
        self._send(peer, Error(code=error_code, reason=reason))
        self._send(peer, ConnectionCloseRequested(peer=peer, error_code=error_code, reason=reason))
        self._emit(
            ProtocolViolationDetected(
                node=self._me, peer=peer, error_code=error_code, reason=reason
            )
        )

    def _endpoint(self, server_id: str) -> Endpoint:
        address = None if self._map is None else self._map.address(server_id)
        if server_id == self._me and self._config.address:
            address = self._config.address
        return endpoint_for(server_id, address)

    def _transition(self, part: Part, trigger: PartTrigger) -> None:
        previous = part.transition(trigger)
        if previous is PartState.PRIMARY and part.ref in self._waiting:
            # Whatever ends the primary role here (a handoff, a step-down, a drop), its parked
            # reads must not hold it up: "nothing yet", and the client's next call finds the
            # part where it went.
            self._release_reads(part.ref)
        self._emit(
            PartRoleChanged(
                node=self._me,
                ref=part.ref,
                previous=previous,
                state=part.state,
                trigger=trigger,
                epoch=part.epoch,
            )
        )

    # Requests.

    def _on_request(self, message: Request, source: NodeId, now_us: int) -> None:
        budget_ms = message.wait_budget_ms
        budget_until_us = None if budget_ms is None else now_us + budget_ms * 1000
        inbound = _Inbound(
            request_id=message.request_id,
            session_id=message.session_id,
            part=message.part,
            op=message.op,
            payload=message.payload,
            map_version=message.map_version,
            hops=0,
            client=source,
            reply_to=source,
            forwarded=False,
            budget_until_us=budget_until_us,
            wait_until_us=budget_until_us,
        )
        bound = self._bound.get(source)
        if bound is None or message.session_id not in bound:
            # PROTOCOL.md 5.6: a session is served only on connections that proved it.
            self._refuse(inbound, ResponseStatus.NOT_FOUND, _NOT_BOUND)
            return
        part = self._parts.get(PartRef(session_id=message.session_id, part=message.part))
        if part is None:
            self._not_here(inbound)
            return
        self._attach(source, message.session_id)
        self._route(part, inbound, now_us)

    def _on_request_forwarded(self, message: RequestForwarded, source: NodeId, now_us: int) -> None:
        budget_ms = message.wait_budget_ms
        budget_until_us = None if budget_ms is None else now_us + budget_ms * 1000
        wait_until_us = now_us + self._forward_timeout_us // FORWARDED_READ_WAIT_DIVISOR
        if budget_until_us is not None:
            wait_until_us = min(wait_until_us, budget_until_us)
        inbound = _Inbound(
            request_id=message.request_id,
            session_id=message.session_id,
            part=message.part,
            op=message.op,
            payload=message.payload,
            map_version=message.map_version,
            hops=message.hops,
            client=message.client,
            reply_to=source,
            forwarded=True,
            budget_until_us=budget_until_us,
            wait_until_us=wait_until_us,
        )
        part = self._parts.get(PartRef(session_id=message.session_id, part=message.part))
        if part is None:
            self._not_here(inbound)
            return
        self._route(part, inbound, now_us)

    def _route(self, part: Part, inbound: _Inbound, now_us: int) -> None:
        state = part.state
        if state is PartState.PRIMARY:
            self._serve(part, inbound, now_us)
        elif state in (PartState.HANDING_OFF, PartState.BACKUP):
            if self._answer_from_dedup(part, inbound):
                return
            if part.ref in self._catching_up:
                # Behind what waits for a replica, so that the target runs them in order.
                self._enqueue(part, inbound, full=_CATCH_UP_QUEUE_FULL)
                return
            self._forward(part, inbound, now_us)
        elif state is PartState.RECEIVING:
            if not self._answer_from_dedup(part, inbound):
                self._enqueue(part, inbound)
        elif state is PartState.ABORTING:
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, "handoff aborted; awaiting the map")
        else:
            self._redirect_to_primary(part, inbound)

    def _serve(self, part: Part, inbound: _Inbound, now_us: int) -> None:
        if self._answer_from_dedup(part, inbound):
            return
        if not inbound.forwarded and inbound.map_version < part.epoch:
            self._redirect(part.ref, inbound, map_version=part.epoch, primary=self._me)
            return
        if part.fenced:
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, "part fenced by a failover")
            return
        if self._catching_up and part.ref in self._catching_up:
            if self._behind:
                self._enqueue(part, inbound, full=_CATCH_UP_QUEUE_FULL)
                return
            self._release_catching_up(now_us)
        # Offered load: counted before an OVERLOADED refusal, since the demand moves with the
        # part (see _server_load.py); duplicates, redirects and fenced requests are not counted.
        if self._config.heartbeat_part_loads_max:
            self._part_loads.record(part.ref)
        if inbound.op in part.spec.read_ops:
            self._read(part, inbound, now_us)
            return
        replicated = part.spec.durability is Durability.REPLICATED
        held = self._held.get(part.ref)
        if replicated and held is not None and len(held) >= self._config.replicated_answers_max:
            self._refuse(inbound, ResponseStatus.OVERLOADED, "too many answers await replicas")
            return
        entry = part.execute(request_id=inbound.request_id, op=inbound.op, payload=inbound.payload)
        self._emit_executed(part.ref, part.epoch, entry.request_id, entry.seq, entry.status)
        self._emit(
            PrimaryAcceptedWrite(
                node=self._me,
                ref=part.ref,
                map_version=entry.epoch,
                log_index=entry.seq,
                request_id=entry.request_id,
            )
        )
        self._answer_entry(part, entry, inbound, from_dedup=False)
        self._mark_shipping(part.ref, now_us, urgent=replicated)
        if part.ref in self._waiting:
            self._wake_reads(part)

    # Waiting reads.

    def _read(self, part: Part, inbound: _Inbound, now_us: int) -> None:
        """Run a read-only op and answer it, or park it when it is a waiting read with nothing
        to answer yet: until the op's `wait_ms` passes, or sooner the caller's wait budget, or
        for a forwarded one the bound that keeps its forwarder from timing out first
        (`_Inbound.wait_until_us`). A budget already spent is answered at once."""
        status, result, waiting = part.read(op=inbound.op, payload=inbound.payload)
        wait_ms = part.spec.wait_ops.get(inbound.op) if waiting else None
        deadline_us = None if wait_ms is None else now_us + wait_ms * 1000
        if deadline_us is not None and inbound.wait_until_us is not None:
            deadline_us = min(deadline_us, inbound.wait_until_us)
        if deadline_us is None or deadline_us <= now_us:
            if deadline_us is not None:
                self._rare("waiting-read-budget-spent")
            self._emit_executed(part.ref, part.epoch, inbound.request_id, None, status)
            self._reply(inbound, status, result, part.epoch)
            return
        key = (inbound.session_id, inbound.request_id)
        if self._waiting.full(key):
            self._rare("waiting-reads-full")
            self._refuse(inbound, ResponseStatus.OVERLOADED, "waiting_reads_max reached")
            return
        read = ParkedRead(
            ref=part.ref,
            client=inbound.reply_to,
            request_id=inbound.request_id,
            request=inbound,
            deadline_us=deadline_us,
            status=status,
            result=result,
        )
        replaced = self._waiting.park(read)
        if replaced is None:
            return
        # The client sent it again: the newer copy answers for both. One that came another
        # way (forwarded by a handoff source, while the client re-sent it here after RESUME)
        # may still be waited for there: TRY_AGAIN releases it, and the client's re-send of
        # it lands on the copy parked on its own connection.
        self._rare("waiting-read-parked-again")
        if replaced.client != read.client:
            self._refuse(replaced.request, ResponseStatus.TRY_AGAIN, "sent again another way")

    def _wake_reads(self, part: Part) -> None:
        """A write changed the part: run its parked reads again, in arrival order, and answer
        those that have a result now."""
        for read in self._waiting.of_part(part.ref):
            inbound = read.request
            status, result, waiting = part.read(op=inbound.op, payload=inbound.payload)
            if waiting:
                read.status, read.result = status, result
                continue
            self._waiting.remove(read)
            self._emit_executed(part.ref, part.epoch, inbound.request_id, None, status)
            self._reply(inbound, status, result, part.epoch)

    def _release_reads(self, ref: PartRef) -> None:
        for read in self._waiting.take_part(ref):
            self._answer_not_yet(read)

    def _answer_not_yet(self, read: ParkedRead[_Inbound]) -> None:
        """Answer a parked read with what its handler's last run said to answer "nothing yet"
        with (OK and the app's encoding of None)."""
        part = self._parts.get(read.ref)
        epoch = self.map_version if part is None else part.epoch
        inbound = read.request
        self._emit_executed(read.ref, epoch, inbound.request_id, None, read.status)
        self._reply(inbound, read.status, read.result, epoch)

    def _emit_executed(
        self, ref: PartRef, epoch: int, request_id: int, seq: int | None, status: int
    ) -> None:
        self._emit(
            RequestExecuted(
                node=self._me,
                ref=ref,
                request_id=request_id,
                map_version=epoch,
                log_index=seq,
                status=status,
            )
        )

    def _answer_from_dedup(self, part: Part, inbound: _Inbound) -> bool:
        entry = part.dedup.get(inbound.request_id)
        if entry is None:
            return False
        self._answer_entry(part, entry, inbound, from_dedup=True)
        return True

    def _answer_entry(
        self, part: Part, entry: LogEntry, inbound: _Inbound, *, from_dedup: bool
    ) -> None:
        if self._must_hold(part, entry.seq):
            self._held.setdefault(part.ref, deque()).append((entry.seq, inbound, from_dedup))
            return
        self._acknowledge(part, entry, inbound, from_dedup=from_dedup)

    def _must_hold(self, part: Part, seq: int) -> bool:
        """Whether a `replicated` answer still waits for a replica to hold `seq`."""
        if part.spec.durability is not Durability.REPLICATED or part.state not in _SHIPPING_STATES:
            return False
        shipper = self._shippers.get(part.ref)
        return shipper is None or shipper.acked_max() < seq

    def _acknowledge(
        self, part: Part, entry: LogEntry, inbound: _Inbound, *, from_dedup: bool
    ) -> None:
        self._reply(inbound, entry.status, entry.result, entry.epoch, log_index=entry.seq)
        self._emit(
            WriteAcknowledged(
                node=self._me,
                ref=part.ref,
                request_id=entry.request_id,
                durability=part.spec.durability,
                map_version=entry.epoch,
                log_index=entry.seq,
                client=inbound.client,
                from_dedup=from_dedup,
                client_facing=not inbound.forwarded,
            )
        )

    def _release_held(self, part: Part) -> None:
        held = self._held.get(part.ref)
        while held and not self._must_hold(part, held[0][0]):
            seq, inbound, from_dedup = held.popleft()
            entry = part.log.get(seq) or part.dedup.get(inbound.request_id)
            if entry is None or entry.seq != seq:
                self._refuse(inbound, ResponseStatus.TRY_AGAIN, "entry no longer retained")
                continue
            self._acknowledge(part, entry, inbound, from_dedup=from_dedup)
        if held is not None and not held:
            del self._held[part.ref]

    def _fail_held(self, ref: PartRef, detail: str) -> None:
        """A part stops being primary here: its unanswered writes get TRY_AGAIN, so clients retry
        at the new primary, which answers from its dedup table if the write survived."""
        for _, inbound, _ in self._held.pop(ref, ()):
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, detail)

    def _reply(
        self,
        inbound: _Inbound,
        status: int,
        payload: bytes,
        map_version: int,
        *,
        log_index: int = 0,
    ) -> None:
        if inbound.forwarded:
            self._send(
                inbound.reply_to,
                ResponseForwarded(
                    client=inbound.client,
                    request_id=inbound.request_id,
                    session_id=inbound.session_id,
                    status=status,
                    map_version=map_version,
                    payload=payload,
                    log_index=log_index,
                ),
            )
            return
        size = len(payload)
        if size > _RESPONSE_PAYLOAD_MAX and size > self._response_payload_max():
            # The handler's result cannot travel in one RESPONSE frame: the runtime would drop
            # the frame and the client wait for its timeout. It gets APP_ERROR saying so (a
            # write stays executed; its retry is answered the same way from the dedup table).
            detail = (
                f"{inbound.part}.{inbound.op or 'request'}: the result is {size} bytes, more "
                f"than a RESPONSE frame carries ({self._response_payload_max()} bytes of "
                "payload); return less, or page it"
            )
            self._rare("response-too-large")
            self._refuse(inbound, ResponseStatus.APP_ERROR, detail)
            return
        self._send(
            inbound.client,
            Response(
                request_id=inbound.request_id,
                session_id=inbound.session_id,
                status=_STATUSES[status],
                map_version=map_version,
                payload=payload,
            ),
        )

    def _response_payload_max(self) -> int:
        """The longest result a RESPONSE carries (`RESPONSE_HEAD_BYTES_MAX`)."""
        sent_max = max(self._config.frame_bytes_max, DEFAULT_WIRE.frame_bytes_max)
        return sent_max - RESPONSE_HEAD_BYTES_MAX

    def _refuse(self, inbound: _Inbound, status: ResponseStatus, detail: str) -> None:
        self._reply(inbound, status, detail.encode(), self.map_version)
        self._emit(
            RequestRefused(
                node=self._me,
                session_id=inbound.session_id,
                part=inbound.part,
                request_id=inbound.request_id,
                client=inbound.client,
                status=status,
                detail=detail,
            )
        )

    def _not_here(self, inbound: _Inbound) -> None:
        ref = PartRef(session_id=inbound.session_id, part=inbound.part)
        placement = None if self._map is None else self._map.placement(ref)
        if placement is not None and placement.primary != self._me and not inbound.forwarded:
            self._redirect(ref, inbound, map_version=self.map_version, primary=placement.primary)
            return
        if placement is not None and inbound.part not in self._specs:
            # The map placed here a part this server's app does not declare (a part no app has,
            # or servers running different apps): no retry can help, so the answer is final.
            declared = sorted(self._specs)
            listed = ", ".join(declared[:_PARTS_NAMED_MAX]) or "none"
            if len(declared) > _PARTS_NAMED_MAX:
                listed += f" and {len(declared) - _PARTS_NAMED_MAX} more"
            self._refuse(
                inbound,
                ResponseStatus.UNKNOWN_OP,
                f"the app on {self._me} declares no part {inbound.part!r} (it declares {listed})",
            )
            return
        status = ResponseStatus.TRY_AGAIN if placement is not None else ResponseStatus.NOT_FOUND
        self._refuse(inbound, status, "part not held by this server")

    def _redirect_to_primary(self, part: Part, inbound: _Inbound) -> None:
        placement = None if self._map is None else self._map.placement(part.ref)
        if inbound.forwarded or placement is None or placement.primary == self._me:
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, "this server is not the primary")
            return
        version = max(self.map_version, part.epoch)
        self._redirect(part.ref, inbound, map_version=version, primary=placement.primary)

    def _redirect(self, ref: PartRef, inbound: _Inbound, *, map_version: int, primary: str) -> None:
        self._send(
            inbound.client,
            Redirect(
                request_id=inbound.request_id,
                session_id=inbound.session_id,
                part=inbound.part,
                map_version=map_version,
                targets=(self._endpoint(primary),),
            ),
        )
        self._emit(
            RequestRedirected(
                node=self._me,
                ref=ref,
                request_id=inbound.request_id,
                client=inbound.client,
                map_version=map_version,
            )
        )

    def _enqueue(self, part: Part, inbound: _Inbound, *, full: str = "handoff queue full") -> None:
        queue = self._queues.setdefault(part.ref, deque())
        if len(queue) >= self._config.receiving_queue_requests_max:
            self._refuse(inbound, ResponseStatus.OVERLOADED, full)
            return
        queue.append(inbound)

    def _drain_queue(self, part: Part, now_us: int) -> None:
        queue = self._queues.pop(part.ref, None)
        while queue:
            self._route(part, queue.popleft(), now_us)

    def _fail_queue(self, ref: PartRef, detail: str) -> None:
        for inbound in self._queues.pop(ref, ()):
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, detail)

    # Forwarding (handoff steps 3 and 5).

    def _forward(self, part: Part, inbound: _Inbound, now_us: int) -> None:
        key = self._run_of.get(part.ref, 0)
        run = self._runs.get(key)
        if run is None:
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, "no handoff target known")
            return
        hops = inbound.hops + 1
        if hops > self._config.forward_hops_max:
            self._rare("forward-hops-exceeded")
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, "forward_hops_max reached")
            return
        forward_key = (inbound.client, inbound.session_id, inbound.request_id)
        forwards = self._forwards
        if forward_key not in forwards and len(forwards) >= self._config.forwarded_requests_max:
            self._refuse(inbound, ResponseStatus.OVERLOADED, "forwarded_requests_max reached")
            return
        forwards.pop(forward_key, None)
        forwards[forward_key] = _Forward(
            ref=part.ref,
            target=run.peer,
            reply_to=inbound.reply_to,
            forwarded=inbound.forwarded,
            sent_us=now_us,
        )
        self._send(
            run.peer,
            RequestForwarded(
                client=inbound.client,
                request_id=inbound.request_id,
                session_id=inbound.session_id,
                part=inbound.part,
                op=inbound.op,
                payload=inbound.payload,
                map_version=max(self.map_version, run.map_version),
                hops=hops,
                wait_budget_ms=_budget_left_ms(inbound.budget_until_us, now_us),
            ),
        )
        self._emit(
            RequestForwardedOut(
                node=self._me,
                ref=part.ref,
                request_id=inbound.request_id,
                target=run.peer,
                hops=hops,
            )
        )
        if part.state is PartState.BACKUP and not inbound.forwarded:
            self._notify_late_client(key, run, inbound.client, inbound.session_id, now_us)

    def _on_response_forwarded(
        self, message: ResponseForwarded, source: NodeId, now_us: int
    ) -> None:
        try:
            status = ResponseStatus(message.status)
        except ValueError:
            raise RemoteProtocolError(
                f"unknown response status {message.status}",
                error_code=ErrorCode.FRAME_ENCODING_ERROR,
            ) from None
        key = (message.client, message.session_id, message.request_id)
        forward = self._forwards.get(key)
        if forward is None or forward.target != source:
            # Not the server it went to: the forward still waits for that server's answer.
            return
        del self._forwards[key]
        part = self._parts.get(forward.ref)
        if part is not None and part.state is PartState.ABORTING:
            # An aborted handoff may be reverted: an answer the target gave must not reach the
            # client, or a write the revert discards would count as acknowledged. The client
            # sends it again (the surviving history's dedup table answers it if it holds it).
            self._rare("forwarded-answer-dropped-while-aborting")
            self._refuse_forward(key, forward, "handoff aborted; awaiting the map")
            return
        inbound = _Inbound(
            request_id=message.request_id,
            session_id=message.session_id,
            part=forward.ref.part,
            op="",
            payload=b"",
            map_version=message.map_version,
            hops=0,
            client=message.client,
            reply_to=forward.reply_to,
            forwarded=forward.forwarded,
        )
        if (
            part is not None
            and part.state is PartState.PRIMARY
            and message.log_index > 0
            and not _holds_entry(part, message.request_id, message.log_index, message.map_version)
        ):
            # This server leads the part again (a failover put it back while the handoff's
            # target was cut off), and the write the target answers for is not in its history:
            # the target executed it on a history the failover replaced, so it is lost. The
            # client sends it again, to this primary (`forehand sim --seed 9200900`).
            self._rare("forwarded-answer-from-a-replaced-history")
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, "the part's primary changed")
            return
        placement = self._placement(forward.ref) if message.log_index > 0 else None
        if placement is not None and placement.primary not in (source, self._me):
            # The map this server holds names another primary than the one that answered: the
            # target wrote on a history a failover may have replaced (it was paused, declared
            # dead, and ran the forward when it woke), so its answer may name a write no
            # surviving history holds. The client sends it again, to the primary it learns;
            # that history's dedup table answers it if the write survived (`forehand sim
            # --scenario leave-faults --seed 745`).
            self._rare("forwarded-answer-from-a-former-primary")
            self._refuse(inbound, ResponseStatus.TRY_AGAIN, "the part's primary changed")
            return
        self._reply(
            inbound, status, message.payload, message.map_version, log_index=message.log_index
        )
        spec = self._specs.get(forward.ref.part)
        if not forward.forwarded and message.log_index > 0 and spec is not None:
            self._emit(
                WriteAcknowledged(
                    node=self._me,
                    ref=forward.ref,
                    request_id=message.request_id,
                    durability=spec.durability,
                    map_version=message.map_version,
                    log_index=message.log_index,
                    client=message.client,
                    from_dedup=False,
                    client_facing=True,
                )
            )

    def _expire_forwards(self, now_us: int) -> None:
        """A forward unanswered for `forwarded_request_timeout_ms` is answered TRY_AGAIN: its
        target may be behind a silent link, which no lost connection reports. Before, it was
        forgotten and the client waited out its own timeout (found live, a handoff whose source
        and target were cut from each other)."""
        horizon = now_us - self._forward_timeout_us
        while self._forwards:
            key, forward = next(iter(self._forwards.items()))
            if forward.sent_us > horizon:
                break
            del self._forwards[key]
            self._refuse_forward(key, forward, "the handoff target did not answer in time")

    def _refuse_forwards(self, refs: Collection[PartRef], reason: str) -> None:
        """Answer TRY_AGAIN for every request forwarded for one of `refs`: an aborted handoff
        drops what its target answers, and the client sends them again once the map says who
        serves the part."""
        if not refs or not self._forwards:
            return
        for key, forward in list(self._forwards.items()):
            if forward.ref in refs:
                del self._forwards[key]
                self._refuse_forward(key, forward, reason)

    def _refuse_forward(
        self, key: tuple[NodeId, bytes, int], forward: _Forward, reason: str
    ) -> None:
        """TRY_AGAIN for a forward no longer waited for (already taken out of `_forwards`)."""
        inbound = _Inbound(
            request_id=key[2],
            session_id=key[1],
            part=forward.ref.part,
            op="",
            payload=b"",
            map_version=0,
            hops=0,
            client=key[0],
            reply_to=forward.reply_to,
            forwarded=forward.forwarded,
        )
        self._refuse(inbound, ResponseStatus.TRY_AGAIN, reason)

    # Sessions and clients.

    def _attach(self, client: NodeId, session_id: bytes) -> None:
        clients = self._attached.setdefault(session_id, OrderedDict())
        if client in clients:
            clients.move_to_end(client)
            return
        clients[client] = None
        self._client_sessions.setdefault(client, set()).add(session_id)
        while len(clients) > self._config.session_clients_max:
            evicted, _ = clients.popitem(last=False)
            self._client_sessions.get(evicted, set()).discard(session_id)

    def _can_bind(self, client: NodeId, session_id: bytes) -> bool:
        """Whether `client`'s connection has `session_id` bound or room to bind it."""
        bound = self._bound.get(client, {})
        return session_id in bound or len(bound) < self._config.connection_sessions_max

    def _bind(self, client: NodeId, session_id: bytes) -> bool:
        """Record that `client`'s connection proved `session_id`; False when its table is full."""
        if not self._can_bind(client, session_id):
            self._rare("connection-sessions-full")
            return False
        self._bound.setdefault(client, {})[session_id] = None
        return True

    def _detach_client(self, client: NodeId) -> None:
        for session_id in self._client_sessions.pop(client, set()):
            clients = self._attached.get(session_id)
            if clients is not None:
                clients.pop(client, None)
                if not clients:
                    del self._attached[session_id]

    def _on_hello(self, message: Hello, source: NodeId, now_us: int) -> None:
        if PROTOCOL_VERSION not in message.versions:
            raise RemoteProtocolError(
                f"no common protocol version in {message.versions}",
                error_code=ErrorCode.VERSION_NEGOTIATION_FAILED,
            )
        # The sessions whose credential does not bind: (session, reason, why). Each stays
        # unbound and the connection serves the others: closing it refused every session of the
        # client on this server, at each reconnection, for one bad credential (one the client
        # kept past its lifetime, offline that long, or a tampered snapshot it resumed). A
        # RESUME_REJECT after the WELCOME tells the client which.
        refused: dict[bytes, tuple[ResumeRejectReason, str]] = {}
        for credential in message.credentials:
            session_id = credential.session_id
            try:
                claims = self._sealer.open_credential(credential.credential, now_us=now_us)
            except TokenError as error:
                refused[session_id] = self._refuse_credential(session_id, error, source)
                continue
            if claims.session_id != session_id:
                mismatch = TokenInvalid("the credential is another session's")
                refused[session_id] = self._refuse_credential(session_id, mismatch, source)
                continue
            # Bound even when no part is held yet: a new session's map may reach this server
            # after its client, and the proof stays valid for the connection's lifetime.
            if self._bind(source, claims.session_id) and claims.session_id in self._session_parts:
                self._attach(source, claims.session_id)
        self._path_buckets[source] = client_bucket(
            message.client_id, buckets=self._config.path_buckets_max
        )
        self._send(
            source,
            Welcome(
                version=PROTOCOL_VERSION,
                server_id=self._me,
                map_version=self.map_version,
                frame_bytes_max=self._config.frame_bytes_max,
                idle_timeout_ms=self._config.idle_timeout_ms,
            ),
        )
        # The lifetime of the credentials RESUME_OK brings, so that the client renews them in
        # time whatever its own interval (a client that does not know SETTINGS skips it).
        self._send(source, Settings(credential_lifetime_ms=self._config.credential_lifetime_ms))
        bound = self._bound.get(source, {})
        for session_id, (reason, why) in refused.items():
            if session_id not in bound:  # Another credential of it in the HELLO bound it.
                self._send(source, ResumeReject(session_id=session_id, reason=reason, message=why))

    def _refuse_credential(
        self, session_id: bytes, error: TokenError, source: NodeId
    ) -> tuple[ResumeRejectReason, str]:
        """A HELLO credential that does not bind: reported, and what to tell the client."""
        expired = isinstance(error, TokenExpired)
        self._rare("hello-credential-expired" if expired else "hello-credential-refused")
        self._emit(
            ResumeRejected(
                node=self._me,
                client=source,
                session_id=session_id,
                reason=error.reject_reason,
                detail=f"HELLO credential: {error}",
            )
        )
        if expired:
            return ResumeRejectReason.HELLO_CREDENTIAL_EXPIRED, "the HELLO credential expired"
        return ResumeRejectReason.CREDENTIAL_REFUSED, f"the HELLO credential was refused: {error}"

    def _on_ping(self, message: Ping, source: NodeId, now_us: int) -> None:
        self._send(source, Pong(sequence=message.sequence, sent_us=message.sent_us))
        bucket = self._path_buckets.get(source)
        if bucket is None:
            return  # Only clients (known by their HELLO) report paths.
        for sample in message.telemetry:
            report = path_report(sample, client_bucket=bucket)
            if report is not None:
                self._paths.record(report, now_us=now_us)

    def _on_close_session(self, message: CloseSession, source: NodeId, now_us: int) -> None:
        clients = self._attached.get(message.session_id)
        if clients is not None:
            clients.pop(source, None)
        self._client_sessions.get(source, set()).discard(message.session_id)
        bound = self._bound.get(source)
        if bound is not None:
            bound.pop(message.session_id, None)
        if self._waiting:
            # The client failed the session's calls when it closed it: nothing to answer.
            self._waiting.take_session(source, message.session_id)

    def _on_handoff_status(self, message: HandoffStatus, source: NodeId, now_us: int) -> None:
        """Clients report how a HANDOFF went; the source has nothing to change either way."""

    def _on_map_request(self, message: MapRequest, source: NodeId, now_us: int) -> None:
        """Clients fetch maps from the manager; a server ignores the request without closing."""
        self._rare("map-request-at-server")

    def _on_error(self, message: Error, source: NodeId, now_us: int) -> None:
        """The peer closes its connection; the driver will report `ConnectionLost`. From the
        manager, SUPERSEDED says another process runs as this server: this one must stop."""
        if source == self._config.manager_id and message.code == ErrorCode.SUPERSEDED:
            # The reason names the refused incarnation first: the running process's connection
            # may carry the ERROR meant for a stale one (it replaced the stale one's meanwhile).
            if superseded_incarnation(message.reason) == self._config.incarnation:
                self._emit(ServerSuperseded(node=self.node_id, reason=message.reason))
            else:
                self._rare("superseded-another-incarnation")

    def _on_connection_opened(self, message: ConnectionOpened, source: NodeId, now_us: int) -> None:
        """Clients introduce themselves with HELLO, servers with their messages. A server this
        one ships to is reachable again: the streams to it that were waiting (a probe
        unanswered, resends backing off while its dials failed) ship again at once, and their
        resend time starts over."""
        peer = message.peer
        if peer == self._config.manager_id:
            self._declare_in_heartbeat = True
        if self.server_address(peer) is None:
            return
        self._down.pop(peer, None)
        for ref, shipper in self._shippers.items():
            stream = shipper.streams.get(peer)
            if stream is not None and (stream.resends or stream.acked_seq is None):
                stream.resends = 0
                stream.restart()
                self._mark_shipping(ref, now_us)

    def _on_connection_lost(self, message: ConnectionLost, source: NodeId, now_us: int) -> None:
        peer = message.peer
        self._detach_client(peer)
        if self._waiting:
            # No answer can reach it; the client sends them again on another connection.
            self._waiting.take_client(peer)
        self._path_buckets.pop(peer, None)
        self._bound.pop(peer, None)
        if self.server_address(peer) is not None and peer not in self._down:
            # Where each replica on it stands is unknown again, and until a connection to it
            # opens, its streams wait: one message at a time tries it (at once, then backing
            # off). Probing every part again at each failed dial, or at each resend time, kept
            # a server whose peer died busy for seconds, with every part it leads.
            down = _DownPeer(probe_due_us=now_us)
            for ref, shipper in self._shippers.items():
                stream = shipper.streams.get(peer)
                if stream is not None:
                    stream.reprobe()
                    down.waiting[ref] = None
            # A server the map lists as dead is down only while a stream still goes to it (a
            # handoff's sealed stream): with none, nothing waits for it, and every part shipped
            # would ask which of its streams do.
            if down.waiting or self._listed_alive(peer):
                self._down[peer] = down
                if self._behind:
                    self._behind_replicas_down(now_us)
        elif peer not in self._down:
            # A server the map does not list (a handoff target the map no longer names): only
            # its sealed streams remain, probed again at the next replication round and then at
            # their resend times.
            for ref, shipper in self._shippers.items():
                stream = shipper.streams.get(peer)
                if stream is not None and stream.acked_seq is not None:
                    stream.reprobe()
                    self._mark_shipping(ref, now_us)
        for key, forward in list(self._forwards.items()):
            if forward.target == peer:
                del self._forwards[key]
                self._refuse_forward(key, forward, "handoff target unreachable")
            elif forward.reply_to == peer:
                del self._forwards[key]

    def _on_cluster_frame(self, message: ClusterMessage, source: NodeId, now_us: int) -> None:
        # Dispatched as receive_message would, whose handler of violations is already around
        # this call.
        inner = decode_cluster_message(message.body)
        handler = _DISPATCH.get(type(inner))
        if handler is None:
            raise RemoteProtocolError(
                f"unexpected {type(inner).__name__} at a server",
                error_code=ErrorCode.FRAME_UNEXPECTED,
            )
        handler(self, inner, source, now_us)

    # Resume (the target's half of handoff step 4, and resumption after failover).

    def _on_resume(self, message: Resume, source: NodeId, now_us: int) -> None:
        try:
            claims = self._sealer.open(message.token, now_us=now_us)
        except TokenInvalid as error:
            # Not a token: it may be the session's credential, which binds without moving parts.
            self._resume_with_credential(message, source, error, now_us)
            return
        except TokenError as error:
            self._reject_resume(message, source, error.reject_reason, str(error))
            return
        names = message.parts or claims.parts
        problem = self._resume_problem(message, claims.session_id, claims.target_server, names)
        if problem is None and not set(names) <= set(claims.parts):
            problem = (ResumeRejectReason.WRONG_PART, "token does not cover every part")
        if problem is None:
            problem = self._resume_staleness(message, claims.map_version, names)
        if problem is None and not self._can_bind(source, message.session_id):
            problem = (ResumeRejectReason.OVERLOADED, _BINDINGS_FULL)
        if problem is not None:
            self._reject_resume(message, source, problem[0], problem[1])
            return
        try:
            self._replay_cache.admit(claims, now_us=now_us)
        except TokenError as error:
            self._reject_resume(message, source, error.reject_reason, str(error))
            return
        self._bind(source, message.session_id)
        self._attach(source, message.session_id)
        version = max(
            [self.map_version]
            + [
                self._parts[PartRef(session_id=message.session_id, part=name)].epoch
                for name in names
            ]
        )
        self._send(
            source,
            ResumeOk(session_id=message.session_id, parts=tuple(names), map_version=version),
        )
        self._emit(
            ResumeAccepted(
                node=self._me,
                client=source,
                session_id=message.session_id,
                parts=tuple(names),
                map_version=version,
            )
        )

    def _resume_with_credential(
        self, message: Resume, source: NodeId, token_error: TokenInvalid, now_us: int
    ) -> None:
        """RESUME carrying the session's credential (PROTOCOL.md 5.13): binds the session to the
        connection and changes nothing else; requests then meet the usual REQUEST table."""
        try:
            claims = self._sealer.open_credential(message.token, now_us=now_us)
        except TokenInvalid:
            self._reject_resume(message, source, token_error.reject_reason, str(token_error))
            return
        except TokenError as error:
            self._reject_resume(message, source, error.reject_reason, str(error))
            return
        if claims.session_id != message.session_id:
            self._reject_resume(
                message,
                source,
                ResumeRejectReason.TOKEN_INVALID,
                "credential names another session",
            )
            return
        if not self._bind(source, message.session_id):
            self._reject_resume(message, source, ResumeRejectReason.OVERLOADED, _BINDINGS_FULL)
            return
        fresh = b""
        if message.session_id in self._session_parts:
            self._attach(source, message.session_id)
        renewed = self._renewed
        if message.session_id in self._session_parts and (
            len(renewed) < self._config.parts_max or claims.session_id in renewed
        ):
            # A fresh credential, valid `credential_lifetime_ms` from now: a client renews its
            # own this way before it expires (a session outlives any one credential). Only for
            # a session this server holds a part of: one closed (or never here) gets none, so a
            # credential of a session that ended dies with its lifetime, as before. Each is
            # reported to the manager (its session expiry); with the report queue full (the
            # manager not heard for long) none is issued, and the client renews again later.
            fresh = self._sealer.issue_credential(
                session_id=claims.session_id,
                client_id=claims.client_id,
                now_us=now_us,
                lifetime_ms=self._config.credential_lifetime_ms,
            )
            renewed[claims.session_id] = None
        self._send(
            source,
            ResumeOk(
                session_id=message.session_id,
                parts=message.parts,
                map_version=self.map_version,
                credential=fresh,
            ),
        )

    def _resume_problem(
        self, message: Resume, session_id: bytes, target: str, names: Iterable[str]
    ) -> tuple[ResumeRejectReason, str] | None:
        if session_id != message.session_id:
            return ResumeRejectReason.TOKEN_INVALID, "token names another session"
        if target and target != self._me:
            return ResumeRejectReason.WRONG_SERVER, f"token is for {target}"
        if message.session_id not in self._session_parts:
            return ResumeRejectReason.SESSION_UNKNOWN, "no part of the session is held here"
        for name in names:
            part = self._parts.get(PartRef(session_id=message.session_id, part=name))
            if part is None or part.state not in _SERVING_STATES:
                return ResumeRejectReason.WRONG_PART, f"part {name!r} is not served here"
        return None

    def _resume_staleness(
        self, message: Resume, token_version: int, names: Iterable[str]
    ) -> tuple[ResumeRejectReason, str] | None:
        known = max(message.map_version, token_version)
        for name in names:
            part = self._parts[PartRef(session_id=message.session_id, part=name)]
            if known < part.epoch:
                return (
                    ResumeRejectReason.SHARD_MAP_STALE,
                    f"part {name!r} moved at map version {part.epoch}, after {known}",
                )
        return None

    def _reject_resume(
        self, message: Resume, source: NodeId, reason: ResumeRejectReason, detail: str
    ) -> None:
        self._send(
            source, ResumeReject(session_id=message.session_id, reason=reason, message=detail)
        )
        self._emit(
            ResumeRejected(
                node=self._me,
                client=source,
                session_id=message.session_id,
                reason=reason,
                detail=detail,
            )
        )

    # Replication: the primary side.

    def _mark_shipping(self, ref: PartRef, now_us: int, *, urgent: bool = False) -> None:
        if ref not in self._shippers:
            return
        self._shipping[ref] = None
        if urgent:
            self._ship(ref, now_us)
        if self._replication_due_us is None:
            self._replication_due_us = now_us + self._config.replication_interval_ms * 1000

    def _ship(self, ref: PartRef, now_us: int) -> None:
        part = self._parts.get(ref)
        shipper = self._shippers.get(ref)
        self._shipping.pop(ref, None)
        if part is None or shipper is None:
            self._resend_due.pop(ref, None)
            return
        down = self._down
        for node, message in shipper.ship(part, epoch=part.epoch, now_us=now_us, skip=down):
            self._send(node, message)
        if shipper.unencodable:
            self._report_unencodable(ref, shipper)
        last_seq = part.log.last_seq
        if shipper.idle(last_seq):
            self._resend_due.pop(ref, None)
            return
        # Everything a stream may send went out: what is left waits for an acknowledgement
        # (which ships again at once), a new entry (which marks the part), or the resend time
        # of the oldest batch in flight. Rounds skip the part until then: a server taking over
        # tens of thousands of parts would otherwise walk them all every round.
        due = shipper.resend_due_us(down)
        if down:
            pending = shipper.pending(last_seq)
            waiting = [node for node in pending if node in down]
            for node in waiting:
                self._wait_for(node, ref)
            if waiting and due is None and len(waiting) == len(pending):
                # Only peers that are down have anything left: they ship when they are back.
                self._resend_due.pop(ref, None)
                return
        due = now_us + self._config.replication_interval_ms * 1000 if due is None else due
        scheduled = self._resend_due.get(ref)
        if scheduled is not None and scheduled <= due:
            return
        self._resend_due[ref] = due
        self._resend_pushes += 1
        heap = self._resend_heap
        if len(heap) > 2 * len(self._resend_due) + RESEND_HEAP_SLACK:
            # Parts that settled leave their entries behind until due: drop them.
            scheduled_at = self._resend_due
            heap[:] = [entry for entry in heap if scheduled_at.get(entry[2]) == entry[0]]
            heapq.heapify(heap)
        heapq.heappush(heap, (due, self._resend_pushes, ref))

    def _wait_for(self, peer: NodeId, ref: PartRef) -> None:
        """Put `ref` aside until `peer`, which is down, connects again."""
        down = self._down[peer]
        if not down.waiting and down.probe_due_us is None:
            down.probe_due_us = 0
        down.waiting[ref] = None

    def _probe_down(self, now_us: int) -> None:
        """Send each peer that is down and due one message of a part waiting for it: the
        driver connects to send it, and the connection's opening (or loss) tells whether the
        peer is back, for the price of one message rather than one per part."""
        retry_us = self._config.replication_retry_ms * 1000
        gone: list[NodeId] = []
        for peer, down in self._down.items():
            if down.probe_due_us is None or now_us < down.probe_due_us:
                continue
            sent = False
            while down.waiting and not sent:
                ref = next(iter(down.waiting))
                part = self._parts.get(ref)
                shipper = self._shippers.get(ref)
                if part is None or shipper is None or peer not in shipper.streams:
                    del down.waiting[ref]
                    continue
                for node, message in shipper.ship_again(
                    part, peer, epoch=part.epoch, now_us=now_us
                ):
                    self._send(node, message)
                    sent = True
                if shipper.unencodable:
                    self._report_unencodable(ref, shipper)
                if not sent:
                    # Nothing to send it after all (its stream settled meanwhile).
                    del down.waiting[ref]
            if not sent:
                down.probe_due_us = None
                if not self._listed_alive(peer):
                    # Dead in the map (or out of it) with no stream left to it (a handoff's
                    # sealed streams ended): nothing waits for it any more.
                    gone.append(peer)
                continue
            down.probe_due_us = now_us + (retry_us << min(down.probes, RESEND_DOUBLINGS_MAX))
            down.probes += 1
        for peer in gone:
            del self._down[peer]

    def _listed_alive(self, peer: NodeId) -> bool:
        return self._map is not None and self._map.lists_alive(peer)

    def _forget_down(self, peer: NodeId) -> None:
        """Drop the parts waiting for `peer` that no longer have a stream to it; with none left,
        `peer` is no longer down."""
        down = self._down[peer]
        for ref in list(down.waiting):
            shipper = self._shippers.get(ref)
            if shipper is None or peer not in shipper.streams:
                del down.waiting[ref]
        if not down.waiting:
            del self._down[peer]

    def _peer_up(self, peer: NodeId, now_us: int) -> None:
        """`peer` connected again: the parts put aside for it ship at once."""
        down = self._down.pop(peer, None)
        if down is None:
            return
        for ref in down.waiting:
            shipper = self._shippers.get(ref)
            stream = None if shipper is None else shipper.streams.get(peer)
            if stream is not None:
                stream.resends = 0
                stream.restart()
                self._mark_shipping(ref, now_us)

    def _replication_round(self, now_us: int) -> None:
        for ref in list(self._shipping):
            self._ship(ref, now_us)
        self._replication_due_us = (
            now_us + self._config.replication_interval_ms * 1000 if self._shipping else None
        )

    def _resend_round(self, now_us: int) -> None:
        """Ship the parts whose oldest batch in flight is due to be sent again."""
        heap = self._resend_heap
        due_now: list[PartRef] = []
        while heap and heap[0][0] <= now_us:
            due_us, _, ref = heapq.heappop(heap)
            if self._resend_due.get(ref) == due_us:
                del self._resend_due[ref]
                due_now.append(ref)
        for ref in due_now:
            self._ship(ref, now_us)

    def _report_unencodable(self, ref: PartRef, shipper: Replication) -> None:
        """A handler left the part's state unencodable, so a replica that needs a snapshot gets
        none (it is tried again at the resend times): the application's bug, reported, not this
        server's failure (before, the encoder's exception closed the link to the replica, again
        at each of its acknowledgements)."""
        for node, detail in shipper.take_unencodable():
            self._emit(StateNotEncodable(node=self._me, ref=ref, replica=node, detail=detail))

    def _start_shipping(self, part: Part, now_us: int) -> None:
        """Become the shipper of `part` towards the replicas the map names."""
        shipper = self._shippers.get(part.ref)
        if shipper is None:
            shipper = self._shippers[part.ref] = Replication(
                batch_entries_max=self._config.log_batch_entries_max,
                inflight_batches_max=self._config.replication_inflight_batches_max,
                retry_us=self._config.replication_retry_ms * 1000,
            )
        shipper.set_replicas(self._replicas_of(part.ref))
        self._mark_shipping(part.ref, now_us)

    def _stop_shipping(self, ref: PartRef) -> None:
        if self._catching_up.pop(ref, None) is not None:
            # No longer primary here: what waited for its replicas is sent on to the next.
            self._fail_queue(ref, "the part's primary changed")
            self._no_longer_behind(ref, now_us=None)
        self._shippers.pop(ref, None)
        self._shipping.pop(ref, None)
        self._resend_due.pop(ref, None)

    def _placement(self, ref: PartRef) -> Placement | None:
        """`ref`'s placement in the current map, remembered until the map changes: a replica
        checks it for every shipment, and a lookup hashes the part onto the ring."""
        placements = self._placements
        if ref in placements:
            return placements[ref]
        placement = None if self._map is None else self._map.placement(ref)
        if len(placements) >= self._placements_max():
            placements.clear()
        placements[ref] = placement
        return placement

    def _placements_max(self) -> int:
        return max(PLACEMENT_CACHE_ENTRIES_MAX, 2 * len(self._parts))

    def _replicas_of(self, ref: PartRef) -> list[str]:
        placement = self._placement(ref)
        if placement is None:
            return []
        return [node for node in placement.replicas if node != self._me]

    def _on_log_acknowledged(self, message: LogAcknowledged, source: NodeId, now_us: int) -> None:
        part = self._parts.get(message.ref)
        shipper = self._shippers.get(message.ref)
        if part is None or shipper is None:
            return
        if message.epoch > part.epoch:
            # A failover replaced this primary: no replica takes its entries any more, so the
            # answers held for them would wait out the clients' timeouts. The clients send them
            # again, and find the promoted replica (or this server again, if the failover kept
            # it, where the dedup table answers them).
            self._fence(part, message.epoch, cause="replica_fenced")
            self._fail_held(part.ref, "part fenced by a failover")
            # The map that settles the part: the first at or above the fence, and above the one
            # held (a fence at or below it waits for the next: the map held, come whole past
            # versions, may not show what the fence was for).
            wanted = max(message.epoch, self.map_version + 1)
            witness = self._map_witness
            if witness is None or wanted > witness[1]:
                # Asked after a retry interval, counted from the first fence.
                due_us = now_us + self._config.map_request_retry_ms * 1000
                self._map_witness = (source, wanted, due_us if witness is None else witness[2])
            self._request_map(now_us)
            return
        if source in self._down:
            # An answer came through: the peer is back (its connection's notice may follow).
            self._peer_up(source, now_us)
        outcome = shipper.on_ack(part, message, source=source)
        if not outcome.known:
            return
        if outcome.diverged:
            self._rare("replica-history-diverged")
        if outcome.sealed:
            self._seal_acknowledged(part, now_us)
        self._release_held(part)
        if self._behind and part.ref in self._behind and not self._still_behind(part):
            self._no_longer_behind(part.ref, now_us=now_us)
        if part.state is PartState.PRIMARY:
            part.log.trim_through(shipper.acked_min())
        if shipper.settled(part.log.last_seq):
            # Every replica holds everything (the common case: one write in flight per part).
            self._shipping.pop(part.ref, None)
            self._resend_due.pop(part.ref, None)
            return
        # The window just opened: keep the pipeline full rather than wait for the next round.
        self._mark_shipping(part.ref, now_us, urgent=True)

    def _fence(self, part: Part, version: int, *, cause: str) -> None:
        if version <= part.fence_version:
            return
        part.fence_version = version
        self._fenced[part.ref] = None
        if self._catching_up.pop(part.ref, None) is not None:
            self._fail_queue(part.ref, "part fenced by a failover")
            self._no_longer_behind(part.ref, now_us=None)
        if part.fenced and part.ref in self._waiting:
            # A fenced primary serves nothing until the map settles it (its reads too).
            self._release_reads(part.ref)
        self._emit(PartFenced(node=self._me, ref=part.ref, fence_version=version, cause=cause))

    # Replication: the replica side.

    def _on_log_shipped(self, message: LogShipped, source: NodeId, now_us: int) -> None:
        for index, entry in enumerate(message.entries):
            if entry.seq != message.prev_seq + 1 + index:
                raise RemoteProtocolError(
                    f"LogShipped entries are not contiguous after {message.prev_seq}"
                )
        if not self._sender_current(message.ref, message.epoch, source, "log"):
            return
        part = self._part_for_shipment(message.ref, message.epoch)
        if part is None or not self._admit_shipment(part, message.epoch, source, "log", now_us):
            return
        if part.state is PartState.PRIMARY:
            self._shipment_to_primary(part, message, source)
            return
        complete = self._apply_entries(part, message)
        if message.entries:
            # A handoff source listed as the new primary's replica applies its entries while it
            # waits for the seal's acknowledgement: its own stream to the target ships them.
            self._mark_shipping(part.ref, now_us)
        takeover = (
            complete
            and message.sealed
            and part.state in _TAKEOVER_STATES
            and self._may_take_over(part.ref, message.epoch)
        )
        # The seal is acknowledged at the sealed position, before queued requests run here.
        self._send_ack(part, source, sealed=takeover)
        if takeover:
            self._take_over(part, message.epoch, source, now_us)

    def _may_take_over(self, ref: PartRef, epoch: int) -> bool:
        """Whether a sealed log of `epoch` may make this server the part's primary.

        Not when this server's map, at or past the seal's epoch, names another primary: the seal
        is left over from a move that a newer map undid (the sender is primary there again), and
        taking over would leave two servers primary. The part stays a replica; the sender's
        unacknowledged seal runs into its deadline and the manager settles the part.
        """
        current = self._map
        if current is None or current.version < epoch:
            return True
        placement = current.placement(ref)
        if placement is not None and placement.primary == self._me:
            return True
        self._rare("stale-seal-not-taken-over")
        return False

    def _on_snapshot_shipped(self, message: SnapshotShipped, source: NodeId, now_us: int) -> None:
        if not self._sender_current(message.ref, message.epoch, source, "snapshot"):
            return
        part = self._part_for_shipment(message.ref, message.epoch)
        if part is None or not self._admit_shipment(
            part, message.epoch, source, "snapshot", now_us
        ):
            return
        if part.state is PartState.PRIMARY:
            self._rare("snapshot-to-primary-refused")
            return
        part.install_snapshot(
            seq=message.seq, seq_epoch=message.seq_epoch, state=message.state, dedup=message.dedup
        )
        self._mark_shipping(part.ref, now_us)  # A handoff source's stream ships from here.
        self._emit(
            SnapshotInstalled(node=self._me, ref=part.ref, log_index=message.seq, source=source)
        )
        self._send_ack(part, source, sealed=False)

    def _sender_current(self, ref: PartRef, epoch: int, source: NodeId, kind: str) -> bool:
        """Whether a shipment may come from `source` at all, judged by this server's map.

        Fencing (`FailoverPrepared`) reaches only the replicas alive during a failover; one that
        restarted since has forgotten it. So the map judges too: a shipment at an epoch the map
        has moved past comes from a replaced primary (cut off, not dead) unless its sender is the
        map's primary or this server is (a handoff target getting the sealed log). The refusal
        carries this copy's epoch when it is newer, which fences the sender as `_admit_shipment`
        does; never the map version, which is no epoch of the part: a fence that high would also
        shut this copy off from the part's real primary. Without a map nothing can be judged:
        the primary ships again once the map is here.
        """
        current = self._map
        if current is None:
            self._rare("shipment-before-map")
            return False
        if epoch > current.version:
            return True
        placement = self._placement(ref)
        part = self._parts.get(ref)
        primary_here = placement is not None and placement.primary == self._me
        serving = part is not None and part.state is PartState.PRIMARY
        if primary_here and serving and part is not None and epoch > part.epoch:
            # This server is the map's primary since before `epoch`: a sender claiming a newer
            # epoch is a replaced primary handing off on its own; it must not depose this one.
            self._rare("shipment-to-primary-from-replaced-source")
            return False
        if placement is not None and placement.primary in (source, self._me):
            if self._me in placement.servers:
                return True
            # The map's primary has not seen that this server no longer replicates the part.
            self._rare("shipment-to-former-replica")
            return False
        self._rare("shipment-from-replaced-primary")
        self._emit(
            StaleEpochRefused(
                node=self._me,
                ref=ref,
                peer=source,
                kind=kind,
                message_version=epoch,
                part_epoch=current.version,
            )
        )
        floor = 0 if part is None else max(part.epoch, part.fence_version)
        if part is not None and floor > epoch:
            self._send(
                source,
                LogAcknowledged(
                    ref=ref,
                    epoch=floor,
                    acked_seq=part.applied_seq,
                    acked_epoch=part.log.last_epoch,
                ),
            )
        return False

    def _part_for_shipment(self, ref: PartRef, epoch: int) -> Part | None:
        part = self._parts.get(ref)
        if part is not None:
            return part
        # A primary ships only to servers its map names, so an unknown part is one this server's
        # (older) map has not placed here yet: hold it as a replica.
        part = self._create_part(ref, epoch=epoch)
        if part is not None:
            self._transition(part, PartTrigger.PLACED_AS_REPLICA)
        return part

    def _admit_shipment(
        self, part: Part, epoch: int, source: NodeId, kind: str, now_us: int
    ) -> bool:
        floor = max(part.epoch, part.fence_version)
        if epoch < floor and self._sealing_soon(part, epoch, source):
            # The source of this target's handoff shipped before it learned of the move. Its
            # seal, at the move's version, brings these entries again; refusing them with this
            # epoch would fence it, and it would step down at the move instead of handing over.
            self._rare("shipment-before-the-seal-ignored")
            return False
        if epoch < floor:
            self._emit(
                StaleEpochRefused(
                    node=self._me,
                    ref=part.ref,
                    peer=source,
                    kind=kind,
                    message_version=epoch,
                    part_epoch=floor,
                )
            )
            self._send(
                source,
                LogAcknowledged(
                    ref=part.ref,
                    epoch=floor,
                    acked_seq=part.applied_seq,
                    acked_epoch=part.log.last_epoch,
                ),
            )
            return False
        if epoch > part.epoch and part.state in _SOURCE_STATES:
            self._rare("primary-stepped-down-for-newer-epoch")
            self._step_down(part, now_us)
        part.epoch = max(part.epoch, epoch)
        return True

    def _sealing_soon(self, part: Part, epoch: int, source: NodeId) -> bool:
        """Whether `part` waits (RECEIVING) for the sealed log of `source`, which shipped at
        `epoch`, a version no failover fenced since the move: the source is still the primary,
        until its seal or a failover of the move.

        Refused, the source would be fenced at the move's version, which it cannot tell from a
        failover's: a source cut off one way from the manager, catching up, then took the move
        for a failover that replaced it and dropped its part, losing the `async` writes it had
        acknowledged meanwhile. So the wait outlives the handoff's deadline (until the map
        settles the part, or a failover fences it: `forehand sim --scenario drain-one-way --seed
        17600012`), and a fence below the move's version does not count: a map settled it before
        the move, leaving the source primary (a failover that kept it, its history ahead), a
        failover such a source never heard of (`--seed 17600018`). A fence at or above the move's
        version is a failover of the move itself: its source may be the replaced one.
        """
        awaited = part.awaited if part.state is PartState.RECEIVING else None
        if awaited is None or awaited[0] != source:
            return False
        return part.fence_version <= epoch or part.fence_version < awaited[1]

    def _shipment_to_primary(self, part: Part, message: LogShipped, source: NodeId) -> None:
        # The same epoch shipping to its own primary is either the handoff source resending a
        # seal this server already applied (acknowledge again) or a second primary (refuse).
        # Only the seal this copy took over with is acknowledged again: any other (the seal of a
        # source replaced while it was cut off, this server promoted by a failover meanwhile)
        # may carry writes this history does not hold, and its acknowledgement would tell the
        # source they are here. Comparing entries is not enough: this log may be trimmed.
        # The seal may end past the sequence taken over at: a source listed as this primary's
        # replica applies its new entries (only this primary ships at that epoch) while it waits,
        # and its resent seal carries them; each one this log still holds must be this one's.
        sealed_seq = message.prev_seq + len(message.entries)
        if message.sealed:
            sealed_by = part.sealed_by
            if (
                sealed_by is not None
                and sealed_by[:2] == (source, message.epoch)
                and sealed_by[2] <= sealed_seq <= part.applied_seq
                and all(
                    part.log.epoch_at(entry.seq) in (None, entry.epoch) for entry in message.entries
                )
            ):
                self._send_ack(part, source, sealed=True, seq=sealed_seq)
            else:
                self._rare("seal-of-another-history-refused")
            return
        self._rare("same-epoch-primaries")

    def _apply_entries(self, part: Part, message: LogShipped) -> bool:
        """Apply what follows the replica's position; True when the batch is fully applied."""
        if message.prev_seq > part.applied_seq:
            return False
        for entry in message.entries:
            if entry.seq <= part.applied_seq:
                known = part.log.epoch_at(entry.seq)
                if known is not None and known != entry.epoch:
                    self._emit(
                        ReplicaDivergenceDetected(
                            node=self._me, ref=part.ref, log_index=entry.seq, detail="history"
                        )
                    )
                    part.reset()
                    return False
                continue
            outcome = part.replay(entry)
            self._emit(
                LogEntryApplied(
                    node=self._me,
                    ref=part.ref,
                    log_index=entry.seq,
                    map_version=entry.epoch,
                    request_id=entry.request_id,
                )
            )
            if outcome.diverged:
                self._emit(
                    ReplicaDivergenceDetected(
                        node=self._me, ref=part.ref, log_index=entry.seq, detail="result"
                    )
                )
        return part.applied_seq >= message.prev_seq + len(message.entries)

    def _send_ack(
        self, part: Part, destination: NodeId, *, sealed: bool, seq: int | None = None
    ) -> None:
        acked_seq = part.applied_seq if seq is None else seq
        acked_epoch = part.log.epoch_at(acked_seq) if seq is not None else part.log.last_epoch
        self._send(
            destination,
            LogAcknowledged(
                ref=part.ref,
                epoch=part.epoch,
                acked_seq=acked_seq,
                acked_epoch=acked_epoch or 0,
                sealed=sealed,
            ),
        )

    # Roles.

    def _create_part(self, ref: PartRef, *, epoch: int) -> Part | None:
        spec = self._specs.get(ref.part)
        if spec is None:
            self._rare("unknown-part-name")
            return None
        if len(self._parts) >= self._config.parts_max:
            self._rare("parts-max-reached")
            return None
        part = Part(
            ref=ref,
            spec=spec,
            epoch=epoch,
            log_entries_max=self._config.log_entries_max,
            dedup_entries_max=self._config.dedup_entries_max,
        )
        self._parts[ref] = part
        self._session_parts.setdefault(ref.session_id, {})[ref.part] = None
        return part

    def _drop(self, part: Part) -> None:
        self._transition(part, PartTrigger.REMOVED)
        ref = part.ref
        self._stop_shipping(ref)
        self._fail_held(ref, "part left this server")
        self._fail_queue(ref, "part left this server")
        del self._parts[ref]
        self._part_loads.forget(ref)
        names = self._session_parts.get(ref.session_id)
        if names is not None:
            names.pop(ref.part, None)
            if not names:
                del self._session_parts[ref.session_id]
                for client in self._attached.pop(ref.session_id, OrderedDict()):
                    self._client_sessions.get(client, set()).discard(ref.session_id)

    def _still_behind(self, part: Part) -> bool:
        """Whether no replica of `part` has acknowledged the history it took over. Not when
        every replica's connection is down: none would acknowledge before the bound."""
        shipper = self._shippers.get(part.ref)
        if shipper is None or shipper.acked_max() >= self._catching_up[part.ref][0]:
            return False
        down = self._down
        return not down or not all(node in down for node in shipper.streams)

    def _no_longer_behind(self, ref: PartRef, *, now_us: int | None) -> None:
        """`ref` has a replica caught up (or left): once none is behind, every waiting part
        runs what it queued, in order (`now_us` None: in the middle of a demotion or a fence,
        so at the next request or timer, which is due at once)."""
        self._behind.discard(ref)
        if not self._behind and self._catching_up and now_us is not None:
            self._release_catching_up(now_us)

    def _behind_replicas_down(self, now_us: int) -> None:
        """A peer went down: the parts behind whose every replica is down wait no more."""
        for ref in list(self._behind):
            part = self._parts.get(ref)
            if part is None or not self._still_behind(part):
                self._no_longer_behind(ref, now_us=now_us)

    def _release_catching_up(self, now_us: int) -> None:
        waiting, self._catching_up = self._catching_up, {}
        for ref in waiting:
            self._run_waiting(ref, now_us)

    def _run_waiting(self, ref: PartRef, now_us: int) -> None:
        """Run what `ref` queued while it waited for its replicas, in order."""
        part = self._parts.get(ref)
        if part is not None and ref in self._queues:
            self._drain_queue(part, now_us)

    def _catch_up_timeouts(self, now_us: int) -> None:
        """End the waits `failover_catch_up_ms` allows (entries come in deadline order), and
        release the rest once none is behind."""
        while self._catching_up:
            ref, (_, until_us) = next(iter(self._catching_up.items()))
            if until_us > now_us:
                break
            self._rare("failover-catch-up-timed-out")
            del self._catching_up[ref]
            self._behind.discard(ref)
            self._run_waiting(ref, now_us)
        if self._catching_up and not self._behind:
            self._release_catching_up(now_us)

    def _install_primary(self, part: Part, cause: InstallCause, now_us: int) -> None:
        self._catching_up.pop(part.ref, None)
        self._behind.discard(part.ref)
        if (
            cause is InstallCause.FAILOVER
            and part.spec.durability is Durability.REPLICATED
            and part.applied_seq
            and self._config.failover_catch_up_ms
            and self._replicas_of(part.ref)
        ):
            until_us = now_us + self._config.failover_catch_up_ms * 1000
            self._catching_up[part.ref] = (part.applied_seq, until_us)
            self._behind.add(part.ref)
        self._emit(
            PrimaryInstalled(
                node=self._me,
                ref=part.ref,
                map_version=part.epoch,
                log_index=part.applied_seq,
                cause=cause,
            )
        )
        self._start_shipping(part, now_us)
        if part.ref in self._behind and not self._still_behind(part):
            self._no_longer_behind(part.ref, now_us=now_us)
        self._drain_queue(part, now_us)

    def _take_over(self, part: Part, epoch: int, source: NodeId, now_us: int) -> None:
        """The handoff source's sealed log is applied: this server is the primary at `epoch`."""
        if part.state is not PartState.RECEIVING:
            self._transition(part, PartTrigger.HANDOFF_TARGETED)
        part.epoch = max(part.epoch, epoch)
        part.sealed_by = (source, epoch, part.applied_seq)
        self._transition(part, PartTrigger.SEALED_LOG_RECEIVED)
        self._install_primary(part, InstallCause.HANDOFF, now_us)
        run = self._runs.get(self._run_of.get(part.ref, 0))
        if run is not None and run.side is HandoffSide.TARGET:
            run.waiting.discard(part.ref)
            if not run.waiting:
                self._finish_target(run, now_us)

    def _step_down(self, part: Part, now_us: int) -> None:
        """A newer epoch's primary exists: stop writing, become its replica."""
        self._stop_shipping(part.ref)
        self._fail_held(part.ref, "primary moved")
        self._supersede_run_of(part.ref, now_us)
        self._transition(part, PartTrigger.DEMOTED)

    # Handoff: the source (steps 3 to 5).

    def _on_handoff_assigned(self, message: HandoffAssigned, source: NodeId, now_us: int) -> None:
        if message.source == self._me:
            self._start_source(message, now_us)
        elif message.target == self._me:
            self._start_target(message, now_us)
        else:
            self._rare("handoff-assigned-to-others")

    def _seen(self, side: HandoffSide, handoff_id: int) -> bool:
        key = (side, handoff_id)
        if key in self._handoffs_seen:
            return True
        self._handoffs_seen[key] = None
        while len(self._handoffs_seen) > self._config.handoff_ids_remembered_max:
            self._handoffs_seen.popitem(last=False)
        return False

    def _start_source(self, message: HandoffAssigned, now_us: int) -> None:
        if self._seen(HandoffSide.SOURCE, message.handoff_id):
            return
        if self._adopt_implicit_run(message, now_us):
            return
        refs = tuple(
            ref
            for ref in message.parts
            if (part := self._parts.get(ref)) is not None and part.state is PartState.PRIMARY
        )
        active = sum(1 for run in self._runs.values() if run.side is HandoffSide.SOURCE)
        detail = ""
        if not refs:
            detail = "no part of the handoff is primary here"
        elif active >= self._config.handoffs_concurrent_max:
            detail = "handoffs_concurrent_max reached"
        if detail:
            self._send(
                self._config.manager_id,
                HandoffAborted(
                    handoff_id=message.handoff_id,
                    server_id=self._me,
                    parts=message.parts,
                    detail=detail,
                ),
            )
            self._rare("handoff-refused-at-source")
            return
        self._begin_source_run(
            handoff_id=message.handoff_id,
            refs=refs,
            target=message.target,
            map_version=message.map_version,
            reason=message.reason,
            deadline_us=now_us + message.deadline_ms * 1000,
            now_us=now_us,
        )

    def _adopt_implicit_run(self, message: HandoffAssigned, now_us: int) -> bool:
        """A map already moved the parts and implicit runs (id 0) are shipping: name them all.

        The map starts one implicit run per moved part; every one of the handoff's parts must
        report under the handoff's id, or an unnamed run would abort on its own while the
        manager waits for (or reverts) the handoff.
        """
        parts = set(message.parts)
        adopted = False
        for run in self._runs.values():
            if (
                run.side is HandoffSide.SOURCE
                and run.handoff_id == 0
                and run.peer == message.target
                and parts & set(run.refs)
            ):
                run.handoff_id = message.handoff_id
                self._count_source_run(run, 1)
                run.reason = message.reason
                run.deadline_us = now_us + message.deadline_ms * 1000
                adopted = True
        return adopted

    def _begin_source_run(
        self,
        *,
        handoff_id: int,
        refs: tuple[PartRef, ...],
        target: str,
        map_version: int,
        reason: int,
        deadline_us: int,
        now_us: int,
    ) -> None:
        run = HandoffRun(
            handoff_id=handoff_id,
            side=HandoffSide.SOURCE,
            refs=refs,
            peer=target,
            map_version=map_version,
            reason=reason,
            deadline_us=deadline_us,
        )
        key = self._add_run(run)
        for ref in refs:
            part = self._parts[ref]
            part.epoch = max(part.epoch, map_version)
            self._transition(part, PartTrigger.HANDOFF_ASSIGNED)
            shipper = self._shippers.get(ref)
            if shipper is None:
                self._start_shipping(part, now_us)
                shipper = self._shippers[ref]
            shipper.seal_towards(target, seal_seq=part.applied_seq)
            shipper.only_target()
            self._run_of[ref] = key
            self._mark_shipping(ref, now_us, urgent=True)

    def _add_run(self, run: HandoffRun) -> int:
        key = self._next_run_key
        self._next_run_key += 1
        self._runs[key] = run
        self._count_source_run(run, 1)
        return key

    def _count_source_run(self, run: HandoffRun, change: int) -> None:
        if run.side is not HandoffSide.SOURCE or not run.handoff_id:
            return
        count, ended = self._source_runs.get(run.handoff_id, (0, ()))
        if count + change > 0:
            self._source_runs[run.handoff_id] = (count + change, ended)
            return
        self._source_runs.pop(run.handoff_id, None)
        if ended:
            self._send(
                self._config.manager_id,
                HandoffCompleted(handoff_id=run.handoff_id, server_id=self._me, parts=ended),
            )

    def _seal_acknowledged(self, part: Part, now_us: int) -> None:
        key = self._run_of.get(part.ref, 0)
        run = self._runs.get(key)
        if part.state is not PartState.HANDING_OFF or run is None:
            self._rare("late-seal-acknowledgement")
            return
        self._transition(part, PartTrigger.SEAL_ACKNOWLEDGED)
        self._release_held(part)
        # The target holds everything and ships to the replicas now, this backup included.
        self._stop_shipping(part.ref)
        run.waiting.discard(part.ref)
        if not run.waiting and run.phase is HandoffPhase.SHIPPING:
            self._seals_complete(key, run, now_us)

    def _seals_complete(self, key: int, run: HandoffRun, now_us: int) -> None:
        """Step 3 is done for every part of the run: step 4 starts."""
        self._advance(run, HandoffTrigger.SEALS_ACKNOWLEDGED)
        run.notifications = self._schedule_notifications(run, now_us)
        self._notified[key] = set()
        if not run.notifications:
            self._clients_notified(run, now_us)

    def _advance(self, run: HandoffRun, trigger: HandoffTrigger) -> None:
        run.transition(trigger)
        step = STEP_OF_TRIGGER.get(trigger)
        if step is not None:
            self._emit(
                HandoffStepCompleted(
                    node=self._me,
                    handoff_id=run.handoff_id,
                    side=run.side,
                    step=step,
                    refs=run.refs,
                )
            )

    def _schedule_notifications(self, run: HandoffRun, now_us: int) -> list[Notification]:
        by_session: dict[bytes, list[str]] = {}
        for ref in run.refs:
            by_session.setdefault(ref.session_id, []).append(ref.part)
        jitter_us = self._config.handoff_notify_jitter_ms * 1000
        notes = [
            Notification(
                due_us=now_us + self._rng.randint(0, jitter_us),
                client=client,
                session_id=session_id,
                parts=tuple(names),
            )
            for session_id, names in by_session.items()
            for client in self._attached.get(session_id, ())
        ]
        notes.sort(key=lambda note: note.due_us)
        return notes

    def _send_notification(self, run: HandoffRun, note: Notification, now_us: int) -> None:
        self._handoff_sequence += 1
        token = self._sealer.issue_token(
            session_id=note.session_id,
            parts=note.parts,
            target_server=run.peer,
            map_version=run.map_version,
            now_us=now_us,
            lifetime_ms=self._config.token_lifetime_ms,
        )
        self._send(
            note.client,
            Handoff(
                sequence=self._handoff_sequence,
                session_id=note.session_id,
                parts=note.parts,
                map_version=run.map_version,
                reason=ReasonCode.from_wire(run.reason),
                flags=HandoffFlag.MAKE_BEFORE_BREAK_REQUIRED | HandoffFlag.PREWARMED,
                deadline_ms=self._config.backup_period_ms,
                current=self._endpoint(self._me),
                targets=(self._endpoint(run.peer),),
                token=token,
            ),
        )
        self._emit(
            ClientHandedOff(
                node=self._me,
                client=note.client,
                session_id=note.session_id,
                parts=note.parts,
                target=run.peer,
                map_version=run.map_version,
                sequence=self._handoff_sequence,
            )
        )

    def _notify_late_client(
        self, key: int, run: HandoffRun, client: NodeId, session_id: bytes, now_us: int
    ) -> None:
        """A client that was not attached when step 4 ran still gets its HANDOFF, once."""
        notified = self._notified.get(key)
        if notified is None or (client, session_id) in notified:
            return
        notified.add((client, session_id))
        parts = tuple(ref.part for ref in run.refs if ref.session_id == session_id)
        note = Notification(due_us=now_us, client=client, session_id=session_id, parts=parts)
        self._send_notification(run, note, now_us)

    def _clients_notified(self, run: HandoffRun, now_us: int) -> None:
        self._advance(run, HandoffTrigger.CLIENTS_NOTIFIED)
        run.backup_until_us = now_us + self._config.backup_period_ms * 1000

    def _run_due(self, key: int, run: HandoffRun, now_us: int) -> None:
        if run.phase in (HandoffPhase.SHIPPING, HandoffPhase.RECEIVING):
            self._deadline_missed(key, run, now_us)
        elif run.phase is HandoffPhase.NOTIFYING:
            notified = self._notified.setdefault(key, set())
            while run.notifications and run.notifications[0].due_us <= now_us:
                note = run.notifications.pop(0)
                if (note.client, note.session_id) in notified:
                    continue  # Told already: its request reached the backup before this was due.
                notified.add((note.client, note.session_id))
                self._send_notification(run, note, now_us)
            if not run.notifications:
                self._clients_notified(run, now_us)
        elif run.phase is HandoffPhase.BACKING_UP:
            self._end_backup(key, run, now_us)

    def _end_backup(self, key: int, run: HandoffRun, now_us: int) -> None:
        if self.map_version < run.map_version:
            # Whether to stay a replica depends on the map that made the target primary.
            run.backup_until_us = now_us + self._config.map_request_retry_ms * 1000
            self._request_map(now_us)
            return
        for ref in run.refs:
            part = self._parts.get(ref)
            # A part handed back here and off again since is another run's backup now.
            if part is None or part.state is not PartState.BACKUP or self._run_of.get(ref) != key:
                continue
            del self._run_of[ref]
            placement = None if self._map is None else self._map.placement(ref)
            if placement is not None and self._me in placement.replicas:
                self._transition(part, PartTrigger.DEMOTED)
            else:
                self._drop(part)
        self._advance(run, HandoffTrigger.BACKUP_PERIOD_ENDED)
        if run.handoff_id:
            # Reported when the handoff's last run here goes (`_count_source_run`): the manager
            # takes the source's report as the end of the whole handoff.
            count, ended = self._source_runs[run.handoff_id]
            self._source_runs[run.handoff_id] = (count, ended + run.refs)
        self._forget_run(key)

    def _deadline_missed(self, key: int, run: HandoffRun, now_us: int) -> None:
        waiting = tuple(
            ref for ref in run.refs if ref in run.waiting and self._run_of.get(ref) == key
        )
        sealed = tuple(ref for ref in run.refs if ref not in run.waiting)
        aborted: set[PartRef] = set()
        for ref in waiting:
            part = self._parts.get(ref)
            del self._run_of[ref]
            if part is None:
                continue
            if run.side is HandoffSide.SOURCE and part.state is PartState.HANDING_OFF:
                # ABORTING executes nothing until the map says who the primary is.
                self._transition(part, PartTrigger.HANDOFF_DEADLINE_MISSED)
                self._stop_shipping(ref)
                self._fail_held(ref, "handoff aborted")
                aborted.add(ref)
            elif run.side is HandoffSide.TARGET:
                self._fail_queue(ref, "handoff deadline passed")
        self._refuse_forwards(aborted, "handoff aborted; awaiting the map")
        step = "sealed log acknowledged" if run.side is HandoffSide.SOURCE else "sealed log"
        detail = f"deadline passed without the {step} for {len(waiting)} of {len(run.refs)} parts"
        self._emit(
            HandoffStepMissed(
                node=self._me, handoff_id=run.handoff_id, side=run.side, refs=waiting, detail=detail
            )
        )
        if not run.handoff_id and run.side is HandoffSide.SOURCE:
            waiting = self._drop_unlisted(waiting, now_us)
        if run.handoff_id or waiting:
            # An implicit run (id 0: a map moved the part on its own) reports too: its parts
            # wait (ABORTING at the source, RECEIVING at the target) for the manager, which fences
            # the holders and keeps the most up-to-date log, whether the target took over (its
            # acknowledgement lost) or never got the seal.
            self._send(
                self._config.manager_id,
                HandoffAborted(
                    handoff_id=run.handoff_id, server_id=self._me, parts=waiting, detail=detail
                ),
            )
            for ref in waiting:
                self._unsettled[ref] = run.handoff_id
            self._unsettled_retry_us = now_us + self._config.map_request_retry_ms * 1000
        self._reinstate_reverted(waiting, run, now_us)
        if run.side is HandoffSide.SOURCE and sealed:
            # The parts the target did take over complete the procedure; only the rest abort.
            self._rare("handoff-partially-sealed-at-deadline")
            run.refs = sealed
            run.waiting.clear()
            self._seals_complete(key, run, now_us)
            return
        run.transition(HandoffTrigger.DEADLINE_MISSED)
        self._forget_run(key)

    def _drop_unlisted(self, refs: tuple[PartRef, ...], now_us: int) -> tuple[PartRef, ...]:
        """Drop the aborted parts of an implicit run that the map no longer lists here at all.

        A server the manager declared dead (cut off, paused) comes back to a map that failed its
        parts over and no longer names it: its log is a replaced primary's, which must not
        compete with the promoted replica's. Only parts the map still lists here are reported.
        """
        kept: list[PartRef] = []
        for ref in refs:
            part = self._parts.get(ref)
            placement = None if self._map is None else self._map.placement(ref)
            if part is not None and (placement is None or self._me not in placement.servers):
                self._rare("replaced-primary-dropped-its-part")
                self._drop(part)
                continue
            kept.append(ref)
        return tuple(kept)

    def _reinstate_reverted(self, refs: Iterable[PartRef], run: HandoffRun, now_us: int) -> None:
        """Aborted parts that a newer map (before the deadline) names primary here again take
        the part back now; the others wait ABORTING for the manager's decision."""
        if self._map is None or self._map.version <= run.map_version:
            return
        for ref in refs:
            part = self._parts.get(ref)
            placement = self._map.placement(ref)
            aborting = part is not None and part.state is PartState.ABORTING
            if aborting and placement is not None and placement.primary == self._me:
                assert part is not None
                self._reinstate(part, now_us)

    def _forget_run(self, key: int) -> None:
        run = self._runs.pop(key, None)
        self._notified.pop(key, None)
        if run is None:
            return
        self._count_source_run(run, -1)
        for ref in run.refs:
            if self._run_of.get(ref) == key:
                del self._run_of[ref]

    def _supersede_run_of(self, ref: PartRef, now_us: int) -> None:
        """A newer map (or primary) took `ref` out of its run: only `ref` leaves the run.

        The run's other parts go on: a failover may promote one of a handoff's parts here and
        another elsewhere, and a part whose run ended with it would never leave BACKUP (nor
        HANDING_OFF or RECEIVING: no deadline, no report). The run ends SUPERSEDED when its last
        part leaves; if the parts left were all waiting on `ref`, their step is done.
        """
        key = self._run_of.get(ref)
        run = None if key is None else self._runs.get(key)
        if key is None or run is None or run.finished:
            return
        del self._run_of[ref]
        self._emit(
            HandoffStepMissed(
                node=self._me,
                handoff_id=run.handoff_id,
                side=run.side,
                refs=(ref,),
                detail="a newer map moved the part first",
            )
        )
        run.refs = tuple(other for other in run.refs if other != ref)
        run.waiting.discard(ref)
        if not any(self._run_of.get(other) == key for other in run.refs):
            run.transition(HandoffTrigger.SUPERSEDED)
            self._forget_run(key)
        elif not run.waiting and run.phase is HandoffPhase.SHIPPING:
            self._seals_complete(key, run, now_us)
        elif not run.waiting and run.phase is HandoffPhase.RECEIVING:
            self._finish_target(run, now_us)

    # Handoff: the target.

    def _start_target(self, message: HandoffAssigned, now_us: int) -> None:
        if self._seen(HandoffSide.TARGET, message.handoff_id):
            return
        run = HandoffRun(
            handoff_id=message.handoff_id,
            side=HandoffSide.TARGET,
            refs=message.parts,
            peer=message.source,
            map_version=message.map_version,
            reason=message.reason,
            deadline_us=now_us + message.deadline_ms * 1000,
        )
        key = self._add_run(run)
        for ref in message.parts:
            if self._expect_seal(ref, message.map_version, key, now_us):
                continue
            run.waiting.discard(ref)
        if not run.waiting:
            self._finish_target(run, now_us)

    def _expect_seal(self, ref: PartRef, map_version: int, key: int, now_us: int) -> bool:
        """Make `ref` wait for its sealed log under run `key`; False if it needs none."""
        part = self._parts.get(ref)
        if part is None:
            part = self._create_part(ref, epoch=map_version)
            if part is None:
                # Not held (parts_max, or a part the app does not declare): it waits like a seal
                # that never comes, so the deadline reports it; never reported as taken.
                self._run_of[ref] = key
                return True
        if part.state is PartState.PRIMARY and part.epoch >= map_version:
            # The sealed log arrived before the assignment: this part is already handed over.
            return False
        if part.state in _SOURCE_STATES and part.epoch < map_version:
            # A primary (or the source of a run of its own) of an older epoch: a failover
            # replaced it, unfenced, and the maps that say so have not all reached it (a delta
            # lost with a connection; or it took the failover's version for a move and hands
            # its stale log to the promoted server). Its log is not the source's: it serves
            # nothing until this handoff's seal makes it the primary of that history.
            self._rare("stale-primary-targeted")
            self._step_down(part, now_us)
        if part.state in (PartState.ABSENT, PartState.REPLICA, PartState.BACKUP):
            part.epoch = max(part.epoch, map_version)
            self._transition(part, PartTrigger.HANDOFF_TARGETED)
        elif part.state is not PartState.RECEIVING:
            return False
        previous = self._runs.get(self._run_of.get(ref, 0))
        if previous is not None and previous.side is HandoffSide.TARGET:
            # An implicit run (learned from the map) is replaced by the manager's.
            self._forget_run(self._run_of[ref])
        self._run_of[ref] = key
        run = self._runs[key]
        part.awaited = (run.peer, run.map_version)
        return True

    def _finish_target(self, run: HandoffRun, now_us: int) -> None:
        self._advance(run, HandoffTrigger.SEALED_LOGS_APPLIED)
        if run.handoff_id:
            self._send(
                self._config.manager_id,
                HandoffCompleted(handoff_id=run.handoff_id, server_id=self._me, parts=run.refs),
            )
        for key, candidate in list(self._runs.items()):
            if candidate is run:
                self._forget_run(key)

    # Failover.

    def _on_failover_prepared(self, message: FailoverPrepared, source: NodeId, now_us: int) -> None:
        # The failover commits its promotion at the fence version, after this message on the
        # manager's connection; a server that holds that map already learned it from a peer
        # while this message was delayed: fenced now, the part would wait for a later map.
        settled = message.map_version <= self.map_version
        if settled:
            self._rare("failover-prepared-after-its-map")
        progress: list[PartProgress] = []
        for ref in message.parts:
            part = self._parts.get(ref)
            if part is None:
                continue
            if not settled:
                self._fence(part, message.map_version, cause="failover_prepared")
            position = part.progress()
            if position is not None:
                progress.append(position)
        self._send(
            source,
            PositionsReported(
                server_id=self._me, map_version=message.map_version, parts=tuple(progress)
            ),
        )

    # The shard map.

    def _on_drain_reported(self, message: DrainReported, source: NodeId, now_us: int) -> None:
        """The manager's answer to a leaving heartbeat: where this server's drain stands."""
        if source != self._config.manager_id:
            self._violation(source, ErrorCode.UNAUTHENTICATED, "DrainReported from a peer")
            return
        leave = self._leave
        if leave is None or leave.left:
            # Not leaving, or told to stop already: nothing to do.
            self._rare("drain-report-not-leaving")
            return
        counts = (message.roles_left, message.primaries_left, message.roles_waiting)
        if counts != leave.counts:
            leave.counts = counts
            self._emit(
                LeaveProgressed(
                    node=self._me,
                    roles_left=message.roles_left,
                    primaries_left=message.primaries_left,
                    roles_waiting=message.roles_waiting,
                )
            )
        stuck = 0 < message.roles_left <= message.roles_waiting
        if not stuck:
            leave.stuck_us = None
        elif leave.stuck_us is None:
            leave.stuck_us = now_us
        if message.finished or (
            leave.stuck_us is not None and now_us - leave.stuck_us >= LEAVE_STUCK_MS * 1000
        ):
            leave.left = True
            if message.finished:
                # The last heartbeat says so: the manager takes this server out of the map at
                # once, where its silence would have been a death and a failover of no part.
                leave.departed = True
                self._heartbeat(now_us)
            self._emit(
                ServerLeft(
                    node=self._me,
                    roles_left=0 if message.finished else message.roles_left,
                    primaries_left=0 if message.finished else message.primaries_left,
                    failed_over=message.finished and (message.failed_over or self._listed_dead()),
                )
            )

    def _on_map_published(self, message: MapPublished, source: NodeId, now_us: int) -> None:
        if source != self._config.manager_id:
            self._on_peer_map(message, source, now_us)
            return
        behind = not self._heard_all()
        self._manager_map_version = max(self._manager_map_version, message.map_version)
        if message.base_version == 0:
            # A whole map: what a manager sends its members once it loaded the map (a restart,
            # a standby taking over), which may be after this server's first heartbeat to it,
            # lost while the manager had no members yet: the next heartbeat names the parts.
            self._declare_in_heartbeat = True
        held = self.map_version
        if message.map_version <= held:
            if behind:
                # The manager's own messages catch up with a map learned from a peer.
                self._map_settled()
            return
        if message.base_version not in (0, held):
            if len(self._map_deltas) < self._config.map_deltas_buffered_max:
                self._map_deltas[message.base_version] = message
            self._rare("map-gap")
            self._request_map(now_us)
            return
        self._adopt_kept(message, now_us)
        while (following := self._map_deltas.pop(self.map_version, None)) is not None:
            self._adopt_kept(following, now_us)
        self._map_deltas = {
            base: delta for base, delta in self._map_deltas.items() if base > self.map_version
        }
        self._map_settled()

    def _adopt_kept(self, message: MapPublished, now_us: int) -> None:
        """Adopt a map from the manager, and keep it for the peers when it is a delta (sent on
        at once to the peers that asked for maps lately)."""
        self._adopt(decode_published(self._map, message), now_us)
        if self._map_followers and message.base_version != 0:
            self._send_to_followers(message, now_us)
        kept = self._map_deltas_kept
        if message.base_version == 0 or (kept and kept[-1].map_version != message.base_version):
            kept.clear()
        if message.base_version != 0:
            kept.append(message)

    def _map_settled(self) -> None:
        """Stop asking for maps once none is missing: no delta waits for its base, no fence
        waits for a peer's map, and the manager's own messages brought the version held."""
        witness = self._map_witness
        if witness is not None and self.map_version >= witness[1]:
            self._map_witness = witness = None
        if not self._map_deltas and witness is None and self._heard_all():
            self._map_retry_us = None

    def _heard_all(self) -> bool:
        return self._manager_map_version >= self.map_version

    def _request_map(self, now_us: int) -> None:
        # From the older of the versions held and heard from the manager: the deltas a peer's
        # map skipped come again, so that this server's heartbeats confirm them.
        since = min(self.map_version, self._manager_map_version)
        self._send(self._config.manager_id, MapRequested(server_id=self._me, map_version=since))
        self._map_retry_us = now_us + self._config.map_request_retry_ms * 1000

    def _ask_witness(self, now_us: int) -> None:
        """A part fenced by a peer's refusal waited a whole retry interval for the failover's
        map, which the manager's messages did not bring (a one-way partition loses them, and
        the failover may keep this server primary: its parts would refuse every request until
        the cut heals). The peer was fenced by that failover, so it gets the map: asked for
        its map from the fence version on. What this server learns so does not count as heard
        from the manager (`manager_map_version`)."""
        witness = self._map_witness
        if witness is None:
            return
        peer, wanted, _ = witness
        self._map_witness = (peer, wanted, now_us + self._config.map_request_retry_ms * 1000)
        self._map_peer_asked = peer
        self._rare("map-asked-of-peer")
        self._send(peer, MapRequested(server_id=self._me, map_version=self.map_version))

    def _on_peer_map(self, message: MapPublished, source: NodeId, now_us: int) -> None:
        """A map from a peer: taken only from the peer `_ask_witness` asked last, the manager's
        deltas from the version held, and only once they chain to the version that settles the
        fence (`_adopt_peer_chain`). Never a whole map: one that skips versions does not show a
        failover that kept this server primary as a change of the part, which would stay fenced
        (refused at a version the map reaches) until a newer map, maybe for good."""
        witness = self._map_witness
        held = self.map_version
        if (
            witness is None
            or source != self._map_peer_asked
            or message.base_version < held
            or message.base_version == 0
            or message.map_version != message.base_version + 1
        ):
            self._rare("peer-map-ignored")
            return
        deltas = self._peer_deltas = {
            base: delta for base, delta in self._peer_deltas.items() if base >= held
        }
        if message.base_version in deltas or len(deltas) < self._config.map_deltas_buffered_max:
            deltas[message.base_version] = message
        chain: list[MapPublished] = []
        while (following := deltas.get(held + len(chain))) is not None:
            chain.append(following)
        if not chain or chain[-1].map_version < witness[1]:
            return
        self._peer_deltas = {}
        self._adopt_peer_chain(chain, now_us)
        self._map_deltas_kept.clear()
        self._map_deltas = {
            base: delta for base, delta in self._map_deltas.items() if base > self.map_version
        }
        self._map_settled()

    def _adopt_peer_chain(self, chain: list[MapPublished], now_us: int) -> None:
        """Adopt the last map of a peer's chain at once, as a whole map, when it only settles
        what this server's fences wait for: the versions in between are the ones the manager's
        messages missed, and acting on them while the manager's fences cannot reach this server
        lost writes. A handoff source learning a drain's move from them started its side, ran
        into the deadline and reported the abort, and the failover that followed, unanswered,
        promoted another copy; a primary that missed versions stepped down, though the failover
        of that drain kept it. So every part of this server the chain changes must be either
        fenced here at or below the last version (the map settles it, as the manager's would),
        or this server's PRIMARY that the last version names primary again (moved away and
        back: fenced at the last version, which settles it at a new epoch, since its replicas
        took the versions in between and would refuse its old one), or a copy it only
        replicates (or does not hold) that the last version does not make primary here, or
        placed at the end as it was. Otherwise nothing is adopted (`peer-maps-not-taken`): the
        server waits for the manager's maps, as before."""
        held = self._map
        composed = held
        moved: dict[PartRef, None] = {}
        for delta in chain:
            following = decode_published(composed, delta)
            if composed is not None:
                moved.update((ref, None) for ref, _ in following.changed_since(composed, self._me))
            composed = following
        assert held is not None and composed is not None
        back: list[Part] = []
        for ref in moved:
            part = self._parts.get(ref)
            placement = composed.placement(ref)
            if part is not None and part.fenced and part.fence_version <= composed.version:
                continue
            primary_here = placement is not None and placement.primary == self._me
            if part is not None and part.state is PartState.PRIMARY and primary_here:
                back.append(part)
                continue
            in_play = part is not None and part.state in _IN_PLAY_STATES
            if not in_play and not primary_here:
                # A copy this server only replicates (or does not hold), left a copy: no part
                # of a handoff or a failover starts here from it.
                continue
            if placement != held.placement(ref):
                self._rare("peer-maps-not-taken")
                return
        for part in back:
            self._fence(part, composed.version, cause="peer_maps")
        self._rare("map-learned-from-peer")
        self._adopt(composed, now_us)

    def _on_map_requested(self, message: MapRequested, source: NodeId, now_us: int) -> None:
        """A peer fenced by this server's refusal asks for the maps after its own (`_ask_witness`):
        the manager's deltas from that version to the one held, when all are kept, else nothing
        (it waits for the manager, or for a later ask); and for a retry interval, each delta the
        manager sends next (`_map_followers`). A peer asks at most once per retry interval."""
        current = self._map
        if current is None or message.server_id != source or current.address(source) is None:
            return
        # The failover that fenced it may not be committed yet, or this server's map not hold
        # it: the manager's next deltas go to the peer as they come, for a retry interval, so
        # that it learns that failover's map when this server does, not at its next ask.
        self._map_followers.pop(source, None)
        self._map_followers[source] = now_us + self._config.map_request_retry_ms * 1000
        if len(self._map_followers) > MAP_FOLLOWERS_MAX:
            del self._map_followers[next(iter(self._map_followers))]
        if current.version <= message.map_version:
            return
        chain = [
            delta for delta in self._map_deltas_kept if delta.base_version >= message.map_version
        ]
        if not chain or chain[0].base_version != message.map_version:
            self._rare("map-chain-not-kept-for-peer")
            return
        self._rare("map-answered-to-peer")
        for delta in chain:
            self._send(source, delta)

    def _send_to_followers(self, message: MapPublished, now_us: int) -> None:
        for peer, until_us in list(self._map_followers.items()):
            if until_us < now_us:
                del self._map_followers[peer]
                continue
            self._rare("map-sent-to-follower")
            self._send(peer, message)

    def _adopt(self, new_map: ServerMap, now_us: int) -> None:
        previous_map = self._map
        previous = self.map_version
        self._map = new_map
        self._emit(
            MapVersionAdopted(node=self._me, map_version=new_map.version, previous_version=previous)
        )
        # Consecutive versions differ in a few parts: reconcile those; a first map, everything.
        refs: dict[PartRef, None] = {}
        if previous_map is None:
            self._placements.clear()
            refs.update(dict.fromkeys(self._parts))
            refs.update(dict.fromkeys(new_map.parts_of(self._me)))
        else:
            diff = new_map.diff_since(previous_map)
            # The placements remembered stay true but for the parts the new version moved: a
            # replica checks one for every shipment, and forgetting them all at every version
            # cost a server taking over tens of thousands of parts a lookup per shipment.
            placements = self._placements
            for ref in ServerMap.placements_changed(diff):
                placements.pop(ref, None)
            # The diff knows the new placement of each part it names: the reconciliation below
            # (and the replicas a new primary ships to) read it from the cache, not the ring.
            cache_max = self._placements_max()
            for ref, placement in new_map.changed_since(previous_map, self._me, diff):
                refs[ref] = None
                if len(placements) < cache_max:
                    placements[ref] = placement
        # A fenced part waits for the map that settles its failover, changed or not; that map
        # (the first at or above the fence) decides, and later maps are ordinary again.
        settled = [
            ref
            for ref in self._fenced
            if ref not in self._parts or self._parts[ref].fence_version <= new_map.version
        ]
        refs.update(dict.fromkeys(ref for ref in settled if ref in self._parts))
        # A part deferred by an older map is decided by the first map at or above its epoch.
        caught_up = [
            ref
            for ref in self._deferred
            if ref not in self._parts or self._parts[ref].epoch <= new_map.version
        ]
        for ref in caught_up:
            del self._deferred[ref]
            if ref in self._parts:
                refs[ref] = None
        if not new_map.lists_alive(self._me):
            for run in self._runs.values():
                run.replaced = True
        for ref in refs:
            self._reconcile(ref, previous_map, now_us)
        for ref in settled:
            self._fenced.pop(ref, None)
        for peer in [peer for peer in self._down if not new_map.lists_alive(peer)]:
            if new_map.address(peer) is None:
                # Out of the map: only a handoff's sealed stream may still ship to it, and it
                # goes back to its resend times (as towards any server the map does not list).
                self._peer_up(peer, now_us)
            else:
                # Dead in it (the failover's version): no placement names it any more. It stays
                # down only while a handoff's sealed stream still goes to it; kept down with
                # nothing waiting, every part shipped after a failover asked which of its
                # streams wait for the dead server.
                self._forget_down(peer)

    def _reconcile(self, ref: PartRef, previous_map: ServerMap | None, now_us: int) -> None:
        assert self._map is not None
        placement = self._placement(ref)
        part = self._parts.get(ref)
        if part is None:
            if placement is not None:
                self._place_new(ref, placement.primary, placement.replicas, previous_map, now_us)
            return
        if part.epoch > self._map.version:
            # The part already knows a newer placement than this map (a sealed log or a handoff
            # of a newer map got here first): an older map must not move it back.
            self._rare("map-older-than-part")
            self._deferred[ref] = None
            return
        if part.fence_version > self._map.version:
            # Fenced for a failover whose map this server has not reached yet: the first map
            # at or above the fence settles the part (`_adopt`), and an older one, caught up in
            # a burst after a one-way cut, must not drop or demote it first. The failover may
            # keep this server primary (its history ahead of every other candidate's): dropped
            # at the older map that moved the part away, it came back empty and waited for a
            # seal that never came, and the `async` writes it acknowledged during the cut were
            # lost (`forehand sim --scenario drain-one-way --seed 17600000`).
            self._rare("map-older-than-fence")
            return
        listed = placement is not None and self._me in placement.servers
        if placement is None or (not listed and part.state is not PartState.PRIMARY):
            # A live primary that the map leaves out still hands the part over first.
            self._placement_lost(part, now_us)
            return
        if placement.primary == self._me:
            self._placed_as_primary(part, previous_map, now_us)
        else:
            self._placed_elsewhere(part, placement.primary, previous_map, now_us)

    def _place_new(
        self,
        ref: PartRef,
        primary: str,
        replicas: tuple[str, ...],
        previous_map: ServerMap | None,
        now_us: int,
    ) -> None:
        if primary != self._me:
            part = self._create_part(ref, epoch=0)
            if part is not None:
                self._transition(part, PartTrigger.PLACED_AS_REPLICA)
            return
        before = None if previous_map is None else previous_map.placement(ref)
        if before is not None and before.primary != self._me:
            part = self._create_part(ref, epoch=0)
            if part is not None:
                self._receive_implicitly(part, before.primary, previous_map, now_us)
            return
        restarted = previous_map is None and self._config.incarnation > 1
        if restarted or before is not None:
            # A part the previous map already placed here as primary, which this server does
            # not hold (it restarted and skipped it, or the part was moved here while it had no
            # map), must not be served with an empty state: its holder hands it over (a sealed
            # log makes it primary here) or the manager fails it over to a replica that has the
            # data. It waits RECEIVING from an unknown source, at epoch 0 so that a seal of any
            # version is taken: the map may have moved it here from a server that was itself
            # still waiting for it (two implicit moves in a row), and then no seal comes; at the
            # deadline the wait is reported (HANDOFF_ABORTED) and the manager settles the part.
            self._rare("primary-without-state-after-restart")
            part = self._create_part(ref, epoch=0)
            if part is not None:
                self._await_seal(part, "", now_us)
            return
        part = self._create_part(ref, epoch=self.map_version)
        if part is not None:
            self._transition(part, PartTrigger.PLACED_AS_PRIMARY)
            self._install_primary(part, InstallCause.INITIAL, now_us)

    def _placement_lost(self, part: Part, now_us: int) -> None:
        if part.state in (PartState.HANDING_OFF, PartState.BACKUP):
            return
        self._supersede_run_of(part.ref, now_us)
        self._drop(part)

    def _placed_as_primary(self, part: Part, previous_map: ServerMap | None, now_us: int) -> None:
        state = part.state
        version = self.map_version
        settling = part.ref in self._fenced and version >= part.fence_version
        if state is PartState.PRIMARY:
            if settling:
                # Fenced for a failover (or an aborted handoff) and chosen again: a new epoch.
                part.epoch = version
                self._stop_shipping(part.ref)
                self._install_primary(part, InstallCause.FAILOVER, now_us)
                return
            shipper = self._shippers.get(part.ref)
            if shipper is not None and shipper.set_replicas(self._replicas_of(part.ref)):
                # Only a new replica has anything to ship: a death that drops a replica from
                # tens of thousands of parts leaves their remaining streams where they were.
                self._mark_shipping(part.ref, now_us)
            return
        if state in (PartState.REPLICA, PartState.RECEIVING, PartState.BACKUP) and settling:
            part.epoch = version
            self._supersede_run_of(part.ref, now_us)
            self._transition(part, PartTrigger.PROMOTED)
            self._install_primary(part, InstallCause.FAILOVER, now_us)
            return
        if state in (PartState.REPLICA, PartState.BACKUP):
            # A backup's target took the part over: moving it back is a new handoff from there.
            run = self._runs.get(self._run_of.get(part.ref, 0))
            before = None if previous_map is None else previous_map.placement(part.ref)
            source = "" if before is None or before.primary == self._me else before.primary
            if state is PartState.BACKUP and run is not None:
                source = run.peer
            self._receive_implicitly(part, source, previous_map, now_us)
            return
        undone = state is PartState.HANDING_OFF and self._move_undone(part.ref, previous_map)
        if state is PartState.ABORTING or (state is PartState.HANDING_OFF and (settling or undone)):
            self._reinstate(part, now_us)
        # Otherwise HANDING_OFF waits: the seal's acknowledgement (then BACKUP) or its deadline.

    def _move_undone(self, ref: PartRef, previous_map: ServerMap | None) -> bool:
        """Whether the map naming this HANDING_OFF source primary undoes its run's move.

        A map newer than the move that takes the part from the run's target straight back to
        this source, never listed dead meanwhile, is a failover's that kept it (a manager starts
        no move of a part still moving), fenced or not: its fence is lost when the manager's
        messages to this server are (a one-way cut, whose healing delivers the move and the
        failover in one burst). Waiting for a seal the fenced target refuses left the part
        stuck until a drain moved it on, and the run's abort then dropped the only copy of the
        `async` writes acknowledged during the cut (`forehand sim --scenario drain-one-way
        --seed 17700316`). A source a failover replaced (listed dead, or the part placed on a
        third server first) holds a stale log: a map naming it primary later is a new move.
        """
        run = self._runs.get(self._run_of.get(ref, 0))
        before = None if previous_map is None else previous_map.placement(ref)
        return (
            run is not None
            and run.side is HandoffSide.SOURCE
            and not run.replaced
            and self.map_version > run.map_version
            and before is not None
            and before.primary == run.peer
        )

    def _listed_dead(self) -> bool:
        """Whether the current map lists this server dead (its parts were failed over)."""
        return self._map is not None and not self._map.lists_alive(self._me)

    def _receive_implicitly(
        self, part: Part, source: str, previous_map: ServerMap | None, now_us: int
    ) -> None:
        """The map makes this server primary of a part a live primary holds: wait for its seal.

        The part's epoch goes up to the first version after `previous_map`, not to this map's:
        a server that missed versions (a full map after a gap) does not know which one moved the
        part, and the source seals at the version it learned of the move, which a higher epoch
        here would refuse as stale, turning the handoff into a failover. Nor does it know
        that `source`, the primary of the map before the gap, was still the primary when the
        part moved (a failover in between may have replaced it): the source is then unknown, so
        what it ships below this epoch is refused, which fences it (`_sealing_soon`).
        """
        moved_at = self.map_version if previous_map is None else previous_map.version + 1
        part.epoch = max(part.epoch, moved_at)
        self._await_seal(part, source if moved_at == self.map_version else "", now_us)

    def _await_seal(self, part: Part, source: str, now_us: int) -> None:
        """`part` waits RECEIVING for the sealed log of `source` ("": unknown) until the
        handoff deadline, past which the manager is told (an implicit run, id 0)."""
        if part.state is not PartState.RECEIVING:
            self._transition(part, PartTrigger.HANDOFF_TARGETED)
        current = self._runs.get(self._run_of.get(part.ref, 0))
        if current is not None and current.side is HandoffSide.TARGET:
            if part.awaited is None:
                part.awaited = (current.peer, current.map_version)
            return
        run = HandoffRun(
            handoff_id=0,
            side=HandoffSide.TARGET,
            refs=(part.ref,),
            peer=source,
            map_version=self.map_version,
            reason=int(ReasonCode.PART_MOVED),
            deadline_us=now_us + self._config.handoff_deadline_ms * 1000,
        )
        self._run_of[part.ref] = self._add_run(run)
        part.awaited = (source, run.map_version)

    def _reinstate(self, part: Part, now_us: int) -> None:
        self._supersede_run_of(part.ref, now_us)
        part.epoch = max(part.epoch, self.map_version)
        self._transition(part, PartTrigger.REINSTATED)
        self._stop_shipping(part.ref)
        self._install_primary(part, InstallCause.REINSTATED, now_us)

    def _placed_elsewhere(
        self, part: Part, primary: str, previous_map: ServerMap | None, now_us: int
    ) -> None:
        state = part.state
        missed = previous_map is not None and self.map_version > previous_map.version + 1
        # A map that lists this server dead failed its parts over (a server cut off from the
        # manager learns of it at its readmission): its primaries are replaced ones, whose logs
        # may lack what the promoted replicas acknowledged since. Handing them over (an
        # implicit source run) left a stale copy that a later handoff here took up as primary,
        # losing those writes (campaign seed 16900996).
        if state is PartState.PRIMARY and (part.fenced or missed or self._listed_dead()):
            # A replica told this primary that a failover replaced it; or this primary missed
            # map versions (it was frozen or cut off), so the part may have been failed over at
            # a version it never saw, with an epoch it cannot know: a handoff run would stamp
            # the part with this newer version and fence the real primary. Nothing to hand
            # over; if the move was a handoff after all, its abort fails the part over to the
            # newest history, which this server keeps as a replica.
            self._rare(
                "replaced-primary-stepped-down"
                if part.fenced
                else "primary-missed-maps"
                if missed
                else "dead-primary-stepped-down"
            )
            placement = None if self._map is None else self._map.placement(part.ref)
            if placement is None or self._me not in placement.servers:
                self._drop(part)
            else:
                self._step_down(part, now_us)
            return
        if state is PartState.PRIMARY:
            # The map moved a live primary's part without a HandoffAssigned (yet): run the
            # source's side anyway, so the new primary gets the sealed log.
            self._begin_source_run(
                handoff_id=0,
                refs=(part.ref,),
                target=primary,
                map_version=self.map_version,
                reason=int(ReasonCode.PART_MOVED),
                deadline_us=now_us + self._config.handoff_deadline_ms * 1000,
                now_us=now_us,
            )
            return
        run = self._runs.get(self._run_of.get(part.ref, 0))
        if state is PartState.HANDING_OFF and run is not None and run.peer == primary:
            return
        if state in (PartState.HANDING_OFF, PartState.ABORTING, PartState.RECEIVING):
            self._supersede_run_of(part.ref, now_us)
            self._stop_shipping(part.ref)
            self._fail_held(part.ref, "primary moved")
            self._transition(part, PartTrigger.DEMOTED)
            self._drain_queue(part, now_us)

    # Heartbeats.

    def _heartbeat(self, now_us: int) -> None:
        self._heartbeat_sequence += 1
        self._send(
            self._config.manager_id,
            HeartbeatReported(
                server_id=self._me,
                incarnation=self._config.incarnation,
                sequence=self._heartbeat_sequence,
                map_version=self.map_version,
                manager_map_version=self._manager_map_version,
                load=self._load_report(now_us),
                parts=self._progress_batch(),
                paths=self._paths.batch(count_max=self._config.heartbeat_paths_max, now_us=now_us),
                renewed_sessions=self._renewed_batch(),
                declared_parts=self._declared if self._declare_in_heartbeat else (),
                leaving=self._leave is not None,
                left=self._departed(),
            ),
        )
        self._declare_in_heartbeat = False
        if self._map is None:
            # Without a map this server has not joined yet: its announcement may have been lost
            # with a connection (a restart behind a partition), and heartbeats of an unknown
            # incarnation do not make it a member. Announce again until a map arrives.
            self._announce()
            if self._map_retry_us is None:
                self._request_map(now_us)
        if self._unsettled and now_us >= self._unsettled_retry_us:
            self._report_unsettled(now_us)
        if self._held or self._held_heads:
            self._check_held_progress()
        self._heartbeat_due_us = now_us + self._config.heartbeat_interval_ms * 1000

    def _check_held_progress(self) -> None:
        """Notice `replicated` answers that wait with no progress (`ReplicatedWritesStalled`):
        each heartbeat compares every holding part's oldest held answer with the one it had at
        the heartbeat before. A primary cut off from its replicas alone kept its clients' writes
        waiting, and nothing said so."""
        heads = self._held_heads
        fresh: dict[PartRef, tuple[int, int]] = {}
        stalled: list[PartRef] = []
        for ref, held in self._held.items():
            seq = held[0][0]
            before = heads.get(ref)
            beats = before[1] + 1 if before is not None and before[0] == seq else 0
            fresh[ref] = (seq, beats)
            if beats >= REPLICATION_STALL_HEARTBEATS:
                stalled.append(ref)
        self._held_heads = fresh
        was, self._stalled_parts = self._stalled_parts, len(stalled)
        if bool(stalled) == bool(was):
            return
        replicas: dict[NodeId, None] = {}
        for ref in stalled:
            shipper = self._shippers.get(ref)
            part = self._parts.get(ref)
            if shipper is not None and part is not None:
                replicas.update(dict.fromkeys(shipper.pending(part.log.last_seq)))
        self._emit(
            ReplicatedWritesStalled(
                node=self._me,
                parts=len(stalled),
                answers=sum(len(self._held[ref]) for ref in stalled),
                replicas=tuple(sorted(replicas))[:8],
            )
        )

    def _renewed_batch(self) -> tuple[bytes, ...]:
        """The next `heartbeat_renewals_max` renewed sessions, taken from the queue."""
        renewed = self._renewed
        if not renewed:
            return ()
        if len(renewed) <= self._config.heartbeat_renewals_max:
            batch = tuple(renewed)
            renewed.clear()
            return batch
        batch = tuple(itertools.islice(renewed, self._config.heartbeat_renewals_max))
        for session_id in batch:
            del renewed[session_id]
        return batch

    def _load_report(self, now_us: int) -> LoadReport:
        """The runtime's load sample with this server's busiest primary parts (`PartLoad`),
        picked again every `part_loads_interval_ms`."""
        config = self._config
        if config.heartbeat_part_loads_max <= 0:
            return self._load
        if now_us >= self._part_loads_due_us:
            self._part_loads_due_us = now_us + config.part_loads_interval_ms * 1000
            meter = self._part_loads
            meter.roll(now_us=now_us)
            self._busiest = meter.busiest(
                config.heartbeat_part_loads_max, eligible=self._is_primary
            )
        return msgspec.structs.replace(self._load, part_loads=self._busiest)

    def _is_primary(self, ref: PartRef) -> bool:
        part = self._parts.get(ref)
        return part is not None and part.state is PartState.PRIMARY

    def _report_unsettled(self, now_us: int) -> None:
        """Report again the aborted parts no map has settled yet.

        A part left ABORTING (or RECEIVING without its sealed log) waits for the manager's
        decision; the report may have been lost with a connection, or refused while the manager
        held this server dead. The manager ignores reports of parts it is already deciding.
        """
        by_handoff: dict[int, list[PartRef]] = {}
        for ref, handoff_id in list(self._unsettled.items()):
            part = self._parts.get(ref)
            stuck = part is not None and (
                part.state is PartState.ABORTING
                or (part.state is PartState.RECEIVING and ref not in self._run_of)
            )
            if stuck:
                by_handoff.setdefault(handoff_id, []).append(ref)
            else:
                del self._unsettled[ref]
        for handoff_id, refs in sorted(by_handoff.items()):
            self._rare("aborted-parts-reported-again")
            self._send(
                self._config.manager_id,
                HandoffAborted(
                    handoff_id=handoff_id,
                    server_id=self._me,
                    parts=tuple(refs),
                    detail="still unsettled",
                ),
            )
        self._unsettled_retry_us = now_us + self._config.map_request_retry_ms * 1000

    def _progress_batch(self) -> tuple[PartProgress, ...]:
        refs = list(self._parts)
        count = min(len(refs), self._config.heartbeat_parts_max)
        if not count:
            return ()
        start = self._heartbeat_cursor % len(refs)
        self._heartbeat_cursor = start + count
        batch = (refs[(start + offset) % len(refs)] for offset in range(count))
        return tuple(
            progress for ref in batch if (progress := self._parts[ref].progress()) is not None
        )


_IN_PLAY_STATES = (
    PartState.PRIMARY,
    PartState.HANDING_OFF,
    PartState.RECEIVING,
    PartState.ABORTING,
)
"""States in which a part serves or takes part in a handoff: a map learned from a peer that
changes one of them is not acted on (`_adopt_peer_chain`)."""


def _holds_entry(part: Part, request_id: int, seq: int, epoch: int) -> bool:
    """Whether this server's history of `part` holds the write `request_id` at `seq`, written
    under `epoch`: in its log, or (trimmed from it) in its dedup table."""
    if part.log.epoch_at(seq) == epoch:
        return True
    entry = part.dedup.get(request_id)
    return entry is not None and entry.seq == seq and entry.epoch == epoch


@dataclass(slots=True, kw_only=True)
class _Leave:
    """A leaving server (`ServerCore.leave`): where its drain stands."""

    started_us: int
    """When `leave` was called."""
    counts: tuple[int, int, int] | None = None
    """The last `DrainReported` counts: roles, primaries and roles waiting."""
    stuck_us: int | None = None
    """Since when every role left has had nowhere to go (None: something can move)."""
    left: bool = False
    """Whether `ServerLeft` was emitted."""
    departed: bool = False
    """Whether the drain finished and the last heartbeat (`left`) went: none follows."""


_Handler = Callable[[ServerCore, Any, NodeId, int], None]


_DISPATCH: dict[type, _Handler] = {
    Request: ServerCore._on_request,
    Hello: ServerCore._on_hello,
    Ping: ServerCore._on_ping,
    Resume: ServerCore._on_resume,
    CloseSession: ServerCore._on_close_session,
    HandoffStatus: ServerCore._on_handoff_status,
    Error: ServerCore._on_error,
    MapRequest: ServerCore._on_map_request,
    ClusterMessage: ServerCore._on_cluster_frame,
    ConnectionOpened: ServerCore._on_connection_opened,
    ConnectionLost: ServerCore._on_connection_lost,
    RequestForwarded: ServerCore._on_request_forwarded,
    ResponseForwarded: ServerCore._on_response_forwarded,
    LogShipped: ServerCore._on_log_shipped,
    LogAcknowledged: ServerCore._on_log_acknowledged,
    SnapshotShipped: ServerCore._on_snapshot_shipped,
    HandoffAssigned: ServerCore._on_handoff_assigned,
    FailoverPrepared: ServerCore._on_failover_prepared,
    DrainReported: ServerCore._on_drain_reported,
    MapPublished: ServerCore._on_map_published,
    MapRequested: ServerCore._on_map_requested,
}
"""Which method handles each message type; anything else is FRAME_UNEXPECTED."""


def _budget_left_ms(budget_until_us: int | None, now_us: int) -> int | None:
    """What is left at `now_us` of a wait budget that ends at `budget_until_us`, in whole
    milliseconds (rounded down, so that it never outlasts the caller), or None for no budget."""
    if budget_until_us is None:
        return None
    return max(0, budget_until_us - now_us) // 1000
