"""A survivor's takeover after a crash: one server adopting the failover's map version.

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

from benchmarks._common import Comparison, best_rate, print_comparisons

from forehand.core._part import HandlerResult, PartSpec
from forehand.core._server_config import ServerConfig
from forehand.core.messages import FailoverPrepared, MapPublished, PartRef
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
from forehand.wire import ResponseStatus

SERVERS = ("s1", "s2", "s3")
PARTS = ("auth", "cart", "feature/video")
SESSIONS = 10_000
DEAD = "s2"
SURVIVOR = "s1"
FENCE_PARTS_MAX = 4_096


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


def _drain(core: ServerCore) -> None:
    core.messages_to_send()
    while core.next_event() is not None:
        pass


def main() -> None:
    """Print the parts per second a survivor adopts the failover's version at, beside the bare
    map work, and the seconds that takes for the map's parts."""
    quick = "--quick" in sys.argv
    sessions, rounds = (1_000, 1) if quick else (SESSIONS, 3)
    failover = Failover(sessions)
    candidate = baseline = 0.0
    for _ in range(rounds):
        candidate = max(
            candidate, best_rate(lambda: (failover.survivor(),), failover.adopt, rounds=1)
        )
        baseline = max(baseline, best_rate(tuple, failover.bare, rounds=1))
    row = Comparison(
        name=f"parts adopted ({failover.parts:,} held, {failover.promoted:,} promoted)",
        candidate_per_second=candidate,
        baseline_per_second=baseline,
        baseline_name="delta decode + apply + diff",
    )
    print_comparisons("ServerCore takeover (3 servers, one dead)", [row])
    print(
        f"adoption of the failover's version: {failover.parts / candidate:.2f} s for "
        f"{failover.parts:,} parts (bare map work {failover.parts / baseline:.2f} s)"
    )


if __name__ == "__main__":
    main()
