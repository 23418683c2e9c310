"""Model time per entity per tick: the full online predictor against the rule baseline alone.

A warmed-up predictor (one synthetic server day, so the models, scalers and calibrators are
trained) is fed the next ticks of the same fleet. The baseline of every row runs the rule alone on
the very same samples, so each ratio is the price of the learned models.

- Manager assessment: the heads the manager runs (`PredictiveRiskPolicy`: logistic regression
  and rule on servers, the rule on paths), one server sample observed and its risk read, as the
  manager does per heartbeat, in process CPU time (path samples are fed between assessments,
  untimed: they are observations of their own). Target: at most 150 us per assessment.
- Entity ticks: each tick of a server carries its own sample and one sample per client group
  (four paths), so an "entity tick" is one sample folded into its features, scored by every
  head, and labelled later; the candidate runs the predictor's default heads (logistic
  regression, rule and tree on servers; logistic and rule on paths). Target: 1 ms.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Metric, compare, print_comparisons, print_metrics

from forehand.predict import (
    EntityKey,
    OnlinePredictor,
    PredictorConfig,
    Sample,
    ServerSample,
    SyntheticConfig,
    SyntheticFleet,
)

SERVERS = 4
WARMUP_S = 86_400
MEASURED_TICKS = 600
ROUNDS = 3
TARGET_US = 1_000.0
ASSESSMENT_TARGET_US = 150.0
MANAGER_MODELS = ("logistic", "rule")
"""`PredictiveRiskPolicy`'s server heads with its default `risk_model`."""


def _fleet_ticks() -> tuple[list[tuple[int, list[Sample]]], list[tuple[int, list[Sample]]]]:
    config = SyntheticConfig(servers=SERVERS, duration_us=(WARMUP_S + 6_000 * 10) * 1_000_000)
    ticks = list(SyntheticFleet(config=config, rng=random.Random(11)).ticks())
    split = WARMUP_S // 10
    return ticks[:split], ticks[split : split + MEASURED_TICKS]


def _warm(
    models: tuple[str, ...], path_models: tuple[str, ...], warmup: list[tuple[int, list[Sample]]]
) -> OnlinePredictor:
    predictor = OnlinePredictor(
        config=PredictorConfig(), rng=random.Random(5), models=models, path_models=path_models
    )
    for now_us, samples in warmup:
        for sample in samples:
            predictor.observe(sample, now_us=now_us)
    return predictor


def _runner(
    measured: list[tuple[int, list[Sample]]],
) -> Callable[[OnlinePredictor], None]:
    offsets_us: dict[int, int] = {}

    def run(predictor: OnlinePredictor) -> None:
        # The same measured ticks every round, shifted in time: the cost per tick stays alike.
        offset_us = offsets_us.get(id(predictor), 0)
        for now_us, samples in measured:
            for sample in samples:
                predictor.observe(sample, now_us=now_us + offset_us)
                if isinstance(sample, ServerSample):
                    predictor.risk(
                        EntityKey(sample.server_id), now_us=now_us + offset_us, explain=False
                    )
        offsets_us[id(predictor)] = offset_us + 10 * 1_000_000 * MEASURED_TICKS

    return run


def _assessment_cpu_us(
    predictor: OnlinePredictor, measured: list[tuple[int, list[Sample]]], *, round_index: int
) -> float:
    """CPU time per server assessment (its sample observed, its risk read), path samples fed
    between them untimed: process CPU time, so other processes on the machine count less."""
    offset_us = (round_index + 1) * 10**12
    cpu_s = 0.0
    assessments = 0
    for now_us, samples in measured:
        for sample in samples:
            if not isinstance(sample, ServerSample):
                predictor.observe(sample, now_us=now_us + offset_us)
                continue
            started = time.process_time()
            predictor.observe(sample, now_us=now_us + offset_us)
            predictor.risk(EntityKey(sample.server_id), now_us=now_us + offset_us, explain=False)
            cpu_s += time.process_time() - started
            assessments += 1
    return cpu_s / assessments * 1e6


def main() -> None:
    """Warm the predictors up, then measure them side by side with the rule alone."""
    warmup, measured = _fleet_ticks()
    run_all = _runner(measured)
    manager = _warm(MANAGER_MODELS, ("rule",), warmup)
    manager_rule = _warm(("rule",), ("rule",), warmup)
    full = _warm(("logistic", "rule", "tree"), ("logistic", "rule"), warmup)
    full_rule = _warm(("rule",), ("rule",), warmup)
    cpu_us: dict[str, float] = {"manager": math.inf, "rule": math.inf}
    for round_index in range(ROUNDS):
        for name, predictor in (("manager", manager), ("rule", manager_rule)):
            spent = _assessment_cpu_us(predictor, measured, round_index=round_index)
            cpu_us[name] = min(cpu_us[name], spent)
    rows = [
        compare(
            "entity ticks (default heads)",
            candidate=lambda _: run_all(full),
            baseline=lambda _: run_all(full_rule),
            baseline_name="rule head only, same features",
            count=MEASURED_TICKS * len(measured[0][1]),
            rounds=ROUNDS,
        ),
    ]
    print_comparisons("forehand.predict: model time per entity tick", rows)
    print_metrics(
        "forehand.predict: CPU time per manager assessment",
        [
            Metric(
                name="manager heads (logistic + rule), paths on the rule",
                value=cpu_us["manager"],
                unit="us",
                baseline=cpu_us["rule"],
                baseline_name="rule head only, same features",
                target=f"<= {ASSESSMENT_TARGET_US:.0f} us",
                met=cpu_us["manager"] <= ASSESSMENT_TARGET_US,
            )
        ],
    )
    entity_us = 1e6 / rows[0].candidate_per_second
    verdict = "within" if entity_us <= TARGET_US else "ABOVE"
    print(
        f"\n{entity_us:.0f} us per entity per tick with the default heads "
        f"({1e6 / rows[0].baseline_per_second:.0f} us rule only); {verdict} the "
        f"{TARGET_US:.0f} us target"
    )
    verdict = "within" if cpu_us["manager"] <= ASSESSMENT_TARGET_US else "ABOVE"
    print(
        f"{cpu_us['manager']:.0f} us CPU per manager assessment ({cpu_us['rule']:.0f} us rule "
        f"only, ratio {cpu_us['rule'] / cpu_us['manager']:.2f}); {verdict} the "
        f"{ASSESSMENT_TARGET_US:.0f} us target"
    )


if __name__ == "__main__":
    main()
