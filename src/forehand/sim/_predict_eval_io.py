"""`forehand predict-eval --sim`: run a simulator campaign, print what it injected and the table."""

from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from forehand.predict import EvaluationReport
from forehand.sim._predict_eval import RunTrace, SimTelemetry, generate, sim_report
from forehand.sim._predict_eval_plan import EVALUATED_KINDS, SimEvalConfig

__all__ = ["cached_telemetry", "sim_eval_config", "simulator_evaluation"]

CACHE_VERSION = 3
"""Part of a cache file's name: bump it when the generator's output changes for a config."""


def sim_eval_config(*, events_per_kind: int, quick: bool) -> SimEvalConfig:
    """The campaign `--sim-events` and `--quick` ask for."""
    if quick:
        return SimEvalConfig.quick(events_per_kind=events_per_kind)
    return SimEvalConfig(events_per_kind=events_per_kind)


def _print_campaign(telemetry: SimTelemetry, *, wall_s: float, console: Console) -> None:
    config = telemetry.config
    runs = telemetry.runs
    simulated_s = sum(run.simulated_us for run in runs) / 1e6
    failed = [run for run in runs if run.failure is not None]
    console.print(
        f"simulator campaign: {len(runs)} runs x {config.run_us / 1e6:g} s simulated "
        f"({simulated_s:,.0f} s, {config.servers} servers, {config.clients} clients, "
        f"{config.sessions} sessions), time read x{config.time_scale}; "
        f"{wall_s:.0f} s wall; digest {telemetry.digest}"
    )
    table = Table(title="Simulator campaign: episodes injected and breach events measured")
    for column in ("kind", "episodes", "events"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    episodes, events = telemetry.episode_counts(), telemetry.event_counts()
    for kind in sorted(set(episodes) | set(events)):
        table.add_row(kind, str(episodes.get(kind, 0)), str(events.get(kind, 0)))
    console.print(table)
    for run in failed:
        console.print(f"run {run.index} (seed {run.seed}) stopped early: {run.failure}")


def cached_telemetry(
    config: SimEvalConfig, *, seed: int, jobs: int, cache: Path | None, console: Console
) -> SimTelemetry:
    """The campaign's telemetry: from `cache` when a file of this config and seed is there
    (a pickle: keep the directory to yourself), else generated (and stored when `cache` is set)."""
    path = None
    if cache is not None:
        key = hashlib.blake2b(f"{CACHE_VERSION} {seed} {config!r}".encode(), digest_size=8)
        path = cache / f"sim-eval-{seed}-{key.hexdigest()}.pickle"
        if path.exists():
            console.print(f"simulator campaign read from {path}")
            with path.open("rb") as handle:
                telemetry = pickle.load(handle)
            assert isinstance(telemetry, SimTelemetry)
            return telemetry
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("simulator runs")

        def advanced(trace: RunTrace) -> None:
            progress.advance(task)

        telemetry = generate(config, seed=seed, jobs=jobs, progress=advanced)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as sink:
            pickle.dump(telemetry, sink)
    return telemetry


def simulator_evaluation(
    *,
    events_per_kind: int,
    seed: int,
    jobs: int,
    quick: bool,
    console: Console,
    cache: Path | None = None,
    path_intermittency: bool = True,
) -> EvaluationReport:
    """Generate the campaign (or read it from `cache`), replay it through the predictor (with
    the intermittency features unless `path_intermittency` is False) and print the evaluation."""
    from forehand.predict_io import print_report

    config = sim_eval_config(events_per_kind=events_per_kind, quick=quick)
    started = time.perf_counter()
    telemetry = cached_telemetry(config, seed=seed, jobs=jobs, cache=cache, console=console)
    _print_campaign(telemetry, wall_s=time.perf_counter() - started, console=console)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("predictor replay", total=len(telemetry.ticks))
        report = sim_report(
            telemetry,
            seed=seed,
            progress=lambda _: progress.advance(task),
            path_intermittency=path_intermittency,
        )
    groups = ("gradual", "sudden", *(kind.value for kind in EVALUATED_KINDS))
    print_report("Simulator", report, console=console, groups=groups)
    return report
