"""Sans-IO state machines: the Session Manager, the server and the client cores."""

from __future__ import annotations

from forehand.core._driver import CoreDriver, NodeId, Outbound

__all__ = ["CoreDriver", "NodeId", "Outbound"]
