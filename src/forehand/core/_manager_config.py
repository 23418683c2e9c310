"""The Session Manager's configuration: every bound and timeout of `ManagerCore`, with its unit.

One frozen dataclass (STYLE.md rule 10), validated on construction, with `randomized(rng)` so the
simulator can explore the space of valid configurations from one seed.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass, fields

from forehand.errors import ConfigError
from forehand.wire import FRAME_BYTES_MAX_FLOOR, VARINT_MAX

__all__ = ["FailureDetectorKind", "ManagerConfig", "RiskPolicyKind"]

MANAGER_NODE_ID = "manager"
"""The node id every server and client addresses the Session Manager by."""
SESSION_PARTS_MAX = 64
"""Most parts one session may open with (the wire's `parts_max` default)."""
RISK_MODELS = ("logistic", "rule", "tree")
"""The predictor heads `risk_model` may name (`forehand.predict.MODEL_REGISTRY`)."""
REBALANCE_TOLERANCE_MAX = 10.0
"""Largest tolerance a rebalance takes (the operator commands and `rebalance_tolerance` refuse
more): a server 10 times over its share is far beyond any sensible trigger."""


class FailureDetectorKind(enum.Enum):
    """How the manager decides that a silent server is dead."""

    TIMEOUT = "timeout"
    """Suspected after `suspect_timeout_ms` of silence, dead after `failure_timeout_ms`."""
    PHI_ACCRUAL = "phi_accrual"
    """Suspected and dead at phi thresholds over the observed heartbeat intervals; dead at the
    latest after `failure_timeout_ms`, so the bound holds whatever the history."""


class RiskPolicyKind(enum.Enum):
    """Which risk policy decides when to move parts off a server before it fails."""

    PREDICTIVE = "predictive"
    """The online predictor and the trigger policy (`forehand.predict`); until its calibrator has
    learned `risk_calibration_labels_min` labels it falls back to the rule."""
    RULE = "rule"
    """The plain threshold on CPU utilization and p99 latency (`overload_*`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ManagerConfig:
    """Bounds, timeouts and policy knobs of the Session Manager core."""

    node_id: str = MANAGER_NODE_ID
    """The manager's node name, as servers and clients address it."""
    client_transport: str = ""
    """The transport this cluster's clients use (`tls`, `quic`; the `forehand manager`
    process sets its own): a server that announces another is refused, since no client could
    reach it. Empty: not checked."""
    servers_max: int = 1024
    """Most servers the membership table holds (dead ones included until they are forgotten)."""
    clients_max: int = 65_536
    """Most client connections whose HELLO the manager remembers at once."""
    client_sessions_max: int = 1_024
    """Most sessions the manager remembers per client connection (for its MAP_REQUESTs)."""
    map_parts_max: int = 16_000_000
    """Most parts the shard map holds: an OPEN_SESSION that would pass it is refused (ERROR
    LIMIT_EXCEEDED). Anyone who reaches the manager may open sessions, and each stays until it
    is closed; this bounds the map's memory (about 700 bytes a part) against a flood of them."""
    open_rate_per_origin: float = 20.0
    """Sessions one origin may open a second, on average, once its `open_burst_per_origin` is
    spent (a token bucket). An origin is the IP address a client connection comes from, the /64
    prefix for IPv6. Past the pace an OPEN_SESSION is refused with the wait in `retry_after_ms`,
    which clients wait out and send again, so a fast opener is slowed, not failed. Clients behind
    one proxy or NAT share its address: raise it for them, or 0 turns the pace off. Sessions
    stay until closed or expired, so one address can still hold up to this rate times
    `session_expiry_ms` of them; `map_parts_max` is the hard bound."""
    open_burst_per_origin: int = 5_000
    """Sessions one origin may open at once before `open_rate_per_origin` paces it."""
    credential_rate_per_origin: float = 20_000.0
    """Session credentials (in HELLO and MAP_REQUEST) the manager checks for one origin a
    second, on average, once its `credential_burst_per_origin` is spent (a token bucket, as
    `open_rate_per_origin`). Each check costs the manager about 5 us (a forged one), and a
    frame may carry 1,024, so one client sending such frames in a loop kept the whole loop busy;
    paced, one origin takes at most a tenth of it. Past the pace the credentials left over are
    not checked (their sessions not bound, nothing said), and the client presents them again in
    its next MAP_REQUEST. A credential of a session the connection already proved is not checked
    again, so a client spends them only on reconnects. Clients behind one proxy or NAT share
    its address: raise it for them, or 0 turns the pace off."""
    credential_burst_per_origin: int = 100_000
    """Credentials one origin may have checked at once before `credential_rate_per_origin`
    paces it."""
    origins_max: int = 65_536
    """Most origins whose open pace the manager tracks; the one heard from longest ago is
    forgotten first (a quiet origin's bucket refills within burst / rate seconds, so forgetting it
    then loses nothing)."""
    map_request_hold_ms: int = 1_500
    """A MAP_REQUEST each of whose presented sessions has a part with its primary on a server
    the manager cannot reach (connection lost, suspected, or dead and not yet failed over) is
    held this long, and answered as soon as a committed version moves one of those sessions, the
    server is heard from again, or the time is up: the client learns a failover when it commits
    instead of at its next poll. Keep it below the clients' `map_request_timeout_ms` (3,000 by
    default); 0 answers every request at once."""
    placement_changes_sessions_max: int = 1_048_576
    """Most sessions whose last placement change the manager tracks to answer MAP_REQUEST with
    "nothing newer"; beyond it, it takes every placement as changed (and answers in full)."""
    heartbeat_interval_ms: int = 500
    """The interval servers heartbeat at; seeds the phi-accrual detector before it has history."""
    suspect_timeout_ms: int = 1_500
    """Silence after which a server is suspected (timeout detector); below failure_timeout_ms."""
    failure_timeout_ms: int = 3_000
    """Silence after which a server is declared dead, with either detector."""
    map_adopt_allowance_us_per_part: int = 100
    """A server sent a map version that may move many of its parts is busy adopting it (a
    failover on a small fleet moves nearly all of them): for each part the version may move
    (`ManagerCore` estimates it), the server may stay silent this much longer before it is
    declared dead, until it reports that version. Suspicion is unchanged; 0 turns it off."""
    map_adopt_allowance_max_ms: int = 15_000
    """The most that allowance adds to the failure timeout."""
    failure_detector: FailureDetectorKind = FailureDetectorKind.TIMEOUT
    """Which failure detector decides suspicion and death."""
    phi_suspect_threshold: float = 3.0
    """Phi at which a silent server is suspected (phi-accrual detector)."""
    phi_dead_threshold: float = 8.0
    """Phi at which a silent server is declared dead (phi-accrual detector)."""
    phi_samples_max: int = 100
    """Heartbeat intervals the phi-accrual detector keeps per server."""
    phi_deviation_ms_min: int = 100
    """Floor on the standard deviation of heartbeat intervals, so a very regular sender is not
    declared dead by one late heartbeat."""
    heartbeat_pause_acceptable_ms: int = 0
    """Pause added to the mean interval before phi grows, for expected hiccups (collection, GC)."""
    part_progress_per_server_max: int = 65_536
    """Most part progress records (from heartbeats) kept per server; the oldest is forgotten."""
    dead_servers_forget_ms: int = 600_000
    """A dead server's membership record is forgotten this long after its death."""
    failover_prepare_timeout_ms: int = 1_000
    """How long a failover waits for replicas' positions before promoting with what it has."""
    failover_prepare_parts_max: int = 4_096
    """Most parts one FailoverPrepared names; a replica of more parts gets several."""
    pending_deltas_max: int = 256
    """Map changes queued behind the one commit in flight; a full queue pushes back."""
    snapshot_interval_deltas: int = 1_000
    """Commits between two snapshots of the whole map saved to the store."""
    map_history_deltas_max: int = 1_024
    """Newest published deltas kept to bring a readmitted or lagging server up to date (the
    deltas since the version it holds instead of the whole map); 0 sends the whole map."""
    map_history_bytes_max: int = 64 << 20
    """Most bytes of deltas those keep; the oldest go first."""
    store_timeout_ms: int = 5_000
    """A store request unanswered this long is abandoned: the manager reloads the map."""
    store_retry_backoff_ms: int = 100
    """After a second store failure in a row (an answer of failure, or silence) the manager
    waits this long before it reloads the map, doubling with each further failure; the first
    failure reloads at once."""
    store_retry_backoff_max_ms: int = 5_000
    """The longest wait between two reloads of a store that keeps failing."""
    handoff_deadline_ms: int = 5_000
    """Time the participants of a handoff get to finish steps 3 and 4 (sent in HandoffAssigned)."""
    handoff_deadline_grace_ms: int = 1_000
    """Extra wait past the deadline for the participants' report before falling back to failover."""
    handoff_backup_report_timeout_ms: int = 15_000
    """After the target reported, how long the source gets to report the end of its backup period
    (steps 4 and 5; above the servers' `backup_period_ms`); past it the target's report ends the
    handoff."""
    handoffs_per_server_max: int = 2
    """Most handoffs one server takes part in at once, as source or as target, until their
    target reports (the transfer done; the source's backup period then counts under
    `handoffs_backing_up_per_server_max`)."""
    handoffs_backing_up_per_server_max: int = 8
    """Most handoffs of one source in their backup period (the target serves, the source
    forwards stragglers while its clients switch, `backup_period_ms`); with
    `handoffs_per_server_max` it stays below the servers' own `handoffs_concurrent_max` (16),
    past which a server aborts a handoff it is asked to lead."""
    handoffs_concurrent_max: int = 32
    """Most handoffs in progress at once across the cluster, until their target reports."""
    handoff_parts_max: int = 16
    """Most parts one handoff moves (one HandoffAssigned)."""
    drain_handoff_parts_max: int = 64
    """Most parts one handoff of a drain moves (an operator's, or a server's leave). A source
    keeps each handoff in its backup period for `backup_period_ms` (5 s), at most
    `handoffs_backing_up_per_server_max` of them, so this bounds how fast a server empties:
    measured live (three servers, 1,000 sessions, 300 calling), a server leading about 1,300
    parts handed them all off and left in 16 s at 64; at 16 it still led 466 when its 30 s
    leave ran out (docs/PERFORMANCE.md, planned handoff)."""
    handoff_queue_parts_max: int = 16_384
    """Most part moves waiting for a handoff slot."""
    handoff_queue_timeout_ms: int = 120_000
    """A part move waiting this long for a target or a slot is dropped (and reported)."""
    handoff_plan_interval_ms: int = 0
    """Least time between two handoff planning passes: moves queued and slots freed meanwhile
    are planned together at the next pass (a pass's handoffs commit as one version, see
    `commit_group_changes_max`). 0: a pass after every input that allows one."""
    commit_group_changes_max: int = 32
    """Most handoff assignments, or session opens, committed together as one map version
    (queued side by side, of one kind)."""
    handoff_target_candidates_max: int = 32
    """Most servers, beyond the part's own replicas, one planning pass examines as a move's
    target: a window of the part's walk over the servers, the next window on the next pass, so
    the cost of planning does not grow with the fleet and every server is reached in time."""
    replica_moves_per_commit_max: int = 256
    """Most replica roles one drain commit moves off the drained server, and one automatic
    rebalance commit moves to the servers below their share of them."""
    handoff_jitter_ms_max: int = 50
    """Random pause, up to this long, between two handoff batches, so moves do not stampede."""
    target_cpu_utilization_max: float = 0.75
    """A handoff target must report CPU utilization below this (headroom)."""
    rebalance_interval_ms: int = 60_000
    """How often the manager checks that the servers' primaries are even, and rebalances them
    when they are not (`ManagerCore.rebalance`: planned handoffs, reason REBALANCE): a server
    that restarted, or that the risk policy or a drain emptied and that came back, gets its
    share of the existing sessions again. It rebalances only a settled cluster: the servers,
    their states and incarnations and the risk policy's blocks the same as at the check before,
    no failover, drain or risk drain under way, and no move queued or running. 0: only when an
    operator asks (`forehand rebalance`)."""
    rebalance_settle_ms: int = 15_000
    """After a check that found the cluster not settled (a server joined, restarted, left or
    went silent; a failover, drain or move under way) or that queued a rebalance, the next
    check comes this much later instead of `rebalance_interval_ms` (at most that); a server's
    join brings the next check forward to this long after it. The servers a rolling restart
    brought back last get their share within about twice this long of the last one joining,
    and a rebalance larger than `rebalance_parts_max` goes on as soon as its moves ended."""
    rebalance_tolerance: float = 0.2
    """An automatic rebalance runs when a server's primaries are more than this share above or
    below its weighted share (0.2: 20 %)."""
    rebalance_parts_max: int = 1_000
    """Most parts one automatic rebalance queues; the next check, once they moved, goes on."""
    rebalance_after_risk_ms: int = 600_000
    """A server the risk policy moved parts off receives nothing from an automatic rebalance
    for this long after (the parts would come back to it, a ping-pong, if its fault returned);
    an operator's rebalance does not wait."""
    target_lag_entries_max: int = 64
    """A replica counts as up to date when it trails the primary by at most this many entries."""
    overload_threshold: float = 0.9
    """CPU utilization above which the threshold risk policy moves parts away."""
    overload_latency_us_p99: int = 0
    """p99 request latency, or p99 event-loop lag (requests wait that long unread), above which
    the threshold risk policy moves parts away; 0 disables it."""
    overload_cooldown_ms: int = 30_000
    """After the threshold policy flags a server, it stays quiet about it this long."""
    overload_parts_fraction: float = 0.25
    """Share of an overloaded server's primary parts moved per flag (at least one)."""
    risk_policy: RiskPolicyKind = RiskPolicyKind.PREDICTIVE
    """Which risk policy runs: the predictor (the default) or the plain threshold rule."""
    risk_model: str = "logistic"
    """The predictor head whose risk decides (`logistic`, `rule` or `tree`, see
    `forehand.predict.MODEL_REGISTRY`); the others run beside it as challengers."""
    risk_threshold: float = 0.5
    """Calibrated risk held for k of n heartbeats above which the predictive policy drains a
    server; 0.7 of it stops new placements, 0.5 of it ends the alarm (hysteresis)."""
    risk_urgent_threshold: float = 0.9
    """Calibrated risk above which the predictive policy moves every part at once."""
    risk_horizon_ms: int = 600_000
    """H: the predictor's risk is that of an SLO breach starting within (now + L, now + H]."""
    risk_lead_ms: int = 10_000
    """L: the least warning worth having; a handoff must fit in it."""
    risk_latency_slo_us_p99: int = 250_000
    """The p99 latency SLO the predictor labels breaches against (a server reporting more is
    breaching); also the capacity its latency time-to-threshold aims at."""
    risk_tick_ms: int = 1_000
    """Least time between two samples of one server the predictor takes (heartbeats in between
    go to the rule while it decides, and are otherwise skipped): the predictor's cost per server
    stays bounded whatever the heartbeat interval."""
    risk_calibration_labels_min: int = 500
    """Labelled heartbeats the predictor's calibrator needs before its risks are acted on."""
    risk_target_margin: float = 0.2
    """A risk move's target must be this much less risky than its source (calibrated risks)."""
    risk_session_dwell_ms: int = 300_000
    """A session moved by the risk policy may not be moved by it again for this long."""
    risk_moves_per_server_max: int = 64
    """Most parts the risk policy moves off one server ..."""
    risk_budget_window_ms: int = 60_000
    """... within this sliding window."""
    risk_drain_first_fraction: float = 0.05
    """Least share of a server's primaries the first step of a graded risk drain moves; the step
    moves more when the server's projected CPU is further above
    `risk_drain_cpu_utilization_target`
    (the share of its load to shed to get back under it)."""
    risk_drain_cpu_utilization_target: float = 0.75
    """CPU a graded risk drain sheds a server's load down to (projected over the escalation
    dwell); a server at risk under it has a fault that is not load."""
    risk_drain_unloaded_fraction: float = 1.0
    """Share the first step of a graded risk drain moves when the server's projected CPU is under
    `risk_drain_cpu_utilization_target`: its risk is not load that shedding a share would cure
    (errors, latency, a flapping link), so its sessions leave, within the migration budget."""
    risk_drain_urgent_sheds_load: bool = True
    """Whether an urgent risk (MOVE_NOW) on a server whose projected CPU is above
    `risk_drain_cpu_utilization_target` sheds that load in graded steps like a drain, rather
    than moving every part; an urgent risk that is not load moves every part either way."""
    risk_drain_escalation_ticks: int = 2
    """Predictor ticks a drained server's risk must stay above `risk_threshold` after a step
    before the next, larger step (the dwell that lets a step show its effect)."""
    risk_drain_escalation_factor: float = 2.0
    """Each further step of a graded drain moves this many times the share of the step before
    (at most all); an urgent risk moves everything at once only when it is not load (see
    `risk_drain_urgent_sheds_load`)."""
    risk_drain_projection_ms: int = 0
    """Span over which a graded drain projects a server's rising CPU trend to size its first
    step (the load to shed); 0 projects over the escalation dwell (`risk_drain_escalation_ticks`
    predictor ticks), the next chance to step again."""
    risk_drain_projected_cpu_max: float = 2.0
    """Cap on that projection: a steep trend projected far would otherwise empty the server."""
    path_client_buckets: int = 256
    """Client buckets the servers hash client ids into for their path reports (the servers'
    `path_buckets_max`): the manager hashes a session's client the same way to find the path
    reports of that client's bucket."""
    session_buckets_max: int = 1_048_576
    """Most sessions whose client bucket the manager keeps; the oldest is forgotten past it
    (its moves then read the target's average path risk)."""
    risk_holdout_fraction: float = 0.0
    """Share of alarm episodes decided and logged but not acted on, to keep measuring precision."""
    risk_shadow_mode: bool = False
    """The predictive policy decides and logs (`RiskAssessed`) but never acts."""
    session_parts_max: int = SESSION_PARTS_MAX
    """Most parts an OPEN_SESSION may name."""
    token_lifetime_ms: int = 300_000
    """Lifetime of the resumption token SESSION_OPENED carries."""
    credential_lifetime_ms: int = 86_400_000
    """Lifetime of the session credential SESSION_OPENED carries (and states, so that the client
    renews it in time)."""
    session_expiry_ms: int = 172_800_000
    """A session for which no credential was issued (opened, or renewed by a server) for this
    long is closed: no client can bind to it any more. At least 1.5 x `credential_lifetime_ms`
    (refused otherwise; the servers' lifetime must be below it too), the lifetime plus the
    clients' longest renewal interval (half the lifetime), so that a renewal whose report was
    lost with a connection does not leave a client holding a valid credential of a session
    already closed; 0 keeps sessions until closed."""
    session_expiry_batch: int = 8192
    """Sessions an expiry sweep examines per step (a step every 10 ms while a round runs)."""
    idle_timeout_ms: int = 60_000
    """Idle timeout the manager announces in WELCOME."""
    frame_bytes_max: int = 1 << 20
    """Largest frame body the manager accepts, announced in WELCOME."""
    events_buffered_max: int = 65_536
    """Events kept until drained; beyond it the oldest are dropped (and counted)."""

    def __post_init__(self) -> None:
        self._check_types()
        self._check_relations()

    def _check_types(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "node_id":
                if not isinstance(value, str) or not value:
                    raise ConfigError("ManagerConfig.node_id must be a non-empty string")
            elif field.name == "client_transport":
                if not isinstance(value, str):
                    raise ConfigError("ManagerConfig.client_transport must be a string")
            elif field.name == "failure_detector":
                if not isinstance(value, FailureDetectorKind):
                    raise ConfigError("ManagerConfig.failure_detector must be FailureDetectorKind")
            elif field.name == "risk_model":
                if value not in RISK_MODELS:
                    raise ConfigError(f"ManagerConfig.risk_model must be one of {RISK_MODELS}")
            elif field.name in ("risk_shadow_mode", "risk_drain_urgent_sheds_load"):
                if not isinstance(value, bool):
                    raise ConfigError(f"ManagerConfig.{field.name} must be a bool")
            elif field.name == "risk_policy":
                if not isinstance(value, RiskPolicyKind):
                    raise ConfigError("ManagerConfig.risk_policy must be RiskPolicyKind")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"ManagerConfig.{field.name} must be a number, got {value!r}")
            elif not math.isfinite(value):
                raise ConfigError(f"ManagerConfig.{field.name} must be finite, got {value!r}")
            elif value < 0 or (value == 0 and field.name not in _ZERO_ALLOWED):
                raise ConfigError(f"ManagerConfig.{field.name} must be positive, got {value!r}")

    def _check_relations(self) -> None:
        if not FRAME_BYTES_MAX_FLOOR <= self.frame_bytes_max <= VARINT_MAX:
            raise ConfigError(
                f"ManagerConfig.frame_bytes_max must be from {FRAME_BYTES_MAX_FLOOR} (what every "
                f"peer may send) to {VARINT_MAX}, got {self.frame_bytes_max}"
            )
        if self.store_retry_backoff_ms > self.store_retry_backoff_max_ms:
            raise ConfigError(
                "ManagerConfig.store_retry_backoff_ms must not exceed store_retry_backoff_max_ms"
            )
        if self.suspect_timeout_ms >= self.failure_timeout_ms:
            raise ConfigError("ManagerConfig.suspect_timeout_ms must be below failure_timeout_ms")
        if self.phi_suspect_threshold >= self.phi_dead_threshold:
            raise ConfigError(
                "ManagerConfig.phi_suspect_threshold must be below phi_dead_threshold"
            )
        if self.handoffs_per_server_max > self.handoffs_concurrent_max:
            raise ConfigError(
                "ManagerConfig.handoffs_per_server_max must not exceed handoffs_concurrent_max"
            )
        if self.overload_parts_fraction > 1.0:
            raise ConfigError("ManagerConfig.overload_parts_fraction must be at most 1.0")
        if not self.risk_threshold < self.risk_urgent_threshold <= 1.0:
            raise ConfigError("ManagerConfig needs risk_threshold < risk_urgent_threshold <= 1")
        if self.risk_lead_ms >= self.risk_horizon_ms:
            raise ConfigError("ManagerConfig.risk_lead_ms must be below risk_horizon_ms")
        if max(self.risk_target_margin, self.risk_holdout_fraction) > 1.0:
            raise ConfigError("ManagerConfig risk margin and holdout fraction are at most 1.0")
        if (
            max(
                self.risk_drain_first_fraction,
                self.risk_drain_unloaded_fraction,
                self.risk_drain_cpu_utilization_target,
            )
            > 1.0
            or self.risk_drain_escalation_factor < 1.0
        ):
            raise ConfigError(
                "ManagerConfig needs risk_drain_*_fraction <= 1 and "
                "risk_drain_escalation_factor >= 1"
            )
        if self.risk_drain_projected_cpu_max < self.risk_drain_cpu_utilization_target:
            raise ConfigError(
                "ManagerConfig.risk_drain_projected_cpu_max must be at least "
                "risk_drain_cpu_utilization_target"
            )
        if self.session_expiry_ms and 2 * self.session_expiry_ms < 3 * self.credential_lifetime_ms:
            raise ConfigError(
                "ManagerConfig.session_expiry_ms must be at least 1.5 x credential_lifetime_ms "
                f"({self.credential_lifetime_ms * 3 // 2}), or be 0: clients renew every half "
                "lifetime, so a renewal whose report to the manager was lost leaves a credential "
                "valid up to 1.5 lifetimes after the last one the manager counted, and a shorter "
                "expiry would close that session while its client holds a valid credential"
            )
        if self.rebalance_tolerance > REBALANCE_TOLERANCE_MAX:
            raise ConfigError(
                f"ManagerConfig.rebalance_tolerance must be at most {REBALANCE_TOLERANCE_MAX}"
            )
        if max(self.session_parts_max, self.handoff_parts_max, self.drain_handoff_parts_max) > (
            SESSION_PARTS_MAX
        ):
            raise ConfigError(
                f"ManagerConfig parts bounds must not exceed the wire's {SESSION_PARTS_MAX}"
            )

    @property
    def failure_timeout_us(self) -> int:
        """`failure_timeout_ms` in microseconds."""
        return self.failure_timeout_ms * 1000

    @classmethod
    def randomized(cls, rng: random.Random) -> ManagerConfig:
        """A valid configuration drawn from `rng`, for the simulator to explore."""
        failure_timeout_ms = rng.randrange(600, 5_000)
        detector = rng.choice(list(FailureDetectorKind))
        jitter = rng.choice((0, rng.randrange(1, 200)))
        per_server = rng.randrange(1, 5)
        return cls(
            heartbeat_interval_ms=rng.randrange(50, failure_timeout_ms // 3),
            suspect_timeout_ms=rng.randrange(failure_timeout_ms // 3, failure_timeout_ms),
            failure_timeout_ms=failure_timeout_ms,
            failure_detector=detector,
            phi_suspect_threshold=rng.uniform(1.0, 4.0),
            phi_dead_threshold=rng.uniform(5.0, 12.0),
            failover_prepare_timeout_ms=rng.randrange(100, 3_000),
            pending_deltas_max=rng.randrange(4, 512),
            handoff_deadline_ms=rng.randrange(500, 10_000),
            handoff_deadline_grace_ms=rng.randrange(100, 3_000),
            handoff_backup_report_timeout_ms=rng.randrange(1_000, 30_000),
            handoffs_per_server_max=per_server,
            handoffs_concurrent_max=rng.randrange(per_server, 64),
            handoff_parts_max=(handoff_parts_max := rng.randrange(1, SESSION_PARTS_MAX + 1)),
            # The same as other moves' (drawn once, so every other draw stays as it was).
            drain_handoff_parts_max=handoff_parts_max,
            handoff_jitter_ms_max=jitter,
            overload_threshold=rng.uniform(0.6, 0.99),
            overload_cooldown_ms=rng.randrange(1_000, 60_000),
            overload_parts_fraction=rng.uniform(0.05, 1.0),
        )


_ZERO_ALLOWED = frozenset(
    {
        "session_expiry_ms",
        "map_adopt_allowance_us_per_part",
        "map_adopt_allowance_max_ms",
        "heartbeat_pause_acceptable_ms",
        "handoff_jitter_ms_max",
        "overload_latency_us_p99",
        "risk_lead_ms",
        "risk_drain_projection_ms",
        "risk_tick_ms",
        "risk_calibration_labels_min",
        "risk_target_margin",
        "risk_session_dwell_ms",
        "risk_holdout_fraction",
        "target_lag_entries_max",
        "handoff_plan_interval_ms",
        "map_history_deltas_max",
        "map_request_hold_ms",
        "rebalance_interval_ms",
        "rebalance_tolerance",
        "rebalance_after_risk_ms",
        "open_rate_per_origin",
        "credential_rate_per_origin",
    }
)
"""Fields for which 0 means something: no pause, no jitter, disabled, fully caught up."""
