"""The manager's trigger policy, tunable at run time through the admin API.

`TunableRiskPolicy` is the `RiskPolicy` the manager process hands its core. It wraps the policy
that `build(config)` makes from the manager's `ManagerConfig`, and exposes the small settable part
of that config: every field whose name starts with one of `POLICY_FIELD_PREFIXES` (the
threshold policy's `overload_*` today; risk and predictor options once they exist). An update
replaces those fields, checks the whole config the way a config file is checked
(`ManagerConfig.__post_init__`: a bad value raises ConfigError and changes nothing) and builds a
fresh inner policy from it, so the new settings apply from the next load report on (cooldowns
start over), unless the inner policy offers `reconfigure(config)`, which then takes them in
place and keeps what it has learned.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

from forehand.core import ManagerConfig
from forehand.core._manager_risk import RiskDecision, RiskPolicy
from forehand.core.messages import LoadReport
from forehand.errors import ConfigError

__all__ = ["POLICY_FIELD_PREFIXES", "TunableRiskPolicy"]

POLICY_FIELD_PREFIXES = ("overload_", "risk_", "predict")
"""ManagerConfig fields with these prefixes are the trigger policy's settings."""
SETTING_INTEGER_MAX = (1 << 63) - 1
"""Largest integer a setting may hold (as in a configuration file: signed 64 bits)."""


class TunableRiskPolicy:
    """A `RiskPolicy` whose settings the admin API may read and change (see the module
    docstring)."""

    def __init__(
        self, config: ManagerConfig, *, build: Callable[[ManagerConfig], RiskPolicy]
    ) -> None:
        self._config = config
        self._build = build
        self._inner = build(config)
        self.fields: tuple[str, ...] = tuple(
            item.name
            for item in dataclasses.fields(ManagerConfig)
            if item.name.startswith(POLICY_FIELD_PREFIXES)
            and type(getattr(config, item.name)) in (bool, int, float, str)
        )
        """The settable fields (scalars only: the policy's kind is fixed at start)."""

    def settings(self) -> dict[str, Any]:
        """The current value of every settable field."""
        return {name: getattr(self._config, name) for name in self.fields}

    def update(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply `changes` (a subset of `fields`); the new settings. ConfigError on an unknown
        field or a bad value, and then nothing changes."""
        unknown = sorted(set(changes) - set(self.fields))
        if unknown:
            raise ConfigError(f"unknown policy setting(s) {unknown}; settable: {list(self.fields)}")
        current = self.settings()
        for name, value in changes.items():
            if type(value) is int and not -SETTING_INTEGER_MAX - 1 <= value <= SETTING_INTEGER_MAX:
                raise ConfigError(f"policy setting {name} must fit in 64 bits, got {value}")
        changes = {
            name: float(value) if type(current[name]) is float and type(value) is int else value
            for name, value in changes.items()
        }
        for name, value in changes.items():
            expected = type(current[name])
            if type(value) is not expected:
                raise ConfigError(
                    f"policy setting {name} must be {expected.__name__}, got {value!r}"
                )
            if type(value) is float and not math.isfinite(value):
                raise ConfigError(f"policy setting {name} must be a finite number, got {value}")
            if type(value) is int and not -SETTING_INTEGER_MAX - 1 <= value <= SETTING_INTEGER_MAX:
                raise ConfigError(f"policy setting {name} must fit in 64 bits, got {value}")
        try:
            config = dataclasses.replace(self._config, **changes)
        except (TypeError, ValueError) as error:
            raise ConfigError(str(error)) from error
        # A policy that learns (the predictor) keeps what it learned when it can take new
        # settings in place; any other is built afresh.
        reconfigure = getattr(self._inner, "reconfigure", None)
        if callable(reconfigure):
            reconfigure(config)
        else:
            self._inner = self._build(config)
        self._config = config
        return self.settings()

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """The inner policy's decision."""
        return self._inner.assess(server_id=server_id, load=load, now_us=now_us)

    def forget(self, server_id: str) -> None:
        """Forward to the inner policy."""
        self._inner.forget(server_id)

    def __getattr__(self, name: str) -> Any:
        # Hooks a policy may offer beyond `assess` and `forget` reach the inner policy.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)
