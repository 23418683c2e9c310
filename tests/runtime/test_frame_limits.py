"""A real `forehand server` and manager decode with the `core.frame_bytes_max` they are set to.

Both run with `core.frame_bytes_max=65536` over each transport (TLS, and QUIC for clients). A
raw client dials one with the project's own transport (whose encoder allows 1 MiB frames), reads
the 65,536 WELCOME announces, and sends a 200 KB REQUEST: the node must end that connection with
FRAME_TOO_LARGE (docs/PROTOCOL.md sections 3, 6, 7), while an SDK client with a session on the
same cluster goes on being answered. A REQUEST just under the limit to the server is decoded and
answered. The server's [limits] table bounds its client connections (`connections_max` 4).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from forehand.runtime._quic import QUICTransport
from forehand.runtime._tls import TLSTransport
from forehand.runtime.config import parse_address
from forehand.runtime.transport import (
    CloseInitiator,
    Connection,
    ConnectionClosedError,
    Credentials,
    Transport,
)
from forehand.wire import (
    PROTOCOL_VERSION,
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
)

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
else:
    from _cluster import Cluster, make_certs, run_async

pytestmark = pytest.mark.slow

SERVER = "s1"
FRAME_BYTES_MAX = 65_536
"""The server's configured frame_bytes_max, below the default 1 MiB."""
OVERSIZED_PAYLOAD_BYTES = 200_000
"""A REQUEST payload far over the configured limit (and far under the default 1 MiB)."""
UNDER_LIMIT_PAYLOAD_BYTES = FRAME_BYTES_MAX - 1_024
"""A REQUEST payload whose frame fits the configured limit."""
GOOD_ROUNDS_MIN = 3
"""Calls the SDK client must get answered after the oversized connection closed."""
CONNECTIONS_MAX = 4
"""The server's [limits] connections_max: room for the tests' own connections."""
RETRIES_AFTER_CLOSE = 200
"""Attempts, 0.1 s apart, to be welcomed again once the held connections closed."""


@pytest.fixture(scope="module", params=["tls", "quic"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A manager and one server set to a 65,536-byte frame limit, real processes."""
    directory = tmp_path_factory.mktemp(f"frame-limits-{request.param}")
    running = Cluster(
        directory,
        certs_dir=make_certs(directory / "certs"),
        transport=request.param,
        servers=(SERVER,),
        server_settings=(
            f"core.frame_bytes_max={FRAME_BYTES_MAX}",
            f"limits.connections_max={CONNECTIONS_MAX}",
        ),
        manager_settings=(f"core.frame_bytes_max={FRAME_BYTES_MAX}",),
    )
    running.start()
    yield running
    running.stop()


def _transport(cluster: Cluster) -> Transport:
    credentials = Credentials.for_client(cluster.certs_dir)
    if cluster.transport == "quic":
        return QUICTransport(credentials)
    return TLSTransport(credentials)


def _request(payload_bytes: int) -> Request:
    """A REQUEST for an unknown session carrying `payload_bytes` of payload."""
    return Request(
        request_id=7,
        session_id=bytes(16),
        part="cart",
        op="list",
        map_version=1,
        payload=b"\xc4" * payload_bytes,
    )


async def _welcomed(cluster: Cluster, node: str = SERVER) -> tuple[Connection, Welcome]:
    """A raw client connection to `node` (the server or the manager), after HELLO and WELCOME."""
    address = cluster.manager_address if node == "manager" else cluster.addresses[node]
    host, port = parse_address(address, where=node)
    connection = await _transport(cluster).connect(
        host, port, server_id=node, peer_role=PeerRole.SERVER
    )
    connection.send_frame(
        Hello(versions=(PROTOCOL_VERSION,), client_id=os.urandom(16), credentials=())
    )
    while True:
        frame = await connection.receive()
        if isinstance(frame, Welcome):
            return connection, frame


async def _until(connection: Connection, wanted: type[Frame]) -> Frame:
    while True:
        frame = await connection.receive()
        if isinstance(frame, wanted):
            return frame


async def _good_rounds(cluster: Cluster, stop: asyncio.Event, answered: list[int]) -> None:
    """An SDK client with a session on the server, calling it until `stop`."""
    async with cluster.connect() as client:
        session = await client.open_session(["auth", "feature/video"])
        await session.call("auth", "login", "good")
        position = 0
        while not stop.is_set():
            position += 1
            seeked: int = await session.call("feature/video", "seek", position, result_type=int)
            assert seeked == position
            answered.append(position)
            await asyncio.sleep(0.005)


async def _answered_more(task: asyncio.Task[None], answered: list[int], count: int) -> None:
    target = len(answered) + count
    while len(answered) < target:
        if task.done():
            task.result()
            raise AssertionError("the SDK client stopped")
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("node", [SERVER, "manager"])
def test_oversized_request_closes_only_that_connection(cluster: Cluster, node: str) -> None:
    """WELCOME announces 65,536; a 200 KB REQUEST closes that connection with FRAME_TOO_LARGE
    and the SDK client of the same cluster keeps being answered."""

    async def main() -> None:
        stop = asyncio.Event()
        answered: list[int] = []
        good = asyncio.get_running_loop().create_task(_good_rounds(cluster, stop, answered))
        try:
            await _answered_more(good, answered, GOOD_ROUNDS_MIN)
            connection, welcome = await _welcomed(cluster, node)
            assert welcome.frame_bytes_max == FRAME_BYTES_MAX
            connection.send_frame(_request(OVERSIZED_PAYLOAD_BYTES))
            with pytest.raises(ConnectionClosedError) as closed:
                while True:
                    frame = await connection.receive()
                    assert not isinstance(frame, Response), frame
            assert closed.value.close.error_code == ErrorCode.FRAME_TOO_LARGE, closed.value
            assert closed.value.close.initiator is CloseInitiator.PEER, closed.value
            await _answered_more(good, answered, GOOD_ROUNDS_MIN)
            # A new client still opens a session through the manager and calls the server.
            async with cluster.connect() as other:
                session = await other.open_session(["auth"])
                await session.call("auth", "login", "other")
        finally:
            stop.set()
            await good
        for name in (SERVER, "manager"):
            assert cluster.processes[name].poll() is None, cluster.log(name)

    run_async(main())


def test_request_under_the_limit_is_answered(cluster: Cluster) -> None:
    """A REQUEST whose frame fits the configured limit is decoded and answered (refused: its
    session is unknown), and the connection stays open."""

    async def main() -> None:
        connection, _ = await _welcomed(cluster)
        try:
            connection.send_frame(_request(UNDER_LIMIT_PAYLOAD_BYTES))
            response = await _until(connection, Response)
            assert isinstance(response, Response)
            assert response.request_id == 7 and response.status != ResponseStatus.OK
            connection.send_frame(Ping(sequence=3, sent_us=0))
            pong = await _until(connection, Pong)
            assert isinstance(pong, Pong) and pong.sequence == 3
        finally:
            connection.close()
            await connection.wait_closed()

    run_async(main())


def test_the_limits_table_bounds_the_client_connections(cluster: Cluster) -> None:
    """`--set limits.connections_max=4`: raw client connections past it are closed with
    LIMIT_EXCEEDED, and once they close a new one is welcomed again."""

    async def main() -> None:
        held: list[Connection] = []
        refused = None
        try:
            for _ in range(CONNECTIONS_MAX + 1):
                connection, _ = await _welcomed(cluster)
                held.append(connection)
        except ConnectionClosedError as error:
            refused = error.close
        assert refused is not None, f"{len(held)} connections held, none refused"
        assert refused.error_code == ErrorCode.LIMIT_EXCEEDED, refused
        for connection in held:
            connection.close()
            await connection.wait_closed()
        # The server counts a closed connection out once its side has ended too (over QUIC,
        # after the stack's closing period): a new one is welcomed again soon after, not at once.
        for _ in range(RETRIES_AFTER_CLOSE):
            try:
                again, welcome = await _welcomed(cluster)
                break
            except ConnectionClosedError as error:
                assert error.close.error_code == ErrorCode.LIMIT_EXCEEDED, error
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("no connection welcomed again after the others closed")
        assert welcome.frame_bytes_max == FRAME_BYTES_MAX
        again.close()
        await again.wait_closed()

    run_async(main())
