"""The simulator: one event heap, one clock, real cores, a network and processes around them.

Single-threaded and deterministic (STYLE.md rules 12 and 13). The heap is keyed by
`(time_us, tiebreak, sequence)`: the tiebreak is drawn from the seed, so events due at the same
microsecond run in an order that varies from seed to seed but never from run to run. Every input a
core receives and every observation it reports is hashed into the trace digest; checkers judge
every observation as it happens.
"""

from __future__ import annotations

import heapq
import random
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forehand.core import CoreDriver, NodeId
from forehand.core._driver import ConnectionLost
from forehand.errors import ConfigError, LocalProtocolError
from forehand.sim import _kinds
from forehand.sim._checkers import Checker, InvariantViolated
from forehand.sim._links import Link, NetworkConfig, PartitionDirection
from forehand.sim._network import Network
from forehand.sim._process import (
    Node,
    NodeFactory,
    NodeStart,
    NodeState,
    NodeTransition,
    ProcessModel,
    ProcessStats,
    StoreExecutor,
    next_node_state,
    slowdown_for,
)
from forehand.sim._ramp import Ramp
from forehand.sim._rng import derive_rng
from forehand.sim._trace import TRACE_FLUSH_LINES, TraceDigest
from forehand.sim.observations import (
    FaultsHealed,
    NodeCrashed,
    NodePaused,
    NodeRestarted,
    NodeResumed,
    Observation,
    Observed,
    RarePathReached,
)

if TYPE_CHECKING:
    from forehand.sim._faults import FaultPlan

__all__ = [
    "Failure",
    "RunResult",
    "Simulator",
    "SimulatorConfig",
    "Translator",
    "pass_observations",
]

Translator = Callable[[NodeId, object], Iterable[Observation]]
"""Maps one core event (from `next_event()`) to the observations checkers read."""

_DELIVER = _kinds.DELIVER
_TIEBREAK_BITS = 32


def pass_observations(node_id: NodeId, event: object) -> Iterable[Observation]:
    """The default translator: events that already are observations pass, others are ignored."""
    if isinstance(event, Observation):
        return (event,)
    return ()


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatorConfig:
    """Bounds and length of one simulated run."""

    duration_us: int = 60_000_000
    """Simulated time `run()` advances to when no other end is given."""
    events_max: int = 20_000_000
    """Bound on simulated events; reaching it is reported as a failure (a livelock, usually)."""
    timer_spins_max: int = 1_000
    """Bound on timer firings in a row that leave a core's deadline at or before now."""

    def __post_init__(self) -> None:
        if self.duration_us < 0 or self.events_max <= 0 or self.timer_spins_max <= 0:
            raise ConfigError(f"simulator bounds must be positive, got {self}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """Why and where a run failed, enough to replay it."""

    seed: int
    """The root seed of the run."""
    event_index: int
    """The index of the simulated event during which the failure happened."""
    time_us: int
    """Simulated time of the failure."""
    checker: str
    """The checker that raised, or `exception` for an error raised by a core or the simulator."""
    message: str
    """What went wrong."""
    details: str = ""
    """A traceback, for exceptions."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """The outcome of one simulated run."""

    seed: int
    """The root seed of the run."""
    digest: str
    """Hex digest of the trace; the same seed must give the same digest."""
    events: int
    """Simulated events processed."""
    observations: int
    """Observations reported by cores and by the simulator."""
    simulated_us: int
    """Simulated time at the end of the run."""
    wall_seconds: float
    """Wall-clock duration of the run (reporting only; it never influences the run)."""
    counters: dict[str, int]
    """Rare-path counters, sorted by name."""
    failure: Failure | None
    """The first failure, or None when every invariant held."""

    @property
    def ok(self) -> bool:
        """Whether the run passed."""
        return self.failure is None


class Simulator:
    """A deterministic discrete-event simulation of nodes running `CoreDriver` cores."""

    def __init__(
        self,
        *,
        seed: int,
        config: SimulatorConfig | None = None,
        network: NetworkConfig | None = None,
        checkers: Sequence[Checker] = (),
        translate: Translator = pass_observations,
    ) -> None:
        if seed < 0:
            raise ConfigError("seeds are non-negative integers")
        self.seed = seed
        """The root seed every random choice of the run derives from."""
        self.config = config if config is not None else SimulatorConfig()
        """Bounds and length of the run."""
        self.now_us = 0
        """Current simulated time."""
        self.heal_us = 0
        """When every fault is over; liveness is judged from here."""
        self._heap: list[tuple[Any, ...]] = []
        self._sequence = 0
        self._tiebreak = derive_rng(seed, "scheduler").getrandbits
        self._store_rng = derive_rng(seed, "store")
        self._rngs: dict[str, random.Random] = {}
        self._nodes: dict[NodeId, Node] = {}
        self._counters: dict[str, int] = {}
        self._trace = TraceDigest()
        self._network = Network(
            network if network is not None else NetworkConfig(),
            derive_rng(seed, "network"),
            nodes=self._nodes,
            schedule=self._schedule,
            count=self.count,
        )
        self._checkers: list[Checker] = list(checkers)
        self._dispatch: dict[type, list[Checker]] = {}
        self._observers: list[Callable[[Observed], None]] = []
        self._translate = translate
        self._events = 0
        self._observations = 0
        self._ran = False
        self.stall_us = 0
        """How long a handler that calls `stall_requested` holds its node's CPU, as a handler
        that blocks the event loop does: nothing else is handled and nothing it sent goes out
        until then (0: no handler stalls)."""
        self._stalling = False

    # -- set-up --------------------------------------------------------------------------------

    def rng(self, name: str) -> random.Random:
        """A `random.Random` for a named component, derived from the seed (cached per name)."""
        generator = self._rngs.get(name)
        if generator is None:
            generator = self._rngs[name] = derive_rng(self.seed, f"user/{name}")
        return generator

    def add_node(
        self,
        node_id: NodeId,
        factory: NodeFactory,
        *,
        process: ProcessModel | None = None,
        executor: StoreExecutor | None = None,
    ) -> CoreDriver:
        """Register a node, build its core now and return it; `executor` runs its store requests."""
        if node_id in self._nodes:
            raise ConfigError(f"node {node_id!r} is already registered")
        node = Node(node_id, factory, process if process is not None else ProcessModel(), executor)
        self._nodes[node_id] = node
        return self._start(node)

    def add_checker(self, checker: Checker) -> None:
        """Judge every later observation with `checker` too."""
        self._checkers.append(checker)
        self._dispatch.clear()

    def add_observer(self, observer: Callable[[Observed], None]) -> None:
        """Call `observer` with every later observation (workloads, statistics, tests)."""
        self._observers.append(observer)

    def set_link(
        self, source: NodeId, target: NodeId, link: Link, *, symmetric: bool = True
    ) -> None:
        """Give the link from `source` to `target` (and back, when symmetric) a new behaviour."""
        self._network.set_link(source, target, link)
        if symmetric:
            self._network.set_link(target, source, link)

    def retain_trace(self) -> None:
        """Keep every trace line, to print or diff the run afterwards."""
        self._trace.keep_lines()

    @property
    def trace_lines(self) -> list[str]:
        """The trace lines kept since `retain_trace()` (empty when not kept)."""
        self._trace.flush()
        return list(self._trace.kept or ())

    # -- inspection ----------------------------------------------------------------------------

    def node_ids(self) -> list[NodeId]:
        """Every registered node, in registration order."""
        return list(self._nodes)

    def core(self, node_id: NodeId) -> CoreDriver | None:
        """The node's current core, or None while it is crashed."""
        return self._node(node_id).core

    def node_state(self, node_id: NodeId) -> NodeState:
        """Whether the node runs, is paused or is crashed."""
        return self._node(node_id).state

    def connection_open(self, source: NodeId, target: NodeId) -> bool:
        """Whether a connection between the two nodes is open (stalled included)."""
        return self._network.connection_open(source, target)

    def transport_counters(self, source: NodeId, target: NodeId) -> tuple[int, int, int]:
        """Packets sent, lost and retransmitted so far from `source` to `target`."""
        return self._network.transport_counters(source, target)

    def process_stats(self, node_id: NodeId) -> ProcessStats:
        """Load, slowdown and queue depths of a node, for feeding telemetry to its core."""
        node = self._node(node_id)
        load = node.load(self.now_us)
        return ProcessStats(
            state=node.state,
            load=load,
            slowdown=slowdown_for(load, node.process.slowdown_max),
            inbox_depth=len(node.inbox),
            held_depth=len(node.held),
            incarnation=node.incarnation,
        )

    @property
    def counters(self) -> dict[str, int]:
        """Rare-path counters so far, sorted by name."""
        return dict(sorted(self._counters.items()))

    @property
    def events(self) -> int:
        """Simulated events processed so far."""
        return self._events

    def count(self, name: str, amount: int = 1) -> None:
        """Count one occurrence of a rare path."""
        self._counters[name] = self._counters.get(name, 0) + amount

    def observe(self, node_id: NodeId, observation: Observation) -> None:
        """Report an observation that no core event carries (what a workload adapter knows of
        the calls it makes): hashed into the trace and judged like any other."""
        self._observe(node_id, observation)

    def _node(self, node_id: NodeId) -> Node:
        node = self._nodes.get(node_id)
        if node is None:
            raise LocalProtocolError(f"no node named {node_id!r}")
        return node

    # -- scheduling ----------------------------------------------------------------------------

    def _schedule(  # noqa: PLR0917 (the hottest call: positional arguments are cheaper)
        self,
        time_us: int,
        kind: int,
        node_id: str,
        number: int,
        payload: Any,
        source: str,
        extra: Any,
    ) -> None:
        self._sequence += 1
        entry = (
            time_us,
            self._tiebreak(_TIEBREAK_BITS),
            self._sequence,
            kind,
            node_id,
            number,
            payload,
            source,
            extra,
        )
        heapq.heappush(self._heap, entry)

    def call_at(self, time_us: int, action: Callable[[], None], *, label: str) -> None:
        """Run `action` at `time_us`; `label` stands for it in the trace.

        Actions due at the same microsecond as other events run in a seed-drawn order.
        """
        if time_us < self.now_us:
            raise LocalProtocolError(f"cannot schedule {label} in the past ({time_us} µs)")
        self._schedule(time_us, _kinds.CALL, "", 0, action, label, None)

    def command(
        self,
        node_id: NodeId,
        action: Callable[[CoreDriver, int], None],
        *,
        at_us: int | None = None,
        label: str = "command",
    ) -> None:
        """Feed a command to a node's core at `at_us` (now by default): `action(core, now_us)`.

        A command is an input like any other: it waits for the CPU, is held while the node is
        paused and is dropped if the node is crashed.
        """
        self._node(node_id)
        time_us = self.now_us if at_us is None else at_us
        if time_us < self.now_us:
            raise LocalProtocolError(f"cannot schedule {label} in the past ({time_us} µs)")
        self._schedule(time_us, _kinds.COMMAND, node_id, 0, action, label, None)

    # -- faults --------------------------------------------------------------------------------

    def crash(
        self,
        node_id: NodeId,
        *,
        silent: bool = False,
        permanent: bool = False,
        exited: bool = False,
    ) -> None:
        """Crash a node now: its core, inbox, timers and unfinished store requests are lost.

        A silent crash is a dead host: peers learn only when their connections time out. A
        permanent crash is not undone by `heal()`. An exit is a process that stopped by itself:
        what it sent before still arrives, then its peers see its connections closed.
        """
        node = self._node(node_id)
        node.state = next_node_state(node.state, NodeTransition.CRASH)
        node.incarnation += 1
        node.core = None
        node.inbox.clear()
        node.held.clear()
        node.cpu_busy = False
        node.timer_deadline_us = None
        node.timer_queued = False
        node.silent = silent
        node.permanent = permanent
        self._settle_stores_at_crash(node)
        if exited:
            self._network.node_exited(node_id, self.now_us)
        else:
            self._network.node_crashed(node_id, self.now_us)
        self.count("node-crashed")
        self._trace.pending.append(f"{self.now_us} crash {node_id} {silent} {permanent}")
        self._observe(node_id, NodeCrashed(node=node_id))

    def _settle_stores_at_crash(self, node: Node) -> None:
        """Requests already sent to the store land or not: a seed-drawn prefix of them lands."""
        pending = node.store_pending
        if not pending:
            return
        landed = self._store_rng.randint(0, len(pending))
        executor = node.executor
        assert executor is not None
        for _ in range(landed):
            executor(pending.popleft())
        self.count("store-request-landed-at-crash", landed)
        self.count("store-request-lost-at-crash", len(pending))
        pending.clear()

    def restart(self, node_id: NodeId) -> None:
        """Restart a crashed node with a fresh core built by its factory."""
        node = self._node(node_id)
        node.state = next_node_state(node.state, NodeTransition.RESTART)
        node.silent = False
        node.permanent = False
        self._network.node_restarted(node_id, self.now_us)
        self.count("node-restarted")
        self._observe(node_id, NodeRestarted(node=node_id, incarnation=node.incarnation))
        self._start(node)

    def pause(self, node_id: NodeId) -> None:
        """Pause a node (SIGSTOP): it handles nothing, its inputs wait until `resume`."""
        node = self._node(node_id)
        node.state = next_node_state(node.state, NodeTransition.PAUSE)
        self.count("node-paused")
        self._trace.pending.append(f"{self.now_us} pause {node_id}")
        self._observe(node_id, NodePaused(node=node_id))

    def resume(self, node_id: NodeId) -> None:
        """Resume a paused node: held inputs are handled in arrival order, timers re-armed."""
        node = self._node(node_id)
        node.state = next_node_state(node.state, NodeTransition.RESUME)
        node.inbox.extend(node.held)
        node.held.clear()
        self._trace.pending.append(f"{self.now_us} resume {node_id}")
        self._observe(node_id, NodeResumed(node=node_id))
        if node.inbox and not node.cpu_busy:
            node.cpu_busy = True
            due_us = self.now_us + node.service_us(self.now_us)
            self._schedule(due_us, _kinds.CPU, node.node_id, node.incarnation, None, "", None)
        self._arm(node)

    def add_load_ramp(self, node_id: NodeId, ramp: Ramp) -> None:
        """Add a load ramp (a fraction of the CPU) to a node, until `heal()`."""
        self._node(node_id).load_ramps.append(ramp)

    def add_link_degradation(
        self,
        source: NodeId,
        target: NodeId,
        *,
        delay_ramp: Ramp | None = None,
        loss_ramp: Ramp | None = None,
        symmetric: bool = True,
    ) -> None:
        """Add a delay ramp (µs) and/or a loss ramp (probability) to a link, until `heal()`."""
        self._network.add_degradation(source, target, delay_ramp=delay_ramp, loss_ramp=loss_ramp)
        if symmetric:
            self._network.add_degradation(
                target, source, delay_ramp=delay_ramp, loss_ramp=loss_ramp
            )

    def start_partition(
        self,
        side_a: Iterable[NodeId],
        side_b: Iterable[NodeId],
        *,
        direction: PartitionDirection = PartitionDirection.BOTH,
    ) -> int:
        """Cut traffic between two groups of nodes; returns a token for `end_partition`."""
        group_a = sorted(side_a)
        group_b = sorted(side_b)
        token = self._network.start_partition(frozenset(group_a), frozenset(group_b), direction)
        self.count("partition-started")
        self._trace.pending.append(f"{self.now_us} partition {group_a} {group_b} {direction}")
        return token

    def end_partition(self, token: int) -> None:
        """Heal one partition; connections it stalled carry on if they have not timed out."""
        self._trace.pending.append(f"{self.now_us} unpartition {token}")
        self._network.end_partition(token, self.now_us)

    def heal(self) -> None:
        """End every fault: partitions, degradations and load ramps; resume and restart nodes."""
        self._trace.pending.append(f"{self.now_us} heal")
        self._network.heal(self.now_us)
        for node in self._nodes.values():
            node.load_ramps.clear()
        for node_id, node in list(self._nodes.items()):
            if node.state is NodeState.PAUSED:
                self.resume(node_id)
            elif node.state is NodeState.CRASHED and not node.permanent:
                self.restart(node_id)
        self._observe("", FaultsHealed(heal_us=self.now_us))

    def apply_fault_plan(self, plan: FaultPlan) -> None:
        """Schedule every fault of a `FaultPlan`, then `heal()` at its heal time.

        Apply plans before `run()`: liveness is judged from `heal_us`, which this sets.
        """
        from forehand.sim._faults import schedule_fault_plan

        schedule_fault_plan(self, plan)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, *, until_us: int | None = None) -> RunResult:
        """Run until `until_us` (the configured duration by default) or the first failure."""
        if self._ran:
            raise LocalProtocolError("a simulator runs once; build a new one to replay a seed")
        self._ran = True
        end_us = self.config.duration_us if until_us is None else until_us
        started = time.perf_counter()
        failure: Failure | None = None
        try:
            self._loop(end_us)
            self.now_us = max(self.now_us, end_us)
            for checker in self._checkers:
                checker.at_end(self)
            self._trace.flush()
        except InvariantViolated as violation:
            failure = self._failure(violation.checker or "invariant", str(violation), "")
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            failure = self._failure("exception", message, traceback.format_exc())
        digest = self._trace.hexdigest()
        return RunResult(
            seed=self.seed,
            digest=digest,
            events=self._events,
            observations=self._observations,
            simulated_us=self.now_us,
            wall_seconds=time.perf_counter() - started,
            counters=self.counters,
            failure=failure,
        )

    def _failure(self, checker: str, message: str, details: str) -> Failure:
        return Failure(
            seed=self.seed,
            event_index=self._events,
            time_us=self.now_us,
            checker=checker,
            message=message,
            details=details,
        )

    def _loop(self, end_us: int) -> None:
        heap = self._heap
        pop = heapq.heappop
        nodes = self._nodes
        pending = self._trace.pending
        events_max = self.config.events_max
        events = self._events
        try:
            while heap and heap[0][0] <= end_us:
                if events >= events_max:
                    raise InvariantViolated(
                        f"event budget of {events_max} exhausted at {self.now_us} µs; a livelock?",
                        checker="event-budget",
                    )
                entry = pop(heap)
                self.now_us = entry[0]
                events += 1
                self._events = events
                if entry[3] == _DELIVER:
                    lane = entry[8]
                    if lane is not None and lane.epoch != entry[5]:
                        self.count("in-flight-lost-to-reset")
                    else:
                        node = nodes.get(entry[4])
                        if node is None:
                            self.count("delivery-to-unknown-node")
                        else:
                            self._input(node, _kinds.INPUT_MESSAGE, entry[6], entry[7])
                else:
                    self._dispatch_entry(entry)
                if len(pending) >= TRACE_FLUSH_LINES:
                    self._trace.flush()
        finally:
            self._events = events

    def _dispatch_entry(self, entry: tuple[Any, ...]) -> None:
        kind = entry[3]
        if kind == _kinds.CPU:
            self._cpu_done(entry[4], entry[5])
        elif kind == _kinds.TIMER:
            self._timer_due(entry[4], entry[5], entry[0])
        elif kind == _kinds.NOTICE:
            self._network.notice_done(entry[8], entry[4], self.now_us)
            node = self._nodes.get(entry[4])
            if node is not None and node.incarnation == entry[5]:
                self._input(node, _kinds.INPUT_MESSAGE, entry[6], entry[7])
        elif kind == _kinds.STORE:
            self._store_done(entry[4], entry[5], entry[6])
        elif kind == _kinds.COMMAND:
            self._input(self._nodes[entry[4]], _kinds.INPUT_COMMAND, entry[6], entry[7])
        elif kind == _kinds.CALL:
            self._trace.pending.append(f"{self.now_us} call {entry[7]}")
            entry[6]()
        elif kind == _kinds.CONNECTION_TIMEOUT:
            self._network.connection_timed_out(entry[8], entry[5], self.now_us)
        elif kind == _kinds.OPENED:
            node = self._nodes.get(entry[4])
            if self._network.opened_arrived(entry[8], entry[4], entry[5]) and node is not None:
                self._input(node, _kinds.INPUT_MESSAGE, entry[6], entry[7])
        else:
            raise LocalProtocolError(f"unknown heap entry kind {kind}")

    # -- inputs --------------------------------------------------------------------------------

    def _input(self, node: Node, kind: int, payload: Any, source: NodeId) -> None:
        state = node.state
        if state is NodeState.UP:
            if not node.inbox and node.process.service_time_us == 0:
                self._process(node, kind, payload, source)
                return
            if len(node.inbox) >= node.process.inbox_messages_max:
                self._overflow(node, kind, source)
                return
            node.inbox.append((kind, payload, source))
            if not node.cpu_busy:
                node.cpu_busy = True
                due_us = self.now_us + node.service_us(self.now_us)
                self._schedule(due_us, _kinds.CPU, node.node_id, node.incarnation, None, "", None)
        elif state is NodeState.PAUSED:
            if len(node.held) >= node.process.inbox_messages_max:
                self._overflow(node, kind, source)
                return
            node.held.append((kind, payload, source))
        else:
            self.count("input-to-crashed-node")

    def _overflow(self, node: Node, kind: int, source: NodeId) -> None:
        # A full inbox cannot grow: a connection that feeds it is reset, a datagram dropped.
        self.count("inbox-overflow")
        if kind == _kinds.INPUT_MESSAGE and source:
            self._network.reset_between(self.now_us, source, node.node_id, "receiver-overloaded")
        elif kind == _kinds.INPUT_TIMER:
            node.timer_queued = False

    def _cpu_done(self, node_id: NodeId, incarnation: int) -> None:
        node = self._nodes[node_id]
        if node.incarnation != incarnation:
            return
        node.cpu_busy = False
        if node.state is not NodeState.UP or not node.inbox:
            return
        kind, payload, source = node.inbox.popleft()
        self._process(node, kind, payload, source)
        runnable = node.state is NodeState.UP and node.incarnation == incarnation
        if node.inbox and runnable and not node.cpu_busy:
            node.cpu_busy = True
            due_us = self.now_us + node.service_us(self.now_us)
            self._schedule(due_us, _kinds.CPU, node_id, incarnation, None, "", None)

    def _timer_due(self, node_id: NodeId, incarnation: int, deadline_us: int) -> None:
        node = self._nodes[node_id]
        if node.incarnation != incarnation or node.timer_deadline_us != deadline_us:
            return
        node.timer_deadline_us = None
        if node.state is not NodeState.UP:
            return
        node.timer_queued = True
        self._input(node, _kinds.INPUT_TIMER, None, "")

    def _store_done(self, node_id: NodeId, incarnation: int, request: object) -> None:
        node = self._nodes[node_id]
        if node.incarnation != incarnation:
            return
        head = node.store_pending.popleft()
        assert head is request, "store requests complete in the order they were submitted"
        executor = node.executor
        assert executor is not None
        result = executor(request)
        self._trace.pending.append(f"{self.now_us} store {node_id} {request!r}")
        self._input(node, _kinds.INPUT_STORE_RESULT, result, "")

    def _process(self, node: Node, kind: int, payload: Any, source: NodeId) -> None:
        core = node.core
        assert core is not None
        now_us = self.now_us
        if kind == _kinds.INPUT_MESSAGE:
            self._trace.pending.append(f"{now_us} m {source} {node.node_id} {payload!r}")
            if type(payload) is ConnectionLost:
                self._network.loss_handled(node.node_id, source)
            core.receive_message(payload, source=source, now_us=now_us)
        elif kind == _kinds.INPUT_TIMER:
            node.timer_queued = False
            due_us = core.timer_us()
            if due_us is None or due_us > now_us:
                self._arm(node)
                return
            self._trace.pending.append(f"{now_us} t {node.node_id}")
            core.handle_timer(now_us=now_us)
            self._check_timer_progress(node, core)
        elif kind == _kinds.INPUT_STORE_RESULT:
            self._trace.pending.append(f"{now_us} r {node.node_id} {payload!r}")
            core.store_result(payload, now_us=now_us)
        else:
            self._trace.pending.append(f"{now_us} c {node.node_id} {source}")
            payload(core, now_us)
        if self._stalling:
            self._stalling = False
            self._stall(node)
            return
        self._drain(node)

    def stall_requested(self) -> None:
        """A handler running on the node being processed blocks it for `stall_us`."""
        self._stalling = self.stall_us > 0

    def _stall(self, node: Node) -> None:
        """Hold `node`'s CPU and outputs for `stall_us`: inputs wait in its inbox, timers too."""
        self.count("stall-started")
        self._trace.pending.append(f"{self.now_us} stall {node.node_id}")
        node.cpu_busy = True
        node_id, incarnation = node.node_id, node.incarnation

        def over() -> None:
            stalled = self._nodes[node_id]
            if stalled.incarnation != incarnation:
                return
            stalled.cpu_busy = False
            if stalled.state is not NodeState.UP:
                return
            self._drain(stalled)
            if stalled.inbox:
                stalled.cpu_busy = True
                due_us = self.now_us + stalled.service_us(self.now_us)
                self._schedule(due_us, _kinds.CPU, node_id, incarnation, None, "", None)

        self.call_at(self.now_us + self.stall_us, over, label=f"stall of {node_id} over")

    def _check_timer_progress(self, node: Node, core: CoreDriver) -> None:
        due_us = core.timer_us()
        if due_us is None or due_us > self.now_us:
            node.timer_spins = 0
            return
        node.timer_spins += 1
        if node.timer_spins > self.config.timer_spins_max:
            raise LocalProtocolError(
                f"core {node.node_id} keeps its timer at or before now ({due_us} µs <= "
                f"{self.now_us} µs) after handling it, {node.timer_spins} times in a row"
            )

    def _drain(self, node: Node) -> None:
        core = node.core
        if core is None:
            return
        node_id = node.node_id
        messages = core.messages_to_send()
        if messages:
            send = self._network.send
            now_us = self.now_us
            for outbound in messages:
                send(now_us, node_id, outbound.destination, outbound.message)
        requests = core.store_requests()
        if requests:
            self._submit_stores(node, requests)
        event = core.next_event()
        while event is not None:
            for observation in self._translate(node_id, event):
                self._observe(node_id, observation)
            event = core.next_event()
        self._arm(node)

    def _submit_stores(self, node: Node, requests: list[object]) -> None:
        if node.executor is None:
            raise ConfigError(f"node {node.node_id} emitted a store request but has no executor")
        process = node.process
        for request in requests:
            latency_us = process.store_latency_us
            if process.store_jitter_us:
                latency_us += self._store_rng.randrange(process.store_jitter_us)
            # A node's store answers in submission order, like one database connection.
            done_us = max(self.now_us + latency_us, node.store_last_us + 1)
            node.store_last_us = done_us
            node.store_pending.append(request)
            self._schedule(done_us, _kinds.STORE, node.node_id, node.incarnation, request, "", None)

    def _arm(self, node: Node) -> None:
        core = node.core
        if core is None or node.timer_queued:
            return
        due_us = core.timer_us()
        if due_us is None:
            node.timer_deadline_us = None
            return
        due_us = max(due_us, self.now_us)
        if due_us != node.timer_deadline_us:
            node.timer_deadline_us = due_us
            self._schedule(due_us, _kinds.TIMER, node.node_id, node.incarnation, None, "", None)

    def _start(self, node: Node) -> CoreDriver:
        rng = derive_rng(self.seed, f"node/{node.node_id}/{node.incarnation}")
        start = NodeStart(
            node_id=node.node_id, incarnation=node.incarnation, now_us=self.now_us, rng=rng
        )
        core = node.factory(start)
        if core.node_id != node.node_id:
            raise ConfigError(f"factory for {node.node_id!r} built a core named {core.node_id!r}")
        node.core = core
        node.timer_spins = 0
        self._trace.pending.append(f"{self.now_us} start {node.node_id} {node.incarnation}")
        self._drain(node)
        return core

    # -- observations --------------------------------------------------------------------------

    def _observe(self, node_id: NodeId, observation: Observation) -> None:
        self._observations += 1
        self._trace.pending.append(f"{self.now_us} o {node_id} {observation!r}")
        kind = type(observation)
        checkers = self._dispatch.get(kind)
        if checkers is None:
            checkers = self._dispatch[kind] = [
                checker
                for checker in self._checkers
                if not checker.observes or issubclass(kind, checker.observes)
            ]
        if checkers or self._observers:
            event = Observed(
                index=self._events, time_us=self.now_us, node=node_id, observation=observation
            )
            for checker in checkers:
                checker.after_event(self, event)
            for observer in self._observers:
                observer(event)
        if isinstance(observation, RarePathReached):
            self.count(observation.name)
