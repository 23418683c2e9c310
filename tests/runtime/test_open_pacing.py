"""Opens paced per origin, against real processes (TLS): two client connections from one
address (loopback) open more sessions at once than the manager's burst for that address; the
opens past it are refused with the wait (OPEN_SESSION_REFUSED naming the address and the pace),
sent again by the clients, and all open. Before, one host could open sessions at the manager's
full commit rate by reconnecting past each connection's `client_sessions_max`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from forehand.core import ClientConfig

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
else:
    from _cluster import Cluster, make_certs, run_async

BURST = 10
OPENS_PER_CLIENT = 20


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager that lets one address open 10 sessions at once, then 20 a second."""
    directory = tmp_path_factory.mktemp("open-pacing")
    running = Cluster(
        directory,
        certs_dir=make_certs(directory / "certs"),
        transport="tls",
        servers=("s1",),
        manager_settings=(
            "core.open_rate_per_origin=20",
            f"core.open_burst_per_origin={BURST}",
        ),
    )
    running.start()
    yield running
    running.stop()


def test_an_address_past_its_burst_is_slowed_not_failed(cluster: Cluster) -> None:
    config = ClientConfig(request_timeout_ms=30_000, retry_attempts_max=30)

    async def scenario() -> None:
        async with (
            cluster.connect(config=config) as first,
            cluster.connect(config=config) as second,
        ):
            sessions = await asyncio.gather(
                *(
                    client.open_session(parts=["auth"])
                    for client in (first, second)
                    for _ in range(OPENS_PER_CLIENT)
                )
            )
            assert len({s.id for s in sessions}) == 2 * OPENS_PER_CLIENT
            assert await sessions[-1].call("auth", "login", "ada") == "welcome ada"

    run_async(scenario())
    log = cluster.log("manager")
    # The pace did refuse opens, per address across both connections (logged at INFO).
    assert "127.0.0.1 opened sessions faster than open_rate_per_origin=20" in log, log[-3000:]
