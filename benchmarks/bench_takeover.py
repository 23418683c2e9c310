"""The takeover after a crash: the manager promoting the dead server's parts, and one survivor
adopting the failover's map version.

The manager's row times the whole `ManagerCore` from the silence that makes the server dead to
the promotion committed and published: the failover planned and the survivors fenced
(`FailoverPrepared` out), their `PositionsReported` in, the promotion built and stabilised, the
commit through a `MemoryStore`, `MapPublished` out. Its baseline is the least any manager must do
to fail those parts over: look up each dead primary's placement, override it to its surviving
replica, apply the delta with the death, diff the two versions and encode the delta.

On a small fleet a death moves nearly every part: with three servers and two replicas every
server holds every part, and the failover's version promotes the dead server's primaries to
their replicas and drops it from every replica set. The candidate is the whole `ServerCore`: the
parts fenced first (`FailoverPrepared`, outside the timed part, as it arrives before the
promotion), then `MapPublished` in: the delta decoded and applied, the diff of the two versions,
every changed part reconciled (promoted, its replica set changed, shipping restarted) and the
messages out. The baseline is the least any server must do with that version: decode the same
delta, apply it to the map and diff the two versions. Rates are parts held per second: a server
that adopts at the rate R takes parts / R seconds, during which its heartbeats wait.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Comparison, best_rate, print_comparisons, run_store

from forehand.core._manager_config import ManagerConfig
from forehand.core._part import HandlerResult, PartSpec
from forehand.core._server_config import ServerConfig
from forehand.core.manager import ManagerCore
from forehand.core.messages import (
    FailoverPrepared,
    HeartbeatReported,
    LoadReport,
    MapPublished,
    PartProgress,
    PartRef,
    PartRole,
    PositionsReported,
)
from forehand.core.server import ServerCore
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.placement import (
    PartsAdded,
    Placement,
    PlacementConfig,
    PlacementOverridden,
    ServerJoined,
    ServerMarkedDead,
    ShardMap,
    new_session_id,
)
from forehand.stores import MemoryStore
from forehand.wire import ResponseStatus

SERVERS = ("s1", "s2", "s3")
PARTS = ("auth", "cart", "feature/video")
SESSIONS = 10_000
DEAD = "s2"
SURVIVOR = "s1"
FENCE_PARTS_MAX = 4_096
IDLE = LoadReport(
    cpu_utilization=0.1, queue_depth=0, latency_us_p99=1_000, error_ratio=0.0, requests_per_second=1
)


def add(state: Any, op: str, payload: bytes) -> HandlerResult:
    """The benchmark's handler: a counter."""
    return HandlerResult(state=int(state) + 1, status=ResponseStatus.OK, result=b"ok")


SPECS = {part: PartSpec(handler=add, initial_state=lambda: 0) for part in PARTS}


class Failover:
    """The map before the death, the failover's delta and what the survivor is sent."""

    def __init__(self, sessions: int) -> None:
        rng = random.Random(1)
        shard_map = ShardMap.empty(config=PlacementConfig(replica_count=2))
        joins = [
            ServerJoined(server_id=server, address=f"{server}.test:4433", zone="z")
            for server in SERVERS
        ]
        shard_map = shard_map.apply(shard_map.delta(*joins))
        adds = [
            PartsAdded(session_id=new_session_id(now_ms=index, rng=rng), parts=PARTS)
            for index in range(sessions)
        ]
        self.before = shard_map.apply(shard_map.delta(*adds))
        promotions: list[PlacementOverridden] = []
        self.fenced: list[PartRef] = []
        for key in sorted(self.before.part_keys()):
            placement = self.before.lookup(key)
            if placement.primary != DEAD:
                continue
            survivors = [server for server in placement.replicas if server != DEAD]
            promoted = Placement(primary=survivors[0], replicas=tuple(survivors[1:]))
            promotions.append(
                PlacementOverridden(session_id=key.session_id, part=key.part, placement=promoted)
            )
            if SURVIVOR in placement.replicas:
                self.fenced.append(PartRef(session_id=key.session_id, part=key.part))
        self.promoted = len(promotions)
        delta = self.before.delta(ServerMarkedDead(server_id=DEAD), *promotions)
        self.body = ShardMap.encode_delta(delta)
        self.after = self.before.apply(delta)
        self.whole = MapPublished(
            map_version=self.before.version, base_version=0, body=self.before.encode()
        )
        self.published = MapPublished(
            map_version=self.after.version, base_version=self.before.version, body=self.body
        )
        self.parts = len(self.before)

    def survivor(self) -> ServerCore:
        """A fresh survivor holding every part of the map before the death, fenced for the
        failover's version."""
        core = ServerCore(
            config=ServerConfig(server_id=SURVIVOR),
            parts=SPECS,
            sealer=TokenSealer(KeyRing({1: bytes(32)}, current_key_id=1), rng=random.Random(2)),
            rng=random.Random(3),
        )
        core.receive_message(self.whole, source="manager", now_us=1_000)
        for start in range(0, len(self.fenced), FENCE_PARTS_MAX):
            fence = FailoverPrepared(
                map_version=self.after.version,
                parts=tuple(self.fenced[start : start + FENCE_PARTS_MAX]),
            )
            core.receive_message(fence, source="manager", now_us=2_000)
        _drain(core)
        return core

    def adopt(self, core: ServerCore) -> int:
        """The candidate: the survivor adopts the failover's version."""
        core.receive_message(self.published, source="manager", now_us=3_000)
        _drain(core)
        assert core.map_version == self.after.version
        return self.parts

    def bare(self) -> int:
        """The baseline: decode the delta, apply it, diff the two versions."""
        after = self.before.apply(ShardMap.decode_delta(self.body))
        self.before.diff(after)
        return self.parts


class ManagerFailover:
    """A manager that loaded the map before the death, its survivors heartbeating."""

    def __init__(self, failover: Failover) -> None:
        self.failover = failover
        self.snapshot = failover.before.encode()
        self.config = ManagerConfig()
        self.sequences: dict[str, int] = {}

    def _heartbeat(self, core: ManagerCore, server: str, now_us: int) -> None:
        self.sequences[server] = self.sequences.get(server, 0) + 1
        message = HeartbeatReported(
            server_id=server,
            incarnation=1,
            sequence=self.sequences[server],
            map_version=core.map_version,
            load=IDLE,
            parts=(),
        )
        core.receive_message(message, source=server, now_us=now_us)

    def manager(self) -> tuple[ManagerCore, MemoryStore]:
        """A fresh manager on a store holding the map before the death, every server heard
        from; the returned core's next timer is the death of the silent one."""
        store = MemoryStore(snapshot=self.snapshot, snapshot_version=self.failover.before.version)
        core = ManagerCore(
            config=self.config,
            placement_config=PlacementConfig(replica_count=2),
            sealer=TokenSealer(KeyRing({1: bytes(32)}, current_key_id=1), rng=random.Random(1)),
            rng=random.Random(2),
            now_us=0,
        )
        run_store(core, store, now_us=0)
        interval_us = self.config.heartbeat_interval_ms * 1000
        now_us = 0
        for server in SERVERS:
            self._heartbeat(core, server, now_us)
        # The dead server falls silent; the survivors go on until just before its death.
        while True:
            due_us = core.timer_us()
            assert due_us is not None
            next_beat_us = now_us + interval_us
            if due_us >= next_beat_us:
                now_us = next_beat_us
                for server in SERVERS:
                    if server != DEAD:
                        self._heartbeat(core, server, now_us)
                continue
            if _death_due(core, due_us):
                break
            now_us = due_us
            core.handle_timer(now_us=now_us)
        _drain(core)
        return core, store

    def promote(self, core: ManagerCore, store: MemoryStore) -> int:
        """The candidate: from the death to the promotion committed and published."""
        now_us = core.timer_us()
        assert now_us is not None
        core.handle_timer(now_us=now_us)
        prepared: dict[str, list[FailoverPrepared]] = {}
        for outbound in core.messages_to_send():
            if isinstance(outbound.message, FailoverPrepared):
                prepared.setdefault(outbound.destination, []).append(outbound.message)
        assert set(prepared) == {server for server in SERVERS if server != DEAD}, prepared
        for server, fences in sorted(prepared.items()):
            for fence in fences:
                progress = tuple(
                    PartProgress(ref=ref, role=PartRole.REPLICA, applied_seq=0, epoch=1)
                    for ref in fence.parts
                )
                reported = PositionsReported(
                    server_id=server, map_version=fence.map_version, parts=progress
                )
                core.receive_message(reported, source=server, now_us=now_us)
        run_store(core, store, now_us=now_us)
        published = [
            outbound
            for outbound in core.messages_to_send()
            if isinstance(outbound.message, MapPublished)
        ]
        assert core.map_version == self.failover.after.version, core.map_version
        assert published
        promoted = core.shard_map
        assert promoted is not None and not promoted.parts_for(DEAD).primary
        while core.next_event() is not None:
            pass
        return self.failover.parts

    def bare(self) -> int:
        """The baseline: the dead primaries' overrides to their surviving replica, the death, the
        delta applied, diffed and encoded."""
        before = self.failover.before
        operations: list[Any] = [ServerMarkedDead(server_id=DEAD)]
        for key in before.parts_for(DEAD).primary:
            placement = before.lookup(key)
            survivors = [server for server in placement.replicas if server != DEAD]
            promoted = Placement(primary=survivors[0], replicas=tuple(survivors[1:]))
            operations.append(
                PlacementOverridden(session_id=key.session_id, part=key.part, placement=promoted)
            )
        delta = before.delta(*operations)
        ShardMap.encode_delta(delta)
        before.diff(before.apply(delta))
        return self.failover.parts


def _death_due(core: ManagerCore, due_us: int) -> bool:
    """Whether the manager's timer at `due_us` is the silent server's death."""
    member = core.membership.get(DEAD)
    assert member is not None
    return due_us >= member.dead_at_us()


def _drain(core: ServerCore | ManagerCore) -> None:
    core.messages_to_send()
    while core.next_event() is not None:
        pass


def main() -> None:
    """Print the parts per second a survivor adopts the failover's version at, beside the bare
    map work, and the seconds that takes for the map's parts."""
    quick = "--quick" in sys.argv
    sessions, rounds = (1_000, 1) if quick else (SESSIONS, 3)
    if "--sessions" in sys.argv:
        sessions = int(sys.argv[sys.argv.index("--sessions") + 1])
    failover = Failover(sessions)
    manager = ManagerFailover(failover)
    candidate = baseline = promoting = promoting_bare = 0.0
    for _ in range(rounds):
        promoting = max(promoting, best_rate(manager.manager, manager.promote, rounds=1))
        promoting_bare = max(promoting_bare, best_rate(tuple, manager.bare, rounds=1))
        candidate = max(
            candidate, best_rate(lambda: (failover.survivor(),), failover.adopt, rounds=1)
        )
        baseline = max(baseline, best_rate(tuple, failover.bare, rounds=1))
    rows = [
        Comparison(
            name=f"manager: failover ({failover.promoted:,} of {failover.parts:,} promoted)",
            candidate_per_second=promoting,
            baseline_per_second=promoting_bare,
            baseline_name="lookups + overrides + apply + diff + encode",
        ),
        Comparison(
            name=f"survivor: adoption ({failover.parts:,} held, {failover.promoted:,} promoted)",
            candidate_per_second=candidate,
            baseline_per_second=baseline,
            baseline_name="delta decode + apply + diff",
        ),
    ]
    print_comparisons("Takeover after a crash (3 servers, one dead)", rows)
    print(
        f"the manager's failover, death to promotion published: {failover.parts / promoting:.2f} s "
        f"(bare map work {failover.parts / promoting_bare:.2f} s); the survivor's adoption of "
        f"the failover's version: {failover.parts / candidate:.2f} s for {failover.parts:,} parts "
        f"(bare map work {failover.parts / baseline:.2f} s)"
    )


if __name__ == "__main__":
    main()
