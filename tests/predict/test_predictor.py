"""OnlinePredictor: determinism under a seed, snapshot/restore, bounds, risks with contributions."""

from __future__ import annotations

import random

import pytest

from forehand.errors import ConfigError
from forehand.predict import (
    EntityKey,
    LabelConfig,
    OnlinePredictor,
    Predictor,
    PredictorConfig,
    ServerSample,
)

from ._streams import S, ramp_stream

CONFIG = PredictorConfig(
    labels=LabelConfig(horizon_us=120 * S, lead_us=10 * S, breach_clear_us=20 * S),
    calibration_labels_min=50,
)


def _run(seed: int, ticks: int) -> tuple[OnlinePredictor, list[dict[str, float]]]:
    predictor = OnlinePredictor(config=CONFIG, rng=random.Random(seed))
    history = []
    for now_us, samples in ramp_stream(seed=3, ticks=ticks):
        for sample in samples:
            predictor.observe(sample, now_us=now_us)
        history.append(predictor.probabilities(EntityKey("s0")))
    return predictor, history


def test_same_inputs_and_seed_give_the_same_risks() -> None:
    """Two predictors with one seed agree on every risk of every model."""
    _, first = _run(5, 400)
    _, second = _run(5, 400)
    assert first == second
    _, other = _run(6, 400)
    assert other != first  # the seed matters (negative subsampling)


def test_predictor_learns_the_ramp_and_explains_itself() -> None:
    """After some ramps the risk is high before a breach, calibrated, with top features."""
    predictor, history = _run(5, 600)
    stats = predictor.stats()
    assert stats.labelled_ticks > 0 and 0 < stats.positive_ticks < stats.labelled_ticks
    assert stats.trained_ticks < stats.labelled_ticks  # negatives are subsampled
    late = history[400:]
    # Ticks shortly before the latency SLO breaches (phase ~ 50) outrank calm ones (phase ~ 10).
    before = [late[i]["logistic"] for i in range(len(late)) if (i + 400) % 60 in (44, 45, 46)]
    calm = [late[i]["logistic"] for i in range(len(late)) if (i + 400) % 60 in (5, 10, 15)]
    assert min(before) > max(calm)
    risk = predictor.risk(EntityKey("s0"), now_us=600 * 10 * S)
    assert risk.calibrated and risk.model == "logistic" and 0.0 <= risk.probability <= 1.0
    assert len(risk.top_features) == CONFIG.contributions_max
    assert set(predictor.risks(EntityKey("s0"), now_us=0)) == {"logistic", "rule", "tree"}
    path = predictor.risks(EntityKey("s0", 0), now_us=0)
    assert set(path) == {"logistic", "rule"}


def test_snapshot_restore_continues_identically() -> None:
    """A restored predictor answers and learns exactly like the original."""
    predictor, _ = _run(5, 200)
    snapshot = predictor.snapshot()
    twin = OnlinePredictor(config=CONFIG, rng=random.Random(99))
    twin.restore(snapshot)
    for tick_us, samples in ramp_stream(seed=4, ticks=100):
        now_us = tick_us + 200 * 10 * S
        for sample in samples:
            predictor.observe(sample, now_us=now_us)
            twin.observe(sample, now_us=now_us)
        assert predictor.probabilities(EntityKey("s1")) == twin.probabilities(EntityKey("s1"))
    assert predictor.stats() == twin.stats()


def test_restore_refuses_other_configs_and_formats() -> None:
    """A snapshot is tied to its config and format."""
    predictor, _ = _run(5, 20)
    other = OnlinePredictor(config=PredictorConfig(), rng=random.Random(1))
    with pytest.raises(ConfigError):
        other.restore(predictor.snapshot())
    with pytest.raises(ConfigError):
        other.restore(b"garbage")


def test_unknown_entities_and_bounded_servers() -> None:
    """Unknown entities read zero risk; servers_max bounds the table."""
    predictor: Predictor = OnlinePredictor(
        config=PredictorConfig(servers_max=3),
        rng=random.Random(1),
        models=("rule",),
        path_models=("rule",),
    )
    risk = predictor.risk(EntityKey("nobody"), now_us=0)
    assert risk.probability == 0.0 and not risk.calibrated and risk.age_us is None
    assert isinstance(predictor, OnlinePredictor)
    for index in range(10):
        predictor.observe(
            ServerSample(server_id=f"s{index}", values={"cpu_utilization": 0.1}), now_us=index
        )
    assert predictor.stats().servers == 3 and predictor.stats().evicted_servers == 7
    with pytest.raises(ConfigError):
        OnlinePredictor(config=CONFIG, rng=random.Random(1), models=("rule", "rule"))
    with pytest.raises(ConfigError):
        OnlinePredictor(config=CONFIG, rng=random.Random(1), models=("nope",))


def test_hard_negatives_always_train() -> None:
    """With the hard-negative bar at -inf every negative trains; at +inf only a share does."""
    counts = {}
    for bar in (float("-inf"), float("inf")):
        config = PredictorConfig(
            labels=CONFIG.labels, calibration_labels_min=50, hard_negative_score_min=bar
        )
        predictor = OnlinePredictor(config=config, rng=random.Random(5), models=("logistic",))
        for now_us, samples in ramp_stream(seed=3, ticks=200):
            for sample in samples:
                predictor.observe(sample, now_us=now_us)
        stats = predictor.stats()
        counts[bar] = (stats.trained_ticks, stats.labelled_ticks)
    trained, labelled = counts[float("-inf")]
    assert trained == labelled > 0
    assert counts[float("inf")][0] < labelled
