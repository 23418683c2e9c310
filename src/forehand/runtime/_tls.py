"""The TLS 1.3 over TCP binding of `forehand/1` (docs/PROTOCOL.md s.4.2), on asyncio and ssl.

TLS is always on. Both sides require TLS 1.3 and offer only ALPN `forehand/1`; certificates
verify against the cluster CA alone (never the system store), the server's for the `server_id`
the client asked for. Python's ssl module completes a handshake whose ALPN offers do not
overlap (OpenSSL's callback answers "no ack"), so each side checks the negotiated protocol right
after the handshake and closes the connection, before any application byte, when it is not
`forehand/1`. A listener may demand client certificates (mutual TLS for cluster-internal links);
otherwise a client certificate, when presented, is verified and names the peer. A listener
accepts TCP connections itself and holds every TLS handshake under way, at most
`ConnectionLimits.handshakes_max` of them (see `TLSListener`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from forehand._peer_log import PEER_CAUSED
from forehand.errors import ConfigError
from forehand.runtime._stream import StreamConnection, _address
from forehand.runtime._tcp_info import tcp_path_stats
from forehand.runtime.loop import require_assertions
from forehand.runtime.transport import (
    ALPN,
    CertificateNotVerifiedError,
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

_log = logging.getLogger("forehand.runtime.transport")

_ACCEPT_RETRY_DELAY_MS = 1_000
"""How long a listener that cannot accept (out of file descriptors, of memory) waits before
trying again, as asyncio's own servers do."""
_ACCEPT_CONNECTION_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ENETDOWN",
        "EPROTO",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",
    )
    if hasattr(errno, name)
)
"""The accept errors that concern one connection: an error pending on it, which Linux's
accept(2) passes on (its manual lists these for TCP, to retry at once), or a firewall's refusal.
Any other (out of file descriptors or memory; EINVAL or EBADF, a socket that no longer listens)
comes back on the next call too, so the listener waits before trying again, as asyncio's
servers wait when out of a resource, rather than retrying at once for good."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSTransportConfig:
    """Settings of the TLS 1.3 over TCP transport."""

    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    """The bounds of every connection."""
    handshake_timeout_ms: int = 10_000
    """A TCP connect plus TLS handshake that takes longer fails; a listener aborts a handshake
    not completed by then, freeing its slot under `limits.handshakes_max`."""
    listen_backlog: int = 512
    """Connections the kernel queues before `accept`; a listener also accepts at most this many
    in one turn of the event loop."""

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
    """Accepts TLS connections for a `TLSTransport`.

    The listener accepts TCP connections itself and runs each one's TLS handshake in a task it
    keeps (`loop.connect_accepted_socket`), so that it holds every handshake under way. Each
    holds a socket and the TLS layer's state and buffers before any peer is authenticated, so
    at most `limits.handshakes_max` are under way at once: a connection accepted at the bound
    aborts the oldest handshake under way, and a handshake not completed within
    `handshake_timeout_ms` is aborted too; one that fails frees its slot at once. Evicting the
    oldest rather than refusing the newest keeps a flood of TCP connections that never complete
    a handshake from locking real clients out: a real handshake completes in a round trip or
    two, long before `handshakes_max` newer connections push it out at any flood rate short of
    `handshakes_max` per round trip. A handshake that completes while the listener holds
    `connections_max` connections is closed with LIMIT_EXCEEDED, as on every transport.
    """

    transport_name = "tls"

    def __init__(
        self,
        *,
        limits: ConnectionLimits,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        peer_role: PeerRole | None,
        budget: ReceiveBudget,
        handshake_timeout_ms: int = 10_000,
        accepts_per_turn_max: int = 512,
        certified_peer_wire: WireConfig | None = None,
        certified_peer_budget: ReceiveBudget | None = None,
    ) -> None:
        super().__init__(limits=limits, loop=loop)
        self._context = context
        self._peer_role = peer_role
        self._budget = budget
        self._handshake_timeout_s = handshake_timeout_ms / 1000
        self._accepts_per_turn_max = accepts_per_turn_max
        self._certified_peer_wire = certified_peer_wire
        self._certified_peer_budget = certified_peer_budget
        self._sockets: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._handshakes: dict[_Handshake, asyncio.TimerHandle] = {}
        self.handshakes_timed_out_count = 0
        """Handshakes aborted because they did not complete within `handshake_timeout_ms`."""

    @property
    def handshake_count(self) -> int:
        """Handshakes under way (at most `handshakes_max`), not yet connections."""
        return len(self._handshakes)

    def _serve(self, sockets: list[socket.socket]) -> None:
        """Accept connections on `sockets` (bound, listening, non-blocking) from now on; the
        first one's address is the listener's."""
        self._sockets = sockets
        self.host, self.port = sockets[0].getsockname()[:2]
        self._accepting = [self._loop.create_task(self._accept(each)) for each in sockets]

    async def _accept(self, listening: socket.socket) -> None:
        """Accept TCP connections until the listener closes. Each wait for the socket to be
        readable is followed by up to `accepts_per_turn_max` accepts without waiting, as
        asyncio's own servers do, so that a flood does not keep real clients in a full backlog;
        then the loop gets a turn."""
        while True:
            try:
                self._accepted(*await self._loop.sock_accept(listening))
                for _ in range(self._accepts_per_turn_max - 1):
                    self._accepted(*listening.accept())
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                pass  # The backlog is empty, or a peer left while in it.
            except OSError as error:
                if error.errno in _ACCEPT_CONNECTION_ERRORS:
                    # One connection's trouble (a protocol error pending on it, a firewall's
                    # refusal): that connection is gone, the next may be accepted at once.
                    _log.info(
                        "TLS listener on %s:%d: accept failed: %s",
                        *self._where,
                        error,
                        extra=PEER_CAUSED,
                    )
                else:
                    await self._accept_later(error)
            except Exception:
                # A fault of this listener's own code for one connection must not end accepting
                # for good: the listener would go on existing and refuse nobody, silently.
                _log.exception("TLS listener on %s:%d: accepting a connection failed", *self._where)
            await asyncio.sleep(0)

    async def _accept_later(self, error: OSError) -> None:
        """Log that the listener cannot accept, and wait before it tries again."""
        _log.warning(
            "TLS listener on %s:%d cannot accept (%s): trying again in %d ms",
            *self._where,
            error,
            _ACCEPT_RETRY_DELAY_MS,
        )
        await asyncio.sleep(_ACCEPT_RETRY_DELAY_MS / 1000)

    @property
    def _where(self) -> tuple[str, int]:
        return self.host, self.port

    def _accepted(self, connection: socket.socket, address: Any) -> None:
        """Start the TLS handshake of a TCP connection, after making room for it."""
        connection.setblocking(False)
        self._make_room_for_handshake()
        handshake = _Handshake(connection, _address(address))
        self._handshakes[handshake] = self._loop.call_later(
            self._handshake_timeout_s, self._handshake_timed_out, handshake
        )
        handshake.task = self._loop.create_task(self._complete(handshake))

    async def _complete(self, handshake: _Handshake) -> None:
        """Run the handshake; the TLS layer makes the connection (`_made`) once it completes."""
        handshake.started = True
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._connection(handshake),
                handshake.socket,
                ssl=self._context,
                ssl_handshake_timeout=self._handshake_timeout_s,
            )
        except OSError:
            # The peer failed the handshake (not TLS 1.3, a certificate not verified, an alert)
            # or left: it may not speak TLS, so nothing is sent to it and nothing is logged (a
            # flood would fill the log); the TLS layer closed the connection.
            pass
        finally:
            self._handshake_over(handshake)

    def _connection(self, handshake: _Handshake) -> TLSConnection:
        return TLSConnection(
            is_client=False,
            limits=self._limits,
            loop=self._loop,
            peer_role=self._peer_role,
            on_made=lambda connection: self._made(connection, handshake),
            budget=self._budget,
        )

    def _make_room_for_handshake(self) -> None:
        """Abort the oldest handshakes under way until a new one fits under `handshakes_max`
        (logged once a stretch: `Listener._handshakes_at_bound`)."""
        handshakes_max = self._limits.handshakes_max
        under_way = len(self._handshakes)
        if not self._handshakes_at_bound(under_way, name="TLS", newcomer="connection"):
            return
        while len(self._handshakes) >= handshakes_max:
            self.handshakes_evicted_count += 1
            self._end_handshake(next(iter(self._handshakes)))

    def _handshake_over(self, handshake: _Handshake) -> None:
        """The handshake completed or failed: its slot is free (a connection it made is
        counted from now on as one this listener holds)."""
        timer = self._handshakes.pop(handshake, None)
        if timer is not None:
            timer.cancel()

    def _handshake_timed_out(self, handshake: _Handshake) -> None:
        if handshake not in self._handshakes:
            return
        self.handshakes_timed_out_count += 1
        address = handshake.peer_address
        where = f"{address[0]}:{address[1]}" if address is not None else "an unknown address"
        _log.info(
            "closing the TLS handshake of %s: not completed within handshake_timeout_ms=%d",
            where,
            round(self._handshake_timeout_s * 1000),
            extra=PEER_CAUSED,
        )
        self._end_handshake(handshake)

    def _end_handshake(self, handshake: _Handshake) -> None:
        """Abort a handshake under way: cancelling its task makes `connect_accepted_socket`
        close its transport, which aborts the connection mid-handshake; a task that has not
        started never handed the socket over, so it is closed here."""
        self._handshakes.pop(handshake).cancel()
        handshake.task.cancel()
        if not handshake.started:
            handshake.socket.close()

    def _made(self, connection: StreamConnection, handshake: _Handshake) -> None:
        assert isinstance(connection, TLSConnection)
        self._handshake_over(handshake)
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

    async def close(self) -> None:
        # Accepting stops and the handshakes under way end first, so that none completes and
        # is offered while the listener waits for the connections it holds to close.
        await self._stop_listening()
        await super().close()

    async def _stop_listening(self) -> None:
        accepting, self._accepting = self._accepting, []
        for task in accepting:
            task.cancel()
        await asyncio.gather(*accepting, return_exceptions=True)
        for listening in self._sockets:
            listening.close()
        tasks = [handshake.task for handshake in self._handshakes]
        while self._handshakes:
            self._end_handshake(next(iter(self._handshakes)))
        await asyncio.gather(*tasks, return_exceptions=True)


class _Handshake:
    """A TCP connection a listener accepted, whose TLS handshake is under way."""

    __slots__ = ("peer_address", "socket", "started", "task")

    task: asyncio.Task[None]
    """The listener's task running the handshake (set once it is created)."""

    def __init__(self, connection: socket.socket, peer_address: tuple[str, int] | None) -> None:
        self.socket = connection
        """The accepted socket; the TLS layer's transport owns it once the task started."""
        self.peer_address = peer_address
        """The peer's (host, port), for logs."""
        self.started = False
        """Whether the task has started (handed the socket to the TLS layer)."""


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
            context=context,
            peer_role=peer_role,
            budget=self.receive_budget,
            handshake_timeout_ms=self.config.handshake_timeout_ms,
            accepts_per_turn_max=self.config.listen_backlog,
            certified_peer_wire=certified_peer_wire,
            certified_peer_budget=self.certified_peer_budget,
        )
        try:
            sockets = await _listening_sockets(loop, host, port, self.config.listen_backlog)
        except OSError as error:
            raise TransportError(f"cannot listen on {host}:{port}: {error}") from error
        listener._serve(sockets)
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
            raise CertificateNotVerifiedError(
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


async def _listening_sockets(
    loop: asyncio.AbstractEventLoop, host: str, port: int, backlog: int
) -> list[socket.socket]:
    """Non-blocking TCP sockets listening on every address `host` resolves to (every interface
    for ""), bound as `loop.create_server` binds them: an address of a family the system has no
    sockets for (IPv6 on a kernel without it, though names still resolve to IPv6 addresses) is
    skipped, as it skips them; OSError when no address is left."""
    addresses = await loop.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    lacking: OSError | None = None
    try:
        for family, kind, number, _, address in dict.fromkeys(addresses):
            try:
                listening = socket.socket(family, kind, number)
            except OSError as error:
                lacking = error
                continue
            sockets.append(listening)
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                # IPv4 has a socket of its own when `host` resolves to both families.
                listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                listening.bind(address)
            except OSError as error:
                # The reason asyncio's servers give, which operators and tests read.
                reason = f"error while attempting to bind on address {address!r}"
                why = (error.strerror or str(error)).lower()
                raise OSError(error.errno, f"{reason}: {why}") from None
            listening.listen(backlog)
            listening.setblocking(False)
    except OSError:
        for listening in sockets:
            listening.close()
        raise
    if not sockets:
        raise lacking if lacking is not None else OSError(f"{host!r} resolves to no address")
    return sockets


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
