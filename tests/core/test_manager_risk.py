"""Tests of the threshold risk policy, the stand-in for the predictor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._manager_risk import ThresholdRiskPolicy
from forehand.wire import ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import load, manager_config
else:
    from _manager_helpers import load, manager_config

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
