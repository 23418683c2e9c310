"""Cluster links carry cluster messages up to `CLUSTER_FRAME_BYTES_MAX` (32 MiB) both ways, on the
listeners and the transport a node process really uses, whatever its client-facing limit: a whole
shard map for a joining server (some 65,000 sessions of three parts already pass 1 MiB) and a
failover's map delta are single messages. A node driver that cannot encode a message (past that
bound) logs it and still sends the rest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pytest

from forehand.core import messages
from forehand.runtime import ClusterCertificates, NodeDriver, Route
from forehand.runtime.process import _listen, cluster_transport
from forehand.runtime.transport import CLUSTER_FRAME_BYTES_MAX
from forehand.wire import ClusterMessage, PeerRole, Ping

if TYPE_CHECKING:
    from tests.runtime._cluster import eventually
    from tests.runtime._runtime_helpers import HOST, RecordingCore, node_credentials, run_test
else:
    from _runtime_helpers import HOST, RecordingCore, node_credentials, run_test

    from _cluster import eventually

CLIENT_FRAME_BYTES_MAX = 65_536
"""The node's client-facing limit in these tests (what its WELCOME announces)."""
LONG = ClusterMessage(kind=1, body=b"\x07" * (3 << 20))
"""A cluster message of 3 MiB: three times the default frame bound."""


@pytest.mark.parametrize("transport_name", ["tls", "quic"])
def test_a_cluster_link_carries_a_message_past_the_default_bound_both_ways(
    certs: ClusterCertificates, transport_name: str
) -> None:
    """A node listening as `forehand manager` and `forehand server` do (`tls`: one listener
    shared with clients; `quic`: a TLS listener for cluster nodes), dialed as their drivers dial:
    a 3 MiB cluster message goes each way."""

    async def main() -> None:
        listeners = await _listen(
            transport_name,
            node_credentials(certs, "s1"),
            HOST,
            0,
            frame_bytes_max=CLIENT_FRAME_BYTES_MAX,
        )
        try:
            dialed = await cluster_transport(node_credentials(certs, "s2")).connect(
                HOST, listeners[0].port, server_id="s1", peer_role=PeerRole.CLUSTER_NODE
            )
            dialed.send_frame(LONG)
            accepted = await listeners[0].accept()
            assert accepted.peer_id == "s2"
            assert await accepted.receive() == LONG
            accepted.send_frame(LONG)
            assert await dialed.receive() == LONG
            for connection in (dialed, accepted):
                connection.close()
                await connection.wait_closed()
        finally:
            for listener in listeners:
                await listener.close()

    run_test(main())


def test_a_message_past_the_cluster_bound_is_logged_and_the_rest_still_go(
    certs: ClusterCertificates, caplog: pytest.LogCaptureFixture
) -> None:
    """A core's map delta longer than the cluster bound cannot be encoded: the driver logs it
    naming the destination, and the PING queued after it in the same turn still arrives."""
    too_long = messages.MapPublished(
        map_version=2, base_version=1, body=b"\x01" * (CLUSTER_FRAME_BYTES_MAX + 1)
    )

    async def main() -> None:
        receiver_core = RecordingCore("s1")
        receiver = NodeDriver(
            receiver_core,
            resolve=lambda node: [],
            cluster_transport=cluster_transport(node_credentials(certs, "s1")),
        )
        receiver.start()
        listeners = await _listen(
            "tls", node_credentials(certs, "s1"), HOST, 0, frame_bytes_max=65_536
        )
        receiver.serve(listeners[0])
        route = [Route(host=HOST, port=listeners[0].port, server_id="s1", cluster=True)]
        sender_core = RecordingCore("s2")
        sender = NodeDriver(
            sender_core,
            resolve=lambda node: route,
            cluster_transport=cluster_transport(node_credentials(certs, "s2")),
        )
        sender.start()
        try:
            ping = Ping(sequence=7, sent_us=0, telemetry=())
            sender_core.send("s1", Ping(sequence=6, sent_us=0, telemetry=()))
            sender.command(lambda core, now_us: None)  # Dials s1.
            await eventually(lambda: len(receiver_core.pings()) == 1, what="the first ping")
            sender_core.send("s1", too_long)
            sender_core.send("s1", ping)
            sender.command(lambda core, now_us: None)
            await eventually(lambda: len(receiver_core.pings()) == 2, what="the ping after it")
            await asyncio.sleep(0.1)
            assert not any(isinstance(m, messages.MapPublished) for m in receiver_core.messages())
        finally:
            await sender.close()
            await receiver.close()
            for listener in listeners:
                await listener.close()

    with caplog.at_level(logging.ERROR, logger="forehand.runtime.node"):
        run_test(main())
    assert any("cannot send" in r.message and "to s1" in r.message for r in caplog.records)
