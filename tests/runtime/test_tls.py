"""The TLS 1.3 over TCP transport: ALPN, TLS version, mutual TLS, bad peers, backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from forehand.runtime import (
    CloseInitiator,
    ClusterCertificates,
    Connection,
    ConnectionClosedError,
    ConnectionLimits,
    Credentials,
    HandshakeError,
    MemoryNetwork,
    TLSListener,
    TLSTransport,
    TLSTransportConfig,
    TransportError,
    _tls,
)
from forehand.wire import (
    END_OF_STREAM,
    NEED_DATA,
    ClusterMessage,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    PeerRole,
    Ping,
    Pong,
    WireConfig,
    encode_frame,
)

if TYPE_CHECKING:
    from tests.runtime._runtime_helpers import (
        HOST,
        client_credentials,
        make_transport,
        node_credentials,
        run_test,
    )
else:
    from _runtime_helpers import (
        HOST,
        client_credentials,
        make_transport,
        node_credentials,
        run_test,
    )

PING = Ping(sequence=1, sent_us=2, telemetry=())
SMALL_FRAME_BYTES_MAX = 16_384
"""A node's client-facing frame limit in the shared-listener test: the protocol's floor."""


def raw_context(certs: ClusterCertificates, alpn: str = "forehand/1") -> ssl.SSLContext:
    """A plain ssl client context trusting the cluster CA, offering `alpn`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=certs.ca_certificate_path)
    context.set_alpn_protocols([alpn])
    return context


async def serve_pings(listener: TLSListener, accepted: list[Connection]) -> None:
    """Answer every PING with a PONG on every accepted connection until the listener closes."""

    async def answer(connection: Connection) -> None:
        async for frame in connection:
            if isinstance(frame, Ping) and not connection.is_closed:
                connection.send_frame(Pong(sequence=frame.sequence, sent_us=frame.sent_us))

    async with asyncio.TaskGroup() as group:
        async for connection in listener:
            accepted.append(connection)
            group.create_task(answer(connection))


async def round_trip(connection: Connection) -> None:
    connection.send_frame(PING)
    assert await connection.receive() == Pong(sequence=1, sent_us=2)


async def read_frames(reader: asyncio.StreamReader) -> list[Frame | ErrorCode]:
    """Every frame a server sent until it closed, decoded as a client would."""
    data = b""
    try:
        while chunk := await reader.read(65536):
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    decoder = FrameDecoder(sender=PeerRole.SERVER)
    decoder.receive_data(data)
    frames: list[Frame | ErrorCode] = []
    while (frame := decoder.next_frame()) not in (NEED_DATA, END_OF_STREAM):
        assert not isinstance(frame, type(NEED_DATA))
        frames.append(frame)
    return frames


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes.fromhex("06 03 01 02 00"), ErrorCode.FRAME_ENCODING_ERROR),
        (bytes.fromhex("10 80 10 00 01"), ErrorCode.FRAME_TOO_LARGE),
        (bytes.fromhex("3f 00"), ErrorCode.UNKNOWN_FRAME_TYPE),
        (bytes.fromhex("20 00"), ErrorCode.FRAME_UNEXPECTED),
    ],
    ids=["malformed", "oversized", "unknown-type", "server-frame-from-client"],
)
def test_bad_bytes_get_error_and_close_only_that_connection(
    certs: ClusterCertificates, data: bytes, code: ErrorCode, caplog: pytest.LogCaptureFixture
) -> None:
    """A raw TLS peer sending bad frames gets ERROR(code) and a close, logged with its address
    and the code; others are still served."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        server = TLSTransport(node_credentials(certs, "s1"))
        listener = await server.listen(HOST, 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        good = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        await round_trip(good)
        reader, writer = await asyncio.open_connection(
            HOST, listener.port, ssl=raw_context(certs), server_hostname="s1"
        )
        pong = encode_frame(Pong(sequence=1, sent_us=2))
        writer.write(encode_frame(PING))
        assert await reader.readexactly(len(pong)) == pong  # Served until it misbehaves.
        writer.write(data)
        frames = await read_frames(reader)
        assert len(frames) == 1
        assert isinstance(frames[0], Error)
        assert frames[0].code == code
        writer.close()
        bad = accepted[1]
        info = await bad.wait_closed()
        assert info.error_code == code
        assert info.initiator is CloseInitiator.LOCAL
        logged = [r.getMessage() for r in caplog.records if r.name == "forehand.runtime.transport"]
        assert len(logged) == 1 and f"{HOST}:" in logged[0] and code.name in logged[0], logged
        await round_trip(good)
        good.close()
        await good.wait_closed()
        await listener.close()
        await serving

    run_test(main())


def test_truncated_stream_is_reported(certs: ClusterCertificates) -> None:
    """A peer that ends its stream inside a frame closes with TRUNCATED_STREAM; others go on."""

    async def main() -> None:
        server = TLSTransport(node_credentials(certs, "s1"))
        listener = await server.listen(HOST, 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        good = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        await round_trip(good)
        reader, writer = await asyncio.open_connection(
            HOST, listener.port, ssl=raw_context(certs), server_hostname="s1"
        )
        writer.write(encode_frame(PING))
        await reader.readexactly(len(encode_frame(Pong(sequence=1, sent_us=2))))
        writer.write(encode_frame(PING)[:-1])
        await writer.drain()
        writer.close()  # close_notify and FIN, inside a frame.
        info = await accepted[1].wait_closed()
        assert info.error_code == ErrorCode.TRUNCATED_STREAM
        await round_trip(good)
        good.close()
        await good.wait_closed()
        await listener.close()
        await serving

    run_test(main())


class HalfClosingClient:
    """A TLS client over a plain TCP connection (ssl memory BIOs), so that it can end its
    direction, with close_notify or with a bare TCP FIN, and go on reading what comes back."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname="s1")

    @classmethod
    async def connect(cls, certs: ClusterCertificates, port: int) -> HalfClosingClient:
        reader, writer = await asyncio.open_connection(HOST, port)
        client = cls(reader, writer, raw_context(certs))
        while True:
            try:
                client._tls.do_handshake()
            except ssl.SSLWantReadError:
                client._push()
                data = await reader.read(65536)
                assert data, "the server closed during the handshake"
                client._incoming.write(data)
            else:
                client._push()
                return client

    def _push(self) -> None:
        if data := self._outgoing.read():
            self.writer.write(data)

    def send(self, data: bytes) -> None:
        self._tls.write(data)
        self._push()

    def close_notify(self) -> None:
        """End this direction the TLS way; the connection stays open for reading."""
        with contextlib.suppress(ssl.SSLWantReadError):  # It waits for the peer's close_notify.
            self._tls.unwrap()
        self._push()

    def fin(self) -> None:
        """End this direction at the TCP level only, without close_notify."""
        self.writer.write_eof()

    async def read_until_closed(self) -> list[Frame]:
        """Every frame the server sent until it ended the connection."""
        data = b""
        while True:
            chunk = await self.reader.read(65536)
            if chunk:
                self._incoming.write(chunk)
            else:
                self._incoming.write_eof()
            try:
                while piece := self._tls.read(65536):
                    data += piece
            except ssl.SSLWantReadError:
                if chunk:
                    continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                pass
            break
        decoder = FrameDecoder(sender=PeerRole.SERVER)
        decoder.receive_data(data)
        frames: list[Frame] = []
        while (frame := decoder.next_frame()) not in (NEED_DATA, END_OF_STREAM):
            assert not isinstance(frame, type(NEED_DATA))
            frames.append(frame)
        return frames

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
@pytest.mark.parametrize("how", ["close_notify", "fin"])
def test_half_close_inside_a_frame_is_truncated_stream(
    certs: ClusterCertificates, how: str, use_uvloop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that ends its direction inside a frame loses its connection with TRUNCATED_STREAM,
    logged, as a QUIC request stream ending inside its frame does; after close_notify (TLS's own
    end of stream) it also reads ERROR(TRUNCATED_STREAM); after a bare TCP FIN the ssl layer
    closes before anything can be sent. Another connection goes on being served."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        listener = await TLSTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        good = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        await round_trip(good)
        peer = await HalfClosingClient.connect(certs, listener.port)
        peer.send(encode_frame(PING)[:-1])
        if how == "close_notify":
            peer.close_notify()
        else:
            peer.fin()
        frames = await peer.read_until_closed()
        if how == "close_notify":
            assert len(frames) == 1 and isinstance(frames[0], Error), frames
            assert frames[0].code == ErrorCode.TRUNCATED_STREAM
        else:
            assert frames == []
        info = await accepted[1].wait_closed()
        assert info.error_code == ErrorCode.TRUNCATED_STREAM
        assert info.initiator is CloseInitiator.LOCAL
        logged = [r.getMessage() for r in caplog.records if r.name == "forehand.runtime.transport"]
        assert len(logged) == 1 and "TRUNCATED_STREAM" in logged[0], logged
        await peer.close()
        await round_trip(good)
        good.close()
        await good.wait_closed()
        await listener.close()
        await serving

    run_test(main(), use_uvloop=use_uvloop)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
@pytest.mark.parametrize("how", ["close_notify", "fin"])
def test_whole_frames_waiting_while_reading_is_paused_survive_the_peer_leaving(
    certs: ClusterCertificates, how: str, use_uvloop: bool
) -> None:
    """50 whole PINGs, then the peer ends its direction while the server is not reading (its
    receive queue of 8 is full, reading paused): every PING is still received, and the close is
    a plain end of stream. Before, on uvloop after a bare FIN, the frames the decoder held were
    dropped and the close was taken for a frame cut short (found by a second reading)."""
    limits = ConnectionLimits(receive_queue_frames_max=8)
    pings = [Ping(sequence=index, sent_us=0, telemetry=()) for index in range(50)]

    async def main() -> None:
        server = TLSTransport(
            node_credentials(certs, "s1"), config=TLSTransportConfig(limits=limits)
        )
        listener = await server.listen(HOST, 0, peer_role=None)
        peer = await HalfClosingClient.connect(certs, listener.port)
        accepted = await listener.accept()
        peer.send(b"".join(encode_frame(ping) for ping in pings))
        await until(lambda: len(accepted._received) == 8)
        if how == "close_notify":
            peer.close_notify()
        else:
            peer.fin()
        for _ in range(100):  # Let the end of stream reach the paused connection, if it can.
            if accepted.close_info is not None:
                break
            await asyncio.sleep(0.01)
        received = []
        with pytest.raises(ConnectionClosedError) as closed:
            while True:
                received.append(await accepted.receive())
        assert received == pings
        assert closed.value.close.error_code != ErrorCode.TRUNCATED_STREAM, closed.value
        await peer.close()
        await listener.close()

    run_test(main(), use_uvloop=use_uvloop)


def test_client_offering_other_alpn_is_refused(certs: ClusterCertificates) -> None:
    """A TLS client that does not offer forehand/1 is closed before any application byte."""

    async def main() -> None:
        listener = await TLSTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        reader, writer = await asyncio.open_connection(
            HOST, listener.port, ssl=raw_context(certs, alpn="h2"), server_hostname="s1"
        )
        assert await read_frames(reader) == []
        writer.close()
        assert listener.connection_count == 0
        assert listener.handshake_count == 0
        await listener.close()

    run_test(main())


def test_server_selecting_other_alpn_is_refused(certs: ClusterCertificates) -> None:
    """The client refuses a server that completes the handshake without selecting forehand/1."""

    async def main() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        node = certs.node("s1")
        context.load_cert_chain(node.certificate_path, node.key_path)
        context.set_alpn_protocols(["h2"])
        server = await asyncio.start_server(lambda r, w: None, HOST, 0, ssl=context)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(HandshakeError, match="ALPN"):
            await TLSTransport(client_credentials(certs)).connect(HOST, port, server_id="s1")
        server.close()
        await server.wait_closed()

    run_test(main())


def test_tls_1_2_is_refused(certs: ClusterCertificates) -> None:
    """A client limited to TLS 1.2 cannot complete a handshake; its slot is free at once."""

    async def main() -> None:
        listener = await TLSTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        context = raw_context(certs)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection(HOST, listener.port, ssl=context, server_hostname="s1")
        assert listener.connection_count == 0
        # The failed handshake freed its slot at once, not at handshake_timeout_ms.
        await until(lambda: listener.handshake_count == 0)
        assert listener.handshakes_timed_out_count == 0
        await listener.close()

    run_test(main())


@pytest.mark.parametrize("client", ["none", "foreign", "cluster"])
def test_mutual_tls(
    certs: ClusterCertificates, foreign_certs: ClusterCertificates, client: str
) -> None:
    """A listener demanding client certificates accepts only clients with a cluster certificate."""

    async def main() -> None:
        manager = TLSTransport(node_credentials(certs, "manager"))
        listener = await manager.listen(
            HOST, 0, peer_role=PeerRole.CLUSTER_NODE, require_client_certificate=True
        )
        credentials = {
            "none": client_credentials(certs),
            "cluster": node_credentials(certs, "client-node"),
            "foreign": Credentials(
                ca_certificate_path=certs.ca_certificate_path,
                node_id="client-node",
                certificate_path=foreign_certs.node("client-node").certificate_path,
                private_key_path=foreign_certs.node("client-node").key_path,
            ),
        }[client]
        link = await TLSTransport(credentials).connect(
            HOST, listener.port, server_id="manager", peer_role=PeerRole.CLUSTER_NODE
        )
        if client == "cluster":
            accepted = await listener.accept()
            assert accepted.peer_id == "client-node"
            link.send_frame(PING)
            assert await accepted.receive() == PING
            link.close()
        else:
            # TLS 1.3 lets the client finish first; the server's alert then ends the link.
            info = await link.wait_closed()
            assert info.initiator is not CloseInitiator.LOCAL
            assert listener.connection_count == 0
        await link.wait_closed()
        await listener.close()

    run_test(main())


def test_optional_client_certificate_names_the_peer(certs: ClusterCertificates) -> None:
    """Without demanding one, a listener still verifies a presented certificate and names it."""

    async def main() -> None:
        listener = await TLSTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        with_certificate = await TLSTransport(node_credentials(certs, "s2")).connect(
            HOST, listener.port, server_id="s1"
        )
        without = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        first, second = await listener.accept(), await listener.accept()
        assert {first.peer_id, second.peer_id} == {"s2", None}
        for connection in (with_certificate, without):
            connection.close()
            await connection.wait_closed()
        await listener.close()

    run_test(main())


@pytest.mark.parametrize("kind", ["tls", "memory"])
def test_slow_reader_pauses_sender_and_loses_nothing(certs: ClusterCertificates, kind: str) -> None:
    """A reader that stops reading pauses the socket; the sender stops being writable; drain()
    waits until the reader goes on; every frame then arrives, in order."""
    limits = ConnectionLimits(
        receive_queue_frames_max=16,
        send_buffer_high_water_bytes=64 << 10,
        send_buffer_low_water_bytes=16 << 10,
        send_buffer_bytes_max=64 << 20,
    )
    count = 10_000
    body = bytes(8 << 10)  # Enough frames of 8 KiB to fill the kernel's socket buffers too.

    async def main() -> None:
        network = MemoryNetwork()
        config = _config(kind, limits)
        server = make_transport(kind, node_credentials(certs, "s1"), network, config=config)
        client = make_transport(kind, client_credentials(certs), network, config=config)
        listener = await server.listen(HOST, 0, peer_role=None)
        sender = await client.connect(HOST, listener.port, server_id="s1", peer_role=None)
        reader = await listener.accept()
        sent = 0
        # Sending without draining: the reader's socket fills up once it stops reading.
        while sender.writable and sent < count:
            sender.send_frame(ClusterMessage(kind=sent, body=body))
            sent += 1
            await asyncio.sleep(0)
        assert not sender.writable, "the sender never saw backpressure"
        assert len(reader._received) <= limits.receive_queue_frames_max
        draining = asyncio.create_task(sender.drain())
        await asyncio.sleep(0.05)
        assert not draining.done()
        sequences: list[int] = []
        while len(sequences) < sent:
            frame = await reader.receive()
            assert isinstance(frame, ClusterMessage)
            sequences.append(frame.kind)
        await draining
        assert sequences == list(range(sent))
        sender.close()
        await sender.wait_closed()
        await listener.close()

    run_test(main())


@pytest.mark.parametrize("kind", ["tls", "memory"])
def test_sender_past_hard_cap_is_cut_off(
    certs: ClusterCertificates, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A sender that ignores drain() and passes send_buffer_bytes_max is aborted, not grown,
    and says why in its log (no ERROR can reach a peer that does not read)."""
    limits = ConnectionLimits(
        receive_queue_frames_max=4,
        send_buffer_high_water_bytes=64 << 10,
        send_buffer_low_water_bytes=16 << 10,
        send_buffer_bytes_max=1 << 20,
    )

    async def main() -> None:
        network = MemoryNetwork()
        config = _config(kind, limits)
        server = make_transport(kind, node_credentials(certs, "s1"), network, config=config)
        client = make_transport(kind, client_credentials(certs), network, config=config)
        listener = await server.listen(HOST, 0, peer_role=None)
        sender = await client.connect(HOST, listener.port, server_id="s1", peer_role=None)
        await listener.accept()  # ... and never read from it.
        chunk = [Ping(sequence=index, sent_us=0, telemetry=()) for index in range(2000)]
        for _ in range(1000):
            if sender.is_closed:
                break
            sender.send_frames(chunk)
            await asyncio.sleep(0)
        info = await sender.wait_closed()
        assert info.error_code == ErrorCode.LIMIT_EXCEEDED
        assert info.initiator is CloseInitiator.LOCAL
        await listener.close()

    with caplog.at_level(logging.INFO, logger="forehand.runtime.transport"):
        run_test(main())
    assert any(
        "LIMIT_EXCEEDED" in r.getMessage() and "the peer is not reading" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


PACED_LIMITS = ConnectionLimits(
    send_buffer_high_water_bytes=64 << 10,
    send_buffer_low_water_bytes=16 << 10,
    send_buffer_bytes_max=1 << 20,
    send_stall_timeout_ms=2_000,
)
"""Bounds of the paced tests: a 1 MiB cap that one burst of answers passes 20 times over."""
ANSWER = bytes(500 << 10)


async def _paced_pair(
    certs: ClusterCertificates, kind: str, limits: ConnectionLimits, answers: int
) -> tuple[Connection, Connection, list[int], Any]:
    """A client connection and the server's side of it, paced, whose frame handler answers
    each PING with `answers` frames of 500 KiB; returns both, the sequences handled, and the
    listener."""
    network = MemoryNetwork()
    config = _config(kind, limits)
    server = make_transport(kind, node_credentials(certs, "s1"), network, config=config)
    # The client queues at most 4 frames it was not asked for: past them it stops reading.
    reading = _config(kind, dataclasses.replace(limits, receive_queue_frames_max=4))
    client = make_transport(kind, client_credentials(certs), network, config=reading)
    listener = await server.listen(HOST, 0, peer_role=None)
    connection = await client.connect(HOST, listener.port, server_id="s1", peer_role=None)
    served = await listener.accept()
    served.pace_by_sending()
    handled: list[int] = []

    def answer(frames: list[Frame]) -> None:
        for frame in frames:
            assert isinstance(frame, Ping)
            handled.append(frame.sequence)
            served.send_frames(
                [ClusterMessage(kind=frame.sequence, body=ANSWER) for _ in range(answers)]
            )

    served.set_frame_handler(answer)
    return connection, served, handled, listener


@pytest.mark.parametrize("kind", ["tls", "memory"])
def test_a_paced_connection_sends_a_burst_past_its_cap_to_a_peer_that_reads(
    certs: ClusterCertificates, kind: str
) -> None:
    """One PING answered with 20 MiB (20 times `send_buffer_bytes_max`): the server's side of a
    client's connection is paced, and its peer reads, so the burst arrives whole where an
    unpaced connection is cut off at once (`test_sender_past_hard_cap_is_cut_off`)."""

    async def main() -> None:
        connection, served, handled, listener = await _paced_pair(certs, kind, PACED_LIMITS, 40)
        connection.send_frame(Ping(sequence=7, sent_us=0, telemetry=()))
        for _ in range(40):
            frame = await connection.receive()
            assert isinstance(frame, ClusterMessage) and frame.kind == 7
        assert handled == [7] and not served.is_closed
        connection.close()
        await connection.wait_closed()
        await listener.close()

    run_test(main())


@pytest.mark.parametrize("kind", ["tls", "memory"])
def test_a_paced_connection_holds_the_frames_of_a_peer_that_does_not_take_its_answers(
    certs: ClusterCertificates, kind: str
) -> None:
    """400 PINGs, each answered with 500 KiB, from a peer that reads nothing for a while: the
    server handles a batch or two, then holds the rest (in the socket) instead of answering
    them into its send buffer; once the peer reads, every answer comes, in order."""
    limits = dataclasses.replace(PACED_LIMITS, send_stall_timeout_ms=60_000)

    async def main() -> None:
        connection, served, handled, listener = await _paced_pair(certs, kind, limits, 1)
        connection.send_frames([Ping(sequence=n, sent_us=0, telemetry=()) for n in range(400)])
        await asyncio.sleep(0.5)
        assert 0 < len(handled) <= 160, len(handled)
        sequences = []
        for _ in range(400):
            frame = await connection.receive()
            assert isinstance(frame, ClusterMessage)
            sequences.append(frame.kind)
        assert sequences == list(range(400)) and handled == sequences
        assert not served.is_closed
        connection.close()
        await connection.wait_closed()
        await listener.close()

    run_test(main())


@pytest.mark.parametrize("kind", ["tls", "memory"])
def test_a_paced_connection_cuts_off_a_peer_that_takes_nothing_of_its_backlog(
    certs: ClusterCertificates, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The 20 MiB burst to a peer that never reads: above the cap and nothing taken for
    `send_stall_timeout_ms`, the server's side is cut off with LIMIT_EXCEEDED, saying why."""
    limits = dataclasses.replace(PACED_LIMITS, send_stall_timeout_ms=300)

    async def main() -> None:
        connection, served, _, listener = await _paced_pair(certs, kind, limits, 40)
        connection.send_frame(Ping(sequence=1, sent_us=0, telemetry=()))
        info = await asyncio.wait_for(served.wait_closed(), 30)
        assert info.error_code == ErrorCode.LIMIT_EXCEEDED
        assert "none taken for send_stall_timeout_ms=300" in info.reason
        connection.close()
        await listener.close()

    with caplog.at_level(logging.INFO, logger="forehand.runtime.transport"):
        run_test(main())


@pytest.mark.parametrize("kind", ["tls", "memory"])
def test_a_paced_backlog_past_the_answers_of_one_batch_is_cut_off_at_once(
    certs: ClusterCertificates, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Past `send_buffer_bytes_max` and the answers to 64 frames of `frame_bytes_max` (here
    1 + 64 MiB), a paced connection does not wait for the stall timer: no batch of frames
    answers that much, so answers that came later piled up on a peer too slow for them."""

    async def main() -> None:
        connection, served, _, listener = await _paced_pair(certs, kind, PACED_LIMITS, 180)
        connection.send_frame(Ping(sequence=1, sent_us=0, telemetry=()))
        info = await asyncio.wait_for(served.wait_closed(), 30)
        assert info.error_code == ErrorCode.LIMIT_EXCEEDED
        assert "the answers to 64 frames: the peer is not reading fast enough" in info.reason
        connection.close()
        await listener.close()

    with caplog.at_level(logging.INFO, logger="forehand.runtime.transport"):
        run_test(main())


def test_tls_path_stats_come_from_the_kernel(certs: ClusterCertificates) -> None:
    """TCP_INFO gives the TLS connection a smoothed and a minimum RTT, segments and bytes."""

    async def main() -> None:
        listener = await TLSTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        connection = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        await round_trip(connection)
        stats = connection.path_stats()
        assert stats.source == "tcp_info"
        assert stats.rtt_smoothed_us is not None and stats.rtt_smoothed_us > 0
        assert stats.rtt_min_us is not None and stats.rtt_min_us <= stats.rtt_smoothed_us
        assert stats.packets_lost_count == 0
        # Segments and bytes, for the client's loss ratio and throughput (telemetry).
        assert stats.packets_sent_count and stats.packets_retransmitted_count is not None
        assert stats.bytes_sent_count and stats.bytes_received_count
        assert connection.rtt_us == connection.path_stats().rtt_smoothed_us
        connection.close()
        await connection.wait_closed()
        await listener.close()
        await serving

    run_test(main())


def test_plain_asyncio_loop_works_too(certs: ClusterCertificates) -> None:
    """Without uvloop the TLS transport behaves the same."""

    async def main() -> None:
        listener = await TLSTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        connection = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        await round_trip(connection)
        connection.close()
        await connection.wait_closed()
        await listener.close()
        await serving

    run_test(main(), use_uvloop=False)


def _config(kind: str, limits: ConnectionLimits) -> object:
    from forehand.runtime import MemoryTransportConfig

    if kind == "tls":
        return TLSTransportConfig(limits=limits)
    return MemoryTransportConfig(limits=limits)


def test_a_shared_listener_bounds_certified_peers_by_the_cluster_wire(
    certs: ClusterCertificates,
) -> None:
    """A listener shared by clients and cluster nodes (`tls`), set to a small frame limit with
    `certified_peer_wire` at the default: a cluster node's long frame (a log batch) is received,
    a client's is FRAME_TOO_LARGE on that connection alone."""
    small = ConnectionLimits(wire=WireConfig(frame_bytes_max=SMALL_FRAME_BYTES_MAX))
    long_frame = ClusterMessage(kind=1, body=b"\x01" * (SMALL_FRAME_BYTES_MAX * 2))

    async def main() -> None:
        server = TLSTransport(
            node_credentials(certs, "s1"), config=TLSTransportConfig(limits=small)
        )
        listener = await server.listen(HOST, 0, peer_role=None, certified_peer_wire=WireConfig())
        node = await TLSTransport(node_credentials(certs, "s2")).connect(
            HOST, listener.port, server_id="s1", peer_role=None
        )
        node.send_frame(long_frame)
        from_node = await listener.accept()
        assert from_node.peer_id == "s2"
        assert await from_node.receive() == long_frame
        client = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        client.send_frame(PING)
        from_client = await listener.accept()
        assert from_client.peer_id is None
        assert await from_client.receive() == PING
        client.send_frame(long_frame)
        closed = await from_client.wait_closed()
        assert closed.error_code == ErrorCode.FRAME_TOO_LARGE
        node.send_frame(PING)
        assert await from_node.receive() == PING
        for connection in (node, client, from_node):
            connection.close()
            await connection.wait_closed()
        await listener.close()

    run_test(main())


def test_partial_frames_past_the_budget_close_only_that_connection(
    certs: ClusterCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """The connections of a transport share partial_frames_bytes_max: the one whose partial
    frame would pass it, holding then as much as the largest holder, gets
    ERROR(LIMIT_EXCEEDED), logged; the others keep theirs, finish them and are served; the
    count follows every frame completed and every connection closed back to zero. (One that
    would hold less than the largest holder closes that one instead: test_quic.py.)"""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")
    limits = ConnectionLimits(
        wire=WireConfig(frame_bytes_max=SMALL_FRAME_BYTES_MAX), partial_frames_bytes_max=40_000
    )
    frame = encode_frame(ClusterMessage(kind=1, body=bytes(15_000)))
    head, rest = frame[:14_000], frame[14_000:]

    async def main() -> None:
        server = TLSTransport(
            node_credentials(certs, "s1"), config=TLSTransportConfig(limits=limits)
        )
        budget = server.receive_budget
        listener = await server.listen(HOST, 0, peer_role=None)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        good = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        await round_trip(good)
        pong = encode_frame(Pong(sequence=1, sent_us=2))
        peers = [
            await asyncio.open_connection(
                HOST, listener.port, ssl=raw_context(certs), server_hostname="s1"
            )
            for _ in range(3)
        ]
        for _, writer in peers[:2]:
            writer.write(head)
        await until(lambda: budget.held_bytes == 2 * len(head))
        reader, writer = peers[2]
        writer.write(head)
        frames = await read_frames(reader)
        assert len(frames) == 1 and isinstance(frames[0], Error), frames
        assert frames[0].code == ErrorCode.LIMIT_EXCEEDED
        writer.close()
        info = await accepted[3].wait_closed()
        assert info.error_code == ErrorCode.LIMIT_EXCEEDED
        assert budget.held_bytes == 2 * len(head)
        logged = [r.getMessage() for r in caplog.records if "LIMIT_EXCEEDED" in r.getMessage()]
        assert len(logged) == 1 and "partial_frames_bytes_max=40000" in logged[0], logged
        reader, writer = peers[0]
        writer.write(rest + encode_frame(PING))  # Finished: the frame leaves the budget.
        assert await reader.readexactly(len(pong)) == pong
        assert budget.held_bytes == len(head)
        peers[1][1].close()  # Gone inside its frame: what it held leaves the budget too.
        await accepted[2].wait_closed()
        assert budget.held_bytes == 0
        await round_trip(good)
        writer.write(head)
        await until(lambda: budget.held_bytes == len(head))
        writer.close()
        await accepted[1].wait_closed()
        assert budget.held_bytes == 0
        good.close()
        await good.wait_closed()
        await listener.close()
        await serving

    run_test(main())


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds; run_test's hang timeout bounds the wait."""
    while not condition():
        await asyncio.sleep(0.01)


def half_client_hello(certs: ClusterCertificates) -> bytes:
    """The first half of a real ClientHello offering forehand/1: a handshake begun, never done."""
    tls = raw_context(certs).wrap_bio(ssl.MemoryBIO(), outgoing := ssl.MemoryBIO(), False, "s1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


async def never_finishing(port: int, first_bytes: bytes) -> tuple[asyncio.StreamReader, Any]:
    """A TCP connection that sends `first_bytes` (maybe none) and never completes a handshake."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(first_bytes)
    return reader, writer


async def ended(reader: asyncio.StreamReader) -> bool:
    """Whether the server ended the connection having sent nothing (a reset ends it too)."""
    try:
        return await reader.read(65536) == b""
    except ConnectionResetError:
        return True


async def close_peers(peers: list[tuple[asyncio.StreamReader, Any]]) -> None:
    for _, writer in peers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_handshakes_under_way_are_bounded_by_handshakes_max(
    certs: ClusterCertificates, use_uvloop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """At most handshakes_max TLS handshakes are under way: past it a new TCP connection aborts
    the oldest handshake (one warning for the stretch), so a flood of connections that never
    complete one (silent, or half a ClientHello) holds no more than the bound, and a real
    client connecting while the flood goes on is served, as is the connection held already."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")
    handshakes_max = 8

    async def main() -> None:
        config = TLSTransportConfig(limits=ConnectionLimits(handshakes_max=handshakes_max))
        listener = await TLSTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        client = TLSTransport(client_credentials(certs))
        held = await client.connect(HOST, listener.port, server_id="s1")
        hello = half_client_hello(certs)
        peers: list[tuple[asyncio.StreamReader, Any]] = []

        async def flood(count: int) -> None:
            for _ in range(count):
                peers.append(await never_finishing(listener.port, hello if len(peers) % 2 else b""))
                # Accepted: every connection past the bound evicted one.
                await until(
                    lambda: listener.handshakes_evicted_count >= len(peers) - handshakes_max
                )
                assert listener.handshake_count <= handshakes_max

        await flood(2 * handshakes_max)
        assert listener.handshake_count == handshakes_max
        assert listener.handshakes_evicted_count == handshakes_max
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "handshakes_max=8" in warned[0], warned
        # Fewer newer connections than the bound: the client's handshake is never the oldest.
        connecting = asyncio.create_task(client.connect(HOST, listener.port, server_id="s1"))
        await flood(handshakes_max - 1)
        late = await connecting
        assert listener.handshake_count <= handshakes_max
        assert listener.handshakes_evicted_count >= len(peers) - handshakes_max
        assert listener.connection_count == 2
        assert await ended(peers[0][0]) and await ended(peers[1][0])  # evicted: closed
        for connection in (held, late):
            await round_trip(connection)
            connection.close()
            await connection.wait_closed()
        await close_peers(peers)
        await listener.close()
        await serving

    run_test(main(), use_uvloop=use_uvloop)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_a_handshake_that_never_completes_frees_its_slot(
    certs: ClusterCertificates, use_uvloop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS handshake not completed within handshake_timeout_ms is aborted and logged: its peer
    sees the connection end, and its slot under handshakes_max is free for a real client."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        config = TLSTransportConfig(
            limits=ConnectionLimits(handshakes_max=2), handshake_timeout_ms=200
        )
        listener = await TLSTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        peers = [
            await never_finishing(listener.port, first) for first in (b"", half_client_hello(certs))
        ]
        await until(lambda: listener.handshakes_timed_out_count == 2)
        assert listener.handshake_count == 0
        for reader, _ in peers:
            assert await ended(reader)
        logged = [
            r.getMessage() for r in caplog.records if "handshake_timeout_ms=200" in r.getMessage()
        ]
        assert len(logged) == 2, logged
        clients = [
            await TLSTransport(client_credentials(certs)).connect(
                HOST, listener.port, server_id="s1"
            )
            for _ in range(2)
        ]
        assert listener.handshakes_evicted_count == 0
        for client in clients:
            await round_trip(client)
            client.close()
            await client.wait_closed()
        await close_peers(peers)
        await listener.close()
        await serving

    run_test(main(), use_uvloop=use_uvloop)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_listener_close_aborts_the_handshakes_under_way(
    certs: ClusterCertificates, use_uvloop: bool
) -> None:
    """Closing a TLS listener aborts its handshakes under way: their peers see the connection
    end, and no task or socket is left behind (run_test fails on either). The handshakes would
    time out only after run_test's hang timeout."""

    async def main() -> None:
        config = TLSTransportConfig(handshake_timeout_ms=60_000)
        listener = await TLSTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
        hello = half_client_hello(certs)
        peers = [await never_finishing(listener.port, first) for first in (b"", hello, hello)]
        await until(lambda: listener.handshake_count == 3)
        await listener.close()
        assert listener.handshake_count == 0
        for reader, _ in peers:
            assert await ended(reader)
        await close_peers(peers)

    run_test(main(), use_uvloop=use_uvloop)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_a_flood_at_handshakes_max_whose_handshakes_fail_is_one_stretch(
    certs: ClusterCertificates, use_uvloop: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood at handshakes_max whose connections free their slots now and then (a peer that
    sends no TLS fails at once; others time out) takes each slot freed with its next connection:
    it is one stretch at the bound, logged once, not a WARNING and an INFO per slot freed."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        config = TLSTransportConfig(limits=ConnectionLimits(handshakes_max=4))
        listener = await TLSTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
        peers: list[tuple[asyncio.StreamReader, Any]] = []

        async def silent(count: int) -> tuple[asyncio.StreamReader, Any]:
            """A connection that sends nothing: it holds its slot, the `count`th."""
            peer = await never_finishing(listener.port, b"")
            peers.append(peer)
            await until(lambda: listener.handshake_count == count)
            return peer

        for count in range(1, 5):
            await silent(count)
        held = []
        for round_number in range(1, 5):
            # Not TLS: it evicts the oldest handshake, then fails and frees its slot.
            failing = await never_finishing(listener.port, b"GET / HTTP/1.1\r\n\r\n" * 8)
            peers.append(failing)
            assert await ended(failing[0])
            await until(lambda: listener.handshake_count == 3)
            assert listener.handshakes_evicted_count == round_number
            held.append(await silent(4))
        at_bound = [r.getMessage() for r in caplog.records if "handshakes_max" in r.getMessage()]
        assert len(at_bound) == 1 and "handshakes_max=4 handshakes under way" in at_bound[0], (
            at_bound
        )
        # The flood ends: its handshakes fail (here their peers leave), down to half the bound.
        await close_peers(held[:2])
        await until(lambda: listener.handshake_count == 2)
        await silent(3)
        at_bound = [r.getMessage() for r in caplog.records if "handshakes_max" in r.getMessage()]
        assert len(at_bound) == 2 and "under handshakes_max again (4 handshakes" in at_bound[1]
        await close_peers(peers)
        await listener.close()

    run_test(main(), use_uvloop=use_uvloop)


class NoIPv6Socket(socket.socket):
    """A socket of a system without IPv6 (a kernel booted with ipv6.disable=1): creating an
    AF_INET6 one fails, while names still resolve to IPv6 addresses (from /etc/hosts, or "")."""

    def __init__(self, family: int = -1, *args: Any, **kwargs: Any) -> None:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *args, **kwargs)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_a_listener_skips_an_address_family_the_system_lacks(
    certs: ClusterCertificates, use_uvloop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that resolves to IPv4 and IPv6 addresses ("" here) on a system without IPv6
    sockets gets a listener on its IPv4 addresses, as loop.create_server gave (it skips a family
    whose socket cannot be made), rather than no listener at all; a host with only IPv6
    addresses gets the system's error."""

    async def main() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(socket, "socket", NoIPv6Socket)
            listener = await TLSTransport(node_credentials(certs, "s1")).listen("", 0)
            with pytest.raises(TransportError, match=r"cannot listen on ::1:0: .*not supported"):
                await TLSTransport(node_credentials(certs, "s1")).listen("::1", 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        client = await TLSTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        await round_trip(client)
        client.close()
        await client.wait_closed()
        await listener.close()
        await serving

    run_test(main(), use_uvloop=use_uvloop)


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_a_connection_the_listener_fails_to_accept_does_not_stop_it_accepting(
    certs: ClusterCertificates,
    use_uvloop: bool,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An accept error that concerns one connection (a protocol error pending on it) and a fault
    of the listener's own code for one connection each lose that connection only: logged (the
    fault with its traceback), no pause, and the next connection is accepted and served. Before,
    the fault ended the accepting task for good, silently."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")
    accept = TLSListener._accepted
    failures: list[BaseException] = [
        OSError(errno.EPROTO, "protocol error"),
        RuntimeError("a fault"),
    ]

    def failing_first(self: TLSListener, connection: socket.socket, address: Any) -> None:
        if failures:
            connection.close()
            raise failures.pop(0)
        accept(self, connection, address)

    monkeypatch.setattr(TLSListener, "_accepted", failing_first)

    async def main() -> None:
        listener = await TLSTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        accepted: list[Connection] = []
        serving = asyncio.create_task(serve_pings(listener, accepted))
        for _ in range(2):
            peer = await never_finishing(listener.port, b"")
            assert await ended(peer[0])
            await close_peers([peer])
        client = TLSTransport(client_credentials(certs))
        connection = await client.connect(HOST, listener.port, server_id="s1")
        await round_trip(connection)
        connection.close()
        await connection.wait_closed()
        await listener.close()
        await serving

    run_test(main(), use_uvloop=use_uvloop)
    assert failures == []
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert any(lv == logging.INFO and "accept failed" in m for lv, m in levels), levels
    (fault,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "accepting a connection failed" in fault.getMessage() and fault.exc_info is not None
    assert not [m for lv, m in levels if lv == logging.WARNING], levels


class _Spinning(BaseException):
    """The accepting task called accept again and again without the loop getting a turn."""


@pytest.mark.parametrize("use_uvloop", [True, False], ids=["uvloop", "asyncio"])
def test_an_accept_error_that_persists_does_not_take_the_loop(
    certs: ClusterCertificates, use_uvloop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accept error that does not concern one connection (EINVAL: the socket no longer
    listens) comes back on every call: the listener must not retry at once for good, without
    giving the loop a turn (asyncio's loop: the whole process would hang) or with a log line a
    turn (uvloop's: a core and the log filled). It waits before trying again, as when out of
    file descriptors; other tasks run meanwhile."""
    monkeypatch.setattr(_tls, "_ACCEPT_RETRY_DELAY_MS", 3_600_000)
    turns = 0
    failures: list[int] = []

    def failing(self: socket.socket) -> tuple[socket.socket, Any]:
        failures.append(turns)
        if len(failures) >= 50 and len(set(failures[-50:])) == 1:
            raise _Spinning
        raise OSError(errno.EINVAL, "Invalid argument")

    async def main() -> None:
        nonlocal turns
        listener = await TLSTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        monkeypatch.setattr(socket.socket, "accept", failing)
        _, writer = await asyncio.open_connection(HOST, listener.port)
        while not failures:
            turns += 1
            await asyncio.sleep(0)
        for _ in range(20):
            turns += 1
            await asyncio.sleep(0)
        (accepting,) = listener._accepting
        assert not accepting.done(), accepting
        assert len(failures) == 1, failures
        monkeypatch.undo()
        writer.close()
        await listener.close()

    run_test(main(), use_uvloop=use_uvloop)


@pytest.mark.parametrize("abandon", [True, False])
def test_abandoning_a_silent_peer_ends_the_connection_without_its_answer(
    certs: ClusterCertificates, abandon: bool
) -> None:
    """A peer that reads nothing (a frozen process) never answers a graceful TLS close, which
    then lasts `close_timeout_ms` (here a minute); `abandon`, what a driver does to a peer
    silent past its bound, ends the connection at once."""
    limits = ConnectionLimits(close_timeout_ms=60_000)

    async def main() -> bool:
        network = MemoryNetwork()
        config = _config("tls", limits)
        server = make_transport("tls", node_credentials(certs, "s1"), network, config=config)
        client = make_transport("tls", client_credentials(certs), network, config=config)
        listener = await server.listen(HOST, 0, peer_role=None)
        connection = await client.connect(HOST, listener.port, server_id="s1", peer_role=None)
        frozen = await listener.accept()
        frozen._transport.pause_reading()  # type: ignore[attr-defined]
        if abandon:
            connection.abandon(ErrorCode.IDLE_TIMEOUT, "silent")
        else:
            connection.close(ErrorCode.IDLE_TIMEOUT, "silent")
        try:
            await asyncio.wait_for(connection.wait_closed(), timeout=5)
            ended = True
        except TimeoutError:
            ended = False
        info = connection.close_info
        assert info is not None and info.error_code == ErrorCode.IDLE_TIMEOUT
        # Thawed, the peer answers, and a graceful close ends too.
        frozen._transport.resume_reading()  # type: ignore[attr-defined]
        await asyncio.wait_for(connection.wait_closed(), timeout=10)
        frozen.close()
        await frozen.wait_closed()
        await listener.close()
        return ended

    assert run_test(main()) is abandon
