"""Sans-IO state machines: the Session Manager, the server and the client cores.

Every core has the driver shape of `CoreDriver`. Events are grouped per core in the modules
`client_events`, `server_events` and `manager_events` (some names, such as `HandoffStarted`, exist
on more than one side and mean that side's view).
"""

from __future__ import annotations

from forehand.core import _client_events as client_events
from forehand.core import _manager_events as manager_events
from forehand.core import _server_events as server_events
from forehand.core._client_config import ClientConfig
from forehand.core._client_map import (
    CLIENT_PLACEMENTS_ENCODING,
    SessionPlacement,
    encode_client_placements,
)
from forehand.core._client_session import RouteState, route_transition_table
from forehand.core._driver import (
    ConnectionCloseRequested,
    ConnectionLost,
    ConnectionOpened,
    CoreDriver,
    NodeId,
    Outbound,
)
from forehand.core._handoff import HandoffPhase, HandoffSide, HandoffTrigger
from forehand.core._handoff import handoff_transition_table as server_handoff_transition_table
from forehand.core._manager_config import FailureDetectorKind, ManagerConfig, RiskPolicyKind
from forehand.core._manager_risk import (
    PredictiveRiskPolicy,
    RiskDecision,
    RiskPolicy,
    RiskSteering,
    ThresholdRiskPolicy,
)
from forehand.core._membership import MemberState
from forehand.core._membership import transition_table as member_transition_table
from forehand.core._orchestrator import transition_table as manager_handoff_transition_table
from forehand.core._part import (
    WAIT_MS_MAX,
    Durability,
    Handler,
    HandlerResult,
    PartSpec,
    PartState,
    PartTrigger,
    part_transition_table,
)
from forehand.core._pool import ConnectionState, connection_transition_table
from forehand.core._server_config import ServerConfig
from forehand.core.client import BackpressureError, ClientCore, RouteView, SessionSnapshot
from forehand.core.manager import ManagerCore
from forehand.core.server import ServerCore
from forehand.core.tokens import (
    CredentialClaims,
    KeyRing,
    ReplayCache,
    ReplayCacheFull,
    TokenClaims,
    TokenError,
    TokenExpired,
    TokenInvalid,
    TokenReplayed,
    TokenSealer,
)

__all__ = [
    "CLIENT_PLACEMENTS_ENCODING",
    "BackpressureError",
    "ClientConfig",
    "ClientCore",
    "ConnectionCloseRequested",
    "ConnectionLost",
    "ConnectionOpened",
    "ConnectionState",
    "CoreDriver",
    "CredentialClaims",
    "Durability",
    "FailureDetectorKind",
    "Handler",
    "HandlerResult",
    "HandoffPhase",
    "HandoffSide",
    "HandoffTrigger",
    "KeyRing",
    "ManagerConfig",
    "ManagerCore",
    "MemberState",
    "NodeId",
    "Outbound",
    "PartSpec",
    "PartState",
    "PartTrigger",
    "PredictiveRiskPolicy",
    "ReplayCache",
    "ReplayCacheFull",
    "RiskDecision",
    "RiskPolicy",
    "RiskPolicyKind",
    "RiskSteering",
    "RouteState",
    "RouteView",
    "ServerConfig",
    "ServerCore",
    "SessionPlacement",
    "SessionSnapshot",
    "ThresholdRiskPolicy",
    "TokenClaims",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenReplayed",
    "TokenSealer",
    "WAIT_MS_MAX",
    "client_events",
    "connection_transition_table",
    "encode_client_placements",
    "manager_events",
    "manager_handoff_transition_table",
    "member_transition_table",
    "part_transition_table",
    "route_transition_table",
    "server_events",
    "server_handoff_transition_table",
]
