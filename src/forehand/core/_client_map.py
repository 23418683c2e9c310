"""What a client learns from MAP_UPDATE: the placements of its own sessions' parts.

A client does not need the whole shard map (consistent hashing, overrides, every server); it needs
to know where the parts of its sessions live. The manager answers a client's MAP_REQUEST with a
MAP_UPDATE whose `encoding` is `CLIENT_PLACEMENTS_ENCODING` and whose body is a `ClientPlacements`
(msgpack): the placements of the parts of the client's sessions (those whose credentials its
HELLO presented, and those opened on that connection), with every endpoint.

With `base_version` 0 the body is complete: a part it does not list is unknown to the manager.
With a base version, the body lists only the parts whose placement changed after `base_version`:
a part it does not list is where the client knew it at `base_version` or later.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from forehand.core._driver import NodeId
from forehand.errors import RemoteProtocolError
from forehand.wire import ErrorCode, MapUpdate, Placement

__all__ = [
    "CLIENT_PLACEMENTS_ENCODING",
    "UNCHANGED",
    "ClientPlacements",
    "PlacementView",
    "SessionPlacement",
    "Unchanged",
    "decode_client_placements",
    "encode_client_placements",
    "placement_view",
]

CLIENT_PLACEMENTS_ENCODING = 0x40
"""MAP_UPDATE.encoding of a `ClientPlacements` body (0x40 and up are defined by forehand.core)."""


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
    except msgspec.DecodeError as error:
        raise RemoteProtocolError(
            f"malformed client placements: {error}", error_code=ErrorCode.FRAME_ENCODING_ERROR
        ) from error


class Unchanged:
    """Marker: the update says the part is still where the client knew it."""

    __slots__ = ()


UNCHANGED = Unchanged()
"""What `PlacementView.lookup` returns for a part a delta does not list but covers."""


class PlacementView:
    """Lookups into one MAP_UPDATE."""

    def __init__(self, *, map_version: int, base_version: int, body: ClientPlacements) -> None:
        self.map_version = map_version
        """The version the update brings the client to."""
        self.base_version = base_version
        """0 for a complete answer, else the version the listed changes start after."""
        self._entries = {(e.session_id, e.placement.part): e.placement for e in body.entries}

    def lookup(
        self, session_id: bytes, part: str, *, known_since: int
    ) -> tuple[NodeId, tuple[NodeId, ...]] | Unchanged | None:
        """(primary, replicas) for the part, UNCHANGED, or None when the update says nothing.

        `known_since` is the map version of the client's own information about the part.
        """
        placement = self._entries.get((session_id, part))
        if placement is not None:
            replicas = tuple(r.server_id for r in placement.replicas)
            return placement.primary.server_id, replicas
        if 0 < self.base_version <= known_since:
            return UNCHANGED
        return None

    def placements(self) -> Iterator[Placement]:
        """Every placement in the update (the client remembers their endpoints)."""
        return iter(self._entries.values())


def placement_view(update: MapUpdate) -> PlacementView | None:
    """A view of `update`, or None when its encoding is not one a client reads."""
    if update.encoding != CLIENT_PLACEMENTS_ENCODING:
        return None
    body = decode_client_placements(update.body)
    return PlacementView(
        map_version=update.map_version, base_version=update.base_version, body=body
    )
