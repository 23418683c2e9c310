"""The adapter ManagerCore needs: predictor plus trigger policy behind its RiskPolicy protocol."""

from __future__ import annotations

import random

from forehand.core import RiskDecision, RiskPolicy
from forehand.core.messages import LoadReport
from forehand.predict import (
    Action,
    EntityKey,
    LabelConfig,
    OnlinePredictor,
    PolicyConfig,
    PredictorConfig,
    ServerSample,
    TriggerPolicy,
)
from forehand.wire import ReasonCode

S = 1_000_000


class PredictiveRiskPolicy:
    """What forehand.core would hold in place of ThresholdRiskPolicy (the wiring is for later)."""

    def __init__(self, *, predictor: OnlinePredictor, policy: TriggerPolicy) -> None:
        self.predictor = predictor
        self.policy = policy

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """Observe the load, assess the risk, hand back a move when the policy acts on one."""
        values = {
            "cpu_utilization": load.cpu_utilization,
            "queue_depth": float(load.queue_depth),
            "latency_us_p99": float(load.latency_us_p99),
            "error_ratio": load.error_ratio,
        }
        self.predictor.observe(ServerSample(server_id=server_id, values=values), now_us=now_us)
        risk = self.predictor.risk(EntityKey(server_id), now_us=now_us)
        decision = self.policy.assess(risk, now_us=now_us)
        if not decision.acted or decision.parts_fraction <= 0.0:
            return None
        reason = ReasonCode.PREDICTED_FAILURE
        if decision.action is Action.DRAIN:
            reason = ReasonCode.OVERLOAD
        top = ", ".join(f"{f.name}={f.value:.3g}" for f in decision.top_features)
        detail = f"risk {decision.risk:.3f} ({decision.model}, {decision.level}); {top}"
        return RiskDecision(reason=reason, parts_fraction=decision.parts_fraction, detail=detail)

    def forget(self, server_id: str) -> None:
        """Forget the server in both halves."""
        self.predictor.forget(server_id)
        self.policy.forget(server_id)


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
        predictor=OnlinePredictor(config=config, rng=random.Random(1)),
        policy=TriggerPolicy(config=PolicyConfig(cooldown_us=0), rng=random.Random(2)),
    )
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
