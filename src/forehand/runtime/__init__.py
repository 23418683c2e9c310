"""The asyncio runtime: transports that feed the sans-IO cores and drain them, certificates, loop.

`forehand.runtime.transport` defines the one `Transport` interface; `TLSTransport` (TLS 1.3 over
TCP), `QUICTransport` (QUIC on qh3) and `MemoryTransport` (in-memory, for tests) implement it.
`forehand.runtime.certs` makes a cluster CA and node certificates; `forehand.runtime.loop` runs
the loop on uvloop and refuses to start under `python -O`. `forehand.runtime.node.NodeDriver`
runs any core on those transports; `forehand.runtime.process` holds the `forehand manager` and
`forehand server` processes (configured by `forehand.runtime.config`, with the cluster token keys
of `forehand.runtime.keys` and the operator commands of `forehand.runtime.admin`), and
`forehand.runtime.client` the client SDK (`forehand.connect`).
"""

from __future__ import annotations

from forehand.runtime._memory import (
    MemoryConnection,
    MemoryNetwork,
    MemoryTransport,
    MemoryTransportConfig,
)
from forehand.runtime._quic import (
    QUICConnection,
    QUICListener,
    QUICTransport,
    QUICTransportConfig,
)
from forehand.runtime._tls import TLSConnection, TLSListener, TLSTransport, TLSTransportConfig
from forehand.runtime.admin import AdminError, AdminReply, admin_request
from forehand.runtime.certs import (
    ClusterCertificates,
    NodeCertificate,
    make_cluster_certs,
)
from forehand.runtime.client import Client, HandoffEvent, HandoffEventKind, Session, connect
from forehand.runtime.config import (
    ManagerProcessConfig,
    ServerProcessConfig,
    load_manager_config,
    load_server_config,
)
from forehand.runtime.keys import (
    CLUSTER_KEYS_FILE,
    ClusterKeys,
    add_cluster_key,
    load_cluster_keys,
    load_key_ring,
    rotate_cluster_key,
)
from forehand.runtime.loop import (
    AssertionsDisabledError,
    loop_factory,
    require_assertions,
    run,
    uvloop_available,
)
from forehand.runtime.node import DriverConfig, NodeDriver, Resolver, Route
from forehand.runtime.process import run_manager, run_server
from forehand.runtime.transport import (
    ALPN,
    CertificateNotVerifiedError,
    CloseInfo,
    CloseInitiator,
    Connection,
    ConnectionClosedError,
    ConnectionLimits,
    Credentials,
    FrameHandler,
    HandshakeError,
    Listener,
    PathStats,
    Transport,
    TransportError,
    create_transport,
    register_transport,
    transport_names,
)

__all__ = [
    "ALPN",
    "CLUSTER_KEYS_FILE",
    "AdminError",
    "AdminReply",
    "AssertionsDisabledError",
    "Client",
    "CloseInfo",
    "CloseInitiator",
    "ClusterCertificates",
    "ClusterKeys",
    "Connection",
    "ConnectionClosedError",
    "ConnectionLimits",
    "Credentials",
    "DriverConfig",
    "FrameHandler",
    "HandoffEvent",
    "HandoffEventKind",
    "CertificateNotVerifiedError",
    "HandshakeError",
    "Listener",
    "ManagerProcessConfig",
    "MemoryConnection",
    "MemoryNetwork",
    "MemoryTransport",
    "MemoryTransportConfig",
    "NodeCertificate",
    "NodeDriver",
    "PathStats",
    "QUICConnection",
    "QUICListener",
    "QUICTransport",
    "QUICTransportConfig",
    "Resolver",
    "Route",
    "ServerProcessConfig",
    "Session",
    "TLSConnection",
    "TLSListener",
    "TLSTransport",
    "TLSTransportConfig",
    "Transport",
    "TransportError",
    "add_cluster_key",
    "admin_request",
    "connect",
    "create_transport",
    "load_cluster_keys",
    "load_key_ring",
    "load_manager_config",
    "load_server_config",
    "loop_factory",
    "make_cluster_certs",
    "register_transport",
    "require_assertions",
    "rotate_cluster_key",
    "run",
    "run_manager",
    "run_server",
    "transport_names",
    "uvloop_available",
]
