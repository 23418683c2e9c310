"""The robust detectors: winsorized baselines, their scores, state bounds, snapshots."""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Iterator

import pytest

from forehand.errors import ConfigError
from forehand.predict import (
    EntityKey,
    FeatureConfig,
    MetricSpec,
    OnlinePredictor,
    PredictorConfig,
    Sample,
    ServerSample,
    make_model,
)
from forehand.predict._detectors import (
    EntityModel,
    RobustDetectorConfig,
    RobustZModel,
    WinsorizedBaseline,
)
from forehand.predict._features import Baseline
from forehand.predict._models import RULE_GAIN, RULE_Z_ALARM, RuleModel
from forehand.predict_io import NAB_MODELS

from ._streams import S

TICK_US = 300 * S
CONFIG = PredictorConfig(
    metrics=(MetricSpec(name="value"),),
    features=FeatureConfig(
        ewma_time_constants_us=(3 * TICK_US, 12 * TICK_US),
        baseline_time_constant_us=288 * TICK_US,
        rtt_min_window_ticks=1,
    ),
    calibration_labels_min=0,
)
"""One unscaled metric sampled every 5 minutes, as `nab_predictor_config` builds it."""
HAND = RobustDetectorConfig(clip_deviations=1.0, warmup_samples=2)
"""A detector whose steps are easy to follow by hand."""


def _model(*, multi_scale: bool = False, config: PredictorConfig = CONFIG) -> RobustZModel:
    return RobustZModel(config=config, detector=HAND, multi_scale=multi_scale, name="robust_z")


def test_winsorized_baseline_by_hand() -> None:
    """Warm-up learns 1 and 3 as they are; then 10 is learned as mean + 1 deviation (3)."""
    baseline = WinsorizedBaseline(time_constant_us=10**15, config=HAND)
    baseline.update(1.0, elapsed_us=0, floor=1e-12)
    baseline.update(3.0, elapsed_us=0, floor=1e-12)
    assert (baseline.mean, baseline.variance) == (2.0, 1.0)  # running mean, population variance
    baseline.update(10.0, elapsed_us=0, floor=1e-12)
    # 10 clipped to 2 + 1 * 1 = 3; weight 1/3: mean 2 + 1/3, variance (2/3) * (1 + 1/3).
    assert baseline.mean == pytest.approx(7.0 / 3.0)
    assert baseline.variance == pytest.approx(8.0 / 9.0)
    assert baseline.deviation(floor=5.0) == 5.0


def test_robust_z_scores_by_hand() -> None:
    """Each score is the sample's deviation from the baseline before it learns the sample."""
    model = _model()
    scores = [
        model.score_entity("s", values={"value": value}, features={}, now_us=0)
        for value in (1.0, 3.0, 10.0, 3.0)
    ]
    bound = CONFIG.features.z_score_max
    expected_z = [
        0.0,  # no baseline yet
        bound,  # a deviation of 2 against the floor (1e-9) of a flat baseline, clipped
        8.0,  # mean 2, deviation 1
        (3.0 - 7.0 / 3.0) / math.sqrt(8.0 / 9.0),  # the 10 was learned as a 3
    ]
    for score, z in zip(scores, expected_z, strict=True):
        assert score == pytest.approx(RULE_GAIN * (z / RULE_Z_ALARM - 1.0))
    top = model.contributions_entity("s", {})
    assert top[0][0] == "value.robust_z"
    assert top[0][1] == pytest.approx(expected_z[-1] / RULE_Z_ALARM)


def test_robust_z_beats_a_plain_baseline_on_a_lasting_anomaly() -> None:
    """A lasting shift keeps standing out against the winsorized baseline longer than against a
    baseline that learns it as it is (the features' `Baseline`, the rule's z-score)."""
    rng = random.Random(3)
    values = [rng.gauss(10.0, 1.0) for _ in range(500)] + [
        30.0 + rng.gauss(0.0, 1.0) for _ in range(30)
    ]
    robust = RobustZModel(
        config=CONFIG, detector=RobustDetectorConfig(), multi_scale=False, name="robust_z"
    )
    plain = Baseline(time_constant_us=CONFIG.features.baseline_time_constant_us)
    robust_z, plain_z = [], []
    for tick, value in enumerate(values):
        score = robust.score_entity(
            "s", values={"value": value}, features={}, now_us=tick * TICK_US
        )
        robust_z.append(RULE_Z_ALARM * (score / RULE_GAIN + 1.0))
        z = abs(value - plain.mean) / plain.deviation(floor=1e-12) if tick else 0.0
        plain_z.append(min(z, CONFIG.features.z_score_max))
        plain.update(value, elapsed_us=TICK_US if tick else 0)
    # Both see the shift at once (z clipped at 20); 30 ticks on, only the robust one still does.
    assert robust_z[500] == plain_z[500] == CONFIG.features.z_score_max
    assert robust_z[-1] > RULE_Z_ALARM > plain_z[-1]


def test_multi_scale_terms_by_hand() -> None:
    """Multi-scale adds EWMAs of the raw value, each against the same baseline."""
    model = _model(multi_scale=True)
    model.score_entity("s", values={"value": 1.0}, features={}, now_us=0)
    model.score_entity("s", values={"value": 3.0}, features={}, now_us=TICK_US)
    terms = dict(model.contributions_entity("s", {}))
    # Baseline after 1: mean 1 with the floor as deviation, so each term is clipped.
    assert set(terms) >= {"value.robust_z", "value.ewma_900s_robust_z", "value.ewma_3600s_robust_z"}
    model.score_entity("s", values={"value": 4.0}, features={}, now_us=2 * TICK_US)
    terms = dict(model.contributions_entity("s", {}))
    # Baseline after 1, 3 (weights 1, 1/2 beat the time constant's): mean 2, deviation 1.
    fast = 1.0 + (1.0 - math.exp(-1.0 / 3.0)) * 2.0  # the 900 s EWMA after 1 and 3
    fast += (1.0 - math.exp(-1.0 / 3.0)) * (4.0 - fast)
    assert terms["value.robust_z"] == pytest.approx(2.0 / RULE_Z_ALARM)
    assert terms["value.ewma_900s_robust_z"] == pytest.approx((fast - 2.0) / RULE_Z_ALARM)


def _stream(*, seed: int, ticks: int, servers: int = 3) -> Iterator[tuple[int, list[Sample]]]:
    """Noisy unscaled series with a lasting level shift and a breach flag after it."""
    rng = random.Random(seed)
    for tick in range(ticks):
        samples: list[Sample] = []
        for index in range(servers):
            shifted = (tick + 97 * index) % 400 > 340
            value = 50.0 + rng.gauss(0.0, 3.0) + (25.0 if shifted else 0.0)
            breached = (tick + 97 * index) % 400 > 370
            samples.append(
                ServerSample(server_id=f"s{index}", values={"value": value}, breached=breached)
            )
        yield tick * TICK_US, samples


def _replay(predictor: OnlinePredictor, ticks: Iterator[tuple[int, list[Sample]]]) -> list[float]:
    probabilities: list[float] = []
    for now_us, samples in ticks:
        for sample in samples:
            predictor.observe(sample, now_us=now_us)
        for index in range(3):
            probabilities.extend(predictor.probabilities(EntityKey(f"s{index}")).values())
    return probabilities


MODELS = ("robust_z", "robust_zscore", "rule")


def test_detectors_are_deterministic_under_a_seed() -> None:
    """The same seed and stream give the same probabilities from every detector head."""
    runs = [
        _replay(
            OnlinePredictor(config=CONFIG, rng=random.Random(5), models=MODELS),
            _stream(seed=1, ticks=600),
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert len(set(runs[0])) > 100  # the heads do move


def test_state_is_bounded_over_10k_ticks() -> None:
    """An entity's state does not grow with its ticks, and the table stays within servers_max."""
    model = _model(
        multi_scale=True,
        config=PredictorConfig(metrics=CONFIG.metrics, features=CONFIG.features, servers_max=4),
    )
    rng = random.Random(2)
    sizes = []
    for tick in range(10_000):
        model.score_entity(
            "s", values={"value": rng.gauss(0.0, 1.0)}, features={}, now_us=tick * TICK_US
        )
        if tick in (999, 9_999):
            sizes.append(len(pickle.dumps(model)))
    # Integers (a count, a time) take a byte more as they grow; a state growing with its ticks
    # would add at least 9,000 entries.
    assert abs(sizes[1] - sizes[0]) <= 8
    for index in range(10):
        model.score_entity(f"other{index}", values={"value": 1.0}, features={}, now_us=0)
    assert model.entities == 4
    model.forget_entity("other9")
    assert model.entities == 3


def test_snapshot_restore_round_trip() -> None:
    """A restored predictor continues exactly as the one it was taken from."""
    first = OnlinePredictor(config=CONFIG, rng=random.Random(5), models=MODELS)
    ticks = list(_stream(seed=4, ticks=500))
    _replay(first, iter(ticks[:300]))
    second = OnlinePredictor(config=CONFIG, rng=random.Random(99), models=MODELS)
    second.restore(first.snapshot())
    assert _replay(first, iter(ticks[300:])) == _replay(second, iter(ticks[300:]))


def test_predictor_explains_and_forgets_per_server() -> None:
    """A detector head explains a server's risk by its deviations; forget drops its baselines."""
    predictor = OnlinePredictor(config=CONFIG, rng=random.Random(5), models=MODELS)
    _replay(predictor, _stream(seed=6, ticks=100))
    risk = predictor.risk(EntityKey("s0"), now_us=100 * TICK_US)
    assert risk.model == "robust_z"
    assert risk.top_features[0].name == "value.robust_z"
    head = predictor._heads["server"][0]
    assert isinstance(head.model, RobustZModel) and isinstance(head.model, EntityModel)
    assert head.model.entities == 3
    predictor.forget("s0")
    assert head.model.entities == 2


def test_registry_config_and_nab_candidates() -> None:
    """Both detectors are registered, serve paths with the path rule, and run on NAB; a bad
    detector config is refused."""
    rng = random.Random(1)
    for name in ("robust_z", "robust_zscore"):
        assert name in NAB_MODELS
        assert isinstance(make_model(name, config=CONFIG, kind="server", rng=rng), RobustZModel)
        path = make_model(name, config=CONFIG, kind="path", rng=rng)
        assert isinstance(path, RuleModel) and path.name == name
    with pytest.raises(ConfigError):
        RobustDetectorConfig(clip_deviations=0.0)
    with pytest.raises(ConfigError):
        RobustDetectorConfig(warmup_samples=0)


def test_missing_and_non_finite_values_repeat_the_newest() -> None:
    """A NaN, an infinity or a missing value scores and learns as the newest finite value did."""
    first, second = _model(), _model()
    for value in (1.0, 3.0, 2.0):
        first.score_entity("s", values={"value": value}, features={}, now_us=0)
        second.score_entity("s", values={"value": value}, features={}, now_us=0)
    for bad in ({"value": math.nan}, {"value": math.inf}, {}):
        assert first.score_entity("s", values=bad, features={}, now_us=0) == (
            second.score_entity("s", values={"value": 2.0}, features={}, now_us=0)
        )
    assert math.isfinite(first.score_entity("s", values={"value": 5.0}, features={}, now_us=0))
    assert _model().score_entity("t", values={}, features={}, now_us=0) == -RULE_GAIN
