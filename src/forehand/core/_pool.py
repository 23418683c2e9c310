"""The client's pool of connections, one per peer node, shared by all its sessions.

A connection is CONNECTING from the moment the client sends HELLO (the driver connects on demand
when a core sends to a node), READY once WELCOME arrives, DRAINING after GOAWAY (still
authenticated, but no new requests), and CLOSED when it is lost, when the peer closes it with
ERROR, or when the client asks the driver to close it (a misbehaving peer, an idle connection
evicted from a full pool). A closed connection leaves the pool; sending to the node again starts
a new one. Frames for a
connection that is not READY yet wait in its bounded queue and go out, in order, on WELCOME.
Each READY connection is pinged every `ping_interval_ms`; PONGs give RTT samples for telemetry.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from forehand.core._driver import NodeId
from forehand.errors import LocalProtocolError
from forehand.wire import WireConfig

__all__ = [
    "CONNECTION_TRANSITIONS",
    "Connection",
    "ConnectionPool",
    "ConnectionState",
    "ConnectionTrigger",
    "PathStats",
    "TransportCounters",
    "connection_transition_table",
]

RTT_SMOOTHING_SHIFT = 3
"""Smoothed RTT gains 1/8 of each sample, as in RFC 6298 (alpha = 1/8)."""
RTT_VARIATION_SHIFT = 2
"""RTT variation gains 1/4 of each deviation (beta = 1/4)."""


class ConnectionState(enum.Enum):
    """Where one pooled connection stands."""

    CONNECTING = "connecting"
    """HELLO sent, WELCOME not yet received: frames queue."""
    READY = "ready"
    """WELCOME received: the peer is authenticated and frames go straight out."""
    DRAINING = "draining"
    """GOAWAY received: still authenticated, but no new requests go to it."""
    CLOSED = "closed"
    """Lost or closed by the peer; the pool forgets it."""


class ConnectionTrigger(enum.Enum):
    """What moves a connection from one state to another."""

    HELLO_SENT = "hello-sent"
    WELCOME_RECEIVED = "welcome-received"
    GOAWAY_RECEIVED = "goaway-received"
    ERROR_RECEIVED = "error-received"
    CLOSE_REQUESTED = "close-requested"
    LOST = "lost"


CONNECTION_TRANSITIONS: dict[tuple[ConnectionState, ConnectionTrigger], ConnectionState] = {
    (ConnectionState.CLOSED, ConnectionTrigger.HELLO_SENT): ConnectionState.CONNECTING,
    (ConnectionState.CONNECTING, ConnectionTrigger.WELCOME_RECEIVED): ConnectionState.READY,
    (ConnectionState.CONNECTING, ConnectionTrigger.ERROR_RECEIVED): ConnectionState.CLOSED,
    (ConnectionState.CONNECTING, ConnectionTrigger.CLOSE_REQUESTED): ConnectionState.CLOSED,
    (ConnectionState.CONNECTING, ConnectionTrigger.LOST): ConnectionState.CLOSED,
    (ConnectionState.READY, ConnectionTrigger.GOAWAY_RECEIVED): ConnectionState.DRAINING,
    (ConnectionState.READY, ConnectionTrigger.ERROR_RECEIVED): ConnectionState.CLOSED,
    (ConnectionState.READY, ConnectionTrigger.CLOSE_REQUESTED): ConnectionState.CLOSED,
    (ConnectionState.READY, ConnectionTrigger.LOST): ConnectionState.CLOSED,
    (ConnectionState.DRAINING, ConnectionTrigger.GOAWAY_RECEIVED): ConnectionState.DRAINING,
    (ConnectionState.DRAINING, ConnectionTrigger.ERROR_RECEIVED): ConnectionState.CLOSED,
    (ConnectionState.DRAINING, ConnectionTrigger.CLOSE_REQUESTED): ConnectionState.CLOSED,
    (ConnectionState.DRAINING, ConnectionTrigger.LOST): ConnectionState.CLOSED,
}
"""Every legal connection transition; anything else raises `LocalProtocolError`."""


def connection_transition_table() -> list[
    tuple[ConnectionState, ConnectionTrigger, ConnectionState]
]:
    """The connection state machine as (from, trigger, to) rows, for generated diagrams."""
    return [
        (source, trigger, target) for (source, trigger), target in CONNECTION_TRANSITIONS.items()
    ]


class PathStats:
    """Measurements of the path to one server: RTT from PING/PONG (bounded raw samples and
    smoothed values), and loss, retransmissions and throughput over the last interval of the
    transport's counters (`TransportCounters`), which the runtime reads from the QUIC or TCP
    stack and feeds in."""

    __slots__ = (
        "counters",
        "counters_us",
        "loss_ratio",
        "retransmissions",
        "rtt_min_us",
        "rttvar_us",
        "samples_us",
        "srtt_us",
        "throughput_bytes_per_second",
    )

    def __init__(self, *, samples_max: int) -> None:
        self.samples_us: deque[int] = deque(maxlen=samples_max)
        """The newest RTT samples, oldest first, at most `rtt_samples_max`."""
        self.srtt_us: int | None = None
        """Smoothed RTT (RFC 6298), None before the first sample."""
        self.rttvar_us: int = 0
        """Smoothed mean deviation of the RTT, the path's jitter."""
        self.rtt_min_us: int | None = None
        """Lowest RTT sample seen: the path's propagation floor."""
        self.loss_ratio: float | None = None
        """Share of packets lost over the last counter interval; None before two readings."""
        self.retransmissions: int | None = None
        """Packets (segments) sent again over the last counter interval."""
        self.throughput_bytes_per_second: float | None = None
        """Bytes carried both ways per second over the last counter interval."""
        self.counters: TransportCounters | None = None
        """The previous reading of the transport's counters."""
        self.counters_us = 0
        """When it was taken."""

    def add_counters(self, counters: TransportCounters, *, now_us: int) -> None:
        """Fold in a reading of the transport's cumulative counters: rates over the interval
        since the previous reading (counters that went backwards mean a new connection)."""
        previous, previous_us = self.counters, self.counters_us
        self.counters, self.counters_us = counters, now_us
        if previous is None or now_us <= previous_us or counters.is_behind(previous):
            return
        sent = counters.packets_sent_count - previous.packets_sent_count
        lost = counters.packets_lost_count - previous.packets_lost_count
        self.loss_ratio = min(1.0, lost / sent) if sent > 0 else 0.0
        self.retransmissions = (
            counters.packets_retransmitted_count - previous.packets_retransmitted_count
        )
        carried = counters.bytes_count - previous.bytes_count
        self.throughput_bytes_per_second = carried * 1_000_000 / (now_us - previous_us)

    def add(self, rtt_us: int) -> None:
        """Record one RTT sample."""
        self.samples_us.append(rtt_us)
        self.rtt_min_us = rtt_us if self.rtt_min_us is None else min(self.rtt_min_us, rtt_us)
        if self.srtt_us is None:
            self.srtt_us = rtt_us
            self.rttvar_us = rtt_us // 2
            return
        deviation_us = abs(self.srtt_us - rtt_us)
        self.rttvar_us += (deviation_us - self.rttvar_us) >> RTT_VARIATION_SHIFT
        self.srtt_us += (rtt_us - self.srtt_us) >> RTT_SMOOTHING_SHIFT


@dataclass(frozen=True, slots=True, kw_only=True)
class TransportCounters:
    """Cumulative counters of one connection's transport (QUIC stack or kernel TCP), as the
    runtime reads them; the client turns two readings into rates."""

    packets_sent_count: int
    """Packets (QUIC datagrams, TCP segments) sent so far."""
    packets_lost_count: int
    """Packets declared lost so far (TCP: segments retransmitted, the kernel's loss signal)."""
    packets_retransmitted_count: int
    """Packets (segments) sent again so far."""
    bytes_count: int
    """Bytes sent and received so far."""

    def is_behind(self, other: TransportCounters) -> bool:
        """Whether any counter is below `other`'s: the readings come from two connections."""
        return (
            self.packets_sent_count < other.packets_sent_count
            or self.packets_lost_count < other.packets_lost_count
            or self.packets_retransmitted_count < other.packets_retransmitted_count
            or self.bytes_count < other.bytes_count
        )


class Connection:
    """One pooled connection to a peer node, and what the client learned on it."""

    __slots__ = (
        "announced_wire",
        "deferred_hello",
        "handoff_sequence_last",
        "map_version",
        "next_ping_us",
        "opened_us",
        "ping_sequence",
        "pings",
        "queue",
        "queue_frames_max",
        "server",
        "silent_asks",
        "state",
    )

    def __init__(self, server: NodeId, *, now_us: int, queue_frames_max: int) -> None:
        self.server = server
        """The peer node."""
        self.state = ConnectionState.CLOSED
        """Where the connection stands; starts CLOSED until HELLO is sent."""
        self.opened_us = now_us
        """When HELLO was sent."""
        self.queue: deque[object] = deque()
        """Frames waiting for WELCOME, in send order."""
        self.queue_frames_max = queue_frames_max
        """Bound on `queue`."""
        self.map_version = 0
        """The map version WELCOME announced."""
        self.announced_wire: WireConfig | None = None
        """Encoder bounds with the `frame_bytes_max` the peer's WELCOME announced, when that is
        below the client's own; None otherwise (and before WELCOME)."""
        self.handoff_sequence_last = 0
        """The newest HANDOFF sequence this connection delivered; older ones are stale."""
        self.next_ping_us: int | None = None
        """When the next PING is due; None until READY."""
        self.ping_sequence = 0
        """The sequence of the last PING sent."""
        self.pings: dict[int, int] = {}
        """Unanswered PINGs: sequence -> sent_us, at most `pings_outstanding_max`."""
        self.silent_asks = 0
        """MAP_REQUESTs sent about this server's parts since its PINGs went unanswered
        (`ClientConfig.silent_locate_pings`); back to 0 when a PONG leaves none unanswered."""
        self.deferred_hello: object | None = None
        """HELLO held back until the loss notice of the previous connection to the peer arrives."""

    def fire(self, trigger: ConnectionTrigger) -> ConnectionState:
        """Apply `trigger`, or raise `LocalProtocolError` when the table does not allow it."""
        try:
            self.state = CONNECTION_TRANSITIONS[(self.state, trigger)]
        except KeyError:
            raise LocalProtocolError(
                f"connection to {self.server}: no transition from {self.state.value} "
                f"on {trigger.value}"
            ) from None
        return self.state

    @property
    def authenticated(self) -> bool:
        """Whether the peer answered HELLO (READY or DRAINING): its HANDOFFs may be trusted."""
        return self.state in (ConnectionState.READY, ConnectionState.DRAINING)

    def enqueue(self, frame: object) -> bool:
        """Queue a frame until WELCOME; False when the queue is full."""
        if len(self.queue) >= self.queue_frames_max:
            return False
        self.queue.append(frame)
        return True


class ConnectionPool:
    """Connections by peer node, bounded by `connections_max`, plus per-server path statistics."""

    def __init__(
        self,
        *,
        connections_max: int,
        queue_frames_max: int,
        rtt_samples_max: int,
        paths_max: int,
    ) -> None:
        self._connections: dict[NodeId, Connection] = {}
        self._paths: dict[NodeId, PathStats] = {}
        self._paths_max = paths_max
        self._connections_max = connections_max
        self._queue_frames_max = queue_frames_max
        self._rtt_samples_max = rtt_samples_max

    def __iter__(self) -> Iterator[Connection]:
        """The live connections, in the order they were opened."""
        return iter(list(self._connections.values()))

    def __len__(self) -> int:
        return len(self._connections)

    def get(self, server: NodeId) -> Connection | None:
        """The live connection to `server`, or None."""
        return self._connections.get(server)

    def open(self, server: NodeId, *, now_us: int) -> Connection | None:
        """A new CONNECTING connection (the caller sends HELLO), or None when the pool is full."""
        assert server not in self._connections, server
        if len(self._connections) >= self._connections_max:
            return None
        connection = Connection(server, now_us=now_us, queue_frames_max=self._queue_frames_max)
        connection.fire(ConnectionTrigger.HELLO_SENT)
        self._connections[server] = connection
        return connection

    def close(self, server: NodeId, trigger: ConnectionTrigger) -> Connection | None:
        """Close the connection to `server` and forget it; None when there was none."""
        connection = self._connections.pop(server, None)
        if connection is not None:
            connection.fire(trigger)
        return connection

    def path(self, server: NodeId) -> PathStats:
        """The path statistics of `server`, created on first use; the oldest go past `paths_max`."""
        stats = self._paths.get(server)
        if stats is None:
            while len(self._paths) >= self._paths_max:
                del self._paths[next(iter(self._paths))]
            stats = self._paths[server] = PathStats(samples_max=self._rtt_samples_max)
        return stats

    def paths(self) -> dict[NodeId, PathStats]:
        """Every server's path statistics, by server id."""
        return dict(self._paths)
