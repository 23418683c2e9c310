"""`python -m forehand.sim`: campaigns, replays, listing, and usage errors, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from forehand.sim import build_crash_replicated

REPOSITORY = Path(__file__).resolve().parents[2]
IMPORT = ["--import", "tests.sim.scenarios"]


def _run(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forehand.sim", *arguments],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPOSITORY,
    )


def test_without_a_scenario_every_built_in_one_runs_in_turn() -> None:
    """No --scenario runs scenario `all`: seeds go round the built-in scenarios, all pass."""
    completed = _run("--seeds", "2", "--seed-start", "5")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "simulation campaign: all" in completed.stdout
    assert "scenario/drain" in completed.stdout and "scenario/handoff" in completed.stdout


def test_a_built_in_seed_replays_with_its_digest() -> None:
    """--seed replays one seed of a built-in scenario: the digest of an in-process run."""
    replayed = _run("--scenario", "crash-replicated", "--seed", "3")
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    digest = build_crash_replicated(3).sim.run().digest
    assert f"digest={digest}" in replayed.stdout.splitlines()
    assert "SEED=3" in replayed.stdout and "node-crashed: 1" in replayed.stdout


def test_failing_campaign_exits_non_zero_and_its_replay_command_replays() -> None:
    """A failing campaign prints SEED and a replay command that reproduces the failure."""
    completed = _run(*IMPORT, "--scenario", "broken-map", "--seeds", "2", "--seed-start", "7")
    assert completed.returncode == 1
    lines = completed.stdout.splitlines()
    assert "SEED=7" in lines and "SEED=8" in lines
    replay = next(line for line in lines if line.startswith("replay:")).removeprefix("replay: ")
    words = replay.split()
    assert words[:3] == ["python", "-m", "forehand.sim"]
    replayed = _run(*words[3:])
    assert replayed.returncode == 1
    assert "SEED=7" in replayed.stdout.splitlines()
    assert "went back from map version 2 to 1" in replayed.stdout


def test_passing_campaign_exits_zero_with_a_summary() -> None:
    """A passing campaign exits 0 and prints its summary table."""
    completed = _run(*IMPORT, "--scenario", "log-failover", "--seeds", "2")
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "seeds run" in completed.stdout and "digest of digests" in completed.stdout


def test_listing_and_unknown_scenarios() -> None:
    """--list shows the built-in and imported scenarios; an unknown scenario is a usage error."""
    listed = _run(*IMPORT, "--list")
    assert listed.returncode == 0 and "ping-mesh" in listed.stdout
    assert "partition-mid-handoff" in listed.stdout and "crash-replicated" in listed.stdout
    unknown = _run(*IMPORT, "--scenario", "nope")
    assert unknown.returncode == 2 and "no scenario named 'nope'" in unknown.stdout


def test_forehand_sim_subcommand_runs_the_same_command() -> None:
    """`forehand sim` accepts the same options and gives the same exit code and output."""
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from forehand.cli import main; main()",
            "sim",
            *IMPORT,
            "--scenario",
            "broken-map",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPOSITORY,
    )
    assert completed.returncode == 1
    assert "SEED=1" in completed.stdout.splitlines()
