"""Model time per entity per tick: the full online predictor against the rule baseline alone.

A warmed-up predictor (one synthetic server day, so the models, scalers and calibrators are
trained) is fed the next ticks of the same fleet; each tick of a server carries its own sample
and one sample per client group (four paths), so an "entity tick" is one sample folded into its
features, scored by every head, and labelled later. The candidate runs the default heads (logistic
regression, rule and tree on servers; logistic and rule on paths); the baseline runs the rule
alone on the very same samples, so the ratio is the price of the learned models. The target is
at most 1 ms per entity per tick. A second row runs NAB's validation-chosen primary (the blend of
the rule and the logistic regression) with the rule beside it on servers, the rule on paths.
"""

from __future__ import annotations

import random
import sys
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


def main() -> None:
    """Warm both predictors up, then measure entity ticks per second side by side."""
    warmup, measured = _fleet_ticks()
    entities_per_tick = len(measured[0][1])
    full = _warm(("logistic", "rule", "tree"), ("logistic", "rule"), warmup)
    rule = _warm(("rule",), ("rule",), warmup)
    blend = _warm(("blend_max_logistic", "rule"), ("rule",), warmup)
    rule_again = _warm(("rule",), ("rule",), warmup)

    offsets_us = {id(full): 0, id(rule): 0, id(blend): 0, id(rule_again): 0}

    def run(predictor: OnlinePredictor) -> None:
        # The same measured ticks every round, shifted in time: the cost per tick stays alike.
        offset_us = offsets_us[id(predictor)]
        for now_us, samples in measured:
            for sample in samples:
                predictor.observe(sample, now_us=now_us + offset_us)
                if isinstance(sample, ServerSample):
                    predictor.probabilities(EntityKey(sample.server_id))
        offsets_us[id(predictor)] = offset_us + 10 * 1_000_000 * MEASURED_TICKS

    count = MEASURED_TICKS * entities_per_tick
    row = compare(
        "entity ticks (default heads)",
        candidate=lambda _: run(full),
        baseline=lambda _: run(rule),
        baseline_name="rule head only, same features",
        count=count,
        rounds=ROUNDS,
    )
    blend_row = compare(
        "entity ticks (blend_max_logistic + rule)",
        candidate=lambda _: run(blend),
        baseline=lambda _: run(rule_again),
        baseline_name="rule head only, same features",
        count=count,
        rounds=ROUNDS,
    )
    print_comparisons("forehand.predict: model time per entity per tick", [row, blend_row])
    per_entity_us = 1e6 / row.candidate_per_second
    per_server_tick_us = per_entity_us * entities_per_tick / SERVERS
    print(f"{per_server_tick_us:.0f} us per server tick, its own sample and its paths' together")
    verdict = "within" if per_entity_us <= TARGET_US else "ABOVE"
    print(
        f"\n{per_entity_us:.0f} us per entity per tick with every head "
        f"({1e6 / row.baseline_per_second:.0f} us rule only); {verdict} the "
        f"{TARGET_US:.0f} us target"
    )
    blend_us = 1e6 / blend_row.candidate_per_second
    verdict = "within" if blend_us <= TARGET_US else "ABOVE"
    print(f"{blend_us:.0f} us per entity per tick with the NAB primary's heads; {verdict} target")


if __name__ == "__main__":
    main()
