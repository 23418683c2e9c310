"""`NodeDriver`: the one asyncio driver of every sans-IO core (STYLE.md rule 2).

It feeds a core (`ManagerCore`, `ServerCore`, `ClientCore`: anything of the `CoreDriver` shape)
its inputs and drains its outputs after each one: frames and cluster messages go out on
connections, store requests run in one worker thread whose results come back in order, events go
to subscribers, and one loop timer is re-armed at `timer_us()`. The loop clock becomes `now_us`
at this edge: wall-clock microseconds (tokens and session ids are read by other processes), made
monotonic within the process.

**Peers.** The core addresses nodes by id; the driver owns the connections. A cluster peer is
named by the node id of its verified certificate; a client connection accepted here gets a node
id of its own (`~client-<n>`), so two connections of one client never mix. A message for a node
without a connection waits in a bounded queue while the driver connects (addresses come from the
`resolve` callable: the configuration for the manager, the shard map for servers, placements for
clients); a failed connect drops the queue and delivers `ConnectionLost`, and the next connect
waits a growing backoff. Per peer one connection carries what the core sends (the first one up);
the core hears `ConnectionOpened` when it comes up and `ConnectionLost` when it goes, and a new
connection is made only after the core heard of the loss, so the notices always pair.

**Events.** A subscriber is a callable that takes one event. It may name the event classes it
wants, in `subscribe(subscriber, event_types=...)` or in an `event_types` attribute of its own
(read once, when it is subscribed); it then gets only the events that are instances of one of
them, and `None` (or no attribute) means every event. The driver routes by
the event's exact type through a table built the first time a type is drained (a core has a few
dozen event classes; `EVENT_ROUTES_MAX` bounds it) and rebuilt after every `subscribe`, so most
events cost one dictionary lookup instead of a call to every subscriber. A subscriber that
raises is logged and the others still get the event.

**Trust.** Cluster links are mutual TLS: a peer that presented a certificate of the cluster CA
may send only cluster frames (HELLO, WELCOME, CLUSTER_MESSAGE, PING, PONG, GOAWAY, ERROR), after
a HELLO/WELCOME exchange the driver runs itself; a peer without a certificate is a client and may
send only client frames. Anything else, and anything a core refuses, costs only that connection.
`admin_handler` answers the operator's control messages (`forehand.runtime.admin`), accepted only
from peers whose certificate names one of `admin_ids`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import hashlib
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from forehand._peer_log import PEER_CAUSED
from forehand.core import ConnectionCloseRequested, ConnectionLost, ConnectionOpened, CoreDriver
from forehand.core._driver import CLIENT_NODE_PREFIX
from forehand.core.messages import encode_cluster_message
from forehand.errors import ConfigError, LocalProtocolError
from forehand.runtime.transport import (
    CertificateNotVerifiedError,
    CloseInitiator,
    ConnectionClosedError,
    Listener,
    PathStats,
    Transport,
    TransportError,
)
from forehand.runtime.transport import (
    Connection as TransportConnection,
)
from forehand.stores import Store, StoreFailed
from forehand.wire import (
    ALLOWED_FRAME_TYPES,
    PROTOCOL_VERSION,
    ClusterMessage,
    Error,
    ErrorCode,
    Frame,
    Hello,
    PeerRole,
    Welcome,
)

__all__ = [
    "ADMIN_MESSAGE_KIND",
    "CORE_MESSAGE_KIND",
    "DIAL_FAILURES_WARNED",
    "EVENT_ROUTES_MAX",
    "AdminHandler",
    "DriverConfig",
    "EventSubscriber",
    "NodeDriver",
    "Resolver",
    "Route",
]

_log = logging.getLogger("forehand.runtime.node")

CORE_MESSAGE_KIND = 0
"""CLUSTER_MESSAGE kind of the cores' messages (`forehand.core.messages`)."""
ADMIN_MESSAGE_KIND = 0x3E
"""CLUSTER_MESSAGE kind of the operator's control messages (`forehand.runtime.admin`)."""


def connection_origin(address: tuple[str, int] | None) -> str:
    """The origin the manager paces a client connection's opens by (`ConnectionOpened.origin`):
    its IPv4 address, or the /64 prefix of its IPv6 address (one host usually holds a whole
    /64), an IPv4-mapped one read as IPv4; "" when the transport gives no IP address."""
    if address is None:
        return ""
    try:
        ip = ipaddress.ip_address(address[0].split("%", 1)[0])
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


_CLIENT_FRAMES = ALLOWED_FRAME_TYPES[PeerRole.CLIENT]
_CLUSTER_FRAMES = ALLOWED_FRAME_TYPES[PeerRole.CLUSTER_NODE]

T = TypeVar("T")
EventSubscriber = Callable[[object], None]
"""Called with the core's events in order, on the loop: every one, or those of the types it
declared (`NodeDriver.subscribe`)."""
EVENT_ROUTES_MAX = 1_024
"""Event classes whose subscribers the driver remembers (a core emits a few dozen classes); past
it the table starts over."""
AdminHandler = Callable[[str, bytes], bytes]
"""`(admin node id, request body) -> reply body` for ADMIN_MESSAGE_KIND messages."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """How to reach a node: its address and whether the link is a cluster link."""

    host: str
    """Host name or IP literal."""
    port: int
    """TCP port (TLS) or UDP port (QUIC)."""
    server_id: str
    """The node id its certificate must name."""
    cluster: bool
    """True: mutual TLS and the driver's HELLO/WELCOME; False: a client connection whose HELLO
    the core sends."""


Resolver = Callable[[str], Sequence[Route]]
"""Where a node can be reached, most preferred first; empty when nobody knows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverConfig:
    """Bounds and timeouts of one `NodeDriver`."""

    peer_queue_frames_max: int = 16_384
    """Frames held for one peer while its connection is being made; beyond, the queue is dropped
    and the core hears `ConnectionLost`."""
    dial_backoff_ms: int = 100
    """Wait before connecting again to a peer after a failed connect; doubles per failure."""
    dial_backoff_max_ms: int = 2_000
    """Cap on that wait."""
    welcome_timeout_ms: int = 5_000
    """A cluster link whose WELCOME (or HELLO, accepting) takes longer is closed."""
    silence_timeout_ms: int = 0
    """A dialed connection on which a frame was sent and nothing came back for this long is
    closed (the peer is stopped or the path is dead), and the core hears ConnectionLost; 0:
    never. Clients ping the servers they use, so such silence means trouble."""
    close_timeout_ms: int = 2_000
    """How long `close()` waits for each connection to finish closing."""
    stall_watch_ms: int = 100
    """With a stall reporter (`watch_stalls`), how often a tick checks that the loop runs on
    time."""
    stall_report_ms: int = 200
    """A tick or core timer this late means the loop could not read its connections meanwhile:
    the reporter is told (once per stretch of time)."""

    def __post_init__(self) -> None:
        for name in (
            "peer_queue_frames_max",
            "dial_backoff_ms",
            "dial_backoff_max_ms",
            "welcome_timeout_ms",
            "close_timeout_ms",
            "stall_watch_ms",
            "stall_report_ms",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"DriverConfig.{name} must be at least 1")
        if self.silence_timeout_ms < 0:
            raise ConfigError("DriverConfig.silence_timeout_ms must be 0 (off) or positive")
        if self.dial_backoff_max_ms < self.dial_backoff_ms:
            raise ConfigError("DriverConfig.dial_backoff_max_ms must be >= dial_backoff_ms")


class _LinkKind(enum.Enum):
    CLUSTER = "cluster"
    """Mutual TLS with a cluster node; the driver runs HELLO/WELCOME."""
    CLIENT_ACCEPTED = "client-accepted"
    """A client connected here; its frames go to the core as they come."""
    SERVER_DIALED = "server-dialed"
    """This node is a client of a server; the core runs HELLO/WELCOME."""


class _Link:
    """One transport connection and what the driver knows about it."""

    __slots__ = (
        "awaiting_since_s",
        "bytes_heard",
        "bytes_taken",
        "connection",
        "dialed",
        "established",
        "established_hello",
        "heard_s",
        "kind",
        "peer",
        "sending",
        "up_s",
    )

    def __init__(
        self, connection: TransportConnection, *, peer: str, kind: _LinkKind, dialed: bool
    ) -> None:
        self.connection = connection
        self.peer = peer
        self.kind = kind
        self.dialed = dialed
        self.established = kind is not _LinkKind.CLUSTER
        self.sending = False
        self.heard_s = 0.0
        self.up_s = 0.0
        """When it came up (`_link_up`)."""
        self.awaiting_since_s: float | None = None
        """When a frame went out with nothing received since; None when nothing is awaited."""
        self.bytes_heard: int | None = None
        """What the stack had received from the peer at the last sweep, while awaiting."""
        self.bytes_taken = 0
        """Accepted client links: what the peer had taken of this side's bytes at the last
        sweep that found the link quiet."""
        self.established_hello = False
        """Whether the client sent its HELLO (accepted client links)."""

    def sent(self, now_s: float) -> None:
        """A frame went out: from now on an answer is awaited (if one was not already)."""
        if self.awaiting_since_s is None:
            self.awaiting_since_s = now_s


DIAL_FAILURES_WARNED = 5
"""Consecutive failed dials of a cluster peer (the manager, another server) after which they are
logged at WARNING, and again every this many times: a node that cannot reach its manager
should say so where an operator looks, but a peer's restart should not."""


def _dial_failure_level(error: Exception, *, cluster: bool, failures: int) -> int:
    """The log level of a failed dial, `failures` the peer's failed dials before it. A peer
    certificate the cluster CA does not verify (another cluster's `certs`, an expired one) is a
    configuration to fix, not a peer down: WARNING the first time and every
    `DIAL_FAILURES_WARNED`-th (another failed handshake, a peer restarting mid-way say, counts
    as any failure). Any other failure to reach a cluster peer is WARNING from the
    `DIAL_FAILURES_WARNED`-th in a row on, every `DIAL_FAILURES_WARNED`-th; to reach a server
    as a client, INFO (the calls say what failed)."""
    if isinstance(error, CertificateNotVerifiedError):
        return logging.WARNING if failures % DIAL_FAILURES_WARNED == 0 else logging.INFO
    if cluster and (failures + 1) % DIAL_FAILURES_WARNED == 0:
        return logging.WARNING
    return logging.INFO


class _Peer:
    """One node the core talks to: its links, the frames waiting for one, the connect state."""

    __slots__ = (
        "dial_task",
        "failures",
        "links",
        "next_dial_s",
        "node_id",
        "queue",
        "refusals",
        "retry_handle",
        "route_index",
    )

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.links: list[_Link] = []
        self.queue: deque[Frame] = deque()
        self.dial_task: asyncio.Task[None] | None = None
        self.retry_handle: asyncio.TimerHandle | None = None
        self.failures = 0
        self.refusals = 0
        """Links in a row the peer closed with an error once up (a manager refusing this
        server's announcement, say): each redial waits longer, as after a failed dial."""
        self.next_dial_s = 0.0
        self.route_index = 0

    def sender(self) -> _Link | None:
        for link in self.links:
            if link.sending:
                return link
        return None


class NodeDriver:
    """Drives one core over real connections (see the module docstring)."""

    def __init__(
        self,
        core: CoreDriver,
        *,
        resolve: Resolver,
        client_transport: Transport | None = None,
        cluster_transport: Transport | None = None,
        store: Store | None = None,
        config: DriverConfig | None = None,
        admin_ids: Sequence[str] = (),
        admin_handler: AdminHandler | None = None,
        frame_bytes_max: int = 1 << 20,
        idle_timeout_ms: int = 0,
        elected_peers: Sequence[str] = (),
    ) -> None:
        """`idle_timeout_ms` is what WELCOME announces and how long an accepted client
        connection may stay silent before it is closed (0: never); `frame_bytes_max` is what
        WELCOME announces to cluster peers. `elected_peers` are node ids that several processes
        share, one at a time (managers electing a leader on etcd): a newer link from such a peer
        replaces the one carrying the core's messages, whose process may be a frozen former
        leader, and the older link is closed."""
        self.core = core
        """The core driven; call its commands through `command`."""
        self.config = config if config is not None else DriverConfig()
        """Bounds and timeouts."""
        self._resolve = resolve
        self._client_transport = client_transport
        self._cluster_transport = cluster_transport
        self._store = store
        self._admin_ids = frozenset(admin_ids)
        self._admin_handler = admin_handler
        self._frame_bytes_max = frame_bytes_max
        self._idle_timeout_ms = idle_timeout_ms
        self._peers: dict[str, _Peer] = {}
        self._refusals_logged: dict[str, str] = {}
        self._input_link: _Link | None = None
        """The last refusal logged per cluster peer (cluster peers are configured, so bounded)."""
        self._subscribers: list[tuple[EventSubscriber, tuple[type, ...] | None]] = []
        """Each subscriber with the event classes it wants (None: every event), in order."""
        self._routes: dict[type, tuple[EventSubscriber, ...]] = {}
        """The subscribers of each event class drained so far (`_route`)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._offset_s = 0.0
        self._last_now_us = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due_us: int | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_due_s = 0.0
        self._stall_reporter: Callable[[int], None] | None = None
        self._stall_watch: asyncio.TimerHandle | None = None
        self._stall_counted_to_s = 0.0
        """Loop time up to which stalls were reported (none is reported twice)."""
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client_counter = 0
        self._closed = False
        self.input_received_s = 0.0
        """Loop time at which the frames now being fed arrived (for per-request metrics)."""
        self._hello_id = hashlib.blake2b(core.node_id.encode(), digest_size=16).digest()
        self._elected_peers = frozenset(elected_peers)

    # -- the clock --------------------------------------------------------------------------

    def now_us(self) -> int:
        """Wall-clock microseconds, read from the loop's monotonic clock; never decreases."""
        loop = self._loop
        assert loop is not None, "NodeDriver.start() first"
        return self._now_us_at(loop.time())

    def _now_us_at(self, loop_time_s: float) -> int:
        """`now_us` at the loop time `loop_time_s` (read by the caller); never decreases."""
        now = int((loop_time_s + self._offset_s) * 1_000_000)
        if now < self._last_now_us:
            return self._last_now_us
        self._last_now_us = now
        return now

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Bind to the running loop and drain what the core produced at construction."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._offset_s = time.time() - loop.time()
        if self._store is not None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"store-{self.core.node_id}"
            )
        self._arm_sweeper()
        self._drain()

    def serve(self, listener: Listener) -> None:
        """Accept the connections of `listener` until `close()`."""
        self._spawn(self._accept_loop(listener))

    def subscribe(
        self, subscriber: EventSubscriber, *, event_types: Collection[type] | None = None
    ) -> None:
        """Hand `subscriber` the core's events from now on: those that are instances of one of
        `event_types`, else of the classes in the subscriber's own `event_types` attribute (read
        now), else every event."""
        declared = event_types
        if declared is None:
            declared = getattr(subscriber, "event_types", None)
        types = None if declared is None else tuple(declared)
        assert types is None or all(isinstance(t, type) for t in types), (
            f"event_types must be classes, got {declared!r}"
        )
        self._subscribers.append((subscriber, types))
        # Types routed before may now have one more subscriber.
        self._routes.clear()

    def command(self, action: Callable[[Any, int], T]) -> T:
        """Run `action(core, now_us)` (a command verb) and send what it produced."""
        try:
            return action(self.core, self.now_us())
        finally:
            self._drain()

    async def close(self) -> None:
        """Stop feeding the core, close every connection and wait for them to go."""
        if self._closed:
            return
        self._closed = True
        for handle in (self._timer, self._sweeper, self._stall_watch):
            if handle is not None:
                handle.cancel()
        connections = []
        for peer in self._peers.values():
            if peer.retry_handle is not None:
                peer.retry_handle.cancel()
            for link in peer.links:
                link.connection.close(ErrorCode.NO_ERROR, "node shutting down")
                connections.append(link.connection)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        timeout_s = self.config.close_timeout_ms / 1000
        waits = [asyncio.wait_for(c.wait_closed(), timeout_s) for c in connections]
        await asyncio.gather(*waits, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def watch_stalls(self, report: Callable[[int], None]) -> None:
        """Call `report(stalled_us)` whenever the loop ran `stall_report_ms` or more late: a
        callback that ran long, a paused process. Meanwhile nothing was read from the sockets,
        so what peers sent then arrives late, not never (the manager excuses its members'
        silence over that time). A tick every `stall_watch_ms` and the core's own timer both
        look; call after `start()`."""
        self._stall_reporter = report
        self._stall_counted_to_s = self._time_s()
        self._arm_stall_watch()

    def _arm_stall_watch(self) -> None:
        if self._closed:
            return
        loop = self._loop
        assert loop is not None
        due_s = loop.time() + self.config.stall_watch_ms / 1000
        self._stall_watch = loop.call_at(due_s, self._stall_tick, due_s)

    def _stall_tick(self, due_s: float) -> None:
        self._stall_watch = None
        self._note_lateness(due_s)
        self._arm_stall_watch()

    def _note_lateness(self, due_s: float) -> None:
        """Report how late something due at `due_s` ran, when that is a stall."""
        report = self._stall_reporter
        if report is None or self._closed:
            return
        now_s = self._time_s()
        since_s = max(due_s, self._stall_counted_to_s)
        if now_s - since_s < self.config.stall_report_ms / 1000:
            return
        self._stall_counted_to_s = now_s
        try:
            report(int((now_s - since_s) * 1_000_000))
        except Exception:
            _log.exception("stall reporter failed")

    def connected_peers(self) -> list[str]:
        """Node ids with a connection up, for inspection."""
        return [peer.node_id for peer in self._peers.values() if peer.sender() is not None]

    def path_stats(self, node_id: str) -> PathStats | None:
        """What the transport knows of the path of the connection carrying messages to
        `node_id`, or None when none is up (telemetry samples it)."""
        peer = self._peers.get(node_id)
        link = None if peer is None else peer.sender()
        return None if link is None else link.connection.path_stats()

    def _time_s(self) -> float:
        loop = self._loop
        assert loop is not None
        return loop.time()

    def _spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- feeding the core and draining it ------------------------------------------------------

    def _feed(self, message: object, source: str) -> None:
        if self._closed:
            return
        self.core.receive_message(message, source=source, now_us=self.now_us())

    def _feed_at(self, message: object, source: str, now_us: int) -> None:
        """`_feed` at a time read earlier (the batch's), or later if the core was fed since."""
        if self._closed:
            return
        self.core.receive_message(message, source=source, now_us=max(now_us, self._last_now_us))

    def _drain(self) -> None:
        """Send the core's messages, submit its store requests, publish its events, re-arm."""
        if self._closed:
            return
        core = self.core
        outbox = core.messages_to_send()
        index, count = 0, len(outbox)
        send = self._send
        while index < count:
            # Consecutive messages to one peer (a server's answers to one client's pipelined
            # requests, say) go out in one send_frames call, encoded in one step.
            destination = outbox[index].destination
            end = index + 1
            while end < count and outbox[end].destination == destination:
                end += 1
            if end - index == 1:
                send(destination, outbox[index].message)
            else:
                self._send_batch(destination, [o.message for o in outbox[index:end]])
            index = end
        for request in core.store_requests():
            self._submit_store(request)
        # A few events per request: the loop's lookups are hoisted out of it, and each event
        # goes only to the subscribers that asked for its type.
        routes = self._routes
        next_event = core.next_event
        while (event := next_event()) is not None:
            route = routes.get(type(event))
            if route is None:
                route = self._route(type(event))
            for subscriber in route:
                try:
                    subscriber(event)
                except Exception:
                    _log.exception("event subscriber failed on %r", event)
        self._arm_timer()

    def _route(self, event_type: type) -> tuple[EventSubscriber, ...]:
        """The subscribers of events of `event_type`, in subscription order; remembered."""
        routes = self._routes
        if len(routes) >= EVENT_ROUTES_MAX:
            routes.clear()
        route = tuple(
            subscriber
            for subscriber, types in self._subscribers
            if types is None or issubclass(event_type, types)
        )
        routes[event_type] = route
        return route

    def _arm_timer(self) -> None:
        due = self.core.timer_us()
        if due == self._timer_due_us and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_due_us = due
        if due is None:
            return
        loop = self._loop
        assert loop is not None
        due_s = due / 1_000_000 - self._offset_s
        # Lateness counts from when the timer could first run: a core often asks for work that
        # is already due (an instant in the past), which runs at once and is no stall.
        self._timer = loop.call_at(due_s, self._fire_timer, due, max(due_s, loop.time()))

    def _fire_timer(self, due_us: int, runnable_s: float) -> None:
        self._timer = None
        self._timer_due_us = None
        if self._closed:
            return
        # A timer that ran late may find its deadline crossed because the loop stalled, not
        # because a peer fell silent: the stall is reported first.
        self._note_lateness(runnable_s)
        # The loop may run a timer up to its clock resolution early; the core is told the time
        # it asked for, so one timer is one call; what is fed next is never earlier than that.
        now_us = self._last_now_us = max(self.now_us(), due_us)
        try:
            self.core.handle_timer(now_us=now_us)
        except Exception:
            _log.exception("core %s failed in handle_timer", self.core.node_id)
        self._drain()

    def _submit_store(self, request: object) -> None:
        store = self._store
        executor = self._executor
        assert store is not None and executor is not None, f"no store for {request!r}"
        loop = self._loop
        assert loop is not None

        def execute() -> object:
            try:
                return store.execute(request)  # type: ignore[arg-type]
            except Exception as error:
                _log.exception("store failed on %r", request)
                return StoreFailed(request_id=request.request_id, reason=repr(error))  # type: ignore[attr-defined]

        future = loop.run_in_executor(executor, execute)
        future.add_done_callback(self._store_done)

    def _store_done(self, future: asyncio.Future[object]) -> None:
        if self._closed or future.cancelled():
            return
        result = future.result()
        try:
            self.core.store_result(result, now_us=self.now_us())
        except Exception:
            _log.exception("core %s failed on store result %r", self.core.node_id, result)
        self._drain()

    # -- sending -------------------------------------------------------------------------------

    def _send(self, destination: str, message: object) -> None:
        if isinstance(message, ConnectionCloseRequested):
            self._close_peer(destination, message)
            return
        frame = _as_frame(message)
        if type(frame) is Error and (refused := self._refusal_link(destination)) is not None:
            self._transmit(refused, [frame], destination)
            return
        peer = self._peers.get(destination)
        if peer is None:
            if destination.startswith(CLIENT_NODE_PREFIX):
                return  # That client connection is gone and the core heard so.
            peer = self._peers[destination] = _Peer(destination)
        link = peer.sender()
        if link is not None:
            self._transmit(link, [frame], destination)
            return
        if destination.startswith(CLIENT_NODE_PREFIX):
            return
        if len(peer.queue) >= self.config.peer_queue_frames_max:
            _log.warning("queue to %s overflowed; dropping it", destination)
            self._dial_failed(peer, "send-queue-overflow")
            return
        peer.queue.append(frame)
        self._maybe_dial(peer)

    def _send_batch(self, destination: str, messages: list[object]) -> None:
        """`_send` of each message, in one `send_frames` when the peer's link is up."""
        peer = self._peers.get(destination)
        link = None if peer is None else peer.sender()
        if link is None or any(type(m) is ConnectionCloseRequested for m in messages):
            for message in messages:
                self._send(destination, message)
            return
        self._transmit(link, [_as_frame(message) for message in messages], destination)

    def _transmit(self, link: _Link, frames: list[Frame], destination: str) -> None:
        """Send `frames` on `link`. A frame the connection cannot encode (longer than its
        bound: a cluster message past `CLUSTER_FRAME_BYTES_MAX`) is logged and dropped, as a
        message lost on the way would be, and the others still go."""
        try:
            # A closed connection's loss is on its way to the core as ConnectionLost.
            with contextlib.suppress(ConnectionClosedError):
                if len(frames) == 1:
                    link.connection.send_frame(frames[0])
                else:
                    link.connection.send_frames(frames)
                if link.awaiting_since_s is None:
                    link.sent(self._time_s())
        except LocalProtocolError as error:
            if len(frames) > 1:  # None was queued (`send_frames`): each one on its own.
                for frame in frames:
                    self._transmit(link, [frame], destination)
                return
            _log.error("cannot send %s to %s: %s", type(frames[0]).__name__, destination, error)

    def _refusal_link(self, node_id: str) -> _Link | None:
        """The link whose frames the core is answering, when they came from `node_id`: an
        ERROR and a close the core asks for then are about what that link carried. Two
        processes may run as one node id (a second one started by mistake, with another
        cluster's keys, say): refusing the newcomer closed the healthy one's connection too.
        Already closed (by a refusal of an earlier frame of the same read), it still takes the
        refusals of the later ones, which would otherwise fall on every link of the node id."""
        link = self._input_link
        if link is None or link.peer != node_id:
            return None
        return link

    def _close_peer(self, node_id: str, request: ConnectionCloseRequested) -> None:
        refused = self._refusal_link(node_id)
        if refused is not None:
            if request.error_code != ErrorCode.NO_ERROR and not node_id.startswith(
                CLIENT_NODE_PREFIX
            ):
                self._log_refusal(node_id, f"closing {node_id}: {request.reason}")
            refused.connection.close(request.error_code, request.reason)
            return
        peer = self._peers.get(node_id)
        if peer is None:
            self._later_lost(node_id, "closed")
            return
        if not peer.links:
            # Nothing is up: the connect in flight (if any) is abandoned, and the core still
            # hears the close it asked for.
            if peer.dial_task is not None:
                peer.dial_task.cancel()
                peer.dial_task = None
            peer.queue.clear()
            self._later_lost(node_id, "closed")
            return
        if request.error_code != ErrorCode.NO_ERROR and not node_id.startswith(CLIENT_NODE_PREFIX):
            # The core refused a cluster peer (a client's refusals are the client's business and
            # may be many): say why in this node's log too.
            self._log_refusal(node_id, f"closing {node_id}: {request.reason}")
        for link in list(peer.links):
            link.connection.close(request.error_code, request.reason)

    def _log_refusal(self, node_id: str, line: str) -> None:
        """A refusal between cluster nodes, as a warning the first time in a row: a peer that
        redials and is refused again for the same reason every half second logs it once."""
        if self._refusals_logged.get(node_id) == line:
            _log.debug(line)
            return
        self._refusals_logged[node_id] = line
        _log.warning(line)

    def _later_lost(self, node_id: str, reason: str) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_soon(self._deliver_lost, node_id, reason)

    def _deliver_lost(self, node_id: str, reason: str) -> None:
        self._feed(ConnectionLost(peer=node_id, reason=reason), node_id)
        self._drain()

    # -- connecting ----------------------------------------------------------------------------

    def _maybe_dial(self, peer: _Peer) -> None:
        if peer.dial_task is not None or peer.links or peer.retry_handle is not None:
            return  # A connect is in flight, a link is closing, or a retry is scheduled.
        loop = self._loop
        assert loop is not None
        wait_s = peer.next_dial_s - loop.time()
        if wait_s > 0:
            peer.retry_handle = loop.call_later(wait_s, self._retry_dial, peer)
            return
        peer.dial_task = self._spawn(self._dial(peer))

    def _retry_dial(self, peer: _Peer) -> None:
        peer.retry_handle = None
        if self._closed or not peer.queue:
            return
        self._maybe_dial(peer)

    async def _dial(self, peer: _Peer) -> None:
        routes = list(self._resolve(peer.node_id))
        if not routes:
            peer.dial_task = None
            self._dial_failed(peer, "no-route")
            return
        route = routes[peer.route_index % len(routes)]
        transport = self._cluster_transport if route.cluster else self._client_transport
        role = PeerRole.CLUSTER_NODE if route.cluster else PeerRole.SERVER
        try:
            if transport is None:
                raise TransportError(f"no transport to reach {peer.node_id}")
            connection = await transport.connect(
                route.host, route.port, server_id=route.server_id, peer_role=role
            )
        except (TransportError, OSError) as error:
            peer.dial_task = None
            peer.route_index += 1
            _log.log(
                _dial_failure_level(error, cluster=route.cluster, failures=peer.failures),
                "cannot connect to %s at %s:%d: %s",
                peer.node_id,
                route.host,
                route.port,
                error,
            )
            # The transports' own errors already say where they could not connect.
            why = str(error) if isinstance(error, TransportError) else None
            self._dial_failed(peer, why or f"cannot connect to {route.host}:{route.port}: {error}")
            return
        peer.dial_task = None
        if self._closed:
            connection.close(ErrorCode.NO_ERROR, "node shutting down")
            return
        kind = _LinkKind.CLUSTER if route.cluster else _LinkKind.SERVER_DIALED
        link = _Link(connection, peer=peer.node_id, kind=kind, dialed=True)
        self._attach(link, peer)
        if kind is _LinkKind.CLUSTER:
            connection.send_frame(Hello(versions=(PROTOCOL_VERSION,), client_id=self._hello_id))
        else:
            self._link_up(link, peer)

    def _dial_failed(self, peer: _Peer, reason: str) -> None:
        """Back off before the next dial (doubling, up to `dial_backoff_max_ms`)."""
        loop = self._loop
        assert loop is not None
        peer.failures += 1
        peer.next_dial_s = loop.time() + self._backoff_s(peer.failures)
        peer.queue.clear()
        self._later_lost(peer.node_id, reason)

    # -- links ---------------------------------------------------------------------------------

    def _attach(self, link: _Link, peer: _Peer) -> None:
        """Start reading a new link and watch for its end."""
        loop = self._loop
        assert loop is not None
        link.heard_s = loop.time()
        peer.links.append(link)
        connection = link.connection
        connection.set_frame_handler(lambda frames: self._on_frames(link, frames))
        self._spawn(self._watch(link))
        if not link.established:
            loop.call_later(self.config.welcome_timeout_ms / 1000, self._welcome_overdue, link)

    def _welcome_overdue(self, link: _Link) -> None:
        if not link.established and not link.connection.is_closed:
            link.connection.close(ErrorCode.PROTOCOL_ERROR, "no HELLO/WELCOME in time")

    def _link_up(self, link: _Link, peer: _Peer) -> None:
        """A link is ready for the core's messages: it becomes the sender if none is."""
        link.established = True
        loop = self._loop
        assert loop is not None
        link.up_s = loop.time()
        peer.failures = 0
        peer.next_dial_s = 0.0
        current = peer.sender()
        if current is not None:
            if peer.node_id not in self._elected_peers:
                return
            # The newest process to reach us under this id is the one that leads now.
            current.sending = False
            current.connection.close(ErrorCode.NO_ERROR, "replaced by a newer connection")
            self._feed(ConnectionLost(peer=peer.node_id, reason="replaced"), peer.node_id)
        link.sending = True
        origin = ""
        if link.kind is _LinkKind.CLIENT_ACCEPTED:
            origin = connection_origin(link.connection.peer_address)
        self._feed(ConnectionOpened(peer=peer.node_id, origin=origin), peer.node_id)
        if peer.queue:
            frames = list(peer.queue)
            peer.queue.clear()
            self._transmit(link, frames, peer.node_id)
        self._drain()

    async def _watch(self, link: _Link) -> None:
        info = await link.connection.wait_closed()
        refused = (
            info.initiator is CloseInitiator.PEER
            and info.error_code != ErrorCode.NO_ERROR
            and link.kind is _LinkKind.CLUSTER
        )
        if refused:
            # A cluster peer refused something this node sent (a manager refusing a server's
            # announce, say): the operator of this node needs the reason, the core only the close.
            self._log_refusal(
                link.peer,
                f"{link.peer} closed the connection: {info.reason} (this node redials and logs "
                "the refusal again only if its reason changes)",
            )
        peer = self._peers.get(link.peer)
        if peer is not None and link.established and link.kind is _LinkKind.CLUSTER:
            self._count_refusal(peer, link, refused=refused)
        self._link_gone(link, f"{info.initiator.value}: {info.reason}")

    def _count_refusal(self, peer: _Peer, link: _Link, *, refused: bool) -> None:
        """A refused link makes the next dial wait as a failed dial would (doubling, up to
        `dial_backoff_max_ms`): the link came up, so the dial's own backoff had started over,
        and a refused server redialed its manager twice a second for as long as it ran. Any
        other close of a link that was up, or a refusal after the link served longer than the
        longest backoff, starts the count over."""
        loop = self._loop
        assert loop is not None
        config = self.config
        if not refused or loop.time() - link.up_s > config.dial_backoff_max_ms / 1000:
            peer.refusals = 0
        if not refused:
            return
        peer.refusals += 1
        peer.next_dial_s = loop.time() + self._backoff_s(peer.refusals)

    def _backoff_s(self, in_a_row: int) -> float:
        """The wait before the next dial after `in_a_row` failures or refusals in a row:
        `dial_backoff_ms` doubling, up to `dial_backoff_max_ms`."""
        config = self.config
        backoff_ms = min(
            config.dial_backoff_ms << min(in_a_row - 1, 16), config.dial_backoff_max_ms
        )
        return backoff_ms / 1000

    def _link_gone(self, link: _Link, reason: str) -> None:
        peer = self._peers.get(link.peer)
        if peer is None or link not in peer.links or self._closed:
            return
        peer.links.remove(link)
        if link.dialed and not link.established:
            self._dial_failed(peer, reason)
        elif link.sending:
            self._feed(ConnectionLost(peer=peer.node_id, reason=reason), peer.node_id)
            replacement = next((other for other in peer.links if other.established), None)
            if replacement is not None:
                self._link_up(replacement, peer)
        if not peer.links and link.peer.startswith(CLIENT_NODE_PREFIX):
            del self._peers[link.peer]
        elif not peer.links and peer.queue:
            self._maybe_dial(peer)
        self._drain()

    async def _accept_loop(self, listener: Listener) -> None:
        async for connection in listener:
            if self._closed:
                connection.close(ErrorCode.NO_ERROR, "node shutting down")
                continue
            self._accepted(connection)

    def _accepted(self, connection: TransportConnection) -> None:
        if connection.peer_id is not None:
            # A certificate of the cluster CA: a cluster node, which introduces itself with HELLO.
            node_id = connection.peer_id
            link = _Link(connection, peer=node_id, kind=_LinkKind.CLUSTER, dialed=False)
            peer = self._peers.get(node_id)
            if peer is None:
                peer = self._peers[node_id] = _Peer(node_id)
            self._attach(link, peer)
            return
        self._client_counter += 1
        node_id = f"{CLIENT_NODE_PREFIX}{self._client_counter}"
        # A client that sends faster than it takes the answers waits (its next frames held
        # until it reads), rather than growing this node's send buffer or being cut off for a
        # burst of large answers it does read. Clients never pace: no connection waits on both.
        connection.pace_by_sending()
        link = _Link(connection, peer=node_id, kind=_LinkKind.CLIENT_ACCEPTED, dialed=False)
        peer = self._peers[node_id] = _Peer(node_id)
        self._attach(link, peer)
        self._link_up(link, peer)

    # -- receiving -----------------------------------------------------------------------------

    def _on_frames(self, link: _Link, frames: list[Frame]) -> None:
        """Feed the frames of one read. They arrived together: the clock is read once for them
        (`_feed_at` keeps the time fed to the core from going back)."""
        if self._closed:
            return
        now_s = self._time_s()
        link.heard_s = self.input_received_s = now_s
        link.awaiting_since_s = None
        now_us = self._now_us_at(now_s)
        connection = link.connection
        # A read that ends with the peer's ERROR comes closed: on an established link what the
        # peer sent before it is fed, the ERROR too (a handshake is not started on it). A close
        # by this side (a violation, a newer link) ends the feeding.
        closed = connection.close_info
        if closed is not None and (
            closed.initiator is not CloseInitiator.PEER or not link.established
        ):
            frames = []
        try:
            if link.kind is _LinkKind.SERVER_DIALED:
                # Frames from a server this client dialed go to the core as they are.
                receive = self.core.receive_message
                peer = link.peer
                for frame in frames:
                    if connection.close_info is not closed or self._closed:
                        break
                    receive(frame, source=peer, now_us=max(now_us, self._last_now_us))
            else:
                for frame in frames:
                    if connection.close_info is not closed:
                        break
                    self._on_frame(link, frame, now_us)
        except Exception:
            _log.exception("core %s failed on a frame from %s", self.core.node_id, link.peer)
            link.connection.close(ErrorCode.INTERNAL_ERROR, "internal error")
        # What the core refuses now it refuses on this link (`_refusal_link`).
        self._input_link = link
        try:
            self._drain()
        finally:
            self._input_link = None

    def _on_frame(self, link: _Link, frame: Frame, now_us: int) -> None:
        """One frame of an accepted client link or a cluster link (`_on_frames` feeds a dialed
        server's frames itself)."""
        kind = link.kind
        if kind is _LinkKind.CLIENT_ACCEPTED:
            # HELLO comes first and once (docs/PROTOCOL.md section 3); the cores leave the
            # order of a connection's frames to the driver.
            is_hello = type(frame) is Hello
            if is_hello == link.established_hello:
                what = "a second HELLO" if is_hello else f"{type(frame).__name__} before HELLO"
                self._violation(link, ErrorCode.FRAME_UNEXPECTED, what)
                return
            link.established_hello = True
            if frame.frame_type not in _CLIENT_FRAMES:
                self._violation(
                    link,
                    ErrorCode.FRAME_UNEXPECTED,
                    f"a client may not send {type(frame).__name__}",
                )
                return
            self._feed_at(frame, link.peer, now_us)
            return
        if frame.frame_type not in _CLUSTER_FRAMES:
            self._violation(
                link,
                ErrorCode.FRAME_UNEXPECTED,
                f"a cluster node may not send {type(frame).__name__}",
            )
            return
        if not link.established:
            self._handshake(link, frame)
            return
        if type(frame) is Hello or type(frame) is Welcome:
            self._violation(link, ErrorCode.FRAME_UNEXPECTED, "a second HELLO or WELCOME")
            return
        if type(frame) is ClusterMessage and frame.kind == ADMIN_MESSAGE_KIND:
            self._on_admin(link, frame)
            return
        self._feed_at(frame, link.peer, now_us)

    def _handshake(self, link: _Link, frame: Frame) -> None:
        """The HELLO/WELCOME exchange of a cluster link, which the driver runs for the core."""
        peer = self._peers[link.peer]
        if link.dialed and type(frame) is Welcome:
            if frame.server_id != link.peer:
                self._violation(
                    link,
                    ErrorCode.UNAUTHENTICATED,
                    f"WELCOME from {frame.server_id}, not {link.peer}",
                )
                return
            self._link_up(link, peer)
        elif not link.dialed and type(frame) is Hello:
            if PROTOCOL_VERSION not in frame.versions:
                self._violation(link, ErrorCode.VERSION_NEGOTIATION_FAILED, "no common version")
                return
            link.connection.send_frame(
                Welcome(
                    version=PROTOCOL_VERSION,
                    server_id=self.core.node_id,
                    map_version=int(getattr(self.core, "map_version", 0)),
                    frame_bytes_max=self._frame_bytes_max,
                    idle_timeout_ms=self._idle_timeout_ms,
                )
            )
            self._link_up(link, peer)
        elif type(frame) is Error:
            link.connection.close(frame.code, frame.reason)
        else:
            self._violation(
                link, ErrorCode.FRAME_UNEXPECTED, f"{type(frame).__name__} before HELLO/WELCOME"
            )

    def _on_admin(self, link: _Link, frame: ClusterMessage) -> None:
        handler = self._admin_handler
        if handler is None or link.peer not in self._admin_ids:
            self._violation(
                link, ErrorCode.UNAUTHENTICATED, f"{link.peer} may not send admin messages"
            )
            return
        reply = handler(link.peer, frame.body)
        with contextlib.suppress(ConnectionClosedError):  # The operator's tool left already.
            link.connection.send_frame(ClusterMessage(kind=ADMIN_MESSAGE_KIND, body=reply))

    def _violation(self, link: _Link, code: ErrorCode, reason: str) -> None:
        _log.info("closing %s: %s", link.peer, reason, extra=PEER_CAUSED)
        connection = link.connection
        try:
            connection.send_frame(Error(code=code, reason=reason[:1024]))
        except ConnectionClosedError:
            return
        connection.close(code, reason)

    # -- idle and silent connections -----------------------------------------------------------

    def _arm_sweeper(self) -> None:
        timeouts = [t for t in (self._idle_timeout_ms, self.config.silence_timeout_ms) if t]
        if not timeouts or self._closed:
            return
        loop = self._loop
        assert loop is not None
        interval_s = min(timeouts) / 4000
        self._sweep_due_s = loop.time() + interval_s
        self._sweeper = loop.call_later(interval_s, self._sweep, interval_s)

    def _sweep(self, interval_s: float) -> None:
        loop = self._loop
        assert loop is not None
        now_s = loop.time()
        if now_s - self._sweep_due_s > interval_s:
            # This process itself stalled (a long callback, a paused process): what its peers
            # sent meanwhile still waits in the sockets, so nobody counts as silent this round.
            self._arm_sweeper()
            return
        idle_s = self._idle_timeout_ms / 1000
        silence_s = self.config.silence_timeout_ms / 1000
        for peer in list(self._peers.values()):
            for link in list(peer.links):
                quiet_s = now_s - link.heard_s
                if link.kind is _LinkKind.CLIENT_ACCEPTED and idle_s and quiet_s > idle_s / 2:
                    # A paced client's frames wait while it takes the answers: taking them is
                    # being heard (else one draining a long backlog slowly was cut as idle).
                    connection = link.connection
                    taken = 0 if connection.writable else connection.taken_bytes()
                    if taken > link.bytes_taken:
                        link.bytes_taken, link.heard_s = taken, now_s
                    elif quiet_s > idle_s:
                        self._violation(
                            link, ErrorCode.IDLE_TIMEOUT, f"no frame for {quiet_s:.1f} s"
                        )
                        continue
                awaiting = link.awaiting_since_s
                if link.dialed and silence_s and awaiting is not None:
                    waited_s = now_s - awaiting
                    if self._still_receiving(link, waited_s > silence_s):
                        # Bytes came since the last sweep, though no whole frame: long answers
                        # on their way (over QUIC, a hundred 900 KB answers interleave and end
                        # together), not a frozen peer, which sends nothing at all.
                        link.awaiting_since_s = now_s
                    elif waited_s > silence_s:
                        _log.warning("%s silent for %.1f s; closing", link.peer, waited_s)
                        link.connection.abandon(
                            ErrorCode.IDLE_TIMEOUT, f"silent for {waited_s:.1f} s"
                        )
        self._arm_sweeper()

    @staticmethod
    def _still_receiving(link: _Link, silent: bool) -> bool:
        """Whether application bytes came from the peer since the last sweep (stream data:
        acknowledgements of a QUIC stack that is alive while its node answers nothing do not
        count); the count is taken at each sweep while a frame is awaited, and compared once
        the wait is long."""
        received = link.connection.received_bytes
        before, link.bytes_heard = link.bytes_heard, received
        return silent and before is not None and received > before


def _as_frame(message: object) -> Frame:
    """A `forehand.wire` frame as it is; a cluster message wrapped in a CLUSTER_MESSAGE frame."""
    if getattr(type(message), "frame_type", None) is not None:
        return message  # type: ignore[return-value]
    body = encode_cluster_message(message)  # type: ignore[arg-type]
    return ClusterMessage(kind=CORE_MESSAGE_KIND, body=body)
