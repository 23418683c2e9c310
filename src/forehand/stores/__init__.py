"""Stores: effect executors that keep the shard map (and with it the membership) durable.

Cores never call a store: they emit the requests defined here and receive the results. The
runtime runs each request on a `Store` in a worker thread; the simulator runs it inline on a
`MemoryStore`. Kinds plug in through `register_store` / `open_store` (`memory`, `sqlite`, and
`etcd` for highly available managers: `EtcdStore`, loaded on first use so that importing the
package does not import the HTTP client).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from forehand.stores._etcd import EtcdConfig, EtcdStore, parse_etcd_url

_ETCD_NAMES = ("EtcdConfig", "EtcdStore", "parse_etcd_url")


def __getattr__(name: str) -> Any:
    if name in _ETCD_NAMES:
        from forehand.stores import _etcd

        return getattr(_etcd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _open_etcd(**options: Any) -> Store:
    from forehand.stores._etcd import EtcdStore

    return EtcdStore(**options)


register_store("memory", MemoryStore)
register_store("sqlite", SQLiteStore)
register_store("etcd", _open_etcd)

__all__ = [
    "SCHEMA_VERSION",
    "DeltaCommitRequested",
    "DeltaCommitted",
    "DeltaRejected",
    "EtcdConfig",
    "EtcdStore",
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
    "parse_etcd_url",
    "register_store",
    "store_names",
]
