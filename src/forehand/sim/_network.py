"""The network model: per-link delay, jitter, loss, duplication, reordering, bandwidth, partitions.

Two transports. A *datagram* link loses, duplicates and reorders messages independently. A
*connection* link behaves like a QUIC stream or a TLS connection: in order, never duplicated, a
lost packet costs retransmission delay, and a connection that cannot make progress breaks. A break
loses whatever was in flight in both directions and hands both live ends a connection-lost notice;
until an end has had its notice, what it sends on the dead connection is dropped (a write on a
broken socket), and after that its next send opens a new connection, paying a handshake.

A connection breaks when: retransmissions run out, the reset probability fires, the sender's queue
overflows, the receiver's inbox overflows, a send stalls behind a partition (or towards a silently
crashed node) for longer than `connection_timeout_us`, the peer crashes (its kernel resets the
connection) or the peer restarts. Partitions shorter than the timeout only delay traffic.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum

from forehand.core import NodeId
from forehand.errors import ConfigError
from forehand.sim import _kinds
from forehand.sim._messages import ConnectionLostFactory
from forehand.sim._process import Node, NodeState
from forehand.sim._ramp import Ramp

__all__ = [
    "DEFAULT_MESSAGE_BYTES",
    "JitterDistribution",
    "Link",
    "NetworkConfig",
    "PartitionDirection",
    "Transport",
]

DEFAULT_MESSAGE_BYTES = 256
"""Size the default `message_size` gives every message, for bandwidth accounting."""


class Transport(StrEnum):
    """How a link carries messages."""

    CONNECTION = "connection"
    """In order, no duplicates; losses become delay, and broken connections reset both ends."""
    DATAGRAM = "datagram"
    """Independent messages: lost, duplicated and reordered as drawn."""


class JitterDistribution(StrEnum):
    """The distribution of the jitter added to a link's base delay."""

    UNIFORM = "uniform"
    """Uniform on [0, jitter_us)."""
    LOGNORMAL = "lognormal"
    """Lognormal with median jitter_us and shape jitter_sigma: a heavy right tail."""


class PartitionDirection(StrEnum):
    """Which way traffic is cut between the two sides of a partition."""

    BOTH = "both"
    A_TO_B = "a-to-b"
    B_TO_A = "b-to-a"


def _constant_message_size(message: object) -> int:
    return DEFAULT_MESSAGE_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """The static behaviour of one direction of a link between two nodes."""

    transport: Transport = Transport.CONNECTION
    """Connection (ordered, resets) or datagram (loss, duplication, reordering)."""
    delay_us: int = 1_000
    """Base one-way propagation delay."""
    jitter_us: int = 0
    """Scale of the random extra delay added to each message."""
    jitter_distribution: JitterDistribution = JitterDistribution.UNIFORM
    """Distribution of the jitter."""
    jitter_sigma: float = 0.5
    """Shape of lognormal jitter (the sigma of the underlying normal)."""
    loss_probability: float = 0.0
    """Chance a transmission is lost: dropped on a datagram link, retransmitted on a connection."""
    duplicate_probability: float = 0.0
    """Chance a datagram is delivered twice."""
    reorder_probability: float = 0.0
    """Chance a datagram is held back by up to `reorder_delay_us` so later ones overtake it."""
    reorder_delay_us: int = 0
    """Bound on the extra delay of a reordered datagram."""
    bandwidth_bytes_per_s: int | None = None
    """Serialization rate of the link; None for unlimited."""
    queue_bytes_max: int = 4 * 1024 * 1024
    """Bound on bytes waiting to be serialized; overflow drops a datagram or resets a connection."""
    reset_probability: float = 0.0
    """Chance a message on a connection breaks it outright (middlebox resets, NAT rebinding)."""
    retransmission_timeout_us: int = 200_000
    """First retransmission delay after a loss on a connection; it doubles per further loss."""
    retransmissions_max: int = 5
    """Bound on retransmissions of one message; one more loss breaks the connection."""
    handshake_round_trips: int = 1
    """Round trips a new connection pays before its first message."""

    def __post_init__(self) -> None:
        for name in ("loss_probability", "duplicate_probability", "reorder_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} is a probability, got {self}")
        if not 0.0 <= self.reset_probability <= 1.0:
            raise ConfigError(f"reset_probability is a probability, got {self}")
        if min(self.delay_us, self.jitter_us, self.reorder_delay_us) < 0:
            raise ConfigError(f"link delays are non-negative, got {self}")
        if self.reorder_probability > 0 and self.reorder_delay_us == 0:
            raise ConfigError("a reorder probability needs a positive reorder_delay_us")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ConfigError(f"bandwidth_bytes_per_s must be positive, got {self}")
        if self.queue_bytes_max <= 0 or self.retransmissions_max < 0:
            raise ConfigError(f"queue and retransmission bounds must be positive, got {self}")
        if self.handshake_round_trips < 0 or self.retransmission_timeout_us <= 0:
            raise ConfigError(f"handshake and retransmission settings are invalid: {self}")
        if self.transport is Transport.CONNECTION and (
            self.duplicate_probability > 0 or self.reorder_probability > 0
        ):
            raise ConfigError("a connection never duplicates or reorders; use a datagram link")

    @classmethod
    def randomized(cls, rng: random.Random, *, transport: Transport = Transport.CONNECTION) -> Link:
        """A plausible link drawn from `rng` (datacenter to intercontinental)."""
        delay_us = rng.choice((200, 1_000, 5_000, 20_000, 80_000))
        datagram = transport is Transport.DATAGRAM
        reorder = rng.choice((0.0, 0.01, 0.05)) if datagram else 0.0
        return cls(
            transport=transport,
            delay_us=delay_us,
            jitter_us=delay_us // rng.choice((2, 5, 10, 50)),
            jitter_distribution=rng.choice(tuple(JitterDistribution)),
            loss_probability=rng.choice((0.0, 0.0, 0.001, 0.01, 0.05)),
            duplicate_probability=rng.choice((0.0, 0.001, 0.01)) if datagram else 0.0,
            reorder_probability=reorder,
            reorder_delay_us=delay_us if reorder else 0,
            bandwidth_bytes_per_s=rng.choice((None, 1_250_000, 12_500_000, 125_000_000)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    """The network of one simulation: default link, per-pair overrides, connection behaviour."""

    default_link: Link = field(default_factory=Link)
    """The link used for every ordered pair without an override."""
    links: Mapping[tuple[NodeId, NodeId], Link] = field(default_factory=dict)
    """Overrides per ordered pair `(source, target)`."""
    message_size: Callable[[object], int] = _constant_message_size
    """Bytes a message occupies on the wire, for bandwidth and queue accounting."""
    connection_timeout_us: int = 10_000_000
    """How long a connection stalls (partition, silent peer) before both ends give up on it."""
    stalled_messages_max: int = 10_000
    """Bound on messages held on one stalled connection; overflow breaks the connection."""

    def __post_init__(self) -> None:
        if self.connection_timeout_us <= 0 or self.stalled_messages_max <= 0:
            raise ConfigError(f"connection bounds must be positive, got {self}")


class ConnectionState(Enum):
    """A simulated connection is open, or broken and waiting for its ends to be told."""

    OPEN = "open"
    BROKEN = "broken"


class Connection:
    """One connection between two nodes, shared by both directions."""

    __slots__ = (
        "epoch",
        "first",
        "handshake_done",
        "pending_notices",
        "second",
        "stall_generation",
        "stalled",
        "stalled_from_first",
        "stalled_from_second",
        "state",
    )

    def __init__(self, first: NodeId, second: NodeId) -> None:
        self.first = first
        self.second = second
        self.epoch = 0
        self.state = ConnectionState.OPEN
        self.handshake_done = False
        self.pending_notices = 0
        self.stall_generation = 0
        self.stalled: deque[tuple[NodeId, NodeId, object]] = deque()
        self.stalled_from_first = 0
        self.stalled_from_second = 0

    def stalled_from(self, source: NodeId) -> int:
        """How many messages from `source` wait on this stalled connection."""
        return self.stalled_from_first if source == self.first else self.stalled_from_second


class LinkState:
    """The mutable state of one direction of a link."""

    __slots__ = ("busy_until_us", "delay_ramps", "last_arrival_us", "link", "loss_ramps")

    def __init__(self, link: Link) -> None:
        self.link = link
        self.busy_until_us = 0
        self.last_arrival_us = -1
        self.delay_ramps: list[Ramp] = []
        self.loss_ramps: list[Ramp] = []


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivePartition:
    """A partition in force: traffic between the two sides is cut in the given direction."""

    token: int
    """Identifies the partition so it can be healed."""
    side_a: frozenset[NodeId]
    """Nodes on one side (only membership is tested, never iterated)."""
    side_b: frozenset[NodeId]
    """Nodes on the other side."""
    direction: PartitionDirection
    """Which way traffic is cut."""

    def blocks(self, source: NodeId, target: NodeId) -> bool:
        """Whether traffic from `source` to `target` is cut."""
        direction = self.direction
        if direction is not PartitionDirection.B_TO_A and source in self.side_a:
            return target in self.side_b
        if direction is not PartitionDirection.A_TO_B and source in self.side_b:
            return target in self.side_a
        return False


class Network:
    """Routes messages between nodes; owned and driven by the simulator."""

    def __init__(
        self,
        config: NetworkConfig,
        rng: random.Random,
        *,
        nodes: Mapping[NodeId, Node],
        schedule: _kinds.Schedule,
        count: Callable[[str], None],
        connection_lost: ConnectionLostFactory,
    ) -> None:
        self.config = config
        self._rng = rng
        self._nodes = nodes
        self._schedule = schedule
        self._count = count
        self._connection_lost = connection_lost
        self._message_size = config.message_size
        self._overrides: dict[tuple[NodeId, NodeId], Link] = dict(config.links)
        self._links: dict[tuple[NodeId, NodeId], LinkState] = {}
        self._connections: dict[tuple[NodeId, NodeId], Connection] = {}
        self._stalled: dict[Connection, None] = {}
        self._partitions: list[ActivePartition] = []
        self._partition_tokens = 0

    # -- configuration -------------------------------------------------------------------------

    def link_state(self, source: NodeId, target: NodeId) -> LinkState:
        """The state of the link from `source` to `target`, created on first use."""
        state = self._links.get((source, target))
        if state is None:
            link = self._overrides.get((source, target), self.config.default_link)
            state = self._links[(source, target)] = LinkState(link)
        return state

    def set_link(self, source: NodeId, target: NodeId, link: Link) -> None:
        """Replace the static behaviour of the link from `source` to `target`."""
        self._overrides[(source, target)] = link
        self.link_state(source, target).link = link

    def add_degradation(
        self, source: NodeId, target: NodeId, *, delay_ramp: Ramp | None, loss_ramp: Ramp | None
    ) -> None:
        """Add a delay ramp (in µs) and/or a loss ramp (a probability) to one direction."""
        state = self.link_state(source, target)
        if delay_ramp is not None:
            state.delay_ramps.append(delay_ramp)
        if loss_ramp is not None:
            state.loss_ramps.append(loss_ramp)

    def start_partition(
        self, side_a: frozenset[NodeId], side_b: frozenset[NodeId], direction: PartitionDirection
    ) -> int:
        """Cut traffic between two groups of nodes; returns a token for `end_partition`."""
        if side_a & side_b:
            raise ConfigError("the two sides of a partition must not share nodes")
        self._partition_tokens += 1
        token = self._partition_tokens
        self._partitions.append(
            ActivePartition(token=token, side_a=side_a, side_b=side_b, direction=direction)
        )
        return token

    def end_partition(self, token: int, now_us: int) -> None:
        """Heal one partition and let stalled connections that it cut carry on."""
        self._partitions = [p for p in self._partitions if p.token != token]
        self._flush_stalled(now_us)

    def heal(self, now_us: int) -> None:
        """End every partition and every degradation ramp."""
        self._partitions.clear()
        for state in self._links.values():
            state.delay_ramps.clear()
            state.loss_ramps.clear()
        self._flush_stalled(now_us)

    def blocked(self, source: NodeId, target: NodeId) -> bool:
        """Whether a partition currently cuts traffic from `source` to `target`."""
        return any(partition.blocks(source, target) for partition in self._partitions)

    # -- sending -------------------------------------------------------------------------------

    def send(self, now_us: int, source: NodeId, target: NodeId, message: object) -> None:
        """Route one message from `source` to `target`, drawing its fate from the link."""
        state = self._links.get((source, target))
        if state is None:
            state = self.link_state(source, target)
        if state.link.transport is Transport.DATAGRAM:
            self._send_datagram(now_us, source, target, message, state)
            return
        connection = self._connections.get((source, target))
        if connection is None:
            connection = self._open(source, target)
        elif connection.state is ConnectionState.BROKEN:
            self._count("send-on-broken-connection")
            return
        node = self._nodes.get(target)
        if node is None or node.state is NodeState.CRASHED:
            self._send_to_dead(
                now_us=now_us,
                source=source,
                target=target,
                message=message,
                connection=connection,
                node=node,
            )
            return
        if (self._partitions and self.blocked(source, target)) or connection.stalled_from(source):
            self._stall(now_us, source, target, message, connection)
            return
        self._transmit(
            now_us=now_us,
            source=source,
            target=target,
            message=message,
            state=state,
            connection=connection,
        )

    def _open(self, source: NodeId, target: NodeId) -> Connection:
        if self.link_state(target, source).link.transport is not Transport.CONNECTION:
            raise ConfigError(f"links {source}->{target} and back must share one transport")
        connection = Connection(source, target)
        self._connections[(source, target)] = connection
        self._connections[(target, source)] = connection
        return connection

    def _send_to_dead(
        self,
        *,
        now_us: int,
        source: NodeId,
        target: NodeId,
        message: object,
        connection: Connection,
        node: Node | None,
    ) -> None:
        # A silently dead host never answers, so the sender stalls until its timeout; a crashed
        # process on a live host is refused by the kernel after one round trip.
        if node is not None and node.silent:
            self._stall(now_us, source, target, message, connection)
            return
        self._count("connection-refused")
        round_trip_us = 2 * self.link_state(source, target).link.delay_us
        self.break_connection(connection, now_us, "refused", notify={source: round_trip_us})

    def _transmit(
        self,
        *,
        now_us: int,
        source: NodeId,
        target: NodeId,
        message: object,
        state: LinkState,
        connection: Connection,
    ) -> None:
        link = state.link
        rng = self._rng
        delay_us = self._delay_us(now_us, state)
        extra_us = self._retransmission_us(now_us, state)
        if extra_us < 0:
            self._count("retransmissions-exhausted")
            self.break_connection(connection, now_us, "timeout")
            return
        if link.reset_probability and rng.random() < link.reset_probability:
            self._count("connection-reset-injected")
            self.break_connection(connection, now_us + delay_us, "reset")
            return
        if not connection.handshake_done:
            connection.handshake_done = True
            extra_us += 2 * link.handshake_round_trips * delay_us
        depart_us = self._serialize(now_us, state, message)
        if depart_us < 0:
            self._count("send-queue-overflow")
            self.break_connection(connection, now_us, "send-queue-overflow")
            return
        arrival_us = depart_us + delay_us + extra_us
        # Strictly increasing arrivals keep the stream in order whatever the heap's tiebreak.
        if arrival_us <= state.last_arrival_us:
            arrival_us = state.last_arrival_us + 1
        state.last_arrival_us = arrival_us
        self._schedule(
            arrival_us, _kinds.DELIVER, target, connection.epoch, message, source, connection
        )

    def _retransmission_us(self, now_us: int, state: LinkState) -> int:
        """Delay added by retransmissions of one message, or -1 when they run out."""
        loss = state.link.loss_probability
        if state.loss_ramps:
            loss = min(1.0, loss + sum(ramp.value_at(now_us) for ramp in state.loss_ramps))
        if loss == 0.0:
            return 0
        rng = self._rng
        extra_us = 0
        timeout_us = state.link.retransmission_timeout_us
        attempts = 0
        while rng.random() < loss:
            attempts += 1
            if attempts > state.link.retransmissions_max:
                return -1
            extra_us += timeout_us
            timeout_us *= 2
        if attempts:
            self._count("retransmission")
        return extra_us

    def _send_datagram(
        self, now_us: int, source: NodeId, target: NodeId, message: object, state: LinkState
    ) -> None:
        if self._partitions and self.blocked(source, target):
            self._count("datagram-partitioned")
            return
        link = state.link
        rng = self._rng
        loss = link.loss_probability
        if state.loss_ramps:
            loss = min(1.0, loss + sum(ramp.value_at(now_us) for ramp in state.loss_ramps))
        if loss and rng.random() < loss:
            self._count("datagram-lost")
            return
        copies = 1
        if link.duplicate_probability and rng.random() < link.duplicate_probability:
            self._count("datagram-duplicated")
            copies = 2
        for _ in range(copies):
            depart_us = self._serialize(now_us, state, message)
            if depart_us < 0:
                self._count("datagram-queue-overflow")
                continue
            arrival_us = depart_us + self._delay_us(now_us, state)
            if link.reorder_probability and rng.random() < link.reorder_probability:
                self._count("datagram-held-back")
                arrival_us += rng.randint(1, link.reorder_delay_us)
            self._schedule(arrival_us, _kinds.DELIVER, target, -1, message, source, None)

    def _delay_us(self, now_us: int, state: LinkState) -> int:
        link = state.link
        delay_us = link.delay_us
        if link.jitter_us:
            if link.jitter_distribution is JitterDistribution.UNIFORM:
                delay_us += int(self._rng.random() * link.jitter_us)
            else:
                sample = self._rng.lognormvariate(0.0, link.jitter_sigma)
                delay_us += int(link.jitter_us * sample)
        if state.delay_ramps:
            delay_us += int(sum(ramp.value_at(now_us) for ramp in state.delay_ramps))
        return delay_us

    def _serialize(self, now_us: int, state: LinkState, message: object) -> int:
        """When the message leaves the sender after the bytes queued before it, or -1 if full."""
        bandwidth = state.link.bandwidth_bytes_per_s
        if bandwidth is None:
            return now_us
        size_bytes = self._message_size(message)
        start_us = max(now_us, state.busy_until_us)
        backlog_bytes = (start_us - now_us) * bandwidth // 1_000_000
        if backlog_bytes + size_bytes > state.link.queue_bytes_max:
            return -1
        transmit_us = -(-size_bytes * 1_000_000 // bandwidth)
        state.busy_until_us = start_us + transmit_us
        return state.busy_until_us

    # -- stalls and breaks ---------------------------------------------------------------------

    def _stall(
        self, now_us: int, source: NodeId, target: NodeId, message: object, connection: Connection
    ) -> None:
        connection.stalled.append((source, target, message))
        if source == connection.first:
            connection.stalled_from_first += 1
        else:
            connection.stalled_from_second += 1
        if len(connection.stalled) > self.config.stalled_messages_max:
            self._count("stall-overflow")
            self.break_connection(connection, now_us, "stall-overflow")
            return
        if connection not in self._stalled:
            self._count("connection-stalled")
            self._stalled[connection] = None
            self._schedule(
                now_us + self.config.connection_timeout_us,
                _kinds.CONNECTION_TIMEOUT,
                "",
                connection.stall_generation,
                None,
                "",
                connection,
            )

    def _flush_stalled(self, now_us: int) -> None:
        """Resend, in order, what waited on stalled connections that are no longer cut."""
        for connection in list(self._stalled):
            # Each direction is its own ordered stream: one that can flow again resends its
            # messages in order, while a direction that is still cut keeps waiting.
            flowing = [
                source
                for source, target in (
                    (connection.first, connection.second),
                    (connection.second, connection.first),
                )
                if connection.stalled_from(source) and self._can_flow(source, target)
            ]
            if not flowing:
                continue
            pending = [item for item in connection.stalled if item[0] in flowing]
            kept = deque(item for item in connection.stalled if item[0] not in flowing)
            connection.stalled = kept
            for source in flowing:
                if source == connection.first:
                    connection.stalled_from_first = 0
                else:
                    connection.stalled_from_second = 0
            if not kept:
                del self._stalled[connection]
                connection.stall_generation += 1
            self._count("connection-unstalled")
            for source, target, message in pending:
                self.send(now_us, source, target, message)

    def _can_flow(self, source: NodeId, target: NodeId) -> bool:
        node = self._nodes.get(target)
        if node is None or node.state is NodeState.CRASHED:
            return False
        return not self.blocked(source, target)

    def connection_timed_out(self, connection: Connection, generation: int, now_us: int) -> None:
        """A stall timer fired: break the connection if it is still stalled since then."""
        if connection.state is not ConnectionState.OPEN:
            return
        if connection.stall_generation != generation or not connection.stalled:
            return
        self._count("connection-timeout")
        self.break_connection(connection, now_us, "timeout")

    def break_connection(
        self,
        connection: Connection,
        now_us: int,
        reason: str,
        *,
        notify: Mapping[NodeId, int] | None = None,
    ) -> None:
        """Break a connection: drop what is in flight and tell the live ends after a delay.

        `notify` maps the ends to tell to their notice delay; by default both ends are told at
        once (each end's own timer or error noticed the break).
        """
        if connection.state is ConnectionState.BROKEN:
            return
        connection.state = ConnectionState.BROKEN
        connection.epoch += 1
        connection.stall_generation += 1
        if connection.stalled:
            connection.stalled.clear()
            self._stalled.pop(connection, None)
        if notify is None:
            notify = {connection.first: 0, connection.second: 0}
        for endpoint, delay_us in notify.items():
            node = self._nodes.get(endpoint)
            if node is None or node.state is NodeState.CRASHED:
                continue
            peer = connection.second if endpoint == connection.first else connection.first
            connection.pending_notices += 1
            notice = self._connection_lost(peer, reason)
            self._schedule(
                now_us + delay_us,
                _kinds.NOTICE,
                endpoint,
                node.incarnation,
                notice,
                peer,
                connection,
            )
        if connection.pending_notices == 0:
            self._forget(connection)

    def notice_done(self, connection: Connection) -> None:
        """One end has had (or can no longer have) its notice; forget the connection after both."""
        connection.pending_notices -= 1
        if connection.pending_notices <= 0:
            self._forget(connection)

    def reset_between(self, now_us: int, source: NodeId, target: NodeId, reason: str) -> None:
        """Break the connection between two nodes, if there is an open one."""
        connection = self._connections.get((source, target))
        if connection is not None:
            self.break_connection(connection, now_us, reason)

    def _forget(self, connection: Connection) -> None:
        key = (connection.first, connection.second)
        if self._connections.get(key) is connection:
            # A node's connection to itself has a single key, so pop rather than delete twice.
            self._connections.pop(key, None)
            self._connections.pop((connection.second, connection.first), None)

    def _connections_of(self, node_id: NodeId) -> list[Connection]:
        return [c for (a, _), c in self._connections.items() if a == node_id]

    def node_crashed(self, node_id: NodeId, now_us: int) -> None:
        """A node crashed: its peers learn after a reset (or after their timeout if silent)."""
        node = self._nodes[node_id]
        for connection in self._connections_of(node_id):
            peer = connection.second if connection.first == node_id else connection.first
            if node.silent:
                delay_us = self.config.connection_timeout_us
            else:
                delay_us = self.link_state(node_id, peer).link.delay_us
            self.break_connection(connection, now_us, "peer-crashed", notify={peer: delay_us})

    def node_restarted(self, node_id: NodeId, now_us: int) -> None:
        """A node restarted: it has no connections, and peers still connected to it get reset."""
        for connection in self._connections_of(node_id):
            peer = connection.second if connection.first == node_id else connection.first
            delay_us = self.link_state(node_id, peer).link.delay_us
            self.break_connection(connection, now_us, "peer-restarted", notify={peer: delay_us})
            self._forget(connection)

    def open_connection_count(self) -> int:
        """How many connections are open or waiting for their notices."""
        return len(self._connections) // 2
