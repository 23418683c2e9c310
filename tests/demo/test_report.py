"""The demo report counts what was recorded, per phase, and fails runs for the right reasons."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from forehand.demo import DemoSummary, Timeline, Verification, percentile, summarize
from forehand.demo._load import CallRecord, HandoffRecord
from forehand.demo._report import LeaveTimeline
from forehand.runtime.client import HandoffEvent, HandoffEventKind
from forehand.wire import ReasonCode

SESSION = bytes(16)
OTHER = bytes(15) + b"\x01"
TIMELINE = Timeline(
    load_started_s=100.0,
    degraded_server="s2",
    degrade_started_s=110.0,
    degrade_stopped_s=140.0,
    killed_server="s3",
    killed_s=150.0,
    load_stopped_s=170.0,
    failover_window_s=10.0,
    killed_parts=frozenset({(SESSION, "cart"), (OTHER, "auth")}),
)
CLEAN = Verification(acknowledged=10, lost=0, unreadable_sessions=0)


def call(
    started_s: float,
    latency_ms: float = 2.0,
    *,
    ok: bool = True,
    part: str = "cart",
    session: bytes = SESSION,
) -> CallRecord:
    return CallRecord(session, started_s, latency_ms, ok, part, "s1", "" if ok else "boom")


def move(
    at_s: float,
    kind: HandoffEventKind,
    *,
    source: str | None = "s2",
    target: str | None = "s1",
    reason: ReasonCode = ReasonCode.OVERLOAD,
    parts: tuple[str, ...] = ("cart",),
    session: bytes = SESSION,
) -> HandoffRecord:
    event = HandoffEvent(
        kind=kind,
        session_id=session,
        parts=parts,
        source=source,
        target=target,
        map_version=7,
        reason=reason,
        duration_us=3000,
    )
    return HandoffRecord(at_s, event)


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 pick observed values; an empty list gives NaN."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([5.0], 0.99) == 5.0
    assert math.isnan(percentile([], 0.5))


def run(
    calls: list[CallRecord],
    handoffs: list[HandoffRecord],
    *,
    verification: Verification = CLEAN,
    breach: float | None = 125.0,
    timeline: Timeline = TIMELINE,
) -> DemoSummary:
    return summarize(
        calls=calls,
        handoffs=handoffs,
        breaches={"s2": breach, "s3": None},
        timeline=timeline,
        verification=verification,
        request_count=len(calls),
        failed_count=sum(not c.ok for c in calls),
    )


def test_calls_go_to_the_window_they_started_in() -> None:
    """Each phase counts its own calls and latency percentiles."""
    calls = [call(105.0, 1.0), call(106.0, 3.0), call(120.0, 40.0), call(145.0), call(152.0, 900.0)]
    summary = run(calls, [move(115.0, HandoffEventKind.COMPLETED)])
    by_name = {w.name: w for w in summary.windows}
    assert by_name["before"].requests == 2
    assert by_name["before"].p99_ms == 3.0
    assert by_name["degrading"].requests == 1
    assert by_name["after degrade"].requests == 1
    assert by_name["failover"].max_ms == 900.0
    assert by_name["after failover"].requests == 0
    assert summary.ok


def test_lead_time_is_the_breach_minus_the_move() -> None:
    """A move 10 s before the source's breach has a 10 s lead; reasons group the moves."""
    handoffs = [
        move(114.0, HandoffEventKind.STARTED),
        move(115.0, HandoffEventKind.COMPLETED),
        move(117.0, HandoffEventKind.COMPLETED, parts=("auth", "feature/video")),
        move(118.0, HandoffEventKind.COMPLETED, source="s4", reason=ReasonCode.PART_MOVED),
    ]
    summary = run([call(105.0)], handoffs)
    overload, moved = summary.handoffs
    assert (overload.source, overload.target, overload.parts) == ("s2", "s1", 3)
    assert overload.lead_s_min == pytest.approx(8.0)
    assert overload.lead_s_median == pytest.approx(9.0)
    assert moved.reason is ReasonCode.PART_MOVED
    assert moved.lead_s_min is None
    assert summary.predicted_parts == 3
    assert summary.breach_s == pytest.approx(25.0)


def test_a_failure_while_predicted_handoffs_run_fails_the_demo() -> None:
    """A failed call between the degradation and the crash fails the run; one after does not."""
    handoffs = [move(115.0, HandoffEventKind.COMPLETED)]
    failed_during = run([call(120.0, ok=False)], handoffs)
    assert not failed_during.ok
    assert failed_during.predicted_failed == 1
    failed_in_crash = run([call(151.0, ok=False)], handoffs)
    assert failed_in_crash.ok
    assert failed_in_crash.failover.failed_requests == 1
    assert failed_in_crash.errors == (("boom", 1),)


def test_no_predicted_handoff_or_a_lost_write_fails_the_demo() -> None:
    """A run without a risk move, or with a lost acknowledged write, is a failed demo."""
    summary = run([call(105.0)], [])
    assert not summary.ok
    assert "no predicted handoff" in summary.problems[0]
    lost = run(
        [call(105.0)],
        [move(115.0, HandoffEventKind.COMPLETED)],
        verification=Verification(acknowledged=10, lost=2, unreadable_sessions=0),
    )
    assert lost.problems == ("2 acknowledged replicated write(s) were lost",)


def test_failover_counts_relocations_to_a_live_primary() -> None:
    """Relocations that still name the dead server do not end the failover; the last that
    names a live one does."""
    handoffs = [
        move(115.0, HandoffEventKind.COMPLETED),
        move(150.2, HandoffEventKind.RELOCATED, source=None, target="s3"),
        move(152.0, HandoffEventKind.RELOCATED, source=None, target="s4"),
        move(
            152.5,
            HandoffEventKind.RELOCATED,
            source=None,
            target="s1",
            parts=("auth",),
            session=OTHER,
        ),
        move(153.0, HandoffEventKind.RELOCATED, source=None, target="s1"),
    ]
    calls = [call(151.0, 1500.0), call(149.0, ok=True, part="auth", session=OTHER)]
    failover = run(calls, handoffs).failover
    assert failover.parts == 2
    assert failover.parts_relocated == 2
    assert failover.failover_s == pytest.approx(2.5)
    assert failover.relocation_s_median == pytest.approx(2.25)
    assert (failover.parts_called, failover.parts_answered) == (1, 1)


def test_the_planned_restart_counts_parts_handed_off_and_fails_on_a_failure_or_no_exit() -> None:
    """After the SIGTERM of s4: its parts handed off and relocated are counted (moves before
    the signal, or of other servers' parts, are not); a call that fails from the signal on, a
    server that did not exit by itself or exited non-zero fails the run; its calls go to the
    `planned restart` window, not the rebalance's."""
    leave = LeaveTimeline(
        server="s4",
        parts=frozenset({(SESSION, "cart"), (OTHER, "auth"), (SESSION, "auth")}),
        signalled_s=180.0,
        exited_s=186.5,
        exit_code=0,
        restarted_s=189.0,
    )
    timeline = replace(
        TIMELINE, restarted_s=165.0, rebalanced_s=166.0, rebalance_queued=5, leave=leave
    )
    handoffs = [
        move(115.0, HandoffEventKind.COMPLETED),
        move(179.0, HandoffEventKind.COMPLETED, source="s4", reason=ReasonCode.REBALANCE),
        move(181.0, HandoffEventKind.COMPLETED, source="s4", parts=("cart", "auth")),
        move(182.0, HandoffEventKind.RELOCATED, source="s4", parts=("auth",), session=OTHER),
        move(183.0, HandoffEventKind.COMPLETED, source="s1", parts=("auth",), session=OTHER),
    ]
    calls = [call(105.0), call(170.0), call(181.0, 30.0), call(190.0)]
    clean = run(calls, handoffs, timeline=replace(timeline, load_stopped_s=195.0))
    assert clean.ok, clean.problems
    moved = clean.leave
    assert moved is not None
    assert (moved.parts, moved.parts_handed_off, moved.parts_relocated) == (3, 2, 1)
    assert moved.exit_s == pytest.approx(6.5)
    by_name = {w.name: w for w in clean.windows}
    assert (by_name["rebalance"].requests, by_name["planned restart"].requests) == (1, 2)
    failed = run(
        [*calls, call(184.0, ok=False)], handoffs, timeline=replace(timeline, load_stopped_s=195.0)
    )
    assert failed.problems == ("1 request(s) failed after the SIGTERM of s4",)
    assert failed.rebalance_failed == 0
    stuck = run(
        calls,
        handoffs,
        timeline=replace(timeline, load_stopped_s=195.0, leave=replace(leave, exit_code=None)),
    )
    assert stuck.problems == ("s4 did not exit by itself after SIGTERM",)
    status = run(
        calls,
        handoffs,
        timeline=replace(timeline, load_stopped_s=195.0, leave=replace(leave, exit_code=3)),
    )
    assert status.problems == ("s4 exited with status 3 after SIGTERM",)
    kept = run(
        calls,
        handoffs,
        timeline=replace(timeline, load_stopped_s=195.0, leave=replace(leave, left_map=False)),
    )
    assert kept.problems == (
        "the manager did not take s4 out of its map when it left"
        " (its silence would be failed over instead)",
    )
    assert run(
        calls,
        handoffs,
        timeline=replace(timeline, load_stopped_s=195.0, leave=replace(leave, left_map=True)),
    ).ok
