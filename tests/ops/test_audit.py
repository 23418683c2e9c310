"""The handoff audit log, fed with the manager core's events by hand (no cluster)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from forehand.core import manager_events as events
from forehand.core.messages import LoadReport, PartRef
from forehand.ops import AuditLog
from forehand.wire import ReasonCode

SESSION = bytes(range(16))
PARTS = (PartRef(session_id=SESSION, part="cart"), PartRef(session_id=SESSION, part="auth"))
LOAD = LoadReport(
    cpu_utilization=0.97,
    queue_depth=0,
    latency_us_p99=80_000,
    error_ratio=0.0,
    requests_per_second=900.0,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Stands for the predictor's decision event: only the fields the audit log reads."""

    server_id: str
    risk: float
    top_features: tuple[tuple[str, float], ...]


class Clock:
    """A hand-stepped clock in microseconds."""

    def __init__(self) -> None:
        self.now_us = 1_000_000_000

    def __call__(self) -> int:
        return self.now_us


def completed(*, source: str, target: str, reason: ReasonCode, duration_us: int) -> object:
    """A HandoffCompleted event."""
    return events.HandoffCompleted(
        handoff_id=1,
        reason=reason,
        parts=PARTS,
        source=source,
        target=target,
        map_version=9,
        reported_by=source,
        commit_us=2_000,
        duration_us=duration_us,
    )


def test_a_risk_move_carries_its_decision_and_lead_time(tmp_path: Path) -> None:
    """A handoff off a flagged server records the flag's detail, the decision's risk and top
    features (whichever arrives first), and the lead time from the decision to the end; a later
    manual move of the same server carries none of it; the JSONL file holds both records."""
    clock = Clock()
    path = tmp_path / "audit" / "audit.jsonl"
    audit = AuditLog(clock_us=clock, path=path)
    audit(Decision(server_id="s2", risk=0.83, top_features=(("cpu_slope", 2.5), ("lag_p99", 1.1))))
    audit(
        events.RiskFlagged(
            server_id="s2", reason=ReasonCode.OVERLOAD, parts=2, load=LOAD, detail="cpu 0.97 > 0.9"
        )
    )
    clock.now_us += 1_500_000
    audit(completed(source="s2", target="s3", reason=ReasonCode.OVERLOAD, duration_us=1_200_000))
    clock.now_us += 100_000_000
    audit(completed(source="s2", target="s4", reason=ReasonCode.REBALANCE, duration_us=900_000))
    first, second = audit.query()
    assert (first.kind, first.source, first.target, first.outcome) == (
        "handoff",
        "s2",
        "s3",
        "completed",
    )
    assert first.parts == (f"{SESSION.hex()}/cart", f"{SESSION.hex()}/auth")
    assert first.reason == "overload" and first.duration_ms == 1200.0
    assert first.risk is not None and first.risk.detail == "cpu 0.97 > 0.9"
    assert first.risk.risk == 0.83 and first.risk.top_features[0] == ("cpu_slope", 2.5)
    assert first.lead_time_ms == 1500.0
    assert second.risk is None and second.lead_time_ms is None
    audit.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["sequence"] for line in lines] == [1, 2]
    assert lines[0]["risk"]["top_features"] == [["cpu_slope", 2.5], ["lag_p99", 1.1]]


def test_failovers_aborts_and_drains_are_recorded_and_filterable() -> None:
    """A failover records the death cause and the promoted replicas, an abort its outcome and
    cause, a drain its span once finished; the filters select by kind, server, reason and
    outcome, and `after` pages."""
    clock = Clock()
    audit = AuditLog(clock_us=clock)
    audit(
        events.ServerDeclaredDead(
            server_id="s3",
            incarnation=1,
            cause=events.DeathCause.SILENCE,
            silent_us=3,
            primary_parts=1,
        )
    )
    promoted = events.PartPromoted(
        ref=PARTS[0], previous_primary="s3", primary="s1", applied_seq=7, positions=()
    )
    audit(
        events.FailoverCompleted(
            failover_id=4,
            servers=("s3",),
            map_version=12,
            promotions=(promoted,),
            replicas_added=1,
            parts_without_replica=0,
            positions_us=100,
            duration_us=250_000,
        )
    )
    audit(
        events.HandoffAborted(
            handoff_id=2,
            reason=ReasonCode.REBALANCE,
            parts=PARTS[:1],
            source="s1",
            target="s2",
            outcome=events.HandoffOutcome.FAILED_OVER,
            cause="target died",
            map_version=13,
            duration_us=5_000,
        )
    )
    audit(events.DrainProgressed(server_id="s4", parts_moved=0, parts_total=3, finished=False))
    clock.now_us += 2_000_000
    audit(events.DrainProgressed(server_id="s4", parts_moved=3, parts_total=3, finished=True))
    failover, aborted, drain = audit.query()
    assert (failover.kind, failover.reason, failover.target) == ("failover", "silence", "s1")
    assert (aborted.outcome, aborted.detail) == ("failed_over", "target died")
    assert (drain.kind, drain.source, drain.duration_ms) == ("drain", "s4", 2000.0)
    assert [r.sequence for r in audit.query(server="s1")] == [1, 2]
    assert audit.query(kind="drain") == [drain]
    assert audit.query(reason="rebalance") == [aborted]
    assert audit.query(outcome="completed", kind="failover") == [failover]
    assert audit.query(after=2) == [drain]
    assert audit.query(limit=1) == [drain]


def test_memory_is_bounded() -> None:
    """Beyond `records_max` the oldest records leave memory; sequences keep counting."""
    clock = Clock()
    audit = AuditLog(clock_us=clock, records_max=3)
    for _ in range(5):
        audit(completed(source="s1", target="s2", reason=ReasonCode.REBALANCE, duration_us=1))
    assert [record.sequence for record in audit.query()] == [3, 4, 5]
    assert audit.last_sequence == 5


def test_a_failover_a_handoff_fell_back_to_names_the_handoffs_source() -> None:
    """No server died: the failover an aborted handoff fell back to names the handoff's source
    and the reason `handoff_fell_back`, which a query finds (a walkthrough found such records
    with an empty source and reason); one that also took a dead server's parts names both."""
    audit = AuditLog(clock_us=Clock())
    audit(
        events.ServerDeclaredDead(
            server_id="s4",
            incarnation=1,
            cause=events.DeathCause.SILENCE,
            silent_us=3,
            primary_parts=1,
        )
    )
    for failover_id, servers, sources in ((1, (), ("s3",)), (2, ("s4",), ("s3",)), (3, (), ())):
        audit(
            events.FailoverCompleted(
                failover_id=failover_id,
                servers=servers,
                map_version=9,
                promotions=(),
                replicas_added=0,
                parts_without_replica=0,
                positions_us=1,
                duration_us=1,
                handoff_sources=sources,
            )
        )
    fell_back, both, unnamed = audit.query()
    assert (fell_back.source, fell_back.reason) == ("s3", "handoff_fell_back")
    assert (both.source, both.reason) == ("s3,s4", "silence,handoff_fell_back")
    # A handoff whose source is gone: the reason still says what the failover was.
    assert (unnamed.source, unnamed.reason) == ("", "handoff_fell_back")
    assert audit.query(reason="handoff_fell_back") == [fell_back, both, unnamed]


def test_a_reason_finds_a_failover_of_several_causes_and_an_undrained_drain_is_not_timed() -> None:
    """A failover of two servers dead for different causes lists both, and a query by either
    finds it. A drain undrained before it finished leaves no start time behind: the next
    drain of the server is timed from its own start (it read an hour for a one-second drain)."""
    clock = Clock()
    audit = AuditLog(clock_us=clock)
    for server, cause in (("s2", events.DeathCause.RESTARTED), ("s3", events.DeathCause.SILENCE)):
        audit(
            events.ServerDeclaredDead(
                server_id=server, incarnation=1, cause=cause, silent_us=3, primary_parts=1
            )
        )
    audit(
        events.FailoverCompleted(
            failover_id=1,
            servers=("s2", "s3"),
            map_version=9,
            promotions=(),
            replicas_added=0,
            parts_without_replica=0,
            positions_us=1,
            duration_us=1,
        )
    )
    (failover,) = audit.query()
    assert failover.reason == "restarted,silence"
    assert audit.query(reason="silence") == audit.query(reason="restarted") == [failover]
    audit(events.DrainProgressed(server_id="s4", parts_moved=0, parts_total=3, finished=False))
    clock.now_us += 3_600_000_000  # undrained meanwhile: no finished report
    audit(events.DrainProgressed(server_id="s4", parts_moved=0, parts_total=3, finished=False))
    clock.now_us += 1_000_000
    audit(events.DrainProgressed(server_id="s4", parts_moved=3, parts_total=3, finished=True))
    (drain,) = audit.query(kind="drain")
    assert drain.duration_ms == 1000.0
