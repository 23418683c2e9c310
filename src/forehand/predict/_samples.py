"""The telemetry a predictor reads, and the entities it scores.

A server reports its own metrics in a `ServerSample`; a client reports its path to a server in a
`PathSample`. Paths are hashed by the client's group (its network, zone or address prefix) into a
fixed number of buckets per server, so a server with a million clients still has a handful of path
entities.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["EntityKey", "PathSample", "Sample", "ServerSample", "path_bucket"]


class EntityKey(NamedTuple):
    """A server (`bucket` None) or one bucket of client-to-server paths of a server."""

    server_id: str
    """The server."""
    bucket: int | None = None
    """The path bucket, or None for the server itself."""

    @property
    def is_server(self) -> bool:
        """True for a server, False for a path bucket."""
        return self.bucket is None

    def __str__(self) -> str:
        return self.server_id if self.bucket is None else f"{self.server_id}/path{self.bucket}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSample:
    """A server's own metrics at one moment."""

    server_id: str
    """The server that reported."""
    values: Mapping[str, float]
    """Metric name -> raw value; names follow `PredictorConfig.metrics`, missing ones keep their
    last value."""
    breached: bool | None = None
    """The SLO state when someone other than the metrics knows it (an operator's label, a failure
    detector); None lets the metrics' `slo_max` and the paths decide."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PathSample:
    """One client group's measurement of its path to a server."""

    server_id: str
    """The server at the far end."""
    client_group: str
    """The client's network group; hashed into the server's path buckets."""
    rtt_us: int
    """Smoothed round-trip time."""
    jitter_us: int = 0
    """Round-trip time variation."""
    loss_ratio: float = 0.0
    """Share of packets lost, 0.0 to 1.0."""


Sample = ServerSample | PathSample
"""Anything `Predictor.observe` accepts."""


def path_bucket(client_group: str, *, buckets: int) -> int:
    """The bucket of `client_group` among `buckets`, stable across processes (CRC-32, not hash)."""
    assert buckets > 0
    return zlib.crc32(client_group.encode()) % buckets
