"""Handoff orchestration on the manager: the queue of part moves and the table of handoffs.

A *move* is a wish to take one part off its primary (handoff step 1: asked by the server, by the
manager's risk policy, by a drain or by an operator). Moves wait in a bounded FIFO queue. The
orchestrator turns them into *handoffs* (step 2): a batch of parts of one source going to one
target, at most `handoff_parts_max` of them, within the concurrency caps (per server as source or
target, and cluster-wide), with a random pause from the injected rng between batches so that a
drain of a large server does not stampede its peers.

Each handoff is a state machine; every transition is in the table below. The manager commits the
override delta (COMMITTING -> ASSIGNED), then waits for the participants' reports. The target
reports at the end of step 3 (its sealed logs applied: ASSIGNED -> BACKING_UP); the source reports
at the end of step 5 (its backup period over), and that ends the handoff. Only when the target has
reported and the source then dies, or stays silent for `handoff_backup_report_timeout_ms`, does the
target's report end it. A handoff holds its place under the caps (`handoffs_per_server_max` for
both servers, `handoffs_concurrent_max` across the cluster) until the target reports: the
transfer is done then, and the source only forwards stragglers while its clients switch (its
backup period, 5 s by default). From then on it counts under `handoffs_backing_up_per_server_max`
of its source alone, so that a drain keeps moving parts while earlier batches back up (holding
the slots through the backup period made every batch of a drain take the whole period: about 6
parts a second, whatever the fleet). Its parts stay moving until it ends. An abort, silence past
the deadline before the target reported, or a participant's death before it (the target's at any
time) falls back to failover, which fences both sides and keeps the longer log (an abort does not
revert blindly: the sealed log may have reached the target with only its acknowledgement lost).
The orchestrator owns no map: the manager passes the decisions that need one (is a move still
valid, which target) as callables.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from forehand.core._manager_config import ManagerConfig
from forehand.core.messages import PartRef
from forehand.errors import LocalProtocolError
from forehand.wire import ReasonCode

__all__ = [
    "Handoff",
    "HandoffPhase",
    "HandoffTrigger",
    "MoveOrigin",
    "MoveRequest",
    "Orchestrator",
    "transition_table",
]

HANDOFF_ID_BITS = 62
"""Handoff ids stay below 2**62, the largest integer a wire varint carries."""
HANDOFF_ID_BASE_BITS = 40
"""A manager incarnation starts its ids at a random multiple of 2**20 below 2**60, so a new
leader's ids do not collide with its predecessor's in the servers' tables."""
HANDOFF_SCAN_MOVES_MAX = 1024
"""Most queued moves examined while filling one batch, so planning stays cheap."""
HANDOFF_RETRY_MS = 200
"""When no queued move could start, planning is retried after this long (or on a change)."""


class MoveOrigin(enum.Enum):
    """Who asked for a part to move (handoff step 1)."""

    SERVER = "server"
    """The source itself sent HandoffRequested."""
    RISK = "risk"
    """The manager's risk policy flagged the source."""
    DRAIN = "drain"
    """An operator drains the source."""
    OPERATOR = "operator"
    """An operator moved a session by hand."""


class HandoffPhase(enum.Enum):
    """Where one handoff stands."""

    COMMITTING = "committing"
    """Target picked; the override delta is queued or in flight to the store."""
    ASSIGNED = "assigned"
    """The map makes the target primary; the participants run step 3."""
    BACKING_UP = "backing_up"
    """The target applied the sealed logs and serves the parts; the source tells the clients and
    keeps a read-only backup (steps 4 and 5) until it reports."""
    COMPLETED = "completed"
    """The source reported the end of its backup period, or the target reported and the source
    then died or stayed silent. Terminal."""
    FAILED_OVER = "failed_over"
    """A participant aborted, died or fell silent: the parts went through failover. Terminal."""
    CANCELLED = "cancelled"
    """Never assigned: the override could not be committed. Terminal."""


class HandoffTrigger(enum.Enum):
    """What moves a handoff between phases."""

    OVERRIDE_COMMITTED = "override_committed"
    OVERRIDE_REFUSED = "override_refused"
    TARGET_COMPLETED = "target_completed"
    SOURCE_COMPLETED = "source_completed"
    SOURCE_SILENT = "source_silent"
    SOURCE_DIED = "source_died"
    ABORT_REPORTED = "abort_reported"
    DEADLINE_EXPIRED = "deadline_expired"
    PARTICIPANT_DIED = "participant_died"


_TRANSITIONS: dict[tuple[HandoffPhase, HandoffTrigger], HandoffPhase] = {
    (HandoffPhase.COMMITTING, HandoffTrigger.OVERRIDE_COMMITTED): HandoffPhase.ASSIGNED,
    (HandoffPhase.COMMITTING, HandoffTrigger.OVERRIDE_REFUSED): HandoffPhase.CANCELLED,
    (HandoffPhase.ASSIGNED, HandoffTrigger.TARGET_COMPLETED): HandoffPhase.BACKING_UP,
    # The target's report may be lost; the source reports only after the target acknowledged.
    (HandoffPhase.ASSIGNED, HandoffTrigger.SOURCE_COMPLETED): HandoffPhase.COMPLETED,
    (HandoffPhase.ASSIGNED, HandoffTrigger.ABORT_REPORTED): HandoffPhase.FAILED_OVER,
    (HandoffPhase.ASSIGNED, HandoffTrigger.DEADLINE_EXPIRED): HandoffPhase.FAILED_OVER,
    (HandoffPhase.ASSIGNED, HandoffTrigger.PARTICIPANT_DIED): HandoffPhase.FAILED_OVER,
    (HandoffPhase.BACKING_UP, HandoffTrigger.SOURCE_COMPLETED): HandoffPhase.COMPLETED,
    (HandoffPhase.BACKING_UP, HandoffTrigger.SOURCE_SILENT): HandoffPhase.COMPLETED,
    (HandoffPhase.BACKING_UP, HandoffTrigger.SOURCE_DIED): HandoffPhase.COMPLETED,
    (HandoffPhase.BACKING_UP, HandoffTrigger.ABORT_REPORTED): HandoffPhase.FAILED_OVER,
    # In BACKING_UP only the target's death fails over: the source's is SOURCE_DIED.
    (HandoffPhase.BACKING_UP, HandoffTrigger.PARTICIPANT_DIED): HandoffPhase.FAILED_OVER,
}

TERMINAL_PHASES = frozenset(
    {
        HandoffPhase.COMPLETED,
        HandoffPhase.FAILED_OVER,
        HandoffPhase.CANCELLED,
    }
)
"""Phases a handoff never leaves."""
_REPORT_AWAITED = frozenset({HandoffPhase.ASSIGNED, HandoffPhase.BACKING_UP})
"""Phases with a deadline for the participants' next report."""


def transition_table() -> list[tuple[HandoffPhase, HandoffTrigger, HandoffPhase]]:
    """Every legal handoff transition as (from, trigger, to), for docs and diagrams."""
    return [(source, trigger, target) for (source, trigger), target in _TRANSITIONS.items()]


@dataclass(frozen=True, slots=True, kw_only=True)
class MoveRequest:
    """One part that should leave its primary (handoff step 1)."""

    ref: PartRef
    """The part."""
    source: str
    """Its primary when the move was asked for."""
    reason: ReasonCode
    """Why it moves (goes to the server and on to the client in HANDOFF)."""
    origin: MoveOrigin
    """Who asked."""
    target: str | None
    """The server it must go to, or None to let the manager pick."""
    requested_us: int
    """When the move was asked for."""


@dataclass(slots=True, kw_only=True)
class Handoff:
    """One planned handoff: a batch of parts from a source to a target (orchestrator-owned)."""

    handoff_id: int
    """Manager-unique id, sent in HandoffAssigned."""
    parts: tuple[PartRef, ...]
    """The parts moving."""
    source: str
    """The server giving them up."""
    target: str
    """The server taking them."""
    reason: ReasonCode
    """Why they move."""
    origin: MoveOrigin
    """Who asked."""
    phase: HandoffPhase
    """Where the handoff stands."""
    planned_us: int
    """When the target was picked."""
    assigned_us: int | None = None
    """When the override was committed and HandoffAssigned sent."""
    target_reported_us: int | None = None
    """When the target reported its sealed logs applied (end of step 3)."""
    map_version: int = 0
    """The map version that made the target primary (0 before the commit)."""
    deadline_us: int | None = None
    """When the manager stops waiting for the participants' report."""
    finished_us: int | None = None
    """When the handoff reached a terminal phase."""
    cause: str = ""
    """Why it ended the way it did, for the audit trail."""

    @property
    def is_active(self) -> bool:
        """Not yet in a terminal phase."""
        return self.phase not in TERMINAL_PHASES


TargetChooser = Callable[[MoveRequest, frozenset[str]], str | None]
"""Picks a target for a move, avoiding servers at their cap; None when there is none now."""
MoveValidator = Callable[[MoveRequest], bool]
"""Whether a queued move still makes sense (the source is still the part's live primary)."""


class Orchestrator:
    """The move queue, the handoff table, the caps and the jitter between batches."""

    def __init__(self, *, config: ManagerConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._moves: dict[PartRef, MoveRequest] = {}
        self._handoffs: dict[int, Handoff] = {}
        self._moving: dict[PartRef, int] = {}
        self._per_server: dict[str, int] = {}
        self._backing_up: dict[str, int] = {}
        """BACKING_UP handoffs per source: released from `_per_server`, capped on their own."""
        self._backing_up_total = 0
        base = rng.getrandbits(HANDOFF_ID_BASE_BITS) << (60 - HANDOFF_ID_BASE_BITS)
        self._next_handoff_id = base + 1
        self._next_batch_us = 0
        self._not_before_us = 0

    # Queries.

    @property
    def queued_moves(self) -> int:
        """Moves waiting for a handoff."""
        return len(self._moves)

    def handoff(self, handoff_id: int) -> Handoff | None:
        """The active handoff with that id, if any."""
        return self._handoffs.get(handoff_id)

    def handoffs(self) -> list[Handoff]:
        """Active handoffs, oldest first."""
        return list(self._handoffs.values())

    def handoff_of(self, ref: PartRef) -> Handoff | None:
        """The active handoff moving `ref`, if any."""
        handoff_id = self._moving.get(ref)
        return None if handoff_id is None else self._handoffs[handoff_id]

    def is_moving(self, ref: PartRef) -> bool:
        """Whether `ref` is queued to move or in an active handoff."""
        return ref in self._moves or ref in self._moving

    def queued(self) -> list[MoveRequest]:
        """Every queued move, in queue order."""
        return list(self._moves.values())

    def moves_of(self, source: str) -> list[MoveRequest]:
        """Queued moves away from `source`, in queue order."""
        return [move for move in self._moves.values() if move.source == source]

    def involving(self, server_id: str) -> list[Handoff]:
        """Active handoffs with `server_id` as source or target."""
        return [h for h in self._handoffs.values() if server_id in (h.source, h.target)]

    def load_of(self, server_id: str) -> int:
        """Active handoffs `server_id` takes part in."""
        return self._per_server.get(server_id, 0)

    # Step 1: moves.

    def request_move(self, move: MoveRequest) -> bool:
        """Queue a move; False when the part already moves or the queue is full."""
        if self.is_moving(move.ref):
            return False
        if len(self._moves) >= self._config.handoff_queue_parts_max:
            return False
        self._moves[move.ref] = move
        return True

    def cancel_moves(self, source: str, *, origin: MoveOrigin | None = None) -> list[MoveRequest]:
        """Forget the queued moves away from `source` (of one origin, or all)."""
        cancelled = [
            move
            for move in self._moves.values()
            if move.source == source and (origin is None or move.origin is origin)
        ]
        for move in cancelled:
            del self._moves[move.ref]
        return cancelled

    def drop_expired_moves(self, *, now_us: int) -> list[MoveRequest]:
        """Forget moves queued longer than `handoff_queue_timeout_ms`; they are returned."""
        timeout_us = self._config.handoff_queue_timeout_ms * 1000
        expired = [m for m in self._moves.values() if now_us >= m.requested_us + timeout_us]
        for move in expired:
            del self._moves[move.ref]
        return expired

    # Step 2: batches.

    def plan(
        self,
        *,
        now_us: int,
        choose_target: TargetChooser,
        is_valid: MoveValidator,
        batches_max: int,
    ) -> tuple[list[Handoff], list[MoveRequest]]:
        """Start handoffs for queued moves within the caps; returns (started, invalid moves).

        At most `batches_max` handoffs start (the manager's free commit slots). Between two
        batches the orchestrator waits a random pause of up to `handoff_jitter_ms_max`.
        """
        started: list[Handoff] = []
        invalid: list[MoveRequest] = []
        if self._moves and now_us >= self._next_batch_us and batches_max <= 0:
            # No commit slot: look again later rather than at once.
            self._next_batch_us = now_us + HANDOFF_RETRY_MS * 1000
        while self._moves and now_us >= self._next_batch_us and len(started) < batches_max:
            handoff = self._plan_batch(
                now_us=now_us, choose=choose_target, is_valid=is_valid, invalid=invalid
            )
            if handoff is None:
                self._next_batch_us = now_us + HANDOFF_RETRY_MS * 1000
                break
            started.append(handoff)
            jitter_ms = self._rng.randint(0, self._config.handoff_jitter_ms_max)
            self._next_batch_us = now_us + jitter_ms * 1000
        return started, invalid

    def defer(self, *, until_us: int) -> None:
        """Start no batch before `until_us`, even when a handoff ends (the manager's planning
        interval: what becomes possible meanwhile is planned together)."""
        self._not_before_us = max(self._not_before_us, until_us)
        self._next_batch_us = max(self._next_batch_us, until_us)

    def _capped(self) -> frozenset[str]:
        cap = self._config.handoffs_per_server_max
        return frozenset(server for server, count in self._per_server.items() if count >= cap)

    def _backed_up(self) -> frozenset[str]:
        """Sources with `handoffs_backing_up_per_server_max` handoffs in their backup period:
        no further handoff from them until one ends (they may still be a target)."""
        cap = self._config.handoffs_backing_up_per_server_max
        return frozenset(server for server, count in self._backing_up.items() if count >= cap)

    def _plan_batch(
        self,
        *,
        now_us: int,
        choose: TargetChooser,
        is_valid: MoveValidator,
        invalid: list[MoveRequest],
    ) -> Handoff | None:
        if len(self._handoffs) - self._backing_up_total >= self._config.handoffs_concurrent_max:
            return None
        capped = self._capped()
        sources_capped = capped | self._backed_up()
        first: MoveRequest | None = None
        target: str | None = None
        for scanned, move in enumerate(list(self._moves.values())):
            if scanned >= HANDOFF_SCAN_MOVES_MAX:
                break
            if not is_valid(move):
                del self._moves[move.ref]
                invalid.append(move)
                continue
            if move.source in sources_capped:
                continue
            target = choose(move, capped | {move.source})
            if target is not None:
                first = move
                break
        if first is None or target is None:
            return None
        batch = self._fill_batch(first, target, choose=choose, capped=capped)
        return self._start(batch, target=target, now_us=now_us)

    def _fill_batch(
        self, first: MoveRequest, target: str, *, choose: TargetChooser, capped: frozenset[str]
    ) -> list[MoveRequest]:
        batch = [first]
        avoid = capped | {first.source}
        size = (
            self._config.drain_handoff_parts_max
            if first.origin is MoveOrigin.DRAIN
            else self._config.handoff_parts_max
        )
        for scanned, move in enumerate(list(self._moves.values())):
            if len(batch) >= size or scanned >= HANDOFF_SCAN_MOVES_MAX:
                break
            if move is first or move.source != first.source or move.reason != first.reason:
                continue
            if move.origin is not first.origin:
                continue
            if choose(move, avoid) == target:
                batch.append(move)
        return batch

    def _start(self, batch: list[MoveRequest], *, target: str, now_us: int) -> Handoff:
        first = batch[0]
        handoff = Handoff(
            handoff_id=self._next_handoff_id,
            parts=tuple(move.ref for move in batch),
            source=first.source,
            target=target,
            reason=first.reason,
            origin=first.origin,
            phase=HandoffPhase.COMMITTING,
            planned_us=now_us,
        )
        self._next_handoff_id = (self._next_handoff_id + 1) % (1 << HANDOFF_ID_BITS)
        self._handoffs[handoff.handoff_id] = handoff
        for move in batch:
            del self._moves[move.ref]
            self._moving[move.ref] = handoff.handoff_id
        for server in (handoff.source, handoff.target):
            self._per_server[server] = self._per_server.get(server, 0) + 1
        return handoff

    # Transitions.

    def allows(self, handoff: Handoff, trigger: HandoffTrigger) -> bool:
        """Whether `trigger` is legal for `handoff` now (remote input is checked before firing)."""
        return (handoff.phase, trigger) in _TRANSITIONS

    def fire(
        self, handoff: Handoff, trigger: HandoffTrigger, *, now_us: int, cause: str = ""
    ) -> None:
        """Move `handoff` along the table; an illegal trigger is a programming error."""
        phase = _TRANSITIONS.get((handoff.phase, trigger))
        if phase is None or self._handoffs.get(handoff.handoff_id) is not handoff:
            raise LocalProtocolError(
                f"handoff {handoff.handoff_id}: no transition from {handoff.phase.name} "
                f"on {trigger.name}"
            )
        handoff.phase = phase
        if cause:
            handoff.cause = cause
        if phase in TERMINAL_PHASES:
            self._finish(handoff, now_us=now_us)

    def narrow(self, handoff: Handoff, parts: tuple[PartRef, ...]) -> None:
        """The commit moved only `parts` of the batch (the others left the source before the
        build): the rest are no longer moving, and may be queued again."""
        kept = set(parts)
        for ref in handoff.parts:
            if ref not in kept and self._moving.get(ref) == handoff.handoff_id:
                del self._moving[ref]
        handoff.parts = parts

    def assigned(self, handoff: Handoff, *, map_version: int, now_us: int) -> None:
        """The override committed at `map_version`: the deadline starts now."""
        self.fire(handoff, HandoffTrigger.OVERRIDE_COMMITTED, now_us=now_us)
        handoff.assigned_us = now_us
        handoff.map_version = map_version
        config = self._config
        wait_ms = config.handoff_deadline_ms + config.handoff_deadline_grace_ms
        handoff.deadline_us = now_us + wait_ms * 1000

    def target_reported(self, handoff: Handoff, *, now_us: int) -> None:
        """The target serves the parts: the source's report is now awaited (steps 4 and 5).
        The handoff leaves both servers' slots and the cluster's count for its source's backup
        count (the module docstring)."""
        self.fire(handoff, HandoffTrigger.TARGET_COMPLETED, now_us=now_us)
        handoff.target_reported_us = now_us
        handoff.deadline_us = now_us + self._config.handoff_backup_report_timeout_ms * 1000
        self._release(handoff)
        self._backing_up[handoff.source] = self._backing_up.get(handoff.source, 0) + 1
        self._backing_up_total += 1
        self._next_batch_us = max(min(self._next_batch_us, now_us), self._not_before_us)

    def _release(self, handoff: Handoff) -> None:
        """Free the slots of both servers of `handoff`."""
        for server in (handoff.source, handoff.target):
            remaining = self._per_server[server] - 1
            if remaining:
                self._per_server[server] = remaining
            else:
                del self._per_server[server]

    def _finish(self, handoff: Handoff, *, now_us: int) -> None:
        handoff.finished_us = now_us
        del self._handoffs[handoff.handoff_id]
        for ref in handoff.parts:
            if self._moving.get(ref) == handoff.handoff_id:
                del self._moving[ref]
        if handoff.target_reported_us is None:
            self._release(handoff)
        else:
            remaining = self._backing_up[handoff.source] - 1
            if remaining:
                self._backing_up[handoff.source] = remaining
            else:
                del self._backing_up[handoff.source]
            self._backing_up_total -= 1
        # A slot freed up: the next batch may start without waiting for the retry pause.
        self._next_batch_us = max(min(self._next_batch_us, now_us), self._not_before_us)

    def expired(self, *, now_us: int) -> list[Handoff]:
        """Handoffs still waiting for a report past their deadline (ASSIGNED or BACKING_UP)."""
        return [
            handoff
            for handoff in self._handoffs.values()
            if handoff.phase in _REPORT_AWAITED
            and handoff.deadline_us is not None
            and now_us >= handoff.deadline_us
        ]

    def next_timer_us(self) -> int | None:
        """The earliest deadline, queue timeout or batch start this orchestrator waits for."""
        instants = [
            h.deadline_us
            for h in self._handoffs.values()
            if h.deadline_us is not None and h.phase in _REPORT_AWAITED
        ]
        if self._moves:
            instants.append(self._next_batch_us)
            oldest = next(iter(self._moves.values()))
            instants.append(oldest.requested_us + self._config.handoff_queue_timeout_ms * 1000)
        return min(instants) if instants else None
