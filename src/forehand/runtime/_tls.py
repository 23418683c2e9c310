"""The TLS 1.3 over TCP binding of `forehand/1` (docs/PROTOCOL.md s.4.2), on asyncio and ssl.

TLS is always on. Both sides require TLS 1.3 and offer only ALPN `forehand/1`; certificates
verify against the cluster CA alone (never the system store), the server's for the `server_id`
the client asked for. Python's ssl module completes a handshake whose ALPN offers do not
overlap (OpenSSL's callback answers "no ack"), so each side checks the negotiated protocol right
after the handshake and closes the connection, before any application byte, when it is not
`forehand/1`. A listener may demand client certificates (mutual TLS for cluster-internal links);
otherwise a client certificate, when presented, is verified and names the peer.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from forehand.errors import ConfigError
from forehand.runtime._stream import StreamConnection
from forehand.runtime._tcp_info import tcp_path_stats
from forehand.runtime.loop import require_assertions
from forehand.runtime.transport import (
    ALPN,
    ConnectionLimits,
    Credentials,
    HandshakeError,
    Listener,
    PathStats,
    ReceiveBudget,
    Transport,
    TransportError,
    register_transport,
)
from forehand.wire import PeerRole, WireConfig

__all__ = ["TLSConnection", "TLSListener", "TLSTransport", "TLSTransportConfig"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSTransportConfig:
    """Settings of the TLS 1.3 over TCP transport."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """The bounds of every connection."""
    handshake_timeout_ms: int = 10_000
    """A TCP connect plus TLS handshake that takes longer fails."""
    listen_backlog: int = 512
    """Connections the kernel queues before `accept`."""

    def __post_init__(self) -> None:
        if self.handshake_timeout_ms < 1 or self.listen_backlog < 1:
            raise ConfigError("TLSTransportConfig timeouts and backlog must be positive")


class TLSConnection(StreamConnection):
    """A `forehand/1` connection over TLS 1.3 on TCP."""

    transport_name = "tls"

    def handshake_problem(self) -> str | None:
        """Why the finished handshake is not acceptable, or None; sets `peer_id` when it is."""
        transport = self._transport
        assert transport is not None
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            return "not a TLS connection"
        selected = ssl_object.selected_alpn_protocol()
        if selected != ALPN:
            return f"ALPN {ALPN} was not negotiated (got {selected!r})"
        if ssl_object.version() != "TLSv1.3":
            return f"TLS 1.3 was not negotiated (got {ssl_object.version()!r})"
        self.alpn = selected
        self.peer_id = _common_name(ssl_object.getpeercert())
        return None

    def path_stats(self) -> PathStats:
        transport = self._transport
        buffered = self._pending_bytes
        if transport is None:
            return PathStats(source="none", send_buffer_bytes=buffered)
        buffered += transport.get_write_buffer_size()
        return tcp_path_stats(transport.get_extra_info("socket"), send_buffer_bytes=buffered)


class TLSListener(Listener):
    """Accepts TLS connections for a `TLSTransport`."""

    def __init__(
        self,
        *,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
        certified_peer_wire: WireConfig | None = None,
        certified_peer_budget: ReceiveBudget | None = None,
    ) -> None:
        super().__init__(limits=limits, loop=loop)
        self._server: asyncio.Server | None = None
        self._certified_peer_wire = certified_peer_wire
        self._certified_peer_budget = certified_peer_budget

    def _made(self, connection: StreamConnection) -> None:
        assert isinstance(connection, TLSConnection)
        problem = connection.handshake_problem()
        if problem is not None:
            # The peer does not speak forehand/1: no ERROR frame, only the close.
            connection._refuse(problem)
            return
        if self._certified_peer_wire is not None and connection.peer_id is not None:
            # A peer with a cluster certificate (a node, an operator) is not a client: its
            # frames are bounded by the cluster's bounds, not the client-facing ones, and its
            # partial frames by a budget of their own, which clients cannot exhaust.
            connection._decode_with(self._certified_peer_wire, budget=self._certified_peer_budget)
        elif self._certified_peer_wire is not None:
            # No certificate: a client, held to what clients may send (a server's frame from it
            # is FRAME_UNEXPECTED, as on QUIC, not a body that fails to decode).
            connection._decode_with(connection._wire, sender=PeerRole.CLIENT)
        self._offer(connection)

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class TLSTransport(Transport):
    """TLS 1.3 over TCP with ALPN `forehand/1`, verified against the cluster CA."""

    name = "tls"

    def __init__(
        self, credentials: Credentials, *, config: TLSTransportConfig | None = None
    ) -> None:
        require_assertions()
        self.credentials = credentials
        """What this node presents and trusts."""
        self.config = config if config is not None else TLSTransportConfig()
        """Settings and bounds."""
        self._client_context = _client_context(credentials)
        self.receive_budget = ReceiveBudget(self.config.limits.partial_frames_bytes_max)
        """What every connection of this transport holds of frames not yet received whole."""
        self.certified_peer_budget: ReceiveBudget | None = None
        """The same, for the peers a listener with `certified_peer_wire` decodes with it."""

    async def listen(
        self,
        host: str,
        port: int,
        *,
        peer_role: PeerRole | None = PeerRole.CLIENT,
        require_client_certificate: bool = False,
        certified_peer_wire: WireConfig | None = None,
    ) -> TLSListener:
        """Accept connections; with `certified_peer_wire`, one whose peer presented a
        certificate the cluster CA issued decodes with it instead of `config.limits.wire`, and
        those peers' partial frames share `certified_peer_budget`, room for four of their
        longest frames (as `CLUSTER_LIMITS`), or `partial_frames_bytes_max` if that is more."""
        context = _server_context(self.credentials, require_client_certificate)
        loop = asyncio.get_running_loop()
        limits = self.config.limits
        if certified_peer_wire is not None and self.certified_peer_budget is None:
            self.certified_peer_budget = ReceiveBudget(
                max(limits.partial_frames_bytes_max, 4 * certified_peer_wire.buffered_bytes_max)
            )
        listener = TLSListener(
            limits=limits,
            loop=loop,
            certified_peer_wire=certified_peer_wire,
            certified_peer_budget=self.certified_peer_budget,
        )
        budget = self.receive_budget

        def connection() -> TLSConnection:
            return TLSConnection(
                is_client=False,
                limits=limits,
                loop=loop,
                peer_role=peer_role,
                on_made=listener._made,
                budget=budget,
            )

        try:
            server = await loop.create_server(
                connection,
                host,
                port,
                ssl=context,
                backlog=self.config.listen_backlog,
                ssl_handshake_timeout=self.config.handshake_timeout_ms / 1000,
            )
        except OSError as error:
            raise TransportError(f"cannot listen on {host}:{port}: {error}") from error
        listener._server = server
        listener.host, listener.port = server.sockets[0].getsockname()[:2]
        return listener

    async def connect(
        self,
        host: str,
        port: int,
        *,
        server_id: str,
        peer_role: PeerRole | None = PeerRole.SERVER,
    ) -> TLSConnection:
        loop = asyncio.get_running_loop()
        limits = self.config.limits
        try:
            _, connection = await loop.create_connection(
                lambda: TLSConnection(
                    is_client=True,
                    limits=limits,
                    loop=loop,
                    peer_role=peer_role,
                    budget=self.receive_budget,
                ),
                host,
                port,
                ssl=self._client_context,
                server_hostname=server_id,
                ssl_handshake_timeout=self.config.handshake_timeout_ms / 1000,
            )
        except ssl.SSLCertVerificationError as error:
            raise HandshakeError(
                f"certificate of {server_id} at {host}:{port} not verified: {error.verify_message}"
            ) from error
        except ssl.SSLError as error:
            raise HandshakeError(f"TLS handshake with {host}:{port} failed: {error}") from error
        except (OSError, TimeoutError) as error:
            raise TransportError(f"cannot connect to {host}:{port}: {error!r}") from error
        problem = connection.handshake_problem()
        if problem is not None:
            connection._refuse(problem)
            await connection.wait_closed()
            raise HandshakeError(f"{server_id} at {host}:{port}: {problem}")
        return connection


def _base_context(purpose: int, credentials: Credentials) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols([ALPN])
    context.load_verify_locations(cafile=credentials.ca_certificate_path)
    if credentials.certificate_path is not None:
        context.load_cert_chain(credentials.certificate_path, credentials.private_key_path)
    return context


def _client_context(credentials: Credentials) -> ssl.SSLContext:
    """Verify the server against the cluster CA for its server id; present ours if we have one."""
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, credentials)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    return context


def _server_context(credentials: Credentials, require_client_certificate: bool) -> ssl.SSLContext:
    """Present our certificate; verify a client's against the cluster CA, demanded or not."""
    if credentials.certificate_path is None:
        raise ConfigError("a listening node needs a certificate (Credentials.for_node)")
    context = _base_context(ssl.PROTOCOL_TLS_SERVER, credentials)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_OPTIONAL
    return context


def _common_name(certificate: object) -> str | None:
    """The subject CN of a verified peer certificate as `getpeercert()` returns it."""
    if not isinstance(certificate, dict):
        return None
    for relative_name in certificate.get("subject", ()):
        for key, value in relative_name:
            if key == "commonName":
                return str(value)
    return None


register_transport("tls", TLSTransport)
