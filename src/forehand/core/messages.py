"""Cluster messages: what servers and the Session Manager say to each other.

Clients speak `forehand/1` frames (`forehand.wire`). Servers and managers additionally exchange the
messages below, on mutually authenticated connections, each carried in one `ClusterMessage` frame
whose body is the message encoded with `encode_cluster_message` (msgpack, tagged by class name).

Naming follows STYLE.md rule 4: a noun and a past participle, saying what happened at the sender.
"""

from __future__ import annotations

import enum
import re

import msgspec

__all__ = [
    "superseded_incarnation",
    "superseded_reason",
    "ClusterMessageType",
    "DrainReported",
    "FailoverPrepared",
    "HandoffAborted",
    "HandoffAssigned",
    "HandoffCompleted",
    "HandoffRequested",
    "HeartbeatReported",
    "LoadReport",
    "LogAcknowledged",
    "LogEntry",
    "LogShipped",
    "MapPublished",
    "MapRequested",
    "PartLoad",
    "PartProgress",
    "PartRef",
    "PartRole",
    "PathReport",
    "PositionsReported",
    "RequestForwarded",
    "ResponseForwarded",
    "ServerAnnounced",
    "SnapshotShipped",
    "decode_cluster_message",
    "encode_cluster_message",
]


class PartRole(enum.IntEnum):
    """What a server does for a part, as reported to the manager."""

    PRIMARY = 1
    REPLICA = 2
    HANDING_OFF = 3
    BACKUP = 4
    RECEIVING = 5


class PartRef(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A part of a session, by value."""

    session_id: bytes
    """The session's 16-byte UUIDv7."""
    part: str
    """The part name."""


class PartLoad(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One primary part's share of a server's requests, as the server measured it."""

    ref: PartRef
    """Which part."""
    requests_per_second: float
    """Requests offered to the part per second (executed, or refused OVERLOADED), smoothed over
    recent intervals."""


class LoadReport(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A server's own load, sampled by the runtime (or the simulator's process model)."""

    cpu_utilization: float
    """Share of CPU capacity in use, 0.0 to 1.0 (can exceed 1.0 when work queues)."""
    queue_depth: int
    """Requests waiting to execute."""
    latency_us_p99: int
    """99th-percentile request latency over the last report interval."""
    error_ratio: float
    """Share of requests answered with an error over the last report interval."""
    requests_per_second: float
    """Requests executed per second over the last report interval."""
    memory_utilization: float = 0.0
    """Share of the machine's memory in use, 0.0 to 1.0."""
    io_bytes_per_second: float = 0.0
    """Bytes the process read and wrote (disk and network) per second over the last interval."""
    loop_lag_us_p99: int = 0
    """99th-percentile event-loop lag (how late a timer fired) over the last report interval."""
    machine_cpu_utilization: float = 0.0
    """Share of the whole machine's CPU capacity in use (every process), 0.0 to 1.0: a server
    whose own `cpu_utilization` is low may still be starved by its neighbours."""
    part_loads: tuple[PartLoad, ...] = ()
    """The server's busiest primary parts by request rate, busiest first; at most
    `heartbeat_part_loads_max` (the manager reads at most `PART_LOADS_PER_REPORT_MAX`). The
    manager sheds a server's load heaviest part first by it; empty from an older server."""


class PathReport(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A client's measurements of its network path to one server, aggregated per client bucket."""

    client_bucket: int
    """Bounded bucket of the client (a hash of its node id modulo `path_buckets_max`)."""
    server_id: str
    """The server the path leads to."""
    rtt_us: int
    """Smoothed round-trip time over the report interval."""
    rtt_us_min: int
    """Lowest round-trip time seen on the path (its propagation floor)."""
    jitter_us: int
    """Mean absolute difference between consecutive round-trip samples."""
    loss_ratio: float
    """Share of packets lost (or PINGs unanswered) over the report interval, 0.0 to 1.0."""
    retransmissions: int
    """Packets or segments retransmitted over the report interval."""
    throughput_bytes_per_second: float
    """Bytes carried per second (both directions) over the report interval."""
    probe: bool
    """True when measured by a probe to a potential target rather than on the serving path."""


class PartProgress(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """How far a server is on one part: the manager picks failover and handoff targets by it."""

    ref: PartRef
    """Which part."""
    role: PartRole
    """The server's role for the part."""
    applied_seq: int
    """Highest log sequence number applied to the part's state on this server."""
    epoch: int
    """Map version at which the part's placement last changed, as this server knows it."""
    last_epoch: int = 0
    """Epoch of the entry at `applied_seq` (the version its primary wrote it under). Logs of
    replaced primaries may have diverged, so a failover ranks candidates by `(last_epoch,
    applied_seq)`: the newer history first, then the longer one."""


# Server -> manager.


ANNOUNCED_PARTS_MAX = 1024
"""Most part names one `ServerAnnounced` may list."""


class ServerAnnounced(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A server process started (or restarted) and asks to be a member."""

    server_id: str
    """The server's stable name."""
    incarnation: int
    """Grows on every restart, so the manager tells a restarted process from a late message."""
    address: str
    """Where clients reach it, `host:port`; opaque to the cores."""
    zone: str
    """Failure domain label."""
    weight: float
    """Relative capacity for placement."""
    credential_lifetime_ms: int = 0
    """Lifetime of the session credentials this server issues (`ServerConfig`), so the manager
    can refuse a server whose credentials would outlive its `session_expiry_ms`; 0 from a sender
    before the field (not checked)."""
    parts: tuple[str, ...] = ()
    """The part names this server's app declares (at most `ANNOUNCED_PARTS_MAX`), so that the
    manager can refuse an OPEN_SESSION naming a part no server serves; empty: not said (a
    sender before the field, or an app of more parts than the bound)."""
    heartbeat_interval_ms: int = 0
    """How often this server heartbeats (`ServerConfig`), so the manager can refuse a server
    that would be declared dead between two heartbeats; 0 from a sender before the field (not
    checked)."""
    transport: str = ""
    """The transport it serves clients over (`tls`, `quic`; opaque to the cores), so the
    manager can refuse a server its clients could not reach; empty: not said."""
    key_fingerprints: tuple[tuple[int, bytes], ...] = ()
    """`(key id, fingerprint)` of each cluster key it holds (`tokens.key_fingerprint`), so
    the manager can refuse a server whose keys differ from its own: it could open none of the
    credentials the manager issues, and every client call to it would fail. Empty: not said."""
    sealing_key_id: int = -1
    """The id of the cluster key it seals with (the credentials it renews, the resumption tokens
    it issues), so the manager can refuse a server that seals with a key the manager does not
    hold: no other node could open them. -1: not said."""


class HeartbeatReported(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Periodic liveness, load and part progress; `parts` is a bounded, rotating batch."""

    server_id: str
    """Sender."""
    incarnation: int
    """Sender's incarnation."""
    sequence: int
    """Heartbeat counter, per incarnation."""
    map_version: int
    """Newest map version the server has applied."""
    load: LoadReport
    """The server's own load."""
    parts: tuple[PartProgress, ...]
    """Progress of some of its parts; at most `heartbeat_parts_max` per heartbeat."""
    paths: tuple[PathReport, ...] = ()
    """Clients' path reports to servers, aggregated per client bucket; at most
    `heartbeat_paths_max` per heartbeat, the batch rotating over all known paths."""
    renewed_sessions: tuple[bytes, ...] = ()
    """Sessions this server issued a fresh credential for (RESUME_OK) since its last heartbeat,
    each once; at most `heartbeat_renewals_max`, the rest in the next. The manager expires a
    session none was issued for in `session_expiry_ms`."""
    declared_parts: tuple[str, ...] = ()
    """The part names this server's app declares, as `ServerAnnounced.parts`, in the first
    heartbeat on each new connection to the manager and after each whole map (a manager that
    took over, or restarted, hears no announcement from a server that holds a map, and sends
    each member the whole map once it loaded its own); empty in the others."""
    manager_map_version: int = -1
    """The newest map version the server received from the manager itself (`map_version` may be
    newer: a fenced server cut off from the manager learns maps from a peer); the manager's
    not-hearing detection reads this one. -1 (absent): a sender before the field, whose maps
    all came from the manager, so `map_version` says it."""
    leaving: bool = False
    """The server is stopping (SIGTERM) and asks to be drained first: the manager drains it as
    an operator's `drain` would, once, and answers each such heartbeat with `DrainReported`.
    False from a sender before the field."""
    left: bool = False
    """The last heartbeat of a leaving server whose drain finished (`DrainReported.finished`):
    its process stops now and no heartbeat follows. The manager declares it dead at once, with
    cause `left`, and takes its entry out of the map instead of failing it over. False from a
    sender before the field (its silence is then a death, and a failover of no part)."""


class HandoffRequested(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Handoff step 1 when the source itself flags the impending disruption."""

    server_id: str
    """The source asking to shed parts."""
    parts: tuple[PartRef, ...]
    """Parts to move; empty means "as many as the manager sees fit"."""
    reason: int
    """A `forehand.wire` reason code."""


class MapRequested(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A server asks for the maps it is missing: the manager for the versions since
    `map_version` (a gap in versions, a fenced part, or maps learned from a peer that the
    manager's own messages have not brought yet); a peer, by a server that a refused shipment
    fenced, for its map when newer than `map_version` (a whole map)."""

    server_id: str
    """Sender."""
    map_version: int
    """The version to send from: to the manager, the newest the sender holds or received from
    the manager, whichever is older; to a peer, the newest it holds."""


class PositionsReported(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Answer to `FailoverPrepared`: the replica's fenced position on each part."""

    server_id: str
    """Sender."""
    map_version: int
    """The version it fenced at (echoes the request)."""
    parts: tuple[PartProgress, ...]
    """Its progress on each requested part it holds."""


class HandoffCompleted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Source (after the backup period) or target (after catching up) reports a handoff's end."""

    handoff_id: int
    """Which handoff."""
    server_id: str
    """Sender."""
    parts: tuple[PartRef, ...]
    """The parts it finished."""


class HandoffAborted(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A participant missed its step deadline; the manager decides the outcome."""

    handoff_id: int
    """Which handoff."""
    server_id: str
    """Sender."""
    parts: tuple[PartRef, ...]
    """The parts affected."""
    detail: str
    """Human-readable cause, for the audit log."""


# Manager -> server.


class MapPublished(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A committed map change (a delta from `base_version`, or the whole map when it is 0)."""

    map_version: int
    """The version the body produces."""
    base_version: int
    """The version the delta applies to; 0 for a whole map."""
    body: bytes
    """The encoded delta or map (`forehand.placement` codec)."""


class HandoffAssigned(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Handoff step 2 done: the map assigns `parts` to `target`; the source starts step 3."""

    handoff_id: int
    """Manager-unique id of this handoff."""
    parts: tuple[PartRef, ...]
    """The parts moving."""
    source: str
    """The server giving them up."""
    target: str
    """The server taking them."""
    map_version: int
    """The map version that made `target` primary."""
    reason: int
    """A `forehand.wire` reason code."""
    deadline_ms: int
    """Time the participants have, from receipt, to finish steps 3 and 4."""


class DrainReported(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Where the drain of a leaving server stands: the answer to each heartbeat of it that
    says `leaving` (sent to no other server, so one that predates the message never gets one).
    The server stops once `finished`, or once what is left has nowhere to go."""

    map_version: int
    """The manager's map version the counts are from."""
    roles_left: int
    """Roles (primary and replica) the map still gives the server."""
    primaries_left: int
    """Of them, the parts it still leads."""
    roles_waiting: int
    """Of them, roles no other server can take for now: primaries when no other server is
    ACTIVE and alive, and replica roles that are their part's last live replica with every
    eligible server already holding the part. They move once a server joins or is undrained."""
    finished: bool
    """True once the map gives the server nothing and none of its handoffs runs: it may stop
    without a failover."""
    failed_over: bool = False
    """The manager had declared the server dead meanwhile (cut off past the failure timeout)
    and failed what it held over: `finished` says only that nothing is left to wait for.
    Absent: false (a sender before the field)."""


class FailoverPrepared(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """Fence a dead primary's parts at `map_version` and report positions, before a promotion."""

    map_version: int
    """Replicas refuse log entries from epochs below this version from now on."""
    parts: tuple[PartRef, ...]
    """The parts being failed over."""


# Server <-> server.


class LogEntry(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One executed request, replicated by re-execution of the part's deterministic handler."""

    seq: int
    """Position in the part's log, from 1, without gaps."""
    request_id: int
    """The client's request id, for exactly-once execution."""
    op: str
    """The operation name."""
    payload: bytes
    """The request payload."""
    status: int
    """The response status the primary answered with."""
    result: bytes
    """The response payload the primary answered with (for the dedup table)."""
    epoch: int
    """Map version under which the primary executed it."""


class LogShipped(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A batch of log entries from a primary (or a handoff source) to a replica (or the target)."""

    ref: PartRef
    """Which part."""
    epoch: int
    """The sender's epoch for the part; receivers fence older epochs."""
    prev_seq: int
    """Sequence number just before `entries[0]`; the receiver acks what it has if it differs."""
    entries: tuple[LogEntry, ...]
    """At most `log_batch_entries_max` entries."""
    sealed: bool
    """True on the last batch of a handoff source: nothing follows at this epoch."""


class LogAcknowledged(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """A replica's position; shipping resumes from `acked_seq` + 1."""

    ref: PartRef
    """Which part."""
    epoch: int
    """The epoch the replica accepted entries at."""
    acked_seq: int
    """Highest contiguous sequence number applied."""
    acked_epoch: int = 0
    """Epoch of the entry at `acked_seq` (0 for none): a new primary checks the histories match."""
    sealed: bool = False
    """True when the receiver applied a sealed batch through `acked_seq` and now serves the part."""


class SnapshotShipped(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The whole part, for a replica too far behind the retained log or a new one."""

    ref: PartRef
    """Which part."""
    epoch: int
    """The sender's epoch."""
    seq: int
    """The state is as of this sequence number."""
    state: bytes
    """The part's state, msgpack-encoded."""
    dedup: tuple[LogEntry, ...]
    """The dedup table: the latest entries per request id, bounded by `dedup_entries_max`."""
    seq_epoch: int = 0
    """Epoch of the entry at `seq`, so the receiver can later prove its history to a new primary."""


class RequestForwarded(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag=True,
    omit_defaults=True,
    repr_omit_defaults=True,
):
    """Handoff step 3/5: a request that reached the old primary, sent on to the new one."""

    client: str
    """The client node that sent it; the answer goes back the way it came."""
    request_id: int
    """The client's request id."""
    session_id: bytes
    """The session."""
    part: str
    """The part."""
    op: str
    """The operation."""
    payload: bytes
    """The payload."""
    map_version: int
    """The forwarder's map version, stamped on the way."""
    hops: int
    """Forwarding hops so far; refused beyond `forward_hops_max`."""
    wait_budget_ms: int | None = None
    """What is left of the REQUEST's wait budget when it is forwarded (None: it had none); the
    new primary parks a waiting read for at most this long (PROTOCOL.md 5.6). Left out of the
    encoding when None, so that forwards of requests without a budget keep their bytes."""


class ResponseForwarded(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    """The answer to a `RequestForwarded`, relayed to the client by the forwarder."""

    client: str
    """The client node to answer."""
    request_id: int
    """The client's request id."""
    session_id: bytes
    """The session."""
    status: int
    """A `forehand.wire` response status."""
    map_version: int
    """The answering server's map version."""
    payload: bytes
    """The result."""
    log_index: int = 0
    """The answering log entry's sequence number (its epoch is `map_version`); 0 when no entry
    answered (a read, or a refusal)."""


ClusterMessageType = (
    ServerAnnounced
    | HeartbeatReported
    | HandoffRequested
    | MapRequested
    | PositionsReported
    | HandoffCompleted
    | HandoffAborted
    | MapPublished
    | HandoffAssigned
    | DrainReported
    | FailoverPrepared
    | LogShipped
    | LogAcknowledged
    | SnapshotShipped
    | RequestForwarded
    | ResponseForwarded
)

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[ClusterMessageType] = msgspec.msgpack.Decoder(ClusterMessageType)


def encode_cluster_message(message: ClusterMessageType) -> bytes:
    """The body of the `ClusterMessage` frame that carries `message`."""
    return _encoder.encode(message)


def decode_cluster_message(body: bytes) -> ClusterMessageType:
    """Decode a `ClusterMessage` body; a malformed body is the peer's fault."""
    from forehand.errors import RemoteProtocolError

    try:
        return _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as error:
        # msgspec lets a string that is not UTF-8 escape as UnicodeDecodeError.
        raise RemoteProtocolError(f"malformed cluster message: {error}") from error


_SUPERSEDED_REASON = re.compile(r"incarnation (\d+) ")


def superseded_reason(server_id: str, incarnation: int, running: int) -> str:
    """The reason of the manager's ERROR(SUPERSEDED) to an older incarnation of a server: it
    starts with `incarnation N ` (PROTOCOL.md 6.2), which `superseded_incarnation` reads."""
    return (
        f"incarnation {incarnation} of {server_id} is older than its running incarnation "
        f"{running}: another process runs as {server_id}; this one must stop"
    )


def superseded_incarnation(reason: str) -> int | None:
    """The incarnation a SUPERSEDED reason refuses, or None when it names none."""
    refused = _SUPERSEDED_REASON.match(reason)
    return None if refused is None else int(refused.group(1))
