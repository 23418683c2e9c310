"""A simulated connection between two nodes: two ordered lanes, a state, and what is stalled.

The node that sent first is the initiator (`first`), the other the acceptor (`second`). Each
direction is a lane with its own epoch: a delivery scheduled on a lane carries the lane's epoch,
and bumping the epoch drops whatever is still in flight on it. An abrupt break bumps both lanes;
a graceful close by one end bumps only the lane towards it, so what it sent still arrives.
"""

from __future__ import annotations

from collections import deque
from enum import Enum

from forehand.core import NodeId
from forehand.errors import LocalProtocolError

__all__ = ["CONNECTION_TRANSITIONS", "Connection", "ConnectionState", "Lane"]


class ConnectionState(Enum):
    """A connection carries traffic, or is gone and waiting for its ends to be told."""

    OPEN = "open"
    BROKEN = "broken"


CONNECTION_TRANSITIONS: dict[ConnectionState, frozenset[ConnectionState]] = {
    ConnectionState.OPEN: frozenset({ConnectionState.BROKEN}),
    ConnectionState.BROKEN: frozenset(),
}
"""Legal transitions: a connection breaks once and is never reused (a new one replaces it)."""


class Lane:
    """One direction of a connection."""

    __slots__ = ("epoch",)

    def __init__(self) -> None:
        self.epoch = 0
        """Bumped when the lane's in-flight messages are lost."""


class Connection:
    """One connection between two nodes, shared by both directions."""

    __slots__ = (
        "delivered",
        "first",
        "from_first",
        "from_second",
        "handshake_done",
        "notified_first",
        "notified_second",
        "opened_second",
        "pending_notices",
        "reopening",
        "second",
        "stall_generation",
        "stalled",
        "stalled_from_first",
        "stalled_from_second",
        "state",
        "told",
    )

    def __init__(self, first: NodeId, second: NodeId) -> None:
        self.first = first
        self.second = second
        self.from_first = Lane()
        self.from_second = Lane()
        self.state = ConnectionState.OPEN
        self.handshake_done = False
        self.opened_second = False
        self.notified_first = False
        self.notified_second = False
        self.pending_notices = 0
        self.stall_generation = 0
        self.stalled: deque[tuple[NodeId, NodeId, object]] = deque()
        self.stalled_from_first = 0
        self.stalled_from_second = 0
        self.delivered: set[NodeId] = set()
        """Ends whose notice of the break has reached their inbox."""
        self.told: set[NodeId] = set()
        """Ends whose core has handled its notice of the break."""
        self.reopening: list[tuple[NodeId, int, NodeId, object]] = []
        """(source, its incarnation, target, message) of the sends of an end that handled its
        notice while the other's was still on its way: they open the next connection once this
        one is forgotten, unless their sender crashed or restarted meanwhile."""

    def move_to(self, state: ConnectionState) -> None:
        """Change state along `CONNECTION_TRANSITIONS`, or raise `LocalProtocolError`."""
        if state not in CONNECTION_TRANSITIONS[self.state]:
            raise LocalProtocolError(f"a {self.state.value} connection cannot become {state.value}")
        self.state = state

    def peer_of(self, endpoint: NodeId) -> NodeId:
        """The other end."""
        return self.second if endpoint == self.first else self.first

    def lane_from(self, source: NodeId) -> Lane:
        """The lane that carries what `source` sends."""
        return self.from_first if source == self.first else self.from_second

    def stalled_from(self, source: NodeId) -> int:
        """How many messages from `source` wait on this stalled connection."""
        return self.stalled_from_first if source == self.first else self.stalled_from_second

    def knows(self, endpoint: NodeId) -> bool:
        """Whether `endpoint` has learned of the connection: the initiator always has."""
        return endpoint == self.first or self.opened_second

    def mark_notified(self, endpoint: NodeId) -> bool:
        """Record that `endpoint` is being told of the loss; False if it already was."""
        if endpoint == self.first:
            if self.notified_first:
                return False
            self.notified_first = True
            return True
        if self.notified_second:
            return False
        self.notified_second = True
        return True
