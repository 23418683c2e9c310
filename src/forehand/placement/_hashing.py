"""Stable hashes: the same value in every process, whatever `PYTHONHASHSEED` says.

Everything that decides placement hashes with keyed blake2b from hashlib, each use under its own
personalization string so that the hash of a server id as a ring point never correlates with its
hash as a Maglev offset. Python's `hash()` is never used: it is salted per process.
"""

from __future__ import annotations

import hashlib
import struct

__all__ = [
    "HASH_LIMIT",
    "mix64",
    "part_key_hash",
    "server_hash",
    "server_points",
    "server_points_bytes",
]

HASH_LIMIT = 1 << 64
"""Every hash is an integer in [0, HASH_LIMIT)."""
_MASK64 = HASH_LIMIT - 1
_PART_PERSON = b"forehand-part"
_POINT_PERSON = b"forehand-ring"
_POINTS_PER_DIGEST = 8
_POINT_BYTES = 8


_PART_HASHER = hashlib.blake2b(digest_size=8, person=_PART_PERSON)


def part_key_hash(session_id: bytes, part: str) -> int:
    """The stable 64-bit hash of the part key `(session_id, part)`.

    The session id has a fixed length, so the concatenation with the part name is unambiguous.
    Copying a hasher whose parameters are already set is about twice as fast as a new one.
    """
    hasher = _PART_HASHER.copy()
    hasher.update(session_id)
    hasher.update(part.encode())
    return int.from_bytes(hasher.digest(), "little")


def server_hash(server_id: str, purpose: bytes) -> int:
    """A stable 64-bit hash of a server id for one `purpose` (at most 16 bytes)."""
    digest = hashlib.blake2b(server_id.encode(), digest_size=8, person=purpose)
    return int.from_bytes(digest.digest(), "little")


def server_points(server_id: str, count: int) -> list[int]:
    """The first `count` ring points of a server, stable across processes and ring sizes.

    Point `i` depends only on the server id and `i`, so a server keeps its points when others
    join or leave, and changing its weight adds or removes points at the end of its list only.
    """
    data = server_points_bytes(server_id, count)
    return list(struct.unpack(f"<{count}Q", data))


def server_points_bytes(server_id: str, count: int) -> bytes:
    """`server_points` as `count` little-endian 8-byte integers, for the numpy ring builder."""
    identity = server_id.encode()
    blocks = (count + _POINTS_PER_DIGEST - 1) // _POINTS_PER_DIGEST
    data = b"".join(
        hashlib.blake2b(
            identity + block.to_bytes(4, "little"), digest_size=64, person=_POINT_PERSON
        ).digest()
        for block in range(blocks)
    )
    return data[: count * _POINT_BYTES]


def mix64(value: int) -> int:
    """A fast stable 64-bit finalizer (splitmix64), for scores mixed from precomputed hashes."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK64
    return value ^ (value >> 31)
