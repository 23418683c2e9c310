"""Errors of the placement layer, all in the shared `forehand.errors` hierarchy."""

from __future__ import annotations

from forehand.errors import LocalProtocolError

__all__ = [
    "InvalidDeltaError",
    "InvalidPartKeyError",
    "PartKeyCollisionError",
    "StaleDeltaError",
    "UnknownPartKeyError",
]


class InvalidPartKeyError(LocalProtocolError, ValueError):
    """A session id or part name is malformed."""


class UnknownPartKeyError(LocalProtocolError, KeyError):
    """The part key is not in this shard map."""

    def __str__(self) -> str:
        # KeyError quotes its argument; this error's argument is a sentence.
        return str(self.args[0]) if self.args else ""


class InvalidDeltaError(LocalProtocolError, ValueError):
    """A delta cannot apply to this map: an unknown server, a duplicate part, a bad transition.

    It is also a `ValueError`, so msgspec reports it as a validation error while decoding.
    """


class PartKeyCollisionError(InvalidDeltaError):
    """A new part key has the same stable 64-bit hash as a different key already in the map.

    The map identifies parts by that hash, so it refuses the second key. The chance is about
    n**2 / 2**65 for n parts (1e-8 at a million); the manager mints another session id and retries.
    """


class StaleDeltaError(LocalProtocolError):
    """The delta was computed against a version that is not the map's current one."""

    def __init__(self, *, base_version: int, current_version: int) -> None:
        super().__init__(
            f"delta applies to version {base_version} but the map is at version {current_version}"
        )
        self.base_version = base_version
        """The version the delta was computed against."""
        self.current_version = current_version
        """The map's version."""
