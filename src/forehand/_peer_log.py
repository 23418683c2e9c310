"""The mark of a log line a peer's input causes (no imports: every layer uses it)."""

from __future__ import annotations

__all__ = ["PEER_CAUSED"]

PEER_CAUSED = {"peer_caused": True}
"""The `extra` of a log line a peer's input causes (a violation, a handshake that timed out, a
refused open): the process log lets only so many of each kind through (`forehand.ops.logs.
PeerLogLimiter`), so a flood of bad input cannot fill the disk."""
