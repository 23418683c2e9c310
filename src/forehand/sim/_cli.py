"""`python -m forehand.sim` (also `forehand sim`): run a campaign of seeds, or replay one seed."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from forehand.errors import ConfigError
from forehand.sim._campaign import (
    BUILTIN_SCENARIO_MODULES,
    Campaign,
    Scenario,
    get_scenario,
    replay_command,
    scenario_names,
)

__all__ = ["main"]

DEFAULT_SCENARIO = "all"
"""What runs without `--scenario`: every built-in scenario in turn, seed by seed."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the deterministic simulator: a campaign of seeds, or one seed replayed.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--scenario",
        help=f"the scenario to run (see --list; default {DEFAULT_SCENARIO!r}: all of them in turn)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds to run (default 1)")
    parser.add_argument("--seed-start", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--seed", type=int, help="replay this one seed and print its details")
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first so that its scenarios register (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list the registered scenarios")
    parser.add_argument("--trace", action="store_true", help="with --seed: print the trace")
    parser.add_argument("--fail-fast", action="store_true", help="stop at the first failure")
    parser.add_argument(
        "--jobs", type=int, default=1, help="worker processes for a campaign (default 1)"
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m forehand.sim") -> int:
    """Parse `argv`, run what it asks, and return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["study"]:
        # The scale study has options of its own (`forehand sim study --help`).
        from forehand.sim.study import main as study_main

        return study_main(argv[1:], prog=f"{prog} study")
    arguments = _parser(prog).parse_args(argv)
    console = Console()
    try:
        _import_scenarios(arguments.imports)
    except ImportError as error:
        _say(console, f"cannot import scenarios: {error}")
        return EXIT_USAGE
    names = scenario_names()
    if not names:
        console.print(
            "no scenarios are registered; import a module that registers some with --import MODULE",
            markup=False,
        )
        return EXIT_USAGE
    if arguments.list:
        _print_scenarios(console, names)
        return EXIT_OK
    try:
        chosen = get_scenario(arguments.scenario or DEFAULT_SCENARIO)
    except ConfigError as error:
        _say(console, str(error))
        _print_scenarios(console, names)
        return EXIT_USAGE
    if arguments.seed is not None:
        return _replay(console, chosen, arguments.seed, arguments.imports, arguments.trace)
    campaign = Campaign(
        chosen, imports=arguments.imports, console=console, fail_fast=arguments.fail_fast
    )
    try:
        outcome = campaign.run(
            seed_count=arguments.seeds, seed_start=arguments.seed_start, jobs=arguments.jobs
        )
    except ConfigError as error:
        _say(console, str(error))
        return EXIT_USAGE
    campaign.print_summary(outcome)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def _import_scenarios(imports: Sequence[str]) -> None:
    """Import the built-in scenario modules, then the requested ones from the current directory.

    `python -m` puts the current directory on the path and the `forehand` script does not; doing
    it here makes both commands import the same modules, so a replay line works with either.
    """
    if imports and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in (*BUILTIN_SCENARIO_MODULES, *imports):
        importlib.import_module(module)


def _print_scenarios(console: Console, names: list[str]) -> None:
    table = Table(title="registered scenarios")
    table.add_column("scenario")
    table.add_column("description")
    for name in names:
        table.add_row(name, get_scenario(name).description)
    console.print(table)


def _replay(
    console: Console, chosen: Scenario, seed: int, imports: Sequence[str], trace: bool
) -> int:
    sim = chosen.build(seed)
    if trace:
        sim.retain_trace()
    result = sim.run()
    if trace:
        for line in sim.trace_lines:
            _say(console, line)
    _say(console, f"SEED={seed}")
    _say(console, f"digest={result.digest}")
    _say(
        console,
        f"events={result.events} observations={result.observations} "
        f"simulated_us={result.simulated_us} wall_s={result.wall_seconds:.3f}",
    )
    for name, value in result.counters.items():
        _say(console, f"  {name}: {value}")
    failure = result.failure
    if failure is None:
        _say(console, "ok")
        return EXIT_OK
    _say(
        console,
        f"FAILED {failure.checker} at event {failure.event_index} ({failure.time_us} µs): "
        f"{failure.message}",
    )
    if failure.details:
        _say(console, failure.details)
    _say(console, f"replay: {replay_command(chosen.name, seed, imports=imports)}")
    return EXIT_FAILED


def _say(console: Console, text: str) -> None:
    """Print one plain line: no markup, no highlighting, never wrapped (scripts grep it)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)
