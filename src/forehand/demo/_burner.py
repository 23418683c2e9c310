"""A CPU-burning thread that degrades the server process it runs in, ramping up over time.

The demo degrades one server for real, from inside its process: a thread burns CPU in chunks
that hold the GIL (a C-level loop that never yields it), so the server's event loop waits for
each chunk to end before it can read, execute or answer anything. Two things ramp:

- the share of time spent burning rises linearly over the first part of the ramp, so the
  process's CPU use climbs early;
- the chunks grow slowly at first and steeply at the end (a power of the ramp's progress), so
  the event loop's lag, which the server reports in its heartbeats as `loop_lag_us_p99`, creeps
  up through tens of milliseconds long before the stalls break the SLO: the early signal the
  manager's risk input acts on. A saturating server behaves so: its latency tail grows before
  it collapses.

`burn_plan` is the pure schedule; `CpuBurner` runs the thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from forehand.errors import ConfigError

__all__ = ["BurnPlan", "BurnerConfig", "CpuBurner", "burn_plan"]

CALIBRATION_ITERATIONS = 200_000
"""Iterations of the burning loop timed once at start, to turn milliseconds into iterations."""
CALIBRATION_WEIGHT = 0.3
"""Weight of the latest chunk's speed in the running estimate of iterations per millisecond."""
DUTY_MIN = 0.02
"""The smallest share of time spent burning, at the very start of the ramp."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BurnerConfig:
    """The shape of the degradation ramp."""

    ramp_ms: int = 30_000
    """From the start to the peak; the peak then holds until the burner stops."""
    duty_peak: float = 0.5
    """Share of time spent burning (holding the GIL) once the duty ramp is done."""
    duty_ramp_share: float = 0.4
    """The share of time burning reaches its peak after this share of the ramp."""
    chunk_ms_start: float = 1.0
    """Length of one GIL-holding chunk at the start, milliseconds."""
    chunk_ms_peak: float = 250.0
    """Length of one chunk at the peak, milliseconds: the event loop's worst stall."""
    chunk_exponent: float = 3.0
    """The chunk grows as progress ** exponent: slowly at first, steeply at the end."""

    def __post_init__(self) -> None:
        if self.ramp_ms < 1:
            raise ConfigError(f"BurnerConfig.ramp_ms must be positive, got {self.ramp_ms}")
        if not 0.0 < self.duty_ramp_share <= 1.0:
            raise ConfigError("BurnerConfig.duty_ramp_share must be in (0, 1]")
        if not DUTY_MIN <= self.duty_peak < 1.0:
            raise ConfigError(f"BurnerConfig needs {DUTY_MIN} <= duty_peak < 1")
        if not 0.0 < self.chunk_ms_start <= self.chunk_ms_peak:
            raise ConfigError("BurnerConfig needs 0 < chunk_ms_start <= chunk_ms_peak")
        if self.chunk_exponent <= 0:
            raise ConfigError("BurnerConfig.chunk_exponent must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class BurnPlan:
    """What the burner does in one cycle."""

    duty: float
    """Share of the cycle spent burning."""
    chunk_ms: float
    """How long the one GIL-holding chunk of this cycle lasts."""
    rest_ms: float
    """How long the thread then sleeps, leaving the GIL to the event loop."""


def burn_plan(*, elapsed_ms: float, config: BurnerConfig) -> BurnPlan:
    """The cycle `elapsed_ms` after the burner started."""
    progress = min(1.0, max(0.0, elapsed_ms / config.ramp_ms))
    duty = max(DUTY_MIN, config.duty_peak * min(1.0, progress / config.duty_ramp_share))
    chunk_ms = config.chunk_ms_start + (config.chunk_ms_peak - config.chunk_ms_start) * (
        progress**config.chunk_exponent
    )
    return BurnPlan(duty=duty, chunk_ms=chunk_ms, rest_ms=chunk_ms * (1.0 - duty) / duty)


def _burn(iterations: int) -> int:
    # sum() over a range runs entirely in C and never releases the GIL.
    return sum(range(iterations))


class CpuBurner:
    """A daemon thread that burns CPU along `burn_plan` from `start()` until `stop()`."""

    def __init__(self, config: BurnerConfig | None = None) -> None:
        self.config = config if config is not None else BurnerConfig()
        """The ramp."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_s = 0.0
        self._iterations_per_ms = 0.0

    @property
    def running(self) -> bool:
        """Whether the thread is burning."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start (or restart from the beginning of) the ramp."""
        self.stop()
        if self._iterations_per_ms == 0.0:
            self._iterations_per_ms = _calibrate()
        self._stop = threading.Event()
        self._started_s = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="cpu-burner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop burning; the current chunk finishes first."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        stop = self._stop
        while not stop.is_set():
            elapsed_ms = (time.monotonic() - self._started_s) * 1000
            plan = burn_plan(elapsed_ms=elapsed_ms, config=self.config)
            iterations = max(1, round(plan.chunk_ms * self._iterations_per_ms))
            started = time.perf_counter()
            _burn(iterations)
            burned_ms = max((time.perf_counter() - started) * 1000, 1e-3)
            # Other processes share the cores, so the speed of the loop drifts: follow it, and
            # rest in proportion to what was really burned, so the share of time holds.
            rate = iterations / burned_ms
            self._iterations_per_ms += CALIBRATION_WEIGHT * (rate - self._iterations_per_ms)
            stop.wait(burned_ms * (1.0 - plan.duty) / plan.duty / 1000)


def _calibrate() -> float:
    """Iterations of `_burn` per millisecond on this machine, now."""
    started = time.perf_counter()
    _burn(CALIBRATION_ITERATIONS)
    elapsed_ms = max((time.perf_counter() - started) * 1000, 1e-3)
    return CALIBRATION_ITERATIONS / elapsed_ms
