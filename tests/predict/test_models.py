"""Models and calibration: the rule baseline's arithmetic, learners learn, Platt calibrates."""

from __future__ import annotations

import random

import pytest

from forehand.errors import ConfigError
from forehand.predict import (
    LogisticModel,
    PlattCalibrator,
    PredictorConfig,
    TreeModel,
    make_model,
)
from forehand.predict._models import RULE_GAIN


def test_rule_is_the_largest_normalised_component() -> None:
    """Level over capacity or time-to-threshold share, whichever is larger."""
    rule = make_model("rule", config=PredictorConfig(), kind="server", rng=random.Random(1))
    features = {
        "cpu_utilization.level": 0.5,
        "cpu_utilization.ttt": 0.75,
        "latency_us_p99.level": 0.2,
    }
    assert rule.score(features) == pytest.approx(RULE_GAIN * (0.75 - 1.0))
    assert rule.contributions(features)[0] == ("cpu_utilization.ttt", 0.75)
    with pytest.raises(ConfigError):
        make_model("nope", config=PredictorConfig(), kind="server", rng=random.Random(1))


@pytest.mark.parametrize("model_class", [LogisticModel, TreeModel])
def test_learners_separate_a_noisy_threshold(model_class: type[LogisticModel]) -> None:
    """Label = x > 0.7 with 5% flips: after training, high x scores above low x."""
    rng = random.Random(3)
    model = model_class(config=PredictorConfig())
    for _ in range(3_000):
        x = rng.random()
        label = (x > 0.7) != (rng.random() < 0.05)
        model.learn({"x": x, "noise": rng.random()}, label)
    assert model.score({"x": 0.9, "noise": 0.5}) > model.score({"x": 0.2, "noise": 0.5})


def test_platt_learns_the_base_rate_and_keeps_the_ranking() -> None:
    """On an uninformative score the calibrated probability converges near the base rate."""
    rng = random.Random(4)
    calibrator = PlattCalibrator(learning_rate=0.1)
    for _ in range(20_000):
        calibrator.learn(rng.gauss(0.0, 1.0), rng.random() < 0.1)
    assert calibrator.probability(0.0) == pytest.approx(0.1, abs=0.03)
    assert calibrator.slope > 0
    assert calibrator.probability(2.0) >= calibrator.probability(-2.0)


def test_drift_replacement_only_when_enabled() -> None:
    """After the concept flips, a background challenger starts only with replace_on_drift."""
    started = {}
    for enabled in (False, True):
        config = PredictorConfig(replace_on_drift=enabled, adwin_warning_delta=0.5)
        model = LogisticModel(config=config)
        rng = random.Random(3)
        started[enabled] = False
        for step in range(4_000):
            x = rng.random()
            model.learn({"x": x}, (x > 0.5) if step < 2_000 else (x < 0.5))
            started[enabled] |= model._background is not None
        if not enabled:
            assert model.drifts_detected == 0
    assert started == {False: False, True: True}


def test_stacked_logistic_sees_the_rule() -> None:
    """The stacked regression's inputs include the rule's largest component and its hinges."""
    model = make_model("logistic", config=PredictorConfig(), kind="server", rng=random.Random(1))
    assert isinstance(model, LogisticModel)
    inputs = model._inputs({"cpu_utilization.level": 0.9})
    assert inputs["rule.max"] == pytest.approx(0.9)
    assert inputs["rule.max>0.8"] == pytest.approx(0.1)
    plain = LogisticModel(config=PredictorConfig(stack_rule=False))
    assert "rule.max" not in plain._inputs({"cpu_utilization.level": 0.9})


def _river_probability(model: LogisticModel, features: dict[str, float]) -> float:
    """What River's own pipeline says for `features` (the slow path the fold replaces)."""
    return float(model._foreground.predict_proba_one(model._inputs(features)).get(True, 0.0))


@pytest.mark.parametrize("name", ["logistic", "logistic_abs"])
def test_folded_logistic_scores_as_river_does(name: str) -> None:
    """With a refresh after every step, the affine fold equals River's pipeline, hinges, stacked
    rule and |z| inputs included, also for an input it never saw and one that is missing."""
    config = PredictorConfig(linear_refresh_learns=1)
    model = make_model(name, config=config, kind="server", rng=random.Random(1))
    assert isinstance(model, LogisticModel)
    rng = random.Random(7)
    for step in range(1_500):
        cpu = rng.random()
        features = {
            "cpu_utilization.level": cpu,
            "cpu_utilization.ttt": rng.random() * cpu,
            "value.z": rng.gauss(0.0, 2.0),
            "constant.level": 0.3,
        }
        model.learn(features, cpu > 0.85 and rng.random() < 0.9)
        if step % 50 == 0:
            assert model.probability(features) == pytest.approx(
                _river_probability(model, features), abs=1e-12
            )
    probe = {"cpu_utilization.level": 0.95, "value.z": -5.0, "unseen.level": 2.0}
    assert model.probability(probe) == pytest.approx(_river_probability(model, probe), abs=1e-12)
    assert model.probability(probe) > model.probability({"cpu_utilization.level": 0.1})


def test_folded_logistic_lags_by_fewer_than_the_refresh_steps() -> None:
    """With `linear_refresh_learns` 4 the fold is rebuilt at every fourth step: between two
    rebuilds it keeps scoring the older model, at the rebuild it matches River again."""
    model = LogisticModel(config=PredictorConfig(linear_refresh_learns=4))
    features = {"x": 0.9}
    rng = random.Random(2)
    for _ in range(8):
        x = rng.random()
        model.learn({"x": x}, x > 0.5)
    folded = model.probability(features)
    assert folded == pytest.approx(_river_probability(model, features), abs=1e-12)
    for _ in range(3):
        model.learn({"x": 0.95}, True)
    assert model.probability(features) == folded
    assert _river_probability(model, features) != folded
    model.learn({"x": 0.95}, True)
    assert model.probability(features) == pytest.approx(
        _river_probability(model, features), abs=1e-12
    )


def test_share_features_get_their_own_knots() -> None:
    """`share_hinge_knots` bends the share features at low values, and only them; () leaves
    them the level knots alone."""
    config = PredictorConfig(share_hinge_knots=(0.1,))
    model = make_model("logistic", config=config, kind="server", rng=random.Random(1))
    assert isinstance(model, LogisticModel)
    features = {"paths.wide_degradation_share": 0.3, "cpu_utilization.level": 0.3}
    inputs = model._inputs(features)
    assert inputs["paths.wide_degradation_share>0.1"] == pytest.approx(0.2)
    assert inputs["paths.wide_degradation_share>0.5"] == 0.0
    assert "cpu_utilization.level>0.1" not in inputs
    plain = make_model(
        "logistic",
        config=PredictorConfig(share_hinge_knots=()),
        kind="server",
        rng=random.Random(1),
    )
    assert isinstance(plain, LogisticModel)
    assert "paths.wide_degradation_share>0.1" not in plain._inputs(features)
