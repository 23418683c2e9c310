"""The `predicted` scenario: the learned risk sees a gradual overload coming, parts move in time.

Each seed runs the real cores for about 150 simulated seconds: three overload ramps teach the
manager's predictor what precedes a latency SLO breach, then a fourth ramp hits the busiest
server. The run must predict it before the breach, hand every primary off before the breach,
and fail no request.
"""

from __future__ import annotations

import pytest

from forehand.sim import get_scenario
from forehand.sim._scenarios import PREDICTED_SCENARIO, PredictedCluster, build_predicted
from forehand.wire import ReasonCode

SEEDS = (1, 2)
"""Seeds the test runs (each about 150 simulated seconds)."""


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_a_gradual_overload_is_predicted_and_handed_off_before_the_breach(seed: int) -> None:
    """Prediction before the SLO breach, every primary moved by then, zero failed requests."""
    cluster = build_predicted(seed)
    result = cluster.sim.run()
    assert result.ok, result.failure
    watch = cluster.watch
    assert watch.breach_us is not None, "the test ramp must breach the SLO"
    assert watch.predicted_us is not None, "the predictor must act on the test ramp"
    assert watch.ramp_start_us <= watch.predicted_us < watch.breach_us
    assert watch.primaries_at_breach == 0
    moved = [
        handoff
        for handoff in cluster.stats.handoffs_started
        if handoff.source == watch.target and watch.ramp_start_us <= handoff.assigned_us
    ]
    assert moved and all(h.assigned_us < watch.breach_us for h in moved[:1])
    assert {h.reason for h in moved} <= {ReasonCode.PREDICTED_FAILURE, ReasonCode.OVERLOAD}
    assert cluster.stats.failed_requests == []
    assert cluster.workload.failed == 0 and cluster.workload.abandoned == 0
    decided = [d for d in watch.decisions if d.server_id == watch.target and d.acted]
    assert decided and all(d.calibrated and d.model == "rule" for d in decided)
    assert any(name.endswith(".ttt") for d in decided for name, _ in d.top_features)


def test_the_scenario_is_registered_outside_the_rotation() -> None:
    """`predicted` runs from the command line; the corpus rotation leaves it out (too long)."""
    from forehand.sim import ROTATION

    assert get_scenario(PREDICTED_SCENARIO).name == PREDICTED_SCENARIO
    assert PREDICTED_SCENARIO not in ROTATION
    assert isinstance(build_predicted(3), PredictedCluster)
