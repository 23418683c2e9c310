"""Whole maps and deltas round-trip through msgpack; malformed bytes are remote errors."""

from __future__ import annotations

import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forehand.errors import RemoteProtocolError
from forehand.placement import (
    MAP_ENCODING,
    Delta,
    DrainCause,
    InvalidDeltaError,
    Operation,
    PartKey,
    PartsAdded,
    PartsRemoved,
    Placement,
    PlacementConfig,
    PlacementOverridden,
    ServerDrained,
    ServerJoined,
    ServerLeft,
    ServerMarkedDead,
    ServerReweighted,
    ServerState,
    ServerUndrained,
    ShardMap,
    new_session_id,
)
from forehand.placement._codec import _groups, _groups_one_by_one


def _sample_map() -> tuple[ShardMap, list[PartKey]]:
    config = PlacementConfig(load_epsilon=0.1, replica_count=1, ring_points_per_weight=32)
    shard_map = ShardMap.empty(config=config)
    shard_map = shard_map.apply(
        shard_map.delta(
            *(
                ServerJoined(
                    server_id=f"s{index}", address=f"h{index}:1", zone=f"z{index % 2}", weight=1.5
                )
                for index in range(5)
            )
        )
    )
    rng = random.Random(4)
    keys: list[PartKey] = []
    for index in range(300):
        session_id = new_session_id(now_ms=index, rng=rng)
        parts = ("auth", "cart") if index % 3 else ("auth", "feature/video", "profile")
        shard_map = shard_map.apply(shard_map.add_session_parts(session_id, parts))
        keys.extend(PartKey(session_id=session_id, part=part) for part in parts)
    shard_map = shard_map.apply(shard_map.drain_server("s2"))
    shard_map = shard_map.apply(
        shard_map.override_placement(keys[5], Placement(primary="s4", replicas=("s0",)))
    )
    return shard_map.apply(shard_map.mark_server_dead("s2")), keys


def test_whole_map_round_trips() -> None:
    """decode(encode(map)) has the same version, servers, parts, overrides and placements."""
    shard_map, keys = _sample_map()
    data = shard_map.encode()
    decoded = ShardMap.decode(data)
    assert decoded.version == shard_map.version
    assert decoded.config == shard_map.config
    assert decoded.servers == shard_map.servers
    assert sorted(decoded.overrides()) == sorted(shard_map.overrides())
    for key in keys:
        assert decoded.lookup(key) == shard_map.lookup(key)
    assert decoded.encode() == data


def test_whole_map_is_compact() -> None:
    """A session with the common part set costs its 16 id bytes and little else."""
    shard_map, keys = _sample_map()
    sessions = len({key.session_id for key in keys})
    overrides = sum(1 for _ in shard_map.overrides())
    assert len(shard_map.encode()) < sessions * 17 + overrides * 64 + 2048


def test_every_operation_round_trips() -> None:
    """Each delta operation survives encode_delta / decode_delta unchanged."""
    session_id = new_session_id(now_ms=7, rng=random.Random(7))
    delta = Delta(
        base_version=41,
        operations=(
            PartsAdded(session_id=session_id, parts=("auth", "feature/video")),
            PartsRemoved(session_id=session_id, parts=("auth",)),
            PlacementOverridden(
                session_id=session_id,
                part="cart",
                placement=Placement(primary="a", replicas=("b",)),
            ),
            PlacementOverridden(session_id=session_id, part="cart", placement=None),
            ServerJoined(server_id="a", address="10.0.0.1:4433", zone="z", weight=2.5),
            ServerDrained(server_id="a"),
            ServerUndrained(server_id="a"),
            ServerMarkedDead(server_id="a"),
            ServerLeft(server_id="a"),
            ServerReweighted(server_id="a", weight=0.5),
        ),
    )
    data = ShardMap.encode_delta(delta)
    assert ShardMap.decode_delta(data) == delta
    assert delta.version == 42
    assert len(ShardMap.encode_delta(Delta(base_version=3, operations=(delta.operations[0],)))) < 48


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",
        msgspec.msgpack.encode([1, 2, 3]),
        msgspec.msgpack.encode([1, [[1, [b"short", ["auth"]]]]]),
        msgspec.msgpack.encode([1, [[1, [bytes(16), ["auth"]]]]]),
    ],
)
def test_malformed_deltas_are_remote_errors(data: bytes) -> None:
    """Garbage, wrong shapes and invalid ids raise RemoteProtocolError, nothing else."""
    with pytest.raises(RemoteProtocolError):
        ShardMap.decode_delta(data)


def test_malformed_maps_are_remote_errors() -> None:
    """Truncated maps, unknown encodings and inconsistent contents raise RemoteProtocolError."""
    shard_map, _ = _sample_map()
    data = shard_map.encode()
    with pytest.raises(RemoteProtocolError):
        ShardMap.decode(data[: len(data) // 2])
    record = msgspec.msgpack.decode(data)
    record[0] = MAP_ENCODING + 1
    with pytest.raises(RemoteProtocolError):
        ShardMap.decode(msgspec.msgpack.encode(record))
    record = msgspec.msgpack.decode(data)
    record[4][0][1] = record[4][0][1][:-3]  # a session id cut short
    with pytest.raises(RemoteProtocolError):
        ShardMap.decode(msgspec.msgpack.encode(record))
    record = msgspec.msgpack.decode(data)
    record[3].append(record[3][0])  # a server listed twice
    with pytest.raises(RemoteProtocolError):
        ShardMap.decode(msgspec.msgpack.encode(record))


def test_non_utf8_strings_are_remote_errors() -> None:
    """Map or delta strings that are not UTF-8 raise RemoteProtocolError, not UnicodeError."""
    shard_map, _ = _sample_map()
    data = shard_map.encode()
    server_id = msgspec.msgpack.encode("s1")
    assert server_id in data
    broken = data.replace(server_id, bytes([server_id[0]]) + b"\xff\xfe", 1)
    with pytest.raises(RemoteProtocolError):
        ShardMap.decode(broken)
    delta = ShardMap.encode_delta(
        shard_map.delta(ServerJoined(server_id="s9", address="h9:1", zone="z0", weight=1.0))
    )
    joined = msgspec.msgpack.encode("s9")
    assert joined in delta
    with pytest.raises(RemoteProtocolError):
        ShardMap.decode_delta(delta.replace(joined, bytes([joined[0]]) + b"\xff\xfe", 1))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32), name_count=st.sampled_from([1, 3, 70]))
def test_bulk_grouping_of_sessions_equals_one_by_one(seed: int, name_count: int) -> None:
    """Sessions grouped by part set in bulk (a bit per name) give the groups, in the order and
    with the session order, of grouping them one by one; past 63 names the map groups one by one."""
    rng = random.Random(seed)
    names = [f"part-{index:02d}" for index in range(name_count)]
    shard_map = ShardMap.empty()
    shard_map = shard_map.apply(shard_map.join_server(server_id="s1", address="a:1", zone="z"))
    operations: list[Operation] = []
    for _ in range(rng.randrange(0, 60)):
        session_id = new_session_id(now_ms=rng.randrange(1 << 40), rng=rng)
        parts = tuple(rng.sample(names, rng.randint(1, min(4, name_count))))
        operations.append(PartsAdded(session_id=session_id, parts=parts))
    if operations:
        shard_map = shard_map.apply(shard_map.delta(*operations))
    state = shard_map._state
    assert _groups(list(state.parts.values())) == _groups_one_by_one(list(state.parts.values()))
    assert ShardMap.decode(shard_map.encode()).encode() == shard_map.encode()


# The drain cause of a server entry.


def _two_drains() -> ShardMap:
    """Five servers; s1 drained by the risk policy, s3 by an operator."""
    shard_map, _ = _sample_map()
    shard_map = shard_map.apply(shard_map.drain_server("s1", cause=DrainCause.RISK))
    return shard_map.apply(shard_map.drain_server("s3"))


def test_the_drain_cause_round_trips_in_whole_maps_and_deltas() -> None:
    """A risk mark and an operator drain keep their causes through a whole map and a delta."""
    shard_map = _two_drains()
    decoded = ShardMap.decode(shard_map.encode())
    assert decoded.server("s1").drain_cause is DrainCause.RISK
    assert decoded.server("s3").drain_cause is DrainCause.OPERATOR
    assert decoded.server("s0").drain_cause is DrainCause.OPERATOR
    delta = Delta(base_version=1, operations=(ServerDrained(server_id="a", cause=DrainCause.RISK),))
    assert ShardMap.decode_delta(ShardMap.encode_delta(delta)) == delta


def test_an_encoding_without_the_drain_cause_decodes_as_an_operator_drain() -> None:
    """Server records of five fields and ServerDrained without a cause (the encodings from before
    the cause existed) decode, each drain as an operator's."""
    shard_map = _two_drains()
    record = msgspec.msgpack.decode(shard_map.encode())
    assert [len(server) for server in record[3]] == [5, 6, 5, 5, 5]
    record[3] = [server[:5] for server in record[3]]
    old = ShardMap.decode(msgspec.msgpack.encode(record))
    assert old.server("s1").state is ServerState.DRAINING
    assert old.server("s1").drain_cause is DrainCause.OPERATOR
    old_delta = msgspec.msgpack.encode([7, [[6, "s1"]]])
    assert ShardMap.decode_delta(old_delta).operations == (ServerDrained(server_id="s1"),)


def test_a_drain_cause_outside_draining_is_an_invalid_map() -> None:
    """A RISK cause on an ACTIVE server is refused on decode, as a remote error."""
    record = msgspec.msgpack.decode(_two_drains().encode())
    active = next(server for server in record[3] if server[0] == "s0")
    active.append(DrainCause.RISK.value)
    with pytest.raises(RemoteProtocolError):
        ShardMap.decode(msgspec.msgpack.encode(record))


def test_an_operator_takes_over_a_risk_mark_and_only_then() -> None:
    """An operator's ServerDrained on a risk-marked server changes only the cause; on a server an
    operator drains already, or as a second risk mark, it is an invalid delta."""
    shard_map = _two_drains()
    taken = shard_map.apply(shard_map.drain_server("s1"))
    assert taken.server("s1").drain_cause is DrainCause.OPERATOR
    assert sorted(taken.overrides()) == sorted(shard_map.overrides())
    for server_id, cause in (("s3", DrainCause.OPERATOR), ("s1", DrainCause.RISK)):
        with pytest.raises(InvalidDeltaError):
            shard_map.apply(shard_map.drain_server(server_id, cause=cause))


def test_the_drain_cause_lasts_while_draining_only() -> None:
    """A reweight keeps a risk mark's cause; undraining makes the entry OPERATOR again."""
    shard_map = _two_drains()
    heavier = shard_map.apply(shard_map.delta(ServerReweighted(server_id="s1", weight=2.0)))
    assert heavier.server("s1").drain_cause is DrainCause.RISK
    undrained = heavier.apply(heavier.undrain_server("s1"))
    entry = undrained.server("s1")
    assert (entry.state, entry.drain_cause) == (ServerState.ACTIVE, DrainCause.OPERATOR)
