"""The placement configuration: hashing strategy, load bound, replica count and table bounds.

Every field that changes where a part lands travels inside the encoded shard map, so a server that
decodes the map computes the same placement as the manager that built it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction

from forehand.errors import ConfigError

__all__ = ["SERVER_INDEX_LIMIT", "PlacementConfig"]

SERVER_INDEX_LIMIT = 1 << 16
"""Ring owners are stored as 16-bit server indices, so `servers_max` stays below this."""
_EPSILON_DENOMINATOR_MAX = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class PlacementConfig:
    """How parts are placed on servers, and the bounds of the shard map."""

    strategy: str = "ring"
    """Name of the consistent-hashing strategy in the registry (`ring`, `maglev`, `rendezvous`)."""
    load_epsilon: float = 0.25
    """Bounded loads: no active server holds more than ceil((1 + epsilon) x its weighted share)
    of the parts as primary."""
    replica_count: int = 2
    """Replicas per part besides the primary (fewer when fewer servers are active)."""
    ring_points_per_weight: int = 1000
    """Ring points of a server of weight 1.0 (`ring` strategy); more points, less variance."""
    maglev_table_size: int = 65537
    """Entries of the Maglev lookup table (`maglev` strategy); must be prime."""
    servers_max: int = 4096
    """Most servers the map lists, in any state."""
    parts_max: int = 20_000_000
    """Most part keys the map holds."""
    parts_per_session_max: int = 64
    """Most parts one session may have."""
    delta_operations_max: int = 250_000
    """Most operations one delta may carry. A failover promotes every part the dead servers led
    in one delta (an override each), so this bounds what one failover can save, as the store's
    16 MiB per delta does (about 250,000 overrides)."""
    server_weight_max: float = 100.0
    """Largest server weight; the smallest is 0.001."""
    server_id_length_max: int = 128
    """Longest server id, in characters."""
    address_length_max: int = 255
    """Longest server address (`host:port`), in characters."""
    zone_length_max: int = 64
    """Longest zone label, in characters."""

    def __post_init__(self) -> None:
        if not self.strategy:
            raise ConfigError("strategy must name a registered strategy")
        if not 0.0 < self.load_epsilon <= 10.0:
            raise ConfigError(f"load_epsilon must be in (0, 10], got {self.load_epsilon}")
        if not 0 <= self.replica_count <= 16:
            raise ConfigError(f"replica_count must be in [0, 16], got {self.replica_count}")
        if not 1 <= self.ring_points_per_weight <= 100_000:
            raise ConfigError("ring_points_per_weight must be in [1, 100000]")
        if self.maglev_table_size < 3 or not _is_prime(self.maglev_table_size):
            raise ConfigError(f"maglev_table_size must be a prime, got {self.maglev_table_size}")
        if not 1 <= self.servers_max < SERVER_INDEX_LIMIT:
            raise ConfigError(f"servers_max must be in [1, {SERVER_INDEX_LIMIT - 1}]")
        if self.server_weight_max < 0.001:
            raise ConfigError("server_weight_max must be at least 0.001")
        for name in (
            "parts_max",
            "parts_per_session_max",
            "delta_operations_max",
            "server_id_length_max",
            "address_length_max",
            "zone_length_max",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive")

    @property
    def load_factor(self) -> Fraction:
        """1 + epsilon as an exact fraction, so capacities are integer arithmetic everywhere."""
        epsilon = Fraction(self.load_epsilon).limit_denominator(_EPSILON_DENOMINATOR_MAX)
        return 1 + epsilon

    @classmethod
    def randomized(cls, rng: random.Random) -> PlacementConfig:
        """A valid configuration drawn from `rng`, for simulations and property tests."""
        return cls(
            strategy=rng.choice(("ring", "ring", "maglev", "rendezvous")),
            load_epsilon=rng.choice((0.05, 0.1, 0.25, 0.5, 1.0)),
            replica_count=rng.randint(0, 3),
            ring_points_per_weight=rng.choice((16, 100, 400)),
            maglev_table_size=rng.choice((251, 1009, 4093)),
        )


def _is_prime(value: int) -> bool:
    if value % 2 == 0:
        return value == 2
    divisor = 3
    while divisor * divisor <= value:
        if value % divisor == 0:
            return False
        divisor += 2
    return True
