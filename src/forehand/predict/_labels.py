"""Delayed labels: a tick at time t is positive when an SLO breach starts within (t + L, t + H].

Whether that happened is known only at t + H, so every tick waits in a bounded per-entity queue
until then, with its features and the raw scores the models gave it. Ticks during a breach (from
its onset until it has been clear for `breach_clear_us`) never enter the queue: the entity is
already failing and there is nothing left to predict.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from forehand.predict._config import LabelConfig

__all__ = ["BreachTracker", "DelayedLabeler", "LabelledEvent", "LabelledTick", "PendingTick"]


class BreachTracker:
    """Turns per-sample breach flags into breach events with one onset each."""

    __slots__ = ("_clear_us", "in_breach", "last_breached_us", "onset_us")

    def __init__(self, *, breach_clear_us: int) -> None:
        self._clear_us = breach_clear_us
        self.in_breach = False
        """Whether a breach is under way (including its clearing period)."""
        self.onset_us: int | None = None
        """Onset of the current or last breach."""
        self.last_breached_us: int | None = None
        """The newest sample that breached."""

    def update(self, breached: bool, *, now_us: int) -> bool:
        """Fold in one sample's flag; True when this sample is the onset of a new breach."""
        if breached:
            self.last_breached_us = now_us
            if not self.in_breach:
                self.in_breach = True
                self.onset_us = now_us
                return True
            return False
        if self.in_breach:
            assert self.last_breached_us is not None
            if now_us - self.last_breached_us >= self._clear_us:
                self.in_breach = False
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingTick:
    """A tick waiting for its label."""

    time_us: int
    """When the tick was observed."""
    features: Mapping[str, float]
    """Its features."""
    scores: tuple[float, ...]
    """The raw score each model head gave it, in head order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelledTick:
    """A tick whose label is now known."""

    tick: PendingTick
    """The tick."""
    label: bool
    """True when a breach started within (time + lead, time + horizon]."""


class DelayedLabeler:
    """One entity's queue of ticks waiting for their labels, and its recent onsets."""

    __slots__ = ("_config", "_onsets", "_pending", "breach", "dropped_ticks")

    def __init__(
        self, *, config: LabelConfig, pending_ticks_max: int, onsets_kept_max: int
    ) -> None:
        self._config = config
        self._pending: deque[PendingTick] = deque(maxlen=pending_ticks_max)
        self._onsets: deque[int] = deque(maxlen=onsets_kept_max)
        self.breach = BreachTracker(breach_clear_us=config.breach_clear_us)
        """The entity's breach state."""
        self.dropped_ticks = 0
        """Ticks dropped unlabelled because the queue was full (raise pending_ticks_max)."""

    @property
    def pending_count(self) -> int:
        """Ticks waiting."""
        return len(self._pending)

    def observe(
        self,
        *,
        breached: bool,
        now_us: int,
        features: Mapping[str, float],
        scores: tuple[float, ...],
    ) -> list[LabelledTick]:
        """Record this tick; return the earlier ticks whose label became known."""
        if self.breach.update(breached, now_us=now_us):
            self._onsets.append(now_us)
        resolved = self._resolve(now_us=now_us)
        if not self.breach.in_breach:
            if len(self._pending) == self._pending.maxlen:
                self.dropped_ticks += 1
            self._pending.append(PendingTick(time_us=now_us, features=features, scores=scores))
        return resolved

    def _resolve(self, *, now_us: int) -> list[LabelledTick]:
        pending = self._pending
        horizon_us = self._config.horizon_us
        lead_us = self._config.lead_us
        resolved: list[LabelledTick] = []
        while pending and pending[0].time_us + horizon_us <= now_us:
            tick = pending.popleft()
            start_us = tick.time_us + lead_us
            end_us = tick.time_us + horizon_us
            label = any(start_us < onset_us <= end_us for onset_us in self._onsets)
            resolved.append(LabelledTick(tick=tick, label=label))
        return resolved


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelledEvent:
    """An SLO breach of an entity, as the ground truth of the evaluation."""

    entity: str
    """The server (or series) that breached."""
    onset_us: int
    """First breaching sample."""
    end_us: int
    """Last breaching sample."""
    kind: str
    """The episode kind under way at the onset, or "spontaneous"."""
