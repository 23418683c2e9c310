"""The benchmark plumbing: percentiles, recorded tables as JSON, and `run_all.py` merging them."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest
from benchmarks._common import JSON_ENVIRONMENT_VARIABLE, Metric, percentile

REPO = pathlib.Path(__file__).resolve().parents[2]
RUN_ALL = REPO / "benchmarks" / "run_all.py"


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99; an empty sample gives NaN, not an error."""
    values = [float(n) for n in range(100, 0, -1)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert math.isnan(percentile([], 0.99))


def test_metric_ratio_needs_a_baseline() -> None:
    """A metric without a baseline (or with a zero one) has no ratio; with one, value/baseline."""
    assert Metric(name="x", value=3.0, unit="ms").ratio is None
    assert Metric(name="x", value=3.0, unit="ms", baseline=0.0).ratio is None
    assert Metric(name="x", value=3.0, unit="ms", baseline=2.0).ratio == 1.5


def test_printed_tables_are_written_as_json(tmp_path: pathlib.Path) -> None:
    """With FOREHAND_BENCH_JSON set, every printed table and recorded detail lands in the file."""
    output = tmp_path / "result.json"
    script = (
        "from benchmarks._common import Comparison, Metric, print_comparisons, print_metrics, "
        "record\n"
        "print_metrics('t1', [Metric(name='m', value=2.0, unit='ms', baseline=4.0, "
        "target='< 3 ms', met=True)])\n"
        "print_comparisons('t2', [Comparison(name='c', candidate_per_second=10.0, "
        "baseline_per_second=5.0, baseline_name='b')])\n"
        "record('detail', {'k': [1, 2]})\n"
    )
    environment = {**os.environ, JSON_ENVIRONMENT_VARIABLE: str(output), "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-c", script],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "(met)" in completed.stdout
    document = json.loads(output.read_text())
    assert [table["title"] for table in document["tables"]] == ["t1", "t2"]
    assert document["tables"][0]["rows"][0]["ratio"] == 0.5
    assert document["tables"][1]["rows"][0]["ratio"] == 2.0
    assert document["details"] == {"detail": {"k": [1, 2]}}
    assert document["machine"]["cpu_count"] == os.cpu_count()


@pytest.mark.slow
def test_run_all_merges_one_benchmark(tmp_path: pathlib.Path) -> None:
    """`run_all.py --quick --only manager` writes one JSON with the manager's rows and exit 0."""
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(RUN_ALL), "--quick", "--only", "manager", "--output", str(output)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    document = json.loads(output.read_text())
    assert list(document["benchmarks"]) == ["bench_manager"]
    result = document["benchmarks"]["bench_manager"]
    assert result["exit_status"] == 0
    names = [row["name"] for table in result["tables"] for row in table["rows"]]
    assert "handoff decisions (1 part each)" in names
    assert all(row["ratio"] > 0 for table in result["tables"] for row in table["rows"])
    assert "Summary" in completed.stdout


def test_run_all_refuses_an_unknown_benchmark(tmp_path: pathlib.Path) -> None:
    """A name that is no benchmarks/bench_*.py is a usage error, and nothing is written."""
    output = tmp_path / "bench.json"
    completed = subprocess.run(
        [sys.executable, str(RUN_ALL), "--only", "nonesuch", "--output", str(output)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "no such benchmark: bench_nonesuch" in completed.stderr
    assert not output.exists()
