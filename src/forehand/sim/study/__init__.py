"""The scale study (`forehand sim study`): ManagerCore, placement and predictor at fleet scale.

A numpy fleet model of 1,000 to 10,000 servers carrying up to a million sessions (aggregate load
per server, no individual requests) drives the real `ManagerCore`, its shard map and the
predictor, under a seeded mix of gradual, sudden and planned faults, once per policy (static,
reactive, predictive), and writes a Markdown report with plots. The per-message simulator
(`forehand.sim`) stays the tool for correctness; this one is for scale and value.
"""

from forehand.sim.study._cli import main
from forehand.sim.study._config import (
    FAULT_MIXES,
    FaultKind,
    FaultMix,
    Policy,
    StudyConfig,
    fault_mix,
)
from forehand.sim.study._fleet import Fault, FleetModel, FleetTick
from forehand.sim.study._report import REPORT_FILES, Targets, targets, write_report
from forehand.sim.study._run import PolicyResult, run_policy, study_manager_config
from forehand.sim.study._study import StudyResult, SweepPoint, parse_sweep, run_study, run_sweep

__all__ = [
    "FAULT_MIXES",
    "REPORT_FILES",
    "Fault",
    "FaultKind",
    "FaultMix",
    "FleetModel",
    "FleetTick",
    "Policy",
    "PolicyResult",
    "StudyConfig",
    "StudyResult",
    "SweepPoint",
    "Targets",
    "fault_mix",
    "main",
    "parse_sweep",
    "run_policy",
    "run_study",
    "run_sweep",
    "study_manager_config",
    "targets",
    "write_report",
]
