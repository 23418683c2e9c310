"""Small cores that exercise the simulator; test fixtures only, never part of the package.

`RecorderCore` records every input and sends what a test tells it to. `PingCore` pings its peers
on a timer. `LogServerCore` and `LogClientCore` are a tiny primary-backup log with a failure
detector, enough to drive every checker through crashes and failovers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forehand.core import NodeId, Outbound
from forehand.sim import ConnectionLost, ConnectionOpened, NodeStart
from forehand.sim.observations import (
    ClientResponseObserved,
    Durability,
    InstallCause,
    MapVersionObserved,
    Observation,
    PartKey,
    PrimaryAcceptedWrite,
    PrimaryInstalled,
    RarePathReached,
    RequestExecuted,
    SessionOpened,
    WriteAcknowledged,
)


class _Outputs:
    """The output side of the driver shape, shared by the test cores."""

    def __init__(self, node_id: NodeId) -> None:
        self._node_id = node_id
        self.outbox: list[Outbound] = []
        self.requests: list[object] = []
        self.events: list[object] = []
        self.deadline_us: int | None = None

    @property
    def node_id(self) -> NodeId:
        return self._node_id

    def messages_to_send(self) -> list[Outbound]:
        out, self.outbox = self.outbox, []
        return out

    def store_requests(self) -> list[object]:
        out, self.requests = self.requests, []
        return out

    def next_event(self) -> object | None:
        return self.events.pop(0) if self.events else None

    def timer_us(self) -> int | None:
        return self.deadline_us

    def send(self, destination: NodeId, message: object) -> None:
        self.outbox.append(Outbound(destination=destination, message=message))


@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    """A test message carrying a number."""

    number: int
    """The number."""
    padding: str = ""
    """Filler that makes the message bigger in tests that measure size."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Received:
    """One input a `RecorderCore` received."""

    kind: str
    source: NodeId
    message: object
    now_us: int


class RecorderCore(_Outputs):
    """Records every input; sends and stores on command; fires a list of timer deadlines."""

    def __init__(self, node_id: NodeId, *, deadlines: tuple[int, ...] = ()) -> None:
        super().__init__(node_id)
        self.received: list[Received] = []
        self.pending_deadlines = sorted(deadlines)
        self.deadline_us = self.pending_deadlines[0] if self.pending_deadlines else None

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        self.received.append(
            Received(kind="message", source=source, message=message, now_us=now_us)
        )

    def handle_timer(self, *, now_us: int) -> None:
        self.received.append(Received(kind="timer", source="", message=None, now_us=now_us))
        self.pending_deadlines.pop(0)
        self.deadline_us = self.pending_deadlines[0] if self.pending_deadlines else None

    def store_result(self, result: object, *, now_us: int) -> None:
        self.received.append(Received(kind="store", source="", message=result, now_us=now_us))

    def store(self, request: object) -> None:
        self.requests.append(request)

    def messages(self) -> list[Received]:
        """Messages from peers, without the driver's connection notices."""
        notices = (ConnectionLost, ConnectionOpened)
        return [
            item
            for item in self.received
            if item.kind == "message" and not isinstance(item.message, notices)
        ]

    def notices(self) -> list[Received]:
        """The driver's connection notices, opened and lost, in arrival order."""
        notices = (ConnectionLost, ConnectionOpened)
        return [item for item in self.received if isinstance(item.message, notices)]

    def notes(self) -> list[int]:
        return [item.message.number for item in self.received if isinstance(item.message, Note)]

    def losses(self) -> list[ConnectionLost]:
        return [item.message for item in self.received if isinstance(item.message, ConnectionLost)]


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    sequence: int
    """The sender's ping counter."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong:
    sequence: int
    """The counter of the ping answered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PongObserved(Observation):
    """A ping core received a pong."""

    node: NodeId
    """The pinging node."""
    peer: NodeId
    """Who answered."""
    sequence: int
    """Which ping it answers."""


class PingCore(_Outputs):
    """Pings every peer each `interval_us` (with seeded jitter) and reports the pongs."""

    def __init__(self, start: NodeStart, *, peers: tuple[NodeId, ...], interval_us: int) -> None:
        super().__init__(start.node_id)
        self._rng = start.rng
        self._peers = peers
        self._interval_us = interval_us
        self._sequence = 0
        self.pongs = 0
        self.deadline_us = start.now_us + self._rng.randrange(interval_us)

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        if isinstance(message, Ping):
            self.send(source, Pong(sequence=message.sequence))
        elif isinstance(message, Pong):
            self.pongs += 1
            self.events.append(
                PongObserved(node=self.node_id, peer=source, sequence=message.sequence)
            )
        elif isinstance(message, ConnectionLost):
            self.events.append(RarePathReached(node=self.node_id, name="ping-connection-lost"))

    def handle_timer(self, *, now_us: int) -> None:
        self._sequence += 1
        for peer in self._peers:
            self.send(peer, Ping(sequence=self._sequence))
        self.deadline_us = (
            now_us + self._interval_us + self._rng.randrange(self._interval_us // 10 + 1)
        )

    def store_result(self, result: object, *, now_us: int) -> None:
        raise AssertionError("ping cores use no store")


# -- a tiny primary-backup log ----------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Write:
    part_key: PartKey
    request_id: int
    issue_sequence: int


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteOk:
    part_key: PartKey
    request_id: int
    issue_sequence: int
    map_version: int
    log_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Replicate:
    map_version: int
    first_index: int
    entries: tuple[tuple[int, int, NodeId], ...]
    """(request_id, issue_sequence, client) per log entry, from `first_index` on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicateAck:
    map_version: int
    log_index: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NewPrimary:
    map_version: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    part_key: PartKey = ("session-1", "cart")
    durability: Durability = Durability.REPLICATED
    flush_interval_us: int = 5_000
    failover_timeout_us: int = 200_000
    ack_before_replication: bool = False
    """A deliberate bug: acknowledge `replicated` writes before the backup has them."""
    clients: tuple[NodeId, ...] = ("c1",)


@dataclass
class _Pending:
    index: int
    client: NodeId
    request_id: int
    issue_sequence: int


@dataclass
class _LogState:
    log: list[tuple[int, int, NodeId]] = field(default_factory=list)
    dedup: dict[int, int] = field(default_factory=dict)
    pending: list[_Pending] = field(default_factory=list)
    peer_acked: int = 0


class LogServerCore(_Outputs):
    """One of two servers of a primary-backup log for a single part."""

    def __init__(self, start: NodeStart, *, peer: NodeId, primary: bool, config: LogConfig) -> None:
        super().__init__(start.node_id)
        self._peer = peer
        self._config = config
        self._state = _LogState()
        self._primary = primary and start.incarnation == 0
        self._map_version = 1 if self._primary else 0
        self._last_heard_us = start.now_us
        if self._primary:
            self._install(InstallCause.INITIAL)
            self.deadline_us = start.now_us + config.flush_interval_us
        else:
            self.deadline_us = start.now_us + config.failover_timeout_us

    def _install(self, cause: InstallCause) -> None:
        self.events.append(MapVersionObserved(node=self.node_id, map_version=self._map_version))
        self.events.append(
            PrimaryInstalled(
                node=self.node_id,
                part_key=self._config.part_key,
                map_version=self._map_version,
                log_index=len(self._state.log),
                cause=cause,
            )
        )

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        if isinstance(message, Write):
            self._write(message, source)
        elif isinstance(message, Replicate):
            self._replicate(message, now_us)
        elif isinstance(message, ReplicateAck):
            self._replicate_ack(message)

    def _write(self, message: Write, client: NodeId) -> None:
        if not self._primary:
            return
        state = self._state
        index = state.dedup.get(message.request_id)
        if index is not None:
            if index <= state.peer_acked or self._acks_early():
                self._ack(client, message.request_id, message.issue_sequence, index)
            return
        state.log.append((message.request_id, message.issue_sequence, client))
        index = len(state.log)
        state.dedup[message.request_id] = index
        key = self._config.part_key
        self.events.append(
            PrimaryAcceptedWrite(node=self.node_id, part_key=key, map_version=self._map_version)
        )
        self.events.append(
            RequestExecuted(
                node=self.node_id,
                part_key=key,
                request_id=message.request_id,
                map_version=self._map_version,
                log_index=index,
            )
        )
        if self._acks_early():
            self._ack(client, message.request_id, message.issue_sequence, index)
        else:
            state.pending.append(
                _Pending(index, client, message.request_id, message.issue_sequence)
            )

    def _acks_early(self) -> bool:
        return self._config.durability is Durability.ASYNC or self._config.ack_before_replication

    def _ack(self, client: NodeId, request_id: int, issue_sequence: int, index: int) -> None:
        key = self._config.part_key
        self.events.append(
            WriteAcknowledged(
                node=self.node_id,
                part_key=key,
                request_id=request_id,
                durability=self._config.durability,
                map_version=self._map_version,
                log_index=index,
            )
        )
        self.send(
            client,
            WriteOk(
                part_key=key,
                request_id=request_id,
                issue_sequence=issue_sequence,
                map_version=self._map_version,
                log_index=index,
            ),
        )

    def _replicate(self, message: Replicate, now_us: int) -> None:
        if message.map_version < self._map_version:
            return
        if message.map_version > self._map_version:
            self._map_version = message.map_version
            self._primary = False
            self.events.append(MapVersionObserved(node=self.node_id, map_version=self._map_version))
        self._last_heard_us = now_us
        state = self._state
        if message.first_index <= len(state.log) + 1:
            del state.log[message.first_index - 1 :]
            state.log.extend(message.entries)
            state.dedup = {entry[0]: i + 1 for i, entry in enumerate(state.log)}
        self.send(self._peer, ReplicateAck(map_version=self._map_version, log_index=len(state.log)))

    def _replicate_ack(self, message: ReplicateAck) -> None:
        if not self._primary or message.map_version != self._map_version:
            return
        state = self._state
        state.peer_acked = max(state.peer_acked, message.log_index)
        ready = [item for item in state.pending if item.index <= state.peer_acked]
        state.pending = [item for item in state.pending if item.index > state.peer_acked]
        for item in ready:
            self._ack(item.client, item.request_id, item.issue_sequence, item.index)

    def handle_timer(self, *, now_us: int) -> None:
        if self._primary:
            state = self._state
            first = state.peer_acked + 1
            entries = tuple(state.log[first - 1 :])
            self.send(
                self._peer,
                Replicate(map_version=self._map_version, first_index=first, entries=entries),
            )
            self.deadline_us = now_us + self._config.flush_interval_us
            return
        if now_us - self._last_heard_us >= self._config.failover_timeout_us and self._state.log:
            self._promote(now_us)
            return
        self.deadline_us = max(now_us + 1, self._last_heard_us + self._config.failover_timeout_us)

    def _promote(self, now_us: int) -> None:
        self._primary = True
        self._map_version += 1
        self._state.peer_acked = 0
        self._state.pending = []
        self._install(InstallCause.FAILOVER)
        self.events.append(RarePathReached(node=self.node_id, name="failover"))
        for client in self._config.clients:
            self.send(client, NewPrimary(map_version=self._map_version))
        self.deadline_us = now_us + self._config.flush_interval_us

    def store_result(self, result: object, *, now_us: int) -> None:
        raise AssertionError("log servers keep their log in memory")


class LogClientCore(_Outputs):
    """Writes to the part one request at a time, with think time, retrying until answered."""

    def __init__(
        self,
        start: NodeStart,
        *,
        servers: tuple[NodeId, NodeId],
        config: LogConfig,
        think_time_us: int = 2_000,
        retry_us: int = 50_000,
    ) -> None:
        super().__init__(start.node_id)
        self._rng = start.rng
        self._config = config
        self._primary = servers[0]
        self._map_version = 1
        self._think_time_us = think_time_us
        self._retry_us = retry_us
        self._issued = 0
        self._outstanding: Write | None = None
        self.events.append(SessionOpened(client=self.node_id, session_id=config.part_key[0]))
        self.deadline_us = start.now_us + self._rng.randrange(think_time_us)

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        if isinstance(message, WriteOk):
            self._answered(message, now_us)
        elif isinstance(message, NewPrimary) and message.map_version > self._map_version:
            self._map_version = message.map_version
            self._primary = source
            self.events.append(
                MapVersionObserved(node=self.node_id, map_version=message.map_version)
            )
            self._resend(now_us)
        elif isinstance(message, ConnectionLost) and self._outstanding is not None:
            self.deadline_us = min(self.deadline_us or now_us, now_us + self._retry_us)

    def _answered(self, message: WriteOk, now_us: int) -> None:
        outstanding = self._outstanding
        if outstanding is None or message.request_id != outstanding.request_id:
            return
        self._outstanding = None
        self.events.append(
            ClientResponseObserved(
                client=self.node_id,
                part_key=message.part_key,
                request_id=message.request_id,
                issue_sequence=message.issue_sequence,
                map_version=message.map_version,
                log_index=message.log_index,
            )
        )
        self.deadline_us = now_us + 1 + self._rng.randrange(self._think_time_us)

    def _resend(self, now_us: int) -> None:
        if self._outstanding is not None:
            self.send(self._primary, self._outstanding)
            self.deadline_us = now_us + self._retry_us

    def handle_timer(self, *, now_us: int) -> None:
        if self._outstanding is not None:
            self.events.append(RarePathReached(node=self.node_id, name="client-retry"))
            self._resend(now_us)
            return
        self._issued += 1
        request_id = self._issued
        self._outstanding = Write(
            part_key=self._config.part_key, request_id=request_id, issue_sequence=self._issued
        )
        self._resend(now_us)

    def store_result(self, result: object, *, now_us: int) -> None:
        raise AssertionError("clients use no store")


# -- sessions against an echo server, for workloads -------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class EchoRequest:
    session_id: str
    part: str
    operation: str
    request_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EchoResponse:
    session_id: str
    part: str
    request_id: int


class EchoServerCore(_Outputs):
    """Answers every request at once."""

    def __init__(self, node_id: NodeId) -> None:
        super().__init__(node_id)
        self.operations: list[str] = []

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        if isinstance(message, EchoRequest):
            self.operations.append(message.operation)
            self.send(
                source,
                EchoResponse(
                    session_id=message.session_id, part=message.part, request_id=message.request_id
                ),
            )

    def handle_timer(self, *, now_us: int) -> None:
        raise AssertionError("echo servers set no timer")

    def store_result(self, result: object, *, now_us: int) -> None:
        raise AssertionError("echo servers use no store")


class SessionClientCore(_Outputs):
    """Holds sessions and sends their requests to one server, reporting every response."""

    def __init__(self, node_id: NodeId, *, server: NodeId) -> None:
        super().__init__(node_id)
        self._server = server
        self._next_request_id = 0
        self._sequences: dict[tuple[str, str], int] = {}
        self._issued: dict[int, int] = {}
        self.sessions: list[str] = []

    def open_session(self, session_id: str) -> None:
        self.sessions.append(session_id)
        self.events.append(SessionOpened(client=self.node_id, session_id=session_id))

    def request(self, session_id: str, part: str, operation: str) -> int:
        self._next_request_id += 1
        request_id = self._next_request_id
        key = (session_id, part)
        self._sequences[key] = self._sequences.get(key, 0) + 1
        self._issued[request_id] = self._sequences[key]
        self.send(
            self._server,
            EchoRequest(
                session_id=session_id, part=part, operation=operation, request_id=request_id
            ),
        )
        return request_id

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        if isinstance(message, EchoResponse):
            self.events.append(
                ClientResponseObserved(
                    client=self.node_id,
                    part_key=(message.session_id, message.part),
                    request_id=message.request_id,
                    issue_sequence=self._issued.pop(message.request_id),
                    map_version=1,
                    log_index=None,
                )
            )

    def handle_timer(self, *, now_us: int) -> None:
        raise AssertionError("session clients set no timer")

    def store_result(self, result: object, *, now_us: int) -> None:
        raise AssertionError("session clients use no store")
