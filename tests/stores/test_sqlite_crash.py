"""A writer killed by SIGKILL at random points leaves SQLite at its last committed version."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from forehand.placement import Delta, Placement, PlacementConfig, ShardMap, new_session_id
from forehand.stores import (
    DeltaCommitRequested,
    DeltaCommitted,
    MapLoaded,
    MapLoadRequested,
    SnapshotSaved,
    SnapshotSaveRequested,
    SQLiteStore,
)

_CONFIG = PlacementConfig(ring_points_per_weight=16, load_epsilon=0.1)
_SNAPSHOT_EVERY = 25
_KILLS = 14
_WRITER = (
    "import sys; sys.path.insert(0, {directory!r}); import test_sqlite_crash as t; "
    "t.write_forever({path!r})"
)


def next_delta(shard_map: ShardMap) -> Delta:
    """The delta after `shard_map`: a pure function of its version, so the chain is reproducible."""
    rng = random.Random(shard_map.version)
    version = shard_map.version
    if version < 4:
        return shard_map.join_server(server_id=f"s{version}", address="h:1", zone=f"z{version % 2}")
    keys = sorted(shard_map.part_keys())
    if version % 5 == 0 and keys:
        return shard_map.remove_session_parts(keys[0].session_id, [keys[0].part])
    if version % 7 == 0 and keys:
        return shard_map.override_placement(rng.choice(keys), Placement(primary="s1"))
    session_id = new_session_id(now_ms=version, rng=rng)
    return shard_map.add_session_parts(session_id, ["auth", "cart", "feature/video"])


def replay(loaded: MapLoaded) -> ShardMap:
    """The map a load result describes."""
    shard_map = ShardMap.empty(config=_CONFIG)
    if loaded.snapshot is not None:
        shard_map = ShardMap.decode(loaded.snapshot)
    for body in loaded.deltas:
        shard_map = shard_map.apply(ShardMap.decode_delta(body))
    return shard_map


def write_forever(path: str) -> None:
    """The victim: commit the chain from wherever the store is, printing each durable version."""
    store = SQLiteStore(path=path)
    loaded = store.execute(MapLoadRequested(request_id=0))
    assert isinstance(loaded, MapLoaded)
    shard_map = replay(loaded)
    print("ready", flush=True)
    while True:
        delta = next_delta(shard_map)
        result = store.execute(
            DeltaCommitRequested(
                request_id=delta.version,
                base_version=shard_map.version,
                delta=ShardMap.encode_delta(delta),
            )
        )
        assert isinstance(result, DeltaCommitted), result
        shard_map = shard_map.apply(delta)
        print(shard_map.version, flush=True)
        if shard_map.version % _SNAPSHOT_EVERY == 0:
            saved = store.execute(
                SnapshotSaveRequested(
                    request_id=0, version=shard_map.version, snapshot=shard_map.encode()
                )
            )
            assert isinstance(saved, SnapshotSaved), saved


def _expected_maps(count: int) -> list[bytes]:
    shard_map = ShardMap.empty(config=_CONFIG)
    encoded = [shard_map.encode()]
    for _ in range(count):
        shard_map = shard_map.apply(next_delta(shard_map))
        encoded.append(shard_map.encode())
    return encoded


def _run_and_kill(path: pathlib.Path, delay_s: float) -> int:
    command = _WRITER.format(directory=str(pathlib.Path(__file__).parent), path=str(path))
    process = subprocess.Popen(
        [sys.executable, "-c", command], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    time.sleep(delay_s)
    os.kill(process.pid, signal.SIGKILL)
    acknowledged = [line.strip() for line in process.stdout]
    process.wait()
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    return int(acknowledged[-1]) if acknowledged else 0


@pytest.mark.slow
def test_killed_writer_leaves_a_consistent_version(tmp_path: pathlib.Path) -> None:
    """After each SIGKILL the file passes integrity checks and holds exactly a committed version."""
    path = tmp_path / "map.db"
    rng = random.Random(2024)
    acknowledged = 0
    expected: list[bytes] = []
    for _ in range(_KILLS):
        acknowledged = max(acknowledged, _run_and_kill(path, rng.uniform(0.0, 0.25)))
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        raw.close()
        store = SQLiteStore(path=path)
        loaded = store.execute(MapLoadRequested(request_id=1))
        store.close()
        assert isinstance(loaded, MapLoaded)
        # Every version the writer was told is durable is there; nothing half-written is.
        assert loaded.version >= acknowledged
        if len(expected) <= loaded.version:
            expected = _expected_maps(loaded.version + 200)
        assert replay(loaded).encode() == expected[loaded.version]
    assert acknowledged > _SNAPSHOT_EVERY
