"""Tests of ClientCore's reactive path: a connection lost without HANDOFF, MAP_REQUEST, retries."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from forehand.core._client_events import (
    PartRelocated,
    ProtocolViolationDetected,
    RarePathTaken,
    RequestFailed,
    RequestFailedWhy,
    ResponseReceived,
)
from forehand.core._client_map import (
    CLIENT_PLACEMENTS_ENCODING,
    SessionPlacement,
    decode_client_placements,
    encode_client_placements,
)
from forehand.core._client_session import RouteState
from forehand.core._driver import ConnectionCloseRequested
from forehand.core._pool import ConnectionState
from forehand.errors import RemoteProtocolError
from forehand.placement import (
    MAP_ENCODING,
    PartKey,
    PlacementConfig,
    ServerEntry,
    ServerState,
    ShardMap,
    new_session_id,
)
from forehand.placement import Placement as MapPlacement
from forehand.wire import (
    Error,
    ErrorCode,
    GoAway,
    Hello,
    MapRequest,
    MapUpdate,
    Ping,
    Placement,
    Pong,
    ReasonCode,
    Request,
    Resume,
    ResumeReject,
    ResumeRejectReason,
)

if TYPE_CHECKING:
    from tests.core._client_helpers import (
        MANAGER,
        Harness,
        answer,
        map_request,
        placement,
        respond,
    )
else:
    from _client_helpers import (
        MANAGER,
        Harness,
        answer,
        map_request,
        placement,
        respond,
    )


def sid(byte: int) -> bytes:
    """A session id: a UUIDv7's first bytes, then `byte` repeated."""
    return bytes([0x01, 0x8F] + [byte] * 14)


def map_update(
    session: bytes, *placements: Placement, map_version: int = 7, base_version: int = 0
) -> MapUpdate:
    entries = tuple(SessionPlacement(session_id=session, placement=p) for p in placements)
    return MapUpdate(
        map_version=map_version,
        base_version=base_version,
        encoding=CLIENT_PLACEMENTS_ENCODING,
        body=encode_client_placements(entries),
    )


def session_with_pending(h: Harness) -> tuple[bytes, list[int]]:
    """auth on s1 (replica s2), cart on s3; two auth requests and one cart request unanswered."""
    session = h.open(placement("auth", "s1", "s2"), placement("cart", "s3"))
    ids = [
        h.client.call(session, "auth", "a", b"1", now_us=h.now_us),
        h.client.call(session, "auth", "b", b"2", now_us=h.now_us),
        h.client.call(session, "cart", "c", b"3", now_us=h.now_us),
    ]
    h.drain()
    h.welcome("s1")
    h.welcome("s3")
    h.outbox.clear()
    h.events.clear()
    return session, ids


def test_connection_loss_asks_the_manager_and_retries_same_ids() -> None:
    """Losing s1 without HANDOFF: MAP_REQUEST, then the same request ids go to the new primary."""
    h = Harness()
    session, ids = session_with_pending(h)
    h.advance(ms=3)
    h.lose("s1", "peer-crashed")
    assert h.client.route(session, "auth").state is RouteState.LOCATING
    assert h.client.route(session, "cart").state is RouteState.ACTIVE
    assert h.take(MapRequest, MANAGER) == [map_request(5)]
    h.advance(ms=2)
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), placement("cart", "s3")))
    assert len(h.take(Hello, "s2")) == 1
    h.welcome("s2", map_version=7)
    resent = h.take(Request, "s2")
    assert [(r.request_id, r.map_version) for r in resent] == [(ids[0], 7), (ids[1], 7)]
    relocated = h.of(PartRelocated)
    assert [(e.part, e.previous, e.server, e.map_version, e.duration_us) for e in relocated] == [
        ("auth", "s1", "s2", 7, 2_000)
    ]
    for request in resent:
        respond(h, "s2", request, payload=b"", map_version=7)
    received = h.of(ResponseReceived)
    assert [(r.request_id, r.attempts, r.server) for r in received] == [
        (ids[0], 2, "s2"),
        (ids[1], 2, "s2"),
    ]


def test_an_active_part_a_map_answer_moves_is_reported_moved_not_lost() -> None:
    """The answer that locates a lost part also moves another, active part of the session
    (published before any HANDOFF for it came): both are reported, the lost one with
    `lost=True` and its time to be found, the active one with `lost=False`, which the SDK shows
    as MOVED rather than as a crash's RELOCATED."""
    h = Harness()
    session, _ = session_with_pending(h)
    h.lose("s1", "peer-crashed")
    h.take(MapRequest, MANAGER)
    h.advance(ms=2)
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), placement("cart", "s1")))
    relocated = sorted(h.of(PartRelocated), key=lambda e: e.part)
    assert [(e.part, e.previous, e.server, e.lost) for e in relocated] == [
        ("auth", "s1", "s2", True),
        ("cart", "s3", "s1", False),
    ]
    assert relocated[1].duration_us == 0


def test_a_part_put_back_on_the_server_it_was_lost_from_is_not_reported_relocated() -> None:
    """A manager not yet aware of a crash names the lost server again: the waiting part dials
    it, and the application hears of no relocation until the part is placed elsewhere (the
    SDK showed a relocation to the dead server, then the real one)."""
    h = Harness()
    session, _ = session_with_pending(h)
    h.lose("s1", "peer-crashed")
    h.take(MapRequest, MANAGER)
    h.feed(MANAGER, map_update(session, placement("auth", "s1", "s2"), placement("cart", "s3")))
    assert h.client.route(session, "auth").primary == "s1"
    assert len(h.take(Hello, "s1")) == 1
    assert h.of(PartRelocated) == []
    h.lose("s1", "refused")
    h.take(MapRequest, MANAGER)
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), placement("cart", "s3")))
    assert [(e.part, e.server) for e in h.of(PartRelocated)] == [("auth", "s2")]


def test_a_deferred_call_whose_server_is_lost_first_is_held_then_resent() -> None:
    """A call waiting for send_deferred when its part's connection is lost is not sent to the
    lost server: it is held with the part's other requests and goes to the new primary, in call
    order, with its id."""
    h = Harness()
    session, ids = session_with_pending(h)
    deferred = h.client.call(session, "auth", "d", b"4", now_us=h.now_us, defer_send=True)
    h.lose("s1")
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    assert h.take(Request) == []
    assert h.client.route(session, "auth").inflight == (*ids[:2], deferred)
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), placement("cart", "s3")))
    h.welcome("s2", map_version=7)
    assert [r.request_id for r in h.take(Request, "s2")] == [*ids[:2], deferred]


def test_calls_during_relocation_are_held_and_sent_in_order() -> None:
    """Calls made while a part is located wait and go out after the older re-sends."""
    h = Harness()
    session, ids = session_with_pending(h)
    h.lose("s1")
    later = h.client.call(session, "auth", "d", b"4", now_us=h.now_us)
    h.drain()
    assert h.take(Request) == []
    h.feed(MANAGER, map_update(session, placement("auth", "s2")))
    h.welcome("s2")
    assert [r.request_id for r in h.take(Request, "s2")] == [ids[0], ids[1], later]


def test_one_round_presents_every_session_a_lost_connection_strands() -> None:
    """Losing a server strands the parts of all its sessions at once: the first MAP_REQUEST
    presents each of them (those with calls waiting first), not only the first one lost, so a
    failover is learned for all in one round."""
    h = Harness()
    idle = h.open(placement("auth", "s1"), session_id=sid(0x41))
    elsewhere = h.open(placement("auth", "s2"), session_id=sid(0x42), welcome_manager=False)
    waiting = h.open(placement("auth", "s1"), session_id=sid(0x43), welcome_manager=False)
    also_idle = h.open(placement("cart", "s1"), session_id=sid(0x44), welcome_manager=False)
    h.client.call(waiting, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    h.welcome("s2")
    h.outbox.clear()
    h.lose("s1", "peer-crashed")
    [request] = h.take(MapRequest, MANAGER)
    assert [c.session_id for c in request.credentials] == [waiting, idle, also_idle]
    assert elsewhere not in [c.session_id for c in request.credentials]
    h.feed(
        MANAGER,
        answer(
            (idle, placement("auth", "s3")),
            (waiting, placement("auth", "s3")),
            (also_idle, placement("cart", "s3")),
        ),
    )
    # One answer placed all three: nothing is left to ask about.
    assert h.take(MapRequest) == []
    for session, part in ((idle, "auth"), (waiting, "auth"), (also_idle, "cart")):
        assert h.client.route(session, part).primary == "s3"


def idle_on_s1_placed_back(h: Harness, *, s3_busy: bool = False) -> tuple[bytes, bytes]:
    """Two idle sessions on s1 (one answered a call, so the connection was up); s1 is lost and
    the manager, not aware of a crash yet, answers that s1 still leads them (with `s3_busy`, a
    session with a call waiting on s3 has taken the place s1's connection left in the pool)."""
    idle = h.open(placement("auth", "s1"), session_id=sid(0x51))
    answered = h.open(placement("auth", "s1"), session_id=sid(0x52), welcome_manager=False)
    h.client.call(answered, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    [request] = h.take(Request, "s1")
    respond(h, "s1", request)
    h.outbox.clear()
    h.lose("s1", "peer-crashed")
    [first] = h.take(MapRequest, MANAGER)
    if s3_busy:
        busy = h.open(
            placement("auth", "s3"),
            session_id=sid(0x53),
            welcome_manager=False,
        )
        h.client.call(busy, "auth", "a", b"", now_us=h.now_us)
        h.drain()
        h.welcome("s3")
        h.outbox.clear()
    h.feed(MANAGER, answer(map_version=6, base_version=first.map_version))
    return idle, answered


def test_idle_parts_placed_back_on_a_dead_server_are_still_located() -> None:
    """Idle parts an answer places back on the server they were lost from stay LOCATING while
    a dial checks it; the failed dial leaves them in the rounds (in turn, after the backoff, no
    attempt of their own spent), and the answer after the failover moves them. Put back ACTIVE
    undialled, they stayed on the dead server until their next call."""
    h = Harness(retry_jitter_ratio=0.0)
    idle, answered = idle_on_s1_placed_back(h)
    assert len(h.take(Hello, "s1")) == 1
    for session in (idle, answered):
        assert h.client.route(session, "auth").state is RouteState.LOCATING
    h.lose("s1", "connection refused")
    # The failed dial brings no round forward: the next one waits out the backoff.
    assert h.take(MapRequest) == []
    h.advance(ms=h.client._config.retry_backoff_ms * 2)
    [second] = h.take(MapRequest, MANAGER)
    assert sorted(c.session_id for c in second.credentials) == sorted([idle, answered])
    h.feed(MANAGER, answer(*((session, placement("auth", "s2")) for session in (idle, answered))))
    for session in (idle, answered):
        route = h.client.route(session, "auth")
        assert (route.state, route.primary) == (RouteState.ACTIVE, "s2")


def test_idle_parts_placed_back_on_a_live_server_go_active_at_its_welcome() -> None:
    """The loss was a blip: the checking dial is welcomed, and the idle parts go ACTIVE on the
    server they were lost from, with nothing more to locate."""
    h = Harness()
    idle, answered = idle_on_s1_placed_back(h)
    assert len(h.take(Hello, "s1")) == 1
    h.welcome("s1", map_version=6)
    for session in (idle, answered):
        route = h.client.route(session, "auth")
        assert (route.state, route.primary, route.map_version) == (RouteState.ACTIVE, "s1", 6)
    h.advance(ms=60_000)
    assert h.take(MapRequest) == []


def test_a_blip_the_check_resolves_leaves_the_next_loss_a_fresh_first_round() -> None:
    """The check's WELCOME places the last locating part: the rounds start afresh, so the next
    loss's first round presents the sessions with calls waiting first, as any first round."""
    h = Harness(hello_credentials_max=2, retry_jitter_ratio=0.0)
    blip, _ = idle_on_s1_placed_back(h)
    assert len(h.take(Hello, "s1")) == 1
    first, _, waiting = (
        h.open(
            placement("auth", "s2"),
            session_id=sid(byte),
            welcome_manager=False,
        )
        for byte in (0x62, 0x63, 0x64)
    )
    h.welcome("s1", map_version=6)
    assert h.client.route(blip, "auth").state is RouteState.ACTIVE
    h.advance(ms=3_600_000)
    h.client.call(waiting, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s2")
    h.outbox.clear()
    h.lose("s2", "peer-crashed")
    [request] = h.take(MapRequest, MANAGER)
    assert [c.session_id for c in request.credentials] == [waiting, first]


def test_a_check_the_full_pool_cannot_dial_is_not_kept() -> None:
    """With no room in the pool to dial the lost server, nothing is recorded for a check: the
    part goes on being located, and a session closed meanwhile leaves nothing behind."""
    h = Harness(connections_max=2)
    gone, other = idle_on_s1_placed_back(h, s3_busy=True)
    assert h.take(Hello, "s1") == []
    assert h.client.route(gone, "auth").state is RouteState.LOCATING
    h.client.close_session(gone, now_us=h.now_us)
    h.client.close_session(other, now_us=h.now_us)
    h.advance(ms=600_000)
    assert h.client._rechecks == {}


def test_an_idle_part_placed_elsewhere_is_located_again_at_its_next_loss() -> None:
    """A relocation that placed the part on another server is over, call or no call: the next
    loss locates the idle part again with its attempts started over, instead of giving it up
    at once for the attempts of the losses before."""
    h = Harness(retry_attempts_max=1)
    idle = h.open(placement("auth", "s1"), session_id=sid(0x81))
    busy = h.open(placement("auth", "s2"), session_id=sid(0x82), welcome_manager=False)
    h.client._connect("s1", h.now_us)
    h.client.call(busy, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    h.welcome("s2")
    [request] = h.take(Request, "s2")
    respond(h, "s2", request)
    h.outbox.clear()
    h.lose("s1", "peer-crashed")
    [first] = h.take(MapRequest, MANAGER)
    assert [c.session_id for c in first.credentials] == [idle]
    h.feed(MANAGER, answer((idle, placement("auth", "s2"))))
    assert h.client.route(idle, "auth").primary == "s2"
    h.lose("s2", "peer-crashed")
    [second] = h.take(MapRequest, MANAGER)
    assert sorted(c.session_id for c in second.credentials) == sorted([idle, busy])


def test_a_refused_bind_backs_off_though_an_idle_part_is_put_back() -> None:
    """A session whose RESUME its server refuses each time, while the manager still places both
    its parts there: the idle part goes back at once on the READY connection, which has not bound
    the session, so its attempts do not start over, and the rounds back off as the busy part's
    attempts grow (they went out at once, each round, when that counted as a confirmation)."""
    h = Harness(retry_jitter_ratio=0.0)
    first = h.open(placement("auth", "s1"))
    h.client.call(first, "auth", "warm", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    [warm] = h.take(Request, "s1")
    respond(h, "s1", warm)
    h.outbox.clear()
    other = sid(0x22)
    h.client.resume_session(
        other,
        b"cred-2",
        (placement("auth", "s1"), placement("cart", "s1")),
        map_version=5,
        now_us=h.now_us,
    )
    h.client.call(other, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    waits_ms = []
    for cycle in range(6):
        assert len(h.take(Resume, "s1")) == 1, cycle
        h.feed("s1", ResumeReject(session_id=other, reason=ResumeRejectReason.TOKEN_EXPIRED))
        start_us = h.now_us
        while not h.take(MapRequest, MANAGER):
            h.advance(ms=1)
        waits_ms.append((h.now_us - start_us) // 1000)
        placements = ((other, placement("auth", "s1")), (other, placement("cart", "s1")))
        h.feed(MANAGER, answer(*placements, map_version=6 + cycle))
        assert h.client.route(other, "cart").state is RouteState.ACTIVE
    assert waits_ms[0] == 0 and waits_ms[-1] > 0


def test_unanswered_map_request_is_retried_with_backoff() -> None:
    """Without an answer, MAP_REQUEST is re-sent after map_request_timeout_ms, or after the
    backoff counted from when it went, whichever is later."""
    h = Harness(
        map_request_timeout_ms=100,
        retry_backoff_ms=150,
        retry_backoff_max_ms=1_000,
        retry_jitter_ratio=0.0,
    )
    session_with_pending(h)
    h.lose("s1")
    assert len(h.take(MapRequest, MANAGER)) == 1
    # The first round times out at 100 ms; its backoff (150 ms) counts from 0.
    h.advance(ms=149)
    assert h.take(MapRequest) == []
    h.advance(ms=1)
    assert len(h.take(MapRequest, MANAGER)) == 1
    # The second one times out at 250 ms; its backoff (300 ms) runs to 450 ms.
    h.advance(ms=299)
    assert h.take(MapRequest) == []
    h.advance(ms=1)
    assert len(h.take(MapRequest, MANAGER)) == 1


def test_map_request_backoff_counts_from_the_send() -> None:
    """A round the manager answered late (it held it, with no news) is followed, once the
    reconnect to the server it still names fails, by the next round at once when the backoff
    has passed since the round went; a round answered at once still waits the backoff out."""
    h = Harness(
        map_request_timeout_ms=1_000,
        retry_backoff_ms=100,
        retry_backoff_max_ms=1_000,
        retry_jitter_ratio=0.0,
    )
    session, _ = session_with_pending(h)
    h.lose("s1")
    [first] = h.take(MapRequest, MANAGER)
    h.advance(ms=500)
    h.feed(MANAGER, map_update(session, map_version=6, base_version=first.map_version))
    assert len(h.take(Hello, "s1")) == 1
    h.lose("s1", "connection refused")
    assert len(h.take(MapRequest, MANAGER)) == 1
    # Answered at once: the next backoff (200 ms) is waited out.
    h.feed(MANAGER, map_update(session, map_version=7, base_version=6))
    assert len(h.take(Hello, "s1")) == 1
    h.lose("s1", "connection refused")
    h.advance(ms=199)
    assert h.take(MapRequest) == []
    h.advance(ms=1)
    assert len(h.take(MapRequest, MANAGER)) == 1


def test_the_manager_is_pinged_while_a_map_request_awaits_its_answer() -> None:
    """The manager may hold a MAP_REQUEST longer than the driver waits on a silent connection
    (five ping intervals): while one awaits, the manager is pinged at the serving rate, not at
    the probe rate, and at the probe rate again once it is answered. (The servers here answer
    no PING: asking the manager about them while silent is off, or it would ask anew.)"""
    h = Harness(
        ping_interval_ms=100,
        probe_interval_ms=5_000,
        map_request_timeout_ms=3_000,
        silent_locate_pings=None,
    )
    session, _ = session_with_pending(h)
    h.advance(ms=100)
    s3_ping = h.take(Ping, "s3")[-1]
    h.feed("s3", Pong(sequence=s3_ping.sequence, sent_us=s3_ping.sent_us))
    h.take(Ping)
    h.lose("s1")
    [request] = h.take(MapRequest, MANAGER)
    h.advance(ms=100)
    [ping] = h.take(Ping, MANAGER)
    h.feed(MANAGER, Pong(sequence=ping.sequence, sent_us=ping.sent_us))
    h.advance(ms=100)
    assert len(h.take(Ping, MANAGER)) == 1
    # Its RTT is no path sample (the manager is no server), and its pings carry none.
    assert MANAGER not in h.client.path_stats()
    assert h.take(Ping, "s3")[-1].telemetry[0].server_id == "s3" and ping.telemetry == ()
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), placement("cart", "s3")))
    h.advance(ms=1_000)
    assert h.take(Ping, MANAGER) == []
    assert request.credentials


def test_the_manager_is_pinged_once_a_queued_map_request_goes_out() -> None:
    """A MAP_REQUEST queued while the manager's connection is re-established goes out with its
    WELCOME, and the pings start then."""
    h = Harness(ping_interval_ms=100, probe_interval_ms=5_000, map_request_timeout_ms=3_000)
    session_with_pending(h)
    h.take(Ping)
    h.lose(MANAGER)
    h.outbox.clear()
    h.lose("s1")
    assert len(h.take(Hello, MANAGER)) == 1
    h.welcome(MANAGER)
    assert len(h.take(MapRequest, MANAGER)) == 1
    h.advance(ms=100)
    assert len(h.take(Ping, MANAGER)) == 1


def test_locating_goes_on_while_calls_wait_and_stops_after_them() -> None:
    """Unanswered rounds go on past retry_attempts_max while calls wait for the part (a crash
    takes the manager seconds to fail over): the calls fail PLACEMENT_UNKNOWN at their own
    deadline, and the part then stops being located, until a new call starts over."""
    h = Harness(
        map_request_timeout_ms=10,
        retry_attempts_max=3,
        retry_backoff_ms=1,
        retry_backoff_max_ms=1,
        request_timeout_ms=500,
    )
    session, ids = session_with_pending(h)
    h.lose("s1")
    h.advance(ms=400)
    assert h.of(RequestFailed) == []
    assert len(h.take(MapRequest, MANAGER)) > 3 * 3
    h.advance(ms=200)
    failed = h.of(RequestFailed)
    assert [(f.request_id, f.why) for f in failed] == [
        (ids[0], RequestFailedWhy.PLACEMENT_UNKNOWN),
        (ids[1], RequestFailedWhy.PLACEMENT_UNKNOWN),
        (ids[2], RequestFailedWhy.TIMEOUT),
    ]
    h.take(MapRequest, MANAGER)
    h.advance(ms=500)
    assert h.take(MapRequest, MANAGER) == []
    # A new call is a reason to try again.
    h.client.call(session, "auth", "again", b"", now_us=h.now_us)
    h.drain()
    assert len(h.take(MapRequest, MANAGER)) == 1


def test_relocation_to_the_same_server_reconnects() -> None:
    """A map that still names the lost server makes the client reconnect to it and re-send."""
    h = Harness()
    session, ids = session_with_pending(h)
    h.lose("s1")
    h.feed(MANAGER, map_update(session, placement("auth", "s1", "s2"), map_version=5))
    assert len(h.take(Hello, "s1")) == 1
    h.welcome("s1")
    assert [r.request_id for r in h.take(Request, "s1")] == ids[:2]


def test_a_call_of_its_own_timeout_sent_again_carries_the_budget_left() -> None:
    """A call with `timeout_ms` tells the server how long it can wait (its timeout less
    `wait_budget_margin_ms`); re-sent after its server was lost, the same id asks only for what
    is left then. A call of the default timeout carries no budget when first sent; re-sent, the
    budget left to `request_timeout_ms`, so a waiting read sent again does not wait anew."""
    h = Harness(wait_budget_margin_ms=200)
    session = h.open(placement("auth", "s1", "s2"))
    waiting = h.client.call(session, "auth", "since", b"", now_us=h.now_us, timeout_ms=5_000)
    plain = h.client.call(session, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    sent = [(r.request_id, r.wait_budget_ms) for r in h.take(Request, "s1")]
    assert sent == [(waiting, 4_800), (plain, None)]
    h.advance(ms=1_500)
    h.lose("s1")
    h.take(MapRequest, MANAGER)
    h.advance(ms=250)
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), map_version=7))
    h.welcome("s2", map_version=7)
    resent = [(r.request_id, r.wait_budget_ms) for r in h.take(Request, "s2")]
    assert resent == [(waiting, 5_000 - 1_750 - 200), (plain, 10_000 - 1_750 - 200)]


def test_a_budget_never_goes_below_zero() -> None:
    """Re-sent within its margin of the deadline, a call asks for 0: answer at once."""
    h = Harness(wait_budget_margin_ms=500)
    session = h.open(placement("auth", "s1", "s2"))
    waiting = h.client.call(session, "auth", "since", b"", now_us=h.now_us, timeout_ms=1_000)
    h.drain()
    h.welcome("s1")
    h.take(Request, "s1")
    h.advance(ms=700)
    h.lose("s1")
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), map_version=7))
    h.welcome("s2", map_version=7)
    assert [(r.request_id, r.wait_budget_ms) for r in h.take(Request, "s2")] == [(waiting, 0)]


def test_repeated_losses_back_off_and_end_at_the_calls_deadline() -> None:
    """If the named server keeps failing, each loss costs an attempt; past retry_attempts_max
    the part is still located while its calls wait (the manager may be about to fail the server
    over), and they end at their deadline, not at the third loss."""
    h = Harness(
        retry_attempts_max=2, retry_backoff_ms=10, retry_jitter_ratio=0.0, request_timeout_ms=1_000
    )
    session, ids = session_with_pending(h)
    for _ in range(3):
        h.lose("s1", "refused")
        h.advance(ms=100)
        h.feed(MANAGER, map_update(session, placement("auth", "s1"), map_version=5))
    assert h.of(RequestFailed) == []
    h.advance(ms=1_000)
    # The last answer named s1 again: the part was reconnecting there, so the calls time out.
    failed = [(f.request_id, f.why) for f in h.of(RequestFailed)]
    assert failed[:2] == [(ids[0], RequestFailedWhy.TIMEOUT), (ids[1], RequestFailedWhy.TIMEOUT)]


def test_a_call_waiting_through_a_slow_failover_is_answered() -> None:
    """The manager names the dead server round after round for longer than retry_attempts_max
    rounds (its failover takes seconds); the calls wait, and are sent to the new primary once an
    answer names it."""
    h = Harness(retry_attempts_max=2, retry_backoff_ms=10, retry_jitter_ratio=0.0)
    session, ids = session_with_pending(h)
    for _ in range(6):
        h.lose("s1", "refused")
        h.advance(ms=200)
        h.feed(MANAGER, map_update(session, placement("auth", "s1"), map_version=5))
    assert h.of(RequestFailed) == []
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), map_version=6))
    h.welcome("s2")
    assert [r.request_id for r in h.take(Request, "s2")] == ids[:2]


def test_delta_without_the_part_means_unchanged() -> None:
    """A delta from a base at or below the client's version that omits the part keeps it put."""
    h = Harness()
    session, _ = session_with_pending(h)
    h.lose("s1")
    h.feed(MANAGER, map_update(session, placement("cart", "s3"), map_version=8, base_version=5))
    assert h.client.route(session, "auth").primary == "s1"
    assert h.client.route(session, "auth").map_version == 8
    assert len(h.take(Hello, "s1")) == 1


def test_complete_map_without_the_part_keeps_locating() -> None:
    """A complete answer that does not list the part leaves it LOCATING for another round."""
    h = Harness(retry_backoff_ms=10, retry_jitter_ratio=0.0)
    session, _ = session_with_pending(h)
    h.lose("s1")
    h.take(MapRequest)
    h.feed(MANAGER, map_update(session, placement("cart", "s3")))
    assert h.client.route(session, "auth").state is RouteState.LOCATING
    h.advance(ms=20)
    assert len(h.take(MapRequest, MANAGER)) == 1


def test_map_update_moves_an_active_part_to_a_newer_primary() -> None:
    """An unsolicited newer MAP_UPDATE moves an ACTIVE part and re-sends its requests."""
    h = Harness()
    session, ids = session_with_pending(h)
    h.feed(MANAGER, map_update(session, placement("auth", "s2", "s1"), map_version=9))
    route = h.client.route(session, "auth")
    assert (route.primary, route.backups, route.map_version) == ("s2", ("s1",), 9)
    h.welcome("s2")
    assert [r.request_id for r in h.take(Request, "s2")] == ids[:2]


def test_older_map_update_is_ignored() -> None:
    """A MAP_UPDATE older than what the client knows for a part changes nothing."""
    h = Harness()
    session, _ = session_with_pending(h)
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), map_version=4))
    assert h.client.route(session, "auth").primary == "s1"
    assert h.client.map_version == 5


def test_goaway_then_map_moves_the_part() -> None:
    """After GOAWAY, the located part goes to the server the new map names."""
    h = Harness()
    session, ids = session_with_pending(h)
    h.feed("s1", GoAway(map_version=6, reason=ReasonCode.SCALE_IN, last_request_id=ids[0]))
    h.feed(MANAGER, map_update(session, placement("auth", "s1"), map_version=6))
    assert h.client.route(session, "auth").state is RouteState.LOCATING
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), map_version=7))
    assert h.client.route(session, "auth").primary == "s2"


def test_map_update_with_unknown_encoding_is_counted_not_applied() -> None:
    """A MAP_UPDATE in an encoding the client does not read is skipped as a rare path."""
    h = Harness()
    session_with_pending(h)
    h.feed(MANAGER, MapUpdate(map_version=9, base_version=0, encoding=0, body=b"\x00"))
    assert [e.name for e in h.of(RarePathTaken)] == ["map-update-unreadable"]
    assert h.client.map_version == 5


def test_malformed_client_placements_are_the_senders_fault() -> None:
    """A body that does not decode raises RemoteProtocolError with FRAME_ENCODING_ERROR."""
    with pytest.raises(RemoteProtocolError) as raised:
        decode_client_placements(b"\xff\x00")
    assert raised.value.error_code == ErrorCode.FRAME_ENCODING_ERROR


def test_client_placements_round_trip() -> None:
    """encode_client_placements and decode_client_placements are inverse."""
    entries = (SessionPlacement(session_id=bytes(16), placement=placement("auth", "s1", "s2")),)
    assert decode_client_placements(encode_client_placements(entries)).entries == entries


def shard_map(session: bytes, primary: str, *replicas: str, version: int) -> ShardMap:
    """A whole map with servers s1..s3 whose `auth` part of `session` is pinned as given."""
    servers = [
        ServerEntry(
            server_id=f"s{i}",
            address=f"10.0.0.{i}:7000",
            zone="z",
            weight=1.0,
            state=ServerState.ACTIVE,
        )
        for i in (1, 2, 3)
    ]
    key = PartKey(session_id=session, part="auth")
    return ShardMap.build(
        config=PlacementConfig(),
        version=version,
        servers=servers,
        parts=[key, PartKey(session_id=session, part="cart")],
        overrides=[(key, MapPlacement(primary=primary, replicas=replicas))],
    )


def real_session(h: Harness) -> tuple[bytes, list[int]]:
    session = new_session_id(now_ms=1_700_000_000_000, rng=random.Random(1))
    h.open(placement("auth", "s1", "s2"), placement("cart", "s3"), session_id=session)
    ids = [h.client.call(session, "auth", "a", b"", now_us=h.now_us)]
    h.drain()
    h.welcome("s1")
    h.outbox.clear()
    h.events.clear()
    return session, ids


def test_whole_shard_map_update_relocates_parts() -> None:
    """A MAP_UPDATE carrying the whole shard map places the located part and names endpoints."""
    h = Harness()
    session, ids = real_session(h)
    h.lose("s1")
    whole = shard_map(session, "s2", "s3", version=8)
    h.feed(
        MANAGER,
        MapUpdate(map_version=8, base_version=0, encoding=MAP_ENCODING, body=whole.encode()),
    )
    route = h.client.route(session, "auth")
    assert (route.state, route.primary, route.backups, route.map_version) == (
        RouteState.ACTIVE,
        "s2",
        ("s3",),
        8,
    )
    endpoint = h.client.endpoint("s2")
    assert endpoint is not None and (endpoint.host, endpoint.port) == ("10.0.0.2", 7000)
    h.welcome("s2")
    assert [r.request_id for r in h.take(Request, "s2")] == ids


def test_shard_map_delta_applies_to_the_held_map_only() -> None:
    """A shard-map delta is read when the client holds its base; otherwise it is skipped."""
    h = Harness()
    session, _ = real_session(h)
    base = shard_map(session, "s1", "s2", version=8)
    key = PartKey(session_id=session, part="auth")
    delta = base.override_placement(key, MapPlacement(primary="s3", replicas=("s1",)))
    update = MapUpdate(
        map_version=9, base_version=8, encoding=MAP_ENCODING, body=ShardMap.encode_delta(delta)
    )
    h.feed(MANAGER, update)
    assert [e.name for e in h.of(RarePathTaken)] == ["map-update-unreadable"]
    h.feed(
        MANAGER, MapUpdate(map_version=8, base_version=0, encoding=MAP_ENCODING, body=base.encode())
    )
    assert h.client.route(session, "auth").primary == "s1"
    h.feed(MANAGER, update)
    assert (h.client.route(session, "auth").primary, h.client.map_version) == ("s3", 9)


def assert_manager_refused(h: Harness, code: ErrorCode) -> None:
    """The manager got ERROR(code) and a close request; the client recorded the violation."""
    assert [e.code for e in h.take(Error, MANAGER)] == [code]
    closes = h.take(ConnectionCloseRequested, MANAGER)
    assert [c.error_code for c in closes] == [code]
    assert [v.peer for v in h.of(ProtocolViolationDetected)] == [MANAGER]
    assert h.client.connection_state(MANAGER) is ConnectionState.CLOSED


def test_shard_map_update_with_wrong_version_is_the_senders_fault() -> None:
    """A MAP_UPDATE whose map has another version than the frame says closes that connection."""
    h = Harness()
    session, _ = real_session(h)
    h.lose("s1")
    h.outbox.clear()
    whole = shard_map(session, "s2", version=8)
    h.feed(
        MANAGER,
        MapUpdate(map_version=9, base_version=0, encoding=MAP_ENCODING, body=whole.encode()),
    )
    assert_manager_refused(h, ErrorCode.FRAME_ENCODING_ERROR)
    assert h.client.map_version == 5
    assert h.client.route(session, "auth").state is RouteState.LOCATING


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        (CLIENT_PLACEMENTS_ENCODING, b"\xff\x00"),
        (CLIENT_PLACEMENTS_ENCODING, b"\x91\x91\x92\xc4\x10" + bytes(16) + b"\x93\xa2\xc3("),
        (MAP_ENCODING, b"\xc1"),
        (MAP_ENCODING, b"\x96\x01\x03\x81\xa2\xc3(\x01\x90\x90\x90"),
    ],
    ids=["placements-garbage", "placements-not-utf8", "map-garbage", "map-not-utf8"],
)
def test_map_update_that_does_not_decode_closes_the_connection(encoding: int, body: bytes) -> None:
    """An undecodable MAP_UPDATE body gets ERROR and a close; the lost part keeps locating."""
    h = Harness()
    session, ids = real_session(h)
    h.lose("s1")
    h.outbox.clear()
    h.feed(MANAGER, MapUpdate(map_version=8, base_version=0, encoding=encoding, body=body))
    assert_manager_refused(h, ErrorCode.FRAME_ENCODING_ERROR)
    assert h.client.route(session, "auth").state is RouteState.LOCATING
    # The manager connection's loss notice comes back; the next round asks again.
    h.lose(MANAGER)
    h.advance(ms=5_000)
    assert len(h.take(Hello, MANAGER)) == 1
    h.welcome(MANAGER)
    assert h.take(MapRequest, MANAGER) != []
    h.feed(MANAGER, map_update(session, placement("auth", "s2"), map_version=8))
    assert h.client.route(session, "auth").primary == "s2"
    h.welcome("s2")
    assert [r.request_id for r in h.take(Request, "s2")] == ids


def test_hello_to_the_manager_presents_every_sessions_credential() -> None:
    """A new manager connection presents all credentials, sessions being located first, bounded."""
    h = Harness(hello_credentials_max=2)
    first = h.open(placement("auth", "s1"), session_id=sid(0x31))
    second = h.open(placement("auth", "s2"), session_id=sid(0x32), welcome_manager=False)
    third = h.open(placement("auth", "s3"), session_id=sid(0x33), welcome_manager=False)
    h.client.call(third, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s3")
    h.lose(MANAGER)
    h.lose("s3")
    (hello,) = h.take(Hello, MANAGER)
    assert [c.session_id for c in hello.credentials] == [third, first]
    assert [c.credential for c in hello.credentials] == [b"cred-" + third[:4], b"cred-" + first[:4]]
    assert second not in [c.session_id for c in hello.credentials]


def test_shard_map_delta_that_does_not_apply_closes_the_connection() -> None:
    """A delta on the held map that names a part the map lacks is the sender's fault."""
    h = Harness()
    session, _ = real_session(h)
    base = shard_map(session, "s1", "s2", version=8)
    h.feed(
        MANAGER, MapUpdate(map_version=8, base_version=0, encoding=MAP_ENCODING, body=base.encode())
    )
    h.outbox.clear()
    stranger = PartKey(session_id=new_session_id(now_ms=1, rng=random.Random(5)), part="auth")
    delta = base.override_placement(stranger, MapPlacement(primary="s3", replicas=()))
    update = MapUpdate(
        map_version=9, base_version=8, encoding=MAP_ENCODING, body=ShardMap.encode_delta(delta)
    )
    h.feed(MANAGER, update)
    assert_manager_refused(h, ErrorCode.FRAME_ENCODING_ERROR)
    assert h.client.map_version == 8
