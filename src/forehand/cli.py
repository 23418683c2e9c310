"""The `forehand` command line; each subcommand lives with the layer it drives."""

from __future__ import annotations

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


@app.command("predict-eval")
def predict_eval(
    *,
    synthetic: bool = typer.Option(True, help="Evaluate on a seeded synthetic fleet."),
    servers: int = typer.Option(10, help="Servers in the synthetic fleet."),
    days: float = typer.Option(3.0, help="Days of synthetic telemetry."),
    seed: int = typer.Option(1, help="Root seed of the fleet and the predictor."),
    nab: str | None = typer.Option(None, help="A NAB-format directory (CSV files, windows JSON)."),
    horizon_s: float = typer.Option(21_600.0, help="H for the NAB data, in seconds."),
    lead_s: float = typer.Option(600.0, help="L for the NAB data, in seconds."),
    onset: str = typer.Option("middle", help="NAB onset: window 'middle' (its label) or 'start'."),
) -> None:
    """Event-level evaluation of the predictors: recall at fixed false alarms, lead, calibration."""
    from pathlib import Path

    from rich.console import Console

    from forehand.predict_io import nab_report, print_report, print_targets, synthetic_report

    console = Console()
    synthetic_result = nab_result = None
    if synthetic:
        console.print(f"SEED={seed} synthetic fleet: {servers} servers x {days:g} days")
        synthetic_result = synthetic_report(servers=servers, days=days, seed=seed, console=console)
        print_report("Synthetic fleet", synthetic_result, console=console)
    if nab is not None:
        nab_result = nab_report(
            Path(nab),
            horizon_us=int(horizon_s * 1e6),
            lead_us=int(lead_s * 1e6),
            seed=seed,
            onset=onset,
            console=console,
        )
        print_report("NAB", nab_result, console=console, budget_name="alarms/day")
    print_targets(synthetic_result, nab_result, console=console)


def main() -> None:
    """Console entry point."""
    app()
