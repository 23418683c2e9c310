"""A drain on a fleet of two: the drained server stays the replica nobody else can be.

Draining one of two servers moves its primaries to the other, which cannot also be their
replica. The drain used to drop the replica roles it could not move, so every `replicated`
write then waited for an acknowledgement no server would send (its calls timed out), and an
undrain did not bring the replicas back. The drained server now keeps those roles until another
server can take them, and writes go on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from forehand.runtime.admin import Drain, Status, Undrain

if TYPE_CHECKING:
    from tests.runtime._cluster import CartLoad, Cluster, eventually, make_certs, run_async
else:
    from _cluster import CartLoad, Cluster, eventually, make_certs, run_async

PARTS = ["auth", "cart"]
SERVERS = ("s1", "s2")


def test_replicated_writes_go_on_through_a_drain_of_one_of_two_servers(tmp_path: Path) -> None:
    """Under load, drain the cart's primary: every part moves to the other server, writes keep
    being acknowledged (each once), and after the undrain writes still go on."""
    cluster = Cluster(
        tmp_path, certs_dir=make_certs(tmp_path / "certs"), transport="tls", servers=SERVERS
    )
    cluster.start()
    try:
        run_async(_drain_under_load(cluster))
    finally:
        cluster.stop()


async def _drain_under_load(cluster: Cluster) -> None:
    async with cluster.connect() as client:
        session = await client.open_session(parts=PARTS)
        drained = session.placements()["cart"].primary
        other = next(s for s in SERVERS if s != drained)

        def moved_off() -> bool:
            return all(p.primary == other for p in session.placements().values())

        async with CartLoad(session, writers=2) as load:
            await load.wait_for(20, what="writes before the drain")
            reply = await cluster.admin(Drain(server_id=drained))
            assert reply.ok, reply.detail
            await eventually(
                moved_off, what=f"every part of the session on {other}", state=session.placements
            )
            await load.wait_for(40, what="writes after the drain")
            status = await cluster.admin(Status())
            states = {s.server_id: s.map_state for s in status.servers}
            assert states[drained] == "draining"
            assert (await cluster.admin(Undrain(server_id=drained))).ok
            await cluster.wait_active(SERVERS)
            await load.wait_for(20, what="writes after the undrain")
        await load.check_exactly_once()
