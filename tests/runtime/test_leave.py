"""A planned stop: SIGTERM makes a server hand every part off before it exits.

The server asks the manager to drain it (its heartbeats say `leaving`), keeps serving while
its parts move, and exits 0 once the manager reports the drain finished, so that its sessions
switch by planned handoff, not by failover after its silence. SIGINT still stops at once (the
cluster fixture stops every process that way).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.runtime._cluster import CartLoad, Cluster, make_certs, run_async
else:
    from _cluster import CartLoad, Cluster, make_certs, run_async

PARTS = ["auth", "cart", "chat"]
SESSIONS = 6
EXIT_TIMEOUT_S = 40.0
"""A leaving server that has not exited this long after SIGTERM hangs (its own bound is
`leave_timeout_ms`, 30 s by default)."""


@pytest.mark.parametrize("transport", ["tls", "quic"])
def test_sigterm_hands_every_part_off_before_the_server_exits(
    tmp_path: Path, transport: str
) -> None:
    """Under load, SIGTERM the cart's primary: it exits 0 by itself, every write before, during
    and after is acknowledged exactly once, the parts it led are served elsewhere, and the
    manager moved them by planned handoff: no failover. Its last heartbeat said it left, so the
    manager took it out of the map at once (cause `left`), not by silence and a failover."""
    cluster = Cluster(tmp_path, certs_dir=make_certs(tmp_path / "certs"), transport=transport)
    cluster.start()
    try:
        victim = run_async(_leave_under_load(cluster))
    finally:
        cluster.stop()
    server_log = cluster.log(victim)
    assert f"{victim} leaving: its parts go to the other servers" in server_log
    assert f"{victim} left: every part was handed off; stopping" in server_log
    manager_log = cluster.log("manager")
    assert f"ServerLeaving server_id={victim}" in manager_log
    assert "HandoffStarted" in manager_log
    assert "FailoverStarted" not in manager_log
    assert "PartsLost" not in manager_log
    (death,) = [line for line in manager_log.splitlines() if "ServerDeclaredDead" in line]
    assert f"server_id={victim}" in death and "cause=left" in death, death


async def _leave_under_load(cluster: Cluster) -> str:
    async with cluster.connect() as client:
        sessions = [await client.open_session(parts=PARTS) for _ in range(SESSIONS)]
        session = sessions[0]
        victim = session.placements()["cart"].primary
        async with CartLoad(session, writers=2) as load:
            await load.wait_for(20, what="writes before the SIGTERM")
            cluster.send_signal(victim, signal.SIGTERM)
            process = cluster.processes[victim]
            assert await asyncio.to_thread(process.wait, EXIT_TIMEOUT_S) == 0
            await load.wait_for(20, what="writes after the server left")
        await load.check_exactly_once()
        for each in sessions:
            assert await each.call("chat", "post", "after", result_type=int) >= 0
            assert isinstance(await each.call("cart", "list"), dict)
            assert all(p.primary != victim for p in each.placements().values())
        return victim
