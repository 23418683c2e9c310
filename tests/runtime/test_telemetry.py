"""Server load sampling (psutil, loop lag, request latency); transport path counters under loss."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest

from forehand.core import server_events
from forehand.core._part import HandlerResult, PartSpec
from forehand.core._pool import PathStats as CorePathStats
from forehand.core.messages import PartRef
from forehand.runtime import ClusterCertificates, QUICTransport
from forehand.runtime._telemetry import (
    SLOW_HANDLER_MS,
    LoadSampler,
    timed_parts,
    transport_counters,
)
from forehand.runtime.faultproxy import Direction, PathFaults, UDPFaultProxy
from forehand.wire import Ping, ResponseStatus

if TYPE_CHECKING:
    from tests.runtime._runtime_helpers import (
        HOST,
        client_credentials,
        node_credentials,
        run_test,
    )
else:
    from _runtime_helpers import HOST, client_credentials, node_credentials, run_test

REF = PartRef(session_id=bytes(16), part="cart")


def _executed(status: ResponseStatus) -> server_events.RequestExecuted:
    return server_events.RequestExecuted(
        node="s1", ref=REF, request_id=1, map_version=1, log_index=None, status=status
    )


def _burn_cpu(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def test_cpu_and_io_of_a_busy_process_exceed_an_idle_interval(tmp_path: Path) -> None:
    """An interval spent burning CPU reports more CPU than one spent asleep, and one spent
    writing a file reports more I/O; memory is a share of the machine's."""
    sampler = LoadSampler(SimpleNamespace(core=None), 100)
    time.sleep(0.2)
    idle = sampler.sample()
    _burn_cpu(0.3)
    busy = sampler.sample()
    with (tmp_path / "data").open("wb") as file:
        for _ in range(64):
            file.write(os.urandom(64 << 10))
        file.flush()
        os.fsync(file.fileno())
    written = sampler.sample()
    assert busy.cpu_utilization > idle.cpu_utilization
    assert written.io_bytes_per_second > idle.io_bytes_per_second
    assert 0.0 < idle.memory_utilization < 1.0
    assert busy.machine_cpu_utilization > 0.0  # this process alone kept a core busy


def test_request_latency_comes_from_handler_execution_and_errors_are_counted() -> None:
    """Without the driver's arrival note, a request's latency is its handler's run time: a
    handler that works 30 ms makes a p99 of at least 30 ms; one error in two is a ratio of 0.5."""

    def slow(state: Any, op: str, payload: bytes) -> HandlerResult:
        _burn_cpu(0.03)
        return HandlerResult(state=state, status=ResponseStatus.OK, result=b"")

    parts, clock = timed_parts({"cart": PartSpec(handler=slow, initial_state=lambda: 0)})
    sampler = LoadSampler(SimpleNamespace(core=None), 100, handler_clock=clock)
    parts["cart"].handler(0, "add", b"")
    sampler(_executed(ResponseStatus.OK))
    sampler(_executed(ResponseStatus.APP_ERROR))
    report = sampler.sample()
    assert report.latency_us_p99 >= 30_000
    assert report.error_ratio == 0.5
    assert report.requests_per_second > 0
    assert sampler.sample().latency_us_p99 == 0  # each interval starts afresh


def test_a_slow_handler_is_logged_at_warning_by_name_at_most_once_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that runs `SLOW_HANDLER_MS` or longer blocks the server's loop: the first such
    run is logged at WARNING, naming the part and op and the failure timeout it risks; a second
    within the second is counted, not logged again; a quick one is neither."""

    def slow(state: Any, op: str, payload: bytes) -> HandlerResult:
        time.sleep(SLOW_HANDLER_MS / 1000 if op == "slow" else 0)
        return HandlerResult(state=state, status=ResponseStatus.OK, result=b"")

    parts, clock = timed_parts({"doc": PartSpec(handler=slow, initial_state=lambda: 0)})
    with caplog.at_level(logging.WARNING, logger="forehand.runtime._telemetry"):
        parts["doc"].handler(0, "quick", b"")
        assert clock.slow_runs == 0 and not caplog.records
        parts["doc"].handler(0, "slow", b"")
        parts["doc"].handler(0, "slow", b"")
    assert clock.slow_runs == 2
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "handler doc.slow ran 0.2" in record.getMessage()
    assert "failure_timeout_ms" in record.getMessage()


def test_a_stalled_loop_shows_in_loop_lag_not_request_latency() -> None:
    """Blocking the event loop for 150 ms gives a lag sample of at least 130 ms (the probe was
    due 20 ms in), reported as `loop_lag_us_p99`, while no request means no latency."""

    async def main() -> None:
        sampler = LoadSampler(SimpleNamespace(core=None), 100)
        lag = asyncio.get_running_loop().create_task(sampler.measure_lag())
        await asyncio.sleep(0.05)
        time.sleep(0.15)  # the stall
        await asyncio.sleep(0.05)
        lag.cancel()
        report = sampler.sample()
        assert report.loop_lag_us_p99 >= 130_000
        assert report.latency_us_p99 == 0

    run_test(main())


def test_quic_loss_is_measured_under_udp_loss(certs: ClusterCertificates) -> None:
    """Through a proxy that drops 20% of datagrams each way, qh3's recovery declares packets
    lost, and two readings of the counters give a positive loss ratio and throughput."""

    async def main() -> None:
        listener = await QUICTransport(node_credentials(certs, "s1")).listen(HOST, 0)
        proxy = UDPFaultProxy(target_host=HOST, target_port=listener.port, rng=random.Random(5))
        await proxy.start()
        client = await QUICTransport(client_credentials(certs)).connect(
            HOST, proxy.port, server_id="s1"
        )
        serving = await listener.accept()
        path = CorePathStats(samples_max=4)
        before = transport_counters(client.path_stats())
        assert before is not None
        path.add_counters(before, now_us=1)
        proxy.set_faults(PathFaults(loss_probability=0.2), direction=None)
        count = 300
        for sequence in range(count):
            client.send_frame(Ping(sequence=sequence, sent_us=sequence, telemetry=()))
            if sequence % 20 == 0:
                await asyncio.sleep(0.005)
        received = 0
        while received < count:
            received += len(await serving.receive_frames())
        stats = client.path_stats()
        after = transport_counters(stats)
        assert after is not None
        path.add_counters(after, now_us=1_000_001)
        assert stats.packets_lost_count is not None and stats.packets_lost_count > 0
        assert path.loss_ratio is not None and path.loss_ratio > 0.0
        assert path.retransmissions is not None and path.retransmissions > 0
        assert path.throughput_bytes_per_second is not None
        assert path.throughput_bytes_per_second > 0
        assert proxy.stats(Direction.UPSTREAM).lost_count > 0
        client.close()
        await client.wait_closed()
        await proxy.close()
        await listener.close()

    run_test(main())
