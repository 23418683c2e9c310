"""The opt-in path intermittency features, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from forehand.errors import ConfigError
from forehand.predict import FeatureConfig, PathSample, PredictorConfig, ServerSample
from forehand.predict._bank import FeatureBank
from forehand.predict._path_window import IntermittencyTracker, WindowCount, WindowMaximum
from forehand.predict._samples import path_bucket
from forehand.sim._predict_eval import sim_predictor_config
from forehand.sim._predict_eval_plan import SimEvalConfig

S = 1_000_000


def test_window_count_is_the_share_of_set_flags_in_the_window() -> None:
    """The share of set flags over the last `size` samples, the oldest dropping out."""
    window = WindowCount(size=3)
    flags = [True, False, True, True, False, False]
    shares = [window.update(flag) for flag in flags]
    assert shares == pytest.approx([1.0, 0.5, 2 / 3, 2 / 3, 2 / 3, 1 / 3])
    for _ in range(1_000):
        window.update(True)
    assert window.count == 3 and window.update(False) == pytest.approx(2 / 3)


def test_window_maximum_forgets_values_older_than_the_window() -> None:
    """The maximum of the last `size` samples: a large value counts until it leaves."""
    maximum = WindowMaximum(size=3)
    assert [maximum.update(x) for x in (5.0, 1.0, 3.0, 2.0, 0.0, 0.0)] == [
        5.0,
        5.0,
        5.0,
        3.0,
        3.0,
        2.0,
    ]


def test_intermittency_tracker_counts_rtt_and_loss_blips() -> None:
    """A sample is degraded above the RTT excess bound or with loss; shares and maxima per
    window, the excess in RTT-scale units."""
    tracker = IntermittencyTracker(
        windows_ticks=(2, 4), rtt_excess_us_min=37_500.0, loss_min=0.0, rtt_scale_us=100_000
    )
    samples = [(10_000.0, 0.0), (80_000.0, 0.0), (0.0, 0.01), (20_000.0, 0.0)]
    expected = [
        (False, 0.0, 0.0, 0.1, 0.1),
        (True, 0.5, 0.5, 0.8, 0.8),
        (True, 1.0, 2 / 3, 0.8, 0.8),
        (False, 0.5, 0.5, 0.2, 0.8),
    ]
    for (excess, loss), (degraded, share2, share4, max2, max4) in zip(
        samples, expected, strict=True
    ):
        out: dict[str, float] = {}
        assert tracker.update(rtt_excess_us=excess, loss_ratio=loss, out=out) is degraded
        assert out == pytest.approx(
            {
                "path.degraded_2t_share": share2,
                "path.degraded_4t_share": share4,
                "path.rtt_excess_2t.max": max2,
                "path.rtt_excess_4t.max": max4,
            }
        )


def _bank(*, enabled: bool) -> FeatureBank:
    features = FeatureConfig(path_intermittency=enabled, intermittency_windows_ticks=(2, 4))
    return FeatureBank(config=PredictorConfig(path_buckets_per_server=64, features=features))


def _blip_on_one_path(bank: FeatureBank) -> tuple[dict[str, float], dict[str, float]]:
    """Paths a and b at 20 ms; a blips to 100 ms at tick 2. The server's and a's features."""
    assert path_bucket("a", buckets=64) != path_bucket("b", buckets=64)
    path_features: dict[str, float] = {}
    for tick in range(4):
        for group in ("a", "b"):
            rtt_us = 100_000 if group == "a" and tick == 2 else 20_000
            sample = PathSample(server_id="s", client_group=group, rtt_us=rtt_us)
            path, _, _ = bank.observe_path(sample, now_us=tick * S)
            if group == "a":
                path_features = path.features
    server, _ = bank.observe_server(ServerSample(server_id="s", values={}), now_us=3 * S)
    return server.features, path_features


def test_server_sees_the_share_of_paths_with_a_blip_in_each_window() -> None:
    """One of two paths blipped 80 ms above its minimum (15 ms, a tenth of the SLO, counts): half
    the paths have a degraded sample in both windows, their mean degraded share is a quarter of
    the window's share on the blipping path, and the largest excess is 0.8 RTT-scale units."""
    server, path = _blip_on_one_path(_bank(enabled=True))
    assert path["path.degraded_2t_share"] == pytest.approx(0.5)
    assert path["path.degraded_4t_share"] == pytest.approx(0.25)
    assert server["paths.intermittent_2t_share"] == pytest.approx(0.5)
    assert server["paths.intermittent_4t_share"] == pytest.approx(0.5)
    assert server["paths.degraded_2t_mean_share"] == pytest.approx(0.25)
    assert server["paths.degraded_4t_mean_share"] == pytest.approx(0.125)
    assert server["paths.rtt_excess_2t.max"] == pytest.approx(0.8)
    assert server["paths.rtt_excess_4t.max"] == pytest.approx(0.8)


def test_intermittency_features_are_on_by_default_and_can_be_turned_off() -> None:
    """The default predictor (and the simulator campaign's) computes them; turned off, none."""
    features = PredictorConfig().features
    assert features.path_intermittency and features.path_floor and features.log_trend
    server, path = _blip_on_one_path(_bank(enabled=False))
    names = [*server, *path]
    assert not [name for name in names if "t_share" in name or "t.max" in name]
    campaign = SimEvalConfig.quick(events_per_kind=1)
    assert sim_predictor_config(campaign).features.path_intermittency
    assert not sim_predictor_config(campaign, path_intermittency=False).features.path_intermittency


@pytest.mark.parametrize(
    "options",
    [
        {"intermittency_windows_ticks": ()},
        {"intermittency_windows_ticks": (1,)},
        {"intermittency_windows_ticks": (5, 5)},
        {"intermittency_windows_ticks": (20_000,)},
        {"intermittent_rtt_excess_slo_fraction": 0.0},
        {"intermittent_loss_min": 1.0},
    ],
)
def test_bad_intermittency_options_are_refused(options: dict[str, object]) -> None:
    """Windows out of bounds or repeated, a zero RTT fraction, a loss bound of 1: a clear error."""
    with pytest.raises(ConfigError):
        FeatureConfig(**options)  # type: ignore[arg-type]


def test_path_floor_is_the_least_lifted_path() -> None:
    """Path a blips 80 ms above its minimum at tick 2, path b at ticks 2 and 3: at tick 3 the
    server's floor is a's fast EWMA of the excess, (1 - alpha) alpha 0.8 with alpha =
    1 - exp(-1 s / 30 s), and a's share of degraded samples over 2 ticks, 0.5 (b's is 1.0)."""
    features = FeatureConfig(
        path_intermittency=True, path_floor=True, intermittency_windows_ticks=(2, 4)
    )
    bank = FeatureBank(config=PredictorConfig(path_buckets_per_server=64, features=features))
    blips = {"a": (2,), "b": (2, 3)}
    for tick in range(4):
        for group, ticks in blips.items():
            rtt_us = 100_000 if tick in ticks else 20_000
            sample = PathSample(server_id="s", client_group=group, rtt_us=rtt_us)
            bank.observe_path(sample, now_us=tick * S)
        server, _ = bank.observe_server(ServerSample(server_id="s", values={}), now_us=tick * S)
    alpha = 1.0 - math.exp(-1.0 / 30.0)
    assert server.features["paths.rtt_excess_min"] == pytest.approx((1 - alpha) * alpha * 0.8)
    assert server.features["paths.degraded_2t_min_share"] == pytest.approx(0.5)
    assert server.features["paths.degraded_4t_min_share"] == pytest.approx(0.25)
    assert server.features["paths.degraded_2t_mean_share"] == pytest.approx(0.75)


def test_path_floor_without_paths_and_off() -> None:
    """A server with no fresh path reads a floor of 0; with the option off there is none."""
    on = FeatureBank(config=PredictorConfig(features=FeatureConfig(path_floor=True)))
    server, _ = on.observe_server(ServerSample(server_id="s", values={}), now_us=0)
    assert server.features["paths.rtt_excess_min"] == 0.0
    off = FeatureBank(config=PredictorConfig(features=FeatureConfig(path_floor=False)))
    server, _ = off.observe_server(ServerSample(server_id="s", values={}), now_us=0)
    assert "paths.rtt_excess_min" not in server.features
