"""A simulated Forehand cluster of the real cores: one manager, servers, clients and a workload.

`SimCluster` builds a `Simulator` whose nodes run `ManagerCore` (its store requests executed by a
`MemoryStore`), `ServerCore`s (the shop application of `_app`, in zones, with weights) and
`ClientCore`s driven by the sim `Workload` through `ShopAdapter`. Core events reach the checkers
through `CoreTranslator`. The configurations of every core, the processes and the links are drawn
from the seed, within bounds that keep a run short and its liveness bound meaningful. Servers
report their simulated load to their core, so the manager's risk input sees overloads coming.
With `ClusterConfig.waiting_read_share`, sessions also make waiting reads in the background,
which `WaitingReadChecker` judges.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from forehand.core import (
    BackpressureError,
    ClientConfig,
    ClientCore,
    CoreDriver,
    Durability,
    FailureDetectorKind,
    KeyRing,
    ManagerConfig,
    ManagerCore,
    NodeId,
    PartState,
    ServerConfig,
    ServerCore,
    TokenSealer,
)
from forehand.core import client_events as ce
from forehand.core.messages import LoadReport, PartRef
from forehand.placement import PlacementConfig, format_session_id
from forehand.sim._app import APP_PARTS, WAIT_MS, WAIT_OP, app_specs, operation_for, version_of
from forehand.sim._checkers import (
    AcknowledgedWritesChecker,
    AtMostOnceChecker,
    Checker,
    ClientOrderChecker,
    LivenessChecker,
    MonotonicMapVersionChecker,
    SingleWriterChecker,
    WaitingReadChecker,
)
from forehand.sim._cluster_checkers import ConvergenceChecker, DivergenceChecker, ExpiryChecker
from forehand.sim._links import Link, NetworkConfig
from forehand.sim._process import NodeStart, NodeState, ProcessModel, StoreExecutor
from forehand.sim._rng import derive_rng
from forehand.sim._simulator import Simulator, SimulatorConfig
from forehand.sim._telemetry import TelemetryConfig, load_report, transport_counters
from forehand.sim._translate import ClusterStats, CoreTranslator
from forehand.sim._workload import Workload, WorkloadConfig, WorkloadRequest, WorkloadSession
from forehand.sim.observations import (
    Observation,
    WaitingReadAnswered,
    WaitingReadFailed,
    WaitingReadIssued,
    WriteVersionSeen,
)
from forehand.stores import (
    DeltaCommitRequested,
    MapLoadRequested,
    MemoryStore,
    SnapshotSaveRequested,
    StoreResult,
)
from forehand.wire import ResponseStatus

__all__ = [
    "CLUSTER_KEY",
    "MANAGER",
    "ClusterConfig",
    "CrashMeasure",
    "ClusterPlan",
    "ShopAdapter",
    "SimCluster",
    "draw_plan",
]

MANAGER: NodeId = "manager"
"""The manager's node id."""
CLUSTER_KEY = bytes(range(32))
"""The simulated cluster's token key (a fixed test key: runs must replay byte for byte)."""
EXPIRING_CREDENTIAL_LIFETIME_MS = 8_000
"""Credential lifetime of the runs in which sessions expire (see `_expiry`): longer than any
fault lasts (they heal by 6 s) plus a renewal, so that a renewal stuck on a paused server is
still answered in time (with 4 s, one stuck from 1.9 to 6.0 s let the credential expire, and the
session with it: seed 14200238)."""
EXPIRING_SESSION_EXPIRY_MS = 12_000
"""Session expiry of those runs: the lifetime and one to three renewals (their clients renew every
1 s as drawn, or every 4 s, half the lifetime the servers and the manager state in SETTINGS)."""
GONE_CLIENT_AT_US = 1_000_000
"""When the last client of such a run goes for good, leaving its sessions (all open by 0.7 s)."""
GONE_SLACK_US = 1_500_000
"""Time a run needs past the gone client's expiry for the sweep to find and close its sessions
(two grains and a round, with room): runs shorter than that lose no client."""
LOAD_REPORT_INTERVAL_US = 250_000
"""How often each server's core is told its simulated load (what a runtime samples)."""
WAIT_OPERATION = "wait"
"""The workload's name for a waiting read (`_app.WAIT_OP` on the drawn part), made in the
background: the session goes on while it waits."""
WAIT_AHEAD = (0, 1, 1, 2)
"""How far beyond the part's last version the session saw a waiting read asks for, by the
request's sequence: 0 is answered at once by a primary that holds the session's writes, 1 waits
for its next write, 2 mostly for the wait's end."""
WAIT_TIMEOUT_SLACK_MS = (500, 1_000, 3_000)
"""What a waiting read's call timeout adds to the op's `wait_ms`, by the request's sequence."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterConfig:
    """The shape of a simulated cluster and its run."""

    servers: int = 4
    """Servers, named s1, s2, ..."""
    zones: int = 3
    """Failure domains the servers are spread over, round-robin."""
    clients: int = 2
    """Client nodes, named c1, c2, ...; sessions are spread over them."""
    replica_count: int = 2
    """Replicas per part besides the primary."""
    sessions: int = 6
    """Sessions the workload opens, each with every part of the shop."""
    think_time_us: int = 100_000
    """Mean pause between a response and a session's next request."""
    write_share: float = 0.6
    """Share of requests that write."""
    duration_us: int = 10_000_000
    """Simulated time of the run."""
    heal_us: int = 0
    """When every fault is over (0 for a healthy run); liveness is judged from here."""
    liveness_bound_us: int | None = 8_000_000
    """Every session must be served within this after healing; None disables the check."""
    lossy_network: bool = False
    """Links lose and reset a little (retransmissions, broken connections) besides delaying."""
    converge: bool = True
    """Check at the end that the cluster settled: one primary per part, every map the same."""
    replication_interval_ms: int | None = None
    """Every server ships its logs this often instead of a drawn interval (None: drawn)."""
    server_service_time_us: int | None = None
    """Every server's CPU time per input instead of a drawn one (None: drawn; 0 handles each
    input the instant it arrives, so what a node received is what it applied)."""
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    """How the simulated runtime measures loads and transport counters (noise, queueing)."""
    client_leaves: bool = True
    """In a run whose sessions expire, the last client goes for good (`SimCluster.start`)."""
    waiting_read_share: float = 0.0
    """Share of requests that are waiting reads, made in the background (0: none, and the run
    draws exactly what it drew before waiting reads existed)."""

    def __post_init__(self) -> None:
        if self.servers < 1 or self.clients < 1 or self.sessions < 1 or self.zones < 1:
            raise ValueError(f"a cluster needs servers, clients, sessions and zones: {self}")
        if not 0.0 <= self.waiting_read_share < 1.0 - self.write_share:
            raise ValueError(f"waiting_read_share must leave room for reads: {self}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterPlan:
    """Everything drawn from the seed before the run: configurations, processes, links."""

    manager: ManagerConfig
    """The manager's configuration."""
    servers: dict[NodeId, ServerConfig]
    """Each server's configuration (incarnation 1; a restart bumps it)."""
    clients: dict[NodeId, ClientConfig]
    """Each client's configuration."""
    processes: dict[NodeId, ProcessModel]
    """Each node's process model."""
    network: NetworkConfig
    """The links."""
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    """How parts are placed."""


def draw_plan(rng: random.Random, config: ClusterConfig) -> ClusterPlan:
    """Draw the cluster's configurations from `rng`, within bounds that keep runs meaningful."""
    manager = _manager_config(rng)
    server_ids = [f"s{index + 1}" for index in range(config.servers)]
    client_ids = [f"c{index + 1}" for index in range(config.clients)]
    servers = {
        server_id: _server_config(rng, server_id, index, config, manager)
        for index, server_id in enumerate(server_ids)
    }
    clients = {client_id: _client_config(rng, client_id) for client_id in client_ids}
    processes = {MANAGER: ProcessModel(store_latency_us=rng.choice((200, 1_000, 3_000)))}
    for server_id in server_ids:
        service_time_us = rng.choice((20, 50, 100))
        if config.server_service_time_us is not None:
            service_time_us = config.server_service_time_us
        processes[server_id] = ProcessModel(
            service_time_us=service_time_us, base_load=rng.choice((0.0, 0.1, 0.3))
        )
    for client_id in client_ids:
        processes[client_id] = ProcessModel()
    network = _network(rng, [MANAGER, *server_ids], client_ids, lossy=config.lossy_network)
    return ClusterPlan(
        manager=manager,
        servers=servers,
        clients=clients,
        processes=processes,
        network=network,
        placement=PlacementConfig(replica_count=config.replica_count),
    )


def _manager_config(rng: random.Random) -> ManagerConfig:
    """`ManagerConfig.randomized`, with detection and handoff timeouts capped for short runs."""
    base = ManagerConfig.randomized(rng)
    failure_timeout_ms = rng.randrange(600, 2_500)
    heartbeat_interval_ms = rng.randrange(50, failure_timeout_ms // 4)
    lifetime_ms, expiry_ms = _expiry(failure_timeout_ms, base)
    return dataclasses.replace(
        base,
        heartbeat_interval_ms=heartbeat_interval_ms,
        suspect_timeout_ms=rng.randrange(failure_timeout_ms // 2, failure_timeout_ms),
        failure_timeout_ms=failure_timeout_ms,
        failure_detector=rng.choice(list(FailureDetectorKind)),
        failover_prepare_timeout_ms=rng.randrange(100, 1_500),
        handoff_deadline_ms=rng.randrange(500, 4_000),
        handoff_deadline_grace_ms=rng.randrange(100, 1_500),
        store_timeout_ms=rng.randrange(1_000, 3_000),
        overload_cooldown_ms=rng.randrange(1_000, 10_000),
        # Derived, not drawn, so that every seed keeps the draws (and the scenario) it had.
        map_request_hold_ms=(0, 300, 1_000)[failure_timeout_ms % 3],
        credential_lifetime_ms=lifetime_ms,
        session_expiry_ms=expiry_ms,
        # Automatic rebalances within a run for two thirds of the seeds (derived, as above).
        rebalance_interval_ms=(0, 1_500, 4_000)[heartbeat_interval_ms % 3],
        rebalance_tolerance=(0.0, 0.2, 0.5)[heartbeat_interval_ms // 3 % 3],
        # Half of those look again sooner after an unsettled check (`rebalance_settle_ms`).
        rebalance_settle_ms=(500, 60_000)[failure_timeout_ms // 9 % 2],
    )


def _expiry(failure_timeout_ms: int, base: ManagerConfig) -> tuple[int, int]:
    """(credential lifetime, session expiry): for a quarter of the seeds (derived from a draw,
    not drawn) `EXPIRING_CREDENTIAL_LIFETIME_MS` and `EXPIRING_SESSION_EXPIRY_MS`, so that
    sessions may expire within a run under faults (`ExpiryChecker`); for the rest the defaults
    (a day, two days), under which nothing expires in a run."""
    if (failure_timeout_ms // 3) % 4:
        return base.credential_lifetime_ms, base.session_expiry_ms
    return EXPIRING_CREDENTIAL_LIFETIME_MS, EXPIRING_SESSION_EXPIRY_MS


def _server_config(
    rng: random.Random,
    server_id: NodeId,
    index: int,
    config: ClusterConfig,
    manager: ManagerConfig,
) -> ServerConfig:
    """`ServerConfig.randomized`, heartbeating as the manager expects, in its zone."""
    base = ServerConfig.randomized(rng, server_id=server_id)
    interval_ms = config.replication_interval_ms or base.replication_interval_ms
    return dataclasses.replace(
        base,
        replication_interval_ms=interval_ms,
        replication_retry_ms=max(base.replication_retry_ms, 2 * interval_ms),
        address=f"{server_id}.sim:4433",
        zone=f"zone-{index % config.zones + 1}",
        weight=rng.choice((1.0, 1.0, 2.0)),
        heartbeat_interval_ms=manager.heartbeat_interval_ms,
        handoff_deadline_ms=min(base.handoff_deadline_ms, manager.handoff_deadline_ms),
        backup_period_ms=rng.randrange(100, 2_000),
        credential_lifetime_ms=manager.credential_lifetime_ms,
    )


def _client_config(rng: random.Random, client_id: NodeId) -> ClientConfig:
    """`ClientConfig.randomized`, with a request timeout the liveness bound can cover. Its
    renewal interval stays as drawn: when a run lets sessions expire, the short lifetime that
    the servers and the manager state in SETTINGS makes the client renew within it."""
    base = ClientConfig.randomized(rng, node_id=client_id)
    return dataclasses.replace(
        base,
        request_timeout_ms=rng.choice((3_000, 5_000)),
        retry_backoff_max_ms=min(base.retry_backoff_max_ms, 1_000),
        handoff_deadline_ms_max=min(base.handoff_deadline_ms_max, 5_000),
    )


def _network(
    rng: random.Random, backend: Sequence[NodeId], clients: Sequence[NodeId], *, lossy: bool
) -> NetworkConfig:
    """Datacenter links between the manager and servers, wide-area links to the clients."""
    links: dict[tuple[NodeId, NodeId], Link] = {}
    for client in clients:
        delay_us = rng.choice((2_000, 5_000, 20_000))
        link = Link(
            delay_us=delay_us,
            jitter_us=delay_us // rng.choice((2, 5, 10)),
            loss_probability=rng.choice((0.0, 0.001, 0.01)) if lossy else 0.0,
            reset_probability=rng.choice((0.0, 0.0, 0.0005)) if lossy else 0.0,
        )
        for node in backend:
            links[(client, node)] = link
            links[(node, client)] = link
    delay_us = rng.choice((200, 500, 1_000))
    default = Link(
        delay_us=delay_us,
        jitter_us=delay_us // rng.choice((2, 5)),
        loss_probability=rng.choice((0.0, 0.001)) if lossy else 0.0,
    )
    return NetworkConfig(
        default_link=default,
        links=links,
        connection_timeout_us=rng.choice((1_000_000, 2_000_000, 3_000_000)),
    )


class ShopAdapter:
    """Turns workload decisions into `ClientCore` calls and keeps what the translator joins."""

    def __init__(self) -> None:
        self.workload: Workload | None = None
        """The workload told when a request fails (set once it exists)."""
        self._opening: dict[tuple[NodeId, int], int] = {}
        self._failed_opens: dict[int, WorkloadSession] = {}
        self._session_ids: dict[int, bytes] = {}
        self._writes: dict[tuple[NodeId, int], bool] = {}
        self.backpressured = 0
        """Calls the client refused because its in-flight table was full."""
        self.observe: Callable[[NodeId, Observation], None] | None = None
        """Reports what the adapter knows of its calls (set when the run makes waiting reads:
        `track_versions`)."""
        self._calls: dict[tuple[NodeId, int], tuple[int, str, str]] = {}
        self._seen: dict[tuple[int, str], int] = {}

    def open_session(self, core: CoreDriver, session: WorkloadSession, now_us: int) -> None:
        """Open the session at the manager through the client core."""
        assert isinstance(core, ClientCore)
        try:
            request_id = core.open_session(session.parts, now_us=now_us)
        except BackpressureError:
            self._failed_opens[session.index] = session
            return
        self._opening[(session.client, request_id)] = session.index

    def issue(self, core: CoreDriver, request: WorkloadRequest, now_us: int) -> int | None:
        """Call the concrete shop operation; None while the session is not open yet."""
        assert isinstance(core, ClientCore)
        index = request.session.index
        session_id = self._session_ids.get(index)
        if session_id is None:
            failed = self._failed_opens.pop(index, None)
            if failed is not None:
                self.open_session(core, failed, now_us)
            return None
        if request.operation == WAIT_OPERATION:
            return self._wait(core, request, session_id, now_us)
        op, payload, write = operation_for(request.part, request.operation, request.sequence)
        try:
            request_id = core.call(session_id, request.part, op, payload, now_us=now_us)
        except BackpressureError:
            self.backpressured += 1
            return None
        self._writes[(request.session.client, request_id)] = write
        if self.observe is not None:
            self._calls[(request.session.client, request_id)] = (index, request.part, op)
        return request_id

    def _wait(
        self, core: ClientCore, request: WorkloadRequest, session_id: bytes, now_us: int
    ) -> int | None:
        """Call the part's waiting read for a version at or beyond the last one the session
        saw, with a call timeout longer than the op's `wait_ms`."""
        assert self.observe is not None, "waiting reads need track_versions"
        index, part, sequence = request.session.index, request.part, request.sequence
        wanted = self._seen.get((index, part), 0) + WAIT_AHEAD[sequence % len(WAIT_AHEAD)]
        timeout_ms = WAIT_MS[part] + WAIT_TIMEOUT_SLACK_MS[sequence % len(WAIT_TIMEOUT_SLACK_MS)]
        try:
            request_id = core.call(
                session_id,
                part,
                WAIT_OP,
                str(wanted).encode(),
                now_us=now_us,
                timeout_ms=timeout_ms,
            )
        except BackpressureError:
            self.backpressured += 1
            return None
        client = request.session.client
        self._writes[(client, request_id)] = False
        self._calls[(client, request_id)] = (index, part, WAIT_OP)
        part_key = (format_session_id(session_id), part)
        issued = WaitingReadIssued(
            client=client,
            part_key=part_key,
            request_id=request_id,
            wanted=wanted,
            timeout_us=timeout_ms * 1000,
        )
        self.observe(client, issued)
        return request_id

    def track_versions(
        self, observe: Callable[[NodeId, Observation], None], translator: CoreTranslator
    ) -> None:
        """Track the part versions the answers show, report waiting reads and the versions of
        acknowledged writes through `observe` (`WaitingReadChecker` reads them)."""
        self.observe = observe
        translator.also(ce.ResponseReceived, self._answered)
        translator.also(ce.RequestFailed, self._failed)

    def _answered(self, client: NodeId, event: ce.ResponseReceived) -> list[Observation]:
        call = self._calls.pop((client, event.request_id), None)
        if call is None:
            return []
        index, part, op = call
        ok = event.status is ResponseStatus.OK
        version = version_of(part, op, event.payload) if ok else None
        if version is not None:
            self._seen[(index, part)] = version
        part_key = (format_session_id(event.session_id), part)
        if op == WAIT_OP:
            return [
                WaitingReadAnswered(
                    client=client,
                    part_key=part_key,
                    request_id=event.request_id,
                    status=event.status.name,
                    version=version,
                )
            ]
        if version is None or not self._writes.get((client, event.request_id)):
            return []
        return [
            WriteVersionSeen(
                client=client, part_key=part_key, request_id=event.request_id, version=version
            )
        ]

    def _failed(self, client: NodeId, event: ce.RequestFailed) -> list[Observation]:
        call = self._calls.pop((client, event.request_id), None)
        if call is None or call[2] != WAIT_OP:
            return []
        part_key = (format_session_id(event.session_id), call[1])
        return [
            WaitingReadFailed(
                client=client, part_key=part_key, request_id=event.request_id, why=event.why.value
            )
        ]

    def session_id(self, index: int) -> bytes | None:
        """The id of workload session `index`, once open."""
        return self._session_ids.get(index)

    # What the translator reports back (`SessionDirectory`).

    def session_established(self, client: NodeId, request_id: int, session_id: bytes) -> None:
        """Record the session id of an open the adapter sent."""
        index = self._opening.pop((client, request_id), None)
        if index is not None:
            self._session_ids[index] = session_id

    def session_open_failed(self, client: NodeId, request_id: int) -> None:
        """An open failed: the session's next request opens it again."""
        index = self._opening.pop((client, request_id), None)
        if index is not None and self.workload is not None:
            self._failed_opens[index] = self.workload.sessions[index]

    def is_write(self, client: NodeId, request_id: int) -> bool | None:
        """Whether the adapter issued the request as a write."""
        return self._writes.get((client, request_id))

    def request_failed(self, client: NodeId, part: str, request_id: int) -> None:
        """Let the workload move on from a request the client gave up on."""
        if self.workload is not None:
            self.workload.request_failed(client, part, request_id)

    def session_closed(self, client: NodeId, session_id: bytes) -> None:
        """A peer closed a session the adapter opened: its workload session stops."""
        for index, known in self._session_ids.items():
            if known == session_id and self.workload is not None:
                self.workload.session_closed(index)
                return


class CrashMeasure:
    """The replication lag of a primary's parts at the moment it crashes.

    For each part the crashing server is primary of: how many entries its log holds beyond the
    most advanced replica's applied position. An `async` part acknowledged each of them, so a
    failover that promotes the most advanced replica loses exactly that many acknowledged writes;
    a `replicated` part acknowledged none of them.
    """

    def __init__(self) -> None:
        self.victim: NodeId = ""
        """The crashed server."""
        self.lag: dict[PartRef, int] = {}
        """Entries beyond the best replica, per part the victim was primary of."""
        self.durability: dict[PartRef, Durability] = {}
        """Each measured part's durability."""

    def measure(self, cluster: SimCluster, victim: NodeId) -> None:
        """Record the lag of `victim`'s primary parts now (call right before crashing it)."""
        self.victim = victim
        core = cluster.server(victim)
        assert core is not None, f"{victim} is not running"
        for part in core.parts():
            if part.state is not PartState.PRIMARY:
                continue
            best = 0
            for other in cluster.server_ids:
                replica = None if other == victim else cluster.server(other)
                held = None if replica is None else replica.part(part.ref)
                if held is not None:
                    best = max(best, held.applied_seq)
            self.lag[part.ref] = max(0, part.applied_seq - best)
            self.durability[part.ref] = part.spec.durability

    def counted(self, durability: Durability) -> int:
        """Total lag over the measured parts of one durability."""
        return sum(lag for ref, lag in self.lag.items() if self.durability[ref] is durability)


class SimCluster:
    """A simulator loaded with a manager, servers and clients running the real cores."""

    def __init__(
        self,
        seed: int,
        config: ClusterConfig,
        *,
        checkers: Sequence[Checker] = (),
        plan: ClusterPlan | None = None,
    ) -> None:
        self.config = config
        """The cluster's shape."""
        self.plan = plan if plan is not None else draw_plan(derive_rng(seed, "cluster"), config)
        """The drawn configurations."""
        self._telemetry_rng = derive_rng(seed, "telemetry")
        self.adapter = ShopAdapter()
        """The workload adapter."""
        self.store = MemoryStore()
        """The manager's store."""
        self.server_ids = list(self.plan.servers)
        """The servers, in order."""
        self.client_ids = list(self.plan.clients)
        """The clients, in order."""
        self.acknowledged = AcknowledgedWritesChecker()
        """The lost-write checker; its `lost` lists the `async` writes failovers dropped."""
        self.convergence = ConvergenceChecker(self) if config.converge else None
        """The end-state check, when enabled."""
        self.crash: CrashMeasure | None = None
        """The replication lag measured at a scenario's crash, if it crashed a primary."""
        self.planned: NodeId | None = None
        """The server a planned scenario drained, moved parts off or crashed, once chosen."""
        self.cut: tuple[NodeId, NodeId] | None = None
        """The (source, target) of the handoff a scenario cut off from each other, if any."""
        all_checkers: list[Checker] = [
            SingleWriterChecker(),
            self.acknowledged,
            AtMostOnceChecker(),
            MonotonicMapVersionChecker(),
            ClientOrderChecker(),
            DivergenceChecker(),
            ExpiryChecker(self, _sealer(random.Random(seed))),
            *checkers,
        ]
        if config.waiting_read_share:
            all_checkers.append(WaitingReadChecker(self.acknowledged))
        if config.liveness_bound_us is not None:
            all_checkers.append(LivenessChecker(bound_us=config.liveness_bound_us))
        if self.convergence is not None:
            all_checkers.append(self.convergence)
        self.translator = CoreTranslator(self.adapter, count=self._count)
        """Maps core events to observations and counts the run."""
        self.sim = Simulator(
            seed=seed,
            config=SimulatorConfig(duration_us=config.duration_us),
            network=self.plan.network,
            checkers=all_checkers,
            translate=self.translator,
        )
        """The simulator."""
        if config.waiting_read_share:
            self.adapter.track_versions(self.sim.observe, self.translator)
        self._add_nodes()
        self.workload = Workload(
            self.sim, self._workload_config(), clients=self.client_ids, adapter=self.adapter
        )
        """The simulated users."""
        self.adapter.workload = self.workload
        self.sim.heal_us = max(self.sim.heal_us, config.heal_us)
        self.sim.call_at(LOAD_REPORT_INTERVAL_US, self._report_loads, label="load reports")
        interval_us = config.telemetry.transport_interval_us
        self.sim.call_at(interval_us, self._read_transports, label="transport counters")

    @property
    def stats(self) -> ClusterStats:
        """What the run counted."""
        return self.translator.stats

    def start(self) -> None:
        """Start the workload; call once faults and hooks are in place, before `sim.run()`.

        In a run whose sessions expire (`_expiry`) long enough for an expiry to come, the last
        client goes for good at `GONE_CLIENT_AT_US`: its sessions are left behind, and the
        manager must expire them (and no other: `ExpiryChecker`) under the run's faults."""
        self.workload.start()
        expiring = self.plan.manager.session_expiry_ms == EXPIRING_SESSION_EXPIRY_MS
        long_enough_us = GONE_CLIENT_AT_US + EXPIRING_SESSION_EXPIRY_MS * 1000 + GONE_SLACK_US
        leaves = self.config.client_leaves and len(self.client_ids) > 1
        if expiring and leaves and self.config.duration_us >= long_enough_us:
            gone = self.client_ids[-1]
            self.sim.call_at(
                GONE_CLIENT_AT_US,
                lambda: self.sim.crash(gone, permanent=True),
                label=f"{gone} goes for good",
            )

    def manager(self) -> ManagerCore:
        """The manager's core."""
        core = self.sim.core(MANAGER)
        assert isinstance(core, ManagerCore)
        return core

    def server(self, server_id: NodeId) -> ServerCore | None:
        """A server's core, or None while it is crashed."""
        core = self.sim.core(server_id)
        assert core is None or isinstance(core, ServerCore)
        return core

    def client(self, client_id: NodeId) -> ClientCore | None:
        """A client's core, or None while it is crashed."""
        core = self.sim.core(client_id)
        assert core is None or isinstance(core, ClientCore)
        return core

    def up(self, node_id: NodeId) -> bool:
        """Whether the node runs (not paused, not crashed)."""
        return self.sim.node_state(node_id) is NodeState.UP

    def _count(self, name: str) -> None:
        self.sim.count(name)

    def _workload_config(self) -> WorkloadConfig:
        config = self.config
        mix: tuple[tuple[str, float], ...] = (
            ("read", 1.0 - config.write_share),
            ("write", config.write_share),
        )
        background: tuple[str, ...] = ()
        if config.waiting_read_share:
            read_share = 1.0 - config.write_share - config.waiting_read_share
            mix = (
                ("read", read_share),
                ("write", config.write_share),
                (WAIT_OPERATION, config.waiting_read_share),
            )
            background = (WAIT_OPERATION,)
        return WorkloadConfig(
            sessions=config.sessions,
            parts=APP_PARTS,
            request_mix=mix,
            think_time_us=config.think_time_us,
            start_us=200_000,
            open_spread_us=500_000,
            abandon_after_us=12_000_000,
            background_operations=background,
        )

    def _add_nodes(self) -> None:
        plan = self.plan
        store = self.store
        self.sim.add_node(
            MANAGER,
            self._build_manager,
            process=plan.processes[MANAGER],
            executor=store_executor(store),
        )
        for server_id in self.server_ids:
            self.sim.add_node(server_id, self._build_server, process=plan.processes[server_id])
        for client_id in self.client_ids:
            self.sim.add_node(client_id, self._build_client, process=plan.processes[client_id])

    def _build_manager(self, start: NodeStart) -> ManagerCore:
        return ManagerCore(
            config=self.plan.manager,
            placement_config=self.plan.placement,
            sealer=_sealer(start.rng),
            rng=start.rng,
            now_us=start.now_us,
        )

    def _build_server(self, start: NodeStart) -> ServerCore:
        config = dataclasses.replace(
            self.plan.servers[start.node_id], incarnation=start.incarnation + 1
        )
        return ServerCore(
            config=config,
            parts=app_specs(on_stall=self.sim.stall_requested),
            sealer=_sealer(start.rng),
            rng=start.rng,
        )

    def _build_client(self, start: NodeStart) -> ClientCore:
        client_id = start.node_id.encode().ljust(16, b"\0")[:16]
        return ClientCore(
            config=self.plan.clients[start.node_id], client_id=client_id, rng=start.rng
        )

    def _report_loads(self) -> None:
        """Tell every running server its simulated load, as a runtime's sampler would."""
        sim = self.sim
        for server_id in self.server_ids:
            if not self.up(server_id):
                continue
            report = load_report(
                sim.process_stats(server_id),
                self.plan.processes[server_id],
                rng=self._telemetry_rng,
                config=self.config.telemetry,
            )
            sim.command(server_id, _load_command(report), label=f"load {report.cpu_utilization}")
        next_us = sim.now_us + LOAD_REPORT_INTERVAL_US
        if next_us <= self.config.duration_us:
            sim.call_at(next_us, self._report_loads, label="load reports")

    def _read_transports(self) -> None:
        """Hand every running client its transport counters to each server, as a runtime's
        path sampler would."""
        sim = self.sim
        for client_id in self.client_ids:
            if self.up(client_id):
                sim.command(client_id, self._transport_command(client_id), label="transport")
        next_us = sim.now_us + self.config.telemetry.transport_interval_us
        if next_us <= self.config.duration_us:
            sim.call_at(next_us, self._read_transports, label="transport counters")

    def _transport_command(self, client_id: NodeId) -> Callable[[CoreDriver, int], None]:
        sim = self.sim
        servers = self.server_ids

        def command(core: CoreDriver, now_us: int) -> None:
            assert isinstance(core, ClientCore)
            for server_id in servers:
                counters = transport_counters(
                    sim.transport_counters(client_id, server_id),
                    sim.transport_counters(server_id, client_id),
                )
                core.record_transport_counters(server_id, counters, now_us=now_us)

        return command


def _load_command(report: LoadReport) -> Callable[[CoreDriver, int], None]:
    def command(core: CoreDriver, now_us: int) -> None:
        assert isinstance(core, ServerCore)
        core.report_load(report)

    return command


def _sealer(rng: random.Random) -> TokenSealer:
    return TokenSealer(KeyRing({1: CLUSTER_KEY}, current_key_id=1), rng=rng)


def store_executor(store: MemoryStore) -> StoreExecutor:
    """The manager node's store executor: runs each request on `store`."""

    def execute(request: object) -> StoreResult:
        assert isinstance(request, MapLoadRequested | DeltaCommitRequested | SnapshotSaveRequested)
        return store.execute(request)

    return execute
