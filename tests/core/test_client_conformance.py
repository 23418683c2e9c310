"""ClientCore against docs/PROTOCOL.md: nothing but WELCOME or ERROR before WELCOME on a
connection it opened (section 3), and CLOSE_SESSION from a server or the manager (sections 5.5,
5.20)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from forehand.core._client_events import RequestFailed, RequestFailedWhy, SessionClosed
from forehand.core._driver import ConnectionCloseRequested
from forehand.errors import LocalProtocolError
from forehand.wire import (
    CloseSession,
    Error,
    ErrorCode,
    GoAway,
    Hello,
    MapUpdate,
    Pong,
    ReasonCode,
    Request,
    SessionOpened,
)

if TYPE_CHECKING:
    from tests.core._client_helpers import MANAGER, SESSION, Harness, answer, placement
else:
    from _client_helpers import MANAGER, SESSION, Harness, answer, placement

OTHER_SESSION = bytes([0x01, 0x8F] + [0x22] * 14)


def _before_welcome(name: str, request_id: int) -> object:
    frames: dict[str, object] = {
        "SessionOpened": SessionOpened(
            request_id=request_id,
            session_id=SESSION,
            credential=b"cred",
            map_version=2,
            placements=(placement("cart", "s1"),),
            token=b"token",
        ),
        "MapUpdate": MapUpdate(map_version=2, base_version=0, encoding=0x40, body=b"\x91\x90"),
        "GoAway": GoAway(map_version=2, reason=ReasonCode.UNSPECIFIED, last_request_id=0),
        "Pong": Pong(sequence=1, sent_us=2),
    }
    return frames[name]


@pytest.mark.parametrize("name", ["SessionOpened", "MapUpdate", "GoAway", "Pong"])
def test_a_frame_before_welcome_is_frame_unexpected(name: str) -> None:
    """A frame other than WELCOME or ERROR before WELCOME gets ERROR FRAME_UNEXPECTED and closes
    that connection; a SESSION_OPENED there opens nothing."""
    h = Harness()
    request_id = h.client.open_session(("cart",), now_us=0)
    h.drain()
    h.outbox.clear()
    h.feed(MANAGER, _before_welcome(name, request_id))
    assert [error.code for error in h.take(Error, MANAGER)] == [ErrorCode.FRAME_UNEXPECTED]
    closes = h.take(ConnectionCloseRequested, MANAGER)
    assert [close.error_code for close in closes] == [ErrorCode.FRAME_UNEXPECTED]
    assert h.client.session_ids() == ()


def test_the_client_dials_again_after_a_frame_before_welcome() -> None:
    """The connection closed for a frame before WELCOME is not the end: the open is still
    pending, and after the loss the client says HELLO again and the open goes through."""
    h = Harness()
    request_id = h.client.open_session(("cart",), now_us=0)
    h.drain()
    h.outbox.clear()
    h.feed(MANAGER, Pong(sequence=1, sent_us=2))
    h.lose(MANAGER, "closed by client")
    h.advance(ms=2_000)
    assert h.take(Hello, MANAGER), h.outbox
    h.welcome(MANAGER)
    h.feed(MANAGER, _before_welcome("SessionOpened", request_id))
    assert h.client.session_ids() == (SESSION,)


def _bound_session(h: Harness) -> tuple[bytes, int]:
    """A session whose part `cart` is served by s1, bound on the connection to s1 (its HELLO
    presented the credential, WELCOME answered), with one call sent there and unanswered."""
    session_id = h.open(placement("cart", "s1"))
    request_id = h.client.call(session_id, "cart", "add", b"x", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    assert [r.request_id for r in h.take(Request, "s1")] == [request_id]
    h.outbox.clear()
    return session_id, request_id


def test_close_session_from_a_bound_server_ends_the_session() -> None:
    """A server's CLOSE_SESSION for a session bound on its connection ends the session: its
    unanswered calls fail as SESSION_CLOSED, SessionClosed names the server, the manager is
    told and the server is not told back, and the connection stays open."""
    h = Harness()
    session_id, request_id = _bound_session(h)
    h.feed("s1", CloseSession(session_id=session_id))
    failed = h.of(RequestFailed)
    assert [(f.request_id, f.why) for f in failed] == [
        (request_id, RequestFailedWhy.SESSION_CLOSED)
    ]
    assert [(e.session_id, e.closed_by) for e in h.of(SessionClosed)] == [(session_id, "s1")]
    assert h.take(CloseSession, MANAGER) == [CloseSession(session_id=session_id)]
    assert h.take(CloseSession, "s1") == []
    assert h.take(ConnectionCloseRequested) == []
    assert h.client.session_ids() == ()


def test_close_session_from_the_manager_ends_the_session() -> None:
    """The manager may end any of the client's sessions; the servers holding it are told."""
    h = Harness()
    session_id, _ = _bound_session(h)
    h.feed(MANAGER, CloseSession(session_id=session_id))
    assert [(e.session_id, e.closed_by) for e in h.of(SessionClosed)] == [(session_id, MANAGER)]
    assert h.take(CloseSession, "s1") == [CloseSession(session_id=session_id)]
    assert h.take(CloseSession, MANAGER) == []
    assert h.client.session_ids() == ()


@pytest.mark.parametrize(
    ("source", "session_id"),
    [("s1", OTHER_SESSION), ("s2", SESSION)],
    ids=["unknown-session", "not-bound-there"],
)
def test_close_session_for_a_session_not_bound_there_is_ignored(
    source: str, session_id: bytes
) -> None:
    """A server cannot end a session the client does not hold, or one not bound on its
    connection: nothing changes, nothing closes."""
    h = Harness()
    _bound_session(h)
    h.feed(source, CloseSession(session_id=session_id))
    assert h.of(SessionClosed) == []
    assert h.take(ConnectionCloseRequested) == []
    assert h.client.session_ids() == (SESSION,)


SMALL_LIMIT = 20_000
"""A server's frame_bytes_max below the client's own (1 MiB), above the protocol's floor."""


def test_a_call_longer_than_the_servers_announced_limit_is_refused_at_once() -> None:
    """Once the part's server announced a frame_bytes_max below the client's own, a call whose
    REQUEST is longer raises LocalProtocolError naming it and issues nothing (sent, it would
    close the connection with FRAME_TOO_LARGE); one that fits is sent."""
    h = Harness()
    session_id = h.open(placement("cart", "s1"))
    h.client.call(session_id, "cart", "add", b"x", now_us=h.now_us)
    h.drain()
    h.welcome("s1", frame_bytes_max=SMALL_LIMIT)
    h.outbox.clear()
    with pytest.raises(LocalProtocolError, match=f"frame_bytes_max={SMALL_LIMIT} that s1"):
        h.client.call(session_id, "cart", "add", b"x" * SMALL_LIMIT, now_us=h.now_us)
    fits = h.client.call(session_id, "cart", "add", b"x" * (SMALL_LIMIT - 200), now_us=h.now_us)
    h.drain()
    assert fits in [r.request_id for r in h.take(Request, "s1")]
    assert h.take(ConnectionCloseRequested) == []


def test_a_request_queued_before_a_smaller_welcome_fails_unsent() -> None:
    """A request queued while the connection waited for WELCOME, longer than the limit that
    WELCOME then announces, fails as TOO_LARGE and is not sent; the others queued with it are."""
    h = Harness()
    session_id = h.open(placement("cart", "s1"))
    big = h.client.call(session_id, "cart", "add", b"x" * (SMALL_LIMIT + 1), now_us=h.now_us)
    small = h.client.call(session_id, "cart", "add", b"y", now_us=h.now_us)
    h.drain()
    h.welcome("s1", frame_bytes_max=SMALL_LIMIT)
    assert [r.request_id for r in h.take(Request, "s1")] == [small]
    failed = h.of(RequestFailed)
    assert [(f.request_id, f.why) for f in failed] == [(big, RequestFailedWhy.TOO_LARGE)]


def test_a_stale_copy_queued_for_a_smaller_server_does_not_fail_a_request_sent_elsewhere() -> None:
    """A request queued for s1 before its WELCOME, then sent to s2 when the map moved its part
    there, is not failed TOO_LARGE when s1's WELCOME announces less than it needs: only the
    stale copy for s1 is dropped, and the request is answered by way of s2 (it was failed while
    in flight at s2, so a call s2 executed was reported as failed)."""
    h = Harness()
    session_id = h.open(placement("cart", "s1"))
    big = h.client.call(session_id, "cart", "add", b"x" * (SMALL_LIMIT + 1), now_us=h.now_us)
    h.drain()
    h.feed(MANAGER, answer((session_id, placement("cart", "s2")), map_version=6))
    h.welcome("s2")
    assert [r.request_id for r in h.take(Request, "s2")] == [big]
    h.welcome("s1", frame_bytes_max=SMALL_LIMIT)
    assert h.take(Request, "s1") == []
    assert h.of(RequestFailed) == []
    assert h.client.inflight_count == 1


def test_a_request_sent_before_its_part_moved_to_a_smaller_server_may_fail_too_large() -> None:
    """TOO_LARGE does not say the request was never sent: one s2 received (and may have
    executed) fails TOO_LARGE when its part moves to s1, which announced a smaller limit, so the
    application cannot take it for a call that was not applied."""
    h = Harness()
    session_id = h.open(placement("cart", "s2"), placement("feed", "s1"))
    h.client.call(session_id, "feed", "get", b"x", now_us=h.now_us)
    h.drain()
    h.welcome("s1", frame_bytes_max=SMALL_LIMIT)
    big = h.client.call(session_id, "cart", "add", b"x" * (SMALL_LIMIT + 1), now_us=h.now_us)
    h.drain()
    h.welcome("s2")
    assert [r.request_id for r in h.take(Request, "s2")] == [big]
    h.feed(MANAGER, answer((session_id, placement("cart", "s1")), map_version=6))
    failed = h.of(RequestFailed)
    assert [(f.request_id, f.why) for f in failed] == [(big, RequestFailedWhy.TOO_LARGE)]
    assert big not in [r.request_id for r in h.take(Request, "s1")]
