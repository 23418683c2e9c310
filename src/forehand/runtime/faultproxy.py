"""An in-process asyncio fault proxy for loopback tests and the demo.

Linux `tc netem` is not available where Forehand is tested, so network faults are made by a proxy
that sits between a client and a server on 127.0.0.1 and misbehaves on purpose. The owning
process controls it at run time through methods: `set_faults`, `ramp_faults` (values changing
linearly over time), `partition` and `heal`, for each direction or both.

- `TCPFaultProxy` carries a byte stream (the TLS binding). Order and content are never changed,
  so a "loss" is what a lost segment costs TCP: the chunk and everything after it stall for
  `tcp_loss_stall_ms` (a retransmission timeout). Delay, jitter (without reordering) and a
  bandwidth limit apply per chunk read; `reset_probability` resets the connection. A BLACKHOLE
  partition holds bytes (and new connections) until it heals, as a real partition does to TCP;
  a RESET partition resets every connection and refuses new ones.
- `UDPFaultProxy` forwards datagrams (the QUIC binding), one upstream socket per client address:
  per-datagram delay, jitter, loss, duplication, reordering, a bandwidth limit with a bounded
  queue (tail drop), and partitions that drop everything.

Every queue has a named bound (`FaultProxyConfig`); every random decision comes from the
`random.Random` the proxy is given, drawn in arrival order, so a seed fixes which datagrams are
lost. `FaultSchedule` is the pure part: faults as a function of `now_us`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import random
import socket
import struct
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from types import TracebackType
from typing import Any, Self

from forehand.errors import ConfigError

__all__ = [
    "Direction",
    "FaultProxyConfig",
    "FaultSchedule",
    "FaultStats",
    "Partition",
    "PathFaults",
    "TCPFaultProxy",
    "UDPFaultProxy",
]

_MICROSECONDS_PER_SECOND = 1_000_000
_LINGER_RESET = struct.pack("ii", 1, 0)
"""SO_LINGER on with a zero timeout: close() sends RST instead of FIN."""


class Direction(enum.Enum):
    """Which way bytes or datagrams travel through the proxy."""

    UPSTREAM = "upstream"
    """From the client (whoever connects to the proxy) to the target."""
    DOWNSTREAM = "downstream"
    """From the target back to the client."""


class Partition(enum.Enum):
    """Whether a direction of the path is cut, and how."""

    NONE = "none"
    """Traffic flows."""
    BLACKHOLE = "blackhole"
    """Nothing gets through: TCP bytes wait (new connections hang) until healed, datagrams are
    dropped."""
    RESET = "reset"
    """TCP connections are reset and new ones refused; datagrams are dropped."""


def _check_range(owner: object, name: str, low: float, high: float | None = None) -> None:
    value = getattr(owner, name)
    if not isinstance(value, int | float) or value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{type(owner).__name__}.{name} must be {bound}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class PathFaults:
    """The faults one direction of a path suffers at one instant."""

    delay_ms: float = 0.0
    """Added one-way delay."""
    jitter_ms: float = 0.0
    """Each unit's delay varies uniformly by up to this much either way (never below zero).
    Datagrams may overtake each other; TCP chunks keep their order."""
    loss_probability: float = 0.0
    """UDP: a datagram is dropped. TCP: a chunk stalls for `tcp_loss_stall_ms`."""
    duplicate_probability: float = 0.0
    """UDP only: a datagram is delivered twice."""
    reorder_probability: float = 0.0
    """UDP only: a datagram is held `reorder_delay_ms` longer, so later ones pass it."""
    reorder_delay_ms: float = 5.0
    """UDP only: the extra hold of a reordered datagram."""
    bandwidth_bytes_per_second: float = 0.0
    """The rate the direction carries; 0 means unlimited. Ramps interpolate the time per byte,
    so a ramp from unlimited to a rate slows down steadily."""
    reset_probability: float = 0.0
    """TCP only: reading a chunk resets the connection (RST both ways)."""
    partition: Partition = Partition.NONE
    """Whether the direction is cut."""

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms", "reorder_delay_ms", "bandwidth_bytes_per_second"):
            _check_range(self, name, 0.0)
        for name in (
            "loss_probability",
            "duplicate_probability",
            "reorder_probability",
            "reset_probability",
        ):
            _check_range(self, name, 0.0, 1.0)

    @property
    def microseconds_per_byte(self) -> float:
        """The time one byte occupies the link; 0 when the bandwidth is unlimited."""
        if self.bandwidth_bytes_per_second == 0:
            return 0.0
        return _MICROSECONDS_PER_SECOND / self.bandwidth_bytes_per_second


NO_FAULTS = PathFaults()
"""A clean path."""
_INTERPOLATED = tuple(
    item.name
    for item in fields(PathFaults)
    if item.name not in ("partition", "bandwidth_bytes_per_second")
)


def _interpolate(source: PathFaults, target: PathFaults, fraction: float) -> PathFaults:
    """`source` moved `fraction` of the way to `target`; the partition switches at the end."""
    if fraction >= 1.0:
        return target
    values: dict[str, Any] = {
        name: getattr(source, name) + (getattr(target, name) - getattr(source, name)) * fraction
        for name in _INTERPOLATED
    }
    per_byte = source.microseconds_per_byte + fraction * (
        target.microseconds_per_byte - source.microseconds_per_byte
    )
    values["bandwidth_bytes_per_second"] = (
        0.0 if per_byte == 0 else _MICROSECONDS_PER_SECOND / per_byte
    )
    return PathFaults(partition=source.partition, **values)


class FaultSchedule:
    """The faults of one direction over time: a fixed value, or a linear ramp between two.

    Pure: every call takes the instant it is about as `now_us`.
    """

    def __init__(self, faults: PathFaults = NO_FAULTS) -> None:
        self._source = faults
        self._target = faults
        self._start_us = 0
        self._end_us = 0

    def set(self, faults: PathFaults, *, now_us: int) -> None:
        """From `now_us` on, the faults are `faults`."""
        self._source = self._target = faults
        self._start_us = self._end_us = now_us

    def ramp(self, target: PathFaults, *, duration_ms: float, now_us: int) -> None:
        """Move linearly from the faults at `now_us` to `target` over `duration_ms`.

        Numeric values change steadily; the partition takes the target's value at the end.
        """
        if duration_ms < 0:
            raise ConfigError(f"a ramp lasts 0 ms or more, got {duration_ms}")
        self._source = self.faults_at(now_us=now_us)
        self._target = target
        self._start_us = now_us
        self._end_us = now_us + round(duration_ms * 1000)

    def faults_at(self, *, now_us: int) -> PathFaults:
        """The faults in force at `now_us`."""
        if now_us >= self._end_us:
            return self._target
        if now_us <= self._start_us:
            return self._source
        fraction = (now_us - self._start_us) / (self._end_us - self._start_us)
        return _interpolate(self._source, self._target, fraction)

    @property
    def settles_us(self) -> int:
        """When the current ramp ends (the faults stop changing)."""
        return self._end_us


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultProxyConfig:
    """Bounds and model constants of a fault proxy."""

    listen_host: str = "127.0.0.1"
    """The address the proxy listens on (loopback by default)."""
    listen_port: int = 0
    """The port it listens on; 0 picks a free one."""
    queue_bytes_max: int = 4 << 20
    """TCP: bytes held per direction; at the bound the proxy stops reading from the sender."""
    queue_datagrams_max: int = 4096
    """UDP: datagrams held per direction; more are dropped (tail drop, as a router does)."""
    read_chunk_bytes: int = 64 << 10
    """TCP: the most bytes one read takes; faults are drawn per chunk read."""
    connections_max: int = 1024
    """TCP connections (or UDP client flows) at once; more TCP connections are reset, and the
    least recently active UDP flow is closed to make room."""
    tcp_loss_stall_ms: float = 200.0
    """TCP: how long a "lost" chunk holds the stream, the cost of one retransmission timeout."""
    partition_poll_ms: float = 10.0
    """TCP: how often a blocked direction looks again at a ramping schedule."""
    connect_timeout_ms: int = 5_000
    """TCP: connecting to the target takes at most this long."""

    def __post_init__(self) -> None:
        for name in (
            "queue_bytes_max",
            "queue_datagrams_max",
            "read_chunk_bytes",
            "connections_max",
            "connect_timeout_ms",
        ):
            _check_range(self, name, 1)
        _check_range(self, "tcp_loss_stall_ms", 0.0)
        _check_range(self, "partition_poll_ms", 0.1)
        _check_range(self, "listen_port", 0, 65535)


@dataclass(slots=True)
class _Counters:
    """Running counts of one direction (mutable; `FaultStats` is its snapshot)."""

    received_count: int = 0
    forwarded_count: int = 0
    forwarded_bytes: int = 0
    lost_count: int = 0
    partitioned_count: int = 0
    queue_dropped_count: int = 0
    duplicated_count: int = 0
    reordered_count: int = 0
    reset_count: int = 0
    queued: int = 0
    queued_peak: int = 0

    def enqueue(self, amount: int) -> None:
        self.queued += amount
        self.queued_peak = max(self.queued_peak, self.queued)


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultStats:
    """What one direction of a proxy has done so far."""

    received_count: int
    """Datagrams (UDP) or chunks (TCP) read from the sender."""
    forwarded_count: int
    """Datagrams or chunks written to the receiver (a duplicate counts twice)."""
    forwarded_bytes: int
    """Bytes written to the receiver."""
    lost_count: int
    """UDP: datagrams dropped as lost. TCP: chunks stalled as if a segment was lost."""
    partitioned_count: int
    """Datagrams dropped by a partition (UDP), or connections held or reset by one (TCP)."""
    queue_dropped_count: int
    """UDP: datagrams dropped because `queue_datagrams_max` were held."""
    duplicated_count: int
    """UDP: datagrams delivered twice."""
    reordered_count: int
    """UDP: datagrams held back so that later ones overtake them."""
    reset_count: int
    """TCP: connections reset (by `reset_probability`, a RESET partition or the bound)."""
    queued: int
    """Held now: datagrams (UDP) or bytes (TCP)."""
    queued_peak: int
    """The most ever held at once, in the same unit; never above the configured bound."""


class _FaultProxy:
    """What both proxies share: a schedule and counters per direction, the rng, the clock."""

    def __init__(
        self,
        *,
        target_host: str,
        target_port: int,
        config: FaultProxyConfig | None,
        rng: random.Random | None,
    ) -> None:
        self.target_host = target_host
        """Where traffic goes."""
        self.target_port = target_port
        """The target's port."""
        self.config = config if config is not None else FaultProxyConfig()
        """Bounds and model constants."""
        self.host = self.config.listen_host
        """The address the proxy listens on."""
        self.port = 0
        """The port it listens on, known once started."""
        self._rng = rng if rng is not None else random.Random(0)
        self._schedules = {direction: FaultSchedule() for direction in Direction}
        self._counters = {direction: _Counters() for direction in Direction}
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- control, from the owning process ----------------------------------------------

    def set_faults(self, faults: PathFaults, *, direction: Direction | None = None) -> None:
        """Apply `faults` now, to `direction` or to both."""
        for chosen in self._directions(direction):
            self._schedules[chosen].set(faults, now_us=self.now_us())
        self._notify()

    def ramp_faults(
        self, target: PathFaults, *, duration_ms: float, direction: Direction | None = None
    ) -> None:
        """Move from the current faults to `target` linearly over `duration_ms`."""
        for chosen in self._directions(direction):
            self._schedules[chosen].ramp(target, duration_ms=duration_ms, now_us=self.now_us())
        self._notify()

    def partition(
        self, mode: Partition = Partition.BLACKHOLE, *, direction: Direction | None = None
    ) -> None:
        """Cut the path now (keeping the other faults as they are at this instant)."""
        for chosen in self._directions(direction):
            current = self.faults(chosen)
            self._schedules[chosen].set(replace(current, partition=mode), now_us=self.now_us())
        self._notify()

    def heal(self) -> None:
        """Remove every fault in both directions, ramps included."""
        self.set_faults(NO_FAULTS)

    def faults(self, direction: Direction) -> PathFaults:
        """The faults `direction` suffers now."""
        return self._schedules[direction].faults_at(now_us=self.now_us())

    def stats(self, direction: Direction) -> FaultStats:
        """A snapshot of what `direction` has done so far."""
        counters = self._counters[direction]
        return FaultStats(**{item.name: getattr(counters, item.name) for item in fields(counters)})

    def now_us(self) -> int:
        """The loop's clock in integer microseconds, the one the schedules run on."""
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        return int(loop.time() * _MICROSECONDS_PER_SECOND)

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _directions(direction: Direction | None) -> tuple[Direction, ...]:
        return tuple(Direction) if direction is None else (direction,)

    def _notify(self) -> None:
        """Wake whatever waits for a partition to heal; a new event for the next change."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for_change(self) -> None:
        """Until the faults are changed by a method, or one poll interval (ramps move alone)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.config.partition_poll_ms / 1000):
                await self._changed.wait()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Start listening; `port` is known afterwards."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop listening and end every connection or flow."""
        raise NotImplementedError


# -- TCP ------------------------------------------------------------------------------------


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a reset connection does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        # A connection already aborted: uvloop's socket then has no descriptor (ValueError).
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    writer.transport.abort()


class _ResetDecidedError(Exception):
    """A fault decided that the connection is reset."""


@dataclass(slots=True)
class _Chunk:
    deliver_us: int
    data: bytes
    """b"" marks the end of the sender's stream."""


@dataclass(slots=True)
class _Pipe:
    """One direction of one proxied TCP connection: a bounded queue between two tasks."""

    direction: Direction
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    queue: deque[_Chunk] = field(default_factory=deque)
    queued_bytes: int = 0
    last_deliver_us: int = 0
    link_free_us: int = 0
    has_data: asyncio.Event = field(default_factory=asyncio.Event)
    has_room: asyncio.Event = field(default_factory=asyncio.Event)


class TCPFaultProxy(_FaultProxy):
    """A TCP proxy that delays, stalls, throttles, partitions or resets a byte stream."""

    def __init__(
        self,
        *,
        target_host: str,
        target_port: int,
        config: FaultProxyConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(target_host=target_host, target_port=target_port, config=config, rng=rng)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def connection_count(self) -> int:
        """Client connections held now."""
        return len(self._tasks)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(
            self._accepted, self.config.listen_host, self.config.listen_port
        )
        self.host, self.port = self._server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def partition(
        self, mode: Partition = Partition.BLACKHOLE, *, direction: Direction | None = None
    ) -> None:
        """Cut the path now; a RESET partition also resets every connection held at once."""
        super().partition(mode, direction=direction)
        if mode is Partition.RESET:
            self._counters[Direction.UPSTREAM].reset_count += len(self._tasks)
            self.reset_connections()

    def reset_connections(self) -> None:
        """Reset every connection held now (RST to both ends)."""
        for writer in list(self._writers):
            _reset(writer)

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A task of our own per connection, so that close() can cancel and await it.
        if len(self._tasks) >= self.config.connections_max:
            self._counters[Direction.UPSTREAM].reset_count += 1
            _reset(writer)
            return
        self._writers.add(writer)
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._proxy(reader, writer)
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await self._admit(writer):
            return
        try:
            async with asyncio.timeout(self.config.connect_timeout_ms / 1000):
                target_reader, target_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
        except (OSError, TimeoutError):
            _reset(writer)
            return
        self._writers.add(target_writer)
        pipes = (
            _Pipe(direction=Direction.UPSTREAM, reader=reader, writer=target_writer),
            _Pipe(direction=Direction.DOWNSTREAM, reader=target_reader, writer=writer),
        )
        try:
            async with asyncio.TaskGroup() as group:
                for pipe in pipes:
                    group.create_task(self._read(pipe))
                    group.create_task(self._write(pipe))
        except* (_ResetDecidedError, ConnectionError, OSError):
            _reset(writer)
            _reset(target_writer)
        finally:
            self._writers.discard(target_writer)
            target_writer.transport.abort()

    async def _admit(self, writer: asyncio.StreamWriter) -> bool:
        """Hold a new connection while a partition blocks it; False when it must be reset."""
        counted = False
        while True:
            modes = {self.faults(direction).partition for direction in Direction}
            if Partition.RESET in modes:
                self._counters[Direction.UPSTREAM].reset_count += 1
                _reset(writer)
                return False
            if Partition.BLACKHOLE not in modes:
                return True
            if not counted:
                self._counters[Direction.UPSTREAM].partitioned_count += 1
                counted = True
            await self._wait_for_change()

    async def _read(self, pipe: _Pipe) -> None:
        """Read chunks, stamp each with its delivery time, queue them within the bound."""
        counters = self._counters[pipe.direction]
        while True:
            while pipe.queued_bytes >= self.config.queue_bytes_max:
                pipe.has_room.clear()
                await pipe.has_room.wait()
            room = self.config.queue_bytes_max - pipe.queued_bytes
            data = await pipe.reader.read(min(self.config.read_chunk_bytes, room))
            now_us = self.now_us()
            if not data:
                pipe.queue.append(_Chunk(deliver_us=max(now_us, pipe.last_deliver_us), data=b""))
                pipe.has_data.set()
                return
            counters.received_count += 1
            faults = self.faults(pipe.direction)
            deliver_us = self._deliver_us(faults, counters, now_us)
            if self._rng.random() < faults.reset_probability:
                counters.reset_count += 1
                raise _ResetDecidedError
            pipe.last_deliver_us = max(deliver_us, pipe.last_deliver_us)
            pipe.queue.append(_Chunk(deliver_us=pipe.last_deliver_us, data=data))
            pipe.queued_bytes += len(data)
            counters.enqueue(len(data))
            pipe.has_data.set()

    def _deliver_us(self, faults: PathFaults, counters: _Counters, now_us: int) -> int:
        """When a chunk read at `now_us` may leave: delay, jitter, and a stall if "lost"."""
        loss_draw, jitter_draw = self._rng.random(), self._rng.random()
        delay_ms = max(0.0, faults.delay_ms + (2 * jitter_draw - 1) * faults.jitter_ms)
        if loss_draw < faults.loss_probability:
            counters.lost_count += 1
            delay_ms += self.config.tcp_loss_stall_ms
        return now_us + round(delay_ms * 1000)

    async def _write(self, pipe: _Pipe) -> None:
        """Deliver queued chunks in order, at their time, within the bandwidth, unless cut."""
        counters = self._counters[pipe.direction]
        while True:
            while not pipe.queue:
                pipe.has_data.clear()
                await pipe.has_data.wait()
            chunk = pipe.queue[0]
            await self._sleep_until(chunk.deliver_us)
            await self._wait_unblocked(pipe.direction)
            if not chunk.data:
                # A connection reset meanwhile (`reset_connections`) is closed: uvloop raises
                # RuntimeError on its write_eof, which left the task's exception unretrieved.
                if pipe.writer.can_write_eof() and not pipe.writer.transport.is_closing():
                    pipe.writer.write_eof()
                return
            per_byte = self.faults(pipe.direction).microseconds_per_byte
            if per_byte:
                start_us = max(self.now_us(), pipe.link_free_us)
                pipe.link_free_us = start_us + round(len(chunk.data) * per_byte)
                await self._sleep_until(pipe.link_free_us)
            pipe.queue.popleft()
            pipe.writer.write(chunk.data)
            await pipe.writer.drain()
            pipe.queued_bytes -= len(chunk.data)
            counters.queued -= len(chunk.data)
            counters.forwarded_count += 1
            counters.forwarded_bytes += len(chunk.data)
            pipe.has_room.set()

    async def _wait_unblocked(self, direction: Direction) -> None:
        """Hold the direction while it is black-holed; raise when it is reset."""
        while True:
            mode = self.faults(direction).partition
            if mode is Partition.NONE:
                return
            if mode is Partition.RESET:
                self._counters[direction].reset_count += 1
                raise _ResetDecidedError
            await self._wait_for_change()

    async def _sleep_until(self, when_us: int) -> None:
        delay_us = when_us - self.now_us()
        if delay_us > 0:
            await asyncio.sleep(delay_us / _MICROSECONDS_PER_SECOND)


# -- UDP ------------------------------------------------------------------------------------


class _Datagrams(asyncio.DatagramProtocol):
    """Hands every datagram a socket receives to a callback."""

    def __init__(self, received: Callable[[bytes, Any], None]) -> None:
        self._received = received

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._received(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: UDP has no connection to fail, so nothing to do.
        return


@dataclass(slots=True)
class _Flow:
    """One client address and the socket that speaks for it to the target."""

    client: Any
    transport: asyncio.DatagramTransport | None = None
    pending: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class _Lane:
    """One direction's datagrams in flight: a heap by delivery time and one timer."""

    heap: list[tuple[int, int, bytes, _Flow]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    link_free_us: int = 0


class UDPFaultProxy(_FaultProxy):
    """A UDP proxy that delays, drops, duplicates, reorders, throttles or cuts datagrams."""

    def __init__(
        self,
        *,
        target_host: str,
        target_port: int,
        config: FaultProxyConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(target_host=target_host, target_port=target_port, config=config, rng=rng)
        self._front: asyncio.DatagramTransport | None = None
        self._flows: OrderedDict[Any, _Flow] = OrderedDict()
        self._lanes = {direction: _Lane() for direction in Direction}
        self._sequence = 0
        self._opening: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def flow_count(self) -> int:
        """Client addresses with an upstream socket now."""
        return len(self._flows)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._from_client),
            local_addr=(self.config.listen_host, self.config.listen_port),
        )
        self._front = transport
        self.host, self.port = transport.get_extra_info("sockname")[:2]

    async def close(self) -> None:
        # Sockets being opened are awaited, not cancelled: a cancelled open may leave its
        # socket behind; `_connect_flow` closes it when the flow is gone.
        self._closing = True
        await asyncio.gather(*self._opening, return_exceptions=True)
        for lane in self._lanes.values():
            if lane.timer is not None:
                lane.timer.cancel()
            lane.heap.clear()
        for counters in self._counters.values():
            counters.queued = 0
        for flow in self._flows.values():
            if flow.transport is not None:
                flow.transport.close()
        self._flows.clear()
        if self._front is not None:
            self._front.close()
            self._front = None

    # -- arrivals ----------------------------------------------------------------------------

    def _from_client(self, data: bytes, addr: Any) -> None:
        if self._closing:
            return
        flow = self._flows.get(addr)
        if flow is None:
            flow = self._open_flow(addr)
        else:
            self._flows.move_to_end(addr)
        self._admit(Direction.UPSTREAM, data, flow)

    def _open_flow(self, addr: Any) -> _Flow:
        """A new client address: make room within the bound, open its upstream socket."""
        while len(self._flows) >= self.config.connections_max:
            _, oldest = self._flows.popitem(last=False)
            if oldest.transport is not None:
                oldest.transport.close()
        flow = _Flow(client=addr)
        self._flows[addr] = flow
        task = asyncio.get_running_loop().create_task(self._connect_flow(flow))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)
        return flow

    async def _connect_flow(self, flow: _Flow) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(
                    lambda data, _addr: self._admit(Direction.DOWNSTREAM, data, flow)
                ),
                remote_addr=(self.target_host, self.target_port),
            )
        except OSError:
            # The target cannot be reached: the client's datagrams are lost, as on a real path.
            if self._flows.get(flow.client) is flow:
                del self._flows[flow.client]
            return
        if self._closing or self._flows.get(flow.client) is not flow:
            transport.close()  # Evicted or closed while connecting.
            return
        flow.transport = transport
        for data in flow.pending:
            transport.sendto(data)
        flow.pending.clear()

    def _admit(self, direction: Direction, data: bytes, flow: _Flow) -> None:
        """Decide a datagram's fate now; queue it (and a duplicate) for its delivery time."""
        counters = self._counters[direction]
        counters.received_count += 1
        now_us = self.now_us()
        faults = self.faults(direction)
        # Four draws per datagram whatever the faults, so a seed fixes each datagram's fate.
        rng = self._rng
        loss_draw, duplicate_draw, reorder_draw, jitter_draw = (
            rng.random(),
            rng.random(),
            rng.random(),
            rng.random(),
        )
        if faults.partition is not Partition.NONE:
            counters.partitioned_count += 1
            return
        if loss_draw < faults.loss_probability:
            counters.lost_count += 1
            return
        copies = 2 if duplicate_draw < faults.duplicate_probability else 1
        if counters.queued + copies > self.config.queue_datagrams_max:
            counters.queue_dropped_count += 1
            return
        delay_ms = max(0.0, faults.delay_ms + (2 * jitter_draw - 1) * faults.jitter_ms)
        if reorder_draw < faults.reorder_probability:
            counters.reordered_count += 1
            delay_ms += faults.reorder_delay_ms
        deliver_us = now_us + round(delay_ms * 1000)
        lane = self._lanes[direction]
        if faults.microseconds_per_byte:
            lane.link_free_us = max(lane.link_free_us, deliver_us) + round(
                len(data) * faults.microseconds_per_byte
            )
            deliver_us = lane.link_free_us
        if copies == 2:
            counters.duplicated_count += 1
        for _ in range(copies):
            self._sequence += 1
            heapq.heappush(lane.heap, (deliver_us, self._sequence, data, flow))
        counters.enqueue(copies)
        self._arm(direction)

    # -- departures --------------------------------------------------------------------------

    def _arm(self, direction: Direction) -> None:
        """Keep one timer per direction, at the earliest delivery time."""
        lane = self._lanes[direction]
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if lane.heap:
            loop = asyncio.get_running_loop()
            when_s = lane.heap[0][0] / _MICROSECONDS_PER_SECOND
            lane.timer = loop.call_at(when_s, self._deliver_due, direction)

    def _deliver_due(self, direction: Direction) -> None:
        lane = self._lanes[direction]
        lane.timer = None
        counters = self._counters[direction]
        now_us = self.now_us()
        partitioned = self.faults(direction).partition is not Partition.NONE
        while lane.heap and lane.heap[0][0] <= now_us:
            _, _, data, flow = heapq.heappop(lane.heap)
            counters.queued -= 1
            if partitioned:
                counters.partitioned_count += 1
                continue
            self._send(direction, data, flow)
            counters.forwarded_count += 1
            counters.forwarded_bytes += len(data)
        self._arm(direction)

    def _send(self, direction: Direction, data: bytes, flow: _Flow) -> None:
        if direction is Direction.DOWNSTREAM:
            if self._front is not None:
                self._front.sendto(data, flow.client)
        elif flow.transport is not None:
            flow.transport.sendto(data)
        elif len(flow.pending) < self.config.queue_datagrams_max:
            flow.pending.append(data)
