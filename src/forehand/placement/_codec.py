"""The msgpack encodings of a whole shard map and of a delta (MAP_UPDATE bodies, store records).

A whole map carries what was decided and nothing derived: the configuration, the servers, the part
keys and the overrides. Parts are grouped by their set of part names, so a session costs its 16
id bytes plus nothing for the common case of many sessions with the same parts. The receiver
recomputes the assignment, which is a pure function of those contents.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from operator import attrgetter

import msgspec
import numpy as np

from forehand.errors import ConfigError, RemoteProtocolError
from forehand.placement._config import PlacementConfig
from forehand.placement._delta import Delta, Placement
from forehand.placement._errors import InvalidDeltaError, InvalidPartKeyError
from forehand.placement._ids import SESSION_ID_BYTES, PartKey
from forehand.placement._servers import DrainCause, ServerEntry, ServerState
from forehand.placement._state import (
    MapState,
    build_state,
    check_server_entry,
    pinned_placement,
)

__all__ = [
    "MAP_ENCODING",
    "decode_delta",
    "decode_map",
    "encode_built",
    "encode_delta",
    "encode_map",
]

MAP_ENCODING = 1
"""The codec number of these encodings, for the `encoding` field of MAP_UPDATE."""


class _ServerRecord(msgspec.Struct, frozen=True, array_like=True):
    """A server entry whose drain cause is OPERATOR (drained by an operator, or not drained):
    the five fields it had before the cause existed, so it encodes to the same bytes."""

    server_id: str
    address: str
    zone: str
    weight: float
    state: ServerState


class _CausedServerRecord(_ServerRecord, frozen=True, array_like=True):
    """A server entry with its drain cause appended: written for a risk mark only (msgspec's
    `omit_defaults` keeps an array_like struct's trailing defaults), read for every entry, a
    five-field record decoding as OPERATOR."""

    drain_cause: DrainCause = DrainCause.OPERATOR


class _PartGroup(msgspec.Struct, frozen=True, array_like=True):
    parts: tuple[str, ...]
    session_ids: bytes


class _OverrideRecord(msgspec.Struct, frozen=True, array_like=True):
    session_id: bytes
    part: str
    placement: Placement


class _MapRecord(msgspec.Struct, frozen=True, array_like=True):
    encoding: int
    version: int
    config: PlacementConfig
    servers: tuple[_ServerRecord, ...]
    groups: tuple[_PartGroup, ...]
    overrides: tuple[_OverrideRecord, ...]


class _DecodedMapRecord(_MapRecord, frozen=True, array_like=True):
    """A whole map as read: every server record with its drain cause."""

    servers: tuple[_CausedServerRecord, ...]


_ENCODER = msgspec.msgpack.Encoder()
_MAP_DECODER = msgspec.msgpack.Decoder(_DecodedMapRecord)
_DELTA_DECODER = msgspec.msgpack.Decoder(Delta)


_PART = attrgetter("part")
_SESSION_ID = attrgetter("session_id")
_SERVER_ID = attrgetter("server_id")
_PART_NAMES_BULK_MAX = 63
"""Sessions are grouped in bulk (a bit per part name) when the map has at most this many names."""


def _groups(keys: list[PartKey]) -> tuple[_PartGroup, ...]:
    """The keys grouped by session part names; InvalidDeltaError when a key is listed twice."""
    # map() and attrgetter keep the per-key passes in C.
    part_names = list(map(_PART, keys))
    names = sorted(set(part_names))
    if len(names) > _PART_NAMES_BULK_MAX:
        return _groups_one_by_one(keys)
    code = {name: 1 << index for index, name in enumerate(names)}
    # Session ids as two big-endian 64-bit halves sort as the bytes do.
    ids = np.frombuffer(b"".join(map(_SESSION_ID, keys)), dtype=">u8").reshape(-1, 2)
    bits = np.fromiter(map(code.__getitem__, part_names), dtype=np.uint64, count=len(keys))
    del part_names
    order = np.lexsort((ids[:, 1], ids[:, 0]))
    ids, bits = ids[order], bits[order]
    first = np.ones(len(keys), dtype=bool)
    first[1:] = np.any(ids[1:] != ids[:-1], axis=1)
    starts = np.flatnonzero(first)
    masks = np.bitwise_or.reduceat(bits, starts) if len(starts) else bits
    # Each name is one bit: a session's bits add up to its mask unless one is there twice.
    if len(starts) and not np.array_equal(np.add.reduceat(bits, starts), masks):
        raise InvalidDeltaError("a part is listed twice")
    sessions = ids[starts]
    groups = []
    for mask in np.unique(masks).tolist():
        parts = tuple(name for index, name in enumerate(names) if mask >> index & 1)
        groups.append(_PartGroup(parts=parts, session_ids=sessions[masks == mask].tobytes()))
    return tuple(sorted(groups, key=lambda group: group.parts))


def _groups_one_by_one(keys: list[PartKey]) -> tuple[_PartGroup, ...]:
    sessions: dict[bytes, list[str]] = {}
    for key in keys:
        sessions.setdefault(key.session_id, []).append(key.part)
    grouped: dict[tuple[str, ...], list[bytes]] = {}
    for session_id, parts in sessions.items():
        if len(set(parts)) != len(parts):
            raise InvalidDeltaError("a part is listed twice")
        grouped.setdefault(tuple(sorted(parts)), []).append(session_id)
    return tuple(
        _PartGroup(parts=parts, session_ids=b"".join(sorted(grouped[parts])))
        for parts in sorted(grouped)
    )


def _server_records(entries: Iterable[ServerEntry]) -> tuple[_ServerRecord, ...]:
    return tuple(map(_server_record, sorted(entries, key=_SERVER_ID)))


def _server_record(entry: ServerEntry) -> _ServerRecord:
    """The entry's record: the cause appended only when it is not OPERATOR."""
    if entry.drain_cause is DrainCause.OPERATOR:
        return _ServerRecord(entry.server_id, entry.address, entry.zone, entry.weight, entry.state)
    return _CausedServerRecord(
        entry.server_id, entry.address, entry.zone, entry.weight, entry.state, entry.drain_cause
    )


def encode_map(state: MapState) -> bytes:
    """The whole map version, compactly."""
    servers = _server_records(state.servers.values())
    overrides = sorted(
        (
            _OverrideRecord(key.session_id, key.part, pinned_placement(pinned))
            for key_hash, pinned in state.overrides.items()
            if (key := state.parts.get(key_hash)) is not None
        ),
        key=lambda record: (record.session_id, record.part),
    )
    record = _MapRecord(
        encoding=MAP_ENCODING,
        version=state.version,
        config=state.config,
        servers=servers,
        groups=_groups(list(state.parts.values())),
        overrides=tuple(overrides),
    )
    return _ENCODER.encode(record)


def encode_built(
    *,
    config: PlacementConfig,
    version: int,
    servers: Iterable[ServerEntry],
    parts: Iterable[PartKey],
) -> bytes:
    """The bytes `encode_map(build_state(...))` gives for a map without overrides, without
    building it: the assignment is not part of the encoding, and computing it for millions of
    parts only to store them (a store's first snapshot) costs seconds.

    Servers are checked as a build checks them, parts for duplicates and `parts_max`; two
    different keys with the same stable hash are found by whoever decodes it (a build).
    """
    if version < 0:
        raise InvalidDeltaError("a map version is not negative")
    entries = list(servers)
    for entry in entries:
        check_server_entry(config, entry)
    if len({entry.server_id for entry in entries}) != len(entries):
        raise InvalidDeltaError("a server is listed twice")
    if len(entries) > config.servers_max:
        raise InvalidDeltaError(f"more than servers_max={config.servers_max} servers")
    keys = list(parts)
    if len(keys) > config.parts_max:
        raise InvalidDeltaError(f"more than parts_max={config.parts_max} parts")
    if keys and not any(entry.state is ServerState.ACTIVE for entry in entries):
        raise InvalidDeltaError(f"no ACTIVE server is left for {len(keys)} hash-placed parts")
    record = _MapRecord(
        encoding=MAP_ENCODING,
        version=version,
        config=config,
        servers=_server_records(entries),
        groups=_groups(keys),
        overrides=(),
    )
    return _ENCODER.encode(record)


def _part_keys(groups: tuple[_PartGroup, ...]) -> Iterator[PartKey]:
    for group in groups:
        ids = group.session_ids
        if len(ids) % SESSION_ID_BYTES:
            raise RemoteProtocolError("a part group's session ids are not whole 16-byte ids")
        for start in range(0, len(ids), SESSION_ID_BYTES):
            session_id = ids[start : start + SESSION_ID_BYTES]
            for part in group.parts:
                yield PartKey(session_id=session_id, part=part)


def decode_map(data: bytes) -> MapState:
    """The map version encoded in `data`; malformed input raises RemoteProtocolError."""
    try:
        record = _MAP_DECODER.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as error:
        # msgspec lets a non-UTF-8 string body escape as UnicodeDecodeError.
        raise RemoteProtocolError(f"malformed shard map: {error}") from error
    if record.encoding != MAP_ENCODING:
        raise RemoteProtocolError(f"unknown shard-map encoding {record.encoding}")
    servers = [
        ServerEntry(
            server_id=server.server_id,
            address=server.address,
            zone=server.zone,
            weight=server.weight,
            state=server.state,
            drain_cause=server.drain_cause,
        )
        for server in record.servers
    ]
    try:
        overrides = [
            (PartKey(session_id=item.session_id, part=item.part), item.placement)
            for item in record.overrides
        ]
        state = build_state(
            config=record.config,
            version=record.version,
            servers=servers,
            parts=_part_keys(record.groups),
            overrides=overrides,
        )
    except (InvalidDeltaError, InvalidPartKeyError, ConfigError) as error:
        raise RemoteProtocolError(f"invalid shard map: {error}") from error
    return state


def encode_delta(delta: Delta) -> bytes:
    """The delta, compactly."""
    return _ENCODER.encode(delta)


def decode_delta(data: bytes) -> Delta:
    """The delta encoded in `data`; malformed input raises RemoteProtocolError."""
    try:
        return _DELTA_DECODER.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError) as error:
        raise RemoteProtocolError(f"malformed shard-map delta: {error}") from error
