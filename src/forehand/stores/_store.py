"""The `Store` interface, its configuration, the rules every store enforces, and the registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from forehand.errors import ConfigError
from forehand.stores._messages import (
    DeltaCommitRequested,
    DeltaRejected,
    RejectionReason,
    SnapshotRejected,
    SnapshotSaveRequested,
    StoreRequest,
    StoreResult,
)

__all__ = [
    "Store",
    "StoreConfig",
    "StoreFactory",
    "check_commit",
    "check_snapshot",
    "open_store",
    "register_store",
    "store_names",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreConfig:
    """Bounds shared by every store."""

    deltas_since_snapshot_max: int = 100_000
    """Most deltas kept after the newest snapshot; beyond it commits wait for a snapshot."""
    delta_bytes_max: int = 16 * 1024 * 1024
    """Largest encoded delta accepted."""
    snapshot_bytes_max: int = 1024 * 1024 * 1024
    """Largest encoded map accepted."""
    busy_timeout_ms: int = 5_000
    """How long a file-backed store waits for another writer's lock before failing."""

    def __post_init__(self) -> None:
        for name in (
            "deltas_since_snapshot_max",
            "delta_bytes_max",
            "snapshot_bytes_max",
            "busy_timeout_ms",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive")


class Store(Protocol):
    """Runs store requests. Calls are synchronous; the runtime runs them in a worker thread."""

    def execute(self, request: StoreRequest) -> StoreResult:
        """Run one request and return its result; storage errors become `StoreFailed`."""
        ...

    def close(self) -> None:
        """Release the store's resources; it must not be used afterwards."""
        ...


def check_commit(
    request: DeltaCommitRequested,
    *,
    current_version: int,
    deltas_since_snapshot: int,
    config: StoreConfig,
) -> DeltaRejected | None:
    """The rejection a commit deserves against the store's state, or None to commit it."""
    reason = None
    if request.base_version != current_version:
        reason = RejectionReason.STALE_BASE
    elif len(request.delta) > config.delta_bytes_max:
        reason = RejectionReason.TOO_LARGE
    elif deltas_since_snapshot >= config.deltas_since_snapshot_max:
        reason = RejectionReason.SNAPSHOT_REQUIRED
    if reason is None:
        return None
    return DeltaRejected(
        request_id=request.request_id,
        base_version=request.base_version,
        current_version=current_version,
        reason=reason,
    )


def check_snapshot(
    request: SnapshotSaveRequested,
    *,
    current_version: int,
    snapshot_version: int,
    config: StoreConfig,
) -> SnapshotRejected | None:
    """The rejection a snapshot deserves against the store's state, or None to save it."""
    reason = None
    if request.version > current_version:
        reason = RejectionReason.VERSION_AHEAD
    elif request.version < snapshot_version:
        reason = RejectionReason.VERSION_BEHIND
    elif len(request.snapshot) > config.snapshot_bytes_max:
        reason = RejectionReason.TOO_LARGE
    if reason is None:
        return None
    return SnapshotRejected(
        request_id=request.request_id,
        version=request.version,
        current_version=current_version,
        reason=reason,
    )


StoreFactory = Callable[..., Store]
"""Opens a store from keyword options (`path=...`, `config=...`)."""

_REGISTRY: dict[str, StoreFactory] = {}


def register_store(name: str, factory: StoreFactory) -> None:
    """Make a store kind available to `open_store` under `name`."""
    if name in _REGISTRY:
        raise ConfigError(f"store {name!r} is already registered")
    _REGISTRY[name] = factory


def store_names() -> tuple[str, ...]:
    """The registered store kinds, sorted."""
    return tuple(sorted(_REGISTRY))


def open_store(name: str, **options: Any) -> Store:
    """Open a store of kind `name` (`memory`, `sqlite`, ...) with its options."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown store {name!r}; known: {store_names()}") from None
    return factory(**options)
