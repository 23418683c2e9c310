"""Per-entity state under named bounds: the feature trackers, the label queue, the newest scores.

A server owns its metric trackers and a fixed array of `path_buckets_per_server` path entities.
The bank holds at most `servers_max` servers and forgets the least recently observed one past it,
so memory is bounded by `servers_max * (1 + path_buckets_per_server)` entities, each with
fixed-size windows and at most `pending_ticks_max` queued ticks.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from forehand.predict._config import SECOND_US, PredictorConfig
from forehand.predict._features import Ewma, Holt, MetricTracker, PathTracker, RollingWindow
from forehand.predict._labels import DelayedLabeler
from forehand.predict._path_window import intermittency_names
from forehand.predict._samples import PathSample, ServerSample, path_bucket

__all__ = ["EntityState", "FeatureBank", "PathState", "ServerState"]


class EntityState:
    """What any entity keeps besides its trackers: labels, newest features and scores."""

    __slots__ = ("features", "labels", "last_sample_us", "scores")

    def __init__(self, *, config: PredictorConfig) -> None:
        self.labels = DelayedLabeler(
            config=config.labels,
            pending_ticks_max=config.pending_ticks_max,
            onsets_kept_max=config.onsets_kept_max,
        )
        """The entity's label queue and breach state."""
        self.features: dict[str, float] = {}
        """The newest features."""
        self.scores: tuple[float, ...] = ()
        """The newest raw score of each model head."""
        self.last_sample_us: int | None = None
        """When the entity last reported."""

    def elapsed_us(self, now_us: int) -> int:
        """Time since the previous sample (0 for the first)."""
        return 0 if self.last_sample_us is None else max(now_us - self.last_sample_us, 0)


class PathState(EntityState):
    """One bucket of client-to-server paths."""

    __slots__ = ("tracker",)

    def __init__(self, *, config: PredictorConfig) -> None:
        super().__init__(config=config)
        self.tracker = PathTracker(config=config.features, slo=config.path_slo)
        """The bucket's RTT, jitter and loss features."""


class ServerState(EntityState):
    """One server: its metrics, its path buckets, and the share of them that degrade."""

    __slots__ = (
        "degraded_share",
        "paths",
        "share_ewma",
        "share_holt",
        "trackers",
        "wide_ewmas",
        "wide_flips",
        "wide_last",
        "wide_window",
    )

    def __init__(self, *, config: PredictorConfig) -> None:
        super().__init__(config=config)
        features = config.features
        self.trackers = {
            metric.name: MetricTracker(spec=metric, config=features) for metric in config.metrics
        }
        """One tracker per configured metric."""
        self.paths: list[PathState | None] = [None] * config.path_buckets_per_server
        """The path buckets, created on their first sample."""
        self.degraded_share = 0.0
        """Share of fresh path buckets that are degraded, as of the newest server sample."""
        self.share_ewma = Ewma(time_constant_us=features.ewma_time_constants_us[0])
        """Fast average of the degraded share."""
        self.wide_ewmas = [Ewma(time_constant_us=tc) for tc in features.ewma_time_constants_us]
        """Share of recent time in which most paths degraded at once, at every time scale: a
        flapping uplink shows as a rising rate of fleeting server-wide blips, while one client
        network's trouble never counts."""
        self.share_holt = Holt(alpha=features.holt_level_alpha, beta=features.holt_trend_beta)
        """Trend of the degraded share."""
        self.wide_window = RollingWindow(size=features.flap_window_ticks)
        """Whether most paths degraded at once, over the last samples: a count, unlike the EWMAs,
        so a flapping uplink's intermittent blips add up to a steady signal."""
        self.wide_flips = RollingWindow(size=features.flap_window_ticks)
        """Whether that state changed at each of the last samples (up/down transitions)."""
        self.wide_last = 0.0
        """The newest "most paths degraded" flag."""


class FeatureBank:
    """Every tracked entity, bounded by `servers_max` servers with a fixed number of paths each."""

    def __init__(self, *, config: PredictorConfig) -> None:
        self._config = config
        self._servers: OrderedDict[str, ServerState] = OrderedDict()
        fastest_s = config.features.ewma_time_constants_us[0] // SECOND_US
        self._path_excess_name = f"path.rtt_excess.ewma_{fastest_s}s"
        self._capacities = [
            (metric.name, metric.capacity / metric.scale)
            for metric in config.metrics
            if metric.capacity is not None and metric.scale is not None
        ]
        self._wide_names = [
            f"paths.wide_degradation_ewma_{tc // SECOND_US}s"
            for tc in config.features.ewma_time_constants_us
        ]
        features = config.features
        self._intermittency = (
            [
                (
                    *intermittency_names(size),
                    f"paths.intermittent_{size}t_share",
                    f"paths.degraded_{size}t_mean_share",
                    f"paths.rtt_excess_{size}t.max",
                )
                for size in features.intermittency_windows_ticks
            ]
            if features.path_intermittency
            else []
        )
        self._path_floor = features.path_floor
        # The least share of degraded samples among a server's paths, per window.
        self._floor_names = {
            intermittency_names(size)[0]: f"paths.degraded_{size}t_min_share"
            for size in features.intermittency_windows_ticks
        }
        self.evicted_servers = 0
        """Servers forgotten to stay within `servers_max`."""
        self.non_finite_values = 0
        """Sample values that were NaN or infinite, counted as missing (a path's loss as 0)."""

    def __len__(self) -> int:
        return len(self._servers)

    def server(self, server_id: str) -> ServerState | None:
        """The state of `server_id`, if tracked."""
        return self._servers.get(server_id)

    def forget(self, server_id: str) -> None:
        """Drop `server_id` and its paths."""
        self._servers.pop(server_id, None)

    def servers(self) -> list[ServerState]:
        """Every tracked server, least recently observed first."""
        return list(self._servers.values())

    def _touch(self, server_id: str) -> ServerState:
        servers = self._servers
        state = servers.get(server_id)
        if state is None:
            if len(servers) >= self._config.servers_max:
                servers.popitem(last=False)
                self.evicted_servers += 1
            state = servers[server_id] = ServerState(config=self._config)
        else:
            servers.move_to_end(server_id)
        return state

    def observe_path(self, sample: PathSample, *, now_us: int) -> tuple[PathState, int, bool]:
        """Update a path bucket's features; its state, bucket index and breach flag."""
        server = self._touch(sample.server_id)
        bucket = path_bucket(sample.client_group, buckets=self._config.path_buckets_per_server)
        path = server.paths[bucket]
        if path is None:
            path = server.paths[bucket] = PathState(config=self._config)
        features: dict[str, float] = {}
        loss_ratio = sample.loss_ratio
        if not 0.0 <= loss_ratio <= 1.0:
            # A ratio outside [0, 1] (or NaN) is a broken measurement: clamp it, NaN to 0.
            if not math.isfinite(loss_ratio):
                self.non_finite_values += 1
            loss_ratio = min(1.0, loss_ratio) if loss_ratio > 0.0 else 0.0
        path.tracker.update(
            rtt_us=sample.rtt_us,
            jitter_us=sample.jitter_us,
            loss_ratio=loss_ratio,
            now_us=now_us,
            horizon_s=self._config.horizon_s,
            out=features,
        )
        features["server.paths.degraded_share"] = server.degraded_share
        path.features = features
        path.last_sample_us = now_us
        return path, bucket, path.tracker.breached

    def observe_server(self, sample: ServerSample, *, now_us: int) -> tuple[ServerState, bool]:
        """Update a server's features; its state and breach flag."""
        config = self._config
        server = self._touch(sample.server_id)
        elapsed_us = server.elapsed_us(now_us)
        horizon_s = config.horizon_s
        features: dict[str, float] = {}
        breached = False
        values = sample.values
        for metric in config.metrics:
            tracker = server.trackers[metric.name]
            raw = values.get(metric.name, tracker.last_raw)
            if raw is not None and not math.isfinite(raw):
                # A NaN or infinity (a broken sampler) would stay in every baseline and trend
                # for good: it counts as missing, like a metric the report left out.
                self.non_finite_values += 1
                raw = tracker.last_raw
            if raw is None:
                continue
            tracker.update(raw, elapsed_us=elapsed_us, horizon_s=horizon_s, out=features)
            if metric.slo_max is not None and raw > metric.slo_max:
                breached = True
        # How close the nearest capacity-bound metric is to its limit, now or by its trend:
        # the rule baseline's own signal, offered to the learned models as one feature.
        pressure = 0.0
        for name, capacity_level in self._capacities:
            level = features.get(f"{name}.level", 0.0) / capacity_level
            pressure = max(pressure, level, features.get(f"{name}.ttt", 0.0))
        features["capacity.pressure"] = pressure
        breached_share = self._path_shares(
            server, now_us=now_us, elapsed_us=elapsed_us, out=features
        )
        if breached_share >= config.path_slo.server_breach_share_min:
            breached = True
        if sample.breached is not None:
            breached = sample.breached
        server.features = features
        server.last_sample_us = now_us
        return server, breached

    def _path_shares(
        self, server: ServerState, *, now_us: int, elapsed_us: int, out: dict[str, float]
    ) -> float:
        fresh = degraded = breached = 0
        excess_sum = loss_max = 0.0
        excess_min = math.inf
        fresh_features: list[dict[str, float]] = []
        for path in server.paths:
            if path is None or not path.tracker.is_fresh(now_us=now_us):
                continue
            fresh += 1
            fresh_features.append(path.features)
            degraded += path.tracker.degraded
            breached += path.tracker.breached
            excess = path.features.get(self._path_excess_name, 0.0)
            excess_sum += excess
            excess_min = min(excess_min, excess)
            loss_max = max(loss_max, path.features.get("path.loss.level", 0.0))
        if self._path_floor:
            out["paths.rtt_excess_min"] = excess_min if fresh else 0.0
        degraded_share = degraded / fresh if fresh else 0.0
        breached_share = breached / fresh if fresh else 0.0
        server.degraded_share = degraded_share
        server.share_holt.update(degraded_share, elapsed_us=elapsed_us)
        out["paths.degraded_share"] = degraded_share
        out["paths.degraded_share_ewma"] = server.share_ewma.update(
            degraded_share, elapsed_us=elapsed_us
        )
        wide = (
            1.0
            if fresh and degraded_share >= self._config.path_slo.server_breach_share_min
            else 0.0
        )
        for name, ewma in zip(self._wide_names, server.wide_ewmas, strict=True):
            out[name] = ewma.update(wide, elapsed_us=elapsed_us)
        server.wide_window.update(wide)
        server.wide_flips.update(abs(wide - server.wide_last))
        server.wide_last = wide
        out["paths.wide_degradation_share"] = server.wide_window.mean
        out["paths.wide_flips_share"] = server.wide_flips.mean
        out["paths.degraded_share_trend"] = server.share_holt.trend_per_s * self._config.horizon_s
        out["paths.breached_share"] = breached_share
        out["paths.rtt_excess_mean"] = excess_sum / fresh if fresh else 0.0
        out["paths.loss_max"] = loss_max
        if self._intermittency:
            self._intermittency_shares(fresh_features, out=out)
        return breached_share

    def _intermittency_shares(
        self, fresh: list[dict[str, float]], *, out: dict[str, float]
    ) -> None:
        """Per window, over the features of the server's fresh paths: the share of them with a
        degraded sample in it (a server's uplink touches them all, one client's network one),
        their mean share of degraded samples, and the largest RTT excess among them."""
        count = len(fresh)
        for path_share, path_max, any_name, mean_name, max_name in self._intermittency:
            shares = [features.get(path_share, 0.0) for features in fresh]
            out[any_name] = sum(1 for share in shares if share > 0.0) / count if count else 0.0
            out[mean_name] = sum(shares) / count if count else 0.0
            if self._path_floor:
                out[self._floor_names[path_share]] = min(shares, default=0.0)
            out[max_name] = max((features.get(path_max, 0.0) for features in fresh), default=0.0)
