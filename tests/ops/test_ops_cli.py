"""The operator CLI (`forehand status`, `sessions`, `history`, `handoff`, `drain`, `undrain`,
`rebalance`) against the admin API of a live cluster."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx
from typer.testing import CliRunner

from forehand._ops_commands import status_row
from forehand.cli import app

if TYPE_CHECKING:
    from tests.ops._ops_cluster import TOKEN, OpsCluster, eventually, run_async
else:
    from _ops_cluster import TOKEN, OpsCluster, eventually, run_async

PARTS = ["auth", "cart"]
WIDE = {"COLUMNS": "240", "NO_COLOR": "1"}


def forehand(cluster: OpsCluster, *arguments: str, token: bool = False) -> tuple[int, str]:
    """Run `forehand ARGUMENTS --url API [--token TOKEN]`; exit code and output."""
    extra = ["--url", cluster.api_url] + (["--token", TOKEN] if token else [])
    result = CliRunner().invoke(app, [*arguments, *extra], env=WIDE)
    return result.exit_code, result.output


def open_session(cluster: OpsCluster) -> tuple[str, dict[str, str]]:
    """A new session's id (hex) and the primary of each of its parts."""

    async def opening() -> tuple[str, dict[str, str]]:
        async with cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            await session.call("auth", "login", "frank")
            return session.id.hex(), {p: session.placements()[p].primary for p in PARTS}

    return run_async(opening())


def test_reading_commands_show_the_cluster(ops_cluster: OpsCluster) -> None:
    """`status` lists every server with its state, `sessions` lists a new session with its
    parts' primaries (and says when its limit cut the listing), `history` prints the audit table;
    a wrong URL exits 1 with a message."""
    session_hex, primaries = open_session(ops_cluster)

    def every_server_listed() -> bool:
        # The view is sampled once a second: right after the cluster started, the newest
        # sample may predate the last server's join.
        code, output = forehand(ops_cluster, "status")
        assert code == 0, output
        assert "map version" in output
        return all(server_id in output for server_id in ops_cluster.server_ids)

    run_async(eventually(every_server_listed, what="every server in `forehand status`"))
    code, output = forehand(ops_cluster, "sessions", "--limit", "1000")
    assert code == 0, output
    rows = [line for line in output.splitlines() if session_hex in line]
    assert len(rows) == len(PARTS)
    assert {part: primaries[part] in row for row in rows for part in PARTS if part in row} == {
        part: True for part in PARTS
    }
    # A listing cut at its limit says so (it read "1 session(s)" out of hundreds).
    open_session(ops_cluster)
    code, output = forehand(ops_cluster, "sessions", "--limit", "1")
    assert code == 0 and "the first 1 session(s); more exist" in output, output
    code, output = forehand(ops_cluster, "history")
    assert code == 0 and "record(s)" in output
    result = CliRunner().invoke(app, ["status", "--url", "http://127.0.0.1:9"], env=WIDE)
    assert result.exit_code == 1 and "cannot reach the admin API" in result.output
    assert "--set admin_http_port=7080" in result.output


def test_tables_are_not_cut_when_the_output_is_not_a_terminal(ops_cluster: OpsCluster) -> None:
    """Piped (no terminal, no $COLUMNS), `status` prints whole column names and addresses:
    Rich assumed 80 columns and cut them to `ser…`, `add…`."""
    result = CliRunner().invoke(
        app, ["status", "--url", ops_cluster.api_url], env={"COLUMNS": None, "NO_COLOR": "1"}
    )
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "CPU" in line)
    for column in ("server", "state", "address", "req/s", "primary", "replica", "sessions"):
        assert column in header, header
    assert "…" not in result.output


def test_acting_commands_move_parts(ops_cluster: OpsCluster) -> None:
    """`handoff --to` moves a session (its record shows in `history`), `drain` runs until the
    server holds nothing and reports the parts moved, `undrain` makes it active again, and
    `rebalance` hands it back its share of the sessions opened while it was drained; without
    the token they exit 1 and change nothing."""
    cluster = ops_cluster
    session_hex, primaries = open_session(cluster)
    target = next(s for s in cluster.server_ids if s != primaries["cart"])
    code, output = forehand(cluster, "handoff", session_hex, "--to", target)
    assert code == 1 and "FOREHAND_ADMIN_TOKEN" in output
    code, output = forehand(cluster, "handoff", session_hex, "--to", target, token=True)
    assert code == 0 and "queued" in output, output
    with httpx.Client(base_url=cluster.api_url, timeout=10) as api:
        check_acting_commands(cluster, api, session_hex, primaries, target)


def check_acting_commands(
    cluster: OpsCluster,
    api: httpx.Client,
    session_hex: str,
    primaries: dict[str, str],
    target: str,
) -> None:

    def moved() -> bool:
        parts = api.get(f"/api/sessions/{session_hex}").json()["parts"]
        return all(part["primary"] == target for part in parts)

    run_async(eventually(moved, what=f"the session's parts on {target}"))

    def recorded() -> bool:
        code, output = forehand(cluster, "history", "--kind", "handoff", "--server", target)
        return code == 0 and f"{primaries['cart']} " in output and "completed" in output

    run_async(eventually(recorded, what="the handoff in `forehand history`"))
    code, output = forehand(cluster, "drain", target)
    assert code == 1
    try:
        code, output = forehand(cluster, "drain", target, token=True)
        assert code == 0 and f"drained {target}" in output, output
        servers = {s["server_id"]: s for s in api.get("/api/map").json()["servers"]}
        assert servers[target]["state"] == "draining"
        placements = api.get(f"/api/sessions/{session_hex}").json()["parts"]
        assert all(target not in (p["primary"], *p["replicas"]) for p in placements)
        # Sessions opened meanwhile go to the other servers: back, the target leads none.
        for _ in range(8):
            open_session(cluster)
    finally:
        code, output = forehand(cluster, "undrain", target, token=True)
    assert code == 0, output
    run_async(cluster.wait_active(cluster.server_ids))

    def primaries_of(server: str) -> int:
        listed = api.get("/api/sessions", params={"server": server, "limit": 1000}).json()
        return sum(p["primary"] == server for s in listed for p in s["parts"])

    # An undrained server gets a few parts back from the hash, not its share.
    before = primaries_of(target)
    code, output = forehand(cluster, "rebalance")
    assert code == 1 and "FOREHAND_ADMIN_TOKEN" in output
    code, output = forehand(cluster, "rebalance", token=True)
    assert code == 0 and "part(s) queued for planned handoffs" in output, output
    # Some of the queued parts may go to another server below its share.
    run_async(eventually(lambda: primaries_of(target) > before, what="rebalanced parts"))
    # The primaries within the tolerance, each run moves replica roles (the drain took the
    # target's) until none is left to move, as the command's answer says.
    answers: list[str] = []
    for _ in range(10):
        code, output = forehand(cluster, "rebalance", "--tolerance", "0.5", token=True)
        assert code == 0, output
        answers.append(output)
        if "nothing to move" in output:
            break
        assert "one commit moving replica roles" in output, output
        time.sleep(0.5)
    assert "nothing to move" in answers[-1], answers


def test_status_shows_no_load_for_a_dead_server() -> None:
    """A dead server's CPU, rates and risk are its last report's: `status` shows them as "-"
    (it showed a dead server still at 26% CPU and 1,360 requests a second)."""
    server = {
        "server_id": "s2",
        "member_state": "alive",
        "map_state": "active",
        "address": "127.0.0.1:7102",
        "cpu_utilization": 0.26,
        "requests_per_second": 1360.0,
        "latency_us_p99": 4_000,
        "loop_lag_us_p99": 1_000,
        "risk": 0.29,
        "primary_parts": 3,
        "replica_parts": 5,
        "sessions": 4,
    }
    assert status_row(server)[4:9] == ["26%", "1360", "4.0", "1.0", "0.29"]
    dead = {**server, "member_state": "dead", "map_state": "dead", "primary_parts": 0}
    assert status_row(dead) == [
        *("s2", "dead", "dead", "127.0.0.1:7102"),
        *("-", "-", "-", "-", "-"),
        *("0", "5", "4"),
    ]
