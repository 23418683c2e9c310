"""The server's side of one handoff, as a table: steps 3 to 5 on the source, catch-up on the target.

The five steps of a planned handoff (DESIGN.md) split between the manager (1: announce, 2: pick the
target, bump the map, assign) and the two servers. On the source a handoff is SHIPPING (step 3:
the sealed log is on its way, requests are forwarded to the target), then NOTIFYING (step 4: a
HANDOFF frame to every client attached to the moving sessions, spread over a jitter window), then
BACKING_UP (step 5: read-only, forwarding stragglers) until the backup period ends. On the target
it is RECEIVING until every part's sealed log is applied. A missed deadline aborts (the manager
then decides: revert or fail over); a map that moves the parts elsewhere first supersedes it.
Every part of one handoff moves together: the handoff advances when all its parts did.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from forehand.core._driver import NodeId
from forehand.core.messages import PartRef
from forehand.errors import LocalProtocolError

__all__ = [
    "HANDOFF_TRANSITIONS",
    "HandoffPhase",
    "HandoffRun",
    "HandoffSide",
    "HandoffTrigger",
    "Notification",
    "handoff_transition_table",
    "transition_table",
]


class HandoffSide(enum.Enum):
    """Which end of a handoff this server is."""

    SOURCE = "source"
    """The server giving the parts up."""
    TARGET = "target"
    """The server taking them."""


class HandoffPhase(enum.Enum):
    """Where one handoff stands on this server."""

    SHIPPING = "shipping"
    """Source, step 3: the sealed log is on its way; requests are forwarded to the target."""
    NOTIFYING = "notifying"
    """Source, step 4: HANDOFF frames are going out to the attached clients."""
    BACKING_UP = "backing_up"
    """Source, step 5: read-only backup, forwarding stragglers, until the backup period ends."""
    RECEIVING = "receiving"
    """Target: waiting for every part's sealed log; requests queue meanwhile."""
    COMPLETED = "completed"
    """Done; reported with `HandoffCompleted`."""
    ABORTED = "aborted"
    """A deadline passed or the map moved on; reported with `HandoffAborted` where it is news."""


class HandoffTrigger(enum.Enum):
    """What moves a handoff on."""

    SEALS_ACKNOWLEDGED = "seals_acknowledged"
    """The target acknowledged the sealed log of every part (step 3 done)."""
    CLIENTS_NOTIFIED = "clients_notified"
    """Every scheduled HANDOFF frame went out (step 4 done)."""
    BACKUP_PERIOD_ENDED = "backup_period_ended"
    """The backup period is over (step 5 done)."""
    SEALED_LOGS_APPLIED = "sealed_logs_applied"
    """The target applied every part's sealed log and serves them now."""
    DEADLINE_MISSED = "deadline_missed"
    """Steps 3 and 4 did not finish by the deadline."""
    SUPERSEDED = "superseded"
    """A newer map placed the parts so that the procedure no longer applies."""


_P = HandoffPhase
_T = HandoffTrigger
HANDOFF_TRANSITIONS: Mapping[tuple[HandoffPhase, HandoffTrigger], HandoffPhase] = {
    (_P.SHIPPING, _T.SEALS_ACKNOWLEDGED): _P.NOTIFYING,
    (_P.SHIPPING, _T.DEADLINE_MISSED): _P.ABORTED,
    (_P.SHIPPING, _T.SUPERSEDED): _P.ABORTED,
    (_P.NOTIFYING, _T.CLIENTS_NOTIFIED): _P.BACKING_UP,
    (_P.NOTIFYING, _T.SUPERSEDED): _P.ABORTED,
    (_P.BACKING_UP, _T.BACKUP_PERIOD_ENDED): _P.COMPLETED,
    (_P.BACKING_UP, _T.SUPERSEDED): _P.ABORTED,
    (_P.RECEIVING, _T.SEALED_LOGS_APPLIED): _P.COMPLETED,
    (_P.RECEIVING, _T.DEADLINE_MISSED): _P.ABORTED,
    (_P.RECEIVING, _T.SUPERSEDED): _P.ABORTED,
}
"""Every legal (phase, trigger) -> next phase of a handoff on one server."""

STEP_OF_TRIGGER: Mapping[HandoffTrigger, int] = {
    _T.SEALS_ACKNOWLEDGED: 3,
    _T.CLIENTS_NOTIFIED: 4,
    _T.BACKUP_PERIOD_ENDED: 5,
    _T.SEALED_LOGS_APPLIED: 3,
}
"""The handoff step (DESIGN.md numbering) each completing trigger finishes."""


def handoff_transition_table() -> list[tuple[HandoffPhase, HandoffTrigger, HandoffPhase]]:
    """The handoff state machine as (from, trigger, to) rows, for diagrams."""
    return [(source, trigger, target) for (source, trigger), target in HANDOFF_TRANSITIONS.items()]


transition_table = handoff_transition_table
"""The name every state-machine module gives its table function (for the docs generator)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    """One HANDOFF frame the source owes one client, due at a jittered time."""

    due_us: int
    """When to send it."""
    client: NodeId
    """The client connection to send it on."""
    session_id: bytes
    """The session whose parts move."""
    parts: tuple[str, ...]
    """Those parts' names."""


class HandoffRun:
    """One handoff as this server takes part in it."""

    def __init__(
        self,
        *,
        handoff_id: int,
        side: HandoffSide,
        refs: tuple[PartRef, ...],
        peer: NodeId,
        map_version: int,
        reason: int,
        deadline_us: int,
    ) -> None:
        self.handoff_id = handoff_id
        """The manager's id of the handoff (0 when the target learned of it from the map)."""
        self.side = side
        """Source or target."""
        self.refs = refs
        """The parts moving, in the manager's order."""
        self.peer = peer
        """The other server: the target for a source, the source for a target."""
        self.map_version = map_version
        """The map version that makes the target primary: the parts' new epoch."""
        self.reason = reason
        """A `forehand.wire` reason code."""
        self.deadline_us = deadline_us
        """When steps 3 and 4 must be done."""
        self.phase = HandoffPhase.SHIPPING if side is HandoffSide.SOURCE else _P.RECEIVING
        """Where it stands."""
        self.waiting: set[PartRef] = set(refs)
        """Source: parts whose sealed log is unacknowledged; target: parts not yet sealed."""
        self.notifications: list[Notification] = []
        """Source, step 4: HANDOFF frames still to send, earliest first."""
        self.backup_until_us = 0
        """Source, step 5: when the backup period ends."""
        self.replaced = False
        """Source: a map listed this server dead during the run (a failover replaced it), so a
        later map naming it primary again is a new move here, not a failover that kept it."""

    @property
    def finished(self) -> bool:
        """Whether the handoff reached a terminal phase."""
        return self.phase in (HandoffPhase.COMPLETED, HandoffPhase.ABORTED)

    def transition(self, trigger: HandoffTrigger) -> HandoffPhase:
        """Apply `trigger` per the table; returns the previous phase."""
        previous = self.phase
        following = HANDOFF_TRANSITIONS.get((previous, trigger))
        if following is None:
            raise LocalProtocolError(
                f"handoff {self.handoff_id}: no transition from {previous.name} on {trigger.name}"
            )
        self.phase = following
        return previous

    def next_due_us(self) -> int | None:
        """The next time this handoff needs the timer, if any."""
        if self.phase in (HandoffPhase.SHIPPING, HandoffPhase.RECEIVING):
            return self.deadline_us
        if self.phase is HandoffPhase.NOTIFYING:
            return self.notifications[0].due_us if self.notifications else self.deadline_us
        if self.phase is HandoffPhase.BACKING_UP:
            return self.backup_until_us
        return None
