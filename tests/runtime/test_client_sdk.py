"""The client SDK without a cluster: argument checks, handoff events to callbacks and iterators."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

import forehand
from forehand.core import ClientConfig, client_events
from forehand.errors import ConfigError
from forehand.runtime import make_cluster_certs
from forehand.runtime.client import HANDOFF_EVENTS_BUFFERED_MAX, Session, _handoff_event
from forehand.wire import HandoffFlag, ReasonCode

SESSION = bytes(range(16))


def event(number: int) -> forehand.HandoffEvent:
    return forehand.HandoffEvent(
        kind=forehand.HandoffEventKind.COMPLETED,
        session_id=SESSION,
        parts=("cart",),
        source="s1",
        target="s2",
        map_version=number,
    )


def test_connect_checks_its_arguments(tmp_path: Path) -> None:
    """connect refuses a missing CA, a directory given as the CA, a CA file with no PEM
    certificate, no endpoints, a bad endpoint (a URL among them) or an unknown transport."""
    ca = make_cluster_certs(tmp_path / "certs", ["manager"], days=1).ca_certificate_path
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("not a certificate")
    with pytest.raises(ConfigError, match="does not exist"):
        forehand.connect("127.0.0.1:7000", ca=tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        forehand.connect("127.0.0.1:7000", ca=not_pem)
    with pytest.raises(ConfigError, match="is a directory: name the file"):
        forehand.connect("127.0.0.1:7000", ca=tmp_path / "certs")
    with pytest.raises(ConfigError, match="without a scheme"):
        forehand.connect("https://127.0.0.1:7000", ca=ca)
    with pytest.raises(ConfigError, match="at least one"):
        forehand.connect([], ca=ca)
    with pytest.raises(ConfigError, match="host:port"):
        forehand.connect("localhost", ca=ca)
    with pytest.raises(ConfigError, match="transport"):
        forehand.connect("127.0.0.1:7000", ca=ca, transport="sctp")
    client = forehand.connect(["127.0.0.1:7000", "127.0.0.1:7001"], ca=ca, transport="quic")
    assert len(client.client_id) == 16
    # Several in one string, as `forehand server --manager` takes them; not inside a list.
    listed = forehand.connect("127.0.0.1:7000, 127.0.0.1:7001", ca=ca)
    assert [(r.host, r.port) for r in listed._manager_routes] == [
        ("127.0.0.1", 7000),
        ("127.0.0.1", 7001),
    ]
    with pytest.raises(ConfigError, match="must be one host:port"):
        forehand.connect(["127.0.0.1:7000,127.0.0.1:7001"], ca=ca)
    # Probing potential handoff targets is on, also in a config passed for its timeouts (it was
    # off there before), and off where the application says so.
    assert client._core._config.prewarm_probe_targets is True
    passed = forehand.connect("127.0.0.1:7000", ca=ca, config=ClientConfig(request_timeout_ms=500))
    assert passed._core._config.prewarm_probe_targets is True
    off = ClientConfig(prewarm_probe_targets=False)
    assert forehand.connect("127.0.0.1:7000", ca=ca, config=off)._core._config == off


def test_handoff_events_reach_callbacks_and_iterators() -> None:
    """Every handoff event goes to each callback and to each iterator started before it; an
    iterator that lags keeps only the newest HANDOFF_EVENTS_BUFFERED_MAX events."""

    async def scenario() -> None:
        session = Session(cast(Any, None), SESSION, ("cart",))
        heard: list[forehand.HandoffEvent] = []
        session.on_handoff(heard.append)
        iterator = session.handoffs()
        first = asyncio.ensure_future(anext(iterator))
        await asyncio.sleep(0)
        session._handoff(event(1))
        assert (await first).map_version == 1
        total = HANDOFF_EVENTS_BUFFERED_MAX + 10
        for number in range(2, total + 2):
            session._handoff(event(number))
        received = [await anext(iterator) for _ in range(HANDOFF_EVENTS_BUFFERED_MAX)]
        assert [e.map_version for e in received] == list(range(12, total + 2))
        assert [e.map_version for e in heard] == list(range(1, total + 2))
        pending = asyncio.ensure_future(anext(iterator))
        await asyncio.sleep(0)
        session._mark_closed()
        with pytest.raises(StopAsyncIteration):
            await pending

    asyncio.run(scenario())


def test_a_failing_handoff_callback_goes_to_the_loop_s_exception_handler() -> None:
    """A callback that raises reaches the loop's exception handler (which prints it unless the
    application set its own), and the other callbacks and iterators still get the event. It
    went to this package's logger before, silent unless the application configured logging."""

    async def scenario() -> None:
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reported.append(context)
        )
        session = Session(cast(Any, None), SESSION, ("cart",))
        heard: list[forehand.HandoffEvent] = []

        def broken(_: forehand.HandoffEvent) -> None:
            raise KeyError("oops")

        session.on_handoff(broken)
        session.on_handoff(heard.append)
        session._handoff(event(1))
        (context,) = reported
        assert isinstance(context["exception"], KeyError)
        assert "on_handoff callback" in context["message"]
        assert [e.map_version for e in heard] == [1]

    asyncio.run(scenario())


def test_core_events_map_to_handoff_events() -> None:
    """HandoffStarted, HandoffFollowed, HandoffAbandoned, PartRedirected and PartRelocated
    become handoff events; other core events do not."""
    started = client_events.HandoffStarted(
        node="c",
        session_id=SESSION,
        parts=("cart",),
        source="s1",
        targets=("s2", "s3"),
        sequence=1,
        map_version=9,
        reason=ReasonCode.OVERLOAD,
        flags=HandoffFlag.PREWARMED,
    )
    relocated = client_events.PartRelocated(
        node="c", session_id=SESSION, part="auth", server="s3", map_version=10, duration_us=5
    )
    mapped = _handoff_event(started)
    assert mapped is not None and mapped.kind is forehand.HandoffEventKind.STARTED
    assert (mapped.target, mapped.reason) == ("s2", ReasonCode.OVERLOAD)
    moved = _handoff_event(relocated)
    assert moved is not None and moved.kind is forehand.HandoffEventKind.RELOCATED
    assert (moved.parts, moved.target, moved.duration_us) == (("auth",), "s3", 5)
    published = client_events.PartRelocated(
        node="c",
        session_id=SESSION,
        part="auth",
        server="s3",
        map_version=11,
        duration_us=0,
        previous="s1",
        lost=False,
    )
    moved_first = _handoff_event(published)
    assert moved_first is not None and moved_first.kind is forehand.HandoffEventKind.MOVED
    assert (moved_first.source, moved_first.target) == ("s1", "s3")
    closed = client_events.SessionClosed(node="c", session_id=SESSION)
    assert _handoff_event(closed) is None


def test_a_session_a_peer_closed_refuses_calls_naming_it(tmp_path: Path) -> None:
    """A SessionClosed from a server's CLOSE_SESSION marks the SDK's session closed: a later call
    raises SessionClosedError naming the server, handoff iterators end, and the client forgets
    it; one the application closed itself (closed_by None) is left to Session.close."""
    make_cluster_certs(tmp_path, ("s1",), days=1)
    client = forehand.connect("127.0.0.1:7000", ca=tmp_path / "ca.pem")

    async def scenario() -> None:
        session = Session(client, SESSION, ("cart",))
        other = Session(client, bytes(16), ("cart",))
        client._sessions[SESSION] = session
        client._sessions[other.id] = other
        iterator = session.handoffs()
        pending = asyncio.ensure_future(anext(iterator))
        await asyncio.sleep(0)
        client._on_event(client_events.SessionClosed(node="c", session_id=SESSION, closed_by="s1"))
        client._on_event(client_events.SessionClosed(node="c", session_id=other.id))
        with pytest.raises(StopAsyncIteration):
            await pending
        assert session.closed and not other.closed
        with pytest.raises(forehand.SessionClosedError, match="closed by s1"):
            await session.call("cart", "list")
        # Its snapshot and placements say so too (the snapshot raised "unknown session", a
        # LocalProtocolError, before).
        with pytest.raises(forehand.SessionClosedError, match="closed by s1"):
            session.snapshot()
        with pytest.raises(forehand.SessionClosedError, match="closed by s1"):
            session.placements()
        assert SESSION not in client._sessions and other.id in client._sessions

    asyncio.run(scenario())


def test_an_open_that_cannot_reach_the_manager_says_why(tmp_path: Path) -> None:
    """No manager listening: SessionOpenError names the refused dial, not only a retry count."""
    ca = make_cluster_certs(tmp_path / "certs", ["manager"], days=1).ca_certificate_path
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClientConfig(retry_attempts_max=2, retry_backoff_ms=10)

    async def scenario() -> None:
        async with forehand.connect(f"127.0.0.1:{port}", ca=ca, config=config) as client:
            with pytest.raises(forehand.SessionOpenError) as failure:
                await client.open_session(parts=["cart"])
        assert "retries exhausted" in str(failure.value)
        assert f"cannot connect to 127.0.0.1:{port}" in str(failure.value)

    asyncio.run(scenario())


def test_a_call_after_its_client_closed_says_the_client_is_closed(tmp_path: Path) -> None:
    """Not "the session is closed": the session is still open on the cluster (resume it)."""
    ca = make_cluster_certs(tmp_path / "certs", ["manager"], days=1).ca_certificate_path

    async def scenario() -> None:
        client = forehand.connect("127.0.0.1:7000", ca=ca)
        session = Session(client, SESSION, ("cart",))
        client._sessions[SESSION] = session
        await client.close()
        with pytest.raises(forehand.SessionClosedError, match="the client is closed"):
            await session.call("cart", "list")

    asyncio.run(scenario())


def test_a_close_cancelled_while_it_waits_for_queued_closes_still_closes(tmp_path: Path) -> None:
    """`Client.close` waits (bounded) for CLOSE_SESSIONs queued behind a connection still
    opening; cancelled meanwhile (a caller's timeout), it still stops the driver, and a second
    close returns at once. Before, the driver was left running."""
    ca = make_cluster_certs(tmp_path / "certs", ["manager"], days=1).ca_certificate_path

    async def scenario() -> None:
        client = forehand.connect("127.0.0.1:9", ca=ca)
        await client.start()
        client._core.closes_unsent = lambda: 1  # type: ignore[method-assign]  # never sent
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.close(), 0.1)
        assert client._driver._closed
        await asyncio.wait_for(client.close(), 0.1)

    asyncio.run(scenario())


def test_a_damaged_snapshot_is_a_snapshot_error(tmp_path: Path) -> None:
    """Bytes that are no snapshot, and a snapshot whose part name is not UTF-8 (msgspec raises
    UnicodeDecodeError there, not DecodeError, and it escaped as such), are `SnapshotError`s,
    a `ForehandError` as every error of the package."""
    from forehand.runtime.client import SNAPSHOT_FORMAT_VERSION, _Saved
    from forehand.wire import Endpoint, Placement

    ca = make_cluster_certs(tmp_path / "certs", ["manager"], days=1).ca_certificate_path
    where = Endpoint(server_id="s1", host="127.0.0.1", port=1)
    saved = _Saved(
        version=SNAPSHOT_FORMAT_VERSION,
        session_id=SESSION,
        credential=b"c" * 32,
        map_version=1,
        placements=(Placement(part="ab", primary=where, replicas=()),),
    )
    good = msgspec.msgpack.encode(saved)
    damaged = good.replace(b"\xa2ab", b"\xa2\xff\xfe")

    async def scenario() -> None:
        async with forehand.connect("127.0.0.1:1", ca=ca) as client:
            for snapshot in (b"garbage", damaged):
                with pytest.raises(forehand.SnapshotError, match="not a session snapshot"):
                    await client.resume_session(snapshot)

    asyncio.run(scenario())
