"""Fault plans: scheduled faults, drawn from the seed for a chosen mix, with a heal time.

A plan is an explicit list, so a failing run prints exactly which faults it had, and a scenario
can also write one by hand. `draw_fault_plan` draws one from a generator derived from the root
seed (the BUGGIFY idea: the seed decides what goes wrong and when). After `heal_us` every fault is
over: partitions and ramps end, paused nodes resume, crashed nodes restart (unless permanent),
and liveness is judged from then on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from forehand.core import NodeId
from forehand.errors import ConfigError
from forehand.sim._links import PartitionDirection
from forehand.sim._process import NodeState
from forehand.sim._ramp import Ramp, RampShape

if TYPE_CHECKING:
    from forehand.sim._simulator import Simulator

__all__ = [
    "Fault",
    "FaultMix",
    "FaultPlan",
    "LinkDegradation",
    "NodeCrash",
    "NodeOverload",
    "NodePause",
    "Partition",
    "draw_fault_plan",
    "schedule_fault_plan",
]

FLAP_CYCLES_MAX = 20
"""Bound on the down/up cycles of one flapping link."""


class FaultMix(StrEnum):
    """Which kinds of faults a drawn plan contains."""

    NONE = "none"
    """A healthy run."""
    GRADUAL = "gradual"
    """Faults a predictor can see coming: overload ramps, congestion ramps, flapping links."""
    SUDDEN = "sudden"
    """Faults nobody predicts: crashes, link cuts, pauses."""
    PARTITION = "partition"
    """The fleet splits in two groups, symmetrically or not."""
    MIXED = "mixed"
    """All of the above."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCrash:
    """A node crashes, and restarts later (or at heal, or never when permanent)."""

    node: NodeId
    """The node."""
    at_us: int
    """When it crashes."""
    restart_at_us: int | None = None
    """When it restarts; None leaves the restart to the heal."""
    silent: bool = False
    """A dead host rather than a dead process: peers only learn through their timeouts."""
    permanent: bool = False
    """Never restarted, not even at heal: the fleet must do without it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePause:
    """A node stops (SIGSTOP, a long GC, a VM migration) and resumes later."""

    node: NodeId
    """The node."""
    at_us: int
    """When it stops."""
    resume_at_us: int
    """When it resumes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeOverload:
    """A node's background load follows a ramp (a fraction of its CPU)."""

    node: NodeId
    """The node."""
    ramp: Ramp
    """The load over time; values near or above 1 saturate the node."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Partition:
    """Traffic between two groups of nodes is cut for a while."""

    side_a: tuple[NodeId, ...]
    """One side."""
    side_b: tuple[NodeId, ...]
    """The other side."""
    at_us: int
    """When the cut starts."""
    heal_at_us: int
    """When it ends."""
    direction: PartitionDirection = PartitionDirection.BOTH
    """Which way traffic is cut."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkDegradation:
    """A link's delay and/or loss rise along ramps (congestion, a failing path)."""

    source: NodeId
    """One end."""
    target: NodeId
    """The other end."""
    delay_ramp: Ramp | None = None
    """Extra one-way delay in µs over time."""
    loss_ramp: Ramp | None = None
    """Extra loss probability over time."""
    symmetric: bool = True
    """Whether both directions degrade, or only source to target."""


Fault = NodeCrash | NodePause | NodeOverload | Partition | LinkDegradation
"""Any scheduled fault."""


def _fault_span_us(fault: Fault) -> tuple[int, int | None]:
    """When a fault starts, and when it is over (None when only the heal ends it)."""
    if isinstance(fault, NodeCrash):
        return fault.at_us, fault.restart_at_us
    if isinstance(fault, NodePause):
        return fault.at_us, fault.resume_at_us
    if isinstance(fault, NodeOverload):
        return fault.ramp.start_us, fault.ramp.end_us
    if isinstance(fault, Partition):
        return fault.at_us, fault.heal_at_us
    ramps = [ramp for ramp in (fault.delay_ramp, fault.loss_ramp) if ramp is not None]
    if not ramps:
        raise ConfigError(f"a link degradation needs a delay or a loss ramp: {fault}")
    ends = [ramp.end_us for ramp in ramps]
    end = None if None in ends else max(end for end in ends if end is not None)
    return min(ramp.start_us for ramp in ramps), end


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """Faults to inject, and the time after which everything is healthy."""

    faults: tuple[Fault, ...] = ()
    """The faults, in any order."""
    heal_us: int = 0
    """Every fault is over by then; the simulator heals whatever is left at this time."""

    def __post_init__(self) -> None:
        for fault in self.faults:
            start_us, end_us = _fault_span_us(fault)
            if start_us < 0 or start_us > self.heal_us:
                raise ConfigError(f"fault starts outside [0, heal_us={self.heal_us}]: {fault}")
            if end_us is not None and not start_us <= end_us <= self.heal_us:
                raise ConfigError(f"fault must end between its start and heal_us: {fault}")


def schedule_fault_plan(sim: Simulator, plan: FaultPlan) -> None:
    """Schedule every fault of `plan` on `sim`, and the heal at `plan.heal_us`."""
    for fault in plan.faults:
        _schedule_fault(sim, fault)
    sim.heal_us = max(sim.heal_us, plan.heal_us)
    if plan.faults:
        sim.call_at(plan.heal_us, sim.heal, label="heal")


def _schedule_fault(sim: Simulator, fault: Fault) -> None:
    if isinstance(fault, NodeCrash):
        _schedule_crash(sim, fault)
    elif isinstance(fault, NodePause):
        _schedule_pause(sim, fault)
    elif isinstance(fault, NodeOverload):
        sim.add_load_ramp(fault.node, fault.ramp)
    elif isinstance(fault, Partition):
        _schedule_partition(sim, fault)
    else:
        sim.add_link_degradation(
            fault.source,
            fault.target,
            delay_ramp=fault.delay_ramp,
            loss_ramp=fault.loss_ramp,
            symmetric=fault.symmetric,
        )


def _schedule_crash(sim: Simulator, fault: NodeCrash) -> None:
    # Faults may overlap (a pause during a crash); a transition that is not legal any more is
    # skipped and counted rather than raised.
    def crash() -> None:
        if sim.node_state(fault.node) is NodeState.CRASHED:
            sim.count("fault-skipped")
            return
        sim.crash(fault.node, silent=fault.silent, permanent=fault.permanent)

    def restart() -> None:
        if sim.node_state(fault.node) is not NodeState.CRASHED:
            sim.count("fault-skipped")
            return
        sim.restart(fault.node)

    sim.call_at(fault.at_us, crash, label=f"fault {fault!r}")
    if fault.restart_at_us is not None and not fault.permanent:
        sim.call_at(fault.restart_at_us, restart, label=f"restart {fault.node}")


def _schedule_pause(sim: Simulator, fault: NodePause) -> None:
    def pause() -> None:
        if sim.node_state(fault.node) is not NodeState.UP:
            sim.count("fault-skipped")
            return
        sim.pause(fault.node)

    def resume() -> None:
        if sim.node_state(fault.node) is not NodeState.PAUSED:
            sim.count("fault-skipped")
            return
        sim.resume(fault.node)

    sim.call_at(fault.at_us, pause, label=f"fault {fault!r}")
    sim.call_at(fault.resume_at_us, resume, label=f"resume {fault.node}")


def _schedule_partition(sim: Simulator, fault: Partition) -> None:
    tokens: list[int] = []

    def start() -> None:
        tokens.append(sim.start_partition(fault.side_a, fault.side_b, direction=fault.direction))

    def end() -> None:
        if tokens:
            sim.end_partition(tokens.pop())

    sim.call_at(fault.at_us, start, label=f"fault {fault!r}")
    sim.call_at(fault.heal_at_us, end, label="partition healed")


# -- drawing plans from the seed -------------------------------------------------------------


def draw_fault_plan(
    rng: random.Random,
    *,
    mix: FaultMix,
    nodes: Sequence[NodeId],
    start_us: int,
    heal_us: int,
    fault_count: int = 3,
    peers: Sequence[NodeId] = (),
    faulty_nodes_max: int | None = None,
    critical_peers: Sequence[NodeId] = (),
) -> FaultPlan:
    """Draw a plan of `fault_count` faults of `mix` on `nodes`, all within [start_us, heal_us].

    Node faults hit `nodes`; link faults join a node of `nodes` to one of `peers` (or of
    `nodes` when no peers are given). Pass `rng = sim.rng("faults")` so the seed decides.

    `faulty_nodes_max` bounds how many distinct nodes are *faulty*: crashed, paused, or with a
    degraded or cut link to one of `critical_peers` (a coordinator that declares nodes dead).
    A system that tolerates `f` faulty nodes is only held to its guarantees under at most `f`;
    once that many are faulty, further such faults hit one of them again. Other faults (load,
    links between ordinary nodes, partitions of `nodes`) are not bounded.
    """
    if mix is FaultMix.NONE:
        return FaultPlan()
    if not nodes or heal_us <= start_us or fault_count < 1:
        raise ConfigError("drawing faults needs nodes, heal_us > start_us and fault_count >= 1")
    window = _Window(rng, start_us, heal_us)
    candidates = list(peers) or list(nodes)
    kinds = _MIX_KINDS[mix]
    faulty: dict[NodeId, None] = {}
    faults: list[Fault] = []
    for _ in range(fault_count):
        kind = rng.choice(kinds)
        node = rng.choice(nodes)
        peer = rng.choice([other for other in candidates if other != node] or [node])
        if kind in _NODE_KINDS or (kind in _LINK_KINDS and peer in critical_peers):
            limited = faulty_nodes_max is not None and len(faulty) >= faulty_nodes_max
            if limited and node not in faulty:
                node = rng.choice(list(faulty))
            faulty[node] = None
        faults.extend(_draw_fault(kind, window, node, peer, list(nodes)))
    return FaultPlan(faults=tuple(faults), heal_us=heal_us)


_NODE_KINDS = frozenset({"crash", "pause"})
"""Faults that make their node faulty by themselves."""
_LINK_KINDS = frozenset({"congestion", "flapping", "link-cut"})
"""Faults of one link, which make their node faulty when the other end is critical."""


class _Window:
    """Draws times inside the faulty window [start_us, heal_us]."""

    def __init__(self, rng: random.Random, start_us: int, heal_us: int) -> None:
        self.rng = rng
        self.start_us = start_us
        self.heal_us = heal_us

    def start(self) -> int:
        """A start time in the first two thirds of the window."""
        return self.rng.randint(self.start_us, self.start_us + 2 * self.span() // 3)

    def until(self, after_us: int) -> int:
        """An end time between `after_us` and the heal."""
        return self.rng.randint(after_us, self.heal_us)

    def span(self) -> int:
        """Length of the window."""
        return self.heal_us - self.start_us


def _draw_fault(
    kind: str, window: _Window, node: NodeId, peer: NodeId, nodes: list[NodeId]
) -> list[Fault]:
    rng = window.rng
    if kind == "overload":
        return [NodeOverload(node=node, ramp=_draw_ramp(window, rng.choice((0.8, 0.95, 1.5))))]
    if kind == "congestion":
        delay_ramp = _draw_ramp(window, float(rng.choice((20_000, 100_000, 500_000))))
        loss_ramp = (
            _draw_ramp(window, rng.choice((0.01, 0.05, 0.2))) if rng.random() < 0.5 else None
        )
        return [
            LinkDegradation(source=node, target=peer, delay_ramp=delay_ramp, loss_ramp=loss_ramp)
        ]
    if kind == "flapping":
        return _draw_flapping(window, node, peer)
    if kind == "crash":
        at_us = window.start()
        restart_at_us = window.until(at_us) if rng.random() < 0.8 else None
        return [
            NodeCrash(
                node=node, at_us=at_us, restart_at_us=restart_at_us, silent=rng.random() < 0.3
            )
        ]
    if kind == "link-cut":
        at_us = window.start()
        return [
            Partition(
                side_a=(node,),
                side_b=(peer,),
                at_us=at_us,
                heal_at_us=window.until(at_us),
                direction=_draw_direction(rng),
            )
        ]
    if kind == "pause":
        at_us = window.start()
        resume_at_us = min(at_us + rng.choice((50_000, 500_000, 5_000_000)), window.heal_us)
        return [NodePause(node=node, at_us=at_us, resume_at_us=resume_at_us)]
    return [_draw_partition(window, nodes)]


def _draw_ramp(window: _Window, peak_value: float) -> Ramp:
    rng = window.rng
    start_us = window.start()
    peak_us = window.until(start_us)
    recover_us = window.until(peak_us) if rng.random() < 0.5 else None
    return Ramp(
        start_us=start_us,
        peak_us=peak_us,
        peak_value=peak_value,
        shape=rng.choice((RampShape.LINEAR, RampShape.EXPONENTIAL)),
        recover_us=recover_us,
    )


def _draw_flapping(window: _Window, node: NodeId, peer: NodeId) -> list[Fault]:
    rng = window.rng
    period_us = rng.choice((200_000, 1_000_000, 3_000_000))
    down_us = int(period_us * rng.choice((0.2, 0.4, 0.6)))
    at_us = window.start()
    faults: list[Fault] = []
    for _ in range(FLAP_CYCLES_MAX):
        if at_us + down_us > window.heal_us:
            break
        faults.append(
            Partition(side_a=(node,), side_b=(peer,), at_us=at_us, heal_at_us=at_us + down_us)
        )
        at_us += period_us
    return faults


def _draw_partition(window: _Window, nodes: list[NodeId]) -> Partition:
    rng = window.rng
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    cut = rng.randint(1, max(1, len(shuffled) - 1))
    at_us = window.start()
    return Partition(
        side_a=tuple(shuffled[:cut]),
        side_b=tuple(shuffled[cut:]),
        at_us=at_us,
        heal_at_us=window.until(at_us),
        direction=_draw_direction(rng),
    )


def _draw_direction(rng: random.Random) -> PartitionDirection:
    if rng.random() < 0.7:
        return PartitionDirection.BOTH
    return rng.choice((PartitionDirection.A_TO_B, PartitionDirection.B_TO_A))


_MIX_KINDS: dict[FaultMix, tuple[str, ...]] = {
    FaultMix.GRADUAL: ("overload", "congestion", "flapping"),
    FaultMix.SUDDEN: ("crash", "link-cut", "pause"),
    FaultMix.PARTITION: ("partition",),
    FaultMix.MIXED: (
        "overload",
        "congestion",
        "flapping",
        "crash",
        "link-cut",
        "pause",
        "partition",
    ),
}
"""The fault kinds each mix draws from."""
