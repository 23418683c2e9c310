"""NodeDriver's receive path: the frames of one read reach the core in order, fed with the time
they arrived, which never goes back."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from forehand.core import ConnectionCloseRequested, ConnectionLost, ConnectionOpened
from forehand.runtime import make_cluster_certs
from forehand.runtime._memory import MemoryNetwork, MemoryTransport
from forehand.runtime.node import (
    DIAL_FAILURES_WARNED,
    DriverConfig,
    NodeDriver,
    Route,
    _dial_failure_level,
)
from forehand.runtime.transport import CertificateNotVerifiedError, Credentials, HandshakeError
from forehand.wire import Error, ErrorCode, PeerRole, Ping

if TYPE_CHECKING:
    from tests.runtime._cluster import eventually, run_async
    from tests.runtime._runtime_helpers import RecordingCore
else:
    from _runtime_helpers import RecordingCore

    from _cluster import eventually, run_async

PINGS = 200
"""Pings one command sends: more than one read carries, so batches and reads both occur."""


def _send_pings(core: RecordingCore, now_us: int, *, destination: str) -> None:
    for sequence in range(PINGS):
        core.send(destination, Ping(sequence=sequence, sent_us=now_us))


def test_frames_of_a_read_are_fed_in_order_at_their_arrival_time(tmp_path: Path) -> None:
    """Every ping of a burst reaches the server's core once, in order, after the link opened,
    fed times that never go back and lie between the send and the last arrival."""
    certs = tmp_path / "certs"
    make_cluster_certs(certs, ("s1", "s2"), days=1)
    run_async(_burst(certs))


@dataclass(frozen=True, slots=True)
class _Link:
    """Two drivers over the memory network: s2 dials s1's cluster listener."""

    receiver_core: RecordingCore
    receiver: NodeDriver
    sender: NodeDriver


@contextlib.asynccontextmanager
async def _linked(
    certs: Path,
    receiver_core: RecordingCore | None = None,
    sender_config: DriverConfig | None = None,
) -> AsyncIterator[_Link]:
    """s1 listening for cluster links and s2 able to reach it, both started; all closed after."""
    network = MemoryNetwork()
    receiver_core = receiver_core or RecordingCore("s1")
    receiver_transport = MemoryTransport(Credentials.for_node(certs, "s1"), network=network)
    receiver = NodeDriver(
        receiver_core, resolve=lambda node: [], cluster_transport=receiver_transport
    )
    receiver.start()
    listener = await receiver_transport.listen(
        "s1.test", 0, peer_role=PeerRole.CLUSTER_NODE, require_client_certificate=True
    )
    receiver.serve(listener)
    route = [Route(host="s1.test", port=listener.port, server_id="s1", cluster=True)]
    sender = NodeDriver(
        RecordingCore("s2"),
        resolve=lambda node: route,
        cluster_transport=MemoryTransport(Credentials.for_node(certs, "s2"), network=network),
        config=sender_config or DriverConfig(),
    )
    sender.start()
    try:
        yield _Link(receiver_core=receiver_core, receiver=receiver, sender=sender)
    finally:
        await sender.close()
        await receiver.close()
        await listener.close()


async def _burst(certs: Path) -> None:
    async with _linked(certs) as link:
        receiver_core = link.receiver_core
        sent_us = link.receiver.now_us()
        link.sender.command(functools.partial(_send_pings, destination="s1"))
        await eventually(lambda: len(receiver_core.pings()) == PINGS, what="every ping")
        last_us = link.receiver.now_us()
        assert [ping.sequence for ping in receiver_core.pings()] == list(range(PINGS))
        kinds = [type(message) for message, _ in receiver_core.inbox]
        assert kinds == [ConnectionOpened] + [Ping] * PINGS
        times = [now_us for _, now_us in receiver_core.inbox]
        assert times == sorted(times)
        assert sent_us <= times[0] and times[-1] <= last_us


EARLY_S = 10.0
"""Clock resolution of the loop below: it runs a timer due within this much of now at once."""


class _CoarseClockLoop(asyncio.SelectorEventLoop):
    """asyncio's loop with a coarse clock (Windows' is 15.6 ms; uvloop's, milliseconds): it runs
    a timer up to its clock resolution early, as every asyncio loop may."""

    def __init__(self) -> None:
        super().__init__()
        self._clock_resolution = EARLY_S


class _TimerCore(RecordingCore):
    """Asks for one timer at `due_us` and records the time it was handled at."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.due_us: int | None = None
        self.timer_now_us: int | None = None

    def handle_timer(self, *, now_us: int) -> None:
        self.timer_now_us = now_us
        self.due_us = None

    def timer_us(self) -> int | None:
        return self.due_us


def test_time_fed_after_an_early_timer_never_goes_back() -> None:
    """A timer the loop runs early is handled at the time the core asked for, and nothing fed
    to the core afterwards (here a command) is given an earlier time."""
    with asyncio.Runner(loop_factory=_CoarseClockLoop) as runner:
        timer_now_us, command_now_us = runner.run(_early_timer())
    assert command_now_us >= timer_now_us


async def _early_timer() -> tuple[int, int]:
    core = _TimerCore("s1")
    driver = NodeDriver(core, resolve=lambda node: [])
    driver.start()
    try:
        due_us = driver.now_us() + int(EARLY_S * 1_000_000) // 2
        core.due_us = due_us
        driver.command(lambda core, now_us: None)
        await eventually(lambda: core.timer_now_us is not None, what="the timer ran")
        assert core.timer_now_us == due_us
        command_now_us: int = driver.command(lambda core, now_us: now_us)
        return due_us, command_now_us
    finally:
        await driver.close()


LAST_WORDS = 3
"""Pings a peer sends in the same turn as its ERROR and close."""


def _ping_then_refuse(core: RecordingCore, now_us: int, *, destination: str) -> None:
    for sequence in range(LAST_WORDS):
        core.send(destination, Ping(sequence=sequence, sent_us=now_us))
    code, reason = ErrorCode.PROTOCOL_ERROR, "refused after answering"
    core.send(destination, Error(code=code, reason=reason))
    core.send(
        destination, ConnectionCloseRequested(peer=destination, error_code=int(code), reason=reason)
    )


def test_frames_a_peer_sent_before_its_error_reach_the_core(tmp_path: Path) -> None:
    """What a peer sent before closing with an ERROR (they arrive in one read, the ERROR last)
    reaches the core, the ERROR too, and only then the loss of the connection."""
    certs = tmp_path / "certs"
    make_cluster_certs(certs, ("s1", "s2"), days=1)
    run_async(_last_words(certs))


async def _last_words(certs: Path) -> None:
    async with _linked(certs) as link:
        receiver_core = link.receiver_core
        link.sender.command(functools.partial(_send_pings, destination="s1"))
        await eventually(lambda: len(receiver_core.pings()) == PINGS, what="the link is up")
        receiver_core.inbox.clear()
        link.sender.command(functools.partial(_ping_then_refuse, destination="s1"))
        await eventually(
            lambda: any(isinstance(m, ConnectionLost) for m, _ in receiver_core.inbox),
            what="the receiver heard the connection go",
            state=lambda: receiver_core.inbox,
        )
        kinds = [type(message) for message, _ in receiver_core.inbox]
        assert kinds == [Ping] * LAST_WORDS + [Error, ConnectionLost]
        assert [ping.sequence for ping in receiver_core.pings()] == list(range(LAST_WORDS))


def test_a_stalled_loop_is_reported_once_with_its_length() -> None:
    """A callback that holds the loop for 1.5 s: the stall reporter hears that stretch once
    (the watch's tick and the core's late timer both look), about as long as it was."""
    stalls = run_async(_stalled_loop())
    long_ones = [stall for stall in stalls if stall >= 1_200_000]
    assert len(long_ones) == 1, stalls
    assert long_ones[0] <= 5_000_000


@contextlib.asynccontextmanager
async def _watched() -> AsyncIterator[tuple[_TimerCore, NodeDriver, list[int]]]:
    """A driver of a timer core whose stall reports go to the list yielded."""
    core = _TimerCore("manager")
    driver = NodeDriver(core, resolve=lambda node: [])
    driver.start()
    stalls: list[int] = []
    try:
        driver.watch_stalls(stalls.append)
        yield core, driver, stalls
    finally:
        await driver.close()


async def _stalled_loop() -> list[int]:
    async with _watched() as (core, driver, stalls):
        await asyncio.sleep(0.3)
        # The core's timer comes due during the stall too: it and the watch's tick both look.
        core.due_us = driver.now_us() + 100_000
        driver.command(lambda core, now_us: None)
        await asyncio.sleep(0.05)
        time.sleep(1.5)  # A callback that runs long: nothing else runs meanwhile.
        await eventually(lambda: core.timer_now_us is not None, what="the late timer ran")
        await asyncio.sleep(0.3)
        return stalls


def test_a_timer_asked_for_in_the_past_is_no_stall() -> None:
    """A core that asks for work already due (two seconds ago) gets its timer at once, and
    that is not reported as a stall of the loop (which would excuse every server's silence)."""
    stalls = run_async(_past_due_timer())
    assert all(stall < 1_500_000 for stall in stalls), stalls


async def _past_due_timer() -> list[int]:
    async with _watched() as (core, driver, stalls):
        await asyncio.sleep(2.2)
        core.due_us = driver.now_us() - 2_000_000  # Due two seconds ago.
        driver.command(lambda core, now_us: None)
        await eventually(lambda: core.timer_now_us is not None, what="the timer ran")
        await asyncio.sleep(0.2)
        return stalls


def test_a_cluster_peer_that_cannot_be_reached_is_warned_of_every_fifth_dial(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A node that cannot reach a cluster peer (its manager, say) logs the failed dials at INFO,
    and the fifth in a row, the tenth, ... at WARNING, so that it shows where an operator looks
    without a peer's restart shouting. A certificate not verified is WARNING at once."""
    certs = tmp_path / "certs"
    make_cluster_certs(certs, ("s1", "s2"), days=1)
    with caplog.at_level(logging.INFO, logger="forehand.runtime.node"):
        run_async(_dial_nowhere(certs))
    failures = [r for r in caplog.records if "cannot connect to manager" in r.getMessage()]
    assert len(failures) >= DIAL_FAILURES_WARNED
    levels = [r.levelno for r in failures]
    expected = [
        logging.WARNING if (n + 1) % DIAL_FAILURES_WARNED == 0 else logging.INFO
        for n in range(len(failures))
    ]
    assert levels == expected
    refused = CertificateNotVerifiedError("certificate of manager at 127.0.0.1:7400 not verified")
    assert _dial_failure_level(refused, cluster=True, failures=0) == logging.WARNING
    assert _dial_failure_level(refused, cluster=True, failures=1) == logging.INFO
    # Another failed handshake (a peer restarting mid-way) counts as any failure.
    cut = HandshakeError("TLS handshake with 127.0.0.1:7400 failed: EOF")
    assert _dial_failure_level(cut, cluster=True, failures=0) == logging.INFO
    assert _dial_failure_level(cut, cluster=True, failures=4) == logging.WARNING
    assert _dial_failure_level(OSError("refused"), cluster=False, failures=4) == logging.INFO


async def _dial_nowhere(certs: Path) -> None:
    """s2 keeps sending to a manager nothing listens for, dialing it again after each backoff."""
    route = [Route(host="manager.test", port=1, server_id="manager", cluster=True)]
    sender = NodeDriver(
        RecordingCore("s2"),
        resolve=lambda node: route,
        cluster_transport=MemoryTransport(
            Credentials.for_node(certs, "s2"), network=MemoryNetwork()
        ),
        config=DriverConfig(dial_backoff_ms=1, dial_backoff_max_ms=2),
    )
    sender.start()
    try:
        for _ in range(400):
            sender.command(functools.partial(_send_pings, destination="manager"))
            await asyncio.sleep(0.005)
    finally:
        await sender.close()


class _RefusingCore(RecordingCore):
    """Refuses every cluster peer at its first message on a link, as a manager refuses a
    server's announcement (the link is up on both sides by then)."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self._refused_link = False

    def receive_message(self, message: object, *, source: str, now_us: int) -> None:
        super().receive_message(message, source=source, now_us=now_us)
        if isinstance(message, ConnectionOpened):
            self._refused_link = False
        elif isinstance(message, Ping) and not self._refused_link:
            self._refused_link = True
            self.send(source, Error(code=ErrorCode.PROTOCOL_ERROR, reason="not admitted"))
            self.send(
                source,
                ConnectionCloseRequested(
                    peer=source, error_code=int(ErrorCode.PROTOCOL_ERROR), reason="not admitted"
                ),
            )


def test_a_refused_cluster_peer_redials_after_a_growing_backoff(tmp_path: Path) -> None:
    """A peer that closes every link with an error once it is up (a manager refusing this
    server) is redialed after the dial backoff, doubling, not at once: a refused server used
    to redial its manager twice a second for as long as it ran. Over 1.5 s with a backoff of
    100 ms doubling to 400 ms that is a handful of links; at once, it was one a ping here (150)."""
    certs = tmp_path / "certs"
    make_cluster_certs(certs, ("s1", "s2"), days=1)
    opened = run_async(_refused_redials(certs))
    assert 2 <= opened <= 12, opened


async def _refused_redials(certs: Path) -> int:
    receiver_core = _RefusingCore("s1")
    config = DriverConfig(dial_backoff_ms=100, dial_backoff_max_ms=400)
    async with _linked(certs, receiver_core, config) as link:
        for _ in range(150):
            link.sender.command(functools.partial(_send_pings, destination="s1"))
            await asyncio.sleep(0.01)
    return sum(isinstance(message, ConnectionOpened) for message, _ in receiver_core.inbox)
