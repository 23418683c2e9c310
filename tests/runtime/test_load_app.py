"""`load_app` (what `forehand server --app` and `run_server` import): every way an app reference
can be wrong is a one-line ConfigError that says what to fix, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from forehand.app import App
from forehand.cli import app as cli
from forehand.errors import ConfigError
from forehand.runtime import ClusterCertificates
from forehand.runtime.process import load_app

MODULES = {
    "load_app_raises": "import forehand\n\nraise RuntimeError('no database')\n",
    "load_app_syntax": "def broken(:\n",
    "load_app_good": "import forehand\n\nchat = forehand.App()\nchat.part('room')\nother = 1\n",
    "load_app_class": "import forehand\n\napp = forehand.App\n",
    "load_app_plain": "value = 3\n",
}


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory of app modules; the import path and module table are restored after."""
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in MODULES:
        sys.modules.pop(name, None)


def test_a_good_reference_loads_the_app(app_dir: Path) -> None:
    """`module:attribute` naming an App instance returns that instance."""
    loaded = load_app("load_app_good:chat", app_dir)
    assert isinstance(loaded, App) and loaded.parts == ("room",)


def test_a_module_that_raises_on_import_is_one_config_error(app_dir: Path) -> None:
    """Any exception while importing the module (not only ImportError) becomes a ConfigError
    naming the module, the exception and where it was raised; a SyntaxError names its line."""
    with pytest.raises(ConfigError) as raised:
        load_app("load_app_raises:app", app_dir)
    assert str(raised.value) == (
        "importing the app module 'load_app_raises' raised RuntimeError: no database at "
        f"{app_dir / 'load_app_raises.py'}:3"
    )
    with pytest.raises(ConfigError) as raised:
        load_app("load_app_syntax:app", app_dir)
    assert "raised SyntaxError" in str(raised.value)
    assert str(raised.value).endswith(f"at {app_dir / 'load_app_syntax.py'}:1")


def test_a_missing_attribute_is_named_with_the_apps_the_module_has(app_dir: Path) -> None:
    """An attribute the module lacks is named as missing (not "got NoneType"), with the App
    instances the module does define, or the fact that it defines none."""
    with pytest.raises(ConfigError) as raised:
        load_app("load_app_good:app", app_dir)
    assert str(raised.value) == (
        "the app module 'load_app_good' has no attribute 'app' (its App instances: chat)"
    )
    with pytest.raises(ConfigError) as raised:
        load_app("load_app_plain:app", app_dir)
    assert str(raised.value) == (
        "the app module 'load_app_plain' has no attribute 'app' (it defines no forehand.App)"
    )


def test_an_app_dir_that_is_no_directory_is_named(app_dir: Path) -> None:
    """A missing `app_dir`, or a file given as one, is named as such, not as a module that
    cannot be found in it."""
    missing = app_dir / "nonexistent"
    with pytest.raises(ConfigError) as raised:
        load_app("load_app_good:chat", missing)
    assert str(raised.value) == (
        f"app_dir {missing} does not exist (the directory the app module is in)"
    )
    with pytest.raises(ConfigError, match="is not a directory"):
        load_app("load_app_good:chat", app_dir / "load_app_good.py")


def test_an_attribute_that_is_not_an_app_instance_is_refused(app_dir: Path) -> None:
    """The class `forehand.App` itself is refused with a hint to name an instance; any other
    object is refused with its type."""
    with pytest.raises(ConfigError, match=r"is the class forehand\.App: name an instance"):
        load_app("load_app_class:app", app_dir)
    with pytest.raises(
        ConfigError, match=r"load_app_plain:value is not a forehand\.App \(got int\)"
    ):
        load_app("load_app_plain:value", app_dir)


def test_a_reference_without_module_or_attribute_is_refused(
    app_dir: Path, certs: ClusterCertificates
) -> None:
    """An empty module or attribute name (`mod:`, `:app`) is refused by load_app and by
    `forehand server` before anything starts, as a reference without a colon is."""
    for reference in ("load_app_good:", ":chat", "load_app_good"):
        with pytest.raises(ConfigError, match="app must be module:attribute"):
            load_app(reference, app_dir)
        result = CliRunner().invoke(
            cli,
            [
                *("server", "--certs-dir", str(certs.directory), "--server-id", "s1"),
                *("--listen", "127.0.0.1:0", "--app-dir", str(app_dir), "--app", reference),
            ],
        )
        assert result.exit_code == 2, result.exception
        assert result.stderr.splitlines() == [
            f"forehand server: top level: app must be module:attribute, got {reference!r}"
        ]
