"""The asyncio runtime: transports that feed the sans-IO cores and drain them, certificates, loop.

`forehand.runtime.transport` defines the one `Transport` interface; `TLSTransport` (TLS 1.3 over
TCP), `QUICTransport` (QUIC on qh3) and `MemoryTransport` (in-memory, for tests) implement it.
`forehand.runtime.certs` makes a cluster CA and node certificates; `forehand.runtime.loop` runs
the loop on uvloop and refuses to start under `python -O`.
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
from forehand.runtime.certs import (
    ClusterCertificates,
    NodeCertificate,
    make_cluster_certs,
)
from forehand.runtime.loop import (
    AssertionsDisabledError,
    loop_factory,
    require_assertions,
    run,
    uvloop_available,
)
from forehand.runtime.transport import (
    ALPN,
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
    "AssertionsDisabledError",
    "CloseInfo",
    "CloseInitiator",
    "ClusterCertificates",
    "Connection",
    "ConnectionClosedError",
    "ConnectionLimits",
    "Credentials",
    "FrameHandler",
    "HandshakeError",
    "Listener",
    "MemoryConnection",
    "MemoryNetwork",
    "MemoryTransport",
    "MemoryTransportConfig",
    "NodeCertificate",
    "PathStats",
    "QUICConnection",
    "QUICListener",
    "QUICTransport",
    "QUICTransportConfig",
    "TLSConnection",
    "TLSListener",
    "TLSTransport",
    "TLSTransportConfig",
    "Transport",
    "TransportError",
    "create_transport",
    "loop_factory",
    "make_cluster_certs",
    "register_transport",
    "require_assertions",
    "run",
    "transport_names",
    "uvloop_available",
]
