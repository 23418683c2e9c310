"""Anomaly detectors that keep their own state per entity: deviations from a robust baseline.

The features' baseline (`Baseline`, an exponentially weighted mean and variance) learns every
sample as it is: an anomaly that lasts pulls the mean towards itself and inflates the variance,
so the longer it lasts the less it stands out, and a burst widens the baseline for a day after it.
A `WinsorizedBaseline` learns each sample clipped to `clip_deviations` baseline deviations of the
mean instead (after a short warm-up): a value far out still moves the baseline, by at most a
bounded step, so a real change of level is learned within a few time constants while one anomaly
cannot hide itself or the next one.

A detector head (`RobustZModel`) reads the raw values of a server's metrics without a scale,
keeps one winsorized baseline per metric and entity (and, multi-scale, EWMAs of the raw value at
the features' time constants), and scores the largest absolute deviation over `RULE_Z_ALARM`, the
rule's scale; metrics with a scale keep the rule's components. It does not learn; its head's
calibrator does. Its per-entity table is bounded by `PredictorConfig.servers_max`, least recently
observed forgotten first, as the feature bank does. `OnlinePredictor` feeds heads that implement
`EntityModel` each server sample's raw values (`score_entity`); path heads of the same name are
the path rule.

A deviation blend (`DeviationBlendModel`) is an ensemble of the rule and a robust detector: both
measure a deviation in baseline deviations, 1.0 at `RULE_Z_ALARM`, one against the features'
baseline and one against the winsorized one, so their scores share a scale and combine as they
are, as the largest of the two (alarm when either would) or their mean, without a calibrator per
member; the head's own calibrator maps the combination to a probability.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from forehand.errors import ConfigError
from forehand.predict._config import SECOND_US, PredictorConfig, time_constant_alpha
from forehand.predict._models import (
    BLEND_MODES,
    RULE_GAIN,
    RULE_Z_ALARM,
    RiskModel,
    RuleModel,
    path_rule_components,
    server_rule_components,
)

__all__ = [
    "BLEND_MODES",
    "DeviationBlendModel",
    "EntityModel",
    "RobustDetectorConfig",
    "RobustZModel",
    "WinsorizedBaseline",
    "deviation_blend",
    "robust_model",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustDetectorConfig:
    """How a robust baseline learns."""

    clip_deviations: float = 3.0
    """Each sample is learned clipped to the baseline mean +- this many deviations (the
    three-sigma rule): a normal sample is learned as it is, an outlier by a bounded step."""
    warmup_samples: int = 12
    """Samples learned unclipped first (a plain running mean and variance), before the deviation
    means anything."""

    def __post_init__(self) -> None:
        if not self.clip_deviations > 0:
            raise ConfigError(f"clip_deviations must be positive, got {self.clip_deviations}")
        if self.warmup_samples < 1:
            raise ConfigError(f"warmup_samples must be at least 1, got {self.warmup_samples}")


@runtime_checkable
class EntityModel(Protocol):
    """A model with state per server: scored on the server's raw values, not its features alone."""

    def score_entity(
        self,
        entity: str,
        *,
        values: Mapping[str, float],
        features: Mapping[str, float],
        now_us: int,
    ) -> float:
        """Fold in the server's raw `values` at `now_us` and return its raw score."""
        ...

    def contributions_entity(
        self, entity: str, features: Mapping[str, float]
    ) -> list[tuple[str, float]]:
        """The terms of the server's newest score, largest first."""
        ...

    def forget_entity(self, entity: str) -> None:
        """Drop the server's state (it left the fleet)."""
        ...


class WinsorizedBaseline:
    """Exponentially weighted mean and variance that learn each sample clipped to the mean +-
    `clip_deviations` deviations, after `warmup_samples` learned as they are.

    During warm-up the weight of a sample is at least 1/count, as in `Baseline`, so the first
    samples form a plain running mean and variance.
    """

    __slots__ = ("_clip", "_time_constant_us", "_warmup", "count", "mean", "variance")

    def __init__(self, *, time_constant_us: int, config: RobustDetectorConfig) -> None:
        assert time_constant_us > 0
        self._time_constant_us = time_constant_us
        self._clip = config.clip_deviations
        self._warmup = config.warmup_samples
        self.count = 0
        """Samples learned."""
        self.mean = 0.0
        """The weighted mean."""
        self.variance = 0.0
        """The weighted variance."""

    def deviation(self, *, floor: float) -> float:
        """The standard deviation, at least `floor`."""
        return max(math.sqrt(max(self.variance, 0.0)), floor)

    def update(self, x: float, *, elapsed_us: int, floor: float) -> None:
        """Learn `x`, clipped once warm (`floor` is the least deviation the clip assumes)."""
        self.count += 1
        alpha = max(time_constant_alpha(elapsed_us, self._time_constant_us), 1.0 / self.count)
        if self.count > self._warmup:
            bound = self._clip * self.deviation(floor=floor)
            x = min(max(x, self.mean - bound), self.mean + bound)
        difference = x - self.mean
        increment = alpha * difference
        self.mean += increment
        self.variance = (1.0 - alpha) * (self.variance + difference * increment)


class _MetricState:
    """One metric of one server: its robust baseline, fast EWMAs of the raw value, newest raw."""

    __slots__ = ("averages", "baseline", "last_raw")

    def __init__(self, *, baseline: WinsorizedBaseline, averages: int) -> None:
        self.baseline = baseline
        self.averages: list[float | None] = [None] * averages
        self.last_raw: float | None = None


class _EntityState:
    """One server: a state per metric without a scale, its newest sample time and terms."""

    __slots__ = ("last_us", "metrics", "terms")

    def __init__(self, *, metrics: list[_MetricState]) -> None:
        self.metrics = metrics
        self.last_us: int | None = None
        self.terms: list[tuple[str, float]] = []


class RobustZModel:
    """The largest absolute deviation of a server's unscaled metrics from their robust baselines.

    Single-scale, the deviation of the sample itself; multi-scale, also of EWMAs of the raw value
    at the features' time constants (a level shift too small to stand out in one sample stands
    out in an average of several), all against the same baseline. Each deviation is in baseline
    deviations (the metric's `noise_floor` at least), clipped to the features' `z_score_max`,
    and counts as 1.0 at `RULE_Z_ALARM`; the score is `RULE_GAIN * (largest term - 1)` as the
    rule's. Without an entity (`score`) only the scaled metrics' rule components count.
    """

    def __init__(
        self,
        *,
        config: PredictorConfig,
        detector: RobustDetectorConfig,
        multi_scale: bool,
        name: str,
    ) -> None:
        self.name = name
        self._config = config
        self._detector = detector
        self._metrics = tuple(metric for metric in config.metrics if metric.scale is None)
        features = config.features
        self._time_constants_us = features.ewma_time_constants_us if multi_scale else ()
        self._names = tuple(
            (
                f"{metric.name}.robust_z",
                *(
                    f"{metric.name}.ewma_{tc // SECOND_US}s_robust_z"
                    for tc in self._time_constants_us
                ),
            )
            for metric in self._metrics
        )
        self._scaled = RuleModel(
            components=tuple(
                c for c in server_rule_components(config) if not c.name.endswith(".z")
            ),
            name=name,
        )
        self._entities: OrderedDict[str, _EntityState] = OrderedDict()

    @property
    def entities(self) -> int:
        """Servers with state (at most `servers_max`)."""
        return len(self._entities)

    def _state(self, entity: str) -> _EntityState:
        entities = self._entities
        state = entities.get(entity)
        if state is not None:
            entities.move_to_end(entity)
            return state
        if len(entities) >= self._config.servers_max:
            entities.popitem(last=False)
        state = entities[entity] = _EntityState(
            metrics=[
                _MetricState(
                    baseline=WinsorizedBaseline(
                        time_constant_us=self._config.features.baseline_time_constant_us,
                        config=self._detector,
                    ),
                    averages=len(self._time_constants_us),
                )
                for _ in self._metrics
            ]
        )
        return state

    def score_entity(
        self,
        entity: str,
        *,
        values: Mapping[str, float],
        features: Mapping[str, float],
        now_us: int,
    ) -> float:
        """Fold in the unscaled metrics' raw values (a missing or non-finite one repeats the newest
        finite one) and score."""
        state = self._state(entity)
        elapsed_us = 0 if state.last_us is None else max(now_us - state.last_us, 0)
        state.last_us = now_us
        bound = self._config.features.z_score_max
        terms: list[tuple[str, float]] = []
        for metric, metric_state, names in zip(
            self._metrics, state.metrics, self._names, strict=True
        ):
            raw = values.get(metric.name)
            if raw is None or not math.isfinite(raw):
                # A missing or non-finite value repeats the newest finite one: a NaN learned once
                # would leave the baseline NaN for good.
                raw = metric_state.last_raw
                if raw is None:
                    continue
            metric_state.last_raw = raw
            baseline = metric_state.baseline
            # The deviation is taken against the baseline before it learns the sample.
            floor = metric.noise_floor or max(1e-9 * abs(baseline.mean), 1e-12)
            deviation = baseline.deviation(floor=floor) if baseline.count else floor
            mean = baseline.mean if baseline.count else raw
            terms.append((names[0], min(abs(raw - mean) / deviation, bound) / RULE_Z_ALARM))
            averages = metric_state.averages
            for index, tc in enumerate(self._time_constants_us):
                average = averages[index]
                if average is None:
                    average = raw
                else:
                    average += time_constant_alpha(elapsed_us, tc) * (raw - average)
                averages[index] = average
                z = min(abs(average - mean) / deviation, bound)
                terms.append((names[index + 1], z / RULE_Z_ALARM))
            baseline.update(raw, elapsed_us=elapsed_us, floor=floor)
        state.terms = terms
        largest = max((value for _, value in terms), default=0.0)
        return RULE_GAIN * (max(largest, self._scaled.largest(features)) - 1.0)

    def score(self, features: Mapping[str, float]) -> float:
        """Without an entity: the scaled metrics' rule components only."""
        return self._scaled.score(features)

    def learn(
        self, features: Mapping[str, float], label: bool, *, score: float | None = None
    ) -> None:
        """Detectors do not learn from labels; their baselines learn from every sample."""

    def contributions(self, features: Mapping[str, float]) -> list[tuple[str, float]]:
        """Without an entity: the scaled metrics' rule components."""
        return self._scaled.contributions(features)

    def contributions_entity(
        self, entity: str, features: Mapping[str, float]
    ) -> list[tuple[str, float]]:
        """The newest deviations of the server (over `RULE_Z_ALARM`) and the scaled components,
        largest first."""
        state = self._entities.get(entity)
        own = [] if state is None else list(state.terms)
        values = own + self._scaled.contributions(features)
        values.sort(key=lambda item: (-item[1], item[0]))
        return values

    def forget_entity(self, entity: str) -> None:
        """Drop the server's baselines."""
        self._entities.pop(entity, None)

    @property
    def drifts_detected(self) -> int:
        """Detectors never drift."""
        return 0


def robust_model(
    config: PredictorConfig,
    kind: str,
    *,
    multi_scale: bool,
    name: str,
    detector: RobustDetectorConfig | None = None,
) -> RiskModel:
    """The robust detector for servers; the path rule, under the same name, for paths."""
    if kind != "server":
        return RuleModel(components=path_rule_components(config), name=name)
    return _robust_z(config, detector=detector, multi_scale=multi_scale, name=name)


def _robust_z(
    config: PredictorConfig,
    *,
    detector: RobustDetectorConfig | None,
    multi_scale: bool,
    name: str,
) -> RobustZModel:
    return RobustZModel(
        config=config,
        detector=RobustDetectorConfig() if detector is None else detector,
        multi_scale=multi_scale,
        name=name,
    )


class DeviationBlendModel:
    """The rule and a robust detector of the same server, combined on their common scale.

    Both members score `RULE_GAIN * (largest deviation over RULE_Z_ALARM - 1)`, so the largest
    (`mode` "max") or the mean (`mode` "mean") of their raw scores is again a deviation score on
    that scale. Neither learns from labels; the head's calibrator does.
    """

    def __init__(self, *, name: str, rule: RuleModel, detector: RobustZModel, mode: str) -> None:
        if mode not in BLEND_MODES:
            raise ConfigError(f"a deviation blend's mode is one of {BLEND_MODES}, got {mode!r}")
        self.name = name
        self._rule = rule
        self._detector = detector
        self._mode = mode

    def _combine(self, first: float, second: float) -> float:
        return max(first, second) if self._mode == "max" else (first + second) / 2.0

    def score_entity(
        self,
        entity: str,
        *,
        values: Mapping[str, float],
        features: Mapping[str, float],
        now_us: int,
    ) -> float:
        """The detector folds in the raw values; its score and the rule's, combined."""
        detected = self._detector.score_entity(
            entity, values=values, features=features, now_us=now_us
        )
        return self._combine(self._rule.score(features), detected)

    def score(self, features: Mapping[str, float]) -> float:
        """Without an entity: the rule and the detector's scaled components, combined."""
        return self._combine(self._rule.score(features), self._detector.score(features))

    def learn(
        self, features: Mapping[str, float], label: bool, *, score: float | None = None
    ) -> None:
        """Neither member learns from labels."""

    def contributions(self, features: Mapping[str, float]) -> list[tuple[str, float]]:
        """Without an entity: the rule's components."""
        return self._rule.contributions(features)

    def contributions_entity(
        self, entity: str, features: Mapping[str, float]
    ) -> list[tuple[str, float]]:
        """Both members' terms (the rule's and the detector's deviations), largest first."""
        values = self._rule.contributions(features) + [
            term
            for term in self._detector.contributions_entity(entity, features)
            if term[0].endswith("robust_z")
        ]
        values.sort(key=lambda item: (-item[1], item[0]))
        return values

    def forget_entity(self, entity: str) -> None:
        """Drop the detector's state of the server."""
        self._detector.forget_entity(entity)

    @property
    def entities(self) -> int:
        """Servers with detector state (at most `servers_max`)."""
        return self._detector.entities

    @property
    def drifts_detected(self) -> int:
        """Neither member drifts."""
        return 0


def deviation_blend(
    config: PredictorConfig,
    kind: str,
    *,
    mode: str,
    multi_scale: bool,
    name: str,
    detector: RobustDetectorConfig | None = None,
) -> RiskModel:
    """The rule and a robust detector blended for servers; the path rule, same name, for paths."""
    if kind != "server":
        return robust_model(config, kind, multi_scale=multi_scale, name=name)
    return DeviationBlendModel(
        name=name,
        rule=RuleModel(components=server_rule_components(config)),
        detector=_robust_z(config, detector=detector, multi_scale=multi_scale, name=name),
        mode=mode,
    )
