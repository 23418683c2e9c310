"""Every store kind keeps versions the same way: stale bases and bad snapshots are refused."""

from __future__ import annotations

import pathlib
import random
import sqlite3
from collections.abc import Iterator

import pytest

from forehand.errors import ConfigError
from forehand.placement import PlacementConfig, ShardMap, new_session_id
from forehand.stores import (
    DeltaCommitRequested,
    DeltaCommitted,
    DeltaRejected,
    MapLoaded,
    MapLoadRequested,
    MemoryStore,
    RejectionReason,
    SnapshotRejected,
    SnapshotSaved,
    SnapshotSaveRequested,
    SQLiteStore,
    Store,
    StoreConfig,
    StoreFailed,
    open_store,
    store_names,
)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> Iterator[Store]:
    config = StoreConfig(deltas_since_snapshot_max=5, delta_bytes_max=64)
    opened: Store = (
        MemoryStore(config=config)
        if request.param == "memory"
        else SQLiteStore(path=tmp_path / "map.db", config=config)
    )
    yield opened
    opened.close()


def _commit(store: Store, base_version: int, body: bytes = b"d") -> object:
    return store.execute(
        DeltaCommitRequested(request_id=base_version, base_version=base_version, delta=body)
    )


def _load(store: Store) -> MapLoaded:
    loaded = store.execute(MapLoadRequested(request_id=99))
    assert isinstance(loaded, MapLoaded)
    return loaded


def test_empty_store_loads_version_zero(store: Store) -> None:
    """A new store has nothing: version 0, no snapshot, no deltas."""
    assert _load(store) == MapLoaded(
        request_id=99, version=0, snapshot_version=0, snapshot=None, deltas=()
    )


def test_commits_chain_versions_and_refuse_stale_bases(store: Store) -> None:
    """Each commit must name the latest version as its base; others change nothing."""
    assert _commit(store, 0, b"one") == DeltaCommitted(request_id=0, version=1)
    assert _commit(store, 1, b"two") == DeltaCommitted(request_id=1, version=2)
    stale = _commit(store, 1, b"late")
    assert stale == DeltaRejected(
        request_id=1, base_version=1, current_version=2, reason=RejectionReason.STALE_BASE
    )
    ahead = _commit(store, 7)
    assert isinstance(ahead, DeltaRejected) and ahead.reason is RejectionReason.STALE_BASE
    assert _load(store).deltas == (b"one", b"two")


def test_snapshot_replaces_the_deltas_it_covers(store: Store) -> None:
    """A snapshot at version v drops deltas up to v; loading returns it and the rest."""
    for base in range(4):
        _commit(store, base, bytes([base]))
    saved = store.execute(SnapshotSaveRequested(request_id=5, version=3, snapshot=b"map@3"))
    assert saved == SnapshotSaved(request_id=5, version=3)
    loaded = _load(store)
    assert (loaded.version, loaded.snapshot_version, loaded.snapshot) == (4, 3, b"map@3")
    assert loaded.deltas == (bytes([3]),)


def test_bad_snapshots_are_refused(store: Store) -> None:
    """A snapshot ahead of the log or behind the stored one changes nothing."""
    _commit(store, 0)
    _commit(store, 1)
    ahead = store.execute(SnapshotSaveRequested(request_id=1, version=3, snapshot=b"x"))
    assert isinstance(ahead, SnapshotRejected) and ahead.reason is RejectionReason.VERSION_AHEAD
    store.execute(SnapshotSaveRequested(request_id=2, version=2, snapshot=b"map@2"))
    behind = store.execute(SnapshotSaveRequested(request_id=3, version=1, snapshot=b"old"))
    assert isinstance(behind, SnapshotRejected)
    assert behind.reason is RejectionReason.VERSION_BEHIND
    assert _load(store).snapshot == b"map@2"


def test_bounds_refuse_oversize_deltas_and_a_full_log(store: Store) -> None:
    """Deltas above delta_bytes_max, or beyond the log bound without a snapshot, are refused."""
    large = _commit(store, 0, bytes(65))
    assert isinstance(large, DeltaRejected) and large.reason is RejectionReason.TOO_LARGE
    for base in range(5):
        assert isinstance(_commit(store, base), DeltaCommitted)
    full = _commit(store, 5)
    assert isinstance(full, DeltaRejected) and full.reason is RejectionReason.SNAPSHOT_REQUIRED
    store.execute(SnapshotSaveRequested(request_id=0, version=5, snapshot=b"map@5"))
    assert isinstance(_commit(store, 5), DeltaCommitted)


def test_a_real_map_survives_the_round_trip(store: Store) -> None:
    """Snapshot plus replayed deltas give back the map that was committed."""
    shard_map = ShardMap.empty(config=PlacementConfig(ring_points_per_weight=16))
    store.execute(SnapshotSaveRequested(request_id=0, version=0, snapshot=shard_map.encode()))
    rng = random.Random(3)
    deltas = [shard_map.join_server(server_id="a", address="h:1", zone="z")]
    for delta_index in range(4):
        current = shard_map.apply(deltas[-1])
        result = store.execute(
            DeltaCommitRequested(
                request_id=delta_index,
                base_version=shard_map.version,
                delta=ShardMap.encode_delta(deltas[-1]),
            )
        )
        assert isinstance(result, DeltaCommitted)
        shard_map = current
        session_id = new_session_id(now_ms=delta_index, rng=rng)
        deltas.append(shard_map.add_session_parts(session_id, ["auth"]))
    loaded = _load(store)
    assert loaded.snapshot is not None
    rebuilt = ShardMap.decode(loaded.snapshot)
    for body in loaded.deltas:
        rebuilt = rebuilt.apply(ShardMap.decode_delta(body))
    assert rebuilt.encode() == shard_map.encode()


def test_sqlite_reopens_with_its_data_and_refuses_newer_schemas(tmp_path: pathlib.Path) -> None:
    """The file keeps every commit across close and reopen; a newer schema is refused."""
    path = tmp_path / "map.db"
    first = SQLiteStore(path=path)
    _commit(first, 0, b"kept")
    first.close()
    second = SQLiteStore(path=path)
    assert _load(second).deltas == (b"kept",)
    second.close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(ConfigError):
        SQLiteStore(path=path)


def test_two_sqlite_writers_cannot_commit_on_the_same_base(tmp_path: pathlib.Path) -> None:
    """The base check runs inside the write transaction, so the second writer sees it stale."""
    path = tmp_path / "map.db"
    one, other = SQLiteStore(path=path), SQLiteStore(path=path)
    assert isinstance(_commit(one, 0), DeltaCommitted)
    late = _commit(other, 0)
    assert isinstance(late, DeltaRejected) and late.current_version == 1
    one.close()
    other.close()


def test_sqlite_reports_storage_errors_as_results(tmp_path: pathlib.Path) -> None:
    """A broken database answers StoreFailed instead of raising into the caller."""
    path = tmp_path / "map.db"
    store = SQLiteStore(path=path)
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TABLE delta")
    raw.close()
    failed = _commit(store, 0)
    assert isinstance(failed, StoreFailed) and "delta" in failed.reason
    store.close()


def test_registry_opens_each_kind(tmp_path: pathlib.Path) -> None:
    """`open_store` opens the registered kinds and refuses unknown ones."""
    assert {"memory", "sqlite"} <= set(store_names())
    memory = open_store("memory")
    sqlite_store = open_store("sqlite", path=tmp_path / "x.db")
    assert _load(memory).version == _load(sqlite_store).version == 0
    memory.close()
    sqlite_store.close()
    with pytest.raises(ConfigError):
        open_store("floppy")
