"""The fault proxy delays, drops, throttles and cuts loopback traffic as told, and only so."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest

from forehand.errors import ConfigError
from forehand.runtime import (
    CloseInitiator,
    ClusterCertificates,
    Connection,
    Listener,
    QUICTransport,
    TLSTransport,
    Transport,
    TransportError,
)
from forehand.runtime.faultproxy import (
    Direction,
    FaultProxyConfig,
    FaultSchedule,
    Partition,
    PathFaults,
    TCPFaultProxy,
    UDPFaultProxy,
)
from forehand.wire import Ping, Pong

if TYPE_CHECKING:
    from tests.runtime._runtime_helpers import (
        HOST,
        client_credentials,
        node_credentials,
        run_test,
    )
else:
    from _runtime_helpers import HOST, client_credentials, node_credentials, run_test

QUIET_WAIT_S = 0.3
"""How long a test waits to see that nothing crosses a cut path (nothing can, however long)."""
CLOCK_SLACK_MS = 5.0
"""Lower bounds on elapsed time allow this much: uvloop's clock ticks in milliseconds and is
read once per loop iteration."""


# -- the pure schedule ---------------------------------------------------------------------


def test_ramp_interpolates_numbers_and_switches_partition_at_the_end() -> None:
    """A ramp moves each value linearly, bandwidth by time per byte, the partition at the end."""
    schedule = FaultSchedule()
    target = PathFaults(
        delay_ms=100.0,
        loss_probability=0.5,
        bandwidth_bytes_per_second=1000.0,
        partition=Partition.BLACKHOLE,
    )
    schedule.ramp(target, duration_ms=10.0, now_us=1_000)
    assert schedule.faults_at(now_us=1_000) == PathFaults()
    half = schedule.faults_at(now_us=6_000)
    assert half.delay_ms == pytest.approx(50.0)
    assert half.loss_probability == pytest.approx(0.25)
    assert half.bandwidth_bytes_per_second == pytest.approx(2000.0)
    assert half.partition is Partition.NONE
    assert schedule.faults_at(now_us=11_000) == target
    assert schedule.settles_us == 11_000
    schedule.ramp(PathFaults(), duration_ms=10.0, now_us=21_000)
    assert schedule.faults_at(now_us=26_000).delay_ms == pytest.approx(50.0)
    schedule.set(PathFaults(delay_ms=7.0), now_us=27_000)
    assert schedule.faults_at(now_us=27_001).delay_ms == 7.0


@pytest.mark.parametrize(
    "values",
    [
        {"loss_probability": 1.5},
        {"delay_ms": -1.0},
        {"bandwidth_bytes_per_second": -5.0},
        {"reset_probability": -0.1},
    ],
)
def test_faults_out_of_range_are_refused(values: dict[str, Any]) -> None:
    """Probabilities outside [0, 1] and negative delays or rates are configuration errors."""
    with pytest.raises(ConfigError):
        PathFaults(**values)


def test_config_bounds_must_be_positive() -> None:
    """Every queue bound of the proxy is positive."""
    with pytest.raises(ConfigError):
        FaultProxyConfig(queue_datagrams_max=0)
    with pytest.raises(ConfigError):
        FaultProxyConfig(queue_bytes_max=0)


# -- TCP: a TLS ping server behind the proxy -----------------------------------------------


async def _answer_pings(listener: Listener) -> None:
    async def answer(connection: Connection) -> None:
        async for frame in connection:
            if isinstance(frame, Ping) and not connection.is_closed:
                connection.send_frame(Pong(sequence=frame.sequence, sent_us=frame.sent_us))

    async with asyncio.TaskGroup() as group:
        async for connection in listener:
            group.create_task(answer(connection))


@dataclass
class Path:
    """A ping server, a proxy in front of it, and a client transport."""

    proxy: TCPFaultProxy | UDPFaultProxy
    client: Transport
    connections: list[Connection] = field(default_factory=list)

    async def connect(self) -> Connection:
        connection = await self.client.connect(HOST, self.proxy.port, server_id="s1")
        self.connections.append(connection)
        return connection


@asynccontextmanager
async def proxied(
    certs: ClusterCertificates,
    kind: str = "tls",
    *,
    config: FaultProxyConfig | None = None,
    seed: int = 1,
) -> AsyncIterator[Path]:
    """A TLS (TCP proxy) or QUIC (UDP proxy) ping server reached through a fault proxy."""
    transports: dict[str, type[TLSTransport] | type[QUICTransport]] = {
        "tls": TLSTransport,
        "quic": QUICTransport,
    }
    server = transports[kind](node_credentials(certs, "s1"))
    listener = await server.listen(HOST, 0)
    serving = asyncio.create_task(_answer_pings(listener))
    proxy_type = TCPFaultProxy if kind == "tls" else UDPFaultProxy
    proxy = proxy_type(
        target_host=HOST, target_port=listener.port, config=config, rng=random.Random(seed)
    )
    await proxy.start()
    path = Path(proxy=proxy, client=transports[kind](client_credentials(certs)))
    try:
        yield path
    finally:
        for connection in path.connections:
            connection.close()
        await proxy.close()
        await asyncio.gather(*(connection.wait_closed() for connection in path.connections))
        await listener.close()
        await serving


async def ping(connection: Connection, sequence: int) -> None:
    connection.send_frame(Ping(sequence=sequence, sent_us=0))
    answer = await connection.receive()
    assert answer == Pong(sequence=sequence, sent_us=0)


def test_ramp_increases_round_trip_time(certs: ClusterCertificates) -> None:
    """Under a delay ramp each round trip takes at least twice the delay in force when sent."""
    peak_ms = 60.0

    async def main() -> None:
        async with proxied(certs) as path:
            connection = await path.connect()
            await ping(connection, 0)
            path.proxy.ramp_faults(PathFaults(delay_ms=peak_ms), duration_ms=600.0)
            samples: list[tuple[float, float]] = []
            loop = asyncio.get_running_loop()
            ramp_end = loop.time() + 0.6
            while not samples or samples[-1][0] < peak_ms or loop.time() < ramp_end:
                delay_ms = path.proxy.faults(Direction.UPSTREAM).delay_ms
                started = loop.time()
                await ping(connection, len(samples) + 1)
                samples.append((delay_ms, (loop.time() - started) * 1000))
                await asyncio.sleep(0.05)
            for delay_ms, rtt_ms in samples:
                assert rtt_ms >= 2 * delay_ms - CLOCK_SLACK_MS
            assert samples[0][0] < 10.0
            assert samples[-1][0] == peak_ms
            assert samples[-1][1] >= 2 * peak_ms - CLOCK_SLACK_MS
            assert path.proxy.stats(Direction.DOWNSTREAM).forwarded_count > len(samples)

    run_test(main())


def test_tcp_loss_stalls_but_never_corrupts(certs: ClusterCertificates) -> None:
    """TCP "loss" stalls the stream for the configured time; every frame still arrives intact."""
    config = FaultProxyConfig(tcp_loss_stall_ms=50.0)

    async def main() -> None:
        async with proxied(certs, config=config) as path:
            connection = await path.connect()
            path.proxy.set_faults(PathFaults(loss_probability=1.0), direction=Direction.UPSTREAM)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for sequence in range(3):
                await ping(connection, sequence)
            assert (loop.time() - started) * 1000 >= 3 * 50.0 - CLOCK_SLACK_MS
            assert path.proxy.stats(Direction.UPSTREAM).lost_count >= 3

    run_test(main())


def test_tcp_blackhole_partition_blocks_and_heals(certs: ClusterCertificates) -> None:
    """A black-holed path delivers nothing, then everything once healed, on the same connection."""

    async def main() -> None:
        async with proxied(certs) as path:
            connection = await path.connect()
            await ping(connection, 1)
            path.proxy.partition(Partition.BLACKHOLE)
            connection.send_frame(Ping(sequence=2, sent_us=0))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(QUIET_WAIT_S):
                    await connection.receive()
            path.proxy.heal()
            assert await connection.receive() == Pong(sequence=2, sent_us=0)
            await ping(connection, 3)
            assert not connection.is_closed

    run_test(main())


def test_tcp_blackhole_holds_new_connections_until_healed(certs: ClusterCertificates) -> None:
    """A connection attempt during a black-hole partition completes only after it heals."""

    async def main() -> None:
        async with proxied(certs) as path:
            path.proxy.partition(Partition.BLACKHOLE)
            attempt = asyncio.create_task(path.connect())
            await asyncio.sleep(QUIET_WAIT_S)
            assert not attempt.done()
            assert path.proxy.stats(Direction.UPSTREAM).partitioned_count == 1
            path.proxy.heal()
            await ping(await attempt, 1)

    run_test(main())


def test_tcp_reset_partition_resets_and_refuses(certs: ClusterCertificates) -> None:
    """A RESET partition resets live connections and refuses new ones until healed."""

    async def main() -> None:
        async with proxied(certs) as path:
            connection = await path.connect()
            await ping(connection, 1)
            path.proxy.partition(Partition.RESET)
            info = await connection.wait_closed()
            assert info.initiator is CloseInitiator.NETWORK
            with pytest.raises(TransportError):
                await path.connect()
            path.proxy.heal()
            await ping(await path.connect(), 2)
            assert path.proxy.stats(Direction.UPSTREAM).reset_count >= 2

    run_test(main())


def test_tcp_reset_probability_resets_the_connection(certs: ClusterCertificates) -> None:
    """With reset probability 1 the next chunk resets the connection instead of passing."""

    async def main() -> None:
        async with proxied(certs) as path:
            connection = await path.connect()
            path.proxy.set_faults(PathFaults(reset_probability=1.0), direction=Direction.UPSTREAM)
            connection.send_frame(Ping(sequence=1, sent_us=0))
            info = await connection.wait_closed()
            assert info.initiator is CloseInitiator.NETWORK
            assert path.proxy.stats(Direction.UPSTREAM).reset_count == 1

    run_test(main())


# -- TCP: raw byte streams -----------------------------------------------------------------


@asynccontextmanager
async def raw_tcp_sink(
    config: FaultProxyConfig, *, read_pause_s: float = 0.0
) -> AsyncIterator[tuple[TCPFaultProxy, list[bytes]]]:
    """A TCP server that collects what it reads, slowly if asked, behind a proxy."""
    received: list[bytes] = []

    async def collect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(4096):
            received.append(chunk)
            await asyncio.sleep(read_pause_s)
        writer.close()

    server = await asyncio.start_server(collect, HOST, 0)
    proxy = TCPFaultProxy(
        target_host=HOST, target_port=server.sockets[0].getsockname()[1], config=config
    )
    await proxy.start()
    try:
        yield proxy, received
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


def test_tcp_bandwidth_limit_paces_the_stream() -> None:
    """At a bandwidth limit a stream takes at least its size over the rate, and arrives whole."""
    config = FaultProxyConfig(read_chunk_bytes=4096)
    size_bytes, rate = 40_000, 100_000.0

    async def main() -> None:
        async with raw_tcp_sink(config) as (proxy, received):
            proxy.set_faults(PathFaults(bandwidth_bytes_per_second=rate))
            payload = random.Random(3).randbytes(size_bytes)
            loop = asyncio.get_running_loop()
            started = loop.time()
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            writer.write(payload)
            writer.write_eof()
            await writer.drain()
            assert await reader.read() == b""  # The sink closes once it has everything.
            elapsed_s = loop.time() - started
            writer.close()
            assert b"".join(received) == payload
            assert (
                elapsed_s * 1000
                >= (size_bytes - config.read_chunk_bytes) / rate * 1000 - CLOCK_SLACK_MS
            )

    run_test(main())


def test_tcp_reset_connections_leaves_no_task_error() -> None:
    """`reset_connections` on a live connection: each direction then reads the end of its
    aborted stream, and its writer, already closed, is not sent an end (uvloop raised
    RuntimeError there, an exception no one retrieved, logged by the loop)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        received = asyncio.Event()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while await reader.read(4096):
                    received.set()
            writer.close()

        server = await asyncio.start_server(sink, HOST, 0)
        proxy = TCPFaultProxy(target_host=HOST, target_port=server.sockets[0].getsockname()[1])
        await proxy.start()
        reader, writer = await asyncio.open_connection(HOST, proxy.port)
        writer.write(b"x")
        await writer.drain()
        await received.wait()
        proxy.reset_connections()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()
        while proxy.connection_count:
            await asyncio.sleep(0.01)
        await proxy.close()
        server.close()
        await server.wait_closed()
        gc.collect()
        await asyncio.sleep(0)
        assert [context.get("message") for context in reported] == []

    run_test(main())


def test_tcp_queue_stays_within_its_bound() -> None:
    """Against a slow reader the proxy holds at most queue_bytes_max and stops reading."""
    config = FaultProxyConfig(queue_bytes_max=32 << 10, read_chunk_bytes=8 << 10)

    async def main() -> None:
        async with raw_tcp_sink(config, read_pause_s=0.001) as (proxy, received):
            proxy.set_faults(PathFaults(delay_ms=20.0, bandwidth_bytes_per_second=2e6))
            payload = random.Random(4).randbytes(512 << 10)
            reader, writer = await asyncio.open_connection(HOST, proxy.port)
            writer.write(payload)
            writer.write_eof()
            await writer.drain()
            assert await reader.read() == b""
            writer.close()
            assert b"".join(received) == payload
            stats = proxy.stats(Direction.UPSTREAM)
            assert 0 < stats.queued_peak <= config.queue_bytes_max
            assert stats.forwarded_bytes == len(payload)

    run_test(main())


# -- UDP -------------------------------------------------------------------------------------


class _Collector(asyncio.DatagramProtocol):
    def __init__(self, echo: bool) -> None:
        self.received: list[bytes] = []
        self.echo = echo
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement DatagramTransport without deriving from it.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)


@asynccontextmanager
async def udp_path(
    faults: PathFaults,
    *,
    seed: int,
    echo: bool = False,
    config: FaultProxyConfig | None = None,
) -> AsyncIterator[tuple[UDPFaultProxy, _Collector, _Collector, asyncio.DatagramTransport]]:
    """A UDP sink (or echo) behind a proxy with `faults` upstream, and a client socket."""
    loop = asyncio.get_running_loop()
    sink_transport, sink = await loop.create_datagram_endpoint(
        lambda: _Collector(echo), local_addr=(HOST, 0)
    )
    proxy = UDPFaultProxy(
        target_host=HOST,
        target_port=sink_transport.get_extra_info("sockname")[1],
        config=config,
        rng=random.Random(seed),
    )
    await proxy.start()
    proxy.set_faults(faults, direction=Direction.UPSTREAM)
    client_transport, client = await loop.create_datagram_endpoint(
        lambda: _Collector(False), remote_addr=(HOST, proxy.port)
    )
    try:
        yield proxy, sink, client, client_transport
    finally:
        client_transport.close()
        await proxy.close()
        sink_transport.close()


async def send_paced(
    proxy: UDPFaultProxy,
    transport: asyncio.DatagramTransport,
    payloads: list[bytes],
    sink: _Collector,
) -> None:
    """Send in windows, each taken in by the proxy before the next, so no socket overflows;
    return once the sink has every datagram the proxy forwarded."""
    window = 50
    for start in range(0, len(payloads), window):
        for payload in payloads[start : start + window]:
            transport.sendto(payload)
        target = min(start + window, len(payloads))
        while proxy.stats(Direction.UPSTREAM).received_count < target:
            await asyncio.sleep(0.001)
    while proxy.stats(Direction.UPSTREAM).queued:
        await asyncio.sleep(0.001)
    while len(sink.received) < proxy.stats(Direction.UPSTREAM).forwarded_count:
        await asyncio.sleep(0.001)


def test_udp_loss_is_within_binomial_bounds() -> None:
    """Seeded loss drops a share of datagrams within 4 standard deviations of the probability."""
    count, probability = 2000, 0.2

    async def main() -> None:
        async with udp_path(PathFaults(loss_probability=probability), seed=11) as (
            proxy,
            sink,
            _,
            transport,
        ):
            await send_paced(proxy, transport, [i.to_bytes(4) for i in range(count)], sink)
            stats = proxy.stats(Direction.UPSTREAM)
            assert stats.received_count == count
            assert len(sink.received) == stats.forwarded_count == count - stats.lost_count
            spread = 4 * math.sqrt(count * probability * (1 - probability))
            assert abs(stats.lost_count - count * probability) <= spread

    run_test(main())


def test_udp_seed_fixes_which_datagrams_are_lost() -> None:
    """The same seed loses the same datagrams; another seed loses others."""

    async def lost(seed: int) -> set[bytes]:
        sent = [i.to_bytes(4) for i in range(300)]
        async with udp_path(PathFaults(loss_probability=0.3), seed=seed) as (
            proxy,
            sink,
            _,
            transport,
        ):
            await send_paced(proxy, transport, sent, sink)
            return set(sent) - set(sink.received)

    async def main() -> None:
        first, again, other = await lost(5), await lost(5), await lost(6)
        assert first == again
        assert first != other
        assert first

    run_test(main())


def test_udp_duplicates_and_reorders() -> None:
    """Duplication delivers twice; reordering lets later datagrams overtake held ones."""
    faults = PathFaults(duplicate_probability=1.0, reorder_probability=0.3, reorder_delay_ms=20.0)

    async def main() -> None:
        async with udp_path(faults, seed=2) as (proxy, sink, _, transport):
            sent = [i.to_bytes(4) for i in range(100)]
            await send_paced(proxy, transport, sent, sink)
            while len(sink.received) < 200:
                await asyncio.sleep(0.005)
            stats = proxy.stats(Direction.UPSTREAM)
            assert stats.duplicated_count == 100
            assert sorted(sink.received) == sorted(sent * 2)
            assert stats.reordered_count > 0
            order = [int.from_bytes(data) for data in sink.received]
            assert order != sorted(order)

    run_test(main())


def test_udp_partition_blocks_and_heals() -> None:
    """A partition drops every datagram both ways; after healing, the echo comes back."""

    async def main() -> None:
        async with udp_path(PathFaults(), seed=1, echo=True) as (proxy, sink, client, transport):
            transport.sendto(b"before")
            while client.received != [b"before"]:
                await asyncio.sleep(0.001)
            proxy.partition(Partition.BLACKHOLE, direction=Direction.DOWNSTREAM)
            transport.sendto(b"during")
            await asyncio.sleep(QUIET_WAIT_S)
            assert sink.received == [b"before", b"during"]
            assert client.received == [b"before"]
            assert proxy.stats(Direction.DOWNSTREAM).partitioned_count == 1
            proxy.heal()
            transport.sendto(b"after")
            while client.received != [b"before", b"after"]:
                await asyncio.sleep(0.001)

    run_test(main())


def test_udp_queue_bound_drops_the_tail() -> None:
    """Over a slow link the proxy holds at most queue_datagrams_max and drops the rest."""
    config = FaultProxyConfig(queue_datagrams_max=16)
    # 5 s per datagram: the link cannot drain one while the burst arrives.
    faults = PathFaults(bandwidth_bytes_per_second=200.0)

    async def main() -> None:
        async with udp_path(faults, seed=1, config=config) as (proxy, sink, _, transport):
            for i in range(64):
                transport.sendto(i.to_bytes(4) + bytes(996))
            while proxy.stats(Direction.UPSTREAM).received_count < 64:
                await asyncio.sleep(0.001)
            stats = proxy.stats(Direction.UPSTREAM)
            assert stats.queued_peak == config.queue_datagrams_max
            assert stats.queue_dropped_count == 64 - config.queue_datagrams_max
            assert sink.received == []

    run_test(main())


def test_quic_survives_moderate_loss(certs: ClusterCertificates) -> None:
    """A QUIC connection through 10% loss each way answers every ping (QUIC retransmits)."""

    async def main() -> None:
        async with proxied(certs, "quic", seed=7) as path:
            connection = await path.connect()
            await ping(connection, 0)
            assert isinstance(path.proxy, UDPFaultProxy)
            assert path.proxy.flow_count == 1
            path.proxy.set_faults(PathFaults(loss_probability=0.1, delay_ms=2.0))
            for sequence in range(1, 41):
                await ping(connection, sequence)
            lost = sum(path.proxy.stats(direction).lost_count for direction in Direction)
            assert lost > 0
            assert not connection.is_closed

    run_test(main())
