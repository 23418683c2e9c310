"""Scenarios and campaigns: many seeds of one scenario, a progress bar, a summary, replay lines.

A scenario is a name and a factory `seed -> Simulator`; scenarios register themselves in a small
registry when their module is imported. A campaign runs seeds `[start, start + count)`, and for
every failure prints `SEED=<n>` and the exact command that replays it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forehand.errors import ConfigError
from forehand.sim._simulator import RunResult, Simulator

__all__ = [
    "BUILTIN_SCENARIO_MODULES",
    "Campaign",
    "CampaignResult",
    "Scenario",
    "get_scenario",
    "register_scenario",
    "replay_command",
    "run_scenario",
    "scenario",
    "scenario_names",
]

BUILTIN_SCENARIO_MODULES: tuple[str, ...] = ("forehand.sim._scenarios",)
"""Modules the command line imports so that the project's own scenarios register themselves."""

ScenarioFactory = Callable[[int], Simulator]
"""Builds a ready-to-run simulator for one seed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A named way to build a simulation from a seed."""

    name: str
    """The name the command line selects it by."""
    build: ScenarioFactory
    """Builds the simulator for a seed (nodes, network, faults, checkers, duration)."""
    description: str = ""
    """One line on what it exercises."""


_REGISTRY: dict[str, Scenario] = {}


def register_scenario(name: str, build: ScenarioFactory, *, description: str = "") -> Scenario:
    """Register a scenario under `name`; registering the same factory again is a no-op."""
    existing = _REGISTRY.get(name)
    if existing is not None:
        if existing.build is build:
            return existing
        raise ConfigError(f"a different scenario is already registered as {name!r}")
    registered = _REGISTRY[name] = Scenario(name=name, build=build, description=description)
    return registered


def scenario(name: str, *, description: str = "") -> Callable[[ScenarioFactory], ScenarioFactory]:
    """Decorator form of `register_scenario`."""

    def decorate(build: ScenarioFactory) -> ScenarioFactory:
        register_scenario(name, build, description=description)
        return build

    return decorate


def scenario_names() -> list[str]:
    """Registered scenario names, sorted."""
    return sorted(_REGISTRY)


def get_scenario(name: str) -> Scenario:
    """The scenario registered as `name`, or `ConfigError`."""
    found = _REGISTRY.get(name)
    if found is None:
        known = ", ".join(scenario_names()) or "none"
        raise ConfigError(f"no scenario named {name!r} (registered: {known})")
    return found


def run_scenario(chosen: Scenario, seed: int) -> RunResult:
    """Build and run one seed of a scenario."""
    return chosen.build(seed).run()


JOBS_MAX = 256
"""Bound on worker processes of one campaign."""


def _prepare_worker(imports: tuple[str, ...], name: str) -> None:
    """In a worker process: import the scenario modules unless `name` is registered already
    (a worker forked from the campaign's process inherits its registry)."""
    if name not in _REGISTRY:
        for module in (*BUILTIN_SCENARIO_MODULES, *imports):
            importlib.import_module(module)


def _run_named(name: str, seed: int) -> RunResult:
    """Run one seed of a registered scenario (what a worker process does per seed)."""
    return run_scenario(get_scenario(name), seed)


def replay_command(scenario_name: str, seed: int, *, imports: Sequence[str] = ()) -> str:
    """The exact command line that replays one seed of a scenario."""
    words = ["python", "-m", "forehand.sim"]
    for module in imports:
        words += ["--import", module]
    words += ["--scenario", scenario_name, "--seed", str(seed)]
    return shlex.join(words)


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignResult:
    """The outcome of a campaign."""

    scenario: str
    """The scenario's name."""
    results: tuple[RunResult, ...]
    """One result per seed, in seed order."""
    wall_seconds: float
    """Wall-clock duration of the campaign (reporting only)."""

    @property
    def failures(self) -> list[RunResult]:
        """The failed runs."""
        return [result for result in self.results if not result.ok]

    @property
    def ok(self) -> bool:
        """Whether every seed passed."""
        return not self.failures

    @property
    def events(self) -> int:
        """Simulated events over all seeds."""
        return sum(result.events for result in self.results)

    @property
    def simulated_us(self) -> int:
        """Simulated time over all seeds."""
        return sum(result.simulated_us for result in self.results)

    @property
    def counters(self) -> dict[str, tuple[int, int]]:
        """Per rare path: (total count, seeds that reached it), sorted by name."""
        totals: dict[str, tuple[int, int]] = {}
        for result in self.results:
            for name, value in result.counters.items():
                count, seeds = totals.get(name, (0, 0))
                totals[name] = (count + value, seeds + 1)
        return dict(sorted(totals.items()))

    @property
    def digest(self) -> str:
        """Digest of the per-seed digests, in seed order: one value to compare campaigns by."""
        combined = hashlib.blake2b(digest_size=16)
        for result in self.results:
            combined.update(f"{result.seed}:{result.digest}\n".encode())
        return combined.hexdigest()


class Campaign:
    """Runs many seeds of one scenario with a progress bar, then prints a summary."""

    def __init__(
        self,
        chosen: Scenario,
        *,
        imports: Sequence[str] = (),
        console: Console | None = None,
        fail_fast: bool = False,
    ) -> None:
        self.scenario = chosen
        """The scenario under test."""
        self.imports = tuple(imports)
        """Modules the replay command must import to find the scenario."""
        self.console = console if console is not None else Console()
        """Where progress, failures and the summary go."""
        self.fail_fast = fail_fast
        """Stop at the first failing seed."""

    def replay_command(self, seed: int) -> str:
        """The exact command line that replays `seed`."""
        return replay_command(self.scenario.name, seed, imports=self.imports)

    def run(self, *, seed_count: int, seed_start: int = 0, jobs: int = 1) -> CampaignResult:
        """Run seeds `[seed_start, seed_start + seed_count)`, reporting failures as they come.

        With `jobs > 1` seeds run in that many worker processes; each seed's run is the same
        as in-process, so results (and the digest of digests) do not depend on `jobs`.
        """
        if seed_count < 1 or seed_start < 0 or not 1 <= jobs <= JOBS_MAX:
            raise ConfigError(
                f"a campaign runs at least one seed, from a non-negative start, with 1 to "
                f"{JOBS_MAX} jobs"
            )
        started = time.perf_counter()
        results: list[RunResult] = []
        seeds = range(seed_start, seed_start + seed_count)
        with contextlib.ExitStack() as stack:
            if jobs == 1:
                outcomes: Iterator[RunResult] = (
                    run_scenario(self.scenario, seed) for seed in seeds
                )
            else:
                pool = stack.enter_context(
                    ProcessPoolExecutor(
                        max_workers=jobs,
                        initializer=_prepare_worker,
                        initargs=(self.imports, self.scenario.name),
                    )
                )
                names = [self.scenario.name] * seed_count
                outcomes = pool.map(_run_named, names, seeds)
            self._collect(outcomes, seed_count, results)
            if jobs > 1 and len(results) < seed_count:
                pool.shutdown(cancel_futures=True)
        return CampaignResult(
            scenario=self.scenario.name,
            results=tuple(results),
            wall_seconds=time.perf_counter() - started,
        )

    def _collect(
        self, outcomes: Iterator[RunResult], seed_count: int, results: list[RunResult]
    ) -> None:
        """Gather results in seed order under a progress bar, stopping early on fail-fast."""
        columns = (
            TextColumn(f"[bold]{self.scenario.name}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
        )
        failed = 0
        with Progress(*columns, console=self.console) as progress:
            task = progress.add_task("seeds", total=seed_count, failed=0)
            for result in outcomes:
                results.append(result)
                failed += 0 if result.ok else 1
                progress.update(task, advance=1, failed=failed)
                if not result.ok:
                    self.print_failure(result)
                    if self.fail_fast:
                        return

    def print_failure(self, result: RunResult) -> None:
        """Print `SEED=<n>`, what failed, and the command that replays it."""
        failure = result.failure
        assert failure is not None
        lines = [
            f"SEED={result.seed}",
            f"FAILED {failure.checker} at event {failure.event_index} "
            f"({failure.time_us} µs): {failure.message}",
            f"replay: {self.replay_command(result.seed)}",
        ]
        for line in lines:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def print_summary(self, outcome: CampaignResult) -> None:
        """Print the summary table and the rare paths the campaign reached."""
        wall_seconds = max(outcome.wall_seconds, 1e-9)
        table = Table(title=f"simulation campaign: {outcome.scenario}")
        table.add_column("measure")
        table.add_column("value", justify="right")
        rows = [
            ("seeds run", f"{len(outcome.results)}"),
            ("failures", f"{len(outcome.failures)}"),
            ("events", f"{outcome.events:,}"),
            ("simulated time", f"{outcome.simulated_us / 1e6:,.1f} s"),
            ("wall time", f"{outcome.wall_seconds:,.2f} s"),
            ("events per second", f"{outcome.events / wall_seconds:,.0f}"),
            ("digest of digests", outcome.digest),
        ]
        for name, value in rows:
            table.add_row(name, value)
        self.console.print(table)
        counters = outcome.counters
        if counters:
            paths = Table(title="rare paths reached")
            paths.add_column("path")
            paths.add_column("count", justify="right")
            paths.add_column("seeds", justify="right")
            for name, (count, seeds) in counters.items():
                paths.add_row(name, f"{count:,}", f"{seeds}")
            self.console.print(paths)
