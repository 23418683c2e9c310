"""Ramps rise from zero to a peak, then hold or recover linearly."""

from __future__ import annotations

import pytest

from forehand.errors import ConfigError
from forehand.sim import Ramp


def test_ramp_holds_or_recovers_after_its_peak() -> None:
    """Without a recovery time a ramp holds its peak; with one it falls back to zero."""
    held = Ramp(start_us=100, peak_us=200, peak_value=10.0)
    recovering = Ramp(start_us=100, peak_us=200, peak_value=10.0, recover_us=400)
    assert [held.value_at(t) for t in (0, 100, 150, 200, 10_000)] == [0.0, 0.0, 5.0, 10.0, 10.0]
    assert [recovering.value_at(t) for t in (200, 300, 400, 500)] == [10.0, 5.0, 0.0, 0.0]


def test_ramp_validation() -> None:
    """A ramp peaks after it starts, recovers after its peak, and never goes negative."""
    with pytest.raises(ConfigError):
        Ramp(start_us=200, peak_us=100, peak_value=1.0)
    with pytest.raises(ConfigError):
        Ramp(start_us=0, peak_us=100, peak_value=1.0, recover_us=50)
    with pytest.raises(ConfigError):
        Ramp(start_us=0, peak_us=100, peak_value=-1.0)
