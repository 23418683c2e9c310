"""What a server reads from the shard map: placements of its parts, what changed, addresses.

The server keeps the newest `ShardMap` it adopted, wrapped in a `ServerMap` that speaks in the
`PartRef`s of the cluster messages and never raises for a part the map does not know (a client
may name any session). `decode_published` turns a `MapPublished` body into the next map: a whole
map when `base_version` is 0, else a delta applied to the held map; a body that does not decode or
apply is the sender's fault.
"""

from __future__ import annotations

from collections.abc import Iterator

from forehand.core.messages import MapPublished, PartRef
from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.placement import MapDiff, PartKey, Placement, ServerState, ShardMap
from forehand.wire import Endpoint

__all__ = ["DEFAULT_PORT", "ServerMap", "decode_published", "endpoint_for"]

DEFAULT_PORT = 4433
"""Port named in an endpoint when the map has no usable address for a server (the simulator
routes by server id and leaves addresses empty)."""


class ServerMap:
    """One shard-map version, as a server asks it questions."""

    __slots__ = ("shard_map",)

    def __init__(self, shard_map: ShardMap) -> None:
        self.shard_map = shard_map
        """The map itself."""

    @property
    def version(self) -> int:
        """The map's version."""
        return self.shard_map.version

    def placement(self, ref: PartRef) -> Placement | None:
        """Where `ref` lives, or None when the map does not know the part (or it is malformed)."""
        try:
            return self.shard_map.lookup(PartKey(session_id=ref.session_id, part=ref.part))
        except LocalProtocolError:
            return None

    def parts_of(self, server_id: str) -> Iterator[PartRef]:
        """Every part the map places on `server_id`, primaries first, each sorted."""
        try:
            parts = self.shard_map.parts_for(server_id)
        except KeyError:
            return
        for key in parts.primary + parts.replica:
            yield PartRef(session_id=key.session_id, part=key.part)

    def diff_since(self, previous: ServerMap) -> MapDiff:
        """What changed from `previous` to this version (`ShardMap.diff`)."""
        return previous.shard_map.diff(self.shard_map)

    def changed_since(
        self, previous: ServerMap, server_id: str, diff: MapDiff | None = None
    ) -> Iterator[tuple[PartRef, Placement | None]]:
        """Parts added, removed or moved since `previous` that involve `server_id` either side,
        each with its placement in this version (None when removed); `diff` is
        `diff_since(previous)`, when the caller has it."""
        if diff is None:
            diff = self.diff_since(previous)
        for key in diff.added:
            placement = self.shard_map.lookup(key)
            if server_id in placement.servers:
                yield PartRef(session_id=key.session_id, part=key.part), placement
        for key in diff.removed:
            if server_id in previous.shard_map.lookup(key).servers:
                yield PartRef(session_id=key.session_id, part=key.part), None
        for moved in diff.moved:
            if server_id in moved.source.servers or server_id in moved.target.servers:
                yield PartRef(session_id=moved.key.session_id, part=moved.key.part), moved.target

    @staticmethod
    def placements_changed(diff: MapDiff) -> Iterator[PartRef]:
        """Every part whose placement `diff` changes: added, removed, or moved (a new order of
        the same replicas is not listed, and moves no data)."""
        for key in (*diff.added, *diff.removed):
            yield PartRef(session_id=key.session_id, part=key.part)
        for moved in diff.moved:
            yield PartRef(session_id=moved.key.session_id, part=moved.key.part)

    def address(self, server_id: str) -> str | None:
        """The `host:port` of a server, or None when the map does not list it."""
        try:
            return self.shard_map.server(server_id).address
        except KeyError:
            return None

    def lists_alive(self, server_id: str) -> bool:
        """Whether the map lists the server, other than as dead. The manager's failover
        replaces a dead server in every placement in the version that marks it dead, so only a
        handoff's sealed stream may still go to it."""
        try:
            return self.shard_map.server(server_id).state is not ServerState.DEAD
        except KeyError:
            return False


def decode_published(current: ServerMap | None, message: MapPublished) -> ServerMap:
    """The map `message` produces from `current` (which must be at `message.base_version`)."""
    try:
        if message.base_version == 0:
            shard_map = ShardMap.decode(message.body)
        else:
            assert current is not None and current.version == message.base_version
            shard_map = current.shard_map.apply(ShardMap.decode_delta(message.body))
    except LocalProtocolError as error:
        raise RemoteProtocolError(f"map version {message.map_version}: {error}") from error
    if shard_map.version != message.map_version:
        raise RemoteProtocolError(
            f"MapPublished says version {message.map_version}, its body {shard_map.version}"
        )
    return ServerMap(shard_map)


def endpoint_for(server_id: str, address: str | None) -> Endpoint:
    """The endpoint of `server_id` from its `host:port` address (or a placeholder)."""
    if address:
        host, separator, port_text = address.rpartition(":")
        if separator and host and port_text.isdigit() and 0 < int(port_text) < 1 << 16:
            return Endpoint(server_id=server_id, host=host.strip("[]"), port=int(port_text))
    return Endpoint(server_id=server_id, host=server_id, port=DEFAULT_PORT)
