"""Telemetry the runtime measures for the cores: a server's load, a client's transport counters.

`LoadSampler` runs in every server process. Each `load_report_interval_ms` it hands the core a
`LoadReport`: the process's CPU use (psutil, in cores: 1.0 is one core busy) and the machine's
(a share of all its cores), the machine's memory use, the process's I/O rate, how many requests
wait inside the core (queued at a handoff target, answers held for replication, forwarded), the
p99 of the request latency, the error ratio and the request rate, and the p99 of the event
loop's lag.

Request latency is measured around execution: the driver notes when the frames it feeds arrived
(`NodeDriver.input_received_s`), and each `RequestExecuted` event, which the core emits once the
answer is queued, closes a sample. A driver without that note falls back to the time the
handler itself ran, measured by wrapping each part's handler (`timed_parts`). The loop lag (how
late a due callback runs) is reported apart, as `loop_lag_us_p99`: it is what every frame waits
before it is read at all, and a stalled loop shows there first.

A handler that runs `SLOW_HANDLER_MS` or longer is logged at WARNING, naming it: handlers run on
the server's event loop, so nothing else is served meanwhile and no heartbeat goes out, and one
that blocks it past the manager's failure timeout gets the server declared dead (its parts fail
over, and the client sends the call again to the next primary, which runs it too).

`PathSampler` runs in every client. Each interval it reads the path statistics of the client's
connections to servers (QUIC: qh3's loss recovery and qlog counters; TLS: the kernel's
TCP_INFO) and hands them to the client core as `TransportCounters`, which turns two readings
into loss, retransmissions and throughput for the path samples its PINGs carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import psutil  # type: ignore[import-untyped]  # psutil ships no type stubs

from forehand.core import ClientCore, ServerCore, server_events
from forehand.core._part import HandlerResult, PartSpec
from forehand.core._pool import TransportCounters
from forehand.core.messages import LoadReport
from forehand.runtime.transport import PathStats
from forehand.wire import ResponseStatus

__all__ = [
    "LATENCY_SAMPLES_MAX",
    "LOOP_LAG_PROBE_INTERVAL_MS",
    "LOOP_LAG_SAMPLES_MAX",
    "LoadSampler",
    "PathSampler",
    "percentile_99",
    "timed_parts",
    "transport_counters",
]

LOOP_LAG_PROBE_INTERVAL_MS = 20
"""How often the load sampler measures how late the event loop runs a due callback."""
LOOP_LAG_SAMPLES_MAX = 250
"""Lag samples the p99 is taken over (a sliding window of about five seconds), so that one
stall of the machine is not read as a trend."""
LATENCY_SAMPLES_MAX = 4096
"""Request latency samples kept per report interval (the newest); the p99 is taken over them."""
SLOW_HANDLER_MS = 250
"""A handler run this long or longer is logged at WARNING (at most once a second)."""
SLOW_HANDLER_LOG_INTERVAL_S = 1.0
"""The least time between two slow-handler warnings of one server."""

_log = logging.getLogger(__name__)


def percentile_99(samples: deque[int] | list[int]) -> int:
    """The 99th percentile (nearest rank) of `samples`, 0 when there are none."""
    if not samples:
        return 0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, (99 * len(ordered)) // 100)]


class _HandlerClock:
    """The duration of the last handler run, shared by the wrapped handlers of one server, and
    when it last warned of a slow one."""

    __slots__ = ("last_us", "slow_runs", "warned_s")

    def __init__(self) -> None:
        self.last_us = 0
        self.slow_runs = 0
        self.warned_s = -SLOW_HANDLER_LOG_INTERVAL_S

    def slow(self, part: str, op: str, elapsed_us: int) -> None:
        """A run of `SLOW_HANDLER_MS` or longer: counted, and logged unless one was lately."""
        self.slow_runs += 1
        now_s = time.monotonic()
        if now_s - self.warned_s < SLOW_HANDLER_LOG_INTERVAL_S:
            return
        self.warned_s = now_s
        _log.warning(
            "handler %s.%s ran %.3f s on the server's event loop: nothing else was served "
            "meanwhile and no heartbeat went out; a handler that blocks the loop past the "
            "manager's failure timeout (failure_timeout_ms, 3 s by default) gets the server "
            "declared dead, and the call is sent again to the next primary (%d slow run(s) "
            "so far)",
            part,
            op,
            elapsed_us / 1e6,
            self.slow_runs,
        )


def timed_parts(
    parts: Mapping[str, PartSpec], clock: _HandlerClock | None = None
) -> tuple[dict[str, PartSpec], _HandlerClock]:
    """`parts` with each handler wrapped to time its runs, and the clock they write to."""
    clock = clock if clock is not None else _HandlerClock()
    wrapped = {
        name: replace(spec, handler=_timed(name, spec.handler, clock))
        for name, spec in parts.items()
    }
    return wrapped, clock


def _timed(
    part: str, handler: Callable[[Any, str, bytes], HandlerResult], clock: _HandlerClock
) -> Callable[[Any, str, bytes], HandlerResult]:
    slow_us = SLOW_HANDLER_MS * 1000

    def run(state: Any, op: str, payload: bytes) -> HandlerResult:
        started_ns = time.perf_counter_ns()
        try:
            return handler(state, op, payload)
        finally:
            elapsed_us = clock.last_us = (time.perf_counter_ns() - started_ns) // 1000
            if elapsed_us >= slow_us:
                clock.slow(part, op, elapsed_us)

    return run


class LoadSampler:
    """Samples a server's load and hands the core a `LoadReport` every interval (see the module
    docstring). Subscribe it to the driver's events; `run()` until cancelled."""

    event_types: frozenset[type] = frozenset({server_events.RequestExecuted})
    """The events it reads (`NodeDriver.subscribe`): the driver hands it no other."""

    def __init__(
        self,
        driver: Any,
        interval_ms: int,
        *,
        handler_clock: _HandlerClock | None = None,
        process: psutil.Process | None = None,
    ) -> None:
        assert interval_ms >= 1, interval_ms
        self._driver = driver
        self._interval_s = interval_ms / 1000
        self._handler_clock = handler_clock if handler_clock is not None else _HandlerClock()
        self._process = process if process is not None else psutil.Process()
        self._requests = 0
        self._errors = 0
        self._latencies_us: deque[int] = deque(maxlen=LATENCY_SAMPLES_MAX)
        self._lags_us: deque[int] = deque(maxlen=LOOP_LAG_SAMPLES_MAX)
        self._cpu_s = self._cpu_seconds()
        psutil.cpu_percent(interval=None)  # Starts the machine-wide measurement interval.
        self._io_bytes = self._io_bytes_total()
        self._wall_s = time.monotonic()

    def __call__(self, event: object) -> None:
        if type(event) is not server_events.RequestExecuted:
            return
        self._requests += 1
        if event.status != ResponseStatus.OK:
            self._errors += 1
        self._latencies_us.append(self._latency_us())

    def _latency_us(self) -> int:
        handler_us = self._handler_clock.last_us
        received_s = getattr(self._driver, "input_received_s", 0.0)
        if not received_s:
            return handler_us
        waited_s = asyncio.get_running_loop().time() - received_s
        if waited_s > self._interval_s:
            # A timer, not a frame, released this answer: the note is of an older input.
            return handler_us
        return max(handler_us, round(waited_s * 1_000_000))

    async def measure_lag(self) -> None:
        """Sample the event loop's lag until cancelled."""
        loop = asyncio.get_running_loop()
        interval_s = LOOP_LAG_PROBE_INTERVAL_MS / 1000
        while True:
            due_s = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self._lags_us.append(max(0, round((loop.time() - due_s) * 1_000_000)))

    async def run(self) -> None:
        """Report the load every interval until cancelled."""
        lag = asyncio.get_running_loop().create_task(self.measure_lag())
        try:
            while True:
                await asyncio.sleep(self._interval_s)
                report = self.sample()
                self._driver.command(_load_command(report))
        finally:
            lag.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag

    def sample(self) -> LoadReport:
        """The load since the previous sample; starts the next interval."""
        cpu_s, io_bytes, wall_s = self._cpu_seconds(), self._io_bytes_total(), time.monotonic()
        elapsed_s = max(wall_s - self._wall_s, 1e-6)
        core = getattr(self._driver, "core", None)
        report = LoadReport(
            cpu_utilization=round((cpu_s - self._cpu_s) / elapsed_s, 3),
            queue_depth=core.requests_waiting_count if isinstance(core, ServerCore) else 0,
            latency_us_p99=percentile_99(self._latencies_us),
            error_ratio=self._errors / self._requests if self._requests else 0.0,
            requests_per_second=self._requests / elapsed_s,
            memory_utilization=round(psutil.virtual_memory().percent / 100, 4),
            io_bytes_per_second=max(0, io_bytes - self._io_bytes) / elapsed_s,
            loop_lag_us_p99=percentile_99(self._lags_us),
            machine_cpu_utilization=round(psutil.cpu_percent(interval=None) / 100, 4),
        )
        self._cpu_s, self._io_bytes, self._wall_s = cpu_s, io_bytes, wall_s
        self._requests = self._errors = 0
        self._latencies_us.clear()
        return report

    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def _io_bytes_total(self) -> int:
        """Bytes the process read and wrote: every read and write system call on Linux
        (read_chars/write_chars: files, pipes, sockets), storage I/O elsewhere; 0 if unknown."""
        try:
            counters = self._process.io_counters()
        except (psutil.AccessDenied, AttributeError, NotImplementedError):
            return 0
        read = getattr(counters, "read_chars", counters.read_bytes)
        written = getattr(counters, "write_chars", counters.write_bytes)
        return int(read + written)


def _load_command(report: LoadReport) -> Callable[[ServerCore, int], None]:
    def command(core: ServerCore, now_us: int) -> None:
        core.report_load(report)

    return command


def transport_counters(stats: PathStats) -> TransportCounters | None:
    """The counters of `stats` the client core reads, or None when the stack gives no packet
    counts. TCP has no cumulative loss count, so retransmitted segments stand for lost ones."""
    sent = stats.packets_sent_count
    retransmitted = stats.packets_retransmitted_count
    if sent is None or retransmitted is None:
        return None
    lost = stats.packets_lost_count if stats.source != "tcp_info" else retransmitted
    return TransportCounters(
        packets_sent_count=sent,
        packets_lost_count=lost if lost is not None else retransmitted,
        packets_retransmitted_count=retransmitted,
        bytes_count=(stats.bytes_sent_count or 0) + (stats.bytes_received_count or 0),
    )


class PathSampler:
    """Reads the transport counters of a client's server connections every interval and hands
    them to its `ClientCore` (see the module docstring); `run()` until cancelled."""

    def __init__(self, driver: Any, interval_ms: int, *, manager_id: str) -> None:
        assert interval_ms >= 1, interval_ms
        self._driver = driver
        self._interval_s = interval_ms / 1000
        self._manager_id = manager_id

    async def run(self) -> None:
        """Sample every interval until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            self.sample()

    def sample(self) -> int:
        """Hand the core one reading per connected server; how many were handed."""
        driver = self._driver
        handed = 0
        for node in driver.connected_peers():
            if node == self._manager_id:
                continue
            stats = driver.path_stats(node)
            counters = None if stats is None else transport_counters(stats)
            if counters is not None:
                driver.command(_counters_command(node, counters))
                handed += 1
        return handed


def _counters_command(node: str, counters: TransportCounters) -> Callable[[ClientCore, int], None]:
    def command(core: ClientCore, now_us: int) -> None:
        core.record_transport_counters(node, counters, now_us=now_us)

    return command
