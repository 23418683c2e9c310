"""Trigger policy: hysteresis, k of n, urgency, cooldown, budget, dwell, margin, shadow, holdout."""

from __future__ import annotations

import random

import pytest

from forehand.errors import ConfigError, LocalProtocolError
from forehand.predict import (
    Action,
    AlarmState,
    EntityKey,
    FeatureContribution,
    PolicyConfig,
    Risk,
    RiskLevel,
    TargetCandidate,
    TriggerPolicy,
    combined_risk,
    transition_table,
)

S = 1_000_000
CONFIG = PolicyConfig(
    risk_threshold=0.5,
    exit_risk=0.2,
    watch_risk=0.3,
    urgent_risk=0.9,
    trigger_ticks_k=2,
    trigger_window_n=3,
    cooldown_us=100 * S,
    moves_per_server_max=2,
    budget_window_us=60 * S,
    session_dwell_us=30 * S,
    target_margin=0.2,
)
TOP = (FeatureContribution(name="cpu_utilization.ttt", value=0.9, contribution=2.0),)


def _risk(probability: float, *, calibrated: bool = True) -> Risk:
    return Risk(
        entity=EntityKey("s"),
        probability=probability,
        model="logistic",
        score=0.0,
        calibrated=calibrated,
        in_breach=False,
        age_us=0,
        top_features=TOP,
    )


def _feed(policy: TriggerPolicy, risks: list[float], *, start_s: int = 0) -> list[AlarmState]:
    return [
        policy.assess(_risk(value), now_us=(start_s + i) * S).state for i, value in enumerate(risks)
    ]


def test_k_of_n_then_hysteresis_until_exit() -> None:
    """Two high ticks of three start a drain; it holds above exit_risk, ends below it."""
    policy = TriggerPolicy(config=CONFIG, rng=random.Random(1))
    states = _feed(policy, [0.6, 0.1, 0.6, 0.4, 0.25, 0.1])
    assert states == [
        AlarmState.PENDING,
        AlarmState.CALM,
        AlarmState.DRAINING,
        AlarmState.DRAINING,
        AlarmState.DRAINING,
        AlarmState.CALM,
    ]


def test_urgent_risk_skips_k_of_n_and_moves_everything() -> None:
    """One urgent tick means MOVE_NOW with the whole server."""
    policy = TriggerPolicy(config=CONFIG, rng=random.Random(1))
    decision = policy.assess(_risk(0.95), now_us=0)
    assert decision.state is AlarmState.EVACUATING and decision.action is Action.MOVE_NOW
    assert decision.acted and decision.parts_fraction == 1.0
    assert decision.top_features == TOP and decision.level is RiskLevel.URGENT


def test_watch_level_stops_placement_only() -> None:
    """Between watch and threshold: stop placing, move nothing."""
    policy = TriggerPolicy(config=CONFIG, rng=random.Random(1))
    decision = policy.assess(_risk(0.35), now_us=0)
    assert decision.action is Action.STOP_PLACEMENT and decision.parts_fraction == 0.0


def test_cooldown_blocks_a_new_drain_but_not_urgency() -> None:
    """After an episode ends, sustained risk only watches until the cooldown is over."""
    policy = TriggerPolicy(config=CONFIG, rng=random.Random(1))
    _feed(policy, [0.6, 0.6, 0.1])
    assert _feed(policy, [0.6, 0.6, 0.6], start_s=10)[-1] is AlarmState.PENDING
    assert _feed(policy, [0.95], start_s=20) == [AlarmState.EVACUATING]
    policy2 = TriggerPolicy(config=CONFIG, rng=random.Random(1))
    _feed(policy2, [0.6, 0.6, 0.1])
    assert _feed(policy2, [0.6, 0.6], start_s=200)[-1] is AlarmState.DRAINING


def test_uncalibrated_risk_does_not_act() -> None:
    """A calibrator that has not learned enough yet cannot trigger anything by default."""
    policy = TriggerPolicy(config=CONFIG, rng=random.Random(1))
    decision = policy.assess(_risk(0.99, calibrated=False), now_us=0)
    assert decision.action is Action.NONE and decision.risk == 0.99


def test_migration_budget_and_dwell() -> None:
    """At most two moves per server per minute; a session dwells 30 s between moves."""
    policy = TriggerPolicy(config=CONFIG, rng=random.Random(1))
    policy.record_move("a", source_server_id="s", now_us=0)
    policy.record_move("b", source_server_id="s", now_us=S)
    assert policy.moves_allowed("s", now_us=2 * S) == 0
    with pytest.raises(LocalProtocolError):
        policy.record_move("c", source_server_id="s", now_us=2 * S)
    assert policy.moves_allowed("s", now_us=60 * S + S // 2) == 1
    assert not policy.may_move("a", now_us=29 * S)
    with pytest.raises(LocalProtocolError):
        policy.record_move("a", source_server_id="t", now_us=29 * S)
    assert policy.may_move("a", now_us=30 * S)


def test_target_must_be_clearly_safer_counting_the_path() -> None:
    """Combined risk = 1 - (1 - server)(1 - path); it must undercut the source by the margin."""
    policy = TriggerPolicy(config=CONFIG, rng=random.Random(1))
    assert combined_risk(0.5, 0.5) == pytest.approx(0.75)
    candidates = [
        TargetCandidate(server_id="near", server_risk=0.1, path_risk=0.5),
        TargetCandidate(server_id="far", server_risk=0.3, path_risk=0.0),
        TargetCandidate(server_id="best", server_risk=0.05, path_risk=0.1),
    ]
    chosen = policy.choose_target(source_risk=0.6, candidates=candidates)
    assert chosen is not None and chosen.server_id == "best"
    assert policy.choose_target(source_risk=0.3, candidates=candidates) is None


def test_shadow_mode_acts_on_nothing() -> None:
    """Shadow mode decides and logs every action, acts on none, and refuses moves."""
    policy = TriggerPolicy(config=PolicyConfig(shadow_mode=True), rng=random.Random(1))
    decisions = [
        policy.assess(_risk(value), now_us=i * S)
        for i, value in enumerate([0.4, 0.6, 0.6, 0.6, 0.95, 0.1])
    ]
    assert {d.action for d in decisions} >= {Action.STOP_PLACEMENT, Action.DRAIN, Action.MOVE_NOW}
    assert not any(d.acted for d in decisions)
    assert all(d.parts_fraction == 0.0 and d.shadow for d in decisions)
    assert policy.decisions_to_log() == decisions
    with pytest.raises(LocalProtocolError):
        policy.record_move("a", source_server_id="s", now_us=0)


def test_holdout_leaves_whole_episodes_unacted() -> None:
    """With holdout 1.0 an episode is decided but not acted; with 0.0 it is acted."""
    held = TriggerPolicy(config=PolicyConfig(holdout_fraction=1.0), rng=random.Random(1))
    decisions = [held.assess(_risk(0.95), now_us=i * S) for i in range(3)]
    assert all(d.holdout and not d.acted for d in decisions)
    rng = random.Random(7)
    policy = TriggerPolicy(config=PolicyConfig(holdout_fraction=0.5, cooldown_us=0), rng=rng)
    held_count = 0
    for episode in range(200):
        first = policy.assess(_risk(0.95), now_us=episode * 10 * S)
        second = policy.assess(_risk(0.95), now_us=(episode * 10 + 1) * S)
        assert first.holdout == second.holdout  # decided once per episode
        held_count += first.holdout
        policy.assess(_risk(0.0), now_us=(episode * 10 + 2) * S)
    assert 70 < held_count < 130


def test_transition_table_is_total_and_log_is_bounded() -> None:
    """Every state answers every risk level; the decision log drops and counts past its bound."""
    table = transition_table()
    assert len(table) == len(AlarmState) * len(RiskLevel)
    policy = TriggerPolicy(config=PolicyConfig(decisions_kept_max=2), rng=random.Random(1))
    for i in range(5):
        policy.assess(_risk(0.1), now_us=i)
    assert len(policy.decisions_to_log()) == 2 and policy.decisions_dropped == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"exit_risk": 0.4, "watch_risk": 0.3},
        {"urgent_risk": 0.4},
        {"trigger_ticks_k": 6},
        {"holdout_fraction": 1.5},
        {"moves_per_server_max": 0},
    ],
)
def test_invalid_policy_config(changes: dict[str, object]) -> None:
    """Thresholds out of order and bounds below one are refused."""
    with pytest.raises(ConfigError):
        PolicyConfig(**changes)  # type: ignore[arg-type]


def test_architecture_doc_shows_the_transition_table() -> None:
    """docs/ARCHITECTURE.md's table of the policy's transitions is the code's table."""
    from pathlib import Path

    document = (Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md").read_text()
    table = {(state, level): target for state, level, target in transition_table()}
    for state in AlarmState:
        row = " | ".join(table[(state, level)].value for level in RiskLevel)
        assert f"| {state.value} | {row} |" in document
