"""The manager's risk input: which servers to move parts away from, before they fail.

`RiskPolicy` is the seam where the predictor plugs in: given a server's newest load report it
answers with a decision (move a share of its primary parts, for a reason) or None. Until the
predictor exists, `ThresholdRiskPolicy` flags a server whose CPU utilization or p99 latency is
above a threshold, then stays quiet about it for a cooldown so one hot spell moves parts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from forehand.core._manager_config import ManagerConfig
from forehand.core.messages import LoadReport
from forehand.wire import ReasonCode

__all__ = ["RiskDecision", "RiskPolicy", "ThresholdRiskPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskDecision:
    """Move some of a server's primary parts away."""

    reason: ReasonCode
    """OVERLOAD, PREDICTED_FAILURE, ...: goes to the server and on to clients in HANDOFF."""
    parts_fraction: float
    """Share of the server's primary parts to move, in (0, 1]; at least one part moves."""
    detail: str
    """Why, with the inputs that decided it, for the audit log."""

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


class ThresholdRiskPolicy:
    """Flags a server above the CPU or p99 latency threshold, then stays quiet for a cooldown."""

    def __init__(self, *, config: ManagerConfig) -> None:
        self._config = config
        self._quiet_until_us: dict[str, int] = {}

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """OVERLOAD when a threshold is crossed and the server is not cooling down."""
        if now_us < self._quiet_until_us.get(server_id, 0):
            return None
        config = self._config
        detail = ""
        if load.cpu_utilization > config.overload_threshold:
            detail = f"cpu_utilization {load.cpu_utilization:.3f} > {config.overload_threshold}"
        elif 0 < config.overload_latency_us_p99 < load.latency_us_p99:
            detail = f"latency_us_p99 {load.latency_us_p99} > {config.overload_latency_us_p99}"
        if not detail:
            return None
        if len(self._quiet_until_us) >= config.servers_max:
            self._expire(now_us)
        self._quiet_until_us[server_id] = now_us + config.overload_cooldown_ms * 1000
        return RiskDecision(
            reason=ReasonCode.OVERLOAD, parts_fraction=config.overload_parts_fraction, detail=detail
        )

    def forget(self, server_id: str) -> None:
        """Drop the cooldown of `server_id`."""
        self._quiet_until_us.pop(server_id, None)

    def _expire(self, now_us: int) -> None:
        for server_id, until_us in list(self._quiet_until_us.items()):
            if until_us <= now_us:
                del self._quiet_until_us[server_id]
