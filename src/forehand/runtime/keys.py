"""The cluster's token keys: a TOML key file that every manager and server loads into a `KeyRing`.

Resumption tokens and session credentials are sealed with AES-256-GCM under cluster keys
(`forehand.core.tokens`). The key file holds one or more 32-byte keys by 32-bit id and names the
current one, which seals; every key in the file opens. It looks like this:

    # Forehand cluster token keys: secret, mode 0600.
    current = 2
    [[keys]]
    id = 1
    key = "<64 hex digits>"
    [[keys]]
    id = 2
    key = "<64 hex digits>"

Rotation follows the three steps of `KeyRing` (`forehand certs DIR --add-key`, `--current-key ID`,
`--retire-key ID`; docs/DEPLOYMENT.md, "Rotating the token keys"): `add_cluster_key(path)` appends
a new key (it opens but does not seal), the file is copied to every node and the nodes restarted;
then `rotate_cluster_key(path, key_id)` makes it current on every node; `retire_cluster_key(path,
key_id)` removes the old key once the longest-lived value it sealed (a credential) has expired.
"""

from __future__ import annotations

import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from forehand.core.tokens import KEY_BYTES, KEY_ID_MAX, KEY_RING_KEYS_MAX, KeyRing
from forehand.errors import ConfigError

__all__ = [
    "CLUSTER_KEYS_FILE",
    "ClusterKeys",
    "add_cluster_key",
    "load_cluster_keys",
    "load_key_ring",
    "retire_cluster_key",
    "rotate_cluster_key",
    "write_cluster_keys",
]

CLUSTER_KEYS_FILE = "cluster-keys.toml"
"""The key file's name in a certificate directory written by `forehand certs`."""
_PRIVATE_FILE_MODE = 0o600


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterKeys:
    """The contents of a key file."""

    keys: dict[int, bytes]
    """Every key by id; each opens tokens and credentials sealed under it."""
    current_key_id: int
    """The key that seals."""

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigError("a cluster key file needs at least one key")
        if len(self.keys) > KEY_RING_KEYS_MAX:
            raise ConfigError(f"a cluster key file holds at most {KEY_RING_KEYS_MAX} keys")
        for key_id, key in self.keys.items():
            if not 0 <= key_id <= KEY_ID_MAX:
                raise ConfigError(f"cluster key id {key_id} does not fit 32 bits")
            if len(key) != KEY_BYTES:
                raise ConfigError(f"cluster key {key_id} is {len(key)} bytes, not {KEY_BYTES}")
        if self.current_key_id not in self.keys:
            raise ConfigError(f"current cluster key id {self.current_key_id} is not in the file")

    def key_ring(self) -> KeyRing:
        """A `KeyRing` holding every key, sealing with the current one."""
        return KeyRing(self.keys, current_key_id=self.current_key_id)


def load_cluster_keys(path: Path | str) -> ClusterKeys:
    """Read a key file; a missing, malformed or invalid file raises ConfigError."""
    file = Path(path)
    try:
        document = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read cluster key file {file}: {error}") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"cluster key file {file} is not UTF-8 text (TOML): {error}") from error
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"cluster key file {file} is not valid TOML: {error}") from error
    current = document.get("current")
    entries = document.get("keys")
    if not isinstance(current, int) or not isinstance(entries, list):
        raise ConfigError(f"{file} needs `current = <id>` and [[keys]] entries")
    keys: dict[int, bytes] = {}
    for entry in entries:
        key_id = entry.get("id") if isinstance(entry, dict) else None
        text = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key_id, int) or not isinstance(text, str):
            raise ConfigError(f"{file}: each [[keys]] entry needs an integer id and a hex key")
        if key_id in keys:
            raise ConfigError(f"{file}: key id {key_id} appears twice")
        try:
            keys[key_id] = bytes.fromhex(text)
        except ValueError as error:
            raise ConfigError(f"{file}: key {key_id} is not hexadecimal") from error
    try:
        return ClusterKeys(keys=keys, current_key_id=current)
    except ConfigError as error:
        raise ConfigError(f"{file}: {error}") from error


def load_key_ring(path: Path | str) -> KeyRing:
    """The `KeyRing` of a key file."""
    return load_cluster_keys(path).key_ring()


def write_cluster_keys(path: Path | str, keys: ClusterKeys) -> Path:
    """Write `keys` to `path`, readable by its owner only; returns the path."""
    lines = [
        "# Forehand cluster token keys: secret, keep the mode 0600.",
        "# Every key opens; `current` seals. Rotate with `forehand certs DIR --add-key`, then",
        "# `--current-key ID`, then `--retire-key OLD` (docs/DEPLOYMENT.md).",
        f"current = {keys.current_key_id}",
    ]
    for key_id in sorted(keys.keys):
        lines += ["", "[[keys]]", f"id = {key_id}", f'key = "{keys.keys[key_id].hex()}"']
    file = Path(path)
    descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _PRIVATE_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(file, _PRIVATE_FILE_MODE)
    return file


def add_cluster_key(path: Path | str) -> int:
    """Add a fresh random key to the file at `path` (made if missing); return its id.

    A new file gets key 1, current at once. In an existing file the new key (the highest id plus
    one) opens but does not seal until `rotate_cluster_key` makes it current.
    """
    file = Path(path)
    if not file.exists():
        write_cluster_keys(file, ClusterKeys(keys={1: _new_key()}, current_key_id=1))
        return 1
    existing = load_cluster_keys(file)
    key_id = max(existing.keys) + 1
    keys = {**existing.keys, key_id: _new_key()}
    write_cluster_keys(file, ClusterKeys(keys=keys, current_key_id=existing.current_key_id))
    return key_id


def rotate_cluster_key(path: Path | str, key_id: int) -> None:
    """Make `key_id` the sealing key of the file at `path`."""
    existing = load_cluster_keys(path)
    write_cluster_keys(path, ClusterKeys(keys=existing.keys, current_key_id=key_id))


def retire_cluster_key(path: Path | str, key_id: int) -> None:
    """Remove `key_id` from the file at `path`: what it sealed opens no more. The current key
    cannot be retired (make another current first), nor one the file does not hold."""
    existing = load_cluster_keys(path)
    if key_id not in existing.keys:
        held = ", ".join(map(str, sorted(existing.keys)))
        raise ConfigError(f"cluster key id {key_id} is not in {path} (ids: {held})")
    if key_id == existing.current_key_id:
        raise ConfigError(
            f"cluster key {key_id} seals: make another key current (--current-key) before "
            "retiring it"
        )
    keys = {i: key for i, key in existing.keys.items() if i != key_id}
    write_cluster_keys(path, ClusterKeys(keys=keys, current_key_id=existing.current_key_id))


def _new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)
