"""The takeover benchmark runs end to end in quick mode, and its survivor really takes over."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from benchmarks.bench_takeover import DEAD, SURVIVOR, Failover

from forehand.core._part import PartState
from forehand.core.messages import PartRef

_BENCHMARK = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "bench_takeover.py"


def test_quick_takeover_benchmark_runs() -> None:
    """`bench_takeover.py --quick` exits cleanly and reports the adoption rate beside the bare
    map work."""
    completed = subprocess.run(
        [sys.executable, str(_BENCHMARK), "--quick"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "parts adopted" in completed.stdout
    assert "delta decode + apply + diff" in completed.stdout


def test_the_benchmarks_survivor_is_primary_of_the_parts_promoted_to_it() -> None:
    """What the benchmark times is a real takeover: after the failover's version, the survivor
    is PRIMARY of every part the version promotes to it, and the version is adopted."""
    failover = Failover(300)
    core = failover.survivor()
    assert failover.adopt(core) == len(failover.before)
    promoted = [
        key
        for key in failover.after.part_keys()
        if failover.before.primary_of(key) == DEAD and failover.after.primary_of(key) == SURVIVOR
    ]
    assert promoted
    for key in promoted:
        part = core.part(PartRef(session_id=key.session_id, part=key.part))
        assert part is not None and part.state is PartState.PRIMARY
