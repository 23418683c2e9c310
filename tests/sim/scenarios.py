"""Test-only scenarios, registered on import; the command-line tests import them with --import."""

from __future__ import annotations

from forehand.core import NodeId
from forehand.sim import (
    FaultMix,
    FaultPlan,
    JitterDistribution,
    Link,
    NetworkConfig,
    NodeCrash,
    NodeStart,
    Simulator,
    SimulatorConfig,
    default_checkers,
    draw_fault_plan,
    register_scenario,
)
from forehand.sim.observations import Durability, MapVersionObserved

from ._cores import LogClientCore, LogConfig, LogServerCore, PingCore, RecorderCore

PING_NODES: tuple[NodeId, ...] = ("n1", "n2", "n3", "n4")


def build_ping_mesh(seed: int, *, duration_us: int = 5_000_000) -> Simulator:
    """Four nodes pinging each other every 10 ms over jittery, lossy connections, with faults."""
    link = Link(
        delay_us=2_000,
        jitter_us=1_000,
        jitter_distribution=JitterDistribution.LOGNORMAL,
        loss_probability=0.01,
    )
    sim = Simulator(
        seed=seed,
        config=SimulatorConfig(duration_us=duration_us),
        network=NetworkConfig(default_link=link, connection_timeout_us=500_000),
    )
    for node_id in PING_NODES:
        peers = tuple(peer for peer in PING_NODES if peer != node_id)

        def build(start: NodeStart, peers: tuple[NodeId, ...] = peers) -> PingCore:
            return PingCore(start, peers=peers, interval_us=10_000)

        sim.add_node(node_id, build)
    plan = draw_fault_plan(
        sim.rng("faults"),
        mix=FaultMix.MIXED,
        nodes=PING_NODES,
        start_us=500_000,
        heal_us=duration_us // 2,
    )
    sim.apply_fault_plan(plan)
    return sim


def build_log(
    seed: int,
    *,
    durability: Durability = Durability.REPLICATED,
    ack_before_replication: bool = False,
    crash_at_us: int = 1_000_000,
    duration_us: int = 4_000_000,
) -> Simulator:
    """A primary-backup log; the primary crashes at `crash_at_us` and restarts at heal."""
    config = LogConfig(durability=durability, ack_before_replication=ack_before_replication)
    heal_us = crash_at_us + 1_000_000
    sim = Simulator(
        seed=seed,
        config=SimulatorConfig(duration_us=duration_us),
        network=NetworkConfig(default_link=Link(delay_us=1_000, jitter_us=500)),
        checkers=default_checkers(liveness_bound_us=1_000_000),
    )
    sim.add_node("s1", lambda start: LogServerCore(start, peer="s2", primary=True, config=config))
    sim.add_node("s2", lambda start: LogServerCore(start, peer="s1", primary=False, config=config))
    sim.add_node("c1", lambda start: LogClientCore(start, servers=("s1", "s2"), config=config))
    plan = FaultPlan(faults=(NodeCrash(node="s1", at_us=crash_at_us),), heal_us=heal_us)
    sim.apply_fault_plan(plan)
    return sim


def build_broken_map(seed: int) -> Simulator:
    """A node that reports its map version going backwards: fails on every seed."""
    sim = Simulator(
        seed=seed,
        config=SimulatorConfig(duration_us=100_000),
        checkers=default_checkers(liveness_bound_us=None),
    )
    sim.add_node("n1", lambda start: RecorderCore(start.node_id))

    def report(version: int) -> None:
        core = sim.core("n1")
        assert isinstance(core, RecorderCore)
        core.events.append(MapVersionObserved(node="n1", map_version=version))
        sim.command("n1", lambda core, now_us: None, label="drain")

    sim.call_at(10_000 + seed, lambda: report(2), label="version 2")
    sim.call_at(20_000 + seed, lambda: report(1), label="version 1")
    return sim


register_scenario("ping-mesh", build_ping_mesh, description="four pinging nodes, mixed faults")
register_scenario("log-failover", build_log, description="primary-backup log, primary crashes")
register_scenario(
    "log-ack-early",
    lambda seed: build_log(seed, ack_before_replication=True),
    description="a log that acknowledges before replicating (must fail)",
)
register_scenario("broken-map", build_broken_map, description="map version goes back (must fail)")
