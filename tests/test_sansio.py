"""The sans-IO core packages keep their import bans (STYLE.md rule 1)."""

from __future__ import annotations

import ast
import pathlib
import tomllib

import pytest

PACKAGE_ROOT = pathlib.Path(__file__).resolve().parents[1] / "src" / "forehand"
CORE_PACKAGES = ("wire", "placement", "core", "predict")
BANNED_MODULES = ("asyncio", "socket", "ssl", "time", "threading", "sqlite3", "secrets")


def _existing_core_packages() -> list[pathlib.Path]:
    return [PACKAGE_ROOT / name for name in CORE_PACKAGES if (PACKAGE_ROOT / name).is_dir()]


@pytest.mark.parametrize("package", _existing_core_packages(), ids=lambda path: path.name)
def test_core_package_has_banned_api_config(package: pathlib.Path) -> None:
    """Each core package carries a ruff.toml that bans every I/O module."""
    config = tomllib.loads((package / "ruff.toml").read_text())
    banned = config["lint"]["flake8-tidy-imports"]["banned-api"]
    for module in BANNED_MODULES:
        assert module in banned, f"{package.name}/ruff.toml does not ban {module}"
    assert "os.urandom" in banned
    assert "random.random" in banned


@pytest.mark.parametrize("package", _existing_core_packages(), ids=lambda path: path.name)
def test_core_package_imports_no_io_module(package: pathlib.Path) -> None:
    """No module of a core package imports an I/O module, whatever the linter config says."""
    for source in sorted(package.rglob("*.py")):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module.split(".")[0]]
            else:
                continue
            for name in names:
                assert name not in BANNED_MODULES, f"{source} imports {name}"
