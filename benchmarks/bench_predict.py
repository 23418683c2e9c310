"""Model time per entity per tick: the full online predictor against the rule baseline alone.

A warmed-up predictor (one synthetic server day, so the models, scalers and calibrators are
trained) is fed the next ticks of the same fleet. The baseline of every row runs the rule alone on
the very same samples, so each ratio is the price of the learned models.

- Manager assessment: the heads the manager runs (`PredictiveRiskPolicy`: logistic regression
  and rule on servers, the rule on paths), one server sample observed and its risk read, as the
  manager does per heartbeat (path reports are separate observations, in the rows below). Target:
  at most 150 us per assessment.
- Entity ticks: each tick of a server carries its own sample and one sample per client group
  (four paths), so an "entity tick" is one sample folded into its features, scored by every
  head, and labelled later; the candidate runs the predictor's default heads (logistic
  regression, rule and tree on servers; logistic and rule on paths). Target: 1 ms.
- NAB's validation-chosen primary with the rule beside it on servers, the rule on paths.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import compare, print_comparisons

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


def main() -> None:
    """Warm the predictors up, then measure samples per second side by side with the rule."""
    warmup, measured = _fleet_ticks()
    servers_only: list[tuple[int, list[Sample]]] = [
        (now_us, [sample for sample in samples if isinstance(sample, ServerSample)])
        for now_us, samples in measured
    ]
    run_all, run_servers = _runner(measured), _runner(servers_only)
    manager = _warm(MANAGER_MODELS, ("rule",), warmup)
    full = _warm(("logistic", "rule", "tree"), ("logistic", "rule"), warmup)
    blend = _warm(("blend_max_logistic", "rule"), ("rule",), warmup)
    rules = [_warm(("rule",), ("rule",), warmup) for _ in range(3)]
    entities = MEASURED_TICKS * len(measured[0][1])
    rows = [
        compare(
            "manager assessments (logistic + rule)",
            candidate=lambda _: run_servers(manager),
            baseline=lambda _: run_servers(rules[0]),
            baseline_name="rule head only, same features",
            count=MEASURED_TICKS * SERVERS,
            rounds=ROUNDS,
        ),
        compare(
            "entity ticks (default heads)",
            candidate=lambda _: run_all(full),
            baseline=lambda _: run_all(rules[1]),
            baseline_name="rule head only, same features",
            count=entities,
            rounds=ROUNDS,
        ),
        compare(
            "entity ticks (blend_max_logistic + rule)",
            candidate=lambda _: run_all(blend),
            baseline=lambda _: run_all(rules[2]),
            baseline_name="rule head only, same features",
            count=entities,
            rounds=ROUNDS,
        ),
    ]
    print_comparisons("forehand.predict: model time per sample", rows)
    assessment_us, entity_us, blend_us = (1e6 / row.candidate_per_second for row in rows)
    verdict = "within" if assessment_us <= ASSESSMENT_TARGET_US else "ABOVE"
    print(
        f"\n{assessment_us:.0f} us per manager assessment "
        f"({1e6 / rows[0].baseline_per_second:.0f} us rule only); {verdict} the "
        f"{ASSESSMENT_TARGET_US:.0f} us target"
    )
    verdict = "within" if entity_us <= TARGET_US else "ABOVE"
    print(
        f"{entity_us:.0f} us per entity per tick with the default heads "
        f"({1e6 / rows[1].baseline_per_second:.0f} us rule only); {verdict} the "
        f"{TARGET_US:.0f} us target"
    )
    verdict = "within" if blend_us <= TARGET_US else "ABOVE"
    print(f"{blend_us:.0f} us per entity per tick with the NAB primary's heads; {verdict} target")


if __name__ == "__main__":
    main()
