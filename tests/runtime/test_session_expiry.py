"""An abandoned session expires: the manager closes a session no credential was issued for in
`session_expiry_ms`, and the sessions whose clients renew stay.

Here credentials live 2 s and sessions expire 6 s after their last credential (24 h and 48 h by
default): the renewing client's session has 4 s of slack on a loaded machine. Before, a session
whose client went away without closing it stayed in the map and on its servers for ever,
although no client could bind to it once its credential had expired.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from forehand.core import ClientConfig
from forehand.runtime.client import SessionClosedError

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
else:
    from _cluster import Cluster, make_certs, run_async

LIFETIME_MS = 2_000
"""The cluster's credential lifetime in this test."""
EXPIRY_MS = 6_000
"""The manager's session expiry in this test."""
PARTS = ["auth", "cart"]


@pytest.mark.slow
def test_an_abandoned_session_expires_and_a_renewed_one_stays(tmp_path: Path) -> None:
    """One client opens a session and goes away without closing it (`Client.close` keeps
    sessions open, to be resumed); another opens one and calls throughout with the default
    renewal interval (12 h). That one renews every second, half the lifetime the manager and
    servers state in SETTINGS (before, it renewed at its own interval and its live session
    expired too). After the expiry the renewing one keeps its whole cart, and resuming the
    abandoned one from its snapshot fails as closed by the manager."""
    lifetime = f"core.credential_lifetime_ms={LIFETIME_MS}"
    cluster = Cluster(
        tmp_path,
        certs_dir=make_certs(tmp_path / "certs"),
        transport="tls",
        servers=("s1", "s2"),
        server_settings=(lifetime,),
        manager_settings=(lifetime, f"core.session_expiry_ms={EXPIRY_MS}"),
    )
    cluster.start()
    try:
        run_async(_abandon_one(cluster))
    finally:
        cluster.stop()


async def _abandon_one(cluster: Cluster) -> None:
    config = ClientConfig(ping_interval_ms=200, request_timeout_ms=10_000)
    assert config.credential_renew_interval_ms == 43_200_000
    async with cluster.connect(config=config) as gone:
        left = await gone.open_session(parts=PARTS)
        assert await left.call("cart", "add", {"sku": "tea", "quantity": 1}) == 1
        left_snapshot = left.snapshot()
    async with cluster.connect(config=config) as keeper:
        kept = await keeper.open_session(parts=PARTS)
        opened_s = time.monotonic()
        units = 0
        while time.monotonic() - opened_s < 2 * EXPIRY_MS / 1000:
            units = await kept.call("cart", "add", {"sku": "tea", "quantity": 1})
            await asyncio.sleep(0.3)
        assert units > 1
        assert await kept.call("cart", "list") == {"tea": units}
    async with cluster.connect(config=config) as restarted:
        with pytest.raises(SessionClosedError, match="manager"):
            resumed = await restarted.resume_session(left_snapshot)
            await resumed.call("cart", "list")
