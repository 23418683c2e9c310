"""The project's own scenarios: the real cores under the fault mixes and the planned flows.

Each builder returns a ready-to-run `SimCluster`; the registry holds factories that return its
simulator. Every scenario runs all the checkers after every event, liveness at the end (after
the faults healed, plus the bound) and the convergence check. Scenario `all` runs the others in
turn, seed by seed (seed `n` runs `ROTATION[n % len(ROTATION)]`), which is what a campaign over
every fault mix and flow uses.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from forehand.core import CoreDriver, NodeId
from forehand.core import manager_events as me
from forehand.core.messages import PartRef
from forehand.sim._campaign import register_scenario
from forehand.sim._cluster import MANAGER, ClusterConfig, CrashMeasure, SimCluster
from forehand.sim._faults import FaultMix, draw_fault_plan
from forehand.sim._simulator import Simulator
from forehand.wire import ReasonCode

__all__ = [
    "ALL_SCENARIO",
    "FAULTS_HEAL_US",
    "PLANNED_AT_US",
    "ROTATION",
    "SCENARIOS",
    "SETTLE_US",
    "build_all",
    "build_crash_replicated",
    "build_drain",
    "build_handoff",
    "build_mix",
    "build_partition_mid_handoff",
    "primaries_of",
]

FAULTS_START_US = 1_500_000
"""Drawn faults begin once the sessions are open and busy."""
FAULTS_HEAL_US = 6_000_000
"""Every drawn fault is over by then."""
SETTLE_US = 9_000_000
"""Time after healing for liveness (its bound is 8 s) and for the cluster to settle."""
PLANNED_AT_US = 2_000_000
"""When the planned scenarios start their drain, handoff or crash."""
CRASH_RESTART_AFTER_US = 3_000_000
"""How long the crashed primary of `crash-replicated` stays down."""
FAULTY_SERVERS_MAX = 1
"""Servers a drawn plan makes faulty (crashed, paused, or cut off from the manager).

A `replicated` write is acknowledged once one replica holds it, so the cores keep their
guarantees with one faulty server at a time: two (the primary and the replica that acknowledged,
or a cut-off primary and a cut-off replica still talking to each other) can lose acknowledged
writes by design. Any number of faults may hit that one server, and load, congestion between
servers or to clients, and partitions of the servers hit anyone."""
CRASH_REPLICATION_INTERVALS_MS = (20, 100, 300)
"""Log shipping intervals `crash-replicated` draws from: the longer, the more lag to lose."""
ALL_SCENARIO = "all"
"""The scenario that runs every other built-in one in turn."""


def build_mix(seed: int, mix: FaultMix) -> SimCluster:
    """Four servers under load, with one to three faults drawn from `mix` (none for `steady`)."""
    heal_us = 0 if mix is FaultMix.NONE else FAULTS_HEAL_US
    config = ClusterConfig(
        servers=4,
        heal_us=heal_us,
        duration_us=max(heal_us, PLANNED_AT_US) + SETTLE_US,
        lossy_network=mix is not FaultMix.NONE,
    )
    cluster = SimCluster(seed, config)
    if mix is not FaultMix.NONE:
        rng = cluster.sim.rng("faults")
        plan = draw_fault_plan(
            rng,
            mix=mix,
            nodes=cluster.server_ids,
            peers=[MANAGER, *cluster.server_ids, *cluster.client_ids],
            start_us=FAULTS_START_US,
            heal_us=heal_us,
            fault_count=rng.randint(1, 3),
            faulty_nodes_max=FAULTY_SERVERS_MAX,
            critical_peers=(MANAGER,),
        )
        cluster.sim.apply_fault_plan(plan)
    cluster.start()
    return cluster


def primaries_of(cluster: SimCluster, server_id: NodeId) -> list[PartRef]:
    """The parts the manager's current map makes `server_id` primary of."""
    current = cluster.manager().shard_map
    if current is None:
        return []
    keys = current.parts_for(server_id).primary
    return [PartRef(session_id=key.session_id, part=key.part) for key in keys]


def _busiest(cluster: SimCluster, rng: random.Random) -> NodeId:
    """The server holding the most primaries (ties broken by the seed)."""
    counts = [(len(primaries_of(cluster, s)), rng.random(), s) for s in cluster.server_ids]
    return max(counts)[2]


def _at_busiest(
    cluster: SimCluster, label: str, action: Callable[[SimCluster, NodeId, int], None]
) -> None:
    """At `PLANNED_AT_US`, pick the busiest server and run `action` as a manager command."""
    rng = cluster.sim.rng("scenario")

    def pick() -> None:
        chosen = _busiest(cluster, rng)
        cluster.planned = chosen

        def command(core: CoreDriver, now_us: int) -> None:
            action(cluster, chosen, now_us)

        cluster.sim.command(MANAGER, command, label=f"{label} {chosen}")

    cluster.sim.call_at(PLANNED_AT_US, pick, label=label)


def _drain(cluster: SimCluster, server_id: NodeId, now_us: int) -> None:
    assert cluster.manager().drain(server_id, now_us=now_us), f"drain of {server_id} refused"


def _predict(cluster: SimCluster, server_id: NodeId, now_us: int) -> None:
    queued = cluster.manager().request_handoff(
        server_id, reason=ReasonCode.PREDICTED_FAILURE, parts_fraction=1.0, now_us=now_us
    )
    assert queued > 0, f"nothing to move off {server_id}"


def build_drain(seed: int) -> SimCluster:
    """Five servers under steady load; the operator drains the busiest one."""
    cluster = SimCluster(seed, ClusterConfig(servers=5, duration_us=PLANNED_AT_US + SETTLE_US))
    _at_busiest(cluster, "drain", _drain)
    cluster.start()
    return cluster


def build_handoff(seed: int) -> SimCluster:
    """Steady load; the risk input predicts a failure of the busiest server: all its parts move."""
    cluster = SimCluster(seed, ClusterConfig(servers=4, duration_us=PLANNED_AT_US + SETTLE_US))
    _at_busiest(cluster, "predicted failure", _predict)
    cluster.start()
    return cluster


def build_crash_replicated(seed: int) -> SimCluster:
    """Steady load; the busiest primary crashes (its lag measured first) and restarts later."""
    heal_us = PLANNED_AT_US + CRASH_RESTART_AFTER_US
    # Busy sessions and slow log shipping leave async writes in flight at the crash; servers
    # handle inputs as they arrive, so the lag measured at the crash is exactly what they hold.
    config = ClusterConfig(
        servers=4,
        heal_us=heal_us,
        duration_us=heal_us + SETTLE_US,
        think_time_us=50_000,
        write_share=0.8,
        replication_interval_ms=random.Random(seed).choice(CRASH_REPLICATION_INTERVALS_MS),
        server_service_time_us=0,
    )
    cluster = SimCluster(seed, config)
    rng = cluster.sim.rng("scenario")
    cluster.crash = measure = CrashMeasure()

    def crash() -> None:
        victim = _busiest(cluster, rng)
        cluster.planned = victim
        measure.measure(cluster, victim)
        cluster.sim.crash(victim)

    cluster.sim.call_at(PLANNED_AT_US, crash, label="crash the busiest primary")
    cluster.sim.call_at(heal_us, cluster.sim.heal, label="heal")
    cluster.start()
    return cluster


CUT_DELAYS_US = (0, 500, 2_000, 10_000, 50_000)
"""How long after the handoff starts the source and target are cut off from each other."""
CUT_LENGTHS_US = (200_000, 1_000_000, 3_000_000, 6_000_000)
"""How long the cut lasts: shorter and longer than the handoff's deadline."""


def build_partition_mid_handoff(seed: int) -> SimCluster:
    """A predicted handoff; its source and target are cut off from each other while it runs."""
    choices = random.Random(seed)
    cut_delay_us = choices.choice(CUT_DELAYS_US)
    cut_length_us = choices.choice(CUT_LENGTHS_US)
    heal_us = PLANNED_AT_US + cut_delay_us + cut_length_us + 500_000
    config = ClusterConfig(servers=4, heal_us=heal_us, duration_us=heal_us + SETTLE_US)
    cluster = SimCluster(seed, config)
    sim = cluster.sim

    def started(node_id: NodeId, event: me.HandoffStarted) -> None:
        if cluster.cut is not None:
            return
        cluster.cut = (event.source, event.target)

        def cut() -> None:
            token = sim.start_partition([event.source], [event.target])
            end_us = min(sim.now_us + cut_length_us, heal_us)
            sim.call_at(end_us, lambda: sim.end_partition(token), label="end the cut")

        sim.call_at(sim.now_us + cut_delay_us, cut, label="cut the source from the target")

    cluster.translator.on(me.HandoffStarted, started)
    _at_busiest(cluster, "predicted failure", _predict)
    cluster.start()
    return cluster


def _mix(mix: FaultMix) -> Callable[[int], SimCluster]:
    return lambda seed: build_mix(seed, mix)


SCENARIOS: dict[str, tuple[Callable[[int], SimCluster], str]] = {
    "steady": (_mix(FaultMix.NONE), "four servers, two clients, six sessions; no faults"),
    "gradual": (_mix(FaultMix.GRADUAL), "overload and congestion ramps, flapping links"),
    "sudden": (_mix(FaultMix.SUDDEN), "crashes, link cuts and pauses"),
    "partition": (_mix(FaultMix.PARTITION), "the servers split in two groups"),
    "mixed": (_mix(FaultMix.MIXED), "every kind of fault"),
    "drain": (build_drain, "five servers under load; the busiest one is drained"),
    "handoff": (build_handoff, "a predicted failure moves the busiest server's parts"),
    "crash-replicated": (build_crash_replicated, "the busiest primary crashes under load"),
    "partition-mid-handoff": (
        build_partition_mid_handoff,
        "source and target of a handoff are cut off from each other",
    ),
}
"""Every built-in scenario: its builder and a one-line description."""

ROTATION: tuple[str, ...] = tuple(SCENARIOS)
"""The order in which scenario `all` runs the others."""


def build_all(seed: int) -> SimCluster:
    """Seed `n` runs scenario `ROTATION[n % len(ROTATION)]`, so a campaign covers them all."""
    name = ROTATION[seed % len(ROTATION)]
    cluster = SCENARIOS[name][0](seed)
    cluster.sim.count(f"scenario/{name}")
    return cluster


def _factory(build: Callable[[int], SimCluster]) -> Callable[[int], Simulator]:
    return lambda seed: build(seed).sim


for _name, (_build, _description) in SCENARIOS.items():
    register_scenario(_name, _factory(_build), description=_description)
register_scenario(
    ALL_SCENARIO,
    _factory(build_all),
    description="the nine others in turn, seed by seed: seed n runs the (n mod 9)-th of "
    + ", ".join(ROTATION),
)
