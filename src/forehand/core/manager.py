"""`ManagerCore`: the Session Manager, sans-IO.

The manager keeps the versioned shard map and everything that changes it: membership (servers
announce, heartbeat, fall silent, restart), failover (fence the survivors, promote the most
advanced replica), handoff orchestration (moves asked by servers, by the risk policy, by drains
and by operators, batched under concurrency caps with jitter), drains, and sessions (opened and
closed by clients). Every change goes through the store as a request (STYLE.md rule 11), one
commit in flight at a time, and each committed version is pushed to every live server in order.
Clients ask it for their sessions' placements.

Inputs: `receive_message` (cluster messages from servers, `forehand/1` frames from clients,
connection notices), `handle_timer`, `store_result`, and the commands `drain`, `undrain`,
`handoff` and `request_handoff`. Outputs: `messages_to_send`, `store_requests`, `next_event`,
`timer_us`. Nothing a peer sends raises out of the core.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from forehand.core import messages
from forehand.core._client_map import endpoint_from_address
from forehand.core._driver import (
    ConnectionCloseRequested,
    ConnectionLost,
    ConnectionOpened,
    NodeId,
    Outbound,
)
from forehand.core._manager_clients import (
    SESSION_OPERATIONS,
    HeldMapRequests,
    HeldRequest,
    PlacementChanges,
    SessionBuckets,
    placements_answer,
)
from forehand.core._manager_commits import (
    Built,
    Change,
    CommitPipeline,
    Committed,
    Loaded,
    MapHistory,
    Outcome,
    Rejected,
)
from forehand.core._manager_config import REBALANCE_TOLERANCE_MAX, ManagerConfig
from forehand.core._manager_events import (
    MOVED_IMPLICITLY_NAMED_MAX,
    CredentialRefused,
    CredentialsPaced,
    DeathCause,
    DrainProgressed,
    FailoverAbandoned,
    FailoverCompleted,
    FailoverStarted,
    HandoffAborted,
    HandoffCompleted,
    HandoffOutcome,
    HandoffStarted,
    HoldEnded,
    ManagerEvent,
    MapChange,
    MapCommitRejected,
    MapCommitted,
    MapLoaded,
    MapRequestsAnswered,
    MovesDropped,
    PartsLost,
    PartsMovedImplicitly,
    PartsReset,
    PartsUnreplicated,
    PeerRefused,
    RebalanceQueued,
    ReplicasRebalanced,
    RiskFlagged,
    ServerDeclaredDead,
    ServerJoined,
    ServerLeaving,
    ServerNotHearing,
    ServersSilent,
    ServerSuspected,
    SessionOpenRefused,
    SessionRegistered,
    SessionsExpired,
    StallExcused,
)
from forehand.core._manager_expiry import SessionExpiry
from forehand.core._manager_failover import (
    FailoverJob,
    FailoverPhase,
    FailoverTrigger,
    Promotion,
    build_promotion,
    carry_landed,
    count_unreplicated,
    plan_prepare,
    plan_resend,
    record_positions,
)
from forehand.core._manager_failover import fire as fire_failover
from forehand.core._manager_origins import OpenRateLimit
from forehand.core._manager_planning import (
    candidate_window,
    fill_replicas,
    key_of,
    override,
    ref_of,
    stabilize,
    steer_additions,
)
from forehand.core._manager_risk import (
    ClientPathSteering,
    RiskPolicy,
    RiskSteering,
    busiest_first,
    make_risk_policy,
    parts_by_load,
)
from forehand.core._membership import (
    UNKNOWN_INCARNATION,
    AnnounceOutcome,
    HeartbeatOutcome,
    LivenessChanged,
    Member,
    Membership,
    MemberState,
)
from forehand.core._orchestrator import (
    Handoff,
    HandoffPhase,
    HandoffTrigger,
    MoveOrigin,
    MoveRequest,
    Orchestrator,
)
from forehand.core._server_config import HEARTBEAT_RENEWALS_MAX
from forehand.core.messages import ANNOUNCED_PARTS_MAX, PartRef
from forehand.core.tokens import (
    KEY_RING_KEYS_MAX,
    TokenError,
    TokenExpired,
    TokenKeyUnknown,
    TokenSealer,
    key_ring_mismatch,
)
from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.placement import (
    DrainCause,
    Operation,
    PartKey,
    PartsAdded,
    PartsRemoved,
    Placement,
    PlacementConfig,
    PlacementOverridden,
    ServerDrained,
    ServerEntry,
    ServerLeft,
    ServerState,
    ServerUndrained,
    ShardMap,
    check_part_name,
    check_server_entry,
    new_session_id,
)
from forehand.placement import ServerJoined as ServerJoinedOperation
from forehand.wire import (
    DEFAULT_CONFIG,
    PROTOCOL_VERSION,
    CloseSession,
    ClusterMessage,
    Credential,
    Endpoint,
    Error,
    ErrorCode,
    Hello,
    MapRequest,
    MapUpdate,
    OpenSession,
    OpenSessionRefused,
    Ping,
    Pong,
    ReasonCode,
    ResumeReject,
    ResumeRejectReason,
    SessionOpened,
    Settings,
    Welcome,
)
from forehand.wire import Placement as WirePlacement

__all__ = ["ManagerCore"]

DRAIN_TICK_MS = 200
"""How often drains queue the moves of their server's remaining roles."""
FORGOTTEN_REMOVALS_MAX = 16
"""Forgotten dead servers' entries one map version removes (each removal scans the overrides)."""
JOIN_RETRY_MS = 1_000
"""A join that could not be committed is tried again after this long."""
FAILOVER_ATTEMPTS_MAX = 3
"""A promotion that cannot be built is retried this many times (merged with later deaths)."""
SESSION_ID_ATTEMPTS_MAX = 4
"""Fresh session ids tried when a new part key collides with an existing one's hash."""
REBALANCE_TOLERANCE_DEFAULT = 0.1
"""A rebalance's default tolerance: servers more than 10 % above their share give parts back."""
REBALANCE_PARTS_MAX_DEFAULT = 10_000
"""A rebalance's default bound on the parts it queues."""
REBALANCE_SAMPLE_FACTOR = 4
"""A rebalance looks at this many times the parts it moves off a server (at random) for those
whose target already holds a replica."""
OPENS_REMEMBERED_MAX = 16_384
"""OPEN_SESSIONs remembered by (client id, request id), so that one a client sends again on a
new connection after losing the first answers with the same session (least recently used out)."""
OPEN_RETRY_AFTER_MS = 100
"""The wait an OPEN_SESSION_REFUSED asks for when the manager is busy (its commit queue full)
or cannot place the parts yet (no server ACTIVE); clients back off at least this long."""
EXPIRY_STEP_MS = 10
"""Time between two batches of a session expiry sweep (`SessionExpiry`)."""
WHOLE_MOVE_REASONS = frozenset(
    {
        ReasonCode.PLANNED_MAINTENANCE,
        ReasonCode.SCALE_IN,
        ReasonCode.ZONE_EVACUATION,
        ReasonCode.IMMEDIATE,
    }
)
"""Reasons for which a server's HandoffRequested without parts moves all its primaries."""
RISK_MARK_SPARE_BOUNDS = 2.0
"""A risk evacuation marks its server DRAINING only when fewer than this many over `load_epsilon`
other servers are ACTIVE: more of them take one server's parts within half their headroom."""


@dataclass(slots=True, kw_only=True)
class _Client:
    """A client connection: its id (from HELLO) and the sessions it may ask placements for."""

    client_id: bytes
    sessions: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    opening: int = 0
    """OPEN_SESSIONs of the connection queued or being committed."""
    origin: str = ""
    """Where the connection comes from (`ConnectionOpened.origin`), whose opens are paced."""


@dataclass(slots=True, kw_only=True)
class _Drain:
    """An operator's drain of one server."""

    server_id: str
    marked: bool = False
    parts_total: int = 0
    parts_moved: int = 0
    replica_change_queued: bool = False
    replicas_behind: int = 0
    """Replica roles the last replica move kept because no other replica had caught up with
    this server's copy yet: the next drain tick tries again (progress comes in heartbeats,
    not in map versions, so an idle mark would wait for the next version)."""
    replicas_waiting: int = 0
    """Replica roles the last replica move left in place: each is its part's last replica and no
    other eligible server can take it."""
    primaries_waiting: int = 0
    """Primaries no handoff can take: no other server is eligible (the last drain tick saw)."""
    waiting_reported: int = 0
    """`parts_waiting` of the last `DrainProgressed`."""
    primaries_left: int = 0
    """`primaries_left` of the last `DrainProgressed`."""
    behind_reported: int = 0
    """`replicas_behind` of the last `DrainProgressed`."""
    idle_at: tuple[int, tuple[str, ...]] | None = None
    """(map version, eligible servers) when a replica move last found nothing to move: no new
    one is submitted until either changes (each scans every replica role of the server)."""


@dataclass(slots=True, kw_only=True)
class _PlanningPass:
    """What one handoff planning pass learns once and reuses: nothing it caches changes while
    the pass runs (no input arrives in between), so every move it plans reads the same answers."""

    servers: tuple[str, ...] | None = None
    """The map's server ids in map order, the walk's positions."""
    taking: dict[str, bool] = field(default_factory=dict)
    """Per server: alive, ACTIVE, not blocked by the risk policy, CPU below the target bound."""
    allowed: dict[tuple[str, str, int | None], bool] = field(default_factory=dict)
    """Per (source, target, client bucket): the risk policy's target check for a risk move."""
    no_target: set[PartRef] = field(default_factory=set)
    """Moves that found no target in this pass: the servers they may avoid only grow during a
    pass (caps fill up), so they find none again until the next pass."""
    chosen: dict[PartRef, str] = field(default_factory=dict)
    """Moves' targets found in this pass: still the answer while the target is not avoided
    (avoiding more servers can only remove candidates, never add a better one)."""


class ManagerCore:
    """The Session Manager's state machines behind the driver shape."""

    def __init__(
        self,
        *,
        config: ManagerConfig,
        placement_config: PlacementConfig,
        sealer: TokenSealer,
        rng: random.Random,
        now_us: int,
        risk_policy: RiskPolicy | None = None,
    ) -> None:
        self._config = config
        self._placement_config = placement_config
        self._sealer = sealer
        self._rng = rng
        self._risk: RiskPolicy = risk_policy or make_risk_policy(config, rng)
        self._steering = self._risk if isinstance(self._risk, RiskSteering) else None
        self._path_steering = self._risk if isinstance(self._risk, ClientPathSteering) else None
        self._session_buckets = SessionBuckets(
            buckets=config.path_client_buckets, sessions_max=config.session_buckets_max
        )
        self._now_us = now_us
        self._membership = Membership(config=config)
        self._orchestrator = Orchestrator(config=config, rng=rng)
        self._pipeline = CommitPipeline(
            placement_config=placement_config,
            pending_max=config.pending_deltas_max,
            timeout_us=config.store_timeout_ms * 1000,
            snapshot_interval_deltas=config.snapshot_interval_deltas,
            group_changes_max=config.commit_group_changes_max,
            merge=_merge_builds,
            retry_backoff_us=config.store_retry_backoff_ms * 1000,
            retry_backoff_max_us=config.store_retry_backoff_max_ms * 1000,
        )
        self._history = MapHistory(
            deltas_max=config.map_history_deltas_max, bytes_max=config.map_history_bytes_max
        )
        self._outbox: list[Outbound] = []
        self._events: deque[ManagerEvent] = deque()
        self.events_dropped = 0
        """Events dropped because nobody drained them (`events_buffered_max`)."""
        self._failover: FailoverJob | None = None
        self._failover_next: FailoverJob | None = None
        self._failover_attempts, self._next_failover_id = 0, 1
        self._drains: dict[str, _Drain] = {}
        # Servers whose heartbeats say they are leaving, with the incarnation that said so
        # (`_leaving_heard`): each time one starts leaving, those no longer live are forgotten,
        # so at most the members and one more.
        self._leaving: dict[str, int] = {}
        # Servers that left (`_depart`) whose removal from the map is queued: none rejoins
        # before it commits or drops.
        self._departures: set[str] = set()
        self._risk_drained: set[str] = set()
        # Servers whose undrain is queued: a map reloaded before it commits still shows them
        # DRAINING, and must not hand the drain back to its owner.
        self._undrains_pending: set[str] = set()
        self._drain_due_us: int | None = None
        self._sessions: dict[bytes, tuple[str, ...]] = {}
        self._expiry = SessionExpiry(
            expiry_ms=config.session_expiry_ms,
            batch=config.session_expiry_batch,
            step_ms=EXPIRY_STEP_MS,
        )
        self._clients: OrderedDict[NodeId, _Client] = OrderedDict()
        self._open_pace, self._credential_pace = (
            OpenRateLimit(
                rate_per_s=config.open_rate_per_origin,
                burst=config.open_burst_per_origin,
                origins_max=config.origins_max,
            ),
            OpenRateLimit(
                rate_per_s=config.credential_rate_per_origin,
                burst=config.credential_burst_per_origin,
                origins_max=config.origins_max,
            ),
        )
        self._opens_seen: OrderedDict[tuple[bytes, int], _Opening] = OrderedDict()
        self._joins_queued: set[str] = set()
        # Sessions closed while the commit queue was full, oldest first: each is a session of the
        # map, so the queue holds at most as many ids as the map holds sessions.
        self._closes_waiting: OrderedDict[bytes, None] = OrderedDict()
        # A replica repair, and an automatic rebalance's commit of replica moves, in the
        # pipeline; a repair that did not fit in it; whether the last such commit moved any.
        (
            self._repair_queued,
            self._repair_waiting,
            self._replica_rebalance_queued,
            self._replica_rebalance_moved,
        ) = (False, False, False, True)
        self._join_retry_us: dict[str, int] = {}
        self._changes = PlacementChanges(sessions_max=config.placement_changes_sessions_max)
        self._held_maps = HeldMapRequests(hold_us=config.map_request_hold_ms * 1000)
        # Members whose connection to the manager was lost and that were not heard from since:
        # at most the membership's servers (a forgotten member leaves it).
        self._unreachable: set[str] = set()
        self._planning: _PlanningPass | None = None
        self._target_windows: dict[PartRef, int] = {}
        self._plan_due_us = 0
        self._entries: tuple[ShardMap | None, tuple[ServerEntry, ...]] = (None, ())
        self._membership_due_us: int | None = None
        self._silence_reported = False
        """A `ServersSilent` was emitted for the deaths held now."""
        self._membership_known = False
        self._auto = _AutoRebalance(due_us=now_us + config.rebalance_interval_ms * 1000)
        self.target_candidates_examined = 0
        """Servers examined as handoff targets beyond the parts' replicas, over the run (each
        move at most `handoff_target_candidates_max` per planning pass)."""
        self._pipeline.load(now_us=now_us)

    # The driver shape.

    @property
    def node_id(self) -> NodeId:
        """The manager's node name."""
        return self._config.node_id

    @property
    def shard_map(self) -> ShardMap | None:
        """The newest committed map, or None before it is loaded."""
        return self._pipeline.shard_map

    @property
    def map_version(self) -> int:
        """The newest committed map version (0 before the map is loaded)."""
        current = self._pipeline.shard_map
        return 0 if current is None else current.version

    @property
    def membership(self) -> Membership:
        """The membership table, for inspection (admin API, tests); do not mutate it."""
        return self._membership

    @property
    def risk_policy(self) -> RiskPolicy:
        """The risk policy (predictor and trigger policy, or the rule), for inspection."""
        return self._risk

    @property
    def orchestrator(self) -> Orchestrator:
        """The handoff table and move queue, for inspection; do not mutate it."""
        return self._orchestrator

    def receive_message(self, message: object, *, source: NodeId, now_us: int) -> None:
        """Feed one message that arrived from `source`."""
        handler = _DISPATCH.get(type(message))
        if handler is None:
            self._refuse(source, ErrorCode.FRAME_UNEXPECTED, f"unexpected {type(message).__name__}")
        else:
            try:
                handler(self, message, source, now_us)
            except RemoteProtocolError as error:
                self._refuse(source, ErrorCode.from_wire(error.error_code), str(error))
        self._advance(now_us)

    def handle_timer(self, *, now_us: int) -> None:
        """Run whatever is due: liveness, store silence, failover and handoff deadlines, batches."""
        self._handle_outcome(self._pipeline.timed_out(now_us=now_us), now_us)
        due_us = self._membership_next_check_us()
        if due_us is not None and now_us >= due_us:
            self._membership_changed()
            for change in self._membership.check(now_us=now_us):
                self._liveness_changed(change, now_us)
            self._report_silence(now_us)
            forgotten = self._membership.forget_dead(now_us=now_us)
            self._unreachable.difference_update(forgotten)
            for server_id in forgotten:
                self._expiry.heard_again_us.pop(server_id, None)
            if forgotten:
                self._queue_removal_of_forgotten()
        job = self._failover
        if (
            job is not None
            and job.phase is FailoverPhase.PREPARING
            and job.deadline_us is not None
            and now_us >= job.deadline_us
        ):
            self._failover_deadline(job, now_us)
        for handoff in self._orchestrator.expired(now_us=now_us):
            self._handoff_silent(handoff, now_us)
        for move in self._orchestrator.drop_expired_moves(now_us=now_us):
            self._moves_dropped([move], "no target or slot in time")
        self._answer_held(self._held_maps.take_expired(now_us), HoldEnded.DEADLINE)
        expiry_due_us = self._expiry.due_us()
        if expiry_due_us is not None and now_us >= expiry_due_us and self.shard_map is not None:
            self._sweep_expiry(now_us)
        if self._config.rebalance_interval_ms and now_us >= self._auto.due_us:
            self._auto_rebalance(now_us)
        self._advance(now_us)

    def store_result(self, result: object, *, now_us: int) -> None:
        """Feed the result of a store request."""
        self._handle_outcome(self._pipeline.result(result, now_us=now_us), now_us)
        self._advance(now_us)

    def messages_to_send(self) -> list[Outbound]:
        """Drain the messages produced since the last call."""
        outbox, self._outbox = self._outbox, []
        return outbox

    def store_requests(self) -> list[object]:
        """Drain the store requests produced since the last call."""
        return list(self._pipeline.requests())

    def next_event(self) -> ManagerEvent | None:
        """Pop the oldest event, or None."""
        return self._events.popleft() if self._events else None

    def timer_us(self) -> int | None:
        """The earliest instant `handle_timer` has work."""
        instants = [
            self._membership_next_check_us(),
            self._pipeline.deadline_us(),
            self._orchestrator.next_timer_us() if self.shard_map is not None else None,
            min(self._join_retry_us.values(), default=None),
            self._drain_due_us if self._drains and not self._holding() else None,
            self._held_maps.deadline_us(),
            self._auto.due_us
            if self._config.rebalance_interval_ms and self.shard_map is not None
            else None,
            self._expiry.due_us()
            if self.shard_map is not None and not self._expiry.closing and self._pipeline.free_slots
            else None,
        ]
        job = self._failover
        if job is not None and job.phase is FailoverPhase.PREPARING:
            instants.append(job.deadline_us)
        present = [instant for instant in instants if instant is not None]
        return min(present) if present else None

    def _membership_changed(self) -> None:
        """A membership input arrived: its next deadline must be read again."""
        self._membership_known = False

    def _membership_next_check_us(self) -> int | None:
        """The membership's next silence deadline, read again only after a membership input.

        Reading it walks every member; the manager asks after every input, and at ten thousand
        servers the walk cost more than the inputs (deadlines only move on heartbeats, announces,
        readmissions, joins, loads and checks, which all mark it stale).
        """
        if not self._membership_known:
            self._membership_due_us = self._membership.next_check_us()
            self._membership_known = True
        return self._membership_due_us

    # Commands.

    def drain(self, server_id: str, *, now_us: int) -> bool:
        """Move every role off `server_id` (planned handoffs, capped and jittered); False if not
        an ACTIVE server of the map, already draining, or the commit queue is full. A server the
        risk policy marked DRAINING becomes the operator's drain (committed as the map entry's
        drain cause)."""
        # A server the risk policy marked DRAINING: the operator's drain takes the mark over.
        if not self._drainable(server_id):
            return False
        if not self._start_drain(server_id):
            return False
        self._advance(now_us)
        return True

    def _start_drain(self, server_id: str) -> bool:
        """Queue the DRAINING mark of an operator's (or a leaving server's) drain; False when
        the commit queue is full."""
        self._drains[server_id] = _Drain(server_id=server_id)
        change = Change(
            kind=MapChange.DRAIN_MARKED,
            build=lambda current: self._build_drain_mark(current, server_id, DrainCause.OPERATOR),
            committed=lambda built, now_us: self._operator_drain_marked(server_id, now_us),
            dropped=lambda cause, now_us: self._forget_drain(server_id),
        )
        if not self._pipeline.submit(change):
            self._forget_drain(server_id)
            return False
        return True

    def _drainable(self, server_id: str) -> bool:
        """Whether `drain` would start a drain of `server_id` (an ACTIVE server of the map, or
        one the risk policy marked DRAINING, not draining already)."""
        if self.shard_map is None or server_id in self._drains:
            return False
        takes_over = (
            server_id in self._risk_drained and self._map_state(server_id) is ServerState.DRAINING
        )
        return takes_over or self._is_active(server_id)

    def _operator_drain_marked(self, server_id: str, now_us: int) -> None:
        """The operator's drain is in the map: a risk mark it took over (or that committed ahead
        of it) is no longer the risk policy's. Only now: had the takeover been refused (a full
        queue) or dropped, the mark would have been left with no owner to clear it."""
        self._risk_drained.discard(server_id)
        self._drain_marked(server_id, now_us)

    def _forget_drain(self, server_id: str) -> None:
        """The operator's drain did not commit; a risk mark it was to take over stays the risk
        policy's (cleared when the policy no longer blocks the server)."""
        self._drains.pop(server_id, None)
        if self._drain_cause(server_id) is DrainCause.RISK:
            self._risk_drained.add(server_id)

    def draining(self, server_id: str) -> bool:
        """Whether an operator's drain of `server_id` (or its own, leaving) is under way: asked
        for, and not finished yet (a manager that loaded the map resumes the drains it shows)."""
        return server_id in self._drains

    def undrain(self, server_id: str, *, now_us: int) -> bool:
        """Stop draining `server_id`: queued moves are forgotten, the server is ACTIVE again;
        False if it is not DRAINING or the commit queue is full (then nothing is forgotten)."""
        current = self.shard_map
        if current is None or self._map_state(server_id) is not ServerState.DRAINING:
            return False
        change = Change(
            kind=MapChange.DRAIN_CLEARED,
            build=lambda current: self._build_undrain(current, server_id),
            committed=lambda built, now_us: self._undrained(server_id),
            dropped=lambda cause, now_us: self._undrain_dropped(server_id),
        )
        # Refused before anything is forgotten: a drain whose undrain never queued keeps going.
        if not self._pipeline.submit(change):
            return False
        self._undrains_pending.add(server_id)
        self._forget_drains_of(server_id)
        self._advance(now_us)
        return True

    def _forget_drains_of(self, server_id: str) -> None:
        """No drain of `server_id` goes on: neither the operator's nor the risk policy's mark."""
        self._drains.pop(server_id, None)
        self._risk_drained.discard(server_id)
        self._orchestrator.cancel_moves(server_id, origin=MoveOrigin.DRAIN)

    def _undrain_dropped(self, server_id: str) -> None:
        """The undrain could not apply: a drain the map still shows has an owner again (the
        operator's, or the risk policy's for its mark), so something finishes or clears it."""
        self._undrains_pending.discard(server_id)
        if self._map_state(server_id) is not ServerState.DRAINING:
            return
        if self._drain_cause(server_id) is DrainCause.RISK:
            self._risk_drained.add(server_id)
        elif server_id not in self._drains:
            self._drains[server_id] = _Drain(server_id=server_id, marked=True)

    def _undrained(self, server_id: str) -> None:
        """An undrain committed (the server is ACTIVE): forget its drain again, in case a map
        reload between its submission and its commit gave the drain back to an owner."""
        self._undrains_pending.discard(server_id)
        self._forget_drains_of(server_id)
        # A drain that ran while no other server could take replica roles left parts short; the
        # server takes roles again, so it is a candidate to top them up, as a joining one is.
        self._queue_replica_repair()

    def handoff(
        self,
        session_id: bytes,
        *,
        target: str | None = None,
        reason: ReasonCode = ReasonCode.REBALANCE,
        now_us: int,
    ) -> int:
        """Move a session's parts by hand (to `target`, or wherever is best); parts queued."""
        current = self.shard_map
        parts = self._sessions.get(session_id, ())
        if current is None:
            return 0
        queued = 0
        for part in parts:
            key = PartKey(session_id=session_id, part=part)
            source = current.primary_of(key)
            if source == target:
                continue
            queued += self._orchestrator.request_move(
                MoveRequest(
                    ref=ref_of(key),
                    source=source,
                    reason=reason,
                    origin=MoveOrigin.OPERATOR,
                    target=target,
                    requested_us=now_us,
                )
            )
        self._advance(now_us)
        return queued

    def rebalance(
        self,
        *,
        tolerance: float = REBALANCE_TOLERANCE_DEFAULT,
        parts_max: int = REBALANCE_PARTS_MAX_DEFAULT,
        now_us: int,
        receives_not: frozenset[str] = frozenset(),
    ) -> int:
        """Even out the primaries of the servers taking roles (planned handoffs, reason
        REBALANCE); how many parts were queued.

        A server keeps the primaries it took in failovers and drains until something moves
        them, so after a recovery (a restarted server comes back empty) or a rolling restart
        the load stays uneven. Each alive ACTIVE server has a share of the primaries those
        servers lead, by weight. One above its share by more than `tolerance` gives parts back
        down to its share, each to the server then furthest below its own among those taking
        roles (not risk-blocked, CPU below `target_cpu_utilization_max`). One below its share by
        more than `tolerance` is then filled up to its share from the servers above theirs,
        those with the most to spare first: in a large fleet a restarted server's share comes
        from many servers each a little over theirs. At most `parts_max` parts in all. Among a
        random sample of the source's primaries, parts the target already holds a replica of go
        first (its copy is up to date). A DRAINING server neither gives nor receives, nor do
        the servers of `receives_not` receive.
        """
        current = self.shard_map
        if current is None or parts_max <= 0:
            return 0
        loads = self._loads_after_moves(current)
        entries = [
            e
            for e in self._map_entries(current)
            if e.server_id in loads and self._is_alive(e.server_id)
        ]
        total_weight = sum(e.weight_milli for e in entries)
        if len(entries) < 2 or total_weight <= 0:
            return 0
        total = sum(loads[e.server_id] for e in entries)
        shares = {e.server_id: total * e.weight_milli / total_weight for e in entries}
        plan = _RebalancePlan(loads=loads, shares=shares, budget=parts_max)
        # A receiver is short of its share by a whole part at least (of 3 primaries on 3
        # servers, one holding them all, the other two are short by one each).
        receivers = [s for s, share in shares.items() if loads[s] < math.floor(share)]
        receivers = [s for s in receivers if s not in receives_not and self._takes_roles(s)]
        # Servers far above their share give down to it, to whoever is furthest below.
        high = [s for s, share in shares.items() if loads[s] > share * (1.0 + tolerance)]
        high.sort(key=lambda s: loads[s] / shares[s], reverse=True)
        self._rebalance_from(current, plan, high, receivers, now_us)
        # Servers far below their share take up to it, from whoever has the most to spare.
        low = [s for s in receivers if loads[s] < shares[s] * (1.0 - tolerance)]
        if low:
            spare = [s for s in shares if loads[s] - math.ceil(shares[s]) > 0]
            spare.sort(key=lambda s: (loads[s] - shares[s], s), reverse=True)
            self._rebalance_from(current, plan, spare, low, now_us)
        self._advance(now_us)
        return plan.queued

    def _rebalance_from(
        self,
        current: ShardMap,
        plan: _RebalancePlan,
        sources: list[str],
        receivers: list[str],
        now_us: int,
    ) -> None:
        """Each source in turn gives its primaries above its share, one at a time, to the
        receiver then furthest below its own share, until the receivers are at theirs."""
        loads, shares = plan.loads, plan.shares
        deficits = [(loads[s] - math.floor(shares[s]), s) for s in receivers]
        deficits = [(need, s) for need, s in deficits if need < 0]
        heapq.heapify(deficits)
        for source in sources:
            if not deficits or plan.queued >= plan.budget:
                return
            wanted = min(loads[source] - math.ceil(shares[source]), plan.budget - plan.queued)
            wanted = min(wanted, -sum(need for need, _ in deficits))
            if wanted <= 0:
                continue  # above its share by the tolerance, but by less than a part
            picks = self._rebalance_picks(current, source, wanted, {s for _, s in deficits})
            while picks.remaining and deficits and wanted > 0:
                need, target = heapq.heappop(deficits)
                ref = picks.take(target)
                if ref is None:
                    heapq.heappush(deficits, (need, target))  # for the next source
                    break
                plan.queued += self._orchestrator.request_move(
                    MoveRequest(
                        ref=ref,
                        source=source,
                        reason=ReasonCode.REBALANCE,
                        origin=MoveOrigin.OPERATOR,
                        target=target,
                        requested_us=now_us,
                    )
                )
                loads[source] -= 1
                loads[target] += 1
                wanted -= 1
                if need + 1 < 0:
                    heapq.heappush(deficits, (need + 1, target))

    def _auto_rebalance(self, now_us: int) -> None:
        """The periodic check of `rebalance_interval_ms`: rebalance a settled cluster whose
        primaries are uneven by more than `rebalance_tolerance`."""
        config = self._config
        auto = self._auto
        auto.due_us = now_us + config.rebalance_interval_ms * 1000
        current = self.shard_map
        if current is None:
            return
        settled = self._settled_state(current)
        previous, auto.settled = auto.settled, settled
        if (
            settled != previous
            or self._failover is not None
            or self._drains
            or self._risk_drained
            or self._undrains_pending
            or self._orchestrator.queued_moves
            or self._orchestrator.handoffs()
        ):
            # Not settled: look again sooner, so that a cluster that just settled (the last
            # server of a rolling restart joined) is evened out soon after.
            auto.due_us = now_us + self._rebalance_settle_us()
            return
        # A server the risk policy moved parts off lately receives nothing: its parts would
        # come back to it (a ping-pong) if its fault returns.
        quiet_us = now_us - config.rebalance_after_risk_ms * 1000
        auto.risk_moved_us = {s: t for s, t in auto.risk_moved_us.items() if t > quiet_us}
        queued = self.rebalance(
            tolerance=config.rebalance_tolerance,
            parts_max=config.rebalance_parts_max,
            now_us=now_us,
            receives_not=frozenset(auto.risk_moved_us),
        )
        if queued:
            # Its moves keep the next checks busy; the first after them goes on with the rest.
            auto.due_us = now_us + self._rebalance_settle_us()
            self._emit(
                RebalanceQueued(
                    parts=queued, tolerance=config.rebalance_tolerance, map_version=current.version
                )
            )
        elif (
            self._queue_replica_rebalance(
                current, frozenset(auto.risk_moved_us), tolerance=config.rebalance_tolerance
            )
            and self._replica_rebalance_moved
        ):
            # Look again soon only while the commits move something: a build that finds no
            # part it may move (none of the kept replicas caught up yet) waits an interval.
            auto.due_us = now_us + self._rebalance_settle_us()

    def rebalance_replicas(self, *, tolerance: float = REBALANCE_TOLERANCE_DEFAULT) -> bool:
        """Queue one commit that moves replica roles to the servers taking roles more than
        `tolerance` below their share of them (as the automatic rebalance does once the
        primaries are even: `_build_replica_rebalance`, at most `replica_moves_per_commit_max`
        roles); whether one is queued (one queued already counts). The operator's rebalance asks
        for it when it finds no primary to move; the commit reports what it moved
        (`ReplicasRebalanced`). The moves are built first on the current map: when none could
        move now (no server below its share, or none of the roles that could go belongs to a
        part whose other replica reported as far, parts under writes) nothing is queued and the
        answer is False, so that an operator running it until it says so stops."""
        current = self.shard_map
        if current is None:
            return False
        if self._replica_rebalance_queued:
            return True
        built = self._build_replica_rebalance(current, frozenset(), tolerance)
        if built is None or not built.parts:
            return False
        return self._queue_replica_rebalance(current, frozenset(), tolerance=tolerance)

    def _queue_replica_rebalance(
        self, current: ShardMap, receives_not: frozenset[str], *, tolerance: float
    ) -> bool:
        """Queue one commit that moves replica roles to the servers furthest below their share
        of them, when some server taking roles is more than `tolerance` below it (the
        primaries already even); whether one was queued. A rolling restart leaves the servers
        restarted last with no replica role at all, so the others apply every write and a
        failover can promote no part on them."""
        if self._replica_rebalance_queued or current.config.replica_count < 2:
            return False
        if self._replica_shares(current, receives_not, tolerance) is None:
            return False
        change = Change(
            kind=MapChange.REPLICAS_MOVED,
            build=lambda at: self._build_replica_rebalance(at, receives_not, tolerance),
            committed=lambda built, now_us: self._replica_rebalance_done(built, tolerance),
            dropped=lambda cause, now_us: self._replica_rebalance_done(None, tolerance),
        )
        self._replica_rebalance_queued = self._pipeline.submit(change)
        return self._replica_rebalance_queued

    def _replica_rebalance_done(self, built: Built | None, tolerance: float) -> None:
        self._replica_rebalance_queued = False
        self._replica_rebalance_moved = built is not None and bool(built.parts)
        if built is not None and built.parts:
            self._emit(
                ReplicasRebalanced(
                    roles=len(built.parts),
                    tolerance=tolerance,
                    map_version=built.new_map.version,
                )
            )

    def _replica_shares(
        self, current: ShardMap, receives_not: frozenset[str], tolerance: float
    ) -> tuple[dict[str, int], dict[str, float], list[str]] | None:
        """Each live ACTIVE server's replica roles and its share of them by weight, and the
        servers taking roles more than `tolerance` below their share; None when there is none
        of those."""
        loads = current.replica_loads()
        entries = [
            e
            for e in self._map_entries(current)
            if e.server_id in loads and self._is_alive(e.server_id)
        ]
        total_weight = sum(e.weight_milli for e in entries)
        if len(entries) < 2 or total_weight <= 0:
            return None
        total = sum(loads[e.server_id] for e in entries)
        shares = {e.server_id: total * e.weight_milli / total_weight for e in entries}
        floor = 1.0 - tolerance
        # Short of a whole role at least (a share below one role can never be filled).
        receivers = [
            s
            for s, share in shares.items()
            if loads[s] < min(share * floor, math.floor(share))
            and s not in receives_not
            and self._takes_roles(s)
        ]
        return (loads, shares, receivers) if receivers else None

    def _build_replica_rebalance(
        self, current: ShardMap, receives_not: frozenset[str], tolerance: float
    ) -> Built | None:
        """Replica roles from the servers with the most above their share, at random among
        theirs, each to the receiver then furthest below its share that does not hold the
        part; at most `replica_moves_per_commit_max` (and `rebalance_parts_max`), each part at
        most once. A part moves a replica role only while it keeps a live primary and another
        replica that reported as far as the one that goes and the primary did
        (`_caught_up_without`, `as_far`), which hold its history while the new replica installs
        its copy; none while a failover, drain or risk drain started since the check."""
        if self._failover is not None or self._drains or self._risk_drained:
            return None
        plan = self._replica_shares(current, receives_not, tolerance)
        if plan is None:
            return None
        loads, shares, receivers = plan
        config = self._config
        budget = min(config.replica_moves_per_commit_max, config.rebalance_parts_max)
        wanted = {s: math.floor(shares[s]) for s in receivers}
        givers = [s for s in shares if loads[s] > math.ceil(shares[s])]
        givers.sort(key=lambda s: (loads[s] - shares[s], s), reverse=True)
        operations: list[PlacementOverridden] = []
        moved: dict[PartKey, None] = {}  # in order, each part once
        sources: set[str] = set()
        for giver in givers:
            spare = loads[giver] - math.ceil(shares[giver])
            keys = current.parts_for(giver).replica
            count = min(len(keys), REBALANCE_SAMPLE_FACTOR * min(spare, budget))
            for key in self._rng.sample(keys, count):
                if spare <= 0 or len(operations) >= budget:
                    break
                if key in moved or self._orchestrator.is_moving(ref_of(key)):
                    continue
                placement = current.lookup(key)
                keep = tuple(s for s in placement.replicas if s != giver)
                if not self._is_live(placement.primary) or not self._caught_up_without(
                    key, giver, keep, as_far=placement.primary
                ):
                    continue
                target = min(
                    (s for s in receivers if loads[s] < wanted[s] and s not in placement.servers),
                    key=lambda s: (loads[s] - shares[s], s),
                    default=None,
                )
                if target is None:
                    continue
                operations.append(
                    override(key, Placement(primary=placement.primary, replicas=(*keep, target)))
                )
                moved[key] = None
                sources.add(giver)
                loads[giver] -= 1
                loads[target] += 1
                spare -= 1
            if len(operations) >= budget or all(loads[s] >= wanted[s] for s in receivers):
                break
        return _replica_moves_built(current, operations, list(moved), tuple(sorted(sources)))

    def _ahead_of(self, key: PartKey, server_id: str, others: list[str]) -> bool:
        """Whether `server_id` reported (in its heartbeats) entries of the part that none of
        `others` reported as far: moving its role away would leave them with the primary only.
        Unknown (it never reported the part, or reported none applied): False."""
        given = self._progress_seq(server_id, key)
        if given is None or given[1] == 0:
            return False
        return not self._caught_up_without(key, server_id, tuple(others), active_only=False)

    def _caught_up_without(
        self,
        key: PartKey,
        giver: str,
        keep: tuple[str, ...],
        *,
        active_only: bool = True,
        as_far: str | None = None,
    ) -> bool:
        """Whether one of `keep`, the part's replicas but `giver`, is ALIVE (and ACTIVE, with
        `active_only`: one draining will go too) and reported (in its heartbeats) some of the
        part's history when `giver` did, and at least as far as `giver`'s report before its
        latest: the history stays on a replica when `giver`'s role moves. A replica added lately
        (by the commit before, say) has not reported the part, or reports it at 0, until it
        installed its copy; moving the other one then left the history on the primary alone. A
        replica cut off from the primary stays where it was while `giver` alone takes the
        writes the primary acknowledges as replicated, and falls behind `giver`'s earlier
        report too. One streaming the log passes: asking for as far as `giver`'s latest report,
        by heartbeats taken at other instants, kept a live drain's last roles waiting 18 s under
        writes, near its leave timeout; `giver`'s report before is a heartbeat (or a rotation of
        the heartbeats' part reports) older than the other's latest.

        With `as_far` (the part's primary) the one kept must have reported as far (epoch, then
        sequence) as `giver` and that primary did: what the rebalance asks, which nothing
        hurries. A replica cut off from the primary falls behind while `giver` alone takes the
        writes the primary acknowledges as replicated; moving `giver`'s role then left those on
        the primary alone, and a failover of the primary lost them."""
        given = self._progress_seq(giver, key)
        if as_far is None:
            floor = (0, 0) if given is None else (0, min(given[1], 1))
            at_seq_only = True
            member = self._membership.get(giver)
            before = None if member is None else member.progress_before.get(ref_of(key))
        else:
            before = None
            led = self._progress_seq(as_far, key)
            floor = max(given or (0, 0), led or (0, 0))
            at_seq_only = False
        state_of = self._membership.state_of
        for server_id in keep:
            if state_of(server_id) is not MemberState.ALIVE:
                continue
            if active_only and not self._is_active(server_id):
                continue
            held = self._progress_seq(server_id, key)
            if held is None or (before is not None and held < before):
                continue
            if (held[1] >= floor[1]) if at_seq_only else (held >= floor):
                return True
        return False

    def _rebalance_settle_us(self) -> int:
        config = self._config
        return min(config.rebalance_settle_ms, config.rebalance_interval_ms) * 1000

    def _settled_state(self, current: ShardMap) -> _Settled:
        """What must not change between two checks for the cluster to count as settled: each
        server of the map, its incarnation, state, liveness and risk block."""
        steering = self._steering
        state: list[tuple[str, int, str, bool, bool]] = []
        for entry in self._map_entries(current):
            member = self._membership.get(entry.server_id)
            blocked = steering is not None and steering.placement_blocked(
                entry.server_id, now_us=self._now_us
            )
            state.append(
                (
                    entry.server_id,
                    -1 if member is None else member.incarnation,
                    entry.state.value,
                    self._is_alive(entry.server_id),
                    blocked,
                )
            )
        return tuple(state)

    def _loads_after_moves(self, current: ShardMap) -> dict[str, int]:
        """Each ACTIVE server's primaries once the moves queued and the handoffs not committed
        yet are done (a move with no target yet counts only where it leaves): a rebalance asked
        for twice, or during a drain, does not move the same surplus again."""
        loads = current.primary_loads()
        orchestrator = self._orchestrator
        moves = [(move.source, move.target, 1) for move in orchestrator.queued()]
        moves.extend(
            (h.source, h.target, len(h.parts)) for h in orchestrator.handoffs() if not h.map_version
        )
        for source, target, count in moves:
            if source in loads:
                loads[source] -= count
            if target is not None and target in loads:
                loads[target] += count
        return loads

    def _rebalance_picks(
        self, current: ShardMap, source: str, wanted: int, targets: set[str]
    ) -> _RebalancePicks:
        """A random sample of `source`'s primaries not already moving (a few times `wanted`),
        indexed by which of `targets` holds a replica of each."""
        refs = [
            ref
            for ref in (ref_of(key) for key in current.parts_for(source).primary)
            if not self._orchestrator.is_moving(ref)
        ]
        sample = self._rng.sample(refs, min(len(refs), REBALANCE_SAMPLE_FACTOR * wanted))
        by_replica: dict[str, list[PartRef]] = {}
        for ref in sample:
            for replica in current.lookup(key_of(ref)).replicas:
                if replica in targets:
                    by_replica.setdefault(replica, []).append(ref)
        return _RebalancePicks(sample[:wanted], by_replica, wanted)

    def request_handoff(
        self,
        server_id: str,
        *,
        reason: ReasonCode,
        parts: tuple[PartRef, ...] = (),
        parts_fraction: float | None = None,
        now_us: int,
    ) -> int:
        """Handoff step 1 from the manager's own risk input (the predictor); parts queued."""
        queued = self._queue_moves(
            server_id, parts, reason, MoveOrigin.RISK, parts_fraction, now_us=now_us
        )
        self._advance(now_us)
        return queued

    # Plumbing.

    def _emit(self, event: ManagerEvent) -> None:
        self._events.append(event)
        if len(self._events) > self._config.events_buffered_max:
            self._events.popleft()
            self.events_dropped += 1

    def _send(self, destination: NodeId, message: object) -> None:
        self._outbox.append(Outbound(destination=destination, message=message))

    def _refuse(self, peer: NodeId, code: ErrorCode, reason: str) -> None:
        """A peer broke the protocol: tell it why and close only its connection."""
        self._emit(PeerRefused(peer=peer, error_code=int(code), reason=reason))
        self._send(peer, Error(code=code, reason=reason))
        self._send(peer, ConnectionCloseRequested(peer=peer, error_code=int(code), reason=reason))

    def _map_entry(self, server_id: str) -> ServerEntry | None:
        current = self.shard_map
        return None if current is None else _server_entry(current, server_id)

    def _map_state(self, server_id: str) -> ServerState | None:
        entry = self._map_entry(server_id)
        return None if entry is None else entry.state

    def _drain_cause(self, server_id: str) -> DrainCause | None:
        """Who drained a DRAINING server of the map; None for any other server."""
        entry = self._map_entry(server_id)
        if entry is None or entry.state is not ServerState.DRAINING:
            return None
        return entry.drain_cause

    def _is_active(self, server_id: str) -> bool:
        return self._map_state(server_id) is ServerState.ACTIVE

    def _is_live(self, server_id: str) -> bool:
        member = self._membership.get(server_id)
        return member is not None and member.is_live

    def _is_alive(self, server_id: str) -> bool:
        return self._membership.state_of(server_id) is MemberState.ALIVE

    def _map_entries(self, current: ShardMap) -> tuple[ServerEntry, ...]:
        """The map's server entries in map order, listed once per map version (the map sorts
        them on every `servers` read)."""
        cached_map, entries = self._entries
        if cached_map is not current:
            entries = current.servers
            self._entries = (current, entries)
        return entries

    def _eligible(self, current: ShardMap) -> list[str]:
        """Servers that may take new roles: ACTIVE in the map and ALIVE."""
        return [
            entry.server_id
            for entry in self._map_entries(current)
            if entry.state is ServerState.ACTIVE and self._is_alive(entry.server_id)
        ]

    def _holding(self) -> bool:
        job = self._failover
        return job is not None and job.phase is not FailoverPhase.PENDING

    def _advance(self, now_us: int) -> None:
        """After every input: start a failover, queue joins and drains, plan handoffs, commit."""
        self._now_us = max(self._now_us, now_us)
        if self.shard_map is None:
            return
        self._maybe_prepare_failover(now_us)
        self._ensure_joins(now_us)
        if self._closes_waiting:
            self._retry_closes()
        if self._repair_waiting and self._pipeline.free_slots:
            self._queue_replica_repair()
        self._drain_tick(now_us)
        self._plan_handoffs(now_us)
        while True:
            done = self._pipeline.pump(now_us=now_us, hold=self._holding())
            for committed in done:
                self._handle_outcome(committed, now_us)
            # A change built or dropped just now may have opened a failover (a handoff whose
            # participant died, a dead member's join found landed): it fences now, not at
            # whatever input comes next.
            if not done and not self._maybe_prepare_failover(now_us):
                break

    # Store outcomes.

    def _handle_outcome(self, outcome: Outcome | None, now_us: int) -> None:
        match outcome:
            case Loaded():
                self._map_loaded(outcome, now_us)
            case Committed():
                self._map_committed(outcome, now_us)
            case Rejected():
                delta = outcome.built.delta
                self._emit(
                    MapCommitRejected(
                        base_version=self.map_version if delta is None else delta.base_version,
                        change=outcome.change.kind,
                        detail=outcome.detail,
                    )
                )

    def _map_loaded(self, outcome: Loaded, now_us: int) -> None:
        current = outcome.shard_map
        self._changes.everything_changed(current.version)
        sessions: dict[bytes, list[str]] = {}
        for key in current.part_keys():
            sessions.setdefault(key.session_id, []).append(key.part)
        self._sessions = {session_id: tuple(parts) for session_id, parts in sessions.items()}
        self._expiry.reset(self._sessions, now_us=now_us)
        self._membership_changed()
        for entry in current.servers:
            self._membership.restore(
                entry.server_id,
                address=entry.address,
                zone=entry.zone,
                weight=entry.weight,
                dead=entry.state is ServerState.DEAD,
                now_us=now_us,
            )
            if entry.state is not ServerState.DRAINING or entry.server_id in self._drains:
                continue
            if entry.server_id in self._undrains_pending:
                # Its undrain is queued and will be built again on this map.
                continue
            # The map says who drained it: the risk policy's mark stays the policy's to clear.
            if entry.drain_cause is DrainCause.RISK:
                self._risk_drained.add(entry.server_id)
            else:
                self._drains[entry.server_id] = _Drain(server_id=entry.server_id, marked=True)
        self._emit(
            MapLoaded(map_version=current.version, servers=len(current.servers), parts=len(current))
        )
        self._history.clear()
        whole = (
            self._whole_map_message(current)
            if outcome.encoded is None
            else messages.MapPublished(
                map_version=current.version, base_version=0, body=outcome.encoded
            )
        )
        for member in self._membership.live_members():
            self._send(member.server_id, whole)
            member.map_version_sent = current.version
            if member.unconfirmed is None and current.version > member.map_version:
                member.unconfirmed = (current.version, self._now_us)
        # A repair queued by a join or a failover of this map may have died with the manager
        # that loaded it before (a restart): the pinned placements left short are checked again.
        self._queue_replica_repair()
        self._answer_held(self._held_maps.take_all(), HoldEnded.MAP_LOADED)

    def _index_parts(self, session_id: bytes, parts: tuple[str, ...], now_us: int) -> None:
        known = self._sessions.get(session_id, ())
        self._sessions[session_id] = known + tuple(p for p in parts if p not in known)
        if not known:
            self._expiry.track(session_id, now_us=now_us)

    def _unindex_parts(self, session_id: bytes, parts: tuple[str, ...]) -> None:
        remaining = tuple(p for p in self._sessions.get(session_id, ()) if p not in parts)
        if remaining:
            self._sessions[session_id] = remaining
        else:
            self._sessions.pop(session_id, None)
            self._expiry.forget(session_id)

    def _map_committed(self, outcome: Committed, now_us: int) -> None:
        built = outcome.built
        if built.delta is not None:
            for operation in built.delta.operations:
                if isinstance(operation, PartsAdded):
                    self._index_parts(operation.session_id, operation.parts, now_us)
                elif isinstance(operation, PartsRemoved):
                    self._unindex_parts(operation.session_id, operation.parts)
            self._changes.committed(built.delta, built.new_map.version, built.implicit_moves)
            version = built.new_map.version
            published = messages.MapPublished(
                map_version=version,
                base_version=outcome.previous.version,
                body=ShardMap.encode_delta(built.delta),
            )
            self._history.record(published)
            # One message shared by every send, and the send inlined: at ten thousand servers
            # a version's fan-out is the manager's largest per-version cost.
            append = self._outbox.append
            live_members = self._membership.live_members()
            for live in live_members:
                append(Outbound(destination=live.server_id, message=published))
                live.map_version_sent = version
                if live.unconfirmed is None:
                    live.unconfirmed = (version, now_us)
            self._allow_adoption(
                live_members,
                version,
                self._parts_moved_at_most(built.delta.operations, built.new_map, built),
                now_us,
            )
            self._emit(
                MapCommitted(
                    map_version=built.new_map.version,
                    base_version=outcome.previous.version,
                    change=outcome.change.kind,
                    parts=built.parts,
                    servers=built.servers,
                )
            )
            if built.implicit_moves:
                self._emit(
                    PartsMovedImplicitly(
                        map_version=version,
                        change=outcome.change.kind,
                        servers=built.servers,
                        count=len(built.implicit_moves),
                        parts=tuple(
                            ref_of(key) for key in built.implicit_moves[:MOVED_IMPLICITLY_NAMED_MAX]
                        ),
                    )
                )
        previous = outcome.previous
        for change, member in outcome.members or ((outcome.change, built),):
            if change.kind is MapChange.SERVER_JOINED and previous.version > 0:
                self._joined_from(previous, member.servers)
            change.committed(member, now_us)
        self._drain_progress(built.servers)
        if built.delta is not None and len(self._held_maps):
            self._answer_held(self._held_moved(built), HoldEnded.MOVED)

    def _joined_from(self, previous: ShardMap, servers: Iterable[str]) -> None:
        """Servers new to the map that hold none get their first one from `previous`, the
        version before their join (`MapHistory.since_join`)."""
        for server_id in servers:
            if self._membership.held_version(server_id) == 0:
                try:
                    previous.server(server_id)
                except KeyError:
                    self._history.joined(server_id, previous)

    def _held_moved(self, built: Built) -> list[tuple[NodeId, HeldRequest]]:
        """The held MAP_REQUESTs a committed version may have news for: every one when it
        changed servers (a failover marks the dead server) or moved parts it does not name,
        else those presenting a session it names or moved. After the fan-out to the servers,
        so the new primaries have the version on its way before the clients come."""
        assert built.delta is not None
        operations = built.delta.operations
        if built.implicit_moves is None or not all(
            isinstance(operation, SESSION_OPERATIONS) for operation in operations
        ):
            return self._held_maps.take_all()
        named = [
            operation.session_id
            for operation in operations
            if isinstance(operation, SESSION_OPERATIONS)
        ]
        named.extend(key.session_id for key in built.implicit_moves)
        return self._held_maps.take_sessions(named)

    def _parts_moved_at_most(
        self, operations: Sequence[Operation], new_map: ShardMap, built: Built
    ) -> int:
        """About how many of one server's parts a version may move: of the parts the version
        moves (one per operation and implicit move; when servers changed, the parts whose
        copies they held), the share one server holds (every part, on a fleet no larger than a
        part's copies). The share takes a pass over the servers, so a version of session
        changes too small for any allowance (nearly every version) is not scaled by it."""
        config = self._config
        servers_changed = sum(
            1 for operation in operations if not isinstance(operation, SESSION_OPERATIONS)
        )
        if built.implicit_moves is not None and not servers_changed:
            moved_anywhere = len(operations) + len(built.implicit_moves)
            allowance_us = moved_anywhere * config.map_adopt_allowance_us_per_part
            if allowance_us < config.heartbeat_interval_ms * 1000:
                return moved_anywhere
            return int(moved_anywhere * self._held_share(new_map))
        held_share = self._held_share(new_map)
        moved = len(operations) + len(new_map) * min(1.0, servers_changed * held_share)
        return int(moved * held_share)

    def _held_share(self, new_map: ShardMap) -> float:
        """The share of the parts one eligible server holds a copy of."""
        copies = new_map.config.replica_count + 1
        return min(1.0, copies / max(1, len(self._eligible(new_map))))

    def _allow_adoption(
        self, members: Iterable[Member], version: int, parts: int, now_us: int
    ) -> None:
        """Give each live server sent `version` time to adopt it before its silence makes it
        dead: `map_adopt_allowance_us_per_part` per part of it the version may move, bounded.
        An ALIVE server has it from now; a SUSPECTED one from when it was last heard, so the
        versions that follow (a failover's, while it is silent) never move its line further: a
        survivor busy since before the version went out keeps the time to adopt it, and a
        crashed one dies at most that long after its last heartbeat. An allowance shorter than
        a heartbeat interval changes nothing and is not given."""
        config = self._config
        allowance_us = min(
            parts * config.map_adopt_allowance_us_per_part,
            config.map_adopt_allowance_max_ms * 1000,
        )
        if allowance_us < config.heartbeat_interval_ms * 1000:
            return
        for member in members:
            since_us = now_us if member.state is MemberState.ALIVE else member.last_heard_us
            self._membership.allow_adoption(
                member.server_id, version=version, until_us=since_us + allowance_us
            )

    def _whole_map_message(self, current: ShardMap) -> messages.MapPublished:
        return messages.MapPublished(
            map_version=current.version, base_version=0, body=current.encode()
        )

    def _catch_up(self, server_id: str, held_version: int, current: ShardMap) -> None:
        """Bring a server that holds `held_version` to `current`: the deltas since, in order,
        when the history still has them, else the whole map (a few kilobytes instead of an
        encode of every part)."""
        history = self._history
        chain = history.since(held_version, current.version)
        if held_version > 0:
            history.forget(server_id)
        elif (since_join := history.since_join(server_id, current.version)) is not None:
            base, deltas = since_join
            chain = [self._whole_map_message(base), *deltas]
        for published in chain or (self._whole_map_message(current),):
            self._send(server_id, published)
        member = self._membership.get(server_id)
        if member is not None:
            member.sent_map(current.version, now_us=self._now_us)

    # Membership.

    def _check_sender(self, server_id: str, source: NodeId) -> bool:
        """A server speaks only for itself: its connection's node id (the name its certificate
        was issued for) must be the server id its message names. Refused otherwise, saying so:
        a server started with another node's certificate was dropped in silence, and listened
        without ever joining, its log saying nothing."""
        if server_id != source:
            raise RemoteProtocolError(
                f"this connection's certificate was issued for {source!r}, but its message is from "
                f"server {server_id!r}: give each server the certificate issued for its server id "
                "(forehand certs)",
                error_code=ErrorCode.UNAUTHENTICATED,
            )
        return True

    def _on_announced(self, message: messages.ServerAnnounced, source: NodeId, now_us: int) -> None:
        if not self._check_sender(message.server_id, source):
            return
        try:
            ServerJoinedOperation(
                server_id=message.server_id,
                address=message.address,
                zone=message.zone,
                weight=message.weight,
            )
            # This manager's own bounds (weight, zone and address lengths): a server outside
            # them could never be committed to the map, so it is told why instead of waiting.
            check_server_entry(
                self._placement_config,
                ServerEntry(
                    server_id=message.server_id,
                    address=message.address,
                    zone=message.zone,
                    weight=message.weight,
                    state=ServerState.ACTIVE,
                ),
            )
            self._check_credential_lifetime(message)
            self._check_heartbeat_interval(message)
            self._check_transport(message)
            self._check_keys(message)
            _check_declared_parts(message.parts)
        except LocalProtocolError as error:
            raise RemoteProtocolError(f"bad ServerAnnounced: {error}") from error
        self._membership_changed()
        outcome = self._membership.announce(message, now_us=now_us)
        if outcome is AnnounceOutcome.JOINED:
            self._queue_join(message.server_id, now_us)
        elif outcome is AnnounceOutcome.RESTARTED:
            self._declare_dead(message.server_id, DeathCause.RESTARTED, 0, now_us)
            self._try_readmit(message.server_id, now_us)
        elif outcome is AnnounceOutcome.REJOIN_PENDING:
            self._try_readmit(message.server_id, now_us)
        elif outcome is AnnounceOutcome.STALE:
            self._refuse_superseded(message.server_id, message.incarnation)
        elif outcome is AnnounceOutcome.REPEATED:
            member = self._membership.get(message.server_id)
            current = self.shard_map
            if member is not None and member.is_live and current is not None:
                # A server announces again only while it has no map.
                self._catch_up(message.server_id, 0, current)

    def _refuse_superseded(self, server_id: str, incarnation: int) -> None:
        """A message of an older incarnation than the member's: a second process runs under
        the same server id (one restarted by hand and never stopped, say), and each of the two
        connections replaced the other's in turn, each replacement a silence, a death and a
        failover. The stale one is closed with SUPERSEDED, on which a server stops; the reason
        names the refused incarnation first (PROTOCOL.md 6.2), as the ERROR may reach the newer
        process's connection if it replaced the stale one meanwhile."""
        member = self._membership.get(server_id)
        running = -1 if member is None else member.incarnation
        raise RemoteProtocolError(
            messages.superseded_reason(server_id, incarnation, running),
            error_code=ErrorCode.SUPERSEDED,
        )

    def _check_credential_lifetime(self, message: messages.ServerAnnounced) -> None:
        """A server whose credentials outlive `session_expiry_ms` would have this manager close
        sessions whose clients still hold a valid credential: refused, saying so, rather than
        joined (an announcement without the field is not checked)."""
        expiry_ms = self._config.session_expiry_ms
        lifetime_ms = message.credential_lifetime_ms
        if expiry_ms and lifetime_ms >= expiry_ms:
            raise LocalProtocolError(
                f"credential_lifetime_ms of {message.server_id!r} ({lifetime_ms}) must be "
                f"below the manager's session_expiry_ms ({expiry_ms}), or sessions would "
                "expire while their credentials are still valid"
            )

    def _check_transport(self, message: messages.ServerAnnounced) -> None:
        """A server that serves clients over another transport than this cluster's clients use
        could be placed parts no client reaches: refused, saying so (either side unsaid: not
        checked)."""
        expected = self._config.client_transport
        if expected and message.transport and message.transport != expected:
            raise LocalProtocolError(
                f"transport of {message.server_id!r} ({message.transport[:16]!r}) must be the "
                f"manager's ({expected!r}): its clients could not reach the server"
            )

    def _check_keys(self, message: messages.ServerAnnounced) -> None:
        """A server whose cluster keys differ from the manager's could open none of the
        credentials the manager issues (every client call to it fails) and seal resumption
        tokens no other node opens: refused, saying so, rather than joined and placed parts
        (an announcement without fingerprints is not checked)."""
        fingerprints = message.key_fingerprints
        if len(fingerprints) > KEY_RING_KEYS_MAX:
            raise LocalProtocolError(
                f"cluster keys of {message.server_id!r}: {len(fingerprints)} key fingerprints, "
                f"more than a ring holds ({KEY_RING_KEYS_MAX})"
            )
        ring = self._sealer.key_ring
        problem = key_ring_mismatch(
            ring.fingerprints(),
            fingerprints,
            current_key_id=ring.current_key_id,
            other_key_id=message.sealing_key_id,
        )
        if problem is None:
            problem = self._keys_across_servers(message)
        if problem is not None:
            raise LocalProtocolError(f"cluster keys of {message.server_id!r}: {problem}")

    def _keys_across_servers(self, message: messages.ServerAnnounced) -> str | None:
        """Why the announcing server could not work with another member, not dead, whose own
        announcement said its keys: each must hold the key the other seals with (the
        credentials one renews are presented to the other when a part moves), and a key id both
        hold must be the same key. Each server is checked against the manager too, but a server
        left out of a rotation's first step, while the manager still seals with the old key,
        passes that check alone: the first server rotated after it was refused nowhere, and the
        credentials it renewed opened nowhere on the one left out."""
        fingerprints = message.key_fingerprints
        if not fingerprints:
            return None
        server_id = message.server_id
        for (others, sealing), holders in self._membership.key_rings().items():
            holder = next((other for other in holders if other != server_id), None)
            if holder is None:
                continue  # Only the announcing server's previous incarnation holds these.
            problem = key_ring_mismatch(
                others,
                fingerprints,
                current_key_id=sealing,
                other_key_id=message.sealing_key_id,
                holder=f"server {holder!r}",
            )
            if problem is not None:
                return problem
        return None

    def _check_heartbeat_interval(self, message: messages.ServerAnnounced) -> None:
        """A server that heartbeats less often than twice per `failure_timeout_ms` would be
        declared dead at a single late heartbeat, and fail over everything it leads, again and
        again: refused, saying so, rather than joined (0, a sender before the field: not
        checked)."""
        interval_ms = message.heartbeat_interval_ms
        failure_ms = self._config.failure_timeout_ms
        if 2 * interval_ms > failure_ms:
            raise LocalProtocolError(
                f"heartbeat_interval_ms of {message.server_id!r} ({interval_ms}) must be at most "
                f"half the manager's failure_timeout_ms ({failure_ms}), or one late heartbeat "
                "would have the server declared dead and its parts failed over"
            )

    def _on_heartbeat(
        self, message: messages.HeartbeatReported, source: NodeId, now_us: int
    ) -> None:
        if not self._check_sender(message.server_id, source):
            return
        try:
            _check_declared_parts(message.declared_parts)
        except LocalProtocolError as error:
            raise RemoteProtocolError(f"bad HeartbeatReported: {error}") from error
        member = self._membership.get(message.server_id)
        if (
            member is not None
            and member.incarnation == UNKNOWN_INCARNATION
            and message.map_version == 0
        ):
            # A member restored from the loaded map, heard from by a process that holds no map:
            # it started since the map named it (a restart while no manager watched), so it holds
            # none of its old parts. Its incarnation is left unknown for the announcement it
            # sends with every such heartbeat, which then counts as the restart it is.
            return
        self._membership_changed()
        suspected = self._membership.state_of(message.server_id) is MemberState.SUSPECTED
        outcome = self._membership.heartbeat(message, now_us=now_us)
        self._history.reported(message.server_id, message.map_version)
        if message.renewed_sessions:
            # A server issued these credentials, whatever became of its membership since.
            self._expiry.renewed(message.renewed_sessions[:HEARTBEAT_RENEWALS_MAX], now_us=now_us)
        if outcome is HeartbeatOutcome.SUPERSEDED:
            self._refuse_superseded(message.server_id, message.incarnation)
        current = self.shard_map
        if outcome is HeartbeatOutcome.DEAD_LEAVING and not message.left and current is not None:
            # Declared dead while it left (cut off past the failure timeout): its failover took
            # what it held, so it may stop. Readmitted instead, it exited while its join went on,
            # and the map listed the gone process ACTIVE until its silence failed it over again
            # (`leave-faults` seeds 232 and 388).
            self._send(
                source,
                messages.DrainReported(
                    map_version=current.version,
                    roles_left=0,
                    primaries_left=0,
                    roles_waiting=0,
                    finished=True,
                    failed_over=True,
                ),
            )
        if outcome is HeartbeatOutcome.ACCEPTED:
            self._heard_again(message.server_id, suspected=suspected, now_us=now_us)
        if outcome is HeartbeatOutcome.REJOIN_PENDING:
            self._try_readmit(message.server_id, now_us)
        elif outcome is HeartbeatOutcome.ACCEPTED:
            self._check_hearing(message.server_id, now_us)
            if message.leaving:
                self._leaving_heard(message, source, now_us)
            self._assess_risk(message, now_us)

    def _leaving_heard(
        self, message: messages.HeartbeatReported, source: NodeId, now_us: int
    ) -> None:
        """A server stopping on SIGTERM asks, in each heartbeat, to be drained first: its drain
        starts (or starts again, after a full commit queue or an undrain), and it is told where
        the drain stands (`DrainReported`), so that it stops once nothing is left to move. Its
        last heartbeat, once told the drain finished, says `left` (`_depart`); one that says it
        while the drain is not finished here counts as a leaving one, and the server's silence
        then fails over what is left."""
        current = self.shard_map
        if current is None:
            return
        server_id = message.server_id
        if message.left and self._drain_report(current, server_id).finished:
            self._depart(server_id, now_us)
            return
        started = self._drainable(server_id) and self._start_drain(server_id)
        if self._leaving.get(server_id) != message.incarnation:
            # Servers that stopped leaving (dead, forgotten, restarted) make room first.
            for other in [s for s in self._leaving if not self._is_live(s)]:
                del self._leaving[other]
            self._leaving[server_id] = message.incarnation
            self._emit(
                ServerLeaving(
                    server_id=server_id,
                    incarnation=message.incarnation,
                    drain_started=started,
                    roles=self._roles_of(current, server_id)[0],
                )
            )
        self._send(source, self._drain_report(current, server_id))

    def _depart(self, server_id: str, now_us: int) -> None:
        """A leaving server's last heartbeat: its drain finished and its process stops now. It
        is dead at once (cause LEFT) and its entry leaves the map (`_queue_departure`), where
        its silence would have been a death a failure timeout later and a failover of no part,
        one per server of every rolling restart in the history, the metrics and the alerts."""
        self._membership_changed()
        if self._membership.depart(server_id, now_us=now_us):
            self._leaving.pop(server_id, None)
            self._declare_dead(server_id, DeathCause.LEFT, 0, now_us)

    def _queue_departure(self, server_id: str) -> bool:
        """Queue the removal of a server that left from the map; False when the queue is full."""
        change = Change(
            kind=MapChange.SERVER_LEFT,
            build=lambda current: self._build_departure(current, server_id),
            committed=lambda built, now_us: self._departure_ended(server_id, now_us),
            dropped=lambda cause, now_us: self._departure_ended(server_id, now_us),
        )
        if not self._pipeline.submit(change):
            return False
        self._departures.add(server_id)
        return True

    def _build_departure(self, current: ShardMap, server_id: str) -> Built | None:
        """Remove the entry of a server that left, unless the map gave it a role since (a
        failover's pin) or it leads a handoff: then it fails over (`_departure_ended`)."""
        entry = next((e for e in self._map_entries(current) if e.server_id == server_id), None)
        if entry is None or entry.state is not ServerState.DRAINING:
            return None
        if self._membership.state_of(server_id) is not MemberState.DEAD:
            return None
        if any(current.part_counts(server_id)) or self._leads_handoff(server_id):
            return None
        stable = stabilize(current, [ServerLeft(server_id=server_id)], intended=lambda key: False)
        return Built(delta=stable.delta, new_map=stable.new_map, parts=(), servers=(server_id,))

    def _departure_ended(self, server_id: str, now_us: int) -> None:
        """The removal committed, or will never commit: a server still in the map fails over
        as any dead one (what its removal found it holding), and one that asked to rejoin
        meanwhile (restarted under the same id) may."""
        self._departures.discard(server_id)
        self._fail_over_dead_member(server_id, now_us)
        self._try_readmit(server_id, now_us)

    def _queue_removal_of_forgotten(self) -> None:
        """Queue the removal of the map entries of dead servers this manager forgot
        (`dead_servers_forget_ms` after their death): their failover is long over, and a map
        that kept them grew by one entry for each server id that ever died (a pod name, say),
        sent whole to every joining server and client, up to `servers_max`, past which no
        server could join. A server that comes back later joins as a new one. The removals
        take every such entry, a batch a version, so one that did not commit (a full queue,
        the store's trouble) goes with the next server forgotten, or 10 minutes after the next
        map load."""
        change = Change(
            kind=MapChange.SERVER_LEFT,
            build=self._build_removal_of_forgotten,
            committed=lambda built, now_us: self._removal_of_forgotten_committed(built),
            dropped=lambda cause, now_us: None,
        )
        self._pipeline.submit(change)

    def _removal_of_forgotten_committed(self, built: Built) -> None:
        if built.payload:
            # More forgotten entries than one version removes: the next batch.
            self._queue_removal_of_forgotten()

    def _build_removal_of_forgotten(self, current: ShardMap) -> Built:
        """Remove up to `FORGOTTEN_REMOVALS_MAX` DEAD entries whose server this manager no
        longer knows and that no placement names (a DEAD server is in no ring: only a pinned
        placement could); an empty change when there is none. Each check and each removal scans
        the overrides, so a map that kept thousands of dead entries (before this removal
        existed) loses them a batch a version, not in one stall of the loop; the payload says
        whether candidates were left for the next (only when this one removed some, so that
        the batches end)."""
        candidates = [
            entry.server_id
            for entry in self._map_entries(current)
            if entry.state is ServerState.DEAD and self._membership.get(entry.server_id) is None
        ]
        gone: list[str] = []
        examined = 0
        for server_id in candidates:
            if len(gone) >= FORGOTTEN_REMOVALS_MAX or examined >= 4 * FORGOTTEN_REMOVALS_MAX:
                break
            examined += 1
            if not any(current.part_counts(server_id)):
                gone.append(server_id)
        # Only after progress: entries a placement still names stay until the next forgetting.
        more = bool(gone) and examined < len(candidates)
        if not gone:
            return Built(delta=None, new_map=current, parts=(), servers=(), payload=more)
        operations: list[Operation] = [ServerLeft(server_id=server_id) for server_id in gone]
        stable = stabilize(current, operations, intended=lambda key: False)
        return Built(
            delta=stable.delta,
            new_map=stable.new_map,
            parts=(),
            servers=tuple(gone),
            payload=more,
        )

    def _roles_of(self, current: ShardMap, server_id: str) -> tuple[int, int]:
        """Roles (primary and replica) the map gives `server_id`, and how many are primaries;
        none for a dead server or one the map does not list."""
        if self._map_state(server_id) not in (ServerState.ACTIVE, ServerState.DRAINING):
            return 0, 0
        held = current.parts_for(server_id)
        return len(held.primary) + len(held.replica), len(held.primary)

    def _drain_report(self, current: ShardMap, server_id: str) -> messages.DrainReported:
        roles, primaries = self._roles_of(current, server_id)
        drain = self._drains.get(server_id)
        waiting = 0
        if drain is not None and drain.marked and self._nowhere_else(current, server_id):
            waiting = min(roles, drain.primaries_waiting + drain.replicas_waiting)
        finished = (
            drain is None
            and roles == 0
            and self._map_state(server_id) is not ServerState.ACTIVE
            and not self._leads_handoff(server_id)
        )
        return messages.DrainReported(
            map_version=current.version,
            roles_left=roles,
            primaries_left=primaries,
            roles_waiting=waiting,
            finished=finished,
        )

    def _nowhere_else(self, current: ShardMap, server_id: str) -> bool:
        """Whether the roles a drain of `server_id` counts as waiting have nowhere to go for
        good, as far as the manager can tell, so that a leaving server may stop with them: none
        of its handoffs runs (the map moves a part at the assignment, before the seal), no
        other ACTIVE server of the map is merely silent (suspected, its death not committed:
        it may come back, or be failed over and leave the roles somewhere to go), and no server
        is joining (a rolling restart's next server). Otherwise the server waits."""
        if self._leads_handoff(server_id):
            return False
        if any(member.state is MemberState.JOINING for member in self._membership.members()):
            return False
        return all(
            self._is_alive(entry.server_id)
            for entry in self._map_entries(current)
            if entry.state is ServerState.ACTIVE and entry.server_id != server_id
        )

    def _leads_handoff(self, server_id: str) -> bool:
        """Whether a handoff with `server_id` as its source runs, or a failover holds one that
        fell back to it: the server may not stop without a failover yet."""
        return any(
            h.source == server_id for h in self._orchestrator.involving(server_id)
        ) or self._failing_over_from(server_id)

    def excuse_stall(self, *, stalled_us: int, now_us: int) -> None:
        """Command verb: this process could not read its connections for `stalled_us` up to
        `now_us` (the driver measures it: a callback that ran long, a paused process). What the
        servers sent meanwhile still waits in the sockets, so their silence over that time does
        not count towards suspicion or death (`Membership.excuse`), nor towards the store
        request's timeout (its answer may be waiting too)."""
        if stalled_us <= 0:
            return
        self._membership.excuse(stalled_us=stalled_us, now_us=now_us)
        self._pipeline.excuse(stalled_us=stalled_us, now_us=now_us)
        self._membership_changed()
        self._emit(StallExcused(stalled_us=stalled_us))

    def _report_silence(self, now_us: int) -> None:
        """`ServersSilent` once when every server falls silent and deaths wait (Membership)."""
        held = self._membership.deaths_held()
        if held and not self._silence_reported:
            silent = [m for m in self._membership.members() if m.state is MemberState.SUSPECTED]
            self._emit(
                ServersSilent(
                    servers=tuple(member.server_id for member in silent),
                    silent_us=min((now_us - m.last_heard_us for m in silent), default=0),
                )
            )
        self._silence_reported = held

    def _liveness_changed(self, change: LivenessChanged, now_us: int) -> None:
        if change.state is MemberState.SUSPECTED:
            self._emit(
                ServerSuspected(
                    server_id=change.server_id,
                    incarnation=change.incarnation,
                    silent_us=change.silent_us,
                )
            )
        elif change.state is MemberState.DEAD:
            self._declare_dead(change.server_id, DeathCause.SILENCE, change.silent_us, now_us)

    def _declare_dead(self, server_id: str, cause: DeathCause, silent_us: int, now_us: int) -> None:
        member = self._membership.get(server_id)
        current = self.shard_map
        primary_parts = 0
        in_map = current is not None and self._map_state(server_id) is not None
        if in_map and current is not None:
            primary_parts = len(current.parts_for(server_id).primary)
        self._emit(
            ServerDeclaredDead(
                server_id=server_id,
                incarnation=-1 if member is None else member.incarnation,
                cause=cause,
                silent_us=silent_us,
                primary_parts=primary_parts,
            )
        )
        self._risk.forget(server_id)
        self._risk_drained.discard(server_id)
        self._history.forget(server_id)
        job = self._failover
        if job is not None and job.phase is FailoverPhase.PREPARING and server_id in job.waiting:
            job.waiting.discard(server_id)
            if not job.waiting:
                # It was the last candidate awaited, and a dead one never answers.
                self._promote(job, now_us)
        for handoff in self._orchestrator.involving(server_id):
            self._participant_died(handoff, server_id, now_us)
        if in_map and not (cause is DeathCause.LEFT and self._queue_departure(server_id)):
            self._pending_failover(now_us).absorb(dead=(server_id,))

    def _queue_join(self, server_id: str, now_us: int) -> None:
        if server_id in self._joins_queued:
            return
        change = Change(
            kind=MapChange.SERVER_JOINED,
            build=lambda current: self._build_join(current, server_id),
            committed=lambda built, now_us: self._join_committed(server_id, built, now_us),
            dropped=lambda cause, now_us: self._join_dropped(server_id, now_us),
        )
        if self._pipeline.submit(change):
            self._joins_queued.add(server_id)
        else:
            self._join_retry_us[server_id] = now_us + JOIN_RETRY_MS * 1000

    def _ensure_joins(self, now_us: int) -> None:
        """Retry joins that were dropped or did not fit the queue."""
        for server_id, due_us in sorted(self._join_retry_us.items()):
            if due_us <= now_us:
                del self._join_retry_us[server_id]
                if self._membership.state_of(server_id) is MemberState.JOINING:
                    self._queue_join(server_id, now_us)

    def _build_join(self, current: ShardMap, server_id: str) -> Built | None:
        member = self._membership.get(server_id)
        if member is None or member.state is not MemberState.JOINING:
            return None
        state = self._map_state(server_id)
        joined = ServerJoinedOperation(
            server_id=server_id, address=member.address, zone=member.zone, weight=member.weight
        )
        if state in (ServerState.ACTIVE, ServerState.DRAINING):
            # Already a member of this map (a restarted manager's): nothing to commit.
            return Built(delta=None, new_map=current, parts=(), servers=(server_id,))
        operations: list[Operation] = [joined]
        if state is not None:
            operations.insert(0, ServerLeft(server_id=server_id))
        stable = stabilize(current, operations, intended=lambda key: False)
        return Built(
            delta=stable.delta,
            new_map=stable.new_map,
            parts=(),
            servers=(server_id,),
            payload=member.incarnation,
            implicit_moves=stable.implicit_moves,
        )

    def _join_committed(self, server_id: str, built: Built, now_us: int) -> None:
        self._joins_queued.discard(server_id)
        member = self._membership.get(server_id)
        self._membership_changed()
        if member is None or not self._membership.join_committed(
            server_id, incarnation=member.incarnation
        ):
            self._history.forget(server_id)
            self._fail_over_dead_member(server_id, now_us)
            return
        # A readmitted server still holds the map it had when it was declared dead.
        self._catch_up(server_id, self._membership.held_version(server_id), built.new_map)
        self._emit(
            ServerJoined(
                server_id=server_id,
                incarnation=member.incarnation,
                address=member.address,
                zone=member.zone,
                map_version=built.new_map.version,
            )
        )
        self._queue_replica_repair()
        if self._config.rebalance_interval_ms:
            # The check that sees the new server comes within the settle time, and the one
            # after it rebalances: a join into a settled cluster no longer waits for the next
            # whole interval first.
            auto = self._auto
            auto.due_us = min(auto.due_us, now_us + self._rebalance_settle_us())

    def _queue_replica_repair(self) -> None:
        """Top up the pinned placements that failovers left short of replicas.

        A failover pins each promoted part with the replicas it could find; when too few servers
        were alive the part stays short (a `replicated` part without a replica cannot be written
        at all). A server that (re)joins is a new candidate, so every join re-checks them.
        """
        if self._repair_queued:
            return
        change = Change(
            kind=MapChange.REPLICAS_MOVED,
            build=self._build_replica_repair,
            committed=lambda built, now_us: self._replica_repair_done(built),
            dropped=lambda cause, now_us: self._replica_repair_done(None),
        )
        self._repair_queued = self._pipeline.submit(change)
        # A full queue: queued again once a slot frees (`_advance`), not at the next join.
        self._repair_waiting = not self._repair_queued

    def _replica_repair_done(self, built: Built | None) -> None:
        self._repair_queued = False
        if built is not None and built.parts:
            # A bounded batch went; look again for what is left.
            self._queue_replica_repair()

    def _build_replica_repair(self, current: ShardMap) -> Built | None:
        eligible = self._eligible(current)
        spare = set(eligible)
        count = current.config.replica_count
        operations = []
        repaired: list[PartRef] = []
        # Only a short placement with an eligible server outside it can gain a replica (the
        # others were all there is after a failover on a small fleet: every part it promoted).
        short = [
            (key, placement)
            for key, placement in current.overrides()
            if len(placement.replicas) < count and not spare.issubset(placement.servers)
        ]
        for key, placement in sorted(short, key=lambda item: item[0]):
            keep = [s for s in placement.replicas if self._is_live(s)]
            replicas = self._fill_replicas(
                key, primary=placement.primary, keep=keep, eligible=eligible, count=count
            )
            if len(replicas) <= len(placement.replicas):
                continue
            operations.append(
                override(key, Placement(primary=placement.primary, replicas=replicas))
            )
            repaired.append(ref_of(key))
            if len(operations) >= self._config.replica_moves_per_commit_max:
                break
        if not operations:
            return None
        stable = stabilize(current, operations, intended=lambda key: False)
        return Built(delta=stable.delta, new_map=stable.new_map, parts=tuple(repaired), servers=())

    def _join_dropped(self, server_id: str, now_us: int) -> None:
        self._joins_queued.discard(server_id)
        if self._membership.state_of(server_id) is MemberState.JOINING:
            self._join_retry_us[server_id] = now_us + JOIN_RETRY_MS * 1000
        else:
            # A join whose answer was lost may have landed (the reload shows it) after all.
            self._fail_over_dead_member(server_id, now_us)

    def _fail_over_dead_member(self, server_id: str, now_us: int) -> None:
        """Fail over a member declared dead while its join was in the store.

        Its death found it outside the map (no failover), and then the join landed: the map
        lists it ACTIVE, with the roles the join gave it, and nothing else would ever mark it.
        """
        if self._membership.state_of(server_id) is not MemberState.DEAD:
            return
        if self._map_state(server_id) not in (ServerState.ACTIVE, ServerState.DRAINING):
            return
        for job in (self._failover, self._failover_next):
            if job is not None and server_id in job.dead:
                return
        self._pending_failover(now_us).absorb(dead=(server_id,))

    def _try_readmit(self, server_id: str, now_us: int) -> None:
        """Readmit a dead server that asked to rejoin, unless its failover (or its removal from
        the map, having left) is still running."""
        if server_id in self._departures:
            return
        for job in (self._failover, self._failover_next):
            if job is not None and server_id in job.dead:
                return
        self._membership_changed()
        if self._membership.readmit(server_id, now_us=now_us):
            self._queue_join(server_id, now_us)

    # Risk and handoff requests (step 1).

    def _assess_risk(self, message: messages.HeartbeatReported, now_us: int) -> None:
        server_id = message.server_id
        steering = self._steering
        if steering is not None and message.paths:
            # Only paths to servers the manager knows: a made-up id must not take a predictor slot.
            known = [p for p in message.paths if self._membership.get(p.server_id) is not None]
            steering.observe_paths(known, now_us=now_us)
        if message.leaving:
            # Its clients' paths still count; its own risk does not: its drain moves it all.
            return
        risk_drained = server_id in self._risk_drained and server_id not in self._drains
        if not self._is_alive(server_id) or not (self._is_active(server_id) or risk_drained):
            return
        self._now_us = max(self._now_us, now_us)
        decision = self._risk.assess(server_id=server_id, load=message.load, now_us=now_us)
        if steering is not None:
            for assessed in steering.assessments():
                self._emit(assessed)
            if decision is not None and decision.parts_fraction >= 1.0 and self._risk_mark_needed():
                self._risk_drain(server_id)
            elif risk_drained and not steering.placement_blocked(server_id, now_us=now_us):
                self._risk_undrain(server_id)
        elif risk_drained:
            # A policy that does not steer holds no alarm to wait for: a risk mark loaded from the
            # map (made by a manager whose policy steers) ends at the server's next heartbeat.
            self._risk_undrain(server_id)
        if decision is None:
            return
        queued = self._queue_moves(
            server_id,
            (),
            decision.reason,
            MoveOrigin.RISK,
            decision.parts_fraction,
            now_us=now_us,
            sheds_load=decision.sheds_load,
        )
        self._emit(
            RiskFlagged(
                server_id=server_id,
                reason=decision.reason,
                parts=queued,
                load=message.load,
                detail=decision.detail,
            )
        )

    def _on_handoff_requested(
        self, message: messages.HandoffRequested, source: NodeId, now_us: int
    ) -> None:
        if not self._check_sender(message.server_id, source) or not self._is_live(source):
            return
        _check_refs(message.parts)
        reason = ReasonCode.from_wire(message.reason)
        fraction = 1.0 if reason in WHOLE_MOVE_REASONS else None
        self._queue_moves(source, message.parts, reason, MoveOrigin.SERVER, fraction, now_us=now_us)

    def _queue_moves(
        self,
        server_id: str,
        parts: tuple[PartRef, ...],
        reason: ReasonCode,
        origin: MoveOrigin,
        parts_fraction: float | None,
        *,
        now_us: int,
        sheds_load: bool = False,
    ) -> int:
        """Queue moves of `parts` off `server_id` (or of a share of its primaries, or with
        `sheds_load` of its reported load, busiest parts first); how many."""
        current = self.shard_map
        if current is None or self._map_state(server_id) is None:
            return 0
        if parts:
            refs = [ref for ref in parts if not self._orchestrator.is_moving(ref)]
        else:
            primaries = [ref_of(key) for key in current.parts_for(server_id).primary]
            fraction = (
                self._config.overload_parts_fraction if parts_fraction is None else (parts_fraction)
            )
            refs = self._share_of(
                server_id, primaries, fraction, origin=origin, sheds_load=sheds_load, now_us=now_us
            )
        queued = 0
        if origin is MoveOrigin.RISK and refs and self._config.rebalance_interval_ms:
            # Pruned at every automatic check, so kept only while those checks run.
            self._auto.risk_moved_us[server_id] = now_us
        if origin is MoveOrigin.RISK and self._steering is not None:
            for session_id in dict.fromkeys(ref.session_id for ref in refs):
                self._steering.record_move(
                    session_id.hex(), source_server_id=server_id, now_us=now_us
                )
        for ref in refs:
            move = MoveRequest(
                ref=ref,
                source=server_id,
                reason=reason,
                origin=origin,
                target=None,
                requested_us=now_us,
            )
            queued += self._orchestrator.request_move(move)
        return queued

    def _share_of(
        self,
        server_id: str,
        primaries: list[PartRef],
        fraction: float,
        *,
        origin: MoveOrigin,
        sheds_load: bool,
        now_us: int,
    ) -> list[PartRef]:
        """`fraction` of the server's primaries at random, or with `sheds_load` (and per-part
        load reported) the fewest of its busiest parts that carry `fraction` of its load;
        within the migration budget for a risk move."""
        member = self._membership.get(server_id) if sheds_load and fraction < 1.0 else None
        load = None if member is None else member.load
        part_loads = () if load is None else load.part_loads
        free = [ref for ref in primaries if not self._orchestrator.is_moving(ref)]
        count = len(primaries) if part_loads else max(1, math.ceil(fraction * len(primaries)))
        if part_loads:
            free = busiest_first(free, part_loads)
        if origin is MoveOrigin.RISK and self._steering is not None:
            free, count = self._within_budget(server_id, free, count, now_us)
        if load is None or not part_loads:
            return self._rng.sample(free, min(count, len(free)))
        return parts_by_load(
            free,
            primaries=primaries,
            part_loads=part_loads,
            requests_per_second=load.requests_per_second,
            load_share=fraction,
            count_max=count,
            rng=self._rng,
        )

    def _risk_drain(self, server_id: str) -> None:
        """Mark a server the risk policy empties (it moves every part) DRAINING in the map, until
        its alarm clears.

        Bounded loads would otherwise undo the moves: a part moved off a server frees room on it,
        and once the other servers are at their bound (with `load_epsilon` 0.25, as soon as a
        quarter of one server's parts has moved, four servers), every part their new overrides
        push along its walk lands back on the flagged server (PART_MOVED). A DRAINING server
        receives nothing and the bounds are taken over the ACTIVE servers only, so the moved
        parts stay moved. The mark is a map change of the ACTIVE set (the next assignment
        is derived from the last), made once per alarm episode and only for a whole move (an
        evacuation, or a rule that moves everything) in a cluster too small to absorb it
        (`_risk_mark_needed`): a graded drain moves a share, which the other servers take
        within their bounds, and its server stays ACTIVE, only blocked by the risk policy
        (`RiskSteering.placement_blocked`), a flag that ends with the alarm and with the manager
        (a restarted manager reads an ACTIVE server, never a drain it did not order).
        """
        if server_id in self._risk_drained or not self._is_active(server_id):
            return
        self._risk_drained.add(server_id)
        change = Change(
            kind=MapChange.DRAIN_MARKED,
            build=lambda current: self._build_drain_mark(current, server_id, DrainCause.RISK),
            committed=lambda built, now_us: None,
            dropped=lambda cause, now_us: self._risk_drained.discard(server_id),
        )
        if not self._pipeline.submit(change):
            self._risk_drained.discard(server_id)

    def _risk_mark_needed(self) -> bool:
        """Whether emptying one server needs the DRAINING mark: the other ACTIVE servers cannot
        take all its parts within their bounds with room to spare (fewer of them than
        `RISK_MARK_SPARE_BOUNDS / load_epsilon`: each then takes more than half its headroom)."""
        current = self.shard_map
        if current is None:
            return False
        entries = self._map_entries(current)
        active = sum(1 for entry in entries if entry.state is ServerState.ACTIVE)
        return active - 1 < RISK_MARK_SPARE_BOUNDS / current.config.load_epsilon

    def _risk_undrain(self, server_id: str) -> None:
        """The alarm is over: the server takes placements again (ACTIVE). Only a risk mark is
        cleared; with the queue full the mark stays the policy's, tried again on the next
        heartbeat."""
        change = Change(
            kind=MapChange.DRAIN_CLEARED,
            build=lambda current: self._build_undrain(current, server_id, DrainCause.RISK),
            committed=lambda built, now_us: self._risk_undrained(server_id),
            dropped=lambda cause, now_us: self._risk_undrain_dropped(server_id),
        )
        if self._pipeline.submit(change):
            self._undrains_pending.add(server_id)
            self._risk_drained.discard(server_id)

    def _risk_undrained(self, server_id: str) -> None:
        """The risk mark's undrain committed: the policy no longer owns the server, even if a
        map reload before the commit gave the mark back to it."""
        self._undrains_pending.discard(server_id)
        self._risk_drained.discard(server_id)
        self._queue_replica_repair()

    def _risk_undrain_dropped(self, server_id: str) -> None:
        """The undrain could not apply: a risk mark the map still shows stays the policy's."""
        self._undrains_pending.discard(server_id)
        if self._drain_cause(server_id) is DrainCause.RISK and server_id not in self._drains:
            self._risk_drained.add(server_id)

    def _within_budget(
        self, server_id: str, free: list[PartRef], count: int, now_us: int
    ) -> tuple[list[PartRef], int]:
        """The parts a risk move may take (sessions past their dwell time), and how many."""
        steering = self._steering
        assert steering is not None
        movable = [r for r in free if steering.movable(r.session_id.hex(), now_us=now_us)]
        budget = steering.moves_allowed(server_id, now_us=now_us)
        # One session's parts share a dwell entry: the first move of a part starts it.
        sessions: dict[bytes, None] = {}
        chosen: list[PartRef] = []
        for ref in movable:
            if ref.session_id not in sessions and len(sessions) >= budget:
                continue
            sessions[ref.session_id] = None
            chosen.append(ref)
        return chosen, min(count, len(chosen))

    def _blocked(self) -> frozenset[str]:
        """Servers the risk policy takes no new placements on."""
        steering = self._steering
        current = self.shard_map
        if steering is None or current is None:
            return frozenset()
        return frozenset(
            entry.server_id
            for entry in current.servers
            if steering.placement_blocked(entry.server_id, now_us=self._now_us)
        )

    # Handoff planning (step 2).

    def _plan_handoffs(self, now_us: int) -> None:
        """One planning pass, when the orchestrator has moves and a batch is due (its timer:
        the jitter after a batch, `HANDOFF_RETRY_MS` after a pass that started none, at once
        when a handoff ends), at most one per `handoff_plan_interval_ms`; its answers about
        targets are cached for the pass, and its handoffs commit as one version."""
        orchestrator = self._orchestrator
        if orchestrator.queued_moves == 0 or now_us < self._plan_due_us:
            return
        slots = 0 if self._holding() else self._pipeline.free_slots
        self._planning = _PlanningPass()
        try:
            started, invalid = orchestrator.plan(
                now_us=now_us,
                choose_target=self._choose_target,
                is_valid=self._move_is_valid,
                batches_max=slots,
            )
        finally:
            self._planning = None
        interval_us = self._config.handoff_plan_interval_ms * 1000
        if interval_us:
            # The next pass waits out the interval, even for a handoff that ends meanwhile.
            self._plan_due_us = now_us + interval_us
            orchestrator.defer(until_us=self._plan_due_us)
        self._forget_windows()
        for move in invalid:
            self._moves_dropped([move], "the part is no longer primary at the source")
        for handoff in started:
            self._pipeline.submit(self._handoff_change(handoff))

    def _move_is_valid(self, move: MoveRequest) -> bool:
        current = self.shard_map
        if current is None:
            return False
        key = key_of(move.ref)
        return (
            key in current and current.primary_of(key) == move.source and self._is_live(move.source)
        )

    def _forget_windows(self) -> None:
        """Forget the walk windows of moves that left the queue (bounded by the queue)."""
        windows = self._target_windows
        if len(windows) > 2 * self._config.handoff_queue_parts_max:
            self._target_windows = {
                ref: window
                for ref, window in windows.items()
                if self._orchestrator.is_moving(ref) and self._orchestrator.handoff_of(ref) is None
            }

    def _pass(self) -> _PlanningPass:
        """The planning pass under way (a throwaway one outside a pass)."""
        return self._planning if self._planning is not None else _PlanningPass()

    def _fill_replicas(
        self,
        key: PartKey,
        *,
        primary: str,
        keep: Sequence[str],
        eligible: Sequence[str],
        count: int,
    ) -> tuple[str, ...]:
        """`fill_replicas`, the servers whose app lacks the part ranked last."""
        lacking = self._membership.lacking(key.part)
        return fill_replicas(
            key, primary=primary, keep=keep, eligible=eligible, count=count, lacking=lacking
        )

    def _lacking(self, parts: Iterable[str]) -> dict[str, frozenset[str]]:
        """Of `parts`, those some live server's app does not declare, with those servers (new
        parts are placed off them, `steer_additions`): empty while every server runs the same
        app."""
        lacking = self._membership.lacking
        return {part: servers for part in parts if (servers := lacking(part))}

    def _declares(self, server_id: str, part: str) -> bool:
        """Whether `server_id`'s app may serve `part`: it declared the part, or said nothing of
        its parts (a server before the field). A handoff to a server whose app lacks the part
        answered every call UNKNOWN_OP there, and the automatic rebalance moved parts there
        again after each settled interval."""
        member = self._membership.get(server_id)
        declared = None if member is None else member.declared_parts
        return declared is None or part in declared

    def _can_take(self, server_id: str, avoid: frozenset[str]) -> bool:
        if server_id in avoid:
            return False
        taking = self._pass().taking
        answer = taking.get(server_id)
        if answer is None:
            answer = taking[server_id] = self._takes_roles(server_id)
        return answer

    def _target_allowed(self, move: MoveRequest, target_id: str) -> bool:
        """`_risk_target_allowed`, asked once per source, target and client bucket per pass."""
        allowed = self._pass().allowed
        bucket = self._session_buckets.bucket_of(move.ref.session_id)
        pair = (move.source, target_id, bucket)
        answer = allowed.get(pair)
        if answer is None:
            answer = allowed[pair] = self._risk_target_allowed(move, target_id)
        return answer

    def _takes_roles(self, server_id: str) -> bool:
        """Alive, ACTIVE, heard from since this manager loaded the map, hearing the manager,
        not blocked by the risk policy, CPU below the target bound."""
        if not self._is_alive(server_id) or not self._is_active(server_id):
            return False
        member = self._membership.get(server_id)
        if member is None or member.incarnation == UNKNOWN_INCARNATION:
            # Known only from the loaded map: it may have died while no manager watched (a
            # leave right after a manager restart handed 128 parts to such a server, which
            # failed over in turn). Its first heartbeat makes it a target.
            return False
        if self._not_hearing(server_id):
            return False
        steering = self._steering
        if steering is not None and steering.placement_blocked(server_id, now_us=self._now_us):
            return False
        load = member.load
        return load is None or load.cpu_utilization < self._config.target_cpu_utilization_max

    def _check_hearing(self, server_id: str, now_us: int) -> None:
        """`ServerNotHearing` when a server's heartbeats stop confirming the maps sent to it,
        and again when they confirm (its heartbeats arrive: they carry either news)."""
        member = self._membership.get(server_id)
        if member is None:
            return
        deaf = self._not_hearing(server_id)
        since_us = member.not_hearing_since_us
        if deaf == (since_us is not None):
            return
        if deaf:
            assert member.unconfirmed is not None
            since_us = member.not_hearing_since_us = member.unconfirmed[1]
        else:
            assert since_us is not None
            member.not_hearing_since_us = None
        self._emit(
            ServerNotHearing(
                server_id=server_id,
                hearing=not deaf,
                map_version=member.map_version,
                map_version_sent=member.map_version_sent,
                unconfirmed_us=now_us - since_us,
            )
        )

    def _not_hearing(self, server_id: str) -> bool:
        """Whether a map version sent to the server has gone unconfirmed by its heartbeats for
        `suspect_timeout_ms`: they arrive, but the manager's messages to it seem lost (a
        one-way partition, or a server still applying a heavy map). A handoff from or to it
        would only fall back to failover at its deadline, so none starts until it confirms."""
        member = self._membership.get(server_id)
        if member is None or member.unconfirmed is None:
            return False
        return member.unconfirmed_for_us(self._now_us) >= self._config.suspect_timeout_ms * 1000

    def _choose_target(self, move: MoveRequest, avoid: frozenset[str]) -> str | None:
        """Prefer an up-to-date replica with headroom; else the least loaded server of the move's
        current window of candidates (`handoff_target_candidates_max` of them). None while the
        source does not hear the manager (`_not_hearing`): the move waits in the queue."""
        current = self.shard_map
        if current is None or self._not_hearing(move.source):
            return None
        key = key_of(move.ref)
        if key not in current:
            return None
        placement = current.lookup(key)
        if move.target is not None:
            fits = (
                move.target != placement.primary
                and self._can_take(move.target, avoid)
                and self._declares(move.target, move.ref.part)
            )
            return move.target if fits else None
        planning = self._pass()
        if move.ref in planning.no_target:
            return None
        chosen = planning.chosen.get(move.ref)
        if chosen is not None and chosen not in avoid:
            return chosen
        target = self._choose_new_target(
            move, avoid, current=current, key=key, placement=placement, planning=planning
        )
        if target is None:
            planning.no_target.add(move.ref)
        else:
            planning.chosen[move.ref] = target
        return target

    def _choose_new_target(
        self,
        move: MoveRequest,
        avoid: frozenset[str],
        *,
        current: ShardMap,
        key: PartKey,
        placement: Placement,
        planning: _PlanningPass,
    ) -> str | None:
        risk_move = move.origin is MoveOrigin.RISK and self._steering is not None
        if risk_move:
            # The target-risk margin: a risk move goes only somewhere clearly safer.
            avoid = avoid | frozenset(
                s for s in placement.servers if not self._target_allowed(move, s)
            )
        part = move.ref.part
        replicas = [
            r for r in placement.replicas if self._can_take(r, avoid) and self._declares(r, part)
        ]
        if replicas:
            source_seq = self._applied_seq(move.source, move.ref)
            return min(
                replicas,
                key=lambda r: (
                    not self._up_to_date(r, move.ref, source_seq),
                    self._cpu(r),
                    placement.replicas.index(r),
                ),
            )
        if planning.servers is None:
            planning.servers = tuple(entry.server_id for entry in self._map_entries(current))
        window = self._target_windows.get(move.ref, 0)
        candidates = candidate_window(
            key, planning.servers, count=self._config.handoff_target_candidates_max, window=window
        )
        self.target_candidates_examined += len(candidates)
        others = [
            s
            for s in candidates
            if s not in placement.servers
            and self._can_take(s, avoid)
            and self._declares(s, part)
            and (not risk_move or self._target_allowed(move, s))
        ]
        if others:
            return min(others, key=self._cpu)
        # None here: the next pass looks at the next window of the part's walk.
        self._target_windows[move.ref] = window + 1
        return None

    def _risk_target_allowed(self, move: MoveRequest, target_id: str) -> bool:
        """The steering's margin check, with the moving session's client's path to the target
        when the manager knows the client."""
        bucket = self._session_buckets.bucket_of(move.ref.session_id)
        if bucket is not None and self._path_steering is not None:
            return self._path_steering.target_allowed_for_client(
                source_id=move.source,
                target_id=target_id,
                client_bucket=bucket,
                now_us=self._now_us,
            )
        assert self._steering is not None
        return self._steering.target_allowed(
            source_id=move.source, target_id=target_id, now_us=self._now_us
        )

    def session_client_bucket(self, session_id: bytes) -> int | None:
        """The path bucket of the session's client, as far as the manager knows it."""
        return self._session_buckets.bucket_of(session_id)

    def _applied_seq(self, server_id: str, ref: PartRef) -> int | None:
        member = self._membership.get(server_id)
        progress = None if member is None else member.progress.get(ref)
        return None if progress is None else progress.applied_seq

    def _up_to_date(self, server_id: str, ref: PartRef, source_seq: int | None) -> bool:
        seq = self._applied_seq(server_id, ref)
        if seq is None:
            return False
        if source_seq is None:
            return True
        return source_seq - seq <= self._config.target_lag_entries_max

    def _cpu(self, server_id: str) -> float:
        member = self._membership.get(server_id)
        return 0.0 if member is None or member.load is None else member.load.cpu_utilization

    def _handoff_change(self, handoff: Handoff) -> Change:
        return Change(
            kind=MapChange.HANDOFF_ASSIGNED,
            build=lambda current: self._build_handoff(current, handoff),
            committed=lambda built, now_us: self._handoff_committed(handoff, built, now_us),
            dropped=lambda cause, now_us: self._handoff_cancelled(handoff, cause, now_us),
            groupable=True,
        )

    def _build_handoff(self, current: ShardMap, handoff: Handoff) -> Built | None:
        if handoff.phase is not HandoffPhase.COMMITTING:
            return None
        if not self._is_alive(handoff.target) or not self._is_active(handoff.target):
            return None
        if not self._is_live(handoff.source):
            return None
        count = current.config.replica_count
        # The eligible servers (a pass over the fleet) only for a part its kept servers leave
        # short of replicas: fill_replicas reads them for nothing else.
        eligible: list[str] | None = None
        operations = []
        previous: dict[PartRef, Placement] = {}
        for ref in handoff.parts:
            key = key_of(ref)
            if key not in current or current.primary_of(key) != handoff.source:
                continue
            placement = current.lookup(key)
            keep = [s for s in placement.replicas if s != handoff.target]
            if handoff.origin is not MoveOrigin.DRAIN:
                keep.append(handoff.source)
            if eligible is None and len(set(keep) - {handoff.target}) < count:
                eligible = [s for s in self._eligible(current) if s != handoff.source]
            replicas = self._fill_replicas(
                key, primary=handoff.target, keep=keep, eligible=eligible or (), count=count
            )
            if not replicas and count:
                # No other server can be the part's replica: the drained source stays its
                # replica (until a server joins or is undrained), or a `replicated` part could
                # acknowledge no write while the source is still up.
                replicas = (handoff.source,)
            operations.append(override(key, Placement(primary=handoff.target, replicas=replicas)))
            previous[ref] = placement
        if not operations:
            return None
        moving = {key_of(ref) for ref in previous}
        stable = stabilize(current, operations, intended=moving.__contains__)
        return Built(
            delta=stable.delta,
            new_map=stable.new_map,
            parts=tuple(previous),
            servers=(handoff.source, handoff.target),
            payload=previous,
            implicit_moves=stable.implicit_moves,
        )

    def _handoff_committed(self, handoff: Handoff, built: Built, now_us: int) -> None:
        assert isinstance(built.payload, dict)
        self._orchestrator.narrow(handoff, built.parts)
        self._orchestrator.assigned(handoff, map_version=built.new_map.version, now_us=now_us)
        for server_id in (handoff.source, handoff.target):
            if not self._is_live(server_id):
                self._participant_died(handoff, server_id, now_us)
                return
        assigned = messages.HandoffAssigned(
            handoff_id=handoff.handoff_id,
            parts=handoff.parts,
            source=handoff.source,
            target=handoff.target,
            map_version=built.new_map.version,
            reason=int(handoff.reason),
            deadline_ms=self._config.handoff_deadline_ms,
        )
        self._send(handoff.source, assigned)
        self._send(handoff.target, assigned)
        self._emit(
            HandoffStarted(
                handoff_id=handoff.handoff_id,
                reason=handoff.reason,
                parts=handoff.parts,
                source=handoff.source,
                target=handoff.target,
                map_version=built.new_map.version,
                planned_us=handoff.planned_us,
                assigned_us=now_us,
            )
        )

    def _handoff_cancelled(self, handoff: Handoff, cause: str, now_us: int) -> None:
        if handoff.phase is not HandoffPhase.COMMITTING:
            return
        self._orchestrator.fire(
            handoff, HandoffTrigger.OVERRIDE_REFUSED, now_us=now_us, cause=cause
        )
        self._handoff_ended(handoff, HandoffOutcome.CANCELLED, now_us)

    def _handoff_ended(self, handoff: Handoff, outcome: HandoffOutcome, now_us: int) -> None:
        self._emit(
            HandoffAborted(
                handoff_id=handoff.handoff_id,
                reason=handoff.reason,
                parts=handoff.parts,
                source=handoff.source,
                target=handoff.target,
                outcome=outcome,
                cause=handoff.cause,
                map_version=self.map_version,
                duration_us=now_us - handoff.planned_us,
            )
        )
        self._drain_progress((handoff.source,))

    # Handoff reports and their outcomes.

    def _reported_handoff(self, handoff_id: int, server_id: str, source: NodeId) -> Handoff | None:
        handoff = self._orchestrator.handoff(handoff_id)
        if handoff is None or server_id != source or source not in (handoff.source, handoff.target):
            return None
        awaited = (HandoffPhase.ASSIGNED, HandoffPhase.BACKING_UP)
        return handoff if handoff.phase in awaited else None

    def _on_handoff_completed(
        self, message: messages.HandoffCompleted, source: NodeId, now_us: int
    ) -> None:
        """The target's report ends step 3; the source's, after its backup period, the handoff."""
        handoff = self._reported_handoff(message.handoff_id, message.server_id, source)
        if handoff is None:
            return
        if source == handoff.target:
            if handoff.phase is HandoffPhase.ASSIGNED:
                self._orchestrator.target_reported(handoff, now_us=now_us)
            return
        self._orchestrator.fire(handoff, HandoffTrigger.SOURCE_COMPLETED, now_us=now_us)
        self._handoff_completed(handoff, reported_by=source, now_us=now_us)

    def _handoff_completed(self, handoff: Handoff, *, reported_by: str, now_us: int) -> None:
        assigned_us = handoff.assigned_us if handoff.assigned_us is not None else now_us
        target_us = handoff.target_reported_us
        self._emit(
            HandoffCompleted(
                handoff_id=handoff.handoff_id,
                reason=handoff.reason,
                parts=handoff.parts,
                source=handoff.source,
                target=handoff.target,
                map_version=handoff.map_version,
                reported_by=reported_by,
                commit_us=assigned_us - handoff.planned_us,
                duration_us=now_us - handoff.planned_us,
                target_us=None if target_us is None else target_us - handoff.planned_us,
            )
        )
        self._drain_progress((handoff.source,))

    def _on_handoff_aborted(
        self, message: messages.HandoffAborted, source: NodeId, now_us: int
    ) -> None:
        handoff = self._reported_handoff(message.handoff_id, message.server_id, source)
        if handoff is None:
            self._settle_stray_abort(message, source, now_us)
            return
        cause = f"aborted by {source}: {message.detail}"
        self._orchestrator.fire(handoff, HandoffTrigger.ABORT_REPORTED, now_us=now_us, cause=cause)
        # Reverting to the source blindly could lose writes: the sealed log may have reached the
        # target (only its acknowledgement was lost) and the target may have written since. Fence
        # both sides instead and keep the longer log: the failover path, with the source as an
        # extra candidate.
        self._fail_over_handoff(handoff, now_us)

    def _settle_stray_abort(
        self, message: messages.HandoffAborted, source: NodeId, now_us: int
    ) -> None:
        """An abort the manager waits for no more: a completed handoff, or an implicit run.

        The reporter holds parts it can neither serve nor drop (ABORTING at a source, RECEIVING
        at a target that the map names primary but that never got the sealed log), and no map
        change would come. Fail them over, the reporter a candidate: the most up-to-date log
        wins, so a target that took over keeps the parts and a source still ahead gets them back.
        """
        current = self.shard_map
        if current is None or message.server_id != source or not self._is_live(source):
            return
        _check_refs(message.parts)
        deciding: set[PartKey] = set()
        for job in (self._failover, self._failover_next):
            if job is not None:
                deciding.update(job.explicit, job.parts)
        explicit: dict[PartKey, str] = {}
        for ref in message.parts:
            key = key_of(ref)
            # Only an active handoff settles the part itself; a move merely queued may never
            # start while the reporter holds the part unsettled.
            moving = self._orchestrator.handoff_of(ref) is not None
            if key in current and key not in deciding and not moving:
                explicit[key] = "" if current.primary_of(key) == source else source
        if explicit:
            self._pending_failover(now_us).absorb(explicit=explicit)

    def _handoff_silent(self, handoff: Handoff, now_us: int) -> None:
        """No report by the deadline: fall back to failover, unless the target already serves."""
        if handoff.phase is HandoffPhase.BACKING_UP:
            cause = "the source did not report the end of its backup period in time"
            self._orchestrator.fire(
                handoff, HandoffTrigger.SOURCE_SILENT, now_us=now_us, cause=cause
            )
            self._handoff_completed(handoff, reported_by=handoff.target, now_us=now_us)
            return
        cause = "no report from either side by the deadline"
        self._orchestrator.fire(
            handoff, HandoffTrigger.DEADLINE_EXPIRED, now_us=now_us, cause=cause
        )
        self._fail_over_handoff(handoff, now_us)

    def _participant_died(self, handoff: Handoff, server_id: str, now_us: int) -> None:
        """A participant of an assigned handoff died: its parts fail over.

        A handoff still COMMITTING is left alone: its build finds the participant gone and drops
        it, or, if its commit is already in flight, the commit callback lands here. Once the
        target serves the parts (BACKING_UP), the source's death only ends its backup period.
        """
        if handoff.phase is HandoffPhase.BACKING_UP and server_id == handoff.source:
            cause = f"{server_id} died during its backup period"
            self._orchestrator.fire(handoff, HandoffTrigger.SOURCE_DIED, now_us=now_us, cause=cause)
            self._handoff_completed(handoff, reported_by=handoff.target, now_us=now_us)
            return
        if not self._orchestrator.allows(handoff, HandoffTrigger.PARTICIPANT_DIED):
            return
        cause = f"{server_id} died"
        self._orchestrator.fire(
            handoff, HandoffTrigger.PARTICIPANT_DIED, now_us=now_us, cause=cause
        )
        self._fail_over_handoff(handoff, now_us)

    def _fail_over_handoff(self, handoff: Handoff, now_us: int) -> None:
        extra = handoff.source if self._is_live(handoff.source) else ""
        job = self._pending_failover(now_us)
        keys = [key_of(ref) for ref in handoff.parts]
        job.absorb(explicit=dict.fromkeys(keys, extra))
        if extra:
            for key in keys:
                job.moved_at.setdefault(key, handoff.map_version)
        job.handoff_ids.append(handoff.handoff_id)
        self._handoff_ended(handoff, HandoffOutcome.FAILED_OVER, now_us)

    def _moves_dropped(self, moves: list[MoveRequest], cause: str) -> None:
        for move in moves:
            self._emit(
                MovesDropped(parts=(move.ref,), source=move.source, reason=move.reason, cause=cause)
            )

    # Failover.

    def _pending_failover(self, now_us: int) -> FailoverJob:
        """The job new deaths join: the active one while it waits, else the next one."""
        if self._failover is None:
            self._failover = self._new_failover(now_us)
            return self._failover
        if self._failover.phase is FailoverPhase.PENDING:
            return self._failover
        if self._failover_next is None:
            self._failover_next = self._new_failover(now_us)
        return self._failover_next

    def _new_failover(self, now_us: int) -> FailoverJob:
        job = FailoverJob(failover_id=self._next_failover_id, created_us=now_us)
        self._next_failover_id += 1
        return job

    def _maybe_prepare_failover(self, now_us: int) -> bool:
        """Fence for the pending job once no store request is in flight; True if it did."""
        job = self._failover
        current = self.shard_map
        if job is None or current is None or job.phase is not FailoverPhase.PENDING:
            return False
        if self._pipeline.busy:
            return False
        prepares = plan_prepare(
            job,
            current,
            live=self._is_live,
            parts_per_message_max=self._config.failover_prepare_parts_max,
            now_us=now_us,
            timeout_us=self._config.failover_prepare_timeout_ms * 1000,
        )
        for server_id, message in prepares:
            self._send(server_id, message)
        self._emit(
            FailoverStarted(
                failover_id=job.failover_id,
                servers=tuple(sorted(job.dead)),
                parts=len(job.parts),
                fence_version=job.fence_version,
            )
        )
        if not job.waiting:
            self._promote(job, now_us)
        return True

    def _failover_deadline(self, job: FailoverJob, now_us: int) -> None:
        """Ask the silent live candidates once more (`plan_resend`), or promote."""
        resends = plan_resend(
            job,
            reachable_since=self._reachable_since,
            now_us=now_us,
            timeout_us=self._config.failover_prepare_timeout_ms * 1000,
        )
        if not resends:
            self._promote(job, now_us)
            return
        for server_id, message in resends:
            self._send(server_id, message)

    def _reachable_since(self, server_id: str, since_us: int) -> bool:
        """Live, heard from since `since_us`, and hearing the manager: asked again, it may
        answer (one whose heartbeats leave the maps sent to it unconfirmed would not get it)."""
        member = self._membership.get(server_id)
        if member is None or not member.is_live or member.last_heard_us < since_us:
            return False
        return not self._not_hearing(server_id)

    def _on_positions(
        self, message: messages.PositionsReported, source: NodeId, now_us: int
    ) -> None:
        job = self._failover
        # References the job sent are valid keys; only the others are checked (and ignored).
        known = {} if job is None else job.keys
        _check_refs(p.ref for p in message.parts if p.ref not in known)
        if job is None or not self._check_sender(message.server_id, source):
            return
        if record_positions(job, message) and not job.waiting:
            self._promote(job, now_us)

    def _promote(self, job: FailoverJob, now_us: int) -> None:
        fire_failover(job, FailoverTrigger.POSITIONS_COLLECTED)
        job.deadline_us = None
        change = Change(
            kind=MapChange.FAILOVER,
            build=lambda current: self._build_promotion(current, job),
            committed=lambda built, now_us: self._failover_committed(job, built, now_us),
            dropped=lambda cause, now_us: self._failover_dropped(job, cause, now_us),
            urgent=True,
        )
        self._pipeline.submit(change)

    def _build_promotion(self, current: ShardMap, job: FailoverJob) -> Built | None:
        eligible = [s for s in self._eligible(current) if s not in job.dead]
        promotion = build_promotion(
            job,
            current,
            live=self._is_live,
            eligible=eligible,
            fallback=self._progress_seq,
            parts_of=lambda session_id: self._sessions.get(session_id, ()),
            lacking=self._membership.lacking,
        )
        promotion = job.promotion = carry_landed(promotion, job.promotion, current)
        if not promotion.operations:
            promotion = job.promotion = count_unreplicated(promotion, current)
            return Built(delta=None, new_map=current, parts=(), servers=(), payload=promotion)
        stable = stabilize(current, promotion.operations, intended=promotion.intended.__contains__)
        promotion = job.promotion = count_unreplicated(promotion, stable.new_map)
        servers = sorted(job.dead | {p.primary for p in promotion.promotions})
        parts = tuple(p.ref for p in promotion.promotions) + tuple(
            ref_of(key) for key in promotion.lost
        )
        return Built(
            delta=stable.delta,
            new_map=stable.new_map,
            parts=parts,
            servers=tuple(servers),
            payload=promotion,
        )

    def _progress_seq(self, server_id: str, key: PartKey) -> tuple[int, int] | None:
        member = self._membership.get(server_id)
        progress = None if member is None else member.progress.get(ref_of(key))
        return None if progress is None else (progress.last_epoch, progress.applied_seq)

    def _failover_committed(self, job: FailoverJob, built: Built, now_us: int) -> None:
        promotion = built.payload
        assert isinstance(promotion, Promotion)
        version = built.new_map.version
        self._emit(
            FailoverCompleted(
                failover_id=job.failover_id,
                servers=tuple(sorted(job.dead)),
                map_version=version,
                promotions=promotion.promotions,
                replicas_added=promotion.replicas_added,
                parts_without_replica=promotion.unreplicated,
                positions_us=now_us - job.prepared_us,
                duration_us=now_us - job.created_us,
                handoff_sources=tuple(sorted({s for s in job.explicit.values() if s})),
            )
        )
        if promotion.unreplicated:
            self._emit(
                PartsUnreplicated(
                    failover_id=job.failover_id,
                    parts=promotion.unreplicated,
                    servers=tuple(sorted(job.dead)),
                    draining=tuple(
                        entry.server_id
                        for entry in self._map_entries(built.new_map)
                        if entry.state is ServerState.DRAINING and self._is_alive(entry.server_id)
                    ),
                )
            )
        fire_failover(job, FailoverTrigger.PROMOTION_COMMITTED)
        # Renewals the dead servers issued while silent went with their heartbeats: the
        # sessions they led count as renewed now (late, never early).
        self._expiry.renewed(
            dict.fromkeys(p.ref.session_id for p in promotion.promotions), now_us=now_us
        )
        if promotion.emptied:
            self._emit(
                PartsReset(
                    parts=tuple(ref_of(key) for key in promotion.emptied),
                    servers=tuple(sorted(job.dead)),
                    map_version=version,
                )
            )
        if promotion.lost:
            sessions = promotion.sessions_lost
            self._emit(
                PartsLost(
                    parts=tuple(ref_of(key) for key in promotion.lost),
                    servers=tuple(sorted(job.dead)),
                    map_version=version,
                    sessions=sessions,
                    parts_ended=len(promotion.ended),
                )
            )
            self._tell_sessions_ended(sessions)
        self._failover_finished(job, now_us)

    def _tell_sessions_ended(self, sessions: tuple[bytes, ...]) -> None:
        """CLOSE_SESSION to each client connection that proved one of `sessions`, ended by a
        failover that lost one of their parts: its application learns it now, not at its next
        call (which would find the part gone and ask; the answer would be the same)."""
        ended = frozenset(sessions)
        for session_id in sessions:
            self._session_buckets.forget(session_id)
        for source, client in self._clients.items():
            for session_id in sorted(ended & client.sessions.keys()):
                del client.sessions[session_id]
                self._send(source, CloseSession(session_id=session_id))

    def _failover_dropped(self, job: FailoverJob, cause: str, now_us: int) -> None:
        """The promotion could not be built: retry it, merged with any later deaths."""
        fire_failover(job, FailoverTrigger.PROMOTION_DROPPED)
        self._failover_attempts += 1
        if self._failover_attempts > FAILOVER_ATTEMPTS_MAX:
            self._emit(
                FailoverAbandoned(
                    failover_id=job.failover_id,
                    servers=tuple(sorted(job.dead)),
                    parts=len(job.parts),
                    cause=cause,
                )
            )
            self._failover_finished(job, now_us)
            return
        successor = self._failover_next or self._new_failover(now_us)
        successor.absorb(dead=job.dead, explicit=job.explicit)
        successor.handoff_ids.extend(job.handoff_ids)
        self._failover, self._failover_next = successor, None

    def _failover_finished(self, job: FailoverJob, now_us: int) -> None:
        self._failover_attempts = 0
        self._failover, self._failover_next = self._failover_next, None
        for server_id in sorted(job.dead):
            self._try_readmit(server_id, now_us)
        for server_id in sorted(self._drains):
            if self._map_state(server_id) in (None, ServerState.DEAD):
                self._drain_progress((server_id,))
        self._queue_replica_repair()

    # Drains.

    def _build_drain_mark(
        self, current: ShardMap, server_id: str, cause: DrainCause
    ) -> Built | None:
        """Mark an ACTIVE server DRAINING for `cause`, or have an operator take over a risk mark.

        A server `current` already shows DRAINING for `cause` is done, not dropped: the commit
        landed though its answer was lost (a store timeout), and the reloaded map shows it.
        """
        entry = _server_entry(current, server_id)
        if entry is None:
            return None
        if entry.state is ServerState.DRAINING and entry.drain_cause is cause:
            return Built(delta=None, new_map=current, parts=(), servers=(server_id,))
        takes_over = (
            entry.state is ServerState.DRAINING
            and cause is DrainCause.OPERATOR
            and entry.drain_cause is DrainCause.RISK
        )
        if entry.state is not ServerState.ACTIVE and not takes_over:
            return None
        operation = ServerDrained(server_id=server_id, cause=cause)
        stable = stabilize(current, [operation], intended=lambda k: False)
        return Built(delta=stable.delta, new_map=stable.new_map, parts=(), servers=(server_id,))

    def _build_undrain(
        self, current: ShardMap, server_id: str, cause: DrainCause | None = None
    ) -> Built | None:
        """Make a DRAINING server ACTIVE again (only one drained for `cause`, when given: the
        risk policy's undrain leaves an operator's drain alone). A server `current` already
        shows ACTIVE is done: the commit landed though its answer was lost."""
        entry = _server_entry(current, server_id)
        if entry is None:
            return None
        if entry.state is ServerState.ACTIVE:
            return Built(delta=None, new_map=current, parts=(), servers=(server_id,))
        if entry.state is not ServerState.DRAINING or cause not in (None, entry.drain_cause):
            return None
        operations = [ServerUndrained(server_id=server_id)]
        stable = stabilize(current, operations, intended=lambda k: False)
        return Built(delta=stable.delta, new_map=stable.new_map, parts=(), servers=(server_id,))

    def _drain_marked(self, server_id: str, now_us: int) -> None:
        drain = self._drains.get(server_id)
        current = self.shard_map
        if drain is None or current is None:
            return
        drain.marked = True
        self._drain_due_us = None
        held = current.parts_for(server_id)
        drain.parts_total = len(held.primary) + len(held.replica)
        drain.primaries_left = len(held.primary)
        self._emit(
            DrainProgressed(
                server_id=server_id,
                parts_moved=0,
                parts_total=drain.parts_total,
                finished=drain.parts_total == 0,
                primaries_left=drain.primaries_left,
            )
        )
        if drain.parts_total == 0:
            del self._drains[server_id]

    def _drain_tick(self, now_us: int) -> None:
        """Queue moves for the drained servers' primaries and a batch of their replica roles."""
        current = self.shard_map
        if current is None or self._holding() or not self._drains:
            return
        if self._drain_due_us is not None and now_us < self._drain_due_us:
            return
        self._drain_due_us = now_us + DRAIN_TICK_MS * 1000
        eligible = self._eligible(current)
        for server_id in sorted(self._drains):
            drain = self._drains[server_id]
            if not drain.marked or self._map_state(server_id) is not ServerState.DRAINING:
                continue
            held = current.parts_for(server_id)
            if not held.primary and not held.replica:
                # Nothing left: finished once no handoff of it runs. A drain the map resumed
                # for a manager that loaded it (a restart, a standby taking over) may find the
                # server empty already, and no move or count would ever end it.
                self._drain_progress((server_id,))
                continue
            stuck = not any(s != server_id for s in eligible)
            waiting = len(held.primary) if stuck else 0
            replicas_waiting = drain.replicas_waiting if held.replica else 0
            behind = min(len(held.replica), drain.replicas_behind)
            if (waiting, replicas_waiting, behind) != (
                drain.primaries_waiting,
                drain.replicas_waiting,
                drain.behind_reported,
            ):
                drain.primaries_waiting, drain.replicas_waiting = waiting, replicas_waiting
                self._drain_progress((server_id,))
            # Every tick, only the primaries not moving yet (once queued, a part stays so
            # until its handoff ends); the busiest first: should the server stop before its
            # drain ends (a leave that timed out), the parts failed over are the least used.
            primaries = []
            if self._is_live(server_id):
                primaries = [
                    ref
                    for key in held.primary
                    if not self._orchestrator.is_moving(ref := ref_of(key))
                ]
            member = self._membership.get(server_id)
            loads = () if member is None or member.load is None else member.load.part_loads
            if primaries and loads:
                primaries = busiest_first(primaries, loads)
            for ref in primaries:
                self._orchestrator.request_move(
                    MoveRequest(
                        ref=ref,
                        source=server_id,
                        reason=ReasonCode.PLANNED_MAINTENANCE,
                        origin=MoveOrigin.DRAIN,
                        target=None,
                        requested_us=now_us,
                    )
                )
            idle = drain.idle_at == (current.version, tuple(eligible))
            if held.replica and not drain.replica_change_queued and not idle:
                drain.replica_change_queued = self._pipeline.submit(self._replica_change(drain))

    def _replica_change(self, drain: _Drain) -> Change:
        def committed(built: Built, now_us: int) -> None:
            drain.replica_change_queued = False
            drain.idle_at = None
            self._drain_progress((drain.server_id,))

        def dropped(cause: str, now_us: int) -> None:
            drain.replica_change_queued = False
            current = self.shard_map
            if current is not None and not drain.replicas_behind:
                drain.idle_at = (current.version, tuple(self._eligible(current)))
            self._drain_progress((drain.server_id,))

        return Change(
            kind=MapChange.REPLICAS_MOVED,
            build=lambda current: self._build_replica_moves(current, drain.server_id),
            committed=committed,
            dropped=dropped,
        )

    def _build_replica_moves(self, current: ShardMap, server_id: str) -> Built | None:
        if self._map_state(server_id) is not ServerState.DRAINING:
            return None
        eligible = [s for s in self._eligible(current) if s != server_id]
        count = current.config.replica_count
        batch = self._config.replica_moves_per_commit_max
        operations: list[PlacementOverridden] = []
        moved: list[PartKey] = []
        waiting = behind = 0
        for key in current.parts_for(server_id).replica:
            if len(operations) >= batch:
                # A full batch: the roles not looked at are counted by a later pass (the one
                # that finds nothing left to move counts them all).
                break
            placement = current.lookup(key)
            keep = [s for s in placement.replicas if s != server_id]
            last_live = not any(self._is_live(s) for s in keep)
            if last_live and all(s in placement.servers for s in eligible):
                # The part's last live replica, and no other server can take it: dropping it
                # would leave a `replicated` part unable to acknowledge a write while this
                # server is still up. It stays until a server joins or is undrained.
                waiting += 1
                continue
            if keep and self._ahead_of(key, server_id, keep):
                behind += 1
                # The drained server holds history no other replica has reported yet (one
                # added lately, a replica rebalance's say, still installing its copy): taking
                # its role now left the history on the primary alone, and a crash of the
                # primary then lost acknowledged writes (`leave-faults` seeds 19,919,129 and
                # 19,919,174). A later pass moves it, once another replica caught up.
                continue
            replicas = self._fill_replicas(
                key, primary=placement.primary, keep=keep, eligible=eligible, count=count
            )
            operations.append(
                override(key, Placement(primary=placement.primary, replicas=replicas))
            )
            moved.append(key)
        drain = self._drains.get(server_id)
        if drain is not None:
            drain.replicas_waiting, drain.replicas_behind = waiting, behind
        return _replica_moves_built(current, operations, moved, (server_id,))

    def _failing_over_from(self, server_id: str) -> bool:
        """Whether a failover under way holds a handoff of `server_id` that fell back to it:
        the promotion may keep the part there (the source held the longer log)."""
        return any(
            job is not None and server_id in job.explicit.values()
            for job in (self._failover, self._failover_next)
        )

    def _drain_progress(self, servers: tuple[str, ...]) -> None:
        current = self.shard_map
        if current is None:
            return
        for server_id in servers:
            drain = self._drains.get(server_id)
            if drain is None or not drain.marked:
                continue
            state = self._map_state(server_id)
            remaining = primaries = replica_roles = 0
            leading = False
            if state is not None and state is not ServerState.DEAD:
                held = current.parts_for(server_id)
                primaries, replica_roles = len(held.primary), len(held.replica)
                remaining = primaries + replica_roles
                # The map moves a part when its handoff is assigned, before the source has
                # shipped its sealed log (and, after that, while it forwards stragglers): a
                # drain is finished, and the server safe to stop, once none of its handoffs
                # runs. Before, `forehand drain` said "drained" with the last one just started,
                # and stopping the server then sent its parts through failover.
                leading = self._leads_handoff(server_id)
            finished = remaining == 0 and not leading
            moved = max(drain.parts_moved, drain.parts_total - remaining)
            total = max(drain.parts_total, moved + remaining)
            waiting = min(remaining, drain.primaries_waiting + drain.replicas_waiting)
            behind = min(replica_roles, drain.replicas_behind)
            now = (moved, total, waiting, primaries, behind)
            before = (
                drain.parts_moved,
                drain.parts_total,
                drain.waiting_reported,
                drain.primaries_left,
                drain.behind_reported,
            )
            if now == before and not finished:
                continue
            drain.parts_moved, drain.parts_total, drain.waiting_reported = moved, total, waiting
            drain.primaries_left, drain.behind_reported = primaries, behind
            self._emit(
                DrainProgressed(
                    server_id=server_id,
                    parts_moved=moved,
                    parts_total=total,
                    finished=finished,
                    parts_waiting=waiting,
                    primaries_left=primaries,
                    replicas_behind=behind,
                )
            )
            if finished:
                del self._drains[server_id]

    # Clients.

    def _client(self, source: NodeId, client_id: bytes | None = None) -> _Client:
        client = self._clients.get(source)
        if client is None:
            client = _Client(client_id=client_id or _client_id_of(source))
            self._clients[source] = client
            while len(self._clients) > self._config.clients_max:
                forgotten, _ = self._clients.popitem(last=False)
                self._held_maps.take(forgotten)
        else:
            self._clients.move_to_end(source)
            if client_id is not None:
                client.client_id = client_id
        return client

    def _remember_session(self, client: _Client, session_id: bytes) -> None:
        client.sessions[session_id] = None
        client.sessions.move_to_end(session_id)
        while len(client.sessions) > self._config.client_sessions_max:
            client.sessions.popitem(last=False)

    def _bind_credentials(
        self, client: _Client, source: NodeId, credentials: tuple[Credential, ...], now_us: int
    ) -> list[CloseSession | ResumeReject]:
        """Bind to the connection each session whose credential opens (HELLO, MAP_REQUEST); a
        credential that does not open is reported and not bound, and the others still bind.

        Returns what to tell the client about those that did not bind (the caller sends it):
        CLOSE_SESSION for an authentic but expired credential of a session the map no longer
        holds (expired, or closed), so that a client back after longer than the expiry hears
        its session ended instead of never finding it; RESUME_REJECT(CREDENTIAL_REFUSED) for
        any other, unless the session is bound on the connection anyway (an earlier proof, or
        another credential of it in the same frame) or the credential names a key this manager
        does not hold (nothing is said then). This manager answers nothing about a
        session its client cannot prove, so the client ends it, with the reason, instead of
        locating it until each call's timeout (a tampered snapshot resumed, a credential kept
        past its lifetime)."""
        refused: dict[bytes, CloseSession | ResumeReject] = {}
        # A session the connection proved already is not checked again (a frame may name one
        # 1,024 times); the others are paced per origin: each check costs about 5 us.
        unproved = [c for c in credentials if c.session_id not in client.sessions]
        checked = self._credential_pace.take_up_to(client.origin, len(unproved), now_us)
        if checked < len(unproved):
            self._emit(
                CredentialsPaced(
                    client=source, origin=client.origin, presented=len(unproved), checked=checked
                )
            )
        for credential in unproved[:checked]:
            session_id = credential.session_id
            if session_id in client.sessions:
                # Bound by an earlier credential of this frame.
                continue
            try:
                claims = self._sealer.open_credential(credential.credential, now_us=now_us)
            except TokenError as error:
                self._emit(
                    CredentialRefused(
                        client=source,
                        session_id=session_id,
                        reason=int(error.reject_reason),
                        detail=str(error),
                    )
                )
                if (
                    isinstance(error, TokenExpired)
                    and error.session_id == session_id
                    and self.shard_map is not None
                    and session_id not in self._sessions
                ):
                    refused[session_id] = CloseSession(session_id=session_id)
                elif not isinstance(error, TokenKeyUnknown):
                    # A key this manager lacks may be one a server renewed under before the
                    # manager was given it (a rollout out of order): not bound, and not ended,
                    # so the session is located again once the key is here.
                    refused[session_id] = ResumeReject(
                        session_id=session_id,
                        reason=ResumeRejectReason.CREDENTIAL_REFUSED,
                        message=f"the session's credential was refused: {error}",
                    )
                continue
            if claims.session_id == session_id:
                self._remember_session(client, claims.session_id)
                self._session_buckets.bind(claims.session_id, client.client_id)
            else:
                self._emit(
                    CredentialRefused(
                        client=source,
                        session_id=session_id,
                        reason=int(ResumeRejectReason.TOKEN_INVALID),
                        detail="the credential is another session's",
                    )
                )
                refused[session_id] = ResumeReject(
                    session_id=session_id,
                    reason=ResumeRejectReason.CREDENTIAL_REFUSED,
                    message="the session's credential was refused: it is another session's",
                )
        bound = client.sessions
        return [answer for session_id, answer in refused.items() if session_id not in bound]

    def _on_hello(self, frame: Hello, source: NodeId, now_us: int) -> None:
        if PROTOCOL_VERSION not in frame.versions:
            self._refuse(source, ErrorCode.VERSION_NEGOTIATION_FAILED, "forehand/1 only")
            return
        client = self._client(source, frame.client_id)
        # A HELLO opens a new connection: it proves only the sessions it presents (and those
        # opened on it later), not those of an earlier connection from the same node.
        client.sessions.clear()
        refused = self._bind_credentials(client, source, frame.credentials, now_us)
        self._send(
            source,
            Welcome(
                version=PROTOCOL_VERSION,
                server_id=self.node_id,
                map_version=self.map_version,
                frame_bytes_max=self._config.frame_bytes_max,
                idle_timeout_ms=self._config.idle_timeout_ms,
            ),
        )
        # The lifetime of the credentials SESSION_OPENED brings (a client renews them in time),
        # and the sessions a connection may hold (beyond, its CLOSE_SESSIONs prove nothing).
        settings = Settings(
            credential_lifetime_ms=self._config.credential_lifetime_ms,
            client_sessions_max=self._config.client_sessions_max,
        )
        self._send(source, settings)
        for answer in refused:
            self._send(source, answer)

    def _on_ping(self, frame: Ping, source: NodeId, now_us: int) -> None:
        self._send(source, Pong(sequence=frame.sequence, sent_us=frame.sent_us))

    def _on_open_session(self, frame: OpenSession, source: NodeId, now_us: int) -> None:
        parts = frame.parts
        try:
            for part in parts:
                check_part_name(part)
        except LocalProtocolError as error:
            raise RemoteProtocolError(str(error), error_code=ErrorCode.PROTOCOL_ERROR) from error
        if (
            not parts
            or len(parts) > self._config.session_parts_max
            or len(set(parts)) != len(parts)
        ):
            raise RemoteProtocolError(
                f"OPEN_SESSION names 1 to {self._config.session_parts_max} distinct parts",
                error_code=ErrorCode.PROTOCOL_ERROR,
            )
        client = self._client(source)
        if self._open_seen(client, source, frame, now_us):
            return
        declared = self._membership.declared_parts()
        undeclared = () if declared is None else tuple(p for p in parts if p not in declared)
        if declared is not None and undeclared:
            # No retry would help: answered, and the connection stays (its other opens go on).
            reason = _refusal_reason(undeclared, declared)
            self._refuse_open(source, frame.request_id, parts, reason, cause="undeclared_parts")
            return
        current = self.shard_map
        if current is not None and len(current) + len(parts) > self._config.map_parts_max:
            # Full until sessions close: the caller hears it now rather than after retries.
            reason = f"the shard map holds map_parts_max={self._config.map_parts_max} parts"
            self._refuse_open(source, frame.request_id, parts, reason, cause="map_full")
            return
        bound = self._config.client_sessions_max
        if len(client.sessions) + client.opening >= bound:
            # Past the bound the connection would forget its oldest sessions, and their
            # CLOSE_SESSIONs would prove nothing: they would stay in the map.
            reason = (
                f"this client connection holds client_sessions_max={bound} sessions (open or "
                "opening): close some first"
            )
            self._refuse_open(source, frame.request_id, parts, reason, cause="client_full")
            return
        wait_ms = self._open_pace.take(client.origin, now_us)
        if wait_ms:
            reason = (
                f"{client.origin} opened sessions faster than open_rate_per_origin="
                f"{self._config.open_rate_per_origin:g} a second after a burst of "
                f"open_burst_per_origin={self._config.open_burst_per_origin}: retry in {wait_ms} ms"
            )
            self._refuse_open(
                source,
                frame.request_id,
                parts,
                reason,
                cause="origin_rate",
                retry_after_ms=wait_ms,
            )
            return
        opening = _Opening(
            client=source,
            request_id=frame.request_id,
            parts=parts,
            session_id=new_session_id(now_ms=now_us // 1000, rng=self._rng),
        )
        change = Change(
            kind=MapChange.SESSION_OPENED,
            build=lambda current: self._build_session(current, opening),
            committed=lambda built, now_us: self._session_committed(opening, client, built, now_us),
            # A build that cannot place the parts now (no server ACTIVE) may later.
            dropped=lambda cause, now_us: self._open_dropped(opening, client, cause),
            # Opens that wait behind a commit go together: a burst of them costs the store, each
            # server and the manager's fan-out one version per group instead of one per session.
            groupable=True,
        )
        if not self._pipeline.submit(change):
            reason = "the manager's commit queue is full"
            self._refuse_open(
                source,
                frame.request_id,
                parts,
                reason,
                cause="queue_full",
                retry_after_ms=OPEN_RETRY_AFTER_MS,
            )
            return
        client.opening += 1
        key = (client.client_id, frame.request_id)
        self._opens_seen[key] = opening
        self._opens_seen.move_to_end(key)
        while len(self._opens_seen) > OPENS_REMEMBERED_MAX:
            self._opens_seen.popitem(last=False)

    def _open_seen(self, client: _Client, source: NodeId, frame: OpenSession, now_us: int) -> bool:
        """Whether `frame` is an OPEN_SESSION this client sent before (same client id, request
        id and parts), answered here: a client that lost its connection before SESSION_OPENED
        sends it again on a new one, and opening it again would leave the first session in the
        map with no client. One still being committed answers on this connection once it is;
        one committed answers now with the same session (a fresh token and credential). The
        client id is 16 random bytes and request ids start at a random value below 2^61, so
        another client cannot name someone else's open."""
        key = (client.client_id, frame.request_id)
        seen = self._opens_seen.get(key)
        if seen is None or seen.parts != frame.parts:
            return False
        self._opens_seen.move_to_end(key)
        if not seen.committed:
            seen.client = source
            return True
        current = self.shard_map
        if current is None or not all(
            PartKey(session_id=seen.session_id, part=part) in current for part in seen.parts
        ):
            del self._opens_seen[key]  # closed since: a new open
            return False
        seen.client = source
        self._answer_opened(seen, client, current, now_us)
        return True

    def _open_dropped(self, opening: _Opening, client: _Client, cause: str) -> None:
        client.opening -= 1
        self._opens_seen.pop((client.client_id, opening.request_id), None)
        self._refuse_open(
            opening.client,
            opening.request_id,
            opening.parts,
            f"the parts cannot be placed now ({cause})",
            cause="unplaceable",
            retry_after_ms=OPEN_RETRY_AFTER_MS,
        )

    def _refuse_open(
        self,
        source: NodeId,
        request_id: int,
        parts: tuple[str, ...],
        reason: str,
        *,
        cause: str,
        retry_after_ms: int = 0,
    ) -> None:
        """Answer an OPEN_SESSION with OPEN_SESSION_REFUSED: the connection, and the client's
        other opens and sessions on it, stay."""
        reason = _text_within(reason, DEFAULT_CONFIG.message_bytes_max)
        self._emit(
            SessionOpenRefused(
                client=source,
                parts=parts,
                reason=reason,
                cause=cause,
                retry_after_ms=retry_after_ms,
            )
        )
        self._send(
            source,
            OpenSessionRefused(request_id=request_id, reason=reason, retry_after_ms=retry_after_ms),
        )

    def _build_session(self, current: ShardMap, opening: _Opening) -> Built | None:
        keys = [PartKey(session_id=opening.session_id, part=p) for p in opening.parts]
        if all(key in current for key in keys):
            return Built(delta=None, new_map=current, parts=(), servers=())
        for _ in range(SESSION_ID_ATTEMPTS_MAX):
            if not any(key in current for key in keys):
                try:
                    operations = [PartsAdded(session_id=opening.session_id, parts=opening.parts)]
                    stable = steer_additions(
                        current,
                        operations,
                        added=keys,
                        avoid=self._blocked(),
                        eligible=self._eligible(current),
                        lacking=self._lacking(opening.parts),
                    )
                except LocalProtocolError as error:
                    if "same stable hash" not in str(error):
                        raise
                else:
                    return Built(
                        delta=stable.delta,
                        new_map=stable.new_map,
                        parts=tuple(ref_of(key) for key in keys),
                        servers=(),
                        implicit_moves=stable.implicit_moves,
                    )
            opening.session_id = new_session_id(now_ms=opening.session_id_ms, rng=self._rng)
            keys = [PartKey(session_id=opening.session_id, part=p) for p in opening.parts]
        return None

    def _session_committed(
        self, opening: _Opening, client: _Client, built: Built, now_us: int
    ) -> None:
        client.opening -= 1
        opening.committed = True
        # The open may have been sent again on another connection since (`_open_seen`).
        answering = self._clients.get(opening.client, client)
        self._answer_opened(opening, answering, built.new_map, now_us)
        self._emit(
            SessionRegistered(
                session_id=opening.session_id,
                parts=opening.parts,
                client=opening.client,
                map_version=built.new_map.version,
            )
        )

    def _answer_opened(
        self, opening: _Opening, client: _Client, current: ShardMap, now_us: int
    ) -> None:
        """SESSION_OPENED for a committed open, to the connection that asked last."""
        session_id = opening.session_id
        self._remember_session(client, session_id)
        self._session_buckets.bind(session_id, client.client_id)
        placements = tuple(
            self._wire_placement(current, PartKey(session_id=session_id, part=part))
            for part in opening.parts
        )
        # The token names one server, the primary of the first part, so that it is single-use
        # (replay caches are per server); a restarted client presents its credential instead.
        primary = placements[0].primary.server_id
        token = self._sealer.issue_token(
            session_id=session_id,
            parts=tuple(p.part for p in placements if p.primary.server_id == primary),
            target_server=primary,
            map_version=current.version,
            now_us=now_us,
            lifetime_ms=self._config.token_lifetime_ms,
        )
        credential = self._sealer.issue_credential(
            session_id=session_id,
            client_id=client.client_id,
            now_us=now_us,
            lifetime_ms=self._config.credential_lifetime_ms,
        )
        self._send(
            opening.client,
            SessionOpened(
                request_id=opening.request_id,
                session_id=session_id,
                credential=credential,
                map_version=current.version,
                placements=placements,
                token=token,
            ),
        )

    def _wire_placement(self, current: ShardMap, key: PartKey) -> WirePlacement:
        placement = current.lookup(key)
        return WirePlacement(
            part=key.part,
            primary=self._endpoint(current, placement.primary),
            replicas=tuple(self._endpoint(current, s) for s in placement.replicas),
        )

    @staticmethod
    def _endpoint(current: ShardMap, server_id: str) -> Endpoint:
        return endpoint_from_address(server_id, current.server(server_id).address)

    def _on_close_session(self, frame: CloseSession, source: NodeId, now_us: int) -> None:
        client = self._clients.get(source)
        if client is None or frame.session_id not in client.sessions:
            return
        del client.sessions[frame.session_id]
        session_id = frame.session_id
        self._session_buckets.forget(session_id)
        self._queue_close(session_id)

    def _sweep_expiry(self, now_us: int) -> None:
        """Close the next sweep batch's expired sessions (`SessionExpiry`) in one map version.

        One batch at a time: the next is swept once its close committed (or was dropped), and
        only while the commit queue has room. A session led by a server the manager does not
        hear is left for the next round, and one led by a server heard again since its stamp
        counts as renewed then (`_primaries_heard_us`): renewals there went with the
        heartbeats."""
        if self._expiry.closing or not self._pipeline.free_slots:
            return
        current = self.shard_map
        assert current is not None
        expiry_us = self._config.session_expiry_ms * 1000
        expired = []
        for session_id in self._expiry.sweep(now_us=now_us):
            heard_us = self._primaries_heard_us(current, session_id)
            if heard_us is None:
                continue  # judged again next round
            if heard_us and now_us - heard_us <= expiry_us:
                # A primary the manager did not hear for a while led it since its last stamp:
                # renewals there were lost with the heartbeats, so it counts as renewed when
                # that primary was heard again.
                self._expiry.renewed((session_id,), now_us=heard_us)
                continue
            expired.append(session_id)
        if not expired:
            return
        for session_id in expired:
            self._session_buckets.forget(session_id)
        self._expiry.closing = True
        batch = tuple(expired)
        change = Change(
            kind=MapChange.SESSION_CLOSED,
            build=lambda current: self._build_session_close(current, batch),
            committed=lambda built, now_us: self._expiry_closed(batch, now_us),
            dropped=lambda cause, now_us: self._expiry_dropped(batch, now_us),
        )
        submitted = self._pipeline.submit(change)
        assert submitted  # a free slot was checked above
        self._emit(SessionsExpired(session_ids=batch))

    def _primaries_heard_us(self, current: ShardMap, session_id: bytes) -> int | None:
        """When the session's primaries were last heard again after a silence (0: never silent
        since this manager started), or None if one is not heard now (suspected, dead and not
        yet failed over, or its connection lost): renewals it issued, if any, are lost with its
        heartbeats."""
        membership = self._membership
        heard_us = 0
        for part in self._sessions.get(session_id, ()):
            key = PartKey(session_id=session_id, part=part)
            if key not in current:
                continue
            primary = current.lookup(key).primary
            silent = primary in self._unreachable
            if silent or membership.state_of(primary) is not MemberState.ALIVE:
                return None
            heard_us = max(heard_us, self._expiry.heard_again_us.get(primary, 0))
        return heard_us

    def _expiry_closed(self, batch: tuple[bytes, ...], now_us: int) -> None:
        self._expiry.closing = False

    def _expiry_dropped(self, batch: tuple[bytes, ...], now_us: int) -> None:
        """The close could not commit: the sessions still in the map count as renewed now
        (late, never early), instead of failing again at each round."""
        self._expiry.closing = False
        self._expiry.renewed(batch, now_us=now_us)

    def _queue_close(self, session_id: bytes) -> None:
        """Queue a session's removal; one that does not fit waits for a free slot (a close has
        no answer the client could retry on, and its parts would stay in the map for ever)."""
        batch = (session_id,)
        change = Change(
            kind=MapChange.SESSION_CLOSED,
            build=lambda current: self._build_session_close(current, batch),
            committed=lambda built, now_us: None,
            dropped=lambda cause, now_us: None,
        )
        if self._pipeline.submit(change):
            self._closes_waiting.pop(session_id, None)
        else:
            self._closes_waiting[session_id] = None

    def _retry_closes(self) -> None:
        """Queue the waiting session closes that fit, oldest first (each one step: the manager
        asks after every input, with up to a whole map's sessions waiting)."""
        waiting = self._closes_waiting
        while waiting and self._pipeline.free_slots:
            session_id, _ = waiting.popitem(last=False)
            if session_id in self._sessions:
                self._queue_close(session_id)

    def _build_session_close(
        self, current: ShardMap, session_ids: tuple[bytes, ...]
    ) -> Built | None:
        operations: list[Operation] = []
        refs: list[PartRef] = []
        for session_id in session_ids:
            parts = tuple(
                p
                for p in self._sessions.get(session_id, ())
                if PartKey(session_id=session_id, part=p) in current
            )
            if parts:
                operations.append(PartsRemoved(session_id=session_id, parts=parts))
                refs.extend(PartRef(session_id=session_id, part=p) for p in parts)
        if not operations:
            return None
        stable = stabilize(current, operations, intended=lambda key: False)
        return Built(
            delta=stable.delta,
            new_map=stable.new_map,
            parts=tuple(refs),
            servers=(),
            implicit_moves=stable.implicit_moves,
        )

    def _on_map_request(self, frame: MapRequest, source: NodeId, now_us: int) -> None:
        current = self.shard_map
        client = self._client(source)
        # The sessions the request presents join those the connection proved before: HELLO
        # proves at most credentials_max, and the connection keeps at most client_sessions_max.
        for answer in self._bind_credentials(client, source, frame.credentials, now_us):
            self._send(source, answer)
        presented = tuple(
            dict.fromkeys(
                credential.session_id
                for credential in frame.credentials
                if credential.session_id in client.sessions
            )
        )
        if current is None:
            # No map loaded yet (a manager starting): the load answers it, if it comes within
            # the hold; otherwise the client asks again after its timeout.
            self._held_maps.hold(
                source, map_version=frame.map_version, sessions=presented, now_us=now_us
            )
            return
        gone = [session_id for session_id in presented if session_id not in self._sessions]
        if gone:
            # A session the map no longer holds (closed, or every part lost) that a client still
            # asks about, with its valid credential: CLOSE_SESSION tells it so, and its calls fail
            # as closed by the manager instead of as a placement never found.
            for session_id in gone:
                client.sessions.pop(session_id, None)
                self._send(source, CloseSession(session_id=session_id))
            presented = tuple(s for s in presented if s in self._sessions)
        # Every session it asks about has a part on a server the manager cannot reach either:
        # the news the client waits for is that server's failover, and until it commits the
        # answer would send it back there. Held, the request is answered when the failover
        # commits instead of at the client's next poll.
        if (
            self._config.map_request_hold_ms
            and presented
            and self._all_stranded(current, presented)
            and self._held_maps.hold(
                source, map_version=frame.map_version, sessions=presented, now_us=now_us
            )
        ):
            return
        self._held_maps.take(source)
        self._send(source, self._placements_answer(current, client, frame.map_version))

    def _placements_answer(self, current: ShardMap, client: _Client, version: int) -> MapUpdate:
        """Only the sessions the connection proved it holds (never the whole map: it would show
        every session and server to any client), and only news when it is up to date."""
        return placements_answer(
            current=current,
            sessions=client.sessions,
            parts_of=lambda session_id: self._sessions.get(session_id, ()),
            placement_of=lambda key: self._wire_placement(current, key),
            changes=self._changes,
            client_version=version,
        )

    def _all_stranded(self, current: ShardMap, sessions: Iterable[bytes]) -> bool:
        """Whether each of `sessions` has a part whose primary is on a server the manager cannot
        reach: its connection lost and not heard from since, suspected, or dead and not failed
        over yet."""
        unreachable = self._unreachable
        state_of = self._membership.state_of

        def stranded(session_id: bytes) -> bool:
            for part in self._sessions.get(session_id, ()):
                primary = current.primary_of(PartKey(session_id=session_id, part=part))
                if primary in unreachable or state_of(primary) is not MemberState.ALIVE:
                    return True
            return False

        return all(stranded(session_id) for session_id in sessions)

    def _answer_held(self, held: list[tuple[NodeId, HeldRequest]], why: HoldEnded) -> None:
        """Answer held MAP_REQUESTs against the map as it is now."""
        current = self.shard_map
        if current is None or not held:
            return
        answered = 0
        for source, request in held:
            client = self._clients.get(source)
            if client is not None:
                self._send(source, self._placements_answer(current, client, request.map_version))
                answered += 1
        if answered:
            self._emit(MapRequestsAnswered(requests=answered, why=why))

    def _heard_again(self, server_id: str, *, suspected: bool, now_us: int) -> None:
        """A server the manager could not reach is back: the held requests go, since the answer
        "nothing newer" now sends their clients back to a server that is there. The renewals
        it reported meanwhile were lost with its heartbeats, so the sessions it leads count as
        renewed now (`_sweep_expiry` reads when it was heard again)."""
        if server_id in self._unreachable or suspected:
            self._unreachable.discard(server_id)
            if len(self._held_maps):
                self._answer_held(self._held_maps.take_all(), HoldEnded.SERVER_HEARD)
            if self._expiry.enabled:
                self._expiry.heard_again_us[server_id] = now_us

    def _on_map_requested(
        self, message: messages.MapRequested, source: NodeId, now_us: int
    ) -> None:
        current = self.shard_map
        if current is None or not self._check_sender(message.server_id, source):
            return
        if self._is_live(source) and message.map_version < current.version:
            member = self._membership.get(source)
            sent = 0 if member is None else member.map_version_sent
            self._catch_up(source, min(message.map_version, sent), current)

    def _on_cluster_frame(self, frame: ClusterMessage, source: NodeId, now_us: int) -> None:
        inner = messages.decode_cluster_message(frame.body)
        handler = _DISPATCH.get(type(inner))
        if handler is None:
            self._refuse(source, ErrorCode.FRAME_UNEXPECTED, f"unexpected {type(inner).__name__}")
            return
        handler(self, inner, source, now_us)

    def _on_connection(self, message: object, source: NodeId, now_us: int) -> None:
        """Connections come and go; membership follows heartbeats, not connections. But a new
        connection to a live member follows a broken one, which lost what was in flight: the
        map versions sent on it since the member last reported its own are sent again. Without
        this a server cut off from the manager's messages alone (its heartbeats still arriving)
        kept the version it held until the next commit, or for good if none came (found by
        `forehand sim --seed 9500899`)."""
        current = self.shard_map
        if not isinstance(message, ConnectionOpened):
            if source in self._membership:
                self._unreachable.add(source)
            else:
                self._held_maps.take(source)
            return
        if message.origin:
            self._client(source).origin = message.origin
        if source in self._membership:
            self._heard_again(source, suspected=False, now_us=now_us)
        if current is None:
            return
        member = self._membership.get(source)
        if member is None or not self._is_live(source):
            return
        # From the newest version it heard from the manager itself: one it learned from a peer
        # since is held, but its heartbeats confirm only what the manager's messages brought.
        if member.map_version_heard < member.map_version_sent:
            self._catch_up(source, member.map_version_heard, current)

    def _on_error(self, frame: Error, source: NodeId, now_us: int) -> None:
        """The peer closes its connection; nothing the manager holds depends on it."""


@dataclass(slots=True, kw_only=True)
class _Opening:
    """An OPEN_SESSION waiting for its commit."""

    client: NodeId
    request_id: int
    parts: tuple[str, ...]
    session_id: bytes
    committed: bool = False

    @property
    def session_id_ms(self) -> int:
        """The creation time in the session id (kept when a collision forces a new id)."""
        return int.from_bytes(self.session_id[:6], "big")


def _merge_builds(current: ShardMap, builds: Sequence[Built]) -> Built:
    """Handoff builds, or session opens, made one on top of the other, as one change against
    `current`.

    Their operations (overrides, added parts and the pins each one needed) apply together, and
    `stabilize` pins whatever the combination would still move unintentionally.
    """
    operations: list[Operation] = []
    parts: list[PartRef] = []
    servers: dict[str, None] = {}
    for built in builds:
        assert built.delta is not None
        operations.extend(built.delta.operations)
        parts.extend(built.parts)
        servers.update(dict.fromkeys(built.servers))
    moving = {key_of(ref) for ref in parts}
    stable = stabilize(current, operations, intended=moving.__contains__)
    # Applied together, one build's new parts can push another's along their walks (bounded
    # loads), which built one on top of the other they did not: such a part is pinned where the
    # builds placed it (each build chose it, steered off the servers the risk policy avoids).
    # A pin moves the hash-placed counts, so another part may move in turn: at most one round
    # per part of the group, each pinning at least one more.
    built_map = builds[-1].new_map
    pinned: set[PartKey] = set()
    while True:
        pins = [
            (key, placement)
            for key in sorted(moving - pinned)
            if key in built_map
            and stable.new_map.lookup(key) != (placement := built_map.lookup(key))
        ]
        if not pins:
            break
        pinned.update(key for key, _ in pins)
        operations.extend(override(key, placement) for key, placement in pins)
        stable = stabilize(current, operations, intended=moving.__contains__)
    return Built(
        delta=stable.delta,
        new_map=stable.new_map,
        parts=tuple(parts),
        servers=tuple(servers),
        implicit_moves=stable.implicit_moves,
    )


def _server_entry(current: ShardMap, server_id: str) -> ServerEntry | None:
    """The map's entry for `server_id`, None when the map does not list it."""
    try:
        return current.server(server_id)
    except KeyError:
        return None


def _check_refs(refs: Iterable[PartRef]) -> None:
    """Part references from a peer must name valid part keys, or the peer is at fault."""
    for ref in refs:
        try:
            key_of(ref)
        except LocalProtocolError as error:
            raise RemoteProtocolError(f"bad part reference: {error}") from error


REFUSAL_NAMES_MAX = 6
"""Part names an OPEN_SESSION_REFUSED reason lists of each kind (undeclared, declared); the rest
are counted."""


def _check_declared_parts(parts: tuple[str, ...]) -> None:
    """The part names a server says its app declares: at most `ANNOUNCED_PARTS_MAX`, each a
    valid part name (LocalProtocolError otherwise)."""
    if len(parts) > ANNOUNCED_PARTS_MAX:
        raise LocalProtocolError(f"more than {ANNOUNCED_PARTS_MAX} parts")
    for part in parts:
        check_part_name(part)


def _replica_moves_built(
    current: ShardMap,
    operations: list[PlacementOverridden],
    moved: list[PartKey],
    servers: tuple[str, ...],
) -> Built | None:
    """The commit of replica moves (overrides that keep each part's primary): pins none, moves
    no primary; None when there is nothing to move."""
    if not operations:
        return None
    stable = stabilize(current, operations, intended=lambda k: False)
    return Built(
        delta=stable.delta,
        new_map=stable.new_map,
        parts=tuple(ref_of(key) for key in moved),
        servers=servers,
    )


def rebalance_problem(tolerance: float, parts_max: int) -> str | None:
    """Why an operator's rebalance cannot run as asked (said to the operator), or None."""
    if not 0.0 <= tolerance <= REBALANCE_TOLERANCE_MAX:
        return f"tolerance must be in [0, {REBALANCE_TOLERANCE_MAX}], got {tolerance}"
    if parts_max < 1:
        return f"parts_max must be at least 1, got {parts_max}"
    return None


_Settled = tuple[tuple[str, int, str, bool, bool], ...]
"""Each server of the map: id, incarnation, state, alive, risk-blocked (`_settled_state`)."""


@dataclass(slots=True)
class _AutoRebalance:
    """The periodic rebalance check's state (`ManagerConfig.rebalance_interval_ms`)."""

    due_us: int
    """The next check."""
    settled: _Settled | None = None
    """What the servers looked like at the last check."""
    risk_moved_us: dict[str, int] = field(default_factory=dict)
    """When the risk policy last moved parts off each server; pruned past
    `rebalance_after_risk_ms` at every check, so at most the map's servers."""


@dataclass(slots=True)
class _RebalancePlan:
    """One rebalance's working loads (updated as it queues moves), shares and bound."""

    loads: dict[str, int]
    shares: dict[str, float]
    budget: int
    queued: int = 0


class _RebalancePicks:
    """The parts one source gives in a rebalance: for each target a part it holds a replica
    of when there is one, else the next of the sample; each part at most once."""

    __slots__ = ("_by_replica", "_order", "_taken", "remaining")

    def __init__(
        self, order: list[PartRef], by_replica: dict[str, list[PartRef]], remaining: int
    ) -> None:
        self._order = order
        self._by_replica = by_replica
        self._taken: set[PartRef] = set()
        self.remaining = remaining

    def take(self, target: str) -> PartRef | None:
        for candidates in (self._by_replica.get(target, []), self._order):
            while candidates:
                ref = candidates.pop()
                if ref not in self._taken:
                    self._taken.add(ref)
                    self.remaining -= 1
                    return ref
        return None


def _listed(names: Iterable[str]) -> str:
    """At most `REFUSAL_NAMES_MAX` names, and how many more."""
    ordered = sorted(names)
    shown = ", ".join(repr(name) for name in ordered[:REFUSAL_NAMES_MAX])
    more = len(ordered) - REFUSAL_NAMES_MAX
    return f"{shown} and {more} more" if more > 0 else shown


def _refusal_reason(undeclared: tuple[str, ...], declared: frozenset[str]) -> str:
    """Why an open is refused: part names are ASCII, at most 64 characters, so twice
    `REFUSAL_NAMES_MAX` of them and the words come to some 950 bytes, within the frame's text
    bound (`message_bytes_max`, 1024 bytes)."""
    listed = _listed(declared)
    return f"no server's app declares part(s) {_listed(undeclared)} (they declare {listed})"


def _text_within(text: str, bytes_max: int) -> str:
    """`text` cut to at most `bytes_max` bytes of UTF-8, never inside a character."""
    raw = text.encode()
    return text if len(raw) <= bytes_max else raw[:bytes_max].decode(errors="ignore")


def _client_id_of(source: NodeId) -> bytes:
    """A client's 16-byte id when its HELLO did not reach this manager: its node id, padded."""
    raw = source.encode()
    return raw[:16].ljust(16, b"\0")


_Handler = Callable[[ManagerCore, Any, NodeId, int], None]
_DISPATCH: dict[type, _Handler] = {
    messages.ServerAnnounced: ManagerCore._on_announced,
    messages.HeartbeatReported: ManagerCore._on_heartbeat,
    messages.HandoffRequested: ManagerCore._on_handoff_requested,
    messages.MapRequested: ManagerCore._on_map_requested,
    messages.PositionsReported: ManagerCore._on_positions,
    messages.HandoffCompleted: ManagerCore._on_handoff_completed,
    messages.HandoffAborted: ManagerCore._on_handoff_aborted,
    ClusterMessage: ManagerCore._on_cluster_frame,
    Hello: ManagerCore._on_hello,
    Ping: ManagerCore._on_ping,
    OpenSession: ManagerCore._on_open_session,
    CloseSession: ManagerCore._on_close_session,
    MapRequest: ManagerCore._on_map_request,
    Error: ManagerCore._on_error,
    ConnectionOpened: ManagerCore._on_connection,
    ConnectionLost: ManagerCore._on_connection,
}
