"""Ramps: a quantity that rises from zero to a peak over time, then holds or recovers.

Degradation ramps (link delay and loss rising over minutes) and load ramps (a server's CPU load
climbing towards saturation) share this shape; the gradual faults that a predictor can see coming
are built from them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from forehand.errors import ConfigError

__all__ = ["Ramp", "RampShape"]

EXPONENTIAL_RAMP_STEEPNESS = 4.0
"""Growth constant of an exponential ramp: most of the rise comes in the last quarter."""


class RampShape(StrEnum):
    """How a ramp rises between its start and its peak."""

    LINEAR = "linear"
    EXPONENTIAL = "exponential"


@dataclass(frozen=True, slots=True, kw_only=True)
class Ramp:
    """Zero before `start_us`, `peak_value` at `peak_us`, then held or falling back to zero."""

    start_us: int
    """Simulated time at which the rise begins."""
    peak_us: int
    """Simulated time at which the value reaches its peak."""
    peak_value: float
    """The value at the peak, in the unit of whatever the ramp drives (µs, probability, load)."""
    shape: RampShape = RampShape.LINEAR
    """How the value rises between start and peak."""
    recover_us: int | None = None
    """When set, the value falls linearly back to zero by this time; when None it holds the peak."""
    steepness: float = EXPONENTIAL_RAMP_STEEPNESS
    """How sharply an exponential ramp accelerates: its rate grows e^steepness-fold from start
    to peak (ignored by a linear ramp)."""

    def __post_init__(self) -> None:
        if not 0 <= self.start_us <= self.peak_us:
            raise ConfigError(f"a ramp needs 0 <= start_us <= peak_us, got {self}")
        if self.recover_us is not None and self.recover_us < self.peak_us:
            raise ConfigError(f"a ramp recovers after its peak, got {self}")
        if self.peak_value < 0:
            raise ConfigError(f"a ramp peaks at a non-negative value, got {self}")
        if not self.steepness > 0:
            raise ConfigError(f"a ramp's steepness must be positive, got {self}")

    @property
    def end_us(self) -> int | None:
        """When the ramp is back to zero, or None when it holds its peak."""
        return self.recover_us

    def value_at(self, now_us: int) -> float:
        """The ramp's value at `now_us`."""
        if now_us <= self.start_us:
            return 0.0
        if now_us < self.peak_us:
            fraction = (now_us - self.start_us) / (self.peak_us - self.start_us)
            if self.shape is RampShape.EXPONENTIAL:
                steep = self.steepness
                fraction = math.expm1(steep * fraction) / math.expm1(steep)
            return self.peak_value * fraction
        if self.recover_us is None:
            return self.peak_value
        if now_us >= self.recover_us:
            return 0.0
        span_us = self.recover_us - self.peak_us
        return self.peak_value * (self.recover_us - now_us) / span_us
