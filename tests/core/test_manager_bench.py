"""The manager benchmark runs end to end in quick mode and prints both rows."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

_BENCHMARK = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_manager.py"


@pytest.mark.slow
def test_quick_manager_benchmark_runs() -> None:
    """`bench_manager.py --quick` exits cleanly and reports sessions and heartbeats."""
    completed = subprocess.run(
        [sys.executable, str(_BENCHMARK), "--quick"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "sessions opened" in completed.stdout
    assert "heartbeats handled" in completed.stdout
