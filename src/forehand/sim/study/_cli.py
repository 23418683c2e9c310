"""`forehand sim study`: run the scale study and write its report."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from forehand.errors import ConfigError
from forehand.sim.study._config import (
    FAULT_MIXES,
    QUIET_ASSESS_INTERVAL_S,
    Policy,
    StudyConfig,
    fault_mix,
)
from forehand.sim.study._report import targets, write_report
from forehand.sim.study._study import parse_sweep, run_study, run_sweep

__all__ = ["DEFAULT_SWEEP", "main"]

DEFAULT_SWEEP = "250x25000,1000x25000,1000x100000,2000x200000"
"""The sweep `--sweep` runs without a value."""
EXIT_OK, EXIT_USAGE = 0, 2


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "The scale study: the real ManagerCore, placement and predictor against a fleet "
            "model, policies static, reactive and predictive on the same seeded faults."
        ),
        allow_abbrev=False,
    )
    parser.add_argument("--servers", type=int, default=1_000, help="servers (default 1000)")
    parser.add_argument("--sessions", type=int, default=100_000, help="sessions (default 100000)")
    parser.add_argument(
        "--duration-s", type=int, default=3_600, help="simulated seconds (default 3600)"
    )
    parser.add_argument("--tick-s", type=int, default=5, help="fleet-model step (default 5)")
    parser.add_argument(
        "--assess-interval-s",
        type=int,
        default=30,
        help="predictor cadence per server (default 30)",
    )
    parser.add_argument(
        "--quiet-assess-interval-s",
        type=int,
        default=None,
        help="predictor cadence per server while its load stays quiet (default 120, at least "
        "--assess-interval-s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="root seed (default 1)")
    parser.add_argument(
        "--mix",
        default="gradual",
        help=f"fault mix: {', '.join(sorted(FAULT_MIXES))} (default gradual)",
    )
    parser.add_argument(
        "--fault-scale",
        type=float,
        default=1.0,
        help="multiply every fault rate of the mix (small fleets need more faults)",
    )
    parser.add_argument(
        "--policies",
        default=",".join(policy.value for policy in Policy),
        help="comma-separated policies (default all)",
    )
    parser.add_argument(
        "--training-servers",
        type=int,
        default=200,
        help="servers of the separate fleet the predictor is trained on first (default 200)",
    )
    parser.add_argument(
        "--training-hours",
        type=float,
        default=4.0,
        help="simulated hours of that training fleet (default 4)",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="policies run at once (processes; default 1)"
    )
    parser.add_argument(
        "--sweep",
        nargs="?",
        const=DEFAULT_SWEEP,
        default=None,
        metavar="SxN,...",
        help=f"also run the scaling sweep (default points {DEFAULT_SWEEP})",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the report")
    return parser


def _config(arguments: argparse.Namespace) -> StudyConfig:
    try:
        policies = tuple(Policy(name.strip()) for name in arguments.policies.split(","))
    except ValueError:
        known = ", ".join(policy.value for policy in Policy)
        raise ConfigError(f"unknown policy in {arguments.policies!r}; known: {known}") from None
    return StudyConfig(
        servers=arguments.servers,
        sessions=arguments.sessions,
        duration_s=arguments.duration_s,
        tick_s=arguments.tick_s,
        assess_interval_s=arguments.assess_interval_s,
        quiet_assess_interval_s=(
            max(QUIET_ASSESS_INTERVAL_S, arguments.assess_interval_s)
            if arguments.quiet_assess_interval_s is None
            else arguments.quiet_assess_interval_s
        ),
        seed=arguments.seed,
        mix=fault_mix(arguments.mix).scaled(arguments.fault_scale),
        policies=policies,
        training_servers=arguments.training_servers,
        training_hours=arguments.training_hours,
    )


def main(argv: Sequence[str] | None = None, *, prog: str = "forehand sim study") -> int:
    """Parse `argv`, run the study, write the report; the exit code."""
    arguments = _parser(prog).parse_args(argv)
    console = Console(stderr=True)
    try:
        config = _config(arguments)
        points = None if arguments.sweep is None else parse_sweep(arguments.sweep)
        if not 1 <= arguments.jobs <= len(config.policies):
            raise ConfigError(f"--jobs must be in [1, {len(config.policies)}]")
    except ConfigError as error:
        console.print(f"{prog}: {error}", markup=False, highlight=False, soft_wrap=True)
        return EXIT_USAGE
    console.print(f"SEED={config.seed}", markup=False, highlight=False, soft_wrap=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} ticks"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        tasks = {
            policy: progress.add_task(policy.value, total=config.ticks)
            for policy in config.policies
        }
        study = run_study(
            config,
            jobs=arguments.jobs,
            on_progress=lambda policy, ticks: progress.advance(tasks[policy], ticks),
        )
        if points is not None:
            sweep_task = progress.add_task("sweep", total=len(points))
            study.sweep = run_sweep(
                config, points, on_point=lambda s, n: progress.advance(sweep_task, 0)
            )
            progress.update(sweep_task, completed=len(points))
    command = " ".join([prog, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    written = write_report(study, arguments.out, command=command)
    measured = targets(study)
    for row in measured.rows():
        console.print(
            f"{row[0]}: {row[2]} (goal {row[1]})", markup=False, highlight=False, soft_wrap=True
        )
    for measure, value in measured.context_rows():
        console.print(
            f"context, not a target: {measure}: {value}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"digest={study.digest}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {written[0]}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_OK
