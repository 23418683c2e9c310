"""The demo's SLO probe: how long each server takes to answer, measured from outside.

A server's SLO in the demo is on its response time: it is in breach when its answers take longer
than `slo_ms`. Once parts have been handed off a degraded server serves few requests, so its
clients' latencies no longer tell how it is doing; the probe does. Per server it keeps one
`forehand/1` client connection (TLS, verified against the cluster CA, HELLO/WELCOME like any
client) and sends PING every `interval_ms`; the PONG comes back through the same event loop that
serves requests, so its round trip is what a request would wait. The SLO is on the tail: the
server breaches it once `breach_samples_min` round trips within `breach_window_ms` take longer
than `slo_ms` (one slow answer may be the machine's hiccup; several in a row of seconds are the
server's tail), and the breach is dated at the first of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from forehand.errors import ConfigError
from forehand.runtime.config import parse_address
from forehand.runtime.transport import Connection, Credentials, TransportError, create_transport
from forehand.wire import PROTOCOL_VERSION, Hello, Ping, Pong, Welcome

__all__ = ["ProbeConfig", "ServerProbe"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeConfig:
    """How the probe measures and what counts as a breach."""

    interval_ms: int = 100
    """Pause between the answer to one PING and the next PING."""
    slo_ms: float = 200.0
    """A round trip longer than this is over the SLO."""
    breach_samples_min: int = 2
    """Round trips over the SLO, within `breach_window_ms`, that make a breach."""
    breach_window_ms: int = 2_000
    """The span those round trips must fall in."""
    timeout_ms: int = 2_000
    """A PING unanswered this long counts as a round trip of this length."""
    samples_max: int = 4096
    """Round trips kept per server (the oldest go first)."""

    def __post_init__(self) -> None:
        values = (
            self.interval_ms,
            self.breach_samples_min,
            self.breach_window_ms,
            self.timeout_ms,
            self.samples_max,
        )
        if min(values) < 1:
            raise ConfigError("ProbeConfig values must be positive")
        if self.slo_ms <= 0 or self.slo_ms >= self.timeout_ms:
            raise ConfigError("ProbeConfig needs 0 < slo_ms < timeout_ms")


@dataclass(slots=True)
class ServerProbe:
    """Probes one server until `stop()`; `samples` are (loop time s, round trip ms)."""

    server_id: str
    address: str
    ca_path: Path
    config: ProbeConfig
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    breach_at_s: float | None = None
    """Loop time of the first round trip of the first breach, once one happened."""
    connected: bool = False
    """Whether the probe holds a connection now."""
    _over_s: deque[float] = field(default_factory=deque)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start probing in a task of the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop probing and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def latest_ms(self, *, window_s: float, now_s: float) -> float | None:
        """The longest round trip of the last `window_s`, or None without samples."""
        recent = [rtt for at_s, rtt in self.samples if at_s >= now_s - window_s]
        return max(recent) if recent else None

    def _record(self, at_s: float, rtt_ms: float) -> None:
        self.samples.append((at_s, rtt_ms))
        while len(self.samples) > self.config.samples_max:
            self.samples.popleft()
        if rtt_ms <= self.config.slo_ms or self.breach_at_s is not None:
            return
        over = self._over_s
        over.append(at_s)
        while over and over[0] < at_s - self.config.breach_window_ms / 1000:
            over.popleft()
        if len(over) >= self.config.breach_samples_min:
            self.breach_at_s = over[0]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        transport = create_transport(
            "tls", credentials=Credentials(ca_certificate_path=self.ca_path)
        )
        host, port = parse_address(self.address, where=f"address of {self.server_id}")
        try:
            connection = await transport.connect(host, port, server_id=self.server_id)
        except TransportError:
            return
        try:
            connection.send_frame(
                Hello(versions=(PROTOCOL_VERSION,), client_id=os.urandom(16), credentials=())
            )
            if not isinstance(await connection.receive(), Welcome):
                return
            self.connected = True
            sequence = 0
            while not connection.is_closed:
                sequence += 1
                sent_s = loop.time()
                rtt_ms = await self._ping(connection, sequence)
                self._record(sent_s, rtt_ms)
                await asyncio.sleep(self.config.interval_ms / 1000)
        except TransportError:
            return
        finally:
            self.connected = False
            connection.close()
            await connection.wait_closed()

    async def _ping(self, connection: Connection, sequence: int) -> float:
        """One round trip in ms; the timeout when no PONG comes in time."""
        loop = asyncio.get_running_loop()
        sent_s = loop.time()
        connection.send_frame(Ping(sequence=sequence, sent_us=0))
        try:
            async with asyncio.timeout(self.config.timeout_ms / 1000):
                while True:
                    frame = await connection.receive()
                    if isinstance(frame, Pong) and frame.sequence == sequence:
                        return (loop.time() - sent_s) * 1000
        except TimeoutError:
            return float(self.config.timeout_ms)
