"""The demo's live view: servers, load, risk input, parts, requests/s, handoffs, map version.

On a terminal it is a `rich.live.Live` table redrawn a few times a second, with the last events
under it. Anywhere else (a pipe, a test, CI) the same events are printed as lines, with a status
line every few seconds, so a log of the run reads like the screen did.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["ProcessCpu", "ServerRow", "Snapshot", "View"]

EVENTS_SHOWN_MAX = 8
"""Events listed under the live table."""
STATUS_INTERVAL_S = 5.0
"""Without a terminal, one status line this often."""
REFRESH_PER_SECOND = 4
"""Redraws of the live table per second."""


class ProcessCpu:
    """CPU utilization of a process from /proc, in the unit servers report (1.0 = one core)."""

    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._last = self._read()

    def _read(self) -> tuple[float, float] | None:
        try:
            with open(f"/proc/{self._pid}/stat", encoding="ascii") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            return None
        # Fields 14 and 15 of stat(5) (utime, stime), counted after the command name.
        ticks = int(fields[11]) + int(fields[12])
        return time.monotonic(), ticks / self._ticks_per_second

    def sample(self) -> float | None:
        """Utilization since the previous sample; None when the process is gone."""
        current = self._read()
        previous, self._last = self._last, current
        if current is None or previous is None or current[0] <= previous[0]:
            return None
        return (current[1] - previous[1]) / (current[0] - previous[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerRow:
    """One server's line."""

    server_id: str
    """Its id."""
    state: str
    """Membership and map state as the manager reports them, or `killed`."""
    cpu: float | None
    """CPU utilization (1.0 = one core), the risk input's signal."""
    flagged: bool
    """Parts left it for a risk reason in the last few seconds."""
    primaries: int
    """Parts it is primary of, as the clients know."""
    requests_per_second: float
    """Calls answered by it over the last second."""
    probe_ms: float | None
    """Its slowest probe round trip over the last second."""
    breached: bool
    """Its SLO has been breached."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What the view shows at one instant."""

    elapsed_s: float
    """Seconds since the load started."""
    phase: str
    """What the demo is doing."""
    sessions: int
    """Sessions open."""
    requests_per_second: float
    """Calls per second, all servers."""
    requests: int
    """Calls so far."""
    failed: int
    """Failed calls so far."""
    handoffs: int
    """Completed handoffs so far (per session)."""
    relocations: int
    """Parts relocated after a lost server so far."""
    map_version: int
    """The manager's shard-map version."""
    overload_latency_ms: float
    """The risk input's threshold on a server's event-loop lag p99."""
    slo_ms: float
    """The probes' SLO."""
    servers: tuple[ServerRow, ...]
    """One row per server."""


class View:
    """Live table on a terminal, event lines elsewhere; use as a context manager."""

    def __init__(self, console: Console, *, live: bool | None = None) -> None:
        self._console = console
        self._live_wanted = console.is_terminal if live is None else live
        self._live: Live | None = None
        self._events: deque[str] = deque(maxlen=EVENTS_SHOWN_MAX)
        self._snapshot: Snapshot | None = None
        self._last_status_s = 0.0

    def __enter__(self) -> View:
        if self._live_wanted:
            self._live = Live(
                self._render(),
                console=self._console,
                refresh_per_second=REFRESH_PER_SECOND,
                transient=False,
            )
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)
            self._live.stop()
            self._live = None

    def event(self, elapsed_s: float, text: str) -> None:
        """Record one thing that happened."""
        line = f"{elapsed_s:6.1f} s  {text}"
        self._events.append(line)
        if self._live is None:
            self._console.print(line, highlight=False)
        else:
            self._live.update(self._render())

    def update(self, snapshot: Snapshot) -> None:
        """Show a new snapshot."""
        self._snapshot = snapshot
        if self._live is not None:
            self._live.update(self._render())
            return
        if snapshot.elapsed_s - self._last_status_s >= STATUS_INTERVAL_S:
            self._last_status_s = snapshot.elapsed_s
            self._console.print(_status_line(snapshot), highlight=False)

    def _render(self) -> Group:
        snapshot = self._snapshot
        if snapshot is None:
            return Group(Text("starting..."))
        return Group(
            Text(_status_line(snapshot)), _server_table(snapshot), Text("\n".join(self._events))
        )


def _status_line(snapshot: Snapshot) -> str:
    return (
        f"{snapshot.elapsed_s:6.1f} s  [{snapshot.phase}]  sessions {snapshot.sessions}  "
        f"{snapshot.requests_per_second:.0f} req/s  requests {snapshot.requests}  "
        f"failed {snapshot.failed}  handoffs {snapshot.handoffs}  "
        f"relocated {snapshot.relocations}  map v{snapshot.map_version}  "
        + "  ".join(
            f"{row.server_id}:{row.primaries}p/"
            f"{'-' if row.probe_ms is None else f'{row.probe_ms:.0f}'}ms"
            for row in snapshot.servers
        )
    )


def _server_table(snapshot: Snapshot) -> Table:
    table = Table(
        caption=f"risk input: a server's event-loop lag p99 over "
        f"{snapshot.overload_latency_ms:.0f} ms moves its parts away; SLO: answers within "
        f"{snapshot.slo_ms:.0f} ms (probe round trip)"
    )
    for column in ("server", "state", "cpu", "risk", "primary parts", "req/s", "probe ms"):
        table.add_column(column, justify="left" if column in ("server", "state") else "right")
    for row in snapshot.servers:
        slow = row.probe_ms is not None and row.probe_ms > snapshot.overload_latency_ms
        cpu = "-" if row.cpu is None else f"{row.cpu:.2f}"
        risk = "FLAGGED" if row.flagged else ("rising" if slow else "ok")
        probe = "-" if row.probe_ms is None else f"{row.probe_ms:.0f}"
        table.add_row(
            row.server_id,
            row.state,
            cpu,
            Text(risk, style="bold red" if row.flagged else ("yellow" if slow else "green")),
            str(row.primaries),
            f"{row.requests_per_second:.0f}",
            Text(probe + (" BREACH" if row.breached else ""), style="red" if row.breached else ""),
        )
    return table
