"""The one `Transport` interface every `forehand/1` binding implements, and what they share.

A transport listens and connects; both give `Connection` objects that carry whole frames:
`send_frame` / `send_frames` encode and queue them (coalesced into one write per loop turn),
`drain()` waits while the send buffer is over its high-water mark, `receive()` or `async for`
yields decoded frames, and `close(error_code, reason)` ends the connection. Each connection
decodes its peer's bytes with a bounded `FrameDecoder`; a peer that sends a malformed, oversize
or unexpected frame gets ERROR(code, reason) and only its connection closes, while the listener
goes on serving every other one (STYLE.md rule 6). Library exceptions (ssl, OSError, the QUIC
stack's) are mapped here, at the boundary, to `TransportError`, `HandshakeError` and
`ConnectionClosedError`.

The bindings are TLS 1.3 over TCP (`TLSTransport`), QUIC (`QUICTransport`) and an in-memory
pair of pipes for tests of higher layers (`MemoryTransport`); `create_transport` builds one by
name from the small registry below.
"""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import enum
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from forehand._peer_log import PEER_CAUSED
from forehand.errors import ConfigError
from forehand.runtime.certs import CA_CERTIFICATE_FILE, node_certificate
from forehand.wire import (
    ALPN,
    DEFAULT_CONFIG,
    Error,
    ErrorCode,
    Frame,
    PeerRole,
    WireConfig,
)

__all__ = [
    "ALPN",
    "CLUSTER_FRAME_BYTES_MAX",
    "CLUSTER_LIMITS",
    "CLUSTER_WIRE",
    "CloseInfo",
    "CloseInitiator",
    "Connection",
    "ConnectionClosedError",
    "ConnectionLimits",
    "Credentials",
    "CertificateNotVerifiedError",
    "HandshakeError",
    "Listener",
    "PathStats",
    "ReceiveBudget",
    "Transport",
    "TransportError",
    "TransportFactory",
    "create_transport",
    "FrameHandler",
    "error_frame",
    "register_transport",
    "send_wire",
    "transport_names",
]

_log = logging.getLogger("forehand.runtime.transport")


class TransportError(Exception):
    """A transport could not do what was asked: connect, listen, or keep a connection."""


class HandshakeError(TransportError):
    """The TLS or QUIC handshake failed: certificate not verified, ALPN not `forehand/1`."""


class CertificateNotVerifiedError(HandshakeError):
    """The peer's certificate did not verify against the cluster CA (another cluster's
    certificates, an expired one): a configuration to fix, not a peer down."""


class CloseInitiator(enum.Enum):
    """Who ended a connection."""

    LOCAL = "local"
    """This side closed it: `close()` was called, or the peer broke the protocol or a bound."""
    PEER = "peer"
    """The peer closed it: ERROR, CONNECTION_CLOSE, or a clean end of its stream."""
    NETWORK = "network"
    """Nobody did: a reset, a timeout, or the link went away."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseInfo:
    """Why a connection ended."""

    error_code: int
    """The `forehand.wire.ErrorCode` value; NO_ERROR for an orderly close."""
    reason: str
    """Human-readable detail, for logs."""
    initiator: CloseInitiator
    """Who ended it."""


class ConnectionClosedError(TransportError):
    """An operation on a connection that has ended; `close` says why it ended."""

    def __init__(self, close: CloseInfo) -> None:
        super().__init__(
            f"connection closed by {close.initiator.value}: "
            f"{ErrorCode.from_wire(close.error_code).name} {close.reason}"
        )
        self.close = close
        """Why the connection ended."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PathStats:
    """What the transport stack knows about the network path of one connection.

    Fields are None when the stack does not expose them through a public interface.
    """

    source: str
    """Where the figures come from: `tcp_info` (the kernel), `quic_ping` (the QUIC stack's PING
    acknowledgements), or `none`."""
    rtt_smoothed_us: int | None = None
    """Smoothed round-trip time (RFC 6298 / RFC 9002 weights), microseconds."""
    rtt_min_us: int | None = None
    """Smallest round-trip time observed, microseconds."""
    rtt_latest_us: int | None = None
    """The most recent round-trip sample, microseconds."""
    rtt_variance_us: int | None = None
    """Round-trip time variation, microseconds."""
    rtt_sample_count: int = 0
    """How many round-trip samples the figures rest on (kernel figures count as one)."""
    packets_lost_count: int | None = None
    """Packets the stack declared lost so far."""
    packets_retransmitted_count: int | None = None
    """Packets (segments) the stack sent again so far."""
    congestion_window_bytes: int | None = None
    """The sender's congestion window, bytes."""
    send_buffer_bytes: int = 0
    """Bytes accepted by `send_frame` and not yet handed to the network, this side."""
    packets_sent_count: int | None = None
    """Packets (QUIC datagrams, TCP segments) this side sent so far."""
    bytes_sent_count: int | None = None
    """Bytes this side sent so far (QUIC: datagrams; TCP: bytes the peer acknowledged)."""
    bytes_received_count: int | None = None
    """Bytes this side received so far (QUIC: datagrams; TCP: bytes of segments)."""


def _positive(owner: object, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(owner, name)
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{type(owner).__name__}.{name} must be a positive int: {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """The bounds every connection of every transport enforces (STYLE.md rule 8)."""

    wire: WireConfig = DEFAULT_CONFIG
    """Frame bounds; `wire.frame_bytes_max` caps what the decoder buffers."""
    receive_queue_frames_max: int = 1024
    """Frames decoded and not yet taken by `receive()`. At the bound a byte-stream transport
    stops reading from the socket until half of them are taken; QUIC, whose stack consumes stream
    data eagerly, closes the connection with LIMIT_EXCEEDED."""
    send_buffer_high_water_bytes: int = 1 << 20
    """Above this many unsent bytes the connection is not writable and `drain()` waits."""
    send_buffer_low_water_bytes: int = 256 << 10
    """`drain()` returns once the unsent bytes fall to this."""
    send_buffer_bytes_max: int = 16 << 20
    """Cap on unsent bytes: a peer that reads so slowly that a sender ignoring `drain()`
    passes it is cut off with LIMIT_EXCEEDED instead of growing the buffer without end. A paced
    connection (`Connection.pace_by_sending`: the server side of a client's) may pass it by the
    answers to the frames it handed over last, and is cut off only when its peer then takes
    none of the backlog for `send_stall_timeout_ms`: a burst of large answers to a client that
    reads them is no sign that it does not read."""
    send_stall_timeout_ms: int = 10_000
    """How long a paced connection's peer may take nothing of a backlog above
    `send_buffer_bytes_max` before it is cut off as not reading."""
    connections_max: int = 10_000
    """Connections one listener holds at once; more are refused with LIMIT_EXCEEDED."""
    handshakes_max: int = 1_000
    """Handshakes one listener has under way at once, QUIC or TLS (each holds memory before the
    peer is known: 35 to 50 KB on QUIC, some 60 KB on TLS with uvloop and 310 KB with asyncio's
    loop); past it the datagram (QUIC) or TCP connection (TLS) that would start another evicts
    the oldest under way. Each lasts at most the transport's `handshake_timeout_ms`."""
    handshakes_unvalidated_max: int | None = None
    """QUIC handshakes one listener has under way for peers whose address it has not validated.
    At the bound a client's first Initial (one without a token) gets a Retry (RFC 9000 s.8.1.2)
    instead of a handshake; the client comes back with the Retry's token, which proves it
    receives packets at its address, and its handshake starts whatever the bound (subject to
    `handshakes_max`). From 0 (every client is validated first, a round trip more) up to
    `handshakes_max`, which turns Retry off: handshakes past the bound evict the oldest, as they
    do without it. None (the default) means a quarter of `handshakes_max`, 250 of 1,000: a
    handshake lasts a round trip or two, so a listener that is not flooded rarely has that many
    under way and its clients pay no extra round trip, while a flood of Initials from spoofed
    addresses holds at most that many (some 12 MB) and leaves three quarters of the slots to
    validated clients. `handshakes_unvalidated_bound` is the value in force."""
    close_timeout_ms: int = 2_000
    """How long a closing connection may take to flush before it is aborted."""
    partial_frames_bytes_max: int = 64 << 20
    """Bytes received and not yet decoded into frames (at rest, each stream's one partial
    frame), summed over every connection of one transport: a node's client-facing connections
    share one such budget. A connection whose bytes would pass it is closed with LIMIT_EXCEEDED;
    the others keep what they hold. At least `wire.buffered_bytes_max`, so one longest frame
    always fits."""

    def __post_init__(self) -> None:
        _positive(
            self,
            (
                "receive_queue_frames_max",
                "send_buffer_high_water_bytes",
                "send_buffer_low_water_bytes",
                "send_buffer_bytes_max",
                "send_stall_timeout_ms",
                "connections_max",
                "handshakes_max",
                "close_timeout_ms",
                "partial_frames_bytes_max",
            ),
        )
        bound = self.handshakes_unvalidated_max
        if bound is not None and (not isinstance(bound, int) or bound < 0):
            raise ConfigError(
                f"ConnectionLimits.handshakes_unvalidated_max must be an int of 0 or more (0: "
                f"always Retry), or None for a quarter of handshakes_max: {bound!r}"
            )
        if bound is not None and bound > self.handshakes_max:
            raise ConfigError(
                f"ConnectionLimits.handshakes_unvalidated_max must be at most handshakes_max="
                f"{self.handshakes_max} (equal turns Retry off), got {bound}"
            )
        if self.partial_frames_bytes_max < self.wire.buffered_bytes_max:
            raise ConfigError(
                "ConnectionLimits.partial_frames_bytes_max must hold one whole frame: at least "
                f"wire.buffered_bytes_max={self.wire.buffered_bytes_max}, "
                f"got {self.partial_frames_bytes_max}"
            )
        if not (
            self.send_buffer_low_water_bytes
            <= self.send_buffer_high_water_bytes
            <= self.send_buffer_bytes_max
        ):
            raise ConfigError(
                "ConnectionLimits needs send_buffer_low_water_bytes <= "
                "send_buffer_high_water_bytes <= send_buffer_bytes_max"
            )

    @property
    def handshakes_unvalidated_bound(self) -> int:
        """`handshakes_unvalidated_max`, or a quarter of `handshakes_max` when it is None."""
        bound = self.handshakes_unvalidated_max
        return self.handshakes_max // 4 if bound is None else bound


PACED_BACKLOG_FRAMES = 64
"""A paced connection's backlog may pass `send_buffer_bytes_max` by the answers to this many
frames (a byte stream hands its frames over in batches of as many) before it is cut off at once."""

CLUSTER_FRAME_BYTES_MAX = 32 << 20
"""Frames between cluster nodes (mutually authenticated) may be this long: a whole shard map
sent to a joining server (about 16 bytes per part: some 2,000,000 sessions of three parts) and a
failover's map delta (one override per part the dead server led; the store takes at most
16 MiB) are single cluster messages."""
CLUSTER_WIRE = dataclasses.replace(DEFAULT_CONFIG, frame_bytes_max=CLUSTER_FRAME_BYTES_MAX)
"""What cluster links decode and encode with."""
CLUSTER_LIMITS = ConnectionLimits(
    wire=CLUSTER_WIRE,
    send_buffer_bytes_max=4 * CLUSTER_FRAME_BYTES_MAX,
    partial_frames_bytes_max=4 * CLUSTER_WIRE.buffered_bytes_max,
)
"""The limits of a cluster link (dialed, or accepted on a cluster-only listener): a send buffer
that holds a few of the longest frames before a peer that does not read is cut off, and room for
as many partly received."""


class ReceiveBudget:
    """The bytes the connections of one transport hold in frames not yet received whole, and
    their bound, `ConnectionLimits.partial_frames_bytes_max`.

    A connection that needs room the budget does not have gets it from the connections that
    hold more than it would: the largest holder is closed with LIMIT_EXCEEDED, then the next,
    until the growth fits (`Connection._hold_partial`). Peers that park large partial frames to
    fill the budget lose their own connections, not the clients that come after them; a
    connection that would itself be the largest holder is the one closed."""

    __slots__ = ("bytes_max", "held_bytes", "holders")

    def __init__(self, bytes_max: int) -> None:
        assert bytes_max >= 1
        self.bytes_max = bytes_max
        """The bound."""
        self.held_bytes = 0
        """What the connections hold now."""
        self.holders: dict[Connection, None] = {}
        """The connections holding any bytes (at most every connection of the transport)."""

    def take(self, size_bytes: int) -> bool:
        """Count `size_bytes` more; False, counting nothing, when that would pass the bound."""
        assert size_bytes >= 0
        if self.held_bytes + size_bytes > self.bytes_max:
            return False
        self.held_bytes += size_bytes
        return True

    def give_back(self, size_bytes: int) -> None:
        """Count `size_bytes` fewer."""
        assert 0 <= size_bytes <= self.held_bytes
        self.held_bytes -= size_bytes


def _partial_bytes_of(connection: Connection) -> int:
    return connection._partial_bytes


def send_wire(wire: WireConfig) -> WireConfig:
    """The bounds a connection encodes with: `wire.frame_bytes_max` is what this end accepts (a
    server's WELCOME announces it), not a bound on what it sends, which peers decode with at
    least the default 1 MiB; so a smaller one is raised to the default for sending."""
    if wire.frame_bytes_max >= DEFAULT_CONFIG.frame_bytes_max:
        return wire
    return dataclasses.replace(wire, frame_bytes_max=DEFAULT_CONFIG.frame_bytes_max)


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What a node presents and trusts: the cluster CA, and its own certificate if it has one."""

    ca_certificate_path: Path
    """The cluster CA certificate; peers' certificates must chain to it (no system CAs)."""
    node_id: str | None = None
    """This node's id, the CN and DNS subjectAltName of its certificate; None for a client."""
    certificate_path: Path | None = None
    """This node's certificate (PEM), presented to peers; None for a client without one."""
    private_key_path: Path | None = None
    """The key of `certificate_path` (PEM)."""

    def __post_init__(self) -> None:
        if (self.certificate_path is None) != (self.private_key_path is None):
            raise ConfigError("Credentials need both certificate_path and private_key_path")

    @classmethod
    def for_node(cls, directory: Path | str, node: str) -> Credentials:
        """The credentials of `node` in a directory written by `make_cluster_certs`."""
        entry = node_certificate(Path(directory), node)
        return cls(
            ca_certificate_path=Path(directory) / CA_CERTIFICATE_FILE,
            node_id=node,
            certificate_path=entry.certificate_path,
            private_key_path=entry.key_path,
        )

    @classmethod
    def for_client(cls, directory: Path | str) -> Credentials:
        """Credentials that trust the cluster CA in `directory` and present no certificate."""
        return cls(ca_certificate_path=Path(directory) / CA_CERTIFICATE_FILE)


def error_frame(error_code: int, reason: str, wire: WireConfig) -> Error:
    """An ERROR frame whose reason is cut, at a character boundary, to the wire bound."""
    encoded = reason.encode()
    if len(encoded) > wire.message_bytes_max:
        reason = encoded[: wire.message_bytes_max].decode(errors="ignore")
    return Error(code=ErrorCode.from_wire(error_code), reason=reason)


FrameHandler = Callable[[list[Frame]], None]
"""Called with frames in the order they arrived (see `Connection.set_frame_handler`)."""


class Connection(abc.ABC):
    """One `forehand/1` connection: whole frames in and out, one close.

    Received frames wait in a bounded queue until `receive()` (or `async for`) takes them; after
    the connection ends, the frames already queued are still delivered, then `receive()` raises
    ConnectionClosedError and `async for` stops. `close_info` then says why it ended.
    """

    transport_name: ClassVar[str]
    """`tls`, `quic` or `memory`."""

    def __init__(
        self,
        *,
        is_client: bool,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
        budget: ReceiveBudget | None = None,
    ) -> None:
        self.is_client = is_client
        """Whether this side opened the connection."""
        self.peer_id: str | None = None
        """The peer's node id from its verified certificate (the name checked against its
        subjectAltName); None when the peer presented no certificate."""
        self.alpn = ALPN
        """The negotiated application protocol; a connection exists only once it is `forehand/1`."""
        self.local_address: tuple[str, int] | None = None
        """This side's (host, port)."""
        self.peer_address: tuple[str, int] | None = None
        """The peer's (host, port)."""
        self._limits = limits
        self._loop = loop
        self._received: deque[Frame] = deque()
        self._receive_waiter: asyncio.Future[None] | None = None
        self._close_info: CloseInfo | None = None
        self._gone: asyncio.Future[CloseInfo] = loop.create_future()
        self._writable = True
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._frame_handler: FrameHandler | None = None
        self._paced = False
        self.received_bytes = 0
        """Application bytes received from the peer so far (stream data, before decoding): the
        node's silence check sees long answers arriving before any of them is whole."""
        self._stall_handle: asyncio.TimerHandle | None = None
        self._stall_taken = 0
        """Bytes the peer had taken when the stall timer was last armed (`_check_backlog`)."""
        self._budget = (
            budget if budget is not None else ReceiveBudget(limits.partial_frames_bytes_max)
        )
        self._partial_bytes = 0

    # -- what every transport implements --------------------------------------------------

    @abc.abstractmethod
    def send_frame(self, frame: Frame) -> None:
        """Queue one frame; raises ConnectionClosedError once the connection has ended.

        Frames queued in one turn of the event loop leave in one write. Sending an ERROR frame
        does not close the connection; call `close()` after it (cores queue both).
        """

    @abc.abstractmethod
    def send_frames(self, frames: Iterable[Frame]) -> None:
        """Queue several frames, in order, as `send_frame` does: all or none (a frame that
        cannot be encoded raises before any of them is queued)."""

    @abc.abstractmethod
    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Flush what is queued, tell the peer why (unless an ERROR went already), and close.

        Idempotent. `wait_closed()` returns once the transport is gone.
        """

    def abandon(self, error_code: int, reason: str) -> None:
        """Close a connection whose peer went silent, and count it gone now.

        A graceful `close()` waits for the peer (TLS's close, QUIC's closing period) up to
        `close_timeout_ms`; a frozen or vanished peer never answers, and the connection's end
        would reach the driver, and its core, only then. Transports that wait override this to
        end at once; the peer is told why if it can still hear."""
        self.close(error_code, reason)

    @abc.abstractmethod
    def path_stats(self) -> PathStats:
        """What the stack knows about this connection's path right now."""

    @abc.abstractmethod
    def _flush(self) -> None:
        """Hand every queued frame to the stack now."""

    # -- shared behaviour --------------------------------------------------------------

    def set_frame_handler(self, handler: FrameHandler | None) -> None:
        """Hand received frames to `handler(frames)` as they are decoded, instead of queueing.

        The handler runs inside the transport's receive callback with the frames one read (or
        one datagram) produced, in order, so a driver can feed its core and send the answers in
        the same loop turn, without waking a task per batch; a byte stream hands them over in
        batches and pauses a flood of them until the next turn (`runtime/_stream.py`). Frames
        already queued go to it on the next turn. None goes back to queueing for `receive()`.
        The end of the connection is not a frame: await `wait_closed()` for it.
        """
        self._frame_handler = handler
        if handler is not None and self._received:
            self._loop.call_soon(self._hand_over_queued)

    def pace_by_sending(self) -> None:
        """Hand received frames to the frame handler only while this connection is writable.

        For the server side of a client's connection: what a client sends asks for answers, and
        one that sends faster than it reads them (pipelined reads of large results, or no
        reading at all) waits, its frames held (in the socket for a byte stream; for QUIC up
        to `receive_queue_frames_max` frames and `partial_frames_bytes_max` bytes of REQUEST
        payloads, LIMIT_EXCEEDED past either), until it has taken the backlog down to
        `send_buffer_low_water_bytes`. Past `send_buffer_bytes_max` the peer is cut off if it
        then takes none of the backlog for `send_stall_timeout_ms`, or at once past the answers
        to `PACED_BACKLOG_FRAMES` frames more. Never for both sides of one connection: each
        would wait for the other to read.
        """
        self._paced = True

    def _check_backlog(self, *, timer: bool = False) -> None:
        """After a write (and when the stall timer fires): `_unsent_bytes()` wait for the peer,
        which took `taken_bytes()` in all. Past `send_buffer_bytes_max` an unpaced connection is
        cut off at once; a paced one when the timer finds that the peer took nothing since it
        was armed."""
        limits = self._limits
        unsent = self._unsent_bytes()
        if unsent <= limits.send_buffer_bytes_max or self._close_info is not None:
            if self._stall_handle is not None:
                self._stall_handle.cancel()
                self._stall_handle = None
            return
        ceiling = limits.send_buffer_bytes_max + PACED_BACKLOG_FRAMES * limits.wire.frame_bytes_max
        if self._paced and unsent > ceiling:
            # Past what the answers to one batch of frames can add: answers that came later
            # (waiting reads, forwards) piled up on a peer that takes them too slowly.
            self._cut_off(
                f"{unsent} bytes unsent, past send_buffer_bytes_max and the answers to "
                f"{PACED_BACKLOG_FRAMES} frames: the peer is not reading fast enough"
            )
            return
        if not self._paced:
            self._cut_off(
                f"send buffer passed send_buffer_bytes_max={limits.send_buffer_bytes_max}: "
                "the peer is not reading"
            )
            return
        taken = self.taken_bytes()
        if timer and taken <= self._stall_taken:
            self._stall_handle = None
            self._cut_off(
                f"{unsent} bytes unsent, above send_buffer_bytes_max="
                f"{limits.send_buffer_bytes_max}, and none taken for send_stall_timeout_ms="
                f"{limits.send_stall_timeout_ms}: the peer is not reading"
            )
            return
        if self._stall_handle is None or timer or taken > self._stall_taken:
            if self._stall_handle is not None:
                self._stall_handle.cancel()
            self._stall_taken = taken
            self._stall_handle = self._loop.call_later(
                limits.send_stall_timeout_ms / 1000, self._stall_timer
            )

    def _stall_timer(self) -> None:
        """The stall timer fired: check the backlog again."""
        if self._close_info is not None:
            self._stall_handle = None
            return
        self._check_backlog(timer=True)

    def _unsent_bytes(self) -> int:
        """Bytes queued for the peer that it has not taken yet (this side's and the stack's)."""
        return 0

    def taken_bytes(self) -> int:
        """Bytes sent that the stack no longer holds (the peer took them), in all: the node
        counts a paced client that takes its answers as heard, though its frames wait."""
        return 0

    def _cut_off(self, reason: str) -> None:
        """Close at once with LIMIT_EXCEEDED, logging `reason`: the peer does not read."""
        raise NotImplementedError

    def _hand_over_queued(self) -> None:
        handler = self._frame_handler
        if handler is not None and self._received:
            frames = list(self._received)
            self._received.clear()
            self._receive_queue_drained()
            handler(frames)

    @property
    def close_info(self) -> CloseInfo | None:
        """Why the connection ended, or None while it is open."""
        return self._close_info

    @property
    def is_closed(self) -> bool:
        """Whether the connection has ended (frames may still wait to be received)."""
        return self._close_info is not None

    @property
    def rtt_us(self) -> int | None:
        """The stack's smoothed round-trip estimate, microseconds, if it has one."""
        return self.path_stats().rtt_smoothed_us

    @property
    def writable(self) -> bool:
        """False while the send buffer is above its high-water mark."""
        return self._writable

    async def drain(self) -> None:
        """Flush, then wait until the send buffer is at or under its low-water mark."""
        self._check_open()
        self._flush()
        while not self._writable:
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter
            self._check_open()

    async def receive(self) -> Frame:
        """The next frame from the peer; ConnectionClosedError after the last one."""
        received = await self._frames_waiting()
        frame = received.popleft()
        if len(received) <= self._limits.receive_queue_frames_max // 2:
            self._receive_queue_drained()
        return frame

    async def receive_frames(self) -> list[Frame]:
        """Every frame waiting (at least one), in order; ConnectionClosedError after the last.

        One await per batch instead of one per frame: a driver feeds them all to its core and
        drains the core once.
        """
        received = await self._frames_waiting()
        frames = list(received)
        received.clear()
        self._receive_queue_drained()
        return frames

    async def _frames_waiting(self) -> deque[Frame]:
        """The receive queue once it holds a frame; ConnectionClosedError once closed and empty."""
        received = self._received
        while not received:
            if self._close_info is not None:
                raise ConnectionClosedError(self._close_info)
            waiter = self._loop.create_future()
            self._receive_waiter = waiter
            try:
                await waiter
            finally:
                self._receive_waiter = None
        return received

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.receive()
        except ConnectionClosedError:
            raise StopAsyncIteration from None

    async def wait_closed(self) -> CloseInfo:
        """Wait until the transport under the connection is gone; return why it ended."""
        return await asyncio.shield(self._gone)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()

    # -- helpers for the transports ------------------------------------------------------

    def _check_open(self) -> None:
        if self._close_info is not None:
            raise ConnectionClosedError(self._close_info)

    @abc.abstractmethod
    def _receive_queue_drained(self) -> None:
        """Called when `receive()` leaves the queue at half its bound or less."""

    def _wake_receiver(self) -> None:
        waiter = self._receive_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _set_writable(self, writable: bool) -> None:
        self._writable = writable
        if writable:
            self._wake_drainers()

    def _wake_drainers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _hold_partial(self, size_bytes: int) -> bool:
        """This connection now holds `size_bytes` of frames not yet received whole; False,
        changing nothing, when its budget cannot take the growth. Once the connection has
        ended it holds nothing (`_set_closed` gave its bytes back): a stream reset the stack
        delivers after the close must not give them back a second time, out of what other
        connections hold."""
        if self._close_info is not None:
            return True
        budget = self._budget
        change = size_bytes - self._partial_bytes
        if (
            change > 0
            and not budget.take(change)
            and not (
                self._make_room(size_bytes)
                and self._close_info is None  # Not closed while others were (it holds nothing).
                and budget.take(change)
            )
        ):
            return self._close_info is not None
        if change < 0:
            budget.give_back(-change)
        self._partial_bytes = size_bytes
        if size_bytes:
            budget.holders[self] = None
        else:
            budget.holders.pop(self, None)
        return True

    def _make_room(self, size_bytes: int) -> bool:
        """Close the connections holding the most, each more than this one would hold
        (`size_bytes`), until its growth fits; False when none does (it is the largest)."""
        budget = self._budget
        needed = size_bytes - self._partial_bytes
        while budget.held_bytes + needed > budget.bytes_max:
            largest = max(budget.holders, key=_partial_bytes_of, default=None)
            if largest is None or largest is self or largest._partial_bytes <= size_bytes:
                return False
            largest._fail(
                ErrorCode.LIMIT_EXCEEDED,
                f"frames not yet received whole fill partial_frames_bytes_max={budget.bytes_max}"
                f": this connection held the most of them ({largest._partial_bytes} bytes) "
                "when another needed room",
            )
            if budget.holders.pop(largest, None) is not None:
                return False  # It could not give its bytes back: never evict it twice.
        return True

    @abc.abstractmethod
    def _fail(self, error_code: int, reason: str) -> None:
        """The peer broke the protocol or a bound: close with the code, logged as a violation."""

    def _partial_overflow(self) -> str:
        """The reason for closing a connection whose partial frames would pass the budget."""
        budget = self._budget
        return (
            f"frames not yet received whole would pass partial_frames_bytes_max="
            f"{budget.bytes_max} (this connection holds {self._partial_bytes} bytes, all "
            f"connections {budget.held_bytes})"
        )

    def _set_closed(self, info: CloseInfo) -> bool:
        """Record why the connection ended; False if it had ended already. Nothing more is
        decoded: what it held of partial frames leaves its budget."""
        if self._close_info is not None:
            return False
        self._hold_partial(0)
        self._close_info = info
        self._wake_receiver()
        self._wake_drainers()
        return True

    def _set_gone(self, info: CloseInfo) -> None:
        """The transport is gone: record `info` unless a reason is known, resolve wait_closed."""
        self._set_closed(info)
        if not self._gone.done():
            assert self._close_info is not None
            self._gone.set_result(self._close_info)


class Listener(abc.ABC):
    """Accepts connections on one address, at most `connections_max` at once.

    `accept()` (or `async for`) yields each new connection once its handshake verified ALPN
    `forehand/1`; `close()` stops listening, closes every connection it gave or holds, and waits
    for them to be gone.
    """

    transport_name: ClassVar[str]
    """The transport it accepts connections of ("tls", "quic", "memory")."""

    def __init__(self, *, limits: ConnectionLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.host = ""
        """The address listened on."""
        self.port = 0
        """The port listened on (the one the system picked when 0 was asked)."""
        self._limits = limits
        self._loop = loop
        self._pending: deque[Connection] = deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        self._live: set[Connection] = set()
        self._closing = False
        self._evicting = False
        self.handshakes_evicted_count = 0
        """Handshakes closed to make room for a newer one, at `handshakes_max`."""

    def _handshakes_at_bound(self, under_way: int, *, name: str, newcomer: str) -> bool:
        """Whether `under_way` handshakes leave a new one no room under `handshakes_max` (the
        caller then evicts the oldest). Logs the start of each stretch at the bound (WARNING)
        and its end (INFO) once the handshakes under way have fallen to half the bound: a flood
        whose slots free one at a time (handshakes that fail or time out, a real client's that
        completes), each taken again at once, is one stretch, not a WARNING and an INFO a slot.
        `name` is the transport, `newcomer` what starts a handshake."""
        handshakes_max = self._limits.handshakes_max
        if under_way < handshakes_max:
            if self._evicting and under_way <= handshakes_max // 2:
                self._evicting = False
                _log.info(
                    "%s listener on %s:%d is under handshakes_max again (%d handshakes evicted "
                    "so far)",
                    name,
                    self.host,
                    self.port,
                    self.handshakes_evicted_count,
                )
            return False
        if not self._evicting:
            self._evicting = True
            _log.warning(
                "%s listener on %s:%d has handshakes_max=%d handshakes under way: each new %s "
                "evicts the oldest (a flood of %ss that never complete a handshake?)",
                name,
                self.host,
                self.port,
                handshakes_max,
                newcomer,
                newcomer,
            )
        return True

    @abc.abstractmethod
    async def _stop_listening(self) -> None:
        """Stop taking new connections and release the listening socket."""

    @property
    def connection_count(self) -> int:
        """Connections this listener holds now: accepted or waiting to be."""
        return len(self._live)

    async def accept(self) -> Connection:
        """The next new connection; TransportError once the listener is closed."""
        while not self._pending:
            if self._closing:
                raise TransportError("listener closed")
            waiter = self._loop.create_future()
            self._accept_waiter = waiter
            try:
                await waiter
            finally:
                self._accept_waiter = None
        return self._pending.popleft()

    def __aiter__(self) -> AsyncIterator[Connection]:
        return self

    async def __anext__(self) -> Connection:
        try:
            return await self.accept()
        except TransportError:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        """Stop listening, close every connection with NO_ERROR, and wait until all are gone."""
        first = not self._closing
        self._closing = True
        if self._accept_waiter is not None and not self._accept_waiter.done():
            self._accept_waiter.set_result(None)
        # Connections close first, while the listening socket can still carry their closes
        # (QUIC connections share it); new ones are refused meanwhile.
        live = list(self._live)
        for connection in live:
            connection.close(ErrorCode.NO_ERROR, "listener closed")
        await asyncio.gather(*(connection.wait_closed() for connection in live))
        if first:
            await self._stop_listening()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def _offer(self, connection: Connection) -> None:
        """A transport hands over a connection whose handshake succeeded."""
        if self._closing:
            connection.close(ErrorCode.NO_ERROR, "listener closed")
            return
        if len(self._live) >= self._limits.connections_max:
            connection.close(
                ErrorCode.LIMIT_EXCEEDED,
                f"listener holds connections_max={self._limits.connections_max} connections",
            )
            return
        self._live.add(connection)
        connection._gone.add_done_callback(lambda _: self._live.discard(connection))
        self._pending.append(connection)
        if self._accept_waiter is not None and not self._accept_waiter.done():
            self._accept_waiter.set_result(None)


class Transport(abc.ABC):
    """A `forehand/1` binding: listens and connects, always over TLS 1.3 with ALPN."""

    name: ClassVar[str]
    """The registry name: `tls`, `quic` or `memory`."""

    @abc.abstractmethod
    async def listen(
        self,
        host: str,
        port: int,
        *,
        peer_role: PeerRole | None = PeerRole.CLIENT,
        require_client_certificate: bool = False,
    ) -> Listener:
        """Listen on (host, port); port 0 picks a free one (see `Listener.port`).

        `peer_role` is who connects (it decides which frame types they may send; None accepts
        all). `require_client_certificate` makes the listener demand a certificate issued by
        the cluster CA (mutual TLS, for cluster-internal links).
        """

    @abc.abstractmethod
    async def connect(
        self,
        host: str,
        port: int,
        *,
        server_id: str,
        peer_role: PeerRole | None = PeerRole.SERVER,
    ) -> Connection:
        """Connect to the server `server_id` at (host, port) and verify its certificate.

        Raises HandshakeError when the certificate does not verify against the cluster CA for
        `server_id` or ALPN `forehand/1` was not selected, TransportError when the server
        cannot be reached.
        """


TransportFactory = Callable[[Credentials], Transport]
"""Builds a transport with its default configuration from a node's credentials."""

_TRANSPORTS: dict[str, TransportFactory] = {}


def register_transport(name: str, factory: TransportFactory) -> None:
    """Make `create_transport(name, ...)` build transports with `factory`."""
    _TRANSPORTS[name] = factory


def transport_names() -> list[str]:
    """The names `create_transport` knows, sorted."""
    return sorted(_TRANSPORTS)


def create_transport(name: str, *, credentials: Credentials) -> Transport:
    """A transport of the registered kind `name` (`tls`, `quic`, `memory`)."""
    factory = _TRANSPORTS.get(name)
    if factory is None:
        raise ConfigError(f"unknown transport {name!r}; known: {', '.join(transport_names())}")
    return factory(credentials)


def log_violation(connection: Connection, error_code: int, reason: str) -> None:
    """One INFO line for a connection closed because its peer broke the protocol or a bound,
    before any node saw the frame (a frame too large, a body that does not decode, a frame
    type the peer may not send): otherwise only the peer would know why."""
    peer = connection.peer_id or "a client"
    address = connection.peer_address
    where = f" at {address[0]}:{address[1]}" if address is not None else ""
    code = ErrorCode.from_wire(error_code).name
    _log.info(
        "closing the connection of %s%s: %s: %s", peer, where, code, reason, extra=PEER_CAUSED
    )
