"""A client finds every session after a crash, not only those the manager holds bound to it.

A real manager, three real servers and a real client on one router. The manager answers
MAP_REQUEST about the sessions bound to the connection; HELLO proves at most
`hello_credentials_max` of them and the manager keeps at most `client_sessions_max`, so the
client presents the credentials of the sessions it is locating in MAP_REQUEST itself.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from typing import TYPE_CHECKING

from forehand.core._client_config import ClientConfig
from forehand.core._client_events import (
    RequestFailed,
    RequestFailedWhy,
    ResponseReceived,
    SessionEstablished,
)
from forehand.core._client_map import (
    decode_client_placements,
)
from forehand.core._client_session import RouteState
from forehand.core._manager_events import CredentialRefused, FailoverCompleted
from forehand.core.client import ClientCore
from forehand.placement import PartKey
from forehand.wire import (
    Credential,
    Hello,
    MapRequest,
    MapUpdate,
    Response,
    ResponseStatus,
    Settings,
)

if TYPE_CHECKING:
    from tests.core._client_helpers import Harness, answer, placement
    from tests.core._manager_helpers import ManagerHarness
    from tests.core._server_helpers import wire_servers
else:
    from _client_helpers import Harness, answer, placement
    from _manager_helpers import ManagerHarness
    from _server_helpers import wire_servers

SERVERS = ("s1", "s2", "s3")
MANAGER = "manager"
SESSIONS = 24
"""Sessions the client opens: several times what one HELLO (or the manager's memory) holds."""
CREDENTIALS_MAX = 4
"""The client's `hello_credentials_max` in these tests (the wire allows up to 1,024)."""


class World:
    """A manager, three servers and one client with many one-part sessions."""

    def __init__(self, *, client_sessions_max: int = 1_024, failure_timeout_ms: int = 800) -> None:
        self.harness = ManagerHarness(
            heartbeat_interval_ms=100,
            suspect_timeout_ms=400,
            failure_timeout_ms=failure_timeout_ms,
            client_sessions_max=max(client_sessions_max, SESSIONS * 2),
        )
        self.client_sessions_max = client_sessions_max
        self.router = self.harness.router
        wire_servers(self.router, SERVERS, heartbeat_interval_ms=100, backup_period_ms=200)
        self.router.run()
        self.router.advance(ms=300)
        config = ClientConfig(node_id="c1", hello_credentials_max=CREDENTIALS_MAX)
        self.client = ClientCore(config=config, client_id=bytes(range(16)), rng=random.Random(9))
        self.router.add(self.client)
        # A manager that does not state its client_sessions_max (an earlier version; a manager
        # restarted with a lower bound is another way): the client may hold more sessions than
        # it keeps, which is what these tests are about.
        self.router.filters.append(lambda source, _, message: isinstance(message, Settings))
        self.sessions: list[bytes] = []

    def open(self, count: int) -> None:
        """Open `count` more sessions, one at a time; then the manager keeps only
        `client_sessions_max` of them per connection, as one restarted with that bound would
        (it refuses opens past it, so the sessions are opened under a larger one)."""
        for _ in range(count):
            self.client.open_session(("counter",), now_us=self.router.now_us)
            self.router.advance(ms=20)
        self.sessions = [e.session_id for e in self.router.events_of("c1", SessionEstablished)]
        manager = self.harness.manager
        manager._config = dataclasses.replace(
            manager._config, client_sessions_max=self.client_sessions_max
        )
        for client in manager._clients.values():
            while len(client.sessions) > self.client_sessions_max:
                client.sessions.popitem(last=False)  # least recently used first, as it does

    def primary(self, session_id: bytes) -> str:
        return self.harness.map.primary_of(PartKey(session_id=session_id, part="counter"))

    def crash_busiest(self) -> tuple[str, list[bytes]]:
        """Kill the server that is primary of the most sessions; returns it and those sessions."""
        counts = Counter(self.primary(s) for s in self.sessions)
        victim = min(counts, key=lambda server: (-counts[server], server))
        stranded = [s for s in self.sessions if self.primary(s) == victim]
        self.router.remove(victim)
        for peer in [*SERVERS, "c1"]:
            if peer != victim:
                self.router.disconnect(peer, victim, reason="peer-crashed")
        return victim, stranded

    def advance_refusing(self, victim: str, *, ms: int, step_ms: int = 10) -> None:
        """Let time pass; every connection the client tries to the dead server is refused."""
        for _ in range(ms // step_ms):
            self.router.advance(ms=step_ms)
            if any(isinstance(m, Hello) for m in self.router.take(victim, object)):
                self.router.disconnect("c1", victim, reason="refused")


def _calls_to_the_dead_server_are_answered(world: World) -> None:
    victim, stranded = world.crash_busiest()
    assert len(stranded) > CREDENTIALS_MAX
    request_ids = {
        world.client.call(s, "counter", "add", b"1", now_us=world.router.now_us) for s in stranded
    }
    world.advance_refusing(victim, ms=8_000)
    (done,) = world.harness.events(FailoverCompleted)
    assert done.servers == (victim,)
    failed = [f for f in world.router.events_of("c1", RequestFailed) if f.request_id in request_ids]
    assert failed == []
    answered = {
        a.request_id: a
        for a in world.router.events_of("c1", ResponseReceived)
        if a.request_id in request_ids
    }
    assert set(answered) == request_ids
    assert all(a.status is ResponseStatus.OK for a in answered.values())
    assert all(a.server != victim for a in answered.values())


def test_sessions_hello_did_not_prove_are_located_after_a_crash() -> None:
    """After a manager reconnect whose HELLO proved only a few sessions, every call to a crashed
    server's parts is answered once the failover completes."""
    world = World()
    world.open(SESSIONS)
    world.router.disconnect("c1", MANAGER, reason="manager-restarted")
    # The next open reconnects: that HELLO proves `CREDENTIALS_MAX` of the sessions, no more.
    world.open(1)
    hello = [m for m in world.router.sent(Hello, source="c1") if m.credentials][-1]
    assert len(hello.credentials) == CREDENTIALS_MAX
    assert len(world.sessions) == SESSIONS + 1
    _calls_to_the_dead_server_are_answered(world)


def test_sessions_the_manager_forgot_are_located_after_a_crash() -> None:
    """With the manager remembering fewer sessions per connection than the client holds, every
    call to a crashed server's parts is answered once the failover completes."""
    world = World(client_sessions_max=CREDENTIALS_MAX)
    world.open(SESSIONS)
    _calls_to_the_dead_server_are_answered(world)


def test_sessions_bound_but_not_presented_wait_for_news_or_their_turn() -> None:
    """With every session bound, each answer lists the stranded ones at the dead server until the
    failover commits; those a round did not present are not sent back to it (which would cost
    them an attempt per round), so every call is answered once the failover completes."""
    world = World(failure_timeout_ms=3_000)
    world.open(SESSIONS * 2)
    _calls_to_the_dead_server_are_answered(world)


def test_map_requests_present_every_locating_session_in_rotation() -> None:
    """More sessions locate than one MAP_REQUEST presents: the requests present them in turn,
    each at most `hello_credentials_max` of them, and all of them."""
    world = World(client_sessions_max=CREDENTIALS_MAX)
    world.open(SESSIONS)
    before = len(world.router.sent(MapRequest, source="c1"))
    victim, stranded = world.crash_busiest()
    for session_id in stranded:
        world.client.call(session_id, "counter", "add", b"1", now_us=world.router.now_us)
    world.advance_refusing(victim, ms=8_000)
    requests = world.router.sent(MapRequest, source="c1")[before:]
    assert requests and all(len(r.credentials) <= CREDENTIALS_MAX for r in requests)
    presented = {c.session_id for r in requests for c in r.credentials}
    assert set(stranded) <= presented


# The client alone, the manager played by hand.


def sessions_on_s1(h: Harness, count: int) -> list[bytes]:
    """`count` one-part sessions, each with a pending call, all placed on s1."""
    sessions = [bytes([0x01, 0x8F, index] + [0x22] * 13) for index in range(count)]
    for index, session_id in enumerate(sessions):
        h.open(placement("auth", "s1"), session_id=session_id, welcome_manager=index == 0)
        h.client.call(session_id, "auth", "a", b"", now_us=h.now_us)
    h.welcome("s1")
    h.outbox.clear()
    return sessions


def presented(request: MapRequest) -> list[bytes]:
    return [credential.session_id for credential in request.credentials]


def test_a_round_counts_only_against_the_sessions_it_presented() -> None:
    """Unanswered rounds that each present one session, for parts no call waits on (theirs
    timed out first): every session is presented exactly `retry_attempts_max` times before it
    stops being located, not one round in three."""
    h = Harness(hello_credentials_max=1, retry_attempts_max=2, request_timeout_ms=1)
    sessions = sessions_on_s1(h, 3)
    h.advance(ms=2)
    assert {f.why for f in h.of(RequestFailed)} == {RequestFailedWhy.TIMEOUT}
    h.lose("s1")
    h.advance(ms=60_000)
    counts = Counter(s for request in h.take(MapRequest) for s in presented(request))
    assert counts == dict.fromkeys(sessions, 2)


def test_calls_wait_past_the_rounds_and_fail_placement_unknown_at_their_deadline() -> None:
    """Calls on parts the manager cannot place keep them located past `retry_attempts_max`
    rounds, and fail PLACEMENT_UNKNOWN at their own deadline."""
    h = Harness(
        hello_credentials_max=1,
        retry_attempts_max=2,
        request_timeout_ms=30_000,
        map_request_timeout_ms=1_000,
    )
    sessions = sessions_on_s1(h, 3)
    h.lose("s1")
    h.advance(ms=20_000)
    assert h.of(RequestFailed) == []
    counts = Counter(s for request in h.take(MapRequest) for s in presented(request))
    assert set(counts) == set(sessions) and min(counts.values()) > 2
    h.advance(ms=10_000)
    failed = h.of(RequestFailed)
    assert sorted(f.session_id for f in failed) == sorted(sessions)
    assert {f.why for f in failed} == {RequestFailedWhy.PLACEMENT_UNKNOWN}


def test_an_answer_that_moves_parts_is_followed_by_the_next_round_at_once() -> None:
    """Progress (a presented part placed on another server) sends the next round without any
    backoff; an answer that places nothing backs off before the next one."""
    h = Harness(hello_credentials_max=2, retry_jitter_ratio=0.0)
    first, second, third, fourth = sessions_on_s1(h, 4)
    h.lose("s1")
    (request,) = h.take(MapRequest)
    assert presented(request) == [first, second]
    h.feed("manager", answer((first, placement("auth", "s2"))))
    (request,) = h.take(MapRequest)
    assert presented(request) == [third, fourth]
    h.feed("manager", answer((third, placement("auth", "s2"))))
    (request,) = h.take(MapRequest)
    assert sorted(presented(request)) == sorted([second, fourth])
    h.feed("manager", answer())
    assert h.take(MapRequest) == []
    h.advance(ms=h.client._config.retry_backoff_ms)
    (request,) = h.take(MapRequest)
    assert sorted(presented(request)) == sorted([second, fourth])
    assert h.client.route(first, "auth").state is RouteState.ACTIVE
    assert h.client.route(third, "auth").state is RouteState.ACTIVE


def test_nothing_newer_relocates_only_the_sessions_presented() -> None:
    """ "Nothing newer" speaks for the sessions bound to the connection: a locating session the
    request did not present stays LOCATING (it is presented next round)."""
    h = Harness(hello_credentials_max=1)
    first, second = sessions_on_s1(h, 2)
    h.lose("s1")
    (request,) = h.take(MapRequest)
    assert presented(request) == [first]
    h.feed("manager", answer(base_version=5))
    assert h.client.route(first, "auth").state is RouteState.ACTIVE
    assert h.client.route(second, "auth").state is RouteState.LOCATING


def test_an_answer_naming_the_lost_server_reconnects_only_the_sessions_presented() -> None:
    """A complete answer that still places both parts on the lost server sends the presented
    session back to it; the other waits for its turn (or for a placement elsewhere)."""
    h = Harness(hello_credentials_max=1)
    first, second = sessions_on_s1(h, 2)
    h.lose("s1")
    (request,) = h.take(MapRequest)
    assert presented(request) == [first]
    h.feed("manager", answer((first, placement("auth", "s1")), (second, placement("auth", "s1"))))
    assert h.client.route(first, "auth").state is RouteState.ACTIVE
    assert h.client.route(second, "auth").state is RouteState.LOCATING
    assert len(h.take(Hello, "s1")) == 1
    h.feed("manager", answer((second, placement("auth", "s2"))))
    assert h.client.route(second, "auth").state is RouteState.ACTIVE
    assert h.client.route(second, "auth").primary == "s2"


# The manager alone, the client played by hand.


def test_map_request_credentials_bind_sessions_as_hello_does() -> None:
    """The manager binds each session a MAP_REQUEST proves and answers about it; a credential
    that does not open is reported and ignored, and the others still bind."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    first = harness.open_session(("auth",), client="c1")
    second = harness.open_session(("cart",), client="c1")
    harness.router.send("c2", MANAGER, Hello(versions=(1,), client_id=bytes([2] * 16)))
    forged = Credential(session_id=first.session_id, credential=second.credential)
    proven = Credential(session_id=second.session_id, credential=second.credential)
    harness.router.send("c2", MANAGER, MapRequest(map_version=0, credentials=(forged, proven)))
    (update,) = harness.take("c2", MapUpdate)
    entries = decode_client_placements(update.body).entries
    assert [(e.session_id, e.placement.part) for e in entries] == [(second.session_id, "cart")]
    (refused,) = harness.events(CredentialRefused)
    assert (refused.client, refused.session_id) == ("c2", first.session_id)
    # Bound for the connection from now on, as if its HELLO had presented it.
    harness.router.send("c2", MANAGER, MapRequest(map_version=0))
    (update,) = harness.take("c2", MapUpdate)
    assert [e.session_id for e in decode_client_placements(update.body).entries] == [
        second.session_id
    ]


def test_sessions_with_calls_waiting_are_presented_first() -> None:
    """A crash makes every part the dead server led locate, `CREDENTIALS_MAX` sessions a
    MAP_REQUEST. The first round, sent once the loss is handled, presents the sessions with a
    call waiting first, though they come last in the order their parts were lost; the rounds
    that follow while the manager still names the dead server take turns (the waiting parts
    spend no attempt in each), and the calls are answered once the failover completes."""
    world = World()
    world.open(SESSIONS)
    counts = Counter(world.primary(s) for s in world.sessions)
    victim = min(counts, key=lambda server: (-counts[server], server))
    stranded = [s for s in world.sessions if world.primary(s) == victim]
    assert len(stranded) > 2 * CREDENTIALS_MAX
    waiting = stranded[-2:]
    request_ids = {
        world.client.call(s, "counter", "add", b"1", now_us=world.router.now_us) for s in waiting
    }
    already = len(world.router.sent(MapRequest, source="c1"))
    world.router.remove(victim)
    for peer in [*SERVERS, "c1"]:
        if peer != victim:
            world.router.disconnect(peer, victim, reason="peer-crashed")
    # One round for the whole loss, the waiting sessions first.
    first = world.router.sent(MapRequest, source="c1")[already]
    presented = [credential.session_id for credential in first.credentials]
    assert len(presented) == CREDENTIALS_MAX
    assert presented[:2] == waiting
    assert set(presented[2:]) <= set(stranded)
    world.advance_refusing(victim, ms=8_000)
    assert world.harness.events(FailoverCompleted)
    answered = {
        a.request_id
        for a in world.router.events_of("c1", ResponseReceived)
        if a.request_id in request_ids and a.status is ResponseStatus.OK
    }
    assert answered == request_ids


def test_a_waiting_part_outlasts_the_rounds_that_place_other_parts() -> None:
    """s1 and s2 crash together and the manager fails s1 over first: while the client places
    s1's twenty idle parts, two a round and each round right after the last (they progress),
    the part a call waits for on s2 is presented first in each, far more than
    `retry_attempts_max` times; its call still waits for s2's failover (found by a second
    reading of the waiting-first rounds)."""
    h = Harness(hello_credentials_max=2, retry_attempts_max=4, retry_jitter_ratio=0.0)
    idle = [bytes([0x01, 0x8F, index] + [0x22] * 13) for index in range(20)]
    for index, session_id in enumerate(idle):
        h.open(placement("auth", "s1"), session_id=session_id, welcome_manager=index == 0)
    first = h.client.call(idle[0], "auth", "a", b"", now_us=h.now_us)
    h.welcome("s1")
    done = Response(
        request_id=first, session_id=idle[0], status=ResponseStatus.OK, map_version=5, payload=b""
    )
    h.feed("s1", done)
    waiting = bytes([0x01, 0x8F, 0xEE] + [0x33] * 13)
    h.open(placement("auth", "s2"), session_id=waiting, welcome_manager=False)
    h.client.call(waiting, "auth", "a", b"", now_us=h.now_us)
    h.welcome("s2")
    h.outbox.clear()
    h.lose("s1")
    h.lose("s2")
    shown_waiting = 0
    for _ in range(200):
        requests = h.take(MapRequest)
        if not requests:
            h.advance(ms=100)
            requests = h.take(MapRequest)
        if not requests:
            break
        (request,) = requests
        shown = presented(request)
        shown_waiting += waiting in shown
        h.feed(MANAGER, answer(*((s, placement("auth", "s3")) for s in shown if s in idle)))
        if all(h.client.route(s, "auth").primary == "s3" for s in idle):
            break
    assert all(h.client.route(s, "auth").primary == "s3" for s in idle)
    assert shown_waiting > 4
    assert [f for f in h.of(RequestFailed) if f.session_id == waiting] == []
    assert h.client.route(waiting, "auth").state is RouteState.LOCATING
