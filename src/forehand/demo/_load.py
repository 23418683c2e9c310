"""The demo's load: hundreds of concurrent cart-example sessions through the client SDK.

`LoadGenerator` connects a few clients (each a `forehand.connect` client, one pooled connection
per server), opens `sessions` sessions over them with the cart example's three parts, and runs
one task per session that logs in, then issues requests in a loop with a random pause between
them: `cart.add` (a `replicated` write), `cart.list`, `feature/video.seek`, `auth.whoami` and
`feature/video.position`. Every call is recorded with its start time, latency and outcome; every
handoff event the SDK reports is recorded with the time it arrived.

Acknowledged writes are tracked honestly: each `cart.add` puts a unique product in the session's
cart, and the generator remembers those the server acknowledged. `verify()` reads every cart back
at the end: an acknowledged product that is missing is a lost write.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forehand.errors import ConfigError
from forehand.runtime.client import (
    CallError,
    Client,
    ForehandError,
    HandoffEvent,
    Session,
    connect,
)

__all__ = ["CallRecord", "HandoffRecord", "LoadConfig", "LoadGenerator", "Verification"]

PARTS = ("auth", "cart", "feature/video")
"""The cart example's parts; every session has all three."""
OPERATIONS: tuple[tuple[str, str, float], ...] = (
    ("cart", "add", 0.35),
    ("cart", "list", 0.2),
    ("feature/video", "seek", 0.2),
    ("auth", "whoami", 0.15),
    ("feature/video", "position", 0.1),
)
"""(part, operation, share of requests)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadConfig:
    """How much load, and how it is spread."""

    sessions: int = 200
    """Concurrent sessions."""
    clients: int = 4
    """Client processes' worth of connections (each its own client id and connection pool)."""
    pause_ms_mean: float = 400.0
    """Mean pause of a session between two requests (exponentially distributed)."""
    opening_concurrent_max: int = 20
    """Sessions being opened at once."""
    records_max: int = 1_000_000
    """Calls recorded at most; beyond, calls still run but are counted only."""
    seed: int = 1
    """Seeds the sessions' choices of operations and pauses."""

    def __post_init__(self) -> None:
        if min(self.sessions, self.clients, self.opening_concurrent_max, self.records_max) < 1:
            raise ConfigError("LoadConfig counts must be positive")
        if self.pause_ms_mean <= 0:
            raise ConfigError("LoadConfig.pause_ms_mean must be positive")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One call: when it started, how long it took, how it ended."""

    session: bytes
    """The session's id."""
    started_s: float
    """Loop time when the call was made."""
    latency_ms: float
    """Until the answer or the failure."""
    ok: bool
    """Whether it got a successful answer."""
    part: str
    """The part called."""
    server: str
    """The part's primary as the client knew it when the answer came."""
    error: str = ""
    """The exception's class and message, for a failed call."""


@dataclass(frozen=True, slots=True)
class HandoffRecord:
    """One handoff event of one session, with the time it arrived."""

    at_s: float
    """Loop time."""
    event: HandoffEvent
    """What the SDK reported."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Verification:
    """What reading every cart back found."""

    acknowledged: int
    """Products whose `cart.add` was acknowledged."""
    lost: int
    """Of those, products missing from their cart."""
    unreadable_sessions: int
    """Sessions whose cart could not be read back."""


@dataclass(slots=True)
class _SessionState:
    index: int
    session: Session
    client: Client
    acknowledged: set[str] = field(default_factory=set)
    added: int = 0


class LoadGenerator:
    """Opens the sessions, runs them, records what happened; see the module docstring."""

    def __init__(self, *, manager_address: str, ca_path: Path, config: LoadConfig) -> None:
        self.config = config
        """How much load."""
        self.calls: list[CallRecord] = []
        """Every call recorded, in completion order."""
        self.call_count = 0
        """Calls completed, recorded or not."""
        self.failed_count = 0
        """Calls that failed."""
        self.handoffs: list[HandoffRecord] = []
        """Every handoff event of every session, in arrival order."""
        self._manager_address = manager_address
        self._ca_path = ca_path
        self._clients: list[Client] = []
        self._sessions: list[_SessionState] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._rng = random.Random(config.seed)

    @property
    def session_count(self) -> int:
        """Sessions open."""
        return len(self._sessions)

    async def open(self) -> None:
        """Connect the clients and open every session (all three parts, logged in)."""
        for _ in range(self.config.clients):
            client = connect(self._manager_address, ca=self._ca_path)
            await client.start()
            self._clients.append(client)
        limit = asyncio.Semaphore(self.config.opening_concurrent_max)

        async def open_one(index: int) -> None:
            async with limit:
                client = self._clients[index % len(self._clients)]
                session = await client.open_session(PARTS)
                await session.call("auth", "login", f"user-{index}")
                state = _SessionState(index=index, session=session, client=client)
                session.on_handoff(self._on_handoff)
                self._sessions.append(state)

        async with asyncio.TaskGroup() as group:
            for index in range(self.config.sessions):
                group.create_task(open_one(index))
        self._sessions.sort(key=lambda state: state.index)

    def start(self) -> None:
        """Start one request loop per session."""
        loop = asyncio.get_running_loop()
        for state in self._sessions:
            rng = random.Random(self._rng.getrandbits(64))
            self._tasks.append(loop.create_task(self._run(state, rng)))

    async def stop(self) -> None:
        """Let every session finish its current call, then stop issuing."""
        self._stopping.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def close(self) -> None:
        """Stop and close every client (sessions stay open on the servers)."""
        await self.stop()
        for client in self._clients:
            await client.close()
        self._clients.clear()

    def _on_handoff(self, event: HandoffEvent) -> None:
        self.handoffs.append(HandoffRecord(asyncio.get_running_loop().time(), event))

    def primaries(self) -> Counter[str]:
        """How many parts each server is primary of, as the clients know it now."""
        counts: Counter[str] = Counter()
        for state in self._sessions:
            for placement in state.session.placements().values():
                counts[placement.primary] += 1
        return counts

    def parts_on(self, server_id: str) -> frozenset[tuple[bytes, str]]:
        """(session id, part) of every part whose primary is `server_id`, as clients know."""
        return frozenset(
            (state.session.id, part)
            for state in self._sessions
            for part, placement in state.session.placements().items()
            if placement.primary == server_id
        )

    async def _run(self, state: _SessionState, rng: random.Random) -> None:
        weights = [share for _, _, share in OPERATIONS]
        while not self._stopping.is_set():
            await self._pause(rng)
            if self._stopping.is_set():
                return
            part, op, _ = rng.choices(OPERATIONS, weights)[0]
            await self._call(state, part, op, self._payload(state, op, rng))

    async def _pause(self, rng: random.Random) -> None:
        pause_s = rng.expovariate(1000.0 / self.config.pause_ms_mean)
        try:
            async with asyncio.timeout(pause_s):
                await self._stopping.wait()
        except TimeoutError:
            return

    @staticmethod
    def _payload(state: _SessionState, op: str, rng: random.Random) -> Any:
        if op == "add":
            state.added += 1
            return {"sku": f"p{state.index}-{state.added}", "quantity": 1}
        if op == "seek":
            return rng.randrange(0, 3_600_000)
        return None

    async def _call(self, state: _SessionState, part: str, op: str, payload: Any) -> None:
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        sku = payload["sku"] if op == "add" else ""
        error = ""
        try:
            await state.session.call(part, op, payload)
        except (ForehandError, CallError) as failure:
            error = f"{type(failure).__name__}: {failure}"
        else:
            if sku:
                state.acknowledged.add(sku)
        latency_ms = (loop.time() - started_s) * 1000
        self.call_count += 1
        if error:
            self.failed_count += 1
        if len(self.calls) < self.config.records_max:
            primary = state.session.placements()[part].primary
            self.calls.append(
                CallRecord(state.session.id, started_s, latency_ms, not error, part, primary, error)
            )

    async def verify(self) -> Verification:
        """Read every cart back; count acknowledged products that are missing."""
        lost = unreadable = acknowledged = 0
        for state in self._sessions:
            acknowledged += len(state.acknowledged)
            try:
                items: dict[str, int] = await state.session.call(
                    "cart", "list", result_type=dict[str, int]
                )
            except (ForehandError, CallError):
                unreadable += 1
                continue
            lost += len(state.acknowledged - set(items))
        return Verification(acknowledged=acknowledged, lost=lost, unreadable_sessions=unreadable)
