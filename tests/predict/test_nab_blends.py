"""The NAB deviation blends: the rule and robust_z combined on their common scale."""

from __future__ import annotations

import random

import pytest

from forehand.errors import ConfigError
from forehand.predict import EntityKey, OnlinePredictor, make_model
from forehand.predict._detectors import (
    DeviationBlendModel,
    EntityModel,
    RobustZModel,
    deviation_blend,
)
from forehand.predict._models import RULE_GAIN, RULE_Z_ALARM, RuleModel, server_rule_components
from forehand.predict_io import NAB_MODELS

from .test_detectors import CONFIG, HAND, TICK_US, _stream

BLENDS = ("blend_max_robust_z", "blend_mean_robust_z")


def _blend(mode: str) -> DeviationBlendModel:
    model = deviation_blend(
        CONFIG, "server", mode=mode, multi_scale=False, name=f"blend_{mode}", detector=HAND
    )
    assert isinstance(model, DeviationBlendModel)
    return model


def test_blends_score_by_hand() -> None:
    """The max (mean) blend scores the larger (the mean) of the rule's and robust_z's scores."""
    blends = {mode: _blend(mode) for mode in ("max", "mean")}
    scores: dict[str, float] = {}
    for mode, blend in blends.items():
        for value in (1.0, 3.0):
            blend.score_entity("s", values={"value": value}, features={}, now_us=0)
        # The robust baseline after 1 and 3: mean 2, deviation 1, so 10 is 8 deviations out;
        # the features' own z-score says 2 deviations.
        scores[mode] = blend.score_entity(
            "s", values={"value": 10.0}, features={"value.z": -2.0}, now_us=0
        )
    robust = RULE_GAIN * (8.0 / RULE_Z_ALARM - 1.0)  # 8.0
    rule = RULE_GAIN * (2.0 / RULE_Z_ALARM - 1.0)  # -4.0
    assert scores["max"] == pytest.approx(max(robust, rule)) == pytest.approx(8.0)
    assert scores["mean"] == pytest.approx((robust + rule) / 2.0) == pytest.approx(2.0)
    # Without an entity only the rule's components count for an unscaled metric.
    assert blends["mean"].score({"value.z": 6.0}) == pytest.approx(
        (RULE_GAIN * (6.0 / RULE_Z_ALARM - 1.0) - RULE_GAIN) / 2.0
    )


def test_blend_explains_forgets_and_registers() -> None:
    """A blend explains a server by both members' deviations, forgets a server's baseline, serves
    paths with the path rule, runs on NAB; a bad mode is refused."""
    blend = _blend("max")
    for value in (1.0, 3.0, 10.0):
        blend.score_entity("s", values={"value": value}, features={}, now_us=0)
    terms = blend.contributions_entity("s", {"value.z": -2.0})
    assert [name for name, _ in terms[:2]] == ["value.robust_z", "value.z"]
    assert terms[0][1] == pytest.approx(8.0 / RULE_Z_ALARM)
    assert terms[1][1] == pytest.approx(2.0 / RULE_Z_ALARM)
    assert isinstance(blend, EntityModel) and blend.entities == 1
    blend.forget_entity("s")
    assert blend.entities == 0
    rng = random.Random(1)
    for name in BLENDS:
        assert name in NAB_MODELS
        server = make_model(name, config=CONFIG, kind="server", rng=rng)
        assert isinstance(server, DeviationBlendModel) and server.name == name
        path = make_model(name, config=CONFIG, kind="path", rng=rng)
        assert isinstance(path, RuleModel) and path.name == name
    detector = RobustZModel(config=CONFIG, detector=HAND, multi_scale=False, name="d")
    with pytest.raises(ConfigError, match="mode"):
        DeviationBlendModel(
            name="x",
            rule=RuleModel(components=server_rule_components(CONFIG)),
            detector=detector,
            mode="median",
        )


def test_predictor_feeds_the_blends_the_raw_values() -> None:
    """In a predictor, every tick's blend scores are the max and the mean of the rule head's and
    the robust_z head's scores of the same tick (each blend keeps its own baselines)."""
    models = ("blend_max_robust_z", "blend_mean_robust_z", "rule", "robust_z")
    predictor = OnlinePredictor(config=CONFIG, rng=random.Random(5), models=models)
    checked = 0
    for now_us, samples in _stream(seed=2, ticks=500):
        for sample in samples:
            predictor.observe(sample, now_us=now_us)
        state = predictor._bank.server("s1")
        assert state is not None
        highest, mean, rule, robust = state.scores
        assert highest == pytest.approx(max(rule, robust))
        assert mean == pytest.approx((rule + robust) / 2.0)
        checked += rule != robust
    assert checked > 100  # the members disagree, so the combination is tested
    risk = predictor.risk(EntityKey("s1"), now_us=500 * TICK_US)
    assert risk.model == "blend_max_robust_z"
    assert {feature.name for feature in risk.top_features} >= {"value.z", "value.robust_z"}
