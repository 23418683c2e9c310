"""Placements and deltas: the records the shard map returns, and the changes it applies.

They are msgspec Structs, so a delta encodes to a few bytes of msgpack for MAP_UPDATE frames and
decodes with its types checked. Each record validates its own fields; bounds that depend on the
configuration are checked when the delta is applied.
"""

from __future__ import annotations

import msgspec

from forehand.placement._errors import InvalidDeltaError
from forehand.placement._ids import check_part_name, check_session_id
from forehand.placement._servers import DrainCause

__all__ = [
    "Delta",
    "Operation",
    "PartsAdded",
    "PartsRemoved",
    "Placement",
    "PlacementOverridden",
    "ServerDrained",
    "ServerJoined",
    "ServerLeft",
    "ServerMarkedDead",
    "ServerReweighted",
    "ServerUndrained",
]


class Placement(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """Where one part lives: its primary and its replicas, most preferred first."""

    primary: str
    """The server that executes requests for the part."""
    replicas: tuple[str, ...] = ()
    """The servers that hold asynchronous copies, in promotion order."""

    def __post_init__(self) -> None:
        # Every decoded map and delta builds one per overridden part (a failover, one per part
        # the dead server led): the common sizes are checked without building a set.
        primary, replicas = self.primary, self.replicas
        if len(replicas) == 2:
            first, second = replicas
            if not primary or not first or not second:
                raise InvalidDeltaError("a placement names servers by non-empty ids")
            if first == second or primary in replicas:
                raise InvalidDeltaError(f"a placement names each server once: {self}")
            return
        if not primary or "" in replicas:
            raise InvalidDeltaError("a placement names servers by non-empty ids")
        if primary in replicas or len(set(replicas)) != len(replicas):
            raise InvalidDeltaError(f"a placement names each server once: {self}")

    @property
    def servers(self) -> tuple[str, ...]:
        """The primary, then the replicas."""
        return (self.primary, *self.replicas)


def _check_server_id(server_id: str) -> None:
    if not server_id:
        raise InvalidDeltaError("a server id is a non-empty string")


def _check_weight(weight: float) -> None:
    if not weight > 0.0:
        raise InvalidDeltaError(f"a server weight is positive, got {weight}")


class PartsAdded(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=1):
    """A session's parts enter the map and follow the hash."""

    session_id: bytes
    """The session's 16-byte UUIDv7."""
    parts: tuple[str, ...]
    """The part names, each new in the map."""

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        if not self.parts or len(set(self.parts)) != len(self.parts):
            raise InvalidDeltaError("parts are a non-empty list of distinct names")
        for part in self.parts:
            check_part_name(part)


class PartsRemoved(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=2):
    """A session's parts leave the map (the session closed, or those parts ended)."""

    session_id: bytes
    """The session's 16-byte UUIDv7."""
    parts: tuple[str, ...]
    """The part names, each present in the map."""

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        if not self.parts or len(set(self.parts)) != len(self.parts):
            raise InvalidDeltaError("parts are a non-empty list of distinct names")
        for part in self.parts:
            check_part_name(part)


class PlacementOverridden(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=3):
    """A part gets an explicit placement (handoff, failover), or follows the hash again."""

    session_id: bytes
    """The session's 16-byte UUIDv7."""
    part: str
    """The part name."""
    placement: Placement | None
    """The explicit placement, or None to drop the override and follow the hash."""

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        check_part_name(self.part)


class ServerJoined(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=4):
    """A server enters the map, ACTIVE."""

    server_id: str
    """The new server's cluster-unique name."""
    address: str
    """Where clients reach it (`host:port`)."""
    zone: str
    """Its failure-domain label."""
    weight: float = 1.0
    """Its relative capacity."""

    def __post_init__(self) -> None:
        _check_server_id(self.server_id)
        _check_weight(self.weight)
        if not self.zone:
            raise InvalidDeltaError("a zone label is a non-empty string")


class ServerLeft(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=5):
    """A DRAINING or DEAD server's entry leaves the map."""

    server_id: str
    """The server."""

    def __post_init__(self) -> None:
        _check_server_id(self.server_id)


class ServerDrained(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=6):
    """An ACTIVE server starts draining: its parts are pinned where they are, none are added.

    With cause OPERATOR on a server the risk policy marked (DRAINING, cause RISK), the operator's
    drain takes the mark over: only the cause changes.
    """

    server_id: str
    """The server."""
    cause: DrainCause = DrainCause.OPERATOR
    """Who drains it; an encoding without it (older) means OPERATOR."""

    def __post_init__(self) -> None:
        _check_server_id(self.server_id)


class ServerUndrained(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=7):
    """A DRAINING server becomes ACTIVE again."""

    server_id: str
    """The server."""

    def __post_init__(self) -> None:
        _check_server_id(self.server_id)


class ServerMarkedDead(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=8):
    """The manager declares a server dead; its hash-placed parts move to the next servers."""

    server_id: str
    """The server."""

    def __post_init__(self) -> None:
        _check_server_id(self.server_id)


class ServerReweighted(msgspec.Struct, frozen=True, kw_only=True, array_like=True, tag=9):
    """A server's weight changes."""

    server_id: str
    """The server."""
    weight: float
    """Its new relative capacity."""

    def __post_init__(self) -> None:
        _check_server_id(self.server_id)
        _check_weight(self.weight)


Operation = (
    PartsAdded
    | PartsRemoved
    | PlacementOverridden
    | ServerJoined
    | ServerLeft
    | ServerDrained
    | ServerUndrained
    | ServerMarkedDead
    | ServerReweighted
)
"""One change inside a delta."""


class Delta(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Changes that take a map from `base_version` to `base_version + 1`, all or nothing."""

    base_version: int
    """The version the delta applies to; any other version refuses it."""
    operations: tuple[Operation, ...]
    """The changes, applied in order."""

    def __post_init__(self) -> None:
        if self.base_version < 0:
            raise InvalidDeltaError("a base version is not negative")

    @property
    def version(self) -> int:
        """The version the delta produces."""
        return self.base_version + 1
