"""Store requests and results: the only way a core touches storage (STYLE.md rule 11).

A core emits a request with a `request_id` of its choosing; the runtime (or the simulator) runs
it on a `Store` and feeds the result, which echoes the id, back to the core. Maps and deltas travel
as the opaque bytes of the `forehand.placement` codec: the store keeps versions, not meanings.
The shard map's entries for servers are the cluster membership, so it needs no table of its own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "DeltaCommitRequested",
    "DeltaCommitted",
    "DeltaRejected",
    "MapLoadRequested",
    "MapLoaded",
    "RejectionReason",
    "SnapshotRejected",
    "SnapshotSaveRequested",
    "SnapshotSaved",
    "StoreFailed",
    "StoreRequest",
    "StoreResult",
]


class RejectionReason(enum.Enum):
    """Why a store refused a write."""

    STALE_BASE = "stale-base"
    """The delta's base version is not the latest committed version."""
    SNAPSHOT_REQUIRED = "snapshot-required"
    """The delta log reached its bound; save a snapshot before committing more."""
    TOO_LARGE = "too-large"
    """The record is larger than the store's bound."""
    VERSION_AHEAD = "version-ahead"
    """A snapshot names a version the store has not committed."""
    VERSION_BEHIND = "version-behind"
    """A snapshot is older than the one the store already has."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MapLoadRequested:
    """Read the latest committed map: the newest snapshot and the deltas after it."""

    request_id: int
    """Chosen by the requester; echoed in the result."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaCommitRequested:
    """Commit one delta, atomically, if and only if the latest version is `base_version`."""

    request_id: int
    """Chosen by the requester; echoed in the result."""
    base_version: int
    """The version the delta applies to; the delta makes `base_version + 1`."""
    delta: bytes
    """The encoded delta (`ShardMap.encode_delta`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotSaveRequested:
    """Store the whole map at a committed version and drop the deltas it covers."""

    request_id: int
    """Chosen by the requester; echoed in the result."""
    version: int
    """The version the snapshot encodes; at most the latest committed one."""
    snapshot: bytes
    """The encoded map (`ShardMap.encode`)."""


StoreRequest = MapLoadRequested | DeltaCommitRequested | SnapshotSaveRequested
"""Everything a core may ask of a store."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MapLoaded:
    """The latest committed map, as a snapshot and the deltas that follow it."""

    request_id: int
    """The request answered."""
    version: int
    """The latest committed version (0 when nothing was ever committed)."""
    snapshot_version: int
    """The version of `snapshot` (0 when there is none)."""
    snapshot: bytes | None
    """The newest encoded map, or None: start from the empty map at version 0."""
    deltas: tuple[bytes, ...]
    """Encoded deltas for versions snapshot_version + 1 .. version, in order."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaCommitted:
    """The delta is durable; the map is now at `version`."""

    request_id: int
    """The request answered."""
    version: int
    """The new latest version."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaRejected:
    """The delta was not committed; nothing changed."""

    request_id: int
    """The request answered."""
    base_version: int
    """The base version the request named."""
    current_version: int
    """The latest committed version."""
    reason: RejectionReason
    """Why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotSaved:
    """The snapshot is durable and the deltas it covers are gone."""

    request_id: int
    """The request answered."""
    version: int
    """The snapshot's version."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotRejected:
    """The snapshot was not saved; nothing changed."""

    request_id: int
    """The request answered."""
    version: int
    """The version the request named."""
    current_version: int
    """The latest committed version."""
    reason: RejectionReason
    """Why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreFailed:
    """The store could not run the request (I/O error, corrupt file); nothing is known to change."""

    request_id: int
    """The request answered."""
    reason: str
    """The error, for the operator."""


StoreResult = (
    MapLoaded | DeltaCommitted | DeltaRejected | SnapshotSaved | SnapshotRejected | StoreFailed
)
"""Everything a store may answer."""
