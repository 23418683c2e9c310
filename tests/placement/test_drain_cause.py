"""The drain cause of a server entry: in a whole map's records an entry whose cause is OPERATOR
encodes as it did before the cause existed, a risk mark appends it, `encode_built` stays a
build's; a diff lists an entry whose cause alone changed."""

from __future__ import annotations

import random

import msgspec

from forehand.placement import (
    DrainCause,
    PartKey,
    PlacementConfig,
    ServerEntry,
    ServerJoined,
    ServerState,
    ShardMap,
    new_session_id,
)


class _PreCauseServerRecord(msgspec.Struct, frozen=True, array_like=True):
    """A server record as encoded before the drain cause existed."""

    server_id: str
    address: str
    zone: str
    weight: float
    state: ServerState


def _map(cause: DrainCause | None) -> ShardMap:
    """Four servers, sixty sessions; s1 drained for `cause` (not drained when None), s2 by an
    operator."""
    shard_map = ShardMap.empty(config=PlacementConfig(replica_count=1, ring_points_per_weight=32))
    joins = (
        ServerJoined(server_id=f"s{index}", address=f"h{index}:1", zone=f"z{index % 2}", weight=1.0)
        for index in range(4)
    )
    shard_map = shard_map.apply(shard_map.delta(*joins))
    rng = random.Random(3)
    for index in range(60):
        session_id = new_session_id(now_ms=index, rng=rng)
        shard_map = shard_map.apply(shard_map.add_session_parts(session_id, ("auth", "cart")))
    if cause is not None:
        shard_map = shard_map.apply(shard_map.drain_server("s1", cause=cause))
    return shard_map.apply(shard_map.drain_server("s2"))


def _pre_cause_encoding(shard_map: ShardMap) -> bytes:
    """The map's bytes with every server record in the layout from before the cause."""
    record = msgspec.msgpack.decode(shard_map.encode())
    record[3] = [
        _PreCauseServerRecord(e.server_id, e.address, e.zone, e.weight, e.state)
        for e in sorted(shard_map.servers, key=lambda entry: entry.server_id)
    ]
    return msgspec.msgpack.encode(record)


def test_operator_drains_encode_as_before_the_drain_cause() -> None:
    """A map of ACTIVE servers and operator drains has the same bytes as before the cause."""
    shard_map = _map(DrainCause.OPERATOR)
    assert shard_map.server("s1").state is ServerState.DRAINING
    assert shard_map.encode() == _pre_cause_encoding(shard_map)


def test_a_risk_mark_appends_its_cause_and_round_trips() -> None:
    """Only the risk-marked entry carries a sixth field; it decodes as RISK, the others as
    OPERATOR, and the decoded map encodes to the same bytes."""
    shard_map = _map(DrainCause.RISK)
    encoded = shard_map.encode()
    assert encoded != _pre_cause_encoding(shard_map)
    servers = msgspec.msgpack.decode(encoded)[3]
    assert {server[0]: server[5:] for server in servers} == {
        "s0": [],
        "s1": ["risk"],
        "s2": [],
        "s3": [],
    }
    decoded = ShardMap.decode(encoded)
    assert decoded.server("s1").drain_cause is DrainCause.RISK
    assert decoded.server("s2").drain_cause is DrainCause.OPERATOR
    assert decoded.encode() == encoded


def test_an_operator_record_with_its_cause_written_out_still_decodes() -> None:
    """A six-field record naming "operator" (as encoders wrote it for a while) decodes."""
    shard_map = _map(None)
    record = msgspec.msgpack.decode(shard_map.encode())
    record[3] = [[*server, "operator"] for server in record[3]]
    decoded = ShardMap.decode(msgspec.msgpack.encode(record))
    assert decoded.server("s2").state is ServerState.DRAINING
    assert decoded.encode() == shard_map.encode()


def test_encode_built_with_a_risk_mark_is_a_builds_encoding() -> None:
    """`encode_built` writes a risk-marked entry's cause as a build's encoding does."""
    config = PlacementConfig(replica_count=1)
    servers = [
        ServerEntry(server_id="a", address="h:1", zone="z0", weight=1.0, state=ServerState.ACTIVE),
        ServerEntry(
            server_id="b",
            address="h:2",
            zone="z1",
            weight=1.0,
            state=ServerState.DRAINING,
            drain_cause=DrainCause.RISK,
        ),
        ServerEntry(server_id="c", address="h:3", zone="z0", weight=2.0, state=ServerState.ACTIVE),
    ]
    rng = random.Random(5)
    keys = [
        PartKey(session_id=new_session_id(now_ms=index, rng=rng), part="auth")
        for index in range(40)
    ]
    built = ShardMap.build(config=config, version=3, servers=servers, parts=keys)
    encoded = ShardMap.encode_built(config=config, version=3, servers=servers, parts=keys)
    assert encoded == built.encode()
    assert ShardMap.decode(encoded).server("b").drain_cause is DrainCause.RISK


def test_a_takeover_is_a_server_change_of_the_cause_alone() -> None:
    """An operator's takeover of a risk mark moves no part, and the diff lists the entry."""
    marked = _map(DrainCause.RISK)
    taken = marked.apply(marked.drain_server("s1"))
    difference = marked.diff(taken)
    assert difference.moved == () and difference.servers_added == difference.servers_removed == ()
    assert difference.servers_changed == (taken.server("s1"),)
    assert taken.server("s1").drain_cause is DrainCause.OPERATOR
