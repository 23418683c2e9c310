"""`make demo`: a live Forehand cluster on loopback, degraded on purpose, with a final report.

`python -m forehand.demo` (or `forehand demo`) starts a manager and four servers as processes on
127.0.0.1, runs 200 concurrent sessions of the cart example through the client SDK with a live
view, degrades one server with a CPU burner that ramps up (the manager's risk input hands its
parts off before it breaches its SLO), SIGKILLs another (reactive failover), stops a third with
SIGTERM (it hands its parts off, then exits) and prints a report: requests, failures, latency per
phase, handoffs with reasons and lead times, failover time, the planned restart and acknowledged
writes lost. See `forehand.demo._main` for the timeline and the exit status.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from forehand.demo._burner import BurnerConfig, BurnPlan, CpuBurner, burn_plan
from forehand.demo._cluster import ClusterConfig, ClusterStartError, DemoCluster
from forehand.demo._load import LoadConfig, LoadGenerator, Verification
from forehand.demo._main import DemoConfig, run_demo
from forehand.demo._probe import ProbeConfig, ServerProbe
from forehand.demo._report import DemoSummary, Timeline, percentile, summarize

__all__ = [
    "BurnPlan",
    "BurnerConfig",
    "ClusterConfig",
    "ClusterStartError",
    "CpuBurner",
    "DemoCluster",
    "DemoConfig",
    "DemoSummary",
    "LoadConfig",
    "LoadGenerator",
    "ProbeConfig",
    "ServerProbe",
    "Timeline",
    "Verification",
    "burn_plan",
    "main",
    "percentile",
    "run_demo",
    "summarize",
]

QUICK_SCALE = 0.3
"""`--quick` runs every phase at this share of its length (about 40 s in all)."""


def _default_app_dir() -> Path:
    """The directory holding `examples/`: the repository root of an editable install, else
    the current directory."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / "examples" / "cart").is_dir() else Path.cwd()


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m forehand.demo",
        description="A live Forehand cluster on loopback: predicted handoff, then a crash.",
    )
    parser.add_argument("--quick", action="store_true", help=f"phases at {QUICK_SCALE}x length")
    parser.add_argument("--duration-scale", type=float, default=None, help="phase length factor")
    parser.add_argument("--sessions", type=int, default=LoadConfig().sessions)
    parser.add_argument("--clients", type=int, default=LoadConfig().clients)
    parser.add_argument(
        "--pause-ms",
        type=float,
        default=LoadConfig().pause_ms_mean,
        help="mean pause of a session between requests",
    )
    parser.add_argument("--seed", type=int, default=LoadConfig().seed)
    parser.add_argument("--app-dir", type=Path, default=None, help="where examples/ is")
    parser.add_argument("--keep", action="store_true", help="keep logs and configuration")
    parser.add_argument("--summary-json", type=Path, default=None)
    parser.add_argument(
        "--dashboard-port", type=int, default=0, help="dashboard port (0 picks one, -1 none)"
    )
    live = parser.add_mutually_exclusive_group()
    live.add_argument("--live", dest="live", action="store_true", default=None)
    live.add_argument("--no-live", dest="live", action="store_false")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; its exit status."""
    from forehand.errors import ConfigError
    from forehand.runtime.loop import run

    arguments = _arguments(argv)
    try:
        config = DemoConfig(
            app_dir=arguments.app_dir or _default_app_dir(),
            load=LoadConfig(
                sessions=arguments.sessions,
                clients=arguments.clients,
                pause_ms_mean=arguments.pause_ms,
                seed=arguments.seed,
            ),
            keep_directory=arguments.keep,
            summary_json=arguments.summary_json,
            live=arguments.live,
            dashboard_port=arguments.dashboard_port,
        )
        scale = arguments.duration_scale
        if scale is None and arguments.quick:
            scale = QUICK_SCALE
        if scale is not None:
            config = config.scaled(scale)
    except ConfigError as error:
        print(f"forehand demo: {error}", file=sys.stderr)
        return 2
    # Ctrl-C stops the demo and every process it started even when the demo was launched from a
    # shell that ignores SIGINT for its background jobs (POSIX `cmd &` without job control).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(run_demo(config))
    except KeyboardInterrupt:
        print("forehand demo: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
