"""`python -m forehand.demo`, shortened: it passes, prints its report, and leaves no process.

The demo runs as a subprocess, as `make demo` runs it. Its processes are found by the run
directory named on their command lines (`--config DIR/s1.toml`), so the test can check that
none survives the demo, whether it ends normally or is interrupted with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "forehand.demo"]
SHORT_SCALE = "0.2"
"""Every phase at a fifth of its length (failure detection keeps the failover window longer)."""
HANG_TIMEOUT_S = 240.0
"""A demo still running after this long is hung; not a timing claim."""


def _processes_mentioning(text: str) -> list[int]:
    """Pids of live processes whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if text in command and state != "Z":
            found.append(int(entry.name))
    return found


def _run_directory(output: str) -> str:
    match = re.search(r"servers in (\S+)", output)
    assert match, output
    return match.group(1)


def test_short_demo_passes_with_no_failed_request(tmp_path: Path) -> None:
    """A shortened demo exits 0 with the final tables, a predicted handoff that failed no
    request, a measured failover, a rebalance onto the restarted server that failed no request,
    a planned restart (SIGTERM) whose parts were handed off, no lost write, and every process
    stopped."""
    summary_path = tmp_path / "summary.json"
    finished = subprocess.run(
        [
            *DEMO,
            "--duration-scale",
            SHORT_SCALE,
            "--no-live",
            "--summary-json",
            str(summary_path),
        ],
        capture_output=True,
        text=True,
        timeout=HANG_TIMEOUT_S,
        cwd=REPO,
        check=False,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output
    for heading in ("Requests and latency by phase", "Handoffs", "DEMO PASSED"):
        assert heading in output, output
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] is True
    assert summary["predicted_parts"] > 0
    assert summary["predicted_failed"] == 0
    assert summary["requests"] > 1000
    assert summary["verification"]["lost"] == 0
    assert summary["verification"]["acknowledged"] > 0
    failover = summary["failover"]
    assert failover["parts"] > 0
    # Clients relocate a part lazily, on their next call to it; a part nobody called during the
    # shortened failover window is not relocated yet, so the check is on the parts clients used.
    assert failover["parts_relocated"] > 0
    assert failover["parts_answered"] == failover["parts_called"]
    assert any(group["reason"] == "OVERLOAD" for group in summary["handoffs"])
    # The killed server started again and the rebalance handed it parts, failing nothing.
    assert summary["rebalance_parts_to_restarted"] > 0
    assert summary["rebalance_failed"] == 0
    assert "started again" in output and "rebalance:" in output
    # The planned restart: SIGTERM, its parts handed off, it exited 0, and nothing failed.
    leave = summary["leave"]
    assert leave["exit_code"] == 0 and leave["failed_requests"] == 0
    assert leave["parts"] > 0 and leave["parts_handed_off"] > 0
    assert "(planned restart)" in output
    assert not _processes_mentioning(_run_directory(output))


def test_interrupted_demo_stops_every_process() -> None:
    """Ctrl-C in the middle of the run stops the manager and every server it started."""
    demo = subprocess.Popen(
        [*DEMO, "--duration-scale", SHORT_SCALE, "--no-live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        assert demo.stdout is not None
        lines = []
        for line in demo.stdout:
            lines.append(line)
            if "load started" in line:
                break
        directory = _run_directory("".join(lines))
        assert len(_processes_mentioning(directory)) == 5, "".join(lines)
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=HANG_TIMEOUT_S)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, "".join(lines) + rest
    assert "interrupted" in rest
    assert not _processes_mentioning(directory)
