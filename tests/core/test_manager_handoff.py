"""Tests of the manager's handoff orchestration: targets, commits, reports, caps, jitter, risk."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from forehand.core._manager_events import (
    FailoverCompleted,
    FailoverStarted,
    HandoffAborted,
    HandoffCompleted,
    HandoffOutcome,
    HandoffStarted,
    MapChange,
    MapCommitted,
    MovesDropped,
    RiskFlagged,
    ServerNotHearing,
)
from forehand.core._manager_failover import _choose
from forehand.core._manager_risk import RiskDecision
from forehand.core._membership import MemberState
from forehand.core._orchestrator import HandoffPhase
from forehand.core.messages import (
    FailoverPrepared,
    HandoffAssigned,
    HandoffRequested,
    LoadReport,
    PartProgress,
    PartRef,
    PartRole,
    PositionsReported,
)
from forehand.core.messages import (
    HandoffAborted as HandoffAbortedMessage,
)
from forehand.core.messages import (
    HandoffCompleted as HandoffCompletedMessage,
)
from forehand.core.messages import (
    HeartbeatReported as HeartbeatReportedMessage,
)
from forehand.wire import ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import IDLE, MANAGER, ManagerHarness, opened_refs
else:
    from _manager_helpers import IDLE, MANAGER, ManagerHarness, opened_refs

SERVERS = ("s1", "s2", "s3", "s4")
PARTS = ("auth", "cart", "feed", "chat", "mail", "pay", "game", "news")


def cluster(**overrides: Any) -> tuple[ManagerHarness, list[PartRef]]:
    """Four servers, one session of eight parts."""
    harness = ManagerHarness(**overrides)
    harness.join(*SERVERS)
    opened = harness.open_session(PARTS)
    assert opened is not None
    return harness, opened_refs(opened)


def ask(harness: ManagerHarness, source: str, *refs: PartRef, reason: ReasonCode) -> None:
    """Handoff step 1 from the source itself."""
    message = HandoffRequested(server_id=source, parts=tuple(refs), reason=int(reason))
    harness.router.send(source, MANAGER, message)


def report_done(harness: ManagerHarness, assigned: HandoffAssigned, by: str) -> None:
    message = HandoffCompletedMessage(
        handoff_id=assigned.handoff_id, server_id=by, parts=assigned.parts
    )
    harness.router.send(by, MANAGER, message)


def progress(ref: PartRef, seq: int, role: PartRole = PartRole.REPLICA) -> PartProgress:
    return PartProgress(ref=ref, role=role, applied_seq=seq, epoch=1)


def busiest(harness: ManagerHarness) -> str:
    """The server with the most primaries (so tests have parts to move)."""
    return max(SERVERS, key=lambda s: (len(harness.primaries(s)), s))


def test_a_requested_handoff_commits_the_target_and_tells_both_sides() -> None:
    """Step 1 -> step 2: override committed, HandoffAssigned with a deadline to both sides."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    before = harness.placement(ref)
    ask(harness, source, ref, reason=ReasonCode.PREDICTED_FAILURE)
    (assigned,) = harness.take(source, HandoffAssigned)
    assert harness.take(assigned.target, HandoffAssigned) == [assigned]
    assert assigned.parts == (ref,) and assigned.source == source
    assert assigned.target in before.replicas
    assert assigned.reason == ReasonCode.PREDICTED_FAILURE
    assert assigned.deadline_ms == harness.config.handoff_deadline_ms
    assert assigned.map_version == harness.map.version
    after = harness.placement(ref)
    assert after.primary == assigned.target and source in after.replicas
    (started,) = harness.events(HandoffStarted)
    assert started.handoff_id == assigned.handoff_id and started.target == assigned.target
    assert harness.events(MapCommitted)[-1].change is MapChange.HANDOFF_ASSIGNED


def test_the_up_to_date_replica_is_preferred() -> None:
    """Of two replicas, the one within target_lag_entries_max of the source is chosen."""
    harness, _ = cluster(target_lag_entries_max=10)
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    first, second = harness.placement(ref).replicas
    harness.heartbeat(source, parts=(progress(ref, 100, PartRole.PRIMARY),))
    harness.heartbeat(first, parts=(progress(ref, 50),))
    harness.heartbeat(second, parts=(progress(ref, 95),))
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    assert assigned.target == second


def test_a_replica_without_headroom_is_passed_over() -> None:
    """A replica reporting CPU above target_cpu_utilization_max is not a target."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    first, second = harness.placement(ref).replicas
    harness.heartbeat(first, cpu=0.8)
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    assert assigned.target == second


def test_no_replica_fits_so_another_server_with_headroom_takes_it() -> None:
    """With both replicas overloaded the only other server becomes the target."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    replicas = harness.placement(ref).replicas
    for replica in replicas:
        harness.heartbeat(replica, cpu=0.8)
    (other,) = [s for s in SERVERS if s != source and s not in replicas]
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    assert assigned.target == other


def test_the_source_report_ends_the_handoff_with_durations() -> None:
    """The target's report ends step 3 only; the source's, after its backup, ends the handoff."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.PREDICTED_FAILURE)
    (assigned,) = harness.take(source, HandoffAssigned)
    harness.router.advance(ms=40)
    report_done(harness, assigned, assigned.target)
    assert harness.events(HandoffCompleted) == []
    (handoff,) = harness.manager.orchestrator.handoffs()
    assert handoff.phase is HandoffPhase.BACKING_UP
    harness.router.advance(ms=200)
    report_done(harness, assigned, source)
    (done,) = harness.events(HandoffCompleted)
    assert done.handoff_id == assigned.handoff_id and done.reported_by == source
    assert (done.commit_us, done.target_us, done.duration_us) == (0, 40_000, 240_000)
    assert harness.manager.orchestrator.handoffs() == []
    # A late report changes nothing.
    report_done(harness, assigned, assigned.target)
    assert len(harness.events(HandoffCompleted)) == 1


def test_the_source_report_alone_ends_the_handoff() -> None:
    """The target's report was lost: the source reports only after its seals were acknowledged."""
    harness, _ = cluster()
    source = busiest(harness)
    ask(harness, source, harness.primaries(source)[0], reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    report_done(harness, assigned, source)
    (done,) = harness.events(HandoffCompleted)
    assert done.reported_by == source and done.target_us is None


def test_a_silent_source_after_the_target_report_completes_at_the_timeout() -> None:
    """Target reported, source silent past handoff_backup_report_timeout_ms: completed anyway."""
    harness, _ = cluster(handoff_backup_report_timeout_ms=3_000)
    source = busiest(harness)
    ask(harness, source, harness.primaries(source)[0], reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    report_done(harness, assigned, assigned.target)
    harness.tick(2_900, alive=SERVERS)
    assert harness.events(HandoffCompleted) == []
    assert harness.manager.orchestrator.is_moving(assigned.parts[0])
    harness.tick(200, alive=SERVERS)
    (done,) = harness.events(HandoffCompleted)
    assert done.reported_by == assigned.target
    assert harness.events(HandoffAborted) == [] and harness.events(FailoverStarted) == []
    assert not harness.manager.orchestrator.is_moving(assigned.parts[0])


def test_the_source_dying_in_its_backup_period_completes_the_handoff() -> None:
    """Once the target serves, the source's death ends the handoff as completed, no failover."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.PREDICTED_FAILURE)
    (assigned,) = harness.take(source, HandoffAssigned)
    report_done(harness, assigned, assigned.target)
    harness.tick(700, alive=[s for s in SERVERS if s != source])
    (done,) = harness.events(HandoffCompleted)
    assert done.reported_by == assigned.target
    assert harness.events(HandoffAborted) == []
    assert harness.placement(ref).primary == assigned.target
    # The dead source's own parts fail over; the moved part, served by the target, does not.
    prepared = [p for s in SERVERS for p in harness.take(s, FailoverPrepared)]
    assert all(ref not in p.parts for p in prepared)


def test_the_target_dying_in_the_backup_period_fails_over() -> None:
    """The target's death after its report still fails the parts over."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.PREDICTED_FAILURE)
    (assigned,) = harness.take(source, HandoffAssigned)
    report_done(harness, assigned, assigned.target)
    harness.tick(700, alive=[s for s in SERVERS if s != assigned.target])
    (event,) = harness.events(HandoffAborted)
    assert event.outcome is HandoffOutcome.FAILED_OVER and assigned.target in event.cause
    assert harness.events(HandoffCompleted) == []


def _abort_and_report(harness: ManagerHarness, source_seq: int, target_seq: int) -> PartRef:
    """Abort a handoff from its source; both sides report the given positions when fenced."""
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    aborted = HandoffAbortedMessage(
        handoff_id=assigned.handoff_id, server_id=source, parts=(ref,), detail="seal not acked"
    )
    harness.router.send(source, MANAGER, aborted)
    (event,) = harness.events(HandoffAborted)
    assert event.outcome is HandoffOutcome.FAILED_OVER and "seal not acked" in event.cause
    fenced = {s: p for s in SERVERS for p in harness.take(s, FailoverPrepared) if ref in p.parts}
    assert {source, assigned.target} <= set(fenced)
    seqs = {source: source_seq, assigned.target: target_seq}
    for server_id, prepared in sorted(fenced.items()):
        harness.positions(server_id, prepared.map_version, {ref: seqs.get(server_id, 0)})
    return ref


def test_an_abort_fences_both_sides_and_the_source_keeps_its_longer_log() -> None:
    """Abort: no blind revert; both sides are fenced and the source, ahead, is primary again."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = _abort_and_report(harness, source_seq=7, target_seq=3)
    assert harness.placement(ref).primary == source
    assert harness.events(MapCommitted)[-1].change is MapChange.FAILOVER
    # No server died: the failover names the handoff's source (the audit record's source).
    (completed,) = harness.events(FailoverCompleted)
    assert completed.servers == () and completed.handoff_sources == (source,)


def test_an_abort_after_the_target_took_over_keeps_the_target() -> None:
    """The seal reached the target (only its ack was lost) and it wrote more: it stays primary."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = _abort_and_report(harness, source_seq=7, target_seq=9)
    assert harness.placement(ref).primary != source


def _target_aborts(
    harness: ManagerHarness, beat: Callable[[PartRef], tuple[PartProgress, ...]]
) -> tuple[str, PartRef, HandoffAssigned, dict[str, FailoverPrepared]]:
    """A handoff off the busiest server, whose source then heartbeats `beat(ref)` and whose
    target aborts it (no sealed log by its deadline): the source, the part, the assignment and
    the fences sent for the part (to both sides at least)."""
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    harness.heartbeat(source, parts=beat(ref))
    aborted = HandoffAbortedMessage(
        handoff_id=assigned.handoff_id,
        server_id=assigned.target,
        parts=(ref,),
        detail="deadline passed without the sealed log",
    )
    harness.router.send(assigned.target, MANAGER, aborted)
    fenced = {s: p for s in SERVERS for p in harness.take(s, FailoverPrepared) if ref in p.parts}
    assert {source, assigned.target} <= set(fenced)
    return source, ref, assigned, fenced


def test_an_abort_keeps_a_source_whose_heartbeats_show_it_ahead_though_it_never_answered() -> None:
    """The target aborts (no sealed log by its deadline) while the manager's messages to the
    source are lost (a one-way partition): the source never heard of the handoff nor of the
    failover's fence, and kept serving. Its heartbeats still say how far it is, far ahead of the
    fenced answers, so it stays primary. Before, every answer ranked first and the target, 107
    entries behind, was promoted: the source's acknowledged writes were lost when it healed
    (found live, a drain under a one-way partition)."""
    harness, _ = cluster()
    source, ref, _, fenced = _target_aborts(
        harness, lambda ref: (progress(ref, 224, PartRole.PRIMARY),)
    )
    for server_id, prepared in sorted(fenced.items()):
        if server_id != source:
            harness.positions(server_id, prepared.map_version, {ref: 117})
    harness.tick(1_000, alive=SERVERS)
    (completed,) = harness.events(FailoverCompleted)
    (promoted,) = [p for p in completed.promotions if p.ref == ref]
    assert promoted.primary == source and promoted.applied_seq == 224
    assert harness.placement(ref).primary == source
    # An answer still wins a tie with a heartbeat: it is fresh, and fenced.
    assert _choose([("quiet", 0, 117, False), ("answered", 0, 117, True)]) == ("answered", 117)


def _target_aborts_the_source_silent(
    harness: ManagerHarness, target_seq: int, target_epoch: int | None = None
) -> tuple[str, PartRef, HandoffAssigned]:
    """A handoff's target aborts (no sealed log by its deadline) while the manager's messages
    to the source are lost: the source heartbeats without naming the part (its rotating batch
    left it out) and never answers the fence; every other candidate answers with `target_seq`,
    written at `target_epoch` (the move's map version when None)."""
    source, ref, assigned, fenced = _target_aborts(harness, lambda ref: ())
    moved_at = assigned.map_version
    last_epoch = moved_at if target_epoch is None else target_epoch
    for server_id, prepared in sorted(fenced.items()):
        if server_id != source:
            answer = PartProgress(
                ref=ref,
                role=PartRole.REPLICA,
                applied_seq=target_seq,
                epoch=moved_at,
                last_epoch=last_epoch,
            )
            message = PositionsReported(
                server_id=server_id, map_version=prepared.map_version, parts=(answer,)
            )
            harness.router.send(server_id, MANAGER, message)
    harness.tick(1_000, alive=SERVERS)
    return source, ref, assigned


def test_a_failed_handoff_keeps_its_live_source_of_unknown_position_as_primary() -> None:
    """The source is live (its heartbeats arrive) but silent to the fence, and no candidate
    holds an entry of the move's version: the target never served, so the source may still be
    serving, and stays primary. Before, the target's answer won over a heartbeat that did not
    name the part, while the source kept acknowledging `async` writes on the history the
    failover gave up (`drain-one-way`: 39 writes lost in 16 of 300 seeds)."""
    harness, _ = cluster()
    source, ref, _ = _target_aborts_the_source_silent(harness, target_seq=117, target_epoch=1)
    (completed,) = harness.events(FailoverCompleted)
    (promoted,) = [p for p in completed.promotions if p.ref == ref]
    assert promoted.primary == source
    assert harness.placement(ref).primary == source


def test_a_failed_handoff_whose_target_served_keeps_the_target() -> None:
    """A candidate holds an entry of the move's version: the target served, which it does only
    after applying the source's sealed log, so the silent source has sealed and the usual
    ranking promotes the answer."""
    harness, _ = cluster()
    source, ref, assigned = _target_aborts_the_source_silent(harness, target_seq=117)
    (completed,) = harness.events(FailoverCompleted)
    (promoted,) = [p for p in completed.promotions if p.ref == ref]
    # Every answer is alike; the preference order puts the map's primary, the target, first.
    assert promoted.primary == assigned.target != source
    assert harness.placement(ref).primary == assigned.target


def test_a_server_that_does_not_hear_the_manager_takes_part_in_no_handoff() -> None:
    """A server whose heartbeats arrive but report, for `suspect_timeout_ms`, an older map than
    one sent to it does not hear the manager (a one-way partition): a handoff off it or onto it
    would only fall back to failover at its deadline. Its moves wait in the queue and start once
    it confirms the map. Before, a drain of such a server started handoff after handoff, each
    failing over while the cut lasted, its clients sent to the target and back each time."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    held = harness.manager.map_version
    assert harness.open_session(("auth",), client="c2") is not None
    assert harness.manager.map_version > held
    deaf = {source: held}
    harness.tick(400, alive=SERVERS, holding=deaf)
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    harness.tick(1_000, alive=SERVERS, holding=deaf)
    assert harness.take(source, HandoffAssigned) == []
    assert harness.manager.orchestrator.is_moving(ref)
    # Nor is it a target: a move onto it waits too.
    other = next(s for s in SERVERS if s != source and harness.primaries(s))
    onto = harness.primaries(other)[0]
    assert harness.move(onto, source=other, target=source)
    harness.tick(1_000, alive=SERVERS, holding=deaf)
    assert harness.take(other, HandoffAssigned) == []
    # It confirms the map: both moves start.
    harness.tick(500, alive=SERVERS)
    assigned = harness.take(source, HandoffAssigned)
    assert {ref, onto} <= {part for a in assigned for part in a.parts}
    stopped, again = harness.events(ServerNotHearing)
    assert (stopped.server_id, stopped.hearing, stopped.map_version) == (source, False, held)
    assert stopped.map_version_sent > held and stopped.unconfirmed_us >= 300_000
    assert (again.server_id, again.hearing) == (source, True)
    assert again.unconfirmed_us >= 2_400_000


def test_a_server_silent_both_ways_is_not_reported_not_hearing() -> None:
    """A server silent both ways is the failure detector's: the first heartbeat after the
    partition heals still reports the version it held, and a map sent meanwhile has gone
    unconfirmed past `suspect_timeout_ms`, but one heartbeat is not a server that does not
    hear: the next one confirms the maps, and nothing is reported."""
    harness, _ = cluster()
    source = busiest(harness)
    harness.tick(200, alive=SERVERS)
    held = harness.manager.map_version
    others = [s for s in SERVERS if s != source]
    assert harness.open_session(("auth",), client="c2") is not None
    harness.tick(400, alive=others)
    member = harness.manager._membership.get(source)
    assert member is not None and member.state is MemberState.SUSPECTED
    harness.heartbeat(source, map_version=held)
    harness.tick(300, alive=SERVERS)
    assert harness.events(ServerNotHearing) == []


def test_an_abort_after_the_target_report_fails_the_part_over() -> None:
    """The target reported first: the source's abort still fails the part over, both fenced."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    report_done(harness, assigned, assigned.target)
    aborted = HandoffAbortedMessage(
        handoff_id=assigned.handoff_id, server_id=source, parts=(ref,), detail="seal not acked"
    )
    harness.router.send(source, MANAGER, aborted)
    (started,) = harness.events(FailoverStarted)
    assert started.parts == 1
    fenced = {s for s in SERVERS for p in harness.take(s, FailoverPrepared) if ref in p.parts}
    assert {source, assigned.target} <= fenced


def test_a_stray_abort_of_a_part_only_queued_to_move_fails_it_over() -> None:
    """A server reports an implicit run's abort (handoff id 0) for a part a drain has only
    queued to move: the part fails over, the reporter a candidate. Before, a queued move counted
    as moving and the abort was ignored, while the move could not start (its source held the
    part RECEIVING, not as primary): the part went unserved until the end (found by
    `forehand sim --scenario drain-one-way --seed 17600087`)."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    target = next(s for s in SERVERS if s != source)
    orchestrator = harness.manager.orchestrator
    assert harness.move(ref, source=source, target=target)
    assert orchestrator.is_moving(ref) and orchestrator.handoff_of(ref) is None
    aborted = HandoffAbortedMessage(
        handoff_id=0, server_id=source, parts=(ref,), detail="still unsettled"
    )
    harness.router.send(source, MANAGER, aborted)
    (started,) = harness.events(FailoverStarted)
    assert started.parts == 1


def test_a_report_from_a_stranger_is_ignored() -> None:
    """Only the source or the target may end a handoff."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    stranger = next(s for s in SERVERS if s not in (assigned.source, assigned.target))
    report_done(harness, assigned, stranger)
    assert harness.events(HandoffCompleted) == []


def test_silence_past_the_deadline_falls_back_to_failover() -> None:
    """No report by deadline + grace: the parts go through failover (source included)."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    (assigned,) = harness.take(source, HandoffAssigned)
    harness.tick(1_300, alive=SERVERS)
    (event,) = harness.events(HandoffAborted)
    assert event.outcome is HandoffOutcome.FAILED_OVER and "deadline" in event.cause
    (started,) = harness.events(FailoverStarted)
    assert started.servers == () and started.parts == 1
    fenced = {s for s in SERVERS for p in harness.take(s, FailoverPrepared) if ref in p.parts}
    assert {source, assigned.target} <= fenced


def test_the_source_dying_mid_handoff_falls_back_to_failover() -> None:
    """Source death after the override: HandoffAborted(FAILED_OVER) and a failover of the parts."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    ask(harness, source, ref, reason=ReasonCode.PREDICTED_FAILURE)
    (assigned,) = harness.take(source, HandoffAssigned)
    harness.tick(700, alive=[s for s in SERVERS if s != source])
    (event,) = harness.events(HandoffAborted)
    assert event.outcome is HandoffOutcome.FAILED_OVER and source in event.cause
    (started,) = harness.events(FailoverStarted)
    assert started.servers == (source,)
    prepared = harness.take(assigned.target, FailoverPrepared)
    assert any(ref in p.parts for p in prepared)


def test_per_server_cap_serialises_handoffs_until_the_target_reports() -> None:
    """With handoffs_per_server_max=1 a source transfers one handoff at a time: the next waits
    for the target's report (the transfer done), not for the end of the source's backup period;
    with handoffs_backing_up_per_server_max=2 a third waits for the first to end."""
    harness, _ = cluster(
        handoffs_per_server_max=1, handoff_parts_max=1, handoffs_backing_up_per_server_max=2
    )
    source = busiest(harness)
    refs = harness.primaries(source)[:3]
    assert len(refs) == 3
    ask(harness, source, *refs, reason=ReasonCode.OVERLOAD)
    (first,) = harness.take(source, HandoffAssigned)
    harness.tick(300, alive=SERVERS)
    assert harness.take(source, HandoffAssigned) == []
    report_done(harness, first, first.target)
    harness.tick(300, alive=SERVERS)
    (second,) = harness.take(source, HandoffAssigned)
    report_done(harness, second, second.target)
    harness.tick(300, alive=SERVERS)
    assert harness.take(source, HandoffAssigned) == []
    report_done(harness, first, source)
    harness.tick(300, alive=SERVERS)
    (third,) = harness.take(source, HandoffAssigned)
    assert {first.parts[0], second.parts[0], third.parts[0]} == set(refs)


def test_a_server_whose_app_lacks_the_part_is_never_its_handoff_target() -> None:
    """A server whose heartbeat declares parts without the moving one is no target for it (nor
    when an operator names it): a handoff there answered every call UNKNOWN_OP, and the
    automatic rebalance moved parts there again after each settled interval. A server that
    declares it, or says nothing of its parts, still is."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    lacking = [s for s in SERVERS if s != source]
    for server_id in lacking:
        others = tuple(p for p in PARTS if p != ref.part)
        harness.heartbeat(server_id, declared=others)
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    harness.tick(300, alive=SERVERS)
    harness.tick(300, alive=SERVERS)
    assert harness.take(source, HandoffAssigned) == []
    harness.heartbeat(lacking[1], declared=PARTS)
    harness.tick(300, alive=SERVERS)
    (assigned,) = harness.take(source, HandoffAssigned)
    assert assigned.target == lacking[1] and assigned.parts == (ref,)


def test_parts_of_one_batch_share_a_handoff() -> None:
    """Parts of one source going to the same target move in one HandoffAssigned."""
    harness, _ = cluster()
    source = busiest(harness)
    refs = harness.primaries(source)
    ask(harness, source, *refs, reason=ReasonCode.OVERLOAD)
    assigned = harness.take(source, HandoffAssigned)
    assert sum(len(a.parts) for a in assigned) == len(refs)
    assert len({a.target for a in assigned}) == len(assigned)


def test_batches_are_spread_by_seeded_jitter() -> None:
    """Between batches the manager waits a random pause from its rng; the same seed repeats it."""

    def run(seed: int) -> list[int]:
        harness, _ = cluster(seed=seed, handoff_parts_max=1, handoff_jitter_ms_max=100)
        source = busiest(harness)
        ask(harness, source, *harness.primaries(source), reason=ReasonCode.OVERLOAD)
        harness.tick(1_000, alive=SERVERS)
        return [event.assigned_us for event in harness.events(HandoffStarted)]

    first, again, other = run(3), run(3), run(4)
    assert first == again and len(first) >= 2
    gaps = [b - a for a, b in itertools.pairwise(first)]
    assert all(0 <= gap <= 300_000 for gap in gaps) and any(gap > 0 for gap in gaps)
    assert first != other or len(first) < 2


def test_overload_flags_the_server_once_per_cooldown() -> None:
    """CPU above overload_threshold: RiskFlagged and OVERLOAD handoffs; quiet during cooldown."""
    harness, _ = cluster(overload_cooldown_ms=5_000, overload_parts_fraction=0.5)
    source = busiest(harness)
    primaries = harness.primaries(source)
    harness.heartbeat(source, cpu=0.97)
    (flag,) = harness.events(RiskFlagged)
    assert flag.server_id == source and flag.reason is ReasonCode.OVERLOAD
    assert flag.parts == max(1, -(-len(primaries) // 2))
    assert "cpu_utilization" in flag.detail and flag.load.cpu_utilization == 0.97
    started = harness.events(HandoffStarted)
    assert started and all(e.reason is ReasonCode.OVERLOAD for e in started)
    harness.heartbeat(source)
    assert len(harness.events(RiskFlagged)) == 1
    harness.tick(5_100, alive=SERVERS)
    harness.heartbeat(source)
    assert len(harness.events(RiskFlagged)) == 2


def test_latency_threshold_also_flags() -> None:
    """p99 latency above overload_latency_us_p99 counts as overload."""
    harness, _ = cluster(overload_latency_us_p99=50_000)
    source = busiest(harness)
    harness.heartbeat(source, cpu=0.2, latency_us_p99=80_000)
    (flag,) = harness.events(RiskFlagged)
    assert "latency_us_p99" in flag.detail


class _Predictor:
    """A stand-in predictor: flags one named server as about to fail."""

    def __init__(self, doomed: str) -> None:
        self.doomed = doomed

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        if server_id != self.doomed:
            return None
        self.doomed = ""
        return RiskDecision(
            reason=ReasonCode.PREDICTED_FAILURE, parts_fraction=1.0, detail="predicted"
        )

    def forget(self, server_id: str) -> None:
        """Nothing to forget."""


def test_a_plugged_risk_policy_drives_predicted_failure_handoffs() -> None:
    """The RiskPolicy seam: a predictor moves every primary away with PREDICTED_FAILURE."""
    harness = ManagerHarness(risk_policy=_Predictor("s2"))
    harness.join(*SERVERS)
    harness.open_session(PARTS)
    moving = set(harness.primaries("s2"))
    harness.heartbeat("s2")
    (flag,) = harness.events(RiskFlagged)
    assert flag.reason is ReasonCode.PREDICTED_FAILURE and flag.parts == len(moving)
    assigned = harness.take("s2", HandoffAssigned)
    assert {ref for a in assigned for ref in a.parts} == moving


def test_operator_moves_a_session_to_a_named_target() -> None:
    """handoff(session_id, target) moves every part of the session there."""
    harness, refs = cluster()
    session_id = refs[0].session_id
    elsewhere = [r for r in refs if harness.placement(r).primary != "s3"]
    queued = harness.manager.handoff(session_id, target="s3", now_us=harness.router.now_us)
    assert queued == len(elsewhere)
    for _ in range(len(refs)):
        harness.router.run()
        for server_id in SERVERS:
            for assigned in harness.take(server_id, HandoffAssigned):
                if server_id == assigned.source:
                    report_done(harness, assigned, server_id)
        harness.tick(100, alive=SERVERS)
    for ref in refs:
        assert harness.placement(ref).primary == "s3"


def test_a_whole_move_request_takes_every_primary() -> None:
    """HandoffRequested without parts and PLANNED_MAINTENANCE moves all the source's parts."""
    harness, _ = cluster()
    source = busiest(harness)
    before = set(harness.primaries(source))
    ask(harness, source, reason=ReasonCode.PLANNED_MAINTENANCE)
    moved = {ref for a in harness.take(source, HandoffAssigned) for ref in a.parts}
    assert moved == before
    assert harness.primaries(source) == []


def test_moves_without_a_target_are_dropped_after_the_queue_timeout() -> None:
    """Nobody has headroom: the move waits, then is dropped and reported."""
    harness, _ = cluster(handoff_queue_timeout_ms=1_000)
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    for server_id in SERVERS:
        harness.heartbeat(server_id, cpu=0.8 if server_id != source else 0.5)
    ask(harness, source, ref, reason=ReasonCode.REBALANCE)
    harness.tick(1_200, alive=SERVERS)
    (dropped,) = harness.events(MovesDropped)
    assert dropped.parts == (ref,) and dropped.source == source
    assert harness.events(HandoffStarted) == []


def test_a_server_that_learns_maps_from_a_peer_alone_is_still_not_hearing() -> None:
    """A server cut off from the manager may learn the newest map from a peer (a fenced part
    asks the replica that fenced it): its heartbeats report that map as held, but the newest
    map the manager's own messages brought it (`manager_map_version`) stays behind, and that is
    what confirms the versions sent. It is still not hearing, so no handoff starts off it;
    before, the peer's map would have passed for the manager's."""
    harness, _ = cluster()
    source = busiest(harness)
    ref = harness.primaries(source)[0]
    held = harness.manager.map_version
    assert harness.open_session(("auth",), client="c2") is not None
    others = [s for s in SERVERS if s != source]
    step = harness.config.heartbeat_interval_ms
    for _ in range(400 // step):
        for server_id in others:
            harness.heartbeat(server_id)
        _heartbeat_heard(harness, source, held)
        harness.router.advance(ms=step)
    ask(harness, source, ref, reason=ReasonCode.OVERLOAD)
    for _ in range(1_000 // step):
        for server_id in others:
            harness.heartbeat(server_id)
        _heartbeat_heard(harness, source, held)
        harness.router.advance(ms=step)
    assert harness.take(source, HandoffAssigned) == []
    (stopped,) = harness.events(ServerNotHearing)
    assert (stopped.server_id, stopped.hearing) == (source, False)


def _heartbeat_heard(harness: ManagerHarness, server_id: str, heard: int) -> None:
    """A heartbeat holding the manager's map, of which it heard only `heard` from the manager."""
    harness.sequences[server_id] = harness.sequences.get(server_id, 0) + 1
    message = HeartbeatReportedMessage(
        server_id=server_id,
        incarnation=harness.incarnations.get(server_id, 1),
        sequence=harness.sequences[server_id],
        map_version=harness.manager.map_version,
        manager_map_version=heard,
        load=harness.loads.get(server_id, IDLE),
        parts=(),
    )
    harness.router.send(server_id, MANAGER, message)
