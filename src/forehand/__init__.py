"""Forehand: keep long-lived sessions alive by handing them off before a server or path fails.

The application API is `forehand.App` (server side) and `forehand.connect` (client side); both are
imported on first use, so that `import forehand` stays cheap for the command line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from forehand.errors import (
    ConfigError,
    ForehandError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)

# A library leaves its log records to the application: with no logging configured, Python's
# last-resort handler would print the package's warnings to stderr (the logging HOWTO's advice
# for libraries). The `forehand manager` and `server` commands configure their own handler.
logging.getLogger("forehand").addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from forehand.app import NOT_YET, App, HandlerError, NotYet
    from forehand.core import ClientConfig
    from forehand.core.client import BackpressureError
    from forehand.runtime.client import (
        AppError,
        CallError,
        Client,
        HandoffEvent,
        HandoffEventKind,
        RequestFailedError,
        ResultDecodeError,
        Session,
        SessionClosedError,
        SessionOpenError,
        SnapshotError,
        connect,
    )

__version__ = "0.1.0"

__all__ = [
    "NOT_YET",
    "App",
    "AppError",
    "BackpressureError",
    "CallError",
    "Client",
    "ClientConfig",
    "ConfigError",
    "ForehandError",
    "HandlerError",
    "HandoffEvent",
    "HandoffEventKind",
    "LocalProtocolError",
    "NotYet",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestFailedError",
    "ResultDecodeError",
    "Session",
    "SessionClosedError",
    "SessionOpenError",
    "SnapshotError",
    "__version__",
    "connect",
]

_LAZY = {
    "App": "forehand.app",
    "NOT_YET": "forehand.app",
    "NotYet": "forehand.app",
    "HandlerError": "forehand.app",
    "AppError": "forehand.runtime.client",
    "CallError": "forehand.runtime.client",
    "Client": "forehand.runtime.client",
    "BackpressureError": "forehand.core.client",
    "ClientConfig": "forehand.core",
    "HandoffEvent": "forehand.runtime.client",
    "HandoffEventKind": "forehand.runtime.client",
    "RequestFailedError": "forehand.runtime.client",
    "ResultDecodeError": "forehand.runtime.client",
    "Session": "forehand.runtime.client",
    "SessionClosedError": "forehand.runtime.client",
    "SessionOpenError": "forehand.runtime.client",
    "SnapshotError": "forehand.runtime.client",
    "connect": "forehand.runtime.client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'forehand' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names and the lazy ones (PEP 562), so `dir(forehand)` and completion list
    `App`, `connect`, ... before their first use."""
    return sorted({*globals(), *_LAZY})
