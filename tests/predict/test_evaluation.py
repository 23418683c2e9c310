"""Event-level evaluation: windows, refractory alarms, floors, calibration, validation-only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forehand.predict import (
    EntitySeries,
    EvaluationConfig,
    EvaluationReport,
    LabelledEvent,
    ModelReport,
    ThresholdMode,
    alarm_times,
    brier_skill_score,
    calibration_error,
    evaluate,
    random_floor,
    tick_labels,
)

S = 1_000_000
H, L = 600 * S, 10 * S


def test_random_floor_formula() -> None:
    """1 - exp(-rate (H - L)); one alarm per day over a 590 s window."""
    rate = 1.0 / 86_400
    assert random_floor(rate, horizon_us=H, lead_us=L) == pytest.approx(1 - math.exp(-590 / 86_400))


def test_tick_labels_window_is_half_open() -> None:
    """Positive iff an onset lies in (t + L, t + H]."""
    times = np.array([0, 90 * S, 100 * S, 590 * S, 600 * S], dtype=np.int64)
    labels = tick_labels(times, np.array([600 * S], dtype=np.int64), horizon_us=H, lead_us=L)
    assert labels.tolist() == [True, True, True, False, False]


def test_alarms_respect_refractory_and_mask() -> None:
    """At most one alarm per refractory period, none inside the mask."""
    times = np.arange(0, 100, dtype=np.int64) * 10 * S
    scores = np.zeros(100)
    scores[10:40] = 1.0
    scores[70:75] = 1.0
    masked = np.zeros(100, dtype=np.bool_)
    masked[70:75] = True
    alarms = alarm_times(times, scores, 0.5, refractory_us=100 * S, masked=masked)
    assert alarms.tolist() == [100 * S, 200 * S, 300 * S]


def test_brier_skill_and_calibration_error_by_hand() -> None:
    """Perfect forecasts score 1 and 0; the base rate scores 0 skill."""
    labels = np.array([True, False, False, False])
    assert brier_skill_score(labels.astype(np.float64), labels) == pytest.approx(1.0)
    assert brier_skill_score(np.full(4, 0.25), labels) == pytest.approx(0.0)
    assert calibration_error(np.full(4, 0.25), labels) == pytest.approx(0.0)
    assert calibration_error(np.full(4, 0.55), labels) == pytest.approx(0.30)


def _series(seed: int) -> tuple[list[EntitySeries], list[LabelledEvent]]:
    rng = np.random.default_rng(seed)
    times = np.arange(0, 8 * 86_400 * S, 10 * S, dtype=np.int64)
    onsets = np.sort(rng.choice(times[200:-200], 80, replace=False))
    events = [
        LabelledEvent(entity="a", onset_us=int(o), end_us=int(o) + 60 * S, kind="ramp")
        for o in onsets
    ]
    labels = tick_labels(times, onsets, horizon_us=H, lead_us=L)
    oracle = np.where(labels, 0.9, 0.05) + rng.normal(0.0, 0.01, len(times))
    noise = rng.random(len(times))
    return [
        EntitySeries(entity="a", times_us=times, scores={"oracle": oracle, "noise": noise})
    ], events


def test_oracle_predicts_everything_and_noise_sits_at_its_floor() -> None:
    """A perfect score has recall 1 with no false alarm; a random one stays near its floor."""
    series, events = _series(1)
    report = evaluate(
        series, events, EvaluationConfig(horizon_us=H, lead_us=L, groups={"ramps": ("ramp",)})
    )
    assert report.test_events["all"] == report.test_events["ramps"] > 20
    oracle = [row for row in report.model("oracle").rows if row.group == "all"]
    assert all(row.recall == 1.0 and row.false_alarms_per_day == 0.0 for row in oracle)
    assert all(row.lead_s_median >= 500 and row.precision == 1.0 for row in oracle)
    noise = [row for row in report.model("noise").rows if row.group == "all"]
    for row in noise:
        assert row.recall <= row.random_floor + 0.2
    assert report.model("oracle").brier_skill > 0.9
    assert report.model("noise").brier_skill < 0


def test_thresholds_come_from_validation_only() -> None:
    """Changing the test split's scores never changes the chosen threshold."""
    series, events = _series(2)
    config = EvaluationConfig(horizon_us=H, lead_us=L, threshold_mode=ThresholdMode.ALARMS)
    first = evaluate(series, events, config)
    entry = series[0]
    times = entry.times_us
    test_start = times[0] + int((times[-1] - times[0]) * 0.6)
    shifted = {
        name: np.where(times >= test_start, values * 0.5, values)
        for name, values in entry.scores.items()
    }
    second = evaluate([EntitySeries(entity="a", times_us=times, scores=shifted)], events, config)
    for name in ("oracle", "noise"):
        thresholds = [row.threshold for row in first.model(name).rows]
        assert thresholds == [row.threshold for row in second.model(name).rows]
    assert second.model("oracle").rows[0].recall == 0.0  # the test scores fell below it


def test_evaluation_config_validation() -> None:
    """Splits must leave a test part; budgets are positive."""
    from forehand.errors import ConfigError

    with pytest.raises(ConfigError):
        EvaluationConfig(horizon_us=H, lead_us=L, warmup_fraction=0.5, validation_fraction=0.5)
    with pytest.raises(ConfigError):
        EvaluationConfig(horizon_us=H, lead_us=H)


def test_the_primary_is_chosen_on_validation_only() -> None:
    """Best validation recall, then Brier skill, wins; the baseline never; ties keep the default."""

    def model(name: str, recall: float, skill: float, test: float = 0.0) -> ModelReport:
        return ModelReport(
            model=name,
            rows=(),
            brier_skill=test,
            calibration_error=0.0,
            base_rate=0.1,
            validation_brier_skill=skill,
            validation_recall=recall,
        )

    def chosen(*models: ModelReport) -> str:
        report = EvaluationReport(
            models=models, test_entity_days=1.0, validation_entity_days=1.0, test_events={}
        )
        return report.selected_model("logistic")

    assert chosen(model("logistic", 0.3, 0.1, 0.9), model("tree", 0.5, -0.2, -0.5)) == "tree"
    assert chosen(model("logistic", 0.5, 0.1), model("tree", 0.5, 0.2)) == "tree"
    assert chosen(model("logistic", 0.5, 0.2), model("tree", 0.5, 0.2)) == "logistic"
    assert chosen(model("logistic", 0.1, 0.0), model("rule", 0.9, 0.9)) == "logistic"
    assert chosen(model("logistic", math.nan, math.nan), model("tree", 0.0, math.nan)) == "tree"
    assert chosen(model("rule", 0.9, 0.9)) == "logistic"
