"""Server entries of the shard map, their states, and every legal state transition in one table.

A server joins ACTIVE. DRAINING keeps the parts it holds (the drain pins them as overrides, and
the manager hands them off) but receives no new ones. DEAD is declared by the manager when
heartbeats stop; its hash-placed parts fall to the next servers on the ring, which are their
replicas. Leaving removes the entry: only a DRAINING or DEAD server that no override names may
leave. A DRAINING entry says who drained it (`DrainCause`): an operator, or the manager's risk
policy, whose mark an operator's drain may take over.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from forehand.placement._errors import InvalidDeltaError

__all__ = [
    "SERVER_TRANSITIONS",
    "DrainCause",
    "ServerEntry",
    "ServerState",
    "ServerTransition",
    "next_server_state",
]


class ServerState(enum.Enum):
    """Where a server is in its life in the cluster."""

    ACTIVE = "active"
    """Serves parts and receives new ones."""
    DRAINING = "draining"
    """Keeps the parts it has until they are handed off; receives no new ones."""
    DEAD = "dead"
    """Declared dead by the manager; holds nothing it can serve."""


class DrainCause(enum.Enum):
    """Who drained a DRAINING server, so a manager that loads the map resumes the right drain."""

    OPERATOR = "operator"
    """An operator's drain (or one from a map encoded before the cause existed): it lasts until
    the server is empty, undrained, or dead. Every entry that is not DRAINING says OPERATOR."""
    RISK = "risk"
    """The risk policy's mark on a server it evacuates: cleared once the policy no longer blocks
    the server."""


class ServerTransition(enum.Enum):
    """What a delta can do to an existing server."""

    DRAIN = "drain"
    """Stop placing new parts on it and pin the ones it has."""
    UNDRAIN = "undrain"
    """Place new parts on it again."""
    TAKE_OVER = "take-over"
    """An operator's drain takes over the risk policy's mark (the cause becomes OPERATOR)."""
    MARK_DEAD = "mark-dead"
    """Take it out of placement at once (failover)."""
    LEAVE = "leave"
    """Remove its entry from the map."""
    REWEIGHT = "reweight"
    """Change its weight."""


SERVER_TRANSITIONS: dict[tuple[ServerState, ServerTransition], ServerState | None] = {
    (ServerState.ACTIVE, ServerTransition.DRAIN): ServerState.DRAINING,
    (ServerState.ACTIVE, ServerTransition.MARK_DEAD): ServerState.DEAD,
    (ServerState.ACTIVE, ServerTransition.REWEIGHT): ServerState.ACTIVE,
    (ServerState.DRAINING, ServerTransition.UNDRAIN): ServerState.ACTIVE,
    (ServerState.DRAINING, ServerTransition.TAKE_OVER): ServerState.DRAINING,
    (ServerState.DRAINING, ServerTransition.MARK_DEAD): ServerState.DEAD,
    (ServerState.DRAINING, ServerTransition.LEAVE): None,
    (ServerState.DRAINING, ServerTransition.REWEIGHT): ServerState.DRAINING,
    (ServerState.DEAD, ServerTransition.LEAVE): None,
}
"""(state, transition) -> next state; None means the entry leaves the map. Anything else is an
illegal transition."""


def next_server_state(
    server_id: str, state: ServerState, transition: ServerTransition
) -> ServerState | None:
    """The state after `transition`, or None when the server leaves; raise if it is illegal."""
    try:
        return SERVER_TRANSITIONS[state, transition]
    except KeyError:
        raise InvalidDeltaError(
            f"server {server_id!r} is {state.value}: {transition.value} is not allowed"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerEntry:
    """One server as the shard map knows it."""

    server_id: str
    """The server's cluster-unique name."""
    address: str
    """Where clients reach it (`host:port`), filled by the runtime; opaque to placement."""
    zone: str
    """Failure-domain label; replicas spread across zones when there are enough."""
    weight: float
    """Relative capacity: a server of weight 2 gets about twice the parts of one of weight 1."""
    state: ServerState
    """ACTIVE, DRAINING or DEAD."""
    drain_cause: DrainCause = DrainCause.OPERATOR
    """Who drained it, while DRAINING (RISK only then); OPERATOR in every other state."""

    @property
    def weight_milli(self) -> int:
        """The weight in thousandths, the integer form every capacity computation uses."""
        return weight_to_milli(self.weight)


def weight_to_milli(weight: float) -> int:
    """A weight in integer thousandths (at least 1), so placement never depends on float sums."""
    return max(1, round(weight * 1000))
