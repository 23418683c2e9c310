"""A real Forehand cluster on loopback and a session load for the cluster benchmarks.

`bench_handoff.py`, `bench_failover.py` and `bench_redis.py` start a manager and servers as
separate processes (`forehand.demo`'s `DemoCluster`: certificates, TOML files, ready files, stop
by pid), open sessions of the cart example through the client SDK, and run one task per session
that calls `cart.add` in a loop with a pause between calls. Every answer and every handoff event
is recorded, with `time.monotonic()`, from the SDK clients' event streams: a `ResponseReceived`
names the server that answered, which is how a benchmark sees the first answer from a handoff
target or from a promoted backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import forehand
from forehand.core import ClientConfig
from forehand.core import client_events as events
from forehand.demo._cluster import ClusterConfig, DemoCluster

__all__ = ["REPO", "CallRecord", "SessionLoad", "SessionTrace", "running_cluster"]

REPO = Path(__file__).resolve().parent.parent
PARTS = ("cart",)
"""Each benchmark session has the cart example's replicated part only: an acknowledged add
survives its server's crash, so a failover loses nothing acknowledged."""
OPEN_CONCURRENT_MAX = 32
"""Sessions opened at once."""
READ_BACK_ATTEMPTS_MAX = 20
READ_BACK_PAUSE_S = 0.25
"""Reading a cart back after a failover: attempts, and the pause between them."""


@contextlib.asynccontextmanager
async def running_cluster(
    *,
    servers: tuple[str, ...],
    manager_core: Mapping[str, Any],
    server_core: Mapping[str, Any],
    transport: str = "tls",
    replica_count: int = 2,
) -> AsyncIterator[DemoCluster]:
    """A manager and `servers` as processes in a temporary directory, stopped (by pid) on exit."""
    with tempfile.TemporaryDirectory(prefix="forehand-bench-") as directory:
        cluster = DemoCluster(
            Path(directory),
            ClusterConfig(
                server_ids=servers,
                app_dir=REPO,
                transport=transport,
                manager_core=dict(manager_core),
                manager_placement={"replica_count": replica_count},
                server_core=dict(server_core),
                log_level="warning",
            ),
        )
        try:
            await cluster.start()
            yield cluster
        finally:
            await asyncio.to_thread(cluster.stop)


@dataclass(slots=True, kw_only=True)
class CallRecord:
    """One call a session made."""

    done_s: float
    """When its answer (or its failure) came, `time.monotonic()`."""
    latency_s: float
    """From the call to its answer."""
    ok: bool
    """Whether it was answered OK."""


@dataclass(slots=True, kw_only=True)
class SessionTrace:
    """What one session saw, from the client's event stream."""

    responses: list[tuple[float, str]] = field(default_factory=list)
    """(time, server) of every response."""
    started: list[tuple[float, str, str]] = field(default_factory=list)
    """(time, source, target) of every HANDOFF the client received."""
    followed: list[tuple[float, str]] = field(default_factory=list)
    """(time, target) of every handoff the client completed (RESUME_OK)."""
    relocated: list[tuple[float, str]] = field(default_factory=list)
    """(time, server) of every relocation after a lost connection (failover)."""
    urgent: asyncio.Event = field(default_factory=asyncio.Event)
    """Set on a placement change: the session calls again at once instead of pausing, so the
    first answer from the new server is not delayed by the load's pause."""

    def first_response_after(self, after_s: float, *, server: str | None = None) -> float | None:
        """The time of the first response after `after_s` (from `server`, if given)."""
        for done_s, source in self.responses:
            if done_s > after_s and (server is None or source == server):
                return done_s
        return None


class SessionLoad:
    """`sessions` sessions over `clients` SDK clients, each calling `cart.add` in a loop."""

    def __init__(
        self,
        cluster: DemoCluster,
        *,
        sessions: int,
        clients: int,
        pause_ms: float,
        client_config: ClientConfig,
        seed: int = 1,
        item: Mapping[str, Any] | None = None,
    ) -> None:
        self.cluster = cluster
        self.session_count = sessions
        self.client_count = clients
        self.pause_s = pause_ms / 1000
        self.client_config = client_config
        self.rng = random.Random(seed)
        self.clients: list[forehand.Client] = []
        self.sessions: list[forehand.Session] = []
        self.traces: dict[bytes, SessionTrace] = {}
        self.item: dict[str, Any] = (
            dict(item) if item is not None else {"sku": "bench", "quantity": 1}
        )
        self.calls: list[CallRecord] = []
        self.failures: list[str] = []
        self.acknowledged: dict[bytes, int] = {}
        """Per session, the units its acknowledged adds put in its cart."""
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> SessionLoad:
        for _ in range(self.client_count):
            client = forehand.connect(
                self.cluster.manager_address,
                ca=self.cluster.ca_path,
                transport=self.cluster.config.transport,
                config=self.client_config,
            )
            await client.start()
            client._driver.subscribe(self._on_event)
            self.clients.append(client)
        limit = asyncio.Semaphore(OPEN_CONCURRENT_MAX)

        async def open_one(index: int) -> forehand.Session:
            async with limit:
                client = self.clients[index % self.client_count]
                return await client.open_session(parts=PARTS)

        self.sessions = list(
            await asyncio.gather(*(open_one(n) for n in range(self.session_count)))
        )
        for session in self.sessions:
            self.traces.setdefault(session.id, SessionTrace())
        self._tasks = [asyncio.create_task(self._loop(session)) for session in self.sessions]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
        for client in self.clients:
            await client.close()

    async def stop(self) -> None:
        """Stop the sessions' calls (the clients stay open, to read the carts back)."""
        self._stop.set()
        for trace in self.traces.values():
            trace.urgent.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_event(self, event: object) -> None:
        now_s = time.monotonic()
        kind = type(event)
        if kind is events.ResponseReceived:
            assert isinstance(event, events.ResponseReceived)
            trace = self.traces.setdefault(event.session_id, SessionTrace())
            trace.responses.append((now_s, event.server))
        elif kind is events.HandoffStarted:
            assert isinstance(event, events.HandoffStarted)
            trace = self.traces.setdefault(event.session_id, SessionTrace())
            target = event.targets[0] if event.targets else ""
            trace.started.append((now_s, event.source, target))
            trace.urgent.set()
        elif kind is events.HandoffFollowed:
            assert isinstance(event, events.HandoffFollowed)
            trace = self.traces.setdefault(event.session_id, SessionTrace())
            trace.followed.append((now_s, event.target))
            trace.urgent.set()
        elif kind is events.PartRelocated:
            assert isinstance(event, events.PartRelocated)
            trace = self.traces.setdefault(event.session_id, SessionTrace())
            trace.relocated.append((now_s, event.server))
            trace.urgent.set()

    async def _loop(self, session: forehand.Session) -> None:
        trace = self.traces[session.id]
        item = self.item
        quantity = int(item["quantity"])
        # Spread the sessions' first calls over one pause so they do not call in lockstep.
        await asyncio.sleep(self.rng.uniform(0, self.pause_s))
        while not self._stop.is_set():
            started_s = time.monotonic()
            try:
                await session.call("cart", "add", item)
                ok = True
                self.acknowledged[session.id] = self.acknowledged.get(session.id, 0) + quantity
            except forehand.ForehandError as error:
                ok = False
                if not self._stop.is_set():
                    self.failures.append(f"{session.id.hex()}: {error}")
            done_s = time.monotonic()
            self.calls.append(CallRecord(done_s=done_s, latency_s=done_s - started_s, ok=ok))
            if trace.urgent.is_set():
                trace.urgent.clear()
                continue
            pause_s = self.rng.expovariate(1 / self.pause_s) if self.pause_s > 0 else 0.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause_s):
                    await trace.urgent.wait()

    async def lost_units(self) -> int:
        """After the load stopped: acknowledged units missing from the carts, read back."""
        lost = 0
        for session in self.sessions:
            listing = await self._read_cart(session)
            lost += max(0, self.acknowledged.get(session.id, 0) - sum(listing.values()))
        return lost

    async def _read_cart(self, session: forehand.Session) -> dict[str, int]:
        """The session's cart; a client still locating a failed-over part is asked again."""
        for _ in range(READ_BACK_ATTEMPTS_MAX - 1):
            try:
                listing: dict[str, int] = await session.call(
                    "cart", "list", result_type=dict[str, int]
                )
                return listing
            except forehand.RequestFailedError:
                await asyncio.sleep(READ_BACK_PAUSE_S)
        return await session.call("cart", "list", result_type=dict[str, int])

    def primaries(self) -> dict[bytes, str]:
        """The server each session's cart part is served by, as its client knows it."""
        return {session.id: session.placements()["cart"].primary for session in self.sessions}

    def latencies_ms(self, start_s: float, end_s: float) -> list[float]:
        """Latencies of the calls answered OK between `start_s` and `end_s`, in ms."""
        return [
            call.latency_s * 1000
            for call in self.calls
            if call.ok and start_s <= call.done_s < end_s
        ]

    def failed_between(self, start_s: float, end_s: float) -> int:
        """Calls that failed between `start_s` and `end_s`."""
        return sum(1 for call in self.calls if not call.ok and start_s <= call.done_s < end_s)
