"""The simulated runtime's telemetry: load reports that follow queueing, transport counters."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics

import pytest

from forehand.errors import ConfigError
from forehand.sim import Link, Ramp, RampShape
from forehand.sim._process import NodeState, ProcessModel, ProcessStats, slowdown_for
from forehand.sim._telemetry import TelemetryConfig, load_report, transport_counters

from ._helpers import recorder, recorder_sim, send_at

SERVICE_US = 200
"""The service time of the process the load reports are drawn for."""
DRAWS = 2_000
"""Load reports drawn per utilization."""


def _stats(load: float, *, inbox_depth: int = 0) -> ProcessStats:
    return ProcessStats(
        state=NodeState.UP,
        load=load,
        slowdown=slowdown_for(load, 100.0),
        inbox_depth=inbox_depth,
        held_depth=0,
        incarnation=0,
    )


def _reports(load: float, *, seed: int = 7) -> dict[str, list[float]]:
    rng = random.Random(seed)
    process = ProcessModel(service_time_us=SERVICE_US, base_load=load)
    config = TelemetryConfig()
    reports = [load_report(_stats(load), process, rng=rng, config=config) for _ in range(DRAWS)]
    return {
        "cpu": [report.cpu_utilization for report in reports],
        "queue": [float(report.queue_depth) for report in reports],
        "lag": [float(report.loop_lag_us_p99) for report in reports],
        "latency": [float(report.latency_us_p99) for report in reports],
    }


def test_reported_cpu_is_the_utilization_with_measurement_noise() -> None:
    """The reported CPU averages to the server's utilization and scatters around it by the
    configured noise: a sampler's reading, not the model's exact load."""
    readings = _reports(0.6)["cpu"]
    assert statistics.fmean(readings) == pytest.approx(0.6, abs=0.005)
    assert statistics.stdev(readings) == pytest.approx(TelemetryConfig().cpu_noise_sd, rel=0.15)


def test_queue_and_loop_lag_grow_as_utilization_approaches_one() -> None:
    """Queue depth and p99 loop lag follow M/M/1: the mean queue is rho / (1 - rho) and the
    lag's median the p99 wait s ln(100 rho) / (1 - rho), so both rise steeply towards 1."""
    previous_queue = previous_lag = -1.0
    for load in (0.3, 0.6, 0.9, 0.97):
        drawn = _reports(load)
        queue = statistics.fmean(drawn["queue"])
        lag = statistics.median(drawn["lag"])
        expected_lag = SERVICE_US * math.log(100 * load) / (1 - load)
        assert queue == pytest.approx(load / (1 - load), rel=0.15), load
        assert lag == pytest.approx(expected_lag, rel=0.05), load
        assert queue > previous_queue and lag > previous_lag
        previous_queue, previous_lag = queue, lag


def test_latency_report_carries_the_inbox_the_next_input_waits_behind() -> None:
    """The p99 latency is the process model's (service x slowdown x (1 + inbox)), the quantity
    the simulator's SLO truth reads, with lognormal noise around it."""
    rng = random.Random(3)
    process = ProcessModel(service_time_us=SERVICE_US)
    config = TelemetryConfig()
    quiet = [load_report(_stats(0.5), process, rng=rng, config=config) for _ in range(500)]
    queued = [
        load_report(_stats(0.5, inbox_depth=4), process, rng=rng, config=config) for _ in range(500)
    ]
    assert statistics.median(r.latency_us_p99 for r in quiet) == pytest.approx(400, rel=0.02)
    assert statistics.median(r.latency_us_p99 for r in queued) == pytest.approx(2_000, rel=0.02)
    assert all(report.queue_depth >= 4 for report in queued)


def test_same_seed_same_reports() -> None:
    """Reports are drawn from the generator passed in: the same seed gives the same readings."""
    assert _reports(0.8, seed=5) == _reports(0.8, seed=5)
    assert _reports(0.8, seed=5) != _reports(0.8, seed=6)


def test_telemetry_config_rejects_impossible_settings() -> None:
    """Negative noise, a utilization cap outside (0, 1) or no interval is a config error."""
    for bad in (
        {"cpu_noise_sd": -0.1},
        {"utilization_max": 1.0},
        {"transport_interval_us": 0},
    ):
        with pytest.raises(ConfigError):
            TelemetryConfig(**bad)


def test_lossy_link_counts_lost_and_retransmitted_packets() -> None:
    """A connection over a link losing 10% counts its transmissions, the losses and the
    resends, and a transport reading of both directions adds them up."""
    sim = recorder_sim("a", "b", link=Link(loss_probability=0.1, retransmissions_max=30))
    for number in range(2_000):
        send_at(sim, "a", "b", [number], at_us=number * 100)
    sim.run(until_us=5_000_000)
    assert len(recorder(sim, "b").notes()) == 2_000
    sent, lost, retransmitted = sim.transport_counters("a", "b")
    assert sent == 2_000 + retransmitted
    assert lost == retransmitted
    assert 0.07 < lost / sent < 0.13
    counters = transport_counters(sim.transport_counters("a", "b"), (10, 1, 1))
    assert counters.packets_sent_count == sent + 10
    assert counters.packets_lost_count == lost + 1


def test_partition_shows_as_loss_then_retransmissions_after_it_heals() -> None:
    """Messages sent into a short partition count as lost while it lasts and as retransmitted
    once it heals and they go again; a clean link counts no loss."""
    sim = recorder_sim("a", "b", connection_timeout_us=1_000_000)
    send_at(sim, "a", "b", [0], at_us=0)
    tokens: list[int] = []
    sim.call_at(10_000, lambda: tokens.append(sim.start_partition(["a"], ["b"])), label="cut")
    send_at(sim, "a", "b", [1, 2, 3], at_us=20_000)
    during: list[tuple[int, int, int]] = []
    sim.call_at(400_000, lambda: during.append(sim.transport_counters("a", "b")), label="read")
    sim.call_at(500_000, lambda: sim.end_partition(tokens[0]), label="heal")
    sim.run(until_us=2_000_000)
    assert recorder(sim, "b").notes() == [0, 1, 2, 3]
    assert during == [(4, 3, 0)]
    assert sim.transport_counters("a", "b") == (7, 3, 3)
    clean = recorder_sim("a", "b")
    send_at(clean, "a", "b", range(50), at_us=0)
    clean.run(until_us=1_000_000)
    assert clean.transport_counters("a", "b") == (50, 0, 0)


def test_ramp_steepness_sets_how_late_an_exponential_ramp_rises() -> None:
    """A gentler exponential ramp (the campaign's precursors) has more of its rise before the
    end than the default one, still less than a linear ramp; a steepness of 0 is refused."""
    halfway_us = 5_000_000
    linear = Ramp(start_us=0, peak_us=10_000_000, peak_value=1.0)
    default = Ramp(start_us=0, peak_us=10_000_000, peak_value=1.0, shape=RampShape.EXPONENTIAL)
    gentle = dataclasses.replace(default, steepness=2.0)
    assert default.value_at(halfway_us) < gentle.value_at(halfway_us) < linear.value_at(halfway_us)
    assert gentle.value_at(halfway_us) == pytest.approx(math.expm1(1.0) / math.expm1(2.0))
    assert gentle.value_at(10_000_000) == 1.0
    with pytest.raises(ConfigError):
        dataclasses.replace(default, steepness=0.0)
