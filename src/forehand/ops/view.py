"""The manager's cluster view for operators: servers, load, risk, parts, replication lag, history.

`ClusterView.sample(core, now_us)` reads the manager core's public state (membership with each
server's newest load report and part progress, the shard map) on the event loop, once per
`sample_interval_ms`, and keeps what the admin API, the dashboard and the scrape-time gauges
show: one `ServerView` per member, the newest `history_samples_max` samples per server (the
dashboard's sparklines), and the replication lag per part.

Replication lag. Heartbeats carry every server's applied sequence per part. A replica's lag in
entries is its primary's applied sequence minus its own; its lag in seconds is how long ago the
primary first reported a sequence the replica has not reached (tracked per part from the
primary's reports, `lag_marks_max` marks per part), 0 when it is caught up. Only the
`lagging_parts_max` largest lags are kept, and only of the roles the newest map gives: a
server's last report of a part it no longer holds (a replica role moved by a drain or a
rebalance) stays in the membership until the bound pushes it out, and showed as a replica
falling ever further behind.

Risk. `RiskTracker` keeps per server the newest risk from the predictor: read at each sample
from the policy's `predictor` when it has one (a server's once calibrated, every path bucket
with samples), and from its decision events (any manager event with `server_id` and a numeric
`risk`, such as `RiskAssessed`; with a `path_bucket` too it is a path bucket's risk). When
neither gave one within `fresh_ms`, a server's risk is its load over the rule's thresholds,
`max(cpu / overload_threshold, p99 / overload_latency_us_p99)`, p99 being the worse of request
latency and event-loop lag: at 1.0 the rule flags it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from forehand.core import ManagerCore
from forehand.core._manager_planning import key_of
from forehand.core.messages import PartRef, PartRole
from forehand.ops.audit import part_name
from forehand.predict import EntityKey

__all__ = ["ClusterView", "PartLag", "RiskTracker", "ServerSample", "ServerView"]


SESSION_COUNTS_SYNC_PARTS_MAX = 20_000
"""Largest map whose per-server session counts a sample takes on the event loop. Counting them is
a pass over every part (`ShardMap.primary_sessions`): at 200,000 parts about a second, long
enough to delay the servers' heartbeats past suspicion, so a bigger map's are counted on a worker
thread (the hub's sampler) and a sample shows the counts of the last version counted."""

SNAPSHOT_LAGS_MAX = 20
"""Lagging replicas a snapshot (the dashboard's table) lists, largest lag first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerView:
    """One server as the manager sees it at a sample."""

    server_id: str
    """Its id."""
    address: str
    """Where clients reach it."""
    zone: str
    """Its failure domain."""
    member_state: str
    """Liveness: joining, alive, suspected, dead."""
    map_state: str
    """active, draining or dead in the shard map; "" when not in the map."""
    cpu_utilization: float
    """CPU use of its process over the last load report (1.0 is one core)."""
    requests_per_second: float
    """Requests executed per second over the last load report."""
    latency_us_p99: int
    """Request latency on the server, p99, microseconds (as its load report says)."""
    loop_lag_us_p99: int
    """How late its event loop runs due callbacks, p99, microseconds (0 if not reported)."""
    error_ratio: float
    """Share of requests answered with an error over the last report."""
    risk: float
    """Risk of failing soon (see the module docstring)."""
    primary_parts: int
    """Parts it is primary for in the map."""
    replica_parts: int
    """Parts it replicates in the map."""
    sessions: int
    """Distinct sessions with a part it is primary for."""
    hearing: bool = True
    """False while its heartbeats leave a map version sent to it unconfirmed past
    `suspect_timeout_ms` (`ServerNotHearing`): the manager's messages to it seem lost."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSample:
    """One point of a server's sparklines."""

    at_ms: int
    """Wall-clock milliseconds."""
    cpu_utilization: float
    """CPU use."""
    requests_per_second: float
    """Request rate."""
    risk: float
    """Risk."""
    primary_parts: int
    """Parts it is primary for."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartLag:
    """How far one replica trails its primary on one part."""

    part: str
    """`<session id hex>/<part>`."""
    primary: str
    """The primary."""
    replica: str
    """The replica."""
    entries: int
    """Log entries the replica has not applied yet."""
    seconds: float
    """How long ago the primary reached the oldest entry the replica lacks."""


class RiskTracker:
    """Keeps the risk carried by the predictor's decision events (see the module docstring)."""

    def __init__(
        self, *, clock_us: Callable[[], int], entries_max: int = 4_096, fresh_ms: int = 30_000
    ) -> None:
        assert entries_max >= 1 and fresh_ms >= 0
        self._clock_us = clock_us
        self._entries_max = entries_max
        self._fresh_us = fresh_ms * 1000
        self.servers: dict[str, tuple[float, int]] = {}
        """Server id -> (risk, when), from decision events."""
        self.paths: dict[tuple[str, str], tuple[float, int]] = {}
        """(server id, path bucket) -> (risk, when)."""

    def __call__(self, event: object) -> None:
        """Account for one manager event."""
        server_id = getattr(event, "server_id", None)
        risk = getattr(event, "risk", None)
        if not isinstance(server_id, str) or not isinstance(risk, int | float):
            return
        now_us = self._clock_us()
        bucket = getattr(event, "path_bucket", None)
        if bucket is not None:
            self._put(self.paths, (server_id, str(bucket)), float(risk), now_us)
        else:
            self._put(self.servers, server_id, float(risk), now_us)

    def _put(self, table: dict[Any, tuple[float, int]], key: Any, risk: float, now_us: int) -> None:
        if key not in table and len(table) >= self._entries_max:
            del table[next(iter(table))]
        table[key] = (risk, now_us)

    def sample_predictor(self, predictor: Any, server_ids: list[str], *, now_us: int) -> None:
        """Read the predictor's risk of each server (once calibrated) and of each of its path
        buckets that has samples (`OnlinePredictor.risk`, without explanations)."""
        buckets = int(predictor.config.path_buckets_per_server)
        for server_id in server_ids:
            risk = predictor.risk(EntityKey(server_id), now_us=now_us, explain=False)
            if risk.age_us is not None and risk.calibrated:
                self._put(self.servers, server_id, float(risk.probability), now_us)
            for bucket in range(buckets):
                key = EntityKey(server_id, bucket)
                risk = predictor.risk(key, now_us=now_us, explain=False)
                if risk.age_us is not None:
                    self._put(self.paths, (server_id, str(bucket)), float(risk.probability), now_us)

    def risk_of(self, server_id: str, *, now_us: int) -> float | None:
        """The server's fresh risk from a decision event, or None."""
        entry = self.servers.get(server_id)
        if entry is None or now_us - entry[1] > self._fresh_us:
            return None
        return entry[0]

    def path_risks(self, *, now_us: int) -> list[tuple[str, str, float]]:
        """(server, bucket, risk) of every fresh path bucket."""
        return [
            (server, bucket, risk)
            for (server, bucket), (risk, at_us) in self.paths.items()
            if now_us - at_us <= self._fresh_us
        ]


class ClusterView:
    """The sampled cluster state (see the module docstring)."""

    def __init__(
        self,
        *,
        risk: RiskTracker,
        thresholds: Callable[[], Mapping[str, Any]],
        history_samples_max: int = 120,
        lagging_parts_max: int = 1_000,
        lag_marks_max: int = 64,
        tracked_parts_max: int = 100_000,
    ) -> None:
        """`thresholds` answers the risk policy's current settings (for the load-based risk)."""
        assert history_samples_max >= 1 and lagging_parts_max >= 1 and lag_marks_max >= 1
        self._risk = risk
        self._thresholds = thresholds
        self._history_max = history_samples_max
        self._lagging_max = lagging_parts_max
        self._marks_max = lag_marks_max
        self._tracked_max = tracked_parts_max
        self.servers: list[ServerView] = []
        """Every member at the newest sample, sorted by id."""
        self.history: dict[str, deque[ServerSample]] = {}
        """Server id -> its newest samples, oldest first."""
        self.lags: list[PartLag] = []
        """The largest replication lags at the newest sample."""
        self.map_version = 0
        """The manager's map version at the newest sample."""
        self.session_counts: dict[str, int] = {}
        """Per server, the distinct sessions it is primary of a part of, at the map version
        `session_counts_version`."""
        self.session_counts_version = -1
        """The map version `session_counts` counted (-1: none yet)."""
        self.override_count = 0
        """Parts placed by override rather than by hash."""
        self.sampled_us = 0
        """When the newest sample was taken."""
        self._marks: dict[PartRef, deque[tuple[int, int]]] = {}

    def sample(self, core: ManagerCore, *, now_us: int) -> None:
        """Take one sample of `core` (on the loop that drives it)."""
        self.sampled_us = now_us
        current = core.shard_map
        self.map_version = core.map_version
        self.override_count = current.override_count if current is not None else 0
        if (
            current is not None
            and current.version != self.session_counts_version
            and len(current) <= SESSION_COUNTS_SYNC_PARTS_MAX
        ):
            self.session_counts = current.primary_sessions()
            self.session_counts_version = current.version
        self.servers = [self._server(core, member, now_us) for member in core.membership.members()]
        self.servers.sort(key=lambda view: view.server_id)
        for view in self.servers:
            history = self.history.get(view.server_id)
            if history is None:
                history = self.history[view.server_id] = deque(maxlen=self._history_max)
            history.append(
                ServerSample(
                    at_ms=now_us // 1000,
                    cpu_utilization=view.cpu_utilization,
                    requests_per_second=view.requests_per_second,
                    risk=view.risk,
                    primary_parts=view.primary_parts,
                )
            )
        known = {view.server_id for view in self.servers}
        for gone in [server for server in self.history if server not in known]:
            del self.history[gone]
        self.lags = self._lags(core, now_us)

    def _server(self, core: ManagerCore, member: Any, now_us: int) -> ServerView:
        current = core.shard_map
        map_state, primary, replica, sessions = "", 0, 0, 0
        if current is not None:
            try:
                map_state = str(current.server(member.server_id).state.value)
                primary, replica = current.part_counts(member.server_id)
                sessions = self.session_counts.get(member.server_id, 0)
            except KeyError:
                map_state = ""
        load = member.load
        cpu = load.cpu_utilization if load is not None else 0.0
        latency_us = load.latency_us_p99 if load is not None else 0
        risk = self._risk.risk_of(member.server_id, now_us=now_us)
        if risk is None:
            # The rule reads the worse of request latency and loop lag (requests wait out a stall).
            lag_us = load.loop_lag_us_p99 if load is not None else 0
            risk = self._load_risk(cpu, max(latency_us, lag_us))
        return ServerView(
            server_id=member.server_id,
            address=member.address,
            zone=member.zone,
            member_state=member.state.value,
            map_state=map_state,
            cpu_utilization=cpu,
            requests_per_second=load.requests_per_second if load is not None else 0.0,
            latency_us_p99=latency_us,
            loop_lag_us_p99=int(getattr(load, "loop_lag_us_p99", 0) or 0),
            error_ratio=load.error_ratio if load is not None else 0.0,
            risk=round(risk, 4),
            primary_parts=primary,
            replica_parts=replica,
            sessions=sessions,
            hearing=member.not_hearing_since_us is None,
        )

    def _load_risk(self, cpu: float, latency_us: int) -> float:
        thresholds = self._thresholds()
        risk = 0.0
        cpu_threshold = float(thresholds.get("overload_threshold", 0.0) or 0.0)
        if cpu_threshold > 0:
            risk = cpu / cpu_threshold
        latency_threshold = float(thresholds.get("overload_latency_us_p99", 0) or 0)
        if latency_threshold > 0:
            risk = max(risk, latency_us / latency_threshold)
        return risk

    def _lags(self, core: ManagerCore, now_us: int) -> list[PartLag]:
        """Replication lag of every replica that reported progress (see the module docstring)."""
        primaries: dict[PartRef, tuple[str, int]] = {}
        replicas: list[tuple[PartRef, str, int]] = []
        for member in core.membership.members():
            if not member.is_live:
                continue
            for ref, progress in member.progress.items():
                if progress.role == PartRole.PRIMARY:
                    primaries[ref] = (member.server_id, progress.applied_seq)
                elif progress.role == PartRole.REPLICA:
                    replicas.append((ref, member.server_id, progress.applied_seq))
        for ref, (_, seq) in primaries.items():
            self._mark(ref, seq, now_us)
        for ref in [ref for ref in self._marks if ref not in primaries]:
            del self._marks[ref]
        current = core.shard_map
        lags = []
        for ref, replica, applied in replicas:
            primary = primaries.get(ref)
            if primary is None or current is None:
                continue
            key = key_of(ref)
            if key not in current:
                continue
            placement = current.lookup(key)
            if placement.primary != primary[0] or replica not in placement.replicas:
                continue  # A role the map no longer gives: its report is stale.
            entries = max(0, primary[1] - applied)
            seconds = 0.0
            if entries:
                marks = self._marks.get(ref, ())
                reached_us = next((at_us for seq, at_us in marks if seq > applied), now_us)
                seconds = (now_us - reached_us) / 1_000_000
            lags.append(
                PartLag(
                    part=part_name(ref),
                    primary=primary[0],
                    replica=replica,
                    entries=entries,
                    seconds=round(seconds, 3),
                )
            )
        lags.sort(key=lambda lag: (-lag.entries, lag.part, lag.replica))
        return lags[: self._lagging_max]

    def _mark(self, ref: PartRef, seq: int, now_us: int) -> None:
        marks = self._marks.get(ref)
        if marks is None:
            if len(self._marks) >= self._tracked_max:
                return
            marks = self._marks[ref] = deque(maxlen=self._marks_max)
        if not marks or seq > marks[-1][0]:
            marks.append((seq, now_us))

    def snapshot(self) -> dict[str, Any]:
        """The newest sample as JSON-ready data (servers with their sparkline points)."""
        return {
            "sampled_us": self.sampled_us,
            "map_version": self.map_version,
            "override_count": self.override_count,
            "lags": [asdict(lag) for lag in self.lags[:SNAPSHOT_LAGS_MAX] if lag.entries > 0],
            "servers": [
                {
                    **asdict(view),
                    "history": [asdict(point) for point in self.history.get(view.server_id, ())],
                }
                for view in self.servers
            ],
        }
