"""Helpers for manager-core tests: a `ManagerCore` on a `Router`, servers and clients faked.

The test plays the servers (it announces them, heartbeats for them, answers FailoverPrepared and
reports handoffs) and the clients (OPEN_SESSION, MAP_REQUEST, HELLO); the manager's store is a
`MemoryStore` the router runs synchronously, unless a test holds results back by hand.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

from forehand.core._manager_config import ManagerConfig
from forehand.core._orchestrator import MoveOrigin, MoveRequest
from forehand.core.manager import ManagerCore
from forehand.core.messages import (
    FailoverPrepared,
    HandoffAssigned,
    HandoffCompleted,
    HeartbeatReported,
    LoadReport,
    PartProgress,
    PartRef,
    PartRole,
    PositionsReported,
    ServerAnnounced,
)
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.placement import PartKey, Placement, PlacementConfig, ShardMap
from forehand.predict import Action, AlarmState, Decision, RiskLevel
from forehand.stores import (
    DeltaCommitRequested,
    MapLoadRequested,
    MemoryStore,
    SnapshotSaveRequested,
    StoreResult,
)
from forehand.wire import OpenSession, ReasonCode, SessionOpened

if TYPE_CHECKING:
    from tests.core.conftest import Router
else:
    from conftest import Router

T = TypeVar("T")

MANAGER = "manager"
CLUSTER_KEY = bytes(range(32))
IDLE = LoadReport(
    cpu_utilization=0.1, queue_depth=0, latency_us_p99=1_000, error_ratio=0.0, requests_per_second=1
)


def execute(store: MemoryStore, request: object) -> StoreResult:
    """Run a store request a core emitted (typed `object` by the driver shape)."""
    assert isinstance(request, MapLoadRequested | DeltaCommitRequested | SnapshotSaveRequested)
    return store.execute(request)


def sealer(seed: int = 1, keys: dict[int, bytes] | None = None, sealing: int = 1) -> TokenSealer:
    """A token sealer under the cluster key (or `keys`, sealing with key id `sealing`)."""
    ring = KeyRing(keys if keys is not None else {1: CLUSTER_KEY}, current_key_id=sealing)
    return TokenSealer(ring, rng=random.Random(seed))


def load(cpu: float = 0.1, latency_us_p99: int = 1_000) -> LoadReport:
    """A load report with the given CPU utilization and p99 latency."""
    return LoadReport(
        cpu_utilization=cpu,
        queue_depth=0,
        latency_us_p99=latency_us_p99,
        error_ratio=0.0,
        requests_per_second=1.0,
    )


def manager_config(**overrides: Any) -> ManagerConfig:
    """Test defaults: no jitter, 100 ms heartbeats, short timeouts; overridable."""
    values: dict[str, Any] = {
        "heartbeat_interval_ms": 100,
        "suspect_timeout_ms": 300,
        "failure_timeout_ms": 600,
        "failover_prepare_timeout_ms": 200,
        "handoff_jitter_ms_max": 0,
        "handoff_deadline_ms": 1_000,
        "handoff_deadline_grace_ms": 200,
    }
    values.update(overrides)
    names = {field.name for field in fields(ManagerConfig)}
    assert set(values) <= names, set(values) - names
    return ManagerConfig(**values)


class ManagerHarness:
    """A manager on a router, with a memory store and hand-played servers and clients."""

    def __init__(
        self,
        *,
        seed: int = 1,
        replica_count: int = 2,
        store: MemoryStore | None = None,
        risk_policy: Any = None,
        keys: dict[int, bytes] | None = None,
        sealing_key_id: int = 1,
        **overrides: Any,
    ) -> None:
        self.router = Router()
        self.store = store if store is not None else MemoryStore()
        self.config = manager_config(**overrides)
        self.manager = ManagerCore(
            config=self.config,
            placement_config=PlacementConfig(replica_count=replica_count),
            sealer=sealer(keys=keys, sealing=sealing_key_id),
            rng=random.Random(seed),
            now_us=0,
            risk_policy=risk_policy,
        )
        self.router.store_executors[MANAGER] = self.execute
        self.router.add(self.manager)
        self.router.run()
        self.sequences: dict[str, int] = {}
        self.incarnations: dict[str, int] = {}
        self.loads: dict[str, LoadReport] = {}
        self.leaving: set[str] = set()
        """Servers whose heartbeats say `leaving` (stopping on SIGTERM)."""
        self.departed: set[str] = set()
        """Servers whose heartbeats say `left` (a leaving server's last one)."""
        self.next_request_id = 1

    def execute(self, request: object) -> object:
        """Run one of the manager's store requests on the memory store."""
        return execute(self.store, request)

    # The servers' part.

    def announce(
        self, server_id: str, *, incarnation: int = 1, parts: tuple[str, ...] = ()
    ) -> None:
        """A server (re)starts and announces itself (saying its app declares `parts`, if any)."""
        self.incarnations[server_id] = incarnation
        self.sequences[server_id] = 0
        message = ServerAnnounced(
            server_id=server_id,
            incarnation=incarnation,
            address=f"{server_id}.test:4433",
            zone=f"zone-{server_id}",
            weight=1.0,
            parts=parts,
        )
        self.router.send(server_id, MANAGER, message)

    def join(self, *servers: str) -> None:
        """Announce servers and let their joins commit."""
        for server_id in servers:
            self.announce(server_id)

    def heartbeat(
        self,
        server_id: str,
        *,
        cpu: float | None = None,
        parts: Iterable[PartProgress] = (),
        latency_us_p99: int = 1_000,
        renewed: Iterable[bytes] = (),
        declared: tuple[str, ...] = (),
        map_version: int | None = None,
    ) -> None:
        """One heartbeat from `server_id` (its load stays what it last reported), reporting the
        `renewed` sessions' credentials (and the `declared` parts of its app, if any), and
        `map_version` as the version it holds (the manager's, unless given)."""
        if cpu is not None:
            self.loads[server_id] = load(cpu, latency_us_p99)
        self.sequences[server_id] = self.sequences.get(server_id, 0) + 1
        message = HeartbeatReported(
            server_id=server_id,
            incarnation=self.incarnations.get(server_id, 1),
            sequence=self.sequences[server_id],
            map_version=self.manager.map_version if map_version is None else map_version,
            load=self.loads.get(server_id, IDLE),
            parts=tuple(parts),
            renewed_sessions=tuple(renewed),
            declared_parts=declared,
            leaving=server_id in self.leaving or server_id in self.departed,
            left=server_id in self.departed,
        )
        self.router.send(server_id, MANAGER, message)

    def tick(self, ms: int, *, alive: Iterable[str], holding: dict[str, int] | None = None) -> None:
        """Let `ms` pass in heartbeat intervals, the `alive` servers heartbeating each time (a
        server in `holding` reporting that map version, as one that hears nothing new)."""
        servers = list(alive)
        held = holding or {}
        step = self.config.heartbeat_interval_ms
        for _ in range(ms // step):
            for server_id in servers:
                self.heartbeat(server_id, map_version=held.get(server_id))
            self.router.advance(ms=step)
        self.router.advance(ms=ms % step)

    def positions(self, server_id: str, fence_version: int, seqs: dict[PartRef, int]) -> None:
        """A replica answers FailoverPrepared with its applied sequence numbers."""
        parts = tuple(
            PartProgress(ref=ref, role=PartRole.REPLICA, applied_seq=seq, epoch=1)
            for ref, seq in seqs.items()
        )
        message = PositionsReported(server_id=server_id, map_version=fence_version, parts=parts)
        self.router.send(server_id, MANAGER, message)

    def move(
        self,
        ref: PartRef,
        *,
        source: str,
        target: str,
        reason: ReasonCode = ReasonCode.PLANNED_MAINTENANCE,
    ) -> bool:
        """An operator's move of `ref` from `source` to `target`, queued now; whether it was."""
        move = MoveRequest(
            ref=ref,
            source=source,
            reason=reason,
            origin=MoveOrigin.OPERATOR,
            target=target,
            requested_us=self.router.now_us,
        )
        return self.manager.orchestrator.request_move(move)

    def prepared(self, server_id: str) -> list[FailoverPrepared]:
        """The FailoverPrepared messages `server_id` received since last asked."""
        return self.router.take(server_id, FailoverPrepared)

    # The clients' part.

    def open_session(self, parts: tuple[str, ...] = ("auth", "cart"), client: str = "c1") -> Any:
        """OPEN_SESSION from `client`; the SESSION_OPENED it got (or None)."""
        request_id = self.next_request_id
        self.next_request_id += 1
        self.router.send(client, MANAGER, OpenSession(request_id=request_id, parts=parts))
        opened = [
            frame
            for frame in self.router.take(client, SessionOpened)
            if frame.request_id == request_id
        ]
        return opened[0] if opened else None

    # Reading the manager.

    @property
    def map(self) -> ShardMap:
        """The manager's committed map."""
        current = self.manager.shard_map
        assert current is not None
        return current

    def events(self, kind: type[T]) -> list[T]:
        """The manager's events of one kind so far."""
        return self.router.events_of(MANAGER, kind)

    def take(self, node: str, kind: type[T]) -> list[T]:
        """Pop what `node` received of one kind."""
        return self.router.take(node, kind)

    def placement(self, ref: PartRef) -> Placement:
        """Where the committed map puts `ref`."""
        return self.map.lookup(PartKey(session_id=ref.session_id, part=ref.part))

    def primaries(self, server_id: str) -> list[PartRef]:
        """The parts the committed map makes `server_id` primary of."""
        keys = self.map.parts_for(server_id).primary
        return [PartRef(session_id=key.session_id, part=key.part) for key in keys]


_STATE_OF_ACTION = {
    Action.NONE: AlarmState.CALM,
    Action.STOP_PLACEMENT: AlarmState.WATCHING,
    Action.DRAIN: AlarmState.DRAINING,
    Action.MOVE_NOW: AlarmState.EVACUATING,
}


def decision(
    action: Action,
    level: RiskLevel = RiskLevel.SUSTAINED,
    *,
    acted: bool = True,
    server_id: str = "s1",
) -> Decision:
    """A trigger-policy decision as `TriggerPolicy.assess` returns it."""
    state = _STATE_OF_ACTION[action]
    return Decision(
        server_id=server_id,
        now_us=0,
        previous_state=state,
        state=state,
        level=level,
        action=action,
        acted=acted and action is not Action.NONE,
        shadow=False,
        holdout=not acted,
        risk=0.7,
        calibrated=True,
        model="logistic",
        parts_fraction=0.25,
        moves_allowed=64,
        top_features=(),
    )


def opened_refs(opened: SessionOpened) -> list[PartRef]:
    """The part references of a SESSION_OPENED."""
    return [PartRef(session_id=opened.session_id, part=p.part) for p in opened.placements]


def complete_handoffs(
    harness: ManagerHarness,
    alive: tuple[str, ...],
    rounds: int,
    *,
    counted: str | None = None,
    tick_ms: int = 100,
) -> list[int]:
    """Let queued moves plan and their handoffs complete (every source reports done), `rounds`
    times; the primaries `counted` holds after each round (empty without `counted`)."""
    counts = []
    for _ in range(rounds):
        harness.router.run()
        for server_id in alive:
            for assigned in harness.take(server_id, HandoffAssigned):
                if server_id == assigned.source:
                    done = HandoffCompleted(
                        handoff_id=assigned.handoff_id, server_id=server_id, parts=assigned.parts
                    )
                    harness.router.send(server_id, MANAGER, done)
        harness.tick(tick_ms, alive=alive)
        if counted is not None:
            counts.append(len(harness.primaries(counted)))
    return counts


class HeldCommit:
    """The manager's store executor: runs every request, and keeps back the answer of the next
    delta commit (it lands in the store) until `release`, or loses it."""

    def __init__(self, harness: ManagerHarness) -> None:
        self.harness = harness
        self.held: list[object] = []
        self.armed = True

    def __call__(self, request: object) -> object:
        result = execute(self.harness.store, request)
        if self.armed and isinstance(request, DeltaCommitRequested):
            self.armed = False
            self.held.append(result)
            return None
        return result

    def release(self) -> None:
        """Deliver the answer held back."""
        for result in self.held:
            self.harness.manager.store_result(result, now_us=self.harness.router.now_us)
        self.held = []
        self.harness.router.run()
