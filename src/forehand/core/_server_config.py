"""`ServerConfig`: every bound, interval and deadline of a `ServerCore`, named with its unit."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

from forehand.errors import ConfigError
from forehand.wire import FRAME_BYTES_MAX_FLOOR, VARINT_MAX

__all__ = [
    "CREDENTIAL_LIFETIME_MIN_MS",
    "HEARTBEAT_PART_LOADS_MAX",
    "HEARTBEAT_RENEWALS_MAX",
    "ServerConfig",
]

CREDENTIAL_LIFETIME_MIN_MS = 2_000
"""The shortest credential lifetime the `forehand manager` and `server` processes take (the
cores take any, for tests at millisecond scale): a client renews at half the lifetime it is
told, but not more often than once a second, so a shorter one would expire before its
renewal."""

HEARTBEAT_PART_LOADS_MAX = 64
"""Default of `ServerConfig.heartbeat_part_loads_max` (the scale study's servers report as many)."""
HEARTBEAT_RENEWALS_MAX = 4096
"""Most renewed sessions one heartbeat may report: what the manager reads of one (the bound of
`ServerConfig.heartbeat_renewals_max`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """The configuration of one server core; the simulator can draw one with `randomized`."""

    server_id: str
    """This server's stable name: its node id, its name in the shard map and in heartbeats."""
    incarnation: int = 1
    """Grows on every restart, so the manager tells a restarted process from a late message."""
    address: str = ""
    """Where clients reach this server, `host:port`; opaque to the core, told to the manager."""
    zone: str = "default"
    """Failure-domain label, announced to the manager."""
    weight: float = 1.0
    """Relative capacity for placement, announced to the manager."""
    manager_id: str = "manager"
    """The node id of the Session Manager."""
    transport: str = ""
    """The transport clients reach this server over (`tls`, `quic`): opaque to the core, told
    to the manager, which refuses a server of another transport than its own; empty: not said."""
    heartbeat_interval_ms: int = 500
    """Time between two `HeartbeatReported` messages."""
    heartbeat_parts_max: int = 64
    """Most `PartProgress` entries in one heartbeat; the batch rotates over all parts."""
    heartbeat_paths_max: int = 64
    """Most `PathReport` entries in one heartbeat; the batch rotates over all known paths."""
    heartbeat_renewals_max: int = 1024
    """Most renewed sessions one heartbeat reports (`HeartbeatReported.renewed_sessions`); the
    rest wait for the next."""
    heartbeat_part_loads_max: int = HEARTBEAT_PART_LOADS_MAX
    """Most `PartLoad` entries (the busiest primary parts by request rate) in one heartbeat's
    load report; 0 reports none (the manager then sheds load by a share of the parts)."""
    part_loads_interval_ms: int = 5_000
    """How often the server folds its per-part request counts into rates and picks its busiest
    parts (a pass over every part served recently); heartbeats in between carry the last pick."""
    path_buckets_max: int = 256
    """Client buckets path reports are aggregated into (a client's node id hashed modulo this)."""
    path_reports_max: int = 4096
    """Most (bucket, server) paths this server keeps reports for; the stalest goes first."""
    path_report_ttl_ms: int = 30_000
    """A path report not refreshed this long is dropped rather than sent to the manager again."""
    log_batch_entries_max: int = 64
    """Most log entries in one `LogShipped` batch."""
    replication_inflight_batches_max: int = 4
    """Most unacknowledged batches (or snapshots) in flight to one replica of one part."""
    replication_interval_ms: int = 10
    """Time between two shipping rounds; `replicated` writes ship at once instead."""
    replication_retry_ms: int = 500
    """An unacknowledged batch older than this is resent, from the last acknowledged sequence."""
    log_entries_max: int = 4096
    """Most log entries a part retains; a replica behind the retained log gets a snapshot."""
    dedup_entries_max: int = 4096
    """Most request ids a part remembers for exactly-once answers; the oldest seq goes first."""
    replicated_answers_max: int = 1024
    """Most answers a `replicated` part holds while waiting for a replica's acknowledgement."""
    forward_hops_max: int = 2
    """Most times one request may be forwarded between servers before it is refused."""
    forwarded_requests_max: int = 4096
    """Most forwarded requests this server waits on an answer for, over all parts."""
    forwarded_request_timeout_ms: int = 10_000
    """A forwarded request unanswered this long is answered TRY_AGAIN (its client sends it
    again): its handoff target may be behind a silent link."""
    receiving_queue_requests_max: int = 256
    """Most requests a handoff target queues per part until the sealed log arrives."""
    failover_catch_up_ms: int = 1000
    """After a failover makes this server the primary of a `replicated` part, the part's
    requests wait (queued, at most `receiving_queue_requests_max`) until a replica acknowledged
    the history it took over, of that part and of every other a failover gave it meanwhile, or
    for at most this long: the writes acknowledged before the
    failover were held by this server and the dead one alone (one replica's acknowledgement
    answers a write), and a second failure before any copy caught up lost them (a call that
    stalls every server it runs on, sent on to the promoted replica, does exactly that). 0:
    serve at once."""
    waiting_reads_max: int = 10_000
    """Most waiting reads this server parks at once, over all parts, until a write answers
    them or their wait ends; one more is answered OVERLOADED."""
    backup_period_ms: int = 5000
    """Time a handoff source keeps a part read-only, forwarding stragglers, after the handoff."""
    handoff_deadline_ms: int = 5000
    """Default time to finish handoff steps 3 and 4 when a target learns of a handoff by map."""
    handoffs_concurrent_max: int = 16
    """Most handoffs this server runs at once as a source; more are aborted at once."""
    handoff_notify_jitter_ms: int = 20
    """HANDOFF frames to clients are spread uniformly over this window, so targets see no herd."""
    token_lifetime_ms: int = 30_000
    """Lifetime of the resumption token a HANDOFF frame carries."""
    credential_lifetime_ms: int = 86_400_000
    """Lifetime of the fresh session credential a RESUME_OK carries to a client that bound a
    session with its credential (how clients renew theirs: see `ClientConfig`); the manager's
    `credential_lifetime_ms` sets the first one's. Below the manager's `session_expiry_ms`, or
    the manager refuses this server (`ServerAnnounced` carries it: checked when the server
    starts, not by a manager that starts or takes over once it joined)."""
    replay_cache_entries_max: int = 65_536
    """Most unexpired token nonces this server remembers to refuse replayed tokens."""
    parts_max: int = 1_000_000
    """Most parts this server holds in any role; a map placing more is refused part by part."""
    session_clients_max: int = 8
    """Most client connections attached to one session; the least recently attached goes first."""
    connection_sessions_max: int = 16_384
    """Most sessions one client connection may bind (prove with a credential or token); more are
    refused (RESUME_REJECT OVERLOADED, or left unbound from HELLO)."""
    map_request_retry_ms: int = 1000
    """Time before a server asks the manager again for a map it is missing."""
    map_deltas_buffered_max: int = 64
    """Most out-of-order map deltas held while the missing versions are requested."""
    map_deltas_kept_max: int = 16
    """Most of the newest map deltas from the manager kept to answer a peer that a refused
    shipment fenced and that the manager's maps do not reach (`MapRequested` from a server)."""
    handoff_ids_remembered_max: int = 1024
    """Most finished handoff ids remembered, so a duplicate `HandoffAssigned` is ignored."""
    frame_bytes_max: int = 1 << 20
    """Largest frame body this server accepts, announced in WELCOME (the runtime enforces it)."""
    idle_timeout_ms: int = 30_000
    """Idle time after which the runtime closes a client connection, announced in WELCOME."""

    def __post_init__(self) -> None:
        if not self.server_id:
            raise ConfigError("ServerConfig.server_id must not be empty")
        if not self.manager_id:
            raise ConfigError("ServerConfig.manager_id must not be empty")
        if self.server_id == self.manager_id:
            raise ConfigError("ServerConfig.server_id must differ from manager_id")
        if self.weight <= 0.0:
            raise ConfigError(f"ServerConfig.weight must be positive, got {self.weight}")
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type in ("int", int) and (not isinstance(value, int) or value < 0):
                raise ConfigError(f"ServerConfig.{field.name} must be a non-negative int")
        for name in _POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise ConfigError(f"ServerConfig.{name} must be at least 1")
        if self.heartbeat_renewals_max > HEARTBEAT_RENEWALS_MAX:
            raise ConfigError(
                f"ServerConfig.heartbeat_renewals_max must be at most {HEARTBEAT_RENEWALS_MAX} "
                "(what the manager reads of one heartbeat)"
            )
        if not FRAME_BYTES_MAX_FLOOR <= self.frame_bytes_max <= VARINT_MAX:
            raise ConfigError(
                f"ServerConfig.frame_bytes_max must be from {FRAME_BYTES_MAX_FLOOR} (what every "
                f"peer may send) to {VARINT_MAX}, got {self.frame_bytes_max}"
            )

    @classmethod
    def randomized(cls, rng: random.Random, *, server_id: str) -> ServerConfig:
        """A valid config with small bounds and short timers drawn from `rng`, for simulation."""
        return cls(
            server_id=server_id,
            heartbeat_interval_ms=rng.randint(50, 500),
            heartbeat_parts_max=rng.randint(1, 64),
            log_batch_entries_max=rng.randint(1, 32),
            replication_inflight_batches_max=rng.randint(1, 4),
            replication_interval_ms=rng.randint(1, 50),
            replication_retry_ms=rng.randint(50, 1000),
            log_entries_max=rng.randint(4, 256),
            dedup_entries_max=rng.randint(64, 1024),
            replicated_answers_max=rng.randint(8, 256),
            forward_hops_max=rng.randint(1, 4),
            forwarded_requests_max=rng.randint(16, 1024),
            forwarded_request_timeout_ms=rng.randint(1000, 10_000),
            receiving_queue_requests_max=rng.randint(4, 256),
            backup_period_ms=rng.randint(100, 5000),
            handoff_deadline_ms=rng.randint(500, 5000),
            handoffs_concurrent_max=rng.randint(1, 16),
            handoff_notify_jitter_ms=rng.randint(0, 50),
            token_lifetime_ms=rng.randint(5_000, 60_000),
            session_clients_max=rng.randint(1, 8),
            map_request_retry_ms=rng.randint(100, 2000),
            map_deltas_buffered_max=rng.randint(1, 64),
        )


_POSITIVE_FIELDS = (
    "incarnation",
    "credential_lifetime_ms",
    "heartbeat_interval_ms",
    "heartbeat_parts_max",
    "heartbeat_paths_max",
    "heartbeat_renewals_max",
    "part_loads_interval_ms",
    "path_buckets_max",
    "path_reports_max",
    "path_report_ttl_ms",
    "log_batch_entries_max",
    "replication_inflight_batches_max",
    "replication_interval_ms",
    "replication_retry_ms",
    "log_entries_max",
    "dedup_entries_max",
    "replicated_answers_max",
    "forward_hops_max",
    "forwarded_requests_max",
    "forwarded_request_timeout_ms",
    "receiving_queue_requests_max",
    "waiting_reads_max",
    "handoff_deadline_ms",
    "handoffs_concurrent_max",
    "token_lifetime_ms",
    "replay_cache_entries_max",
    "parts_max",
    "session_clients_max",
    "connection_sessions_max",
    "map_request_retry_ms",
    "map_deltas_buffered_max",
    "map_deltas_kept_max",
    "handoff_ids_remembered_max",
    "frame_bytes_max",
    "idle_timeout_ms",
)
"""Fields that must be at least 1 (the others may be 0, which disables what they bound)."""
