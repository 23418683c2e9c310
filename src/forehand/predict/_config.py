"""Configuration of the predictor: which metrics it reads, how it labels, and every bound it keeps.

One frozen dataclass per component (STYLE.md rule 10): `MetricSpec` describes one server metric,
`FeatureConfig` the time scales of the features, `LabelConfig` the prediction target, and
`PredictorConfig` ties them together with the named bounds on every per-entity table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from forehand.errors import ConfigError

__all__ = [
    "DEFAULT_SERVER_METRICS",
    "FeatureConfig",
    "LabelConfig",
    "MetricSpec",
    "PathSloConfig",
    "PredictorConfig",
]

SECOND_US = 1_000_000
"""Microseconds in a second."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    """One numeric metric a server reports, and what its values mean."""

    name: str
    """Key of the metric in `ServerSample.values`."""
    scale: float | None = None
    """Divides the raw value into a dimensionless level near 1 at trouble; None when the metric
    has no natural scale (its features are then taken against the entity's own baseline only)."""
    logarithmic: bool = False
    """Take `log1p(value / scale)` as the level, for heavy-tailed counts such as queue depth."""
    capacity: float | None = None
    """Raw value at which the metric saturates: the target of its time-to-threshold feature."""
    slo_max: float | None = None
    """Raw value above which the entity breaches its SLO; None when this metric defines no SLO."""
    noise_floor: float = 0.0
    """Smallest standard deviation assumed for the baseline, in raw units, so that a flat series
    does not turn every tiny wiggle into a huge z-score."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a metric needs a name")
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"metric {self.name}: scale must be positive, got {self.scale}")
        if self.logarithmic and self.scale is None:
            raise ConfigError(f"metric {self.name}: a logarithmic level needs a scale")
        if self.noise_floor < 0:
            raise ConfigError(f"metric {self.name}: noise_floor must be non-negative")


DEFAULT_SERVER_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(name="cpu_utilization", scale=1.0, capacity=1.0, noise_floor=0.01),
    MetricSpec(name="memory_utilization", scale=1.0, capacity=1.0, noise_floor=0.01),
    MetricSpec(name="queue_depth", scale=10.0, logarithmic=True, noise_floor=0.5),
    MetricSpec(
        name="latency_us_p99",
        scale=250_000.0,
        capacity=250_000.0,
        slo_max=250_000.0,
        noise_floor=2_000.0,
    ),
    MetricSpec(name="error_ratio", scale=0.05, capacity=0.05, slo_max=0.05, noise_floor=0.001),
    MetricSpec(name="loop_lag_us", scale=100_000.0, capacity=100_000.0, noise_floor=500.0),
)
"""What a Forehand server reports: CPU, memory, queue depth, p99 latency, errors, loop lag."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PathSloConfig:
    """When a client-to-server path degrades or breaches, and when that breaches its server."""

    loss_max: float = 0.05
    """Packet loss ratio above which a path breaches its SLO."""
    rtt_excess_us_max: int = 150_000
    """Round-trip time above the path's own minimum beyond which it breaches its SLO."""
    degraded_loss: float = 0.01
    """Packet loss ratio above which a path counts as degraded (a share feature, not a breach)."""
    degraded_rtt_excess_us: int = 40_000
    """Round-trip time above the minimum beyond which a path counts as degraded."""
    server_breach_share_min: float = 0.5
    """A server breaches when at least this share of its fresh path buckets breach: a network
    problem of the server's own, rather than of one client's network."""
    stale_us: int = 60 * SECOND_US
    """A path bucket whose newest sample is older than this is left out of the shares."""
    rtt_scale_us: int = 100_000
    """Divides round-trip excess and jitter into dimensionless features."""

    def __post_init__(self) -> None:
        if not 0.0 < self.loss_max <= 1.0 or not 0.0 <= self.degraded_loss <= self.loss_max:
            raise ConfigError(f"path loss thresholds out of range: {self}")
        if not 0 <= self.degraded_rtt_excess_us <= self.rtt_excess_us_max:
            raise ConfigError(f"path RTT thresholds out of order: {self}")
        if not 0.0 < self.server_breach_share_min <= 1.0:
            raise ConfigError(f"server_breach_share_min must be in (0, 1]: {self}")
        if self.stale_us <= 0 or self.rtt_scale_us <= 0:
            raise ConfigError(f"path stale_us and rtt_scale_us must be positive: {self}")


@dataclass(frozen=True, slots=True, kw_only=True)
class FeatureConfig:
    """The time scales of the features."""

    ewma_time_constants_us: tuple[int, ...] = (30 * SECOND_US, 120 * SECOND_US, 600 * SECOND_US)
    """Time constants of the exponentially weighted moving averages, fastest first."""
    baseline_time_constant_us: int = 3_600 * SECOND_US
    """Time constant of the entity's own baseline (mean and variance) that z-scores refer to."""
    extra_baseline_time_constants_us: tuple[int, ...] = ()
    """Further baselines, each giving a z-score `m.z_<tau>s` against the entity's own normal at
    that time scale (a jump that is rare for the last hour may be usual for the day)."""
    dispersion_window_ticks: int = 12
    """Samples in the rolling window of the dispersion feature."""
    holt_level_alpha: float = 0.3
    """Smoothing of the level in Holt's linear trend method."""
    holt_trend_beta: float = 0.1
    """Smoothing of the trend in Holt's linear trend method."""
    persistence_window_ticks: int = 6
    """Samples over which the rolling minima of a level and of its time-to-threshold are taken
    (`m.floor`, `m.ttt_floor`): longer than a short spike, shorter than a ramp's last minutes."""
    flap_window_ticks: int = 30
    """Samples over which a server counts its paths' server-wide degradations and their up/down
    transitions (`paths.wide_degradation_share`, `paths.wide_flips_share`)."""
    rtt_min_window_ticks: int = 360
    """Samples over which a path's minimum round-trip time is taken."""
    z_score_max: float = 20.0
    """Z-scores are clipped to +-this, so a cold baseline cannot dominate a model."""
    path_intermittency: bool = True
    """Intermittency features (`forehand.predict._path_window`): per path bucket, over the last
    `intermittency_windows_ticks` samples, the share that were degraded and the largest RTT
    excess; per server, the share of its fresh paths with a degraded sample in each window, the
    mean of their shares, and their largest RTT excess. On by default since the validation split
    of the simulator campaign chose them (docs/ARCHITECTURE.md, Evaluation on the simulator)."""
    intermittency_windows_ticks: tuple[int, ...] = (10, 30)
    """Windows, in path samples, of the intermittency features."""
    intermittent_rtt_excess_slo_fraction: float = 0.1
    """A path sample counts as degraded for the intermittency features when its RTT is above the
    path's minimum by more than this fraction of the path SLO (`rtt_excess_us_max`)... Clients
    report a smoothed RTT (7/8 of the previous one plus 1/8 of the newest), so a blip of a second
    or two shows at a fraction of its size: 15 ms of the 150 ms SLO."""
    intermittent_loss_min: float = 0.0
    """...or when its loss ratio is above this (any loss by default)."""
    path_floor: bool = True
    """Per server, the smallest RTT excess among its fresh paths (`paths.rtt_excess_min`, the
    fast EWMA) and, with `path_intermittency`, the smallest share of degraded samples among them
    (`paths.degraded_<n>t_min_share`): a problem at the server's end (its uplink congesting or
    flapping) lifts every path, one client's network only its own, so the least lifted path is
    the server's own part of the trouble."""
    log_trend: bool = True
    """Per capacity-bound metric, a second time-to-threshold (`m.ttt_log`) from Holt's trend of
    the level's logarithm: a queue's latency grows like 1 / (1 - load), so the linear trend
    projects a climbing latency too late; a multiplicative trend projects it sooner."""

    def __post_init__(self) -> None:
        constants = self.ewma_time_constants_us
        if not constants or any(value <= 0 for value in constants):
            raise ConfigError(f"EWMA time constants must be positive, got {constants}")
        if list(constants) != sorted(constants):
            raise ConfigError(f"EWMA time constants go fastest first, got {constants}")
        if self.baseline_time_constant_us <= 0 or any(
            value <= 0 for value in self.extra_baseline_time_constants_us
        ):
            raise ConfigError("baseline time constants must be positive")
        if self.persistence_window_ticks < 1 or self.flap_window_ticks < 2:
            raise ConfigError("need persistence_window_ticks >= 1 and flap_window_ticks >= 2")
        if self.dispersion_window_ticks < 2 or self.rtt_min_window_ticks < 1:
            raise ConfigError("feature windows need at least 2 (dispersion) and 1 (RTT) ticks")
        for name in ("holt_level_alpha", "holt_trend_beta"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in (0, 1]")
        if not self.z_score_max > 0:
            raise ConfigError("z_score_max must be positive")
        windows = self.intermittency_windows_ticks
        if not windows or any(size < 2 or size > 10_000 for size in windows):
            raise ConfigError(f"intermittency windows must be 2 to 10000 ticks, got {windows}")
        if len(set(windows)) != len(windows):
            raise ConfigError(f"intermittency windows must be distinct, got {windows}")
        if not 0.0 < self.intermittent_rtt_excess_slo_fraction <= 1.0:
            raise ConfigError("intermittent_rtt_excess_slo_fraction must be in (0, 1]")
        if not 0.0 <= self.intermittent_loss_min < 1.0:
            raise ConfigError("intermittent_loss_min must be in [0, 1)")


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelConfig:
    """The prediction target: an SLO breach starting within (t + lead, t + horizon]."""

    horizon_us: int = 600 * SECOND_US
    """H: how far ahead a risk looks."""
    lead_us: int = 10 * SECOND_US
    """L: the least warning worth having (a handoff must fit in it)."""
    breach_clear_us: int = 60 * SECOND_US
    """A breach ends only after this long without breaching samples, so a flickering breach is
    one event with one onset."""

    def __post_init__(self) -> None:
        if not 0 <= self.lead_us < self.horizon_us:
            raise ConfigError(f"need 0 <= lead_us < horizon_us, got {self}")
        if self.breach_clear_us < 0:
            raise ConfigError("breach_clear_us must be non-negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictorConfig:
    """Everything an `OnlinePredictor` needs, with the bound of every table it keeps."""

    metrics: tuple[MetricSpec, ...] = DEFAULT_SERVER_METRICS
    """The server metrics read from each `ServerSample`."""
    features: FeatureConfig = field(default_factory=FeatureConfig)
    """Time scales of the features."""
    labels: LabelConfig = field(default_factory=LabelConfig)
    """The prediction target."""
    path_slo: PathSloConfig = field(default_factory=PathSloConfig)
    """Path degradation and breach thresholds."""
    servers_max: int = 4_096
    """Most servers tracked; the least recently observed one is forgotten past it."""
    path_buckets_per_server: int = 8
    """Client-to-server paths are hashed by client group into this many buckets per server, so
    the number of path entities stays bounded whatever the number of clients."""
    pending_ticks_max: int = 256
    """Samples per entity kept until their label is known (they must cover horizon_us)."""
    onsets_kept_max: int = 16
    """Breach onsets remembered per entity for labelling."""
    negative_sample_probability: float = 0.2
    """Share of negative ticks the learned models train on; every positive tick trains. The
    calibrator sees every labelled tick, so subsampling does not bias the probabilities."""
    hard_negative_score_min: float = math.inf
    """Negative ticks whose primary raw score reached this train the learned models whatever
    the draw (hard negatives); infinity trains a plain share only."""
    calibration_labels_min: int = 500
    """Labelled ticks a calibrator must have learned before its risks count as calibrated."""
    contributions_max: int = 5
    """Top contributing features reported with each risk."""
    tree_grace_period: int = 100
    """Samples a leaf of the tree challenger sees between split attempts."""
    tree_split_confidence: float = 1e-3
    """Hoeffding-bound confidence of the tree challenger's splits (smaller splits later)."""
    tree_depth_max: int = 8
    """Deepest the tree challenger may grow."""
    tree_size_mb_max: float = 16.0
    """Memory cap of the tree challenger, in megabytes."""
    learning_rate: float = 0.005
    """Step size of the online logistic regression."""
    l2_regularization: float = 1e-4
    """L2 penalty of the online logistic regression."""
    stack_rule: bool = True
    """Give the logistic regression the rule baseline's largest component as an input."""
    hinge_knots: tuple[float, ...] = (0.5, 0.8)
    """Knots of the hinge features the logistic regression adds to each dimensionless level."""
    share_hinge_knots: tuple[float, ...] = (0.1, 0.25)
    """Further knots for the share features (`_share`, `_share_ewma`: shares of paths or of
    recent ticks), whose telling values (a flapping uplink's rate of blips, 5% to 50% of ticks)
    lie well below the level knots; () for the level knots alone."""
    linear_refresh_learns: int = 4
    """The logistic regression scores through a fold of River's pipeline into one affine map
    (slope and offset per input), rebuilt after at most this many learning steps: 1 scores
    exactly as River would, larger values let the scores lag the learner by fewer than this many
    SGD steps and spare a pass over every input per step (the rebuild costs as much as a score)."""
    calibration_learning_rate: float = 0.05
    """AdaGrad step size of the online Platt scaling."""
    replace_on_drift: bool = False
    """Let a background model replace the foreground at an ADWIN drift. Off by default: fault
    telemetry is bursty, so drifts fire on a stationary stream, and a model trained on the last
    hours forgets the fault families it did not see in them (measured: flapping links)."""
    adwin_warning_delta: float = 1e-3
    """ADWIN confidence at which a background model starts learning (a drift may be coming)."""
    adwin_drift_delta: float = 1e-5
    """ADWIN confidence at which the background model replaces the foreground one."""

    def __post_init__(self) -> None:
        names = [metric.name for metric in self.metrics]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"metrics need distinct names, got {names}")
        for name in (
            "servers_max",
            "path_buckets_per_server",
            "onsets_kept_max",
            "linear_refresh_learns",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.pending_ticks_max < 2:
            raise ConfigError("pending_ticks_max must be at least 2")
        if not 0.0 < self.negative_sample_probability <= 1.0:
            raise ConfigError("negative_sample_probability must be in (0, 1]")
        if self.calibration_labels_min < 0:
            raise ConfigError("calibration_labels_min must be non-negative")
        if self.contributions_max < 0 or self.tree_grace_period < 1 or self.tree_depth_max < 1:
            raise ConfigError("contributions_max, tree_grace_period, tree_depth_max out of range")
        if not 0.0 < self.tree_split_confidence < 1.0:
            raise ConfigError("tree_split_confidence must be in (0, 1)")
        for name in ("tree_size_mb_max", "learning_rate", "calibration_learning_rate"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")
        if self.l2_regularization < 0:
            raise ConfigError("l2_regularization must be non-negative")
        if not 0.0 < self.adwin_drift_delta <= self.adwin_warning_delta < 1.0:
            raise ConfigError("need 0 < adwin_drift_delta <= adwin_warning_delta < 1")

    @property
    def horizon_s(self) -> float:
        """The horizon in seconds, the unit trends are expressed in."""
        return self.labels.horizon_us / SECOND_US

    def metric_spec(self, name: str) -> MetricSpec:
        """The spec of metric `name`."""
        for metric in self.metrics:
            if metric.name == name:
                return metric
        raise ConfigError(f"no metric named {name}")


def time_constant_alpha(elapsed_us: int, time_constant_us: int) -> float:
    """Weight of a new sample in an EWMA of time constant `time_constant_us` after `elapsed_us`."""
    if elapsed_us <= 0:
        return 0.0
    return 1.0 - math.exp(-elapsed_us / time_constant_us)
