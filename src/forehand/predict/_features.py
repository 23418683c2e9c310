"""Online features: O(1) per sample, fixed memory per entity.

The leaves (`Ewma`, `Baseline`, `RollingWindow`, `Holt`, `WindowMinimum`) are small pure
accumulators, each tested against hand-computed values. `MetricTracker` combines them for one
metric of one entity; `PathTracker` does the same for one bucket of client-to-server paths.
`FeatureBank` (in `_bank.py`) keeps the trackers of every entity under a named bound.
"""

from __future__ import annotations

import math
from collections import deque

from forehand.predict._config import (
    SECOND_US,
    FeatureConfig,
    MetricSpec,
    PathSloConfig,
    time_constant_alpha,
)
from forehand.predict._path_window import IntermittencyTracker, WindowMinimum

__all__ = [
    "Baseline",
    "Ewma",
    "Holt",
    "MetricTracker",
    "PathTracker",
    "RollingWindow",
    "WindowMinimum",
    "time_to_threshold_s",
]


LOG_LEVEL_MIN = 1e-3
"""Smallest level whose logarithm the multiplicative trend takes (an idle metric reads 0)."""


class Ewma:
    """Exponentially weighted moving average with a time constant, for irregular sampling."""

    __slots__ = ("_alpha", "_elapsed_us", "_time_constant_us", "value")

    def __init__(self, *, time_constant_us: int) -> None:
        assert time_constant_us > 0
        self._time_constant_us = time_constant_us
        # Samples mostly come at a fixed period: the weight of the last period is cached.
        self._elapsed_us = 0
        self._alpha = 0.0
        self.value: float | None = None
        """The average, None before the first sample."""

    def update(self, x: float, *, elapsed_us: int) -> float:
        """Blend `x` in with weight `1 - exp(-elapsed / time constant)`; the first as is."""
        if self.value is None:
            self.value = x
            return x
        if elapsed_us != self._elapsed_us:
            self._elapsed_us = elapsed_us
            self._alpha = time_constant_alpha(elapsed_us, self._time_constant_us)
        self.value += self._alpha * (x - self.value)
        return self.value


class Baseline:
    """Exponentially weighted mean and variance: the entity's own normal, for z-scores.

    During warm-up the weight of a sample is at least 1/count, so the first samples form a plain
    running mean rather than leaving the first value in place for an hour.
    """

    __slots__ = ("_time_constant_us", "count", "mean", "variance")

    def __init__(self, *, time_constant_us: int) -> None:
        assert time_constant_us > 0
        self._time_constant_us = time_constant_us
        self.count = 0
        """Samples seen."""
        self.mean = 0.0
        """The weighted mean."""
        self.variance = 0.0
        """The weighted variance."""

    def update(self, x: float, *, elapsed_us: int) -> None:
        """Fold `x` into the mean and variance (West's incremental update)."""
        self.count += 1
        alpha = max(time_constant_alpha(elapsed_us, self._time_constant_us), 1.0 / self.count)
        difference = x - self.mean
        increment = alpha * difference
        self.mean += increment
        self.variance = (1.0 - alpha) * (self.variance + difference * increment)

    def deviation(self, *, floor: float) -> float:
        """The standard deviation, at least `floor`."""
        return max(math.sqrt(max(self.variance, 0.0)), floor)


class RollingWindow:
    """Mean and standard deviation of the last `size` samples, in O(1) per sample."""

    __slots__ = ("_sum", "_sum_squares", "_values")

    def __init__(self, *, size: int) -> None:
        assert size >= 2
        self._values: deque[float] = deque(maxlen=size)
        self._sum = 0.0
        self._sum_squares = 0.0

    def update(self, x: float) -> None:
        """Push `x`, dropping the oldest sample when the window is full."""
        values = self._values
        if len(values) == values.maxlen:
            old = values[0]
            self._sum -= old
            self._sum_squares -= old * old
        values.append(x)
        self._sum += x
        self._sum_squares += x * x

    def __len__(self) -> int:
        return len(self._values)

    @property
    def mean(self) -> float:
        """Mean of the window (0 when empty)."""
        return self._sum / len(self._values) if self._values else 0.0

    @property
    def deviation(self) -> float:
        """Population standard deviation of the window (0 below two samples)."""
        count = len(self._values)
        if count < 2:
            return 0.0
        mean = self._sum / count
        return math.sqrt(max(self._sum_squares / count - mean * mean, 0.0))


class Holt:
    """Holt's linear trend method with irregular sampling: a level and a slope per second."""

    __slots__ = ("_alpha", "_beta", "level", "trend_per_s")

    def __init__(self, *, alpha: float, beta: float) -> None:
        assert 0.0 < alpha <= 1.0 and 0.0 < beta <= 1.0
        self._alpha = alpha
        self._beta = beta
        self.level: float | None = None
        """Smoothed level, None before the first sample."""
        self.trend_per_s = 0.0
        """Smoothed slope, in level units per second."""

    def update(self, x: float, *, elapsed_us: int) -> None:
        """Blend `x` into the level forecast from the trend, then update the trend."""
        if self.level is None:
            self.level = x
            return
        if elapsed_us <= 0:
            return
        elapsed_s = elapsed_us / SECOND_US
        previous = self.level
        level = self._alpha * x + (1.0 - self._alpha) * (previous + self.trend_per_s * elapsed_s)
        slope = (level - previous) / elapsed_s
        self.trend_per_s = self._beta * slope + (1.0 - self._beta) * self.trend_per_s
        self.level = level

    def forecast(self, *, ahead_s: float) -> float:
        """The level expected `ahead_s` seconds from now."""
        assert self.level is not None
        return self.level + self.trend_per_s * ahead_s


def time_to_threshold_s(level: float, trend_per_s: float, threshold: float) -> float:
    """Seconds until a level moving at `trend_per_s` reaches `threshold` (0 if there, inf never)."""
    if level >= threshold:
        return 0.0
    if trend_per_s <= 0.0:
        return math.inf
    return (threshold - level) / trend_per_s


class MetricTracker:
    """Every feature of one metric of one entity.

    With a scale, levels are `value / scale` (or its `log1p`), so 1.0 means trouble whatever the
    unit. Without one, every feature is taken against the entity's own baseline, in baseline
    standard deviations, which keeps a model trained on one series usable on another.
    """

    __slots__ = (
        "_baseline",
        "_capacity_level",
        "_config",
        "_ewmas",
        "_extra_baselines",
        "_floor_level",
        "_holt",
        "_level_floor",
        "_log_capacity",
        "_log_holt",
        "_log_name",
        "_names",
        "_spec",
        "_ttt_floor",
        "_window",
        "last_raw",
    )

    def __init__(self, *, spec: MetricSpec, config: FeatureConfig) -> None:
        self._spec = spec
        self._config = config
        self._ewmas = [Ewma(time_constant_us=tc) for tc in config.ewma_time_constants_us]
        self._baseline = Baseline(time_constant_us=config.baseline_time_constant_us)
        self._extra_baselines = tuple(
            (f"{spec.name}.z_{tc // SECOND_US}s", Baseline(time_constant_us=tc))
            for tc in config.extra_baseline_time_constants_us
        )
        self._window = RollingWindow(size=config.dispersion_window_ticks)
        self._holt = Holt(alpha=config.holt_level_alpha, beta=config.holt_trend_beta)
        # Rolling minima over the persistence window tell a sustained climb from a short spike:
        # a spike lifts the level and the trend for a tick or three, a ramp keeps both up.
        self._level_floor = WindowMinimum(size=config.persistence_window_ticks)
        self._ttt_floor = WindowMinimum(size=config.persistence_window_ticks)
        self._capacity_level = None if spec.capacity is None else self.level_of(spec.capacity)
        # A multiplicative trend (Holt on the level's logarithm) for capacity-bound metrics.
        capacity_level = self._capacity_level
        self._log_holt: Holt | None = None
        self._log_capacity = 0.0
        if config.log_trend and capacity_level is not None and capacity_level > 0:
            self._log_holt = Holt(alpha=config.holt_level_alpha, beta=config.holt_trend_beta)
            self._log_capacity = math.log(capacity_level)
        self._log_name = f"{spec.name}.ttt_log"
        self._floor_level = spec.noise_floor / spec.scale if spec.scale else spec.noise_floor
        scaled = spec.scale is not None
        suffixes = [
            f"ewma_{tc // SECOND_US}s" + ("" if scaled else "_z")
            for tc in config.ewma_time_constants_us
        ]
        self._names = (
            f"{spec.name}.level",
            *(f"{spec.name}.{s}" for s in suffixes),
            f"{spec.name}.z",
            f"{spec.name}.dispersion",
            f"{spec.name}.floor",
            f"{spec.name}.trend",
            f"{spec.name}.ttt",
            f"{spec.name}.ttt_floor",
        )
        self.last_raw: float | None = None
        """The newest raw value."""

    def level_of(self, raw: float) -> float:
        """The dimensionless level of a raw value."""
        spec = self._spec
        if spec.scale is None:
            return raw
        level = raw / spec.scale
        return math.log1p(max(level, 0.0)) if spec.logarithmic else level

    def update(
        self, raw: float, *, elapsed_us: int, horizon_s: float, out: dict[str, float]
    ) -> None:
        """Fold in `raw` and write this metric's features into `out`."""
        self.last_raw = raw
        x = self.level_of(raw)
        baseline = self._baseline
        floor = self._floor_level or max(1e-9 * abs(baseline.mean), 1e-12)
        deviation = baseline.deviation(floor=floor) if baseline.count else floor
        mean = baseline.mean if baseline.count else x
        bound = self._config.z_score_max
        names = self._names
        holt = self._holt
        window = self._window
        window.update(x)
        holt.update(x, elapsed_us=elapsed_us)
        baseline.update(x, elapsed_us=elapsed_us)
        if self._spec.scale is not None:
            unit, offset = 1.0, 0.0
        else:
            unit, offset = deviation, mean
        # Clipped inline (this runs per metric per tick): a value beyond +-bound becomes the bound.
        value = (x - offset) / unit
        out[names[0]] = value if -bound <= value <= bound else math.copysign(bound, value)
        index = 1
        for ewma in self._ewmas:
            value = (ewma.update(x, elapsed_us=elapsed_us) - offset) / unit
            out[names[index]] = value if -bound <= value <= bound else math.copysign(bound, value)
            index += 1
        value = (x - mean) / deviation
        out[names[-6]] = value if -bound <= value <= bound else math.copysign(bound, value)
        for name, extra in self._extra_baselines:
            if extra.count:
                out[name] = _clip((x - extra.mean) / extra.deviation(floor=floor), bound)
            else:
                out[name] = 0.0
            extra.update(x, elapsed_us=elapsed_us)
        out[names[-5]] = _clip(window.deviation / unit, bound)
        out[names[-4]] = _clip((self._level_floor.update(x) - offset) / unit, bound)
        out[names[-3]] = _clip(holt.trend_per_s * horizon_s / unit, bound)
        if self._capacity_level is not None:
            assert holt.level is not None
            seconds = time_to_threshold_s(holt.level, holt.trend_per_s, self._capacity_level)
            ttt = max(0.0, 1.0 - seconds / horizon_s)
            out[names[-2]] = ttt
            out[names[-1]] = self._ttt_floor.update(ttt)
        log_holt = self._log_holt
        if log_holt is not None:
            log_holt.update(math.log(max(x, LOG_LEVEL_MIN)), elapsed_us=elapsed_us)
            assert log_holt.level is not None
            seconds = time_to_threshold_s(log_holt.level, log_holt.trend_per_s, self._log_capacity)
            out[self._log_name] = max(0.0, 1.0 - seconds / horizon_s)


def _clip(value: float, bound: float) -> float:
    return bound if value > bound else -bound if value < -bound else value


class PathTracker:
    """Features of one bucket of client-to-server paths: RTT above its minimum, jitter, loss."""

    __slots__ = (
        "_intermittency",
        "_jitter",
        "_loss",
        "_rtt_excess",
        "_rtt_minimum",
        "_slo",
        "breached",
        "degraded",
        "last_sample_us",
    )

    def __init__(self, *, config: FeatureConfig, slo: PathSloConfig) -> None:
        self._slo = slo
        self._rtt_minimum = WindowMinimum(size=config.rtt_min_window_ticks)
        scale = float(slo.rtt_scale_us)
        excess = MetricSpec(name="path.rtt_excess", scale=scale, noise_floor=1_000.0)
        jitter = MetricSpec(name="path.jitter", scale=scale, noise_floor=1_000.0)
        loss = MetricSpec(
            name="path.loss", scale=slo.loss_max, capacity=slo.loss_max, noise_floor=0.001
        )
        self._rtt_excess = MetricTracker(spec=excess, config=config)
        self._jitter = MetricTracker(spec=jitter, config=config)
        self._loss = MetricTracker(spec=loss, config=config)
        self._intermittency = (
            IntermittencyTracker(
                windows_ticks=config.intermittency_windows_ticks,
                rtt_excess_us_min=config.intermittent_rtt_excess_slo_fraction
                * slo.rtt_excess_us_max,
                loss_min=config.intermittent_loss_min,
                rtt_scale_us=slo.rtt_scale_us,
            )
            if config.path_intermittency
            else None
        )
        self.last_sample_us: int | None = None
        """When this bucket last reported."""
        self.degraded = False
        """Whether the newest sample shows a degraded path."""
        self.breached = False
        """Whether the newest sample breaches the path SLO."""

    def update(
        self,
        *,
        rtt_us: int,
        jitter_us: int,
        loss_ratio: float,
        now_us: int,
        horizon_s: float,
        out: dict[str, float],
    ) -> None:
        """Fold in one measurement, write the bucket's features into `out`, classify it."""
        elapsed_us = 0 if self.last_sample_us is None else now_us - self.last_sample_us
        self.last_sample_us = now_us
        excess_us = rtt_us - self._rtt_minimum.update(float(rtt_us))
        self._rtt_excess.update(excess_us, elapsed_us=elapsed_us, horizon_s=horizon_s, out=out)
        self._jitter.update(jitter_us, elapsed_us=elapsed_us, horizon_s=horizon_s, out=out)
        self._loss.update(loss_ratio, elapsed_us=elapsed_us, horizon_s=horizon_s, out=out)
        if self._intermittency is not None:
            self._intermittency.update(rtt_excess_us=excess_us, loss_ratio=loss_ratio, out=out)
        slo = self._slo
        self.breached = loss_ratio > slo.loss_max or excess_us > slo.rtt_excess_us_max
        self.degraded = loss_ratio > slo.degraded_loss or excess_us > slo.degraded_rtt_excess_us

    def is_fresh(self, *, now_us: int) -> bool:
        """Whether the bucket reported within the staleness bound."""
        last = self.last_sample_us
        return last is not None and now_us - last <= self._slo.stale_us
