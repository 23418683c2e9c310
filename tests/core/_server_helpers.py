"""Helpers for server-core tests: servers wired by a `Router`, with the manager and clients faked.

The test plays the manager (it owns the `ShardMap`, publishes versions and sends handoff and
failover messages) and the clients (it sends frames and reads what came back from inboxes).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from forehand.core._part import Durability, HandlerResult, PartSpec
from forehand.core._server_config import ServerConfig
from forehand.core.messages import (
    FailoverPrepared,
    HandoffAssigned,
    MapPublished,
    PartRef,
)
from forehand.core.server import ServerCore
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.placement import PartKey, Placement, PlacementConfig, ShardMap, new_session_id
from forehand.wire import (
    PROTOCOL_VERSION,
    Credential,
    Hello,
    ReasonCode,
    Request,
    Response,
    ResponseStatus,
)

if TYPE_CHECKING:
    from tests.core.conftest import Router
else:
    from conftest import Router

T = TypeVar("T")

MANAGER = "manager"
SESSION = new_session_id(now_ms=1_700_000_000_000, rng=random.Random(7))
OTHER_SESSION = new_session_id(now_ms=1_700_000_000_001, rng=random.Random(8))
CLUSTER_KEY = bytes(range(32))


def counter(state: Any, op: str, payload: bytes) -> HandlerResult:
    """A deterministic counter: `add n` adds, `get` reads, `boom` raises, others are unknown."""
    if op == "add":
        total = int(state) + int(payload)
        return HandlerResult(state=total, status=ResponseStatus.OK, result=str(total).encode())
    if op == "get":
        return HandlerResult(state=state, status=ResponseStatus.OK, result=str(state).encode())
    if op == "boom":
        raise ValueError("application bug")
    return HandlerResult(state=state, status=ResponseStatus.UNKNOWN_OP, result=b"")


SPECS = {
    "counter": PartSpec(handler=counter, initial_state=lambda: 0, read_ops=frozenset({"get"})),
    "ledger": PartSpec(handler=counter, initial_state=lambda: 0, durability=Durability.REPLICATED),
}


def sealer(seed: int = 1) -> TokenSealer:
    """A token sealer under the cluster key."""
    return TokenSealer(KeyRing({1: CLUSTER_KEY}, current_key_id=1), rng=random.Random(seed))


def wire_servers(
    router: Router, server_ids: Iterable[str], **overrides: Any
) -> dict[str, ServerCore]:
    """Real server cores for a test with a real manager: the i-th in `zone-i`, seeded with i,
    added to `router` (the caller runs it)."""
    servers: dict[str, ServerCore] = {}
    for index, server_id in enumerate(server_ids):
        config = ServerConfig(
            server_id=server_id,
            address=f"{server_id}.test:4433",
            zone=f"zone-{index}",
            **overrides,
        )
        servers[server_id] = ServerCore(
            config=config, parts=SPECS, sealer=sealer(), rng=random.Random(index)
        )
        router.add(servers[server_id])
    return servers


def ref(part: str, session: bytes = SESSION) -> PartRef:
    """The `PartRef` of a part of `session`."""
    return PartRef(session_id=session, part=part)


class Cluster:
    """Servers wired by a router; the test is the manager and the clients."""

    def __init__(
        self,
        servers: Iterable[str] = ("s1", "s2", "s3"),
        *,
        replica_count: int = 2,
        seed: int = 11,
        specs: Mapping[str, PartSpec] = SPECS,
        **overrides: Any,
    ) -> None:
        self.router = Router()
        self.specs = specs
        self.overrides = overrides
        self.servers: dict[str, ServerCore] = {}
        for index, server_id in enumerate(servers):
            self.start(server_id, seed=seed + index, **overrides)
        self.map = ShardMap.empty(config=PlacementConfig(replica_count=replica_count))
        joins = [
            self.map.join_server(server_id=server_id, address=f"{server_id}.test:4433", zone="z")
            for server_id in self.servers
        ]
        self.map = self.map.apply(
            self.map.delta(*(operation for delta in joins for operation in delta.operations))
        )
        self.publish_full()
        self.next_request_id = 1

    def start(self, server_id: str, *, seed: int = 11, **overrides: Any) -> ServerCore:
        """Start (or restart) a server core and wire it in (with the cluster's overrides)."""
        config = replace(ServerConfig(server_id=server_id), **{**self.overrides, **overrides})
        core = ServerCore(
            config=config, parts=self.specs, sealer=sealer(seed), rng=random.Random(seed)
        )
        self.servers[server_id] = core
        self.router.add(core)
        self.router.run()
        return core

    def server(self, server_id: str) -> ServerCore:
        """One server core."""
        return self.servers[server_id]

    # The manager's part.

    def publish_full(self, *, to: Iterable[str] | None = None) -> None:
        """Send the whole current map to the servers."""
        message = MapPublished(map_version=self.map.version, base_version=0, body=self.map.encode())
        for server_id in to if to is not None else list(self.servers):
            self.router.send(MANAGER, server_id, message)

    def publish(self, *operations: Any, to: Iterable[str] | None = None) -> MapPublished:
        """Apply a delta of `operations` and send it to the servers."""
        delta = self.map.delta(*operations)
        self.map = self.map.apply(delta)
        message = MapPublished(
            map_version=self.map.version,
            base_version=delta.base_version,
            body=ShardMap.encode_delta(delta),
        )
        for server_id in to if to is not None else list(self.servers):
            self.router.send(MANAGER, server_id, message)
        return message

    def place(
        self,
        part: str,
        primary: str,
        *replicas: str,
        session: bytes = SESSION,
        to: Iterable[str] | None = None,
    ) -> MapPublished:
        """Create `part` (if new) and pin it on `primary` with `replicas`, in one map version."""
        key = PartKey(session_id=session, part=part)
        operations: list[Any] = []
        if key not in self.map:
            operations.extend(self.map.add_session_parts(session, [part]).operations)
        operations.extend(
            self.map.override_placement(
                key, Placement(primary=primary, replicas=tuple(replicas))
            ).operations
        )
        return self.publish(*operations, to=to)

    def assign_handoff(
        self,
        part_refs: Iterable[PartRef],
        *,
        source: str,
        target: str,
        handoff_id: int = 77,
        deadline_ms: int = 1000,
        to: Iterable[str] | None = None,
    ) -> HandoffAssigned:
        """Send `HandoffAssigned` (the map at the current version) to `to` (both by default)."""
        message = HandoffAssigned(
            handoff_id=handoff_id,
            parts=tuple(part_refs),
            source=source,
            target=target,
            map_version=self.map.version,
            reason=int(ReasonCode.PREDICTED_FAILURE),
            deadline_ms=deadline_ms,
        )
        for server_id in to if to is not None else (source, target):
            self.router.send(MANAGER, server_id, message)
        return message

    def prepare_failover(self, part_refs: Iterable[PartRef], *, to: Iterable[str]) -> None:
        """Fence the parts on `to` at the next map version."""
        message = FailoverPrepared(map_version=self.map.version + 1, parts=tuple(part_refs))
        for server_id in to:
            self.router.send(MANAGER, server_id, message)

    # The clients' part.

    def request(
        self,
        server: str,
        part: str,
        op: str = "add",
        payload: bytes = b"1",
        *,
        client: str = "c1",
        request_id: int | None = None,
        session: bytes = SESSION,
        map_version: int | None = None,
        bind: bool = True,
        wait_budget_ms: int | None = None,
    ) -> int:
        """Send one REQUEST from `client` to `server` (after a HELLO that binds the session to
        the client's connection, unless `bind` is False); returns its request id."""
        if request_id is None:
            request_id = self.next_request_id
            self.next_request_id += 1
        if bind:
            self.bind(server, client=client, session=session)
        self.router.send(
            client,
            server,
            Request(
                request_id=request_id,
                session_id=session,
                part=part,
                op=op,
                map_version=self.map.version if map_version is None else map_version,
                payload=payload,
                wait_budget_ms=wait_budget_ms,
            ),
        )
        return request_id

    def bind(self, server: str, *, client: str = "c1", session: bytes = SESSION) -> None:
        """Send a HELLO presenting `session`'s credential, binding it to `client`'s connection."""
        credential = sealer().issue_credential(
            session_id=session, client_id=bytes(16), now_us=self.router.now_us, lifetime_ms=60_000
        )
        hello = Hello(
            versions=(PROTOCOL_VERSION,),
            client_id=bytes(16),
            credentials=(Credential(session_id=session, credential=credential),),
        )
        self.router.send(client, server, hello)

    def responses(self, client: str = "c1") -> list[Response]:
        """Pop the RESPONSE frames `client` received."""
        return self.router.take(client, Response)

    def take(self, node: str, kind: type[T]) -> list[T]:
        """Pop the messages of type `kind` that a fake node (client or manager) received."""
        return self.router.take(node, kind)

    def events(self, server: str, kind: type[T]) -> list[T]:
        """The events of type `kind` a server emitted so far."""
        return self.router.events_of(server, kind)
