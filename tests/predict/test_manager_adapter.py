"""The manager's predictive risk policy: predictor plus trigger policy behind `RiskPolicy`."""

from __future__ import annotations

import random

from forehand.core import ManagerConfig, PredictiveRiskPolicy, RiskPolicy, RiskSteering
from forehand.core.messages import LoadReport
from forehand.predict import (
    LabelConfig,
    OnlinePredictor,
    PolicyConfig,
    PredictorConfig,
    TriggerPolicy,
)

S = 1_000_000


def _load(cpu: float) -> LoadReport:
    busy = min(max(cpu, 0.01), 0.985)
    return LoadReport(
        cpu_utilization=cpu,
        queue_depth=int(busy / (1 - busy)),
        latency_us_p99=int(20_000 / (1 - busy)),
        error_ratio=0.001,
        requests_per_second=100.0,
    )


def test_adapter_satisfies_the_protocol_and_moves_parts_before_breaches() -> None:
    """Overload ramps teach the predictor; later ramps get a move before the SLO breaches."""
    config = PredictorConfig(
        labels=LabelConfig(horizon_us=120 * S, lead_us=10 * S, breach_clear_us=20 * S),
        calibration_labels_min=100,
    )
    adapter: RiskPolicy = PredictiveRiskPolicy(
        config=ManagerConfig(overload_threshold=2.0),  # The cold-start rule stays out of it.
        rng=random.Random(0),
        predictor=OnlinePredictor(config=config, rng=random.Random(1)),
        policy=TriggerPolicy(config=PolicyConfig(cooldown_us=0), rng=random.Random(2)),
    )
    assert isinstance(adapter, RiskSteering)
    rng = random.Random(3)
    early: list[int] = []
    for tick in range(1_200):
        phase = tick % 60
        cpu = 0.3 + rng.gauss(0.0, 0.02) + (0.7 * (phase - 30) / 25 if phase > 30 else 0.0)
        decision = adapter.assess(server_id="s1", load=_load(cpu), now_us=tick * 10 * S)
        breaching = 20_000 / (1 - min(max(cpu, 0.01), 0.985)) > 250_000
        if decision is not None and not breaching and tick > 600:
            assert 0.0 < decision.parts_fraction <= 1.0 and "risk" in decision.detail
            early.append(phase)
    assert early and min(early) <= 48  # moves start 40 s or more before the breach (phase 52)
    adapter.forget("s1")
