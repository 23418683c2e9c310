"""The QUIC binding of `forehand/1` (docs/PROTOCOL.md s.4.1), on the qh3 QUIC stack.

Each side opens one unidirectional control stream (type prefix 0x00) right after the handshake;
it carries every frame but REQUEST, RESPONSE and REDIRECT. A client sends each REQUEST on a new
bidirectional stream and ends it; the server answers on that stream with one RESPONSE or
REDIRECT and ends it. The connection routes frames to streams itself, so callers see the same
`send_frame` / `receive` interface as over TLS. Every stream is decoded with its own bounded
`FrameDecoder`. A connection error closes the QUIC connection with CONNECTION_CLOSE carrying the
ErrorCode and the reason.

qh3 2.1.0 was chosen over aioquic 1.7.2, whose API it shares: this module ran the same tests
on both (aioquic failed one: it reports no RESET_STREAM for a request stream whose FIN it has
already read), and on the request benchmark qh3 was 3.9 times faster for sequential round trips,
3.4 times for 64 pipelined requests, with 4.4 ms handshakes against 11.6 ms, in the same run.
What qh3 offers publicly, and so what this module uses: `get_send_buffer_size()` for send
backpressure, `max_concurrent_bidi_streams` for the peer's stream limit (qh3 raises rather than
queue beyond it), PING frames and their acknowledgements for RTT samples, and the datagrams
themselves: the protocol counts what it feeds the stack and what `datagrams_to_send()` gives it
(`_PathCounters`). The qlog hook (`QuicConfiguration.quic_logger`) would count them too, but it
parses every packet header it logs, which cost 12% of sequential round trips here. Loss and
congestion: qh3 2.1 runs loss recovery in its native core, which neither logs lost
packets to the qlog hook nor accepts a congestion-control plug-in; the typed native core
(`qh3._hazmat.QuicConnectionCore`) publishes `loss_total`, `pto_total` and
`congestion_window`, and the Python facade holds it as `_core`. `_recovery_figures` is the one
place that reaches it, and reports nothing (None) when a qh3 version lacks it. Neither stack
verifies client certificates, so mutual TLS (cluster-internal links) runs over the TLS/TCP
binding; a QUIC listener refuses to require it. A client connection's UDP socket is held by a
task (`_hold_socket`) so that it closes with the connection or, at the latest, with the loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.asyncio.server import QuicServer
from qh3.quic import events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection

from forehand._peer_log import PEER_CAUSED
from forehand.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from forehand.runtime._retry import RETRY_KEY_BYTES, RetryTokens
from forehand.runtime._rtt import RttEstimator
from forehand.runtime.loop import require_assertions
from forehand.runtime.transport import (
    ALPN,
    CertificateNotVerifiedError,
    CloseInfo,
    CloseInitiator,
    Connection,
    ConnectionLimits,
    Credentials,
    HandshakeError,
    Listener,
    PathStats,
    ReceiveBudget,
    Transport,
    TransportError,
    log_violation,
    register_transport,
    send_wire,
)
from forehand.wire import (
    END_OF_STREAM,
    NEED_DATA,
    ErrorCode,
    Frame,
    FrameDecoder,
    PeerRole,
    Ping,
    Redirect,
    Request,
    Response,
    StreamType,
    encode_frame,
    encode_varint,
    pull_varint,
)

__all__ = ["QUICConnection", "QUICListener", "QUICTransport", "QUICTransportConfig"]

_log = logging.getLogger("forehand.runtime.transport")
_CONTROL_PREFIX = encode_varint(StreamType.CONTROL)
_STREAM_TYPE_BYTES_MAX = 8
_STREAM_CANCELLED = 0
"""Application error code of STOP_SENDING and RESET_STREAM for streams we stop or replace."""
_REQUEST_STREAM_STEP = 4
"""Client-initiated bidirectional stream ids (request streams) go 0, 4, 8, ..."""
_ROUTE_RESET = -1
"""Route of a request whose stream the client reset: its answer is dropped, not an error."""


@dataclass(frozen=True, slots=True, kw_only=True)
class QUICTransportConfig:
    """Settings of the QUIC transport."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """The bounds of every connection."""
    handshake_timeout_ms: int = 10_000
    """A handshake that takes longer fails; a listener closes and forgets one, freeing its slot
    under `limits.handshakes_max`."""
    idle_timeout_ms: int = 60_000
    """QUIC idle timeout: a connection silent this long is closed by the stack."""
    stream_window_bytes: int = 2 << 20
    """Per-stream flow-control window; at least one frame of `frame_bytes_max` plus header."""
    connection_window_bytes: int = 16 << 20
    """Connection-wide flow-control window; bounds what a peer has in flight to us."""
    rtt_probe_interval_ms: int = 1_000
    """How often a QUIC PING measures the RTT (one outstanding at a time); 0 turns it off."""
    retry_token_lifetime_ms: int = 10_000
    """How long a listener accepts the token of a Retry it sent (`limits.
    handshakes_unvalidated_max`): the client's round trip and more, while a token captured on
    the way can start handshakes from the client's address only this long."""

    def __post_init__(self) -> None:
        for name in ("handshake_timeout_ms", "idle_timeout_ms", "retry_token_lifetime_ms"):
            if getattr(self, name) < 1:
                raise ConfigError(f"QUICTransportConfig.{name} must be positive")
        if self.stream_window_bytes < self.limits.wire.buffered_bytes_max:
            raise ConfigError("QUICTransportConfig.stream_window_bytes must hold a whole frame")
        if self.connection_window_bytes < self.stream_window_bytes:
            raise ConfigError("connection_window_bytes must be at least stream_window_bytes")
        if self.rtt_probe_interval_ms < 0:
            raise ConfigError("QUICTransportConfig.rtt_probe_interval_ms must be 0 or more")


class _PathCounters:
    """Datagrams and bytes one QUIC connection sent and received."""

    __slots__ = (
        "bytes_received_count",
        "bytes_sent_count",
        "datagrams_received_count",
        "datagrams_sent_count",
    )

    def __init__(self) -> None:
        self.datagrams_sent_count = 0
        """Datagrams the stack handed to the socket."""
        self.bytes_sent_count = 0
        """Their bytes (UDP payloads)."""
        self.datagrams_received_count = 0
        """Datagrams the stack was given."""
        self.bytes_received_count = 0
        """Their bytes (UDP payloads)."""

    def counting(
        self, datagrams_to_send: Callable[[float], list[tuple[bytes, Any]]]
    ) -> Callable[[float], list[tuple[bytes, Any]]]:
        """`datagrams_to_send` of the stack, counting what it returns."""

        def counted(now: float) -> list[tuple[bytes, Any]]:
            datagrams = datagrams_to_send(now)
            self.datagrams_sent_count += len(datagrams)
            self.bytes_sent_count += sum(len(data) for data, _ in datagrams)
            return datagrams

        return counted


def _recovery_figures(quic: QuicConnection) -> tuple[int, int, int] | None:
    """(packets declared lost, probe timeouts, congestion window bytes) from qh3's native loss
    recovery, or None when this qh3 does not publish them (see the module docstring)."""
    core: Any = getattr(quic, "_core", None)
    if core is None:
        return None
    try:
        return int(core.loss_total), int(core.pto_total), int(core.congestion_window)
    except (AttributeError, TypeError):
        return None


_CERTIFICATE_ALERTS = frozenset(range(0x100 + 42, 0x100 + 50))
"""QUIC CRYPTO_ERROR codes (0x100 plus the TLS alert) of a certificate refused: bad_certificate
(42) to access_denied (49), unknown_ca (48) among them."""


class _Protocol(QuicConnectionProtocol):
    """Feeds the QUIC stack's events to the `QUICConnection` made when the handshake is done."""

    def __init__(
        self,
        quic: QuicConnection,
        stream_handler: Any = None,
        *,
        make_connection: Callable[[_Protocol, events.HandshakeCompleted], QUICConnection | None],
        on_handshake_over: Callable[[_Protocol], None] | None = None,
    ) -> None:
        super().__init__(quic, stream_handler)
        self.quic = quic
        """The stack's connection, which this protocol drives."""
        self.connection: QUICConnection | None = None
        """The forehand/1 connection, once the handshake is done and acceptable."""
        self.terminated: events.ConnectionTerminated | None = None
        """How the stack ended the connection before there was a forehand/1 one."""
        self.peer_address: Any = None
        """The address the last datagram came from."""
        self._make_connection = make_connection
        self._on_handshake_over = on_handshake_over
        self._receiving = False
        self.refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Fails when the network reports the peer unreachable before the handshake is done."""
        self.counters = _PathCounters()
        """What went through this protocol; the stack pulls every outgoing datagram through
        `datagrams_to_send(now)`, which is wrapped here to count them."""
        quic.datagrams_to_send = self.counters.counting(  # type: ignore[method-assign,assignment]
            quic.datagrams_to_send
        )

    def error_received(self, exc: Exception) -> None:
        connection = self.connection
        if connection is None:
            if not self.refused.done():
                self.refused.set_exception(exc)
                self.refused.exception()  # Retrieved here: nobody may be waiting any more.
        elif isinstance(exc, ConnectionRefusedError) and connection.is_client:
            connection._unreachable(exc)

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        self.peer_address = addr
        self.counters.datagrams_received_count += 1
        self.counters.bytes_received_count += len(data)
        self._receiving = True
        try:
            super().datagram_received(data, addr)
        finally:
            self._receiving = False
        connection = self.connection
        if connection is not None:
            connection._hand_over_batch()
            # qh3 (pinned) reports a peer's CONNECTION_CLOSE as ConnectionTerminated only once
            # its draining period ends; meanwhile every send raises its own error. The close is
            # known now (`_close_event`), so the connection ends now: a send raises
            # ConnectionClosedError naming the peer's code (a listener's LIMIT_EXCEEDED, say),
            # and a receive stops waiting. wait_closed still waits for the stack to finish.
            closed = self.quic._close_event
            if closed is not None and connection._close_info is None:
                connection._set_closed(_close_info(closed))

    def quic_event_received(self, event: events.QuicEvent) -> None:
        connection = self.connection
        if connection is not None:
            connection._event(event)
        elif isinstance(event, events.HandshakeCompleted):
            if self._on_handshake_over is not None:
                self._on_handshake_over(self)
            self.connection = self._make_connection(self, event)
        elif isinstance(event, events.ConnectionTerminated):
            self.terminated = event
            if self._on_handshake_over is not None:
                self._on_handshake_over(self)

    def transmit(self) -> None:
        transport = self._transport
        if transport is not None and transport.is_closing():
            # The socket is closed (a dial refused or given up): the stack's timer must not
            # go on sending through it (asyncio logs "socket.send() raised exception." for
            # each datagram past the fifth, a screenful for a client dialling a wrong port).
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        connection = self.connection
        if connection is None:
            super().transmit()
        elif self._receiving:
            # Sent on the next turn instead: the consumers woken by this datagram run first,
            # so their answers leave in the same packet as the acknowledgement.
            connection._schedule_transmit()
        elif connection._stack_broken:
            return
        else:
            try:
                super().transmit()
            except ValueError as error:
                connection._stack_failed(error)
                return
            connection._transmitted()


class _RequestStream:
    """A request stream being read: its decoder and whether its one frame came."""

    __slots__ = ("decoder", "frame_seen")

    def __init__(self, decoder: FrameDecoder) -> None:
        self.decoder = decoder
        self.frame_seen = False


class QUICConnection(Connection):
    """A `forehand/1` connection over QUIC: a control stream each way plus request streams."""

    transport_name = "quic"

    def __init__(
        self,
        *,
        protocol: _Protocol,
        is_client: bool,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
        peer_role: PeerRole | None,
        rtt_probe_interval_ms: int,
        on_gone: Callable[[], None] | None = None,
        counters: _PathCounters | None = None,
        budget: ReceiveBudget | None = None,
    ) -> None:
        super().__init__(is_client=is_client, limits=limits, loop=loop, budget=budget)
        self._protocol = protocol
        self._quic = protocol.quic
        self._counters = counters
        self._wire = limits.wire
        self._send_wire = send_wire(limits.wire)
        self._peer_role = peer_role
        self._on_gone = on_gone
        self._control_send = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._quic.send_stream_data(self._control_send, _CONTROL_PREFIX)
        self._control_receive: int | None = None
        self._control_decoder = FrameDecoder(config=limits.wire, sender=peer_role)
        self._stream_types: dict[int, bytes] = {}
        self._ignored_streams: set[int] = set()
        self._request_streams: dict[int, _RequestStream] = {}
        self._routes: dict[tuple[bytes, int], int] = {}
        self._request_next = 0
        """Server: the lowest request stream whose REQUEST is not yet delivered (nor the stream
        reset before it came). Requests are delivered in stream order, which is the client's
        send order, so that a lost packet does not let a later request of a part run first."""
        self._requests_held: dict[int, Request | None] = {}
        """Server: REQUESTs of streams above `_request_next` that completed first (None for a
        stream reset before its frame came), delivered once every earlier stream has. Bounded by
        the stream credit this side grants (MAX_STREAMS): none of them is answered yet, so none
        of their streams is closed."""
        self._blocked_requests: deque[bytes] = deque()
        self._batch: list[Frame] = []
        self._held: deque[Frame] = deque()
        """Paced (`pace_by_sending`): frames received and not yet handed over, one at a time
        while writable; at most `receive_queue_frames_max`."""
        self._blocked_bytes = 0
        self._held_bytes = 0
        """REQUEST payload bytes in `_held`, at most `partial_frames_bytes_max`."""
        self._queued_bytes = 0
        """Bytes given to the stack in all (less the backlog: what the peer took)."""
        self._transmit_handle: asyncio.Handle | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._rtt = RttEstimator()
        self._probe_uids = itertools.count(1)
        self._probe_sent: tuple[int, float] | None = None
        self._probe_interval_s = rtt_probe_interval_ms / 1000
        self._probe_timer: asyncio.TimerHandle | None = None
        self.responses_dropped_count = 0
        """Answers dropped because the client had reset their request streams."""
        self._stack_broken = False
        if rtt_probe_interval_ms:
            self._probe()

    # -- sending -------------------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        self._check_open()
        self._send(frame)
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self._transmit)
        self._queued_now()

    def _queued_now(self) -> None:
        """A paced connection is not writable as soon as what it queued passes the high-water
        mark, not at the next transmission: its next frame waits (`_release_held`)."""
        high = self._limits.send_buffer_high_water_bytes
        if self._paced and self._writable and self._unsent_bytes() > high:
            self._set_writable(False)

    def send_frames(self, frames: Iterable[Frame]) -> None:
        """Queue `frames`, all or none: a frame that cannot be encoded or has no stream to go on
        raises before any is queued (the node driver then sends the others one by one)."""
        self._check_open()
        batch = frames if isinstance(frames, list | tuple) else list(frames)
        wire = self._send_wire
        encoded = [encode_frame(frame, config=wire) for frame in batch]
        routes = self._routes
        for frame in batch:
            kind = type(frame)
            if kind is Response or kind is Redirect:
                assert isinstance(frame, Response | Redirect)
                if (frame.session_id, frame.request_id) not in routes:
                    raise LocalProtocolError(
                        f"no request stream for request {frame.request_id} on this connection"
                    )
            elif kind is Request and not self.is_client:
                raise LocalProtocolError("only clients send REQUEST")
        for frame, data in zip(batch, encoded, strict=True):
            self._send(frame, data)
        self._schedule_transmit()
        self._queued_now()

    def _schedule_transmit(self) -> None:
        if self._transmit_handle is None:
            self._transmit_handle = self._loop.call_soon(self._transmit)

    def _send(self, frame: Frame, data: bytes | None = None) -> None:
        """Queue one frame (encoded as `data`, if given) on the stream it belongs to."""
        if data is None:
            data = encode_frame(frame, config=self._send_wire)
        self._queued_bytes += len(data)
        kind = type(frame)
        quic = self._quic
        if kind is Request:
            if not self.is_client:
                raise LocalProtocolError("only clients send REQUEST")
            if self._blocked_requests or not self._stream_credit():
                self._blocked_requests.append(data)
                self._blocked_bytes += len(data)
            else:
                self._open_request_stream(data)
        elif kind is Response or kind is Redirect:
            assert isinstance(frame, Response | Redirect)
            stream_id = self._routes.pop((frame.session_id, frame.request_id), None)
            if stream_id is None:
                raise LocalProtocolError(
                    f"no request stream for request {frame.request_id} on this connection"
                )
            if stream_id == _ROUTE_RESET:
                self.responses_dropped_count += 1
                return
            quic.send_stream_data(stream_id, data, end_stream=True)
        else:
            quic.send_stream_data(self._control_send, data)

    def _stream_credit(self) -> bool:
        """Whether the peer's MAX_STREAMS lets this side open another request stream."""
        opened = self._quic.get_next_available_stream_id() >> 2
        return opened < self._quic.max_concurrent_bidi_streams

    def _open_request_stream(self, data: bytes) -> None:
        quic = self._quic
        stream_id = quic.get_next_available_stream_id()
        quic.send_stream_data(stream_id, data, end_stream=True)
        self._request_streams[stream_id] = _RequestStream(
            FrameDecoder(config=self._wire, sender=self._peer_role)
        )

    def _release_blocked_requests(self) -> None:
        """Open streams for requests that waited for the peer to raise its stream limit."""
        blocked = self._blocked_requests
        while blocked and self._stream_credit():
            data = blocked.popleft()
            self._blocked_bytes -= len(data)
            self._open_request_stream(data)

    def _transmit(self) -> None:
        self._transmit_handle = None
        if self._blocked_requests and self._close_info is None:
            self._release_blocked_requests()
        self._protocol.transmit()  # Also after a close: CONNECTION_CLOSE must leave.

    def _flush(self) -> None:
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        if self._blocked_requests:
            self._release_blocked_requests()
        self._protocol.transmit()

    def _transmitted(self) -> None:
        """After each transmission: update writability from the stack's send backlog."""
        if self._close_info is not None:
            return
        backlog = self._unsent_bytes()
        limits = self._limits
        if backlog > limits.send_buffer_bytes_max or self._stall_handle is not None:
            self._check_backlog()
            if self.is_closed:
                return
        if backlog > limits.send_buffer_high_water_bytes:
            if self._writable:
                self._set_writable(False)
        elif not self._writable and backlog <= limits.send_buffer_low_water_bytes:
            self._set_writable(True)
            if self._held:
                self._loop.call_soon(self._release_held)

    def _cut_off(self, reason: str) -> None:
        self._fail(ErrorCode.LIMIT_EXCEEDED, reason)

    def _unsent_bytes(self) -> int:
        return self._quic.get_send_buffer_size() + self._blocked_bytes

    def taken_bytes(self) -> int:
        return self._queued_bytes - self._unsent_bytes()

    # -- receiving -----------------------------------------------------------------------

    def _event(self, event: events.QuicEvent) -> None:
        """One event of the stack; a protocol violation closes this connection only."""
        try:
            if isinstance(event, events.StreamDataReceived):
                self.received_bytes += len(event.data)
                self._stream_data(event.stream_id, event.data, event.end_stream)
            elif isinstance(event, events.StreamReset | events.StopSendingReceived):
                self._stream_stopped(event.stream_id)
            elif isinstance(event, events.PingAcknowledged):
                self._probe_answered(event.uid)
            elif isinstance(event, events.ConnectionTerminated):
                self._terminated(event)
        except RemoteProtocolError as error:
            self._fail(error.error_code, str(error))

    def _stream_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if self._close_info is not None:
            return
        if stream_id & 2:
            self._unidirectional_data(stream_id, data, end_stream)
        elif (stream_id & 1) == (0 if self.is_client else 1):
            self._answer_data(stream_id, data, end_stream)
        elif self.is_client:
            raise RemoteProtocolError(
                "the server opened a bidirectional stream", error_code=ErrorCode.FRAME_UNEXPECTED
            )
        else:
            self._request_data(stream_id, data, end_stream)

    def _unidirectional_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        if stream_id == self._control_receive:
            self._control_data(data, end_stream)
            return
        if stream_id in self._ignored_streams:
            if end_stream:
                self._ignored_streams.discard(stream_id)
            return
        prefix = self._stream_types.pop(stream_id, b"") + data
        if not prefix or len(prefix) < _VARINT_SIZES[prefix[0] >> 6]:
            if end_stream:
                return  # A stream that ended before its type is ignored, like an unknown one.
            if len(prefix) < _STREAM_TYPE_BYTES_MAX:
                self._stream_types[stream_id] = prefix
            return
        size = _VARINT_SIZES[prefix[0] >> 6]
        stream_type = int.from_bytes(prefix[:size]) & ((1 << (8 * size - 2)) - 1)
        if stream_type != StreamType.CONTROL:
            if not end_stream:
                self._ignored_streams.add(stream_id)
                self._quic.stop_stream(stream_id, _STREAM_CANCELLED)
            return
        if self._control_receive is not None:
            raise RemoteProtocolError(
                "a second control stream", error_code=ErrorCode.CLOSED_CRITICAL_STREAM
            )
        self._control_receive = stream_id
        self._control_data(prefix[size:], end_stream)

    def _control_data(self, data: bytes, end_stream: bool) -> None:
        decoder = self._control_decoder
        held_bytes = decoder.buffered_bytes
        if data:
            decoder.receive_data(data)
        while (frame := decoder.next_frame()) is not NEED_DATA:
            if frame is END_OF_STREAM:
                break
            kind = type(frame)
            if kind is Request or kind is Response or kind is Redirect:
                raise RemoteProtocolError(
                    f"{frame.frame_type.name} on the control stream",
                    error_code=ErrorCode.FRAME_UNEXPECTED,
                )
            self._deliver_one(frame)
        self._partial_changed(decoder.buffered_bytes - held_bytes)
        if end_stream:
            raise RemoteProtocolError(
                "the control stream was closed", error_code=ErrorCode.CLOSED_CRITICAL_STREAM
            )

    def _request_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Data of a request stream, on the server: exactly one REQUEST, then the end."""
        stream = self._request_streams.get(stream_id)
        if stream is None:
            if stream_id < self._request_next or stream_id in self._requests_held:
                return  # A stream reset before its frame came, settled already.
            stream = self._request_streams[stream_id] = _RequestStream(
                FrameDecoder(config=self._wire, sender=self._peer_role)
            )
        frame = self._one_frame(stream_id, stream, data, end_stream, Request)
        if frame is not None:
            assert isinstance(frame, Request)
            self._request_settled(stream_id, frame)

    def _request_settled(self, stream_id: int, frame: Request | None) -> None:
        """Stream `stream_id` brought its REQUEST (`frame`), or was reset before it (None):
        deliver it, and the held requests of the streams after it, in stream order. QUIC orders
        bytes within a stream only: the client opens a stream per request in call order, and a
        request whose packet was lost must still run before the later ones (PROTOCOL.md 5.6:
        the requests of a part execute in order), as over TLS's one byte stream."""
        if stream_id != self._request_next:
            self._requests_held[stream_id] = frame
            return
        held = self._requests_held
        while True:
            if frame is not None:
                self._deliver_request(stream_id, frame)
            stream_id += _REQUEST_STREAM_STEP
            self._request_next = stream_id
            if stream_id not in held:
                return
            frame = held.pop(stream_id)

    def _deliver_request(self, stream_id: int, frame: Request) -> None:
        key = (frame.session_id, frame.request_id)
        replaced = self._routes.get(key)
        if replaced is not None and replaced != _ROUTE_RESET:
            # A retry of a request still in flight: the answer goes to the newer stream.
            self._quic.reset_stream(replaced, _STREAM_CANCELLED)
        self._routes[key] = stream_id
        self._deliver_one(frame)

    def _answer_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """Data of a request stream, on the client: exactly one RESPONSE or REDIRECT."""
        stream = self._request_streams.get(stream_id)
        if stream is None:
            return  # A stream this side gave up on.
        frame = self._one_frame(stream_id, stream, data, end_stream, Response, Redirect)
        if frame is not None:
            self._deliver_one(frame)

    def _one_frame(
        self,
        stream_id: int,
        stream: _RequestStream,
        data: bytes,
        end_stream: bool,
        *kinds: type[Frame],
    ) -> Frame | None:
        """The one frame of a request stream, when it completes; raises on anything else."""
        decoder = stream.decoder
        held_bytes = decoder.buffered_bytes
        if data:
            decoder.receive_data(data)
        if end_stream:
            decoder.receive_data(b"")
        result: Frame | None = None
        while (frame := decoder.next_frame()) is not NEED_DATA:
            if frame is END_OF_STREAM:
                break
            if stream.frame_seen or type(frame) not in kinds:
                raise RemoteProtocolError(
                    f"{frame.frame_type.name} where a request stream allows one "
                    f"{' or '.join(kind.__name__.upper() for kind in kinds)}",
                    error_code=ErrorCode.FRAME_UNEXPECTED,
                )
            stream.frame_seen = True
            result = frame
        self._partial_changed(decoder.buffered_bytes - held_bytes)
        if end_stream:
            if not stream.frame_seen:
                raise RemoteProtocolError(
                    "a request stream ended without its frame",
                    error_code=ErrorCode.FRAME_UNEXPECTED,
                )
            del self._request_streams[stream_id]
        return result

    def _partial_changed(self, change_bytes: int) -> None:
        """A stream's decoder holds `change_bytes` more (or fewer) of a frame not yet whole:
        count them in the budget, or close the connection (LIMIT_EXCEEDED) if they would pass it."""
        if change_bytes and not self._hold_partial(self._partial_bytes + change_bytes):
            raise RemoteProtocolError(self._partial_overflow(), error_code=ErrorCode.LIMIT_EXCEEDED)

    def _receive_queue_drained(self) -> None:
        """Nothing to resume: the QUIC stack never stops delivering stream data."""

    def _deliver_one(self, frame: Frame) -> None:
        """To the batch of the frame handler, or to the bounded receive queue."""
        if self._frame_handler is not None:
            self._batch.append(frame)
            return
        maximum = self._limits.receive_queue_frames_max
        if len(self._received) >= maximum:
            raise RemoteProtocolError(
                f"more than receive_queue_frames_max={maximum} frames not yet taken",
                error_code=ErrorCode.LIMIT_EXCEEDED,
            )
        self._received.append(frame)
        self._wake_receiver()

    def _hand_over_batch(self) -> None:
        """After a datagram: give the frame handler every frame the datagram completed (a
        paced connection that is not writable holds them, `_release_held`)."""
        batch = self._batch
        handler = self._frame_handler
        if not batch or handler is None:
            return
        self._batch = []
        if not self._paced:
            handler(batch)
            return
        # A PING is answered at once, whatever the backlog (a few bytes on the control stream),
        # so the client hears that this server is alive; only the rest waits its turn.
        pings: list[Frame] = [frame for frame in batch if type(frame) is Ping]
        if pings:
            batch = [frame for frame in batch if type(frame) is not Ping]
            handler(pings)
        limits = self._limits
        self._held_bytes += sum(len(f.payload) for f in batch if isinstance(f, Request))
        if len(self._held) + len(batch) > limits.receive_queue_frames_max or (
            self._held_bytes > limits.partial_frames_bytes_max
        ):
            self._fail(
                ErrorCode.LIMIT_EXCEEDED,
                f"more than receive_queue_frames_max={limits.receive_queue_frames_max} frames, or "
                f"partial_frames_bytes_max={limits.partial_frames_bytes_max} bytes of REQUEST "
                "payloads, held while the peer does not take its answers",
            )
            return
        self._held.extend(batch)
        self._release_held()

    def _release_held(self) -> None:
        """Hand the held frames over, one at a time, while the connection stays writable: the
        answers of each are queued before the next is handed (a datagram may complete a hundred
        REQUESTs, whose long answers, queued together, would interleave on their streams and
        all end together)."""
        held, handler = self._held, self._frame_handler
        while held and handler is not None and self._writable and self._close_info is None:
            frame = held.popleft()
            if type(frame) is Request:
                self._held_bytes -= len(frame.payload)
            handler([frame])

    def _stream_stopped(self, stream_id: int) -> None:
        """The peer reset a stream or asked us to stop sending on one."""
        if stream_id in (self._control_receive, self._control_send):
            raise RemoteProtocolError(
                "the control stream was reset", error_code=ErrorCode.CLOSED_CRITICAL_STREAM
            )
        self._ignored_streams.discard(stream_id)
        self._stream_types.pop(stream_id, None)
        stream = self._request_streams.pop(stream_id, None)
        if stream is not None:
            self._partial_changed(-stream.decoder.buffered_bytes)
        if (
            not self.is_client
            and stream_id & 3 == 0
            and stream_id >= self._request_next
            and stream_id not in self._requests_held
            and (stream is None or not stream.frame_seen)
        ):
            # A request stream reset before its REQUEST came: the later ones go on without it.
            self._request_settled(stream_id, None)
        if not self.is_client:
            for key, routed in self._routes.items():
                if routed == stream_id:
                    self._routes[key] = _ROUTE_RESET
                    break

    # -- RTT probes ----------------------------------------------------------------------

    def _probe(self) -> None:
        self._probe_timer = None
        if self._close_info is not None:
            return
        if self._probe_sent is None:
            uid = next(self._probe_uids)
            self._probe_sent = (uid, time.perf_counter())
            self._quic.send_ping(uid)
            self._schedule_transmit()
        self._probe_timer = self._loop.call_later(self._probe_interval_s, self._probe)

    def _probe_answered(self, uid: int) -> None:
        sent = self._probe_sent
        if sent is not None and sent[0] == uid:
            self._probe_sent = None
            self._rtt.add_sample_us(round((time.perf_counter() - sent[1]) * 1_000_000))

    def path_stats(self) -> PathStats:
        rtt = self._rtt
        backlog = self._blocked_bytes
        if self._close_info is None:
            backlog += self._quic.get_send_buffer_size()
        recovery = _recovery_figures(self._quic)
        lost, timeouts, window = recovery if recovery is not None else (None, None, None)
        counters = self._counters
        return PathStats(
            source="quic_ping" if rtt.sample_count else "none",
            rtt_smoothed_us=rtt.smoothed_us,
            rtt_min_us=rtt.min_us,
            rtt_latest_us=rtt.latest_us,
            rtt_variance_us=rtt.variance_us,
            rtt_sample_count=rtt.sample_count,
            packets_lost_count=lost,
            # QUIC resends the frames of lost packets, and a probe timeout sends probe packets.
            packets_retransmitted_count=None if lost is None else lost + (timeouts or 0),
            congestion_window_bytes=window,
            send_buffer_bytes=backlog,
            packets_sent_count=None if counters is None else counters.datagrams_sent_count,
            bytes_sent_count=None if counters is None else counters.bytes_sent_count,
            bytes_received_count=None if counters is None else counters.bytes_received_count,
        )

    # -- closing -------------------------------------------------------------------------

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        if self._close_info is not None:
            return
        self._flush()
        self._shut(CloseInfo(error_code=error_code, reason=reason, initiator=_LOCAL))

    def abandon(self, error_code: int, reason: str) -> None:
        """The peer is silent: CONNECTION_CLOSE goes out, and the connection is gone now rather
        than after a closing period the peer will not answer."""
        info = self._close_info
        if info is None:
            self.close(error_code, reason)
            info = self._close_info
        assert info is not None
        self._gone_now(info)

    def _fail(self, error_code: int, reason: str) -> None:
        """The peer broke the protocol or a bound: CONNECTION_CLOSE with the code and reason."""
        if self._close_info is None:
            log_violation(self, error_code, reason)
            self._shut(CloseInfo(error_code=error_code, reason=reason, initiator=_LOCAL))

    def _shut(self, info: CloseInfo) -> None:
        self._set_closed(info)
        self._stop_timers()
        reason = info.reason.encode()[: self._wire.message_bytes_max].decode(errors="ignore")
        self._quic.close(error_code=info.error_code, reason_phrase=reason)
        self._protocol.transmit()
        # The stack reports the end after its closing period; do not wait longer than the bound.
        self._close_timer = self._loop.call_later(
            self._limits.close_timeout_ms / 1000, self._gone_now, info
        )

    def _stack_failed(self, error: ValueError) -> None:
        """The QUIC stack raised while building datagrams: qh3 2.1.0's native core does so
        under heavy loss ("reserved stream is missing"), and the stream data it held never
        leaves, so answers were lost on a connection that looked alive and their calls waited
        out their timeout. The connection ends now (INTERNAL_ERROR, sent if the stack still
        can): its peer learns it, and a client sends its unanswered requests again on a new
        connection, where the servers' dedup tables answer those that ran."""
        if self._stack_broken:
            return
        self._stack_broken = True
        reason = f"the QUIC stack failed: {error}"
        _log.warning("closing the QUIC connection of %s: %s", self.peer_id or "a client", reason)
        info = CloseInfo(error_code=ErrorCode.INTERNAL_ERROR, reason=reason, initiator=_LOCAL)
        self._set_closed(info)
        self._stop_timers()
        try:
            self._quic.close(error_code=ErrorCode.INTERNAL_ERROR, reason_phrase=reason[:100])
            for data, address in self._quic.datagrams_to_send(now=self._loop.time()):
                self._protocol._transport.sendto(data, address)  # type: ignore[union-attr]
        except (ValueError, AttributeError, OSError):
            pass  # The peer learns it from the silence instead.
        protocol_timer = self._protocol._timer
        if protocol_timer is not None:
            protocol_timer.cancel()
            self._protocol._timer = None
        self._gone_now(info)

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        self._gone_now(_close_info(event))

    def _unreachable(self, exc: Exception) -> None:
        """The network says nothing listens at the server's port any more (ICMP port
        unreachable, which a connected client socket hears): its process is gone. Ended now, as
        a TLS client's connection ends when the dead server's kernel resets it, rather than
        when the pings go unanswered (about `pings_outstanding_max` seconds: a QUIC client took
        six seconds to fail over from a killed server where a TLS one took three). An ICMP
        message is not authenticated: a forged one costs a reconnection, not data."""
        if self._close_info is not None or self._gone.done():
            return
        self._gone_now(
            CloseInfo(
                error_code=ErrorCode.NO_ERROR,
                reason=f"the server's port is unreachable (its process is gone?): {exc!r}",
                initiator=CloseInitiator.NETWORK,
            )
        )

    def _gone_now(self, info: CloseInfo) -> None:
        self._stop_timers()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._gone.done():
            return
        self._set_gone(info)
        if self._on_gone is not None:
            self._on_gone()

    def _stop_timers(self) -> None:
        for handle in (self._probe_timer, self._transmit_handle, self._stall_handle):
            if handle is not None:
                handle.cancel()
        self._probe_timer = self._transmit_handle = self._stall_handle = None


_LOCAL = CloseInitiator.LOCAL
_VARINT_SIZES = (1, 2, 4, 8)


def _close_info(event: events.ConnectionTerminated) -> CloseInfo:
    """Why the stack ended a connection, in forehand/1 terms."""
    reason = event.reason_phrase
    application = event.frame_type is None
    if "idle timeout" in reason.lower() and not (application and event.error_code):
        # The stack reports its own idle timeout as a close whose reason says so.
        return CloseInfo(
            error_code=ErrorCode.IDLE_TIMEOUT, reason=reason, initiator=CloseInitiator.NETWORK
        )
    if application:
        return CloseInfo(error_code=event.error_code, reason=reason, initiator=CloseInitiator.PEER)
    return CloseInfo(
        error_code=ErrorCode.PROTOCOL_ERROR,
        reason=f"QUIC transport error {event.error_code:#x}: {reason}",
        initiator=CloseInitiator.PEER,
    )


class QUICListener(Listener):
    """Accepts QUIC connections for a `QUICTransport`.

    A handshake under way holds state (the stack's connection, its TLS context and crypto
    buffers: 35 to 50 KB of memory each, measured) before any peer is authenticated, so at most
    `limits.handshakes_max` are under way at once: a datagram that would start one more closes
    and forgets the oldest under way, and a handshake not completed within
    `handshake_timeout_ms` is closed and forgotten too. Evicting the oldest rather than refusing
    the newest keeps a flood of Initials that never complete (they need not even decrypt, and
    their source may be spoofed) from locking real clients out: a real handshake completes in
    a round trip or two, long before `handshakes_max` newer ones push it out at any flood rate
    short of `handshakes_max` per round trip.

    A faster flood is met with address validation: while `limits.handshakes_unvalidated_max`
    handshakes are under way for peers whose address is not validated, a new client's first
    Initial gets a Retry (RFC 9000 s.8.1.2) carrying a token bound to its address (`RetryTokens`)
    and no handshake. A client that receives packets at its address comes back with the token
    and its handshake starts, at any pressure (evicting the oldest at `handshakes_max`); an
    Initial with a token the listener refuses is dropped. Spoofed sources never see their Retry,
    so the flood holds at most that many handshakes and evicts nobody. A handshake that
    completes while the listener holds `connections_max` connections is closed with
    LIMIT_EXCEEDED, as on every transport.
    """

    transport_name = "quic"

    def __init__(
        self,
        *,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
        handshake_timeout_ms: int = 10_000,
    ) -> None:
        super().__init__(limits=limits, loop=loop)
        self._datagram_transport: asyncio.DatagramTransport | None = None
        self._server: _Server | None = None
        self._handshake_timeout_s = handshake_timeout_ms / 1000
        self._handshakes: dict[_Protocol, asyncio.TimerHandle] = {}
        self._unvalidated: set[_Protocol] = set()
        self._retrying = False
        self.handshakes_timed_out_count = 0
        """Handshakes closed because they did not complete within `handshake_timeout_ms`."""
        self.retries_sent_count = 0
        """Retry packets sent, one per Initial datagram without a token that came while
        `handshakes_unvalidated_max` unvalidated handshakes were under way."""
        self.retry_tokens_accepted_count = 0
        """Handshakes started by an Initial carrying a valid token of this listener."""
        self.retry_tokens_refused_count = 0
        """Initial datagrams dropped for their token: forged, expired, issued to another address
        or for another connection id."""

    @property
    def handshake_count(self) -> int:
        """Handshakes under way (at most `handshakes_max`), not yet connections."""
        return len(self._handshakes)

    @property
    def handshake_unvalidated_count(self) -> int:
        """Handshakes under way whose peer came without a token, so with an address not
        validated (at most `handshakes_unvalidated_max` while Retry is on)."""
        return len(self._unvalidated)

    def _retry_needed(self) -> bool:
        """Whether a client's first Initial gets a Retry rather than a handshake: while
        `handshakes_unvalidated_max` handshakes of unvalidated peers are under way, unless that
        is `handshakes_max` (Retry off). Logs the start of each stretch in Retry mode, and its
        end once those handshakes have fallen to half the bound: a flood whose handshakes end one
        by one (they time out), each slot taken again by its next Initial, is one stretch, not a
        WARNING and an INFO per handshake ended."""
        bound = self._limits.handshakes_unvalidated_bound
        if bound < self._limits.handshakes_max and len(self._unvalidated) >= bound:
            if not self._retrying:
                self._retrying = True
                _log.warning(
                    "QUIC listener on %s:%d is at handshakes_unvalidated_max=%d (handshakes "
                    "under way for unvalidated peers): new clients get a Retry first (a flood of "
                    "Initials?)",
                    self.host,
                    self.port,
                    bound,
                )
            return True
        if self._retrying and len(self._unvalidated) <= bound // 2:
            self._retrying = False
            _log.info(
                "QUIC listener on %s:%d is under handshakes_unvalidated_max again (%d Retries "
                "sent, %d tokens accepted, %d refused so far)",
                self.host,
                self.port,
                self.retries_sent_count,
                self.retry_tokens_accepted_count,
                self.retry_tokens_refused_count,
            )
        return False

    def _handshake_unvalidated(self, protocol: _Protocol) -> None:
        """The handshake just started for an Initial without a token."""
        if protocol in self._handshakes:  # Not already ended by its first datagram.
            self._unvalidated.add(protocol)

    def _make_room_for_handshake(self) -> None:
        """Close and forget the oldest handshakes under way until a new one fits under
        `handshakes_max` (logged once a stretch: `Listener._handshakes_at_bound`)."""
        handshakes_max = self._limits.handshakes_max
        if not self._handshakes_at_bound(len(self._handshakes), name="QUIC", newcomer="Initial"):
            return
        while len(self._handshakes) >= handshakes_max:
            oldest = next(iter(self._handshakes))
            self.handshakes_evicted_count += 1
            self._end_handshake(oldest, f"evicted at handshakes_max={handshakes_max}")

    def _handshake_started(self, protocol: _Protocol) -> None:
        self._handshakes[protocol] = self._loop.call_later(
            self._handshake_timeout_s, self._handshake_timed_out, protocol
        )

    def _handshake_over(self, protocol: _Protocol) -> None:
        """The handshake completed or the stack ended it: its slot is free (a connection it
        made is counted from now on as one this listener holds)."""
        timer = self._handshakes.pop(protocol, None)
        if timer is not None:
            timer.cancel()
            self._unvalidated.discard(protocol)

    def _handshake_timed_out(self, protocol: _Protocol) -> None:
        if protocol not in self._handshakes:
            return
        self.handshakes_timed_out_count += 1
        timeout_ms = round(self._handshake_timeout_s * 1000)
        address = _address(protocol.peer_address)
        where = f"{address[0]}:{address[1]}" if address is not None else "an unknown address"
        _log.info(
            "closing the QUIC handshake of %s: not completed within handshake_timeout_ms=%d",
            where,
            timeout_ms,
            extra=PEER_CAUSED,
        )
        self._end_handshake(protocol, f"handshake not completed within {timeout_ms} ms")

    def _end_handshake(self, protocol: _Protocol, reason: str) -> None:
        """Close a handshake under way and drop it from the stack's server at once."""
        timer = self._handshakes.pop(protocol)
        timer.cancel()
        self._unvalidated.discard(protocol)
        protocol.quic.close(error_code=ErrorCode.IDLE_TIMEOUT, reason_phrase=reason)
        protocol.transmit()
        if self._server is not None:
            self._server.forget(protocol)

    async def _stop_listening(self) -> None:
        for timer in self._handshakes.values():
            timer.cancel()
        self._handshakes.clear()
        self._unvalidated.clear()
        if self._server is not None:
            self._server.close()  # type: ignore[no-untyped-call]  # qh3 leaves it unannotated.
            self._server = None
        await asyncio.sleep(0)  # Let the loop release the socket, as Server.wait_closed does.


_LONG_HEADER_BIT = 0x80
_INITIAL_DATAGRAM_BYTES_MIN = 1200
"""A client's first datagram is at least this long (RFC 9000 s.14.1); qh3's QuicServer starts a
handshake only for a long-header datagram this long whose destination id it does not know."""


_INITIAL_TYPE_BITS = {0x00000001: 0x00, 0x6B3343CF: 0x10}
"""The long-header type bits (0x30) of an Initial packet by QUIC version: 1 (RFC 9000 s.17.2.2)
and 2 (RFC 9369 s.3.2)."""


def _initial_token(data: bytes, source_length_offset: int) -> bytes | None:
    """The token of the Initial packet at the start of `data`, whose source connection id
    length is at `source_length_offset` (RFC 9000 s.17.2.2); None if the header ends early."""
    try:
        length, offset = pull_varint(data, source_length_offset + 1 + data[source_length_offset])
    except IndexError:
        return None
    end = offset + length
    return data[offset:end] if end <= len(data) else None


class _RetryAt:
    """The listener's `RetryTokens` at one instant, with the interface qh3's QuicServer calls
    (`self._retry`); counts the Retries it makes tokens for."""

    __slots__ = ("_listener", "_now_us", "_tokens")

    def __init__(self, tokens: RetryTokens, listener: QUICListener, *, now_us: int) -> None:
        self._tokens = tokens
        self._listener = listener
        self._now_us = now_us

    def create_token(self, addr: Any, original_cid: bytes, retry_cid: bytes) -> bytes:
        self._listener.retries_sent_count += 1
        return self._tokens.create_token(addr, original_cid, retry_cid, now_us=self._now_us)

    def validate_token(self, addr: Any, token: bytes) -> tuple[bytes, bytes]:
        return self._tokens.validate_token(addr, token, now_us=self._now_us)


class _Server(QuicServer):
    """qh3's QuicServer, deciding what a new client's Initial gets (a handshake, a Retry, or
    nothing), making room under `handshakes_max` before a handshake starts, and forgetting a
    connection by the ids it registered rather than by a walk over every id.

    qh3 (pinned) sends a Retry for an Initial without a token and validates the token of one
    that has it when its `_retry` is set, and does neither when it is None; `_retry` is set here
    for each Initial that needs it. qh3 (pinned) drops a terminated connection from `_protocols`
    by walking all of them; with tens of thousands of ids, each handshake evicted at the bound
    would cost milliseconds, so a flood of Initials would saturate the loop. Each protocol's ids
    are kept here instead: the two registered when its first datagram came, and those it issues
    and retires later."""

    def __init__(self, *, listener: QUICListener, tokens: RetryTokens, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._listener = listener
        self._tokens = tokens
        self._ids: dict[QuicConnectionProtocol, set[bytes]] = {}
        versions = self._configuration.supported_versions
        # An Initial of another version gets Version Negotiation from the stack, no handshake.
        self._initial_type_bits = {
            version: bits for version, bits in _INITIAL_TYPE_BITS.items() if version in versions
        }

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        if (
            len(data) >= _INITIAL_DATAGRAM_BYTES_MIN
            and isinstance(data, bytes)
            and data[0] & _LONG_HEADER_BIT
            and self._initial_type_bits.get(int.from_bytes(data[1:5], "big")) == data[0] & 0x30
            and (destination := data[6 : 6 + data[5]]) not in self._protocols
        ):
            # The destination connection id sits at the same place in every long header
            # (RFC 8999 s.5.1); an Initial of a version the stack speaks for no known connection
            # would start a handshake.
            self._initial_received(data, addr, destination)
        else:
            super().datagram_received(data, addr)

    def _initial_received(self, data: bytes, addr: Any, destination: bytes) -> None:
        """A client's Initial for no known connection: a handshake, a Retry, or nothing."""
        token = _initial_token(data, 6 + len(destination))
        if token is None:
            return  # The stack would not parse it either.
        listener = self._listener
        now_us = round(self._loop.time() * 1_000_000)
        if token:
            if not self._token_accepted(addr, token, destination, now_us=now_us):
                listener.retry_tokens_refused_count += 1
                return
            listener.retry_tokens_accepted_count += 1
        elif listener._retry_needed():
            self._start(data, addr, _RetryAt(self._tokens, listener, now_us=now_us))
            return
        listener._make_room_for_handshake()
        # With a token, the stack validates it again (one HMAC) to learn the connection ids the
        # handshake must confirm (RFC 9000 s.7.3).
        self._start(data, addr, _RetryAt(self._tokens, listener, now_us=now_us) if token else None)
        protocol = self._protocols.get(destination)
        if protocol is not None:
            # A new connection (the id was unknown): the ids the stack registered for it.
            self._ids.setdefault(protocol, set()).update((destination, protocol._quic.host_cid))
            if not token:
                assert isinstance(protocol, _Protocol), "made by the listener's create_protocol"
                listener._handshake_unvalidated(protocol)

    def _token_accepted(self, addr: Any, token: bytes, destination: bytes, *, now_us: int) -> bool:
        """Whether `token` is this listener's, for `addr`, alive, and for this Initial: a client
        that follows a Retry addresses the connection id the Retry gave it (RFC 9000 s.7.2), so
        a token starts at most one handshake at a time."""
        try:
            _, retry_cid = self._tokens.validate_token(addr, token, now_us=now_us)
        except ValueError:
            return False
        return retry_cid == destination

    def _start(self, data: bytes, addr: Any, retry: _RetryAt | None) -> None:
        """Hand an Initial to the stack with `retry` as its retry handler for this datagram."""
        stack: Any = self  # qh3 types `_retry` as its own handler class; it only calls it.
        stack._retry = retry
        try:
            super().datagram_received(data, addr)
        finally:
            stack._retry = None

    def _connection_id_issued(self, cid: bytes, protocol: QuicConnectionProtocol) -> None:
        super()._connection_id_issued(cid, protocol)
        self._ids.setdefault(protocol, set()).add(cid)

    def _connection_id_retired(self, cid: bytes, protocol: QuicConnectionProtocol) -> None:
        super()._connection_id_retired(cid, protocol)
        ids = self._ids.get(protocol)
        if ids is not None:
            ids.discard(cid)

    def _connection_terminated(self, protocol: QuicConnectionProtocol) -> None:
        ids = self._ids.pop(protocol, None)
        if ids is None:
            super()._connection_terminated(protocol)
            return
        protocols = self._protocols
        for cid in ids:
            if protocols.get(cid) is protocol:
                del protocols[cid]

    def forget(self, protocol: _Protocol) -> None:
        """Drop a closed handshake now, rather than after the stack's closing period."""
        self._connection_terminated(protocol)
        timer = protocol._timer
        if timer is not None:
            timer.cancel()
            protocol._timer = None


class QUICTransport(Transport):
    """QUIC with ALPN `forehand/1`, server certificates verified against the cluster CA."""

    name = "quic"

    def __init__(
        self, credentials: Credentials, *, config: QUICTransportConfig | None = None
    ) -> None:
        require_assertions()
        self.credentials = credentials
        """What this node presents and trusts."""
        self.config = config if config is not None else QUICTransportConfig()
        """Settings and bounds."""
        self.receive_budget = ReceiveBudget(self.config.limits.partial_frames_bytes_max)
        """What every connection of this transport holds of frames not yet received whole."""

    def _configuration(self, *, is_client: bool, server_id: str | None) -> QuicConfiguration:
        config = self.config
        configuration = QuicConfiguration(
            is_client=is_client,
            alpn_protocols=[ALPN],
            idle_timeout=config.idle_timeout_ms / 1000,
            max_data=config.connection_window_bytes,
            max_stream_data=config.stream_window_bytes,
            server_name=server_id,
        )
        if is_client:
            configuration.load_verify_locations(cafile=str(self.credentials.ca_certificate_path))
        else:
            credentials = self.credentials
            if credentials.certificate_path is None:
                raise ConfigError("a listening node needs a certificate (Credentials.for_node)")
            configuration.load_cert_chain(
                credentials.certificate_path, credentials.private_key_path
            )
        return configuration

    async def listen(
        self,
        host: str,
        port: int,
        *,
        peer_role: PeerRole | None = PeerRole.CLIENT,
        require_client_certificate: bool = False,
    ) -> QUICListener:
        if require_client_certificate:
            raise ConfigError(
                "the QUIC stack cannot verify client certificates; run mutually authenticated "
                "(cluster-internal) links over the TLS transport"
            )
        configuration = self._configuration(is_client=False, server_id=None)
        loop = asyncio.get_running_loop()
        limits = self.config.limits
        listener = QUICListener(
            limits=limits, loop=loop, handshake_timeout_ms=self.config.handshake_timeout_ms
        )

        def make_connection(
            protocol: _Protocol, event: events.HandshakeCompleted
        ) -> QUICConnection | None:
            connection = self._made(protocol, event, is_client=False, peer_role=peer_role)
            if connection is not None:
                connection.local_address = (listener.host, listener.port)
                listener._offer(connection)
            return connection

        def create_protocol(quic: QuicConnection, stream_handler: Any = None) -> _Protocol:
            protocol = _Protocol(
                quic,
                stream_handler,
                make_connection=make_connection,
                on_handshake_over=listener._handshake_over,
            )
            listener._handshake_started(protocol)
            return protocol

        # A key per listener: its tokens are good at no other listener, nor after a restart.
        tokens = RetryTokens(
            key=os.urandom(RETRY_KEY_BYTES), lifetime_ms=self.config.retry_token_lifetime_ms
        )
        try:
            transport, server = await loop.create_datagram_endpoint(
                lambda: _Server(
                    listener=listener,
                    tokens=tokens,
                    configuration=configuration,
                    create_protocol=create_protocol,
                ),
                local_addr=(host, port),
            )
        except OSError as error:
            raise TransportError(f"cannot listen on {host}:{port}: {error}") from error
        listener._datagram_transport = transport
        listener._server = server
        listener.host, listener.port = transport.get_extra_info("sockname")[:2]
        return listener

    def _made(
        self,
        protocol: _Protocol,
        event: events.HandshakeCompleted,
        *,
        is_client: bool,
        peer_role: PeerRole | None,
    ) -> QUICConnection | None:
        """The connection for a finished handshake, or None (and a close) if ALPN is wrong."""
        if event.alpn_protocol != ALPN:
            protocol.quic.close(
                error_code=ErrorCode.PROTOCOL_ERROR,
                reason_phrase=f"ALPN {ALPN} was not negotiated",
            )
            return None
        connection = QUICConnection(
            protocol=protocol,
            is_client=is_client,
            limits=self.config.limits,
            loop=asyncio.get_running_loop(),
            peer_role=peer_role,
            rtt_probe_interval_ms=self.config.rtt_probe_interval_ms,
            counters=protocol.counters,
            budget=self.receive_budget,
        )
        connection.peer_address = _address(protocol.peer_address)
        return connection

    async def _handshake(self, protocol: _Protocol, address: Any) -> None:
        """Until the handshake completes; ConnectionError if refused, TimeoutError if silent."""
        protocol.connect(address)
        connected = asyncio.ensure_future(protocol.wait_connected())
        try:
            done, _ = await asyncio.wait(
                (connected, protocol.refused),
                timeout=self.config.handshake_timeout_ms / 1000,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            if not connected.done():
                connected.cancel()  # Also when the caller is cancelled: no task left behind.
        if connected not in done:
            await asyncio.gather(connected, return_exceptions=True)
            if protocol.refused.done():
                raise protocol.refused.exception() or ConnectionRefusedError()
            raise TimeoutError("no answer within handshake_timeout_ms")
        connected.result()

    async def connect(
        self,
        host: str,
        port: int,
        *,
        server_id: str,
        peer_role: PeerRole | None = PeerRole.SERVER,
    ) -> QUICConnection:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as error:
            raise TransportError(f"cannot resolve {host}: {error}") from error
        family, _, _, _, resolved = infos[0]
        address = (str(resolved[0]), int(resolved[1]))
        quic = QuicConnection(
            configuration=self._configuration(is_client=True, server_id=server_id)
        )

        def make_connection(
            protocol: _Protocol, event: events.HandshakeCompleted
        ) -> QUICConnection | None:
            return self._made(protocol, event, is_client=True, peer_role=peer_role)

        # A connected socket hears ICMP "port unreachable": connecting to a dead server fails
        # at once instead of after the handshake timeout, which matters for handoff reconnects.
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(quic, make_connection=make_connection),
            remote_addr=address,
            family=family,
        )
        release = _hold_socket(transport)
        try:
            await self._handshake(protocol, address)
        except (ConnectionError, TimeoutError) as error:
            release()
            terminated = protocol.terminated
            if terminated is None:
                raise TransportError(
                    f"no QUIC handshake with {host}:{port}: {error!r} (nothing answers QUIC "
                    "there: no server, or one of the TLS transport)"
                ) from None
            error_class = (
                CertificateNotVerifiedError
                if terminated.error_code in _CERTIFICATE_ALERTS
                else HandshakeError
            )
            raise error_class(
                f"{server_id} at {host}:{port}: {terminated.reason_phrase} "
                f"(QUIC error {terminated.error_code:#x})"
            ) from None
        except BaseException:
            # Cancelled (its node is closing, say): end what the handshake made, free the socket.
            if protocol.connection is not None:
                protocol.connection.close(ErrorCode.NO_ERROR, "connect cancelled")
            release()
            raise
        connection = protocol.connection
        if connection is None:
            release()
            raise HandshakeError(f"{server_id} at {host}:{port}: ALPN {ALPN} was not negotiated")
        connection.peer_id = server_id
        connection.local_address = _address(transport.get_extra_info("sockname"))
        connection._on_gone = release
        if connection._gone.done():
            # Gone between the handshake and here (an ICMP port unreachable, a termination),
            # before it had its release to call: the socket goes now.
            release()
        return connection


_socket_holders: set[asyncio.Task[None]] = set()
"""The tasks of `_hold_socket`, referenced here while they run (the loop keeps only weak
references to tasks)."""


def _hold_socket(transport: asyncio.DatagramTransport) -> Callable[[], None]:
    """Tie a client connection's UDP socket to a task; return the function that releases it.

    The socket is closed when the function is called (the connection is gone, or the handshake
    failed) or when the task is cancelled, whichever comes first. Loop shutdown (`run`,
    `asyncio.run`) cancels every task that is left, so a connection its owner lost (a dial
    cancelled after its handshake) or one still in its closing period cannot leave the socket
    open past the loop: uvloop would warn of the unclosed handle while closing, and where
    warnings are errors (the tests) that warning skips the handle's close, leaving
    `loop.close()` waiting on the open socket forever.
    """
    released: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def hold() -> None:
        try:
            await released
        finally:
            transport.close()

    task = asyncio.get_running_loop().create_task(hold(), name="forehand-quic-socket")
    _socket_holders.add(task)
    task.add_done_callback(_socket_holders.discard)

    def release() -> None:
        if not released.done():
            released.set_result(None)
        transport.close()

    return release


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


register_transport("quic", QUICTransport)
