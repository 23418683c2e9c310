"""What a client learns from MAP_UPDATE: where the parts of its own sessions live.

Two body encodings are read:

- `CLIENT_PLACEMENTS_ENCODING`: a `ClientPlacements` (msgpack), the placements of the parts of the
  client's sessions with every endpoint. This is the compact answer a manager gives a client's
  MAP_REQUEST. With `base_version` 0 it is complete: a part it does not list is unknown to the
  manager. With a base version it lists only the parts whose placement changed after
  `base_version`: a part it does not list is where the client knew it at that version or later.
- `forehand.placement.MAP_ENCODING`: the whole shard map (`base_version` 0), or a delta that the
  client applies to the whole map it holds at `base_version` (otherwise it cannot read it).
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from forehand.core._driver import NodeId
from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.placement import MAP_ENCODING, PartKey, ShardMap
from forehand.wire import Endpoint, ErrorCode, MapUpdate, Placement

__all__ = [
    "CLIENT_PLACEMENTS_ENCODING",
    "DEFAULT_PORT",
    "UNCHANGED",
    "ClientPlacements",
    "PlacementView",
    "SessionPlacement",
    "Unchanged",
    "decode_client_placements",
    "encode_client_placements",
    "endpoint_from_address",
    "placement_view",
]

CLIENT_PLACEMENTS_ENCODING = 0x40
"""MAP_UPDATE.encoding of a `ClientPlacements` body (0x40 and up are defined by forehand.core)."""
DEFAULT_PORT = 4433
"""Port assumed for a server whose map address has none (the simulator routes by server id)."""


class SessionPlacement(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Where one part of one session lives."""

    session_id: bytes
    """The session (16 bytes)."""
    placement: Placement
    """The part, its primary and replicas, with endpoints."""


class ClientPlacements(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """The body of a MAP_UPDATE for a client: placements of its sessions' parts."""

    entries: tuple[SessionPlacement, ...]
    """The placements, at most one per (session, part)."""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ClientPlacements)


def encode_client_placements(entries: tuple[SessionPlacement, ...]) -> bytes:
    """The MAP_UPDATE body (with `encoding=CLIENT_PLACEMENTS_ENCODING`) that carries `entries`."""
    return _encoder.encode(ClientPlacements(entries=entries))


def decode_client_placements(body: bytes) -> ClientPlacements:
    """Decode a `ClientPlacements` body; a malformed one is the sender's fault."""
    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        # msgspec lets a string that is not UTF-8 escape as UnicodeDecodeError.
        raise RemoteProtocolError(
            f"malformed client placements: {error}", error_code=ErrorCode.FRAME_ENCODING_ERROR
        ) from error


def endpoint_from_address(server_id: str, address: str) -> Endpoint:
    """The endpoint of a server from its map address `host:port` (a placeholder when unusable)."""
    host, separator, port_text = address.rpartition(":")
    if separator and host and port_text.isdigit() and 0 < int(port_text) < 1 << 16:
        return Endpoint(server_id=server_id, host=host.strip("[]"), port=int(port_text))
    return Endpoint(server_id=server_id, host=server_id, port=DEFAULT_PORT)


class Unchanged:
    """Marker type: the update says the part is still where the client knew it."""

    __slots__ = ()


UNCHANGED = Unchanged()
"""What `PlacementView.lookup` returns for a part a delta does not list but covers."""

Found = tuple[NodeId, tuple[NodeId, ...]]
"""(primary, replicas) of a part."""


class PlacementView:
    """Lookups into one MAP_UPDATE, whichever its encoding."""

    def __init__(
        self,
        *,
        map_version: int,
        base_version: int = 0,
        body: ClientPlacements | None = None,
        shard_map: ShardMap | None = None,
    ) -> None:
        assert (body is None) != (shard_map is None), "a view reads exactly one body"
        self.map_version = map_version
        """The version the update brings the client to."""
        self.base_version = base_version
        """0 for a complete answer, else the version the listed changes start after."""
        self.shard_map = shard_map
        """The whole map, when the update carried (or completed) one."""
        entries = () if body is None else body.entries
        self._entries = {(e.session_id, e.placement.part): e.placement for e in entries}

    def lookup(self, session_id: bytes, part: str, *, known_since: int) -> Found | Unchanged | None:
        """(primary, replicas) for the part, UNCHANGED, or None when the update says nothing.

        `known_since` is the map version of the client's own information about the part.
        """
        if self.shard_map is not None:
            return _lookup_map(self.shard_map, session_id, part)
        placement = self._entries.get((session_id, part))
        if placement is not None:
            return placement.primary.server_id, tuple(r.server_id for r in placement.replicas)
        if 0 < self.base_version <= known_since:
            return UNCHANGED
        return None

    def session_ids(self) -> frozenset[bytes]:
        """The sessions the update lists placements for (none for a whole map)."""
        return frozenset(session_id for session_id, _ in self._entries)

    def endpoints(self) -> Iterator[Endpoint]:
        """Every server endpoint the update names (the members the client may trust)."""
        if self.shard_map is not None:
            for entry in self.shard_map.servers:
                yield endpoint_from_address(entry.server_id, entry.address)
            return
        for placement in self._entries.values():
            yield placement.primary
            yield from placement.replicas


def _lookup_map(shard_map: ShardMap, session_id: bytes, part: str) -> Found | None:
    try:
        placement = shard_map.lookup(PartKey(session_id=session_id, part=part))
    except LocalProtocolError:
        # Not a valid part key, or not in this map: the map says nothing about it.
        return None
    return placement.primary, placement.replicas


def placement_view(update: MapUpdate, held: ShardMap | None) -> PlacementView | None:
    """A view of `update`, or None when the client cannot read it.

    `held` is the whole shard map the client kept from an earlier update, if any; a shard-map
    delta applies to it when its base version matches.
    """
    if update.encoding == CLIENT_PLACEMENTS_ENCODING:
        body = decode_client_placements(update.body)
        return PlacementView(
            map_version=update.map_version, base_version=update.base_version, body=body
        )
    if update.encoding != MAP_ENCODING:
        return None
    if update.base_version != 0 and (held is None or held.version != update.base_version):
        return None
    try:
        if update.base_version == 0:
            shard_map = ShardMap.decode(update.body)
        else:
            assert held is not None
            shard_map = held.apply(ShardMap.decode_delta(update.body))
    except (RemoteProtocolError, ValueError) as error:
        # Bytes the codec refuses, a string that is not UTF-8 (msgspec lets UnicodeDecodeError
        # escape) or a configuration out of range: the body does not decode (PROTOCOL.md 5.10).
        raise RemoteProtocolError(
            f"malformed shard map: {error}", error_code=ErrorCode.FRAME_ENCODING_ERROR
        ) from error
    except LocalProtocolError as error:
        raise RemoteProtocolError(f"unusable shard map: {error}") from error
    if shard_map.version != update.map_version:
        raise RemoteProtocolError(
            f"MAP_UPDATE says version {update.map_version}, its map is {shard_map.version}",
            error_code=ErrorCode.FRAME_ENCODING_ERROR,
        )
    return PlacementView(map_version=update.map_version, shard_map=shard_map)
