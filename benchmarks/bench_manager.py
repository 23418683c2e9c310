"""ManagerCore throughput: sessions opened (committed, published, answered) beside bare map work.

The baseline is the least any manager must do per session: mint the id, apply the PartsAdded
delta to the shard map and encode it for the store and the servers. The candidate is the whole
core: OPEN_SESSION in, the stability check, the commit through a `MemoryStore`, MapPublished to
every server, token and credential sealing, and SESSION_OPENED out. A second row measures
heartbeats (liveness, load, part progress, the risk policy) against decoding nothing at all:
recording the same report in a dict.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import compare, print_comparisons

from forehand.core._manager_config import ManagerConfig
from forehand.core.manager import ManagerCore
from forehand.core.messages import HeartbeatReported, LoadReport, ServerAnnounced
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.placement import PlacementConfig, ShardMap, new_session_id
from forehand.stores import MemoryStore
from forehand.stores._messages import (
    DeltaCommitRequested,
    MapLoadRequested,
    SnapshotSaveRequested,
)
from forehand.wire import OpenSession

SERVERS = tuple(f"s{index}" for index in range(8))
PARTS = ("auth", "cart")
SESSIONS = 2_000
HEARTBEATS = 20_000
LOAD = LoadReport(
    cpu_utilization=0.2, queue_depth=1, latency_us_p99=900, error_ratio=0.0, requests_per_second=5
)


def _run_store(core: ManagerCore, store: MemoryStore) -> None:
    while requests := core.store_requests():
        for request in requests:
            assert isinstance(
                request, MapLoadRequested | DeltaCommitRequested | SnapshotSaveRequested
            )
            core.store_result(store.execute(request), now_us=0)


def _manager() -> tuple[ManagerCore, MemoryStore]:
    core = ManagerCore(
        config=ManagerConfig(),
        placement_config=PlacementConfig(replica_count=2),
        sealer=TokenSealer(KeyRing({1: bytes(32)}, current_key_id=1), rng=random.Random(1)),
        rng=random.Random(2),
        now_us=0,
    )
    store = MemoryStore()
    _run_store(core, store)
    for server in SERVERS:
        announce = ServerAnnounced(
            server_id=server, incarnation=1, address=f"{server}:1", zone=server, weight=1.0
        )
        core.receive_message(announce, source=server, now_us=0)
        _run_store(core, store)
    core.messages_to_send()
    while core.next_event() is not None:
        pass
    return core, store


def open_sessions(count: int) -> None:
    """The candidate: `count` OPEN_SESSIONs through a whole manager."""
    core, store = _manager()
    for request_id in range(count):
        core.receive_message(
            OpenSession(request_id=request_id, parts=PARTS), source="c1", now_us=request_id
        )
        _run_store(core, store)
        core.messages_to_send()
        while core.next_event() is not None:
            pass


def apply_deltas(count: int) -> None:
    """The baseline: mint ids, apply and encode the same deltas on a bare map."""
    rng = random.Random(2)
    shard_map = ShardMap.empty(config=PlacementConfig(replica_count=2))
    for server in SERVERS:
        shard_map = shard_map.apply(
            shard_map.join_server(server_id=server, address=f"{server}:1", zone=server)
        )
    for index in range(count):
        delta = shard_map.add_session_parts(new_session_id(now_ms=index, rng=rng), PARTS)
        ShardMap.encode_delta(delta)
        shard_map = shard_map.apply(delta)


def heartbeats(count: int) -> None:
    """The candidate: `count` heartbeats through a whole manager."""
    core, _ = _manager()
    for sequence in range(count):
        server = SERVERS[sequence % len(SERVERS)]
        message = HeartbeatReported(
            server_id=server,
            incarnation=1,
            sequence=sequence,
            map_version=1,
            load=LOAD,
            parts=(),
        )
        core.receive_message(message, source=server, now_us=sequence * 100)


def record_reports(count: int) -> None:
    """The baseline: keep the newest report per server in a dict."""
    latest: dict[str, LoadReport] = {}
    for sequence in range(count):
        latest[SERVERS[sequence % len(SERVERS)]] = LOAD


def main() -> None:
    quick = "--quick" in sys.argv
    sessions, beats, rounds = (200, 2_000, 1) if quick else (SESSIONS, HEARTBEATS, 3)
    rows = [
        compare(
            "sessions opened",
            candidate=open_sessions,
            baseline=apply_deltas,
            baseline_name="bare ShardMap apply + encode",
            count=sessions,
            rounds=rounds,
        ),
        compare(
            "heartbeats handled",
            candidate=heartbeats,
            baseline=record_reports,
            baseline_name="dict store of the report",
            count=beats,
            rounds=rounds,
        ),
    ]
    print_comparisons("ManagerCore", rows)


if __name__ == "__main__":
    main()
