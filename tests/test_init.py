"""`import forehand`: the package stays quiet in an application that configured no logging,
and its records still reach the handlers of one that did (as the CLI's processes do)."""

from __future__ import annotations

import subprocess
import sys

import pytest

WARN = (
    "import logging, forehand.runtime.client\n"
    "logging.getLogger('forehand.client').warning('session s1 was closed by manager')\n"
)
"""A warning of the client SDK, as it logs one when a session it resumes was closed."""


def _stderr(setup: str) -> str:
    completed = subprocess.run(
        [sys.executable, "-c", setup + WARN], capture_output=True, text=True, check=True
    )
    return completed.stderr


def test_a_warning_is_not_printed_when_the_application_configured_no_logging() -> None:
    """No handler configured: nothing on stderr (not Python's last-resort handler's line)."""
    assert _stderr("") == ""


@pytest.mark.parametrize(
    "setup",
    [
        "import logging; logging.basicConfig()\n",
        "from forehand.runtime.process import configure_logging; configure_logging('info')\n",
    ],
    ids=["basic-config", "the-cli-processes-logging"],
)
def test_a_warning_reaches_the_handlers_the_application_configured(setup: str) -> None:
    """With logging configured (by the application, or as `forehand manager` and `server` do),
    the warning is shown once."""
    assert _stderr(setup).count("session s1 was closed by manager") == 1


def test_dir_lists_the_public_names_before_their_first_use() -> None:
    """`dir(forehand)` (and so completion) lists every name of `__all__`, the lazily imported
    ones (`App`, `connect`, ...) included, in a fresh interpreter where none was used yet."""
    program = "import forehand, sys; print(sorted(set(forehand.__all__) - set(dir(forehand))))"
    completed = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert completed.stdout.strip() == "[]"
