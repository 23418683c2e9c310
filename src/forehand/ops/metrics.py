"""Prometheus metrics of the manager and server processes (prometheus-client).

Each process owns one `CollectorRegistry` (no global state, so tests can run several). Counters
and histograms are fed by the core's events (`NodeDriver.subscribe`; each declares the event
classes it accounts for in `event_types`, so the driver hands it no other); request latency also
reads the driver's `input_received_s` hook (when the frames of the current input arrived); gauges
of the cluster's state are computed at scrape time from the manager's `ClusterView` sample and the
server core's public `parts()`, never from private attributes. Names follow the Prometheus
conventions: base units (seconds, ratios), `_total` on counters, `_seconds` on durations. The
label `part` on server metrics is the part name (`cart`), not the session, so that the number of
series stays bounded by the application's part specs.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forehand.core import ServerCore, manager_events, server_events
from forehand.core.messages import PartRole
from forehand.ops.view import ClusterView, RiskTracker, ServerView
from forehand.wire import ErrorCode, ResponseStatus, ResumeRejectReason

__all__ = [
    "HANDOFF_DURATION_BUCKETS_S",
    "LABELLED_CHILDREN_MAX",
    "PENDING_WRITES_MAX",
    "REQUEST_DURATION_BUCKETS_S",
    "ListenersCollector",
    "ManagerMetrics",
    "ServerMetrics",
]

HANDOFF_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""Buckets of handoff and failover durations (the backup period makes most handoffs ~1 s)."""
REQUEST_DURATION_BUCKETS_S = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1,
)
"""Buckets of request latency on a server, from 50 us."""
PENDING_WRITES_MAX = 16_384
"""Logged writes whose acknowledgement a server's metrics wait for; beyond, the oldest is
forgotten (its latency is not observed)."""
LABELLED_CHILDREN_MAX = 4_096
"""Labelled series a server's metrics keep a handle to (part x status), so the request path does
not look each one up (a lock and a tuple) per event; past it, lookups go to the registry."""


def _status(status: int) -> str:
    try:
        return ResponseStatus(status).name.lower()
    except ValueError:
        return str(status)


def _reason_label(reason: int) -> str:
    """A resume refusal's reason as a label; an unknown number is `unspecified`, so a peer cannot
    grow the series without bound."""
    try:
        return ResumeRejectReason(reason).name.lower()
    except ValueError:
        return ResumeRejectReason.UNSPECIFIED.name.lower()


def _code_label(error_code: int) -> str:
    """An ERROR frame's code as a label (`ErrorCode.from_wire` maps unknown codes to one)."""
    return ErrorCode.from_wire(error_code).name.lower()


class ManagerMetrics:
    """The manager's metrics: an event subscriber plus scrape-time gauges of the cluster view."""

    def __init__(
        self,
        *,
        view: ClusterView,
        risk: RiskTracker,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        """What `/metrics` exposes."""
        r = self.registry
        self.handoffs_started = Counter(
            "forehand_handoffs_started",
            "Handoffs started (override committed).",
            ["reason"],
            registry=r,
        )
        self.handoffs = Counter(
            "forehand_handoffs",
            "Handoffs ended, by reason and outcome (completed, failed_over, cancelled).",
            ["reason", "outcome"],
            registry=r,
        )
        self.handoff_duration = Histogram(
            "forehand_handoff_duration_seconds",
            "From picking the target to the end of the handoff (backup period included).",
            ["outcome"],
            buckets=HANDOFF_DURATION_BUCKETS_S,
            registry=r,
        )
        self._failure_metrics(r)
        self._map_metrics(r)
        self._death_cause: OrderedDict[str, str] = OrderedDict()
        r.register(_ClusterCollector(view, risk))
        self.event_types = _MANAGER_EVENT_TYPES
        """The events it accounts for (`NodeDriver.subscribe`): the driver hands it no other."""

    def _failure_metrics(self, r: CollectorRegistry) -> None:
        self.failovers = Counter(
            "forehand_failovers",
            "Failovers ended, by the death cause of the servers and outcome.",
            ["reason", "outcome"],
            registry=r,
        )
        self.failover_duration = Histogram(
            "forehand_failover_duration_seconds",
            "From fencing the replicas to the committed promotions.",
            buckets=HANDOFF_DURATION_BUCKETS_S,
            registry=r,
        )
        self.servers_dead = Counter(
            "forehand_servers_declared_dead", "Servers declared dead.", ["cause"], registry=r
        )
        self.parts_reset = Counter(
            "forehand_parts_reset",
            "Parts a failover promoted with none of their history: their state starts over.",
            registry=r,
        )
        self.parts_lost = Counter(
            "forehand_parts_lost", "Parts lost with every replica.", registry=r
        )
        self.sessions_lost = Counter(
            "forehand_sessions_lost",
            "Sessions a failover ended because it lost one of their parts.",
            registry=r,
        )
        self.parts_unreplicated = Counter(
            "forehand_parts_unreplicated",
            "Parts a failover left with no replica: no server could take one (draining or dead).",
            registry=r,
        )
        self.moves_dropped = Counter(
            "forehand_moves_dropped", "Queued part moves given up.", ["reason"], registry=r
        )
        self.alarms = Counter(
            "forehand_predictor_alarms",
            "Risk decisions that asked to move parts off a server.",
            ["reason"],
            registry=r,
        )
        self.assessments = Counter(
            "forehand_risk_assessments",
            "Decisions of the risk policy, by model, level, action and whether acted on.",
            ["model", "level", "action", "acted"],
            registry=r,
        )

    def _map_metrics(self, r: CollectorRegistry) -> None:
        self.map_commits = Counter(
            "forehand_map_commits", "Committed shard-map versions.", ["change"], registry=r
        )
        self.parts_moved_implicitly = Counter(
            "forehand_parts_moved_implicitly",
            "Live primaries a committed version moved without naming them (handed over by "
            "their servers themselves), by the change that moved them.",
            ["change"],
            registry=r,
        )
        self.map_rejections = Counter(
            "forehand_map_commit_rejections", "Map changes the store refused.", registry=r
        )
        self.sessions = Counter("forehand_sessions_registered", "Sessions opened.", registry=r)
        self.sessions_open_refused = Counter(
            "forehand_sessions_open_refused",
            "OPEN_SESSIONs refused, by cause: undeclared_parts (a part no server's app "
            "declares), map_full (map_parts_max), client_full (client_sessions_max), "
            "queue_full (the commit queue; the client retries), unplaceable (no server can "
            "take the parts now; the client retries), origin_rate (open_rate_per_origin; the "
            "client retries).",
            ["cause"],
            registry=r,
        )
        self.sessions_expired = Counter(
            "forehand_sessions_expired",
            "Sessions closed because no credential was issued for them in session_expiry_ms.",
            registry=r,
        )
        self.rebalance_parts = Counter(
            "forehand_rebalance_parts_queued",
            "Parts the manager's automatic rebalance queued for planned handoffs"
            " (rebalance_interval_ms; an operator's rebalance is not counted).",
            registry=r,
        )
        self.rebalance_replica_roles = Counter(
            "forehand_rebalance_replica_roles_moved",
            "Replica roles the manager's automatic rebalance moved to servers below their share.",
            registry=r,
        )
        self.map_version = Gauge("forehand_map_version", "The shard map's version.", registry=r)
        self.protocol_violations = Counter(
            "forehand_manager_protocol_violations",
            "Peers the manager closed with an ERROR for breaking the protocol (a server outside"
            " the placement bounds, a malformed message...), by error code.",
            ["code"],
            registry=r,
        )
        self.credentials_refused = Counter(
            "forehand_manager_credentials_refused",
            "Session credentials in a client's HELLO that did not open (forged, expired, under"
            " a retired key, another session's), by reason.",
            ["reason"],
            registry=r,
        )
        self.credentials_paced = Counter(
            "forehand_manager_credentials_paced",
            "Session credentials in HELLO or MAP_REQUEST left unchecked because their origin"
            " presented more than credential_rate_per_origin allows (presented again later).",
            registry=r,
        )
        self.drain_moved = Gauge(
            "forehand_drain_parts_moved", "Roles a drain moved away.", ["server"], registry=r
        )
        self.drain_total = Gauge(
            "forehand_drain_parts", "Roles a drain has to move away.", ["server"], registry=r
        )
        self.drain_waiting = Gauge(
            "forehand_drain_parts_waiting",
            "Roles a drain leaves in place until another server can take them.",
            ["server"],
            registry=r,
        )
        self.drain_behind = Gauge(
            "forehand_drain_replicas_behind",
            "Replica roles a drain keeps until another replica of the part catches up.",
            ["server"],
            registry=r,
        )
        self.held_answered = Counter(
            "forehand_map_requests_held_answered",
            "Held MAP_REQUESTs answered, by what answered them.",
            ["why"],
            registry=r,
        )

    def __call__(self, event: object) -> None:
        """Account for one manager event."""
        handler = _MANAGER_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _handoff_started(self, event: Any) -> None:
        self.handoffs_started.labels(event.reason.name.lower()).inc()

    def _handoff_completed(self, event: Any) -> None:
        self.handoffs.labels(event.reason.name.lower(), "completed").inc()
        self.handoff_duration.labels("completed").observe(event.duration_us / 1e6)

    def _handoff_aborted(self, event: Any) -> None:
        outcome = event.outcome.value
        self.handoffs.labels(event.reason.name.lower(), outcome).inc()
        self.handoff_duration.labels(outcome).observe(event.duration_us / 1e6)

    def _server_dead(self, event: Any) -> None:
        self.servers_dead.labels(event.cause.value).inc()
        self._death_cause[event.server_id] = event.cause.value
        while len(self._death_cause) > 4_096:
            self._death_cause.popitem(last=False)

    def _cause(self, servers: tuple[str, ...]) -> str:
        return ",".join(sorted({self._death_cause.get(s, "silence") for s in servers}))

    def _failover_completed(self, event: Any) -> None:
        self.failovers.labels(self._cause(event.servers), "completed").inc()
        self.failover_duration.observe(event.duration_us / 1e6)

    def _parts_moved_implicitly(self, event: Any) -> None:
        self.parts_moved_implicitly.labels(event.change.value).inc(event.count)

    def _parts_unreplicated(self, event: Any) -> None:
        self.parts_unreplicated.inc(event.parts)

    def _parts_reset(self, event: Any) -> None:
        self.parts_reset.inc(len(event.parts))

    def _parts_lost(self, event: Any) -> None:
        self.parts_lost.inc(len(event.parts))
        self.sessions_lost.inc(len(event.sessions))
        self.failovers.labels(self._cause(event.servers), "parts_lost").inc()

    def _moves_dropped(self, event: Any) -> None:
        self.moves_dropped.labels(event.reason.name.lower()).inc(len(event.parts))

    def _risk_flagged(self, event: Any) -> None:
        self.alarms.labels(event.reason.name.lower()).inc()

    def _risk_assessed(self, event: Any) -> None:
        self.assessments.labels(
            str(getattr(event, "model", "")),
            str(getattr(event, "level", "")),
            str(getattr(event, "action", "")),
            str(bool(getattr(event, "acted", False))).lower(),
        ).inc()

    def _map_committed(self, event: Any) -> None:
        self.map_commits.labels(event.change.value).inc()
        self.map_version.set(event.map_version)
        if event.change is manager_events.MapChange.DRAIN_CLEARED:
            # An undrained server's drain is over: what it left waiting or behind is not.
            for server_id in event.servers:
                self.drain_waiting.labels(server_id).set(0)
                self.drain_behind.labels(server_id).set(0)

    def _map_loaded(self, event: Any) -> None:
        self.map_version.set(event.map_version)

    def _map_rejected(self, event: Any) -> None:
        self.map_rejections.inc()

    def _session_registered(self, event: Any) -> None:
        self.sessions.inc()

    def _session_open_refused(self, event: Any) -> None:
        self.sessions_open_refused.labels(event.cause).inc()

    def _sessions_expired(self, event: Any) -> None:
        self.sessions_expired.inc(len(event.session_ids))

    def _rebalance_queued(self, event: Any) -> None:
        self.rebalance_parts.inc(event.parts)

    def _replicas_rebalanced(self, event: Any) -> None:
        self.rebalance_replica_roles.inc(event.roles)

    def _drain_progressed(self, event: Any) -> None:
        self.drain_moved.labels(event.server_id).set(event.parts_moved)
        self.drain_total.labels(event.server_id).set(event.parts_total)
        self.drain_waiting.labels(event.server_id).set(event.parts_waiting)
        self.drain_behind.labels(event.server_id).set(event.replicas_behind)

    def _peer_refused(self, event: Any) -> None:
        self.protocol_violations.labels(_code_label(event.error_code)).inc()

    def _credential_refused(self, event: Any) -> None:
        self.credentials_refused.labels(_reason_label(event.reason)).inc()

    def _credentials_paced(self, event: Any) -> None:
        self.credentials_paced.inc(event.presented - event.checked)

    def _held_answered(self, event: Any) -> None:
        self.held_answered.labels(event.why.value).inc(event.requests)


_MANAGER_HANDLERS: dict[type, Callable[[ManagerMetrics, Any], None]] = {
    manager_events.HandoffStarted: ManagerMetrics._handoff_started,
    manager_events.HandoffCompleted: ManagerMetrics._handoff_completed,
    manager_events.HandoffAborted: ManagerMetrics._handoff_aborted,
    manager_events.ServerDeclaredDead: ManagerMetrics._server_dead,
    manager_events.FailoverCompleted: ManagerMetrics._failover_completed,
    manager_events.PartsLost: ManagerMetrics._parts_lost,
    manager_events.PartsReset: ManagerMetrics._parts_reset,
    manager_events.PartsMovedImplicitly: ManagerMetrics._parts_moved_implicitly,
    manager_events.PartsUnreplicated: ManagerMetrics._parts_unreplicated,
    manager_events.MovesDropped: ManagerMetrics._moves_dropped,
    manager_events.RiskFlagged: ManagerMetrics._risk_flagged,
    manager_events.RiskAssessed: ManagerMetrics._risk_assessed,
    manager_events.MapCommitted: ManagerMetrics._map_committed,
    manager_events.MapLoaded: ManagerMetrics._map_loaded,
    manager_events.MapCommitRejected: ManagerMetrics._map_rejected,
    manager_events.SessionRegistered: ManagerMetrics._session_registered,
    manager_events.SessionOpenRefused: ManagerMetrics._session_open_refused,
    manager_events.SessionsExpired: ManagerMetrics._sessions_expired,
    manager_events.DrainProgressed: ManagerMetrics._drain_progressed,
    manager_events.RebalanceQueued: ManagerMetrics._rebalance_queued,
    manager_events.ReplicasRebalanced: ManagerMetrics._replicas_rebalanced,
    manager_events.PeerRefused: ManagerMetrics._peer_refused,
    manager_events.CredentialRefused: ManagerMetrics._credential_refused,
    manager_events.CredentialsPaced: ManagerMetrics._credentials_paced,
    manager_events.MapRequestsAnswered: ManagerMetrics._held_answered,
}
_MANAGER_EVENT_TYPES = frozenset(_MANAGER_HANDLERS)


_SERVER_GAUGES: tuple[tuple[str, str, Callable[[ServerView], float]], ...] = (
    ("sessions", "Sessions with a primary part on the server.", lambda v: v.sessions),
    (
        "up",
        "1 while the server is alive or suspected.",
        lambda v: 1.0 if v.member_state in ("alive", "suspected") else 0.0,
    ),
    (
        "hearing",
        "1 while its heartbeats confirm the map versions sent to it; 0 once one has gone"
        " unconfirmed for suspect_timeout_ms (ServerNotHearing: the manager's messages to it"
        " seem lost, and no handoff starts from or onto it).",
        lambda v: 1.0 if v.hearing else 0.0,
    ),
    ("cpu_utilization_ratio", "CPU use (1 is one core).", lambda v: v.cpu_utilization),
    ("requests_per_second", "Requests per second reported.", lambda v: v.requests_per_second),
    ("latency_p99_seconds", "Request latency, p99.", lambda v: v.latency_us_p99 / 1e6),
    ("loop_lag_p99_seconds", "Event-loop lag, p99.", lambda v: v.loop_lag_us_p99 / 1e6),
    ("risk_ratio", "Risk of failing soon (1 = the policy acts).", lambda v: v.risk),
)
"""Per-server gauges: name after `forehand_server_`, help, value."""


def _server_families(view: ClusterView) -> Iterator[Metric]:
    """The per-server gauges of the newest sample."""
    for suffix, text, read in _SERVER_GAUGES:
        family = GaugeMetricFamily(f"forehand_server_{suffix}", text, labels=["server"])
        for item in view.servers:
            family.add_metric([item.server_id], read(item))
        yield family
    parts = GaugeMetricFamily(
        "forehand_server_parts", "Parts placed on the server, by role.", labels=["server", "role"]
    )
    for item in view.servers:
        parts.add_metric([item.server_id, "primary"], item.primary_parts)
        parts.add_metric([item.server_id, "replica"], item.replica_parts)
    yield parts


class _ClusterCollector(Collector):
    """Gauges of the newest `ClusterView` sample, built at scrape time."""

    def __init__(self, view: ClusterView, risk: RiskTracker) -> None:
        self._view = view
        self._risk = risk

    def collect(self) -> Iterator[Metric]:
        view = self._view
        yield from _server_families(view)
        paths = GaugeMetricFamily(
            "forehand_path_risk_ratio",
            "Risk per client path bucket of a server.",
            labels=["server", "bucket"],
        )
        for server_id, bucket, risk in self._risk.path_risks(now_us=view.sampled_us):
            paths.add_metric([server_id, bucket], risk)
        yield paths
        entries = GaugeMetricFamily(
            "forehand_replication_lag_entries",
            "Log entries a replica has not applied yet.",
            labels=["part", "replica"],
        )
        seconds = GaugeMetricFamily(
            "forehand_replication_lag_seconds",
            "How long ago the primary reached the oldest entry the replica lacks.",
            labels=["part", "replica"],
        )
        for lag in view.lags:
            entries.add_metric([lag.part, lag.replica], lag.entries)
            seconds.add_metric([lag.part, lag.replica], lag.seconds)
        yield entries
        yield seconds


class ServerMetrics:
    """A server's metrics: an event subscriber plus scrape-time gauges of its parts."""

    def __init__(
        self, *, core: ServerCore, driver: Any, registry: CollectorRegistry | None = None
    ) -> None:
        """`driver` is the `NodeDriver` (its `input_received_s` hook and loop clock)."""
        self.registry = registry if registry is not None else CollectorRegistry()
        """What `/metrics` exposes."""
        self._driver = driver
        self._pending: OrderedDict[tuple[bytes, str, int], float] = OrderedDict()
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "forehand_requests",
            "Requests executed, by part and status.",
            ["part", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "forehand_request_duration_seconds",
            "From the request's arrival to its answer (logged writes: their acknowledgement).",
            ["part"],
            buckets=REQUEST_DURATION_BUCKETS_S,
            registry=r,
        )
        self.refused = Counter(
            "forehand_requests_refused",
            "Requests refused, by part and status.",
            ["part", "status"],
            registry=r,
        )
        self.redirected = Counter(
            "forehand_requests_redirected",
            "Requests redirected to another server.",
            ["part"],
            registry=r,
        )
        self.forwarded = Counter(
            "forehand_requests_forwarded",
            "Requests forwarded to the new primary.",
            ["part"],
            registry=r,
        )
        self.applied = Counter(
            "forehand_log_entries_applied",
            "Log entries applied as a replica.",
            ["part"],
            registry=r,
        )
        self.client_handoffs = Counter(
            "forehand_client_handoffs", "HANDOFF notices sent to clients.", registry=r
        )
        self.handoff_steps = Counter(
            "forehand_handoff_steps",
            "Handoff steps this server completed.",
            ["side", "step"],
            registry=r,
        )
        self.resumes_rejected = Counter(
            "forehand_resumes_rejected",
            "RESUMEs refused (forged, expired, replayed or misdirected tokens...), and session"
            " credentials in HELLO left unbound (forged or expired), by reason.",
            ["reason"],
            registry=r,
        )
        self.protocol_violations = Counter(
            "forehand_protocol_violations",
            "Peers the server core closed with an ERROR for breaking the protocol (frames the"
            " transport cannot decode are not counted here), by error code.",
            ["code"],
            registry=r,
        )
        self.map_version = Gauge(
            "forehand_map_version", "The shard map version adopted.", registry=r
        )
        self.replication_stalled_parts = Gauge(
            "forehand_replication_stalled_parts",
            "Parts whose replicated answers wait for a replica with no progress over"
            " REPLICATION_STALL_HEARTBEATS heartbeats, as last reported (ReplicatedWritesStalled).",
            registry=r,
        )
        r.register(_PartsCollector(core))
        self.event_types = _SERVER_EVENT_TYPES
        """The events it accounts for (`NodeDriver.subscribe`): the driver hands it no other."""

    def _now_s(self) -> float:
        return asyncio.get_running_loop().time()

    def _started_s(self, now_s: float) -> float:
        received = getattr(self._driver, "input_received_s", None)
        return received if isinstance(received, float) and received <= now_s else now_s

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered (bounded by `LABELLED_CHILDREN_MAX`)."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = metric.labels(*values)
            if len(self._children) < LABELLED_CHILDREN_MAX:
                self._children[key] = child
        return child

    def __call__(self, event: object) -> None:
        """Account for one server event."""
        handler = _SERVER_HANDLERS.get(type(event))
        if handler is not None:
            handler(self, event)

    def _executed(self, event: Any) -> None:
        part = event.ref.part
        self._child(self.requests, part, _status(event.status)).inc()
        now_s = self._now_s()
        started_s = self._started_s(now_s)
        if event.log_index is None:
            self._child(self.latency, part).observe(now_s - started_s)
            return
        self._pending[(event.ref.session_id, part, event.request_id)] = started_s
        while len(self._pending) > PENDING_WRITES_MAX:
            self._pending.popitem(last=False)

    def _acknowledged(self, event: Any) -> None:
        if not event.client_facing:
            return
        key = (event.ref.session_id, event.ref.part, event.request_id)
        started_s = self._pending.pop(key, None)
        if started_s is not None:
            self._child(self.latency, event.ref.part).observe(self._now_s() - started_s)

    def _refused(self, event: Any) -> None:
        self._child(self.refused, event.part, _status(event.status)).inc()

    def _redirected(self, event: Any) -> None:
        self._child(self.redirected, event.ref.part).inc()

    def _forwarded(self, event: Any) -> None:
        self._child(self.forwarded, event.ref.part).inc()

    def _applied(self, event: Any) -> None:
        self._child(self.applied, event.ref.part).inc()

    def _handed_off(self, event: Any) -> None:
        self.client_handoffs.inc()

    def _step(self, event: Any) -> None:
        self.handoff_steps.labels(event.side.value, str(event.step)).inc()

    def _map_adopted(self, event: Any) -> None:
        self.map_version.set(event.map_version)

    def _replication_stalled(self, event: Any) -> None:
        self.replication_stalled_parts.set(event.parts)

    def _resume_rejected(self, event: Any) -> None:
        self._child(self.resumes_rejected, _reason_label(event.reason)).inc()

    def _violation(self, event: Any) -> None:
        self._child(self.protocol_violations, _code_label(event.error_code)).inc()


_SERVER_HANDLERS: dict[type, Callable[[ServerMetrics, Any], None]] = {
    server_events.RequestExecuted: ServerMetrics._executed,
    server_events.WriteAcknowledged: ServerMetrics._acknowledged,
    server_events.RequestRefused: ServerMetrics._refused,
    server_events.RequestRedirected: ServerMetrics._redirected,
    server_events.RequestForwardedOut: ServerMetrics._forwarded,
    server_events.LogEntryApplied: ServerMetrics._applied,
    server_events.ClientHandedOff: ServerMetrics._handed_off,
    server_events.HandoffStepCompleted: ServerMetrics._step,
    server_events.MapVersionAdopted: ServerMetrics._map_adopted,
    server_events.ReplicatedWritesStalled: ServerMetrics._replication_stalled,
    server_events.ResumeRejected: ServerMetrics._resume_rejected,
    server_events.ProtocolViolationDetected: ServerMetrics._violation,
}
_SERVER_EVENT_TYPES = frozenset(_SERVER_HANDLERS)


class _PartsCollector(Collector):
    """Parts this server holds, by role, from the core's public `parts()`, and the waiting
    reads it has parked (`reads_parked_count`)."""

    def __init__(self, core: ServerCore) -> None:
        self._core = core

    def collect(self) -> Iterator[Metric]:
        counts = {role.name.lower(): 0 for role in PartRole}
        for part in self._core.parts():
            role = part.role
            if role is not None:
                counts[role.name.lower()] += 1
        family = GaugeMetricFamily("forehand_parts", "Parts held, by role.", labels=["role"])
        for role_name, count in counts.items():
            family.add_metric([role_name], count)
        yield family
        yield GaugeMetricFamily(
            "forehand_waiting_reads",
            "Waiting reads parked until a write answers them or their wait ends.",
            value=self._core.reads_parked_count,
        )


_LISTENER_GAUGES = (
    ("connection_count", "forehand_listener_connections", "Connections a listener holds."),
    ("handshake_count", "forehand_listener_handshakes", "Handshakes under way at a listener."),
)
_LISTENER_COUNTERS = (
    (
        "handshakes_evicted_count",
        "forehand_listener_handshakes_evicted",
        "Handshakes closed to make room for a newer one at handshakes_max.",
    ),
    (
        "handshakes_timed_out_count",
        "forehand_listener_handshakes_timed_out",
        "Handshakes closed for not completing within the handshake timeout.",
    ),
    (
        "retries_sent_count",
        "forehand_listener_quic_retries",
        "QUIC Retry packets sent while handshakes_unvalidated_max was reached.",
    ),
    (
        "retry_tokens_refused_count",
        "forehand_listener_quic_retry_tokens_refused",
        "QUIC Initials dropped for a token the listener did not issue or that expired.",
    ),
)


class ListenersCollector(Collector):
    """The client-facing listeners' counts, read at scrape time and labelled by transport: a
    flood of handshakes shows as evictions and Retries (docs/ARCHITECTURE.md, Transport
    bounds). A count a transport does not keep (Retries on TLS) is left out."""

    def __init__(self, listeners: Any) -> None:
        """`listeners`: the process's `Listener`s (each has a `transport_name`)."""
        self._listeners = tuple(listeners)

    def collect(self) -> Iterator[Metric]:
        for attribute, name, text in _LISTENER_GAUGES:
            gauge = GaugeMetricFamily(name, text, labels=["transport"])
            for label, value in self._values(attribute):
                gauge.add_metric([label], value)
            yield gauge
        for attribute, name, text in _LISTENER_COUNTERS:
            counter = CounterMetricFamily(name, text, labels=["transport"])
            for label, value in self._values(attribute):
                counter.add_metric([label], value)
            yield counter

    def _values(self, attribute: str) -> Iterator[tuple[str, float]]:
        """Per transport, summed over its listeners (a QUIC node also has a TLS one for the
        cluster)."""
        sums: dict[str, float] = {}
        for listener in self._listeners:
            value = getattr(listener, attribute, None)
            if value is not None:
                name = listener.transport_name
                sums[name] = sums.get(name, 0.0) + float(value)
        yield from sums.items()
