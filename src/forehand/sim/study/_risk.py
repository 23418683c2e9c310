"""The study's risk inputs: none (static, reactive) or the predictor (predictive), pre-trained.

The predictive policy is the manager's own `PredictiveRiskPolicy`, run on every
`assess_interval_s` of each server's heartbeats rather than on every one, and only every
`quiet_assess_interval_s` while a server's load stays quiet: the predictor costs a few hundred
microseconds per assessment, so ten thousand servers at one heartbeat a tick would spend most of
the run in it, and most servers most of the time report nothing the predictor would act on. It
starts from a snapshot trained on a separate, seeded fleet (`train_predictor`), as a deployed
manager starts from the predictor it saved.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np

from forehand.core import ManagerConfig, PredictiveRiskPolicy, RiskDecision
from forehand.core._manager_risk import predictor_config
from forehand.core.messages import LoadReport
from forehand.predict import EntityKey, OnlinePredictor, Risk, Sample, ServerSample
from forehand.sim.study._config import StudyConfig
from forehand.sim.study._fleet import FleetModel

__all__ = [
    "MemoPredictor",
    "NoRiskPolicy",
    "SampledPredictiveRiskPolicy",
    "load_values",
    "train_predictor",
]

PREDICTOR_MODELS = ("logistic", "rule")
"""The heads the study's predictor runs (as the manager's: the tree costs several times more)."""
QUIET_CPU_MAX = 0.65
"""A load report is quiet below this CPU utilization (a healthy server's share runs 0.3-0.55)."""
QUIET_LATENCY_US_P99_MAX = 62_500
"""... and below this p99 latency (a quarter of the 250 ms SLO) ..."""
QUIET_ERROR_RATIO_MAX = 0.01
"""... and below this error ratio (a fifth of the 5% SLO)."""


def is_quiet(load: LoadReport) -> bool:
    """Whether a load report is far from every threshold the predictor's SLO sets."""
    return (
        load.cpu_utilization < QUIET_CPU_MAX
        and load.latency_us_p99 < QUIET_LATENCY_US_P99_MAX
        and load.error_ratio < QUIET_ERROR_RATIO_MAX
    )


class MemoPredictor(OnlinePredictor):
    """`OnlinePredictor` that reuses an entity's risk until its server is observed again.

    The manager reads the risk of every handoff-target candidate (and of each of its path
    buckets) for every move it plans; a server's features change only when it is observed, so
    the reads in between are served from memory. Only the calibrator, which learns from every
    server's labels, moves meanwhile; the study accepts that lag of at most one assessment
    interval. Without the memo the manager spends most of a predictive run in those reads.
    """

    def __init__(self, **arguments: Any) -> None:
        super().__init__(**arguments)
        self._memo: dict[str, dict[tuple[EntityKey, bool], Risk]] = {}

    def observe(self, sample: Sample, *, now_us: int) -> None:
        """Observe, and forget the memo of the sample's server."""
        self._memo.pop(sample.server_id, None)
        super().observe(sample, now_us=now_us)

    def risk(self, entity: EntityKey, *, now_us: int, explain: bool = True) -> Risk:
        """The entity's risk as of its server's newest observation."""
        per_server = self._memo.get(entity.server_id)
        if per_server is None:
            if len(self._memo) >= self.config.servers_max:
                self._memo.clear()
            per_server = self._memo[entity.server_id] = {}
        cached = per_server.get((entity, explain))
        if cached is None:
            cached = super().risk(entity, now_us=now_us, explain=explain)
            per_server[(entity, explain)] = cached
        return cached

    def forget(self, server_id: str) -> None:
        """Forget the server and its memo."""
        self._memo.pop(server_id, None)
        super().forget(server_id)


class NoRiskPolicy:
    """Never moves parts on risk: the static and reactive policies."""

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """Always None."""
        return None

    def forget(self, server_id: str) -> None:
        """Nothing is kept."""


class SampledPredictiveRiskPolicy(PredictiveRiskPolicy):
    """`PredictiveRiskPolicy` assessing each server at most once per `interval_us`, and once
    per `quiet_interval_us` while its load stays quiet (`is_quiet`)."""

    def __init__(
        self,
        *,
        config: ManagerConfig,
        rng: random.Random,
        predictor: OnlinePredictor,
        interval_us: int,
        quiet_interval_us: int | None = None,
    ) -> None:
        super().__init__(config=config, rng=rng, predictor=predictor)
        self._interval_us = interval_us
        self._quiet_interval_us = interval_us if quiet_interval_us is None else quiet_interval_us
        self._last: dict[str, tuple[int, bool]] = {}
        self.assessments_run = 0
        """How many heartbeats reached the predictor."""
        self.assessments_skipped_quiet = 0
        """Due heartbeats not assessed because the server stayed quiet."""

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """The predictive decision on a due heartbeat; None between them."""
        last = self._last.get(server_id)
        quiet = is_quiet(load)
        if last is not None:
            last_us, was_quiet = last
            if now_us < last_us + self._interval_us:
                return None
            if quiet and was_quiet and now_us < last_us + self._quiet_interval_us:
                self.assessments_skipped_quiet += 1
                return None
        self._last[server_id] = (now_us, quiet)
        self.assessments_run += 1
        return super().assess(server_id=server_id, load=load, now_us=now_us)

    def forget(self, server_id: str) -> None:
        """Forget the server here and in the predictor."""
        self._last.pop(server_id, None)
        super().forget(server_id)


def load_values(cpu: float, latency_us_p99: float, error_ratio: float) -> dict[str, float]:
    """The predictor's server metrics for one server's aggregate load."""
    busy = min(max(cpu, 0.0), 0.985)
    return {
        "cpu_utilization": cpu,
        "queue_depth": busy / (1.0 - busy),
        "latency_us_p99": latency_us_p99,
        "error_ratio": error_ratio,
    }


def train_predictor(config: StudyConfig, manager_config: ManagerConfig) -> bytes:
    """A predictor snapshot trained on a separate fleet with the study's faults, boosted.

    The training fleet has its own seed and no manager: parts stay where the hash put them, so
    every fault runs its course and the predictor sees its full shape and its labelled onset.
    """
    boosted = dataclasses.replace(
        config.mix.scaled(config.training_fault_boost),
        name=f"{config.mix.name} training",
        drains=0.0,
    )
    ticks = max(1, round(config.training_hours * 3600 / config.tick_s))
    training = dataclasses.replace(
        config,
        servers=max(8, config.training_servers),
        sessions=1,
        duration_s=ticks * config.tick_s,
        mix=boosted,
        seed=config.seed + 1_000_003,
    )
    predictor = OnlinePredictor(
        config=predictor_config(manager_config),
        rng=random.Random(training.seed),
        models=PREDICTOR_MODELS,
    )
    fleet = FleetModel(config=training)
    load = np.ones(training.servers)
    every = config.assess_interval_s // config.tick_s
    names = [f"t{index:05d}" for index in range(training.servers)]
    for tick in range(ticks):
        state = fleet.step(load=load, initial_load=load, drains_kill=False)
        if tick % every:
            continue
        now_us = tick * config.tick_s * 1_000_000
        for index in np.flatnonzero(state.reachable):
            values = load_values(
                float(state.cpu[index]),
                float(state.latency_us_p99[index]),
                float(state.error_ratio[index]),
            )
            predictor.observe(ServerSample(server_id=names[index], values=values), now_us=now_us)
    return predictor.snapshot()
