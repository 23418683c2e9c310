"""Tests of the study's parallel runs: the digest does not depend on how many run at once."""

from __future__ import annotations

import dataclasses

from forehand.sim.study import FAULT_MIXES, Policy, StudyConfig, run_study
from forehand.sim.study._study import START_ORDER

SMALL = StudyConfig(
    servers=30,
    sessions=1_500,
    duration_s=600,
    seed=11,
    mix=FAULT_MIXES["gradual"].scaled(60.0),
    training_servers=30,
    training_hours=0.5,
)
"""A fleet small enough for a few seconds per policy."""


def test_two_workers_give_the_digest_of_one_process_in_the_configured_order() -> None:
    """Policies started costliest first in two worker processes: same per-policy digests and
    study digest as one process, results listed in the configured order."""
    serial = run_study(SMALL, jobs=1)
    progress: list[tuple[Policy, int]] = []
    parallel = run_study(SMALL, jobs=2, on_progress=lambda p, t: progress.append((p, t)))
    assert list(parallel.results) == list(SMALL.policies)
    for policy in SMALL.policies:
        assert parallel.results[policy].digest == serial.results[policy].digest
    assert parallel.digest == serial.digest
    ticks = {policy: sum(t for p, t in progress if p is policy) for policy in SMALL.policies}
    assert ticks == dict.fromkeys(SMALL.policies, SMALL.ticks)


def test_every_policy_has_a_start_rank_and_the_predictive_one_goes_first() -> None:
    """The start order names each policy once, the predictive (costliest) first."""
    assert sorted(START_ORDER, key=lambda p: p.value) == sorted(Policy, key=lambda p: p.value)
    assert START_ORDER[0] is Policy.PREDICTIVE
    subset = dataclasses.replace(SMALL, policies=(Policy.STATIC, Policy.PREDICTIVE))
    assert sorted(subset.policies, key=START_ORDER.index) == [Policy.PREDICTIVE, Policy.STATIC]
