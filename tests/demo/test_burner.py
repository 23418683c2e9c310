"""The CPU burner's ramp: CPU share first, long GIL-holding chunks late, the duty cycle held."""

from __future__ import annotations

import itertools

import pytest

from forehand.demo import BurnerConfig, CpuBurner, burn_plan
from forehand.errors import ConfigError

CONFIG = BurnerConfig(ramp_ms=10_000)


def test_duty_reaches_its_peak_before_chunks_grow_long() -> None:
    """At the end of the duty ramp the CPU share is at its peak while chunks are still short."""
    at_duty_peak = burn_plan(elapsed_ms=CONFIG.ramp_ms * CONFIG.duty_ramp_share, config=CONFIG)
    assert at_duty_peak.duty == pytest.approx(CONFIG.duty_peak)
    assert at_duty_peak.chunk_ms < CONFIG.chunk_ms_peak / 10
    end = burn_plan(elapsed_ms=CONFIG.ramp_ms, config=CONFIG)
    assert end.chunk_ms == pytest.approx(CONFIG.chunk_ms_peak)
    assert burn_plan(elapsed_ms=10 * CONFIG.ramp_ms, config=CONFIG) == end


def test_plan_rises_monotonically_and_rests_in_proportion() -> None:
    """Duty and chunk length never fall along the ramp; chunk / (chunk + rest) is the duty."""
    plans = [burn_plan(elapsed_ms=t, config=CONFIG) for t in range(0, 12_000, 250)]
    for earlier, later in itertools.pairwise(plans):
        assert later.duty >= earlier.duty
        assert later.chunk_ms >= earlier.chunk_ms
    for plan in plans:
        assert plan.chunk_ms / (plan.chunk_ms + plan.rest_ms) == pytest.approx(plan.duty)


@pytest.mark.parametrize(
    "values",
    [
        {"ramp_ms": 0},
        {"duty_peak": 1.0},
        {"duty_peak": 0.001},
        {"chunk_ms_start": 10.0, "chunk_ms_peak": 5.0},
        {"duty_ramp_share": 0.0},
        {"chunk_exponent": 0.0},
    ],
)
def test_bad_ramps_are_refused(values: dict[str, float]) -> None:
    """Ramps that cannot be followed are configuration errors."""
    with pytest.raises(ConfigError):
        BurnerConfig(**values)  # type: ignore[arg-type]


def test_burner_starts_restarts_and_stops() -> None:
    """The thread runs between start and stop; a second start restarts the ramp."""
    burner = CpuBurner(BurnerConfig(ramp_ms=1_000, chunk_ms_peak=5.0))
    states = [burner.running]
    burner.start()
    states.append(burner.running)
    burner.start()
    states.append(burner.running)
    burner.stop()
    states.append(burner.running)
    burner.stop()
    assert states == [False, True, True, False]
