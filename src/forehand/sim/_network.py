"""The network engine: routes messages over links, models connections, partitions and resets.

Two transports. A *datagram* link loses, duplicates and reorders messages independently. A
*connection* link behaves like a QUIC stream or a TLS connection, as `forehand.core` expects of
its driver: the first send to a peer opens a connection, which costs a handshake and hands both
ends a `ConnectionOpened` before any frame; traffic is in order and never duplicated; a lost
packet costs retransmission delay; a connection that cannot make progress breaks.

A break loses whatever was in flight in both directions and hands each end that knew of the
connection a `ConnectionLost`; until an end has had its notice, what it sends on the dead
connection is dropped (a write on a broken socket), and then its next send opens a new
connection (once the other end has had its notice too: a send meanwhile waits for it). A break
happens when retransmissions run out, the reset probability fires, a sender's queue or a
receiver's inbox overflows, a send stalls behind a partition (or towards a
silently dead host) for longer than `connection_timeout_us`, the peer crashes (its kernel resets
the connection, or it never answers if silent) or the peer restarts. Partitions shorter than the
timeout only delay traffic. A core's `ConnectionCloseRequested` closes gracefully: what it sent
before still arrives, then both ends get `ConnectionLost`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Mapping

from forehand.core import NodeId
from forehand.core._driver import ConnectionCloseRequested, ConnectionLost, ConnectionOpened
from forehand.errors import ConfigError
from forehand.sim import _kinds
from forehand.sim._connection import Connection, ConnectionState
from forehand.sim._links import (
    ActivePartition,
    JitterDistribution,
    Link,
    LinkState,
    NetworkConfig,
    PartitionDirection,
    Transport,
)
from forehand.sim._process import Node, NodeState
from forehand.sim._ramp import Ramp

__all__ = ["Network"]


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
    ) -> None:
        self.config = config
        self._rng = rng
        self._nodes = nodes
        self._schedule = schedule
        self._count = count
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
        partition = ActivePartition(token=token, side_a=side_a, side_b=side_b, direction=direction)
        self._partitions.append(partition)
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

    def transport_counters(self, source: NodeId, target: NodeId) -> tuple[int, int, int]:
        """Packets sent, lost and retransmitted so far from `source` to `target`: what the
        sender's transport stack counts (QUIC's congestion controller, the kernel's TCP)."""
        state = self.link_state(source, target)
        return (
            state.packets_sent_count,
            state.packets_lost_count,
            state.packets_retransmitted_count,
        )

    def connection_open(self, source: NodeId, target: NodeId) -> bool:
        """Whether a connection between the two nodes carries (or, stalled, awaits) traffic."""
        connection = self._connections.get((source, target))
        return connection is not None and connection.state is ConnectionState.OPEN

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
            if isinstance(message, ConnectionCloseRequested):
                self._close_without_connection(now_us, source, target, message)
                return
            self._send_datagram(now_us, source, target, message, state)
            return
        connection = self._connections.get((source, target))
        if isinstance(message, ConnectionCloseRequested):
            self._close(now_us, source, target, message, connection)
            return
        if connection is None:
            connection = self._open(source, target)
        elif connection.state is ConnectionState.BROKEN:
            if source in connection.told:
                # The sender heard of the break and sends again (a new socket, in a real
                # network); the other end has not had its notice yet. The send opens the next
                # connection once this one is forgotten (an instant later: both ends are told
                # together), rather than being lost with no notice, which left a client dialing
                # its manager for ever (`forehand sim --seed 16201118`).
                self._count("send-after-break-waits-for-the-peer-notice")
                incarnation = self._nodes[source].incarnation
                connection.reopening.append((source, incarnation, target, message))
                return
            self._count("send-on-broken-connection")
            return
        node = self._nodes.get(target)
        if node is None or node.state is NodeState.CRASHED:
            self._send_to_dead(now_us, source, target, message, connection)
            return
        if (self._partitions and self.blocked(source, target)) or connection.stalled_from(source):
            self._stall(now_us, source, target, message, connection)
            return
        self._transmit(now_us, source, target, message, state, connection)

    def _open(self, source: NodeId, target: NodeId) -> Connection:
        if self.link_state(target, source).link.transport is not Transport.CONNECTION:
            raise ConfigError(f"links {source}->{target} and back must share one transport")
        connection = Connection(source, target)
        self._connections[(source, target)] = connection
        self._connections[(target, source)] = connection
        return connection

    def _send_to_dead(
        self, now_us: int, source: NodeId, target: NodeId, message: object, connection: Connection
    ) -> None:
        # A silently dead host never answers, so the sender stalls until its timeout; a crashed
        # process on a live host is refused by the kernel after one round trip.
        node = self._nodes.get(target)
        if node is not None and node.silent:
            self._stall(now_us, source, target, message, connection)
            return
        self._count("connection-refused")
        round_trip_us = 2 * self.link_state(source, target).link.delay_us
        self.break_connection(connection, now_us, "refused", notify={source: round_trip_us})

    def _transmit(  # noqa: PLR0917 (one call site, on the hot path)
        self,
        now_us: int,
        source: NodeId,
        target: NodeId,
        message: object,
        state: LinkState,
        connection: Connection,
    ) -> None:
        link = state.link
        delay_us = self._delay_us(now_us, state)
        extra_us = self._retransmission_us(now_us, state)
        if extra_us < 0:
            self._count("retransmissions-exhausted")
            self.break_connection(connection, now_us, "timeout")
            return
        if link.reset_probability and self._rng.random() < link.reset_probability:
            self._count("connection-reset-injected")
            self.break_connection(connection, now_us + delay_us, "reset")
            return
        if not connection.handshake_done:
            connection.handshake_done = True
            handshake_us = 2 * link.handshake_round_trips * delay_us
            self._announce(now_us, connection, handshake_us)
            extra_us += handshake_us
        depart_us = self._serialize(now_us, state, message)
        if depart_us < 0:
            self._count("send-queue-overflow")
            self.break_connection(connection, now_us, "send-queue-overflow")
            return
        state.packets_sent_count += 1
        arrival_us = depart_us + delay_us + extra_us
        # Strictly increasing arrivals keep the stream in order whatever the heap's tiebreak.
        if arrival_us <= state.last_arrival_us:
            arrival_us = state.last_arrival_us + 1
        state.last_arrival_us = arrival_us
        lane = connection.lane_from(source)
        self._schedule(arrival_us, _kinds.DELIVER, target, lane.epoch, message, source, lane)

    def _announce(self, now_us: int, connection: Connection, handshake_us: int) -> None:
        """Schedule `ConnectionOpened` at both ends, each before any frame from the other."""
        initiator, acceptor = connection.first, connection.second
        for lane, target, source, after_us in (
            (connection.from_first, acceptor, initiator, handshake_us // 2),
            (connection.from_second, initiator, acceptor, handshake_us),
        ):
            state = self.link_state(source, target)
            opened_us = max(now_us + after_us, state.last_arrival_us + 1)
            state.last_arrival_us = opened_us
            notice = ConnectionOpened(peer=source)
            self._schedule(opened_us, _kinds.OPENED, target, lane.epoch, notice, source, connection)

    def opened_arrived(self, connection: Connection, target: NodeId, epoch: int) -> bool:
        """An opened notice is due at `target`: whether it still stands (the lane is intact)."""
        lane = connection.from_first if target == connection.second else connection.from_second
        if lane.epoch != epoch:
            return False
        if target == connection.second:
            connection.opened_second = True
        return True

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
            # Each loss is a transmission lost, and (unless they ran out) one sent again.
            state.packets_lost_count += 1
            if attempts > state.link.retransmissions_max:
                return -1
            state.packets_sent_count += 1
            state.packets_retransmitted_count += 1
            extra_us += timeout_us
            timeout_us *= 2
        if attempts:
            self._count("retransmission")
        return extra_us

    def _send_datagram(
        self, now_us: int, source: NodeId, target: NodeId, message: object, state: LinkState
    ) -> None:
        state.packets_sent_count += 1
        if self._partitions and self.blocked(source, target):
            self._count("datagram-partitioned")
            state.packets_lost_count += 1
            return
        link = state.link
        rng = self._rng
        loss = link.loss_probability
        if state.loss_ramps:
            loss = min(1.0, loss + sum(ramp.value_at(now_us) for ramp in state.loss_ramps))
        if loss and rng.random() < loss:
            self._count("datagram-lost")
            state.packets_lost_count += 1
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

    # -- stalls --------------------------------------------------------------------------------

    def _stall(
        self, now_us: int, source: NodeId, target: NodeId, message: object, connection: Connection
    ) -> None:
        connection.stalled.append((source, target, message))
        # The stack sent it and saw it lost (no acknowledgement); its resend once the path
        # flows again is a retransmission.
        state = self.link_state(source, target)
        state.packets_sent_count += 1
        state.packets_lost_count += 1
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
                for source in dict.fromkeys((connection.first, connection.second))
                if connection.stalled_from(source)
                and self._can_flow(source, connection.peer_of(source))
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
                self.link_state(source, target).packets_retransmitted_count += 1
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

    # -- breaks and closes ---------------------------------------------------------------------

    def break_connection(
        self,
        connection: Connection,
        now_us: int,
        reason: str,
        *,
        notify: Mapping[NodeId, int] | None = None,
    ) -> None:
        """Break a connection abruptly: drop what is in flight both ways and tell its ends.

        `notify` maps the ends to tell to their notice delay; by default both ends are told at
        once (each end's own timer or error noticed the break).
        """
        if connection.state is ConnectionState.BROKEN:
            return
        connection.move_to(ConnectionState.BROKEN)
        connection.from_first.epoch += 1
        connection.from_second.epoch += 1
        self._unstall(connection)
        if notify is None:
            notify = {connection.first: 0, connection.second: 0}
        for endpoint, delay_us in notify.items():
            self._notify(connection, endpoint, now_us + delay_us, reason)
        if connection.pending_notices == 0:
            self._forget(connection)

    def _unstall(self, connection: Connection) -> None:
        connection.stall_generation += 1
        if connection.stalled:
            self._count("stalled-messages-lost")
            connection.stalled.clear()
            connection.stalled_from_first = connection.stalled_from_second = 0
            self._stalled.pop(connection, None)

    def _notify(
        self,
        connection: Connection,
        endpoint: NodeId,
        time_us: int,
        reason: str,
        *,
        closer: bool = False,
    ) -> None:
        """Tell a live end that knew of the connection (or closed it), once, that it is lost."""
        node = self._nodes.get(endpoint)
        if node is None or node.state is NodeState.CRASHED:
            return
        if not (closer or connection.knows(endpoint)):
            return
        if not connection.mark_notified(endpoint):
            return
        connection.pending_notices += 1
        peer = connection.peer_of(endpoint)
        notice = ConnectionLost(peer=peer, reason=reason)
        self._schedule(time_us, _kinds.NOTICE, endpoint, node.incarnation, notice, peer, connection)

    def loss_handled(self, node_id: NodeId, peer: NodeId) -> None:
        """`node_id`'s core takes its notice of the break with `peer` now: what it sends to `peer`
        from now on is meant for a new connection (a new socket). Only a connection whose notice
        reached `node_id` counts (a later one to the same peer may have broken meanwhile)."""
        connection = self._connections.get((node_id, peer))
        if (
            connection is not None
            and connection.state is ConnectionState.BROKEN
            and node_id in connection.delivered
        ):
            connection.told.add(node_id)

    def notice_done(self, connection: Connection | None, endpoint: NodeId, now_us: int) -> None:
        """One end has had (or can no longer have) its notice; forget the connection after all,
        and send on a new one what an end that handled its notice sent meanwhile, if that end
        is still the same live process."""
        if connection is None:
            return
        connection.delivered.add(endpoint)
        connection.pending_notices -= 1
        if connection.pending_notices <= 0:
            self._forget(connection)
            reopening, connection.reopening = connection.reopening, []
            for source, incarnation, target, message in reopening:
                node = self._nodes.get(source)
                if node is None or node.state is NodeState.CRASHED:
                    continue
                if node.incarnation != incarnation:
                    continue
                self.send(now_us, source, target, message)

    def _close(
        self,
        now_us: int,
        closer: NodeId,
        peer: NodeId,
        request: ConnectionCloseRequested,
        connection: Connection | None,
    ) -> None:
        """A core closes its connection to `peer`: what it sent arrives, then both ends are told."""
        self._count("connection-closed-by-core")
        reason = f"closed: {request.reason}" if request.reason else "closed"
        if connection is None or connection.state is ConnectionState.BROKEN:
            self._close_without_connection(now_us, closer, peer, request)
            return
        if connection.stalled:
            self.break_connection(connection, now_us, reason)
            return
        self._close_after_sent(connection, now_us, closer, peer, reason)
        self._notify(connection, closer, now_us, reason, closer=True)

    def _close_after_sent(
        self, connection: Connection, now_us: int, closer: NodeId, peer: NodeId, reason: str
    ) -> None:
        """Close `connection` from `closer`'s end: what `closer` sent still arrives (what the
        peer sent does not), and the peer is told once it has."""
        connection.move_to(ConnectionState.BROKEN)
        connection.lane_from(peer).epoch += 1
        connection.stall_generation += 1
        self._forget(connection)
        state = self.link_state(closer, peer)
        after_last_us = max(now_us + state.link.delay_us, state.last_arrival_us + 1)
        self._notify(connection, peer, after_last_us, reason)

    def _close_without_connection(
        self, now_us: int, closer: NodeId, peer: NodeId, request: ConnectionCloseRequested
    ) -> None:
        """Nothing open to close: the closer still hears back, as for any other close."""
        node = self._nodes[closer]
        reason = f"closed: {request.reason}" if request.reason else "closed"
        notice = ConnectionLost(peer=peer, reason=reason)
        self._schedule(now_us, _kinds.NOTICE, closer, node.incarnation, notice, peer, None)

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
            peer = connection.peer_of(node_id)
            if node.silent:
                delay_us = self.config.connection_timeout_us
            else:
                delay_us = self.link_state(node_id, peer).link.delay_us
            self.break_connection(connection, now_us, "peer-crashed", notify={peer: delay_us})

    def node_exited(self, node_id: NodeId, now_us: int) -> None:
        """A node's process exited: its kernel closes each of its connections after what it
        sent (a stalled one is reset), and each peer is told once that has arrived."""
        for connection in self._connections_of(node_id):
            peer = connection.peer_of(node_id)
            if connection.state is ConnectionState.BROKEN:
                continue
            if connection.stalled:
                delay_us = self.link_state(node_id, peer).link.delay_us
                self.break_connection(connection, now_us, "peer-exited", notify={peer: delay_us})
            else:
                self._close_after_sent(connection, now_us, node_id, peer, "peer-exited")

    def node_restarted(self, node_id: NodeId, now_us: int) -> None:
        """A node restarted: it has no connections, and peers still connected to it get reset."""
        for connection in self._connections_of(node_id):
            peer = connection.peer_of(node_id)
            delay_us = self.link_state(node_id, peer).link.delay_us
            self.break_connection(connection, now_us, "peer-restarted", notify={peer: delay_us})
            self._forget(connection)

    def open_connection_count(self) -> int:
        """How many connections are open or waiting for their notices."""
        return len(self._connections) // 2
