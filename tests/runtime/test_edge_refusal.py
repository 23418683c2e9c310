"""A server the manager can never admit is told why, and both logs say it.

A manager refuses a server whose announced weight or zone breaks its placement bounds (the map
could never hold it), whose credentials would outlive the manager's session expiry, whose
heartbeats are too rare for its failure timeout, whose transport its clients do not use, or
whose cluster keys are not its own. Before
the first, the join failed inside the manager and was retried in silence: the server listened,
nobody logged anything, and it never joined. Real processes, real TLS.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest

from forehand.ops import url_file
from forehand.runtime.certs import make_cluster_certs
from forehand.runtime.keys import CLUSTER_KEYS_FILE, add_cluster_key

FOREHAND = [sys.executable, "-c", "from forehand.cli import main; main()"]
REPOSITORY = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
"""How long the refusal may take to show on a loaded machine (it shows within a second here)."""


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def server_command(certs: Path, manager_port: int) -> list[str]:
    """`forehand server` as s1 of the cart app, reporting to the manager on `manager_port`
    (without its listen address)."""
    return [
        *FOREHAND,
        "server",
        "--certs-dir",
        str(certs),
        "--app",
        "examples.cart.app:app",
        "--app-dir",
        str(REPOSITORY),
        "--server-id",
        "s1",
        "--manager",
        f"127.0.0.1:{manager_port}",
    ]


def start_manager(
    tmp_path: Path, certs: Path, port: int, output: IO[str]
) -> subprocess.Popen[bytes]:
    """A manager on `port` with its store in `tmp_path`, its log to `output`, saying its admin
    API's URL in `tmp_path/manager.ready`."""
    return subprocess.Popen(
        [
            *FOREHAND,
            "manager",
            "--certs-dir",
            str(certs),
            "--listen",
            f"127.0.0.1:{port}",
            "--set",
            f"store_path={tmp_path / 'manager.sqlite'}",
            "--set",
            "admin_http_port=0",
            "--ready-file",
            str(tmp_path / "manager.ready"),
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("weight=500", "bad ServerAnnounced: weight of 's1' must be in [0.001, 100.0]"),
        (
            "core.credential_lifetime_ms=172800000",
            "bad ServerAnnounced: credential_lifetime_ms of 's1' (172800000) must be below the "
            "manager's session_expiry_ms (172800000)",
        ),
        (
            "transport=quic",
            "bad ServerAnnounced: transport of 's1' ('quic') must be the manager's ('tls')",
        ),
        (
            "core.heartbeat_interval_ms=1600",
            "bad ServerAnnounced: heartbeat_interval_ms of 's1' (1600) must be at most half the "
            "manager's failure_timeout_ms (3000)",
        ),
        (
            # Another cluster's keys file (made below): the server could open no credential
            # the manager issues; it used to join and fail every client call.
            "keys_file=other-keys.toml",
            "bad ServerAnnounced: cluster keys of 's1': key id(s) [1] hold other keys than "
            "the manager's",
        ),
    ],
)
def test_a_server_the_manager_cannot_admit_is_refused_with_the_reason(
    tmp_path: Path, setting: str, reason: str
) -> None:
    """Manager and server each log the refusal naming the setting, once, not every redial;
    `forehand status` lists the refused server with the reason and how often."""
    certs = tmp_path / "certs"
    make_cluster_certs(certs, ["manager", "s1"], days=1)
    add_cluster_key(certs / CLUSTER_KEYS_FILE)
    add_cluster_key(tmp_path / "other-keys.toml")
    add_cluster_key(tmp_path / "other-keys.toml")
    manager_port, server_port = free_port(), free_port()
    manager_log, server_log = tmp_path / "manager.log", tmp_path / "server.log"
    with manager_log.open("w") as manager_out, server_log.open("w") as server_out:
        manager = start_manager(tmp_path, certs, manager_port, manager_out)
        server = subprocess.Popen(
            [
                *server_command(certs, manager_port),
                "--listen",
                f"127.0.0.1:{server_port}",
                "--set",
                setting,
            ],
            stdout=server_out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
        try:
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                if reason in server_log.read_text() and reason in manager_log.read_text():
                    break
                time.sleep(0.2)
            time.sleep(1.5)  # Long enough for the server to redial and be refused again.
            # Not in the map, it is in no table: `forehand status` lists it below.
            api_url = url_file(tmp_path / "manager.ready").read_text(encoding="utf-8").strip()
            status = subprocess.run(
                [*FOREHAND, "status", "--url", api_url],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"},
            )
        finally:
            for process in (server, manager):
                process.kill()
                process.wait(timeout=30)
    server_lines = [line for line in server_log.read_text().splitlines() if reason in line]
    manager_lines = [line for line in manager_log.read_text().splitlines() if reason in line]
    assert len(server_lines) == 1 and "manager closed the connection" in server_lines[0]
    assert "this node redials" in server_lines[0]
    assert len(manager_lines) == 1 and "closing s1" in manager_lines[0]
    # Each start line names the key the node seals with (what a rotation checks).
    assert "sealing with cluster key 1 (holds 1)" in manager_log.read_text()
    assert status.returncode == 0, status.stderr
    (listed,) = [line for line in status.stdout.splitlines() if line.startswith("refused s1")]
    assert "(protocol_error, " in listed and f"ago): {reason}" in listed, listed
    assert int(listed.split(", ")[1].split(" ")[0]) >= 2  # refused at each redial


def test_refusing_a_second_process_of_a_node_id_leaves_the_running_one_alone(
    tmp_path: Path,
) -> None:
    """A second process started as s1 by mistake, with another cluster's keys, is refused at
    its announcement; only its connection closes. Before, the refusal's ERROR and close went to
    every connection of the node id `s1`: the healthy process was told "bad ServerAnnounced"
    and cut off at each of the newcomer's redials."""
    certs = tmp_path / "certs"
    make_cluster_certs(certs, ["manager", "s1"], days=1)
    add_cluster_key(certs / CLUSTER_KEYS_FILE)
    add_cluster_key(tmp_path / "other-keys.toml")
    manager_port = free_port()
    logs = {name: tmp_path / f"{name}.log" for name in ("manager", "s1", "duplicate")}
    reason = "bad ServerAnnounced: cluster keys of 's1'"
    server = server_command(certs, manager_port)
    processes: list[subprocess.Popen[bytes]] = []
    outputs = {name: path.open("w") for name, path in logs.items()}
    try:
        processes.append(start_manager(tmp_path, certs, manager_port, outputs["manager"]))
        processes.append(
            subprocess.Popen(
                [*server, "--listen", f"127.0.0.1:{free_port()}"],
                stdout=outputs["s1"],
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        )
        deadline = time.monotonic() + WAIT_S
        while "ServerJoined server_id=s1" not in logs["manager"].read_text():
            assert time.monotonic() < deadline, "s1 never joined"
            time.sleep(0.2)
        processes.append(
            subprocess.Popen(
                [
                    *server,
                    "--listen",
                    f"127.0.0.1:{free_port()}",
                    "--set",
                    "keys_file=other-keys.toml",
                ],
                stdout=outputs["duplicate"],
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        )
        while reason not in logs["duplicate"].read_text():
            assert time.monotonic() < deadline, "the duplicate was never refused"
            time.sleep(0.2)
        time.sleep(4.0)  # Two redials of the duplicate, each refused again.
        assert processes[1].poll() is None and processes[2].poll() is None
    finally:
        for process in reversed(processes):
            process.kill()
            process.wait(timeout=30)
        for output in outputs.values():
            output.close()
    healthy = logs["s1"].read_text()
    assert reason not in healthy and "closed the connection" not in healthy, healthy
    manager = logs["manager"].read_text()
    assert reason in manager
    assert "] ServerDeclaredDead" not in manager and manager.count("] ServerJoined") == 1
