"""The console entry point starts, reports its version, and refuses bad options in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import typer
from rich.text import Text
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


def _commands(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every command under `command` (itself included), with its path."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, f"{path} {name}")


def test_no_help_text_loses_words_to_rich_markup() -> None:
    """Every help text (command, option, epilog) shows in full: a bracketed default such as
    `[tls]` is Rich markup to the help renderer, which dropped it unless escaped as `\\[`."""
    lost = []
    for path, command in _commands(typer.main.get_command(app), "forehand"):
        texts = [command.help, command.epilog, *(getattr(p, "help", None) for p in command.params)]
        for text in filter(None, texts):
            if Text.from_markup(text).plain != text.replace("\\[", "["):
                lost.append((path, text))
    assert lost == []


def test_process_help_shows_defaults_and_the_keys_without_a_flag() -> None:
    """`forehand server --help` shows the server's own listen default and the other defaults,
    and both process commands list the top-level keys settable only with --set or the file
    (`metrics_port`, `admin_http_port`, which the README's Operating section uses)."""
    help_texts = {}
    for command in ("server", "manager"):
        completed = subprocess.run(
            [sys.executable, "-c", "from forehand.cli import main; main()", command, "--help"],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "COLUMNS": "400"},
        )
        help_texts[command] = completed.stdout
    for default in ("[127.0.0.1:7100]", "[tls]", "[listen]", "[default]", "[console]"):
        assert default in help_texts["server"], default
    assert "[127.0.0.1:7000]" not in help_texts["server"].split("--advertise")[0]
    assert "Top-level keys without a flag: metrics_host, metrics_port." in help_texts["server"]
    for default in ("[127.0.0.1:7000]", "[sqlite]", "[manager.sqlite]", "[manager]"):
        assert default in help_texts["manager"], default
    assert "admin_http_port, admin_http_connections_max," in help_texts["manager"]
    assert "admin_token_file, audit_log_path." in help_texts["manager"]
