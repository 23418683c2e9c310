"""The `forehand` command line; each subcommand lives with the layer it drives."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import typer

import forehand

app = typer.Typer(
    name="forehand",
    help="Forehand: keep long-lived sessions alive across a fleet of servers.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Forehand: keep long-lived sessions alive across a fleet of servers."""


@app.command()
def version() -> None:
    """Print the installed Forehand version."""
    typer.echo(forehand.__version__)


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def sim(context: typer.Context) -> None:
    """Run simulation campaigns (the options of `python -m forehand.sim`; see `--help`)."""
    from forehand.sim._cli import main as sim_main

    raise typer.Exit(sim_main(context.args, prog="forehand sim"))


@app.command(
    context_settings={
        "allow_extra_args": True,
        "ignore_unknown_options": True,
        "help_option_names": [],
    },
)
def demo(context: typer.Context) -> None:
    """Run the live demo cluster (the options of `python -m forehand.demo`; see `--help`)."""
    from forehand.demo import main as demo_main

    raise typer.Exit(demo_main(context.args))


_MANAGER_SET = typer.Option(
    [],
    "--manager-set",
    help="KEY=VALUE of the manager's configuration, as `forehand manager --set` (repeat it).",
)
_SERVER_SET = typer.Option(
    [],
    "--server-set",
    help="KEY=VALUE of every server's configuration, as `forehand server --set` (repeat it).",
)


@app.command()
def up(
    *,
    app_reference: str = typer.Option(
        ..., "--app", help="The application, module:attribute (e.g. examples.cart.app:app)."
    ),
    app_dir: str = typer.Option(".", help="Directory the application module is imported from."),
    servers: int = typer.Option(3, help="How many servers (s1, s2, ...)."),
    directory: str = typer.Option(
        ".forehand", "--dir", help="State: certificates, admin token, logs, up.json."
    ),
    port: int = typer.Option(7000, help="The manager's port on 127.0.0.1 (0: any free port)."),
    dashboard_port: int = typer.Option(
        7080, help="The admin API's and dashboard's port (0: any free port, -1: off)."
    ),
    transport: str = typer.Option("tls", help="Client-facing transport: tls or quic."),
    log_level: str = typer.Option("info", help="Level of the processes' logs."),
    manager_set: list[str] = _MANAGER_SET,
    server_set: list[str] = _SERVER_SET,
) -> None:
    """Run a development cluster on loopback (a manager and servers) until Ctrl-C."""
    from forehand._up import UpOptions, run_up

    with _config_errors("up"):
        options = UpOptions(
            app=app_reference,
            app_dir=Path(app_dir),
            servers=servers,
            directory=Path(directory),
            port=port,
            dashboard_port=dashboard_port,
            transport=transport,
            log_level=log_level,
            manager_settings=tuple(manager_set),
            server_settings=tuple(server_set),
        )
        status = run_up(options)
    raise typer.Exit(status)


docs_app = typer.Typer(
    name="docs", help="Keep the documentation in sync with the code.", no_args_is_help=True
)
app.add_typer(docs_app)

ARCHITECTURE_PATH = "docs/ARCHITECTURE.md"
"""The document whose state-machine diagrams `forehand docs diagrams` maintains."""


@docs_app.command("diagrams")
def docs_diagrams(
    check: bool = typer.Option(
        False, "--check", help="change nothing; exit 1 if a diagram is out of date or missing"
    ),
    path: str = typer.Option(ARCHITECTURE_PATH, "--path", help="the Markdown document to update"),
) -> None:
    """Regenerate the state-machine diagrams between the document's `generated` markers."""
    from pathlib import Path

    from forehand.core.diagrams import (
        MARKER_OPEN,
        missing_diagrams,
        render_document,
        stale_diagrams,
    )
    from forehand.errors import ConfigError

    document_path = Path(path)
    try:
        document = document_path.read_text(encoding="utf-8")
        stale = stale_diagrams(document)
        rendered = render_document(document)
    except (OSError, ConfigError) as error:
        typer.echo(f"forehand docs diagrams: {error}", err=True)
        raise typer.Exit(2) from error
    missing = missing_diagrams(document)
    for key in missing:
        marker = MARKER_OPEN.format(key=key)
        typer.echo(f"{path}: no block for diagram {key!r} (add {marker})", err=True)
    if check:
        for key in stale:
            typer.echo(f"{path}: diagram {key!r} is out of date", err=True)
        if stale:
            typer.echo("run `forehand docs diagrams` to regenerate", err=True)
        if stale or missing:
            raise typer.Exit(1)
        return
    if rendered != document:
        document_path.write_text(rendered, encoding="utf-8")
    typer.echo(f"{path}: {len(stale)} diagram(s) regenerated")
    if missing:
        raise typer.Exit(1)


@app.command("predict-eval")
def predict_eval(
    *,
    synthetic: bool = typer.Option(True, help="Evaluate on a seeded synthetic fleet."),
    servers: int = typer.Option(12, help="Servers in the synthetic fleet."),
    days: float = typer.Option(3.0, help="Days of synthetic telemetry."),
    seed: int = typer.Option(1, help="Root seed of the fleet and the predictor."),
    nab: str | None = typer.Option(None, help="A NAB-format directory (CSV files, windows JSON)."),
    horizon_s: float = typer.Option(21_600.0, help="H for the NAB data, in seconds."),
    lead_s: float = typer.Option(600.0, help="L for the NAB data, in seconds."),
    onset: str = typer.Option("middle", help="NAB onset: window 'middle' (its label) or 'start'."),
    nab_folds: str | None = typer.Option(
        None,
        "--nab-folds",
        help='NAB: a JSON file {"A": \\[names], "B": \\[names]} (file names without .csv) for '
        "the evaluation by two folds of series; default: the fixed folds of realAWSCloudwatch, "
        "else a hash of each file name.",
    ),
    sim: bool = typer.Option(False, help="Evaluate on a campaign of the per-message simulator."),
    sim_events: int = typer.Option(50, help="Simulator: test events per fault type to size for."),
    jobs: int = typer.Option(2, help="Simulator: runs in parallel (processes)."),
    quick: bool = typer.Option(False, help="Simulator: short runs, --sim-events episodes each."),
    cache: str | None = typer.Option(None, help="Simulator: keep (and reuse) campaigns here."),
    path_intermittency: bool = typer.Option(
        True, help="Fleets: the path intermittency features (FeatureConfig; on by default)."
    ),
) -> None:
    """Event-level evaluation of the predictors: recall at fixed false alarms, lead, calibration."""
    if nab_folds is not None and nab is None:
        typer.echo("forehand predict-eval: --nab-folds needs --nab DIR", err=True)
        raise typer.Exit(2)
    with _config_errors("predict-eval"):
        _predict_eval(
            synthetic=synthetic,
            servers=servers,
            days=days,
            seed=seed,
            nab=nab,
            horizon_s=horizon_s,
            lead_s=lead_s,
            onset=onset,
            nab_folds=nab_folds,
            sim=sim,
            sim_events=sim_events,
            jobs=jobs,
            quick=quick,
            cache=cache,
            path_intermittency=path_intermittency,
        )


@contextlib.contextmanager
def _config_errors(command: str) -> Iterator[None]:
    """A ConfigError inside is one line on stderr and exit status 2, not a traceback."""
    from forehand.errors import ConfigError

    try:
        yield
    except ConfigError as error:
        typer.echo(f"forehand {command}: {error}", err=True)
        raise typer.Exit(2) from error


def _predict_eval(
    *,
    synthetic: bool,
    servers: int,
    days: float,
    seed: int,
    nab: str | None,
    horizon_s: float,
    lead_s: float,
    onset: str,
    nab_folds: str | None,
    sim: bool,
    sim_events: int,
    jobs: int,
    quick: bool,
    cache: str | None,
    path_intermittency: bool,
) -> None:
    """The body of `predict-eval`, its options checked."""
    from pathlib import Path

    from rich.console import Console

    from forehand.predict_io import (
        nab_evaluation,
        print_fold_report,
        print_report,
        print_targets,
        synthetic_report,
    )

    console = Console() if Console().is_terminal else Console(width=160)
    synthetic_result = nab_result = simulator_result = fold_result = None
    if synthetic:
        console.print(f"SEED={seed} synthetic fleet: {servers} servers x {days:g} days")
        synthetic_result = synthetic_report(
            servers=servers,
            days=days,
            seed=seed,
            console=console,
            path_intermittency=path_intermittency,
        )
        print_report("Synthetic fleet", synthetic_result, console=console)
    if sim:
        from forehand.sim._predict_eval_io import simulator_evaluation

        console.print(f"SEED={seed} simulator campaign: {sim_events} test events per fault type")
        simulator_result = simulator_evaluation(
            events_per_kind=sim_events,
            seed=seed,
            jobs=jobs,
            quick=quick,
            console=console,
            cache=None if cache is None else Path(cache),
            path_intermittency=path_intermittency,
        )
    if nab is not None:
        evaluation = nab_evaluation(
            Path(nab),
            horizon_us=int(horizon_s * 1e6),
            lead_us=int(lead_s * 1e6),
            seed=seed,
            onset=onset,
            console=console,
            folds_path=None if nab_folds is None else Path(nab_folds),
        )
        nab_result, fold_result = evaluation.time_split, evaluation.folds
        print_report("NAB", nab_result, console=console, budget_name="alarms/day")
        if fold_result is None:
            console.print(f"NAB: no evaluation by folds of series: {evaluation.fold_rule}")
        else:
            print_fold_report("NAB", fold_result, console=console, rule=evaluation.fold_rule)
    print_targets(
        synthetic_result,
        nab_result,
        console=console,
        simulator=simulator_result,
        nab_folds=fold_result,
    )


from forehand._ops_commands import register as _register_ops  # noqa: E402
from forehand._runtime_commands import register as _register_runtime  # noqa: E402

_register_runtime(app)
_register_ops(app)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    # `python -m forehand.cli ...` runs the command too (it used to do nothing and exit 0).
    main()
