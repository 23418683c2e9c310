"""The console entry point starts and reports its version."""

from __future__ import annotations

import subprocess
import sys

import forehand


def test_version_command_prints_package_version() -> None:
    """`forehand version` prints the same version as the package."""
    completed = subprocess.run(
        [sys.executable, "-c", "from forehand.cli import main; main()", "version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.strip() == forehand.__version__
