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


def main() -> None:
    """Console entry point."""
    app()
