"""The operator's subcommands of `forehand`, over the manager's admin HTTP API.

`forehand status`, `forehand sessions`, `forehand history` read; `forehand drain SERVER` (with a
progress bar of the parts moved until the drain is done), `forehand undrain SERVER`,
`forehand handoff SESSION --to SERVER` and `forehand rebalance` act, and need the admin token
(`--token` or $FOREHAND_ADMIN_TOKEN). `--url` (or $FOREHAND_ADMIN_URL) names the API.
`forehand.cli` registers them with `register(app)`; heavy imports happen inside the commands. A
refused or failed call prints the API's error and exits with code 1.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import typer

__all__ = ["register"]

DEFAULT_URL = "http://127.0.0.1:7080"
"""Where the commands look for the admin API without --url or $FOREHAND_ADMIN_URL."""
FAILURE_EXIT = 1
"""Exit status of a command the API refused or could not be reached for."""
DRAIN_POLL_INTERVAL_S = 0.25
"""How often `forehand drain` asks for the drain's progress."""
WAITING_EXIT = 3
"""Exit status of `forehand drain` when everything left on the server waits for another server
to take it: it must not be stopped yet (its parts would be left without a replica)."""
WAITING_POLLS = 8
"""Polls in a row (2 s) that must find only waiting roles left before `forehand drain` says so."""
UNREACHABLE_HINT = (
    " (the manager serves the API only with admin_http_port set, e.g. `forehand manager"
    " --set admin_http_port=7080`; --url or $FOREHAND_ADMIN_URL names another address)"
)
"""Said when nothing listens where the API should be: the API is off by default."""
PIPED_WIDTH_MIN = 200
"""Columns the tables get at least when the output is not a terminal (a pipe, a file), where
Rich would assume 80 and cut every column to a few letters."""

_URL = typer.Option(DEFAULT_URL, "--url", envvar="FOREHAND_ADMIN_URL", help="The admin API.")
_TOKEN = typer.Option(
    None, "--token", envvar="FOREHAND_ADMIN_TOKEN", help="The admin token (mutations)."
)
_TIMEOUT = typer.Option(10.0, "--timeout-s", min=0.001, help="Timeout of one API call, seconds.")


def _call(
    url: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    timeout_s: float,
    **options: Any,
) -> Any:
    """One API call; its JSON answer, or exit 1 with the API's error."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.request(
            method, url.rstrip("/") + path, headers=headers, timeout=timeout_s, **options
        )
    except httpx.HTTPError as error:
        hint = UNREACHABLE_HINT if isinstance(error, httpx.ConnectError) else ""
        typer.echo(f"forehand: cannot reach the admin API at {url}: {error}{hint}", err=True)
        raise typer.Exit(FAILURE_EXIT) from error
    if response.status_code >= 400:
        try:
            body = response.json()
            message = f"{body['error']}: {body['detail']}"
        except (ValueError, KeyError, TypeError):
            message = response.text.strip()[:200]
        hint = " (pass --token or set FOREHAND_ADMIN_TOKEN)" if response.status_code == 401 else ""
        typer.echo(f"forehand: {response.status_code} {message}{hint}", err=True)
        raise typer.Exit(FAILURE_EXIT)
    try:
        return response.json()
    except ValueError as error:
        kind = response.headers.get("content-type", "no content type")
        typer.echo(
            f"forehand: {url} answered {path} with {kind}, not JSON: is it the admin API?",
            err=True,
        )
        raise typer.Exit(FAILURE_EXIT) from error


def _segment(text: str) -> str:
    """`text` as one path segment: a `/` or `?` in an id cannot reach another endpoint."""
    from urllib.parse import quote

    return quote(text, safe="")


def _console() -> Any:
    from rich.console import Console

    console = Console()
    if console.is_terminal:
        return console
    return Console(width=max(console.width, PIPED_WIDTH_MIN))


def status(*, url: str = _URL, timeout_s: float = _TIMEOUT) -> None:
    """The cluster: every server's state, load, risk and parts, and the map version."""
    from rich.table import Table

    answer = _call(url, "GET", "/api/status", timeout_s=timeout_s)
    table = Table(
        title=f"map version {answer['map_version']}, {answer['override_count']} override(s)"
    )
    for column in ("server", "state", "map", "address"):
        table.add_column(column)
    for column in ("CPU", "req/s", "p99 ms", "lag ms", "risk", "primary", "replica", "sessions"):
        table.add_column(column, justify="right")
    for server in answer["servers"]:
        table.add_row(*status_row(server))
    _console().print(table)
    for line in refused_lines(answer):
        typer.echo(line)


REFUSED_RECENT_MS = 60_000
"""`forehand status` lists the cluster peers the manager refused this recently."""


def refused_lines(answer: dict[str, Any]) -> list[str]:
    """The refused cluster peers of a status answer, the recent ones: a server the manager keeps
    refusing (it redials every half second) is in no table otherwise."""
    now_ms = answer.get("now_ms", 0)
    lines = []
    for refused in answer.get("refused", ()):
        age_s = (now_ms - refused["last_at_ms"]) / 1000
        if age_s * 1000 > REFUSED_RECENT_MS:
            continue
        lines.append(
            f"refused {refused['peer']} ({refused['error']}, {refused['count']} time(s), last"
            f" {age_s:.1f} s ago): {refused['reason']}"
        )
    return lines


def status_row(server: dict[str, Any]) -> list[str]:
    """One server's row of `forehand status`. A dead server's load and risk are its last
    report's, not what it does now: shown as "-"."""
    live = [
        f"{server['cpu_utilization'] * 100:.0f}%",
        f"{server['requests_per_second']:.0f}",
        f"{server['latency_us_p99'] / 1000:.1f}",
        f"{server['loop_lag_us_p99'] / 1000:.1f}",
        f"{server['risk']:.2f}",
    ]
    if "dead" in (server["member_state"], server["map_state"]):
        live = ["-"] * len(live)
    return [
        server["server_id"],
        server["member_state"],
        server["map_state"] or "-",
        server["address"],
        *live,
        str(server["primary_parts"]),
        str(server["replica_parts"]),
        str(server["sessions"]),
    ]


def sessions(
    *,
    server: str | None = typer.Option(
        None, help="Only sessions with a part on this server, as primary or replica."
    ),
    limit: int = typer.Option(100, min=1, help="Most sessions to list."),
    url: str = _URL,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Sessions and where each of their parts lives."""
    from rich.table import Table

    # One more than asked: whether the listing stops short of every session.
    params: dict[str, Any] = {"limit": limit + 1}
    if server is not None:
        params["server"] = server
    answer = _call(url, "GET", "/api/sessions", params=params, timeout_s=timeout_s)
    title = f"{len(answer)} session(s)"
    if len(answer) > limit:
        answer = answer[:limit]
        title = f"the first {limit} session(s); more exist (--limit shows more)"
    table = Table(title=title)
    for column in ("session", "part", "primary", "replicas", "override"):
        table.add_column(column)
    for session in answer:
        for part in session["parts"]:
            table.add_row(
                session["session_id"],
                part["part"],
                part["primary"],
                ", ".join(part["replicas"]),
                "yes" if part["overridden"] else "",
            )
    _console().print(table)


def history(
    *,
    kind: str | None = typer.Option(None, help="handoff, failover, move or drain."),
    server: str | None = typer.Option(None, help="Only records with this source or target."),
    reason: str | None = typer.Option(None, help="Only this reason (rebalance, overload, ...)."),
    outcome: str | None = typer.Option(None, help="Only this outcome (completed, ...)."),
    limit: int = typer.Option(50, min=1, help="Most records to list (the newest)."),
    url: str = _URL,
    timeout_s: float = _TIMEOUT,
) -> None:
    """The handoff audit log: handoffs, failovers, dropped moves and drains, oldest first."""
    from rich.table import Table

    filters = {"kind": kind, "server": server, "reason": reason, "outcome": outcome}
    params: dict[str, Any] = {key: value for key, value in filters.items() if value is not None}
    params["limit"] = limit
    answer = _call(url, "GET", "/api/history", params=params, timeout_s=timeout_s)
    table = Table(title=f"{len(answer)} record(s)")
    for column in ("#", "ended", "kind", "source", "target", "reason", "outcome", "parts", "ms"):
        table.add_column(column)
    table.add_column("risk / detail")
    for record in answer:
        risk = record["risk"]
        note = record["detail"]
        if risk is not None:
            value = "" if risk["risk"] is None else f"risk {risk['risk']:.2f} "
            note = f"{value}{risk['detail']}; {note}"
        table.add_row(
            str(record["sequence"]),
            time.strftime("%H:%M:%S", time.localtime(record["ended_us"] / 1e6)),
            record["kind"],
            record["source"],
            record["target"] or "-",
            record["reason"],
            record["outcome"],
            str(len(record["parts"])),
            f"{record['duration_ms']:.0f}",
            note,
        )
    _console().print(table)


def drain(
    server: str = typer.Argument(..., help="The server to drain."),
    *,
    wait: bool = typer.Option(True, help="Show the progress until the drain is done."),
    wait_timeout_s: float = typer.Option(600.0, help="Give up waiting after this long."),
    url: str = _URL,
    token: str | None = _TOKEN,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Move every part off a server (planned handoffs), showing parts moved / total.

    Exits 0 once the server holds nothing and its last handoff ended, 1 on an error or after
    --wait-timeout-s, and 3 when what is left waits for another server to take it (a fleet of
    two, say): stopping the server then would leave those parts without a replica."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    path = f"/api/servers/{_segment(server)}/drain"
    progress_now = _call(url, "POST", path, token=token, timeout_s=timeout_s)
    if not wait:
        typer.echo(f"draining {server}")
        return
    deadline = time.monotonic() + wait_timeout_s
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
    only_waiting = 0
    with Progress(*columns, TimeElapsedColumn(), console=_console()) as bar:
        task = bar.add_task(f"draining {server}", total=None)
        while True:
            total = progress_now["parts_total"] or None
            waiting = progress_now.get("parts_waiting", 0)
            leads = progress_now.get("primaries_left")
            behind = progress_now.get("replicas_behind", 0)
            description = f"draining {server}"
            if waiting and not progress_now["finished"]:
                led = "" if leads is None else f"leads {leads} part(s); "
                description += f" ({led}{waiting} waiting for another server to take them)"
            elif behind and not progress_now["finished"]:
                description += (
                    f" ({behind} replica role(s) kept until another replica catches up; for long,"
                    " a replica does not hear its primary)"
                )
            bar.update(
                task, completed=progress_now["parts_moved"], total=total, description=description
            )
            if progress_now["finished"]:
                break
            left = progress_now["parts_total"] - progress_now["parts_moved"]
            only_waiting = only_waiting + 1 if waiting and waiting >= left else 0
            if only_waiting >= WAITING_POLLS:
                what = (
                    "primaries with no other ACTIVE server, or replica roles each its part's"
                    " last replica"
                )
                if leads == 0:
                    what = (
                        "it leads no part any more, every call goes elsewhere, but each of"
                        " these replica roles is its part's last replica"
                    )
                typer.echo(
                    f"forehand: {server} keeps {waiting} role(s) no other server can take "
                    f"({what}): do not stop it yet; start or undrain another server and the "
                    "drain goes on",
                    err=True,
                )
                raise typer.Exit(WAITING_EXIT)
            if time.monotonic() > deadline:
                why = ""
                if waiting:
                    why = (
                        f": {waiting} role(s) wait for another ACTIVE server to take them"
                        " (start one, or undrain one)"
                    )
                typer.echo(
                    f"forehand: {server} still draining after {wait_timeout_s:.0f} s{why}",
                    err=True,
                )
                raise typer.Exit(FAILURE_EXIT)
            time.sleep(DRAIN_POLL_INTERVAL_S)
            progress_now = _call(url, "GET", path, timeout_s=timeout_s)
    typer.echo(
        f"drained {server}: {progress_now['parts_moved']} of {progress_now['parts_total']} "
        "part role(s) moved"
    )


def undrain(
    server: str = typer.Argument(..., help="The drained server."),
    *,
    url: str = _URL,
    token: str | None = _TOKEN,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Make a drained server ACTIVE again."""
    path = f"/api/servers/{_segment(server)}/undrain"
    _call(url, "POST", path, token=token, timeout_s=timeout_s)
    typer.echo(f"undrained {server}")


def handoff(
    session: str = typer.Argument(..., help="The session id, 32 hex digits."),
    *,
    to: str | None = typer.Option(None, "--to", help="The target server \\[the manager picks]."),
    reason: str = typer.Option("rebalance", help="Reason code clients see in HANDOFF."),
    url: str = _URL,
    token: str | None = _TOKEN,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Hand a session's parts off to a server (a planned handoff)."""
    body = {"target": to, "reason": reason}
    path = f"/api/sessions/{_segment(session)}/handoff"
    answer = _call(url, "POST", path, json=body, token=token, timeout_s=timeout_s)
    typer.echo(f"{answer['queued']} part(s) of {session} queued for {to or 'the best server'}")


def rebalance(
    *,
    tolerance: float = typer.Option(
        0.1,
        min=0.0,
        max=10.0,
        help="Servers more than this share above theirs give parts, those below take them.",
    ),
    parts_max: int = typer.Option(10_000, min=1, help="Most parts one rebalance queues."),
    url: str = _URL,
    token: str | None = _TOKEN,
    timeout_s: float = _TIMEOUT,
) -> None:
    """Even out the servers' primaries now: planned handoffs (reason rebalance) from servers
    above their share to those below, e.g. to a server back from a restart; once they are even,
    one commit of replica roles to the servers below their share of those (the manager does both
    by itself once the cluster settled, `rebalance_interval_ms`)."""
    body = {"tolerance": tolerance, "parts_max": parts_max}
    answer = _call(url, "POST", "/api/rebalance", json=body, token=token, timeout_s=timeout_s)
    queued = answer["queued"]
    if queued:
        typer.echo(
            f"{queued} part(s) queued for planned handoffs (`forehand history --reason rebalance`"
            " lists them as they end; `forehand status` shows the primaries evening out)"
        )
    elif answer.get("replica_roles_queued"):
        from forehand.runtime.admin import REPLICA_REBALANCE_QUEUED

        typer.echo(REPLICA_REBALANCE_QUEUED)
    else:
        typer.echo(
            f"nothing to move, of the primaries or the replica roles (tolerance {tolerance:.0%}; a "
            "replica role moves only from a part whose other replica reported as far, so parts "
            "under writes wait): a server that takes parts (active, "
            "alive, under its CPU target, not risk-blocked) receives only when it is a whole part "
            f"below its share and another is more than {tolerance:.0%} above its own, or it is "
            f"itself more than {tolerance:.0%} below; moves already queued count as done"
        )


def _answers_checked(command: Callable[..., None]) -> Callable[..., None]:
    """`command`, with an answer of the wrong shape (a URL that serves some other JSON) told in
    one line instead of a traceback from the table it was being read into."""

    @functools.wraps(command)
    def checked(*args: Any, **options: Any) -> None:
        try:
            command(*args, **options)
        except (KeyError, TypeError, IndexError) as error:
            url = options.get("url", DEFAULT_URL)
            typer.echo(
                f"forehand: the answer from {url} does not look like the admin API's "
                f"({type(error).__name__}: {error})",
                err=True,
            )
            raise typer.Exit(FAILURE_EXIT) from error

    return checked


def register(app: typer.Typer) -> None:
    """Add the operator's subcommands to the `forehand` command."""
    for command in (status, sessions, history, drain, undrain, handoff, rebalance):
        app.command(command.__name__)(_answers_checked(command))
