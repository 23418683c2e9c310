"""100-byte requests over the forehand/1 transports against a raw echo of the same bytes.

On loopback, one process, one uvloop loop. For each binding (TLS 1.3 over TCP, QUIC on qh3) the
candidate is a `forehand.runtime` client sending REQUEST frames of 100 bytes to a framed echo
server that answers each with a RESPONSE carrying the same payload; the baseline, measured in the
same run and interleaved round by round, is a raw uvloop echo of 100 opaque bytes over the very
same transport: the same TLS context (TLS 1.3, ALPN forehand/1, the cluster CA) or the same
QUIC stack and configuration with one bidirectional stream per request. Rows: sequential round
trips per second (one request in flight), pipelined requests per second (64 in flight), and
handshakes per second (connect until usable; handoff reconnects pay it).

Then, over each binding, a small handoff on a real cluster (a manager and two servers as
processes, `benchmarks._cluster`): a few sessions of the cart example call in a loop, each is
moved to the other server (admin MoveSession) a few times, and the time from HANDOFF to the first
response from the target is taken per session from the client's event stream (HANDOFF is
timestamped when the client receives it, microseconds after the source sent it on loopback). The
1,000-session handoff and its p99 latency are `bench_handoff.py`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import ssl
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._cluster import SessionLoad, running_cluster
from benchmarks._common import (
    Comparison,
    Metric,
    compare,
    percentile,
    print_comparisons,
    print_metrics,
)
from qh3.asyncio.protocol import QuicConnectionProtocol
from qh3.asyncio.server import QuicServer
from qh3.quic import events
from qh3.quic.configuration import QuicConfiguration
from qh3.quic.connection import QuicConnection

from forehand.core import ClientConfig
from forehand.demo._cluster import ADMIN_NODE, MANAGER_NODE, DemoCluster
from forehand.runtime import (
    ALPN,
    Connection,
    Credentials,
    QUICTransport,
    TLSTransport,
    Transport,
    loop_factory,
    make_cluster_certs,
    run,
)
from forehand.runtime.admin import MoveSession, admin_request
from forehand.wire import Frame, Request, Response, ResponseStatus, encode_frame

REQUEST_BYTES = 100
IN_FLIGHT = 64
SEQUENTIAL_COUNT = 2_000
PIPELINED_COUNT = 8_000
HANDSHAKE_COUNT = 40
ROUNDS = 5
SESSION_ID = bytes.fromhex("0190f5a3c2e87d4b9a3f1c2d3e4f5a6b")
SERVER_ID = "bench-server"
HOST = "127.0.0.1"
_T = TypeVar("_T")
HANDOFF_SERVERS = ("s1", "s2")
HANDOFF_SESSIONS = 8
HANDOFF_ROUNDS = 3
"""Each session is moved this many times (to the other server and back)."""
HANDOFF_PAUSE_MS = 20
"""Pause between a session's calls (a call follows at once after a placement change)."""
HANDOFF_WAIT_S = 30.0
"""A round whose sessions did not all answer from their target by then is reported short."""
HANDOFF_MANAGER_CORE = {
    "heartbeat_interval_ms": 100,
    "handoff_deadline_ms": 10_000,
    "handoff_backup_report_timeout_ms": 5_000,
    # Only the benchmark moves parts: the load-based risk policy is off.
    "overload_threshold": 100.0,
}
HANDOFF_SERVER_CORE = {
    "heartbeat_interval_ms": 100,
    "backup_period_ms": 1000,
    "handoff_deadline_ms": 10_000,
}


def _request_payload_bytes() -> int:
    """The payload that makes a REQUEST frame exactly REQUEST_BYTES long on the wire."""
    empty = Request(
        request_id=1, session_id=SESSION_ID, part="cart", op="get", map_version=1, payload=b""
    )
    return REQUEST_BYTES - len(encode_frame(empty))


PAYLOAD = bytes(_request_payload_bytes())
RAW_MESSAGE = bytes(REQUEST_BYTES)
assert len(RAW_MESSAGE) == REQUEST_BYTES


# -- forehand side ------------------------------------------------------------------------


def _answer(connection: Connection) -> None:
    """The framed echo server: each REQUEST gets a RESPONSE with the same payload.

    It answers from the frame handler, inside the transport's receive callback, with one
    `send_frames` per batch, the way the runtime driver feeds a core and drains it.
    """
    ok = ResponseStatus.OK

    def answer(frames: list[Frame]) -> None:
        connection.send_frames(
            [
                Response(
                    request_id=frame.request_id,
                    session_id=frame.session_id,
                    status=ok,
                    map_version=frame.map_version,
                    payload=frame.payload,
                )
                for frame in frames
                if isinstance(frame, Request)
            ]
        )

    connection.set_frame_handler(answer)


class ForehandClient:
    """Sends REQUEST frames and counts RESPONSE frames on one connection.

    `run` keeps a window of requests in flight from the frame handler, as the raw client does
    from `data_received`; `pipelined_async` does the same with `await receive_frames()`.
    """

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._ids = itertools.count(1)
        self._window_left = 0
        self._outstanding = 0
        self._done: asyncio.Future[None] | None = None

    def _requests(self, count: int) -> list[Frame]:
        ids = self._ids
        return [
            Request(
                request_id=next(ids),
                session_id=SESSION_ID,
                part="cart",
                op="get",
                map_version=1,
                payload=PAYLOAD,
            )
            for _ in range(count)
        ]

    def _answered(self, frames: list[Frame]) -> None:
        answered = len(frames)
        self._outstanding -= answered
        more = min(answered, self._window_left)
        if more:
            self._window_left -= more
            self._outstanding += more
            self.connection.send_frames(self._requests(more))
        elif self._outstanding == 0 and self._done is not None:
            self._done.set_result(None)

    async def run(self, count: int, in_flight: int) -> None:
        first = min(in_flight, count)
        self._window_left = count - first
        self._outstanding = first
        self._done = asyncio.get_running_loop().create_future()
        self.connection.set_frame_handler(self._answered)
        self.connection.send_frames(self._requests(first))
        await self._done
        self.connection.set_frame_handler(None)

    async def sequential(self, count: int) -> None:
        await self.run(count, 1)

    async def pipelined(self, count: int) -> None:
        await self.run(count, IN_FLIGHT)

    async def pipelined_async(self, count: int) -> None:
        connection = self.connection
        sent = min(IN_FLIGHT, count)
        connection.send_frames(self._requests(sent))
        received = 0
        while received < count:
            answered = len(await connection.receive_frames())
            received += answered
            more = min(answered, count - sent)
            sent += more
            connection.send_frames(self._requests(more))


# -- raw TLS echo ---------------------------------------------------------------------------


class RawEcho(asyncio.Protocol):
    """Writes back every byte it reads."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class RawStreamClient(asyncio.Protocol):
    """Sends 100-byte messages and counts the 100-byte echoes."""

    def __init__(self) -> None:
        self.transport: Any = None
        self._loop = asyncio.get_running_loop()
        self._received_bytes = 0
        self._expected = 0
        self._window_left = 0
        self._done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        before = self._received_bytes // REQUEST_BYTES
        self._received_bytes += len(data)
        answered = self._received_bytes // REQUEST_BYTES - before
        more = min(answered, self._window_left)
        if more:
            self._window_left -= more
            self.transport.write(RAW_MESSAGE * more)
        if self._received_bytes >= self._expected and self._done is not None:
            self._done.set_result(None)

    async def run(self, count: int, in_flight: int) -> None:
        self._received_bytes = 0
        self._expected = count * REQUEST_BYTES
        first = min(in_flight, count)
        self._window_left = count - first
        self._done = self._loop.create_future()
        self.transport.write(RAW_MESSAGE * first)
        await self._done

    async def sequential(self, count: int) -> None:
        await self.run(count, 1)

    async def pipelined(self, count: int) -> None:
        await self.run(count, IN_FLIGHT)


def _tls_contexts(credentials: Credentials) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client contexts configured as TLSTransport configures its own."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.set_alpn_protocols([ALPN])
        context.load_verify_locations(cafile=credentials.ca_certificate_path)
    assert credentials.certificate_path is not None
    server.load_cert_chain(credentials.certificate_path, credentials.private_key_path)
    return server, client


# -- raw QUIC echo --------------------------------------------------------------------------


class RawQuicEcho(QuicConnectionProtocol):
    """Echoes every stream's bytes on the same stream, ending it when the client does."""

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, end_stream=event.end_stream)


class RawQuicClient(QuicConnectionProtocol):
    """One bidirectional stream per 100-byte message; counts the streams the echo ends."""

    def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
        super().__init__(quic, stream_handler)
        self.quic = quic
        self.datagram_transport: asyncio.BaseTransport | None = None
        self._window_left = 0
        self._blocked = 0
        self._outstanding = 0
        self._done: asyncio.Future[None] | None = None

    def quic_event_received(self, event: events.QuicEvent) -> None:
        while self._blocked and self._stream_credit():
            self._blocked -= 1
            self._open_stream()
        if isinstance(event, events.StreamDataReceived) and event.end_stream:
            self._outstanding -= 1
            if self._window_left:
                self._window_left -= 1
                self._send_one()
            elif self._outstanding == 0 and self._done is not None:
                self._done.set_result(None)

    def _stream_credit(self) -> bool:
        """Whether the server's MAX_STREAMS allows one more stream (qh3 raises otherwise)."""
        opened = self.quic.get_next_available_stream_id() >> 2
        return opened < self.quic.max_concurrent_bidi_streams

    def _send_one(self) -> None:
        self._outstanding += 1
        if self._blocked or not self._stream_credit():
            self._blocked += 1
        else:
            self._open_stream()

    def _open_stream(self) -> None:
        stream_id = self.quic.get_next_available_stream_id()
        self.quic.send_stream_data(stream_id, RAW_MESSAGE, end_stream=True)

    async def run(self, count: int, in_flight: int) -> None:
        first = min(in_flight, count)
        self._window_left = count - first
        self._done = asyncio.get_running_loop().create_future()
        for _ in range(first):
            self._send_one()
        self.transmit()
        await self._done

    async def sequential(self, count: int) -> None:
        await self.run(count, 1)

    async def pipelined(self, count: int) -> None:
        await self.run(count, IN_FLIGHT)


def _quic_configuration(credentials: Credentials, *, is_client: bool) -> QuicConfiguration:
    """A configuration like QUICTransport's own."""
    configuration = QuicConfiguration(
        is_client=is_client, alpn_protocols=[ALPN], server_name=SERVER_ID if is_client else None
    )
    if is_client:
        configuration.load_verify_locations(cafile=str(credentials.ca_certificate_path))
    else:
        assert credentials.certificate_path is not None
        configuration.load_cert_chain(credentials.certificate_path, credentials.private_key_path)
    return configuration


async def _raw_quic_connect(credentials: Credentials, port: int) -> RawQuicClient:
    loop = asyncio.get_running_loop()
    quic = QuicConnection(configuration=_quic_configuration(credentials, is_client=True))
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: RawQuicClient(quic), local_addr=("0.0.0.0", 0)
    )
    protocol.datagram_transport = transport
    protocol.connect((HOST, port))
    await protocol.wait_connected()
    return protocol


# -- the run ---------------------------------------------------------------------------


class Bench:
    """Drives one uvloop loop from synchronous code, as `compare` expects."""

    def __init__(self, directory: Path) -> None:
        self.loop = loop_factory()()
        certificates = make_cluster_certs(directory, [SERVER_ID])
        self.server = Credentials.for_node(certificates.directory, SERVER_ID)
        self.client = Credentials.for_client(certificates.directory)
        self._tasks: set[asyncio.Task[None]] = set()
        self._cleanups: list[Callable[[], Awaitable[object]]] = []

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self.loop.run_until_complete(coroutine)

    async def forehand_pair(self, transport: Transport, client: Transport) -> ForehandClient:
        listener = await transport.listen(HOST, 0)

        async def serve() -> None:
            async for connection in listener:
                _answer(connection)

        self._tasks.add(asyncio.create_task(serve()))
        self._cleanups.append(listener.close)
        connection = await client.connect(HOST, listener.port, server_id=SERVER_ID)
        self._cleanups.append(connection.wait_closed)
        self._cleanups.append(_closer(connection))
        return ForehandClient(connection)

    async def raw_tls_pair(self) -> tuple[RawStreamClient, int]:
        server_context, client_context = _tls_contexts(self.server)
        server = await self.loop.create_server(RawEcho, HOST, 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        _, client = await self.loop.create_connection(
            RawStreamClient, HOST, port, ssl=client_context, server_hostname=SERVER_ID
        )

        async def close() -> None:
            client.transport.close()
            server.close()
            await server.wait_closed()

        self._cleanups.append(close)
        return client, port

    async def raw_quic_pair(self) -> tuple[RawQuicClient, int]:
        configuration = _quic_configuration(self.server, is_client=False)
        transport, server = await self.loop.create_datagram_endpoint(
            lambda: QuicServer(configuration=configuration, create_protocol=RawQuicEcho),
            local_addr=(HOST, 0),
        )
        port = transport.get_extra_info("sockname")[1]
        client = await _raw_quic_connect(self.client, port)

        async def close() -> None:
            await _raw_quic_close(client)
            server.close()  # type: ignore[no-untyped-call]  # qh3 leaves it unannotated.

        self._cleanups.append(close)
        return client, port

    def handshakes(
        self,
        name: str,
        candidate: Callable[[], Awaitable[Any]],
        baseline: Callable[[], Awaitable[Any]],
    ) -> Comparison:
        """Connects per second, counting only the time until each connection is usable."""

        async def timed(connect: Callable[[], Awaitable[Any]]) -> float:
            spent = 0.0
            for _ in range(HANDSHAKE_COUNT):
                started = time.perf_counter()
                closer = await connect()
                spent += time.perf_counter() - started
                await closer()
            return HANDSHAKE_COUNT / spent

        best_candidate = best_baseline = 0.0
        for _ in range(ROUNDS):
            best_candidate = max(best_candidate, self.run(timed(candidate)))
            best_baseline = max(best_baseline, self.run(timed(baseline)))
        return Comparison(
            name=name,
            candidate_per_second=best_candidate,
            baseline_per_second=best_baseline,
            baseline_name="raw library connect",
        )

    def close(self) -> None:
        async def cleanup() -> None:
            for cleanup in reversed(self._cleanups):
                await cleanup()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self.run(cleanup())
        self.loop.close()


def _closer(connection: Connection) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        connection.close()

    return close


def _rows(bench: Bench, label: str, candidate: Any, baseline: Any) -> list[Comparison]:
    baseline_name = f"raw uvloop echo, {label}"
    return [
        compare(
            f"{label} sequential round trips",
            candidate=lambda count: bench.run(candidate.sequential(count)),
            baseline=lambda count: bench.run(baseline.sequential(count)),
            baseline_name=baseline_name,
            count=SEQUENTIAL_COUNT,
            rounds=ROUNDS,
        ),
        compare(
            f"{label} pipelined requests ({IN_FLIGHT} in flight)",
            candidate=lambda count: bench.run(candidate.pipelined(count)),
            baseline=lambda count: bench.run(baseline.pipelined(count)),
            baseline_name=baseline_name,
            count=PIPELINED_COUNT,
            rounds=ROUNDS,
        ),
        compare(
            f"{label} pipelined, await receive_frames()",
            candidate=lambda count: bench.run(candidate.pipelined_async(count)),
            baseline=lambda count: bench.run(baseline.pipelined(count)),
            baseline_name=baseline_name,
            count=PIPELINED_COUNT,
            rounds=ROUNDS,
        ),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        choices=("transports", "handoff"),
        help="run only the transport rows or only the small handoff",
    )
    arguments = parser.parse_args(argv)
    if arguments.only != "handoff":
        _transports()
    if arguments.only != "transports":
        _handoffs()


def _transports() -> None:
    with tempfile.TemporaryDirectory() as directory:
        bench = Bench(Path(directory))
        tls_server, tls_client = TLSTransport(bench.server), TLSTransport(bench.client)
        quic_server, quic_client = QUICTransport(bench.server), QUICTransport(bench.client)
        rows: list[Comparison] = []
        forehand_tls = bench.run(bench.forehand_pair(tls_server, tls_client))
        raw_tls, raw_tls_port = bench.run(bench.raw_tls_pair())
        rows += _rows(bench, "TLS/TCP", forehand_tls, raw_tls)
        forehand_quic = bench.run(bench.forehand_pair(quic_server, quic_client))
        raw_quic, raw_quic_port = bench.run(bench.raw_quic_pair())
        rows += _rows(bench, "QUIC", forehand_quic, raw_quic)
        tls_port = forehand_tls.connection.peer_address
        quic_port = forehand_quic.connection.peer_address
        assert tls_port is not None and quic_port is not None
        rows.append(
            bench.handshakes(
                "TLS/TCP handshakes",
                _forehand_connect(tls_client, tls_port[1]),
                _raw_tls_connect(bench, raw_tls_port),
            )
        )
        rows.append(
            bench.handshakes(
                "QUIC handshakes",
                _forehand_connect(quic_client, quic_port[1]),
                _raw_quic_connector(bench, raw_quic_port),
            )
        )
        bench.close()
    print_comparisons("forehand/1 transports: 100-byte requests on loopback", rows)
    for row in rows:
        if "handshakes" in row.name:
            print(
                f"{row.name}: {1000 / row.candidate_per_second:.2f} ms forehand, "
                f"{1000 / row.baseline_per_second:.2f} ms raw"
            )
    for row in rows:
        if "await" not in row.name and "handshakes" not in row.name:
            print(f"ratio {row.name}: {row.ratio:.2f}x")


def _handoffs() -> None:
    metrics: list[Metric] = []
    for transport, label in (("tls", "TLS/TCP"), ("quic", "QUIC")):
        samples, unreached, unanswered = run(_handoff_samples(transport))
        metrics += _handoff_metrics(label, samples, unreached, unanswered)
    print_metrics("Small handoff on a real cluster (loopback)", metrics)


async def _handoff_samples(transport: str) -> tuple[list[float], int, int]:
    """Milliseconds from HANDOFF to the first response from the target, one per session and
    move; then how many moves brought no HANDOFF to the client, and how many brought one but no
    answer from its target, within HANDOFF_WAIT_S."""
    async with (
        running_cluster(
            servers=HANDOFF_SERVERS,
            manager_core=HANDOFF_MANAGER_CORE,
            server_core=HANDOFF_SERVER_CORE,
            transport=transport,
        ) as cluster,
        SessionLoad(
            cluster,
            sessions=HANDOFF_SESSIONS,
            clients=1,
            pause_ms=HANDOFF_PAUSE_MS,
            client_config=ClientConfig(request_timeout_ms=20_000),
        ) as load,
    ):
        await asyncio.sleep(1.0)
        samples: list[float] = []
        unreached = unanswered = 0
        for _ in range(HANDOFF_ROUNDS):
            since_s = time.monotonic()
            session_ids = [session.id for session in load.sessions]
            for session_id in session_ids:
                await _move(cluster, session_id)
            found, handed = await _first_answers(load, since_s, session_ids)
            samples += found
            unreached += len(session_ids) - handed
            unanswered += handed - len(found)
        return samples, unreached, unanswered


async def _move(cluster: DemoCluster, session_id: bytes) -> None:
    """Ask the manager to move the session (with two servers: to the other one); retried while
    its previous move still settles."""
    deadline_s = time.monotonic() + HANDOFF_WAIT_S
    while True:
        reply = await admin_request(
            cluster.manager_address,
            MoveSession(session_id=session_id),
            certs_dir=cluster.certs_dir,
            node_id=ADMIN_NODE,
            manager_id=MANAGER_NODE,
        )
        if reply.ok or time.monotonic() > deadline_s:
            assert reply.ok, reply.detail
            return
        await asyncio.sleep(0.2)


async def _first_answers(
    load: SessionLoad, since_s: float, session_ids: list[bytes]
) -> tuple[list[float], int]:
    """Wait for every session's first answer from the target of its first HANDOFF after
    `since_s`; the delays, in milliseconds, and how many sessions received a HANDOFF."""
    deadline_s = time.monotonic() + HANDOFF_WAIT_S
    delays: dict[bytes, float] = {}
    handed: set[bytes] = set()
    while len(delays) < len(session_ids) and time.monotonic() < deadline_s:
        for session_id in session_ids:
            trace = load.traces[session_id]
            received = [(t, target) for t, _, target in trace.started if t > since_s]
            if not received:
                continue
            handed.add(session_id)
            received_s, target = received[0]
            answered_s = trace.first_response_after(received_s, server=target)
            if answered_s is not None:
                delays[session_id] = (answered_s - received_s) * 1000
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # let the sources' backup periods start before the next move
    return list(delays.values()), len(handed)


def _handoff_metrics(
    label: str, samples: list[float], unreached: int, unanswered: int
) -> list[Metric]:
    prefix = f"{label} small handoff ({HANDOFF_SESSIONS} sessions), HANDOFF to first response"
    rows = [
        Metric(
            name=f"{label} small handoff: moves whose HANDOFF never reached the client",
            value=unreached,
            unit="moves",
            target="0",
            met=unreached == 0,
        ),
        Metric(
            name=f"{label} small handoff: HANDOFFs without an answer from the target in time",
            value=unanswered,
            unit="moves",
            target="0",
            met=unanswered == 0,
        ),
    ]
    if samples:
        rows[:0] = [
            Metric(name=f"{prefix}, p50", value=percentile(samples, 0.5), unit="ms"),
            Metric(name=f"{prefix}, max", value=max(samples), unit="ms"),
        ]
    return rows


def _forehand_connect(client: Transport, port: int) -> Callable[[], Awaitable[Any]]:
    async def connect() -> Callable[[], Awaitable[None]]:
        connection = await client.connect(HOST, port, server_id=SERVER_ID)

        async def close() -> None:
            connection.close()
            await connection.wait_closed()

        return close

    return connect


def _raw_tls_connect(bench: Bench, port: int) -> Callable[[], Awaitable[Any]]:
    _, client_context = _tls_contexts(bench.server)

    async def connect() -> Callable[[], Awaitable[None]]:
        transport, _ = await bench.loop.create_connection(
            asyncio.Protocol, HOST, port, ssl=client_context, server_hostname=SERVER_ID
        )

        async def close() -> None:
            transport.close()

        return close

    return connect


def _raw_quic_connector(bench: Bench, port: int) -> Callable[[], Awaitable[Any]]:
    async def connect() -> Callable[[], Awaitable[None]]:
        client = await _raw_quic_connect(bench.client, port)

        async def close() -> None:
            await _raw_quic_close(client)

        return close

    return connect


async def _raw_quic_close(client: RawQuicClient) -> None:
    client.close()
    await client.wait_closed()
    assert client.datagram_transport is not None
    client.datagram_transport.close()


if __name__ == "__main__":
    main()
