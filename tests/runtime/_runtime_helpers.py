"""Helpers for runtime tests: transports by name, credentials, and a runner that catches hangs.

Every network test runs on 127.0.0.1 with ports the system picks. `run_test` runs a coroutine on
a fresh uvloop loop (through `forehand.runtime.loop.run`) under a generous timeout that only
catches hangs, and then checks that the coroutine left no task running.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from forehand.core._driver import Outbound
from forehand.runtime import (
    ClusterCertificates,
    Credentials,
    MemoryNetwork,
    MemoryTransport,
    QUICTransport,
    TLSTransport,
    Transport,
    run,
)
from forehand.wire import Ping

__all__ = [
    "HOST",
    "RecordingCore",
    "TRANSPORT_KINDS",
    "client_credentials",
    "make_transport",
    "node_credentials",
    "run_test",
]

HOST = "127.0.0.1"
TRANSPORT_KINDS = ("tls", "quic", "memory")
HANG_TIMEOUT_S = 20.0
"""A test coroutine still running after this long is hung; the bound is not a timing claim."""
T = TypeVar("T")


def run_test(coroutine: Coroutine[Any, Any, T], *, use_uvloop: bool = True) -> T:
    """Run `coroutine` to completion on a new loop; fail if it hangs or leaves anything behind.

    Leftover tasks fail the test. So do unclosed sockets and transports: their ResourceWarnings
    are collected while the loop closes and asserted on afterwards, because uvloop's close does
    not return when such a warning is raised as an error inside it.
    """

    async def guarded() -> T:
        async with asyncio.timeout(HANG_TIMEOUT_S):
            result = await coroutine
        await asyncio.sleep(0)
        leftover = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not leftover, f"tasks left running: {leftover}"
        return result

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        result = run(guarded(), use_uvloop=use_uvloop)
    leaks = [str(warning.message) for warning in caught if warning.category is ResourceWarning]
    assert not leaks, f"resources left open: {leaks}"
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return result


def make_transport(
    kind: str, credentials: Credentials, network: MemoryNetwork | None = None, **config: Any
) -> Transport:
    """A transport of `kind` with default settings, or with `config=` passed through."""
    factories: dict[str, Callable[..., Transport]] = {
        "tls": TLSTransport,
        "quic": QUICTransport,
    }
    if kind == "memory":
        return MemoryTransport(credentials, network=network, **config)
    return factories[kind](credentials, **config)


def node_credentials(certificates: ClusterCertificates, node: str) -> Credentials:
    """The credentials of `node` in `certificates`."""
    return Credentials.for_node(certificates.directory, node)


def client_credentials(certificates: ClusterCertificates) -> Credentials:
    """Credentials of a client that trusts the CA of `certificates` and has no certificate."""
    return Credentials.for_client(Path(certificates.directory))


class RecordingCore:
    """A core for NodeDriver tests: records every message it is fed, with the time it was fed
    at, and sends what the test queues with `send`."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.inbox: list[tuple[object, int]] = []
        self._outbox: list[Outbound] = []

    def receive_message(self, message: object, *, source: str, now_us: int) -> None:
        self.inbox.append((message, now_us))

    def handle_timer(self, *, now_us: int) -> None:
        return None

    def store_result(self, result: object, *, now_us: int) -> None:
        return None

    def messages_to_send(self) -> list[Outbound]:
        sent, self._outbox = self._outbox, []
        return sent

    def store_requests(self) -> list[object]:
        return []

    def next_event(self) -> object | None:
        return None

    def timer_us(self) -> int | None:
        return None

    def send(self, destination: str, message: object) -> None:
        """Queue `message` for `destination`; the driver takes it at its next drain."""
        self._outbox.append(Outbound(destination=destination, message=message))

    def messages(self) -> list[object]:
        """What the core was fed, in order, without the times."""
        return [message for message, _ in self.inbox]

    def pings(self) -> list[Ping]:
        """The PINGs the core was fed, in order."""
        return [message for message in self.messages() if isinstance(message, Ping)]
