"""The placement configuration validates its fields and draws valid random variants."""

from __future__ import annotations

import random
from fractions import Fraction

import pytest

from forehand.errors import ConfigError
from forehand.placement import PlacementConfig


@pytest.mark.parametrize(
    "field",
    [
        {"load_epsilon": 0.0},
        {"load_epsilon": -1.0},
        {"replica_count": -1},
        {"ring_points_per_weight": 0},
        {"maglev_table_size": 65536},
        {"servers_max": 1 << 16},
        {"parts_max": 0},
        {"strategy": ""},
    ],
)
def test_invalid_values_are_refused(field: dict[str, object]) -> None:
    """Out-of-range bounds and non-prime Maglev sizes are configuration errors."""
    with pytest.raises(ConfigError):
        PlacementConfig(**field)  # type: ignore[arg-type]


def test_load_factor_is_exact() -> None:
    """1 + epsilon is an exact fraction, so capacities never depend on float rounding."""
    assert PlacementConfig(load_epsilon=0.25).load_factor == Fraction(5, 4)
    assert PlacementConfig(load_epsilon=0.1).load_factor == Fraction(11, 10)


def test_randomized_configs_are_valid_and_seeded() -> None:
    """The same seed draws the same configuration, and every draw validates."""
    drawn = [PlacementConfig.randomized(random.Random(seed)) for seed in range(50)]
    again = [PlacementConfig.randomized(random.Random(seed)) for seed in range(50)]
    assert drawn == again
    assert len({config.strategy for config in drawn}) > 1
