"""Tests of the state-machine diagrams: generated from the tables, in sync with the architecture."""

from __future__ import annotations

import importlib
import pkgutil
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

import forehand.core
from forehand.cli import app
from forehand.core._part import PartState, PartTrigger
from forehand.core._pool import ConnectionState
from forehand.core.diagrams import (
    DIAGRAMS,
    MARKER_CLOSE,
    MARKER_OPEN,
    diagram,
    mermaid_state_diagram,
    missing_diagrams,
    render_document,
    stale_diagrams,
)
from forehand.errors import ConfigError

ARCHITECTURE = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"


def block_of(document: str, key: str) -> str:
    """The text between a diagram's markers in `document`."""
    opening = MARKER_OPEN.format(key=key) + "\n"
    start = document.index(opening) + len(opening)
    return document[start : document.index(MARKER_CLOSE, start)]


def test_architecture_document_is_in_sync_with_the_tables() -> None:
    """Every registered diagram has a block in ARCHITECTURE.md equal to its table's rendering."""
    document = ARCHITECTURE.read_text(encoding="utf-8")
    assert missing_diagrams(document) == []
    assert stale_diagrams(document) == [], "run `forehand docs diagrams` to regenerate"
    assert render_document(document) == document


@pytest.mark.parametrize("entry", DIAGRAMS, ids=lambda entry: entry.key)
def test_each_diagram_names_every_state_and_transition(
    entry: forehand.core.diagrams.Diagram,
) -> None:
    """Each documented diagram declares every state of its enum and draws every table row."""
    text = block_of(ARCHITECTURE.read_text(encoding="utf-8"), entry.key)
    lines = text.splitlines()
    for state in entry.states:
        assert f"    {state.name}" in lines, state
    for source, trigger, target in entry.table():
        assert f"    {source.name} --> {target.name}: {trigger.name}" in lines
    arrows = [line for line in lines if "-->" in line and "[*]" not in line]
    assert len(arrows) == len(entry.table())
    for state in entry.initial:
        assert f"    [*] --> {state.name}" in lines


def test_every_state_machine_table_of_the_cores_is_registered() -> None:
    """A module of forehand.core that defines a transition table has its diagram registered."""
    registered = {entry.table for entry in DIAGRAMS}
    found: dict[str, Callable[..., object]] = {}
    for module_info in pkgutil.iter_modules(forehand.core.__path__):
        module = importlib.import_module(f"forehand.core.{module_info.name}")
        for name, value in vars(module).items():
            defined_here = getattr(value, "__module__", None) == module.__name__
            if defined_here and (name == "transition_table" or name.endswith("_transition_table")):
                found[f"{module.__name__}.{name}"] = value
    assert len({id(table) for table in found.values()}) == len(DIAGRAMS)
    assert {name for name, table in found.items() if table not in registered} == set()


def test_rendering_does_not_depend_on_row_order() -> None:
    """Shuffled rows draw the same text: states, then transitions, in enum order."""
    entry = DIAGRAMS[0]
    rows = list(entry.table())
    expected = diagram(entry)
    rng = random.Random(7)
    for _ in range(5):
        rng.shuffle(rows)
        shuffled = mermaid_state_diagram(
            entry.title, rows, states=entry.states, initial=entry.initial
        )
        assert shuffled == expected


def test_states_without_a_way_out_end_the_diagram() -> None:
    """DROPPED has no outgoing row, so it ends; a state with a way out does not."""
    text = mermaid_state_diagram(
        "t",
        [
            (PartState.ABSENT, PartTrigger.PLACED_AS_PRIMARY, PartState.PRIMARY),
            (PartState.PRIMARY, PartTrigger.REMOVED, PartState.DROPPED),
        ],
    )
    assert text.startswith("```mermaid\n---\ntitle: t\n---\nstateDiagram-v2\n")
    assert text.endswith("```\n")
    lines = text.splitlines()
    assert "    DROPPED --> [*]" in lines
    assert "    PRIMARY --> [*]" not in lines
    # States no row mentions are still declared (and have no way out).
    assert "    BACKUP" in lines
    assert "    BACKUP --> [*]" in lines


def test_rows_of_two_enums_are_refused() -> None:
    """A row whose states belong to another enum than the diagram's is a ConfigError."""
    with pytest.raises(ConfigError):
        mermaid_state_diagram(
            "t",
            [(PartState.ABSENT, PartTrigger.PLACED_AS_PRIMARY, PartState.PRIMARY)],
            states=ConnectionState,
        )
    with pytest.raises(ConfigError):
        mermaid_state_diagram("t", [])


def test_an_edited_block_is_stale_and_rendering_restores_it() -> None:
    """Changing a generated block is detected, and rendering rewrites only the blocks."""
    document = ARCHITECTURE.read_text(encoding="utf-8")
    key = DIAGRAMS[0].key
    block = block_of(document, key)
    edited = document.replace(block, block.replace("REMOVED", "DELETED", 1), 1)
    assert edited != document
    assert stale_diagrams(edited) == [key]
    assert render_document(edited) == document


def test_an_unknown_marker_is_refused() -> None:
    """A marker naming no registered state machine is a ConfigError, never silently kept."""
    document = "intro\n<!-- generated:no-such-machine -->\n<!-- /generated -->\n"
    assert stale_diagrams(document) == ["no-such-machine"]
    with pytest.raises(ConfigError):
        render_document(document)
    assert missing_diagrams(document) == [entry.key for entry in DIAGRAMS]


def test_cli_checks_and_rewrites_the_diagrams(tmp_path: Path) -> None:
    """`docs diagrams --check` fails on a stale block and changes nothing; without it, fixes it."""
    document = ARCHITECTURE.read_text(encoding="utf-8")
    key = DIAGRAMS[-1].key
    block = block_of(document, key)
    stale = document.replace(block, "```mermaid\nstale\n```\n", 1)
    target = tmp_path / "ARCHITECTURE.md"
    target.write_text(stale, encoding="utf-8")
    runner = CliRunner()
    checked = runner.invoke(app, ["docs", "diagrams", "--check", "--path", str(target)])
    assert checked.exit_code == 1
    assert key in checked.output
    assert target.read_text(encoding="utf-8") == stale
    rewritten = runner.invoke(app, ["docs", "diagrams", "--path", str(target)])
    assert rewritten.exit_code == 0, rewritten.output
    assert target.read_text(encoding="utf-8") == document
    again = runner.invoke(app, ["docs", "diagrams", "--check", "--path", str(target)])
    assert again.exit_code == 0, again.output


def test_cli_reports_a_missing_document(tmp_path: Path) -> None:
    """A path that cannot be read exits with 2 and a message, not a traceback."""
    result = CliRunner().invoke(
        app, ["docs", "diagrams", "--check", "--path", str(tmp_path / "absent.md")]
    )
    assert result.exit_code == 2
    assert "absent.md" in result.output
