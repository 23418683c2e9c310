"""State-machine diagrams generated from the cores' transition tables (STYLE.md rule 5).

Every state machine of `forehand.core` keeps its transitions in one table and exposes it as rows of
`(from, trigger, to)`. This module turns such a table into a Mermaid `stateDiagram-v2` block and
keeps the blocks of a Markdown document in sync with the tables: a block sits between the marker
comments `<!-- generated:KEY -->` and `<!-- /generated -->`, where KEY names a `Diagram` of
`DIAGRAMS`. Everything here is a pure function of its arguments; reading and writing the document
is the caller's business (`forehand docs diagrams`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from forehand.core import _manager_failover, _membership, _orchestrator
from forehand.core._client_session import RouteState, route_transition_table
from forehand.core._handoff import HandoffPhase, handoff_transition_table
from forehand.core._manager_failover import FailoverPhase
from forehand.core._membership import MemberState
from forehand.core._orchestrator import HandoffPhase as ManagerHandoffPhase
from forehand.core._part import PartState, part_transition_table
from forehand.core._pool import ConnectionState, connection_transition_table
from forehand.errors import ConfigError

__all__ = [
    "DIAGRAMS",
    "MARKER_CLOSE",
    "MARKER_OPEN",
    "Diagram",
    "Row",
    "diagram",
    "mermaid_state_diagram",
    "missing_diagrams",
    "render_document",
    "stale_diagrams",
]

Row = tuple[enum.Enum, enum.Enum, enum.Enum]
"""One transition: (state, trigger, next state)."""

MARKER_OPEN = "<!-- generated:{key} -->"
"""The comment that opens a generated block; `{key}` is the diagram's key."""
MARKER_CLOSE = "<!-- /generated -->"
"""The comment that closes a generated block."""
_BLOCK = re.compile(
    r"(?P<open><!-- generated:(?P<key>[a-z0-9-]+) -->\n)"
    r"(?P<body>.*?)"
    r"(?P<close><!-- /generated -->)",
    re.DOTALL,
)
_INDENT = "    "


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagram:
    """One state machine of the cores, as the documentation shows it."""

    key: str
    """The name in the document's marker comments (`<!-- generated:KEY -->`)."""
    title: str
    """The diagram's title."""
    table: Callable[[], Sequence[Row]]
    """Returns the machine's transition table as (from, trigger, to) rows."""
    states: type[enum.Enum]
    """The machine's state enum: every member appears in the diagram, reachable or not."""
    initial: tuple[enum.Enum, ...]
    """States a new instance of the machine starts in (drawn from the start marker)."""


def _ordinal(member: enum.Enum) -> int:
    """The position of `member` in its enum's definition order."""
    return list(type(member)).index(member)


def mermaid_state_diagram(
    title: str,
    table: Iterable[Row],
    *,
    states: type[enum.Enum] | None = None,
    initial: Iterable[enum.Enum] = (),
) -> str:
    """A fenced Mermaid `stateDiagram-v2` block drawing `table`.

    States are declared in enum order, then the start arrows, then the transitions sorted by
    (from, to, trigger) in enum order, then an end arrow from every state without a way out, so
    the same table always gives the same text. `states` (by default the enum of the first row)
    makes states that no row mentions appear too.
    """
    rows = sorted(table, key=lambda row: (_ordinal(row[0]), _ordinal(row[2]), _ordinal(row[1])))
    if states is None:
        if not rows:
            raise ConfigError(f"diagram {title!r}: an empty table needs its states enum")
        states = type(rows[0][0])
    members = list(states)
    for source, _, target in rows:
        if source not in members or target not in members:
            raise ConfigError(f"diagram {title!r}: {source!r} or {target!r} is not a {states}")
    leaving = {row[0] for row in rows if row[2] is not row[0]}
    lines = ["```mermaid", "---", f"title: {title}", "---", "stateDiagram-v2"]
    lines.extend(f"{_INDENT}{member.name}" for member in members)
    lines.extend(f"{_INDENT}[*] --> {member.name}" for member in initial)
    lines.extend(
        f"{_INDENT}{source.name} --> {target.name}: {trigger.name}"
        for source, trigger, target in rows
    )
    lines.extend(f"{_INDENT}{member.name} --> [*]" for member in members if member not in leaving)
    lines.append("```")
    return "\n".join(lines) + "\n"


DIAGRAMS: tuple[Diagram, ...] = (
    Diagram(
        key="part-states",
        title="A part on one server (forehand.core._part)",
        table=part_transition_table,
        states=PartState,
        initial=(PartState.ABSENT,),
    ),
    Diagram(
        key="server-handoff",
        title="A handoff on a server, source and target (forehand.core._handoff)",
        table=handoff_transition_table,
        states=HandoffPhase,
        initial=(HandoffPhase.SHIPPING, HandoffPhase.RECEIVING),
    ),
    Diagram(
        key="manager-handoff",
        title="A handoff on the manager (forehand.core._orchestrator)",
        table=_orchestrator.transition_table,
        states=ManagerHandoffPhase,
        initial=(ManagerHandoffPhase.COMMITTING,),
    ),
    Diagram(
        key="member-states",
        title="A server in the manager's membership (forehand.core._membership)",
        table=_membership.transition_table,
        states=MemberState,
        initial=(MemberState.JOINING,),
    ),
    Diagram(
        key="failover-jobs",
        title="A failover job on the manager (forehand.core._manager_failover)",
        table=_manager_failover.transition_table,
        states=FailoverPhase,
        initial=(FailoverPhase.PENDING,),
    ),
    Diagram(
        key="route-states",
        title="A part's route on the client (forehand.core._client_session)",
        table=route_transition_table,
        states=RouteState,
        initial=(RouteState.ACTIVE,),
    ),
    Diagram(
        key="connection-states",
        title="A pooled client connection (forehand.core._pool)",
        table=connection_transition_table,
        states=ConnectionState,
        initial=(ConnectionState.CLOSED,),
    ),
)
"""Every state machine of the cores, in the order the architecture document presents them."""

_BY_KEY = {entry.key: entry for entry in DIAGRAMS}


def diagram(entry: Diagram) -> str:
    """The Mermaid block of one registered state machine, from its current table."""
    return mermaid_state_diagram(
        entry.title, entry.table(), states=entry.states, initial=entry.initial
    )


def render_document(document: str) -> str:
    """`document` with every generated block rewritten from the current tables.

    Raises `ConfigError` for a marker that names no registered diagram.
    """

    def replace(match: re.Match[str]) -> str:
        entry = _BY_KEY.get(match["key"])
        if entry is None:
            raise ConfigError(f"no state machine is registered as {match['key']!r}")
        return match["open"] + diagram(entry) + match["close"]

    return _BLOCK.sub(replace, document)


def stale_diagrams(document: str) -> list[str]:
    """Keys of the generated blocks whose text differs from what the tables give now."""
    stale: list[str] = []
    for match in _BLOCK.finditer(document):
        entry = _BY_KEY.get(match["key"])
        if entry is None or match["body"] != diagram(entry):
            stale.append(match["key"])
    return stale


def missing_diagrams(document: str) -> list[str]:
    """Keys of registered diagrams that have no generated block in `document`."""
    present = {match["key"] for match in _BLOCK.finditer(document)}
    return [entry.key for entry in DIAGRAMS if entry.key not in present]
