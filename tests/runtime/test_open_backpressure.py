"""A burst of opens larger than the manager's commit queue, against real processes (TLS): the
opens the full queue refuses are answered OPEN_SESSION_REFUSED with a wait, sent again, and all
open; the client's connection to the manager is never closed. Before, each refusal was an ERROR
that closed the connection, failing or delaying every other open and map request on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from forehand.core import ClientConfig
from forehand.core._client_events import ConnectionClosed

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
else:
    from _cluster import Cluster, make_certs, run_async

OPENS = 200


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager whose commit queue holds one change, and one server."""
    directory = tmp_path_factory.mktemp("open-backpressure")
    running = Cluster(
        directory,
        certs_dir=make_certs(directory / "certs"),
        transport="tls",
        servers=("s1",),
        manager_settings=("core.pending_deltas_max=1",),
    )
    running.start()
    yield running
    running.stop()


def test_a_burst_of_opens_past_the_commit_queue_all_open(cluster: Cluster) -> None:
    config = ClientConfig(ping_interval_ms=200, request_timeout_ms=30_000, retry_attempts_max=20)

    async def scenario() -> None:
        async with cluster.connect(config=config) as client:
            closed: list[object] = []
            client._driver.subscribe(closed.append, event_types=(ConnectionClosed,))
            sessions = await asyncio.gather(
                *(client.open_session(parts=["auth"]) for _ in range(OPENS))
            )
            assert len({s.id for s in sessions}) == OPENS
            results: list[object] = await asyncio.gather(
                *(s.call("auth", "login", f"u{n}") for n, s in enumerate(sessions[:20]))
            )
            assert results == [f"welcome u{n}" for n in range(20)]
            # No refusal closed the client's connection to the manager (nor any other).
            assert closed == []

    run_async(scenario())
    log = cluster.log("manager")
    # The queue did push back (SessionOpenRefused is logged at INFO).
    assert "commit queue is full" in log, log[-3000:]
