"""The study's move accounting: every primary move counted, handoffs attributed to their cause."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from forehand.sim._cli import main as sim_main
from forehand.sim.study import FaultKind, FaultMix, Policy, StudyConfig, StudyResult, run_study
from forehand.sim.study._fleet import Fault
from forehand.sim.study._report import MOVE_CAUSES, targets, write_report
from forehand.sim.study._run import NO_FAULT, PolicyRun, decision_cause, fault_window_s

MOVES = StudyConfig(
    servers=40,
    sessions=2_000,
    duration_s=1_200,
    seed=1,
    mix=FaultMix(
        name="moves",
        overload_ramps=120.0,
        flapping_links=120.0,
        crashes=60.0,
        drains=150.0,
        flap_cut_probability=1.0,
    ),
    policies=(Policy.REACTIVE, Policy.PREDICTIVE),
    training_servers=40,
    training_hours=1.0,
)
"""Seed 1 of this fleet drains two servers and ends a flapping link with a cut, which the
reactive policy fails over and the predictive one hands off first (a few seconds per study)."""


@pytest.fixture(scope="module")
def study() -> StudyResult:
    return run_study(MOVES)


def _fault(kind: FaultKind, *, start_tick: int, ramp_ticks: int, hold_ticks: int) -> Fault:
    return Fault(
        kind=kind,
        server=3,
        start_tick=start_tick,
        ramp_ticks=ramp_ticks,
        hold_ticks=hold_ticks,
        peak=1.0,
        ends_dead=False,
        onset_tick=None,
    )


def test_a_decision_counts_on_a_fault_from_a_horizon_before_it_to_a_minute_after_it() -> None:
    """Inside the window the fault's kind is the cause; a second outside it, or no fault, none."""
    ramp = _fault(FaultKind.OVERLOAD_RAMP, start_tick=100, ramp_ticks=60, hold_ticks=20)
    assert fault_window_s(ramp, tick_s=5, horizon_s=600) == (500 - 600, (180 + 12) * 5)
    for decided_s, cause in [
        (-101, NO_FAULT),
        (-100, "overload_ramp"),
        (700, "overload_ramp"),
        (960, "overload_ramp"),
        (961, NO_FAULT),
    ]:
        assert decision_cause(ramp, decided_s, tick_s=5, horizon_s=600) == cause
    drain = _fault(FaultKind.DRAIN, start_tick=40, ramp_ticks=0, hold_ticks=0)
    assert decision_cause(drain, 200, tick_s=5, horizon_s=600) == "drain"
    assert decision_cause(None, 200, tick_s=5, horizon_s=600) == NO_FAULT


def test_every_handoff_part_move_has_one_cause(study: StudyResult) -> None:
    """The causes sum to the handoff part moves; reactive moves only for drains."""
    reactive, predictive = study.results[Policy.REACTIVE], study.results[Policy.PREDICTIVE]
    for result in (reactive, predictive):
        assert set(result.handoff_moves_by_cause) <= set(MOVE_CAUSES)
        assert sum(result.handoff_moves_by_cause.values()) == result.handoff_part_moves
    assert reactive.handoff_part_moves > 0, "the fleet must drain something"
    assert reactive.handoff_moves_by_cause == {"drain": reactive.handoff_part_moves}
    assert predictive.handoff_moves_by_cause["drain"] == reactive.handoff_part_moves
    risk_moves = predictive.handoff_part_moves - predictive.handoff_moves_by_cause["drain"]
    assert risk_moves == predictive.risk_part_moves > 0
    if predictive.risk_flags_on_faults == predictive.risk_flags:
        assert NO_FAULT not in predictive.handoff_moves_by_cause


def test_a_handoff_off_a_flapping_link_replaces_a_failover(study: StudyResult) -> None:
    """Parts handed off a flapping server before its cut are not failed over: the moves added
    by prediction are fewer than its extra handoffs."""
    reactive, predictive = study.results[Policy.REACTIVE], study.results[Policy.PREDICTIVE]
    assert predictive.handoff_moves_by_cause.get("flapping_link", 0) > 0
    assert predictive.failover_part_moves < reactive.failover_part_moves
    measured = targets(study)
    assert measured.extra_handoffs_per_100h is not None
    assert measured.part_moves_added_per_100h is not None
    assert measured.part_moves_added_per_100h < measured.extra_handoffs_per_100h


def test_the_targets_keep_their_rows_and_the_context_stands_beside_them(
    study: StudyResult,
) -> None:
    """The target rows are the same four, judged as before; the context rows hold the new
    figures, computed from the policies' counts."""
    reactive, predictive = study.results[Policy.REACTIVE], study.results[Policy.PREDICTIVE]
    measured = targets(study)
    hours = predictive.session_hours
    extra = 100.0 * (predictive.handoff_part_moves - reactive.handoff_part_moves) / hours
    added = 100.0 * (predictive.part_moves - reactive.part_moves) / hours
    assert measured.extra_handoffs_per_100h == pytest.approx(extra)
    assert measured.part_moves_added_per_100h == pytest.approx(added)
    assert [row[0] for row in measured.rows()] == [
        "disrupted sessions, predictive vs reactive",
        "ping-pong rate (predictive)",
        "extra handoffs per 100 session-hours",
        "manager memory for the map (RSS gained loading it)",
    ]
    assert measured.rows()[2][2] == f"{extra:.3f}"
    assert measured.rows()[2][3] == ("yes" if extra <= 1.0 else "NO")
    by_cause = measured.handoff_moves_by_cause_per_100h
    assert by_cause is not None and list(by_cause) == list(MOVE_CAUSES)
    assert sum(by_cause.values()) == pytest.approx(100.0 * predictive.handoff_part_moves / hours)
    context = dict(measured.context_rows())
    assert f"{added:.3f}" in context.values()


def test_the_new_accounting_leaves_the_digest_alone(
    study: StudyResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The digest hashes the same outcomes whatever the cause attribution finds."""

    def scrambled(self: PolicyRun) -> None:
        self.result.handoff_moves_by_cause = {"none": 10**6}

    monkeypatch.setattr(PolicyRun, "_move_causes", scrambled)
    again = run_study(MOVES)
    assert again.results[Policy.PREDICTIVE].handoff_moves_by_cause == {"none": 10**6}
    assert again.digest == study.digest


def test_the_report_and_its_json_carry_the_context(study: StudyResult, tmp_path: Path) -> None:
    """study.md has the context, moves and cause tables under Targets; study.json the figures."""
    write_report(study, tmp_path, command="forehand sim study --out x")
    markdown = (tmp_path / "study.md").read_text(encoding="utf-8")
    targets_section = markdown.split("## Targets", 1)[1].split("## Prediction", 1)[0]
    assert "| extra handoffs per 100 session-hours | <= 1 |" in targets_section
    assert "Additional context, not targets" in targets_section
    assert "| policy | all (map) | handoffs | failovers | other |" in targets_section
    predictive = study.results[Policy.PREDICTIVE]
    drains = predictive.handoff_moves_by_cause["drain"]
    assert f"| drain | {drains:,} |" in targets_section
    data = json.loads((tmp_path / "study.json").read_text(encoding="utf-8"))
    context = data["targets"]["context"]
    assert context["part_moves_added_per_100h"] == pytest.approx(
        targets(study).part_moves_added_per_100h
    )
    assert set(context["predictive_handoff_moves_by_cause_per_100h"]) == set(MOVE_CAUSES)
    assert data["results"]["predictive"]["handoff_moves_by_cause"] == (
        predictive.handoff_moves_by_cause
    )


def test_the_command_prints_the_context_after_the_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`forehand sim study` prints the context lines, labelled as not targets, after them."""
    code = sim_main(
        [
            "study",
            "--servers", "16",
            "--sessions", "300",
            "--duration-s", "300",
            "--policies", "reactive,predictive",
            "--fault-scale", "50",
            "--training-servers", "16",
            "--training-hours", "0.25",
            "--out", str(tmp_path / "report"),
        ]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err.replace("\n", " ")
    assert "extra handoffs per 100 session-hours:" in err
    added = err.index("context, not a target: part moves added by prediction")
    assert err.index("extra handoffs per 100 session-hours:") < added < err.index("digest=")
    assert "context, not a target: predictive handoff part moves per 100" in err


def test_a_study_without_both_policies_has_no_context(tmp_path: Path) -> None:
    """With reactive alone there is nothing to compare: no context rows, no tables."""
    alone = run_study(dataclasses.replace(MOVES, policies=(Policy.REACTIVE,), duration_s=300))
    measured = targets(alone)
    assert measured.part_moves_added_per_100h is None
    assert measured.context_rows() == []
    write_report(alone, tmp_path, command="forehand sim study --out x")
    assert "Additional context" not in (tmp_path / "study.md").read_text(encoding="utf-8")
