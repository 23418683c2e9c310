"""The placement benchmark runs end to end in quick mode and prints every table."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

_BENCHMARK = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_placement.py"


@pytest.mark.slow
def test_quick_benchmark_runs() -> None:
    """`bench_placement.py --quick` exits cleanly and reports lookups, movement, loads, memory,
    server changes derived beside a full rebuild (which it checks they equal), and the steps of
    a chain of map versions."""
    completed = subprocess.run(
        [sys.executable, str(_BENCHMARK), "--quick"],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    )
    for expected in (
        "primary lookup",
        "uhashring ketama get_node",
        "moved on join, hash only",
        "max/mean primaries, bounded loads",
        "bytes per override entry",
        "strategies",
        "server death at 30,000 parts",
        "full rebuild of the assignment",
        "map versions",
        "diff of consecutive versions, batch of 64",
    ):
        assert expected in completed.stdout
