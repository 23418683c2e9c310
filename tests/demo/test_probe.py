"""The SLO probe measures round trips through a server's event loop and dates the breach."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from forehand.demo import ProbeConfig, ServerProbe
from forehand.errors import ConfigError
from forehand.runtime import (
    Connection,
    Credentials,
    Listener,
    TLSTransport,
    make_cluster_certs,
    run,
)
from forehand.runtime.faultproxy import PathFaults, TCPFaultProxy
from forehand.wire import Hello, Ping, Pong, Welcome

HOST = "127.0.0.1"
HANG_TIMEOUT_S = 30.0
"""A test still running after this long is hung; not a timing claim."""


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cluster CA and a certificate for server s1."""
    directory = tmp_path_factory.mktemp("probe-certs")
    make_cluster_certs(directory, ["s1"], days=2)
    return directory


async def _serve(listener: Listener) -> None:
    async def answer(connection: Connection) -> None:
        async for frame in connection:
            if connection.is_closed:
                return
            if isinstance(frame, Hello):
                connection.send_frame(
                    Welcome(
                        version=1,
                        server_id="s1",
                        map_version=1,
                        frame_bytes_max=1 << 20,
                        idle_timeout_ms=30_000,
                    )
                )
            elif isinstance(frame, Ping):
                connection.send_frame(Pong(sequence=frame.sequence, sent_us=frame.sent_us))

    async with asyncio.TaskGroup() as group:
        async for connection in listener:
            group.create_task(answer(connection))


def test_slow_answers_make_a_breach_dated_at_its_first_sample(certs_dir: Path) -> None:
    """Behind a proxy adding 40 ms each way, a 50 ms SLO is breached, from the first sample."""
    config = ProbeConfig(interval_ms=10, slo_ms=50.0, breach_samples_min=3, timeout_ms=1_000)
    # Every round trip is slow here, so the breach is dated at the very first one.

    async def main() -> None:
        listener = await TLSTransport(Credentials.for_node(certs_dir, "s1")).listen(HOST, 0)
        serving = asyncio.create_task(_serve(listener))
        proxy = TCPFaultProxy(target_host=HOST, target_port=listener.port, rng=random.Random(1))
        await proxy.start()
        proxy.set_faults(PathFaults(delay_ms=40.0))
        probe = ServerProbe(
            server_id="s1",
            address=f"{HOST}:{proxy.port}",
            ca_path=certs_dir / "ca.pem",
            config=config,
        )
        probe.start()
        while len(probe.samples) < 5:
            await asyncio.sleep(0.01)
        await probe.stop()
        await proxy.close()
        await listener.close()
        await serving
        assert all(rtt_ms >= 80.0 - 5.0 for _, rtt_ms in probe.samples)
        assert probe.breach_at_s == probe.samples[0][0]
        assert not probe.connected

    async def guarded() -> None:
        async with asyncio.timeout(HANG_TIMEOUT_S):
            await main()

    run(guarded())


def test_a_breach_needs_several_slow_samples_within_the_window() -> None:
    """Slow samples far apart are no breach; two within the window date it at the first."""
    probe = ServerProbe(
        server_id="s1",
        address="127.0.0.1:1",
        ca_path=Path("ca.pem"),
        config=ProbeConfig(slo_ms=100.0, breach_samples_min=2, breach_window_ms=1_000),
    )
    breaches = []
    samples = [(1.0, 150.0), (2.5, 20.0), (3.0, 101.0), (3.5, 30.0), (3.9, 2e3), (4.0, 500.0)]
    for at_s, rtt_ms in samples:
        probe._record(at_s, rtt_ms)
        breaches.append(probe.breach_at_s)
    assert breaches == [None, None, None, None, 3.0, 3.0]
    assert probe.latest_ms(window_s=0.25, now_s=4.0) == 2000.0


def test_probe_config_is_checked() -> None:
    """An SLO at or above the timeout could never be told from a lost answer."""
    with pytest.raises(ConfigError):
        ProbeConfig(slo_ms=2_000.0, timeout_ms=2_000)
