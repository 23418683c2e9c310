"""The study's store: the in-memory store's rules, seeded with a snapshot of the whole fleet."""

from __future__ import annotations

from forehand.stores._messages import (
    DeltaCommitRequested,
    DeltaCommitted,
    MapLoaded,
    MapLoadRequested,
    SnapshotSaved,
    SnapshotSaveRequested,
    StoreRequest,
    StoreResult,
)
from forehand.stores._store import StoreConfig, check_commit, check_snapshot

__all__ = ["StudyStore"]


class StudyStore:
    """Holds the newest snapshot and the deltas after it; starts from a given snapshot."""

    def __init__(self, *, snapshot: bytes, version: int) -> None:
        self._config = StoreConfig(deltas_since_snapshot_max=1_000_000)
        self._snapshot = snapshot
        self._snapshot_version = version
        self._deltas: list[bytes] = []

    @property
    def version(self) -> int:
        """The latest committed version."""
        return self._snapshot_version + len(self._deltas)

    def execute(self, request: StoreRequest) -> StoreResult:
        """Run one request, as `MemoryStore` does."""
        match request:
            case MapLoadRequested():
                return MapLoaded(
                    request_id=request.request_id,
                    version=self.version,
                    snapshot_version=self._snapshot_version,
                    snapshot=self._snapshot,
                    deltas=tuple(self._deltas),
                )
            case DeltaCommitRequested():
                rejected = check_commit(
                    request,
                    current_version=self.version,
                    deltas_since_snapshot=len(self._deltas),
                    config=self._config,
                )
                if rejected is not None:
                    return rejected
                self._deltas.append(request.delta)
                return DeltaCommitted(request_id=request.request_id, version=self.version)
            case SnapshotSaveRequested():
                refused = check_snapshot(
                    request,
                    current_version=self.version,
                    snapshot_version=self._snapshot_version,
                    config=self._config,
                )
                if refused is not None:
                    return refused
                del self._deltas[: request.version - self._snapshot_version]
                self._snapshot = request.snapshot
                self._snapshot_version = request.version
                return SnapshotSaved(request_id=request.request_id, version=request.version)
