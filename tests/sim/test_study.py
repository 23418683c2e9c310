"""`forehand sim study`: deterministic, policies ordered as they should be, reports, bad input."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest

from forehand.core._manager_risk import predictor_config
from forehand.core._server_config import HEARTBEAT_PART_LOADS_MAX
from forehand.core.messages import LoadReport
from forehand.errors import ConfigError
from forehand.sim._cli import main as sim_main
from forehand.sim.study import (
    FAULT_MIXES,
    REPORT_FILES,
    FaultKind,
    FaultMix,
    FleetModel,
    Policy,
    StudyConfig,
    StudyResult,
    parse_sweep,
    run_study,
    write_report,
)
from forehand.sim.study._risk import MemoPredictor, SampledPredictiveRiskPolicy
from forehand.sim.study._run import SECOND_US, PolicyRun, study_manager_config

SMALL = StudyConfig(
    servers=40,
    sessions=2_000,
    duration_s=1_200,
    seed=7,
    mix=FAULT_MIXES["gradual"].scaled(60.0),
    training_servers=40,
    training_hours=1.0,
)
"""A fleet small enough for seconds, with enough gradual faults to tell the policies apart."""


@pytest.fixture(scope="module")
def study() -> StudyResult:
    return run_study(SMALL)


def test_the_same_seed_gives_the_same_digest(study: StudyResult) -> None:
    """Two runs of one seed agree on every counted outcome; another seed does not."""
    again = run_study(dataclasses.replace(SMALL, policies=(Policy.REACTIVE, Policy.PREDICTIVE)))
    for policy in (Policy.REACTIVE, Policy.PREDICTIVE):
        assert again.results[policy].digest == study.results[policy].digest
        assert again.results[policy].disruptions == study.results[policy].disruptions
    other = run_study(dataclasses.replace(SMALL, seed=8, policies=(Policy.REACTIVE,)))
    assert other.results[Policy.REACTIVE].digest != study.results[Policy.REACTIVE].digest


def test_predictive_disrupts_fewer_sessions_than_reactive_and_reactive_no_more_than_static(
    study: StudyResult,
) -> None:
    """On gradual faults the predictor moves parts before the breach; failover never hurts."""
    static, reactive, predictive = (study.results[policy] for policy in Policy)
    assert reactive.disruptions > 0, "the mix must disrupt something"
    assert predictive.disruptions < reactive.disruptions <= static.disruptions
    assert predictive.risk_part_moves > 0 and reactive.risk_part_moves == 0
    assert predictive.lead_times_s and min(predictive.lead_times_s) >= 0
    assert static.handoff_part_moves == 0 and static.failover_part_moves == 0
    for result in study.results.values():
        assert result.session_hours > 0 and result.manager_cpu_s > 0
        assert result.heartbeats > 0 and result.map_bytes > 0


def test_the_fleet_model_is_the_same_for_every_policy() -> None:
    """Faults and their onsets follow from the seed alone, so policies meet the same faults."""
    first, second = FleetModel(config=SMALL), FleetModel(config=SMALL)
    assert first.faults == second.faults
    kinds = {fault.kind for fault in first.faults}
    assert kinds >= {FaultKind.OVERLOAD_RAMP, FaultKind.CONGESTION_RAMP, FaultKind.FLAPPING_LINK}
    assert all(
        fault.onset_tick is None or fault.onset_tick >= fault.start_tick for fault in first.faults
    )


def test_the_report_holds_tables_plots_and_json(study: StudyResult, tmp_path: Path) -> None:
    """Markdown with the policy, fault-type and target tables, four PNGs, a JSON of it all."""
    written = write_report(study, tmp_path, command="forehand sim study --out x")
    assert sorted(path.name for path in written) == sorted(REPORT_FILES)
    markdown = (tmp_path / "study.md").read_text(encoding="utf-8")
    for heading in ("## Policies", "## Disruptions by fault type", "## Targets", "## Manager cost"):
        assert heading in markdown
    for name in REPORT_FILES:
        if name.endswith(".png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "study.json").read_text(encoding="utf-8"))
    assert data["digest"] == study.digest
    assert set(data["results"]) == {policy.value for policy in Policy}


def test_the_command_runs_through_forehand_sim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`forehand sim study ...` runs a study and its sweep, and writes the report where told."""
    code = sim_main(
        [
            "study",
            "--servers", "16",
            "--sessions", "300",
            "--duration-s", "300",
            "--policies", "static,reactive",
            "--fault-scale", "50",
            "--sweep", "16x300,24x600",
            "--out", str(tmp_path / "report"),
        ]
    )  # fmt: skip
    assert code == 0
    markdown = (tmp_path / "report" / "study.md").read_text(encoding="utf-8")
    assert "## Scaling sweep" in markdown and "| 24 | 600 |" in markdown
    assert "digest=" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--servers", "3"], "StudyConfig.servers must be in [8, 16384], got 3"),
        (["--sessions", "0"], "StudyConfig.sessions must be in [1, 2000000], got 0"),
        (["--duration-s", "601", "--tick-s", "5"], "duration_s must be a multiple of tick_s"),
        (["--mix", "calm"], "unknown fault mix 'calm'; known: gradual, mixed, sudden"),
        (["--policies", "static,psychic"], "unknown policy in 'static,psychic'"),
        (["--sweep", "1000by10"], "bad sweep point '1000by10'"),
        (["--fault-scale", "-1"], "a fault-rate factor must be in (0, 1000.0]"),
        (["--jobs", "9"], "--jobs must be in [1, 3]"),
        (["--quiet-assess-interval-s", "10"], "quiet_assess_interval_s must be at least"),
    ],
)
def test_bad_configuration_is_refused_with_a_clear_error(
    arguments: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each bad option exits 2 with a message naming what is wrong, and writes nothing."""
    out = tmp_path / "report"
    assert sim_main(["study", *arguments, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not out.exists()


def test_configuration_objects_validate_themselves() -> None:
    """The dataclasses refuse bad values on construction, naming the field."""
    with pytest.raises(ConfigError, match=r"FaultMix\.crashes must be in"):
        FaultMix(crashes=-1.0)
    with pytest.raises(ConfigError, match="ramp_crash_probability is a probability"):
        FaultMix(ramp_crash_probability=1.5)
    with pytest.raises(ConfigError, match="policies must not repeat"):
        StudyConfig(policies=(Policy.STATIC, Policy.STATIC))
    with pytest.raises(ConfigError, match="failure_timeout_s must be at least two ticks"):
        StudyConfig(tick_s=10, failure_timeout_s=15)
    assert parse_sweep("250x25000, 1000x100000") == [(250, 25_000), (1_000, 100_000)]


def test_quiet_servers_are_assessed_at_the_quiet_cadence_and_others_at_the_normal_one() -> None:
    """A quiet server's due heartbeats wait for the quiet interval; one that leaves the quiet
    band is assessed at the next normal interval, and so is one that was not quiet before."""
    config = study_manager_config(SMALL)
    policy = SampledPredictiveRiskPolicy(
        config=config,
        rng=random.Random(1),
        predictor=MemoPredictor(config=predictor_config(config), rng=random.Random(2)),
        interval_us=30 * SECOND_US,
        quiet_interval_us=120 * SECOND_US,
    )
    quiet = LoadReport(
        cpu_utilization=0.4,
        queue_depth=0,
        latency_us_p99=40_000,
        error_ratio=0.001,
        requests_per_second=1.0,
    )
    busy = LoadReport(
        cpu_utilization=0.8,
        queue_depth=4,
        latency_us_p99=100_000,
        error_ratio=0.001,
        requests_per_second=1.0,
    )
    for now_s in range(0, 241, 5):
        policy.assess(server_id="calm", load=quiet, now_us=now_s * SECOND_US)
        load = quiet if now_s < 60 else busy
        policy.assess(server_id="ramp", load=load, now_us=now_s * SECOND_US)
    # calm: 0, 120, 240; ramp: 0, then 60 (it left the band; due since 30), 90, ..., 240.
    assert policy.assessments_run == 3 + 8
    assert policy.assessments_skipped_quiet > 0


def test_part_loads_are_heavy_tailed_seeded_and_the_same_for_every_policy() -> None:
    """Each part's load is lognormal with mean 1 (the busiest tenth carry about 39%), drawn from
    the seed alone; a sigma of 0 gives every part the same load."""
    loads = FleetModel(config=SMALL).part_load
    assert np.array_equal(loads, FleetModel(config=SMALL).part_load)
    assert loads.shape == (SMALL.parts,) and abs(float(loads.mean()) - 1.0) < 0.1
    ordered = np.sort(loads)[::-1]
    assert 0.3 < float(ordered[: SMALL.parts // 10].sum() / ordered.sum()) < 0.5
    equal = FleetModel(config=dataclasses.replace(SMALL, part_load_sigma=0.0)).part_load
    assert np.array_equal(equal, np.ones(SMALL.parts))
    with pytest.raises(ConfigError, match="part_load_sigma must be in"):
        StudyConfig(part_load_sigma=-0.5)


def test_heartbeats_report_each_servers_busiest_parts_bounded() -> None:
    """A server's report lists its own busiest primaries by load, busiest first, at most
    HEARTBEAT_PART_LOADS_MAX, their rates scaled by its demand."""
    run = PolicyRun(SMALL, Policy.REACTIVE, predictor_snapshot=None)
    server = 3
    held = np.flatnonzero(run.parts.primary == server)
    report = run.busiest.report(server, 2.0)
    assert len(report) == min(HEARTBEAT_PART_LOADS_MAX, len(held))
    expected = held[np.argsort(-run.part_load[held], kind="stable")[: len(report)]]
    assert [load.ref for load in report] == [run.parts.ref(int(index)) for index in expected]
    rates = [load.requests_per_second for load in report]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] == pytest.approx(2.0 * float(run.part_load[expected[0]]))


def test_busiest_parts_follow_moves_as_a_fresh_scan_would_find_them() -> None:
    """After parts move (a source losing most of its busiest, a target gaining busy ones), each
    server's report lists what a scan of its primaries finds."""
    run = PolicyRun(SMALL, Policy.REACTIVE, predictor_snapshot=None)
    primary, loads = run.parts.primary, run.part_load

    def move(index: int, target: int) -> None:
        source = int(primary[index])
        primary[index] = target
        run.busiest.moved(index, source, target)

    held = np.flatnonzero(primary == 3)
    for index in held[np.argsort(-loads[held])][: len(held) - 5]:
        move(int(index), 5 + int(index) % 3)
    donor = np.flatnonzero(primary == 9)
    move(int(donor[np.argmax(loads[donor])]), 3)
    for server in (3, 5, 6, 7, 9):
        mine = np.flatnonzero(primary == server)
        expected = mine[np.argsort(-loads[mine], kind="stable")[:HEARTBEAT_PART_LOADS_MAX]]
        report = run.busiest.report(server, 1.0)
        assert [load.ref for load in report] == [run.parts.ref(int(i)) for i in expected]
