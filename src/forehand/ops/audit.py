"""The handoff audit log: one record per handoff, failover, dropped move and drain.

`AuditLog` subscribes to the manager core's events (`NodeDriver.subscribe`; it declares the ones
it reads in `event_types`, so the driver hands it no other). A record is written
when the operation ends, with the parts, the source and target, the reason, the risk decision
that asked for it when there was one (its detail, its risk and `top_features` when the decision
event carries them), the lead time (from that decision to the end of the move), the duration and
the outcome. The newest `records_max` records stay in memory for the admin API; with a `path`
every record is also appended to a JSON Lines file as it is written.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from forehand.core import manager_events
from forehand.core.messages import PartRef
from forehand.errors import ConfigError
from forehand.wire import ReasonCode

__all__ = [
    "AUDIT_KINDS",
    "AUDIT_OUTCOMES",
    "AUDIT_REASONS",
    "AUDIT_RECORDS_MAX",
    "AuditLog",
    "AuditRecord",
    "RiskNote",
    "part_name",
]

AUDIT_KINDS = ("handoff", "failover", "move", "drain")
"""Kinds of audit records: `move` is a queued move the manager gave up on before starting it."""
AUDIT_OUTCOMES = (
    "completed",
    *(outcome.value for outcome in manager_events.HandoffOutcome),
    "dropped",
    "parts_lost",
)
"""Outcomes of audit records: a handoff's (completed, failed_over, cancelled), a dropped move's,
a failover's (completed, parts_lost), a drain's (completed)."""
HANDOFF_FELL_BACK = "handoff_fell_back"
"""The reason of a failover that a handoff fell back to (aborted, or silent past its deadline)."""
AUDIT_REASONS = (
    *(code.name.lower() for code in ReasonCode),
    *(cause.value for cause in manager_events.DeathCause),
    HANDOFF_FELL_BACK,
)
"""Reasons of audit records: a move's reason code, or a failover's death cause (a failover of
several servers joins theirs with commas, and a query by one of them finds it), or
`handoff_fell_back` for the failover a handoff fell back to."""
AUDIT_RECORDS_MAX = 10_000
"""Records kept in memory by default; older ones remain only in the JSONL file."""
RISK_DECISIONS_MAX = 4_096
"""Servers whose latest risk decision is remembered (for the records of the moves it caused)."""
SAME_DECISION_US = 1_000_000
"""A flag and a decision event of one server this close together describe one decision."""
RISK_REASONS = frozenset({ReasonCode.OVERLOAD, ReasonCode.PREDICTED_FAILURE})
"""Reasons of moves that a risk decision asks for."""


def part_name(ref: PartRef) -> str:
    """`<session id hex>/<part>`: how records, metrics and the API name a part."""
    return f"{ref.session_id.hex()}/{ref.part}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskNote:
    """The risk decision that asked for a move, as the audit records it."""

    server_id: str
    """The server the decision was about."""
    decided_us: int
    """When the manager made the decision, wall-clock microseconds."""
    reason: str
    """The reason code's name, lower case (`overload`, `predicted_failure`)."""
    detail: str
    """The policy's explanation."""
    risk: float | None
    """The risk the policy computed, when its decision carries one."""
    top_features: tuple[tuple[str, float], ...]
    """The features that weighed most in the decision, with their weights, when carried."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One finished operation of the manager."""

    sequence: int
    """Position in the log, from 1; the API's `after` filter pages on it."""
    kind: str
    """One of AUDIT_KINDS."""
    started_us: int
    """When the manager started it (picked the target, fenced the replicas, marked the drain)."""
    ended_us: int
    """When it ended."""
    parts: tuple[str, ...]
    """The parts concerned, as `<session id hex>/<part>`."""
    source: str
    """The server the parts left (for a failover, the dead servers joined by commas)."""
    target: str
    """The server they went to (for a failover, the promoted replicas joined by commas)."""
    reason: str
    """The reason code's name, lower case; for a failover the death cause (silence,
    restarted)."""
    outcome: str
    """completed, failed_over, cancelled, dropped or parts_lost."""
    detail: str
    """What happened, for people (the abort's cause, who reported the end, ...)."""
    map_version: int
    """The map version the outcome is in effect at."""
    duration_ms: float
    """From start to end."""
    lead_time_ms: float | None
    """From the risk decision that asked for the move to its end; None without a decision."""
    risk: RiskNote | None
    """That decision, when the move had one."""

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON-ready dict."""
        return asdict(self)


def _reason(code: ReasonCode) -> str:
    return code.name.lower()


class AuditLog:
    """Turns manager events into audit records (see the module docstring)."""

    def __init__(
        self,
        *,
        clock_us: Callable[[], int],
        path: Path | None = None,
        records_max: int = AUDIT_RECORDS_MAX,
        risk_window_ms: int = 60_000,
    ) -> None:
        """`clock_us` is the driver's clock; `risk_window_ms` is how old a risk decision may be
        and still be attached to a move of its server."""
        assert records_max >= 1 and risk_window_ms >= 0
        self._clock_us = clock_us
        self._records: deque[AuditRecord] = deque(maxlen=records_max)
        self._sequence = 0
        self._risk: dict[str, RiskNote] = {}
        self._risk_window_us = risk_window_ms * 1000
        self._death_cause: dict[str, str] = {}
        self._failover_started_us: dict[int, int] = {}
        self._drain_started_us: dict[str, int] = {}
        self._listeners: list[Callable[[AuditRecord], None]] = []
        self.event_types = _AUDIT_EVENT_TYPES
        """The manager events it reads (`NodeDriver.subscribe`): the driver hands it no other."""
        self._file: IO[str] | None = None
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._file = path.open("a", encoding="utf-8")
            except OSError as error:
                raise ConfigError(f"cannot open audit_log_path {path}: {error}") from error

    @property
    def last_sequence(self) -> int:
        """The sequence of the newest record (0 when there is none)."""
        return self._sequence

    def listen(self, listener: Callable[[AuditRecord], None]) -> None:
        """Call `listener` with every new record (the dashboard's live stream)."""
        self._listeners.append(listener)

    def close(self) -> None:
        """Close the JSONL file."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def query(
        self,
        *,
        kind: str | None = None,
        server: str | None = None,
        reason: str | None = None,
        outcome: str | None = None,
        after: int = 0,
        limit: int = 100,
    ) -> list[AuditRecord]:
        """The newest `limit` records matching every filter given, oldest first; `server`
        matches the source or the target, `reason` one of the record's reasons (a failover of
        several servers lists their causes), `after` keeps records with a larger sequence."""
        matched: list[AuditRecord] = []
        for record in reversed(self._records):
            if len(matched) >= limit or record.sequence <= after:
                break
            if kind is not None and record.kind != kind:
                continue
            if reason is not None and reason not in record.reason.split(","):
                continue
            if outcome is not None and record.outcome != outcome:
                continue
            if server is not None and server not in (
                *record.source.split(","),
                *record.target.split(","),
            ):
                continue
            matched.append(record)
        matched.reverse()
        return matched

    def __call__(self, event: object) -> None:
        """Account for one manager event."""
        handler = _HANDLERS.get(type(event).__name__)
        if handler is not None:
            handler(self, event)
        elif hasattr(event, "top_features") and hasattr(event, "server_id"):
            self._on_decision(event)

    # -- events ----------------------------------------------------------------------------

    def _on_risk_flagged(self, event: manager_events.RiskFlagged) -> None:
        self._remember_risk(
            RiskNote(
                server_id=event.server_id,
                decided_us=self._clock_us(),
                reason=_reason(event.reason),
                detail=event.detail,
                risk=_float_or_none(getattr(event, "risk", None)),
                top_features=_features(getattr(event, "top_features", ())),
            )
        )

    def _on_decision(self, event: Any) -> None:
        """A decision event of the predictor (any event with `server_id` and `top_features`):
        its risk and features complete the note of the flag it comes with."""
        server_id = str(event.server_id)
        previous = self._risk.get(server_id)
        reason = getattr(event, "reason", None)
        self._remember_risk(
            RiskNote(
                server_id=server_id,
                decided_us=self._clock_us(),
                reason=_reason(reason)
                if isinstance(reason, ReasonCode)
                else (previous.reason if previous is not None else ""),
                detail=str(getattr(event, "detail", "") or (previous.detail if previous else "")),
                risk=_float_or_none(getattr(event, "risk", None)),
                top_features=_features(event.top_features),
            )
        )

    def _remember_risk(self, note: RiskNote) -> None:
        previous = self._risk.get(note.server_id)
        if previous is not None and note.decided_us - previous.decided_us <= SAME_DECISION_US:
            # A flag and the decision event that explains it arrive together, in either order:
            # one note keeps the reason of the one and the risk and features of the other.
            note = RiskNote(
                server_id=note.server_id,
                decided_us=note.decided_us,
                reason=note.reason or previous.reason,
                detail=note.detail or previous.detail,
                risk=note.risk if note.risk is not None else previous.risk,
                top_features=note.top_features or previous.top_features,
            )
        elif note.server_id not in self._risk and len(self._risk) >= RISK_DECISIONS_MAX:
            del self._risk[next(iter(self._risk))]
        self._risk[note.server_id] = note

    def _note_for(self, source: str, reason: ReasonCode, now_us: int) -> RiskNote | None:
        note = self._risk.get(source)
        if note is None or reason not in RISK_REASONS:
            return None
        if now_us - note.decided_us > self._risk_window_us:
            return None
        return note

    def _on_handoff_completed(self, event: manager_events.HandoffCompleted) -> None:
        self._handoff(event, outcome="completed", detail=f"reported by {event.reported_by}")

    def _on_handoff_aborted(self, event: manager_events.HandoffAborted) -> None:
        self._handoff(event, outcome=event.outcome.value, detail=event.cause)

    def _handoff(
        self,
        event: manager_events.HandoffCompleted | manager_events.HandoffAborted,
        *,
        outcome: str,
        detail: str,
    ) -> None:
        now_us = self._clock_us()
        note = self._note_for(event.source, event.reason, now_us)
        self._write(
            kind="handoff",
            started_us=now_us - event.duration_us,
            ended_us=now_us,
            parts=tuple(part_name(ref) for ref in event.parts),
            source=event.source,
            target=event.target,
            reason=_reason(event.reason),
            outcome=outcome,
            detail=detail,
            map_version=event.map_version,
            risk=note,
        )

    def _on_moves_dropped(self, event: manager_events.MovesDropped) -> None:
        now_us = self._clock_us()
        self._write(
            kind="move",
            started_us=now_us,
            ended_us=now_us,
            parts=tuple(part_name(ref) for ref in event.parts),
            source=event.source,
            target="",
            reason=_reason(event.reason),
            outcome="dropped",
            detail=event.cause,
            map_version=0,
            risk=self._note_for(event.source, event.reason, now_us),
        )

    def _on_server_declared_dead(self, event: manager_events.ServerDeclaredDead) -> None:
        if len(self._death_cause) >= RISK_DECISIONS_MAX:
            self._death_cause.clear()
        self._death_cause[event.server_id] = event.cause.value

    def _on_failover_started(self, event: manager_events.FailoverStarted) -> None:
        if len(self._failover_started_us) >= RISK_DECISIONS_MAX:
            self._failover_started_us.clear()
        self._failover_started_us[event.failover_id] = self._clock_us()

    def _on_failover_completed(self, event: manager_events.FailoverCompleted) -> None:
        now_us = self._clock_us()
        self._failover_started_us.pop(event.failover_id, None)
        targets = sorted({promotion.primary for promotion in event.promotions})
        # A failover of dead servers names them and their causes; one a handoff fell back to
        # (no server died) names the handoffs' sources (before, both fields were empty).
        sources = sorted({*event.servers, *event.handoff_sources})
        reasons = [self._causes(event.servers)] if event.servers else []
        if event.handoff_sources or not event.servers:
            # With no server dead, a failover is a handoff's fallback (its source may be gone,
            # and then unnamed).
            reasons.append(HANDOFF_FELL_BACK)
        self._write(
            kind="failover",
            started_us=now_us - event.duration_us,
            ended_us=now_us,
            parts=tuple(part_name(promotion.ref) for promotion in event.promotions),
            source=",".join(sources),
            target=",".join(targets),
            reason=",".join(reasons),
            outcome="completed",
            detail=f"{event.replicas_added} replica role(s) added"
            + (
                f", {event.parts_without_replica} part(s) left with no replica"
                if event.parts_without_replica
                else ""
            ),
            map_version=event.map_version,
            risk=None,
        )

    def _on_parts_lost(self, event: manager_events.PartsLost) -> None:
        now_us = self._clock_us()
        self._write(
            kind="failover",
            started_us=now_us,
            ended_us=now_us,
            parts=tuple(part_name(ref) for ref in event.parts),
            source=",".join(event.servers),
            target="",
            reason=self._causes(event.servers),
            outcome="parts_lost",
            detail=_lost_detail(event),
            map_version=event.map_version,
            risk=None,
        )

    def _causes(self, servers: tuple[str, ...]) -> str:
        causes = sorted({self._death_cause.get(server, "silence") for server in servers})
        return ",".join(causes)

    def _on_drain_progressed(self, event: manager_events.DrainProgressed) -> None:
        now_us = self._clock_us()
        if event.parts_moved == 0 and not event.finished:
            # A drain's first report (nothing moved yet): it starts now, whatever an earlier
            # drain of the server that was undrained, and so never finished, left here.
            self._drain_started_us.pop(event.server_id, None)
        started_us = self._drain_started_us.setdefault(event.server_id, now_us)
        if not event.finished:
            return
        del self._drain_started_us[event.server_id]
        self._write(
            kind="drain",
            started_us=started_us,
            ended_us=now_us,
            parts=(),
            source=event.server_id,
            target="",
            reason=_reason(ReasonCode.PLANNED_MAINTENANCE),
            outcome="completed",
            detail=f"{event.parts_moved} of {event.parts_total} role(s) moved away",
            map_version=0,
            risk=None,
        )

    def _write(self, *, risk: RiskNote | None, **fields: Any) -> None:
        self._sequence += 1
        ended_us: int = fields["ended_us"]
        record = AuditRecord(
            sequence=self._sequence,
            duration_ms=(ended_us - fields["started_us"]) / 1000,
            lead_time_ms=None if risk is None else (ended_us - risk.decided_us) / 1000,
            risk=risk,
            **fields,
        )
        self._records.append(record)
        if self._file is not None:
            self._file.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
            self._file.flush()
        for listener in self._listeners:
            listener(record)


def _float_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _features(value: object) -> tuple[tuple[str, float], ...]:
    """`top_features` as (name, weight) pairs, from pairs or from a mapping."""
    items: Any = value.items() if isinstance(value, dict) else value
    result: list[tuple[str, float]] = []
    if not isinstance(items, Iterable) or isinstance(items, str | bytes):
        return ()
    for item in items:
        if isinstance(item, tuple | list) and len(item) == 2:
            result.append((str(item[0]), float(item[1])))
        elif isinstance(item, str):
            result.append((item, 0.0))
    return tuple(result)


_HANDLERS: dict[str, Callable[[AuditLog, Any], None]] = {
    "RiskFlagged": AuditLog._on_risk_flagged,
    "HandoffCompleted": AuditLog._on_handoff_completed,
    "HandoffAborted": AuditLog._on_handoff_aborted,
    "MovesDropped": AuditLog._on_moves_dropped,
    "ServerDeclaredDead": AuditLog._on_server_declared_dead,
    "FailoverStarted": AuditLog._on_failover_started,
    "FailoverCompleted": AuditLog._on_failover_completed,
    "PartsLost": AuditLog._on_parts_lost,
    "DrainProgressed": AuditLog._on_drain_progressed,
}


def _has_fields(kind: type, *names: str) -> bool:
    """Whether the event class `kind` (a dataclass) has every field in `names`."""
    return set(names) <= {field.name for field in dataclasses.fields(kind)}


_AUDIT_EVENT_TYPES = frozenset(
    kind
    for kind in typing.get_args(manager_events.ManagerEvent)
    if kind.__name__ in _HANDLERS or _has_fields(kind, "server_id", "top_features")
)
"""The manager events `AuditLog` reads: those it has a handler for, and the decision events that
`_on_decision` takes (every one with a `server_id` and `top_features`)."""


def _lost_detail(event: manager_events.PartsLost) -> str:
    """What the audit says of a failover's lost parts."""
    said = [f"{len(event.parts)} with the primary and every replica gone"]
    ended = f"{len(event.sessions)} session(s) ended, {event.parts_ended} other part(s) removed"
    said.append(ended)
    return "; ".join(said)
