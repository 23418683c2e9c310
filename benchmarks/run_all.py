"""Run every benchmark (`make bench`): one JSON file and one summary table with ratios.

Each `benchmarks/bench_*.py` runs as its own process (so each stays runnable alone, and one that
starts a cluster cannot leave anything behind in the next), with `FOREHAND_BENCH_JSON` naming a
temporary file its tables go to. The files are merged into one document:

    {"machine": {...}, "started_utc": "...", "benchmarks": {"bench_wire": {"tables": [...],
     "details": {...}, "exit_status": 0, "wall_s": 12.3}, ...}}

written to `--output` (default `benchmarks/results/bench.json`), and every row of every table is
printed again in one summary, with its ratio to its baseline and whether it met its target.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only handoff,redis] [--output PATH]

`--quick` is passed on to the benchmarks that take it (smaller sizes, fewer rounds). A benchmark
that fails or exceeds `--timeout-s` is recorded with its exit status and the run goes on; the
command exits non-zero if any failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import JSON_ENVIRONMENT_VARIABLE, machine

HERE = Path(__file__).resolve().parent
DEFAULT_OUTPUT = HERE / "results" / "bench.json"
TIMEOUT_S_DEFAULT = 600.0
"""A benchmark still running after this long is stopped (by its pid) and recorded as failed."""
TAKES_QUICK = frozenset(
    {
        "bench_manager",
        "bench_placement",
        "bench_handoff",
        "bench_failover",
        "bench_memory",
        "bench_redis",
        "bench_store",
        "bench_takeover",
    }
)
"""The benchmarks that understand `--quick`."""


def _run_one(path: Path, *, quick: bool, timeout_s: float) -> dict[str, Any]:
    name = path.stem
    command = [sys.executable, str(path)]
    if quick and name in TAKES_QUICK:
        command.append("--quick")
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as directory:
        output = Path(directory) / "result.json"
        environment = {**os.environ, JSON_ENVIRONMENT_VARIABLE: str(output)}
        print(f"=== {name}: {' '.join(command[1:])}", flush=True)
        started = time.monotonic()
        process = subprocess.Popen(command, env=environment, cwd=HERE.parent)
        try:
            status = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            status = -9
            print(f"=== {name}: stopped after {timeout_s:.0f} s", flush=True)
        wall_s = time.monotonic() - started
        result: dict[str, Any] = {"tables": [], "details": {}}
        if output.is_file():
            result = json.loads(output.read_text(encoding="utf-8"))
            result.pop("machine", None)
    result["exit_status"] = status
    result["wall_s"] = round(wall_s, 1)
    print(f"=== {name}: exit {status} in {wall_s:.0f} s\n", flush=True)
    return result


def _summary(results: dict[str, dict[str, Any]]) -> None:
    header = f"{'benchmark':<16} {'measure':<50} {'value':>14} {'unit':<14} {'ratio':>7}  target"
    print("Summary (ratio = value / baseline of the same run)")
    print(header)
    print("-" * len(header))
    for name, result in results.items():
        short = name.removeprefix("bench_")
        if result["exit_status"] != 0:
            print(f"{short:<16} FAILED with exit status {result['exit_status']}")
        for table in result["tables"]:
            for row in table["rows"]:
                ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}"
                target = row["target"]
                if row["met"] is not None:
                    target += " (met)" if row["met"] else " (NOT met)"
                measure = f"{table['title'][:18]}: {row['name']}"[:50]
                print(
                    f"{short:<16} {measure:<50} {row['value']:>14,.1f} {row['unit']:<14} "
                    f"{ratio:>7}  {target}"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    parser.add_argument("--only", default="", help="comma-separated names (handoff,redis,...)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON file")
    parser.add_argument(
        "--timeout-s", type=float, default=TIMEOUT_S_DEFAULT, help="per benchmark, seconds"
    )
    arguments = parser.parse_args(argv)
    wanted = {f"bench_{name.strip()}" for name in arguments.only.split(",") if name.strip()}
    paths = sorted(HERE.glob("bench_*.py"))
    if wanted:
        unknown = wanted - {path.stem for path in paths}
        if unknown:
            parser.error(f"no such benchmark: {', '.join(sorted(unknown))}")
        paths = [path for path in paths if path.stem in wanted]
    started_utc = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    before = machine()
    results = {
        path.stem: _run_one(path, quick=arguments.quick, timeout_s=arguments.timeout_s)
        for path in paths
    }
    document = {
        "machine": before,
        "machine_after": machine(),
        "started_utc": started_utc,
        "quick": arguments.quick,
        "benchmarks": results,
    }
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    _summary(results)
    print(f"\nJSON: {arguments.output}")
    return 1 if any(result["exit_status"] != 0 for result in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
