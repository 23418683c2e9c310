"""A server ignores map versions older than its own: what a deposed manager may still send."""

from __future__ import annotations

import random

from forehand.core import ServerConfig, ServerCore
from forehand.core._part import HandlerResult, PartSpec
from forehand.core.messages import MapPublished, PartRef
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.placement import PartKey, Placement, PlacementConfig, ShardMap, new_session_id
from forehand.wire import ResponseStatus

SESSION = new_session_id(now_ms=1_700_000_000_000, rng=random.Random(3))


def _echo(state: object, op: str, payload: bytes) -> HandlerResult:
    return HandlerResult(state=state, status=ResponseStatus.OK, result=payload)


def _whole(shard_map: ShardMap) -> MapPublished:
    return MapPublished(map_version=shard_map.version, base_version=0, body=shard_map.encode())


def test_a_server_ignores_maps_older_than_its_own() -> None:
    """After adopting version v from the new leader, the whole map and a delta of an older
    version (a deposed leader's) change nothing: the server keeps v and its placements."""
    server = ServerCore(
        config=ServerConfig(server_id="s1"),
        parts={"cart": PartSpec(handler=_echo, initial_state=lambda: None)},
        sealer=TokenSealer(KeyRing({1: bytes(32)}, current_key_id=1), rng=random.Random(1)),
        rng=random.Random(2),
    )
    base = ShardMap.empty(config=PlacementConfig(replica_count=1))
    for name in ("s1", "s2"):
        base = base.apply(base.join_server(server_id=name, address=f"{name}.test:1", zone="z"))
    base = base.apply(base.add_session_parts(SESSION, ["cart"]))
    key = PartKey(session_id=SESSION, part="cart")
    stale_delta = base.override_placement(key, Placement(primary="s2"))
    stale = base.apply(stale_delta)  # What the deposed leader committed in its own view.
    current = base.apply(base.override_placement(key, Placement(primary="s1")))
    current = current.apply(current.join_server(server_id="s3", address="s3.test:1", zone="z"))
    assert current.version > stale.version

    server.receive_message(_whole(current), source="manager", now_us=1_000)
    assert server.map_version == current.version
    server.receive_message(_whole(stale), source="manager", now_us=2_000)
    server.receive_message(
        MapPublished(
            map_version=stale.version,
            base_version=base.version,
            body=ShardMap.encode_delta(stale_delta),
        ),
        source="manager",
        now_us=3_000,
    )
    assert server.map_version == current.version
    assert server.server_address("s3") == "s3.test:1"
    held = server._map
    assert held is not None
    placement = held.placement(PartRef(session_id=SESSION, part="cart"))
    assert placement is not None and placement.primary == "s1"
