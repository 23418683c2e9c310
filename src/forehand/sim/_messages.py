"""Inputs the simulator itself gives to cores, beside the messages cores send each other.

`ConnectionLost` is what a core receives when the connection to a peer breaks: the simulated
equivalent of the runtime seeing a QUIC or TLS connection close. It lives here until the cores
define their own; a scenario can pass the cores' type through `Simulator(connection_lost=...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from forehand.core import NodeId

__all__ = ["ConnectionLost", "ConnectionLostFactory", "default_connection_lost"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLost:
    """The connection to `peer` broke; whatever was in flight on it is gone."""

    peer: NodeId
    """The node at the other end of the broken connection."""
    reason: str
    """Why it broke, for traces: `timeout`, `refused`, `reset`, `peer-crashed`, ..."""


ConnectionLostFactory = Callable[[NodeId, str], object]
"""Builds the message a core receives when its connection to a peer breaks: (peer, reason)."""


def default_connection_lost(peer: NodeId, reason: str) -> object:
    """The simulator's own `ConnectionLost` message."""
    return ConnectionLost(peer=peer, reason=reason)
