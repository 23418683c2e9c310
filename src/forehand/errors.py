"""The error hierarchy shared by every layer.

A `ProtocolError` says that someone broke the `forehand/1` rules: `LocalProtocolError` when this
process misused an API (a programming error on our side), `RemoteProtocolError` when the peer sent
something invalid. A remote error carries a wire error code so the adapter can tell the peer why
its connection is being closed. `ConfigError` covers invalid configuration. All of them, and the
client SDK's errors (`forehand.runtime.client`), are `ForehandError`s, so that one `except`
catches whatever the library raises.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ForehandError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class ForehandError(Exception):
    """Base class of every error the library raises."""


class ProtocolError(ForehandError):
    """Base class of protocol violations."""

    def __init__(self, message: str, *, error_code: int = 0x01) -> None:
        super().__init__(message)
        self.error_code = error_code
        """The ERROR frame code that describes this violation to the peer."""


class LocalProtocolError(ProtocolError):
    """This process used the API in a way the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow; close only its connection."""


class ConfigError(ForehandError, ValueError):
    """A configuration value is missing, malformed or out of range."""
