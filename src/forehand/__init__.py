"""Forehand: keep long-lived sessions alive by handing them off before a server or path fails."""

from __future__ import annotations

from forehand.errors import ConfigError, LocalProtocolError, ProtocolError, RemoteProtocolError

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "__version__",
]
