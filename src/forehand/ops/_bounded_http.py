"""uvicorn's HTTP/1.1 protocol with bounds on what one client can hold.

uvicorn (its h11 protocol) bounds none of these by itself: a connection that sends nothing, or
sends its request a byte at a time, holds its slot for ever, and so does a response whose client
stopped reading, which waits for ever for the transport to drain. `bounded_protocol(limits)` is
uvicorn's `H11Protocol` with `HTTPLimits`:

- At most `connections_max` connections at once; the next one is answered 503 and closed.
- A connection with no request in progress (just opened, or after a response) is closed after
  `idle_timeout_ms`.
- A request must arrive whole, head and body, within `request_timeout_ms` of its first byte;
  else it is answered 408 (when no response has started) and the connection closes.
- A connection writes through a buffer of `write_buffer_bytes` (the kernel's send buffer, then
  the transport's high-water mark); once it is full, the response waits for the client to read,
  and a client that takes nothing from it for `write_stall_timeout_ms` is dropped. A client that
  reads, however slowly, is not.

Each limit closes only the connection that reached it, and each closing is logged at INFO.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from forehand._peer_log import PEER_CAUSED
from forehand.errors import ConfigError

__all__ = ["HTTPLimits", "bounded_protocol"]

_log = logging.getLogger("forehand.ops.http")


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPLimits:
    """Bounds of one HTTP listener's connections."""

    connections_max: int = 64
    """Connections open at once; beyond, a new one is answered 503 and closed."""
    request_timeout_ms: int = 10_000
    """Time from a request's first byte to its last (head and body); beyond, 408 and close."""
    idle_timeout_ms: int = 5_000
    """Time a connection may stay open with no request in progress (after it opened, or after
    a response); beyond, it is closed."""
    write_buffer_bytes: int = 65_536
    """Bytes a connection buffers for its client, in the kernel and again in the transport,
    before a response waits for the client to read."""
    write_stall_timeout_ms: int = 10_000
    """Time a full write buffer may go without the client taking a byte of it; beyond, the
    connection is dropped (an event stream whose client stopped reading)."""

    def __post_init__(self) -> None:
        for item in (
            "connections_max",
            "request_timeout_ms",
            "idle_timeout_ms",
            "write_buffer_bytes",
            "write_stall_timeout_ms",
        ):
            if getattr(self, item) < 1:
                raise ConfigError(f"HTTPLimits.{item} must be at least 1")


def _raw_response(status: int, reason: str, error: str, detail: str) -> bytes:
    """A whole response, written without h11: it may answer a request whose head never came."""
    body = json.dumps({"error": error, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class BoundedH11Protocol(H11Protocol):
    """See the module docstring; `limits` is set on the subclass `bounded_protocol` makes."""

    limits = HTTPLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._request_timer: asyncio.TimerHandle | None = None
        self._stall_timer: asyncio.TimerHandle | None = None
        self._last_progress = (0, 0)
        """`_progress()` when the stall timer was last armed."""

    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "an unknown peer"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if len(self.connections) > limits.connections_max:
            _log.info(
                "HTTP: refused a connection from %s: %d connections are open already",
                self._peer(),
                limits.connections_max,
                extra=PEER_CAUSED,
            )
            detail = f"more than {limits.connections_max} connections are open"
            answer = _raw_response(503, "Service Unavailable", "too_many_connections", detail)
            transport.write(answer)
            transport.close()
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Without it the kernel's buffer grows to megabytes for a client that reads nothing,
            # and the transport's limit below is reached only after minutes of events.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.write_buffer_bytes)
        transport.set_write_buffer_limits(high=limits.write_buffer_bytes)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._request_timer, self._stall_timer):
            if timer is not None:
                timer.cancel()
        self._request_timer = self._stall_timer = None
        super().connection_lost(exc)

    # -- idle and request deadlines ---------------------------------------------------------

    def _arm_idle(self) -> None:
        """The idle timer, in uvicorn's keep-alive slot: uvicorn cancels it when data comes."""
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.limits.idle_timeout_ms / 1000, self.timeout_keep_alive_handler
        )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn armed its own keep-alive timer unless the connection closes or a pipelined
        # request started: ours replaces it.
        if self.timeout_keep_alive_task is not None:
            self._arm_idle()

    def handle_events(self) -> None:
        super().handle_events()
        # A request is in progress from its first byte (buffered while the head is incomplete)
        # until h11 has read all of its body.
        state = self.conn.their_state
        receiving = state is h11.SEND_BODY or (
            state is h11.IDLE and bool(self.conn.trailing_data[0])
        )
        if receiving and self._request_timer is None:
            self._request_timer = self.loop.call_later(
                self.limits.request_timeout_ms / 1000, self._request_timed_out
            )
        elif not receiving and self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        timeout_ms = self.limits.request_timeout_ms
        head_pending = self.conn.their_state is h11.IDLE
        cycle = self.cycle
        answerable = head_pending or cycle is None or not cycle.response_started
        _log.info(
            "HTTP: closed the connection from %s: its request took more than %d ms to arrive",
            self._peer(),
            timeout_ms,
            extra=PEER_CAUSED,
        )
        if answerable:
            if not head_pending and cycle is not None:
                # The application waits for the body: it sees a disconnect and writes nothing.
                cycle.disconnected = True
                cycle.message_event.set()
            detail = f"the request did not arrive whole within {timeout_ms} ms"
            self.transport.write(_raw_response(408, "Request Timeout", "request_timeout", detail))
        self.transport.close()

    # -- writes -----------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm_stall()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _progress(self) -> tuple[int, int]:
        """How far the client got: the bytes it acknowledged (Linux's TCP_INFO; 0 elsewhere),
        and the bytes the transport still holds, negated (so that both grow as it reads)."""
        # Imported here: `forehand.runtime` imports this package (its processes run the ops
        # surfaces), so a module-level import is a cycle when `forehand.ops` loads first.
        from forehand.runtime._tcp_info import tcp_path_stats

        stats = tcp_path_stats(self.transport.get_extra_info("socket"), send_buffer_bytes=0)
        return stats.bytes_sent_count or 0, -self.transport.get_write_buffer_size()

    def _arm_stall(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
        self._last_progress = self._progress()
        self._stall_timer = self.loop.call_later(
            self.limits.write_stall_timeout_ms / 1000, self._check_stall
        )

    def _check_stall(self) -> None:
        self._stall_timer = None
        progress = self._progress()
        # The acknowledgements count too: the kernel gives the transport room only once a good
        # part of its own buffer has gone, so a client reading slowly can take bytes for a while
        # before the transport's buffer shrinks.
        if any(now > then for now, then in zip(progress, self._last_progress, strict=True)):
            self._arm_stall()  # The client reads, slowly: it gets another period.
            return
        unsent_bytes = -progress[1]
        _log.info(
            "HTTP: dropped the connection to %s: it read nothing for %d ms (%d bytes unsent)",
            self._peer(),
            self.limits.write_stall_timeout_ms,
            unsent_bytes,
            extra=PEER_CAUSED,
        )
        # abort, not close: close would wait for the buffer to drain, which it never will.
        self.transport.abort()


def bounded_protocol(limits: HTTPLimits) -> type[BoundedH11Protocol]:
    """The protocol class uvicorn serves one listener's connections with."""

    class Protocol(BoundedH11Protocol):
        pass

    Protocol.limits = limits
    return Protocol
