"""An in-memory transport with the interface and the bounds of the real ones, for tests.

Two `_PipeEnd` transports stand for a TCP connection: bytes written on one end reach the other
end's protocol on a later turn of the loop, pausing and resuming like a socket, with write
buffer limits that drive `drain()`. The connections on them are the same `StreamConnection`
that TLS uses, so framing, the bounded decoder, the receive queue bound, errors and closes
behave exactly as over TLS. The handshake is imitated: a connection succeeds only when both
sides trust the same cluster CA file and the listener's node id is the `server_id` asked for.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from forehand.errors import ConfigError
from forehand.runtime._stream import StreamConnection
from forehand.runtime.loop import require_assertions
from forehand.runtime.transport import (
    CertificateNotVerifiedError,
    ConnectionLimits,
    Credentials,
    HandshakeError,
    Listener,
    ReceiveBudget,
    Transport,
    TransportError,
    register_transport,
)
from forehand.wire import PeerRole

__all__ = ["MemoryConnection", "MemoryNetwork", "MemoryTransport", "MemoryTransportConfig"]

EPHEMERAL_PORT_MIN = 49_152
"""Port 0 in `listen` picks the next free port from here."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryTransportConfig:
    """Settings of the in-memory transport."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """The bounds of every connection, as for the real transports."""
    read_chunk_bytes: int = 64 << 10
    """The most bytes one delivery hands to the receiving protocol, like one socket read."""

    def __post_init__(self) -> None:
        if self.read_chunk_bytes < 1:
            raise ConfigError("MemoryTransportConfig.read_chunk_bytes must be positive")


class MemoryConnection(StreamConnection):
    """A `forehand/1` connection over an in-memory pipe."""

    transport_name = "memory"


class MemoryNetwork:
    """The address space in-memory listeners live in; one per test is the usual scope."""

    def __init__(self) -> None:
        self._listeners: dict[tuple[str, int], MemoryListener] = {}
        self._ports = itertools.count(EPHEMERAL_PORT_MIN)

    def _bind(self, host: str, port: int, listener: MemoryListener) -> int:
        if port == 0:
            port = next(port for port in self._ports if (host, port) not in self._listeners)
        if (host, port) in self._listeners:
            raise TransportError(f"address {host}:{port} already in use")
        self._listeners[host, port] = listener
        return port

    def _unbind(self, host: str, port: int) -> None:
        self._listeners.pop((host, port), None)

    def _find(self, host: str, port: int) -> MemoryListener | None:
        return self._listeners.get((host, port))


DEFAULT_NETWORK = MemoryNetwork()
"""The network that `create_transport("memory", ...)` uses."""


class MemoryListener(Listener):
    """Accepts in-memory connections for a `MemoryTransport`."""

    transport_name = "memory"

    def __init__(
        self,
        *,
        transport: MemoryTransport,
        peer_role: PeerRole | None,
        require_client_certificate: bool,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(limits=transport.config.limits, loop=loop)
        self.transport = transport
        """The transport that listens."""
        self.peer_role = peer_role
        """Who connects."""
        self.require_client_certificate = require_client_certificate
        """Whether clients must present a node identity."""

    async def _stop_listening(self) -> None:
        self.transport.network._unbind(self.host, self.port)


class MemoryTransport(Transport):
    """Connections over in-memory pipes, with the same interface and bounds as TLS and QUIC."""

    name = "memory"

    def __init__(
        self,
        credentials: Credentials,
        *,
        network: MemoryNetwork | None = None,
        config: MemoryTransportConfig | None = None,
    ) -> None:
        require_assertions()
        self.credentials = credentials
        """What this node presents (its node id) and trusts (its CA file)."""
        self.network = network if network is not None else DEFAULT_NETWORK
        """Where listeners are found."""
        self.config = config if config is not None else MemoryTransportConfig()
        """Settings and bounds."""
        self.receive_budget = ReceiveBudget(self.config.limits.partial_frames_bytes_max)
        """What every connection of this transport holds of frames not yet received whole."""

    async def listen(
        self,
        host: str,
        port: int,
        *,
        peer_role: PeerRole | None = PeerRole.CLIENT,
        require_client_certificate: bool = False,
    ) -> MemoryListener:
        if self.credentials.node_id is None:
            raise TransportError("a listening node needs a node identity")
        listener = MemoryListener(
            transport=self,
            peer_role=peer_role,
            require_client_certificate=require_client_certificate,
            loop=asyncio.get_running_loop(),
        )
        listener.host = host
        listener.port = self.network._bind(host, port, listener)
        return listener

    async def connect(
        self,
        host: str,
        port: int,
        *,
        server_id: str,
        peer_role: PeerRole | None = PeerRole.SERVER,
    ) -> MemoryConnection:
        listener = self.network._find(host, port)
        if listener is None:
            raise TransportError(f"cannot connect to {host}:{port}: connection refused")
        server_credentials = listener.transport.credentials
        problem = _handshake_problem(self.credentials, server_credentials, server_id, listener)
        if problem is not None:
            kind = CertificateNotVerifiedError if problem == _ANOTHER_CA else HandshakeError
            raise kind(f"{server_id} at {host}:{port}: {problem}")
        loop = asyncio.get_running_loop()
        client = MemoryConnection(
            is_client=True,
            limits=self.config.limits,
            loop=loop,
            peer_role=peer_role,
            budget=self.receive_budget,
        )
        server = MemoryConnection(
            is_client=False,
            limits=listener.transport.config.limits,
            loop=loop,
            peer_role=listener.peer_role,
            budget=listener.transport.receive_budget,
        )
        client.peer_id = server_credentials.node_id
        server.peer_id = self.credentials.node_id
        client_end = _PipeEnd(loop, client, (f"client-of-{host}", port), self.config)
        server_end = _PipeEnd(loop, server, (host, port), listener.transport.config)
        client_end.peer, server_end.peer = server_end, client_end
        server.connection_made(server_end)
        client.connection_made(client_end)
        listener._offer(server)
        await asyncio.sleep(0)  # A real handshake yields to the loop; so does this one.
        return client


_ANOTHER_CA = "certificate issued by another CA"


def _handshake_problem(
    client: Credentials, server: Credentials, server_id: str, listener: MemoryListener
) -> str | None:
    """What a TLS handshake between these credentials would fail on, or None."""
    if client.ca_certificate_path.resolve() != server.ca_certificate_path.resolve():
        return _ANOTHER_CA
    if server.node_id != server_id:
        return f"certificate is for {server.node_id!r}, not {server_id!r}"
    if listener.require_client_certificate and client.node_id is None:
        return "the listener requires a client certificate"
    return None


class _PipeEnd(asyncio.Transport):
    """One end of an in-memory byte pipe, with socket-like flow control."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: StreamConnection,
        address: tuple[str, int],
        config: MemoryTransportConfig,
    ) -> None:
        super().__init__()
        self.peer: _PipeEnd | None = None
        self._loop = loop
        self._protocol = protocol
        self._address = address
        self._chunk_bytes = config.read_chunk_bytes
        self._inbound: deque[bytes] = deque()
        self._inbound_bytes = 0
        self._inbound_eof = False
        self._reading = True
        self._delivery: asyncio.Handle | None = None
        self._closing = False
        self._lost = False
        self._high_water = 64 << 10
        self._low_water = 16 << 10
        self._writing_paused = False

    # -- asyncio.Transport ---------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sockname":
            return self._address
        if name == "peername":
            return self.peer._address if self.peer is not None else default
        return default

    def is_closing(self) -> bool:
        return self._closing

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high_water = high if high is not None else 64 << 10
        self._low_water = low if low is not None else self._high_water // 4

    def get_write_buffer_size(self) -> int:
        return self.peer._inbound_bytes if self.peer is not None else 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        peer = self.peer
        if self._closing or peer is None or peer._lost:
            return
        peer._enqueue(bytes(data))
        if not self._writing_paused and self.get_write_buffer_size() > self._high_water:
            self._writing_paused = True
            self._protocol.pause_writing()

    def pause_reading(self) -> None:
        self._reading = False

    def resume_reading(self) -> None:
        self._reading = True
        self._schedule_delivery()

    def is_reading(self) -> bool:
        return self._reading

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._reading = False
        if self.peer is not None and not self.peer._lost:
            self.peer._enqueue_eof()
        self._finish_close()

    def abort(self) -> None:
        self._closing = True
        peer = self.peer
        if peer is not None and not peer._lost:
            peer._inbound.clear()
            peer._inbound_bytes = 0
            peer._closing = True
            peer._lose(ConnectionResetError("connection reset by peer"))
        self._lose(None)

    # -- the pipe ------------------------------------------------------------------------

    def _enqueue(self, data: bytes) -> None:
        self._inbound.append(data)
        self._inbound_bytes += len(data)
        self._schedule_delivery()

    def _enqueue_eof(self) -> None:
        self._inbound_eof = True
        self._schedule_delivery()

    def _schedule_delivery(self) -> None:
        if self._delivery is None and not self._lost:
            self._delivery = self._loop.call_soon(self._deliver)

    def _deliver(self) -> None:
        """Hand inbound bytes to the protocol, one read-sized chunk per turn, as a socket would."""
        self._delivery = None
        if self._lost or not self._reading:
            return
        if self._inbound:
            data = self._take_chunk()
            self._protocol.data_received(data)
            self._peer_buffer_shrank()
            self._schedule_delivery()
            return
        if self._inbound_eof:
            self._inbound_eof = False
            keep_open = self._protocol.eof_received()
            if not keep_open:
                self.close()

    def _take_chunk(self) -> bytes:
        chunk = bytearray()
        while self._inbound and len(chunk) < self._chunk_bytes:
            head = self._inbound.popleft()
            room = self._chunk_bytes - len(chunk)
            if len(head) > room:
                self._inbound.appendleft(head[room:])
                head = head[:room]
            chunk += head
        self._inbound_bytes -= len(chunk)
        return bytes(chunk)

    def _peer_buffer_shrank(self) -> None:
        writer = self.peer
        if writer is None or writer._lost:
            return
        if writer._closing:
            writer._finish_close()
        elif writer._writing_paused and self._inbound_bytes <= writer._low_water:
            writer._writing_paused = False
            writer._protocol.resume_writing()

    def _finish_close(self) -> None:
        """A closing end is gone once the peer has taken every byte it wrote (or is gone)."""
        peer = self.peer
        if peer is not None and peer._inbound_bytes and not peer._lost:
            return  # The peer's next delivery calls this again.
        self._lose(None)

    def _lose(self, error: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        if self._delivery is not None:
            self._delivery.cancel()
            self._delivery = None
        self._loop.call_soon(self._protocol.connection_lost, error)
        peer = self.peer
        if peer is not None and peer._closing:
            peer._finish_close()  # It waited for this end to take its bytes; it never will.


register_transport("memory", MemoryTransport)
