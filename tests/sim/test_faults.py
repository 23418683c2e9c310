"""Fault plans: validation, seeded drawing per mix, scheduling, and healing."""

from __future__ import annotations

import functools
import random

import pytest

from forehand.errors import ConfigError
from forehand.sim import (
    FaultMix,
    FaultPlan,
    Link,
    LinkDegradation,
    NodeCrash,
    NodeOverload,
    NodePause,
    NodeState,
    Partition,
    Ramp,
    Transport,
    draw_fault_plan,
)
from forehand.sim.observations import FaultsHealed, Observed

from ._helpers import recorder, recorder_sim, send_at

NODES = ("a", "b", "c", "d")


def test_plan_rejects_faults_outside_the_heal_window() -> None:
    """Every fault must start and end by the heal time."""
    with pytest.raises(ConfigError):
        FaultPlan(faults=(NodeCrash(node="a", at_us=10, restart_at_us=200),), heal_us=100)
    with pytest.raises(ConfigError):
        FaultPlan(faults=(NodePause(node="a", at_us=200, resume_at_us=300),), heal_us=100)
    with pytest.raises(ConfigError):
        FaultPlan(faults=(LinkDegradation(source="a", target="b"),), heal_us=100)


def test_drawn_plans_depend_only_on_the_generator() -> None:
    """The same generator seed draws the same plan; another seed draws another."""

    def draw(seed: int) -> FaultPlan:
        return draw_fault_plan(
            random.Random(seed), mix=FaultMix.MIXED, nodes=NODES, start_us=1_000, heal_us=9_000_000
        )

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)


def test_faulty_nodes_are_bounded_and_the_others_still_hit_anyone() -> None:
    """With faulty_nodes_max=1, crashes, pauses and cuts to the critical peer hit one node."""
    coordinator = "m"
    for seed in range(40):
        plan = draw_fault_plan(
            random.Random(seed),
            mix=FaultMix.MIXED,
            nodes=NODES,
            peers=[coordinator, *NODES],
            start_us=1_000,
            heal_us=9_000_000,
            fault_count=6,
            faulty_nodes_max=1,
            critical_peers=(coordinator,),
        )
        faulty = set()
        for fault in plan.faults:
            if isinstance(fault, NodeCrash | NodePause):
                faulty.add(fault.node)
            elif isinstance(fault, LinkDegradation) and coordinator == fault.target:
                faulty.add(fault.source)
            elif isinstance(fault, Partition) and fault.side_b == (coordinator,):
                faulty.update(fault.side_a)
        assert len(faulty) <= 1, (seed, plan)
        for fault in plan.faults:
            for node in getattr(fault, "side_a", ()) + getattr(fault, "side_b", ()):
                assert node in (coordinator, *NODES)


@pytest.mark.parametrize(
    ("mix", "kinds"),
    [
        (FaultMix.GRADUAL, {NodeOverload, LinkDegradation, Partition}),
        (FaultMix.SUDDEN, {NodeCrash, Partition, NodePause}),
        (FaultMix.PARTITION, {Partition}),
    ],
)
def test_each_mix_draws_its_own_kinds_inside_the_window(mix: FaultMix, kinds: set[type]) -> None:
    """A mix draws only its kinds of faults, and all of them between start and heal."""
    seen: set[type] = set()
    for seed in range(30):
        plan = draw_fault_plan(
            random.Random(seed), mix=mix, nodes=NODES, start_us=1_000_000, heal_us=20_000_000
        )
        assert plan.heal_us == 20_000_000
        seen.update(type(fault) for fault in plan.faults)
    assert seen == kinds


def test_no_faults_mix_is_healthy_from_the_start() -> None:
    """The `none` mix draws an empty plan that is healed from time zero."""
    plan = draw_fault_plan(random.Random(0), mix=FaultMix.NONE, nodes=NODES, start_us=0, heal_us=10)
    assert plan == FaultPlan()


def test_scheduled_faults_happen_at_their_times_and_heal_restores_everything() -> None:
    """Crash, pause and partition apply on time; the heal restarts, resumes and reconnects."""
    sim = recorder_sim(*NODES, link=Link(transport=Transport.DATAGRAM))
    plan = FaultPlan(
        faults=(
            NodeCrash(node="a", at_us=100_000),
            NodeCrash(node="d", at_us=100_000, permanent=True),
            NodePause(node="b", at_us=200_000, resume_at_us=300_000),
            Partition(side_a=("c",), side_b=("b",), at_us=100_000, heal_at_us=400_000),
            NodeOverload(node="c", ramp=Ramp(start_us=0, peak_us=10, peak_value=0.5)),
        ),
        heal_us=500_000,
    )
    sim.apply_fault_plan(plan)
    states: dict[int, list[NodeState]] = {}

    def probe(probe_us: int) -> None:
        states[probe_us] = [sim.node_state(node_id) for node_id in NODES]

    for probe_us in (150_000, 250_000, 600_000):
        sim.call_at(probe_us, functools.partial(probe, probe_us), label="probe")
    send_at(sim, "c", "b", [1], at_us=150_000)
    send_at(sim, "c", "b", [2], at_us=450_000)
    healed: list[Observed] = []
    sim.add_observer(
        lambda event: healed.append(event) if isinstance(event.observation, FaultsHealed) else None
    )
    result = sim.run(until_us=1_000_000)
    up, paused, crashed = NodeState.UP, NodeState.PAUSED, NodeState.CRASHED
    assert states[150_000] == [crashed, up, up, crashed]
    assert states[250_000] == [crashed, paused, up, crashed]
    assert states[600_000] == [up, up, up, crashed]
    assert recorder(sim, "b").notes() == [2]
    assert [event.time_us for event in healed] == [500_000]
    assert sim.heal_us == 500_000
    assert sim.process_stats("c").load == 0.0
    assert result.counters["node-restarted"] == 1


def test_overlapping_faults_are_skipped_and_counted() -> None:
    """A fault that no longer applies (pausing a crashed node) is skipped, not raised."""
    sim = recorder_sim("a")
    plan = FaultPlan(
        faults=(
            NodeCrash(node="a", at_us=10, restart_at_us=100),
            NodePause(node="a", at_us=20, resume_at_us=30),
        ),
        heal_us=200,
    )
    sim.apply_fault_plan(plan)
    result = sim.run(until_us=1_000)
    assert result.ok
    assert result.counters["fault-skipped"] == 2
