"""The trigger policy: from a server's calibrated risk to a graded action, with every guard rail.

Per server, a small state machine (states and transitions in one table, STYLE.md rule 5) turns
each risk into one of four actions: nothing, stop placing new sessions, drain gradually, move now.
Entering a draining state takes the mission's threshold held for k of the last n ticks (an urgent
risk skips that); leaving takes the risk falling below a lower exit threshold (hysteresis); after
an episode a cooldown keeps the server from draining again at once. Around the state machine:
a per-session dwell time, a per-server migration budget, a target-risk margin, shadow mode and a
holdout fraction of alarm episodes left unacted so precision stays measurable. Every decision is
returned and queued for the log with its risk and top contributing features.
"""

from __future__ import annotations

import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from forehand.errors import ConfigError, LocalProtocolError
from forehand.predict._predictor import FeatureContribution, Risk

__all__ = [
    "Action",
    "AlarmState",
    "Decision",
    "PolicyConfig",
    "RiskLevel",
    "TargetCandidate",
    "TriggerPolicy",
    "combined_risk",
    "transition_table",
]

SECOND_US = 1_000_000


class Action(StrEnum):
    """What the manager should do about a server, mildest first."""

    NONE = "none"
    STOP_PLACEMENT = "stop_placement"
    """Place no new sessions on the server."""
    DRAIN = "drain"
    """Move a share of its parts per decision, within the migration budget."""
    MOVE_NOW = "move_now"
    """Move all of its parts now, within the migration budget."""


class AlarmState(StrEnum):
    """A server's alarm state."""

    CALM = "calm"
    WATCHING = "watching"
    """Risk above the watch level: no new placements."""
    PENDING = "pending"
    """Risk above the threshold, waiting for k of n ticks."""
    DRAINING = "draining"
    """Threshold held: parts move away gradually."""
    EVACUATING = "evacuating"
    """Urgent risk: parts move away now."""


class RiskLevel(StrEnum):
    """Where one risk falls among the policy's thresholds (the trigger of a transition)."""

    LOW = "low"
    """Below the exit threshold."""
    HOLD = "hold"
    """Between exit and watch: the hysteresis band, nothing changes but an exit."""
    ELEVATED = "elevated"
    """Between watch and the threshold."""
    HIGH = "high"
    """Above the threshold, k of n not yet met (or cooling down)."""
    SUSTAINED = "sustained"
    """Above the threshold for k of the last n ticks."""
    URGENT = "urgent"
    """Above the urgent threshold."""


_S, _L = AlarmState, RiskLevel
_TRANSITIONS: dict[AlarmState, dict[RiskLevel, AlarmState]] = {
    _S.CALM: {
        _L.LOW: _S.CALM,
        _L.HOLD: _S.CALM,
        _L.ELEVATED: _S.WATCHING,
        _L.HIGH: _S.PENDING,
        _L.SUSTAINED: _S.DRAINING,
        _L.URGENT: _S.EVACUATING,
    },
    _S.WATCHING: {
        _L.LOW: _S.CALM,
        _L.HOLD: _S.WATCHING,
        _L.ELEVATED: _S.WATCHING,
        _L.HIGH: _S.PENDING,
        _L.SUSTAINED: _S.DRAINING,
        _L.URGENT: _S.EVACUATING,
    },
    _S.PENDING: {
        _L.LOW: _S.CALM,
        _L.HOLD: _S.WATCHING,
        _L.ELEVATED: _S.PENDING,
        _L.HIGH: _S.PENDING,
        _L.SUSTAINED: _S.DRAINING,
        _L.URGENT: _S.EVACUATING,
    },
    _S.DRAINING: {
        _L.LOW: _S.CALM,
        _L.HOLD: _S.DRAINING,
        _L.ELEVATED: _S.DRAINING,
        _L.HIGH: _S.DRAINING,
        _L.SUSTAINED: _S.DRAINING,
        _L.URGENT: _S.EVACUATING,
    },
    _S.EVACUATING: {
        _L.LOW: _S.CALM,
        _L.HOLD: _S.DRAINING,
        _L.ELEVATED: _S.DRAINING,
        _L.HIGH: _S.DRAINING,
        _L.SUSTAINED: _S.DRAINING,
        _L.URGENT: _S.EVACUATING,
    },
}
_ACTIONS = {
    _S.CALM: Action.NONE,
    _S.WATCHING: Action.STOP_PLACEMENT,
    _S.PENDING: Action.STOP_PLACEMENT,
    _S.DRAINING: Action.DRAIN,
    _S.EVACUATING: Action.MOVE_NOW,
}
_MOVING = frozenset({_S.DRAINING, _S.EVACUATING})


def transition_table() -> list[tuple[AlarmState, RiskLevel, AlarmState]]:
    """Every transition, for docs and tests."""
    return [
        (state, level, target)
        for state, row in _TRANSITIONS.items()
        for level, target in row.items()
    ]


def combined_risk(server_risk: float, path_risk: float) -> float:
    """Risk of a target as seen by one client: its server or the client's path to it fails."""
    return 1.0 - (1.0 - server_risk) * (1.0 - path_risk)


@dataclass(frozen=True, slots=True, kw_only=True)
class PolicyConfig:
    """Thresholds, timers and bounds of the trigger policy."""

    risk_threshold: float = 0.5
    """The mission's threshold: a risk held above it for k of n ticks starts a drain."""
    exit_risk: float = 0.25
    """A server leaves its alarm only when its risk falls below this (hysteresis)."""
    watch_risk: float = 0.35
    """Above this, no new sessions are placed on the server."""
    urgent_risk: float = 0.9
    """Above this, parts move at once, skipping k of n."""
    trigger_ticks_k: int = 3
    """Ticks above the threshold needed ..."""
    trigger_window_n: int = 5
    """... among the last this many."""
    cooldown_us: int = 300 * SECOND_US
    """After an alarm episode ends, the server may not drain again for this long (urgent may)."""
    session_dwell_us: int = 300 * SECOND_US
    """A session that moved may not move again for this long."""
    moves_per_server_max: int = 64
    """Most moves away from one server ..."""
    budget_window_us: int = 60 * SECOND_US
    """... within this sliding window."""
    target_margin: float = 0.2
    """A target must be at least this much less risky than the source."""
    drain_parts_fraction: float = 0.25
    """Share of a server's parts one DRAIN decision moves."""
    shadow_mode: bool = False
    """Decide and log, never act."""
    holdout_fraction: float = 0.0
    """Share of alarm episodes left unacted (decided and logged), to keep measuring precision."""
    act_on_uncalibrated: bool = False
    """Whether risks from a calibrator that has not learned enough yet may trigger actions."""
    servers_max: int = 4_096
    """Servers whose alarm state is kept; the least recently assessed is forgotten past it."""
    sessions_max: int = 65_536
    """Sessions whose last move time is kept for the dwell time."""
    decisions_kept_max: int = 1_024
    """Decisions queued for the log; the oldest is dropped (and counted) past it."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.exit_risk < self.watch_risk <= self.risk_threshold:
            raise ConfigError(f"need 0 <= exit_risk < watch_risk <= risk_threshold: {self}")
        if not self.risk_threshold < self.urgent_risk <= 1.0:
            raise ConfigError(f"need risk_threshold < urgent_risk <= 1: {self}")
        if not 1 <= self.trigger_ticks_k <= self.trigger_window_n:
            raise ConfigError(f"need 1 <= trigger_ticks_k <= trigger_window_n: {self}")
        if min(self.cooldown_us, self.session_dwell_us) < 0 or self.budget_window_us <= 0:
            raise ConfigError("policy times must be non-negative (budget window positive)")
        if not 0.0 <= self.target_margin < 1.0 or not 0.0 < self.drain_parts_fraction <= 1.0:
            raise ConfigError("target_margin in [0, 1), drain_parts_fraction in (0, 1]")
        if not 0.0 <= self.holdout_fraction <= 1.0:
            raise ConfigError("holdout_fraction must be in [0, 1]")
        for name in ("moves_per_server_max", "servers_max", "sessions_max", "decisions_kept_max"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """One assessment of one server, as logged."""

    server_id: str
    """The server."""
    now_us: int
    """When."""
    previous_state: AlarmState
    """The alarm state before."""
    state: AlarmState
    """The alarm state after."""
    level: RiskLevel
    """Where the risk fell among the thresholds."""
    action: Action
    """The action the state calls for."""
    acted: bool
    """Whether the caller should carry the action out (False in shadow mode and holdout)."""
    shadow: bool
    """Decided in shadow mode."""
    holdout: bool
    """Part of an alarm episode held out from acting."""
    risk: float
    """The risk's probability."""
    calibrated: bool
    """Whether the risk was calibrated."""
    model: str
    """The model that produced the risk."""
    parts_fraction: float
    """Share of the server's parts to move now (0 unless acting on DRAIN or MOVE_NOW)."""
    moves_allowed: int
    """Moves the migration budget allows away from this server right now."""
    top_features: tuple[FeatureContribution, ...]
    """The risk's top contributing features."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetCandidate:
    """A server that could take a part, with its risk and the client's path risk to it."""

    server_id: str
    """The candidate."""
    server_risk: float
    """The candidate server's own risk."""
    path_risk: float = 0.0
    """The risk of the client's path to the candidate."""

    @property
    def risk(self) -> float:
        """The combined risk of moving there."""
        return combined_risk(self.server_risk, self.path_risk)


class _ServerAlarm:
    __slots__ = ("cooldown_until_us", "high_ticks", "holdout", "state")

    def __init__(self, *, window: int) -> None:
        self.state = AlarmState.CALM
        self.high_ticks: deque[bool] = deque(maxlen=window)
        self.holdout = False
        self.cooldown_until_us = 0


class TriggerPolicy:
    """Risk in, graded decision out, per server; moves accounted for dwell and budget."""

    def __init__(self, *, config: PolicyConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._alarms: OrderedDict[str, _ServerAlarm] = OrderedDict()
        self._last_move_us: OrderedDict[str, int] = OrderedDict()
        self._moves: dict[str, deque[int]] = {}
        self._log: deque[Decision] = deque(maxlen=config.decisions_kept_max)
        self.decisions_dropped = 0
        """Decisions dropped from a full log queue."""

    @property
    def config(self) -> PolicyConfig:
        """The configuration."""
        return self._config

    def state_of(self, server_id: str) -> AlarmState:
        """The alarm state of `server_id` (CALM if unknown)."""
        alarm = self._alarms.get(server_id)
        return AlarmState.CALM if alarm is None else alarm.state

    def assess(self, risk: Risk, *, now_us: int) -> Decision:
        """Fold in a server's newest risk; the decision (also queued for the log)."""
        assert risk.entity.bucket is None, "the policy assesses servers"
        config = self._config
        server_id = risk.entity.server_id
        alarm = self._alarm(server_id)
        probability = risk.probability if (risk.calibrated or config.act_on_uncalibrated) else 0.0
        level = self._level(alarm, probability, now_us=now_us)
        previous = alarm.state
        state = _TRANSITIONS[previous][level]
        if state in _MOVING and previous not in _MOVING:
            alarm.holdout = self._rng.random() < config.holdout_fraction
        if state is AlarmState.CALM and previous in _MOVING:
            alarm.cooldown_until_us = now_us + config.cooldown_us
        if state is AlarmState.CALM:
            alarm.holdout = False
        alarm.state = state
        decision = self._decide(risk, alarm, previous, level, now_us=now_us)
        if len(self._log) == self._log.maxlen:
            self.decisions_dropped += 1
        self._log.append(decision)
        return decision

    def _alarm(self, server_id: str) -> _ServerAlarm:
        alarms = self._alarms
        alarm = alarms.get(server_id)
        if alarm is None:
            if len(alarms) >= self._config.servers_max:
                alarms.popitem(last=False)
            alarm = alarms[server_id] = _ServerAlarm(window=self._config.trigger_window_n)
        else:
            alarms.move_to_end(server_id)
        return alarm

    def _level(self, alarm: _ServerAlarm, probability: float, *, now_us: int) -> RiskLevel:
        config = self._config
        high = probability >= config.risk_threshold
        alarm.high_ticks.append(high)
        if probability >= config.urgent_risk:
            return RiskLevel.URGENT
        if high:
            sustained = sum(alarm.high_ticks) >= config.trigger_ticks_k
            cooling = now_us < alarm.cooldown_until_us
            return RiskLevel.SUSTAINED if sustained and not cooling else RiskLevel.HIGH
        if probability >= config.watch_risk:
            return RiskLevel.ELEVATED
        if probability >= config.exit_risk:
            return RiskLevel.HOLD
        return RiskLevel.LOW

    def _decide(
        self,
        risk: Risk,
        alarm: _ServerAlarm,
        previous: AlarmState,
        level: RiskLevel,
        *,
        now_us: int,
    ) -> Decision:
        config = self._config
        action = _ACTIONS[alarm.state]
        acted = action is not Action.NONE and not config.shadow_mode and not alarm.holdout
        fraction = 0.0
        if acted and action is Action.DRAIN:
            fraction = config.drain_parts_fraction
        elif acted and action is Action.MOVE_NOW:
            fraction = 1.0
        return Decision(
            server_id=risk.entity.server_id,
            now_us=now_us,
            previous_state=previous,
            state=alarm.state,
            level=level,
            action=action,
            acted=acted,
            shadow=config.shadow_mode,
            holdout=alarm.holdout,
            risk=risk.probability,
            calibrated=risk.calibrated,
            model=risk.model,
            parts_fraction=fraction,
            moves_allowed=self.moves_allowed(risk.entity.server_id, now_us=now_us),
            top_features=risk.top_features,
        )

    def decisions_to_log(self) -> list[Decision]:
        """Drain the queued decisions."""
        decisions = list(self._log)
        self._log.clear()
        return decisions

    def moves_allowed(self, server_id: str, *, now_us: int) -> int:
        """Moves the budget still allows away from `server_id` in the current window."""
        moves = self._moves.get(server_id)
        if moves is None:
            return self._config.moves_per_server_max
        while moves and moves[0] <= now_us - self._config.budget_window_us:
            moves.popleft()
        return self._config.moves_per_server_max - len(moves)

    def may_move(self, session_id: str, *, now_us: int) -> bool:
        """Whether `session_id` has dwelt long enough since its last move."""
        last = self._last_move_us.get(session_id)
        return last is None or now_us - last >= self._config.session_dwell_us

    def record_move(self, session_id: str, *, source_server_id: str, now_us: int) -> None:
        """Account a move of `session_id` away from `source_server_id` (dwell and budget)."""
        if self._config.shadow_mode:
            raise LocalProtocolError("a policy in shadow mode moves nothing")
        if not self.may_move(session_id, now_us=now_us):
            raise LocalProtocolError(f"session {session_id} is still dwelling")
        if self.moves_allowed(source_server_id, now_us=now_us) <= 0:
            raise LocalProtocolError(f"server {source_server_id} has no migration budget left")
        last = self._last_move_us
        last.pop(session_id, None)
        if len(last) >= self._config.sessions_max:
            last.popitem(last=False)
        last[session_id] = now_us
        moves = self._moves.get(source_server_id)
        if moves is None:
            if len(self._moves) >= self._config.servers_max:
                self._moves.pop(next(iter(self._moves)))
            moves = self._moves[source_server_id] = deque(maxlen=self._config.moves_per_server_max)
        moves.append(now_us)

    def choose_target(
        self, *, source_risk: float, candidates: Sequence[TargetCandidate]
    ) -> TargetCandidate | None:
        """The least risky candidate clearly safer than the source (by `target_margin`), or None."""
        margin = self._config.target_margin
        eligible = [c for c in candidates if c.risk <= source_risk - margin]
        if not eligible:
            return None
        return min(eligible, key=lambda candidate: (candidate.risk, candidate.server_id))

    def forget(self, server_id: str) -> None:
        """Drop the alarm state and budget of `server_id`."""
        self._alarms.pop(server_id, None)
        self._moves.pop(server_id, None)
