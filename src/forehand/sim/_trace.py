"""The trace digest: a running blake2b over a canonical line per simulated input and observation.

Two runs of the same seed must produce the same digest; a difference means something in the run
depended on more than the seed (iteration over a set of strings, a wall-clock read, an object
address in a message's repr). Lines are hashed in batches to keep the per-event cost low.
"""

from __future__ import annotations

import hashlib

from forehand.errors import ConfigError

__all__ = ["TRACE_FLUSH_LINES", "TraceDigest"]

TRACE_FLUSH_LINES = 1_024
"""Lines buffered before they are hashed; bounds the buffer and amortizes the hashing calls."""

TRACE_DIGEST_BYTES = 16
"""Size of the digest; 128 bits is plenty to tell runs apart."""

_UNSTABLE_REPR_MARK = " at 0x"
"""What the default object repr contains: an address that changes from one process to the next."""


class TraceDigest:
    """Accumulates trace lines into a digest, optionally keeping them for a replay diff."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=TRACE_DIGEST_BYTES)
        self.pending: list[str] = []
        """Lines not hashed yet; the simulator appends to it directly on its hot path."""
        self.kept: list[str] | None = None
        """Every line of the run when keeping was asked for, else None."""
        self.line_count = 0
        """Lines hashed so far."""

    def keep_lines(self) -> None:
        """Keep every line from now on (for printing a trace or diffing two runs)."""
        if self.kept is None:
            self.kept = []

    def flush(self) -> None:
        """Hash the pending lines."""
        pending = self.pending
        if not pending:
            return
        pending.append("")
        blob = "\n".join(pending)
        if _UNSTABLE_REPR_MARK in blob:
            line = next(item for item in pending if _UNSTABLE_REPR_MARK in item)
            # The batch cannot be hashed reproducibly; drop it so the failed run still has a digest.
            pending.clear()
            raise ConfigError(
                "a message or observation has no stable repr (it shows an object address), so "
                f"the trace cannot be reproduced; give it a dataclass repr: {line!r}"
            )
        self._hash.update(blob.encode("utf-8"))
        self.line_count += len(pending) - 1
        if self.kept is not None:
            self.kept.extend(pending[:-1])
        pending.clear()

    def hexdigest(self) -> str:
        """The digest of every line so far."""
        self.flush()
        return self._hash.hexdigest()
