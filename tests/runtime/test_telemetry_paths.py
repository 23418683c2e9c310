"""End to end over real connections: a client's path reports reach the manager in heartbeats.

The manager, two servers and a client run in this process on one loop, over TLS or QUIC, with
the cart example app. The manager is the real `run_manager` with its core subclassed only to
record the heartbeats it receives. The client serves its part on one server (the primary) and,
with `prewarm_probe_targets`, connects to the other (the part's backup) and probes it; both
paths must reach the manager, the probed one marked as a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import pytest

import forehand
from forehand.core import ClientConfig, ManagerConfig, ManagerCore, ServerConfig
from forehand.core.messages import HeartbeatReported, PathReport, decode_cluster_message
from forehand.runtime import process
from forehand.runtime.config import ManagerProcessConfig, ServerProcessConfig
from forehand.runtime.node import CORE_MESSAGE_KIND
from forehand.wire import ClusterMessage

if TYPE_CHECKING:
    from tests.runtime._cluster import REPO, eventually, make_certs, run_async
else:
    from _cluster import REPO, eventually, make_certs, run_async

SERVER_IDS = ("s1", "s2")


class _RecordingManagerCore(ManagerCore):
    """The real manager core; it also keeps every `HeartbeatReported` it receives."""

    heartbeats: ClassVar[list[HeartbeatReported]] = []

    def receive_message(self, message: object, *, source: str, now_us: int) -> None:
        if type(message) is ClusterMessage and message.kind == CORE_MESSAGE_KIND:
            decoded = decode_cluster_message(message.body)
            if type(decoded) is HeartbeatReported:
                _RecordingManagerCore.heartbeats.append(decoded)
        super().receive_message(message, source=source, now_us=now_us)


async def _ready(path: Path) -> str:
    await eventually(path.exists, what=f"{path.name} written")
    return path.read_text().strip()


async def _open_cart(client: forehand.Client) -> forehand.Session:
    """Open a session once both servers are in the map (the first opens may find none)."""
    for _ in range(100):
        with contextlib.suppress(forehand.ForehandError):
            session = await client.open_session(["cart"])
            if session.placements()["cart"].backups:
                return session
            await session.close()
        await asyncio.sleep(0.1)
    raise AssertionError("no session with a replica could be opened")


def _paths() -> list[PathReport]:
    return [path for beat in _RecordingManagerCore.heartbeats for path in beat.paths]


async def _scenario(directory: Path, certs_dir: Path, transport: str) -> None:
    stop = asyncio.Event()
    manager_config = ManagerProcessConfig(
        certs_dir=certs_dir,
        listen="127.0.0.1:0",
        transport=transport,
        store="memory",
        ready_file=directory / "manager.ready",
        core=ManagerConfig(heartbeat_interval_ms=100, overload_threshold=100.0),
    )
    tasks = [asyncio.create_task(process.run_manager(manager_config, stop=stop))]
    try:
        manager_address = await _ready(directory / "manager.ready")
        for server_id in SERVER_IDS:
            config = ServerProcessConfig(
                server_id=server_id,
                certs_dir=certs_dir,
                app="examples.cart.app:app",
                app_dir=REPO,
                listen="127.0.0.1:0",
                manager=manager_address,
                transport=transport,
                load_report_interval_ms=100,
                ready_file=directory / f"{server_id}.ready",
                core=ServerConfig(server_id=server_id, heartbeat_interval_ms=100),
            )
            tasks.append(asyncio.create_task(process.run_server(config, stop=stop)))
        for server_id in SERVER_IDS:
            await _ready(directory / f"{server_id}.ready")
        client_config = ClientConfig(
            ping_interval_ms=100, probe_interval_ms=200, prewarm_probe_targets=True
        )
        async with forehand.connect(
            manager_address, ca=certs_dir / "ca.pem", transport=transport, config=client_config
        ) as client:
            session = await _open_cart(client)
            await session.call("cart", "add", {"sku": "apple"})
            placement = session.placements()["cart"]
            primary, backup = placement.primary, placement.backups[0]

            def both_reported() -> bool:
                paths = _paths()
                return any(p.server_id == primary and not p.probe for p in paths) and any(
                    p.server_id == backup and p.probe for p in paths
                )

            await eventually(
                both_reported,
                what=f"paths to {primary} (serving) and {backup} (probed) in heartbeats",
                state=lambda: (
                    len(_RecordingManagerCore.heartbeats),
                    sorted({(p.server_id, p.probe) for p in _paths()}),
                    {s: (v.srtt_us, v.loss_ratio) for s, v in client.core.path_stats().items()},
                ),
            )
            serving = [p for p in _paths() if p.server_id == primary and not p.probe][-1]
            probed = [p for p in _paths() if p.server_id == backup and p.probe][-1]
            for report in (serving, probed):
                # In one process on uvloop's millisecond clock a loopback PONG may read 0 us.
                assert 0 <= report.rtt_us_min <= report.rtt_us
                assert 0.0 <= report.loss_ratio <= 1.0
            buckets = {p.client_bucket for p in _paths()}
            assert len(buckets) == 1  # one client, one bucket, on both servers

            def throughput_reported() -> bool:
                return any(
                    p.server_id == primary and p.throughput_bytes_per_second > 0 for p in _paths()
                )

            await eventually(throughput_reported, what="the serving path's throughput")
            assert all(len(beat.paths) <= 64 for beat in _RecordingManagerCore.heartbeats)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Certificates and the cluster key, shared by both transports."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.mark.parametrize("transport", ["tls", "quic"])
def test_paths_of_serving_and_probed_servers_reach_the_manager(
    tmp_path: Path, certs_dir: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """PathReports for the serving server and for the probed backup arrive in heartbeats."""
    _RecordingManagerCore.heartbeats.clear()
    monkeypatch.setattr(process, "ManagerCore", _RecordingManagerCore)
    run_async(_scenario(tmp_path, certs_dir, transport))
