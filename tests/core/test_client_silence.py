"""A client asks the manager about a silent server's parts before it gives the connection up.

A server that stops without closing its sockets (a paused or frozen process, a host cut off)
answers no PING, and the driver ends its connection only after five ping intervals. The manager
may have failed it over long before. While PINGs to a part's primary go unanswered and requests
wait there (`ClientConfig.silent_locate_pings`), the client sends MAP_REQUEST about those
sessions, keeping the connection: an answer placing a part elsewhere moves it and re-sends its
requests there.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from forehand.core._client_config import ClientConfig
from forehand.core._client_events import (
    ConnectionClosed,
    PartRelocated,
    RarePathTaken,
    RequestFailed,
    ResponseReceived,
    SessionEstablished,
)
from forehand.core._client_session import RouteState
from forehand.core._driver import ConnectionCloseRequested
from forehand.core._manager_events import FailoverCompleted
from forehand.core._pool import ConnectionState
from forehand.core.client import ClientCore
from forehand.errors import ConfigError
from forehand.placement import PartKey
from forehand.wire import MapRequest, Ping, Pong, Request, ResponseStatus

if TYPE_CHECKING:
    from tests.core._client_helpers import Harness, answer, placement, respond
    from tests.core._manager_helpers import ManagerHarness
    from tests.core._server_helpers import wire_servers
else:
    from _client_helpers import Harness, answer, placement, respond
    from _manager_helpers import ManagerHarness
    from _server_helpers import wire_servers

MANAGER = "manager"
PING_MS = 100


def waiting_on_s1(h: Harness) -> tuple[bytes, int]:
    """A session with auth on s1 (replica s2), s1 welcomed, and one auth call unanswered."""
    session = h.open(placement("auth", "s1", "s2"))
    request_id = h.client.call(session, "auth", "a", b"1", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    h.outbox.clear()
    h.events.clear()
    return session, request_id


def pings_to(h: Harness, server: str, *, ms: int) -> list[Ping]:
    """Let `ms` pass, then pop the PINGs the client sent `server` meanwhile."""
    h.advance(ms=ms)
    return h.take(Ping, server)


def test_a_silent_primary_s_waiting_parts_are_asked_about_and_moved() -> None:
    """One PING unanswered a whole interval: MAP_REQUEST presents the session whose call waits
    there. The answer places the part on s2: the same request id goes to s2, the part moves
    (not lost) and the connection to s1 stays open."""
    h = Harness(ping_interval_ms=PING_MS)
    session, request_id = waiting_on_s1(h)
    assert len(pings_to(h, "s1", ms=PING_MS)) == 1
    assert h.take(MapRequest) == []
    assert len(pings_to(h, "s1", ms=PING_MS)) == 1
    (request,) = h.take(MapRequest, MANAGER)
    assert [c.session_id for c in request.credentials] == [session]
    assert request.map_version == 5
    assert [e.name for e in h.of(RarePathTaken)] == ["silent-server-asked"]
    h.feed(MANAGER, answer((session, placement("auth", "s2", "s3")), map_version=7))
    route = h.client.route(session, "auth")
    assert (route.state, route.primary) == (RouteState.ACTIVE, "s2")
    (moved,) = h.of(PartRelocated)
    assert (moved.previous, moved.server, moved.lost) == ("s1", "s2", False)
    assert [e.name for e in h.of(RarePathTaken)] == ["silent-server-left"]
    h.welcome("s2")
    (resent,) = h.take(Request, "s2")
    assert resent.request_id == request_id
    respond(h, "s2", resent, map_version=7)
    (answered,) = h.of(ResponseReceived)
    assert (answered.request_id, answered.server) == (request_id, "s2")
    assert h.take(ConnectionCloseRequested) == []
    assert h.client.connection_state("s1") is ConnectionState.READY


def test_an_answer_naming_the_same_server_changes_nothing() -> None:
    """The manager still places the part on s1 (it reaches s1; the path is slow): the part stays
    ACTIVE there and its request is not sent again."""
    h = Harness(ping_interval_ms=PING_MS)
    session, _ = waiting_on_s1(h)
    h.advance(ms=2 * PING_MS)
    (request,) = h.take(MapRequest, MANAGER)
    h.feed(MANAGER, answer(base_version=request.map_version))
    route = h.client.route(session, "auth")
    assert (route.state, route.primary) == (RouteState.ACTIVE, "s1")
    assert h.take(Request) == []
    assert h.of(PartRelocated) == []


def test_one_silence_asks_at_one_two_and_four_unanswered_pings() -> None:
    """Answered "nothing newer" at once, the client asks again only at twice and four times as
    many unanswered PINGs; a PONG for every one ends the silence, and the next asks anew."""
    h = Harness(ping_interval_ms=PING_MS, map_request_timeout_ms=60_000)
    waiting_on_s1(h)
    asked_at: list[int] = []
    pings: list[Ping] = []
    for step in range(1, 11):
        pings += pings_to(h, "s1", ms=PING_MS)
        for request in h.take(MapRequest, MANAGER):
            asked_at.append(step)
            h.feed(MANAGER, answer(base_version=request.map_version))
    # A PING goes at every step; the first unanswered a whole interval shows at the second.
    assert len(pings) == 10
    assert asked_at == [2, 3, 5]
    for ping in pings:
        h.feed("s1", Pong(sequence=ping.sequence, sent_us=ping.sent_us))
    assert h.client._pool.get("s1").silent_asks == 0  # type: ignore[union-attr]
    h.advance(ms=2 * PING_MS)
    assert len(h.take(MapRequest, MANAGER)) == 1


def test_pongs_keep_a_server_heard_and_nothing_is_asked() -> None:
    h = Harness(ping_interval_ms=PING_MS)
    waiting_on_s1(h)
    for _ in range(10):
        for ping in pings_to(h, "s1", ms=PING_MS):
            h.feed("s1", Pong(sequence=ping.sequence, sent_us=ping.sent_us))
    assert h.take(MapRequest) == []


def test_a_silent_server_nothing_waits_on_is_not_asked_about() -> None:
    """Idle parts wait for the driver to give the connection up: their next call finds out."""
    h = Harness(ping_interval_ms=PING_MS)
    session = h.open(placement("auth", "s1", "s2"))
    h.client.call(session, "auth", "a", b"1", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    (request,) = h.take(Request, "s1")
    respond(h, "s1", request)
    h.advance(ms=10 * PING_MS)
    assert len(h.take(Ping, "s1")) == 10
    assert h.take(MapRequest) == []


def test_a_locating_round_out_already_asks_instead() -> None:
    """While another part's MAP_REQUEST round awaits its answer, no second one goes: the round's
    answer places every part it names, and the silence asks at the next PING after it."""
    h = Harness(ping_interval_ms=PING_MS, map_request_timeout_ms=60_000)
    waiting_on_s1(h)
    other = h.open(placement("auth", "s3"), session_id=bytes(16), welcome_manager=False)
    h.client.call(other, "auth", "a", b"", now_us=h.now_us)
    h.welcome("s3")
    h.lose("s3")
    (round_,) = h.take(MapRequest, MANAGER)
    assert [c.session_id for c in round_.credentials] == [other]
    h.advance(ms=5 * PING_MS)
    assert h.take(MapRequest) == []
    h.feed(MANAGER, answer((other, placement("auth", "s2")), map_version=7))
    h.take(MapRequest)
    h.advance(ms=PING_MS)
    assert len(h.take(MapRequest, MANAGER)) == 1


def test_off_never_asks() -> None:
    h = Harness(ping_interval_ms=PING_MS, silent_locate_pings=None)
    waiting_on_s1(h)
    h.advance(ms=10 * PING_MS)
    assert h.take(MapRequest) == []


@pytest.mark.parametrize("value", [0, -1, 1.5, "1", 5])
def test_a_bad_setting_is_refused(value: object) -> None:
    with pytest.raises(ConfigError, match="silent_locate_pings"):
        ClientConfig(silent_locate_pings=value)  # type: ignore[arg-type]


# A real manager and servers: one server freezes (it takes messages and answers none).

SERVERS = ("s1", "s2", "s3")


@pytest.mark.parametrize("silent_locate_pings", [1, None])
def test_calls_waiting_on_a_frozen_server_are_answered_by_its_failover(
    silent_locate_pings: int | None,
) -> None:
    """The busiest server freezes: no connection breaks, only its answers stop. The manager
    fails it over; asking about the silent server's parts, the client has its waiting calls
    answered by their new primaries, and no connection of its closed. Without asking (None),
    the calls wait for the driver to give the connection up, which this test never does."""
    harness = ManagerHarness(
        heartbeat_interval_ms=100, suspect_timeout_ms=400, failure_timeout_ms=800
    )
    router = harness.router
    wire_servers(router, SERVERS, heartbeat_interval_ms=100, backup_period_ms=200)
    router.run()
    router.advance(ms=300)
    config = ClientConfig(
        node_id="c1", ping_interval_ms=200, silent_locate_pings=silent_locate_pings
    )
    client = ClientCore(config=config, client_id=bytes(range(16)), rng=random.Random(9))
    router.add(client)
    for _ in range(12):
        client.open_session(("counter",), now_us=router.now_us)
        router.advance(ms=20)
    sessions = [e.session_id for e in router.events_of("c1", SessionEstablished)]
    assert len(sessions) == 12

    def primary(session_id: bytes) -> str:
        return harness.map.primary_of(PartKey(session_id=session_id, part="counter"))

    # Every session warm (each server connection in use), then the busiest server freezes.
    for session_id in sessions:
        client.call(session_id, "counter", "add", b"1", now_us=router.now_us)
    router.advance(ms=200)
    counts = Counter(primary(s) for s in sessions)
    victim = min(counts, key=lambda server: (-counts[server], server))
    stranded = [s for s in sessions if primary(s) == victim]
    router.remove(victim)
    request_ids = {client.call(s, "counter", "add", b"1", now_us=router.now_us) for s in stranded}
    router.advance(ms=3_000)

    (done,) = harness.events(FailoverCompleted)
    assert done.servers == (victim,)
    answered = {
        a.request_id: a
        for a in router.events_of("c1", ResponseReceived)
        if a.request_id in request_ids
    }
    closed = [e for e in router.events_of("c1", ConnectionClosed) if e.server == victim]
    assert closed == []
    assert [f for f in router.events_of("c1", RequestFailed) if f.request_id in request_ids] == []
    if silent_locate_pings is None:
        assert answered == {}
        return
    assert set(answered) == request_ids
    assert all(a.status is ResponseStatus.OK and a.server != victim for a in answered.values())
    assert {s: client.route(s, "counter").primary for s in stranded} == {
        s: primary(s) for s in stranded
    }
