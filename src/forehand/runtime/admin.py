"""Operator commands to the Session Manager over a mutually authenticated cluster link.

An operator (or a test) holding a certificate of the cluster CA whose node id the manager lists
in `admin_ids` (`admin` by default; `forehand certs` makes one) connects to the manager like a
cluster node (mutual TLS, HELLO/WELCOME) and sends one CLUSTER_MESSAGE of kind
`ADMIN_MESSAGE_KIND` per command; the manager answers with one of the same kind. A peer that is
not listed gets ERROR(UNAUTHENTICATED) and its connection closes. The commands map onto the
manager core's verbs: `Drain` and `Undrain` a server, `MoveSession` (a planned handoff of one
session's parts), `Rebalance` (even out the servers' primaries), and `Status` (membership and
map version). The admin HTTP API (`forehand.ops`) offers them too, behind a token; this path
needs the cluster CA's certificate instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from forehand.core import ManagerCore
from forehand.core.manager import (
    REBALANCE_PARTS_MAX_DEFAULT,
    REBALANCE_TOLERANCE_DEFAULT,
    rebalance_problem,
)
from forehand.errors import ConfigError
from forehand.runtime.node import ADMIN_MESSAGE_KIND, NodeDriver
from forehand.runtime.transport import ConnectionClosedError, Credentials, TransportError
from forehand.wire import (
    PROTOCOL_VERSION,
    ClusterMessage,
    Error,
    Hello,
    PeerRole,
    ReasonCode,
    Welcome,
)

__all__ = [
    "AdminError",
    "AdminReply",
    "AdminRequest",
    "Drain",
    "MoveSession",
    "Rebalance",
    "ServerStatus",
    "Status",
    "Undrain",
    "admin_request",
    "handle_admin",
]


class AdminError(Exception):
    """The manager could not be reached, or refused the command's connection."""


class Drain(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Move every part off a server (planned handoffs), then keep it empty."""

    server_id: str
    """The server to drain."""


class Undrain(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Make a drained server ACTIVE again."""

    server_id: str
    """The server."""


class MoveSession(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A planned handoff of every part of one session, to `target` or wherever is best."""

    session_id: bytes
    """The session (16 bytes)."""
    target: str | None = None
    """The server to move to; None lets the manager choose."""
    reason: int = int(ReasonCode.REBALANCE)
    """The reason code clients see in HANDOFF."""


class Rebalance(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Planned handoffs from the servers above their share of the primaries to those below
    (`ManagerCore.rebalance`)."""

    tolerance: float = REBALANCE_TOLERANCE_DEFAULT
    """Servers more than this share above theirs give parts back, those more than it below
    theirs are filled (0 to 10)."""
    parts_max: int = REBALANCE_PARTS_MAX_DEFAULT
    """Most parts queued."""


class Status(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Ask for the membership and the map version."""


AdminRequest = Drain | Undrain | MoveSession | Rebalance | Status
"""Every command an operator can send."""


class ServerStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One member as the manager sees it."""

    server_id: str
    """Its id."""
    address: str
    """Where it listens."""
    member_state: str
    """Liveness: joining, alive, suspected, dead, ..."""
    map_state: str
    """Its state in the shard map (active, draining, dead), or "" when not in the map."""


class AdminReply(msgspec.Struct, frozen=True, kw_only=True):
    """The manager's answer to one command."""

    ok: bool
    """Whether the command was accepted."""
    detail: str = ""
    """What happened, for people."""
    queued: int = 0
    """Parts queued for a move (MoveSession, Rebalance)."""
    replica_roles_queued: bool = False
    """Rebalance found the primaries even and queued one commit moving replica roles."""
    map_version: int = 0
    """The manager's map version after the command."""
    servers: tuple[ServerStatus, ...] = ()
    """The membership (Status)."""


REPLICA_REBALANCE_QUEUED = (
    "the primaries are even; one commit moving replica roles to the servers below their share "
    "of them is queued (at most replica_moves_per_commit_max roles, each from a part whose other "
    "replica is caught up; ReplicasRebalanced in the manager's log says how many; run again for "
    "more)"
)
"""What a rebalance that moved no primary but queued a replica commit says."""

SESSION_ID_BYTES = 16
"""Length of a session id."""
SHOWN_ID_CHARACTERS_MAX = 80
"""Longest id a reply quotes whole."""

_request_decoder = msgspec.msgpack.Decoder(AdminRequest)
_reply_decoder = msgspec.msgpack.Decoder(AdminReply)
_encoder = msgspec.msgpack.Encoder()


def handle_admin(driver: NodeDriver, body: bytes) -> bytes:
    """Run one admin command on the manager core behind `driver`; the encoded reply."""
    try:
        request = _request_decoder.decode(body)
    except msgspec.DecodeError as error:
        return _encoder.encode(AdminReply(ok=False, detail=f"malformed command: {error}"))
    reply = driver.command(lambda core, now_us: _run(core, request, now_us))
    return _encoder.encode(reply)


def _knows_server(core: ManagerCore, server_id: str) -> bool:
    if core.membership.get(server_id) is not None:
        return True
    if core.shard_map is None:
        return False
    try:
        core.shard_map.server(server_id)
    except KeyError:
        return False
    return True


def _shown(name: str) -> str:
    """An id as a reply quotes it: cut, so a huge bogus id does not come back whole."""
    if len(name) > SHOWN_ID_CHARACTERS_MAX:
        name = name[:SHOWN_ID_CHARACTERS_MAX] + "..."
    return repr(name)


def _problem(core: ManagerCore, request: AdminRequest) -> str | None:
    """Why `request` cannot be done as asked, said plainly; None when the core may try it."""
    if isinstance(request, Drain | Undrain):
        if not _knows_server(core, request.server_id):
            return f"no server {_shown(request.server_id)} in the cluster"
        return None
    if isinstance(request, Rebalance):
        return rebalance_problem(request.tolerance, request.parts_max)
    if not isinstance(request, MoveSession):
        return None
    if len(request.session_id) != SESSION_ID_BYTES:
        return f"a session id is {SESSION_ID_BYTES} bytes, got {len(request.session_id)}"
    try:
        ReasonCode(request.reason)
    except ValueError:
        return f"unknown reason code {request.reason}"
    current = core.shard_map
    if current is None or not any(
        key.session_id == request.session_id for key in current.part_keys()
    ):
        return f"no session {request.session_id.hex()} in the shard map"
    if request.target is not None and not _knows_server(core, request.target):
        return f"no server {_shown(request.target)} in the cluster"
    return None


def _run(core: ManagerCore, request: AdminRequest, now_us: int) -> AdminReply:
    problem = _problem(core, request)
    if problem is not None:
        return AdminReply(ok=False, detail=problem, map_version=core.map_version)
    if isinstance(request, Drain):
        ok = core.drain(request.server_id, now_us=now_us)
        detail = "draining" if ok else "not ACTIVE, already draining, or the commit queue is full"
    elif isinstance(request, Undrain):
        ok = core.undrain(request.server_id, now_us=now_us)
        detail = "undrained" if ok else "not a DRAINING server, or the commit queue is full"
    elif isinstance(request, Rebalance):
        queued = core.rebalance(
            tolerance=request.tolerance, parts_max=request.parts_max, now_us=now_us
        )
        replicas = not queued and core.rebalance_replicas(tolerance=request.tolerance)
        if queued:
            detail = f"{queued} part(s) queued"
        elif replicas:
            detail = REPLICA_REBALANCE_QUEUED
        else:
            detail = (
                "nothing to move: every server that takes parts is within the tolerance or a "
                "whole part of its share, of the primaries and of the replica roles, or none has "
                "one to spare"
            )
        return AdminReply(
            ok=True,
            detail=detail,
            queued=queued,
            replica_roles_queued=replicas,
            map_version=core.map_version,
        )
    elif isinstance(request, MoveSession):
        queued = core.handoff(
            request.session_id,
            target=request.target,
            reason=ReasonCode.from_wire(request.reason),
            now_us=now_us,
        )
        return AdminReply(
            ok=queued > 0,
            detail=(
                f"{queued} part(s) queued"
                if queued
                else "no part was queued: already there, or already moving"
            ),
            queued=queued,
            map_version=core.map_version,
        )
    else:
        return AdminReply(ok=True, map_version=core.map_version, servers=_servers(core))
    return AdminReply(ok=ok, detail=detail, map_version=core.map_version)


def _servers(core: ManagerCore) -> tuple[ServerStatus, ...]:
    current = core.shard_map
    result = []
    for member in core.membership.members():
        map_state = ""
        if current is not None:
            try:
                map_state = current.server(member.server_id).state.value
            except KeyError:
                map_state = ""
        result.append(
            ServerStatus(
                server_id=member.server_id,
                address=member.address,
                member_state=member.state.value,
                map_state=str(map_state),
            )
        )
    return tuple(result)


async def admin_request(
    manager: str,
    request: AdminRequest,
    *,
    certs_dir: Path | str,
    node_id: str = "admin",
    manager_id: str = "manager",
    timeout_s: float = 10.0,
) -> AdminReply:
    """Send one command to the manager at `manager` as node `node_id`.

    `manager` is `host:port`, or several separated by commas (the managers of an etcd
    deployment): they are tried in order, and the first that accepts the connection answers.
    Standby managers do not listen, so a refused connection moves on to the next endpoint; a
    manager that accepts and then refuses the command raises at once.
    """
    from forehand.runtime.config import parse_address

    endpoints = [part.strip() for part in manager.split(",") if part.strip()]
    if not endpoints:
        raise AdminError("no manager endpoint given")
    addresses = [parse_address(endpoint, where="manager", dialable=True) for endpoint in endpoints]
    credentials = _operator_credentials(Path(certs_dir), node_id)
    refused: list[str] = []
    for (host, port), endpoint in zip(addresses, endpoints, strict=True):
        try:
            return await _admin_request_one(
                host, port, request, credentials, manager_id=manager_id, timeout_s=timeout_s
            )
        except (TransportError, OSError, TimeoutError) as error:
            detail = str(error) or type(error).__name__
            refused.append(detail if endpoint in detail else f"{endpoint}: {detail}")
    raise AdminError("no manager accepted the connection (" + "; ".join(refused) + ")")


def _operator_credentials(certs_dir: Path, node_id: str) -> Credentials:
    """The operator's credentials, checked here: a missing or unreadable file is the operator's
    problem, not a manager's refusal, and is reported as such (ConfigError)."""
    from forehand.runtime.certs import check_node_credentials

    credentials = Credentials.for_node(certs_dir, node_id)
    for path in (credentials.certificate_path, credentials.private_key_path):
        if path is not None and not path.is_file():
            raise ConfigError(
                f"missing {path}: the operator's certificate (`forehand certs {certs_dir}` "
                f"issues {node_id!r})"
            )
    check_node_credentials(certs_dir, node_id)
    return credentials


async def _admin_request_one(
    host: str,
    port: int,
    request: AdminRequest,
    credentials: Credentials,
    *,
    manager_id: str,
    timeout_s: float,
) -> AdminReply:
    from forehand.runtime._tls import TLSTransport

    transport = TLSTransport(credentials)
    async with asyncio.timeout(timeout_s):
        connection = await transport.connect(
            host, port, server_id=manager_id, peer_role=PeerRole.CLUSTER_NODE
        )
        try:
            connection.send_frame(Hello(versions=(PROTOCOL_VERSION,), client_id=b"\0" * 15 + b"\1"))
            welcome = await connection.receive()
            if not isinstance(welcome, Welcome):
                raise AdminError(f"the manager answered HELLO with {welcome!r}")
            connection.send_frame(
                ClusterMessage(kind=ADMIN_MESSAGE_KIND, body=_encoder.encode(request))
            )
            while True:
                frame = await connection.receive()
                if isinstance(frame, Error):
                    raise AdminError(f"the manager refused: {frame.code.name} {frame.reason}")
                if isinstance(frame, ClusterMessage) and frame.kind == ADMIN_MESSAGE_KIND:
                    return _reply_decoder.decode(frame.body)
        except ConnectionClosedError as error:
            raise AdminError(f"the manager closed the connection: {error}") from error
        finally:
            connection.close()
            await connection.wait_closed()
