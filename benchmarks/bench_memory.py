"""Memory per session: on a server (the real ServerCore) and in the manager's map (ManagerCore).

Measured with `tracemalloc` (bytes the Python allocator hands out, so the interpreter's own
baseline is excluded), on the real cores, in one process:

- **Server.** Three `ServerCore`s (s1, s2, s3) run the cart example's three parts (`auth`,
  `cart` replicated, `feature/video`) with two replicas per part, so every server holds a copy
  of every part (primary or replica). N sessions are placed by a published map; then each session
  logs in, adds to its cart and seeks its video at its primaries (its client, one per 64
  sessions, first presents the sessions' credentials in a HELLO to each server, as the SDK does:
  a server serves a session only on a connection that proved it), and the cores exchange their
  replication messages until quiet (timers fired past the backup period). Reported per session
  per server: the server's copy of the shard map (what the placement package allocated), the
  three parts created when the map places them (state, log, dedup table, replication streams,
  still empty), and what serving one call per part added (the binding of the session to its
  client's connection, state, log and dedup entries, every call checked to be answered OK); the
  source lines holding the most memory go to the JSON output.
- **Manager.** A `ShardMap` of 100 servers and N sessions of 3 parts, decoded from its encoded
  form (what a manager loads from its store); its encoded size per session; then a `ManagerCore`
  that loads the same map from a `MemoryStore` (the map plus the manager's per-session index),
  traced at N = 100,000 (`--quick`: 20,000) and extrapolated to 1,000,000. The full run also
  measures 1,000,000 sessions directly: a fresh process loads the encoded map into a
  `ManagerCore`, and its resident set growth (allocator overhead included, no tracing) is checked
  against the 1 GiB target.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Metric, print_metrics, record, run_store
from examples.cart.app import app

from forehand.core._manager_config import ManagerConfig
from forehand.core._server_config import ServerConfig
from forehand.core.manager import ManagerCore
from forehand.core.messages import MapPublished
from forehand.core.server import ServerCore
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.placement import (
    PartKey,
    PlacementConfig,
    ServerEntry,
    ServerState,
    ShardMap,
    new_session_id,
)
from forehand.stores import MemoryStore
from forehand.wire import PROTOCOL_VERSION, Credential, Hello, Request, Response, ResponseStatus

PARTS = ("auth", "cart", "feature/video")
SERVER_IDS = ("s1", "s2", "s3")
MANAGER_SERVERS = 100
GIB = 1 << 30
MILLION = 1_000_000
WARM_UP_SESSIONS = 100
CHILD_TIMEOUT_S = 900.0
"""The fresh process loading 1,000,000 sessions is hung after this long."""
DELIVER_EVERY_REQUESTS = 64
SESSIONS_PER_CLIENT = 64
"""Sessions of one client connection (at most `credentials_max` in one HELLO)."""
CREDENTIAL_LIFETIME_MS = 3_600_000
TOP_LINES = 8
"""Source lines with the most memory, kept in the JSON output."""
CALLS = (
    ("auth", "login", "user"),
    ("cart", "add", {"sku": "apple", "quantity": 2}),
    ("feature/video", "seek", 12_345),
)
"""(part, op, payload) each session runs once."""


def _sessions(count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [new_session_id(now_ms=1_700_000_000_000 + index, rng=rng) for index in range(count)]


def _sealer() -> TokenSealer:
    return TokenSealer(KeyRing({1: bytes(32)}, current_key_id=1), rng=random.Random(2))


def _rss_bytes() -> int:
    """This process's resident set size (Linux /proc), 0 where there is none."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


# -- server ---------------------------------------------------------------------------------


def _deliver(cores: dict[str, ServerCore], *, now_us: int) -> None:
    """Route messages between the cores until quiet; client-bound ones are dropped (after
    checking that every answer is OK: a refused request would measure nothing); events are
    drained (the runtime does both)."""
    moved = True
    while moved:
        moved = False
        for name, core in cores.items():
            due = core.timer_us()
            if due is not None and due <= now_us:
                core.handle_timer(now_us=now_us)
            for outbound in core.messages_to_send():
                target = cores.get(outbound.destination)
                message = outbound.message
                if type(message) is Response and message.status is not ResponseStatus.OK:
                    raise RuntimeError(f"{name} refused a call: {message}")
                if target is not None:
                    target.receive_message(message, source=name, now_us=now_us)
                    moved = True
            while core.next_event() is not None:
                pass


def _hello(cores: dict[str, ServerCore], client: str, sessions: list[bytes], now_us: int) -> None:
    """`client` connects to every server with a HELLO presenting its sessions' credentials."""
    sealer = _sealer()
    credentials = tuple(
        Credential(
            session_id=session_id,
            credential=sealer.issue_credential(
                session_id=session_id,
                client_id=bytes(16),
                now_us=now_us,
                lifetime_ms=CREDENTIAL_LIFETIME_MS,
            ),
        )
        for session_id in sessions
    )
    hello = Hello(versions=(PROTOCOL_VERSION,), client_id=bytes(16), credentials=credentials)
    for core in cores.values():
        core.receive_message(hello, source=client, now_us=now_us)


def server_memory(sessions: int) -> dict[str, Any]:
    """Bytes per session per server: the map's share, then one copy of its parts' state."""
    session_ids = _sessions(sessions, seed=1)
    specs = app.part_specs()
    tracemalloc.start()
    cores = {
        server: ServerCore(
            config=ServerConfig(server_id=server, parts_max=4 * sessions * len(PARTS)),
            parts=specs,
            sealer=_sealer(),
            rng=random.Random(3),
        )
        for server in SERVER_IDS
    }
    empty = _traced()
    servers = [
        ServerEntry(server_id=s, address=f"{s}:1", zone=s, weight=1.0, state=ServerState.ACTIVE)
        for s in SERVER_IDS
    ]
    keys = [PartKey(session_id=s, part=part) for s in session_ids for part in PARTS]
    shard_map = ShardMap.build(
        config=PlacementConfig(replica_count=2), version=1, servers=servers, parts=keys
    )
    primaries = {key: shard_map.primary_of(key) for key in keys}
    message = MapPublished(map_version=1, base_version=0, body=shard_map.encode())
    del shard_map, keys
    for core in cores.values():
        core.receive_message(message, source="manager", now_us=0)
    _deliver(cores, now_us=0)
    del message
    with_map = _traced() - _bytes_of(primaries)
    map_copy = _placement_bytes(tracemalloc.take_snapshot())
    now_us = 1_000
    encoder = msgspec.msgpack.Encoder()
    payloads = [(part, op, encoder.encode(payload)) for part, op, payload in CALLS]
    request_id = 0
    for index, session_id in enumerate(session_ids):
        client = f"c{index // SESSIONS_PER_CLIENT}"
        if index % SESSIONS_PER_CLIENT == 0:
            _hello(cores, client, session_ids[index : index + SESSIONS_PER_CLIENT], now_us)
        for part, op, payload in payloads:
            request_id += 1
            primary = primaries[PartKey(session_id=session_id, part=part)]
            request = Request(
                request_id=request_id,
                session_id=session_id,
                part=part,
                op=op,
                map_version=1,
                payload=payload,
            )
            cores[primary].receive_message(request, source=client, now_us=now_us)
        if request_id % DELIVER_EVERY_REQUESTS < len(CALLS):
            now_us += 1_000
            _deliver(cores, now_us=now_us)
    # Past every backup period and replication retry: what stays is what a quiet server keeps.
    for step in range(1, 11):
        _deliver(cores, now_us=now_us + step * 1_000_000)
    served = _traced() - _bytes_of(primaries)
    per_server = len(SERVER_IDS) * sessions
    top = [
        {"line": str(stat.traceback), "bytes_per_session_per_server": stat.size / per_server}
        for stat in tracemalloc.take_snapshot().statistics("lineno")[:TOP_LINES]
    ]
    tracemalloc.stop()
    return {
        "map_bytes_per_session_per_server": map_copy / per_server,
        "parts_created_bytes_per_session_per_server": (with_map - empty - map_copy) / per_server,
        "parts_served_bytes_per_session_per_server": (served - with_map) / per_server,
        "total_bytes_per_session_per_server": (served - empty) / per_server,
        "top_lines": top,
    }


def _placement_bytes(snapshot: tracemalloc.Snapshot) -> int:
    """Bytes allocated by the placement package: the servers' copies of the shard map."""
    return sum(
        stat.size
        for stat in snapshot.statistics("filename")
        if f"forehand{os.sep}placement{os.sep}" in stat.traceback[0].filename
    )


def _bytes_of(primaries: dict[PartKey, str]) -> int:
    """What the benchmark's own lookup table holds (subtracted from the cores' measure)."""
    # The dict and its keys (PartKey structs and their session id bytes); server ids are shared.
    size = sys.getsizeof(primaries)
    for key in primaries:
        size += sys.getsizeof(key)
    return size


# -- manager --------------------------------------------------------------------------------


def _manager_map(sessions: int) -> bytes:
    """The encoded map of MANAGER_SERVERS servers and `sessions` sessions of 3 parts."""
    servers = [
        ServerEntry(
            server_id=f"s{index}",
            address=f"10.0.{index // 250}.{index % 250}:7000",
            zone=f"z{index % 10}",
            weight=1.0,
            state=ServerState.ACTIVE,
        )
        for index in range(MANAGER_SERVERS)
    ]
    keys = (
        PartKey(session_id=session_id, part=part)
        for session_id in _sessions(sessions, seed=4)
        for part in PARTS
    )
    shard_map = ShardMap.build(
        config=PlacementConfig(replica_count=2), version=1, servers=servers, parts=keys
    )
    return shard_map.encode()


def _loaded_manager(encoded: bytes) -> tuple[ManagerCore, float]:
    """A ManagerCore that loaded `encoded` from a MemoryStore; the seconds the load took."""
    store = MemoryStore()
    # The store holds the encoded map as its snapshot, as after a manager's snapshot save.
    store._snapshot = encoded
    store._snapshot_version = 1
    started_s = time.perf_counter()
    core = ManagerCore(
        config=ManagerConfig(),
        placement_config=PlacementConfig(replica_count=2),
        sealer=_sealer(),
        rng=random.Random(2),
        now_us=0,
    )
    run_store(core, store)
    load_s = time.perf_counter() - started_s
    assert core.shard_map is not None and len(core.shard_map) > 0
    core.messages_to_send()
    while core.next_event() is not None:
        pass
    return core, load_s


def manager_memory(
    sessions: int, *, traced: bool, measured: tuple[str, ...] = ("map", "manager")
) -> dict[str, Any]:
    """The manager's memory for `sessions` sessions, each part measured in a fresh process (so
    nothing a previous measurement allocated or cached is shared): the decoded ShardMap and a
    ManagerCore loading it, traced (tracemalloc) or not (resident set growth only)."""
    with tempfile.TemporaryDirectory(prefix="forehand-memory-") as directory:
        path = Path(directory) / "map.bin"
        encoded = _manager_map(sessions)
        path.write_bytes(encoded)
        del encoded
        gc.collect()
        result: dict[str, Any] = {
            "sessions": sessions,
            "encoded_bytes_per_session": path.stat().st_size / sessions,
        }
        for what in measured:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", what, str(path)]
            if traced:
                command.append("--traced")
            completed = subprocess.run(
                command, capture_output=True, text=True, check=True, timeout=CHILD_TIMEOUT_S
            )
            result[what] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _child(what: str, path: Path, *, traced: bool) -> None:
    """In a fresh process: decode the map at `path` (`map`) or load it into a ManagerCore
    (`manager`); print the traced bytes and the resident set growth, as JSON."""
    encoded = path.read_bytes()
    # Warm up on a small map first: the imports, codecs and caches a first load sets up are the
    # process's, not the sessions'.
    warm_map = ShardMap.decode(_manager_map(WARM_UP_SESSIONS))
    warm_core, _ = _loaded_manager(_manager_map(WARM_UP_SESSIONS))
    del warm_map, warm_core
    gc.collect()
    rss_before = _rss_bytes()
    if traced:
        tracemalloc.start()
    started_s = time.perf_counter()
    held: object
    if what == "map":
        shard_map = ShardMap.decode(encoded)
        load_s = time.perf_counter() - started_s
        sessions = len(shard_map) // len(PARTS)
        held = shard_map
    else:
        core, load_s = _loaded_manager(encoded)
        assert core.shard_map is not None
        sessions = len(core.shard_map) // len(PARTS)
        held = core
    gc.collect()
    traced_bytes = peak_bytes = None
    if traced:
        traced_bytes, peak_bytes = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss_bytes = _rss_bytes() - rss_before
    assert held is not None
    print(
        json.dumps(
            {
                "sessions": sessions,
                "traced_bytes": traced_bytes,
                "traced_peak_bytes": peak_bytes,
                "rss_growth_bytes": rss_bytes,
                "load_s": load_s,
            }
        )
    )


def _server_rows(server: dict[str, Any]) -> list[Metric]:
    return [
        Metric(
            name="server: its shard map copy",
            value=server["map_bytes_per_session_per_server"],
            unit="B/session",
        ),
        Metric(
            name="server: 3 parts placed (empty state, log)",
            value=server["parts_created_bytes_per_session_per_server"],
            unit="B/session",
        ),
        Metric(
            name="server: + one call per part served",
            value=server["parts_served_bytes_per_session_per_server"],
            unit="B/session",
        ),
        Metric(
            name="server: total",
            value=server["total_bytes_per_session_per_server"],
            unit="B/session",
        ),
    ]


def _manager_rows(traced: dict[str, Any], direct: dict[str, Any] | None) -> list[Metric]:
    sessions = traced["sessions"]
    manager_bytes = traced["manager"]["traced_bytes"]
    million = manager_bytes / sessions * MILLION
    rows = [
        Metric(
            name="map encoded (store, MAP_PUBLISHED)",
            value=traced["encoded_bytes_per_session"],
            unit="B/session",
        ),
        Metric(
            name="ShardMap decoded (traced)",
            value=traced["map"]["traced_bytes"] / sessions,
            unit="B/session",
        ),
        Metric(
            name="ManagerCore, map + index (traced)",
            value=manager_bytes / sessions,
            unit="B/session",
        ),
        Metric(
            name="ManagerCore, peak while loading (traced)",
            value=traced["manager"]["traced_peak_bytes"] / sessions,
            unit="B/session",
        ),
        Metric(
            name="ManagerCore, resident set growth",
            value=traced["manager"]["rss_growth_bytes"] / sessions,
            unit="B/session",
        ),
        Metric(
            name="ManagerCore at 1M, extrapolated (traced)",
            value=million / (1 << 20),
            unit="MiB",
            target="< 1024 MiB",
            met=million < GIB,
        ),
    ]
    if direct is not None:
        growth = direct["manager"]["rss_growth_bytes"]
        rows += [
            Metric(
                name="ManagerCore at 1M, measured (RSS growth)",
                value=growth / (1 << 20),
                unit="MiB",
                target="< 1024 MiB",
                met=growth < GIB,
            ),
            Metric(
                name="ManagerCore at 1M, load from its store",
                value=direct["manager"]["load_s"],
                unit="s",
            ),
        ]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, extrapolated")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.child:
        what, path = arguments.child
        _child(what, Path(path), traced=arguments.traced)
        return
    server_sessions, manager_sessions = (2_000, 20_000) if arguments.quick else (10_000, 100_000)
    server = server_memory(server_sessions)
    record("server", {"sessions": server_sessions, **server})
    traced = manager_memory(manager_sessions, traced=True)
    record("manager_traced", traced)
    direct = None
    if not arguments.quick:
        direct = manager_memory(MILLION, traced=False, measured=("manager",))
    if direct is not None:
        record("manager_direct", direct)
    print_metrics(
        f"Memory per session (server: {server_sessions:,} sessions x 3 parts on 3 servers; "
        f"manager: {manager_sessions:,} sessions x 3 parts on {MANAGER_SERVERS} servers"
        + ("" if direct is None else ", and 1,000,000 measured")
        + ")",
        _server_rows(server) + _manager_rows(traced, direct),
    )


if __name__ == "__main__":
    main()
