"""Servers that die or freeze under load: the cluster fails over and clients lose nothing.

Each test runs its own cluster (a manager and three servers as processes), because it breaks
one of them: SIGKILL of the cart's primary (a `replicated` part loses no acknowledged write), and
SIGSTOP then SIGCONT of it (the manager fails it over while it is frozen; clients notice the
silence and follow, a waiting call's part before the connection is given up; the thawed server
rejoins).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from forehand import HandoffEvent, HandoffEventKind, RequestFailedError
from forehand.core import ClientConfig, client_events
from forehand.runtime.admin import MoveSession

if TYPE_CHECKING:
    from tests.runtime._cluster import (
        COUNTER_APP,
        SERVERS,
        CartLoad,
        Cluster,
        eventually,
        make_certs,
        run_async,
    )
else:
    from _cluster import (
        COUNTER_APP,
        SERVERS,
        CartLoad,
        Cluster,
        eventually,
        make_certs,
        run_async,
    )

PARTS = ["auth", "cart"]


@pytest.fixture(params=["tls", "quic"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """A fresh manager and three servers, stopped (by pid) at the end of the test."""
    running = Cluster(tmp_path, certs_dir=make_certs(tmp_path / "certs"), transport=request.param)
    running.start()
    yield running
    running.stop()


async def _break_primary_under_load(cluster: Cluster, action: str) -> str:
    """Open a session, write to its cart from three writers, break the cart's primary with
    `action` (kill, or freeze then thaw), keep writing until the cart is served elsewhere, and
    check that every acknowledged write is there exactly once. Returns the broken server."""
    async with cluster.connect() as client:
        session = await client.open_session(parts=PARTS)
        victim = session.placements()["cart"].primary

        def moved() -> bool:
            return session.placements()["cart"].primary != victim

        async with CartLoad(session, writers=3) as load:
            await load.wait_for(60, what="writes before the failure")
            if action == "kill":
                cluster.send_signal(victim, signal.SIGKILL)
                await asyncio.to_thread(cluster.wait_exit, victim)
            else:
                cluster.send_signal(victim, signal.SIGSTOP)
            await eventually(moved, what=f"the cart served by another server than {victim}")
            if action == "freeze":
                cluster.send_signal(victim, signal.SIGCONT)
            await load.wait_for(60, what="writes after the failover")
        await load.check_exactly_once()
    return victim


def test_sigkill_of_a_primary_loses_no_acknowledged_write(cluster: Cluster) -> None:
    """SIGKILL of the replicated cart's primary under load: the manager promotes a replica, the
    clients relocate, no call fails and every acknowledged write survives exactly once."""
    victim = run_async(_break_primary_under_load(cluster, "kill"))

    async def declared_dead() -> bool:
        from forehand.runtime.admin import Status

        reply = await cluster.admin(Status())
        return any(s.server_id == victim and s.member_state == "dead" for s in reply.servers)

    run_async(eventually(declared_dead, what=f"{victim} declared dead"))


def test_sigstop_then_sigcont_of_a_primary(cluster: Cluster) -> None:
    """A frozen primary (SIGSTOP) is failed over while clients notice its silence; nothing
    acknowledged is lost, no call fails, and after SIGCONT it rejoins the cluster."""
    run_async(_break_primary_under_load(cluster, "freeze"))
    run_async(cluster.wait_active(SERVERS))


def test_a_call_waiting_on_a_frozen_primary_moves_before_its_connection_is_given_up(
    cluster: Cluster,
) -> None:
    """SIGSTOP of the cart's primary while a call waits there, at the default 1 s ping: the
    driver would give the silent connection up after 5 s, and the part would be RELOCATED
    (lost) then. The client asks the manager once a PING goes unanswered a whole interval
    (`silent_locate_pings`), the held answer comes when the failover commits (about 1.2 s here),
    and the part is MOVED to the promoted replica with the connection kept; the call is answered
    there. (With `silent_locate_pings=None` the event is RELOCATED.)"""

    async def scenario() -> None:
        config = ClientConfig(ping_interval_ms=1_000, request_timeout_ms=20_000)
        async with cluster.connect(config=config) as client:
            session = await client.open_session(parts=PARTS)
            victim = session.placements()["cart"].primary
            await session.call("cart", "add", {"sku": "before", "quantity": 1})
            seen: list[HandoffEvent] = []
            session.on_handoff(seen.append)
            cluster.send_signal(victim, signal.SIGSTOP)
            try:
                await session.call("cart", "add", {"sku": "frozen", "quantity": 1})
            finally:
                cluster.send_signal(victim, signal.SIGCONT)
            assert session.placements()["cart"].primary != victim
            cart = [event for event in seen if "cart" in event.parts]
            assert [(e.kind, e.source) for e in cart] == [(HandoffEventKind.MOVED, victim)]

    run_async(scenario())


def test_a_waiting_read_whose_primary_dies_returns_none_by_its_timeout(cluster: Cluster) -> None:
    """SIGKILL of the chat's primary while a waiting read (`chat.since`, which waits 20 s) is
    parked there: the client re-sends it to the promoted replica with the wait budget left, not
    the whole one, so the call returns None within its 6 s `timeout_ms` instead of failing with
    a timeout. A later post is read as usual."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=["auth", "chat"])
            victim = session.placements()["chat"].primary
            waiter: asyncio.Future[object] = asyncio.ensure_future(
                session.call("chat", "since", 1, timeout_ms=6_000)
            )
            await asyncio.sleep(1)
            assert not waiter.done()
            cluster.send_signal(victim, signal.SIGKILL)
            await asyncio.to_thread(cluster.wait_exit, victim)
            assert await waiter is None
            assert session.placements()["chat"].primary != victim
            index: int = await session.call("chat", "post", "after", result_type=int)
            assert await session.call("chat", "since", index, timeout_ms=6_000) == {
                "messages": ["after"],
                "next": index + 1,
            }

    run_async(scenario())


def test_a_client_reading_many_large_answers_at_once_gets_them_all(cluster: Cluster) -> None:
    """100 concurrent reads of a 900 KB state (90 MB of answers, over five times the server's
    `send_buffer_bytes_max` for one connection) from a client that reads them: all answered.
    The server paces a client's connection (its next requests wait while the answers are
    behind), where it used to cut the connection off as not reading, failing every call on it."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=["auth"])
            name = "u" * 900_000
            await session.call("auth", "login", name)
            answers: list[str] = await asyncio.gather(
                *(session.call("auth", "whoami", timeout_ms=60_000) for _ in range(100))
            )
            assert answers == [name] * 100
            assert await session.call("auth", "whoami") == name

    run_async(scenario())


def test_manager_restart_keeps_the_cluster(tmp_path: Path) -> None:
    """While the manager is down, sessions keep being served; restarted on its address from its
    SQLite store, it takes the servers back, opens new sessions and moves old ones."""
    running = Cluster(tmp_path, certs_dir=make_certs(tmp_path / "certs"), transport="tls")
    running.start()
    try:
        run_async(_restart_manager_under_load(running))
    finally:
        running.stop()


async def _restart_manager_under_load(cluster: Cluster) -> None:
    async with cluster.connect() as client:
        session = await client.open_session(parts=PARTS)
        async with CartLoad(session, writers=2) as load:
            await load.wait_for(40, what="writes before the manager stops")
            cluster.processes["manager"].terminate()
            assert await asyncio.to_thread(cluster.wait_exit, "manager") == 0
            await load.wait_for(40, what="writes while the manager is down")
            cluster.restart_manager()
            await cluster.wait_active(SERVERS)
            await load.wait_for(40, what="writes after the restart")
        await load.check_exactly_once()
        other = await client.open_session(parts=["cart"])
        assert await other.call("cart", "add", {"sku": "new"}) == 1
        reply = await cluster.admin(MoveSession(session_id=session.id))
        assert reply.ok and reply.queued == len(PARTS)


BLOCKING_APP = (
    COUNTER_APP
    + """

@app.handler("counter", "stall")
def stall(counter: Counter, seconds: float) -> tuple[Counter, int]:
    time.sleep(seconds)  # Blocks the server's event loop: what a handler must never do.
    counter.value += 1
    return counter, counter.value
"""
)


def test_a_call_that_stalls_every_server_it_runs_on_takes_down_two_at_most(
    tmp_path: Path,
) -> None:
    """A handler blocks the event loop 3 s, past the 1 s failure timeout: its server is declared
    dead, and the client sends the call on to the promoted replica, where it blocks again.
    Before the bound (`ClientConfig.call_servers_lost_max`, 2), the call went from server to
    server until its deadline (59 failovers in 60 s on five servers, and the counter reset to 0
    on the way). Now it fails with SERVERS_LOST once two servers were lost under it, having run
    on those two only; the third copy keeps the acknowledged writes and serves the next call.
    It holds them because the promoted replica ran nothing until another replica held what it
    took over (`failover_catch_up_ms`): the writes come right after the session opens, and
    without it a replica still connecting held none of them when the second server stalled (the
    counter read 1, in one CI run of ten)."""
    (tmp_path / "blocking_app.py").write_text(BLOCKING_APP)
    servers = (*SERVERS, "s9")
    cluster = Cluster(
        tmp_path,
        certs_dir=make_certs(tmp_path / "certs"),
        transport="tls",
        servers=servers,
        app="blocking_app:app",
        app_dir=tmp_path,
    )
    cluster.start()

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=["counter"])
            for expected in range(1, 6):
                assert await session.call("counter", "add", 1) == expected
            with pytest.raises(RequestFailedError, match="servers-lost") as failed:
                await session.call("counter", "stall", 3.0, timeout_ms=60_000)
            assert failed.value.why is client_events.RequestFailedWhy.SERVERS_LOST
            # The two stalled servers come back meanwhile; the part never left the third copy.
            await asyncio.sleep(4)
            assert await session.call("counter", "add", 1) == 6

    try:
        run_async(scenario(), timeout_s=90)
        stalls = {
            server: cluster.log(server).count("handler counter.stall ran") for server in servers
        }
        deaths = cluster.log("manager").count("ServerDeclaredDead server_id=")
    finally:
        cluster.stop()
    assert sorted(stalls.values()) == [0, 0, 1, 1], stalls
    # Each stalled server was declared dead; another one only if this machine starved it.
    assert deaths >= 2
