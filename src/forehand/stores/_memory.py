"""The in-memory store: deterministic, for the simulator and tests."""

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

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps the newest snapshot and the deltas after it in memory; same rules as every store."""

    def __init__(
        self,
        *,
        config: StoreConfig | None = None,
        snapshot: bytes | None = None,
        snapshot_version: int = 0,
    ) -> None:
        """An empty store, or one that starts from `snapshot` at `snapshot_version` (a
        simulation that builds its whole fleet's map up front)."""
        assert (snapshot is None) == (snapshot_version == 0), "a snapshot needs its version"
        self._config = config or StoreConfig()
        self._snapshot = snapshot
        self._snapshot_version = snapshot_version
        self._deltas: list[bytes] = []
        self._closed = False

    @property
    def version(self) -> int:
        """The latest committed version."""
        return self._snapshot_version + len(self._deltas)

    def execute(self, request: StoreRequest) -> StoreResult:
        assert not self._closed, "store used after close"
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
                return self._commit(request)
            case SnapshotSaveRequested():
                return self._save(request)

    def _commit(self, request: DeltaCommitRequested) -> StoreResult:
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

    def _save(self, request: SnapshotSaveRequested) -> StoreResult:
        rejected = check_snapshot(
            request,
            current_version=self.version,
            snapshot_version=self._snapshot_version,
            config=self._config,
        )
        if rejected is not None:
            return rejected
        del self._deltas[: request.version - self._snapshot_version]
        self._snapshot = request.snapshot
        self._snapshot_version = request.version
        return SnapshotSaved(request_id=request.request_id, version=request.version)

    def close(self) -> None:
        self._closed = True
