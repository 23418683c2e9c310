"""The one driver shape shared by every sans-IO core (STYLE.md rule 2).

A core is fed inputs and drained of outputs by whoever drives it: the asyncio runtime in
production, the simulator in tests. It never reads a clock, touches a socket or a file, or calls a
store. Inputs: `receive_message(message, source=..., now_us=...)`, `handle_timer(now_us=...)`,
`store_result(result, now_us=...)` and the core's own command verbs. Outputs are pulled:
`messages_to_send()`, `store_requests()`, `next_event()` and `timer_us()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import msgspec

__all__ = [
    "ConnectionCloseRequested",
    "ConnectionLost",
    "CLIENT_NODE_PREFIX",
    "ConnectionOpened",
    "CoreDriver",
    "NodeId",
    "Outbound",
]

NodeId = str
"""The name of a node (a manager, server or client process), as drivers route it."""
CLIENT_NODE_PREFIX = "~client-"
"""Node ids the runtime gives accepted client connections start with this; no certificate name
(a manager's or server's node id) can."""


class Outbound(msgspec.Struct, frozen=True, kw_only=True):
    """A message a core wants delivered; the driver owns the connection it travels on.

    A msgspec Struct rather than a dataclass: cores build a few per request, and a frozen
    dataclass's `__init__` costs about nine times as much.
    """

    destination: NodeId
    """The node the message is addressed to."""
    message: object
    """The message itself: a `forehand.wire` frame or a cluster message of `forehand.core`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOpened:
    """An input, not a message on the wire: the driver's connection to `peer` is up.

    The driver delivers it through `receive_message(ConnectionOpened(peer=...), source=peer, ...)`
    once the transport (and its TLS handshake) is established, before any frame from the peer.
    """

    peer: NodeId
    """The node at the other end of the connection."""
    origin: str = ""
    """Where an accepted client connection comes from, as the manager paces opens by it
    (`ManagerConfig.open_rate_per_origin`): its IP address, or the /64 prefix of an IPv6 one.
    Empty for cluster links, connections this node dialed and transports without addresses."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLost:
    """An input, not a message on the wire: the driver's connection to `peer` is gone.

    Delivered through `receive_message(ConnectionLost(peer=...), source=peer, ...)` when the
    transport closes, times out or fails to connect. Messages sent to `peer` afterwards make the
    driver connect again.
    """

    peer: NodeId
    """The node at the other end of the connection."""
    reason: str = ""
    """Why it broke, for traces and events: `timeout`, `refused`, `reset`, `peer-crashed`, ..."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionCloseRequested:
    """An output, not a message on the wire: the core asks the driver to close a connection.

    A core queues it as `Outbound(destination=peer, message=ConnectionCloseRequested(...))`, right
    after the `Error` frame that tells the peer why. The driver sends everything queued before it
    to `peer`, then closes that one connection (only that one) and delivers `ConnectionLost` back
    to the core as for any other close. Two processes may share a node id (a second one started
    by mistake): a close asked for while the driver feeds the core one connection's frames closes
    that connection, and when it is not the one the core's messages to `peer` go by, the core
    hears no `ConnectionLost` (its peer is still connected, by the other).
    """

    peer: NodeId
    """The node whose connection to close; equal to the Outbound's destination."""
    error_code: int
    """The `forehand.wire.ErrorCode` the preceding `Error` frame carried."""
    reason: str = ""
    """Human-readable detail, for traces."""


@runtime_checkable
class CoreDriver(Protocol):
    """What every core exposes to the runtime and to the simulator."""

    @property
    def node_id(self) -> NodeId:
        """This core's own node name."""
        ...

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        """Feed one message that arrived from `source`."""
        ...

    def handle_timer(self, *, now_us: int) -> None:
        """Run whatever is due at `now_us`; the driver calls it at or after `timer_us()`."""
        ...

    def store_result(self, result: object, *, now_us: int) -> None:
        """Feed the result of a store request this core emitted earlier."""
        ...

    def messages_to_send(self) -> list[Outbound]:
        """Drain the messages produced since the last call, in the order they must be sent."""
        ...

    def store_requests(self) -> list[object]:
        """Drain the store requests produced since the last call, in order."""
        ...

    def next_event(self) -> object | None:
        """Pop the oldest event for the application or operator, or None when there is none."""
        ...

    def timer_us(self) -> int | None:
        """The earliest time this core wants `handle_timer`, or None when nothing is pending."""
        ...
