"""Every public package imports on its own, first, in a fresh interpreter: an import cycle
between packages shows only when the package at one end of it is the first one loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest

PACKAGES = (
    "forehand",
    "forehand.core",
    "forehand.wire",
    "forehand.placement",
    "forehand.predict",
    "forehand.stores",
    "forehand.runtime",
    "forehand.ops",
    "forehand.demo",
    "forehand.sim",
    "forehand.cli",
)


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_first_in_a_fresh_interpreter(package: str) -> None:
    """`import <package>` alone succeeds (the admin API's bounded HTTP protocol once imported
    the runtime at module level, a cycle when `forehand.ops` or `forehand.demo` loaded first)."""
    completed = subprocess.run(
        [sys.executable, "-c", f"import {package}"], capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stderr


def test_every_error_the_package_exports_is_a_forehand_error() -> None:
    """One `except forehand.ForehandError` catches whatever the library raises: the protocol
    and configuration errors and the SDK's (before, `LocalProtocolError` and `ConfigError` were
    not ForehandErrors, and `BackpressureError` was not exported)."""
    import forehand

    errors = [
        getattr(forehand, name)
        for name in forehand.__all__
        if isinstance(getattr(forehand, name), type)
        and issubclass(getattr(forehand, name), Exception)
    ]
    assert {error.__name__ for error in errors} >= {
        "BackpressureError",
        "ConfigError",
        "LocalProtocolError",
        "ResultDecodeError",
        "SessionOpenError",
    }
    for error in errors:
        assert issubclass(error, forehand.ForehandError), error
