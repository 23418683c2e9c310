"""The manager's risk input: which servers to move parts away from, before they fail.

`RiskPolicy` is the seam: given a server's newest load report it answers with a decision (move a
share of its primary parts, for a reason) or None. A policy that also implements `RiskSteering`
steers the rest of the manager: no new placements (nor spilled parts) on a server it flags, a
target-risk margin for its moves, per-session dwell and per-server migration budget, path reports
folded in, and a `RiskAssessed` event per decision. One that implements `ClientPathSteering`
weighs a move's target by the moving session's own client's path to it.

Two policies ship, chosen by `ManagerConfig.risk_policy`:

- `PredictiveRiskPolicy` (the default) feeds every heartbeat's load and path reports to a
  `forehand.predict.OnlinePredictor` and its calibrated risk to a `TriggerPolicy` (hysteresis,
  k of n, urgent, cooldown, graded actions, shadow mode, holdout); `GradedDrain` sizes each drain
  step to what the server must shed. Its risks mean probabilities
  only once its calibrator has learned `risk_calibration_labels_min` delayed labels; until then
  the rule below decides, so a fresh manager protects its servers from the first heartbeat. In
  shadow mode the rule keeps deciding and the predictor's decisions are only logged.
- `ThresholdRiskPolicy` (`rule`) flags a server whose CPU utilization or p99 latency is above a
  threshold, then stays quiet about it for a cooldown so one hot spell moves parts once.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from forehand.core._manager_config import ManagerConfig, RiskPolicyKind
from forehand.core._manager_events import RiskAssessed
from forehand.core.messages import LoadReport, PartLoad, PartRef, PathReport
from forehand.predict import (
    DEFAULT_SERVER_METRICS,
    Action,
    AlarmState,
    Decision,
    EntityKey,
    LabelConfig,
    OnlinePredictor,
    PathSample,
    PolicyConfig,
    PredictorConfig,
    RiskLevel,
    ServerSample,
    TargetCandidate,
    TriggerPolicy,
    combined_risk,
    path_bucket,
)
from forehand.wire import ReasonCode

__all__ = [
    "PART_LOADS_PER_REPORT_MAX",
    "PATHS_PER_HEARTBEAT_MAX",
    "PATH_MODELS",
    "PREDICTOR_MODELS",
    "ClientPathSteering",
    "GradedDrain",
    "PredictiveRiskPolicy",
    "RiskDecision",
    "RiskPolicy",
    "RiskSteering",
    "ThresholdRiskPolicy",
    "load_values",
    "make_risk_policy",
    "busiest_first",
    "parts_by_load",
]

PATHS_PER_HEARTBEAT_MAX = 256
"""Path reports of one heartbeat folded into the predictor; the rest of the batch is ignored."""
PART_LOADS_PER_REPORT_MAX = 256
"""`PartLoad` entries of one load report the manager reads; the rest are ignored."""
PREDICTOR_MODELS = ("logistic", "rule")
"""The predictor heads the manager runs besides `risk_model` (which goes first and decides).
The tree challenger runs only when `risk_model` names it: it costs several times the others per
heartbeat, and offline evaluation (`forehand predict-eval`) scores it anyway."""
PATH_SAMPLE_INTERVAL_US = 1_000_000
"""Least time between two samples of one path bucket: servers relay every client's report,
and a bucket's features need a sample a second, not one per client."""
PATH_MODELS = ("rule",)
"""The path heads: a path's rule (loss, RTT above its minimum, jitter) is what a target's path
risk needs; the server heads learn from the share of degraded paths, and a learned head per
path bucket would cost the manager more than all its server heads."""
WATCH_SHARE = 0.7
"""The watch threshold (stop placing) as a share of `risk_threshold`."""
EXIT_SHARE = 0.5
"""The exit threshold (hysteresis) as a share of `risk_threshold`."""
ASSESSMENTS_KEPT_MAX = 1_024
"""`RiskAssessed` events a policy queues until the manager drains them (after each heartbeat)."""
TREND_SMOOTHING = 0.5
"""Weight of the newest sample in a server's CPU level and slope (Holt's linear smoothing), from
which a graded drain projects the load its first step must shed."""
_HIGH_LEVELS = frozenset({RiskLevel.HIGH, RiskLevel.SUSTAINED, RiskLevel.URGENT})
"""Risk levels at or above the threshold: a drained server still there escalates."""
_MOVING_STATES = frozenset({AlarmState.DRAINING, AlarmState.EVACUATING})


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskDecision:
    """Move some of a server's primary parts away."""

    reason: ReasonCode
    """OVERLOAD, PREDICTED_FAILURE, ...: goes to the server and on to clients in HANDOFF."""
    parts_fraction: float
    """Share of the server's primary parts to move, in (0, 1]; at least one part moves."""
    detail: str
    """Why, with the inputs that decided it, for the audit log."""
    sheds_load: bool = False
    """`parts_fraction` is a share of the server's request load: the manager moves its busiest
    parts first until that much load is covered (`parts_by_load`), when the server reports
    per-part load (`LoadReport.part_loads`); otherwise that share of its primaries, at random."""

    def __post_init__(self) -> None:
        assert 0.0 < self.parts_fraction <= 1.0, self.parts_fraction


class RiskPolicy(Protocol):
    """Decides, from a server's load, whether to move parts off it now."""

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """A decision for `server_id` given its newest `load`, or None to leave it be."""
        ...

    def forget(self, server_id: str) -> None:
        """Drop any state kept about `server_id` (it died or left)."""
        ...


@runtime_checkable
class RiskSteering(Protocol):
    """What a risk policy offers the manager besides its move decisions."""

    def observe_paths(self, paths: Sequence[PathReport], *, now_us: int) -> None:
        """Fold in clients' path reports (to servers the manager knows) from one heartbeat."""
        ...

    def placement_blocked(self, server_id: str, *, now_us: int) -> bool:
        """Whether no new session, spilled part or moved part may be placed on `server_id`."""
        ...

    def target_allowed(self, *, source_id: str, target_id: str, now_us: int) -> bool:
        """Whether a part the policy moves off `source_id` may go to `target_id`."""
        ...

    def movable(self, session_key: str, *, now_us: int) -> bool:
        """Whether the session has dwelt long enough since the policy last moved it."""
        ...

    def moves_allowed(self, server_id: str, *, now_us: int) -> int:
        """How many more parts the migration budget lets the policy move off `server_id`."""
        ...

    def record_move(self, session_key: str, *, source_server_id: str, now_us: int) -> None:
        """Account one move of the session off `source_server_id` (dwell and budget)."""
        ...

    def assessments(self) -> list[RiskAssessed]:
        """Drain the decisions to log since the last call."""
        ...


@runtime_checkable
class ClientPathSteering(Protocol):
    """A steering policy that weighs a move's target by the moving session's client's path."""

    def target_allowed_for_client(
        self, *, source_id: str, target_id: str, client_bucket: int | None, now_us: int
    ) -> bool:
        """`target_allowed`, the target's path risk read for `client_bucket` (the session's
        client's bucket, `forehand.core._paths.client_bucket`; None when unknown)."""
        ...


def load_values(load: LoadReport) -> dict[str, float]:
    """A load report as the predictor's server metrics (`DEFAULT_SERVER_METRICS` names)."""
    return {
        "cpu_utilization": load.cpu_utilization,
        "memory_utilization": load.memory_utilization,
        "queue_depth": float(load.queue_depth),
        "latency_us_p99": float(load.latency_us_p99),
        "error_ratio": load.error_ratio,
        "loop_lag_us": float(load.loop_lag_us_p99),
    }


class _Log:
    """A bounded queue of `RiskAssessed` events."""

    def __init__(self) -> None:
        self._queue: deque[RiskAssessed] = deque(maxlen=ASSESSMENTS_KEPT_MAX)
        self.dropped = 0

    def add(self, event: RiskAssessed) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(event)

    def drain(self) -> list[RiskAssessed]:
        events = list(self._queue)
        self._queue.clear()
        return events


class ThresholdRiskPolicy:
    """Flags a server above the CPU or p99 latency threshold, then stays quiet for a cooldown.

    A flagged server takes no new placements while it is above a threshold or cooling down.
    """

    def __init__(self, *, config: ManagerConfig) -> None:
        self._config = config
        self._quiet_until_us: dict[str, int] = {}
        self._hot: dict[str, bool] = {}
        self._log = _Log()

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """OVERLOAD when a threshold is crossed and the server is not cooling down."""
        detail = self._crossed(load)
        if len(self._hot) >= self._config.servers_max and server_id not in self._hot:
            self._hot.clear()
        self._hot[server_id] = bool(detail)
        if not detail or now_us < self._quiet_until_us.get(server_id, 0):
            return None
        config = self._config
        if len(self._quiet_until_us) >= config.servers_max:
            self._expire(now_us)
        self._quiet_until_us[server_id] = now_us + config.overload_cooldown_ms * 1000
        self._log.add(self._assessed(server_id, load, now_us))
        return RiskDecision(
            reason=ReasonCode.OVERLOAD, parts_fraction=config.overload_parts_fraction, detail=detail
        )

    def _crossed(self, load: LoadReport) -> str:
        config = self._config
        if load.cpu_utilization > config.overload_threshold:
            return f"cpu_utilization {load.cpu_utilization:.3f} > {config.overload_threshold}"
        if 0 < config.overload_latency_us_p99 < load.latency_us_p99:
            return f"latency_us_p99 {load.latency_us_p99} > {config.overload_latency_us_p99}"
        # A request that arrives while the event loop is stalled waits unread for the stall, which
        # the server's own latency (arrival to answer) cannot see; clients do.
        if 0 < config.overload_latency_us_p99 < load.loop_lag_us_p99:
            return f"loop_lag_us_p99 {load.loop_lag_us_p99} > {config.overload_latency_us_p99}"
        return ""

    def _assessed(self, server_id: str, load: LoadReport, now_us: int) -> RiskAssessed:
        return RiskAssessed(
            server_id=server_id,
            risk=1.0,
            calibrated=False,
            model="threshold",
            level="threshold",
            state=AlarmState.DRAINING.value,
            action=Action.DRAIN.value,
            acted=True,
            shadow=False,
            holdout=False,
            parts_fraction=self._config.overload_parts_fraction,
            top_features=(
                ("cpu_utilization", load.cpu_utilization),
                ("latency_us_p99", float(load.latency_us_p99)),
                ("loop_lag_us_p99", float(load.loop_lag_us_p99)),
            ),
            now_us=now_us,
        )

    def forget(self, server_id: str) -> None:
        """Drop the cooldown of `server_id`."""
        self._quiet_until_us.pop(server_id, None)
        self._hot.pop(server_id, None)

    def _expire(self, now_us: int) -> None:
        for server_id, until_us in list(self._quiet_until_us.items()):
            if until_us <= now_us:
                del self._quiet_until_us[server_id]

    # RiskSteering.

    def observe_paths(self, paths: Sequence[PathReport], *, now_us: int) -> None:
        """The rule reads no paths."""

    def placement_blocked(self, server_id: str, *, now_us: int) -> bool:
        """Above a threshold now, or cooling down after a flag."""
        return self._hot.get(server_id, False) or now_us < self._quiet_until_us.get(server_id, 0)

    def target_allowed(self, *, source_id: str, target_id: str, now_us: int) -> bool:
        """Any target that takes placements (CPU headroom is the manager's own check)."""
        return not self.placement_blocked(target_id, now_us=now_us)

    def movable(self, session_key: str, *, now_us: int) -> bool:
        """The rule keeps no dwell time."""
        return True

    def moves_allowed(self, server_id: str, *, now_us: int) -> int:
        """The rule's budget is its cooldown: as many moves as the queue holds."""
        return self._config.handoff_queue_parts_max

    def record_move(self, session_key: str, *, source_server_id: str, now_us: int) -> None:
        """Nothing to account."""

    def assessments(self) -> list[RiskAssessed]:
        """The flags since the last call."""
        return self._log.drain()


@dataclass(slots=True, kw_only=True)
class _Episode:
    """A server's graded drain during one alarm episode."""

    fraction: float
    """Share of its primaries (or of its load, `by_load`) the last step moved."""
    by_load: bool = False
    """Whether the episode sheds load (its first step was sized by the load to shed): each
    step's share is a share of the server's request load, busiest parts first."""
    high_ticks: int = 0
    """Ticks above the threshold since that step."""


@dataclass(slots=True, kw_only=True)
class _Trend:
    """A server's smoothed CPU level and slope (Holt), from the predictor's samples."""

    level: float
    slope_per_us: float
    sampled_us: int
    interval_us: int


class GradedDrain:
    """How much of an alarmed server's primaries to move now: as little as brings it back.

    The trigger policy says that a server drains; this says how much, per decision. The first
    step of an episode moves the share of the server's load it must shed for its CPU, projected
    over `risk_drain_projection_ms` (or to the next chance to step again), to fall back under
    `risk_drain_cpu_utilization_target` (at least `risk_drain_first_fraction`); such an episode
    sheds load (`sheds_load`): its shares are shares of the server's requests, which the manager
    covers with its busiest parts first (`parts_by_load`). A server at risk whose projected CPU
    is under the target has a fault that shedding load does not cure (errors, latency, a
    flapping link): its first step is `risk_drain_unloaded_fraction`. Nothing more moves while
    a step shows its effect; when the risk is still above the threshold
    `risk_drain_escalation_ticks` ticks later, the next step moves
    `risk_drain_escalation_factor` times the last share, up to everything (a proportional
    re-shed of the load still above the target lagged the ramps it sheds and, in the scale
    study, moved more parts for more disruptions). Once at everything (or at the urgent level,
    MOVE_NOW), every decision with the risk above the threshold moves what the migration budget
    lets through. An episode ends with the alarm (CALM or WATCHING).
    """

    def __init__(self, *, config: ManagerConfig) -> None:
        self._config = config
        self._episodes: dict[str, _Episode] = {}
        self._trends: dict[str, _Trend] = {}

    def observe(self, server_id: str, *, cpu_utilization: float, now_us: int) -> None:
        """Fold one predictor sample of the server's CPU into its level and slope."""
        trends = self._trends
        trend = trends.get(server_id)
        if trend is None or now_us <= trend.sampled_us:
            if len(trends) >= self._config.servers_max and server_id not in trends:
                trends.clear()
            trends[server_id] = _Trend(
                level=cpu_utilization, slope_per_us=0.0, sampled_us=now_us, interval_us=0
            )
            return
        alpha = TREND_SMOOTHING
        interval_us = now_us - trend.sampled_us
        level = alpha * cpu_utilization + (1.0 - alpha) * (
            trend.level + trend.slope_per_us * interval_us
        )
        trend.slope_per_us = (
            alpha * (level - trend.level) / interval_us + (1.0 - alpha) * trend.slope_per_us
        )
        trend.level = level
        trend.sampled_us = now_us
        trend.interval_us = interval_us

    def projected_cpu(self, server_id: str) -> float | None:
        """The server's CPU projected over `risk_drain_projection_ms` (or the escalation dwell),
        rising trends only, at most `risk_drain_projected_cpu_max` (or the level, if higher)."""
        trend = self._trends.get(server_id)
        if trend is None:
            return None
        config = self._config
        ahead_us = config.risk_drain_projection_ms * 1000 or (
            trend.interval_us * config.risk_drain_escalation_ticks
        )
        projected = trend.level + max(0.0, trend.slope_per_us) * ahead_us
        return max(trend.level, min(projected, config.risk_drain_projected_cpu_max))

    def excess_share(self, server_id: str) -> float:
        """The share of the server's load to shed for its projected CPU to fall back under
        `risk_drain_cpu_utilization_target` (0.0 when it is under it or not known)."""
        projected = self.projected_cpu(server_id)
        target = self._config.risk_drain_cpu_utilization_target
        if projected is None or projected <= target:
            return 0.0
        return min(1.0, 1.0 - target / projected)

    def first_share(self, server_id: str) -> float:
        """The first step's share: the load to shed (at least `risk_drain_first_fraction`), or,
        when the load is under the target, `risk_drain_unloaded_fraction` (shedding would not
        cure it)."""
        excess = self.excess_share(server_id)
        if excess <= 0.0:
            return self._config.risk_drain_unloaded_fraction
        return max(self._config.risk_drain_first_fraction, excess)

    def step(self, decision: Decision) -> float:
        """The share of the server's primaries to move on this decision (0.0: none now)."""
        server_id = decision.server_id
        episodes = self._episodes
        if decision.state not in _MOVING_STATES:
            episodes.pop(server_id, None)
            return 0.0
        if not decision.acted:
            return 0.0
        if decision.action is Action.MOVE_NOW and not (
            self._config.risk_drain_urgent_sheds_load and self.excess_share(server_id) > 0.0
        ):
            self._start(server_id, 1.0, by_load=False)
            return 1.0
        episode = episodes.get(server_id)
        if episode is None:
            by_load = self.excess_share(server_id) > 0.0
            return self._start(server_id, self.first_share(server_id), by_load=by_load)
        episode.high_ticks = episode.high_ticks + 1 if decision.level in _HIGH_LEVELS else 0
        if episode.fraction >= 1.0 and episode.high_ticks:
            # Evacuating: each decision moves what the migration budget lets through.
            return 1.0
        if episode.high_ticks < self._config.risk_drain_escalation_ticks:
            return 0.0
        episode.high_ticks = 0
        episode.fraction = min(1.0, episode.fraction * self._config.risk_drain_escalation_factor)
        return episode.fraction

    def _start(self, server_id: str, fraction: float, *, by_load: bool) -> float:
        episodes = self._episodes
        if len(episodes) >= self._config.servers_max and server_id not in episodes:
            episodes.clear()
        episodes[server_id] = _Episode(fraction=fraction, by_load=by_load)
        return fraction

    def draining(self, server_id: str) -> bool:
        """Whether the server is in a drain episode."""
        return server_id in self._episodes

    def sheds_load(self, server_id: str) -> bool:
        """Whether the server's episode sheds load (its shares are shares of its load)."""
        episode = self._episodes.get(server_id)
        return episode is not None and episode.by_load

    def forget(self, server_id: str) -> None:
        """Drop the server's episode and trend."""
        self._episodes.pop(server_id, None)
        self._trends.pop(server_id, None)


def predictor_config(config: ManagerConfig) -> PredictorConfig:
    """The predictor's configuration from the manager's (the latency SLO from `risk_*`)."""
    horizon_us = config.risk_horizon_ms * 1000
    slo = float(config.risk_latency_slo_us_p99)
    metrics = tuple(
        replace(metric, scale=slo, capacity=slo, slo_max=slo, noise_floor=slo / 125)
        if metric.name == "latency_us_p99"
        else metric
        for metric in DEFAULT_SERVER_METRICS
    )
    return PredictorConfig(
        metrics=metrics,
        labels=LabelConfig(
            horizon_us=horizon_us,
            lead_us=config.risk_lead_ms * 1000,
            breach_clear_us=min(60_000_000, horizon_us // 4),
        ),
        calibration_labels_min=config.risk_calibration_labels_min,
        servers_max=config.servers_max,
    )


def predictor_models(config: ManagerConfig) -> tuple[str, ...]:
    """The server heads: `risk_model` first (it decides), then the others of `PREDICTOR_MODELS`."""
    return (config.risk_model, *(name for name in PREDICTOR_MODELS if name != config.risk_model))


def policy_config(config: ManagerConfig) -> PolicyConfig:
    """The trigger policy's configuration from the manager's."""
    return PolicyConfig(
        risk_threshold=config.risk_threshold,
        watch_risk=config.risk_threshold * WATCH_SHARE,
        exit_risk=config.risk_threshold * EXIT_SHARE,
        urgent_risk=config.risk_urgent_threshold,
        cooldown_us=config.overload_cooldown_ms * 1000,
        session_dwell_us=config.risk_session_dwell_ms * 1000,
        moves_per_server_max=config.risk_moves_per_server_max,
        budget_window_us=config.risk_budget_window_ms * 1000,
        target_margin=config.risk_target_margin,
        drain_parts_fraction=config.overload_parts_fraction,
        shadow_mode=config.risk_shadow_mode,
        holdout_fraction=config.risk_holdout_fraction,
        servers_max=config.servers_max,
    )


class PredictiveRiskPolicy:
    """The predictor and the trigger policy behind `RiskPolicy` and `RiskSteering`."""

    def __init__(
        self,
        *,
        config: ManagerConfig,
        rng: random.Random,
        predictor: OnlinePredictor | None = None,
        policy: TriggerPolicy | None = None,
    ) -> None:
        self._config = config
        self.predictor = predictor or OnlinePredictor(
            config=predictor_config(config),
            rng=random.Random(rng.getrandbits(64)),
            models=predictor_models(config),
            path_models=PATH_MODELS,
        )
        """The online predictor (features, delayed labels, calibrated heads)."""
        self.policy = policy or TriggerPolicy(
            config=policy_config(config), rng=random.Random(rng.getrandbits(64))
        )
        """The trigger policy (alarm states, dwell, budget, margin, shadow, holdout)."""
        self.rule = ThresholdRiskPolicy(config=config)
        """The rule that decides while the predictor is not calibrated yet."""
        self.graded = GradedDrain(config=config)
        """How much each drain decision moves (graded steps, escalation)."""
        self._blocked: dict[str, bool] = {}
        self._path_sampled_us: dict[tuple[str, int], int] = {}
        self._sampled_us: dict[str, int] = {}
        self._log = _Log()

    @property
    def calibrated(self) -> bool:
        """Whether the primary head's risks are calibrated."""
        return self.predictor.calibrated

    @property
    def _deciding(self) -> bool:
        """The predictor decides once calibrated, unless in shadow mode (then the rule acts)."""
        return self.predictor.calibrated and not self.policy.config.shadow_mode

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """Observe the load; the trigger policy's move, or the rule's while uncalibrated.

        The predictor takes one sample per server per `risk_tick_ms`; a heartbeat in between
        only reaches the rule while the rule decides.
        """
        last_us = self._sampled_us.get(server_id)
        if last_us is not None and now_us - last_us < self._config.risk_tick_ms * 1000:
            if self._deciding:
                return None
            return self.rule.assess(server_id=server_id, load=load, now_us=now_us)
        if len(self._sampled_us) >= self._config.servers_max and server_id not in self._sampled_us:
            self._sampled_us.clear()
        self._sampled_us[server_id] = now_us
        sample = ServerSample(server_id=server_id, values=load_values(load))
        self.predictor.observe(sample, now_us=now_us)
        self.graded.observe(server_id, cpu_utilization=load.cpu_utilization, now_us=now_us)
        # Top features only for decisions that are logged: most heartbeats change nothing.
        risk = self.predictor.risk(EntityKey(server_id), now_us=now_us, explain=False)
        decision = self.policy.assess(risk, now_us=now_us)
        self.policy.decisions_to_log()  # The manager logs its own events, below.
        share = self.graded.step(decision) if self._deciding else decision.parts_fraction
        decision = replace(decision, parts_fraction=share)
        if risk.calibrated and (
            decision.state is not decision.previous_state or decision.action is not Action.NONE
        ):
            explained = self.predictor.risk(EntityKey(server_id), now_us=now_us)
            decision = replace(decision, top_features=explained.top_features)
            self._log.add(_assessed(decision))
        if not self._deciding:
            return self.rule.assess(server_id=server_id, load=load, now_us=now_us)
        if len(self._blocked) >= self._config.servers_max and server_id not in self._blocked:
            self._blocked.clear()
        self._blocked[server_id] = decision.acted
        if not decision.acted or share <= 0.0:
            return None
        top = ", ".join(f"{f.name}={f.value:.3g}" for f in decision.top_features)
        return RiskDecision(
            reason=ReasonCode.PREDICTED_FAILURE,
            parts_fraction=share,
            detail=f"risk {decision.risk:.3f} ({decision.model}, {decision.level}); {top}",
            sheds_load=share < 1.0 and self.graded.sheds_load(server_id),
        )

    def forget(self, server_id: str) -> None:
        """Forget the server in the predictor, the trigger policy and the rule."""
        self.predictor.forget(server_id)
        self.policy.forget(server_id)
        self.rule.forget(server_id)
        self.graded.forget(server_id)
        self._blocked.pop(server_id, None)
        self._sampled_us.pop(server_id, None)

    # RiskSteering.

    def observe_paths(self, paths: Sequence[PathReport], *, now_us: int) -> None:
        """Each path report as a path sample of its measured server, bucketed by client bucket;
        a path bucket takes at most one sample per `PATH_SAMPLE_INTERVAL_US`."""
        buckets = self.predictor.config.path_buckets_per_server
        last = self._path_sampled_us
        for report in paths[:PATHS_PER_HEARTBEAT_MAX]:
            group = f"bucket{report.client_bucket}"
            key = (report.server_id, path_bucket(group, buckets=buckets))
            if now_us - last.get(key, -PATH_SAMPLE_INTERVAL_US) < PATH_SAMPLE_INTERVAL_US:
                continue
            if len(last) >= self._config.servers_max * buckets and key not in last:
                last.clear()
            last[key] = now_us
            sample = PathSample(
                server_id=report.server_id,
                client_group=group,
                rtt_us=report.rtt_us,
                jitter_us=report.jitter_us,
                loss_ratio=report.loss_ratio,
            )
            self.predictor.observe(sample, now_us=now_us)

    def placement_blocked(self, server_id: str, *, now_us: int) -> bool:
        """The trigger policy acts on an alarm (watch or worse); the rule's flag before that."""
        if self._deciding:
            return self._blocked.get(server_id, False)
        return self.rule.placement_blocked(server_id, now_us=now_us)

    def target_risk(
        self, server_id: str, *, now_us: int, client_bucket: int | None = None
    ) -> float:
        """The target's server risk combined with the moving session's client's path risk."""
        server_risk = self.predictor.risk(EntityKey(server_id), now_us=now_us).probability
        return combined_risk(server_risk, self.path_risk(server_id, client_bucket, now_us=now_us))

    def path_risk(self, server_id: str, client_bucket: int | None, *, now_us: int) -> float:
        """The risk of the path from the client's bucket to the server, when reported; else the
        mean risk of the server's reported paths (0.0 when none is)."""
        predictor = self.predictor
        if client_bucket is not None:
            bucket = path_bucket(
                f"bucket{client_bucket}", buckets=predictor.config.path_buckets_per_server
            )
            own = predictor.risk(EntityKey(server_id, bucket), now_us=now_us)
            if own.age_us is not None:
                return own.probability
        path_risks = [
            risk.probability
            for bucket in range(predictor.config.path_buckets_per_server)
            if (risk := predictor.risk(EntityKey(server_id, bucket), now_us=now_us)).age_us
            is not None
        ]
        return sum(path_risks) / len(path_risks) if path_risks else 0.0

    def target_allowed(self, *, source_id: str, target_id: str, now_us: int) -> bool:
        """Not blocked, and (once deciding) safer than the source by the target margin."""
        return self.target_allowed_for_client(
            source_id=source_id, target_id=target_id, client_bucket=None, now_us=now_us
        )

    def target_allowed_for_client(
        self, *, source_id: str, target_id: str, client_bucket: int | None, now_us: int
    ) -> bool:
        """`target_allowed` for one session's part: the target's risk as its client sees it."""
        if self.placement_blocked(target_id, now_us=now_us):
            return False
        if not self._deciding:
            return True
        source = self.predictor.risk(EntityKey(source_id), now_us=now_us)
        risk = self.target_risk(target_id, now_us=now_us, client_bucket=client_bucket)
        candidate = TargetCandidate(server_id=target_id, server_risk=risk)
        chosen = self.policy.choose_target(source_risk=source.probability, candidates=[candidate])
        return chosen is not None

    def movable(self, session_key: str, *, now_us: int) -> bool:
        """The session's dwell time since its last risk move is over (the rule keeps none)."""
        if not self._deciding:
            return True
        return self.policy.may_move(session_key, now_us=now_us)

    def moves_allowed(self, server_id: str, *, now_us: int) -> int:
        """The migration budget left for `server_id` (the rule's is its cooldown)."""
        if not self._deciding:
            return self.rule.moves_allowed(server_id, now_us=now_us)
        return self.policy.moves_allowed(server_id, now_us=now_us)

    def record_move(self, session_key: str, *, source_server_id: str, now_us: int) -> None:
        """Account the move in the trigger policy (dwell, budget) once the predictor decides."""
        if not self._deciding:
            return
        if not self.policy.may_move(session_key, now_us=now_us):
            return
        if self.policy.moves_allowed(source_server_id, now_us=now_us) > 0:
            self.policy.record_move(session_key, source_server_id=source_server_id, now_us=now_us)

    def assessments(self) -> list[RiskAssessed]:
        """The rule's flags and the trigger policy's decisions since the last call."""
        return [*self.rule.assessments(), *self._log.drain()]


def _assessed(decision: Decision) -> RiskAssessed:
    return RiskAssessed(
        server_id=decision.server_id,
        risk=decision.risk,
        calibrated=decision.calibrated,
        model=decision.model,
        level=decision.level.value,
        state=decision.state.value,
        action=decision.action.value,
        acted=decision.acted,
        shadow=decision.shadow,
        holdout=decision.holdout,
        parts_fraction=decision.parts_fraction,
        top_features=tuple((f.name, f.value) for f in decision.top_features),
        now_us=decision.now_us,
    )


def busiest_first(refs: Sequence[PartRef], part_loads: Sequence[PartLoad]) -> list[PartRef]:
    """`refs` with the reported ones first, busiest first (the others after, in their order):
    a migration budget that keeps the first parts then keeps the ones worth moving."""
    rates = _reported_rates(part_loads)
    return sorted(refs, key=lambda ref: -rates.get(ref, 0.0))


def _reported_rates(part_loads: Sequence[PartLoad]) -> dict[PartRef, float]:
    """The first `PART_LOADS_PER_REPORT_MAX` reported rates that are finite and positive."""
    rates: dict[PartRef, float] = {}
    for load in part_loads[:PART_LOADS_PER_REPORT_MAX]:
        rate = load.requests_per_second
        if math.isfinite(rate) and rate > 0.0 and load.ref not in rates:
            rates[load.ref] = rate
    return rates


def parts_by_load(
    free: Sequence[PartRef],
    *,
    primaries: Sequence[PartRef],
    part_loads: Sequence[PartLoad],
    requests_per_second: float,
    load_share: float,
    count_max: int,
    rng: random.Random,
) -> list[PartRef]:
    """The fewest of `free` whose load covers `load_share` of the server's, busiest first.

    `primaries` are the server's primaries in the current map, `free` those a move may take
    now; `part_loads` its busiest parts as it reported them (at most `PART_LOADS_PER_REPORT_MAX`
    read; an entry with a rate that is not a finite positive number is skipped). The report may
    be older than the map: a reported part the map no longer places on the server as primary
    has left, so its rate counts neither toward the load to shed nor in it (it is taken off
    `requests_per_second`, which it was part of). The server's load is the larger of what is
    left of `requests_per_second` and the sum of its reported primaries; its unreported
    primaries share what the reported ones leave evenly, as far as the manager knows, so a share
    the busiest free parts do not cover is made up by that many of the unreported ones, at
    random. At least one part (when any is free), at most `count_max`.
    """
    assert 0.0 < load_share <= 1.0, load_share
    if count_max <= 0 or not free:
        return []
    here = set(primaries)
    reported = _reported_rates(part_loads)
    rates = {ref: rate for ref, rate in reported.items() if ref in here}
    reported_total = sum(rates.values())
    departed_total = sum(reported.values()) - reported_total
    measured = requests_per_second if math.isfinite(requests_per_second) else 0.0
    total = max(measured - departed_total, reported_total)
    to_shed = load_share * total
    free_set = set(free)
    busiest = sorted(
        ((rate, ref) for ref, rate in rates.items() if ref in free_set),
        key=lambda item: item[0],
        reverse=True,
    )
    chosen: list[PartRef] = []
    shed = 0.0
    for rate, ref in busiest:
        if shed >= to_shed or len(chosen) >= count_max:
            break
        chosen.append(ref)
        shed += rate
    if shed < to_shed and len(chosen) < count_max:
        unreported = [ref for ref in free if ref not in rates]
        unreported_count = sum(1 for ref in primaries if ref not in rates)
        rest_rate = max(0.0, total - reported_total) / unreported_count if unreported_count else 0.0
        if rest_rate > 0.0:
            need = math.ceil((to_shed - shed) / rest_rate)
            chosen += rng.sample(unreported, min(need, count_max - len(chosen), len(unreported)))
    if not chosen:
        chosen.append(rng.choice(list(free)))
    return chosen


def make_risk_policy(config: ManagerConfig, rng: random.Random) -> RiskPolicy:
    """The policy `config.risk_policy` names, its randomness drawn from `rng`."""
    if config.risk_policy is RiskPolicyKind.RULE:
        return ThresholdRiskPolicy(config=config)
    return PredictiveRiskPolicy(config=config, rng=rng)
