"""The `Transport` interface behaves the same over TLS, QUIC and memory."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest

from forehand.errors import ConfigError, LocalProtocolError
from forehand.runtime import (
    CertificateNotVerifiedError,
    CloseInitiator,
    ClusterCertificates,
    Connection,
    ConnectionClosedError,
    HandshakeError,
    Listener,
    MemoryNetwork,
    Transport,
    TransportError,
    create_transport,
    transport_names,
)
from forehand.runtime.transport import (
    CLUSTER_LIMITS,
    CLUSTER_WIRE,
    ConnectionLimits,
    error_frame,
)
from forehand.wire import (
    ClusterMessage,
    Credential,
    Error,
    ErrorCode,
    Frame,
    Hello,
    PeerRole,
    Ping,
    Pong,
    Request,
    Response,
    ResponseStatus,
    Welcome,
    WireConfig,
    encode_frame,
)

if TYPE_CHECKING:
    from tests.runtime._runtime_helpers import (
        HOST,
        TRANSPORT_KINDS,
        client_credentials,
        make_transport,
        node_credentials,
        run_test,
    )
else:
    from _runtime_helpers import (
        HOST,
        TRANSPORT_KINDS,
        client_credentials,
        make_transport,
        node_credentials,
        run_test,
    )

SESSION_ID = bytes(range(16))
CLIENT_ID = bytes(range(16, 32))


def request(request_id: int, payload: bytes = b"payload") -> Request:
    return Request(
        request_id=request_id,
        session_id=SESSION_ID,
        part="cart",
        op="get",
        map_version=7,
        payload=payload,
    )


def answer(frame: Frame) -> Frame:
    """What the echo server sends back for each frame."""
    if isinstance(frame, Request):
        return Response(
            request_id=frame.request_id,
            session_id=frame.session_id,
            status=ResponseStatus.OK,
            map_version=frame.map_version,
            payload=frame.payload,
        )
    if isinstance(frame, Ping):
        return Pong(sequence=frame.sequence, sent_us=frame.sent_us)
    return Pong(sequence=0, sent_us=0)


class Pair:
    """A server transport, a client transport and the listener of the server."""

    def __init__(self, server: Transport, client: Transport, listener: Listener) -> None:
        self.server = server
        self.client = client
        self.listener = listener
        self.accepted: list[Connection] = []

    async def connect(self) -> Connection:
        return await self.client.connect(HOST, self.listener.port, server_id="s1")


@asynccontextmanager
async def echo_pair(
    kind: str, certs: ClusterCertificates, limits: ConnectionLimits | None = None
) -> AsyncIterator[Pair]:
    """An echo server on `kind` (answering each frame) and a client transport for it."""
    network = MemoryNetwork()
    extra = {} if limits is None else {"config": _config(kind, limits)}
    server = make_transport(kind, node_credentials(certs, "s1"), network, **extra)
    client = make_transport(kind, client_credentials(certs), network, **extra)
    listener = await server.listen(HOST, 0)
    pair = Pair(server, client, listener)

    async def serve() -> None:
        async with asyncio.TaskGroup() as group:
            async for connection in listener:
                pair.accepted.append(connection)
                group.create_task(echo(connection))

    server_task = asyncio.create_task(serve())
    try:
        yield pair
    finally:
        await listener.close()
        await server_task


async def echo(connection: Connection) -> None:
    async for frame in connection:
        if not isinstance(frame, Error) and not connection.is_closed:
            connection.send_frame(answer(frame))


def _config(kind: str, limits: ConnectionLimits) -> object:
    from forehand.runtime import MemoryTransportConfig, QUICTransportConfig, TLSTransportConfig

    configs = {
        "tls": TLSTransportConfig,
        "quic": QUICTransportConfig,
        "memory": MemoryTransportConfig,
    }
    return configs[kind](limits=limits)


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_frames_round_trip(kind: str, certs: ClusterCertificates) -> None:
    """Control frames and requests reach the server and their answers come back, in order."""

    async def main() -> None:
        async with echo_pair(kind, certs) as pair:
            connection = await pair.connect()
            hello = Hello(
                versions=(1,), client_id=CLIENT_ID, credentials=(Credential(SESSION_ID, b"c"),)
            )
            connection.send_frames([hello, Ping(sequence=3, sent_us=9, telemetry=())])
            assert await connection.receive() == Pong(sequence=0, sent_us=0)
            assert await connection.receive() == Pong(sequence=3, sent_us=9)
            for request_id in range(1, 20):
                connection.send_frame(request(request_id, bytes([request_id]) * request_id))
                response = await connection.receive()
                assert isinstance(response, Response)
                assert response.request_id == request_id
                assert response.payload == bytes([request_id]) * request_id
            assert connection.peer_id == "s1"
            assert connection.alpn == "forehand/1"
            assert connection.peer_address is not None
            assert connection.peer_address[1] == pair.listener.port
            connection.close()
            info = await connection.wait_closed()
            assert info.initiator is CloseInitiator.LOCAL

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_pipelined_requests_all_answered(kind: str, certs: ClusterCertificates) -> None:
    """Hundreds of requests in flight on one connection are all answered, each exactly once."""

    async def main() -> None:
        async with echo_pair(kind, certs) as pair:
            connection = await pair.connect()
            count = 500
            connection.send_frames([request(request_id) for request_id in range(count)])
            seen: set[int] = set()
            while len(seen) < count:
                for frame in await connection.receive_frames():
                    assert isinstance(frame, Response)
                    assert frame.request_id not in seen
                    seen.add(frame.request_id)
            assert seen == set(range(count))
            connection.close()
            await connection.wait_closed()

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_many_concurrent_connections(kind: str, certs: ClusterCertificates) -> None:
    """Thirty clients at once each get their own answers; the listener counts them all."""

    async def client(pair: Pair, index: int) -> list[int]:
        connection = await pair.connect()
        got = []
        for step in range(5):
            request_id = index * 100 + step
            connection.send_frame(request(request_id, str(index).encode()))
            response = await connection.receive()
            assert isinstance(response, Response)
            assert response.payload == str(index).encode()
            got.append(response.request_id)
        connection.close()
        await connection.wait_closed()
        return got

    async def main() -> None:
        async with echo_pair(kind, certs) as pair:
            results = await asyncio.gather(*(client(pair, index) for index in range(30)))
            assert len(pair.accepted) == 30
            for index, got in enumerate(results):
                assert got == [index * 100 + step for step in range(5)]

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_frame_handler_gets_frames_in_order(kind: str, certs: ClusterCertificates) -> None:
    """With a frame handler set, answers arrive through it in order, not through receive()."""

    async def main() -> None:
        async with echo_pair(kind, certs) as pair:
            connection = await pair.connect()
            got: list[int] = []
            done = asyncio.get_running_loop().create_future()

            def handle(frames: list[Frame]) -> None:
                for frame in frames:
                    assert isinstance(frame, Response)
                    got.append(frame.request_id)
                if len(got) == 100:
                    done.set_result(None)

            connection.set_frame_handler(handle)
            connection.send_frames([request(request_id) for request_id in range(100)])
            await done
            assert sorted(got) == list(range(100))
            if kind != "quic":  # One ordered stream: answers keep the request order.
                assert got == list(range(100))
            connection.close()
            await connection.wait_closed()

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_close_with_error_reaches_peer(kind: str, certs: ClusterCertificates) -> None:
    """close(code, reason) tells the peer both; the peer's connection ends as closed by the peer."""

    async def main() -> None:
        async with echo_pair(kind, certs) as pair:
            connection = await pair.connect()
            connection.send_frame(Ping(sequence=1, sent_us=1, telemetry=()))
            await connection.receive()
            connection.close(ErrorCode.LIMIT_EXCEEDED, "too many sessions")
            server_side = pair.accepted[0]
            info = await server_side.wait_closed()
            assert info.error_code == ErrorCode.LIMIT_EXCEEDED
            assert info.reason == "too many sessions"
            assert info.initiator is CloseInitiator.PEER
            with pytest.raises(ConnectionClosedError):
                connection.send_frame(Ping(sequence=2, sent_us=2, telemetry=()))
            assert (await connection.wait_closed()).initiator is CloseInitiator.LOCAL

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_listener_close_ends_every_connection(kind: str, certs: ClusterCertificates) -> None:
    """Closing the listener closes its connections; clients see the end and stop iterating."""

    async def main() -> None:
        network = MemoryNetwork()
        server = make_transport(kind, node_credentials(certs, "s1"), network)
        client = make_transport(kind, client_credentials(certs), network)
        listener = await server.listen(HOST, 0)
        connections = [await client.connect(HOST, listener.port, server_id="s1") for _ in range(3)]
        accepted = [await listener.accept() for _ in range(3)]
        assert listener.connection_count == 3
        await listener.close()
        assert all(connection.is_closed for connection in accepted)
        for connection in connections:
            async for _ in connection:
                pass
            info = await connection.wait_closed()
            assert info.initiator is not CloseInitiator.LOCAL
        with pytest.raises(TransportError):
            await listener.accept()
        with pytest.raises(TransportError):
            await client.connect(HOST, listener.port, server_id="s1")

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_wrong_server_id_refused(kind: str, certs: ClusterCertificates) -> None:
    """A server whose certificate is for s1 is refused when the client expects s2."""

    async def main() -> None:
        async with echo_pair(kind, certs) as pair:
            with pytest.raises(HandshakeError):
                await pair.client.connect(HOST, pair.listener.port, server_id="s2")
            connection = await pair.connect()  # The listener still serves the right name.
            connection.send_frame(request(1))
            assert isinstance(await connection.receive(), Response)
            connection.close()
            await connection.wait_closed()

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_certificate_of_another_ca_refused(
    kind: str, certs: ClusterCertificates, foreign_certs: ClusterCertificates
) -> None:
    """A server with a certificate from another CA is refused even though its name matches."""

    async def main() -> None:
        network = MemoryNetwork()
        impostor = make_transport(kind, node_credentials(foreign_certs, "s1"), network)
        client = make_transport(kind, client_credentials(certs), network)
        listener = await impostor.listen(HOST, 0)
        with pytest.raises(HandshakeError) as refused:
            await client.connect(HOST, listener.port, server_id="s1")
        # A configuration to fix, which the node driver warns of at once.
        assert isinstance(refused.value, CertificateNotVerifiedError), refused.value
        assert listener.connection_count == 0
        await listener.close()

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_connect_to_nothing_fails_cleanly(kind: str, certs: ClusterCertificates) -> None:
    """Connecting where nobody listens raises TransportError (not a library exception)."""

    async def main() -> None:
        from forehand.runtime import QUICTransportConfig

        extra: dict[str, object] = {}
        if kind == "quic":  # Nobody answers UDP: only the handshake timeout ends the attempt.
            extra["config"] = QUICTransportConfig(handshake_timeout_ms=300)
        client = make_transport(kind, client_credentials(certs), MemoryNetwork(), **extra)
        with pytest.raises(TransportError) as raised:
            await client.connect(HOST, 9, server_id="s1")
        if kind == "quic":
            # A QUIC client pointed at a TLS cluster sees this: the message says what it means.
            assert "nothing answers QUIC there" in str(raised.value)

    run_test(main())


def test_a_client_cut_off_before_hearing_anything_is_told_a_likely_cause(
    certs: ClusterCertificates,
) -> None:
    """A TLS client whose peer completes the handshake and ends the connection without a frame
    (as the TLS port of a QUIC cluster does to a client configured for TLS) is told the port
    may not serve its transport, where it was told only "peer ended the stream" before; a peer
    that said anything first keeps the plain reason."""

    async def main() -> None:
        credentials = node_credentials(certs, "s1")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        assert credentials.certificate_path is not None
        assert credentials.private_key_path is not None
        context.load_cert_chain(credentials.certificate_path, credentials.private_key_path)
        context.set_alpn_protocols(["forehand/1"])
        said: list[bytes] = [b"", encode_frame(Ping(sequence=1, sent_us=1))]

        async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(said.pop(0))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(hang_up, HOST, 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        client = make_transport("tls", client_credentials(certs), MemoryNetwork())
        reasons = []
        for _ in range(2):
            connection = await client.connect(HOST, port, server_id="s1")
            await connection.wait_closed()
            assert connection.close_info is not None
            reasons.append(connection.close_info.reason)
        server.close()
        await server.wait_closed()
        assert "before the peer sent anything" in reasons[0], reasons
        assert "before the peer sent anything" not in reasons[1], reasons

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_connections_over_the_bound_refused(kind: str, certs: ClusterCertificates) -> None:
    """A listener holding connections_max connections closes the next with LIMIT_EXCEEDED."""

    async def main() -> None:
        async with echo_pair(kind, certs, ConnectionLimits(connections_max=2)) as pair:
            kept = [await pair.connect() for _ in range(2)]
            extra = await pair.connect()
            info = await extra.wait_closed()
            assert info.error_code == ErrorCode.LIMIT_EXCEEDED
            for connection in kept:
                connection.send_frame(request(5))
                assert isinstance(await connection.receive(), Response)
                connection.close()
                await connection.wait_closed()

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_cluster_link_carries_cluster_frames(kind: str, certs: ClusterCertificates) -> None:
    """With peer_role CLUSTER_NODE both ways, CLUSTER_MESSAGE frames travel in both directions."""

    async def main() -> None:
        network = MemoryNetwork()
        manager = make_transport(kind, node_credentials(certs, "manager"), network)
        server = make_transport(kind, node_credentials(certs, "s1"), network)
        listener = await manager.listen(HOST, 0, peer_role=PeerRole.CLUSTER_NODE)
        link = await server.connect(
            HOST, listener.port, server_id="manager", peer_role=PeerRole.CLUSTER_NODE
        )
        accepted = await listener.accept()
        link.send_frame(ClusterMessage(kind=3, body=b"\x93\x01"))
        assert await accepted.receive() == ClusterMessage(kind=3, body=b"\x93\x01")
        accepted.send_frame(ClusterMessage(kind=4, body=b"ok"))
        assert await link.receive() == ClusterMessage(kind=4, body=b"ok")
        assert link.peer_id == "manager"
        link.close()
        await link.wait_closed()
        await listener.close()

    run_test(main())


@pytest.mark.parametrize("kind", TRANSPORT_KINDS)
def test_frame_from_wrong_sender_closes_only_that_connection(
    kind: str, certs: ClusterCertificates
) -> None:
    """A client that sends a server-only frame gets FRAME_UNEXPECTED; other clients go on."""

    async def main() -> None:
        async with echo_pair(kind, certs) as pair:
            good = await pair.connect()
            bad = await pair.connect()
            bad.send_frame(
                Welcome(
                    version=1,
                    server_id="s9",
                    map_version=1,
                    frame_bytes_max=16384,
                    idle_timeout_ms=1000,
                )
            )
            info = await bad.wait_closed()
            assert info.error_code == ErrorCode.FRAME_UNEXPECTED
            assert info.initiator is CloseInitiator.PEER
            good.send_frame(request(2))
            assert isinstance(await good.receive(), Response)
            good.close()
            await good.wait_closed()

    run_test(main())


def test_registry_builds_each_kind(certs: ClusterCertificates) -> None:
    """create_transport knows tls, quic and memory and rejects other names."""
    assert transport_names() == ["memory", "quic", "tls"]
    for name in transport_names():
        assert create_transport(name, credentials=client_credentials(certs)).name == name
    with pytest.raises(ConfigError):
        create_transport("carrier-pigeon", credentials=client_credentials(certs))


def test_limits_validate_their_order() -> None:
    """Low water must not exceed high water, nor high water the hard cap."""
    with pytest.raises(ConfigError):
        ConnectionLimits(send_buffer_low_water_bytes=10, send_buffer_high_water_bytes=5)
    with pytest.raises(ConfigError):
        ConnectionLimits(send_buffer_high_water_bytes=10, send_buffer_bytes_max=5)
    with pytest.raises(ConfigError):
        ConnectionLimits(receive_queue_frames_max=0)


def test_error_frame_reason_is_cut_to_the_bound() -> None:
    """An ERROR reason longer than message_bytes_max is cut at a character boundary."""
    wire = WireConfig(message_bytes_max=5)
    frame = error_frame(ErrorCode.FRAME_TOO_LARGE, "ééé", wire)
    assert frame.reason == "éé"
    assert error_frame(0x3F, "x", wire).code is ErrorCode.PROTOCOL_ERROR


def test_quic_server_may_not_send_requests(certs: ClusterCertificates) -> None:
    """Over QUIC a server that tries to send REQUEST gets LocalProtocolError: clients send them."""

    async def main() -> None:
        async with echo_pair("quic", certs) as pair:
            connection = await pair.connect()
            connection.send_frame(request(1))
            await connection.receive()
            with pytest.raises(LocalProtocolError):
                pair.accepted[0].send_frame(request(2))
            connection.close()
            await connection.wait_closed()

    run_test(main())


def test_handshakes_max_must_be_positive() -> None:
    """The bound on QUIC handshakes under way is a positive int, or a ConfigError."""
    for value in (0, -1):
        with pytest.raises(ConfigError, match="handshakes_max"):
            ConnectionLimits(handshakes_max=value)


def test_handshakes_unvalidated_max_is_between_0_and_handshakes_max() -> None:
    """The bound on QUIC handshakes of unvalidated peers is 0 (always Retry) to handshakes_max
    (Retry off), or a ConfigError saying which; unset, it is a quarter of handshakes_max."""
    with pytest.raises(ConfigError, match="handshakes_unvalidated_max must be an int of 0 or"):
        ConnectionLimits(handshakes_unvalidated_max=-1)
    with pytest.raises(ConfigError, match=r"must be at most handshakes_max=100 .* got 101"):
        ConnectionLimits(handshakes_max=100, handshakes_unvalidated_max=101)
    for value in (0, 100):
        limits = ConnectionLimits(handshakes_max=100, handshakes_unvalidated_max=value)
        assert limits.handshakes_unvalidated_bound == value
    assert ConnectionLimits().handshakes_unvalidated_bound == 250
    assert ConnectionLimits(handshakes_max=3).handshakes_unvalidated_bound == 0


def test_partial_frames_budget_holds_a_whole_frame() -> None:
    """partial_frames_bytes_max is positive and at least one longest frame, or a ConfigError;
    the cluster limits leave room for four of their frames."""
    wire = WireConfig(frame_bytes_max=1 << 20)
    for value in (0, wire.buffered_bytes_max - 1):
        with pytest.raises(ConfigError, match="partial_frames_bytes_max"):
            ConnectionLimits(wire=wire, partial_frames_bytes_max=value)
    assert ConnectionLimits(partial_frames_bytes_max=wire.buffered_bytes_max)
    assert CLUSTER_LIMITS.partial_frames_bytes_max == 4 * CLUSTER_WIRE.buffered_bytes_max


@pytest.mark.parametrize("kind", ["tls", "memory"])
def test_a_flood_of_frames_shares_the_event_loop(
    kind: str, certs: ClusterCertificates, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer sending tiny frames as fast as it can: the frame handler takes them a batch at a
    time and the event loop runs other work between batches, so one connection cannot hold the
    process (a PING flood over TLS froze a server past its failure timeout). With the turn's
    time budget at 0 every batch waits a turn; every frame still arrives, in order."""
    from forehand.runtime import _stream

    monkeypatch.setattr(_stream, "HANDLER_TURN_S", 0.0)
    count = 5_000

    async def main() -> None:
        network = MemoryNetwork()
        server = make_transport(kind, node_credentials(certs, "s1"), network)
        client = make_transport(kind, client_credentials(certs), network)
        listener = await server.listen(HOST, 0)
        turns = 0
        batches: list[tuple[int, int]] = []  # (loop turns so far, frames) per handler call
        got: list[int] = []
        done = asyncio.get_running_loop().create_future()

        async def ticker() -> None:
            nonlocal turns
            while not done.done():
                turns += 1
                await asyncio.sleep(0)

        def handle(frames: list[Frame]) -> None:
            batches.append((turns, len(frames)))
            got.extend(frame.sequence for frame in frames if isinstance(frame, Ping))
            if len(got) == count and not done.done():
                done.set_result(None)

        async def accept() -> Connection:
            async for connection in listener:
                connection.set_frame_handler(handle)
                return connection
            raise AssertionError("no connection")

        accepting = asyncio.create_task(accept())
        connection = await client.connect(HOST, listener.port, server_id="s1")
        accepted = await accepting
        ticking = asyncio.create_task(ticker())
        connection.send_frames([Ping(sequence=n, sent_us=n, telemetry=()) for n in range(count)])
        await asyncio.wait_for(done, 30)
        await ticking
        assert got == list(range(count))
        assert max(size for _, size in batches) <= _stream.HANDLER_BATCH_FRAMES
        # The loop turned between the batches of one read: other work ran meanwhile.
        assert len({turn for turn, _ in batches}) > count // _stream.HANDLER_BATCH_FRAMES // 2
        connection.close()
        accepted.close()
        await listener.close()

    run_test(main())
