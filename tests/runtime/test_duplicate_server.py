"""Two processes under one server id, live: the older incarnation (a server restarted by hand
and never stopped, here one started with an older incarnation) is refused by the manager with
SUPERSEDED and exits with status 2 naming the cause; the running server goes on serving, with
no failover. Before, each process's connection replaced the other's at the manager, and a
walkthrough's cluster failed the same parts over once a second for 27 minutes."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import TYPE_CHECKING

from forehand.runtime.admin import Status

if TYPE_CHECKING:
    from tests.runtime._cluster import (
        SERVERS,
        CartLoad,
        Cluster,
        eventually,
        make_certs,
        run_async,
    )
else:
    from _cluster import SERVERS, CartLoad, Cluster, eventually, make_certs, run_async

PARTS = ["auth", "cart"]


def test_an_older_process_under_a_running_servers_id_is_stopped(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, certs_dir=make_certs(tmp_path / "certs"), transport="tls")
    cluster.start()
    try:
        run_async(_scenario(cluster, tmp_path))
    finally:
        cluster.stop()


async def _scenario(cluster: Cluster, tmp_path: Path) -> None:
    duplicated = SERVERS[0]
    async with cluster.connect() as client:
        session = await client.open_session(parts=PARTS)
        async with CartLoad(session, writers=2) as load:
            await load.wait_for(10, what="writes before the duplicate")
            command = cluster._server_command(duplicated)
            command[command.index("--ready-file") + 1] = str(tmp_path / "stray.ready")
            command += ["--set", "incarnation=1"]
            stray = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            output, _ = await asyncio.wait_for(stray.communicate(), 60)
            text = output.decode(errors="replace")
            assert stray.returncode == 2, text[-2000:]
            assert re.search(
                rf"the manager stopped server {duplicated}: incarnation 1 of {duplicated} is older "
                r"than its running incarnation \d+: another process runs as",
                text,
            ), text[-2000:]
            await load.wait_for(20, what="writes after the duplicate")
        await load.check_exactly_once()

    async def all_alive() -> bool:
        status = await cluster.admin(Status())
        return {s.server_id for s in status.servers if s.member_state == "alive"} == set(SERVERS)

    # The stray's connection replaced the running server's once; it redials at once.
    await eventually(all_alive, what="every server alive")
    assert "ServerDeclaredDead" not in cluster.log("manager")
    assert f"another process runs as {duplicated}" in cluster.log("manager")
