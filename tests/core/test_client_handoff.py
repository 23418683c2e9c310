"""Tests of how ClientCore follows HANDOFF: validation, make-before-break, re-sends, fallbacks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from forehand.core._client_events import (
    HandoffAbandoned,
    HandoffFollowed,
    HandoffIgnored,
    HandoffIgnoredWhy,
    HandoffStarted,
    MapVersionAdopted,
    PartRelocated,
    RarePathTaken,
    ResponseReceived,
)
from forehand.core._client_map import (
    CLIENT_PLACEMENTS_ENCODING,
    SessionPlacement,
    encode_client_placements,
)
from forehand.core._client_session import RouteState
from forehand.core._pool import ConnectionState
from forehand.wire import (
    Endpoint,
    Handoff,
    HandoffFlag,
    HandoffState,
    HandoffStatus,
    Hello,
    MapRequest,
    MapUpdate,
    Placement,
    ReasonCode,
    Request,
    Response,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
)

if TYPE_CHECKING:
    from tests.core._client_helpers import MANAGER, Harness, endpoint, map_request, placement
    from tests.core._client_helpers import answer as client_answer
else:
    from _client_helpers import MANAGER, Harness, endpoint, map_request, placement
    from _client_helpers import answer as client_answer


def handoff(
    session: bytes,
    *,
    parts: tuple[str, ...] = ("auth",),
    sequence: int = 1,
    map_version: int = 6,
    source: str = "s1",
    targets: tuple[str, ...] = ("s2",),
    deadline_ms: int = 1_000,
    flags: HandoffFlag = HandoffFlag.MAKE_BEFORE_BREAK_REQUIRED,
) -> Handoff:
    return Handoff(
        sequence=sequence,
        session_id=session,
        parts=parts,
        map_version=map_version,
        reason=ReasonCode.PREDICTED_FAILURE,
        flags=flags,
        deadline_ms=deadline_ms,
        current=endpoint(source),
        targets=tuple(map(endpoint, targets)),
        token=b"handoff-token",
    )


def answer(h: Harness, server: str, request: Request, payload: bytes = b"ok") -> None:
    h.feed(
        server,
        Response(
            request_id=request.request_id,
            session_id=request.session_id,
            status=ResponseStatus.OK,
            map_version=6,
            payload=payload,
        ),
    )


def session_on_s1(h: Harness) -> bytes:
    """A session: auth and cart on s1 (replicas s2, s3), the s1 connection welcomed."""
    session = h.open(placement("auth", "s1", "s2", "s3"), placement("cart", "s1", "s3"))
    h.client.call(session, "auth", "warm", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    answer(h, "s1", h.take(Request, "s1")[0])
    h.outbox.clear()
    h.events.clear()
    return session


def status_states(h: Harness, server: str) -> list[HandoffState]:
    return [status.state for status in h.take(HandoffStatus, server)]


def test_handoff_is_followed_make_before_break() -> None:
    """ACCEPTED, RESUME with token and unanswered ids, re-send on RESUME_OK, then COMPLETED."""
    h = Harness()
    session = session_on_s1(h)
    pending = h.client.call(session, "auth", "a", b"1", now_us=h.now_us)
    h.drain()
    h.take(Request, "s1")
    h.advance(ms=1)
    h.feed("s1", handoff(session))
    assert status_states(h, "s1") == [HandoffState.ACCEPTED]
    assert len(h.take(Hello, "s2")) == 1
    started = h.of(HandoffStarted)
    assert [(e.source, e.targets, e.map_version) for e in started] == [("s1", ("s2",), 6)]
    # Calls made during the handoff wait (RESUME lists only what was sent before the HANDOFF).
    held = h.client.call(session, "auth", "b", b"2", now_us=h.now_us)
    h.drain()
    assert h.take(Request) == []
    h.welcome("s2", map_version=6)
    resumes = h.take(Resume, "s2")
    assert resumes == [
        Resume(
            session_id=session,
            token=b"handoff-token",
            parts=("auth",),
            map_version=6,
            unanswered=(pending,),
        )
    ]
    h.advance(ms=4)
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    resent = h.take(Request, "s2")
    assert [(r.request_id, r.map_version) for r in resent] == [(pending, 6), (held, 6)]
    assert status_states(h, "s1") == [HandoffState.COMPLETED]
    followed = h.of(HandoffFollowed)
    assert [(e.source, e.target, e.resent_requests, e.duration_us) for e in followed] == [
        ("s1", "s2", 2, 4_000)
    ]
    assert followed[0].reason is ReasonCode.PREDICTED_FAILURE
    route = h.client.route(session, "auth")
    assert (route.state, route.primary, route.backups[0], route.map_version) == (
        RouteState.ACTIVE,
        "s2",
        "s1",
        6,
    )
    # The part that did not move stays on s1.
    assert h.client.route(session, "cart").primary == "s1"


def test_a_call_re_sent_after_resume_ok_carries_the_budget_left() -> None:
    """A waiting read (a call with `timeout_ms`) sent before a HANDOFF goes again to the target
    after RESUME_OK, asking for what is left of its timeout then, less the margin."""
    h = Harness(wait_budget_margin_ms=100)
    session = session_on_s1(h)
    pending = h.client.call(session, "auth", "since", b"", now_us=h.now_us, timeout_ms=3_000)
    h.drain()
    assert [r.wait_budget_ms for r in h.take(Request, "s1")] == [2_900]
    h.advance(ms=1_000)
    h.feed("s1", handoff(session))
    h.welcome("s2", map_version=6)
    h.advance(ms=20)
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    resent = h.take(Request, "s2")
    assert [(r.request_id, r.wait_budget_ms) for r in resent] == [(pending, 1_880)]


def test_handoff_source_becomes_the_first_backup_once() -> None:
    """After RESUME_OK the backups are the source, then the other replicas, each listed once."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, targets=("s2",)))
    h.welcome("s2")
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    route = h.client.route(session, "auth")
    assert (route.primary, route.backups) == ("s2", ("s1", "s3"))


def test_resume_ok_with_a_credential_renews_the_sessions_credential() -> None:
    """A fresh credential in RESUME_OK replaces the one the next HELLO presents."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session))
    h.welcome("s2")
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6, credential=b"new"))
    assert h.client.session_snapshot(session).credential == b"new"


def test_answers_from_the_source_during_the_handoff_are_accepted_once() -> None:
    """An answer relayed by the source before RESUME_OK counts; the target's copy is dropped."""
    h = Harness()
    session = session_on_s1(h)
    h.client.call(session, "auth", "a", b"", now_us=h.now_us)
    h.drain()
    request = h.take(Request, "s1")[0]
    h.feed("s1", handoff(session))
    h.welcome("s2")
    answer(h, "s1", request, payload=b"from-source")
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert h.take(Request, "s2") == []
    answer(h, "s2", request, payload=b"again")
    assert [r.payload for r in h.of(ResponseReceived)] == [b"from-source"]


def test_prewarmed_connection_is_reused_for_the_handoff() -> None:
    """prewarm connects to the part's first backup; the handoff then needs no new HELLO."""
    h = Harness()
    session = session_on_s1(h)
    assert h.client.prewarm(session, "auth", now_us=h.now_us) == "s2"
    h.drain()
    assert len(h.take(Hello, "s2")) == 1
    h.welcome("s2")
    h.feed("s1", handoff(session))
    assert h.take(Hello) == []
    assert len(h.take(Resume, "s2")) == 1


def test_handoff_on_unwelcomed_connection_is_ignored() -> None:
    """A HANDOFF from a node that never answered HELLO is ignored as not authenticated."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s3", handoff(session, source="s3"))
    ignored = h.of(HandoffIgnored)
    assert [e.why for e in ignored] == [HandoffIgnoredWhy.NOT_AUTHENTICATED]
    assert h.take(HandoffStatus) == [] and h.take(Resume) == []


def test_handoff_whose_current_is_not_the_sender_is_ignored() -> None:
    """A HANDOFF naming another server as `current` is ignored and does not use up its sequence."""
    h = Harness()
    session = session_on_s1(h)
    forged = msgspec.structs.replace(handoff(session, sequence=3), current=endpoint("s3"))
    h.feed("s1", forged)
    assert [e.why for e in h.of(HandoffIgnored)] == [HandoffIgnoredWhy.NOT_FROM_CURRENT]
    assert h.take(HandoffStatus) == [] and h.take(Hello) == []
    assert h.client.route(session, "auth").state is RouteState.ACTIVE
    h.feed("s1", handoff(session, sequence=3))
    assert status_states(h, "s1") == [HandoffState.ACCEPTED]


def test_handoff_from_a_server_not_holding_the_parts_is_ignored() -> None:
    """A welcomed server that is not among a named part's servers cannot move that part."""
    h = Harness()
    session = session_on_s1(h)
    assert h.client.prewarm(session, "auth", now_us=h.now_us) == "s2"
    h.welcome("s2")
    h.outbox.clear()
    # s2 is a replica of auth but no server of cart (s1, then s3).
    h.feed("s2", handoff(session, parts=("auth", "cart"), source="s2", targets=("s3",)))
    h.feed("s2", handoff(session, sequence=2, parts=("cart",), source="s2", targets=("s3",)))
    whys = [e.why for e in h.of(HandoffIgnored)]
    assert whys == [HandoffIgnoredWhy.NOT_BOUND, HandoffIgnoredWhy.NOT_BOUND]
    assert h.take(HandoffStatus) == [] and h.take(Resume) == []
    assert h.client.route(session, "cart").primary == "s1"


@pytest.mark.parametrize(
    "flags",
    [
        HandoffFlag.NONE,
        HandoffFlag.URGENT,
        HandoffFlag.URGENT | HandoffFlag.PREWARMED | HandoffFlag.MAKE_BEFORE_BREAK_REQUIRED,
    ],
)
def test_handoff_is_followed_at_once_whatever_its_flags(flags: HandoffFlag) -> None:
    """No pacing for URGENT to skip: RESUME leaves in the same step; flags reach the event."""
    h = Harness()
    session = session_on_s1(h)
    assert h.client.prewarm(session, "auth", now_us=h.now_us) == "s2"
    h.welcome("s2")
    h.outbox.clear()
    h.feed("s1", handoff(session, flags=flags))
    assert len(h.take(Resume, "s2")) == 1
    assert [e.flags for e in h.of(HandoffStarted)] == [flags]
    # Make-before-break holds even without MAKE_BEFORE_BREAK_REQUIRED: s1 still answers.
    assert h.client.connection_state("s1") is ConnectionState.READY


def test_stale_map_version_handoff_is_ignored() -> None:
    """A HANDOFF whose map version is not newer than the part's is ignored."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, map_version=5))
    assert [e.why for e in h.of(HandoffIgnored)] == [HandoffIgnoredWhy.STALE_MAP_VERSION]
    assert h.client.route(session, "auth").primary == "s1"
    assert h.of(MapVersionAdopted) == []


def test_stale_sequence_handoff_is_ignored() -> None:
    """A HANDOFF whose sequence is not newer than the connection's last one is ignored."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, sequence=4, parts=("cart",), targets=("s3",)))
    h.feed("s1", handoff(session, sequence=4, map_version=7))
    assert [e.why for e in h.of(HandoffIgnored)] == [HandoffIgnoredWhy.STALE_SEQUENCE]


def test_replayed_handoff_after_completion_is_ignored() -> None:
    """The same HANDOFF delivered again after it was followed changes nothing."""
    h = Harness()
    session = session_on_s1(h)
    frame = handoff(session)
    h.feed("s1", frame)
    h.welcome("s2")
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    h.outbox.clear()
    h.feed("s1", frame)
    assert [e.why for e in h.of(HandoffIgnored)] == [HandoffIgnoredWhy.STALE_SEQUENCE]
    assert h.outbox == []
    assert h.client.route(session, "auth").primary == "s2"


def test_handoff_to_unknown_target_is_ignored_and_the_manager_asked() -> None:
    """A HANDOFF to a server the client never heard of is ignored; the manager's map decides."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, targets=("s2", "s4")))
    assert [e.why for e in h.of(HandoffIgnored)] == [HandoffIgnoredWhy.UNKNOWN_TARGET]
    assert h.take(Hello) == [] and h.take(HandoffStatus) == []
    assert h.take(MapRequest, MANAGER) == [map_request(5)]
    assert h.client.route(session, "auth").state is RouteState.ACTIVE
    entries = (SessionPlacement(session_id=session, placement=placement("auth", "s4", "s1")),)
    h.feed(
        MANAGER,
        MapUpdate(
            map_version=6,
            base_version=5,
            encoding=CLIENT_PLACEMENTS_ENCODING,
            body=encode_client_placements(entries),
        ),
    )
    assert h.client.route(session, "auth").primary == "s4"
    assert h.client.route(session, "cart").primary == "s1"


def test_handoff_for_unknown_session_or_part_is_ignored() -> None:
    """A HANDOFF for a session or part the client does not hold is ignored."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(bytes(16), sequence=1))
    h.feed("s1", handoff(session, sequence=2, parts=("video",)))
    h.feed("s1", handoff(session, sequence=3, targets=()))
    whys = [e.why for e in h.of(HandoffIgnored)]
    assert whys == [
        HandoffIgnoredWhy.UNKNOWN_SESSION,
        HandoffIgnoredWhy.UNKNOWN_PART,
        HandoffIgnoredWhy.NO_TARGET,
    ]


def test_newer_handoff_supersedes_the_one_in_flight() -> None:
    """A second HANDOFF at a newer map version while the first RESUME is unanswered: the client
    resumes at the new target, tells the source the first one was DECLINED, and a late RESUME_OK
    from the first target completes nothing."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session))
    h.welcome("s2")
    assert len(h.take(Resume, "s2")) == 1
    pending = h.client.call(session, "auth", "held", b"", now_us=h.now_us)
    h.feed("s1", handoff(session, sequence=2, map_version=7, targets=("s3",)))
    assert h.of(HandoffIgnored) == []
    assert status_states(h, "s1") == [
        HandoffState.ACCEPTED,
        HandoffState.DECLINED,
        HandoffState.ACCEPTED,
    ]
    h.welcome("s3")
    (resume,) = h.take(Resume, "s3")
    assert (resume.parts, resume.map_version) == (("auth",), 7)
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert h.of(HandoffFollowed) == []
    assert h.client.route(session, "auth").state is RouteState.HANDING_OFF
    h.feed("s3", ResumeOk(session_id=session, parts=("auth",), map_version=7))
    assert [(e.target, e.map_version) for e in h.of(HandoffFollowed)] == [("s3", 7)]
    route = h.client.route(session, "auth")
    assert (route.state, route.primary) == (RouteState.ACTIVE, "s3")
    assert [r.request_id for r in h.take(Request, "s3")] == [pending]
    assert h.take(Request, "s2") == []


def test_newer_handoff_of_some_parts_leaves_the_others_moving() -> None:
    """A newer HANDOFF that names only some of the parts in flight takes just those: the first
    RESUME still completes the others."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, parts=("auth", "cart"), targets=("s3",)))
    h.welcome("s3")
    assert len(h.take(Resume, "s3")) == 1
    h.feed("s1", handoff(session, parts=("cart",), sequence=2, map_version=7, targets=("s2",)))
    assert status_states(h, "s1") == [HandoffState.ACCEPTED, HandoffState.ACCEPTED]
    h.feed("s3", ResumeOk(session_id=session, parts=("auth", "cart"), map_version=6))
    assert [(e.parts, e.target) for e in h.of(HandoffFollowed)] == [(("auth",), "s3")]
    assert h.client.route(session, "cart").state is RouteState.HANDING_OFF
    h.welcome("s2")
    (resume,) = h.take(Resume, "s2")
    assert resume.parts == ("cart",)
    h.feed("s2", ResumeOk(session_id=session, parts=("cart",), map_version=7))
    assert h.client.route(session, "cart").primary == "s2"
    assert h.client.route(session, "auth").primary == "s3"


def test_handoff_not_newer_than_the_one_in_flight_is_ignored() -> None:
    """During a handoff, a HANDOFF at the same map version is stale and changes nothing."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session))
    h.feed("s1", handoff(session, sequence=2, map_version=6, targets=("s3",)))
    assert [e.why for e in h.of(HandoffIgnored)] == [HandoffIgnoredWhy.STALE_MAP_VERSION]
    assert h.take(Hello, "s3") == []


def test_rejected_target_falls_to_the_next_one() -> None:
    """RESUME_REJECT from the first target makes the client resume at the second."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, targets=("s2", "s3")))
    h.welcome("s2")
    h.take(Resume, "s2")
    h.feed("s2", ResumeReject(session_id=session, reason=ResumeRejectReason.OVERLOADED))
    assert len(h.take(Hello, "s3")) == 1
    h.welcome("s3")
    assert len(h.take(Resume, "s3")) == 1
    h.feed("s3", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert [e.target for e in h.of(HandoffFollowed)] == ["s3"]


def test_all_targets_rejecting_falls_back_to_the_manager() -> None:
    """When every target refuses, the source hears FAILED and the client asks the manager."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session))
    h.welcome("s2")
    h.feed("s2", ResumeReject(session_id=session, reason=ResumeRejectReason.TOKEN_REPLAYED))
    statuses = h.take(HandoffStatus, "s1")
    assert [(s.state, s.detail_code) for s in statuses] == [
        (HandoffState.ACCEPTED, 0),
        (HandoffState.FAILED, int(ResumeRejectReason.TOKEN_REPLAYED)),
    ]
    abandoned = h.of(HandoffAbandoned)
    assert len(abandoned) == 1 and "TOKEN_REPLAYED" in abandoned[0].detail
    assert h.client.route(session, "auth").state is RouteState.LOCATING
    # The route never reached the move's version 6: it asks as of 5, so the move is news.
    assert h.take(MapRequest, MANAGER) == [map_request(5)]


def test_a_part_an_abandoned_handoff_leaves_on_its_source_is_reported_relocated_there() -> None:
    """Every target refused, and the manager places the part back on its source, whose
    connection is up: the application hears RELOCATED to it (its ABANDONED event gets its
    answer), while a part put back on a server it has no connection to is not reported."""
    h = Harness()
    session = session_on_s1(h)
    h.client.call(session, "auth", "waiting", b"", now_us=h.now_us)
    h.drain()
    h.take(Request, "s1")
    h.feed("s1", handoff(session))
    h.welcome("s2")
    h.feed("s2", ResumeReject(session_id=session, reason=ResumeRejectReason.TOKEN_REPLAYED))
    assert h.client.route(session, "auth").state is RouteState.LOCATING
    h.take(MapRequest, MANAGER)
    h.feed(
        MANAGER,
        client_answer(
            (session, placement("auth", "s1", "s2")),
            (session, placement("cart", "s1", "s3")),
        ),
    )
    assert [(e.part, e.server) for e in h.of(PartRelocated)] == [("auth", "s1")]


def test_silent_target_times_out_then_next_target() -> None:
    """A target that does not answer RESUME within resume_timeout_ms is skipped."""
    h = Harness(resume_timeout_ms=100)
    session = session_on_s1(h)
    h.feed("s1", handoff(session, targets=("s2", "s3"), deadline_ms=5_000))
    h.welcome("s2")
    h.advance(ms=99)
    assert h.take(Hello, "s3") == []
    h.advance(ms=1)
    assert len(h.take(Hello, "s3")) == 1


def test_handoff_deadline_bounds_all_targets() -> None:
    """Past the HANDOFF's deadline the client stops trying targets and asks the manager."""
    h = Harness(resume_timeout_ms=1_000)
    session = session_on_s1(h)
    h.feed("s1", handoff(session, targets=("s2", "s3"), deadline_ms=300))
    h.advance(ms=300)
    assert h.take(Hello, "s3") == []
    assert len(h.of(HandoffAbandoned)) == 1
    assert h.client.route(session, "auth").state is RouteState.LOCATING


def test_target_connection_loss_moves_to_next_target() -> None:
    """If the connection to the target breaks before RESUME_OK, the next target is tried."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, targets=("s2", "s3")))
    h.lose("s2", "refused")
    assert len(h.take(Hello, "s3")) == 1


def test_source_loss_during_handoff_does_not_trigger_failover() -> None:
    """Make-before-break: losing the source mid-handoff leaves the moving part to its target."""
    h = Harness()
    session = session_on_s1(h)
    pending = h.client.call(session, "auth", "a", b"", now_us=h.now_us)
    h.feed("s1", handoff(session))
    h.lose("s1")
    assert h.client.route(session, "auth").state is RouteState.HANDING_OFF
    # Only the part that stayed on s1 is located; the request is kept for the target.
    assert h.client.route(session, "cart").state is RouteState.LOCATING
    assert h.take(MapRequest) == [map_request(5)]
    h.welcome("s2")
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert [r.request_id for r in h.take(Request, "s2")] == [pending]
    assert status_states(h, "s1") == [HandoffState.ACCEPTED]
    assert len(h.of(HandoffFollowed)) == 1


def test_handoff_deadline_is_capped_by_config() -> None:
    """A HANDOFF asking for a huge deadline is held to handoff_deadline_ms_max."""
    h = Harness(handoff_deadline_ms_max=200, resume_timeout_ms=10_000)
    session = session_on_s1(h)
    h.feed("s1", handoff(session, deadline_ms=3_600_000))
    h.advance(ms=200)
    assert len(h.of(HandoffAbandoned)) == 1


def test_handoff_moving_several_parts_resumes_them_together() -> None:
    """One HANDOFF for two parts sends one RESUME naming both and switches both."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, parts=("auth", "cart"), targets=("s3",)))
    h.welcome("s3")
    assert [r.parts for r in h.take(Resume, "s3")] == [("auth", "cart")]
    h.feed("s3", ResumeOk(session_id=session, parts=("auth", "cart"), map_version=6))
    assert h.client.route(session, "auth").primary == "s3"
    assert h.client.route(session, "cart").primary == "s3"


def second_handoff_waiting(
    h: Harness,
    session: bytes,
    *,
    first: tuple[tuple[str, ...], int] = (("s3",), 1_000),
    second_deadline_ms: int = 1_000,
) -> None:
    """HANDOFF auth to `first`'s targets (RESUME to s3 taken, unanswered), then HANDOFF cart to
    s3 (map version 7), which waits."""
    targets, deadline_ms = first
    h.feed("s1", handoff(session, parts=("auth",), targets=targets, deadline_ms=deadline_ms))
    h.welcome("s3")
    h.take(Resume, "s3")
    second = handoff(
        session,
        parts=("cart",),
        sequence=2,
        map_version=7,
        targets=("s3",),
        deadline_ms=second_deadline_ms,
    )
    h.feed("s1", second)


def test_a_second_handoff_to_the_same_target_waits_for_the_first_resume() -> None:
    """A drain moves a session's parts in two batches to the same target: the second HANDOFF
    comes while the first RESUME is unanswered. RESUME answers name no request, so the second
    RESUME waits for the first's answer, then goes, and both parts switch. Before, the second
    skipped its only target and was abandoned to the manager (ABANDONED, then RELOCATED)."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, parts=("auth",), targets=("s3",)))
    h.welcome("s3")
    assert [r.parts for r in h.take(Resume, "s3")] == [("auth",)]
    h.feed("s1", handoff(session, parts=("cart",), sequence=2, map_version=7, targets=("s3",)))
    assert status_states(h, "s1") == [HandoffState.ACCEPTED, HandoffState.ACCEPTED]
    assert h.take(Resume, "s3") == []
    assert h.client.route(session, "cart").state is RouteState.HANDING_OFF
    h.feed("s3", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert [r.parts for r in h.take(Resume, "s3")] == [("cart",)]
    h.feed("s3", ResumeOk(session_id=session, parts=("cart",), map_version=7))
    assert [(e.parts, e.target) for e in h.of(HandoffFollowed)] == [
        (("auth",), "s3"),
        (("cart",), "s3"),
    ]
    assert h.of(HandoffAbandoned) == [] and h.of(PartRelocated) == []
    assert status_states(h, "s1") == [HandoffState.COMPLETED, HandoffState.COMPLETED]
    assert h.client.route(session, "auth").primary == "s3"
    assert h.client.route(session, "cart").primary == "s3"


def test_a_waiting_handoff_a_newer_one_takes_over_is_declined() -> None:
    """The waiting HANDOFF's part is moved again by a newer HANDOFF elsewhere before its turn:
    it is declined at once (no RESUME for it ever goes), and the newer one completes."""
    h = Harness()
    session = session_on_s1(h)
    second_handoff_waiting(h, session)
    h.feed("s1", handoff(session, parts=("cart",), sequence=3, map_version=8, targets=("s2",)))
    h.welcome("s2")
    assert [r.parts for r in h.take(Resume, "s2")] == [("cart",)]
    h.feed("s3", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert h.take(Resume, "s3") == []
    assert status_states(h, "s1") == [
        *(HandoffState.ACCEPTED, HandoffState.ACCEPTED, HandoffState.ACCEPTED),
        HandoffState.DECLINED,
        HandoffState.COMPLETED,
    ]
    h.feed("s2", ResumeOk(session_id=session, parts=("cart",), map_version=8))
    assert h.client.route(session, "cart").primary == "s2"
    assert h.of(HandoffAbandoned) == []


def test_a_waiting_handoff_past_its_deadline_is_abandoned_when_its_turn_comes() -> None:
    """The first RESUME goes unanswered until it times out: the waiting HANDOFF's deadline has
    passed by then, so it is abandoned to the manager with the first."""
    h = Harness()
    session = session_on_s1(h)
    second_handoff_waiting(h, session, first=(("s3",), 500), second_deadline_ms=300)
    h.advance(ms=600)
    assert sorted(e.parts for e in h.of(HandoffAbandoned)) == [("auth",), ("cart",)]
    assert h.take(Resume, "s3") == []


def test_a_waiting_handoff_waits_for_the_answer_of_a_resume_superseded_meanwhile() -> None:
    """The first RESUME's HANDOFF is superseded (its part moves elsewhere) while unanswered:
    its answer is still owed, so the waiting HANDOFF is sent only once it comes, and gets its
    own answer. Sent at once, it took the first's answer (a second reading found it: the part
    was abandoned and an empty move reported)."""
    h = Harness()
    session = session_on_s1(h)
    second_handoff_waiting(h, session)
    h.feed("s1", handoff(session, parts=("auth",), sequence=3, map_version=8, targets=("s2",)))
    assert h.take(Resume, "s3") == []
    h.feed("s3", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert [r.parts for r in h.take(Resume, "s3")] == [("cart",)]
    h.feed("s3", ResumeOk(session_id=session, parts=("cart",), map_version=7))
    assert [(e.parts, e.target) for e in h.of(HandoffFollowed)] == [(("cart",), "s3")]
    assert h.of(HandoffAbandoned) == []
    assert h.client.route(session, "cart").primary == "s3"


def test_a_waiting_handoff_behind_a_timed_out_resume_waits_for_its_late_answer() -> None:
    """The first RESUME times out and its HANDOFF goes to its next target; its answer is still
    owed at the first, so the waiting HANDOFF there waits for it, then resumes."""
    h = Harness()
    session = session_on_s1(h)
    second_handoff_waiting(h, session, first=(("s3", "s2"), 5_000), second_deadline_ms=5_000)
    h.advance(ms=2_001)
    assert h.take(Resume, "s3") == []
    h.feed("s3", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert [r.parts for r in h.take(Resume, "s3")] == [("cart",)]
    h.feed("s3", ResumeOk(session_id=session, parts=("cart",), map_version=7))
    assert (("cart",), "s3") in [(e.parts, e.target) for e in h.of(HandoffFollowed)]
    assert [e.parts for e in h.of(HandoffAbandoned)] == []


def test_a_waiting_handoff_behind_an_emptied_one_goes_at_once() -> None:
    """Two HANDOFFs wait, the first emptied by the second: once the RESUME ahead is answered,
    the first is declined and the second sent at once (it waited for a timer, past its
    deadline, before)."""
    h = Harness()
    session = session_on_s1(h)
    second_handoff_waiting(h, session)
    h.feed("s1", handoff(session, parts=("cart",), sequence=3, map_version=8, targets=("s3",)))
    h.feed("s3", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    (resume,) = h.take(Resume, "s3")
    assert resume.parts == ("cart",) and resume.map_version == 8
    assert HandoffState.DECLINED in status_states(h, "s1")
    h.feed("s3", ResumeOk(session_id=session, parts=("cart",), map_version=8))
    assert h.client.route(session, "cart").primary == "s3"
    assert h.of(HandoffAbandoned) == []


def test_resume_ok_leaving_a_part_out_relocates_that_part() -> None:
    """A RESUME_OK that grants only some parts switches those; the others are located."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session, parts=("auth", "cart"), targets=("s3",)))
    h.welcome("s3")
    h.feed("s3", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert h.client.route(session, "auth").state is RouteState.ACTIVE
    assert h.client.route(session, "cart").state is RouteState.LOCATING


def client_placements(session: bytes, *placements: Placement, map_version: int) -> MapUpdate:
    entries = tuple(SessionPlacement(session_id=session, placement=p) for p in placements)
    return MapUpdate(
        map_version=map_version,
        base_version=0,
        encoding=CLIENT_PLACEMENTS_ENCODING,
        body=encode_client_placements(entries),
    )


def test_newer_map_naming_another_server_overtakes_the_handoff() -> None:
    """A newer map placing a moving part elsewhere wins: DECLINED to the source, re-send there."""
    h = Harness()
    session = session_on_s1(h)
    pending = h.client.call(session, "auth", "a", b"", now_us=h.now_us)
    h.feed("s1", handoff(session, parts=("auth", "cart"), targets=("s2",)))
    h.welcome("s2")
    h.outbox.clear()
    h.feed(
        MANAGER,
        client_placements(session, placement("auth", "s3", "s1"), map_version=7),
    )
    assert [s.state for s in h.take(HandoffStatus, "s1")] == [HandoffState.DECLINED]
    route = h.client.route(session, "auth")
    assert (route.state, route.primary, route.map_version) == (RouteState.ACTIVE, "s3", 7)
    # The other part of the cancelled RESUME asks the manager where it lives.
    assert h.client.route(session, "cart").state is RouteState.LOCATING
    h.welcome("s3")
    assert [r.request_id for r in h.take(Request, "s3")] == [pending]
    h.feed("s2", ResumeOk(session_id=session, parts=("auth", "cart"), map_version=6))
    assert [e.name for e in h.of(RarePathTaken)] == ["late-resume-ok"]
    assert h.client.route(session, "auth").primary == "s3"


def test_newer_map_naming_the_target_lets_the_handoff_finish() -> None:
    """A newer map that confirms the target leaves the handoff running to RESUME_OK."""
    h = Harness()
    session = session_on_s1(h)
    h.feed("s1", handoff(session))
    h.feed(MANAGER, client_placements(session, placement("auth", "s2", "s1"), map_version=7))
    assert h.client.route(session, "auth").state is RouteState.HANDING_OFF
    h.welcome("s2")
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=7))
    route = h.client.route(session, "auth")
    assert (route.state, route.primary) == (RouteState.ACTIVE, "s2")
    assert len(h.of(HandoffFollowed)) == 1


def test_a_deferred_call_whose_part_is_handed_off_first_goes_to_the_target_only() -> None:
    """A call waiting for send_deferred when a HANDOFF of its part arrives is not sent to the
    source: send_deferred holds it, and RESUME_OK sends it to the target once, after the part's
    earlier request, with its id."""
    h = Harness()
    session = session_on_s1(h)
    pending = h.client.call(session, "auth", "a", b"1", now_us=h.now_us)
    h.drain()
    h.take(Request, "s1")
    deferred = h.client.call(session, "auth", "b", b"2", now_us=h.now_us, defer_send=True)
    h.feed("s1", handoff(session))
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    assert h.take(Request) == []
    h.welcome("s2", map_version=6)
    h.feed("s2", ResumeOk(session_id=session, parts=("auth",), map_version=6))
    assert [r.request_id for r in h.take(Request, "s2")] == [pending, deferred]
    h.client.send_deferred(now_us=h.now_us)
    h.drain()
    assert h.take(Request) == []


def test_a_handoff_to_a_known_server_at_a_new_address_dials_the_new_one() -> None:
    """A restarted server may listen elsewhere (another port, or host): a HANDOFF of a newer map
    version than the one the client learned the target at, naming it at another address, is
    followed to the new address (the target still proves its id with its certificate), where
    the client used to dial the old one, fail, and ask the manager. The manager's placements
    keep the last word: one naming the new address keeps it."""
    h = Harness()
    session = session_on_s1(h)
    assert h.client.endpoint("s2") == endpoint("s2")
    moved = Endpoint(server_id="s2", host="s2.example", port=5544)
    h.feed("s1", msgspec.structs.replace(handoff(session), targets=(moved,)))
    assert h.client.endpoint("s2") == moved
    assert "endpoint-readdressed" in [e.name for e in h.of(RarePathTaken)]
    assert status_states(h, "s1") == [HandoffState.ACCEPTED]
    placed = Placement(part="cart", primary=moved, replicas=(endpoint("s1"),))
    h.feed(MANAGER, client_answer((session, placed), map_version=8))
    assert h.client.endpoint("s2") == moved


def test_a_server_cannot_pin_an_address_against_the_manager() -> None:
    """A HANDOFF naming a known server at another address with a huge map version (a buggy or
    hostile member) moves the address only until the manager's next placement of that server,
    whatever that placement's version; a placeholder address (a source whose map had none for
    the target) changes nothing."""
    h = Harness()
    session = session_on_s1(h)
    bogus = Endpoint(server_id="s2", host="elsewhere.example", port=1)
    h.feed("s1", msgspec.structs.replace(handoff(session, map_version=10_000), targets=(bogus,)))
    assert h.client.endpoint("s2") == bogus
    h.feed(MANAGER, client_answer((session, placement("cart", "s2", "s1")), map_version=8))
    assert h.client.endpoint("s2") == endpoint("s2")
    fresh = Harness()
    session = session_on_s1(fresh)
    placeholder = Endpoint(server_id="s2", host="s2", port=4433)
    fresh.feed("s1", msgspec.structs.replace(handoff(session), targets=(placeholder,)))
    assert status_states(fresh, "s1") == [HandoffState.ACCEPTED]
    assert fresh.client.endpoint("s2") == endpoint("s2")


def test_a_handoff_of_an_older_version_does_not_readdress_a_server() -> None:
    """A HANDOFF whose map version is not newer than the one the target was learned at leaves
    its address as it was (it is ignored as stale besides)."""
    h = Harness()
    session = session_on_s1(h)
    moved = Endpoint(server_id="s2", host="elsewhere.example", port=1)
    h.feed("s1", msgspec.structs.replace(handoff(session, map_version=5), targets=(moved,)))
    assert h.client.endpoint("s2") == endpoint("s2")
