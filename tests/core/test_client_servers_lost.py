"""A call is sent on after the loss of its server, but not from lost server to lost server.

A handler that blocks the event loop past the manager's failure timeout gets its server declared
dead; the client, finding the server silent (or its connection gone), sends the call to the
part's next primary, where the handler blocks again. Unbounded, one such call failed a part over
from server to server until its deadline. A call in flight on `call_servers_lost_max` servers
that were lost in turn fails with SERVERS_LOST instead of going to another; a server that
answers its PINGs again was not lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from forehand.core._client_config import ClientConfig
from forehand.core._client_events import RarePathTaken, RequestFailed, RequestFailedWhy
from forehand.core._client_session import RouteState
from forehand.errors import ConfigError
from forehand.wire import Hello, MapRequest, Ping, Pong, Redirect, Request

if TYPE_CHECKING:
    from tests.core._client_helpers import Harness, answer, endpoint, placement, respond
else:
    from _client_helpers import Harness, answer, endpoint, placement, respond

MANAGER = "manager"
PING_MS = 100


def call_on_s1(h: Harness) -> tuple[bytes, int]:
    """A session with auth on s1 (replicas s2, s3), s1 welcomed, one auth call sent there."""
    session = h.open(placement("auth", "s1", "s2", "s3"))
    request_id = h.client.call(session, "auth", "slow", b"1", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    (sent,) = h.take(Request, "s1")
    assert sent.request_id == request_id
    h.outbox.clear()
    h.events.clear()
    return session, request_id


def silent_then_moved(h: Harness, session: bytes, server: str, to: str, version: int) -> None:
    """`server` answers no PING until the client asks the manager, which places auth on `to`."""
    for _ in range(3):
        h.advance(ms=PING_MS)
        asked = h.take(MapRequest, MANAGER)
        if asked:
            break
    else:
        raise AssertionError(f"the client never asked about silent {server}")
    placed = placement("auth", to, *(s for s in ("s1", "s2", "s3", "s4") if s not in (server, to)))
    h.feed(MANAGER, answer((session, placed), map_version=version))


def moved_to_s2_which_crashes(
    h: Harness, session: bytes, request_id: int, *, planned: bool = True
) -> None:
    """The call goes to s2 (`planned`: a map answer moves the part there; otherwise the move
    already came), s2 crashes, and the call still goes on to s3: at most one loss counted."""
    if planned:
        h.feed(MANAGER, answer((session, placement("auth", "s2", "s3")), map_version=7))
    h.welcome("s2", map_version=7)
    assert [r.request_id for r in h.take(Request, "s2")] == [request_id]
    h.lose("s2", "peer-crashed")
    h.feed(MANAGER, answer((session, placement("auth", "s3")), map_version=8))
    h.welcome("s3", map_version=8)
    assert [r.request_id for r in h.take(Request, "s3")] == [request_id]
    assert h.of(RequestFailed) == []


def test_a_call_silent_on_two_servers_in_turn_fails_and_is_not_sent_to_a_third() -> None:
    h = Harness(ping_interval_ms=PING_MS)
    session, request_id = call_on_s1(h)
    silent_then_moved(h, session, "s1", "s2", 7)
    h.welcome("s2", map_version=7)
    (resent,) = h.take(Request, "s2")
    assert resent.request_id == request_id
    assert h.of(RequestFailed) == []
    silent_then_moved(h, session, "s2", "s3", 8)
    # Not even dialled for it: s3 is not asked to run it.
    assert h.take(Hello, "s3") == []
    (failed,) = h.of(RequestFailed)
    assert (failed.request_id, failed.why, failed.attempts) == (
        request_id,
        RequestFailedWhy.SERVERS_LOST,
        2,
    )
    assert "call-servers-lost" in [e.name for e in h.of(RarePathTaken)]
    # The part itself is served by its new primary: the next call goes there.
    route = h.client.route(session, "auth")
    assert (route.state, route.primary) == (RouteState.ACTIVE, "s3")
    following = h.client.call(session, "auth", "quick", b"2", now_us=h.now_us)
    h.drain()
    h.welcome("s3", map_version=8)
    assert [r.request_id for r in h.take(Request, "s3")] == [following]


@pytest.mark.parametrize("lost_max", [2, 3])
def test_connections_lost_under_a_call_count_the_same_way(lost_max: int) -> None:
    h = Harness(call_servers_lost_max=lost_max)
    session, request_id = call_on_s1(h)
    for lost, to, version in (("s1", "s2", 7), ("s2", "s3", 8)):
        h.lose(lost, "peer-crashed")
        assert h.take(MapRequest, MANAGER)
        h.feed(MANAGER, answer((session, placement("auth", to)), map_version=version))
        h.welcome(to, map_version=version)
    sent_to_s3 = [r.request_id for r in h.take(Request, "s3")]
    failed = [(f.request_id, f.why) for f in h.of(RequestFailed)]
    if lost_max == 2:
        assert (sent_to_s3, failed) == ([], [(request_id, RequestFailedWhy.SERVERS_LOST)])
    else:
        assert (sent_to_s3, failed) == ([request_id], [])


def test_a_server_that_answers_pings_again_was_not_lost() -> None:
    """s1 pauses (its PINGs unanswered, the manager asked and still naming it), then answers
    them all; a later planned move of the part to s2 is no loss, so the call still goes on to s3
    when s2 is lost: one loss counted, not two."""
    h = Harness(ping_interval_ms=PING_MS)
    session, request_id = call_on_s1(h)
    pings: list[Ping] = []
    for _ in range(3):
        h.advance(ms=PING_MS)
        pings += h.take(Ping, "s1")
        for asked in h.take(MapRequest, MANAGER):
            h.feed(MANAGER, answer(base_version=asked.map_version, map_version=5))
    assert h.client.route(session, "auth").primary == "s1"
    for ping in pings:
        h.feed("s1", Pong(sequence=ping.sequence, sent_us=ping.sent_us))
    moved_to_s2_which_crashes(h, session, request_id)


def test_a_call_lost_and_placed_back_on_the_same_server_counts_no_loss() -> None:
    """The connection to s1 breaks and the manager names s1 again (a blip): the call goes back
    to s1, and two later losses are still needed to fail it."""
    h = Harness()
    session, request_id = call_on_s1(h)
    h.lose("s1", "reset")
    h.feed(MANAGER, answer((session, placement("auth", "s1", "s2")), map_version=6))
    h.welcome("s1", map_version=6)
    assert [r.request_id for r in h.take(Request, "s1")] == [request_id]
    h.lose("s1", "peer-crashed")
    h.feed(MANAGER, answer((session, placement("auth", "s2")), map_version=7))
    h.welcome("s2", map_version=7)
    (resent,) = h.take(Request, "s2")
    respond(h, "s2", resent, map_version=7)
    assert h.of(RequestFailed) == []


@pytest.mark.parametrize("value", [0, -1])
def test_a_bad_bound_is_refused(value: int) -> None:
    with pytest.raises(ConfigError, match="call_servers_lost_max"):
        ClientConfig(call_servers_lost_max=value)


def test_a_server_answering_every_ping_late_is_not_lost() -> None:
    """s1 answers each PING one interval late, so one is always outstanding and the client keeps
    asking about it; a planned move to s2 afterwards is no loss, and the call still goes on to
    s3 when s2 crashes. Before, only a PONG that left none outstanding took the mark back."""
    h = Harness(ping_interval_ms=PING_MS)
    session, request_id = call_on_s1(h)
    pending: list[Ping] = []
    for _ in range(6):
        h.advance(ms=PING_MS)
        for asked in h.take(MapRequest, MANAGER):
            h.feed(MANAGER, answer(base_version=asked.map_version, map_version=5))
        for ping in pending:
            h.feed("s1", Pong(sequence=ping.sequence, sent_us=ping.sent_us))
        pending = h.take(Ping, "s1")
    moved_to_s2_which_crashes(h, session, request_id)


def test_a_redirect_from_a_briefly_silent_server_is_no_loss() -> None:
    """s1 misses a PING (the call marked), then answers it with REDIRECT to s2, a planned move,
    before its PONGs: s1 is alive, so s2's crash is the call's first loss, not its second."""
    h = Harness(ping_interval_ms=PING_MS)
    session, request_id = call_on_s1(h)
    h.advance(ms=2 * PING_MS)
    assert h.take(MapRequest, MANAGER)
    targets = (endpoint("s2"), endpoint("s3"))
    h.feed(
        "s1",
        Redirect(
            request_id=request_id, session_id=session, part="auth", map_version=7, targets=targets
        ),
    )
    moved_to_s2_which_crashes(h, session, request_id, planned=False)


def test_a_loss_is_kept_when_the_call_is_placed_back_and_the_redial_fails() -> None:
    """s1 crashes under the call; the manager, not aware yet, names s1 again and the redial is
    refused; then s2 crashes under it too: two servers lost, so it fails."""
    h = Harness()
    session, request_id = call_on_s1(h)
    h.lose("s1", "peer-crashed")
    h.feed(MANAGER, answer((session, placement("auth", "s1", "s2")), map_version=6))
    assert h.take(Hello, "s1")
    h.lose("s1", "refused")
    h.feed(MANAGER, answer((session, placement("auth", "s2", "s3")), map_version=7))
    h.welcome("s2", map_version=7)
    assert [r.request_id for r in h.take(Request, "s2")] == [request_id]
    h.lose("s2", "peer-crashed")
    h.feed(MANAGER, answer((session, placement("auth", "s3")), map_version=8))
    h.welcome("s3", map_version=8)
    assert h.take(Request, "s3") == []
    assert [f.why for f in h.of(RequestFailed)] == [RequestFailedWhy.SERVERS_LOST]
