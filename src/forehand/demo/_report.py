"""The demo's final report: latency per phase, handoffs with lead times, failover, lost writes.

Everything here is computed from what the demo recorded (calls, handoff events, the probes'
breach times, the timeline of what it did), after the run; nothing is estimated. Phases:

| window | from | to |
|---|---|---|
| before | the load starts (after a settling margin) | the degradation starts |
| degrading | SIGUSR1 starts the CPU burner | the burner is stopped |
| after degrade | the burner stops | SIGKILL |
| failover | SIGKILL | `failover_window_s` later |
| after failover | then | the rebalance is asked for (the killed server started again first) |
| rebalance | the rebalance is asked for | SIGTERM of the server stopped the planned way |
| planned restart | SIGTERM (it hands its parts off, exits, and is started again) | the load stops |

A call belongs to the window in which it started. A *predicted handoff* is a handoff whose
reason came from the manager's risk input (OVERLOAD or PREDICTED_FAILURE); its lead time is the
degraded server's SLO breach (dated by the probe, `forehand.demo._probe`) minus the moment the
client completed the move; positive means the part left before the breach. Predicted handoffs
may run from the degradation until the crash, so a call that started in that span and failed
fails the demo. The failover time is the time from the SIGKILL until the clients knew a live
primary for the last of the killed server's primary parts. The rebalance hands the restarted
server its share by planned handoffs (reason REBALANCE): a call that started while it ran and
failed fails the demo, and so does a rebalance that queued nothing. The planned restart is a
rolling restart's step: SIGTERM makes the server hand its parts off before it exits (its
leave), then it is started again; a call that started from the SIGTERM on and failed fails the
demo, and so does a server that did not exit by itself, or exited with a non-zero status.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from forehand.demo._load import CallRecord, HandoffRecord, Verification
from forehand.runtime.client import HandoffEventKind
from forehand.wire import ReasonCode

__all__ = [
    "DemoSummary",
    "FailoverSummary",
    "HandoffGroup",
    "LeaveSummary",
    "LeaveTimeline",
    "Timeline",
    "WindowStats",
    "percentile",
    "print_report",
    "summarize",
]

PREDICTED_REASONS = frozenset({ReasonCode.OVERLOAD, ReasonCode.PREDICTED_FAILURE})
"""Reasons the manager's risk input gives its moves."""
SETTLING_MARGIN_S = 2.0
"""The first seconds of load (connections warming up) are left out of the `before` window."""
ERRORS_LISTED_MAX = 5
"""Distinct failure messages shown in the report."""


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (sorted or not); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveTimeline:
    """The planned restart: SIGTERM, exit, start again (loop times, seconds)."""

    server: str
    """The server stopped with SIGTERM."""
    parts: frozenset[tuple[bytes, str]]
    """(session id, part) of the parts whose primary it was at the SIGTERM."""
    signalled_s: float
    """SIGTERM was sent."""
    exited_s: float
    """It exited (or the demo gave up waiting and killed it)."""
    exit_code: int | None
    """Its exit status; None when it did not exit by itself."""
    restarted_s: float
    """It was ACTIVE again."""
    left_map: bool | None = None
    """Whether the manager had taken it out of its map (dead, cause `left`: no failover) within
    `LEFT_MAP_WAIT_S` of its exit; None when not asked (it did not exit by itself)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeline:
    """What the demo did, when (loop times, seconds)."""

    load_started_s: float
    """The sessions started issuing requests."""
    degraded_server: str
    """The server the CPU burner ran in."""
    degrade_started_s: float
    """SIGUSR1 was sent to it."""
    degrade_stopped_s: float
    """SIGUSR2 was sent to it."""
    killed_server: str
    """The server that was SIGKILLed."""
    killed_s: float
    """When."""
    load_stopped_s: float
    """The sessions stopped issuing."""
    failover_window_s: float
    """How long after the SIGKILL counts as the failover window."""
    killed_parts: frozenset[tuple[bytes, str]] = frozenset()
    """(session id, part) of the parts whose primary was the killed server."""
    restarted_s: float | None = None
    """The killed server was ACTIVE again (a new incarnation), if it was started again."""
    rebalanced_s: float | None = None
    """The rebalance was asked for, if it was."""
    rebalance_queued: int = 0
    """Parts the rebalance queued for planned handoffs."""
    leave: LeaveTimeline | None = None
    """The planned restart, if there was one."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowStats:
    """The calls that started in one window."""

    name: str
    """The window."""
    start_s: float
    """Its start, seconds after the load started."""
    end_s: float
    """Its end, seconds after the load started."""
    requests: int
    """Calls."""
    failed: int
    """Calls that failed."""
    p50_ms: float
    """Median latency of the successful calls."""
    p99_ms: float
    """99th percentile latency of the successful calls."""
    max_ms: float
    """Slowest successful call."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffGroup:
    """The moves of parts from one server to another, for one reason."""

    source: str
    """The server the parts left."""
    target: str
    """The server they went to."""
    reason: ReasonCode
    """The reason in the HANDOFF."""
    parts: int
    """Parts moved (per session: a HANDOFF names a session's parts on the source)."""
    first_s: float
    """First completed move, seconds after the load started."""
    last_s: float
    """Last completed move."""
    duration_ms_median: float
    """Median time from HANDOFF to RESUME_OK at the client."""
    lead_s_min: float | None
    """Source's SLO breach minus the last move; None when the source never breached."""
    lead_s_median: float | None
    """Source's SLO breach minus the median move."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverSummary:
    """The reactive failover after the SIGKILL."""

    server: str
    """The killed server."""
    parts: int
    """Parts whose primary it was."""
    parts_relocated: int
    """Of those, parts the clients relocated (the manager named a new primary) after it."""
    failover_s: float | None
    """From the SIGKILL to the last of those relocations; None when none happened."""
    relocation_s_median: float | None
    """Median, over those parts, from the SIGKILL to their relocation."""
    parts_called: int
    """Of those parts, how many were called after the SIGKILL."""
    parts_answered: int
    """Of those, how many answered a call successfully afterwards."""
    failed_requests: int
    """Calls started in the failover window that failed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveSummary:
    """The planned restart: how the parts of the server stopped with SIGTERM moved."""

    server: str
    """The server."""
    parts: int
    """Parts whose primary it was at the SIGTERM."""
    parts_handed_off: int
    """Of those, parts the clients completed a handoff of (HANDOFF, then RESUME_OK)."""
    parts_relocated: int
    """Of those, parts the clients learned the new primary of otherwise (after a lost
    connection, a REDIRECT, or a newer map)."""
    exit_s: float
    """From the SIGTERM to its exit."""
    exit_code: int | None
    """Its exit status; None when it did not exit by itself."""
    failed_requests: int
    """Calls started from the SIGTERM on that failed."""
    left_map: bool | None = None
    """Whether the manager took it out of its map at its exit (`LeaveTimeline.left_map`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoSummary:
    """The whole report, and its verdict."""

    requests: int
    """Calls made."""
    failed: int
    """Calls that failed."""
    windows: tuple[WindowStats, ...]
    """Latency per phase."""
    handoffs: tuple[HandoffGroup, ...]
    """Every handoff, grouped."""
    predicted_parts: int
    """Parts moved for a risk reason."""
    predicted_failed: int
    """Calls that started while predicted handoffs ran (from the degradation to the crash) and
    failed."""
    breach_s: float | None
    """The degraded server's SLO breach, seconds after the load started."""
    failover: FailoverSummary
    """The crash."""
    rebalance_parts: int = 0
    """Parts moved with reason REBALANCE (as the clients completed them)."""
    rebalance_parts_to_restarted: int = 0
    """Of those, parts handed to the restarted server."""
    rebalance_failed: int = 0
    """Calls that started while the rebalance ran and failed."""
    leave: LeaveSummary | None = None
    """The planned restart, if there was one."""
    verification: Verification
    """Acknowledged writes read back."""
    errors: tuple[tuple[str, int], ...]
    """The most frequent failure messages, with counts."""
    problems: tuple[str, ...] = field(default=())
    """Why the demo failed; empty when it succeeded."""

    @property
    def ok(self) -> bool:
        """Whether the demo showed what it should."""
        return not self.problems


def _windows(timeline: Timeline) -> list[tuple[str, float, float]]:
    t = timeline
    failover_end_s = min(t.killed_s + t.failover_window_s, t.load_stopped_s)
    windows = [
        ("before", t.load_started_s + SETTLING_MARGIN_S, t.degrade_started_s),
        ("degrading", t.degrade_started_s, t.degrade_stopped_s),
        ("after degrade", t.degrade_stopped_s, t.killed_s),
        ("failover", t.killed_s, failover_end_s),
    ]
    if t.rebalanced_s is None:
        return [*windows, ("after failover", failover_end_s, t.load_stopped_s)]
    if t.leave is None:
        return [
            *windows,
            ("after failover", failover_end_s, t.rebalanced_s),
            ("rebalance", t.rebalanced_s, t.load_stopped_s),
        ]
    return [
        *windows,
        ("after failover", failover_end_s, t.rebalanced_s),
        ("rebalance", t.rebalanced_s, t.leave.signalled_s),
        ("planned restart", t.leave.signalled_s, t.load_stopped_s),
    ]


def _window_stats(
    calls: Sequence[CallRecord], name: str, start_s: float, end_s: float, origin_s: float
) -> WindowStats:
    inside = [call for call in calls if start_s <= call.started_s < end_s]
    latencies = [call.latency_ms for call in inside if call.ok]
    return WindowStats(
        name=name,
        start_s=start_s - origin_s,
        end_s=end_s - origin_s,
        requests=len(inside),
        failed=sum(1 for call in inside if not call.ok),
        p50_ms=percentile(latencies, 0.5),
        p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies, default=float("nan")),
    )


def _handoff_groups(
    handoffs: Iterable[HandoffRecord], breaches: dict[str, float | None], origin_s: float
) -> list[HandoffGroup]:
    grouped: dict[tuple[str, str, ReasonCode], list[HandoffRecord]] = defaultdict(list)
    for record in handoffs:
        event = record.event
        if event.kind is HandoffEventKind.COMPLETED and event.source and event.target:
            grouped[(event.source, event.target, event.reason)].append(record)
    groups = []
    for (source, target, reason), records in sorted(
        grouped.items(), key=lambda item: item[1][0].at_s
    ):
        times = [record.at_s for record in records]
        breach_s = breaches.get(source)
        leads = [breach_s - at_s for at_s in times] if breach_s is not None else []
        groups.append(
            HandoffGroup(
                source=source,
                target=target,
                reason=reason,
                parts=sum(len(record.event.parts) for record in records),
                first_s=min(times) - origin_s,
                last_s=max(times) - origin_s,
                duration_ms_median=statistics.median(
                    record.event.duration_us / 1000 for record in records
                ),
                lead_s_min=min(leads) if leads else None,
                lead_s_median=statistics.median(leads) if leads else None,
            )
        )
    return groups


def _failover(
    calls: Sequence[CallRecord], handoffs: Sequence[HandoffRecord], timeline: Timeline
) -> FailoverSummary:
    killed_s = timeline.killed_s
    killed = timeline.killed_parts
    relocated: dict[tuple[bytes, str], float] = {}
    for record in handoffs:
        event = record.event
        # Until the manager declares the server dead, it names the dead server again.
        if (
            record.at_s < killed_s
            or event.kind not in _RELOCATING
            or event.target in (None, timeline.killed_server)
        ):
            continue
        for part in event.parts:
            key = (event.session_id, part)
            if key in killed and key not in relocated:
                relocated[key] = record.at_s - killed_s
    called = set()
    answered = set()
    for call in calls:
        key = (call.session, call.part)
        if key in killed and call.started_s + call.latency_ms / 1000 > killed_s:
            called.add(key)
            if call.ok:
                answered.add(key)
    end_s = killed_s + timeline.failover_window_s
    delays = list(relocated.values())
    return FailoverSummary(
        server=timeline.killed_server,
        parts=len(killed),
        parts_relocated=len(relocated),
        failover_s=max(delays) if delays else None,
        relocation_s_median=statistics.median(delays) if delays else None,
        parts_called=len(called),
        parts_answered=len(answered),
        failed_requests=sum(
            1 for call in calls if killed_s <= call.started_s < end_s and not call.ok
        ),
    )


def _leave(
    calls: Sequence[CallRecord], handoffs: Sequence[HandoffRecord], timeline: Timeline
) -> LeaveSummary | None:
    leave = timeline.leave
    if leave is None:
        return None
    handed_off: set[tuple[bytes, str]] = set()
    relocated: set[tuple[bytes, str]] = set()
    for record in handoffs:
        event = record.event
        if record.at_s < leave.signalled_s or event.source != leave.server:
            continue
        if event.kind is HandoffEventKind.COMPLETED:
            found = handed_off
        elif event.kind in _RELOCATING:
            found = relocated
        else:
            continue
        found.update(
            (event.session_id, part)
            for part in event.parts
            if (event.session_id, part) in leave.parts
        )
    return LeaveSummary(
        server=leave.server,
        parts=len(leave.parts),
        parts_handed_off=len(handed_off),
        parts_relocated=len(relocated - handed_off),
        exit_s=leave.exited_s - leave.signalled_s,
        exit_code=leave.exit_code,
        failed_requests=sum(
            1 for call in calls if call.started_s >= leave.signalled_s and not call.ok
        ),
        left_map=leave.left_map,
    )


_RELOCATING = frozenset(
    {HandoffEventKind.RELOCATED, HandoffEventKind.REDIRECTED, HandoffEventKind.MOVED}
)
"""Events by which a client learns a new primary without a HANDOFF."""


def summarize(
    *,
    calls: Sequence[CallRecord],
    handoffs: Sequence[HandoffRecord],
    breaches: dict[str, float | None],
    timeline: Timeline,
    verification: Verification,
    request_count: int,
    failed_count: int,
) -> DemoSummary:
    """The report of a run, with the reasons it failed, if it did."""
    origin_s = timeline.load_started_s
    windows = tuple(
        _window_stats(calls, name, start_s, end_s, origin_s)
        for name, start_s, end_s in _windows(timeline)
    )
    groups = tuple(_handoff_groups(handoffs, breaches, origin_s))
    predicted = sum(group.parts for group in groups if group.reason in PREDICTED_REASONS)
    # Predicted handoffs run from the degradation until the crash (queued moves go on after
    # the burner stops); a call that fails in that span fails the demo.
    predicted_failed = sum(
        1
        for call in calls
        if timeline.degrade_started_s <= call.started_s < timeline.killed_s and not call.ok
    )
    breach_at_s = breaches.get(timeline.degraded_server)
    errors = Counter(call.error for call in calls if not call.ok)
    rebalanced = [group for group in groups if group.reason is ReasonCode.REBALANCE]
    rebalance_failed = 0
    if timeline.rebalanced_s is not None:
        rebalance_end_s = (
            timeline.load_stopped_s if timeline.leave is None else timeline.leave.signalled_s
        )
        rebalance_failed = sum(
            1
            for call in calls
            if timeline.rebalanced_s <= call.started_s < rebalance_end_s and not call.ok
        )
    problems = []
    if predicted == 0:
        problems.append("no predicted handoff happened: the risk input never moved a part")
    if predicted_failed:
        problems.append(f"{predicted_failed} request(s) failed while predicted handoffs ran")
    if timeline.rebalanced_s is not None and timeline.rebalance_queued == 0:
        problems.append(f"the rebalance queued nothing for the restarted {timeline.killed_server}")
    if rebalance_failed:
        problems.append(f"{rebalance_failed} request(s) failed while the rebalance ran")
    leave = _leave(calls, handoffs, timeline)
    if leave is not None:
        if leave.exit_code is None:
            problems.append(f"{leave.server} did not exit by itself after SIGTERM")
        elif leave.exit_code:
            problems.append(f"{leave.server} exited with status {leave.exit_code} after SIGTERM")
        elif leave.left_map is False:
            problems.append(
                f"the manager did not take {leave.server} out of its map when it left"
                " (its silence would be failed over instead)"
            )
        if leave.failed_requests:
            problems.append(
                f"{leave.failed_requests} request(s) failed after the SIGTERM of {leave.server}"
            )
    if verification.lost:
        problems.append(f"{verification.lost} acknowledged replicated write(s) were lost")
    return DemoSummary(
        requests=request_count,
        failed=failed_count,
        windows=windows,
        handoffs=groups,
        predicted_parts=predicted,
        predicted_failed=predicted_failed,
        breach_s=breach_at_s - origin_s if breach_at_s is not None else None,
        failover=_failover(calls, handoffs, timeline),
        rebalance_parts=sum(group.parts for group in rebalanced),
        rebalance_parts_to_restarted=sum(
            group.parts for group in rebalanced if group.target == timeline.killed_server
        ),
        rebalance_failed=rebalance_failed,
        leave=leave,
        verification=verification,
        errors=tuple(errors.most_common(ERRORS_LISTED_MAX)),
        problems=tuple(problems),
    )


def _ms(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f}"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f} s"


def _seconds_plain(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def print_report(summary: DemoSummary, timeline: Timeline, console: Console) -> None:
    """The final tables and the verdict."""
    phases = Table(title="Requests and latency by phase (calls counted where they started)")
    for column in ("phase", "from", "to", "requests", "failed", "p50 ms", "p99 ms", "max ms"):
        phases.add_column(column, justify="left" if column == "phase" else "right")
    for window in summary.windows:
        phases.add_row(
            window.name,
            f"{window.start_s:.1f} s",
            f"{window.end_s:.1f} s",
            str(window.requests),
            str(window.failed),
            _ms(window.p50_ms),
            _ms(window.p99_ms),
            _ms(window.max_ms),
        )
    phases.add_row("all", "", "", str(summary.requests), str(summary.failed), "", "", "")
    console.print(phases)

    moves = Table(title="Handoffs (lead time = source's SLO breach minus the move)")
    for column in (
        "source",
        "target",
        "reason",
        "parts",
        "first",
        "last",
        "HANDOFF→RESUME_OK",
        "lead min",
        "lead median",
    ):
        moves.add_column(
            column, justify="left" if column in ("source", "target", "reason") else "right"
        )
    for group in summary.handoffs:
        moves.add_row(
            group.source,
            group.target,
            group.reason.name,
            str(group.parts),
            f"{group.first_s:.1f} s",
            f"{group.last_s:.1f} s",
            f"{group.duration_ms_median:.1f} ms",
            _seconds(group.lead_s_min),
            _seconds(group.lead_s_median),
        )
    console.print(moves)
    _print_outcome(summary, timeline, console)


def _print_outcome(summary: DemoSummary, timeline: Timeline, console: Console) -> None:
    origin_s = timeline.load_started_s
    failover = summary.failover
    breach = (
        f"{summary.breach_s:.1f} s"
        if summary.breach_s is not None
        else "none observed while the burner ran"
    )
    verification = summary.verification
    lines = [
        f"degraded {timeline.degraded_server} at "
        f"{timeline.degrade_started_s - origin_s:.1f} s; its SLO breach: {breach}",
        f"predicted handoffs: {summary.predicted_parts} part(s); "
        f"failed requests during predicted handoffs: {summary.predicted_failed}",
        f"SIGKILL {failover.server} at {timeline.killed_s - origin_s:.1f} s: "
        f"{failover.parts_relocated} of its {failover.parts} primary parts relocated to a new "
        f"primary, the last {_seconds_plain(failover.failover_s)} after the kill (failover "
        f"time), median {_seconds_plain(failover.relocation_s_median)}; "
        f"{failover.parts_answered} of the {failover.parts_called} called since answered; "
        f"{failover.failed_requests} failed request(s) in the failover window",
        *_rebalance_lines(summary, timeline),
        *_leave_lines(summary, timeline),
        f"acknowledged writes lost: {verification.lost} of {verification.acknowledged} "
        f"(cart, replicated; {verification.unreadable_sessions} cart(s) unreadable)",
    ]
    for line in lines:
        console.print(line)
    for message, count in summary.errors:
        console.print(f"  failure x{count}: {message}")
    if summary.ok:
        console.print("[bold green]DEMO PASSED[/]")
    else:
        for problem in summary.problems:
            console.print(f"[bold red]DEMO FAILED[/]: {problem}")


def _leave_lines(summary: DemoSummary, timeline: Timeline) -> list[str]:
    leave, moved = timeline.leave, summary.leave
    if leave is None or moved is None:
        return []
    origin_s = timeline.load_started_s
    status = "did not exit by itself" if moved.exit_code is None else f"status {moved.exit_code}"
    out = {
        True: "the manager took it out of the map at once (no failover); ",
        False: "the manager did NOT take it out of the map at its exit; ",
        None: "",
    }[moved.left_map]
    return [
        f"SIGTERM {moved.server} at {leave.signalled_s - origin_s:.1f} s (planned restart): "
        f"{moved.parts_handed_off} of its {moved.parts} primary parts handed off, "
        f"{moved.parts_relocated} relocated; it exited {moved.exit_s:.1f} s after the signal "
        f"({status}); {out}ACTIVE again at {leave.restarted_s - origin_s:.1f} s; "
        f"{moved.failed_requests} failed request(s) since the SIGTERM"
    ]


def _rebalance_lines(summary: DemoSummary, timeline: Timeline) -> list[str]:
    if timeline.restarted_s is None or timeline.rebalanced_s is None:
        return []
    origin_s = timeline.load_started_s
    return [
        f"{timeline.killed_server} started again at {timeline.restarted_s - origin_s:.1f} s; "
        f"rebalance: {timeline.rebalance_queued} part(s) queued, {summary.rebalance_parts} seen "
        f"handed off by the clients ({summary.rebalance_parts_to_restarted} to "
        f"{timeline.killed_server}); {summary.rebalance_failed} failed request(s) while it ran"
    ]
