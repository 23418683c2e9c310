"""Placement hashes are stable values, and lookups agree across processes and hash seeds."""

from __future__ import annotations

import os
import subprocess
import sys

from forehand.placement._hashing import HASH_LIMIT, mix64, server_hash, server_points

# Builds a map with deltas, then prints a digest of every lookup and of the encoded map. Sets of
# strings iterate in a different order under each PYTHONHASHSEED, so any dependence on it shows.
_DIGEST_SCRIPT = """
import hashlib, random
from forehand.placement import PartKey, PlacementConfig, ShardMap, new_session_id
config = PlacementConfig(load_epsilon=0.05, replica_count=2, ring_points_per_weight=64)
shard_map = ShardMap.empty(config=config)
for index in range(12):
    delta = shard_map.join_server(
        server_id=f"server-{index}", address=f"10.0.0.{index}:4433", zone=f"zone-{index % 3}",
        weight=1.0 + index % 4,
    )
    shard_map = shard_map.apply(delta)
rng = random.Random(99)
keys = []
for index in range(600):
    session_id = new_session_id(now_ms=1_700_000_000_000 + index, rng=rng)
    shard_map = shard_map.apply(shard_map.add_session_parts(session_id, ["auth", "cart"]))
    keys += [PartKey(session_id=session_id, part=part) for part in ("auth", "cart")]
shard_map = shard_map.apply(shard_map.drain_server("server-4"))
shard_map = shard_map.apply(shard_map.mark_server_dead("server-7"))
digest = hashlib.sha256()
for key in keys:
    placement = shard_map.lookup(key)
    digest.update(repr((key.session_id, key.part, placement.primary, placement.replicas)).encode())
digest.update(shard_map.encode())
print(digest.hexdigest())
"""


def test_hashes_have_fixed_values() -> None:
    """Server hashes and ring points are the same constants in every release and process."""
    assert server_points("server-1", 3) == [
        2815577602201518123,
        10907204802076204839,
        9165992343959916343,
    ]
    assert server_hash("server-1", b"maglev-offset") == 430915488114903878
    assert mix64(0) == 0
    assert 0 <= mix64(HASH_LIMIT - 1) < HASH_LIMIT


def test_server_points_extend_without_moving() -> None:
    """More points for a server keep its first points where they were (weight changes)."""
    assert server_points("server-9", 20)[:5] == server_points("server-9", 5)


def test_lookups_agree_across_processes_and_hash_seeds() -> None:
    """Three processes with different PYTHONHASHSEED place every part identically."""
    digests = set()
    for seed in ("0", "1", "4242"):
        environment = dict(os.environ, PYTHONHASHSEED=seed)
        completed = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT],
            capture_output=True,
            text=True,
            check=True,
            env=environment,
        )
        digests.add(completed.stdout.strip())
    assert len(digests) == 1
