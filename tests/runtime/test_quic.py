"""The QUIC transport: the stream layout of docs/PROTOCOL.md s.4.1, bad peers, bounds, stats."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import pytest
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.quic import events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection
from qh3.quic.packet import QuicProtocolVersion

from forehand.errors import ConfigError, LocalProtocolError
from forehand.runtime import (
    CloseInitiator,
    ClusterCertificates,
    Connection,
    ConnectionLimits,
    QUICConnection,
    QUICListener,
    QUICTransport,
    QUICTransportConfig,
    TransportError,
    run,
)
from forehand.runtime.transport import ReceiveBudget
from forehand.wire import (
    END_OF_STREAM,
    NEED_DATA,
    ClusterMessage,
    ErrorCode,
    Frame,
    FrameDecoder,
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
        client_credentials,
        node_credentials,
        run_test,
    )
else:
    from _runtime_helpers import HOST, client_credentials, node_credentials, run_test

SESSION_ID = bytes(range(16))
HELLO = Hello(versions=(1,), client_id=bytes(16), credentials=())
WELCOME = Welcome(
    version=1, server_id="s1", map_version=3, frame_bytes_max=1 << 20, idle_timeout_ms=30_000
)
PING = Ping(sequence=1, sent_us=2, telemetry=())


def request(request_id: int) -> Request:
    return Request(
        request_id=request_id,
        session_id=SESSION_ID,
        part="cart",
        op="get",
        map_version=1,
        payload=b"p",
    )


def answer(frame: Frame) -> Frame:
    if isinstance(frame, Request):
        return Response(
            request_id=frame.request_id,
            session_id=frame.session_id,
            status=ResponseStatus.OK,
            map_version=frame.map_version,
            payload=frame.payload,
        )
    if isinstance(frame, Hello):
        return WELCOME
    return Pong(sequence=0, sent_us=0)


def serve(connection: Connection) -> None:
    """Answer from the frame handler: REQUEST -> RESPONSE, HELLO -> WELCOME, others -> PONG."""
    connection.set_frame_handler(
        lambda frames: connection.send_frames([answer(frame) for frame in frames])
    )


async def start(
    certs: ClusterCertificates, config: QUICTransportConfig | None = None
) -> tuple[QUICListener, asyncio.Task[None], list[Connection]]:
    """A listener on s1 serving every connection it accepts."""
    listener = await QUICTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
    accepted: list[Connection] = []

    async def accept_all() -> None:
        async for connection in listener:
            accepted.append(connection)
            serve(connection)

    return listener, asyncio.create_task(accept_all()), accepted


class RawClient(QuicConnectionProtocol):
    """A bare qh3 client: the test writes streams by hand and reads what comes back."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self.quic = quic
        self.streams: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.terminated: asyncio.Future[events.ConnectionTerminated] = (
            asyncio.get_running_loop().create_future()
        )
        self.datagram_transport: asyncio.BaseTransport | None = None
        self.changed = asyncio.Event()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self.streams[event.stream_id] = self.streams.get(event.stream_id, b"") + event.data
            if event.end_stream:
                self.ended.add(event.stream_id)
            self.changed.set()
        elif isinstance(event, events.ConnectionTerminated) and not self.terminated.done():
            self.terminated.set_result(event)

    def send(self, data: bytes, *, unidirectional: bool = False, end: bool = False) -> int:
        stream_id = self.quic.get_next_available_stream_id(is_unidirectional=unidirectional)
        self.send_on(stream_id, data, end=end)
        return stream_id

    def send_on(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        self.quic.send_stream_data(stream_id, data, end_stream=end)
        self.transmit()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()

    async def close_and_wait(self) -> None:
        self.quic.close()
        self.transmit()
        await self.terminated
        assert self.datagram_transport is not None
        self.datagram_transport.close()


async def raw_connect(certs: ClusterCertificates, port: int, alpn: str = "forehand/1") -> RawClient:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=[alpn], server_name="s1")
    configuration.load_verify_locations(cafile=str(certs.ca_certificate_path))
    quic = QuicConnection(configuration=configuration)
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: RawClient(quic), local_addr=("0.0.0.0", 0)
    )
    protocol.datagram_transport = transport
    protocol.connect((HOST, port))
    try:
        await protocol.wait_connected()
    except ConnectionError:
        transport.close()
        raise
    return protocol


def decode_all(data: bytes, sender: PeerRole = PeerRole.SERVER) -> list[Frame]:
    decoder = FrameDecoder(sender=sender)
    decoder.receive_data(data)
    frames: list[Frame] = []
    while (frame := decoder.next_frame()) is not NEED_DATA and frame is not END_OF_STREAM:
        assert not isinstance(frame, type(NEED_DATA))
        frames.append(frame)
    return frames


def test_stream_layout(certs: ClusterCertificates) -> None:
    """Control stream with type 0x00 each way; a REQUEST stream is answered on itself, ended."""

    async def main() -> None:
        listener, serving, _ = await start(certs)
        raw = await raw_connect(certs, listener.port)
        raw.send(b"\x00" + encode_frame(HELLO), unidirectional=True)
        request_stream = raw.send(encode_frame(request(7)), end=True)
        server_control = 3  # The server's first unidirectional stream.
        await raw.wait_for(
            lambda: request_stream in raw.ended and len(raw.streams.get(server_control, b"")) > 1
        )
        control = raw.streams[server_control]
        assert control[0] == 0x00
        assert decode_all(control[1:]) == [WELCOME]
        assert decode_all(raw.streams[request_stream]) == [answer(request(7))]
        assert server_control not in raw.ended  # The control stream stays open.
        await raw.close_and_wait()
        await listener.close()
        await serving

    run_test(main())


def test_unknown_stream_types_are_ignored(certs: ClusterCertificates) -> None:
    """A greased unidirectional stream type is skipped; the connection goes on working."""

    async def main() -> None:
        listener, serving, _ = await start(certs)
        raw = await raw_connect(certs, listener.port)
        raw.send(b"\x00", unidirectional=True)
        raw.send(b"\x21" + b"anything at all", unidirectional=True)  # 0x1f * 0 + 0x21
        raw.send(bytes.fromhex("7f ff") + b"more", unidirectional=True, end=True)
        request_stream = raw.send(encode_frame(request(1)), end=True)
        await raw.wait_for(lambda: request_stream in raw.ended)
        assert decode_all(raw.streams[request_stream]) == [answer(request(1))]
        assert not raw.terminated.done()
        await raw.close_and_wait()
        await listener.close()
        await serving

    run_test(main())


VIOLATIONS: dict[str, tuple[list[tuple[str, bytes, bool]], ErrorCode]] = {
    # Each step: ("control" | "control2" | "request"), bytes, whether the stream ends.
    "second-control-stream": (
        [("control", b"\x00", False), ("control2", b"\x00", False)],
        ErrorCode.CLOSED_CRITICAL_STREAM,
    ),
    "control-stream-ended": ([("control", b"\x00", True)], ErrorCode.CLOSED_CRITICAL_STREAM),
    "request-on-control": (
        [("control", b"\x00" + encode_frame(request(1)), False)],
        ErrorCode.FRAME_UNEXPECTED,
    ),
    "malformed-on-control": (
        [("control", b"\x00" + bytes.fromhex("06 03 01 02 00"), False)],
        ErrorCode.FRAME_ENCODING_ERROR,
    ),
    "oversized-on-control": (
        [("control", b"\x00" + bytes.fromhex("10 80 10 00 01"), False)],
        ErrorCode.FRAME_TOO_LARGE,
    ),
    "two-requests-on-a-stream": (
        [("request", encode_frame(request(1)) + encode_frame(request(2)), True)],
        ErrorCode.FRAME_UNEXPECTED,
    ),
    "ping-on-a-request-stream": (
        [("request", encode_frame(PING), True)],
        ErrorCode.FRAME_UNEXPECTED,
    ),
    "truncated-request-stream": (
        [("request", encode_frame(request(1))[:-3], True)],
        ErrorCode.TRUNCATED_STREAM,
    ),
    "empty-request-stream": ([("request", b"", True)], ErrorCode.FRAME_UNEXPECTED),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_violation_closes_only_that_connection(certs: ClusterCertificates, name: str) -> None:
    """Each violation closes the offending connection with its error code and a reason, while
    another connection to the same listener keeps being served."""
    steps, code = VIOLATIONS[name]

    async def main() -> None:
        listener, serving, accepted = await start(certs)
        good = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        raw = await raw_connect(certs, listener.port)
        streams: dict[str, int] = {}
        for kind, data, end in steps:
            if kind == "request":
                raw.send(data, end=end)
            elif kind in streams:
                raw.send_on(streams[kind], data, end=end)
            else:
                streams[kind] = raw.send(data, unidirectional=True, end=end)
        terminated = await raw.terminated
        assert terminated.error_code == code
        assert terminated.frame_type is None  # An application close, not a transport one.
        assert terminated.reason_phrase
        assert raw.datagram_transport is not None
        raw.datagram_transport.close()
        offender = accepted[1]
        info = await offender.wait_closed()
        assert info.error_code == code
        assert info.initiator is CloseInitiator.LOCAL
        good.send_frame(request(9))
        assert await good.receive() == answer(request(9))
        good.close()
        await good.wait_closed()
        await listener.close()
        await serving

    run_test(main())


def test_client_offering_other_alpn_is_refused(certs: ClusterCertificates) -> None:
    """A QUIC client that does not offer forehand/1 never completes the handshake."""

    async def main() -> None:
        listener, serving, accepted = await start(certs)
        with pytest.raises(ConnectionError):
            await raw_connect(certs, listener.port, alpn="h3")
        assert accepted == []
        await listener.close()
        await serving

    run_test(main())


def test_mutual_tls_is_refused_over_quic(certs: ClusterCertificates) -> None:
    """The QUIC stack cannot verify client certificates, so demanding them is a ConfigError."""

    async def main() -> None:
        transport = QUICTransport(node_credentials(certs, "manager"))
        with pytest.raises(ConfigError):
            await transport.listen(HOST, 0, require_client_certificate=True)

    run_test(main())


def test_reset_request_stream_drops_its_answer(certs: ClusterCertificates) -> None:
    """If the client resets a request stream, the server's answer is dropped and counted."""

    async def main() -> None:
        listener = await QUICTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        raw = await raw_connect(certs, listener.port)
        control = raw.send(b"\x00", unidirectional=True)
        stream_id = raw.send(encode_frame(request(4)), end=True)
        server = await listener.accept()
        assert await server.receive() == request(4)
        raw.quic.reset_stream(stream_id, 0)
        raw.send_on(control, encode_frame(PING))  # Sent after the reset, read after it too.
        assert await server.receive() == PING
        assert isinstance(server, QUICConnection)
        server.send_frame(answer(request(4)))
        assert server.responses_dropped_count == 1
        assert not server.is_closed
        await raw.close_and_wait()
        await listener.close()

    run_test(main())


def test_requests_are_delivered_in_stream_order(certs: ClusterCertificates) -> None:
    """A REQUEST whose stream completes before an earlier stream's (the earlier one's packet
    was lost, say) waits for it: the server gets requests in the client's send order, so the
    requests of a part run in call order over QUIC as over TLS. (Before, the later request of a
    pipeline ran first whenever the packet of the earlier one was lost.)"""

    async def main() -> None:
        listener = await QUICTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        raw = await raw_connect(certs, listener.port)
        raw.send(b"\x00", unidirectional=True)
        server = await listener.accept()
        first = raw.quic.get_next_available_stream_id()
        second, third = first + 4, first + 8
        raw.send_on(second, encode_frame(request(2)), end=True)
        raw.send_on(third, encode_frame(request(3)), end=True)
        raw.send_on(first, encode_frame(request(1)), end=True)
        assert [await server.receive() for _ in range(3)] == [request(1), request(2), request(3)]
        # A request stream reset before its frame came holds up nothing after it.
        fourth, fifth = third + 4, third + 8
        raw.send_on(fifth, encode_frame(request(5)), end=True)
        raw.quic.reset_stream(fourth, 0)
        raw.transmit()
        assert await server.receive() == request(5)
        assert not server.is_closed
        await raw.close_and_wait()
        await listener.close()

    run_test(main())


def test_a_stack_that_fails_to_transmit_ends_the_connection(certs: ClusterCertificates) -> None:
    """qh3's core can raise while it builds datagrams (ValueError "reserved stream is missing",
    under heavy loss), after which stream data it held never leaves: the connection ends at
    once with INTERNAL_ERROR, which its peer hears, rather than look alive while the answers on
    it are lost (and the error go to the loop's exception handler)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        listener, serving, accepted = await start(certs)
        client = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        client.send_frame(request(1))
        assert await client.receive() == answer(request(1))
        server = accepted[0]
        assert isinstance(server, QUICConnection)
        stack = server._quic
        working = stack.datagrams_to_send
        failures = [ValueError("reserved stream is missing")]

        def failing(now: float) -> list[tuple[bytes, Any]]:
            if failures:
                raise failures.pop()
            return working(now)

        stack.datagrams_to_send = failing  # type: ignore[method-assign]
        client.send_frame(request(2))
        info = await server.wait_closed()
        assert info.error_code == ErrorCode.INTERNAL_ERROR
        assert "reserved stream is missing" in info.reason
        peer_info = await client.wait_closed()
        assert peer_info.error_code == ErrorCode.INTERNAL_ERROR
        assert reported == []
        await listener.close()
        await serving

    run_test(main())


def test_receive_queue_overflow_is_limit_exceeded(certs: ClusterCertificates) -> None:
    """A peer that outpaces a consumer by more than receive_queue_frames_max is cut off."""

    async def main() -> None:
        config = QUICTransportConfig(limits=ConnectionLimits(receive_queue_frames_max=4))
        listener = await QUICTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
        client = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        server = await listener.accept()  # ... which nobody reads.
        client.send_frames([PING] * 10)
        info = await client.wait_closed()
        assert info.error_code == ErrorCode.LIMIT_EXCEEDED
        assert info.initiator is CloseInitiator.PEER
        assert (await server.wait_closed()).initiator is CloseInitiator.LOCAL
        await listener.close()

    run_test(main())


@pytest.mark.parametrize("paced", [True, False])
def test_a_paced_connection_sends_a_burst_past_its_cap_to_a_peer_that_reads(
    certs: ClusterCertificates, paced: bool
) -> None:
    """The server's side of a client's connection is paced: 400 REQUESTs, each answered with
    500 KiB (200 MiB in all, `send_buffer_bytes_max` 1 MiB), are handled while the client takes
    the answers (frames held, not cut off, while the backlog is high), and all of them arrive;
    an unpaced connection was closed with LIMIT_EXCEEDED at the first burst."""
    limits = ConnectionLimits(
        send_buffer_high_water_bytes=64 << 10,
        send_buffer_low_water_bytes=16 << 10,
        send_buffer_bytes_max=1 << 20,
        send_stall_timeout_ms=5_000,
    )
    answer_body = bytes(500 << 10)

    async def main() -> None:
        config = QUICTransportConfig(limits=limits)
        listener = await QUICTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
        client = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        served = await listener.accept()
        if paced:
            served.pace_by_sending()

        def answer(frames: list[Frame]) -> None:
            served.send_frames(
                [
                    Response(
                        request_id=frame.request_id,
                        session_id=frame.session_id,
                        status=ResponseStatus.OK,
                        map_version=1,
                        payload=answer_body,
                    )
                    for frame in frames
                    if isinstance(frame, Request)
                ]
            )

        served.set_frame_handler(answer)
        client.send_frames([request(n) for n in range(400)])
        if not paced:
            info = await served.wait_closed()
            assert info.error_code == ErrorCode.LIMIT_EXCEEDED
            assert "the peer is not reading" in info.reason
            await client.wait_closed()
            await listener.close()
            return
        answered = set()
        for _ in range(400):
            frame = await client.receive()
            assert isinstance(frame, Response) and len(frame.payload) == len(answer_body)
            answered.add(frame.request_id)
        assert answered == set(range(400)) and not served.is_closed
        client.close()
        await client.wait_closed()
        await listener.close()

    run_test(main())


def test_idle_connection_ends_with_idle_timeout(certs: ClusterCertificates) -> None:
    """A silent connection is closed by the stack; the close says IDLE_TIMEOUT, by the network."""

    async def main() -> None:
        config = QUICTransportConfig(idle_timeout_ms=200, rtt_probe_interval_ms=0)
        listener = await QUICTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
        client = await QUICTransport(client_credentials(certs), config=config).connect(
            HOST, listener.port, server_id="s1"
        )
        info = await client.wait_closed()
        assert info.error_code == ErrorCode.IDLE_TIMEOUT
        assert info.initiator is CloseInitiator.NETWORK
        await listener.close()

    run_test(main())


def test_a_client_whose_server_process_is_gone_closes_at_the_first_port_unreachable(
    certs: ClusterCertificates,
) -> None:
    """The server's socket closes without a CONNECTION_CLOSE (its process killed): the
    client's next datagram draws an ICMP port unreachable, and the connection ends at once,
    saying so. Before, it waited for its pings to go unanswered (idle timeout here: 60 s), so a
    QUIC client failed over seconds later than a TLS one."""

    async def main() -> None:
        config = QUICTransportConfig(idle_timeout_ms=60_000, rtt_probe_interval_ms=0)
        listener = await QUICTransport(node_credentials(certs, "s1"), config=config).listen(HOST, 0)
        client = await QUICTransport(client_credentials(certs), config=config).connect(
            HOST, listener.port, server_id="s1"
        )
        server_socket = listener._datagram_transport
        assert server_socket is not None
        server_socket.abort()  # The process dies: no CONNECTION_CLOSE.
        client.send_frame(Ping(sequence=1, sent_us=1))
        async with asyncio.timeout(10):
            info = await client.wait_closed()
        assert info.initiator is CloseInitiator.NETWORK
        assert "port is unreachable" in info.reason, info
        await listener.close()

    run_test(main())


def test_path_stats_from_quic_pings(certs: ClusterCertificates) -> None:
    """QUIC PING acknowledgements give RTT samples: smoothed, minimum, latest, variation."""

    async def main() -> None:
        config = QUICTransportConfig(rtt_probe_interval_ms=10)
        listener, serving, _ = await start(certs, config)
        client = await QUICTransport(client_credentials(certs), config=config).connect(
            HOST, listener.port, server_id="s1"
        )
        while client.path_stats().rtt_sample_count < 3:
            await asyncio.sleep(0.01)
        stats = client.path_stats()
        assert stats.source == "quic_ping"
        assert stats.rtt_smoothed_us is not None and stats.rtt_smoothed_us > 0
        assert stats.rtt_min_us is not None and stats.rtt_min_us <= stats.rtt_smoothed_us * 8
        assert stats.rtt_latest_us is not None and stats.rtt_variance_us is not None
        assert stats.packets_lost_count is not None and stats.packets_sent_count
        assert stats.bytes_sent_count and stats.bytes_received_count
        client.close()
        await client.wait_closed()
        await listener.close()
        await serving

    run_test(main())


def test_requests_beyond_the_stream_limit_wait_for_credit(certs: ClusterCertificates) -> None:
    """More requests than the server's MAX_STREAMS allows at once are queued, then all sent."""

    async def main() -> None:
        listener, serving, _ = await start(certs)
        client = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        count = 1000  # qh3 grants 100 streams at first.
        client.send_frames([request(index) for index in range(count)])
        seen: set[int] = set()
        while len(seen) < count:
            for frame in await client.receive_frames():
                assert isinstance(frame, Response)
                seen.add(frame.request_id)
        assert seen == set(range(count))
        client.close()
        await client.wait_closed()
        await listener.close()
        await serving

    run_test(main())


def test_cancelled_connect_closes_its_socket(certs: ClusterCertificates) -> None:
    """A connect cancelled mid-handshake (its node closing) closes its UDP socket: left open,
    uvloop's loop close would never return once its ResourceWarning is an error."""

    async def main() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
            silent.bind((HOST, 0))  # Takes the handshake's datagrams and never answers.
            port = silent.getsockname()[1]
            connecting = asyncio.get_running_loop().create_task(
                QUICTransport(client_credentials(certs)).connect(HOST, port, server_id="s1")
            )
            await asyncio.sleep(0.05)
            assert not connecting.done()
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await connecting

    run_test(main())


def test_a_connection_left_open_loses_its_socket_with_the_loop(
    certs: ClusterCertificates,
) -> None:
    """A client connection nobody closes (a dial cancelled after its handshake) does not keep
    its UDP socket past the loop: loop shutdown closes it, so uvloop's close returns."""

    async def main() -> None:
        listener = await QUICTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        connection = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        assert not connection.is_closed
        # The server's socket goes without a word (a CONNECTION_CLOSE would end the client's
        # connection); the client's connection is neither closed nor awaited.
        datagrams = listener._datagram_transport
        assert datagrams is not None
        datagrams.close()
        await asyncio.sleep(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        run(main())
    leaks = [str(warning.message) for warning in caught if warning.category is ResourceWarning]
    assert not leaks, f"resources left open: {leaks}"


def test_send_frames_queues_all_or_none(certs: ClusterCertificates) -> None:
    """A batch holding a frame that cannot be encoded (past the frame bound) or has no request
    stream raises before any of its frames is queued: the PING before it never goes, the one
    sent after does (the node driver resends the good ones one by one)."""

    async def main() -> None:
        listener = await QUICTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        raw = await raw_connect(certs, listener.port)
        raw.send(b"\x00", unidirectional=True)
        raw.send(encode_frame(request(4)), end=True)
        server = await listener.accept()
        assert await server.receive() == request(4)
        too_long = ClusterMessage(kind=1, body=b"\x01" * (2 << 20))
        unrouted = answer(request(5))
        for bad in (too_long, unrouted):
            with pytest.raises(LocalProtocolError):
                server.send_frames([PING, answer(request(4)), bad])
        server.send_frames([Ping(sequence=9, sent_us=2, telemetry=()), answer(request(4))])
        await raw.close_and_wait()
        await listener.close()
        assert isinstance(server, QUICConnection)
        assert server.responses_dropped_count == 0

    run_test(main())


def test_a_refused_dial_sends_nothing_through_its_closed_socket(
    certs: ClusterCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A dial refused at once (a QUIC client pointed at a TCP-only port) closes its socket, and
    the stack's retransmission timer stops with it: it went on sending through the closed
    socket, and asyncio logged "socket.send() raised exception." for each datagram past the
    fifth, a few seconds after the error the caller already had."""
    caplog.set_level(logging.WARNING, logger="asyncio")

    async def main() -> None:
        with socket.socket() as tcp_only:
            tcp_only.bind((HOST, 0))
            tcp_only.listen()
            port = tcp_only.getsockname()[1]
            with pytest.raises(TransportError, match="Connection refused"):
                await QUICTransport(client_credentials(certs)).connect(HOST, port, server_id="s1")
            await asyncio.sleep(6.0)  # Past the stack's first retransmission timeouts.

    run_test(main())
    assert not [r for r in caplog.records if "socket.send() raised" in r.getMessage()]


class HalfOpenPeer(asyncio.DatagramProtocol):
    """A peer that sends a QUIC client's first flight (Initials of at least 1,200 bytes, from
    its own UDP port) and never answers what comes back, as a spoofed source would not."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.sent_count = 0
        """Datagrams it sent."""
        self.received_count = 0
        """Datagrams that came back, unread."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.DatagramTransport without deriving from it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received_count += 1

    @classmethod
    async def open(cls, port: int) -> HalfOpenPeer:
        """A peer with a socket aimed at `port`, that has sent nothing yet."""
        _, peer = await asyncio.get_running_loop().create_datagram_endpoint(
            cls, remote_addr=(HOST, port)
        )
        return peer

    @classmethod
    async def start(cls, port: int) -> HalfOpenPeer:
        """A peer that has sent a first flight without a token."""
        peer = await cls.open(port)
        peer.send_first_flight()
        return peer

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return str(host), int(port)

    def send_first_flight(
        self, *, token: bytes = b"", destination_id: bytes = b"", version: int = 1
    ) -> int:
        """Send a new connection's first flight of QUIC `version`, with `token` in its Initials
        and addressed to `destination_id` (a random id when empty), as a client that follows a
        Retry would; return how many datagrams it took."""
        assert self.transport is not None
        configuration = QuicConfiguration(
            is_client=True,
            alpn_protocols=["forehand/1"],
            server_name="s1",
            supported_versions=[version],
        )
        quic = QuicConnection(configuration=configuration)
        if destination_id:
            # qh3's client draws its first destination id itself and has no setter.
            quic._original_destination_connection_id = destination_id
        quic.connect(self.transport.get_extra_info("peername"), now=time.monotonic())
        if token:
            quic._require_core().set_initial_token(token)
        sent_count = 0
        for data, _ in quic.datagrams_to_send(now=time.monotonic()):
            self.transport.sendto(data)
            sent_count += 1
        self.sent_count += sent_count
        return sent_count

    def close(self) -> None:
        assert self.transport is not None
        self.transport.close()


async def until(condition: Callable[[], bool]) -> None:
    """Poll `condition` until it holds; run_test's hang timeout bounds the wait."""
    while not condition():
        await asyncio.sleep(0.01)


async def shut(
    listener: QUICListener,
    serving: asyncio.Task[None],
    peers: Sequence[HalfOpenPeer],
    clients: Sequence[Connection] = (),
) -> None:
    """Close a test's clients and half-open peers, then its listener, and wait for its server."""
    for client in clients:
        client.close()
        await client.wait_closed()
    for peer in peers:
        peer.close()
    await listener.close()
    await serving


RETRY_OFF = ConnectionLimits(handshakes_max=2, handshakes_unvalidated_max=2)
"""Two handshakes under way, and no Retry (the default, a quarter of handshakes_max, would be 0:
always Retry)."""


def test_half_open_handshakes_are_bounded_by_handshakes_max(
    certs: ClusterCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """At most handshakes_max handshakes are under way: past it a new handshake evicts the
    oldest (one warning for the stretch), so peers that start handshakes and never finish them
    hold no more than the bound and cannot lock a real client out: it connects and is served,
    and so does the connection already held. Refusing the newest instead let a flood of
    Initials that never complete keep every new client out (found by a second reading)."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        config = QUICTransportConfig(limits=RETRY_OFF)
        listener, serving, _ = await start(certs, config)
        good = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        peers = [await HalfOpenPeer.start(listener.port) for _ in range(4)]
        await until(lambda: listener.handshakes_evicted_count == 2)
        assert listener.handshake_count == 2 and listener.connection_count == 1
        late = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        assert listener.handshakes_evicted_count == 3
        assert listener.handshake_count == 1 and listener.connection_count == 2
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "handshakes_max=2" in warned[0], warned
        for number, client in enumerate((good, late)):
            client.send_frame(request(number))
            assert await client.receive() == answer(request(number))
            client.close()
            await client.wait_closed()
        await shut(listener, serving, peers)

    run_test(main())


def test_a_flood_whose_slots_free_one_at_a_time_is_one_stretch_at_handshakes_max(
    certs: ClusterCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A slot freed now and then (here a real client's handshake completing) and taken again by
    the flood's next Initial does not end the stretch at the bound: one WARNING, and its end is
    logged only once the handshakes under way fall to half the bound. Before, each freed slot
    logged the end and the next eviction a new WARNING."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        limits = ConnectionLimits(handshakes_max=4, handshakes_unvalidated_max=4)
        listener, serving, _ = await start(certs, QUICTransportConfig(limits=limits))
        transport = QUICTransport(client_credentials(certs))
        peers = [await HalfOpenPeer.start(listener.port) for _ in range(4)]
        await until(lambda: listener.handshake_count == 4)
        clients = []
        for round_number in range(3):
            # Evicts the oldest, completes: 3 under way, then the flood fills the slot again.
            clients.append(await transport.connect(HOST, listener.port, server_id="s1"))
            assert listener.handshake_count == 3
            peers.append(await HalfOpenPeer.start(listener.port))
            await until(lambda: listener.handshake_count == 4)
            assert listener.handshakes_evicted_count == round_number + 1
        lines = [(r.levelno, r.getMessage()) for r in caplog.records]
        warned = [text for level, text in lines if level == logging.WARNING]
        assert len(warned) == 1 and "handshakes_max=4" in warned[0], lines
        assert not [text for _, text in lines if "under handshakes_max again" in text], lines
        await shut(listener, serving, peers, clients)

    run_test(main())


def test_an_initial_of_a_version_the_listener_does_not_speak_evicts_nothing(
    certs: ClusterCertificates,
) -> None:
    """A QUIC version 2 Initial starts no handshake (the listener speaks version 1 and answers
    with Version Negotiation), so at handshakes_max it evicts none. Counting it as a new
    handshake let such Initials evict real clients' handshakes while holding no slot (found
    while adding Retry)."""

    async def main() -> None:
        listener, serving, _ = await start(certs, QUICTransportConfig(limits=RETRY_OFF))
        peers = [await HalfOpenPeer.start(listener.port) for _ in range(2)]
        await until(lambda: listener.handshake_count == 2)
        other = await HalfOpenPeer.open(listener.port)
        peers.append(other)
        other.send_first_flight(version=QuicProtocolVersion.VERSION_2)
        await until(lambda: other.received_count > 0)  # Version Negotiation
        assert listener.handshakes_evicted_count == 0 and listener.handshake_count == 2
        await shut(listener, serving, peers)

    run_test(main())


def test_a_handshake_that_never_completes_frees_its_slot(
    certs: ClusterCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A handshake not completed within handshake_timeout_ms is closed, logged and forgotten by
    the stack's server, so its slot under handshakes_max takes a real client again."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        config = QUICTransportConfig(limits=RETRY_OFF, handshake_timeout_ms=200)
        listener, serving, _ = await start(certs, config)
        peers = [await HalfOpenPeer.start(listener.port) for _ in range(2)]
        await until(lambda: listener.handshakes_timed_out_count == 2)
        assert listener.handshake_count == 0
        assert listener._server is not None and not listener._server._protocols
        assert not listener._server._ids  # forgotten by their own ids, not by a walk
        logged = [
            r.getMessage() for r in caplog.records if "handshake_timeout_ms=200" in r.getMessage()
        ]
        assert len(logged) == 2, logged
        clients = [
            await QUICTransport(client_credentials(certs)).connect(
                HOST, listener.port, server_id="s1"
            )
            for _ in range(2)
        ]
        for number, client in enumerate(clients):
            client.send_frame(request(number))
            assert await client.receive() == answer(request(number))
            client.close()
            await client.wait_closed()
        server = listener._server
        await until(lambda: not server._protocols and not server._ids)
        await shut(listener, serving, peers)

    run_test(main())


def test_a_client_follows_a_retry_and_is_served(
    certs: ClusterCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """With handshakes_unvalidated_max=0 every client's first Initial gets a Retry: qh3's client
    (QUICTransport.connect) comes back with the token, its handshake starts, confirms the
    Retry's connection id, and the connection is served; the listener counts the Retry (one per
    datagram of the client's first flight) and the token, and logs the Retry mode once."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        limits = ConnectionLimits(handshakes_unvalidated_max=0)
        listener, serving, accepted = await start(certs, QUICTransportConfig(limits=limits))
        client = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )
        client.send_frame(request(1))
        assert await client.receive() == answer(request(1))
        assert listener.retries_sent_count >= 1
        assert (listener.retry_tokens_accepted_count, listener.retry_tokens_refused_count) == (1, 0)
        assert listener.handshake_count == 0 and listener.handshake_unvalidated_count == 0
        # Both ends went through the Retry: the client once, and the server's handshake carried
        # the Retry's source connection id (RFC 9000 s.7.3), which qh3 sets only from a token.
        assert isinstance(client, QUICConnection) and client._quic._retry_count == 1
        server_side = accepted[0]
        assert isinstance(server_side, QUICConnection)
        assert server_side._quic._retry_source_connection_id is not None
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warned) == 1 and "handshakes_unvalidated_max=0" in warned[0], warned
        client.close()
        await client.wait_closed()
        await listener.close()
        await serving

    run_test(main())


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "retry-off"])
def test_a_flood_of_initials_from_spoofed_sources(certs: ClusterCertificates, retry: bool) -> None:
    """Initials from 24 sources that never answer, three times handshakes_max (8), with a real
    client connecting in the middle and one after. With handshakes_unvalidated_max=2 the flood
    holds two handshakes, the rest get Retries nobody follows, nothing is evicted, and both
    clients are served; with it equal to handshakes_max (Retry off) the same flood evicts."""

    async def main() -> None:
        limits = ConnectionLimits(handshakes_max=8, handshakes_unvalidated_max=2 if retry else 8)
        # The flood's handshakes must outlast the test, however slow the machine.
        config = QUICTransportConfig(limits=limits, handshake_timeout_ms=600_000)
        listener, serving, _ = await start(certs, config)
        transport = QUICTransport(client_credentials(certs))
        peers = [await HalfOpenPeer.start(listener.port) for _ in range(12)]
        # Without Retry, a client in the middle of the flood may be evicted by the 12 Initials
        # after it (its handshake shares this loop with the flood's): only the one after it is
        # sure to connect.
        during = (
            asyncio.create_task(transport.connect(HOST, listener.port, server_id="s1"))
            if retry
            else None
        )
        peers += [await HalfOpenPeer.start(listener.port) for _ in range(12)]
        clients = [] if during is None else [await during]
        # Sent after the whole flood, so the listener has read the flood once this connects.
        clients.append(await transport.connect(HOST, listener.port, server_id="s1"))
        for number, client in enumerate(clients):
            # Answered, so the listener has completed its side of the handshake too.
            client.send_frame(request(number))
            assert await client.receive() == answer(request(number))
        if retry:
            assert listener.handshakes_evicted_count == 0
            assert listener.handshakes_timed_out_count == 0
            # Nothing left but by completing or timing out: the flood never held more than 2.
            assert listener.handshake_count == listener.handshake_unvalidated_count == 2
            flood_retried = sum(peer.sent_count for peer in peers[2:])
            assert listener.retries_sent_count >= flood_retried
            assert listener.retry_tokens_accepted_count == len(clients) == 2
        else:
            assert listener.handshakes_evicted_count > 0
            assert listener.retries_sent_count == 0
        await shut(listener, serving, peers, clients)

    run_test(main())


def test_an_initial_with_a_bad_token_starts_no_handshake(certs: ClusterCertificates) -> None:
    """An Initial whose token is random bytes, issued for another port, expired, dated in the
    future, has one bit of its MAC flipped, or is valid but addressed to another connection id
    is dropped: no handshake, counted as refused. The same peer with its valid token starts
    one, so the refusals are the tokens' doing."""

    async def main() -> None:
        lifetime_ms = 10_000
        config = QUICTransportConfig(
            limits=ConnectionLimits(handshakes_unvalidated_max=0),
            retry_token_lifetime_ms=lifetime_ms,
        )
        listener, serving, _ = await start(certs, config)
        server = listener._server
        assert server is not None
        peer = await HalfOpenPeer.open(listener.port)
        retry_id = bytes(range(8))
        now_us = round(asyncio.get_running_loop().time() * 1_000_000)

        def token(address: tuple[str, int], issued_us: int) -> bytes:
            return server._tokens.create_token(address, b"original", retry_id, now_us=issued_us)

        host, port = peer.address
        good = token((host, port), now_us)
        bad = [
            (random.Random(7).randbytes(len(good)), retry_id),
            (token((host, port + 1), now_us), retry_id),
            (token((host, port), now_us - lifetime_ms * 1000 - 1), retry_id),
            (token((host, port), now_us + 60_000_000), retry_id),
            (good[:-1] + bytes((good[-1] ^ 1,)), retry_id),
            (good, bytes(8)),
        ]

        async def refused(bad_token: bytes, destination_id: bytes) -> None:
            """Send a first flight, and wait until the listener has refused all of it."""
            count = listener.retry_tokens_refused_count + peer.send_first_flight(
                token=bad_token, destination_id=destination_id
            )
            await until(lambda: listener.retry_tokens_refused_count == count)

        for bad_token, destination_id in bad:
            await refused(bad_token, destination_id)
            assert listener.handshake_count == 0 and not server._protocols
        assert listener.retries_sent_count == listener.retry_tokens_accepted_count == 0
        peer.send_first_flight(token=good, destination_id=retry_id)
        await until(lambda: listener.handshake_count == 1)
        assert listener.retry_tokens_accepted_count == 1
        assert listener.handshake_unvalidated_count == 0
        peer.close()
        await listener.close()
        await serving

    run_test(main())


def test_retry_token_lifetime_must_be_positive() -> None:
    """The lifetime of a listener's Retry tokens is a positive number of ms, or a ConfigError."""
    for value in (0, -1):
        with pytest.raises(ConfigError, match="retry_token_lifetime_ms"):
            QUICTransportConfig(retry_token_lifetime_ms=value)


BIG = Request(
    request_id=1,
    session_id=SESSION_ID,
    part="cart",
    op="get",
    map_version=1,
    payload=bytes(15_000),
)
"""A REQUEST of about 15,000 bytes; the budget tests send it as `HEAD` (14,000 bytes), a partial
frame held in the budget, then `REST`."""
HEAD, REST = encode_frame(BIG)[:14_000], encode_frame(BIG)[14_000:]


async def budget_listener(
    certs: ClusterCertificates, *, partial_frames_bytes_max: int
) -> tuple[QUICListener, asyncio.Task[None], ReceiveBudget]:
    """A QUIC listener of 16 KiB frames and the given partial-frame budget, answering every
    connection (`serve`); its accepting task and its transport's budget."""
    limits = ConnectionLimits(
        wire=WireConfig(frame_bytes_max=16_384), partial_frames_bytes_max=partial_frames_bytes_max
    )
    transport = QUICTransport(
        node_credentials(certs, "s1"), config=QUICTransportConfig(limits=limits)
    )
    listener = await transport.listen(HOST, 0)

    async def accept_all() -> None:
        async for connection in listener:
            serve(connection)

    return listener, asyncio.create_task(accept_all()), transport.receive_budget


def test_partial_frames_past_the_budget_close_the_largest_holder(
    certs: ClusterCertificates,
) -> None:
    """Request streams of every connection share partial_frames_bytes_max (40,000 here, partial
    REQUESTs of 14,000 bytes). A connection whose growth would pass it and make it the largest
    holder is closed with LIMIT_EXCEEDED, and the others finish their requests; a connection
    that needs room while another holds more gets it: the largest holder is closed instead (a
    peer parking partial frames loses its own connection, not the clients after it). A third
    client goes on being served, and the count goes back to zero."""

    async def main() -> None:
        listener, serving, budget = await budget_listener(certs, partial_frames_bytes_max=40_000)
        good = await QUICTransport(client_credentials(certs)).connect(
            HOST, listener.port, server_id="s1"
        )

        async def finishes(client: RawClient, stream_id: int) -> None:
            client.send_on(stream_id, REST, end=True)
            await client.wait_for(lambda: stream_id in client.ended)
            assert decode_all(client.streams[stream_id]) == [answer(BIG)]

        # The one that would become the largest holder is closed.
        holder = await raw_connect(certs, listener.port)
        held = holder.send(HEAD)
        await until(lambda: budget.held_bytes == len(HEAD))
        greedy = await raw_connect(certs, listener.port)
        greedy.send(HEAD)
        await until(lambda: budget.held_bytes == 2 * len(HEAD))
        greedy.send(HEAD)
        terminated = await greedy.terminated
        assert terminated.error_code == ErrorCode.LIMIT_EXCEEDED
        assert "would pass partial_frames_bytes_max=40000" in terminated.reason_phrase
        assert greedy.datagram_transport is not None
        greedy.datagram_transport.close()
        assert budget.held_bytes == len(HEAD)
        await finishes(holder, held)
        assert budget.held_bytes == 0
        # A newcomer that needs room gets it from the largest holder.
        parker = await raw_connect(certs, listener.port)
        parker.send(HEAD)
        parker.send(HEAD)
        await until(lambda: budget.held_bytes == 2 * len(HEAD))
        newcomer = await raw_connect(certs, listener.port)
        arriving = newcomer.send(HEAD)
        terminated = await parker.terminated
        assert terminated.error_code == ErrorCode.LIMIT_EXCEEDED
        assert "held the most of them (28000 bytes)" in terminated.reason_phrase
        assert parker.datagram_transport is not None
        parker.datagram_transport.close()
        await until(lambda: budget.held_bytes == len(HEAD))
        await finishes(newcomer, arriving)
        good.send_frame(request(3))
        assert await good.receive() == answer(request(3))
        assert budget.held_bytes == 0
        for client in (holder, newcomer):
            await client.close_and_wait()
        good.close()
        await good.wait_closed()
        await listener.close()
        await serving

    run_test(main())


@pytest.mark.parametrize("order", ["truncated-then-reset", "reset-then-truncated"])
def test_a_stream_reset_after_the_close_gives_nothing_back_twice(
    certs: ClusterCertificates, order: str
) -> None:
    """A client ends one request stream inside its frame (TRUNCATED_STREAM: the connection
    closes and gives its partial frames back) and resets another in the same datagram. The
    reset, delivered after the close, gives back nothing more: another client's partial frame
    stays counted, its request is answered, and the count ends at zero. Before, the reset gave
    its bytes back a second time, out of the other client's, which then failed an assertion
    and was never answered (found by a second reading)."""

    async def main() -> None:
        listener, serving, budget = await budget_listener(certs, partial_frames_bytes_max=100_000)
        holder = await raw_connect(certs, listener.port)
        held = holder.send(HEAD)
        await until(lambda: budget.held_bytes == len(HEAD))
        attacker = await raw_connect(certs, listener.port)
        first, second = attacker.send(HEAD), attacker.send(HEAD)
        await until(lambda: budget.held_bytes == 3 * len(HEAD))
        truncated, reset = (first, second) if order == "truncated-then-reset" else (second, first)
        if order == "truncated-then-reset":
            attacker.quic.send_stream_data(truncated, b"", end_stream=True)
            attacker.quic.reset_stream(reset, 0)
        else:
            attacker.quic.reset_stream(reset, 0)
            attacker.quic.send_stream_data(truncated, b"", end_stream=True)
        attacker.transmit()
        terminated = await attacker.terminated
        assert terminated.error_code == ErrorCode.TRUNCATED_STREAM
        assert attacker.datagram_transport is not None
        attacker.datagram_transport.close()
        assert budget.held_bytes == len(HEAD)
        holder.send_on(held, REST, end=True)
        await holder.wait_for(lambda: held in holder.ended)
        assert decode_all(holder.streams[held]) == [answer(BIG)]
        assert budget.held_bytes == 0
        await holder.close_and_wait()
        await listener.close()
        await serving

    run_test(main())


def test_a_flood_that_outlasts_its_handshakes_is_one_stretch_of_retry(
    certs: ClusterCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood of Initials without a token goes on while its handshakes end one by one (in a
    flood from spoofed sources they time out; here validated clients evict them, which is
    deterministic): each slot freed is taken by the flood's next Initial, so the listener stays
    in Retry mode and logs it once, not a WARNING and an INFO per handshake ended (one of
    each per handshake timed out, 25 a second at the defaults)."""
    caplog.set_level(logging.INFO, logger="forehand.runtime.transport")

    async def main() -> None:
        limits = ConnectionLimits(handshakes_max=8, handshakes_unvalidated_max=4)
        config = QUICTransportConfig(limits=limits, handshake_timeout_ms=600_000)
        listener, serving, _ = await start(certs, config)
        server = listener._server
        assert server is not None
        peers: list[HalfOpenPeer] = []

        async def flood() -> None:
            """One more Initial without a token, from a source that never answers."""
            peer = await HalfOpenPeer.start(listener.port)
            peers.append(peer)
            await until(lambda: peer.received_count > 0)  # a Retry, or the handshake's answer

        async def validated() -> None:
            """A handshake of a client that followed a Retry (its token is valid)."""
            peer = await HalfOpenPeer.open(listener.port)
            peers.append(peer)
            retry_id = random.Random(len(peers)).randbytes(8)
            now_us = round(asyncio.get_running_loop().time() * 1_000_000)
            token = server._tokens.create_token(peer.address, b"original", retry_id, now_us=now_us)
            accepted = listener.retry_tokens_accepted_count + 1
            peer.send_first_flight(token=token, destination_id=retry_id)
            await until(lambda: listener.retry_tokens_accepted_count == accepted)

        for _ in range(4):
            await flood()
            await validated()
        assert listener.handshake_count == 8 and listener.handshake_unvalidated_count == 4
        await flood()  # a Retry
        for round_number in range(1, 5):
            await validated()  # evicts the oldest handshake, one of the flood's
            assert listener.handshake_unvalidated_count == 3
            await flood()  # takes the slot (evicting the oldest, a validated one)
            await flood()  # a Retry
            assert listener.handshake_unvalidated_count == 4
            assert listener.handshakes_evicted_count == 2 * round_number
        assert listener.retries_sent_count == 5 * peers[0].sent_count
        for _ in range(4):
            await validated()  # evicts the oldest: a validated handshake, then a flood's, twice
        assert listener.handshake_unvalidated_count == 2
        await flood()  # at half the bound the stretch is over: a handshake, no Retry
        assert listener.retries_sent_count == 5 * peers[0].sent_count
        ours = [r for r in caplog.records if r.name == "forehand.runtime.transport"]
        retrying = [r.getMessage() for r in ours if "handshakes_unvalidated_max" in r.getMessage()]
        assert len(retrying) == 2, retrying
        assert "new clients get a Retry first" in retrying[0]
        assert f"again ({listener.retries_sent_count} Retries sent" in retrying[1]
        await shut(listener, serving, peers)

    run_test(main())
