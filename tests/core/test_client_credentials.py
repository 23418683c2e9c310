"""Tests of ClientCore's credential renewal: a session outlives any one credential.

Credentials expire after the cluster's `credential_lifetime_ms` (24 hours by default). Before
renewal, a session older than that could not be bound on a new connection (a failover, a
handoff to a server it had not used, a reconnection): its credential in HELLO was refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._client_events import CredentialRenewed, SessionClosed, SessionResumeRejected
from forehand.core._client_session import RouteState
from forehand.core.client import RENEW_INTERVAL_FLOOR_US
from forehand.wire import (
    Hello,
    MapRequest,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
    SessionOpened,
    Settings,
)

if TYPE_CHECKING:
    from tests.core._client_helpers import (
        MANAGER,
        SESSION,
        Harness,
        answer,
        placement,
        ready_session,
    )
else:
    from _client_helpers import MANAGER, SESSION, Harness, answer, placement, ready_session

INTERVAL_MS = 60_000


def opened(request_id: int) -> SessionOpened:
    """The manager's SESSION_OPENED of a session with auth on s1, answering `request_id`."""
    return SessionOpened(
        request_id=request_id,
        session_id=SESSION,
        credential=b"cred-1",
        map_version=5,
        placements=(placement("auth", "s1"),),
        token=b"",
    )


def test_a_session_trades_its_credential_for_a_fresh_one_every_interval() -> None:
    """At the interval, one RESUME with the credential goes to a server the session is bound
    on; its RESUME_OK's fresh credential is presented from then on (a new connection's HELLO,
    the snapshot) and the next renewal comes an interval later."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    session = ready_session(h)
    first = h.client.session_snapshot(session).credential
    h.advance(ms=INTERVAL_MS - 1)
    assert h.take(Resume) == []
    h.advance(ms=1)
    (renewal,) = h.take(Resume)
    assert (renewal.session_id, renewal.token) == (session, first)
    server = h.client.route(session, renewal.parts[0]).primary
    h.feed(
        server,
        ResumeOk(session_id=session, parts=renewal.parts, map_version=5, credential=b"fresh-1"),
    )
    assert h.of(CredentialRenewed) == [CredentialRenewed(node="c1", session_id=session)]
    assert h.client.session_snapshot(session).credential == b"fresh-1"
    h.outbox.clear()
    h.advance(ms=INTERVAL_MS - 1)
    assert h.take(Resume) == []
    h.advance(ms=1)
    (again,) = h.take(Resume)
    assert again.token == b"fresh-1"


def test_a_refused_renewal_keeps_the_session_where_it_is_and_tries_again() -> None:
    """A renewal refused (a table full, say) is reported and tried again an eighth of the
    interval later; the session's parts stay where they are (a refused binding RESUME
    otherwise sends them to the manager)."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    session = ready_session(h)
    h.advance(ms=INTERVAL_MS)
    (renewal,) = h.take(Resume)
    server = h.client.route(session, renewal.parts[0]).primary
    h.feed(
        server,
        ResumeReject(
            session_id=session, reason=ResumeRejectReason.OVERLOADED, message="table full"
        ),
    )
    (rejected,) = h.of(SessionResumeRejected)
    assert rejected.reason is ResumeRejectReason.OVERLOADED
    assert "credential renewal" in rejected.detail
    for part in ("auth", "cart"):
        assert h.client.route(session, part).state is RouteState.ACTIVE
    h.advance(ms=INTERVAL_MS // 8 - 1)
    assert h.take(Resume) == []
    h.advance(ms=1)
    assert len(h.take(Resume)) == 1


def test_a_renewal_with_no_bound_server_waits_for_one() -> None:
    """No connection is up when the renewal falls due (both servers lost, the parts being
    located): nothing is sent and nothing dialled for it; it is tried again an eighth of the
    interval later, and goes once a server has the session bound again (here s3, which a call
    dialled after the manager placed the parts there)."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    session = ready_session(h)
    h.lose("s1")
    h.lose("s2")
    h.outbox.clear()
    h.advance(ms=INTERVAL_MS)
    assert h.take(Resume) == [] and h.take(Hello) == []
    h.feed(
        MANAGER,
        answer(
            (session, placement("auth", "s3")),
            (session, placement("cart", "s3")),
        ),
    )
    h.client.call(session, "auth", "again", b"", now_us=h.now_us)
    h.drain()
    (hello,) = h.take(Hello, "s3")
    assert [c.credential for c in hello.credentials] == [b"cred-" + session[:4]]
    h.welcome("s3")
    h.outbox.clear()
    h.advance(ms=INTERVAL_MS // 8)
    (renewal,) = h.take(Resume, "s3")
    assert renewal.parts == ("auth", "cart")


def test_a_session_taken_back_after_a_restart_renews_its_credential_at_once() -> None:
    """A snapshot's credential may be of any age: once the restart's HELLO is welcomed, the
    renewal goes at the next turn, not an interval later (when it may have expired)."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    h.client.resume_session(
        SESSION, b"old-cred", (placement("auth", "s1"),), map_version=4, now_us=0
    )
    h.drain()
    h.welcome("s1")
    h.outbox.clear()
    h.advance(ms=0)
    (renewal,) = h.take(Resume, "s1")
    assert renewal.token == b"old-cred"
    h.feed("s1", ResumeOk(session_id=SESSION, parts=("auth",), map_version=4, credential=b"new"))
    assert h.client.session_snapshot(SESSION).credential == b"new"


def test_a_renewal_refused_as_expired_is_not_tried_again() -> None:
    """TOKEN_EXPIRED is final: no retry would mend it (they went on every eighth of the
    interval, each reported)."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    session = ready_session(h)
    h.advance(ms=INTERVAL_MS)
    (renewal,) = h.take(Resume)
    server = h.client.route(session, renewal.parts[0]).primary
    h.feed(server, ResumeReject(session_id=session, reason=ResumeRejectReason.TOKEN_EXPIRED))
    assert len(h.of(SessionResumeRejected)) == 1
    h.advance(ms=4 * INTERVAL_MS)
    assert h.take(Resume) == []


def test_an_idle_session_with_no_connection_up_dials_to_renew() -> None:
    """A session never called (opened, then left idle) has no connection to its servers: its
    renewal dials its primary (the HELLO presents the credential, the RESUME behind it gets the
    fresh one). Before, only a server the session was bound on was asked, so an idle session
    never renewed and its credential expired."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    session = h.open(placement("auth", "s1", "s2"))
    h.advance(ms=INTERVAL_MS)
    assert len(h.take(Hello, "s1")) == 1
    h.welcome("s1")
    (renewal,) = h.take(Resume, "s1")
    assert (renewal.session_id, renewal.parts) == (session, ("auth",))
    h.feed("s1", ResumeOk(session_id=session, parts=("auth",), map_version=5, credential=b"new"))
    assert h.client.session_snapshot(session).credential == b"new"


def test_a_credential_lifetime_stated_in_settings_shortens_the_interval_to_half_of_it() -> None:
    """The cluster issues credentials valid 10 s; the client keeps its 60 s interval. The
    manager's SETTINGS (after its WELCOME) states the lifetime, so the session's first renewal
    goes at 5 s, the next 5 s after its RESUME_OK, and a refused one is tried again an eighth
    of that later. Before, the client renewed at its own interval, after the credential had
    expired, and the manager closed the live session."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    request_id = h.client.open_session(("auth",), now_us=h.now_us)
    h.drain()
    h.welcome(MANAGER)
    h.feed(MANAGER, Settings(credential_lifetime_ms=10_000))
    h.feed(MANAGER, opened(request_id))
    h.outbox.clear()
    h.advance(ms=4_999)
    assert h.take(Resume) == [] and h.take(Hello) == []
    h.advance(ms=1)
    assert len(h.take(Hello, "s1")) == 1
    h.welcome("s1")
    (renewal,) = h.take(Resume, "s1")
    h.feed("s1", ResumeOk(session_id=SESSION, parts=renewal.parts, map_version=5, credential=b"f1"))
    h.advance(ms=4_999)
    assert h.take(Resume) == []
    h.advance(ms=1)
    (again,) = h.take(Resume, "s1")
    assert again.token == b"f1"
    h.feed("s1", ResumeReject(session_id=SESSION, reason=ResumeRejectReason.OVERLOADED))
    h.advance(ms=5_000 // 8 - 1)
    assert h.take(Resume) == []
    h.advance(ms=1)
    assert len(h.take(Resume, "s1")) == 1


def test_a_shorter_lifetime_stated_later_brings_due_renewals_forward() -> None:
    """A session opened before any node stated a lifetime is due at the client's interval; a
    server's SETTINGS stating 4 s brings that renewal into the second half of the new 2 s
    interval (spread, so that sessions brought forward together do not renew in one burst).
    A longer lifetime stated after it changes nothing (the shortest counts), nor does 0."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    ready_session(h)
    h.advance(ms=1_000)
    h.feed("s1", Settings(credential_lifetime_ms=4_000))
    h.feed("s2", Settings(credential_lifetime_ms=86_400_000))
    h.feed("s2", Settings())
    h.advance(ms=999)
    assert h.take(Resume) == []
    h.advance(ms=1_001)
    assert len(h.take(Resume)) == 1


def test_a_session_taken_back_after_a_restart_retries_its_renewal_at_the_stated_cadence() -> None:
    """A snapshot carries no lifetime, but the primary's SETTINGS (after the WELCOME of the
    HELLO that presents the credential) does: the renewal goes at once, and when it is refused
    it is tried again an eighth of half that lifetime later, not an eighth of the client's 60 s
    interval (found by a second reading: with credentials short-lived, the retry came after
    they expired)."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    h.client.resume_session(SESSION, b"old", (placement("auth", "s1"),), map_version=4, now_us=0)
    h.drain()
    h.welcome("s1")
    h.feed("s1", Settings(credential_lifetime_ms=8_000))
    h.outbox.clear()
    h.advance(ms=0)
    (renewal,) = h.take(Resume, "s1")
    h.feed("s1", ResumeReject(session_id=SESSION, reason=ResumeRejectReason.OVERLOADED))
    h.advance(ms=4_000 // 8 - 1)
    assert h.take(Resume) == []
    h.advance(ms=1)
    assert renewal.token == b"old" and len(h.take(Resume, "s1")) == 1


def test_a_stated_lifetime_never_brings_the_interval_below_a_second() -> None:
    """A node stating a lifetime of 1 ms (a bad configuration, or a hostile node) makes the
    client renew every second, not every half millisecond."""
    floor_ms = RENEW_INTERVAL_FLOOR_US // 1000
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    ready_session(h)
    h.feed("s1", Settings(credential_lifetime_ms=1))
    h.advance(ms=floor_ms // 2 - 1)
    assert h.take(Resume) == []
    h.advance(ms=floor_ms // 2 + 1)
    (renewal,) = h.take(Resume)
    server = h.client.route(SESSION, renewal.parts[0]).primary
    fresh = ResumeOk(session_id=SESSION, parts=renewal.parts, map_version=5, credential=b"n")
    h.feed(server, fresh)
    h.advance(ms=floor_ms - 1)
    assert h.take(Resume) == []
    h.advance(ms=1)
    assert len(h.take(Resume)) == 1


def test_the_managers_refusal_of_a_credential_the_session_no_longer_holds_is_ignored() -> None:
    """The manager's RESUME_REJECT(CREDENTIAL_REFUSED) ends a session only while the credential
    it refused is still the session's: one refused while a renewal is in flight, or after it
    brought a fresh credential (or about a credential never presented to it) changes nothing;
    the next MAP_REQUEST presents the fresh one, and a refusal of that ends the session."""
    h = Harness(credential_renew_interval_ms=INTERVAL_MS)
    session = ready_session(h)
    first = h.client.session_snapshot(session).credential
    refusal = ResumeReject(session_id=session, reason=ResumeRejectReason.CREDENTIAL_REFUSED)
    h.feed(MANAGER, refusal)  # nothing presented to the manager yet
    assert h.of(SessionClosed) == []
    h.advance(ms=INTERVAL_MS - 1)
    h.outbox.clear()
    h.lose("s1")
    (request,) = h.take(MapRequest, MANAGER)
    assert [c.credential for c in request.credentials] == [first]
    h.advance(ms=1)
    (renewal,) = h.take(Resume)
    h.feed(MANAGER, refusal)  # while the renewal is in flight: its answer may be fresh
    assert h.of(SessionClosed) == []
    server = h.client.route(session, renewal.parts[0]).primary
    h.feed(
        server,
        ResumeOk(session_id=session, parts=renewal.parts, map_version=5, credential=b"fresh-1"),
    )
    h.feed(MANAGER, refusal)  # of `first`, presented before the renewal
    assert h.of(SessionClosed) == []
    h.feed(MANAGER, answer(map_version=5))
    h.advance(ms=5_000)
    presented = [c.credential for r in h.take(MapRequest, MANAGER) for c in r.credentials]
    assert presented and set(presented) == {b"fresh-1"}
    h.feed(MANAGER, refusal)
    (closed,) = h.of(SessionClosed)
    assert closed.closed_by == MANAGER
