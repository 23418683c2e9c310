"""Tests of ClientCore driven alone: sessions, requests, redirects, retries, timeouts, pings."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest

from forehand.core._client_config import ClientConfig
from forehand.core._client_events import (
    ConnectionEstablished,
    MapVersionAdopted,
    PartRedirected,
    ProtocolViolationDetected,
    RarePathTaken,
    RequestFailed,
    RequestFailedWhy,
    ResponseReceived,
    SessionClosed,
    SessionEstablished,
    SessionOpenFailed,
    SessionResumed,
    SessionResumeRejected,
)
from forehand.core._client_map import (
    CLIENT_PLACEMENTS_ENCODING,
    SessionPlacement,
    encode_client_placements,
)
from forehand.core._client_session import RouteState
from forehand.core._driver import ConnectionCloseRequested, ConnectionOpened
from forehand.core._pool import ConnectionState
from forehand.core.client import (
    CALL_TIMEOUT_MS_MAX,
    REQUEST_ID_BITS,
    BackpressureError,
    ClientCore,
)
from forehand.core.messages import LogAcknowledged, PartRef
from forehand.errors import LocalProtocolError
from forehand.wire import (
    DEFAULT_CONFIG,
    CloseSession,
    Credential,
    Error,
    ErrorCode,
    GoAway,
    Hello,
    MapRequest,
    MapUpdate,
    OpenSession,
    OpenSessionRefused,
    Ping,
    Pong,
    ReasonCode,
    Redirect,
    Request,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
    SessionOpened,
    Settings,
    encode_frame,
)

if TYPE_CHECKING:
    from tests.core._client_helpers import (
        CLIENT_ID,
        MANAGER,
        SESSION,
        Harness,
        answer,
        endpoint,
        map_request,
        placement,
        ready_session,
        respond,
    )
else:
    from _client_helpers import (
        CLIENT_ID,
        MANAGER,
        SESSION,
        Harness,
        answer,
        endpoint,
        map_request,
        placement,
        ready_session,
        respond,
    )


def test_open_session_says_hello_to_the_manager_first() -> None:
    """open_session sends HELLO to the manager and the OPEN_SESSION only after WELCOME."""
    h = Harness()
    request_id = h.client.open_session(("auth", "cart"), now_us=0)
    h.drain()
    hello = h.take(Hello, MANAGER)
    assert len(hello) == 1 and hello[0].client_id == CLIENT_ID and hello[0].versions == (1,)
    assert h.take(OpenSession) == []
    h.welcome(MANAGER)
    opens = h.take(OpenSession, MANAGER)
    assert opens == [OpenSession(request_id=request_id, parts=("auth", "cart"))]


def test_session_opened_sets_routes_and_emits_event() -> None:
    """SESSION_OPENED creates one ACTIVE route per part and adopts the map version."""
    h = Harness()
    session = h.open(placement("auth", "s1", "s2", "s3"), placement("cart", "s2"), map_version=9)
    established = h.of(SessionEstablished)
    assert [(e.session_id, e.parts, e.map_version) for e in established] == [
        (session, ("auth", "cart"), 9)
    ]
    route = h.client.route(session, "auth")
    assert (route.state, route.primary, route.backups, route.map_version) == (
        RouteState.ACTIVE,
        "s1",
        ("s2", "s3"),
        9,
    )
    assert h.client.map_version == 9
    assert h.client.endpoint("s3") == endpoint("s3")


def test_call_connects_on_demand_and_sends_after_welcome() -> None:
    """The first call sends HELLO with the session credential; REQUEST follows WELCOME."""
    h = Harness()
    session = h.open(placement("auth", "s1"))
    request_id = h.client.call(session, "auth", "login", b"pw", now_us=0)
    h.drain()
    hello = h.take(Hello, "s1")
    assert hello[0].credentials == (
        Credential(session_id=session, credential=b"cred-" + session[:4]),
    )
    assert h.take(Request) == []
    assert h.client.connection_state("s1") is ConnectionState.CONNECTING
    h.welcome("s1", map_version=6)
    requests = h.take(Request, "s1")
    assert [(r.request_id, r.part, r.op, r.payload, r.map_version) for r in requests] == [
        (request_id, "auth", "login", b"pw", 5)
    ]
    assert [e.server for e in h.of(ConnectionEstablished)] == [MANAGER, "s1"]
    assert h.client.connection_state("s1") is ConnectionState.READY


def test_hello_presents_only_credentials_of_sessions_on_that_server() -> None:
    """HELLO carries the credentials of the sessions with a part on that server, no others."""
    h = Harness()
    first = h.open(placement("auth", "s1"))
    second = bytes([0x01, 0x8F] + [0x33] * 14)
    h.open(placement("auth", "s2", "s1"), session_id=second, welcome_manager=False)
    h.client.call(first, "auth", "x", b"", now_us=0)
    h.client.call(second, "auth", "x", b"", now_us=0)
    h.drain()
    on_s1 = h.take(Hello, "s1")[0].credentials
    on_s2 = h.take(Hello, "s2")[0].credentials
    assert [c.session_id for c in on_s1] == [first, second]
    assert [c.session_id for c in on_s2] == [second]


def test_response_emits_response_received_with_latency_and_issue_order() -> None:
    """A RESPONSE becomes ResponseReceived with the part's issue sequence and latency."""
    h = Harness()
    session = ready_session(h)
    first = h.client.call(session, "auth", "a", b"", now_us=h.now_us)
    second = h.client.call(session, "auth", "b", b"", now_us=h.now_us)
    h.drain()
    requests = h.take(Request, "s1")
    assert [r.request_id for r in requests] == [first, second]
    h.advance(us=1_500)
    respond(h, "s1", requests[1], payload=b"B")
    respond(h, "s1", requests[0], payload=b"A")
    received = h.of(ResponseReceived)
    assert [(r.request_id, r.issue_sequence, r.payload, r.latency_us) for r in received] == [
        (second, 3, b"B", 1_500),
        (first, 2, b"A", 1_500),
    ]
    assert received[0].server == "s1" and received[0].attempts == 1
    assert h.client.route(session, "auth").inflight == ()


def test_request_ids_are_unique_62_bit_and_increasing() -> None:
    """Request ids fit 62 bits, never repeat, and grow in call order."""
    h = Harness(inflight_requests_max=2000)
    session = ready_session(h)
    ids = [h.client.call(session, "auth", "x", b"", now_us=0) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)
    assert all(0 < i < 1 << REQUEST_ID_BITS for i in ids)


def test_two_clients_with_different_seeds_draw_different_id_ranges() -> None:
    """The first request id comes from the injected random source."""
    first = ClientCore(config=ClientConfig(), client_id=CLIENT_ID, rng=random.Random(1))
    second = ClientCore(config=ClientConfig(), client_id=CLIENT_ID, rng=random.Random(2))
    assert first.open_session(("a",), now_us=0) != second.open_session(("a",), now_us=0)


def test_inflight_bound_raises_backpressure_until_answers_come() -> None:
    """Beyond inflight_requests_max, call raises BackpressureError; an answer makes room."""
    h = Harness(inflight_requests_max=3)
    session = ready_session(h)
    h.client.call(session, "auth", "x", b"", now_us=0)
    h.client.call(session, "auth", "y", b"", now_us=0)
    h.client.call(session, "auth", "z", b"", now_us=0)
    with pytest.raises(BackpressureError):
        h.client.call(session, "auth", "w", b"", now_us=0)
    assert issubclass(BackpressureError, LocalProtocolError)
    h.drain()
    respond(h, "s1", h.take(Request, "s1")[0])
    h.client.call(session, "auth", "w", b"", now_us=0)
    assert h.client.inflight_count == 3


def test_calls_on_unknown_session_or_part_are_local_errors() -> None:
    """Calling an unknown session or part raises LocalProtocolError."""
    h = Harness()
    session = ready_session(h)
    with pytest.raises(LocalProtocolError):
        h.client.call(b"\x00" * 16, "auth", "x", b"", now_us=0)
    with pytest.raises(LocalProtocolError):
        h.client.call(session, "video", "x", b"", now_us=0)


@pytest.mark.parametrize("defer_send", [False, True])
def test_a_call_whose_request_cannot_be_encoded_is_refused_and_issues_nothing(
    defer_send: bool,
) -> None:
    """An op that is not a string, empty or too long, or a payload that cannot fit
    frame_bytes_max, raises LocalProtocolError from call before any request is issued; the
    largest payload that fits is issued, sent and encodes."""
    h = Harness()
    session = ready_session(h)
    h.drain()
    wire = DEFAULT_CONFIG
    cases: tuple[tuple[Any, bytes], ...] = (
        ("", b""),
        ("o" * (wire.op_name_bytes_max + 1), b""),
        ("put", bytes(wire.frame_bytes_max)),
        (5, b""),  # not a string: it raised AttributeError from inside the client
        (None, b""),
    )
    for op, payload in cases:
        with pytest.raises(LocalProtocolError, match="cannot be sent"):
            h.client.call(session, "auth", op, payload, now_us=h.now_us, defer_send=defer_send)
    assert h.client.inflight_count == 0 and h.client.route(session, "auth").inflight == ()
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    assert h.outbox == []
    empty = Request(
        request_id=1, session_id=session, part="auth", op="put", map_version=1, payload=b""
    )
    # An empty one's frame is its body plus a type byte and a one-byte length.
    fits = bytes(wire.frame_bytes_max - (len(encode_frame(empty)) - 2))
    with pytest.raises(LocalProtocolError, match="cannot be sent"):
        h.client.call(session, "auth", "put", fits + b"x", now_us=h.now_us)
    request_id = h.client.call(session, "auth", "put", fits, now_us=h.now_us, defer_send=defer_send)
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    [sent] = h.take(Request, "s1")
    assert sent.request_id == request_id and sent.payload == fits
    encode_frame(sent)


def test_duplicate_response_is_dropped() -> None:
    """A second RESPONSE for the same id emits no second ResponseReceived."""
    h = Harness()
    session = ready_session(h)
    h.client.call(session, "auth", "x", b"", now_us=0)
    h.drain()
    request = h.take(Request, "s1")[0]
    respond(h, "s1", request)
    respond(h, "s1", request)
    assert len(h.of(ResponseReceived)) == 1
    assert [e.name for e in h.of(RarePathTaken)] == ["duplicate-response"]


def test_map_version_never_goes_backwards() -> None:
    """Lower versions in WELCOME or RESPONSE leave the client's version unchanged, higher adopt."""
    h = Harness()
    session = ready_session(h)
    h.client.call(session, "auth", "x", b"", now_us=0)
    h.drain()
    respond(h, "s1", h.take(Request, "s1")[0], map_version=3)
    assert h.client.map_version == 5
    assert h.of(MapVersionAdopted) == []
    h.client.call(session, "auth", "x", b"", now_us=0)
    h.drain()
    respond(h, "s1", h.take(Request, "s1")[0], map_version=8)
    adopted = h.of(MapVersionAdopted)
    assert [(e.previous_map_version, e.map_version) for e in adopted] == [(5, 8)]


def test_request_timeout_fails_with_event() -> None:
    """A request unanswered for request_timeout_ms fails with RequestFailed TIMEOUT."""
    h = Harness(request_timeout_ms=100)
    session = ready_session(h)
    request_id = h.client.call(session, "auth", "x", b"", now_us=h.now_us)
    h.advance(ms=99)
    assert h.of(RequestFailed) == []
    h.advance(ms=1)
    failed = h.of(RequestFailed)
    assert [(f.request_id, f.why, f.elapsed_us) for f in failed] == [
        (request_id, RequestFailedWhy.TIMEOUT, 100_000)
    ]
    assert h.client.inflight_count == 0


def test_a_call_may_wait_longer_than_request_timeout_ms() -> None:
    """`timeout_ms` gives one call its own deadline (a waiting read); calls issued after it with
    the default timeout still time out on theirs, and its answer, however late, is delivered."""
    h = Harness(request_timeout_ms=100)
    session = ready_session(h)
    waiting = h.client.call(session, "auth", "since", b"", now_us=h.now_us, timeout_ms=1_000)
    plain = h.client.call(session, "auth", "x", b"", now_us=h.now_us)
    h.drain()
    h.advance(ms=100)
    assert [(f.request_id, f.why) for f in h.of(RequestFailed)] == [
        (plain, RequestFailedWhy.TIMEOUT)
    ]
    h.advance(ms=800)
    sent = {request.request_id: request for request in h.take(Request, "s1")}
    respond(h, "s1", sent[waiting])
    (received,) = h.of(ResponseReceived)
    assert (received.request_id, received.latency_us) == (waiting, 900_000)
    assert h.client.inflight_count == 0 and h.client.timer_us() is not None


def test_a_call_of_its_own_timeout_fails_at_that_deadline() -> None:
    """Unanswered, a call with `timeout_ms` fails TIMEOUT then, not at `request_timeout_ms`."""
    h = Harness(request_timeout_ms=100)
    session = ready_session(h)
    request_id = h.client.call(session, "auth", "x", b"", now_us=h.now_us, timeout_ms=250)
    h.advance(ms=249)
    assert h.of(RequestFailed) == []
    h.advance(ms=1)
    assert [(f.request_id, f.why, f.elapsed_us) for f in h.of(RequestFailed)] == [
        (request_id, RequestFailedWhy.TIMEOUT, 250_000)
    ]
    with pytest.raises(LocalProtocolError, match="timeout_ms"):
        h.client.call(session, "auth", "x", b"", now_us=h.now_us, timeout_ms=0)
    with pytest.raises(LocalProtocolError, match="timeout_ms"):
        h.client.call(
            session, "auth", "x", b"", now_us=h.now_us, timeout_ms=CALL_TIMEOUT_MS_MAX + 1
        )


def test_try_again_resends_same_id_after_backoff_then_gives_up() -> None:
    """TRY_AGAIN re-sends the same id after a backoff; past retry_attempts_max the request fails."""
    h = Harness(retry_attempts_max=2, retry_backoff_ms=10, retry_jitter_ratio=0.0)
    session = ready_session(h)
    request_id = h.client.call(session, "auth", "x", b"", now_us=h.now_us)
    h.drain()
    respond(h, "s1", h.take(Request, "s1")[0], status=ResponseStatus.TRY_AGAIN)
    h.advance(ms=9)
    assert h.take(Request) == []
    h.advance(ms=1)
    again = h.take(Request, "s1")
    assert [r.request_id for r in again] == [request_id]
    respond(h, "s1", again[0], status=ResponseStatus.TRY_AGAIN)
    h.advance(ms=20)
    third = h.take(Request, "s1")
    assert [r.request_id for r in third] == [request_id]
    respond(h, "s1", third[0], status=ResponseStatus.TRY_AGAIN)
    failed = h.of(RequestFailed)
    assert [(f.why, f.attempts) for f in failed] == [(RequestFailedWhy.RETRIES_EXHAUSTED, 3)]


def test_a_part_answered_try_again_again_and_again_is_located_anew() -> None:
    """The third TRY_AGAIN for a request from its part's primary makes the client ask the
    manager where the part is instead of sending it back there, and the request goes to the
    server the answer names. A primary fenced by a failover it cannot hear the end of (cut off
    from the manager) answers TRY_AGAIN until its partition heals; before, its clients sent
    every request back to it until they ran out of retries (found live)."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0)
    session = ready_session(h)
    request_id = h.client.call(session, "auth", "x", b"", now_us=h.now_us)
    h.drain()
    for _ in range(2):
        (sent,) = h.take(Request, "s1")
        respond(h, "s1", sent, status=ResponseStatus.TRY_AGAIN)
        assert h.take(MapRequest, MANAGER) == []
        h.advance(ms=40)
    (sent,) = h.take(Request, "s1")
    respond(h, "s1", sent, status=ResponseStatus.TRY_AGAIN)
    assert h.client.route(session, "auth").state is RouteState.LOCATING
    assert len(h.take(MapRequest, MANAGER)) == 1
    h.advance(ms=40)
    assert h.take(Request, "s1") == []
    h.feed(MANAGER, answer((session, placement("auth", "s2", "s3")), map_version=8))
    h.drain()
    assert [r.request_id for r in h.take(Request, "s2")] == [request_id]
    assert h.of(RequestFailed) == []


def _redirected_to_a_primary_behind(h: Harness) -> tuple[bytes, int]:
    """A call to auth's handoff target s3 (map 5), which answers REDIRECT at map 8 (the
    failover's) to s1, the source the failover kept: the call goes to s1."""
    session = h.open(placement("auth", "s3", "s1"))
    request_id = h.client.call(session, "auth", "add", b"x", now_us=h.now_us)
    h.drain()
    h.welcome("s3")
    assert [r.request_id for r in h.take(Request, "s3")] == [request_id]
    target = (endpoint("s1"),)
    h.feed(
        "s3",
        Redirect(
            request_id=request_id, session_id=session, part="auth", map_version=8, targets=target
        ),
    )
    h.welcome("s1")
    return session, request_id


def _answer_try_again_from_map(h: Harness, session: bytes, map_version: int, *, ms: int) -> int:
    """For `ms`, s1 answers every request TRY_AGAIN from its map `map_version`, and the manager
    every MAP_REQUEST with auth on s1 at map 8; how many TRY_AGAIN s1 sent."""
    answered = 0
    for _ in range(ms // 50):
        h.advance(ms=50)
        for request in h.take(Request, "s1"):
            respond(h, "s1", request, status=ResponseStatus.TRY_AGAIN, map_version=map_version)
            answered += 1
        if h.take(MapRequest, MANAGER):
            h.feed(MANAGER, answer((session, placement("auth", "s1", "s3")), map_version=8))
    return answered


def test_a_primary_behind_the_map_that_named_it_is_waited_for_until_the_deadline() -> None:
    """TRY_AGAIN from a part's primary stamped with an older map than the one that named it
    primary does not spend `retry_attempts_max`: the primary has not learned its placement yet
    (a failover kept a handoff's source, fenced, while the manager's messages to it were lost)
    and serves once it does, so the request waits for it until its deadline. Before, such
    requests ran out of retries within a second (`forehand sim --scenario drain-one-way
    --seed 17600251`: 116 failed), while a primary at the client's map still exhausts them."""
    config = {"retry_attempts_max": 2, "retry_backoff_ms": 10, "retry_backoff_max_ms": 40}
    h = Harness(retry_jitter_ratio=0.0, request_timeout_ms=3_000, **config)
    session, request_id = _redirected_to_a_primary_behind(h)
    assert _answer_try_again_from_map(h, session, map_version=5, ms=1_500) > 8
    assert h.of(RequestFailed) == []
    h.advance(ms=100)
    (sent,) = h.take(Request, "s1")
    respond(h, "s1", sent, map_version=8)
    assert [e.request_id for e in h.of(ResponseReceived)] == [request_id]
    late = h.client.call(session, "auth", "add", b"y", now_us=h.now_us)
    h.drain()
    _answer_try_again_from_map(h, session, map_version=5, ms=3_500)
    failed = h.of(RequestFailed)
    assert [(f.request_id, f.why, f.elapsed_us) for f in failed] == [
        (late, RequestFailedWhy.TIMEOUT, 3_000_000)
    ]
    h = Harness(retry_jitter_ratio=0.0, request_timeout_ms=3_000, **config)
    session, request_id = _redirected_to_a_primary_behind(h)
    _answer_try_again_from_map(h, session, map_version=8, ms=1_500)
    failed = h.of(RequestFailed)
    assert [(f.request_id, f.why) for f in failed] == [
        (request_id, RequestFailedWhy.RETRIES_EXHAUSTED)
    ]


def test_calls_wait_behind_a_request_in_try_again_backoff() -> None:
    """A call made while an earlier one waits out TRY_AGAIN goes out after it, never before."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0)
    session = ready_session(h)
    first = h.client.call(session, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    respond(h, "s1", h.take(Request, "s1")[0], status=ResponseStatus.TRY_AGAIN)
    second = h.client.call(session, "auth", "b", b"", now_us=h.now_us)
    third = h.client.call(session, "auth", "c", b"", now_us=h.now_us)
    h.drain()
    assert h.take(Request) == []
    h.advance(ms=10)
    assert [r.request_id for r in h.take(Request, "s1")] == [first, second, third]


def test_deferred_and_direct_calls_wait_behind_a_request_in_try_again_backoff() -> None:
    """Deferred and direct calls made while an earlier one of the part waits out TRY_AGAIN are
    held by send_deferred as by call, and all go out in call order when its backoff ends."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0)
    session = ready_session(h)
    first = h.client.call(session, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    respond(h, "s1", h.take(Request, "s1")[0], status=ResponseStatus.TRY_AGAIN)
    second = h.client.call(session, "auth", "b", b"", now_us=h.now_us, defer_send=True)
    third = h.client.call(session, "auth", "c", b"", now_us=h.now_us)
    fourth = h.client.call(session, "auth", "d", b"", now_us=h.now_us, defer_send=True)
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    assert h.take(Request) == []
    h.advance(ms=10)
    assert [r.request_id for r in h.take(Request, "s1")] == [first, second, third, fourth]
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    assert h.take(Request) == []


def test_application_errors_are_final_answers() -> None:
    """APP_ERROR is delivered as a response, not retried."""
    h = Harness()
    session = ready_session(h)
    h.client.call(session, "auth", "x", b"", now_us=0)
    h.drain()
    respond(h, "s1", h.take(Request, "s1")[0], status=ResponseStatus.APP_ERROR, payload=b"no")
    assert [r.status for r in h.of(ResponseReceived)] == [ResponseStatus.APP_ERROR]
    h.advance(ms=5_000)
    assert h.take(Request) == []


def test_a_redirect_naming_the_same_server_brings_the_version_but_reports_no_move() -> None:
    """A REDIRECT at a newer version whose target is the server itself (the part stayed, its
    epoch grew): the request goes again there at that version, and no PartRedirected is
    emitted (the SDK reported a move "s3 -> s3")."""
    h = Harness()
    session = ready_session(h)
    call = h.client.call(session, "auth", "a", b"", now_us=0)
    h.drain()
    h.take(Request, "s1")
    h.feed(
        "s1",
        Redirect(
            request_id=call,
            session_id=session,
            part="auth",
            map_version=7,
            targets=(endpoint("s1"),),
        ),
    )
    assert [(r.request_id, r.map_version) for r in h.take(Request, "s1")] == [(call, 7)]
    assert h.client.route(session, "auth").map_version == 7
    assert h.of(PartRedirected) == []


def test_a_redirect_naming_the_same_server_spends_no_retry() -> None:
    """Retries spent on TRY_AGAIN down to the last one, the server then REDIRECTs the request
    to itself at a newer version (it just learned the map that lets it serve): the request goes
    again there at that version, not failed with RETRIES_EXHAUSTED, since each such REDIRECT
    needs a newer version than the last. Another server named still spends one, and fails it."""
    for target, version, outcome in (
        ("s1", 7, None),
        ("s2", 7, RequestFailedWhy.RETRIES_EXHAUSTED),
    ):
        h = Harness(retry_attempts_max=2, retry_backoff_ms=10, retry_jitter_ratio=0.0)
        session = ready_session(h)
        call = h.client.call(session, "auth", "a", b"", now_us=h.now_us)
        h.drain()
        for _ in range(2):
            respond(h, "s1", h.take(Request, "s1")[0], status=ResponseStatus.TRY_AGAIN)
            h.advance(ms=100)
        h.take(Request, "s1")
        redirect = Redirect(
            request_id=call,
            session_id=session,
            part="auth",
            map_version=version,
            targets=(endpoint(target),),
        )
        h.feed("s1", redirect)
        assert [f.why for f in h.of(RequestFailed)] == ([] if outcome is None else [outcome])
        if outcome is None:
            (again,) = h.take(Request, "s1")
            assert (again.request_id, again.map_version) == (call, version)
            respond(h, "s1", again, map_version=version)
            assert [e.request_id for e in h.of(ResponseReceived)] == [call]


def test_redirect_to_newer_version_moves_part_and_resends_in_order() -> None:
    """A newer REDIRECT moves the part and re-sends its requests, same ids, in call order."""
    h = Harness()
    session = ready_session(h)
    first = h.client.call(session, "auth", "a", b"", now_us=0)
    second = h.client.call(session, "auth", "b", b"", now_us=0)
    h.drain()
    h.take(Request, "s1")
    h.feed(
        "s1",
        Redirect(
            request_id=second,
            session_id=session,
            part="auth",
            map_version=7,
            targets=(endpoint("s2"),),
        ),
    )
    resent = h.take(Request, "s2")
    assert [(r.request_id, r.map_version) for r in resent] == [(first, 7), (second, 7)]
    route = h.client.route(session, "auth")
    assert (route.primary, route.map_version) == ("s2", 7)
    assert [(e.source, e.target, e.map_version) for e in h.of(PartRedirected)] == [("s1", "s2", 7)]
    assert h.client.map_version == 7
    # The first request's own REDIRECT, arriving late from s1, is stale: nothing is sent again.
    h.feed(
        "s1",
        Redirect(
            request_id=first,
            session_id=session,
            part="auth",
            map_version=7,
            targets=(endpoint("s2"),),
        ),
    )
    assert h.take(Request) == []
    assert [e.name for e in h.of(RarePathTaken)] == ["stale-redirect"]


def test_redirect_to_unknown_server_asks_the_manager() -> None:
    """A REDIRECT to a server no placement named is not followed; the client asks the map."""
    h = Harness()
    session = ready_session(h)
    request_id = h.client.call(session, "auth", "a", b"", now_us=0)
    h.drain()
    h.take(Request)
    h.feed(
        "s1",
        Redirect(
            request_id=request_id,
            session_id=session,
            part="auth",
            map_version=9,
            targets=(endpoint("evil"),),
        ),
    )
    assert h.take(Request) == []
    assert h.take(MapRequest, MANAGER) == [map_request(5)]
    assert h.client.route(session, "auth").state is RouteState.LOCATING


def test_not_found_from_primary_starts_relocation() -> None:
    """NOT_FOUND from the part's primary means the placement is stale: the client asks the map."""
    h = Harness()
    session = ready_session(h)
    h.client.call(session, "auth", "a", b"", now_us=0)
    h.drain()
    respond(h, "s1", h.take(Request, "s1")[0], status=ResponseStatus.NOT_FOUND)
    assert h.of(ResponseReceived) == []
    assert len(h.take(MapRequest, MANAGER)) == 1


def test_close_session_fails_inflight_and_tells_manager_and_servers() -> None:
    """close_session fails unanswered requests and tells the manager and the primaries."""
    h = Harness()
    session = ready_session(h)
    request_id = h.client.call(session, "auth", "a", b"", now_us=0)
    h.client.close_session(session, now_us=0)
    h.drain()
    failed = h.of(RequestFailed)
    assert [(f.request_id, f.why) for f in failed] == [
        (request_id, RequestFailedWhy.SESSION_CLOSED)
    ]
    assert h.of(SessionClosed) == [SessionClosed(node="c1", session_id=session)]
    destinations = sorted(o.destination for o in h.outbox if isinstance(o.message, CloseSession))
    assert destinations == [MANAGER, "s1", "s2"]
    assert h.client.session_ids() == ()


@pytest.mark.parametrize(
    "parts",
    ["profile", (), ("a", "a"), ("",), ("Profile",), ("x" * 65,), ("a",) * 65],
    ids=["a-string", "none", "repeated", "empty-name", "upper-case", "too-long", "too-many"],
)
def test_open_session_refuses_parts_the_manager_would_refuse_at_once(parts: object) -> None:
    """A string (which would open one part per letter), no parts, a repeated one, or a name that
    is not a part name: LocalProtocolError before anything is sent, naming the rule. Before, a
    bad name went out, the manager closed the connection over it, and the open failed only when
    its retries ran out (10 s later, "no answer in time")."""
    h = Harness()
    with pytest.raises(LocalProtocolError, match="part"):
        h.client.open_session(parts, now_us=0)  # type: ignore[arg-type]
    h.drain()
    assert h.outbox == [] and h.client.inflight_count == 0


def test_an_open_the_manager_refuses_fails_at_once_with_its_reason() -> None:
    """OPEN_SESSION_REFUSED fails that open at once with the manager's reason, and nothing is
    sent again (no retry, the connection kept); a late refusal of an open already answered is
    ignored."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0)
    request_id = h.client.open_session(("auth", "crat"), now_us=0)
    h.drain()
    h.welcome(MANAGER)
    h.outbox.clear()
    # A server's refusal counts for nothing: opens go to the manager.
    h.welcome("s1")
    h.feed("s1", OpenSessionRefused(request_id=request_id, reason="forged"))
    assert h.of(SessionOpenFailed) == []
    h.feed(MANAGER, OpenSessionRefused(request_id=request_id, reason="no app declares 'crat'"))
    (failed,) = h.of(SessionOpenFailed)
    assert failed.request_id == request_id
    assert failed.detail == "the manager refused it: no app declares 'crat'"
    h.advance(ms=5_000)
    assert h.take(OpenSession) == [] and h.take(ConnectionCloseRequested) == []
    assert h.client.inflight_count == 0
    h.feed(MANAGER, OpenSessionRefused(request_id=request_id, reason="again"))
    assert h.of(SessionOpenFailed) == []


def test_an_open_the_manager_is_too_busy_for_is_sent_again_after_its_wait() -> None:
    """An OPEN_SESSION_REFUSED with retry_after_ms sends the same open again, on the same
    connection, after the larger of that wait and the client's own backoff; it opens then."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0)
    request_id = h.client.open_session(("auth",), now_us=0)
    h.welcome(MANAGER)
    assert len(h.take(OpenSession)) == 1
    h.feed(MANAGER, OpenSessionRefused(request_id=request_id, reason="busy", retry_after_ms=100))
    assert h.of(SessionOpenFailed) == []
    h.advance(ms=99)
    assert h.take(OpenSession) == []
    h.advance(ms=1)
    (again,) = h.take(OpenSession)
    assert again.request_id == request_id and again.parts == ("auth",)
    assert h.take(ConnectionCloseRequested) == []
    opened = SessionOpened(
        request_id=request_id,
        session_id=SESSION,
        credential=b"cred",
        map_version=3,
        placements=(placement("auth", "s1"),),
        token=b"token",
    )
    h.feed(MANAGER, opened)
    assert [e.request_id for e in h.of(SessionEstablished)] == [request_id]


def test_an_open_refused_as_busy_past_its_attempts_fails_with_the_reason() -> None:
    """A manager that stays busy: after retry_attempts_max sends the open fails, naming the
    manager's reason and the attempts; the client's own backoff outgrows a short wait."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0, retry_attempts_max=3)
    request_id = h.client.open_session(("auth",), now_us=0)
    h.welcome(MANAGER)
    for _ in range(3):
        assert len(h.take(OpenSession)) == 1
        h.feed(MANAGER, OpenSessionRefused(request_id=request_id, reason="full", retry_after_ms=1))
        h.advance(ms=100)
    assert h.take(OpenSession) == []
    (failed,) = h.of(SessionOpenFailed)
    assert failed.detail == "the manager refused it: full (3 attempts)"
    assert h.client.inflight_count == 0


def test_the_client_holds_no_more_sessions_than_the_manager_keeps_for_it() -> None:
    """The manager states its client_sessions_max in SETTINGS: past it, a CLOSE_SESSION of the
    oldest sessions would prove nothing there (they would stay in the map), so opens and
    resumes beyond it raise BackpressureError naming the bound; a server's statement counts
    for nothing, and without one the client's own sessions_max is the bound, named too."""
    h = Harness(sessions_max=3)
    h.open(placement("auth", "s1"))
    h.welcome("s1")
    h.feed("s1", Settings(client_sessions_max=1))
    h.client.open_session(("auth",), now_us=0)
    h.feed(MANAGER, Settings(client_sessions_max=2))
    assert h.of(ProtocolViolationDetected) == []
    with pytest.raises(BackpressureError, match=r"its client_sessions_max=2\)"):
        h.client.open_session(("auth",), now_us=0)
    with pytest.raises(BackpressureError, match="client_sessions_max=2"):
        h.client.resume_session(
            bytes(range(16)), b"cred", (placement("auth", "s1"),), map_version=1, now_us=0
        )
    # A later statement of the manager replaces it.
    h.feed(MANAGER, Settings(client_sessions_max=9))
    h.client.open_session(("auth",), now_us=0)
    with pytest.raises(BackpressureError, match=r"raise ClientConfig\.sessions_max"):
        h.client.open_session(("auth",), now_us=0)


def test_open_session_times_out() -> None:
    """An OPEN_SESSION without answer fails with SessionOpenFailed after request_timeout_ms."""
    h = Harness(request_timeout_ms=50)
    request_id = h.client.open_session(("a",), now_us=0)
    h.advance(ms=50)
    assert [e.request_id for e in h.of(SessionOpenFailed)] == [request_id]
    assert h.client.inflight_count == 0


def test_open_session_is_resent_after_manager_connection_loss() -> None:
    """When the manager connection breaks, OPEN_SESSION goes again (same id) after a backoff."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0)
    request_id = h.client.open_session(("a",), now_us=0)
    h.drain()
    h.welcome(MANAGER)
    h.outbox.clear()
    h.lose(MANAGER)
    h.advance(ms=10)
    assert len(h.take(Hello, MANAGER)) == 1
    h.welcome(MANAGER)
    assert [o.request_id for o in h.take(OpenSession, MANAGER)] == [request_id]


def test_an_open_that_runs_out_of_retries_says_why_the_manager_connection_ended() -> None:
    """The last loss's reason (a dial refused, a certificate not verified) is in the failure:
    before, the caller saw "retries exhausted" and nothing else."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0, retry_attempts_max=2)
    request_id = h.client.open_session(("a",), now_us=0)
    for _ in range(4):
        h.drain()
        h.lose(MANAGER, reason="cannot connect to 127.0.0.1:7000: certificate verify failed")
        h.advance(ms=40)
    failed = h.of(SessionOpenFailed)
    assert [e.request_id for e in failed] == [request_id]
    assert "retries exhausted" in failed[0].detail
    assert "certificate verify failed" in failed[0].detail


def test_duplicate_session_opened_releases_the_orphan() -> None:
    """A SESSION_OPENED for an unknown request (a retried open) is closed at the manager."""
    h = Harness()
    h.open(placement("auth", "s1"))
    orphan = bytes([0x01, 0x8F] + [0x22] * 14)
    from forehand.wire import SessionOpened

    h.feed(
        MANAGER,
        SessionOpened(
            request_id=12345,
            session_id=orphan,
            credential=b"c",
            map_version=5,
            placements=(placement("auth", "s1"),),
            token=b"t",
        ),
    )
    assert h.take(CloseSession, MANAGER) == [CloseSession(session_id=orphan)]
    assert h.client.session_ids() == (SESSION,)


def test_ping_measures_rtt_and_reports_telemetry() -> None:
    """READY connections are pinged every ping_interval_ms; PONG adds an RTT sample."""
    h = Harness(ping_interval_ms=100)
    ready_session(h)
    h.advance(ms=100)
    pings = h.take(Ping, "s1")
    assert len(pings) == 1 and pings[0].telemetry == ()
    assert h.take(Ping, MANAGER) == []
    h.advance(us=2_000)
    h.feed("s1", Pong(sequence=pings[0].sequence, sent_us=pings[0].sent_us))
    stats = h.client.path_stats()["s1"]
    assert list(stats.samples_us) == [2_000] and stats.srtt_us == 2_000
    h.advance(ms=98)
    next_pings = h.take(Ping, "s1")
    assert len(next_pings) == 1
    assert next_pings[0].telemetry[0].server_id == "s1"
    assert next_pings[0].telemetry[0].rtt_us == 2_000


def test_rtt_samples_are_bounded_and_unsolicited_pongs_ignored() -> None:
    """At most rtt_samples_max samples are kept; a PONG for no PING is ignored."""
    h = Harness(ping_interval_ms=10, rtt_samples_max=3)
    ready_session(h)
    for _ in range(5):
        h.advance(ms=10)
        ping = h.take(Ping, "s1")[-1]
        h.advance(us=500)
        h.feed("s1", Pong(sequence=ping.sequence, sent_us=ping.sent_us))
        h.take(Ping)
    assert len(h.client.path_stats()["s1"].samples_us) == 3
    h.feed("s1", Pong(sequence=999, sent_us=0))
    assert [e.name for e in h.of(RarePathTaken)] == ["unsolicited-pong"]


def test_server_ping_is_answered() -> None:
    """A PING from a welcomed server is answered with PONG echoing sequence and time."""
    h = Harness()
    ready_session(h)
    h.feed("s1", Ping(sequence=4, sent_us=77))
    assert h.take(Pong, "s1") == [Pong(sequence=4, sent_us=77)]


def test_goaway_drains_connection_and_relocates_parts() -> None:
    """GOAWAY puts the connection in DRAINING and makes the client ask where its parts live."""
    h = Harness()
    session = ready_session(h)
    h.feed("s1", GoAway(map_version=6, reason=ReasonCode.PLANNED_MAINTENANCE, last_request_id=0))
    assert h.client.connection_state("s1") is ConnectionState.DRAINING
    assert h.client.route(session, "auth").state is RouteState.LOCATING
    assert h.client.route(session, "cart").state is RouteState.ACTIVE
    assert len(h.take(MapRequest, MANAGER)) == 1


def test_draining_connection_is_still_pinged_and_timers_never_stall() -> None:
    """A DRAINING connection keeps its PING schedule, and no timer is left in the past."""
    h = Harness(ping_interval_ms=100)
    ready_session(h)
    h.feed("s1", GoAway(map_version=6, reason=ReasonCode.PLANNED_MAINTENANCE, last_request_id=0))
    h.advance(ms=100)
    assert len(h.take(Ping, "s1")) == 1
    due = h.client.timer_us()
    assert due is not None and due > h.now_us


def test_deferred_calls_leave_at_send_deferred_grouped_by_server_in_call_order() -> None:
    """Calls with defer_send are issued at once (ids, latency from the call) but sent only by
    send_deferred, each server's frames together, each part's in call order."""
    h = Harness()
    session = ready_session(h)
    issued_us = h.now_us
    ids = [
        h.client.call(session, part, op, b"", now_us=h.now_us, defer_send=True)
        for part, op in (("auth", "a"), ("cart", "b"), ("auth", "c"), ("cart", "d"))
    ]
    h.drain()
    assert h.outbox == [] and h.client.route(session, "auth").inflight == (ids[0], ids[2])
    h.advance(us=300)
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    sent = [(o.destination, o.message.request_id) for o in h.outbox]  # type: ignore[attr-defined]
    assert sent == [("s1", ids[0]), ("s1", ids[2]), ("s2", ids[1]), ("s2", ids[3])]
    h.advance(us=200)
    for request in h.take(Request, "s1"):
        respond(h, "s1", request)
    assert [(r.request_id, r.latency_us) for r in h.of(ResponseReceived)] == [
        (ids[0], h.now_us - issued_us),
        (ids[2], h.now_us - issued_us),
    ]
    assert len(h.take(Request, "s2")) == 2
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    assert h.outbox == []


def test_a_lost_connection_due_first_costs_one_idle_timer_and_no_ping() -> None:
    """The lost connection's PING time fires the timer at most once, sends nothing, and the next
    deadline is the remaining connection's PING: no timer stays in the past."""
    h = Harness(ping_interval_ms=100)
    session = h.open(placement("auth", "s1", "s3"))
    assert h.client.prewarm(session, "auth", now_us=h.now_us) == "s3"
    h.drain()
    h.welcome("s3")  # PING to s3 due at 100 ms
    h.advance(ms=50)
    h.client.call(session, "auth", "warm", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s1")  # PING to s1 due at 150 ms
    respond(h, "s1", h.take(Request, "s1")[0])
    h.lose("s3")
    h.advance(ms=99)
    assert h.take(Ping) == []
    assert h.client.timer_us() == 150_000
    h.advance(ms=1)
    assert len(h.take(Ping, "s1")) == 1 and h.take(Ping) == []


def test_error_frame_closes_connection_and_relocates() -> None:
    """ERROR from a server closes that connection only; its parts are located again."""
    h = Harness()
    session = ready_session(h)
    h.feed("s1", Error(code=ErrorCode.INTERNAL_ERROR, reason="boom"))
    assert h.client.connection_state("s1") is ConnectionState.CLOSED
    assert h.client.connection_state("s2") is ConnectionState.READY
    assert h.client.route(session, "auth").state is RouteState.LOCATING


def test_loss_notice_after_error_does_not_kill_a_newer_connection() -> None:
    """After ERROR the client closes its side; a new HELLO waits for the old loss notice."""
    h = Harness()
    session = ready_session(h)
    h.feed("s1", Error(code=ErrorCode.INTERNAL_ERROR, reason="boom"))
    closes = h.take(ConnectionCloseRequested, "s1")
    assert [(c.peer, c.error_code) for c in closes] == [("s1", ErrorCode.INTERNAL_ERROR)]
    h.take(MapRequest)
    # The map still names s1: the client reconnects before the old connection's notice arrives.
    update_entries = (SessionPlacement(session_id=session, placement=placement("auth", "s1")),)
    h.feed(
        MANAGER,
        MapUpdate(
            map_version=5,
            base_version=0,
            encoding=CLIENT_PLACEMENTS_ENCODING,
            body=encode_client_placements(update_entries),
        ),
    )
    h.client.call(session, "auth", "x", b"", now_us=h.now_us)
    h.drain()
    assert h.client.connection_state("s1") is ConnectionState.CONNECTING
    assert h.take(Hello, "s1") == []
    h.lose("s1")
    assert h.client.connection_state("s1") is ConnectionState.CONNECTING
    assert len(h.take(Hello, "s1")) == 1
    h.welcome("s1")
    assert len(h.take(Request, "s1")) == 1
    h.lose("s1")
    assert h.client.connection_state("s1") is ConnectionState.CLOSED


def test_full_pool_evicts_an_idle_connection() -> None:
    """With connections_max reached, a connection nothing uses is closed to make room."""
    h = Harness(connections_max=4)
    session = ready_session(h)
    assert h.client.prewarm(session, "cart", now_us=h.now_us) == "s3"
    h.drain()
    h.welcome("s3")
    other = bytes([0x01, 0x8F] + [0x44] * 14)
    h.open(placement("auth", "s4"), session_id=other, welcome_manager=False)
    h.client.call(other, "auth", "x", b"", now_us=h.now_us)
    h.drain()
    closes = h.take(ConnectionCloseRequested, "s3")
    assert [(c.peer, c.error_code) for c in closes] == [("s3", ErrorCode.NO_ERROR)]
    assert len(h.take(Hello, "s4")) == 1
    assert h.client.connection_state("s3") is ConnectionState.CLOSED


def test_full_pool_of_busy_connections_refuses_new_ones() -> None:
    """When every pooled connection is in use, a new one is not opened (a rare path counted)."""
    h = Harness(connections_max=3)
    ready_session(h)
    other = bytes([0x01, 0x8F] + [0x44] * 14)
    h.open(placement("auth", "s4"), session_id=other, welcome_manager=False)
    h.client.call(other, "auth", "x", b"", now_us=h.now_us)
    h.drain()
    assert h.take(Hello, "s4") == []
    assert [e.name for e in h.of(RarePathTaken)] == ["connection-pool-full"]


def assert_refused(h: Harness, peer: str, code: ErrorCode) -> None:
    """`peer` got ERROR(code) then a close request, and a ProtocolViolationDetected says so."""
    frames = h.sent_to(peer)
    assert [type(frame) for frame in frames] == [Error, ConnectionCloseRequested]
    error, close = frames
    assert isinstance(error, Error) and isinstance(close, ConnectionCloseRequested)
    assert (error.code, close.peer, close.error_code) == (code, peer, code)
    violations = h.of(ProtocolViolationDetected)
    assert [(v.peer, v.error_code) for v in violations] == [(peer, code)]
    assert h.client.connection_state(peer) is ConnectionState.CLOSED


def test_unexpected_message_type_closes_only_that_connection() -> None:
    """A cluster message sent to a client gets ERROR FRAME_UNEXPECTED; nothing raises."""
    h = Harness()
    ready_session(h)
    message = LogAcknowledged(ref=PartRef(session_id=SESSION, part="a"), epoch=1, acked_seq=0)
    h.feed("s1", message)
    assert_refused(h, "s1", ErrorCode.FRAME_UNEXPECTED)
    assert h.client.connection_state("s2") is ConnectionState.READY


def test_frame_only_servers_receive_closes_the_sender() -> None:
    """A REQUEST (a frame clients send, never receive) from a server is FRAME_UNEXPECTED."""
    h = Harness()
    session = ready_session(h)
    request = Request(
        request_id=1, session_id=session, part="auth", op="x", map_version=5, payload=b""
    )
    h.feed("s2", request)
    assert_refused(h, "s2", ErrorCode.FRAME_UNEXPECTED)
    assert h.client.connection_state("s1") is ConnectionState.READY


def test_second_welcome_closes_only_that_connection() -> None:
    """A second WELCOME gets ERROR and a close request for that connection only."""
    h = Harness()
    ready_session(h)
    h.welcome("s1")
    assert_refused(h, "s1", ErrorCode.FRAME_UNEXPECTED)
    assert h.client.connection_state("s2") is ConnectionState.READY


def test_connection_opened_input_is_accepted() -> None:
    """The driver's ConnectionOpened input changes nothing by itself."""
    h = Harness()
    h.feed("s1", ConnectionOpened(peer="s1"))
    assert h.outbox == [] and h.events == []


def test_resume_session_after_restart() -> None:
    """resume_session presents the credential in HELLO, sends no RESUME; WELCOME releases calls."""
    h = Harness()
    placements = (placement("auth", "s1", "s2"), placement("cart", "s1"))
    h.client.resume_session(SESSION, b"cred", placements, map_version=4, now_us=0)
    request_id = h.client.call(SESSION, "auth", "a", b"", now_us=0)
    h.drain()
    assert h.take(Hello, "s1")[0].credentials == (
        Credential(session_id=SESSION, credential=b"cred"),
    )
    assert h.take(Request) == []
    assert h.client.route(SESSION, "auth").state is RouteState.RESUMING
    h.welcome("s1", map_version=9)
    assert h.take(Resume) == []
    assert [r.request_id for r in h.take(Request, "s1")] == [request_id]
    resumed = h.of(SessionResumed)
    assert [(e.server, e.parts, e.map_version) for e in resumed] == [("s1", ("auth", "cart"), 4)]
    assert h.client.route(SESSION, "cart").state is RouteState.ACTIVE


def test_resume_session_on_a_welcomed_connection_binds_with_resume() -> None:
    """On a primary already welcomed for another session, the resumed session's calls wait for a
    RESUME carrying its credential to be answered (no new handshake)."""
    h = Harness()
    ready_session(h)
    other = bytes([0x01, 0x8F] + [0x22] * 14)
    h.client.resume_session(other, b"cred-2", (placement("auth", "s1"),), map_version=5, now_us=0)
    h.drain()
    assert h.take(Hello) == []
    assert [e.server for e in h.of(SessionResumed)] == ["s1"]
    request_id = h.client.call(other, "auth", "a", b"", now_us=0)
    h.drain()
    assert h.take(Request, "s1") == []
    [bind] = h.take(Resume, "s1")
    assert (bind.session_id, bind.token, bind.parts) == (other, b"cred-2", ("auth",))
    h.feed("s1", ResumeOk(session_id=other, parts=("auth",), map_version=5))
    assert [r.request_id for r in h.take(Request, "s1")] == [request_id]
    h.client.call(other, "auth", "b", b"", now_us=0)
    h.drain()
    assert h.take(Resume) == []
    assert len(h.take(Request, "s1")) == 1


def test_refused_credential_resume_relocates_the_part() -> None:
    """A RESUME_REJECT for a binding RESUME is reported and sends the part to the manager."""
    h = Harness()
    ready_session(h)
    other = bytes([0x01, 0x8F] + [0x22] * 14)
    h.client.resume_session(other, b"cred-2", (placement("auth", "s1"),), map_version=5, now_us=0)
    h.client.call(other, "auth", "a", b"", now_us=0)
    h.drain()
    assert len(h.take(Resume, "s1")) == 1
    h.feed(
        "s1",
        ResumeReject(session_id=other, reason=ResumeRejectReason.TOKEN_EXPIRED, message="old"),
    )
    rejected = [e for e in h.of(SessionResumeRejected) if e.session_id == other]
    assert [(e.server, e.reason) for e in rejected] == [("s1", ResumeRejectReason.TOKEN_EXPIRED)]
    assert h.client.route(other, "auth").state is RouteState.LOCATING
    assert h.take(Request, "s1") == []


def test_resume_session_refused_credential_falls_back_to_the_map() -> None:
    """A primary that refuses the credential (ERROR) makes the client locate the parts."""
    h = Harness()
    h.client.resume_session(SESSION, b"cred", (placement("auth", "s1"),), map_version=4, now_us=0)
    h.drain()
    h.feed("s1", Error(code=ErrorCode.UNAUTHENTICATED, reason="session credential refused"))
    rejected = h.of(SessionResumeRejected)
    assert [(e.server, e.reason) for e in rejected] == [("s1", ResumeRejectReason.UNSPECIFIED)]
    assert "UNAUTHENTICATED" in rejected[0].detail
    assert h.client.route(SESSION, "auth").state is RouteState.LOCATING
    assert len(h.take(Hello, MANAGER)) == 1
    h.welcome(MANAGER)
    assert h.take(MapRequest, MANAGER) == [map_request(4, credential=b"cred")]


def test_a_credential_refused_by_its_server_and_the_manager_ends_the_session_at_once() -> None:
    """A resumed session whose credential does not verify (a tampered snapshot): its server
    leaves it unbound (RESUME_REJECT CREDENTIAL_REFUSED after WELCOME), so its parts are located;
    the manager refuses the credential presented in MAP_REQUEST too, and the session ends there,
    its call failing as closed with the manager's reason and the manager not told again. Before,
    the call located the part round after round until its timeout (placement-unknown)."""
    h = Harness()
    h.client.resume_session(SESSION, b"forged", (placement("auth", "s1"),), map_version=4, now_us=0)
    h.drain()
    request_id = h.client.call(SESSION, "auth", "op", b"", now_us=0)
    h.welcome("s1")
    h.feed("s1", ResumeReject(session_id=SESSION, reason=ResumeRejectReason.CREDENTIAL_REFUSED))
    (rejected,) = h.of(SessionResumeRejected)
    assert (rejected.server, rejected.reason) == ("s1", ResumeRejectReason.CREDENTIAL_REFUSED)
    assert h.client.route(SESSION, "auth").state is RouteState.LOCATING
    h.welcome(MANAGER)
    assert h.take(MapRequest, MANAGER) == [map_request(4, credential=b"forged")]
    why = "the session's credential was refused: token authentication failed"
    h.feed(
        MANAGER,
        ResumeReject(session_id=SESSION, reason=ResumeRejectReason.CREDENTIAL_REFUSED, message=why),
    )
    (failed,) = h.of(RequestFailed)
    assert (failed.request_id, failed.why) == (request_id, RequestFailedWhy.SESSION_CLOSED)
    (closed,) = h.of(SessionClosed)
    assert (closed.session_id, closed.closed_by, closed.detail) == (SESSION, MANAGER, why)
    assert h.take(CloseSession, MANAGER) == []
    with pytest.raises(LocalProtocolError, match="unknown session"):
        h.client.call(SESSION, "auth", "op", b"", now_us=0)
    # Another reason from the manager, or one about a session the client does not hold,
    # changes nothing.
    h.feed(MANAGER, ResumeReject(session_id=SESSION, reason=ResumeRejectReason.CREDENTIAL_REFUSED))
    assert [e.name for e in h.of(RarePathTaken)][-1:] == ["manager-resume-reject-ignored"]


def test_resume_session_times_out_without_welcome() -> None:
    """A primary that never answers HELLO within resume_timeout_ms leaves the parts to the map."""
    h = Harness(resume_timeout_ms=300)
    h.client.resume_session(SESSION, b"cred", (placement("auth", "s1"),), map_version=4, now_us=0)
    h.drain()
    h.advance(ms=299)
    assert h.client.route(SESSION, "auth").state is RouteState.RESUMING
    h.advance(ms=1)
    assert [e.server for e in h.of(SessionResumeRejected)] == ["s1"]
    assert h.client.route(SESSION, "auth").state is RouteState.LOCATING


def test_resume_ok_or_reject_without_a_resume_is_ignored_but_an_expired_hello_unbinds() -> None:
    """A RESUME_OK or RESUME_REJECT answering no RESUME (the credential went in HELLO, which
    WELCOME answered; a late answer to a RESUME given up) changes nothing. A RESUME_REJECT
    HELLO_CREDENTIAL_EXPIRED, which answers no RESUME by definition, is the server saying the
    HELLO's credential of that session had expired, so it left the session unbound: it is not
    bound there after all, and its parts there are located anew (before, the session counted as
    bound on a connection that refused its requests)."""
    h = Harness()
    h.client.resume_session(SESSION, b"cred", (placement("auth", "s1"),), map_version=4, now_us=0)
    h.drain()
    h.welcome("s1")
    state = h.client.route(SESSION, "auth").state
    h.feed("s1", ResumeOk(session_id=SESSION, parts=("auth",), map_version=4))
    h.feed("s1", ResumeReject(session_id=SESSION, reason=ResumeRejectReason.TOKEN_EXPIRED))
    assert [e.name for e in h.of(RarePathTaken)] == ["late-resume-ok", "late-resume-reject"]
    assert h.client.route(SESSION, "auth").state is state
    assert h.of(SessionResumeRejected) == []
    h.feed(
        "s1",
        ResumeReject(session_id=SESSION, reason=ResumeRejectReason.HELLO_CREDENTIAL_EXPIRED),
    )
    (rejected,) = h.of(SessionResumeRejected)
    assert rejected.server == "s1"
    assert rejected.reason is ResumeRejectReason.HELLO_CREDENTIAL_EXPIRED
    assert h.client.route(SESSION, "auth").state is RouteState.LOCATING


def test_session_snapshot_round_trips_through_resume_session() -> None:
    """A snapshot holds what resume_session needs to rebuild the same routes."""
    h = Harness()
    session = ready_session(h)
    snapshot = h.client.session_snapshot(session)
    other = Harness(seed=8)
    other.client.resume_session(
        snapshot.session_id,
        snapshot.credential,
        snapshot.placements,
        map_version=snapshot.map_version,
        now_us=0,
    )
    for part in ("auth", "cart"):
        mine, theirs = h.client.route(session, part), other.client.route(session, part)
        assert (mine.primary, mine.backups, mine.map_version) == (
            theirs.primary,
            theirs.backups,
            theirs.map_version,
        )


def test_same_seed_same_outputs() -> None:
    """Two clients with the same seed and inputs produce identical frames and events."""

    def run(seed: int) -> tuple[list[object], list[object]]:
        h = Harness(seed=seed)
        session = ready_session(h)
        for index in range(5):
            h.client.call(session, "auth", f"op{index}", b"", now_us=h.now_us)
        h.drain()
        h.advance(ms=3_000)
        return [o.message for o in h.outbox], h.events

    assert run(3) == run(3)


def test_a_part_redirected_to_a_server_still_welcoming_a_resumed_session_is_served() -> None:
    """A walkthrough's chat client resumed 100 sessions from snapshots older than a rebalance:
    some first calls timed out (QUIC, whose handshakes are slower). One session's connection to
    s3 was dialled by another session, so its HELLO did not present this one, and this one's
    RESTART resumption there waited for WELCOME. Meanwhile a stale primary (s2) REDIRECTed a
    call to s3: the call was held behind that resumption, and WELCOME flushed only the parts
    the resumption named, so nothing sent it again. WELCOME now sends it too (after a binding
    RESUME, the session not being presented)."""
    h = Harness()
    first = bytes([0x01, 0x8F] + [0x22] * 14)
    h.client.resume_session(first, b"cred-1", (placement("auth", "s3"),), map_version=4, now_us=0)
    h.drain()
    assert [c.session_id for c in h.take(Hello, "s3")[0].credentials] == [first]
    placements = (placement("members", "s3"), placement("log", "s2"))
    h.client.resume_session(SESSION, b"cred", placements, map_version=4, now_us=0)
    request_id = h.client.call(SESSION, "log", "all_ids", b"", now_us=0)
    h.drain()
    h.welcome("s2", map_version=9)
    assert [r.request_id for r in h.take(Request, "s2")] == [request_id]
    h.feed(
        "s2",
        Redirect(
            request_id=request_id,
            session_id=SESSION,
            part="log",
            map_version=9,
            targets=(endpoint("s3"),),
        ),
    )
    assert h.take(Request) == []  # Held: s3 has not welcomed the connection yet.
    h.outbox.clear()
    h.welcome("s3", map_version=9)
    binds = [r for r in h.take(Resume, "s3") if r.session_id == SESSION]
    assert len(binds) == 1 and binds[0].token == b"cred"
    h.feed(
        "s3",
        ResumeOk(session_id=SESSION, parts=binds[0].parts, map_version=9, credential=b"cred-2"),
    )
    assert [r.request_id for r in h.take(Request, "s3")] == [request_id]
