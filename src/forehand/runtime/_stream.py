"""`StreamConnection`: a `Connection` over one ordered byte stream (TLS over TCP, memory pipes).

It is the asyncio protocol of its transport: bytes in go through a bounded `FrameDecoder` into
the receive queue, frames out are encoded and coalesced into one write per loop turn. When the
receive queue is full it stops reading from the transport (true backpressure); the bytes the
transport delivered meanwhile wait undecoded, at most a read or two. What the decoder holds
after each read (a partial frame) is counted in the transport's `ReceiveBudget`. The write buffer
limits of the transport drive `writable` and `drain()`; past `send_buffer_bytes_max` the peer is
cut off.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

from forehand.errors import RemoteProtocolError
from forehand.runtime.transport import (
    PACED_BACKLOG_FRAMES,
    CloseInfo,
    CloseInitiator,
    Connection,
    ConnectionLimits,
    PathStats,
    ReceiveBudget,
    error_frame,
    log_violation,
    send_wire,
)
from forehand.wire import (
    END_OF_STREAM,
    DecoderSignal,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    PeerRole,
    WireConfig,
    encode_frame,
    encode_frames,
)

__all__ = ["StreamConnection"]

HANDLER_BATCH_FRAMES = PACED_BACKLOG_FRAMES
"""Frames decoded and handed to the frame handler at a time."""
HANDLER_TURN_S = 0.005
"""Longest a connection's frames keep the event loop before the next batch waits a turn: a
peer that sends tiny frames as fast as it can (a PING flood) fills a read with tens of thousands
of them, and handling a TLS read's frames in one go froze the whole process (heartbeats, other
connections) for seconds. Past this, reading pauses and the rest is handled on the next turn."""


class StreamConnection(Connection, asyncio.Protocol):
    """A connection whose frames travel on one byte stream in each direction."""

    transport_name = "stream"

    def __init__(
        self,
        *,
        is_client: bool,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
        peer_role: PeerRole | None,
        on_made: Callable[[StreamConnection], None] | None = None,
        budget: ReceiveBudget | None = None,
    ) -> None:
        super().__init__(is_client=is_client, limits=limits, loop=loop, budget=budget)
        self._wire = limits.wire
        self._send_wire = send_wire(limits.wire)
        self._peer_role = peer_role
        self._decoder = FrameDecoder(config=limits.wire, sender=peer_role)
        self._on_made = on_made
        self._transport: asyncio.Transport | None = None
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._pending_offset = 0
        """Bytes of `_pending[0]` already written (a long buffer goes out piece by piece)."""
        self._written_bytes = 0
        """Bytes given to the transport in all (less what it holds: what the peer took)."""
        self._transport_paused = False
        """The transport asked for no more writes (`pause_writing`): `_flush` keeps the rest."""
        self._flush_handle: asyncio.Handle | None = None
        self._unfed: deque[bytes] = deque()
        self._reading_paused = False
        self._abort_handle: asyncio.TimerHandle | None = None
        self._turn_handle: asyncio.Handle | None = None
        self._busy_s = 0.0
        """Time this loop turn spent on the frames of this connection (`_decode`)."""
        self._error_sent = False
        self._heard = False
        """Whether any byte came from the peer (a client told of an end before any says why)."""

    def _decode_with(
        self,
        wire: WireConfig,
        *,
        sender: PeerRole | None = None,
        budget: ReceiveBudget | None = None,
    ) -> None:
        """Decode what the peer sends, and encode what it is sent, with `wire`, the peer sending
        as `sender` and its partial frames counted in `budget` (when given); only before any
        byte arrived (a listener shared by clients and cluster nodes picks by the peer's
        certificate once the handshake is done)."""
        assert not self._unfed and self._partial_bytes == 0
        if sender is not None:
            self._peer_role = sender
        if budget is not None:
            self._budget = budget
        self._wire = wire
        self._send_wire = send_wire(wire)
        self._decoder = FrameDecoder(config=wire, sender=self._peer_role)

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without deriving from it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.set_write_buffer_limits(
            high=self._limits.send_buffer_high_water_bytes,
            low=self._limits.send_buffer_low_water_bytes,
        )
        self.local_address = _address(transport.get_extra_info("sockname"))
        self.peer_address = _address(transport.get_extra_info("peername"))
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self._close_info is not None:
            return  # After a connection error no further byte is processed.
        self._heard = True
        self.received_bytes += len(data)
        if self._reading_paused or self._unfed:
            self._unfed.append(data)
            return
        self._decoder.receive_data(data)
        self._decode()

    def _end_reason(self, what: str) -> str:
        """`what` ended the connection; for a client that heard nothing at all from the peer,
        with a likely cause, since the bare fact tells a user nothing."""
        if self._heard or not self.is_client:
            return what
        return (
            f"{what} before the peer sent anything (a server stopping does so; so does a port "
            "that does not serve this client's transport, such as a QUIC cluster's TLS port "
            "for its servers, which wants a client certificate)"
        )

    def eof_received(self) -> bool | None:
        if self._close_info is None:
            self._unfed.append(b"")
            if not self._reading_paused:
                self._decode()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_info is None and (self._unfed or self._decoder.buffered_bytes):
            # The link is gone; what it delivered while reading was paused (raw, or whole
            # frames the decoder still holds) is decoded now, so that frames the peer sent
            # before leaving are not lost, nor taken for a frame cut short.
            self._decode(bounded=False)
        if self._close_info is None and exc is None and self._decoder.buffered_bytes:
            # The stream ended inside a frame without an end of stream this side could answer:
            # over TLS, a TCP FIN without close_notify, which the ssl layer turns into a close
            # before this protocol hears of it, so no ERROR can go out. It is the same violation
            # as an end of stream inside a frame, and is closed and logged as one.
            reason = "stream ended inside a frame (no close_notify)"
            log_violation(self, ErrorCode.TRUNCATED_STREAM, reason)
            self._set_closed(
                CloseInfo(error_code=ErrorCode.TRUNCATED_STREAM, reason=reason, initiator=_LOCAL)
            )
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        if self._stall_handle is not None:
            self._stall_handle.cancel()
            self._stall_handle = None
        if self._turn_handle is not None:
            self._turn_handle.cancel()
            self._turn_handle = None
        reason = (
            f"connection lost: {exc}" if exc is not None else self._end_reason("connection lost")
        )
        self._set_gone(
            CloseInfo(
                error_code=ErrorCode.NO_ERROR if exc is None else ErrorCode.INTERNAL_ERROR,
                reason=reason,
                initiator=CloseInitiator.NETWORK,
            )
        )

    def pause_writing(self) -> None:
        self._transport_paused = True
        self._set_writable(False)

    def resume_writing(self) -> None:
        self._transport_paused = False
        if self._pending:
            # What `_flush` kept back while the transport was paused goes on now.
            self._flush()
            if self._transport_paused or self._pending:
                return
        self._set_writable(True)
        if self._paced and self._reading_paused:
            # The peer took the backlog down: its frames, held meanwhile, go on (on the next
            # turn: the transport calls this from inside its own write path).
            self._loop.call_soon(self._resume_paced)

    def _resume_paced(self) -> None:
        if self._writable and self._reading_paused and self._close_info is None:
            self._decode()

    # -- sending -------------------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        if self._close_info is not None:
            self._check_open()
        data = encode_frame(frame, config=self._send_wire)
        self._error_sent = type(frame) is Error
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= self._limits.send_buffer_high_water_bytes:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def send_frames(self, frames: Iterable[Frame]) -> None:
        if self._close_info is not None:
            self._check_open()
        wire = self._send_wire
        batch = frames if isinstance(frames, list | tuple) else list(frames)
        if not batch:
            return
        encoded = encode_frames(batch, config=wire)
        # close() sends ERROR itself unless the last frame queued was one (cores queue an ERROR
        # right before asking for the close).
        self._error_sent = type(batch[-1]) is Error
        self._pending.append(encoded)
        self._pending_bytes += len(encoded)
        if self._pending_bytes >= self._limits.send_buffer_high_water_bytes:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self, *, everything: bool = False) -> None:
        """Write what is queued, at most `send_buffer_high_water_bytes` at a time, stopping
        when the transport pauses writing (`everything`: on, for a close). A TLS transport
        encrypts a write at once and hands it to the socket's buffer, which its own size does
        not count, and pauses the protocol only for what it holds unencrypted: one long write
        went uncounted, however far the peer was behind. Written piece by piece, the rest waits
        here, counted in the backlog, until `resume_writing`."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending = self._pending
        transport = self._transport
        if not pending or transport is None or self._close_info is not None:
            return
        if self._transport_paused and not everything:
            # Nothing goes out before `resume_writing`; only the backlog is checked.
            self._check_backlog()
            return
        piece = self._limits.send_buffer_high_water_bytes
        while pending and (everything or not self._transport_paused):
            chunk = self._next_piece(piece)
            transport.write(chunk)
            self._written_bytes += len(chunk)
            self._pending_bytes -= len(chunk)
        self._check_backlog()

    def _buffered_bytes(self) -> int:
        transport = self._transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def _unsent_bytes(self) -> int:
        return self._pending_bytes + self._buffered_bytes()

    def taken_bytes(self) -> int:
        return self._written_bytes - self._buffered_bytes()

    def _next_piece(self, piece: int) -> bytes:
        """Take the next write off `_pending`: the short buffers queued in one turn joined (up
        to `piece` bytes: one write, as before), or `piece` bytes of a long one, whose rest stays
        where it is (`_pending_offset`), so a backlog is copied once however often the
        transport pauses."""
        pending = self._pending
        head = pending[0]
        offset = self._pending_offset
        if offset or len(head) > piece:
            chunk = head[offset : offset + piece]
            offset += len(chunk)
            if offset < len(head):
                self._pending_offset = offset
            else:
                pending.popleft()
                self._pending_offset = 0
            return chunk
        chunks = [pending.popleft()]
        size = len(head)
        while pending and size + len(pending[0]) <= piece:
            size += len(pending[0])
            chunks.append(pending.popleft())
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _cut_off(self, reason: str) -> None:
        # No ERROR can reach a peer that does not read; the log says why it was cut off.
        log_violation(self, ErrorCode.LIMIT_EXCEEDED, reason)
        self._abort(ErrorCode.LIMIT_EXCEEDED, reason)

    # -- receiving -----------------------------------------------------------------------

    def _decode(self, *, bounded: bool = True) -> None:
        """Move decoded frames to the frame handler, or to the receive queue until it is full.

        The frame handler takes them `HANDLER_BATCH_FRAMES` at a time. Once this connection's
        frames took `HANDLER_TURN_S` of one loop turn (over every read the transport delivered
        in it: libuv reads a busy socket many times before it returns to the loop), reading
        pauses and the rest waits for the next turn (`_next_turn`), so one peer's flood of
        frames, even of frames that are skipped, cannot hold the process.
        """
        if self._frame_handler is None or not bounded:
            self._decode_batch(bounded=bounded)
            return
        if self._paced and not self._writable:
            # The peer has not taken the answers to its last frames: the next wait in the
            # socket until it does (`resume_writing`).
            self._pause_reading()
            return
        started = time.perf_counter()
        while self._decode_batch(bounded=True) and self._close_info is None:
            if self._paced and not self._writable:
                self._pause_reading()
                return
            if self._busy_s + time.perf_counter() - started >= HANDLER_TURN_S:
                break
        self._busy_s += time.perf_counter() - started
        if self._turn_handle is None:
            self._turn_handle = self._loop.call_soon(self._next_turn)
        if self._busy_s >= HANDLER_TURN_S and self._close_info is None:
            self._pause_reading()

    def _next_turn(self) -> None:
        """A new loop turn: the time budget starts again, and what waits is decoded."""
        self._turn_handle = None
        paused, self._busy_s = self._busy_s >= HANDLER_TURN_S, 0.0
        if paused and self._close_info is None and self._frame_handler is not None:
            self._decode()

    def _decode_batch(self, *, bounded: bool) -> bool:
        """Decode what the decoder holds and what waits unfed, into the frame handler (at most
        `HANDLER_BATCH_FRAMES`) or the receive queue (until it is full); True when it stopped
        for want of room, with reading paused and more perhaps to decode.

        The frames of a read come out of the decoder in batches (`next_frames`, one C call with
        the accelerator); `next_frame` handles what a batch stops at: a long header, an
        extension frame, the need for more bytes or the end of the stream.
        """
        decoder = self._decoder
        handler = self._frame_handler
        received: list[Frame] | deque[Frame] = [] if handler is not None else self._received
        room = -1
        if bounded:
            room = (
                HANDLER_BATCH_FRAMES
                if handler is not None
                else self._limits.receive_queue_frames_max - len(received)
            )
        stopped = False
        try:
            while room != 0:
                batch = decoder.next_frames(room)
                if batch:
                    # A batch ends after an ERROR, so nothing after the peer's ERROR is delivered.
                    received.extend(batch)
                    room -= len(batch)
                    if self._error_received(batch[-1]):
                        break
                    continue
                frame = decoder.next_frame()
                if type(frame) is DecoderSignal:
                    if frame is END_OF_STREAM:
                        self._flush(everything=True)
                        self._peer_closed(
                            ErrorCode.NO_ERROR, self._end_reason("peer ended the stream")
                        )
                        break
                    if not self._unfed:
                        self._resume_reading()
                        break
                    decoder.receive_data(self._unfed.popleft())
                    continue
                received.append(frame)  # type: ignore[arg-type]
                room -= 1
                if self._error_received(frame):  # type: ignore[arg-type]
                    break
            else:
                self._pause_reading()
                stopped = True
        except RemoteProtocolError as error:
            self._fail(error.error_code, str(error))
        if self._close_info is None and not self._hold_partial(decoder.buffered_bytes):
            # The frames of this read that were whole are still delivered.
            self._fail(ErrorCode.LIMIT_EXCEEDED, self._partial_overflow())
        if received:
            if handler is not None:
                assert isinstance(received, list)
                handler(received)
            else:
                self._wake_receiver()
        return stopped and handler is not None

    def _error_received(self, frame: Frame) -> bool:
        """Close when `frame` is the peer's ERROR."""
        if type(frame) is not Error:
            return False
        assert isinstance(frame, Error)
        self._peer_closed(frame.code, frame.reason)
        return True

    def _receive_queue_drained(self) -> None:
        if self._reading_paused and self._close_info is None:
            self._decode()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            if self._transport is not None:
                self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()

    # -- closing -------------------------------------------------------------------------

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        if self._close_info is not None:
            return
        if error_code != ErrorCode.NO_ERROR and not self._error_sent:
            error = encode_frame(error_frame(error_code, reason, self._wire))
            self._pending.append(error)
            self._pending_bytes += len(error)
            self._error_sent = True
        self._flush(everything=True)
        self._begin_close(CloseInfo(error_code=error_code, reason=reason, initiator=_LOCAL))

    def abandon(self, error_code: int, reason: str) -> None:
        """The peer is silent: close as `close` does (ERROR goes out if the socket takes it),
        then abort the transport, so the connection is gone on the next turn rather than after
        `close_timeout_ms` of a graceful close nobody answers."""
        self.close(error_code, reason)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error_code: int, reason: str) -> None:
        """The peer broke the protocol: tell it with ERROR and close this connection only."""
        if self._close_info is None:
            log_violation(self, error_code, reason)
        self.close(error_code, reason)

    def _peer_closed(self, error_code: int, reason: str) -> None:
        """The peer sent ERROR or ended its stream: close, sending nothing that is not out yet."""
        self._drop_pending()
        self._begin_close(CloseInfo(error_code=error_code, reason=reason, initiator=_PEER))

    def _refuse(self, reason: str) -> None:
        """The handshake is not acceptable: close without a frame, the peer may not speak ours."""
        self._drop_pending()
        self._begin_close(
            CloseInfo(error_code=ErrorCode.PROTOCOL_ERROR, reason=reason, initiator=_LOCAL)
        )

    def _drop_pending(self) -> None:
        self._pending.clear()
        self._pending_bytes = self._pending_offset = 0

    def _begin_close(self, info: CloseInfo) -> None:
        self._set_closed(info)
        transport = self._transport
        if transport is None:
            self._set_gone(info)
            return
        transport.close()
        # A peer that stops reading would hold a graceful close open forever.
        self._abort_handle = self._loop.call_later(
            self._limits.close_timeout_ms / 1000, transport.abort
        )

    def _abort(self, error_code: int, reason: str) -> None:
        self._set_closed(CloseInfo(error_code=error_code, reason=reason, initiator=_LOCAL))
        if self._transport is not None:
            self._transport.abort()

    def path_stats(self) -> PathStats:
        return PathStats(source="none", send_buffer_bytes=self._unsent_bytes())


_LOCAL = CloseInitiator.LOCAL
_PEER = CloseInitiator.PEER


def _address(value: Any) -> tuple[str, int] | None:
    """(host, port) from a socket address of any family; None when there is none."""
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
