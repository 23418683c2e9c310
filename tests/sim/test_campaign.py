"""Campaigns: many seeds, a summary, and for each failure its seed and the replay command."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from forehand.errors import ConfigError
from forehand.sim import Campaign, get_scenario, register_scenario, replay_command, scenario_names

from .scenarios import build_broken_map, build_log

IMPORTS = ("tests.sim.scenarios",)


def _campaign(name: str, *, fail_fast: bool = False) -> tuple[Campaign, io.StringIO]:
    output = io.StringIO()
    console = Console(file=output, width=200, force_terminal=False)
    return Campaign(
        get_scenario(name), imports=IMPORTS, console=console, fail_fast=fail_fast
    ), output


def test_passing_campaign_summarizes_and_repeats_its_digest() -> None:
    """A passing campaign reports every seed, and two campaigns agree on the digest of digests."""
    campaign, output = _campaign("log-failover")
    outcome = campaign.run(seed_count=3, seed_start=10)
    campaign.print_summary(outcome)
    again, _ = _campaign("log-failover")
    assert outcome.ok and [result.seed for result in outcome.results] == [10, 11, 12]
    assert outcome.digest == again.run(seed_count=3, seed_start=10).digest
    assert outcome.counters["failover"] == (3, 3)
    text = output.getvalue()
    assert "digest of digests" in text and outcome.digest in text
    assert "failover" in text and "SEED=" not in text


def test_failing_campaign_prints_seed_and_replay_command() -> None:
    """Each failing seed prints SEED=<n>, the failure, and the exact replay command."""
    campaign, output = _campaign("broken-map")
    outcome = campaign.run(seed_count=2, seed_start=4)
    lines = output.getvalue().splitlines()
    assert len(outcome.failures) == 2
    for seed in (4, 5):
        assert f"SEED={seed}" in lines
        command = "python -m forehand.sim --import tests.sim.scenarios --scenario broken-map"
        assert f"replay: {command} --seed {seed}" in lines
    assert any("MonotonicMapVersionChecker" in line and "went back" in line for line in lines)


def test_fail_fast_stops_at_the_first_failure() -> None:
    """With fail_fast the campaign stops after the first failing seed."""
    campaign, _ = _campaign("broken-map", fail_fast=True)
    assert len(campaign.run(seed_count=5).results) == 1


def test_registry_refuses_a_second_factory_under_one_name() -> None:
    """Names are unique; registering the same factory again is harmless."""
    register_scenario("broken-map", build_broken_map)
    with pytest.raises(ConfigError):
        register_scenario("broken-map", build_log)
    with pytest.raises(ConfigError, match="no scenario named"):
        get_scenario("missing")
    assert {"broken-map", "log-failover", "ping-mesh"} <= set(scenario_names())


def test_replay_command_quotes_its_words() -> None:
    """The replay command is a shell-safe command line."""
    assert replay_command("a b", 3) == "python -m forehand.sim --scenario 'a b' --seed 3"


def test_parallel_campaign_matches_the_serial_one() -> None:
    """Seeds run in worker processes give the same results and digest as run in-process."""
    serial, _ = _campaign("log-failover")
    parallel, _ = _campaign("log-failover")
    one = serial.run(seed_count=4, seed_start=20)
    two = parallel.run(seed_count=4, seed_start=20, jobs=2)
    assert [result.digest for result in two.results] == [result.digest for result in one.results]
    assert two.digest == one.digest
    with pytest.raises(ConfigError):
        serial.run(seed_count=1, jobs=0)
