"""The process model: how fast a node handles its inputs, and whether it runs at all.

Each node is a single-threaded process. Every input (a message, a timer, a store result, a command)
costs `service_time_us` of CPU, stretched by the node's load; inputs that arrive while the CPU is
busy wait in a bounded inbox, which the cores see as latency. A paused node (SIGSTOP) handles
nothing: its inputs are held and delivered in order when it resumes. A crashed node loses its core
and everything in flight; a restart builds a fresh core through the node's factory.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from forehand.core import CoreDriver, NodeId
from forehand.errors import ConfigError, LocalProtocolError
from forehand.sim._ramp import Ramp

__all__ = [
    "NODE_TRANSITIONS",
    "NodeFactory",
    "NodeStart",
    "NodeState",
    "NodeTransition",
    "ProcessModel",
    "ProcessStats",
    "StoreExecutor",
]


class NodeState(StrEnum):
    """Whether a node's process runs."""

    UP = "up"
    PAUSED = "paused"
    CRASHED = "crashed"


class NodeTransition(Enum):
    """What the simulator (or a fault) does to a node's process."""

    PAUSE = "pause"
    RESUME = "resume"
    CRASH = "crash"
    RESTART = "restart"


NODE_TRANSITIONS: dict[tuple[NodeState, NodeTransition], NodeState] = {
    (NodeState.UP, NodeTransition.PAUSE): NodeState.PAUSED,
    (NodeState.PAUSED, NodeTransition.RESUME): NodeState.UP,
    (NodeState.UP, NodeTransition.CRASH): NodeState.CRASHED,
    (NodeState.PAUSED, NodeTransition.CRASH): NodeState.CRASHED,
    (NodeState.CRASHED, NodeTransition.RESTART): NodeState.UP,
}
"""Every legal process transition; anything else raises `LocalProtocolError`."""


def next_node_state(state: NodeState, transition: NodeTransition) -> NodeState:
    """The state after `transition`, or `LocalProtocolError` when it is not legal from `state`."""
    try:
        return NODE_TRANSITIONS[(state, transition)]
    except KeyError:
        raise LocalProtocolError(
            f"cannot {transition.value} a node that is {state.value}"
        ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessModel:
    """CPU, inbox and store behaviour of one simulated node."""

    service_time_us: int = 0
    """CPU time per input at zero load; its inverse is the node's capacity in inputs per second."""
    base_load: float = 0.0
    """Background load, as a fraction of the CPU taken by other work (0 = idle)."""
    slowdown_max: float = 100.0
    """Bound on how much load stretches service time (a load at or above 1 saturates here)."""
    inbox_messages_max: int = 100_000
    """Bound on inputs waiting for the CPU (or held while paused); overflow drops or resets."""
    store_latency_us: int = 1_000
    """Base latency of one store request."""
    store_jitter_us: int = 0
    """Uniform extra store latency, drawn per request from the store's generator."""

    def __post_init__(self) -> None:
        if self.service_time_us < 0 or self.store_latency_us < 0 or self.store_jitter_us < 0:
            raise ConfigError(f"process times are non-negative, got {self}")
        if self.base_load < 0 or self.slowdown_max < 1:
            raise ConfigError(f"need base_load >= 0 and slowdown_max >= 1, got {self}")
        if self.inbox_messages_max < 1:
            raise ConfigError(f"inbox_messages_max must be positive, got {self}")

    @classmethod
    def randomized(cls, rng: random.Random) -> ProcessModel:
        """A plausible process drawn from `rng`, for scenarios that vary their fleet."""
        return cls(
            service_time_us=rng.choice((0, 20, 50, 100, 200)),
            base_load=rng.choice((0.0, 0.1, 0.3, 0.5)),
            store_latency_us=rng.choice((200, 1_000, 5_000)),
            store_jitter_us=rng.choice((0, 500, 2_000)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStart:
    """What a node factory receives when the simulator (re)starts a node."""

    node_id: NodeId
    """The node to build."""
    incarnation: int
    """0 for the first start, then one more per restart."""
    now_us: int
    """Simulated time of the start."""
    rng: random.Random
    """A generator derived from the root seed for this node and incarnation."""


NodeFactory = Callable[[NodeStart], CoreDriver]
"""Builds a node's core; called at first start and after every crash."""

StoreExecutor = Callable[[object], object]
"""Performs one store request and returns its result (the effect executor of a node's store)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessStats:
    """A snapshot of a node's process, for scenarios that feed telemetry to cores."""

    state: NodeState
    """Whether the process runs."""
    load: float
    """Current load (base load plus load ramps)."""
    slowdown: float
    """Current stretch of service time caused by the load."""
    inbox_depth: int
    """Inputs waiting for the CPU."""
    held_depth: int
    """Inputs held while paused."""
    incarnation: int
    """How many times the node was started before its current core."""


def slowdown_for(load: float, slowdown_max: float) -> float:
    """Service-time stretch at `load`: 1/(1-load) like a CPU shared with other work, capped."""
    if load >= 1.0:
        return slowdown_max
    return min(1.0 / (1.0 - load), slowdown_max)


class Node:
    """The simulator's mutable record of one node; private to the simulator and network."""

    __slots__ = (
        "core",
        "cpu_busy",
        "executor",
        "factory",
        "held",
        "inbox",
        "incarnation",
        "load_ramps",
        "node_id",
        "permanent",
        "process",
        "silent",
        "state",
        "store_last_us",
        "store_pending",
        "timer_deadline_us",
        "timer_queued",
        "timer_spins",
    )

    def __init__(
        self,
        node_id: NodeId,
        factory: NodeFactory,
        process: ProcessModel,
        executor: StoreExecutor | None,
    ) -> None:
        self.node_id = node_id
        self.factory = factory
        self.process = process
        self.executor = executor
        self.core: CoreDriver | None = None
        self.state = NodeState.UP
        self.incarnation = 0
        self.timer_deadline_us: int | None = None
        self.timer_spins = 0
        self.timer_queued = False
        self.inbox: deque[tuple[int, Any, NodeId]] = deque()
        self.held: deque[tuple[int, Any, NodeId]] = deque()
        self.cpu_busy = False
        self.store_pending: deque[object] = deque()
        self.store_last_us = -1
        self.load_ramps: list[Ramp] = []
        self.silent = False
        self.permanent = False

    def load(self, now_us: int) -> float:
        """Base load plus every load ramp at `now_us`."""
        load = self.process.base_load
        for ramp in self.load_ramps:
            load += ramp.value_at(now_us)
        return load

    def service_us(self, now_us: int) -> int:
        """CPU time of the next input, stretched by the current load."""
        base_us = self.process.service_time_us
        if base_us == 0:
            return 0
        load = self.load(now_us)
        if load == 0.0:
            return base_us
        return int(base_us * slowdown_for(load, self.process.slowdown_max))
