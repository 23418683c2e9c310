"""Links: what each direction between two nodes does, and the per-run state the network keeps.

`Link` is static configuration (delay, jitter, loss, bandwidth, transport); `LinkState` adds what
changes during a run (the serialization queue, the last arrival, degradation ramps); partitions
cut traffic between groups. The engine that routes messages over them is `_network.py`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from forehand.core import NodeId
from forehand.errors import ConfigError
from forehand.sim._ramp import Ramp

__all__ = [
    "DEFAULT_MESSAGE_BYTES",
    "ActivePartition",
    "JitterDistribution",
    "Link",
    "LinkState",
    "NetworkConfig",
    "PartitionDirection",
    "Transport",
]

DEFAULT_MESSAGE_BYTES = 256
"""Size the default `message_size` gives every message, for bandwidth accounting."""


class Transport(StrEnum):
    """How a link carries messages."""

    CONNECTION = "connection"
    """In order, no duplicates; losses become delay, and broken connections reset both ends."""
    DATAGRAM = "datagram"
    """Independent messages: lost, duplicated and reordered as drawn."""


class JitterDistribution(StrEnum):
    """The distribution of the jitter added to a link's base delay."""

    UNIFORM = "uniform"
    """Uniform on [0, jitter_us)."""
    LOGNORMAL = "lognormal"
    """Lognormal with median jitter_us and shape jitter_sigma: a heavy right tail."""


class PartitionDirection(StrEnum):
    """Which way traffic is cut between the two sides of a partition."""

    BOTH = "both"
    A_TO_B = "a-to-b"
    B_TO_A = "b-to-a"


def _constant_message_size(message: object) -> int:
    return DEFAULT_MESSAGE_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class Link:
    """The static behaviour of one direction of a link between two nodes."""

    transport: Transport = Transport.CONNECTION
    """Connection (ordered, resets) or datagram (loss, duplication, reordering)."""
    delay_us: int = 1_000
    """Base one-way propagation delay."""
    jitter_us: int = 0
    """Scale of the random extra delay added to each message."""
    jitter_distribution: JitterDistribution = JitterDistribution.UNIFORM
    """Distribution of the jitter."""
    jitter_sigma: float = 0.5
    """Shape of lognormal jitter (the sigma of the underlying normal)."""
    loss_probability: float = 0.0
    """Chance a transmission is lost: dropped on a datagram link, retransmitted on a connection."""
    duplicate_probability: float = 0.0
    """Chance a datagram is delivered twice."""
    reorder_probability: float = 0.0
    """Chance a datagram is held back by up to `reorder_delay_us` so later ones overtake it."""
    reorder_delay_us: int = 0
    """Bound on the extra delay of a reordered datagram."""
    bandwidth_bytes_per_s: int | None = None
    """Serialization rate of the link; None for unlimited."""
    queue_bytes_max: int = 4 * 1024 * 1024
    """Bound on bytes waiting to be serialized; overflow drops a datagram or resets a connection."""
    reset_probability: float = 0.0
    """Chance a message on a connection breaks it outright (middlebox resets, NAT rebinding)."""
    retransmission_timeout_us: int = 200_000
    """First retransmission delay after a loss on a connection; it doubles per further loss."""
    retransmissions_max: int = 5
    """Bound on retransmissions of one message; one more loss breaks the connection."""
    handshake_round_trips: int = 1
    """Round trips a new connection pays before its first message."""

    def __post_init__(self) -> None:
        for name in ("loss_probability", "duplicate_probability", "reorder_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} is a probability, got {self}")
        if not 0.0 <= self.reset_probability <= 1.0:
            raise ConfigError(f"reset_probability is a probability, got {self}")
        if min(self.delay_us, self.jitter_us, self.reorder_delay_us) < 0:
            raise ConfigError(f"link delays are non-negative, got {self}")
        if self.reorder_probability > 0 and self.reorder_delay_us == 0:
            raise ConfigError("a reorder probability needs a positive reorder_delay_us")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ConfigError(f"bandwidth_bytes_per_s must be positive, got {self}")
        if self.queue_bytes_max <= 0 or self.retransmissions_max < 0:
            raise ConfigError(f"queue and retransmission bounds must be positive, got {self}")
        if self.handshake_round_trips < 0 or self.retransmission_timeout_us <= 0:
            raise ConfigError(f"handshake and retransmission settings are invalid: {self}")
        if self.transport is Transport.CONNECTION and (
            self.duplicate_probability > 0 or self.reorder_probability > 0
        ):
            raise ConfigError("a connection never duplicates or reorders; use a datagram link")

    @classmethod
    def randomized(cls, rng: random.Random, *, transport: Transport = Transport.CONNECTION) -> Link:
        """A plausible link drawn from `rng` (datacenter to intercontinental)."""
        delay_us = rng.choice((200, 1_000, 5_000, 20_000, 80_000))
        datagram = transport is Transport.DATAGRAM
        reorder = rng.choice((0.0, 0.01, 0.05)) if datagram else 0.0
        return cls(
            transport=transport,
            delay_us=delay_us,
            jitter_us=delay_us // rng.choice((2, 5, 10, 50)),
            jitter_distribution=rng.choice(tuple(JitterDistribution)),
            loss_probability=rng.choice((0.0, 0.0, 0.001, 0.01, 0.05)),
            duplicate_probability=rng.choice((0.0, 0.001, 0.01)) if datagram else 0.0,
            reorder_probability=reorder,
            reorder_delay_us=delay_us if reorder else 0,
            bandwidth_bytes_per_s=rng.choice((None, 1_250_000, 12_500_000, 125_000_000)),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    """The network of one simulation: default link, per-pair overrides, connection behaviour."""

    default_link: Link = field(default_factory=Link)
    """The link used for every ordered pair without an override."""
    links: Mapping[tuple[NodeId, NodeId], Link] = field(default_factory=dict)
    """Overrides per ordered pair `(source, target)`."""
    message_size: Callable[[object], int] = _constant_message_size
    """Bytes a message occupies on the wire, for bandwidth and queue accounting."""
    connection_timeout_us: int = 10_000_000
    """How long a connection stalls (partition, silent peer) before both ends give up on it."""
    stalled_messages_max: int = 10_000
    """Bound on messages held on one stalled connection; overflow breaks the connection."""

    def __post_init__(self) -> None:
        if self.connection_timeout_us <= 0 or self.stalled_messages_max <= 0:
            raise ConfigError(f"connection bounds must be positive, got {self}")


class LinkState:
    """The mutable state of one direction of a link."""

    __slots__ = (
        "busy_until_us",
        "delay_ramps",
        "last_arrival_us",
        "link",
        "loss_ramps",
        "packets_lost_count",
        "packets_retransmitted_count",
        "packets_sent_count",
    )

    def __init__(self, link: Link) -> None:
        self.link = link
        self.busy_until_us = 0
        self.last_arrival_us = -1
        self.delay_ramps: list[Ramp] = []
        self.loss_ramps: list[Ramp] = []
        self.packets_sent_count = 0
        """Transmissions on this direction so far, retransmissions included (what a
        transport stack counts as packets sent)."""
        self.packets_lost_count = 0
        """Transmissions lost so far: drawn lost by the link's loss, or cut by a partition."""
        self.packets_retransmitted_count = 0
        """Transmissions that were sent again after a loss (connection links only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivePartition:
    """A partition in force: traffic between the two sides is cut in the given direction."""

    token: int
    """Identifies the partition so it can be healed."""
    side_a: frozenset[NodeId]
    """Nodes on one side (only membership is tested, never iterated)."""
    side_b: frozenset[NodeId]
    """Nodes on the other side."""
    direction: PartitionDirection
    """Which way traffic is cut."""

    def blocks(self, source: NodeId, target: NodeId) -> bool:
        """Whether traffic from `source` to `target` is cut."""
        direction = self.direction
        if direction is not PartitionDirection.B_TO_A and source in self.side_a:
            return target in self.side_b
        if direction is not PartitionDirection.A_TO_B and source in self.side_b:
            return target in self.side_a
        return False
