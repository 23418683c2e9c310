"""Feature computations against hand-computed values."""

from __future__ import annotations

import math

import pytest

from forehand.predict import (
    Baseline,
    EntityKey,
    Ewma,
    FeatureBank,
    FeatureConfig,
    Holt,
    MetricSpec,
    MetricTracker,
    PathSample,
    PredictorConfig,
    RollingWindow,
    ServerSample,
    WindowMinimum,
    path_bucket,
    time_to_threshold_s,
)

S = 1_000_000


def test_ewma_weights_by_elapsed_time() -> None:
    """First sample taken as is; then weight 1 - exp(-dt/tau)."""
    ewma = Ewma(time_constant_us=10 * S)
    assert ewma.update(4.0, elapsed_us=0) == 4.0
    alpha = 1 - math.exp(-1)
    assert ewma.update(10.0, elapsed_us=10 * S) == pytest.approx(4.0 + alpha * 6.0)
    alpha2 = 1 - math.exp(-2)
    expected = 4.0 + alpha * 6.0
    expected += alpha2 * (0.0 - expected)
    assert ewma.update(0.0, elapsed_us=20 * S) == pytest.approx(expected)


def test_baseline_warm_up_is_a_running_mean() -> None:
    """With a long time constant the first samples average plainly (population variance)."""
    baseline = Baseline(time_constant_us=10**12)
    for value in (2.0, 4.0, 6.0):
        baseline.update(value, elapsed_us=S)
    assert baseline.mean == pytest.approx(4.0)
    # West's update with weights 1, 1/2, 1/3 gives the population variance 8/3.
    assert baseline.variance == pytest.approx(8.0 / 3.0)
    assert baseline.deviation(floor=10.0) == 10.0


def test_rolling_window_mean_and_deviation() -> None:
    """The window forgets its oldest sample."""
    window = RollingWindow(size=3)
    for value in (100.0, 1.0, 2.0, 3.0):
        window.update(value)
    assert len(window) == 3
    assert window.mean == pytest.approx(2.0)
    assert window.deviation == pytest.approx(math.sqrt(2.0 / 3.0))


def test_holt_level_and_trend_by_hand() -> None:
    """alpha=0.5, beta=0.5, samples 0, 10, 20 one second apart."""
    holt = Holt(alpha=0.5, beta=0.5)
    holt.update(0.0, elapsed_us=0)
    holt.update(10.0, elapsed_us=S)
    # level = 0.5*10 + 0.5*(0 + 0) = 5; trend = 0.5*5 + 0.5*0 = 2.5
    assert holt.level == pytest.approx(5.0)
    assert holt.trend_per_s == pytest.approx(2.5)
    holt.update(20.0, elapsed_us=S)
    # level = 0.5*20 + 0.5*(5 + 2.5) = 13.75; trend = 0.5*8.75 + 0.5*2.5 = 5.625
    assert holt.level == pytest.approx(13.75)
    assert holt.trend_per_s == pytest.approx(5.625)
    assert holt.forecast(ahead_s=2.0) == pytest.approx(25.0)


def test_time_to_threshold() -> None:
    """Distance over slope; zero when there, infinite when not rising."""
    assert time_to_threshold_s(0.5, 0.01, 1.0) == pytest.approx(50.0)
    assert time_to_threshold_s(1.2, -1.0, 1.0) == 0.0
    assert math.isinf(time_to_threshold_s(0.5, 0.0, 1.0))


def test_window_minimum() -> None:
    """The minimum of the last `size` samples."""
    minimum = WindowMinimum(size=3)
    results = [minimum.update(value) for value in (5.0, 3.0, 4.0, 6.0, 7.0, 2.0)]
    assert results == [5.0, 3.0, 3.0, 3.0, 4.0, 2.0]


def test_metric_tracker_features_by_hand() -> None:
    """Level, z-score against the prior baseline and time-to-threshold share of a scaled metric."""
    config = FeatureConfig(
        ewma_time_constants_us=(10 * S,),
        holt_level_alpha=1.0,
        holt_trend_beta=1.0,
        dispersion_window_ticks=2,
    )
    spec = MetricSpec(name="cpu", scale=1.0, capacity=1.0, noise_floor=0.01)
    tracker = MetricTracker(spec=spec, config=config)
    out: dict[str, float] = {}
    tracker.update(0.5, elapsed_us=0, horizon_s=100.0, out=out)
    tracker.update(0.6, elapsed_us=10 * S, horizon_s=100.0, out=out)
    assert out["cpu.level"] == pytest.approx(0.6)
    # Baseline before the second sample: mean 0.5, deviation at the 0.01 floor.
    assert out["cpu.z"] == pytest.approx(10.0)
    # Holt with alpha = beta = 1: trend 0.01/s; 40 s to capacity; share 1 - 40/100.
    assert out["cpu.trend"] == pytest.approx(0.01 * 100.0)
    assert out["cpu.ttt"] == pytest.approx(0.6)
    assert out["cpu.dispersion"] == pytest.approx(0.05)


def test_unscaled_metric_features_are_in_baseline_deviations() -> None:
    """Without a scale, levels are z-scores, so series of any unit look alike."""
    config = FeatureConfig()
    small = MetricTracker(spec=MetricSpec(name="m"), config=config)
    large = MetricTracker(spec=MetricSpec(name="m"), config=config)
    out_small: dict[str, float] = {}
    out_large: dict[str, float] = {}
    for step, value in enumerate((1.0, 2.0, 1.5, 1.0, 3.0)):
        small.update(value, elapsed_us=step * S and S, horizon_s=600.0, out=out_small)
        large.update(value * 1e6, elapsed_us=step * S and S, horizon_s=600.0, out=out_large)
    for name, value in out_small.items():
        assert out_large[name] == pytest.approx(value, rel=1e-6, abs=1e-9)


def test_path_rtt_excess_loss_and_degraded_share() -> None:
    """RTT above the window minimum and loss mark paths; the server sees the degraded share."""
    config = PredictorConfig(path_buckets_per_server=64)
    bank = FeatureBank(config=config)
    groups = ["a", "b", "c", "d"]
    assert len({path_bucket(group, buckets=64) for group in groups}) == 4
    for tick in range(3):
        for group in groups:
            bad = group in ("a", "b") and tick == 2
            sample = PathSample(
                server_id="s",
                client_group=group,
                rtt_us=20_000 + (200_000 if bad else 0),
                loss_ratio=0.0,
            )
            path, _, breached = bank.observe_path(sample, now_us=tick * S)
            assert breached == bad
        server, breached = bank.observe_server(
            ServerSample(server_id="s", values={"cpu_utilization": 0.2}), now_us=tick * S
        )
    assert server.features["paths.degraded_share"] == pytest.approx(0.5)
    assert server.features["paths.breached_share"] == pytest.approx(0.5)
    assert breached  # half the paths breached: the server's own network is at fault
    assert path.features["path.rtt_excess.level"] == pytest.approx(0.0)


def test_bank_bounds_servers_and_path_buckets() -> None:
    """Past servers_max the least recently observed server goes; paths hash into buckets."""
    config = PredictorConfig(servers_max=2, path_buckets_per_server=3)
    bank = FeatureBank(config=config)
    for index in range(3):
        bank.observe_server(ServerSample(server_id=f"s{index}", values={}), now_us=0)
    assert len(bank) == 2 and bank.server("s0") is None and bank.evicted_servers == 1
    for client in range(50):
        bank.observe_path(PathSample(server_id="s2", client_group=f"c{client}", rtt_us=1), now_us=0)
    server = bank.server("s2")
    assert server is not None and len(server.paths) == 3
    assert str(EntityKey("s2", 1)) == "s2/path1"


def test_capacity_pressure_is_the_nearest_limit() -> None:
    """The largest of level over capacity and time-to-threshold share among capacity metrics."""
    bank = FeatureBank(config=PredictorConfig())
    values = {"cpu_utilization": 0.6, "latency_us_p99": 200_000.0, "error_ratio": 0.01}
    server, breached = bank.observe_server(ServerSample(server_id="s", values=values), now_us=0)
    assert not breached
    assert server.features["capacity.pressure"] == pytest.approx(0.8)  # latency 200 of 250 ms
    values = {"latency_us_p99": 300_000.0}
    server, breached = bank.observe_server(ServerSample(server_id="s", values=values), now_us=S)
    assert breached and server.features["capacity.pressure"] >= 1.2


def test_floor_features_tell_a_spike_from_a_sustained_climb() -> None:
    """A two-tick spike lifts the level but not its rolling minimum; a climb lifts both."""
    config = FeatureConfig(persistence_window_ticks=3)
    spec = MetricSpec(name="cpu", scale=1.0, capacity=1.0, noise_floor=0.01)
    spiky = MetricTracker(spec=spec, config=config)
    climbing = MetricTracker(spec=spec, config=config)
    out_spike: dict[str, float] = {}
    out_climb: dict[str, float] = {}
    for tick, value in enumerate((0.3,) * 6 + (0.8, 0.8)):
        spiky.update(value, elapsed_us=10 * S, horizon_s=600.0, out=out_spike)
        climbing.update(0.3 + 0.05 * tick, elapsed_us=10 * S, horizon_s=600.0, out=out_climb)
    assert out_spike["cpu.level"] == pytest.approx(0.8)
    assert out_spike["cpu.floor"] == pytest.approx(0.3)
    assert out_climb["cpu.floor"] == pytest.approx(0.55)
    assert out_spike["cpu.ttt_floor"] == pytest.approx(0.0)
    assert out_climb["cpu.ttt_floor"] > 0.0
    assert out_climb["cpu.ttt_floor"] <= out_climb["cpu.ttt"]


def test_wide_degradation_counts_flaps_and_transitions() -> None:
    """Blips of most paths at once add up over the flap window, with their up/down changes."""
    config = PredictorConfig(features=FeatureConfig(flap_window_ticks=4))
    bank = FeatureBank(config=config)
    for tick, bad in enumerate((False, True, False, True)):
        for group in ("a", "b"):
            sample = PathSample(
                server_id="s", client_group=group, rtt_us=20_000, loss_ratio=0.03 if bad else 0.0
            )
            bank.observe_path(sample, now_us=tick * S)
        server, _ = bank.observe_server(ServerSample(server_id="s", values={}), now_us=tick * S)
    assert server.features["paths.wide_degradation_share"] == pytest.approx(0.5)
    assert server.features["paths.wide_flips_share"] == pytest.approx(0.75)


def test_bank_treats_non_finite_values_as_missing() -> None:
    """A NaN or infinite metric counts as missing; a path's loss is clamped to [0, 1], NaN to 0."""
    bank = FeatureBank(config=PredictorConfig())
    clean = FeatureBank(config=PredictorConfig())
    for tick, (cpu, same) in enumerate(((0.2, 0.2), (math.nan, 0.2), (math.inf, 0.2), (0.3, 0.3))):
        server, _ = bank.observe_server(
            ServerSample(server_id="s", values={"cpu_utilization": cpu}), now_us=tick * S
        )
        expected, _ = clean.observe_server(
            ServerSample(server_id="s", values={"cpu_utilization": same}), now_us=tick * S
        )
        assert server.features == expected.features
    assert bank.non_finite_values == 2 and clean.non_finite_values == 0
    for tick, (loss, same) in enumerate(((math.nan, 0.0), (7.0, 1.0), (-1.0, 0.0))):
        path, _, _ = bank.observe_path(
            PathSample(server_id="p", client_group="a", rtt_us=20_000, loss_ratio=loss),
            now_us=tick * S,
        )
        expected_path, _, _ = clean.observe_path(
            PathSample(server_id="p", client_group="a", rtt_us=20_000, loss_ratio=same),
            now_us=tick * S,
        )
        assert path.features == expected_path.features
    assert bank.non_finite_values == 3


def test_log_trend_projects_a_multiplying_level_sooner() -> None:
    """Holt on the logarithm (alpha = beta = 0.5), levels 0.25 then 0.5 one second apart: log
    level -1.0397, trend 0.1733 per second, 6 s to ln 1 = 0, so 1 - 6/10 of a 10 s horizon; the
    linear Holt (level 0.375, trend 0.0625) takes 10 s, a whole horizon, and reads 0."""
    config = FeatureConfig(log_trend=True, holt_level_alpha=0.5, holt_trend_beta=0.5)
    tracker = MetricTracker(spec=MetricSpec(name="cpu", scale=1.0, capacity=1.0), config=config)
    out: dict[str, float] = {}
    tracker.update(0.25, elapsed_us=0, horizon_s=10.0, out=out)
    assert out["cpu.ttt_log"] == 0.0
    tracker.update(0.5, elapsed_us=S, horizon_s=10.0, out=out)
    level = 0.5 * math.log(0.5) + 0.5 * math.log(0.25)
    trend = 0.5 * (level - math.log(0.25))
    assert out["cpu.ttt_log"] == pytest.approx(1.0 - (-level / trend) / 10.0)
    assert out["cpu.ttt_log"] == pytest.approx(0.4)
    assert out["cpu.ttt"] == pytest.approx(0.0)
    idle = MetricTracker(spec=MetricSpec(name="cpu", scale=1.0, capacity=1.0), config=config)
    for _ in range(3):
        idle.update(0.0, elapsed_us=S, horizon_s=10.0, out=out)
    assert out["cpu.ttt_log"] == 0.0  # an idle metric's log is clamped, not -inf


def test_log_trend_only_for_capacity_metrics_and_only_when_asked() -> None:
    """No `ttt_log` for a metric without a capacity, nor with the option off."""
    for spec, enabled in (
        (MetricSpec(name="q", scale=10.0), True),
        (MetricSpec(name="cpu", scale=1.0, capacity=1.0), False),
    ):
        tracker = MetricTracker(spec=spec, config=FeatureConfig(log_trend=enabled))
        out: dict[str, float] = {}
        tracker.update(0.5, elapsed_us=0, horizon_s=10.0, out=out)
        assert not [name for name in out if name.endswith("ttt_log")]
