"""Tests of `ShardMap.encode_built`: the bytes of a build's encoding, without the build."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forehand.placement import (
    InvalidDeltaError,
    PartKey,
    PlacementConfig,
    ServerEntry,
    ServerState,
    ShardMap,
    new_session_id,
)


def _inputs(
    seed: int, name_count: int, server_count: int
) -> tuple[PlacementConfig, list[ServerEntry], list[PartKey]]:
    rng = random.Random(seed)
    names = [f"p{index:02d}" for index in range(name_count)]
    servers = [
        ServerEntry(
            server_id=f"s{index}",
            address=f"10.0.0.{index}:7000",
            zone=f"z{rng.randrange(3)}",
            weight=rng.choice((0.5, 1.0, 2.0)),
            state=rng.choice((ServerState.ACTIVE, ServerState.ACTIVE, ServerState.DRAINING)),
        )
        for index in range(server_count)
    ]
    if servers:
        servers[0] = replace(servers[0], state=ServerState.ACTIVE)
    rng.shuffle(servers)
    keys = [
        PartKey(session_id=session_id, part=part)
        for session_id in (
            new_session_id(now_ms=rng.randrange(1 << 40), rng=rng)
            for _ in range(rng.randrange(0, 80))
        )
        for part in rng.sample(names, rng.randint(1, min(4, name_count)))
    ]
    rng.shuffle(keys)
    config = PlacementConfig(replica_count=rng.randrange(0, 3))
    return config, servers, keys


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    name_count=st.sampled_from([1, 3, 70]),
    server_count=st.integers(0, 12),
)
def test_encode_built_is_byte_identical_to_building_then_encoding(
    seed: int, name_count: int, server_count: int
) -> None:
    """Any servers (in any order) and parts (any order, bulk and one-by-one grouping): the
    same bytes as `ShardMap.build(...).encode()`, and they decode to that map."""
    config, servers, keys = _inputs(seed, name_count, server_count)
    if not servers:
        keys = []
    built = ShardMap.build(config=config, version=7, servers=servers, parts=keys)
    encoded = ShardMap.encode_built(config=config, version=7, servers=servers, parts=iter(keys))
    assert encoded == built.encode()
    decoded = ShardMap.decode(encoded)
    assert decoded.version == 7 and len(decoded) == len(keys)
    assert built.diff(decoded).moved == ()


@pytest.mark.parametrize("name_count", [3, 70])
def test_encode_built_refuses_a_part_listed_twice(name_count: int) -> None:
    """A duplicate key is an InvalidDeltaError, as a build's, in both groupings."""
    config, servers, keys = _inputs(5, name_count, 3)
    assert keys
    with pytest.raises(InvalidDeltaError, match="twice"):
        ShardMap.encode_built(config=config, version=1, servers=servers, parts=[*keys, keys[0]])


def test_encode_built_checks_servers_and_bounds() -> None:
    """Servers are checked as a build checks them; the parts bound holds."""
    config, servers, keys = _inputs(9, 3, 3)
    with pytest.raises(InvalidDeltaError, match="twice"):
        ShardMap.encode_built(config=config, version=1, servers=[*servers, servers[0]], parts=())
    with pytest.raises(InvalidDeltaError, match="negative"):
        ShardMap.encode_built(config=config, version=-1, servers=servers, parts=())
    small = PlacementConfig(parts_max=len(keys) - 1)
    with pytest.raises(InvalidDeltaError, match="parts_max"):
        ShardMap.encode_built(config=small, version=1, servers=servers, parts=keys)
    drained = [replace(entry, state=ServerState.DRAINING) for entry in servers]
    with pytest.raises(InvalidDeltaError, match="no ACTIVE server"):
        ShardMap.encode_built(config=config, version=1, servers=drained, parts=keys)
