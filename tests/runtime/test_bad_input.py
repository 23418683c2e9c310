"""A real `forehand server` answers bad bytes with ERROR and closes only that connection.

A raw TLS client (Python's ssl, ALPN `forehand/1`, the cluster CA) completes the handshake and,
usually, the HELLO/WELCOME exchange, then misbehaves: malformed bodies, oversized or absurd
length prefixes, frames a client may not send, garbage, frames before HELLO, a forged
credential, a stream cut inside a frame. Each time it must read ERROR with the right code (when
the protocol names one) followed by the end of the stream, while a well-behaved SDK client with
a session on the same server keeps being answered before, during and after, and the server
process keeps running.
"""

from __future__ import annotations

import asyncio
import os
import random
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import forehand
from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.runtime.config import parse_address
from forehand.wire import (
    END_OF_STREAM,
    NEED_DATA,
    PROTOCOL_VERSION,
    ClusterMessage,
    Credential,
    Endpoint,
    Error,
    ErrorCode,
    Frame,
    FrameDecoder,
    GoAway,
    Handoff,
    HandoffFlag,
    Hello,
    PeerRole,
    Ping,
    Pong,
    ReasonCode,
    Request,
    Response,
    ResponseStatus,
    ResumeReject,
    ResumeRejectReason,
    Welcome,
    WireConfig,
    encode_frame,
    encode_varint,
)

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
else:
    from _cluster import Cluster, make_certs, run_async

pytestmark = pytest.mark.slow

SERVER = "s1"
READ_CHUNK_BYTES = 65_536
GOOD_CALLS_AFTER_MIN = 3
"""Calls the good client must get answered after the bad connection closed."""
FRAME_BYTES_MAX = 65_536
"""The server's configured frame_bytes_max (below the default 1 MiB, so its decoder must use
the configured one)."""
SERVER_WIRE = WireConfig(frame_bytes_max=FRAME_BYTES_MAX)
"""The bounds the server's decoder enforces."""
IDLE_TIMEOUT_MS = 3_000
"""The server closes a connection silent this long: a peer that left a frame incomplete."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager and one server (TLS), real processes, for the whole module."""
    directory = tmp_path_factory.mktemp("bad-input")
    running = Cluster(
        directory,
        certs_dir=make_certs(directory / "certs"),
        transport="tls",
        servers=(SERVER,),
        server_settings=(
            f"core.idle_timeout_ms={IDLE_TIMEOUT_MS}",
            f"core.frame_bytes_max={FRAME_BYTES_MAX}",
        ),
    )
    running.start()
    yield running
    running.stop()


def _context(certs_dir: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=certs_dir / "ca.pem")
    context.set_alpn_protocols(["forehand/1"])
    return context


class RawClient:
    """A TLS connection to the server that writes whatever bytes it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(sender=PeerRole.SERVER)
        self.received: list[Frame] = []

    @classmethod
    async def open(cls, cluster: Cluster) -> RawClient:
        host, port = parse_address(cluster.addresses[SERVER], where=SERVER)
        reader, writer = await asyncio.open_connection(
            host, port, ssl=_context(cluster.certs_dir), server_hostname=SERVER
        )
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.selected_alpn_protocol() == "forehand/1"
        return cls(reader, writer)

    async def hello(self, credentials: tuple[Credential, ...] = ()) -> None:
        """HELLO, then wait for WELCOME."""
        self.send(
            encode_frame(
                Hello(
                    versions=(PROTOCOL_VERSION,), client_id=os.urandom(16), credentials=credentials
                )
            )
        )
        while not any(isinstance(frame, Welcome) for frame in self.received):
            await self._read_some()

    async def ping(self, sequence: int) -> None:
        """A well-formed PING is answered: the connection is served until it misbehaves."""
        self.send(encode_frame(Ping(sequence=sequence, sent_us=0)))
        while not any(
            isinstance(frame, Pong) and frame.sequence == sequence for frame in self.received
        ):
            await self._read_some()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def _read_some(self) -> bool:
        data = await self.reader.read(READ_CHUNK_BYTES)
        self.decoder.receive_data(data)
        while (frame := self.decoder.next_frame()) is not NEED_DATA:
            if frame is END_OF_STREAM:
                return False
            assert not isinstance(frame, type(NEED_DATA))
            self.received.append(frame)
        return bool(data)

    async def until_closed(self) -> list[Frame]:
        """Every frame until the server ends the stream (a reset counts as the end)."""
        try:
            while await self._read_some():
                pass
        except (ConnectionResetError, ssl.SSLError):
            pass
        self.writer.close()
        return self.received


class GoodClient:
    """An SDK client with a session on the server, calling it in a loop."""

    def __init__(self, cluster: Cluster) -> None:
        self.client = cluster.connect()
        self.answered = 0
        self.failures: list[BaseException] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> GoodClient:
        await self.client.start()
        session = await self.client.open_session(["auth", "feature/video"])
        await session.call("auth", "login", "good")
        self._task = asyncio.get_running_loop().create_task(self._run(session))
        await self.answered_more(GOOD_CALLS_AFTER_MIN)
        return self

    async def _run(self, session: forehand.Session) -> None:
        position = 0
        while not self._stop.is_set():
            position += 1
            try:
                seeked: int = await session.call("feature/video", "seek", position, result_type=int)
                user: str = await session.call("auth", "whoami", result_type=str)
                assert (seeked, user) == (position, "good")
            except Exception as failure:
                self.failures.append(failure)
                return
            self.answered += 1
            await asyncio.sleep(0.005)

    async def answered_more(self, count: int) -> None:
        """Wait until `count` more rounds of calls were answered."""
        target = self.answered + count
        while self.answered < target:
            assert not self.failures, self.failures
            await asyncio.sleep(0.005)

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
        await self.client.close()
        assert not self.failures, self.failures


def _served_throughout(
    cluster: Cluster, misbehave: Callable[[RawClient], Awaitable[list[Frame]]]
) -> list[Frame]:
    """Run `misbehave` on a raw connection while a good client is served; its frames."""

    async def main() -> list[Frame]:
        async with GoodClient(cluster) as good:
            raw = await RawClient.open(cluster)
            frames = await misbehave(raw)
            await good.answered_more(GOOD_CALLS_AFTER_MIN)
        assert cluster.processes[SERVER].poll() is None, cluster.log(SERVER)
        return frames

    return run_async(main())


ENDPOINT = Endpoint(server_id=SERVER, host="127.0.0.1", port=7000)
HANDOFF = Handoff(
    sequence=1,
    session_id=bytes(16),
    parts=("cart",),
    map_version=9,
    reason=ReasonCode.PREDICTED_FAILURE,
    flags=HandoffFlag.NONE,
    deadline_ms=1000,
    current=ENDPOINT,
    targets=(ENDPOINT,),
    token=b"t" * 40,
)
"""Well-formed frames a client may not send (section 5.20)."""
WELCOME = Welcome(
    version=1, server_id=SERVER, map_version=1, frame_bytes_max=FRAME_BYTES_MAX, idle_timeout_ms=1
)
RESPONSE = Response(
    request_id=1, session_id=bytes(16), status=ResponseStatus.OK, map_version=1, payload=b""
)
CLUSTER = ClusterMessage(kind=0, body=b"\x80")


def _varint8(value: int) -> bytes:
    """`value` as an 8-byte varint, whatever its size."""
    return (value | (0b11 << 62)).to_bytes(8, "big")


AFTER_HELLO = [
    ("malformed-ping", bytes.fromhex("05 04 01 02 00 00"), ErrorCode.FRAME_ENCODING_ERROR),
    ("malformed-request", bytes.fromhex("10 03 ff ff ff"), ErrorCode.FRAME_ENCODING_ERROR),
    ("long-frame-type", bytes.fromhex("40 05 03 01 02 00"), ErrorCode.FRAME_ENCODING_ERROR),
    (
        "oversized-length",
        b"\x10" + encode_varint(FRAME_BYTES_MAX + 1),
        ErrorCode.FRAME_TOO_LARGE,
    ),
    ("absurd-length", b"\x10" + _varint8((1 << 62) - 1), ErrorCode.FRAME_TOO_LARGE),
    (
        "oversized-extension",
        encode_varint(0x80) + encode_varint(FRAME_BYTES_MAX + 1),
        ErrorCode.FRAME_TOO_LARGE,
    ),
    ("unknown-type", bytes.fromhex("3f 00"), ErrorCode.UNKNOWN_FRAME_TYPE),
    ("handoff-from-client", encode_frame(HANDOFF), ErrorCode.FRAME_UNEXPECTED),
    ("welcome-from-client", encode_frame(WELCOME), ErrorCode.FRAME_UNEXPECTED),
    ("response-from-client", encode_frame(RESPONSE), ErrorCode.FRAME_UNEXPECTED),
    ("cluster-frame-from-client", encode_frame(CLUSTER), ErrorCode.FRAME_UNEXPECTED),
    (
        "goaway-from-client",
        encode_frame(GoAway(map_version=1, reason=ReasonCode.UNSPECIFIED, last_request_id=0)),
        ErrorCode.FRAME_UNEXPECTED,
    ),
    # docs/PROTOCOL.md section 10's vector: a server's frame type from a client is unexpected
    # before its body is read (the TLS listener, shared with cluster nodes, once let clients'
    # frames decode as any sender's, so this was FRAME_ENCODING_ERROR; QUIC said UNEXPECTED).
    ("malformed-handoff-from-client", bytes.fromhex("20 00"), ErrorCode.FRAME_UNEXPECTED),
]


@pytest.mark.parametrize(
    ("data", "code"),
    [(data, code) for _, data, code in AFTER_HELLO],
    ids=[name for name, _, _ in AFTER_HELLO],
)
def test_bad_frame_after_hello_closes_only_that_connection(
    cluster: Cluster, data: bytes, code: ErrorCode
) -> None:
    """A welcomed client that sends a bad frame gets ERROR(code) and a close; others go on."""

    async def misbehave(raw: RawClient) -> list[Frame]:
        await raw.hello()
        await raw.ping(1)
        raw.send(data)
        return await raw.until_closed()

    frames = _served_throughout(cluster, misbehave)
    assert isinstance(frames[-1], Error), frames
    assert frames[-1].code == code, frames[-1]


def _request_with_body_bytes(body_bytes: int) -> Request:
    """A REQUEST for an unknown session whose frame body is exactly `body_bytes` long."""
    payload_bytes = body_bytes
    while True:
        request = Request(
            request_id=1,
            session_id=bytes(16),
            part="cart",
            op="list",
            map_version=1,
            payload=b"\xc4" * payload_bytes,
        )
        encoded = encode_frame(request, config=WireConfig(frame_bytes_max=body_bytes + 64))
        # One type byte, the body's length as a varint, then the body.
        found = len(encoded) - 1 - len(encode_varint(body_bytes))
        if found == body_bytes:
            return request
        payload_bytes -= found - body_bytes


def test_a_frame_at_the_configured_limit_is_served(cluster: Cluster) -> None:
    """WELCOME announces the configured frame_bytes_max, and a REQUEST whose body is exactly
    that long is decoded and answered (here refused: its session is unknown), not closed; one
    byte more is FRAME_TOO_LARGE (the oversized cases above)."""
    request = _request_with_body_bytes(FRAME_BYTES_MAX)
    encoded = encode_frame(request, config=SERVER_WIRE)

    async def misbehave(raw: RawClient) -> list[Frame]:
        await raw.hello()
        raw.send(encoded)
        while not any(isinstance(frame, Response) for frame in raw.received):
            await raw._read_some()
        await raw.ping(2)
        raw.writer.close()
        return raw.received

    frames = _served_throughout(cluster, misbehave)
    welcome = next(frame for frame in frames if isinstance(frame, Welcome))
    assert welcome.frame_bytes_max == FRAME_BYTES_MAX
    assert not any(isinstance(frame, Error) for frame in frames), frames
    response = next(frame for frame in frames if isinstance(frame, Response))
    assert response.request_id == 1 and response.status != ResponseStatus.OK


def test_second_hello_is_refused(cluster: Cluster) -> None:
    """A second HELLO on a welcomed connection ends it with an ERROR."""

    async def misbehave(raw: RawClient) -> list[Frame]:
        await raw.hello()
        raw.send(encode_frame(Hello(versions=(PROTOCOL_VERSION,), client_id=os.urandom(16))))
        return await raw.until_closed()

    frames = _served_throughout(cluster, misbehave)
    assert isinstance(frames[-1], Error), frames
    assert frames[-1].code in (ErrorCode.FRAME_UNEXPECTED, ErrorCode.PROTOCOL_ERROR)


def test_request_before_hello_is_unexpected(cluster: Cluster) -> None:
    """A REQUEST before HELLO is FRAME_UNEXPECTED (docs/PROTOCOL.md section 3)."""
    request = Request(
        request_id=1,
        session_id=os.urandom(16),
        part="cart",
        op="list",
        map_version=1,
        payload=b"\xc0",
    )

    async def misbehave(raw: RawClient) -> list[Frame]:
        raw.send(encode_frame(request))
        return await raw.until_closed()

    frames = _served_throughout(cluster, misbehave)
    assert isinstance(frames[-1], Error), frames
    assert frames[-1].code == ErrorCode.FRAME_UNEXPECTED
    assert not any(isinstance(frame, Welcome) for frame in frames)


def test_forged_credential_is_refused_and_binds_nothing(cluster: Cluster) -> None:
    """A HELLO with a credential the cluster did not seal is welcomed without that session: a
    RESUME_REJECT(CREDENTIAL_REFUSED) after the WELCOME says so, the connection stays open (a
    PING is answered), and a request of that session is NOT_FOUND."""
    forged = Credential(os.urandom(16), bytes([1]) + os.urandom(60))

    async def misbehave(raw: RawClient) -> list[Frame]:
        await raw.hello((forged,))
        await raw.ping(1)
        raw.send(
            encode_frame(
                Request(
                    request_id=1,
                    session_id=forged.session_id,
                    part="auth",
                    op="whoami",
                    map_version=0,
                    payload=b"\xc0",
                )
            )
        )
        while not any(isinstance(frame, Response) for frame in raw.received):
            assert await raw._read_some()
        raw.writer.close()
        return raw.received

    frames = _served_throughout(cluster, misbehave)
    (told,) = [frame for frame in frames if isinstance(frame, ResumeReject)]
    assert (told.session_id, told.reason) == (
        forged.session_id,
        ResumeRejectReason.CREDENTIAL_REFUSED,
    )
    assert not any(isinstance(frame, Error) for frame in frames), frames
    (response,) = [frame for frame in frames if isinstance(frame, Response)]
    assert response.status is ResponseStatus.NOT_FOUND


def _reference_outcome(data: bytes) -> ErrorCode | None:
    """What the spec's decoder makes of `data` from a client: an error code, or None when it
    only waits for the rest of an incomplete frame."""
    decoder = FrameDecoder(sender=PeerRole.CLIENT, config=SERVER_WIRE)
    decoder.receive_data(data)
    try:
        while decoder.next_frame() is not NEED_DATA:
            pass
    except RemoteProtocolError as error:
        return ErrorCode.from_wire(error.error_code)
    return None


@pytest.mark.parametrize("seed", [1, 3, 8])
def test_garbage_after_hello_is_judged_like_the_reference_decoder(
    cluster: Cluster, seed: int
) -> None:
    """Random bytes after HELLO get the error the reference decoder finds, or, when they end
    inside a frame, a wait that the idle timeout ends; only that connection closes."""
    garbage = random.Random(seed).randbytes(512)
    expected = _reference_outcome(garbage)

    async def misbehave(raw: RawClient) -> list[Frame]:
        await raw.hello()
        raw.send(garbage)
        return await raw.until_closed()

    frames = _served_throughout(cluster, misbehave)
    assert isinstance(frames[-1], Error), frames
    assert frames[-1].code == (ErrorCode.IDLE_TIMEOUT if expected is None else expected)
    assert sum(isinstance(frame, Error) for frame in frames) == 1


def test_stream_cut_inside_a_frame(cluster: Cluster) -> None:
    """A client that closes in the middle of a frame loses only its own connection."""

    async def misbehave(raw: RawClient) -> list[Frame]:
        await raw.hello()
        await raw.ping(7)
        raw.send(encode_frame(Ping(sequence=8, sent_us=0))[:-1])
        await raw.writer.drain()
        raw.writer.close()  # close_notify and FIN, inside a frame.
        await raw.writer.wait_closed()
        return raw.received

    frames = _served_throughout(cluster, misbehave)
    assert not any(isinstance(frame, Pong) and frame.sequence == 8 for frame in frames)


def test_the_sdk_refuses_a_call_over_the_servers_limit(cluster: Cluster) -> None:
    """The SDK learns the server's frame_bytes_max from WELCOME: a call whose REQUEST would be
    longer raises LocalProtocolError at once, and the session's other calls go on (sent, it
    would have closed the connection with FRAME_TOO_LARGE at every retry)."""

    async def main() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(["auth"])
            assert await session.call("auth", "login", "big") == "welcome big"
            with pytest.raises(LocalProtocolError, match=f"frame_bytes_max={FRAME_BYTES_MAX}"):
                await session.call("auth", "login", "x" * FRAME_BYTES_MAX)
            assert await session.call("auth", "whoami") == "big"

    run_async(main())
