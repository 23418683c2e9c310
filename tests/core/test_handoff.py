"""Tests of the server side of a planned handoff: steps 3-5 at the source, the target catch-up."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
import pytest

from forehand.core._handoff import (
    HANDOFF_TRANSITIONS,
    HandoffPhase,
    HandoffRun,
    HandoffSide,
    HandoffTrigger,
    handoff_transition_table,
)
from forehand.core._part import PartState
from forehand.core._server_config import ServerConfig
from forehand.core._server_events import (
    ClientHandedOff,
    HandoffStepCompleted,
    HandoffStepMissed,
    PrimaryAcceptedWrite,
    PrimaryInstalled,
    RarePathTaken,
    RequestExecuted,
    ResumeAccepted,
    WriteAcknowledged,
)
from forehand.core.messages import (
    HandoffAborted,
    HandoffCompleted,
    LogShipped,
    MapPublished,
    RequestForwarded,
    ResponseForwarded,
)
from forehand.core.tokens import TokenClaims
from forehand.errors import LocalProtocolError
from forehand.placement import PartKey, Placement
from forehand.wire import (
    Handoff,
    HandoffFlag,
    ReasonCode,
    Response,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
)

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, OTHER_SESSION, SESSION, Cluster, ref, sealer
else:
    from _server_helpers import MANAGER, OTHER_SESSION, SESSION, Cluster, ref, sealer

COUNTER = ref("counter")


def handed_over(*, map_first: bool = True, **overrides: object) -> Cluster:
    """s1 primary of `counter` (replicas s2, s3) with 3 writes from c1, then moved to s2."""
    cluster = Cluster(**overrides)  # type: ignore[arg-type]
    cluster.place("counter", "s1", "s2", "s3")
    for _ in range(3):
        cluster.request("s1", "counter")
    cluster.responses()
    cluster.router.advance(ms=50)
    move = cluster.map.override_placement(
        PartKey(session_id=SESSION, part="counter"), Placement(primary="s2", replicas=("s1", "s3"))
    )
    if map_first:
        cluster.publish(*move.operations)
        cluster.assign_handoff([COUNTER], source="s1", target="s2")
    else:
        cluster.publish(*move.operations, to=[])
        cluster.assign_handoff([COUNTER], source="s1", target="s2")
        cluster.publish_full()
    return cluster


def state(cluster: Cluster, server: str) -> PartState | None:
    """The state of `counter` on `server`."""
    part = cluster.server(server).part(COUNTER)
    return None if part is None else part.state


def test_handoff_table_rows() -> None:
    """The exported handoff table lists every transition once, and illegal ones raise."""
    assert len(handoff_transition_table()) == len(HANDOFF_TRANSITIONS)
    run = HandoffRun(
        handoff_id=1,
        side=HandoffSide.TARGET,
        refs=(COUNTER,),
        peer="s1",
        map_version=2,
        reason=0,
        deadline_us=10,
    )
    assert run.phase is HandoffPhase.RECEIVING
    with pytest.raises(LocalProtocolError):
        run.transition(HandoffTrigger.CLIENTS_NOTIFIED)
    run.transition(HandoffTrigger.SEALED_LOGS_APPLIED)
    assert run.finished


@pytest.mark.parametrize("map_first", [True, False])
def test_sealed_log_moves_the_part_and_the_state(map_first: bool) -> None:
    """The target becomes primary with the source's state; the source becomes a backup."""
    cluster = handed_over(map_first=map_first)
    assert state(cluster, "s2") is PartState.PRIMARY
    assert state(cluster, "s1") is PartState.BACKUP
    target = cluster.server("s2").part(COUNTER)
    assert target is not None
    assert (target.data, target.applied_seq, target.epoch) == (3, 3, cluster.map.version)
    (installed,) = cluster.events("s2", PrimaryInstalled)
    assert (installed.cause.value, installed.log_index) == ("handoff", 3)
    sealed = [m for m in cluster.router.sent(LogShipped, source="s1") if m.sealed]
    assert len(sealed) == 1
    steps = [(e.side, e.step) for e in cluster.events("s1", HandoffStepCompleted)]
    assert steps == [(HandoffSide.SOURCE, 3)]
    target_steps = [(e.side, e.step) for e in cluster.events("s2", HandoffStepCompleted)]
    assert target_steps == [(HandoffSide.TARGET, 3)]
    completed = cluster.take(MANAGER, HandoffCompleted)
    assert [(m.server_id, m.handoff_id) for m in completed] == [("s2", 77)]


def move_seen_by_the_target_first(
    cluster: Cluster, *, gap: bool = False, held_ms: int | None = None
) -> tuple[MapPublished, list[LogShipped]]:
    """s1 primary of `counter` (replicas s2, s3) ships its 4th write to s2, which gets it only
    after adopting the move to s2 (sent to s2 alone; with `gap`, as a whole map after a version
    s2 missed) `held_ms` later (by default the resend time: the batch is due again at once);
    returns the version and the shipment."""
    cluster.place("counter", "s1", "s2", "s3")
    for _ in range(3):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    in_flight: list[LogShipped] = []

    def hold(source: str, destination: str, message: object) -> bool:
        if (source, destination) == ("s1", "s2") and isinstance(message, LogShipped):
            in_flight.append(message)
            return True
        return False

    cluster.router.filters.append(hold)
    cluster.request("s1", "counter")
    retry_ms = ServerConfig(server_id="s1").replication_retry_ms
    cluster.router.advance(ms=retry_ms if held_ms is None else held_ms)
    cluster.router.filters.remove(hold)
    assert [entry.seq for m in in_flight for entry in m.entries] == [4]
    move = cluster.map.override_placement(
        PartKey(session_id=SESSION, part="counter"), Placement(primary="s2", replicas=("s1", "s3"))
    )
    if gap:
        cluster.place("ledger", "s1", "s3", to=["s1", "s3"])
    published = cluster.publish(*move.operations, to=[] if gap else ["s2"])
    if gap:
        cluster.publish_full(to=["s2"])
    for message in in_flight:
        cluster.router.send("s1", "s2", message)
    return published, in_flight


def hand_off_once_the_source_learns(cluster: Cluster, published: MapPublished, *, ms: int) -> None:
    """The source (and s3) adopt the move the target saw first, the manager assigns the handoff,
    and within `ms` it completes with all four writes on the target."""
    for server in ("s1", "s3"):
        cluster.router.send(MANAGER, server, published)
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    cluster.router.advance(ms=ms)
    assert cluster.take(MANAGER, HandoffAborted) == []
    assert [m.server_id for m in cluster.take(MANAGER, HandoffCompleted)] == ["s2"]
    target = cluster.server("s2").part(COUNTER)
    assert target is not None and (target.data, target.applied_seq) == (4, 4)


def test_a_target_that_learns_of_the_move_first_does_not_fence_its_source() -> None:
    """The target adopts the move before the source, then gets a shipment the source sent before
    it learned of it: ignored, not refused with the move's version (which fenced the source, so
    that it stepped down at the move and refused the handoff); the seal brings the write."""
    cluster = Cluster()
    published, _ = move_seen_by_the_target_first(cluster)
    source = cluster.server("s1").part(COUNTER)
    assert source is not None and not source.fenced
    hand_off_once_the_source_learns(cluster, published, ms=100)
    assert (state(cluster, "s1"), state(cluster, "s2")) == (PartState.BACKUP, PartState.PRIMARY)
    ignored = [e.name for e in cluster.events("s2", RarePathTaken)]
    assert "shipment-before-the-seal-ignored" in ignored


def test_a_seal_behind_a_full_window_of_ignored_batches_goes_at_once() -> None:
    """With one batch allowed in flight, the batch the target ignored (sent before the source
    learned of the move) fills the window: the seal goes out beside it all the same, and the
    target's answer (its position, below that batch) restarts the stream at the move's epoch,
    so the handoff completes in round trips, not after the batch's resend time."""
    cluster = Cluster(replication_inflight_batches_max=1)
    published, _ = move_seen_by_the_target_first(cluster, held_ms=20)
    hand_off_once_the_source_learns(cluster, published, ms=50)


def test_a_target_that_skipped_versions_fences_the_source_it_cannot_vouch_for() -> None:
    """A target that got the move in a whole map after a gap does not know that the primary of
    its map before still was the primary when the part moved (a failover in between may have
    replaced it): what that server ships below the move's epoch is refused, which fences it."""
    cluster = Cluster()
    move_seen_by_the_target_first(cluster, gap=True)
    assert state(cluster, "s2") is PartState.RECEIVING
    source = cluster.server("s1").part(COUNTER)
    assert source is not None and source.fence_version > source.epoch
    ignored = [e.name for e in cluster.events("s2", RarePathTaken)]
    assert "shipment-before-the-seal-ignored" not in ignored


def test_a_target_fenced_by_a_failover_still_fences_the_old_source() -> None:
    """The same shipment reaching a target that a failover fenced meanwhile is refused with the
    fence: the source must stop writing, its history is no longer the part's."""
    cluster = Cluster()
    _, in_flight = move_seen_by_the_target_first(cluster)
    source = cluster.server("s1").part(COUNTER)
    assert source is not None and source.fence_version == 0
    cluster.prepare_failover([COUNTER], to=["s2"])
    for message in in_flight:
        cluster.router.send("s1", "s2", message)
    assert source.fence_version == cluster.map.version + 1 > source.epoch


def test_clients_get_a_handoff_frame_after_jitter_then_backup_ends() -> None:
    """Step 4 sends HANDOFF with a token after the jitter; step 5 demotes the source and reports."""
    cluster = handed_over(handoff_notify_jitter_ms=0)
    assert cluster.take("c1", Handoff) == []
    cluster.router.advance(ms=0)
    (frame,) = cluster.take("c1", Handoff)
    assert (frame.session_id, frame.parts, frame.map_version) == (
        SESSION,
        ("counter",),
        cluster.map.version,
    )
    assert frame.reason is ReasonCode.PREDICTED_FAILURE
    assert frame.flags & HandoffFlag.MAKE_BEFORE_BREAK_REQUIRED
    assert [target.server_id for target in frame.targets] == ["s2"]
    assert frame.current.server_id == "s1"
    claims = sealer().open(frame.token, now_us=cluster.router.now_us)
    assert (claims.target_server, claims.parts, claims.session_id) == ("s2", ("counter",), SESSION)
    (sent,) = cluster.events("s1", ClientHandedOff)
    assert sent.sequence == frame.sequence
    cluster.router.advance(ms=4999)
    assert state(cluster, "s1") is PartState.BACKUP
    cluster.router.advance(ms=1)
    assert state(cluster, "s1") is PartState.REPLICA
    steps = [e.step for e in cluster.events("s1", HandoffStepCompleted)]
    assert steps == [3, 4, 5]
    completed = [m for m in cluster.take(MANAGER, HandoffCompleted) if m.server_id == "s1"]
    assert [m.handoff_id for m in completed] == [77]


def test_source_drops_the_part_when_the_new_map_does_not_list_it() -> None:
    """After the backup period a source that is no replica in the new map forgets the part."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s3")
    cluster.request("s1", "counter")
    cluster.place("counter", "s2", "s3")
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    cluster.router.advance(ms=6000)
    assert state(cluster, "s1") is None
    assert state(cluster, "s2") is PartState.PRIMARY


def test_requests_during_handoff_are_forwarded_and_answered() -> None:
    """A request reaching the backup source runs on the target, the answer comes back via s1."""
    cluster = handed_over()
    request_id = cluster.request("s1", "counter", payload=b"10")
    (response,) = cluster.responses()
    assert (response.request_id, response.payload) == (request_id, b"13")
    (forwarded,) = cluster.router.sent(RequestForwarded, source="s1")
    assert (forwarded.hops, forwarded.map_version) == (1, cluster.map.version)
    assert cluster.router.sent(ResponseForwarded, source="s2")
    executed = cluster.events("s2", RequestExecuted)
    assert [(e.request_id, e.log_index) for e in executed] == [(request_id, 4)]
    assert not [e for e in cluster.events("s1", RequestExecuted) if e.request_id == request_id]
    (ack,) = [e for e in cluster.events("s2", WriteAcknowledged) if e.request_id == request_id]
    assert (ack.client, ack.client_facing) == ("c1", False)
    (relayed,) = [e for e in cluster.events("s1", WriteAcknowledged) if e.request_id == request_id]
    assert relayed.client_facing
    assert (relayed.map_version, relayed.log_index) == (ack.map_version, ack.log_index)


def test_late_client_gets_its_handoff_frame_on_first_forward() -> None:
    """A client that attaches during the backup period is told to move, once."""
    cluster = handed_over()
    cluster.router.advance(ms=30)
    cluster.request("s1", "counter", client="c2")
    cluster.request("s1", "counter", client="c2")
    assert len(cluster.take("c2", Handoff)) == 1
    assert len(cluster.responses("c2")) == 2


def test_forward_hops_are_bounded() -> None:
    """A forwarded request that would exceed forward_hops_max is refused with TRY_AGAIN."""
    cluster = handed_over(forward_hops_max=2)
    cluster.router.send(
        "s9",
        "s1",
        RequestForwarded(
            client="c9",
            request_id=5,
            session_id=SESSION,
            part="counter",
            op="add",
            payload=b"1",
            map_version=cluster.map.version,
            hops=2,
        ),
    )
    (answer,) = cluster.take("s9", ResponseForwarded)
    assert answer.status == ResponseStatus.TRY_AGAIN
    assert answer.client == "c9"


def test_retry_after_handoff_is_answered_from_the_targets_dedup() -> None:
    """A request executed by the source and retried at the target is not executed twice."""
    cluster = handed_over()
    cluster.request("s2", "counter", request_id=2)
    (response,) = cluster.responses()
    assert response.payload == b"2"
    assert cluster.events("s2", RequestExecuted) == []


def test_forwarded_request_retried_at_target_executes_once() -> None:
    """The client re-sends at the target what the source forwarded: one execution."""
    cluster = handed_over()
    request_id = cluster.request("s1", "counter", payload=b"5")
    cluster.request("s2", "counter", payload=b"5", request_id=request_id)
    first, second = cluster.responses()
    assert first.payload == second.payload == b"8"
    assert len(cluster.events("s2", RequestExecuted)) == 1


def test_target_queues_requests_until_the_seal_arrives() -> None:
    """While RECEIVING, the target queues requests and runs them in order after the seal."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.responses()
    cut = cluster.router.partition("s1", "s2")
    cluster.place("counter", "s2", "s1")
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    assert state(cluster, "s2") is PartState.RECEIVING
    first = cluster.request("s2", "counter", payload=b"10")
    second = cluster.request("s2", "counter", payload=b"100")
    assert cluster.responses() == []
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    responses = cluster.responses()
    assert [(r.request_id, r.payload) for r in responses] == [(first, b"11"), (second, b"111")]


def test_receiving_queue_is_bounded() -> None:
    """Beyond receiving_queue_requests_max, requests at a receiving target are OVERLOADED."""
    cluster = Cluster(receiving_queue_requests_max=1)
    cluster.place("counter", "s1", "s2")
    cluster.router.partition("s1", "s2")
    cluster.place("counter", "s2", "s1")
    cluster.request("s2", "counter")
    cluster.request("s2", "counter")
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.OVERLOADED


def test_lost_seal_batch_is_resent() -> None:
    """A dropped sealed batch is resent after replication_retry_ms and the handoff completes."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    drops = {"left": 1}

    def drop_first_seal(source: str, destination: str, message: object) -> bool:
        if isinstance(message, LogShipped) and message.sealed and drops["left"]:
            drops["left"] -= 1
            return True
        return False

    cluster.router.filters.append(drop_first_seal)
    cluster.place("counter", "s2", "s1")
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    assert state(cluster, "s1") is PartState.HANDING_OFF
    cluster.router.advance(ms=600)
    assert state(cluster, "s1") is PartState.BACKUP
    assert state(cluster, "s2") is PartState.PRIMARY


def test_deadline_missed_aborts_and_the_map_reinstates_the_source() -> None:
    """No seal ack by the deadline: ABORTING, HandoffAborted, TRY_AGAIN; a revert map restores."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cut = cluster.router.partition("s1", "s2")
    cluster.place("counter", "s2", "s1")
    cluster.assign_handoff([COUNTER], source="s1", target="s2", deadline_ms=300)
    cluster.router.advance(ms=300)
    assert state(cluster, "s1") is PartState.ABORTING
    (aborted,) = [m for m in cluster.take(MANAGER, HandoffAborted) if m.server_id == "s1"]
    assert (aborted.handoff_id, aborted.server_id, aborted.parts) == (77, "s1", (COUNTER,))
    (missed,) = cluster.events("s1", HandoffStepMissed)
    assert missed.side is HandoffSide.SOURCE
    cluster.responses()
    cluster.request("s1", "counter")
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.TRY_AGAIN
    cluster.router.heal(cut)
    cluster.place("counter", "s1", "s2")
    assert state(cluster, "s1") is PartState.PRIMARY
    assert state(cluster, "s2") is PartState.REPLICA
    cluster.request("s1", "counter", payload=b"5")
    (ok,) = cluster.responses()
    assert (ok.status, ok.payload) == (ResponseStatus.OK, b"6")
    accepted = cluster.events("s1", PrimaryAcceptedWrite)
    assert accepted[-1].map_version == cluster.map.version


def test_an_abort_answers_the_requests_the_source_forwarded() -> None:
    """A request forwarded to a target behind a silent link is answered TRY_AGAIN when the
    handoff aborts at the source, and the target's late answer goes nowhere. Before, it was
    never answered (an answer arriving while the part is ABORTING is dropped), and the client
    waited out its own timeout after the failover had settled the part (found live)."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.responses()
    cut = cluster.router.partition("s1", "s2")
    cluster.place("counter", "s2", "s1")
    cluster.assign_handoff([COUNTER], source="s1", target="s2", deadline_ms=300)
    cluster.request("s1", "counter")
    assert cluster.responses() == []
    cluster.router.advance(ms=300)
    assert state(cluster, "s1") is PartState.ABORTING
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.TRY_AGAIN
    assert refused.request_id == cluster.next_request_id - 1
    cluster.router.heal(cut)
    cluster.router.advance(ms=50)
    assert cluster.responses() == []


def test_target_deadline_reports_abort_and_fails_queued_requests() -> None:
    """A target without the seal by the deadline reports HandoffAborted and answers TRY_AGAIN."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.router.partition("s1", "s2")
    cluster.place("counter", "s2", "s1", to=["s2"])
    cluster.assign_handoff([COUNTER], source="s1", target="s2", deadline_ms=200, to=["s2"])
    cluster.request("s2", "counter")
    cluster.router.advance(ms=200)
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.TRY_AGAIN
    aborted = [m for m in cluster.take(MANAGER, HandoffAborted) if m.server_id == "s2"]
    assert len(aborted) == 1
    assert state(cluster, "s2") is PartState.RECEIVING


def test_handoff_of_a_part_not_primary_here_is_aborted_at_once() -> None:
    """HandoffAssigned naming no part this server is primary of is answered with HandoffAborted."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.assign_handoff([COUNTER], source="s2", target="s3", to=["s2"])
    (aborted,) = cluster.take(MANAGER, HandoffAborted)
    assert aborted.server_id == "s2"


def test_concurrent_handoffs_are_capped() -> None:
    """Beyond handoffs_concurrent_max running source handoffs, a new one is refused."""
    cluster = Cluster(handoffs_concurrent_max=1)
    cluster.place("counter", "s1", "s2")
    cluster.place("counter", "s1", "s2", session=OTHER_SESSION)
    cut = cluster.router.partition("s1", "s2")
    cluster.assign_handoff([COUNTER], source="s1", target="s2", to=["s1"])
    cluster.assign_handoff(
        [ref("counter", OTHER_SESSION)], source="s1", target="s2", handoff_id=78, to=["s1"]
    )
    (aborted,) = cluster.take(MANAGER, HandoffAborted)
    assert (aborted.handoff_id, aborted.detail) == (78, "handoffs_concurrent_max reached")
    cluster.router.heal(cut)


def test_duplicate_handoff_assignment_is_ignored() -> None:
    """The same HandoffAssigned twice starts one procedure."""
    cluster = handed_over()
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    assert len(cluster.events("s1", ClientHandedOff)) == 0
    cluster.router.advance(ms=30)
    assert len(cluster.events("s1", ClientHandedOff)) == 1


# Resume at the target.


def handoff_token(cluster: Cluster) -> bytes:
    """The token of the HANDOFF frame c1 received."""
    cluster.router.advance(ms=20)
    (frame,) = cluster.take("c1", Handoff)
    return frame.token


def resume(
    cluster: Cluster,
    token: bytes,
    *,
    parts: tuple[str, ...] = ("counter",),
    client: str = "c1",
    map_version: int | None = None,
) -> None:
    """Send RESUME from `client` to s2."""
    cluster.router.send(
        client,
        "s2",
        Resume(
            session_id=SESSION,
            token=token,
            parts=parts,
            map_version=cluster.map.version if map_version is None else map_version,
        ),
    )


def test_resume_with_the_handoff_token_is_accepted_once() -> None:
    """The token opens once at the target; a second use is TOKEN_REPLAYED."""
    cluster = handed_over()
    token = handoff_token(cluster)
    resume(cluster, token)
    (ok,) = cluster.take("c1", ResumeOk)
    assert (ok.parts, ok.map_version) == (("counter",), cluster.map.version)
    (accepted,) = cluster.events("s2", ResumeAccepted)
    assert accepted.client == "c1"
    resume(cluster, token, client="c2")
    (reject,) = cluster.take("c2", ResumeReject)
    assert reject.reason is ResumeRejectReason.TOKEN_REPLAYED


def test_resumed_client_gets_handoff_when_the_part_moves_again() -> None:
    """RESUME attaches the client to the session at the target, so the next handoff reaches it."""
    cluster = handed_over()
    resume(cluster, handoff_token(cluster), client="c7")
    cluster.take("c7", ResumeOk)
    cluster.router.advance(ms=6000)
    cluster.place("counter", "s3", "s2")
    cluster.assign_handoff([COUNTER], source="s2", target="s3", handoff_id=78)
    cluster.router.advance(ms=30)
    frames = cluster.take("c7", Handoff)
    assert [frame.targets[0].server_id for frame in frames] == ["s3"]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ("garbage", ResumeRejectReason.TOKEN_INVALID),
        ("expired", ResumeRejectReason.TOKEN_EXPIRED),
        ("wrong_part", ResumeRejectReason.WRONG_PART),
        ("wrong_server", ResumeRejectReason.WRONG_SERVER),
        ("stale", ResumeRejectReason.SHARD_MAP_STALE),
        ("unknown_session", ResumeRejectReason.SESSION_UNKNOWN),
    ],
)
def test_bad_resumes_are_rejected_with_a_reason(mutate: str, reason: ResumeRejectReason) -> None:
    """Each way a RESUME can be wrong maps to its RESUME_REJECT reason."""
    cluster = handed_over()
    cluster.router.advance(ms=20)
    now = cluster.router.now_us
    claims = TokenClaims(
        session_id=SESSION,
        parts=("counter",),
        target_server="s2",
        map_version=cluster.map.version,
        expires_us=now + 10_000_000,
        nonce=1234,
    )
    session = SESSION
    if mutate == "expired":
        claims = msgspec.structs.replace(claims, expires_us=now)
    elif mutate == "wrong_server":
        claims = msgspec.structs.replace(claims, target_server="s3")
    elif mutate == "stale":
        claims = msgspec.structs.replace(claims, map_version=1)
    elif mutate == "unknown_session":
        claims = msgspec.structs.replace(claims, session_id=OTHER_SESSION)
        session = OTHER_SESSION
    token = b"\x01garbage" if mutate == "garbage" else sealer(5).seal(claims)
    parts = ("counter", "ledger") if mutate == "wrong_part" else ("counter",)
    cluster.router.send(
        "c3",
        "s2",
        Resume(
            session_id=session,
            token=token,
            parts=parts,
            map_version=1 if mutate == "stale" else cluster.map.version,
        ),
    )
    (reject,) = cluster.take("c3", ResumeReject)
    assert reject.reason is reason


def test_responses_through_the_source_reach_the_right_client() -> None:
    """Two clients' forwarded requests are each answered to their sender."""
    cluster = handed_over()
    cluster.request("s1", "counter", client="c1", payload=b"1")
    cluster.request("s1", "counter", client="c2", payload=b"2")
    assert [r.payload for r in cluster.take("c1", Response)] == [b"4"]
    assert [r.payload for r in cluster.take("c2", Response)] == [b"6"]


def test_forwarded_request_fails_over_to_try_again_when_the_target_is_lost() -> None:
    """A forward whose target connection breaks is answered TRY_AGAIN so the client retries."""
    cluster = handed_over()
    cluster.router.partition("s1", "s2")
    cluster.request("s1", "counter")
    assert cluster.responses() == []
    cluster.router.disconnect("s1", "s2")
    (response,) = cluster.responses()
    assert response.status is ResponseStatus.TRY_AGAIN


def test_unanswered_forwards_are_answered_try_again_after_their_timeout() -> None:
    """A forward its target does not answer in `forwarded_request_timeout_ms` is answered
    TRY_AGAIN (a silent link reports no lost connection) and leaves the table; the target's
    answer after that goes nowhere. Before, it was forgotten without an answer."""
    cluster = handed_over(forwarded_request_timeout_ms=300, backup_period_ms=10_000)
    cut = cluster.router.partition("s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=299)
    cluster.router.heal(cut)
    late = ResponseForwarded(
        client="c1",
        request_id=cluster.next_request_id - 1,
        session_id=SESSION,
        status=0,
        map_version=cluster.map.version,
        payload=b"late",
    )
    cluster.router.send("s2", "s1", late)
    assert [response.payload for response in cluster.responses()] == [b"late"]
    cut = cluster.router.partition("s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=301)
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.TRY_AGAIN
    assert refused.request_id == cluster.next_request_id - 1
    cluster.router.heal(cut)
    cluster.router.send(
        "s2",
        "s1",
        ResponseForwarded(
            client="c1",
            request_id=cluster.next_request_id - 1,
            session_id=SESSION,
            status=0,
            map_version=cluster.map.version,
            payload=b"late",
        ),
    )
    assert cluster.responses() == []


def test_implicit_runs_named_by_one_handoff_report_it_completed_once() -> None:
    """A map that moved two parts reached the source before the manager's assignment: one
    implicit run per part, both named by the handoff. The manager hears `HandoffCompleted`
    once, when the last of them ends its backup period, not when the first does."""
    cluster = Cluster(handoff_notify_jitter_ms=0)
    ledger = ref("ledger")
    cluster.place("counter", "s1", "s2", "s3")
    cluster.place("ledger", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.request("s1", "ledger")
    cluster.responses()
    cluster.router.advance(ms=50)
    operations = [
        operation
        for part in ("counter", "ledger")
        for operation in cluster.map.override_placement(
            PartKey(session_id=SESSION, part=part), Placement(primary="s2", replicas=("s1", "s3"))
        ).operations
    ]
    cluster.publish(*operations)
    cluster.assign_handoff([COUNTER, ledger], source="s1", target="s2")
    cluster.router.advance(ms=6000)
    assert (state(cluster, "s1"), state(cluster, "s2")) == (PartState.REPLICA, PartState.PRIMARY)
    completed = [m for m in cluster.take(MANAGER, HandoffCompleted) if m.server_id == "s1"]
    assert [m.handoff_id for m in completed] == [77]
    assert set(completed[0].parts) == {COUNTER, ledger}
