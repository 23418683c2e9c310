"""The console entry point starts, reports its version, and refuses bad options in one line."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

import forehand
from forehand.cli import app


def test_version_command_prints_package_version() -> None:
    """`forehand version` prints the same version as the package."""
    completed = subprocess.run(
        [sys.executable, "-c", "from forehand.cli import main; main()", "version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.strip() == forehand.__version__


def test_predict_eval_refuses_an_impossible_fleet_in_one_line() -> None:
    """`forehand predict-eval` with a fleet of no servers, or a negative duration, exits 2 with
    one line saying what is wrong (it was a ConfigError traceback)."""
    for arguments, expected in (
        (["--servers", "-3"], "a synthetic fleet needs servers and client groups"),
        (["--days", "-1"], "need 0 < tick_us < duration_us"),
    ):
        result = CliRunner().invoke(app, ["predict-eval", *arguments])
        assert result.exit_code == 2, result.exception
        assert result.stderr.splitlines() == [f"forehand predict-eval: {expected}"]
