"""Stores: effect executors that keep the shard map (and with it the membership) durable.

Cores never call a store: they emit the requests defined here and receive the results. The
runtime runs each request on a `Store` in a worker thread; the simulator runs it inline on a
`MemoryStore`. Kinds plug in through `register_store` / `open_store` (`memory`, `sqlite`; an etcd
store for highly available managers implements the same interface).
"""

from __future__ import annotations

from forehand.stores._memory import MemoryStore
from forehand.stores._messages import (
    DeltaCommitRequested,
    DeltaCommitted,
    DeltaRejected,
    MapLoaded,
    MapLoadRequested,
    RejectionReason,
    SnapshotRejected,
    SnapshotSaved,
    SnapshotSaveRequested,
    StoreFailed,
    StoreRequest,
    StoreResult,
)
from forehand.stores._sqlite import SCHEMA_VERSION, SQLiteStore
from forehand.stores._store import (
    Store,
    StoreConfig,
    StoreFactory,
    open_store,
    register_store,
    store_names,
)

register_store("memory", MemoryStore)
register_store("sqlite", SQLiteStore)

__all__ = [
    "SCHEMA_VERSION",
    "DeltaCommitRequested",
    "DeltaCommitted",
    "DeltaRejected",
    "MapLoadRequested",
    "MapLoaded",
    "MemoryStore",
    "RejectionReason",
    "SQLiteStore",
    "SnapshotRejected",
    "SnapshotSaveRequested",
    "SnapshotSaved",
    "Store",
    "StoreConfig",
    "StoreFactory",
    "StoreFailed",
    "StoreRequest",
    "StoreResult",
    "open_store",
    "register_store",
    "store_names",
]
