"""The admin API's connection bounds on a live manager, driven with raw sockets on loopback:
slow requests, idle connections, too many connections and event streams nobody reads."""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from forehand.errors import ConfigError
from forehand.ops import HTTPLimits

if TYPE_CHECKING:
    from tests.ops._ops_cluster import HANG_TIMEOUT_S, TOKEN, OpsCluster, make_certs
else:
    from _ops_cluster import HANG_TIMEOUT_S, TOKEN, OpsCluster, make_certs

CONNECTIONS_MAX = 6
REQUEST_TIMEOUT_MS = 1_000
IDLE_TIMEOUT_MS = 1_000
WRITE_BUFFER_BYTES = 4_096
WRITE_STALL_TIMEOUT_MS = 3_000
"""Long beside the slow reader's quarter-second reads."""
SLOW_READ_BYTES = 2_048
"""What the slow reader takes every quarter second: 8 KiB/s, twice what the event stream sends
(about 4 KiB/s)."""
SLOW_RECEIVE_BUFFER_BYTES = 16_384
"""The slow reader's receive buffer. With the stalled one's 4 KiB, and reading 1 KiB a quarter
second (exactly the stream's rate), its stream sat at a zero TCP window, progressing only at
the sender's window probes, whose backoff left it without progress past the stall timeout now
and then: CI dropped it at 2 s, at 3 s, and at 3 s reading 2 KiB."""
RECEIVE_BUFFER_BYTES = 4_096
"""A client's receive buffer, kept small so that a stream fills it within seconds."""
EVENTS_REQUEST = b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def bounded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsCluster]:
    """A cluster whose manager's admin API has small connection bounds."""
    directory: Path = tmp_path_factory.mktemp("bounded-http")
    cluster = OpsCluster(
        directory,
        certs_dir=make_certs(directory / "certs"),
        manager_settings=(
            f"admin_http_connections_max={CONNECTIONS_MAX}",
            f"admin_http_request_timeout_ms={REQUEST_TIMEOUT_MS}",
            f"admin_http_idle_timeout_ms={IDLE_TIMEOUT_MS}",
            f"admin_http_write_buffer_bytes={WRITE_BUFFER_BYTES}",
            f"admin_http_write_stall_timeout_ms={WRITE_STALL_TIMEOUT_MS}",
        ),
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _connect(cluster: OpsCluster, *, receive_buffer_bytes: int | None = None) -> socket.socket:
    host, port = cluster.api_url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer_bytes is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
    sock.settimeout(HANG_TIMEOUT_S)
    sock.connect((host, int(port)))
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a hang fails the test)."""
    received = b""
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65_536)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the server never closed the connection; it sent {received[:200]!r}")


def _read_head(sock: socket.socket) -> bytes:
    """A response's status line and headers (and whatever came with them)."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65_536)
        if not chunk:
            break
        received += chunk
    return received


def _api_works(cluster: OpsCluster) -> None:
    """A request on a new connection is answered."""
    response = httpx.get(f"{cluster.api_url}/api/status", timeout=HANG_TIMEOUT_S)
    assert response.status_code == 200, response.text


def _logged(cluster: OpsCluster, text: str) -> list[str]:
    """The messages of the manager's log that contain `text`."""
    lines = [json.loads(line) for line in cluster.log("manager").splitlines() if line]
    return [line["event"] for line in lines if text in str(line.get("event", ""))]


def _poll(check: Callable[[], bool], *, what: str) -> None:
    deadline = time.monotonic() + HANG_TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def _port(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("part", ["head", "body"])
def test_a_request_that_arrives_too_slowly_is_answered_408_and_closed(
    bounded: OpsCluster, part: str
) -> None:
    """A client that sends its request head, or its body, a byte every 100 ms (each well within
    the idle timeout) gets 408 once the request timeout has passed and its connection closes;
    other connections are served meanwhile, and the policy the body would have changed stays."""
    policy = httpx.get(f"{bounded.api_url}/api/policy", timeout=HANG_TIMEOUT_S).json()
    slow = _connect(bounded)
    port = _port(slow)
    if part == "head":
        slow.sendall(b"GET /api/status HTTP/1.1\r\n")
        trickled = b"Host: 127.0.0.1\r\nX-Padding: " + b"a" * 10_000 + b"\r\n\r\n"
    else:
        body = json.dumps({"overload_cooldown_ms": policy["overload_cooldown_ms"] + 1}).encode()
        slow.sendall(
            b"PUT /api/policy HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        trickled = body
    sent = 0
    while not select.select([slow], [], [], 0.1)[0]:
        assert sent < len(trickled), "the whole request went out without an answer"
        slow.send(trickled[sent : sent + 1])
        sent += 1
        _api_works(bounded)
    answer = _read_until_closed(slow)
    slow.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "request_timeout"
    assert _logged(bounded, f"from 127.0.0.1:{port}: its request took more than")
    assert httpx.get(f"{bounded.api_url}/api/policy", timeout=HANG_TIMEOUT_S).json() == policy
    assert not _logged(bounded, "admin API failed")
    _api_works(bounded)


def test_a_connection_without_a_request_is_closed_after_the_idle_timeout(
    bounded: OpsCluster,
) -> None:
    """A connection that never sends a byte, and one that goes quiet after a response on a
    kept-alive connection, are both closed; a request on another connection is answered."""
    silent = _connect(bounded)
    kept = _connect(bounded)
    kept.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    _api_works(bounded)
    assert _read_until_closed(silent) == b""
    answer = _read_until_closed(kept)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.count(b"HTTP/1.1") == 1, answer
    silent.close()
    kept.close()
    _api_works(bounded)


def test_a_connection_beyond_the_bound_is_refused_and_the_others_go_on(
    bounded: OpsCluster,
) -> None:
    """With every slot held by an event stream, one more connection is answered 503 and closed,
    the streams keep receiving events, and once one of them closes a new request is served."""
    streams: list[socket.socket] = []
    refused = b""
    try:
        while len(streams) <= CONNECTIONS_MAX:
            sock = _connect(bounded)
            # A refused connection is answered as soon as it is accepted, before any request.
            if select.select([sock], [], [], 0.5)[0]:
                refused = _read_until_closed(sock)
                sock.close()
                break
            sock.sendall(EVENTS_REQUEST)
            head = _read_head(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head
            streams.append(sock)
        # Connections from the tests before may still be closing: they count as well.
        assert 0 < len(streams) <= CONNECTIONS_MAX
        assert refused.startswith(b"HTTP/1.1 503 "), refused
        assert json.loads(refused.split(b"\r\n\r\n", 1)[1])["error"] == "too_many_connections"
        assert _logged(bounded, "refused a connection from")
        for sock in streams:
            # The next snapshot, a second or so later, comes on every stream.
            received = b""
            while b"event: snapshot" not in received:
                chunk = sock.recv(65_536)
                assert chunk, "a stream closed"
                received += chunk
        streams.pop().close()

        def served() -> bool:
            try:
                return httpx.get(f"{bounded.api_url}/api/status", timeout=10).status_code == 200
            except httpx.TransportError:
                return False

        _poll(served, what="a request served once a slot was free")
    finally:
        for sock in streams:
            sock.close()


@pytest.mark.slow
def test_an_event_stream_whose_client_stops_reading_is_dropped(bounded: OpsCluster) -> None:
    """A dashboard stream whose client reads nothing is dropped once its write buffer stays full
    for the stall timeout, and the drop is logged; a stream read slowly, two kilobytes at a time,
    goes on for several stall timeouts after, and other requests are served throughout."""
    stalled = _connect(bounded, receive_buffer_bytes=RECEIVE_BUFFER_BYTES)
    slow = _connect(bounded, receive_buffer_bytes=SLOW_RECEIVE_BUFFER_BYTES)
    try:
        stalled.sendall(EVENTS_REQUEST)
        slow.sendall(EVENTS_REQUEST)
        dropped = f"dropped the connection to 127.0.0.1:{_port(stalled)}: it read nothing"
        read = b""
        deadline = time.monotonic() + HANG_TIMEOUT_S
        while not _logged(bounded, dropped):
            assert time.monotonic() < deadline, "the stream nobody reads was never dropped"
            time.sleep(0.25)
            chunk = slow.recv(SLOW_READ_BYTES)
            assert chunk, "the slowly read stream closed"
            read += chunk
            _api_works(bounded)
        # Whatever the kernel still held for it, then the end.
        assert b"HTTP/1.1 200 " in _read_until_closed(stalled)
        events_before = read.count(b"event: ")
        resumed = time.monotonic()
        while time.monotonic() - resumed < 3 * WRITE_STALL_TIMEOUT_MS / 1000:
            time.sleep(0.25)
            chunk = slow.recv(SLOW_READ_BYTES)
            assert chunk, "the slowly read stream closed"
            read += chunk
        assert read.count(b"event: ") > events_before
        assert not _logged(bounded, f"dropped the connection to 127.0.0.1:{_port(slow)}")
        _api_works(bounded)
    finally:
        stalled.close()
        slow.close()


def test_http_limits_refuse_a_bound_below_one() -> None:
    """Every bound of `HTTPLimits` is at least 1; the error names the field."""
    for name in ("connections_max", "request_timeout_ms", "write_stall_timeout_ms"):
        with pytest.raises(ConfigError, match=f"HTTPLimits.{name} must be at least 1"):
            HTTPLimits(**{name: 0})
