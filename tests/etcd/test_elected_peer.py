"""A server's driver follows the newest manager: a newer link from an elected peer replaces the
older one (whose process may be a frozen former leader); other peers keep their first link."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from forehand.core import ConnectionLost, ConnectionOpened
from forehand.runtime import make_cluster_certs
from forehand.runtime._memory import MemoryNetwork, MemoryTransport
from forehand.runtime.node import NodeDriver, Route
from forehand.runtime.transport import Credentials
from forehand.wire import PeerRole, Ping

if TYPE_CHECKING:
    from tests.runtime._cluster import eventually, run_async
    from tests.runtime._runtime_helpers import RecordingCore
else:
    from _runtime_helpers import RecordingCore

    from _cluster import eventually, run_async


def _pinged(core: RecordingCore, sequence: int) -> bool:
    return any(ping.sequence == sequence for ping in core.pings())


def _ping(core: RecordingCore, now_us: int, *, destination: str, sequence: int) -> None:
    core.send(destination, Ping(sequence=sequence, sent_us=0))


@pytest.mark.parametrize("elected", [True, False])
def test_a_newer_manager_link_replaces_the_older_one(tmp_path: Path, elected: bool) -> None:
    """Two processes named `manager` reach a server one after the other: with `manager` an
    elected peer, the server's core hears the first link lost and the second opened, and what
    it sends goes to the second process while the first one's link is closed; without, the
    first link keeps carrying it."""
    certs = tmp_path / "certs"
    make_cluster_certs(certs, ("s1", "manager"), days=1)
    run_async(_two_managers(certs, elected=elected))


async def _two_managers(certs: Path, *, elected: bool) -> None:
    network = MemoryNetwork()
    server_core = RecordingCore("s1")
    server_transport = MemoryTransport(Credentials.for_node(certs, "s1"), network=network)
    server = NodeDriver(
        server_core,
        resolve=lambda node: [],
        cluster_transport=server_transport,
        elected_peers=("manager",) if elected else (),
    )
    server.start()
    listener = await server_transport.listen(
        "s1.test", 0, peer_role=PeerRole.CLUSTER_NODE, require_client_certificate=True
    )
    server.serve(listener)
    route = [Route(host="s1.test", port=listener.port, server_id="s1", cluster=True)]
    managers: list[tuple[RecordingCore, NodeDriver]] = []
    try:
        for number in range(2):
            core = RecordingCore("manager")
            driver = NodeDriver(
                core,
                resolve=lambda node: route,
                cluster_transport=MemoryTransport(
                    Credentials.for_node(certs, "manager"), network=network
                ),
            )
            driver.start()
            managers.append((core, driver))
            driver.command(functools.partial(_ping, destination="s1", sequence=number))
            await eventually(
                functools.partial(_pinged, server_core, number), what=f"manager {number}"
            )
        notices = [
            type(m).__name__
            for m in server_core.messages()
            if isinstance(m, ConnectionOpened | ConnectionLost)
        ]
        server.command(functools.partial(_ping, destination="manager", sequence=99))
        newer, older = managers[1][0], managers[0][0]
        if elected:
            assert notices == ["ConnectionOpened", "ConnectionLost", "ConnectionOpened"]
            await eventually(lambda: _pinged(newer, 99), what="the newer manager hears the server")
            await eventually(
                lambda: any(isinstance(m, ConnectionLost) for m in older.messages()),
                what="the older manager's link closed",
            )
            assert not _pinged(older, 99)
        else:
            assert notices == ["ConnectionOpened"]
            await eventually(lambda: _pinged(older, 99), what="the first link carries it")
            assert not _pinged(newer, 99)
    finally:
        for _, driver in managers:
            await driver.close()
        await server.close()
        await listener.close()
