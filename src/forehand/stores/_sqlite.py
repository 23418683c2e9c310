"""The embedded default store: one SQLite file in WAL mode.

Every write is one `BEGIN IMMEDIATE` transaction that reads the latest version, checks the request
against it and writes, so two writers can never both commit a delta on the same base, and a crash
at any point leaves either the whole transaction or none of it: the file reopens at the last
committed version, never a mix. `synchronous=FULL` makes a commit durable before the result is
returned; NORMAL would be faster but could lose the last commits on power loss, and a version that
servers have already seen must never be lost, or map versions would go backwards.

The schema is versioned with `PRAGMA user_version`; a file from a newer release is refused.
"""

from __future__ import annotations

import pathlib
import sqlite3
import threading

from forehand.errors import ConfigError
from forehand.stores._messages import (
    DeltaCommitRequested,
    DeltaCommitted,
    MapLoaded,
    MapLoadRequested,
    SnapshotSaved,
    SnapshotSaveRequested,
    StoreFailed,
    StoreRequest,
    StoreResult,
)
from forehand.stores._store import StoreConfig, check_commit, check_snapshot

__all__ = ["SCHEMA_VERSION", "SQLiteStore"]

SCHEMA_VERSION = 1
"""The schema this release writes and reads."""

_SCHEMA = (
    """CREATE TABLE snapshot (
        slot INTEGER PRIMARY KEY CHECK (slot = 0),
        version INTEGER NOT NULL CHECK (version >= 0),
        body BLOB NOT NULL
    )""",
    """CREATE TABLE delta (
        version INTEGER PRIMARY KEY,
        base_version INTEGER NOT NULL,
        body BLOB NOT NULL,
        CHECK (version = base_version + 1)
    )""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_CURRENT_VERSION = (
    "SELECT COALESCE((SELECT MAX(version) FROM delta), (SELECT version FROM snapshot), 0)"
)
_SNAPSHOT_VERSION = "SELECT COALESCE((SELECT version FROM snapshot), 0)"


class SQLiteStore:
    """The shard map's snapshots and deltas in one SQLite database file."""

    def __init__(self, *, path: str | pathlib.Path, config: StoreConfig | None = None) -> None:
        self._config = config or StoreConfig()
        self._lock = threading.Lock()
        # Autocommit mode: every transaction below is opened and closed explicitly.
        self._connection = sqlite3.connect(
            str(path),
            timeout=self._config.busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            self._prepare()
        except BaseException:
            self._connection.close()
            raise

    def _prepare(self) -> None:
        connection = self._connection
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise ConfigError(f"SQLite refused WAL mode (got {mode!r})")
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute(f"PRAGMA busy_timeout = {self._config.busy_timeout_ms}")
        connection.execute("BEGIN IMMEDIATE")
        try:
            schema = connection.execute("PRAGMA user_version").fetchone()[0]
            if schema == 0:
                for statement in _SCHEMA:
                    connection.execute(statement)
            elif schema != SCHEMA_VERSION:
                raise ConfigError(
                    f"store schema {schema} is not {SCHEMA_VERSION}; this release cannot open it"
                )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise

    def execute(self, request: StoreRequest) -> StoreResult:
        with self._lock:
            try:
                match request:
                    case MapLoadRequested():
                        return self._load(request)
                    case DeltaCommitRequested():
                        return self._commit(request)
                    case SnapshotSaveRequested():
                        return self._save(request)
            except sqlite3.Error as error:
                if self._connection.in_transaction:
                    self._connection.execute("ROLLBACK")
                return StoreFailed(request_id=request.request_id, reason=f"sqlite: {error}")

    def _scalar(self, query: str) -> int:
        value = self._connection.execute(query).fetchone()[0]
        assert isinstance(value, int)
        return value

    def _load(self, request: MapLoadRequested) -> StoreResult:
        connection = self._connection
        # One read transaction, so the snapshot and the deltas come from the same commit.
        connection.execute("BEGIN")
        try:
            row = connection.execute("SELECT version, body FROM snapshot").fetchone()
            snapshot_version, snapshot = (0, None) if row is None else (row[0], bytes(row[1]))
            rows = connection.execute(
                "SELECT version, body FROM delta WHERE version > ? ORDER BY version",
                (snapshot_version,),
            ).fetchall()
        finally:
            connection.execute("COMMIT")
        versions = [version for version, _ in rows]
        assert versions == list(range(snapshot_version + 1, snapshot_version + 1 + len(rows))), (
            "delta log has a gap"
        )
        return MapLoaded(
            request_id=request.request_id,
            version=snapshot_version + len(rows),
            snapshot_version=snapshot_version,
            snapshot=snapshot,
            deltas=tuple(bytes(body) for _, body in rows),
        )

    def _commit(self, request: DeltaCommitRequested) -> StoreResult:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        current = self._scalar(_CURRENT_VERSION)
        pending = self._scalar("SELECT COUNT(*) FROM delta")
        rejected = check_commit(
            request, current_version=current, deltas_since_snapshot=pending, config=self._config
        )
        if rejected is not None:
            connection.execute("ROLLBACK")
            return rejected
        connection.execute(
            "INSERT INTO delta (version, base_version, body) VALUES (?, ?, ?)",
            (current + 1, current, request.delta),
        )
        connection.execute("COMMIT")
        return DeltaCommitted(request_id=request.request_id, version=current + 1)

    def _save(self, request: SnapshotSaveRequested) -> StoreResult:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        current = self._scalar(_CURRENT_VERSION)
        rejected = check_snapshot(
            request,
            current_version=current,
            snapshot_version=self._scalar(_SNAPSHOT_VERSION),
            config=self._config,
        )
        if rejected is not None:
            connection.execute("ROLLBACK")
            return rejected
        connection.execute(
            "INSERT OR REPLACE INTO snapshot (slot, version, body) VALUES (0, ?, ?)",
            (request.version, request.snapshot),
        )
        connection.execute("DELETE FROM delta WHERE version <= ?", (request.version,))
        connection.execute("COMMIT")
        return SnapshotSaved(request_id=request.request_id, version=request.version)

    def close(self) -> None:
        with self._lock:
            self._connection.close()
