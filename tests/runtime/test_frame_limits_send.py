"""A server's `core.frame_bytes_max` bounds what it accepts (WELCOME announces it), not what it
sends: three real servers set to 65,536 (TLS, and QUIC for clients) answer a call whose RESPONSE
is longer than that, since the client decodes with the default 1 MiB (docs/PROTOCOL.md 5.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from forehand.runtime.admin import Drain, Undrain

if TYPE_CHECKING:
    from tests.runtime._cluster import Cluster, eventually, make_certs, run_async
else:
    from _cluster import Cluster, eventually, make_certs, run_async

pytestmark = pytest.mark.slow

FRAME_BYTES_MAX = 65_536
"""The servers' configured frame_bytes_max, below the default 1 MiB."""
SKU_BYTES = 30_000
"""Each added item's name: one REQUEST fits the limit, three in one listing do not."""


@pytest.fixture(scope="module", params=["tls", "quic"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A manager and three servers set to FRAME_BYTES_MAX, real processes, over each transport
    clients use."""
    directory = tmp_path_factory.mktemp(f"frame-limits-send-{request.param}")
    running = Cluster(
        directory,
        certs_dir=make_certs(directory / "certs"),
        transport=request.param,
        server_settings=(f"core.frame_bytes_max={FRAME_BYTES_MAX}",),
    )
    running.start()
    yield running
    running.stop()


def test_an_answer_longer_than_the_servers_own_limit_is_sent(cluster: Cluster) -> None:
    """A cart listing longer than the server's 65,536 (each add well under it) is answered in
    full (the server's transport encoded with its receive limit, so the RESPONSE could not be
    sent and the call timed out)."""
    skus = [f"{index}-" + "s" * SKU_BYTES for index in range(3)]

    async def main() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(["cart"])
            for sku in skus:
                await session.call("cart", "add", {"sku": sku})
            assert await session.call("cart", "list") == dict.fromkeys(skus, 1)

    run_async(main())


def test_a_part_longer_than_the_limit_moves_on_a_drain(cluster: Cluster) -> None:
    """Draining the server of a cart whose log (3 x 30 KB) is longer than the servers' 65,536
    moves the cart, which keeps its items and takes writes: cluster connections decode with the
    default 1 MiB, on QUIC's cluster-only TLS listener and, with `tls`, on the shared listener
    for peers that present a cluster certificate (they used the client-facing limit, so the
    sealed log batch closed the connection and the handoff aborted)."""
    skus = [f"{index}-" + "s" * SKU_BYTES for index in range(3)]

    async def main() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(["cart"])
            for sku in skus:
                await session.call("cart", "add", {"sku": sku})
            drained = session.placements()["cart"].primary
            assert (await cluster.admin(Drain(server_id=drained))).ok
            try:
                await eventually(
                    lambda: session.placements()["cart"].primary != drained,
                    what=f"the cart off {drained}",
                    state=session.placements,
                )
                assert await session.call("cart", "add", {"sku": "after"}) == len(skus) + 1
                listing: dict[str, int] = await session.call("cart", "list")
                assert listing == {**dict.fromkeys(skus, 1), "after": 1}
            finally:
                assert (await cluster.admin(Undrain(server_id=drained))).ok

    run_async(main())
