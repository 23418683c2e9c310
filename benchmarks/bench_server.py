"""ServerCore throughput: requests executed, answered and replicated, beside the bare handler.

The baseline is the least any server must do per request: run the handler and build the RESPONSE
frame. The candidate is the whole core: routing, dedup table, log, events, and (second row) log
shipping to two replica cores that re-execute every entry, with acknowledgements flowing back.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import compare, print_comparisons

from forehand.core._part import HandlerResult, PartSpec
from forehand.core._server_config import ServerConfig
from forehand.core.messages import MapPublished
from forehand.core.server import ServerCore
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.placement import PartKey, Placement, PlacementConfig, ShardMap, new_session_id
from forehand.wire import Request, Response, ResponseStatus

SESSION = new_session_id(now_ms=1_700_000_000_000, rng=random.Random(1))
REQUESTS = 20_000
SERVERS = ("s1", "s2", "s3")


def add(state: Any, op: str, payload: bytes) -> HandlerResult:
    """The benchmark's handler: a counter."""
    total = int(state) + 1
    return HandlerResult(state=total, status=ResponseStatus.OK, result=b"ok")


SPECS = {"counter": PartSpec(handler=add, initial_state=lambda: 0)}


def build(replicas: tuple[str, ...]) -> dict[str, ServerCore]:
    """Servers holding `counter` on s1 with `replicas`, maps applied."""
    cores = {
        server: ServerCore(
            config=ServerConfig(server_id=server, log_batch_entries_max=256),
            parts=SPECS,
            sealer=TokenSealer(KeyRing({1: bytes(32)}, current_key_id=1), rng=random.Random(2)),
            rng=random.Random(3),
        )
        for server in ("s1", *replicas)
    }
    shard_map = ShardMap.empty(config=PlacementConfig(replica_count=2))
    joins = [
        operation
        for server in SERVERS
        for operation in shard_map.join_server(server_id=server, address="", zone="z").operations
    ]
    shard_map = shard_map.apply(shard_map.delta(*joins))
    key = PartKey(session_id=SESSION, part="counter")
    delta = shard_map.delta(
        *shard_map.add_session_parts(SESSION, ["counter"]).operations,
        *shard_map.override_placement(key, Placement(primary="s1", replicas=replicas)).operations,
    )
    shard_map = shard_map.apply(delta)
    message = MapPublished(map_version=shard_map.version, base_version=0, body=shard_map.encode())
    for core in cores.values():
        core.receive_message(message, source="manager", now_us=0)
        core.messages_to_send()
        drain(core)
    return cores


def drain(core: ServerCore) -> None:
    """Pop every event."""
    while core.next_event() is not None:
        pass


def run_core(cores: dict[str, ServerCore], count: int, *, start: int) -> None:
    """`count` requests at s1, one every 20 us of simulated time; due timers fire and messages
    between the servers are delivered every 64 requests."""
    primary = cores["s1"]
    version = primary.map_version
    for index in range(count):
        now_us = (start + index) * 20
        request = Request(
            request_id=start + index,
            session_id=SESSION,
            part="counter",
            op="add",
            map_version=version,
            payload=b"",
        )
        primary.receive_message(request, source="c1", now_us=now_us)
        if index % 64 == 63 or index == count - 1:
            for core in cores.values():
                due = core.timer_us()
                if due is not None and due <= now_us:
                    core.handle_timer(now_us=now_us)
            deliver(cores, now_us=now_us)
    for core in cores.values():
        drain(core)


def deliver(cores: dict[str, ServerCore], *, now_us: int) -> None:
    """Route messages between the cores until they are quiet; client-bound ones are dropped."""
    moved = True
    while moved:
        moved = False
        for name, core in cores.items():
            for outbound in core.messages_to_send():
                target = cores.get(outbound.destination)
                if target is not None:
                    target.receive_message(outbound.message, source=name, now_us=now_us)
                    moved = True


def main() -> None:
    """Print requests per second of the core beside the bare handler."""
    counter = {"next": 1}

    def baseline(count: int) -> None:
        state: Any = 0
        for index in range(count):
            outcome = add(state, "add", b"")
            state = outcome.state
            Response(
                request_id=index,
                session_id=SESSION,
                status=ResponseStatus(outcome.status),
                map_version=1,
                payload=outcome.result,
            )

    def candidate(replicas: tuple[str, ...]) -> Callable[[int], None]:
        cores = build(replicas)

        def operation(count: int) -> None:
            run_core(cores, count, start=counter["next"])
            counter["next"] += count

        return operation

    rows = [
        compare(
            "execute + answer, no replica",
            candidate=candidate(()),
            baseline=baseline,
            baseline_name="handler + RESPONSE frame",
            count=REQUESTS,
        ),
        compare(
            "execute + answer + ship to 2 replicas",
            candidate=candidate(("s2", "s3")),
            baseline=baseline,
            baseline_name="handler + RESPONSE frame",
            count=REQUESTS,
        ),
    ]
    print_comparisons("ServerCore requests per second (one part, async durability)", rows)


if __name__ == "__main__":
    main()
