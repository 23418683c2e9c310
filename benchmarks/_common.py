"""Shared helpers for the benchmarks: rates measured side by side, printed as a table with ratios.

Benchmarks never assert on time (machines here are shared and noisy); they measure a candidate and
its baseline in the same run, interleaved round by round, and report the ratio.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Comparison", "compare", "measure_rate", "print_comparisons"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """One row of a side-by-side table."""

    name: str
    """What was measured."""
    candidate_per_second: float
    """Forehand's rate."""
    baseline_per_second: float
    """The baseline's rate in the same run."""
    baseline_name: str
    """What the baseline is."""

    @property
    def ratio(self) -> float:
        """Candidate rate over baseline rate; above 1 means Forehand is faster."""
        return self.candidate_per_second / self.baseline_per_second


def measure_rate(operation: Callable[[int], object], *, count: int, rounds: int = 5) -> float:
    """Operations per second of `operation(count)`, the best of `rounds` runs.

    `operation` performs `count` operations per call; the best round is the least disturbed by
    other load on the machine, which makes two rates measured in the same run comparable.
    """
    assert count > 0 and rounds > 0
    best_seconds = float("inf")
    for _ in range(rounds):
        gc.collect()
        started = time.perf_counter()
        operation(count)
        best_seconds = min(best_seconds, time.perf_counter() - started)
    return count / best_seconds


def compare(
    name: str,
    *,
    candidate: Callable[[int], object],
    baseline: Callable[[int], object],
    baseline_name: str,
    count: int,
    rounds: int = 5,
) -> Comparison:
    """Measure candidate and baseline alternately, round by round, so drift hits both alike."""
    candidate_best = 0.0
    baseline_best = 0.0
    for _ in range(rounds):
        candidate_best = max(candidate_best, measure_rate(candidate, count=count, rounds=1))
        baseline_best = max(baseline_best, measure_rate(baseline, count=count, rounds=1))
    return Comparison(
        name=name,
        candidate_per_second=candidate_best,
        baseline_per_second=baseline_best,
        baseline_name=baseline_name,
    )


def print_comparisons(title: str, rows: list[Comparison]) -> None:
    """Print a plain-text table, one row per comparison."""
    print(title)
    header = f"{'measure':<36} {'forehand/s':>14} {'baseline/s':>14} {'ratio':>7}  baseline"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:<36} {row.candidate_per_second:>14,.0f} "
            f"{row.baseline_per_second:>14,.0f} {row.ratio:>7.2f}  {row.baseline_name}"
        )
