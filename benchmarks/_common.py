"""Shared helpers for the benchmarks: rates measured side by side, printed as a table with ratios.

Benchmarks never assert on time (machines here are shared and noisy); they measure a candidate and
its baseline in the same run, interleaved round by round, and report the ratio.

Every table a benchmark prints (`print_comparisons`, `print_metrics`) is also recorded; when the
environment variable `FOREHAND_BENCH_JSON` names a file, the recorded tables (and any `record`ed
details) are written there as JSON when the benchmark exits. `benchmarks/run_all.py` (`make
bench`) runs each benchmark with its own file and merges them into one.
"""

from __future__ import annotations

import atexit
import gc
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "JSON_ENVIRONMENT_VARIABLE",
    "Comparison",
    "Metric",
    "best_rate",
    "compare",
    "machine",
    "measure_rate",
    "percentile",
    "print_comparisons",
    "print_metrics",
    "record",
    "run_store",
]

JSON_ENVIRONMENT_VARIABLE = "FOREHAND_BENCH_JSON"
"""Names the file a benchmark writes its recorded tables to, as JSON, when it exits."""


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


def run_store(core: Any, store: Any, *, now_us: int = 0) -> None:
    """Run a core's store requests on `store` (a `MemoryStore`), feeding each result back, until
    the core asks for nothing more: a manager's commits, synchronously."""
    while requests := core.store_requests():
        for request in requests:
            core.store_result(store.execute(request), now_us=now_us)


def best_rate(
    prepare: Callable[[], tuple[Any, ...]], operation: Callable[..., int], *, rounds: int
) -> float:
    """Operations per second of `operation(*prepare())` (which returns how many it did), timing
    only the operation; the best of `rounds`."""
    best = 0.0
    for _ in range(rounds):
        prepared = prepare()
        gc.collect()
        started_s = time.perf_counter()
        done = operation(*prepared)
        best = max(best, done / (time.perf_counter() - started_s))
    return best


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    """One measured value, with its baseline and target when it has them."""

    name: str
    """What was measured."""
    value: float
    """The measured value, in `unit`."""
    unit: str
    """Its unit (`ms`, `MiB`, `requests/s`, `bytes/session`, ...)."""
    baseline: float | None = None
    """The baseline's value in the same run, in the same unit, if there is one."""
    baseline_name: str = ""
    """What the baseline is."""
    target: str = ""
    """The target, for people (`< 1000 ms`, `>= 1.5x baseline`); empty if none."""
    met: bool | None = None
    """Whether the target was met; None without a target."""

    @property
    def ratio(self) -> float | None:
        """Value over baseline, when there is a non-zero baseline."""
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline


_tables: list[dict[str, Any]] = []
_details: dict[str, Any] = {}


def _write_json() -> None:
    path = os.environ.get(JSON_ENVIRONMENT_VARIABLE)
    if not path or (not _tables and not _details):
        return
    document = {"machine": machine(), "tables": _tables, "details": _details}
    Path(path).write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")


atexit.register(_write_json)


def machine() -> dict[str, Any]:
    """The machine a result comes from: cores, load average, Python."""
    load_1m, load_5m, _ = os.getloadavg()
    return {
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(load_1m, 2),
        "load_average_5m": round(load_5m, 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def record(key: str, value: Any) -> None:
    """Keep `value` (JSON-serialisable: distributions, settings, phases) under `key` in the
    benchmark's JSON output."""
    _details[key] = value


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0.5, 0.99) of `values` by the nearest-rank method; NaN if empty."""
    assert 0.0 <= fraction <= 1.0
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return float(ordered[rank - 1])


def print_metrics(title: str, rows: list[Metric]) -> None:
    """Print a plain-text table of measured values (with baselines, ratios and targets), and
    record it for the JSON output."""
    _tables.append(
        {
            "title": title,
            "rows": [
                {
                    "name": row.name,
                    "value": row.value,
                    "unit": row.unit,
                    "baseline": row.baseline,
                    "baseline_name": row.baseline_name,
                    "ratio": row.ratio,
                    "target": row.target,
                    "met": row.met,
                }
                for row in rows
            ],
        }
    )
    print(title)
    header = f"{'measure':<44} {'value':>12} {'unit':<12} {'baseline':>12} {'ratio':>7}  target"
    print(header)
    print("-" * len(header))
    for row in rows:
        baseline = "" if row.baseline is None else f"{row.baseline:,.1f}"
        ratio = "" if row.ratio is None else f"{row.ratio:.2f}"
        target = row.target
        if row.met is not None:
            target += " (met)" if row.met else " (NOT met)"
        print(
            f"{row.name:<44} {row.value:>12,.1f} {row.unit:<12} {baseline:>12} {ratio:>7}  {target}"
        )
    print()


def print_comparisons(title: str, rows: list[Comparison]) -> None:
    """Print a plain-text table, one row per comparison, and record it for the JSON output."""
    _tables.append(
        {
            "title": title,
            "rows": [
                {
                    "name": row.name,
                    "value": row.candidate_per_second,
                    "unit": "/s",
                    "baseline": row.baseline_per_second,
                    "baseline_name": row.baseline_name,
                    "ratio": row.ratio,
                    "target": "",
                    "met": None,
                }
                for row in rows
            ],
        }
    )
    print(title)
    header = f"{'measure':<36} {'forehand/s':>14} {'baseline/s':>14} {'ratio':>7}  baseline"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:<36} {row.candidate_per_second:>14,.0f} "
            f"{row.baseline_per_second:>14,.0f} {row.ratio:>7.2f}  {row.baseline_name}"
        )
