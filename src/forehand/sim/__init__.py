"""The deterministic discrete-event simulator that runs the real cores.

One root seed drives a whole simulated cluster: the network (delay, jitter, loss, duplication,
reordering, bandwidth, partitions, degradation ramps, connection resets), the processes (CPU
capacity and load ramps, pauses, crashes, restarts), the faults, and the workload (sessions with
several parts, a request mix, think times). Invariant checkers judge
every observation; liveness is judged at the end; the trace digest proves the same seed replays
the same run. `python -m forehand.sim --scenario NAME --seeds N` runs a campaign.
"""

from __future__ import annotations

from forehand.core._driver import ConnectionLost, ConnectionOpened
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
    WriteLost,
    default_checkers,
)
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
from forehand.sim._simulator import (
    Failure,
    RunResult,
    Simulator,
    SimulatorConfig,
    Translator,
    pass_observations,
)
from forehand.sim._workload import (
    Workload,
    WorkloadAdapter,
    WorkloadConfig,
    WorkloadRequest,
    WorkloadSession,
)

__all__ = [
    "BUILTIN_SCENARIO_MODULES",
    "DEFAULT_MESSAGE_BYTES",
    "AcknowledgedWritesChecker",
    "AtMostOnceChecker",
    "Campaign",
    "CampaignResult",
    "Checker",
    "ClientOrderChecker",
    "ConnectionLost",
    "ConnectionOpened",
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
    "Simulator",
    "SimulatorConfig",
    "SingleWriterChecker",
    "StoreExecutor",
    "Transport",
    "Translator",
    "Workload",
    "WorkloadAdapter",
    "WorkloadConfig",
    "WorkloadRequest",
    "WorkloadSession",
    "WriteLost",
    "default_checkers",
    "derive_rng",
    "derive_seed",
    "draw_fault_plan",
    "get_scenario",
    "pass_observations",
    "register_scenario",
    "replay_command",
    "run_scenario",
    "scenario",
    "scenario_names",
]
