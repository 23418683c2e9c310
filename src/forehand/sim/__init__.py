"""The deterministic discrete-event simulator that runs the real cores.

One root seed drives a whole simulated cluster: the network (delay, jitter, loss, duplication,
reordering, bandwidth, partitions, degradation ramps, connection resets), the processes (CPU
capacity and load ramps, pauses, crashes, restarts), the faults, and the workload (sessions with
several parts, a request mix, think times). Invariant checkers judge
every observation; liveness is judged at the end; the trace digest proves the same seed replays
the same run. `python -m forehand.sim --scenario NAME --seeds N` runs a campaign.

`SimCluster` runs the real cores (`ManagerCore`, `ServerCore`, `ClientCore`) with a shop
application and translates their events to the observations; the built-in scenarios (`steady`,
the fault mixes, `drain`, `handoff`, `crash-replicated`, `partition-mid-handoff`, and `all` of
them in turn, with waiting reads judged by `WaitingReadChecker`) register themselves from
`forehand.sim._scenarios`.
"""

from __future__ import annotations

from forehand.core._driver import ConnectionLost, ConnectionOpened
from forehand.sim._app import APP_PARTS, PART_DURABILITY, app_specs, operation_for
from forehand.sim._campaign import (
    BUILTIN_SCENARIO_MODULES,
    Campaign,
    CampaignResult,
    Scenario,
    get_scenario,
    register_scenario,
    replay_command,
    run_scenario,
    scenario,
    scenario_names,
)
from forehand.sim._checkers import (
    AcknowledgedWritesChecker,
    AtMostOnceChecker,
    Checker,
    ClientOrderChecker,
    InvariantViolated,
    LivenessChecker,
    MonotonicMapVersionChecker,
    SingleWriterChecker,
    WaitingReadChecker,
    WriteLost,
    default_checkers,
)
from forehand.sim._cluster import (
    CLUSTER_KEY,
    MANAGER,
    ClusterConfig,
    ClusterPlan,
    CrashMeasure,
    ShopAdapter,
    SimCluster,
    draw_plan,
)
from forehand.sim._cluster_checkers import ConvergenceChecker, DivergenceChecker
from forehand.sim._faults import (
    Fault,
    FaultMix,
    FaultPlan,
    LinkDegradation,
    NodeCrash,
    NodeOverload,
    NodePause,
    Partition,
    draw_fault_plan,
)
from forehand.sim._links import (
    DEFAULT_MESSAGE_BYTES,
    JitterDistribution,
    Link,
    NetworkConfig,
    PartitionDirection,
    Transport,
)
from forehand.sim._process import (
    NodeFactory,
    NodeStart,
    NodeState,
    ProcessModel,
    ProcessStats,
    StoreExecutor,
)
from forehand.sim._ramp import Ramp, RampShape
from forehand.sim._rng import derive_rng, derive_seed
from forehand.sim._scenarios import (
    ALL_SCENARIO,
    ROTATION,
    SCENARIOS,
    build_all,
    build_crash_replicated,
    build_drain,
    build_handoff,
    build_leave,
    build_mix,
    build_partition_mid_handoff,
    build_stall,
    primaries_of,
)
from forehand.sim._simulator import (
    Failure,
    RunResult,
    Simulator,
    SimulatorConfig,
    Translator,
    pass_observations,
)
from forehand.sim._translate import ClusterStats, CoreTranslator, SessionDirectory
from forehand.sim._workload import (
    Workload,
    WorkloadAdapter,
    WorkloadConfig,
    WorkloadRequest,
    WorkloadSession,
)

__all__ = [
    "ALL_SCENARIO",
    "APP_PARTS",
    "BUILTIN_SCENARIO_MODULES",
    "CLUSTER_KEY",
    "DEFAULT_MESSAGE_BYTES",
    "MANAGER",
    "PART_DURABILITY",
    "ROTATION",
    "SCENARIOS",
    "AcknowledgedWritesChecker",
    "AtMostOnceChecker",
    "Campaign",
    "CampaignResult",
    "Checker",
    "ClientOrderChecker",
    "ClusterConfig",
    "ClusterPlan",
    "ClusterStats",
    "ConnectionLost",
    "ConnectionOpened",
    "ConvergenceChecker",
    "CoreTranslator",
    "CrashMeasure",
    "DivergenceChecker",
    "Failure",
    "Fault",
    "FaultMix",
    "FaultPlan",
    "InvariantViolated",
    "JitterDistribution",
    "Link",
    "LinkDegradation",
    "LivenessChecker",
    "MonotonicMapVersionChecker",
    "NetworkConfig",
    "NodeCrash",
    "NodeFactory",
    "NodeOverload",
    "NodePause",
    "NodeStart",
    "NodeState",
    "Partition",
    "PartitionDirection",
    "ProcessModel",
    "ProcessStats",
    "Ramp",
    "RampShape",
    "RunResult",
    "Scenario",
    "SessionDirectory",
    "ShopAdapter",
    "SimCluster",
    "Simulator",
    "SimulatorConfig",
    "SingleWriterChecker",
    "WaitingReadChecker",
    "StoreExecutor",
    "Translator",
    "Transport",
    "Workload",
    "WorkloadAdapter",
    "WorkloadConfig",
    "WorkloadRequest",
    "WorkloadSession",
    "WriteLost",
    "app_specs",
    "build_all",
    "build_crash_replicated",
    "build_drain",
    "build_handoff",
    "build_leave",
    "build_mix",
    "build_partition_mid_handoff",
    "build_stall",
    "default_checkers",
    "derive_rng",
    "derive_seed",
    "draw_fault_plan",
    "draw_plan",
    "get_scenario",
    "operation_for",
    "pass_observations",
    "primaries_of",
    "register_scenario",
    "replay_command",
    "run_scenario",
    "scenario",
    "scenario_names",
]
