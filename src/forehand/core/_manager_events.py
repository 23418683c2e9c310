"""Events of the Session Manager core, drained with `ManagerCore.next_event()`.

They are what an operator (logs, dashboard, progress bars) and the simulator's checkers need to
see: membership changes, every committed map version and why, each handoff from start to end
with its durations, failovers with the chosen replica and the positions it was chosen from, drain
progress, and parts that could not be saved. Frozen, slotted, keyword-only dataclasses named noun
plus past participle (STYLE.md rule 4).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from forehand.core.messages import LoadReport, PartRef
from forehand.wire import ReasonCode

__all__ = [
    "DeathCause",
    "DrainProgressed",
    "FailoverAbandoned",
    "FailoverCompleted",
    "FailoverStarted",
    "HandoffAborted",
    "HandoffCompleted",
    "HandoffOutcome",
    "HandoffStarted",
    "HoldEnded",
    "ManagerEvent",
    "MOVED_IMPLICITLY_NAMED_MAX",
    "MapChange",
    "MapCommitRejected",
    "MapCommitted",
    "MapLoaded",
    "MapRequestsAnswered",
    "PartPromoted",
    "PartsLost",
    "PartsReset",
    "PartsMovedImplicitly",
    "PartsUnreplicated",
    "RebalanceQueued",
    "ReplicasRebalanced",
    "MovesDropped",
    "ReplicaPosition",
    "RiskAssessed",
    "RiskFlagged",
    "ServerDeclaredDead",
    "ServerJoined",
    "ServerLeaving",
    "ServerSuspected",
    "ServerNotHearing",
    "ServersSilent",
    "StallExcused",
    "SessionOpenRefused",
    "SessionRegistered",
    "SessionsExpired",
    "CredentialRefused",
    "CredentialsPaced",
    "PeerRefused",
]


class MapChange(enum.Enum):
    """What a committed map version changed."""

    SERVER_JOINED = "server_joined"
    SESSION_OPENED = "session_opened"
    SESSION_CLOSED = "session_closed"
    HANDOFF_ASSIGNED = "handoff_assigned"
    FAILOVER = "failover"
    REPLICAS_MOVED = "replicas_moved"
    DRAIN_MARKED = "drain_marked"
    DRAIN_CLEARED = "drain_cleared"
    SERVER_LEFT = "server_left"


class DeathCause(enum.Enum):
    """Why a server was declared dead."""

    SILENCE = "silence"
    """No heartbeat within the failure detector's bound."""
    RESTARTED = "restarted"
    """It announced a new incarnation: the old process and its memory are gone."""
    LEFT = "left"
    """Its last heartbeat said it left: its drain finished and its process stopped (no
    failover: the map gave it no role and none of its handoffs ran)."""


class HoldEnded(enum.Enum):
    """What answered held MAP_REQUESTs."""

    MOVED = "moved"
    """A committed version moved a session they presented, or changed servers (a failover)."""
    SERVER_HEARD = "server_heard"
    """A server the manager could not reach was heard from again."""
    DEADLINE = "deadline"
    """`map_request_hold_ms` passed."""
    MAP_LOADED = "map_loaded"
    """The manager loaded its map."""


class HandoffOutcome(enum.Enum):
    """How a handoff that did not complete ended."""

    FAILED_OVER = "failed_over"
    """The parts went through failover (a participant aborted, died or fell silent): both sides
    are fenced and the longer log keeps the parts."""
    CANCELLED = "cancelled"
    """The override was never committed; the parts never left the source."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MapLoaded:
    """The manager loaded the map from the store (start-up or after a rejected commit)."""

    map_version: int
    """The loaded version."""
    servers: int
    """Servers the map lists."""
    parts: int
    """Parts the map places."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MapCommitted:
    """The store accepted a map change; the new version is published to every live server."""

    map_version: int
    """The new version."""
    base_version: int
    """The version the change applied to."""
    change: MapChange
    """What kind of change."""
    parts: tuple[PartRef, ...]
    """The parts whose placement changed (empty for membership-only changes)."""
    servers: tuple[str, ...]
    """The servers the change is about (joined, removed, drained, source and target, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MapCommitRejected:
    """The store refused a change (its base version is stale): the map is reloaded, plans redone."""

    base_version: int
    """The version the refused change applied to."""
    change: MapChange
    """What the change was."""
    detail: str
    """The store's explanation."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerJoined:
    """A server's join is committed: it is a member and may receive parts."""

    server_id: str
    """The server."""
    incarnation: int
    """Its incarnation."""
    address: str
    """Where clients reach it."""
    zone: str
    """Its failure domain."""
    map_version: int
    """The version that added it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSuspected:
    """A server has been silent long enough to worry; nothing moves yet."""

    server_id: str
    """The server."""
    incarnation: int
    """Its incarnation."""
    silent_us: int
    """Time since its last heartbeat."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerNotHearing:
    """A server's heartbeats arrive, but for `suspect_timeout_ms` they have not confirmed a map
    version sent to it: the manager's messages to it seem lost (a one-way partition), or it is
    still applying a heavy map. No handoff starts from or onto it meanwhile (nor does a
    rebalance pick it to receive); its moves wait in the queue. Emitted again, with `hearing`
    True, once it confirms."""

    server_id: str
    """The server."""
    hearing: bool
    """False when it stops confirming, True when it confirms again."""
    map_version: int
    """The newest version it reported holding."""
    map_version_sent: int
    """The newest version sent to it."""
    unconfirmed_us: int
    """How long a version sent to it had gone unconfirmed (at the end: how long it did)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServersSilent:
    """Every server in the map fell silent: none is declared dead until one is heard again."""

    servers: tuple[str, ...]
    """The silent servers, sorted."""
    silent_us: int
    """The shortest of their silences."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StallExcused:
    """The manager could not read its connections for a while (a long callback, a paused
    process); the servers' silence during it does not count towards suspicion or death."""

    stalled_us: int
    """How long it could not read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerDeclaredDead:
    """A server is declared dead: its parts fail over."""

    server_id: str
    """The server."""
    incarnation: int
    """The incarnation that died."""
    cause: DeathCause
    """Silence or restart."""
    silent_us: int
    """Time since its last heartbeat (0 for a restart)."""
    primary_parts: int
    """Parts it was primary for, which now fail over."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffStarted:
    """Handoff step 2 is done: the override is committed and HandoffAssigned sent to both sides."""

    handoff_id: int
    """The handoff."""
    reason: ReasonCode
    """Why the parts move."""
    parts: tuple[PartRef, ...]
    """The parts moving."""
    source: str
    """The server giving them up."""
    target: str
    """The server taking them."""
    map_version: int
    """The version that made the target primary."""
    planned_us: int
    """When the manager picked the target (step 2 started)."""
    assigned_us: int
    """When the override was committed and the participants told."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffCompleted:
    """The handoff is done: the source reported the end of its backup period, or the target
    reported and the source then died or stayed silent."""

    handoff_id: int
    """The handoff."""
    reason: ReasonCode
    """Why the parts moved."""
    parts: tuple[PartRef, ...]
    """The parts moved."""
    source: str
    """The server that gave them up."""
    target: str
    """The server that took them."""
    map_version: int
    """The version that made the target primary."""
    reported_by: str
    """The participant whose report ended it (the target when the source died or stayed silent)."""
    commit_us: int
    """Time from picking the target to the committed override."""
    duration_us: int
    """Time from picking the target to the end (the source's backup period included)."""
    target_us: int | None = None
    """Time from picking the target to the target's report (step 3 done), if it came."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandoffAborted:
    """A handoff ended without completing."""

    handoff_id: int
    """The handoff."""
    reason: ReasonCode
    """Why the parts were to move."""
    parts: tuple[PartRef, ...]
    """The parts concerned."""
    source: str
    """The source."""
    target: str
    """The target."""
    outcome: HandoffOutcome
    """Stayed at the source, failed over, or never assigned."""
    cause: str
    """What went wrong, for the audit trail."""
    map_version: int
    """The version the outcome is in effect at (the revert's, or the last known)."""
    duration_us: int
    """Time from picking the target to this outcome."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MovesDropped:
    """Queued part moves the manager gave up on before starting a handoff."""

    parts: tuple[PartRef, ...]
    """The parts that stay where they are."""
    source: str
    """Their primary."""
    reason: ReasonCode
    """Why they were to move."""
    cause: str
    """Why they no longer will (no target in time, not primary there anymore, queue full, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaPosition:
    """How far one replica was on a part when a failover fenced it."""

    server_id: str
    """The replica."""
    applied_seq: int
    """Highest applied log sequence number it reported (-1 when it did not answer)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartPromoted:
    """The failover decision for one part."""

    ref: PartRef
    """The part."""
    previous_primary: str
    """The primary that died or fell silent."""
    primary: str
    """The replica promoted."""
    applied_seq: int
    """Its position (the highest reported)."""
    positions: tuple[ReplicaPosition, ...]
    """Every candidate's position, sorted by server id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverStarted:
    """A failover fenced the replicas of a dead (or silent) primary's parts and awaits positions."""

    failover_id: int
    """The failover."""
    servers: tuple[str, ...]
    """The servers whose parts fail over."""
    parts: int
    """How many parts."""
    fence_version: int
    """The map version the replicas fence at (FailoverPrepared.map_version)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverAbandoned:
    """A failover's promotion could not be built, attempt after attempt: the dead servers'
    parts stay placed on them (their clients' requests fail) until an operator acts."""

    failover_id: int
    """The last attempt."""
    servers: tuple[str, ...]
    """The dead servers, sorted."""
    parts: int
    """Parts it would have promoted."""
    cause: str
    """Why the last attempt could not be built."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FailoverCompleted:
    """Promotions committed: the parts have live primaries again."""

    failover_id: int
    """The failover."""
    servers: tuple[str, ...]
    """The servers whose parts failed over."""
    map_version: int
    """The version with the promotions."""
    promotions: tuple[PartPromoted, ...]
    """One decision per part saved."""
    replicas_added: int
    """Replica roles assigned to restore `replica_count`."""
    parts_without_replica: int
    """Parts it left with no replica (`PartsUnreplicated`)."""
    positions_us: int
    """Time spent collecting positions."""
    duration_us: int
    """Time from the start of the failover to the committed map."""
    handoff_sources: tuple[str, ...] = ()
    """The live servers of the handoffs that fell back to it (aborted, or silent past their
    deadline: their sources; for parts a handoff left unsettled, the server that reported
    them), sorted. A failover with no dead server is always such a fallback."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartsMovedImplicitly:
    """A committed version moved live primaries that no operation of it named: bounded loads
    pushed them along their walk (a join or a readmission lowers every server's bound; new
    parts, a session opened, fill a server at its bound) and `stabilize` could not pin them all
    back. Their old and new primaries hand them over by
    themselves (an implicit handoff, reason PART_MOVED); without this event no log line named
    the moves, and a readmitted server got primaries back unannounced."""

    map_version: int
    """The version that moved them."""
    change: MapChange
    """The change it committed."""
    servers: tuple[str, ...]
    """The servers the change is about (the joining one, ...)."""
    count: int
    """How many parts moved."""
    parts: tuple[PartRef, ...]
    """The first `MOVED_IMPLICITLY_NAMED_MAX` of them."""


MOVED_IMPLICITLY_NAMED_MAX = 64
"""Most parts a `PartsMovedImplicitly` names (its count says how many moved)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartsUnreplicated:
    """A failover left parts with no replica (promoted ones, and ones whose primary survived but
    whose replica was a dead server): nothing survived beside their primary and no
    server may take a new role (every other one is draining or dead). A `replicated` part
    acknowledges no write until a replica holds it, so its writes wait (and time out at the
    clients) until a server joins or one is undrained, which tops the parts up."""

    failover_id: int
    """The failover."""
    parts: int
    """Parts left with no replica."""
    servers: tuple[str, ...]
    """The servers whose parts failed over."""
    draining: tuple[str, ...]
    """Live servers that could take the replicas once undrained."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartsLost:
    """Parts whose primary and every replica are gone were lost in a failover. They are
    removed from the map with every other part of their sessions, which end: each client
    connection that proved one of them is told CLOSE_SESSION at once, and one that asks later
    is told so then, as after a close."""

    parts: tuple[PartRef, ...]
    """The parts lost."""
    servers: tuple[str, ...]
    """The dead servers that held them."""
    map_version: int
    """The version that removed them."""
    sessions: tuple[bytes, ...] = ()
    """The sessions of `parts`, ended."""
    parts_ended: int = 0
    """The other parts of those sessions, removed with them though a live server held them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartsReset:
    """A failover promoted, for these parts, a holder with none of their history (position 0)
    while their last primary had reported some: their state starts over from the initial state,
    and the writes they had are gone. It takes a second failure before a new replica caught up
    (a server that joined, or came back, and had not yet installed its snapshot), or an `async`
    part whose writes had not shipped to its replicas yet (the lag `async` may lose): the
    manager cannot tell the two apart, so it promotes (the part keeps serving) and says so."""

    parts: tuple[PartRef, ...]
    """The parts reset."""
    servers: tuple[str, ...]
    """The dead servers the failover was for."""
    map_version: int
    """The version of the promotion."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLeaving:
    """A server is stopping (its heartbeats say `leaving`: SIGTERM) and asked to be drained
    first; emitted at the first such heartbeat of each incarnation. Its drain then reports
    through `DrainProgressed` like an operator's."""

    server_id: str
    """The server."""
    incarnation: int
    """Its incarnation."""
    drain_started: bool
    """Whether its drain started now (False: already draining, not an ACTIVE server of the
    map, or the commit queue full, when the next leaving heartbeat tries again)."""
    roles: int
    """Roles (primary and replica) the map gave it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainProgressed:
    """A drain moved more of a server's roles away (for a progress bar)."""

    server_id: str
    """The server being drained."""
    parts_moved: int
    """Roles moved away so far (primary and replica)."""
    parts_total: int
    """Roles it held when the drain started (plus any that arrived since)."""
    finished: bool
    """True once the server holds nothing."""
    parts_waiting: int = 0
    """Roles that stay for want of another server: primaries when no other server is ACTIVE
    and alive, and replica roles that are their part's last replica with no other server to
    take them. They move once a server joins or is undrained."""
    primaries_left: int = 0
    """Parts the server still leads (their primary role): 0 once it serves no call, whatever
    replica roles wait. A primary handed off leaves a replica role behind on two servers, so
    `parts_moved` alone does not show it."""
    replicas_behind: int = 0
    """Replica roles kept because no other replica of the part reported as far as this
    server's copy (one installing its copy, or cut off from the part's primary while this one
    took the writes): moving them would leave writes on the primary alone. They move once
    another replica catches up; a drain held by them for long points at a replica that does
    not hear its primary."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicasRebalanced:
    """The manager's periodic check found the servers' replica roles uneven (the primaries
    even) and committed a version that moves some: each from a server above its share to one
    below, the part keeping its primary and another live replica meanwhile
    (`ManagerConfig.rebalance_interval_ms`)."""

    roles: int
    """Replica roles moved."""
    tolerance: float
    """The check's `rebalance_tolerance`: some server was further than this from its share."""
    map_version: int
    """The version that moved them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RebalanceQueued:
    """The manager's periodic check found the servers' primaries uneven and queued planned
    handoffs (reason REBALANCE) to even them out (`ManagerConfig.rebalance_interval_ms`)."""

    parts: int
    """Parts queued."""
    tolerance: float
    """The check's `rebalance_tolerance`: some server was further than this from its share."""
    map_version: int
    """The map version the rebalance was computed on."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskFlagged:
    """The risk policy decided to move parts off a server; logged with its inputs."""

    server_id: str
    """The server at risk."""
    reason: ReasonCode
    """OVERLOAD, PREDICTED_FAILURE, ..."""
    parts: int
    """Parts queued to move."""
    load: LoadReport
    """The load report that triggered the decision."""
    detail: str
    """The policy's explanation (which threshold, which value)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskAssessed:
    """A risk policy's decision about one server, logged with the risk and what drove it.

    Emitted when a server's alarm state changes, whenever the decision calls for an action
    (acted on or not: shadow mode and holdout log it too), and when the rule flags a server.
    The audit log and the metrics read these; a quiet server produces none.
    """

    server_id: str
    """The server assessed."""
    risk: float
    """Probability of an SLO breach within (now + L, now + H]; 1.0 for a rule flag."""
    calibrated: bool
    """Whether the probability comes from a calibrator that has learned enough labels (False
    while the rule stands in for a cold predictor)."""
    model: str
    """What produced it: a predictor head (`logistic`, `rule`, `tree`) or `threshold`."""
    level: str
    """Where the risk fell among the thresholds (`forehand.predict.RiskLevel` values, or
    `threshold` for a rule flag)."""
    state: str
    """The server's alarm state after the decision (`forehand.predict.AlarmState` values)."""
    action: str
    """`none`, `stop_placement`, `drain` or `move_now` (`forehand.predict.Action` values)."""
    acted: bool
    """Whether the manager carries the action out (False in shadow mode and holdout)."""
    shadow: bool
    """Decided in shadow mode."""
    holdout: bool
    """Part of an alarm episode held out from acting, so precision stays measurable."""
    parts_fraction: float
    """Share of the server's primaries this decision moves (0.0 when it moves none)."""
    top_features: tuple[tuple[str, float], ...]
    """The features that pushed the risk up most, largest first: (name, value at the newest
    sample)."""
    now_us: int
    """When the decision was taken."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRegistered:
    """A new session's parts are committed to the map and the client was answered."""

    session_id: bytes
    """The session (16 bytes)."""
    parts: tuple[str, ...]
    """Its part names."""
    client: str
    """The client node that opened it."""
    map_version: int
    """The version that placed its parts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionsExpired:
    """Sessions no credential was issued for in `session_expiry_ms` are being closed (one
    sweep batch: at most `session_expiry_batch`)."""

    session_ids: tuple[bytes, ...]
    """The sessions (16 bytes each)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerRefused:
    """A peer broke the protocol: it got an ERROR frame and its connection is being closed."""

    peer: str
    """The offender (a server id, or a client connection's node id)."""
    error_code: int
    """The `ErrorCode` sent."""
    reason: str
    """Why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOpenRefused:
    """An OPEN_SESSION was answered OPEN_SESSION_REFUSED, nothing committed: it named a part no
    server's app declares (such a session's calls could only fail, and its parts, held by no
    server, would turn every handoff they were moved in into a failover), or the map is full
    (`map_parts_max`), or, for a while, the commit queue is full or no server can take the
    parts (`retry_after_ms` > 0)."""

    client: str
    """The client connection's node id."""
    parts: tuple[str, ...]
    """The parts it asked for."""
    reason: str
    """What the client was told."""
    cause: str = "undeclared_parts"
    """`undeclared_parts`, `map_full`, `client_full` (the connection holds
    `client_sessions_max` sessions), `queue_full`, `unplaceable` (the parts could not be
    placed: no server ACTIVE) or `origin_rate` (its origin opens faster than
    `open_rate_per_origin`)."""
    retry_after_ms: int = 0
    """0: the refusal stands; otherwise the client may send the open again after this long."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MapRequestsAnswered:
    """Held MAP_REQUESTs were answered (one event for all that one cause answered at once)."""

    requests: int
    """How many."""
    why: HoldEnded
    """What answered them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialRefused:
    """A session credential presented in a client's HELLO did not open (forged, expired, under a
    retired key, or for another session); the client does not get that session's rights."""

    client: str
    """The client connection's node id."""
    session_id: bytes
    """The session the credential claimed (as the client named it)."""
    reason: int
    """A `ResumeRejectReason` value."""
    detail: str
    """Why, for logs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CredentialsPaced:
    """A client's HELLO or MAP_REQUEST presented more session credentials than its origin's
    pace allows (`credential_rate_per_origin`): those left over were not checked, and their
    sessions not bound; the client presents them again later."""

    client: str
    """The client connection's node id."""
    origin: str
    """Its origin (an IP address, an IPv6 /64)."""
    presented: int
    """Credentials of sessions the connection had not proved yet."""
    checked: int
    """Of those, how many the pace let the manager check."""


ManagerEvent = (
    MapLoaded
    | MapCommitted
    | MapCommitRejected
    | ServerJoined
    | ServerSuspected
    | ServerNotHearing
    | ServersSilent
    | StallExcused
    | ServerDeclaredDead
    | HandoffStarted
    | HandoffCompleted
    | HandoffAborted
    | MovesDropped
    | FailoverStarted
    | FailoverAbandoned
    | FailoverCompleted
    | PartsLost
    | PartsReset
    | PartsMovedImplicitly
    | PartsUnreplicated
    | ServerLeaving
    | DrainProgressed
    | RebalanceQueued
    | ReplicasRebalanced
    | RiskFlagged
    | RiskAssessed
    | SessionRegistered
    | SessionOpenRefused
    | SessionsExpired
    | PeerRefused
    | CredentialRefused
    | CredentialsPaced
    | MapRequestsAnswered
)
"""Any event the manager emits."""
