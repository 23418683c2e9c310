"""The NAB primary's candidates: multi-scale z-scores, class balance, |z| inputs, blends."""

from __future__ import annotations

import math
import random

import pytest

from forehand.errors import ConfigError
from forehand.predict import (
    BlendModel,
    EntityKey,
    FeatureConfig,
    LogisticModel,
    MetricSpec,
    MetricTracker,
    OnlinePredictor,
    PredictorConfig,
    make_model,
)
from forehand.predict._calibration import logit, sigmoid
from forehand.predict._models import POSITIVE_WEIGHT_MAX
from forehand.predict_io import NAB_MODELS

from ._streams import S, ramp_stream
from .test_predictor import CONFIG


def test_extra_baseline_z_scores_by_hand() -> None:
    """`m.z_<tau>s` is the sample against that baseline before it learns the sample."""
    config = FeatureConfig(extra_baseline_time_constants_us=(10**12,))
    tracker = MetricTracker(spec=MetricSpec(name="m"), config=config)
    out: dict[str, float] = {}
    tracker.update(2.0, elapsed_us=0, horizon_s=600.0, out=out)
    assert out["m.z_1000000s"] == 0.0  # no baseline yet
    for value in (4.0, 6.0):
        tracker.update(value, elapsed_us=S, horizon_s=600.0, out=out)
    # Warm-up: a plain running mean of 2, 4, 6 (4.0) and population variance 8/3.
    tracker.update(10.0, elapsed_us=S, horizon_s=600.0, out=out)
    assert out["m.z_1000000s"] == pytest.approx(6.0 / math.sqrt(8.0 / 3.0))
    assert "m.z_1000000s" not in _features_without_extra()
    with pytest.raises(ConfigError):
        FeatureConfig(extra_baseline_time_constants_us=(0,))


def _features_without_extra() -> dict[str, float]:
    tracker = MetricTracker(spec=MetricSpec(name="m"), config=FeatureConfig())
    out: dict[str, float] = {}
    tracker.update(1.0, elapsed_us=0, horizon_s=600.0, out=out)
    return out


def test_balanced_weight_is_negatives_over_positives_capped() -> None:
    """A positive weighs negatives seen / positives seen, at least 1, at most the cap."""
    model = LogisticModel(config=PredictorConfig(), balanced=True)
    for _ in range(4):
        model.learn({"x": 0.0}, False)
    assert model._weight(True) == 4.0  # 4 negatives, 1 positive
    assert model._weight(True) == 2.0  # 4 negatives, 2 positives
    for _ in range(1_000):
        model._weight(False)
    assert model._weight(True) == POSITIVE_WEIGHT_MAX
    assert LogisticModel(config=PredictorConfig())._weight(True) == 1.0


def test_balanced_logistic_scores_rare_positives_higher() -> None:
    """With 5% positives the balanced regression rates the positive region higher."""
    probabilities = {}
    for balanced in (False, True):
        model = LogisticModel(config=PredictorConfig(stack_rule=False), balanced=balanced)
        rng = random.Random(7)
        for _ in range(3_000):
            x = rng.random()
            model.learn({"x": x}, x > 0.95)
        probabilities[balanced] = model.probability({"x": 0.99})
    assert probabilities[True] > probabilities[False]


def test_absolute_z_inputs_and_their_hinges() -> None:
    """`logistic_abs` adds |z| for every z-score with hinges at 2 and 4 deviations."""
    model = make_model(
        "logistic_abs", config=PredictorConfig(), kind="server", rng=random.Random(1)
    )
    assert isinstance(model, LogisticModel) and model.name == "logistic_abs"
    inputs = model._inputs({"value.z": -5.0, "value.z_3600s": 3.0, "value.level": -5.0})
    assert inputs["|value.z|"] == 5.0
    assert inputs["|value.z|>2"] == 3.0 and inputs["|value.z|>4"] == 1.0
    assert inputs["|value.z_3600s|>2"] == 1.0 and inputs["|value.z_3600s|>4"] == 0.0
    assert "|value.level|" not in inputs
    plain = make_model("logistic", config=PredictorConfig(), kind="server", rng=random.Random(1))
    assert isinstance(plain, LogisticModel)
    assert "|value.z|" not in plain._inputs({"value.z": -5.0})


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_blend_combines_calibrated_member_probabilities(mode: str) -> None:
    """Fresh calibrators are the identity: rule score 2 -> sigmoid(2), untrained logistic 0.5."""
    model = make_model(
        f"blend_{mode}_logistic", config=PredictorConfig(), kind="server", rng=random.Random(1)
    )
    features = {"cpu_utilization.level": 1.25}  # the rule's score: 8 * (1.25 - 1) = 2
    expected = sigmoid(2.0) if mode == "max" else (sigmoid(2.0) + 0.5) / 2
    assert model.score(features) == pytest.approx(logit(expected))
    if mode == "max":
        assert model.contributions(features)[0] == ("cpu_utilization.level", 1.25)


def test_blend_refuses_bad_modes_and_lone_members() -> None:
    """A blend needs a known mode and at least two members."""
    rule = make_model("rule", config=PredictorConfig(), kind="server", rng=random.Random(1))
    with pytest.raises(ConfigError):
        BlendModel(name="b", members=(rule, rule), mode="median", learning_rate=0.05)
    with pytest.raises(ConfigError):
        BlendModel(name="b", members=(rule,), mode="max", learning_rate=0.05)


def _nab_heads(seed: int) -> list[dict[str, float]]:
    predictor = OnlinePredictor(config=CONFIG, rng=random.Random(seed), models=NAB_MODELS)
    history = []
    for now_us, samples in ramp_stream(seed=3, ticks=400):
        for sample in samples:
            predictor.observe(sample, now_us=now_us)
        history.append(predictor.probabilities(EntityKey("s0")))
    return history


def test_nab_candidates_are_deterministic_under_a_seed() -> None:
    """Every NAB head, blends included, gives the same risks for the same inputs and seed."""
    first = _nab_heads(5)
    assert first == _nab_heads(5)
    assert set(first[-1]) == set(NAB_MODELS)
    assert first != _nab_heads(6)


def test_zscore_detector_reads_the_averages_deviation_too() -> None:
    """The z-score detector scores the largest |z| of the sample and of its EWMAs over the rule's
    alarm level: a shift of 3 deviations held in the slow average alarms where the sample's own
    z-score (the rule's view) stays below it."""
    config = PredictorConfig(metrics=(MetricSpec(name="value"),))
    zscore = make_model("zscore", config=config, kind="server", rng=random.Random(1))
    rule = make_model("rule", config=config, kind="server", rng=random.Random(1))
    assert zscore.name == "zscore"
    features = {"value.z": 2.0, "value.ewma_600s_z": -5.0, "value.ewma_30s_z": 1.0}
    assert zscore.score(features) == pytest.approx(8.0 * (5.0 / 4.0 - 1.0))
    assert rule.score(features) == pytest.approx(8.0 * (2.0 / 4.0 - 1.0))
    assert zscore.contributions(features)[0] == ("value.ewma_600s_z", 1.25)
