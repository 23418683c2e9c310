"""Tests of the risk policies: the threshold rule, and the predictor with the trigger policy."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import msgspec
import pytest

from forehand.core._manager_config import RiskPolicyKind
from forehand.core._manager_events import RiskAssessed
from forehand.core._manager_risk import (
    PredictiveRiskPolicy,
    RiskDecision,
    RiskSteering,
    ThresholdRiskPolicy,
    make_risk_policy,
)
from forehand.core.messages import HeartbeatReported, LoadReport, PathReport
from forehand.errors import ConfigError
from forehand.placement import ServerState
from forehand.predict import EntityKey
from forehand.wire import ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness, load, manager_config
else:
    from _manager_helpers import MANAGER, ManagerHarness, load, manager_config

MS = 1000


def policy(**overrides: object) -> ThresholdRiskPolicy:
    return ThresholdRiskPolicy(config=manager_config(**overrides))


def test_below_the_thresholds_nothing_happens() -> None:
    """A server under both thresholds is left alone."""
    assert policy().assess(server_id="s1", load=load(0.5), now_us=0) is None


def test_cpu_above_the_threshold_is_overload() -> None:
    """CPU above overload_threshold: OVERLOAD with the configured share and the inputs logged."""
    decision = policy(overload_parts_fraction=0.3).assess(server_id="s1", load=load(0.95), now_us=0)
    assert decision is not None
    assert decision.reason is ReasonCode.OVERLOAD and decision.parts_fraction == 0.3
    assert "0.950" in decision.detail


def test_latency_threshold_is_off_by_default_and_works_when_set() -> None:
    """overload_latency_us_p99 = 0 disables the latency check."""
    slow = load(0.1, latency_us_p99=10_000_000)
    assert policy().assess(server_id="s1", load=slow, now_us=0) is None
    decision = policy(overload_latency_us_p99=1_000).assess(server_id="s1", load=slow, now_us=0)
    assert decision is not None and "latency_us_p99" in decision.detail


def test_loop_lag_above_the_latency_threshold_is_overload() -> None:
    """A stalled event loop trips the latency threshold even when handler latency is low."""
    stalled = msgspec.structs.replace(load(0.1, latency_us_p99=1_000), loop_lag_us_p99=400_000)
    assert policy().assess(server_id="s1", load=stalled, now_us=0) is None
    decision = policy(overload_latency_us_p99=60_000).assess(server_id="s1", load=stalled, now_us=0)
    assert decision is not None and "loop_lag_us_p99 400000" in decision.detail


def test_cooldown_is_per_server_and_ends() -> None:
    """After a flag the same server is quiet for the cooldown; others are not."""
    risk = policy(overload_cooldown_ms=1_000)
    hot = load(0.99)
    assert risk.assess(server_id="s1", load=hot, now_us=0) is not None
    assert risk.assess(server_id="s1", load=hot, now_us=999 * MS) is None
    assert risk.assess(server_id="s2", load=hot, now_us=999 * MS) is not None
    assert risk.assess(server_id="s1", load=hot, now_us=1_000 * MS) is not None


def test_forget_clears_the_cooldown() -> None:
    """A forgotten server (dead, left) can be flagged again at once."""
    risk = policy(overload_cooldown_ms=1_000)
    risk.assess(server_id="s1", load=load(0.99), now_us=0)
    risk.forget("s1")
    assert risk.assess(server_id="s1", load=load(0.99), now_us=1) is not None


def test_cooldown_table_is_bounded_by_servers_max() -> None:
    """Expired cooldowns are swept when the table reaches servers_max."""
    risk = policy(servers_max=2, overload_cooldown_ms=1)
    for index in range(10):
        risk.assess(server_id=f"s{index}", load=load(0.99), now_us=index * 10 * MS)
    assert len(risk._quiet_until_us) <= 3


# The predictive policy (the default), with the rule standing in while it is not calibrated.

S = 1_000_000


def predictive(seed: int = 1, **overrides: object) -> PredictiveRiskPolicy:
    values: dict[str, object] = {
        "risk_horizon_ms": 120_000,
        "risk_lead_ms": 10_000,
        "risk_calibration_labels_min": 100,
        "overload_cooldown_ms": 1,
        "risk_session_dwell_ms": 60_000,
    }
    values.update(overrides)
    return PredictiveRiskPolicy(config=manager_config(**values), rng=random.Random(seed))


def ramp_load(tick: int, rng: random.Random) -> LoadReport:
    """Every 60 ticks of 10 s a CPU ramp; p99 latency breaches its SLO near the top."""
    phase = tick % 60
    cpu = 0.3 + rng.gauss(0.0, 0.02) + (0.7 * (phase - 30) / 25 if phase > 30 else 0.0)
    busy = min(max(cpu, 0.01), 0.985)
    return LoadReport(
        cpu_utilization=cpu,
        queue_depth=int(busy / (1 - busy)),
        latency_us_p99=int(20_000 / (1 - busy)),
        error_ratio=0.001,
        requests_per_second=100.0,
    )


def train(policy: PredictiveRiskPolicy, ticks: int, seed: int = 3) -> list[RiskDecision | None]:
    rng = random.Random(seed)
    return [
        policy.assess(server_id="s1", load=ramp_load(tick, rng), now_us=tick * 10 * S)
        for tick in range(ticks)
    ]


def test_the_config_picks_the_policy() -> None:
    """The predictor is the default; `rule` selects the plain threshold."""
    rng = random.Random(1)
    assert isinstance(make_risk_policy(manager_config(), rng), PredictiveRiskPolicy)
    rule = make_risk_policy(manager_config(risk_policy=RiskPolicyKind.RULE), rng)
    assert isinstance(rule, ThresholdRiskPolicy)
    assert isinstance(rule, RiskSteering) and isinstance(predictive(), RiskSteering)
    with pytest.raises(ConfigError):
        manager_config(risk_policy="predictive")
    with pytest.raises(ConfigError):
        manager_config(risk_threshold=0.95, risk_urgent_threshold=0.9)


def test_a_cold_predictor_lets_the_rule_decide_and_logs_it() -> None:
    """Uncalibrated: CPU above the threshold is an OVERLOAD move, logged as a threshold flag."""
    policy = predictive()
    assert policy.assess(server_id="s1", load=load(0.2), now_us=0) is None
    decision = policy.assess(server_id="s1", load=load(0.97), now_us=S)
    assert decision is not None and decision.reason is ReasonCode.OVERLOAD
    assert not policy.calibrated
    (assessed,) = policy.assessments()
    assert assessed.model == "threshold" and assessed.acted and assessed.server_id == "s1"
    assert ("cpu_utilization", 0.97) in assessed.top_features
    assert policy.placement_blocked("s1", now_us=S) and not policy.placement_blocked("s2", now_us=S)


def test_a_calibrated_predictor_moves_parts_before_the_breach() -> None:
    """After a few ramps the predictor decides: PREDICTED_FAILURE moves before latency breaches."""
    policy = predictive()
    decisions = train(policy, 1_200)
    assert policy.calibrated
    rng = random.Random(3)
    loads = [ramp_load(tick, rng) for tick in range(1_200)]
    early = [
        tick % 60
        for tick, decision in enumerate(decisions)
        if tick > 600
        and decision is not None
        and decision.reason is ReasonCode.PREDICTED_FAILURE
        and loads[tick].latency_us_p99 <= 250_000
    ]
    assert early and min(early) <= 48  # 40 s or more before the breach (phase 52)
    logged = policy.assessments()
    predicted = [a for a in logged if a.calibrated and a.action != "none"]
    assert predicted and all(a.model == "logistic" and a.top_features for a in predicted)
    assert {a.level for a in predicted} <= {"elevated", "high", "sustained", "urgent", "hold"}


def test_shadow_mode_logs_the_predictor_while_the_rule_acts() -> None:
    """In shadow mode the calibrated predictor's alarms are logged only; the rule keeps acting."""
    policy = predictive(risk_shadow_mode=True)
    decisions = train(policy, 1_200)
    late = [d for tick, d in enumerate(decisions) if tick > 700 and d is not None]
    assert policy.calibrated and late
    assert all(d.reason is ReasonCode.OVERLOAD for d in late)
    logged = policy.assessments()
    predicted = [a for a in logged if a.calibrated and a.action != "none"]
    assert predicted and all(a.shadow and not a.acted for a in predicted)
    assert all(a.model == "threshold" for a in logged if a.acted)


def test_holdout_leaves_whole_alarm_episodes_unacted() -> None:
    """With holdout 1.0 every alarm episode is logged as held out and moves nothing."""
    policy = predictive(risk_holdout_fraction=1.0)
    decisions = train(policy, 1_200)
    assert [d for tick, d in enumerate(decisions) if tick > 700 and d is not None] == []
    held = [a for a in policy.assessments() if a.calibrated and a.action in ("drain", "move_now")]
    assert held and all(a.holdout and not a.acted for a in held)


def test_dwell_and_budget_are_kept_once_calibrated() -> None:
    """A recorded session dwells; the budget shrinks by each move; the cold rule keeps neither."""
    policy = predictive(risk_moves_per_server_max=2)
    policy.record_move("aa", source_server_id="s1", now_us=0)
    assert policy.movable("aa", now_us=1) and policy.moves_allowed("s1", now_us=1) > 2
    train(policy, 700)
    now_us = 700 * 10 * S
    policy.record_move("aa", source_server_id="s1", now_us=now_us)
    assert not policy.movable("aa", now_us=now_us + 1)
    assert policy.movable("aa", now_us=now_us + 60 * S)
    assert policy.moves_allowed("s1", now_us=now_us) == 1


def test_the_target_margin_refuses_targets_as_risky_as_the_source() -> None:
    """Calibrated, a target about as risky as the source is refused; a calm one is allowed."""
    policy = predictive()
    train(policy, 1_200)
    rng = random.Random(5)
    alarmed: list[int] = []
    for tick in range(1_200, 1_260):
        now_us = tick * 10 * S
        policy.assess(server_id="s1", load=ramp_load(tick, rng), now_us=now_us)
        policy.assess(server_id="s3", load=ramp_load(0, rng), now_us=now_us)
        source = policy.predictor.risk(EntityKey("s1"), now_us=now_us).probability
        if source > 0.5:
            alarmed.append(tick)
            calm = policy.target_risk("s3", now_us=now_us)
            assert policy.target_allowed(source_id="s1", target_id="s3", now_us=now_us) == (
                calm <= source - 0.2 and not policy.placement_blocked("s3", now_us=now_us)
            )
            assert not policy.target_allowed(source_id="s3", target_id="s1", now_us=now_us)
    assert alarmed


def test_path_reports_become_bounded_path_entities() -> None:
    """Path reports feed path buckets of the measured server, however many client buckets."""
    policy = predictive()
    reports = [
        PathReport(
            client_bucket=bucket,
            server_id="s2",
            rtt_us=20_000,
            rtt_us_min=10_000,
            jitter_us=1_000,
            loss_ratio=0.0,
            retransmissions=0,
            throughput_bytes_per_second=1e6,
            probe=bucket % 2 == 0,
        )
        for bucket in range(300)
    ]
    policy.observe_paths(reports, now_us=S)
    buckets = policy.predictor.config.path_buckets_per_server
    seen = [
        b
        for b in range(buckets)
        if policy.predictor.risk(EntityKey("s2", b), now_us=S).age_us is not None
    ]
    assert 1 < len(seen) <= buckets
    assert policy.target_risk("s2", now_us=S) >= 0.0


def test_the_predictive_policy_is_deterministic_under_a_seed() -> None:
    """The same seed and stream give the same decisions, logs and learned state."""
    runs = []
    for _ in range(2):
        policy = predictive()
        decisions = train(policy, 700)
        runs.append((decisions, policy.assessments(), policy.predictor.snapshot()))
    assert runs[0] == runs[1]
    other = predictive(seed=2)
    train(other, 700)
    assert other.predictor.snapshot() != runs[0][2]


def test_the_manager_feeds_paths_and_logs_decisions() -> None:
    """Heartbeat path reports reach the default policy's predictor (known servers only), and
    its decisions come out as RiskAssessed events."""
    harness = ManagerHarness()
    harness.join("s1", "s2", "s3")
    policy = harness.manager.risk_policy
    assert isinstance(policy, PredictiveRiskPolicy)
    paths = tuple(
        PathReport(
            client_bucket=bucket,
            server_id=server_id,
            rtt_us=20_000,
            rtt_us_min=10_000,
            jitter_us=500,
            loss_ratio=0.0,
            retransmissions=0,
            throughput_bytes_per_second=1e5,
            probe=server_id != "s1",
        )
        for bucket in range(4)
        for server_id in ("s2", "stranger")
    )
    harness.sequences["s1"] = harness.sequences.get("s1", 0) + 1
    message = HeartbeatReported(
        server_id="s1",
        incarnation=1,
        sequence=harness.sequences["s1"],
        map_version=harness.manager.map_version,
        load=load(0.97),
        parts=(),
        paths=paths,
    )
    harness.router.send("s1", MANAGER, message)
    now_us = harness.router.now_us
    known = [
        b
        for b in range(8)
        if policy.predictor.risk(EntityKey("s2", b), now_us=now_us).age_us is not None
    ]
    assert known
    assert policy.predictor.risk(EntityKey("stranger", 0), now_us=now_us).age_us is None
    (assessed,) = harness.events(RiskAssessed)
    assert assessed.server_id == "s1" and assessed.model == "threshold" and assessed.acted
    # A share moves (overload_parts_fraction 0.25): the server is risk-blocked, not DRAINING.
    assert harness.map.server("s1").state is ServerState.ACTIVE
    assert policy.placement_blocked("s1", now_us=now_us)


def test_the_predictor_samples_a_server_once_per_tick_and_the_rule_every_heartbeat() -> None:
    """Heartbeats within risk_tick_ms skip the predictor; the cold rule still sees each one."""
    policy = predictive(risk_tick_ms=1_000)
    assert policy.assess(server_id="s1", load=load(0.2), now_us=0) is None
    decision = policy.assess(server_id="s1", load=load(0.97), now_us=100_000)
    assert decision is not None and decision.reason is ReasonCode.OVERLOAD
    assert policy.predictor.risk(EntityKey("s1"), now_us=100_000).age_us == 100_000
    policy.assess(server_id="s1", load=load(0.2), now_us=1_000_000)
    assert policy.predictor.risk(EntityKey("s1"), now_us=1_000_000).age_us == 0
