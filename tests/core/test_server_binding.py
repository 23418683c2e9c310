"""Tests of `ServerCore` session binding: a session is served only on connections that proved it
(a credential in HELLO or RESUME, or a handoff token in RESUME), PROTOCOL.md 3, 5.6 and 5.13."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from forehand.core._driver import ConnectionLost
from forehand.core._server_events import RequestExecuted, RequestRefused, ResumeRejected
from forehand.core.messages import HeartbeatReported
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.wire import (
    PROTOCOL_VERSION,
    Credential,
    Error,
    Hello,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
    Welcome,
)

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, OTHER_SESSION, SESSION, Cluster, sealer
else:
    from _server_helpers import MANAGER, OTHER_SESSION, SESSION, Cluster, sealer


def _credential(cluster: Cluster, session: bytes = SESSION, *, lifetime_ms: int = 60_000) -> bytes:
    return sealer().issue_credential(
        session_id=session,
        client_id=bytes(16),
        now_us=cluster.router.now_us,
        lifetime_ms=lifetime_ms,
    )


def _resume(cluster: Cluster, client: str, token: bytes, *, session: bytes = SESSION) -> None:
    cluster.router.send(
        client,
        "s1",
        Resume(
            session_id=session, token=token, parts=("counter",), map_version=cluster.map.version
        ),
    )


def _placed() -> Cluster:
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.place("counter", "s1", "s2", session=OTHER_SESSION)
    return cluster


def test_request_on_an_unbound_connection_is_not_found_and_not_executed() -> None:
    """A client that knows a session id but never proved it gets NOT_FOUND; nothing runs."""
    cluster = _placed()
    cluster.request("s1", "counter", payload=b"5", client="thief", bind=False)
    (response,) = cluster.responses("thief")
    assert response.status is ResponseStatus.NOT_FOUND
    assert b"not bound" in response.payload
    assert cluster.events("s1", RequestExecuted) == []
    (refused,) = cluster.events("s1", RequestRefused)
    assert (refused.client, refused.status) == ("thief", ResponseStatus.NOT_FOUND)


def test_owner_keeps_being_served_beside_a_refused_connection() -> None:
    """The owner's bound connection is served before and after another connection is refused."""
    cluster = _placed()
    cluster.request("s1", "counter", payload=b"2", client="owner")
    cluster.request("s1", "counter", payload=b"7", client="thief", bind=False)
    cluster.request("s1", "counter", payload=b"3", client="owner", bind=False)
    assert [r.payload for r in cluster.responses("owner")] == [b"2", b"5"]
    assert [r.status for r in cluster.responses("thief")] == [ResponseStatus.NOT_FOUND]


def test_binding_is_per_session() -> None:
    """A connection bound to one session is refused the requests of another session."""
    cluster = _placed()
    cluster.request("s1", "counter", client="c1")
    cluster.request("s1", "counter", client="c1", session=OTHER_SESSION, bind=False)
    statuses = [r.status for r in cluster.responses("c1")]
    assert statuses == [ResponseStatus.OK, ResponseStatus.NOT_FOUND]


def test_resume_with_the_credential_binds_an_open_connection() -> None:
    """RESUME carrying the session's credential answers RESUME_OK and binds the session."""
    cluster = _placed()
    _resume(cluster, "c2", _credential(cluster))
    (ok,) = cluster.take("c2", ResumeOk)
    assert (ok.session_id, ok.parts, ok.map_version) == (SESSION, ("counter",), cluster.map.version)
    cluster.request("s1", "counter", payload=b"4", client="c2", bind=False)
    assert [r.payload for r in cluster.responses("c2")] == [b"4"]


def test_credential_resume_can_be_repeated_and_is_not_a_token() -> None:
    """A credential binds again (it is reusable), and does not consume a replay-cache entry."""
    cluster = _placed()
    credential = _credential(cluster)
    _resume(cluster, "c2", credential)
    _resume(cluster, "c3", credential)
    assert len(cluster.take("c2", ResumeOk)) == 1
    assert len(cluster.take("c3", ResumeOk)) == 1
    assert len(cluster.server("s1")._replay_cache) == 0


def test_bad_credentials_in_resume_are_rejected_and_bind_nothing() -> None:
    """Forged, expired and other-session credentials get RESUME_REJECT and leave it unbound."""
    cluster = _placed()
    forged = TokenSealer(KeyRing({1: bytes(32)}, current_key_id=1), rng=random.Random(3))
    cases = [
        (
            forged.issue_credential(
                session_id=SESSION, client_id=bytes(16), now_us=0, lifetime_ms=60_000
            ),
            ResumeRejectReason.TOKEN_INVALID,
        ),
        (_credential(cluster, lifetime_ms=1), ResumeRejectReason.TOKEN_EXPIRED),
        (_credential(cluster, OTHER_SESSION), ResumeRejectReason.TOKEN_INVALID),
        (b"\x01" + bytes(40), ResumeRejectReason.TOKEN_INVALID),
    ]
    cluster.router.advance(ms=5)
    for credential, reason in cases:
        _resume(cluster, "thief", credential)
        (reject,) = cluster.take("thief", ResumeReject)
        assert reject.reason is reason, (reject, reason)
    cluster.request("s1", "counter", client="thief", bind=False)
    assert [r.status for r in cluster.responses("thief")] == [ResponseStatus.NOT_FOUND]


def test_binding_ends_with_the_connection() -> None:
    """After ConnectionLost the client's next connection must prove the session again."""
    cluster = _placed()
    cluster.request("s1", "counter", client="c1")
    cluster.router.send("c1", "s1", ConnectionLost(peer="c1", reason="reset"))
    cluster.request("s1", "counter", client="c1", bind=False)
    statuses = [r.status for r in cluster.responses("c1")]
    assert statuses == [ResponseStatus.OK, ResponseStatus.NOT_FOUND]


def test_hello_binds_a_session_whose_part_arrives_later() -> None:
    """A credential presented before the server holds any part still binds the session."""
    cluster = Cluster()
    hello = Hello(
        versions=(PROTOCOL_VERSION,),
        client_id=bytes(16),
        credentials=(Credential(session_id=SESSION, credential=_credential(cluster)),),
    )
    cluster.router.send("c1", "s1", hello)
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter", payload=b"6", client="c1", bind=False)
    assert [r.payload for r in cluster.responses("c1")] == [b"6"]


def test_connection_sessions_are_bounded() -> None:
    """Past connection_sessions_max, a binding RESUME is refused with OVERLOADED."""
    cluster = Cluster(connection_sessions_max=1)
    cluster.place("counter", "s1", "s2")
    cluster.place("counter", "s1", "s2", session=OTHER_SESSION)
    _resume(cluster, "c1", _credential(cluster))
    _resume(cluster, "c1", _credential(cluster, OTHER_SESSION), session=OTHER_SESSION)
    assert [ok.session_id for ok in cluster.take("c1", ResumeOk)] == [SESSION]
    (reject,) = cluster.take("c1", ResumeReject)
    assert reject.reason is ResumeRejectReason.OVERLOADED
    cluster.request("s1", "counter", client="c1", session=OTHER_SESSION, bind=False)
    assert [r.status for r in cluster.responses("c1")] == [ResponseStatus.NOT_FOUND]


def test_resume_with_a_handoff_token_binds_the_target_connection() -> None:
    """A RESUME whose token is accepted binds the session there: requests need no HELLO."""
    cluster = _placed()
    token = sealer().issue_token(
        session_id=SESSION,
        parts=("counter",),
        target_server="s1",
        map_version=cluster.map.version,
        now_us=cluster.router.now_us,
        lifetime_ms=60_000,
    )
    _resume(cluster, "c4", token)
    assert len(cluster.take("c4", ResumeOk)) == 1
    cluster.request("s1", "counter", payload=b"9", client="c4", bind=False)
    assert [r.payload for r in cluster.responses("c4")] == [b"9"]


def test_a_credential_resume_is_answered_with_a_fresh_credential() -> None:
    """RESUME_OK to a credential RESUME carries a fresh credential for the same session and
    client, valid `credential_lifetime_ms` from now: how a client renews its own, so that a
    session outlives any one credential (servers sent none before)."""
    cluster = Cluster(credential_lifetime_ms=90_000)
    cluster.place("counter", "s1", "s2")
    cluster.router.advance(ms=40_000)
    _resume(cluster, "c2", _credential(cluster))
    (ok,) = cluster.take("c2", ResumeOk)
    claims = sealer().open_credential(ok.credential, now_us=cluster.router.now_us)
    assert (claims.session_id, claims.client_id) == (SESSION, bytes(16))
    assert claims.expires_us == cluster.router.now_us + 90_000_000
    cluster.router.advance(ms=80_000)
    _resume(cluster, "c3", ok.credential)
    assert len(cluster.take("c3", ResumeOk)) == 1
    # A session this server holds no part of (closed, or never here) binds but gets no fresh
    # credential: one of a session that ended dies with its lifetime.
    _resume(cluster, "c4", _credential(cluster, OTHER_SESSION), session=OTHER_SESSION)
    (other,) = cluster.take("c4", ResumeOk)
    assert other.credential == b""


def test_an_expired_credential_in_hello_leaves_its_session_unbound_and_the_rest_served() -> None:
    """A HELLO presenting one expired credential beside a valid one: the connection stays, the
    valid session is served, the expired one is not bound (reported, and the client told by a
    RESUME_REJECT after the WELCOME). Before, the whole
    connection was closed with UNAUTHENTICATED, at each reconnection, for every session of the
    client on that server."""
    cluster = _placed()
    expired = _credential(cluster, OTHER_SESSION, lifetime_ms=1)
    cluster.router.advance(ms=5)
    hello = Hello(
        versions=(PROTOCOL_VERSION,),
        client_id=bytes(16),
        credentials=(
            Credential(session_id=OTHER_SESSION, credential=expired),
            Credential(session_id=SESSION, credential=_credential(cluster)),
        ),
    )
    cluster.router.send("c1", "s1", hello)
    assert cluster.take("c1", Error) == []
    assert len(cluster.take("c1", Welcome)) == 1
    (told,) = cluster.take("c1", ResumeReject)
    assert (told.session_id, told.reason) == (
        OTHER_SESSION,
        ResumeRejectReason.HELLO_CREDENTIAL_EXPIRED,
    )
    (refused,) = cluster.events("s1", ResumeRejected)
    assert (refused.session_id, refused.reason) == (
        OTHER_SESSION,
        int(ResumeRejectReason.TOKEN_EXPIRED),
    )
    cluster.request("s1", "counter", payload=b"4", client="c1", bind=False)
    cluster.request("s1", "counter", client="c1", bind=False, session=OTHER_SESSION)
    assert [r.status for r in cluster.responses("c1")] == [
        ResponseStatus.OK,
        ResponseStatus.NOT_FOUND,
    ]


def test_a_refused_credential_in_hello_leaves_its_session_unbound_and_the_rest_served() -> None:
    """A HELLO presenting a tampered credential, and one naming another session, beside a valid
    one: neither binds, each gets a RESUME_REJECT(CREDENTIAL_REFUSED) after the WELCOME with the
    reason, and the connection stays and serves the valid session. Before, the connection was
    closed with UNAUTHENTICATED, at each reconnection, for every session of the client on that
    server: one corrupted snapshot resumed broke its client's healthy sessions there."""
    cluster = _placed()
    valid = _credential(cluster)
    hello = Hello(
        versions=(PROTOCOL_VERSION,),
        client_id=bytes(16),
        credentials=(
            Credential(session_id=OTHER_SESSION, credential=valid[:-1] + bytes([valid[-1] ^ 1])),
            Credential(session_id=bytes(range(16)), credential=valid),
            Credential(session_id=SESSION, credential=valid),
        ),
    )
    cluster.router.send("c1", "s1", hello)
    assert cluster.take("c1", Error) == []
    assert len(cluster.take("c1", Welcome)) == 1
    told = cluster.take("c1", ResumeReject)
    assert [(t.session_id, t.reason) for t in told] == [
        (OTHER_SESSION, ResumeRejectReason.CREDENTIAL_REFUSED),
        (bytes(range(16)), ResumeRejectReason.CREDENTIAL_REFUSED),
    ]
    assert "refused" in told[0].message and "another session" in told[1].message
    refused = cluster.events("s1", ResumeRejected)
    assert [r.reason for r in refused] == [int(ResumeRejectReason.TOKEN_INVALID)] * 2
    cluster.request("s1", "counter", payload=b"4", client="c1", bind=False)
    cluster.request("s1", "counter", client="c1", bind=False, session=OTHER_SESSION)
    assert [r.status for r in cluster.responses("c1")] == [
        ResponseStatus.OK,
        ResponseStatus.NOT_FOUND,
    ]
    # A session one credential of the HELLO bound is not also refused for another one.
    twice = Hello(
        versions=(PROTOCOL_VERSION,),
        client_id=bytes(16),
        credentials=(
            Credential(session_id=SESSION, credential=valid),
            Credential(session_id=SESSION, credential=b""),
        ),
    )
    cluster.router.send("c2", "s1", twice)
    assert len(cluster.take("c2", Welcome)) == 1
    assert cluster.take("c2", ResumeReject) == []
    cluster.request("s1", "counter", payload=b"1", client="c2", bind=False)
    assert [r.status for r in cluster.responses("c2")] == [ResponseStatus.OK]


def _renewed(cluster: Cluster) -> list[tuple[bytes, ...]]:
    cluster.router.advance(ms=500)  # the default heartbeat interval
    beats = cluster.take(MANAGER, HeartbeatReported)
    return [beat.renewed_sessions for beat in beats if beat.server_id == "s1"]


def test_renewed_credentials_are_reported_to_the_manager_once_each_in_bounded_batches() -> None:
    """Each session given a fresh credential goes to the manager in the next heartbeat (its
    session expiry counts from there), once however often it was renewed, at most
    `heartbeat_renewals_max` a heartbeat; a RESUME that gets no fresh credential (a session
    this server holds no part of) is not reported."""
    cluster = Cluster(heartbeat_renewals_max=1)
    cluster.place("counter", "s1", "s2")
    cluster.place("counter", "s1", "s2", session=OTHER_SESSION)
    cluster.router.advance(ms=0)
    cluster.take(MANAGER, HeartbeatReported)
    assert _renewed(cluster) == [()]
    _resume(cluster, "c1", _credential(cluster))
    _resume(cluster, "c2", _credential(cluster))
    _resume(cluster, "c3", _credential(cluster, OTHER_SESSION), session=OTHER_SESSION)
    assert len(cluster.take("c1", ResumeOk) + cluster.take("c3", ResumeOk)) == 2
    assert _renewed(cluster) == [(SESSION,)]
    assert _renewed(cluster) == [(OTHER_SESSION,)]
    assert _renewed(cluster) == [()]
    stranger = bytes(range(16))
    _resume(cluster, "c4", _credential(cluster, stranger), session=stranger)
    (ok,) = cluster.take("c4", ResumeOk)
    assert ok.credential == b""
    assert _renewed(cluster) == [()]
