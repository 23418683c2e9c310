"""A burst of opens larger than the manager's commit queue, against real processes (TLS): the
opens the full queue refuses are answered OPEN_SESSION_REFUSED with a wait, sent again, and all
open; the client's connection to the manager is never closed. Before, each refusal was an ERROR
that closed the connection, failing or delaying every other open and map request on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import forehand
from forehand.core import ClientConfig
from forehand.core._client_events import ConnectionClosed
from forehand.core.client import BackpressureError
from forehand.runtime.client import SessionOpenError

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, make_certs, run_async
else:
    from _cluster import Cluster, make_certs, run_async

OPENS = 200
CLIENT_SESSIONS_MAX = 220


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A manager whose commit queue holds one change and which keeps 220 sessions per client
    connection, and one server."""
    directory = tmp_path_factory.mktemp("open-backpressure")
    running = Cluster(
        directory,
        certs_dir=make_certs(directory / "certs"),
        transport="tls",
        servers=("s1",),
        manager_settings=(
            "core.pending_deltas_max=1",
            f"core.client_sessions_max={CLIENT_SESSIONS_MAX}",
        ),
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


def test_a_client_opens_no_more_sessions_than_the_manager_keeps_for_it(cluster: Cluster) -> None:
    """A client configured for more sessions than the manager keeps per connection: the opens
    past `client_sessions_max` fail, naming it (refused by the manager, or by the client once
    the manager's SETTINGS said it), and once sessions close there is room again. Before, they
    opened, and the oldest could not be closed: they stayed in the map."""
    config = ClientConfig(
        sessions_max=1_000, inflight_requests_max=1_000, request_timeout_ms=30_000
    )
    extra = 15

    async def scenario() -> None:
        async with cluster.connect(config=config) as client:
            results = await asyncio.gather(
                *(client.open_session(parts=["auth"]) for _ in range(CLIENT_SESSIONS_MAX + extra)),
                return_exceptions=True,
            )
            sessions = [r for r in results if isinstance(r, forehand.Session)]
            errors = [r for r in results if not isinstance(r, forehand.Session)]
            assert len(sessions) == CLIENT_SESSIONS_MAX and len(errors) == extra, errors[:3]
            for error in errors:
                assert isinstance(error, BackpressureError | SessionOpenError), error
                assert f"client_sessions_max={CLIENT_SESSIONS_MAX}" in str(error), error
            with pytest.raises(BackpressureError, match="client_sessions_max"):
                await client.open_session(parts=["auth"])
            await asyncio.gather(*(s.close() for s in sessions[:10]))
            more = [await client.open_session(parts=["auth"]) for _ in range(10)]
            assert await more[0].call("auth", "login", "gil") == "welcome gil"

    run_async(scenario())
