"""A session outlives its first credential: clients renew theirs from the servers.

Credentials expire after the cluster's `credential_lifetime_ms` (24 hours by default; 3 s
here). A client that keeps a session trades its credential for a fresh one every
`credential_renew_interval_ms`, so a restarted client can take the session back from a snapshot
taken long after the session opened. Before, servers never renewed a credential: once the first
one expired, the session could not be bound on any new connection.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from forehand.core import ClientConfig

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
else:
    from _cluster import Cluster, make_certs, run_async

LIFETIME_MS = 3_000
"""The cluster's credential lifetime in this test."""
PARTS = ["auth", "cart"]


@pytest.mark.slow
def test_a_restarted_client_takes_back_a_session_older_than_its_first_credential(
    tmp_path: Path,
) -> None:
    """A session kept for longer than the credential lifetime (calls every 0.3 s, renewals
    every 1 s): its snapshot then holds a renewed credential, and a new client resumes the
    session with it and reads the cart."""
    lifetime = f"core.credential_lifetime_ms={LIFETIME_MS}"
    cluster = Cluster(
        tmp_path,
        certs_dir=make_certs(tmp_path / "certs"),
        transport="tls",
        servers=("s1", "s2"),
        server_settings=(lifetime,),
        manager_settings=(lifetime,),
    )
    cluster.start()
    try:
        run_async(_keep_then_resume(cluster))
    finally:
        cluster.stop()


async def _keep_then_resume(cluster: Cluster) -> None:
    config = ClientConfig(
        ping_interval_ms=200, request_timeout_ms=10_000, credential_renew_interval_ms=1_000
    )
    async with cluster.connect(config=config) as client:
        session = await client.open_session(parts=PARTS)
        first = session.snapshot()
        opened_s = time.monotonic()
        units = 0
        while time.monotonic() - opened_s < 2 * LIFETIME_MS / 1000:
            units = await session.call("cart", "add", {"sku": "tea", "quantity": 1})
            await asyncio.sleep(0.3)
        saved = session.snapshot()
    assert saved != first
    async with cluster.connect(config=config) as restarted:
        resumed = await restarted.resume_session(saved)
        assert await resumed.call("cart", "list") == {"tea": units}
        assert await resumed.call("cart", "add", {"sku": "tea", "quantity": 1}) == units + 1
