"""The project's own scenarios: the real cores under the fault mixes and the planned flows.

Each builder returns a ready-to-run `SimCluster`; the registry holds factories that return its
simulator. Every scenario runs all the checkers after every event, liveness at the end (after
the faults healed, plus the bound) and the convergence check. Scenario `all` runs the others in
turn, seed by seed (seed `n` runs `ROTATION[n % len(ROTATION)]`), which is what a campaign over
every fault mix and flow uses.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from forehand.core import CoreDriver, NodeId, RiskPolicyKind
from forehand.core import manager_events as me
from forehand.core import server_events as se
from forehand.core.messages import PartRef
from forehand.sim._app import STALL_OP
from forehand.sim._campaign import register_scenario
from forehand.sim._cluster import (
    LOAD_REPORT_INTERVAL_US,
    MANAGER,
    ClusterConfig,
    ClusterPlan,
    CrashMeasure,
    SimCluster,
    draw_plan,
)
from forehand.sim._faults import FaultMix, draw_fault_plan
from forehand.sim._links import PartitionDirection
from forehand.sim._ramp import Ramp
from forehand.sim._rng import derive_rng
from forehand.sim._simulator import Simulator
from forehand.sim._workload import WorkloadRequest
from forehand.wire import ReasonCode

__all__ = [
    "ALL_SCENARIO",
    "FAULTS_HEAL_US",
    "ONE_WAY_SCENARIO",
    "PLANNED_AT_US",
    "ROTATION",
    "SCENARIOS",
    "SETTLE_US",
    "STALL_SCENARIO",
    "WAITING_READ_SHARE",
    "build_all",
    "build_crash_replicated",
    "build_drain",
    "build_drain_one_way",
    "build_handoff",
    "build_leave",
    "build_mix",
    "build_partition_mid_handoff",
    "build_stall",
    "PREDICTED_SCENARIO",
    "PredictedCluster",
    "PredictedWatch",
    "build_predicted",
    "primaries_of",
]

FAULTS_START_US = 1_500_000
"""Drawn faults begin once the sessions are open and busy."""
FAULTS_HEAL_US = 6_000_000
"""Every drawn fault is over by then."""
REBALANCE_AFTER_HEAL_US = 2_000_000
"""The fault mixes' rebalance comes at most this long after the faults healed."""
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
WAITING_READ_SHARE = 0.1
"""Share of the requests of scenario `all` that are waiting reads, made in the background."""
PREDICTED_SCENARIO = "predicted"
"""The scenario of a predicted overload (outside `all`: it runs for minutes of simulated time)."""


def build_mix(
    seed: int, mix: FaultMix, *, waiting_read_share: float = 0.0, leave: bool = False
) -> SimCluster:
    """Four servers under load, with one to three faults drawn from `mix` (none for `steady`)
    and an operator's rebalance among them; with `leave`, a server drawn by the seed also stops
    the planned way (SIGTERM) at a drawn time while the faults run."""
    heal_us = 0 if mix is FaultMix.NONE else FAULTS_HEAL_US
    config = ClusterConfig(
        servers=4,
        heal_us=heal_us,
        duration_us=max(heal_us, PLANNED_AT_US) + SETTLE_US,
        lossy_network=mix is not FaultMix.NONE,
        waiting_read_share=waiting_read_share,
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
        _rebalance_during(cluster)
        if leave:
            rng = cluster.sim.rng("leave")
            chosen = rng.choice(cluster.server_ids)
            _leave_at(cluster, rng.randrange(FAULTS_START_US, FAULTS_HEAL_US), lambda: chosen)
    cluster.start()
    return cluster


def _rebalance_during(cluster: SimCluster) -> None:
    """An operator's rebalance at a drawn time while the faults run or just after they heal
    (servers that crashed come back with few primaries): its handoffs meet the faults."""
    rng = cluster.sim.rng("operator")
    at_us = rng.randrange(FAULTS_START_US, FAULTS_HEAL_US + REBALANCE_AFTER_HEAL_US)

    def rebalance(core: CoreDriver, now_us: int) -> None:
        queued = cluster.manager().rebalance(now_us=now_us)
        cluster.sim.count("scenario/rebalance-queued" if queued else "scenario/rebalance-none")

    cluster.sim.command(MANAGER, rebalance, at_us=at_us, label="rebalance")


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


def build_drain(seed: int, *, waiting_read_share: float = 0.0) -> SimCluster:
    """Five servers under steady load; the operator drains the busiest one."""
    config = ClusterConfig(
        servers=5,
        duration_us=PLANNED_AT_US + SETTLE_US,
        waiting_read_share=waiting_read_share,
    )
    cluster = SimCluster(seed, config)
    _at_busiest(cluster, "drain", _drain)
    cluster.start()
    return cluster


LEAVE_SCENARIO = "leave"
"""The scenario name of `build_leave` (not in the rotation)."""
LEAVE_FAULTS_SCENARIO = "leave-faults"
"""A mixed fault plan with a leave among the faults (not in the rotation)."""


def build_leave(seed: int, *, waiting_read_share: float = 0.0) -> SimCluster:
    """Five servers under steady load; the busiest one stops the planned way (SIGTERM): it
    asks to be drained (`ServerCore.leave`), and its process exits at `ServerLeft`."""
    config = ClusterConfig(
        servers=5,
        duration_us=PLANNED_AT_US + SETTLE_US,
        waiting_read_share=waiting_read_share,
    )
    cluster = SimCluster(seed, config)
    rng = cluster.sim.rng("scenario")
    _leave_at(cluster, PLANNED_AT_US, lambda: _busiest(cluster, rng))
    cluster.start()
    return cluster


def _leave_at(cluster: SimCluster, at_us: int, choose: Callable[[], NodeId]) -> None:
    """At `at_us`, the server `choose()` names stops the planned way: `ServerCore.leave`, and
    its process exits at `ServerLeft` (a permanent crash, after which what it sent, its last
    heartbeat, still arrives)."""

    def leave() -> None:
        chosen = choose()
        cluster.planned = chosen

        def command(core: CoreDriver, now_us: int) -> None:
            core.leave(now_us=now_us)  # type: ignore[attr-defined]

        cluster.sim.command(chosen, command, label=f"leave {chosen}")

    def left(node_id: NodeId, event: se.ServerLeft) -> None:
        cluster.sim.call_at(
            cluster.sim.now_us,
            lambda: cluster.sim.crash(node_id, permanent=True, exited=True),
            label=f"{node_id} exits",
        )

    cluster.translator.on(se.ServerLeft, left)
    cluster.sim.call_at(at_us, leave, label="leave")


def build_handoff(seed: int, *, waiting_read_share: float = 0.0) -> SimCluster:
    """Steady load; the risk input predicts a failure of the busiest server: all its parts move."""
    config = ClusterConfig(
        servers=4,
        duration_us=PLANNED_AT_US + SETTLE_US,
        waiting_read_share=waiting_read_share,
    )
    cluster = SimCluster(seed, config)
    _at_busiest(cluster, "predicted failure", _predict)
    cluster.start()
    return cluster


def build_crash_replicated(seed: int, *, waiting_read_share: float = 0.0) -> SimCluster:
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
        waiting_read_share=waiting_read_share,
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


def build_partition_mid_handoff(seed: int, *, waiting_read_share: float = 0.0) -> SimCluster:
    """A predicted handoff; its source and target are cut off from each other while it runs."""
    choices = random.Random(seed)
    cut_delay_us = choices.choice(CUT_DELAYS_US)
    cut_length_us = choices.choice(CUT_LENGTHS_US)
    heal_us = PLANNED_AT_US + cut_delay_us + cut_length_us + 500_000
    config = ClusterConfig(
        servers=4,
        heal_us=heal_us,
        duration_us=heal_us + SETTLE_US,
        waiting_read_share=waiting_read_share,
    )
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


ONE_WAY_CUT_LENGTHS_US = (1_000_000, 3_000_000, 6_000_000, 12_000_000)
"""How long the manager's messages to a drained server are lost: shorter and longer than the
handoff deadline."""
STALL_SCENARIO = "stall"
STALL_US = 6_000_000
"""How long a `stall` call holds the CPU of the server that runs it: past any failure timeout
the scenarios draw (at most 2.5 s), so that server is declared dead while it runs."""


def build_stall(seed: int) -> SimCluster:
    """Five servers under load; one session's cart gets a call whose handler blocks the server
    that runs it for `STALL_US` (`Simulator.stall_us`). Its server is declared dead, the client
    sends the call on to the promoted replica, which stalls in turn: the client gives up after
    `ClientConfig.call_servers_lost_max` servers, and the checkers judge that no acknowledged
    write was lost on the way (the promoted replica ran nothing before a replica caught up)."""
    heal_us = PLANNED_AT_US + 2 * STALL_US
    config = ClusterConfig(
        servers=5, heal_us=heal_us, duration_us=heal_us + SETTLE_US, think_time_us=50_000
    )
    cluster = SimCluster(seed, config)
    cluster.sim.stall_us = STALL_US
    rng = cluster.sim.rng("scenario")

    def stall() -> None:
        workload = cluster.workload
        assert workload is not None
        session = rng.choice(workload.sessions)
        request = WorkloadRequest(session=session, part="cart", operation=STALL_OP, sequence=1)

        def command(core: CoreDriver, now_us: int) -> None:
            cluster.adapter.issue(core, request, now_us)

        cluster.sim.command(session.client, command, label="a call that stalls its server")

    cluster.sim.call_at(PLANNED_AT_US, stall, label="stall")
    cluster.start()
    return cluster


ONE_WAY_SCENARIO = "drain-one-way"
"""The scenario name of `build_drain_one_way` (not in the rotation)."""


def build_drain_one_way(seed: int) -> SimCluster:
    """The busiest server is drained while the manager's messages to it are lost (its own
    heartbeats still arrive): it never hears of the drain, its handoffs fall back to failover,
    and it keeps serving its clients until the cut heals, then gets the versions it missed in
    a burst. Every checker holds (replicated writes, exactly once, one writer per version),
    except that `async` writes are allowed to be lost to a failover, as after a crash: one that
    promotes another candidate while the cut-off server goes on acknowledging writes its last
    heartbeat did not show (the failover keeps a silent source primary when no candidate wrote
    at the move's version, so this is rarer). Catching up no longer loses any: a part fenced
    for a failover ignores the older maps of the burst (the drain's moves that the failover
    undid), and the server hands over with its log a part a later drain moves off it, since a
    handoff target does not fence its source with the move's version (docs/ARCHITECTURE.md,
    Guarantees)."""
    choices = random.Random(seed)
    cut_length_us = choices.choice(ONE_WAY_CUT_LENGTHS_US)
    cut_at_us = PLANNED_AT_US - choices.choice((0, 100_000, 500_000))
    heal_us = cut_at_us + cut_length_us
    config = ClusterConfig(servers=4, heal_us=heal_us, duration_us=heal_us + SETTLE_US)
    cluster = SimCluster(seed, config)
    sim = cluster.sim
    rng = sim.rng("scenario")

    def cut() -> None:
        victim = _busiest(cluster, rng)
        cluster.planned = victim
        token = sim.start_partition([MANAGER], [victim], direction=PartitionDirection.A_TO_B)
        sim.call_at(heal_us, lambda: sim.end_partition(token), label="end the one-way cut")

        def command(core: CoreDriver, now_us: int) -> None:
            _drain(cluster, victim, now_us)

        sim.call_at(
            PLANNED_AT_US,
            lambda: sim.command(MANAGER, command, label=f"drain {victim}"),
            label="drain",
        )

    sim.call_at(cut_at_us, cut, label="cut the manager's messages to the busiest server")
    cluster.start()
    return cluster


PREDICTED_SERVICE_TIME_US = 200
"""Every server's CPU time per input in `predicted`: saturation stretches it a hundredfold."""
PREDICTED_SLO_US_P99 = 10_000
"""The p99 latency SLO of `predicted` (the predictor's breach label): 50x the service time, a
load of 0.98 with an empty inbox."""
PREDICTED_HORIZON_MS = 30_000
"""H of `predicted`'s predictor: risk of a breach within 30 s."""
PREDICTED_LEAD_MS = 2_000
"""L of `predicted`'s predictor."""
PREDICTED_MODEL = "rule"
"""The head that decides in `predicted`: thresholds plus Holt time-to-threshold, calibrated
online by Platt scaling on delayed labels. The logistic head runs beside it but would need
more ramps than a test can afford before it beats the rule."""
PREDICTED_HEARTBEAT_MS = 250
"""Every server's heartbeat interval in `predicted`, and the predictor's tick."""
PREDICTED_RISK_THRESHOLD = 0.3
"""The calibrated risk that starts moving parts in `predicted`."""
PREDICTED_BASE_LOAD = 0.2
"""Every server's background load in `predicted` before and between the ramps."""
PREDICTED_LABELS_MIN = 300
"""Labelled heartbeats before `predicted`'s predictor acts (the rule is off in this scenario)."""
TRAINING_RAMPS = 3
"""Overload ramps the predictor learns from, one per server in turn, before the test ramp."""
TRAINING_START_US = 3_000_000
"""When the first training ramp starts."""
TRAINING_SPACING_US = 36_000_000
"""Between the starts of two training ramps."""
RAMP_RISE_US = 24_000_000
"""How long a ramp takes from no extra load to saturation."""
RAMP_HOLD_US = 4_000_000
"""How long a ramp holds its peak before it recovers."""
RAMP_RECOVER_US = 4_000_000
"""How long a ramp takes to fall back."""
RAMP_PEAK_LOAD = 1.05
"""Total load a ramp drives its server to: saturated, above the SLO."""


@dataclass(slots=True)
class PredictedWatch:
    """What `predicted` measured about its test ramp, for its test and its report."""

    target: NodeId = ""
    """The server of the test ramp."""
    ramp_start_us: int = 0
    """When the test ramp starts."""
    predicted_us: int | None = None
    """The manager's first acted, calibrated risk decision about the target in the test ramp."""
    breach_us: int | None = None
    """The first load report of the target above the SLO in the test ramp."""
    primaries_at_breach: int | None = None
    """The target's primaries at the breach (0: every part was handed off before it)."""
    decisions: list[me.RiskAssessed] = field(default_factory=list)
    """Every risk decision the manager logged."""


class PredictedCluster(SimCluster):
    """A `SimCluster` that carries what `predicted` measured."""

    def __init__(self, seed: int, config: ClusterConfig, *, plan: ClusterPlan) -> None:
        super().__init__(seed, config, plan=plan)
        self.watch = PredictedWatch()
        """The test ramp's measurements."""


def build_predicted(seed: int) -> PredictedCluster:
    """A gradual overload predicted by the learned predictor, and its parts handed off in time.

    The manager runs the predictive policy with the threshold rule off. Four overload ramps, one
    per server, teach it what precedes a breach of the latency SLO (the first ones breach
    unprotected: the predictor is not calibrated yet); then the test ramp hits the busiest
    server. The run records when the manager decided (`PredictedWatch.predicted_us`) and when
    the server's latency first breached the SLO (`breach_us`).
    """
    test_start_us = TRAINING_START_US + TRAINING_RAMPS * TRAINING_SPACING_US
    heal_us = test_start_us + RAMP_RISE_US + RAMP_HOLD_US + RAMP_RECOVER_US
    config = ClusterConfig(
        servers=4,
        heal_us=heal_us,
        duration_us=heal_us + SETTLE_US,
        server_service_time_us=PREDICTED_SERVICE_TIME_US,
        client_leaves=False,  # Every request of the run must be answered.
    )
    plan = draw_plan(derive_rng(seed, "cluster"), config)
    for server_id, server in plan.servers.items():
        process = plan.processes[server_id]
        plan.processes[server_id] = dataclasses.replace(process, base_load=PREDICTED_BASE_LOAD)
        plan.servers[server_id] = dataclasses.replace(
            server, heartbeat_interval_ms=PREDICTED_HEARTBEAT_MS
        )
    failure_timeout_ms = max(plan.manager.failure_timeout_ms, 4 * PREDICTED_HEARTBEAT_MS)
    manager = dataclasses.replace(
        plan.manager,
        heartbeat_interval_ms=PREDICTED_HEARTBEAT_MS,
        failure_timeout_ms=failure_timeout_ms,
        suspect_timeout_ms=max(plan.manager.suspect_timeout_ms, 2 * PREDICTED_HEARTBEAT_MS),
        risk_threshold=PREDICTED_RISK_THRESHOLD,
        risk_tick_ms=PREDICTED_HEARTBEAT_MS,
        overload_threshold=100.0,  # The threshold never fires: every move is the predictor's.
        risk_policy=RiskPolicyKind.PREDICTIVE,
        risk_model=PREDICTED_MODEL,
        risk_latency_slo_us_p99=PREDICTED_SLO_US_P99,
        risk_horizon_ms=PREDICTED_HORIZON_MS,
        risk_lead_ms=PREDICTED_LEAD_MS,
        risk_calibration_labels_min=PREDICTED_LABELS_MIN,
        risk_session_dwell_ms=10_000,
        overload_cooldown_ms=5_000,
    )
    cluster = PredictedCluster(seed, config, plan=dataclasses.replace(plan, manager=manager))
    sim = cluster.sim
    for index in range(TRAINING_RAMPS):
        server_id = cluster.server_ids[index % len(cluster.server_ids)]
        sim.add_load_ramp(server_id, _overload(cluster, server_id, _training_start(index)))
    watch = cluster.watch
    watch.ramp_start_us = test_start_us

    def decided(node_id: NodeId, event: me.RiskAssessed) -> None:
        watch.decisions.append(event)
        moving = event.action in ("drain", "move_now")
        if (
            event.server_id == watch.target
            and event.acted
            and event.calibrated
            and moving
            and watch.predicted_us is None
        ):
            watch.predicted_us = sim.now_us

    def start_test_ramp() -> None:
        rng = sim.rng("scenario")
        watch.target = cluster.planned = _busiest(cluster, rng)
        sim.add_load_ramp(watch.target, _overload(cluster, watch.target, test_start_us))
        sim.call_at(test_start_us, observe, label="watch the test ramp")

    def observe() -> None:
        if watch.breach_us is None and _latency_us(cluster, watch.target) > PREDICTED_SLO_US_P99:
            watch.breach_us = sim.now_us
            watch.primaries_at_breach = len(primaries_of(cluster, watch.target))
        if watch.breach_us is None and sim.now_us < heal_us:
            sim.call_at(sim.now_us + LOAD_REPORT_INTERVAL_US, observe, label="watch the test ramp")

    cluster.translator.on(me.RiskAssessed, decided)
    sim.call_at(test_start_us - 1, start_test_ramp, label="pick the test ramp's server")
    cluster.start()
    return cluster


def _training_start(index: int) -> int:
    return TRAINING_START_US + index * TRAINING_SPACING_US


def _overload(cluster: SimCluster, server_id: NodeId, start_us: int) -> Ramp:
    """A ramp from the server's base load to `RAMP_PEAK_LOAD`, held, then recovering."""
    base = cluster.plan.processes[server_id].base_load
    peak_us = start_us + RAMP_RISE_US
    return Ramp(
        start_us=start_us,
        peak_us=peak_us,
        peak_value=max(RAMP_PEAK_LOAD - base, 0.0),
        recover_us=peak_us + RAMP_HOLD_US + RAMP_RECOVER_US,
    )


def _latency_us(cluster: SimCluster, server_id: NodeId) -> int:
    """The p99 latency the server's next load report carries (as `SimCluster` computes it)."""
    if not cluster.up(server_id):
        return 0
    stats = cluster.sim.process_stats(server_id)
    process = cluster.plan.processes[server_id]
    return int(process.service_time_us * stats.slowdown * (1 + stats.inbox_depth))


class Builder(Protocol):
    """Builds a scenario's cluster for a seed, with waiting reads at `waiting_read_share`."""

    def __call__(self, seed: int, *, waiting_read_share: float = ...) -> SimCluster:
        """The cluster, ready to run."""
        ...


def _mix(mix: FaultMix) -> Builder:
    def build(seed: int, *, waiting_read_share: float = 0.0) -> SimCluster:
        return build_mix(seed, mix, waiting_read_share=waiting_read_share)

    return build


SCENARIOS: dict[str, tuple[Builder, str]] = {
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
    """Seed `n` runs scenario `ROTATION[n % len(ROTATION)]`, so a campaign covers them all, with
    `WAITING_READ_SHARE` of its requests waiting reads (the scenarios run alone make none, so
    their seeds replay as they did before waiting reads existed)."""
    name = ROTATION[seed % len(ROTATION)]
    cluster = SCENARIOS[name][0](seed, waiting_read_share=WAITING_READ_SHARE)
    cluster.sim.count(f"scenario/{name}")
    return cluster


def _factory(build: Callable[[int], SimCluster]) -> Callable[[int], Simulator]:
    return lambda seed: build(seed).sim


for _name, (_build, _description) in SCENARIOS.items():
    register_scenario(_name, _factory(_build), description=_description)
# Not in the rotation (adding one would change what every seed of `all` runs): campaigns name
# it, and tests/sim/test_seed_corpus.py runs a few of its seeds.
register_scenario(
    LEAVE_FAULTS_SCENARIO,
    _factory(lambda seed: build_mix(seed, FaultMix.MIXED, leave=True)),
    description="every kind of fault, and a server drawn by the seed stops the planned way",
)
register_scenario(
    LEAVE_SCENARIO,
    _factory(build_leave),
    description="the busiest server stops the planned way (SIGTERM): drained, then it exits",
)
register_scenario(
    STALL_SCENARIO,
    _factory(build_stall),
    description="a call whose handler blocks each server it runs on past the failure timeout",
)
register_scenario(
    ONE_WAY_SCENARIO,
    _factory(build_drain_one_way),
    description="the busiest server is drained while the manager's messages to it are lost",
)
# Not in the rotation: 160 simulated seconds a seed (the predictor must learn first) would
# double the corpus' time. tests/sim/test_predicted.py runs it.
register_scenario(
    PREDICTED_SCENARIO,
    _factory(build_predicted),
    description="the learned predictor sees an overload coming; parts move before the breach",
)
register_scenario(
    ALL_SCENARIO,
    _factory(build_all),
    description="the nine others in turn, seed by seed, with waiting reads: seed n runs the "
    "(n mod 9)-th of " + ", ".join(ROTATION),
)
