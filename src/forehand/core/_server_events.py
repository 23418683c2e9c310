"""Events a `ServerCore` emits through `next_event()`: what happened, for operators and checkers.

The simulator maps these onto its observations (`forehand.sim.observations`): a write's position
is `(map_version, log_index)`, where `map_version` is the epoch the entry was executed under and
`log_index` its sequence number in the part's log.
"""

from __future__ import annotations

import enum

import msgspec

from forehand.core._driver import NodeId
from forehand.core._handoff import HandoffSide
from forehand.core._part import Durability, PartState, PartTrigger
from forehand.core.messages import PartRef

__all__ = [
    "ClientHandedOff",
    "HandoffStepCompleted",
    "HandoffStepMissed",
    "InstallCause",
    "LeaveProgressed",
    "LogEntryApplied",
    "MapVersionAdopted",
    "PartFenced",
    "PartRoleChanged",
    "PrimaryAcceptedWrite",
    "PrimaryInstalled",
    "ProtocolViolationDetected",
    "RarePathTaken",
    "ReplicaDivergenceDetected",
    "ReplicatedWritesStalled",
    "RequestExecuted",
    "RequestForwardedOut",
    "RequestRedirected",
    "RequestRefused",
    "ResumeAccepted",
    "ResumeRejected",
    "ServerEvent",
    "ServerLeft",
    "ServerSuperseded",
    "SnapshotInstalled",
    "StaleEpochRefused",
    "StateNotEncodable",
    "WriteAcknowledged",
]


class InstallCause(enum.Enum):
    """Why this server became a part's primary."""

    INITIAL = "initial"
    """The part's first placement."""
    HANDOFF = "handoff"
    """A planned move: the source's sealed log is applied, nothing is missing."""
    FAILOVER = "failover"
    """A fenced replica promoted after its primary was declared dead."""
    REINSTATED = "reinstated"
    """A handoff source took its part back when the map reverted an aborted handoff."""


class ServerEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Base class of every server event (msgspec Structs: several are built per request).

    Untracked by the garbage collector (`gc=False`, which subclasses inherit): every field holds
    immutable values (numbers, strings, enums, PartRef, tuples of those), so no event can be part
    of a reference cycle, and the collector runs less often under a stream of requests.
    """


class RequestExecuted(ServerEvent, frozen=True, kw_only=True):
    """The primary ran a request through the part's handler."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    request_id: int
    """The client's request id."""
    map_version: int
    """The part's epoch the request ran under."""
    log_index: int | None
    """Its sequence number in the part's log; None for a read-only operation, never logged."""
    status: int
    """The handler's response status."""


class PrimaryAcceptedWrite(ServerEvent, frozen=True, kw_only=True):
    """This server, believing itself primary at `map_version`, appended a write to the log."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    map_version: int
    """The part's epoch: at most one server may accept writes for a part per epoch."""
    log_index: int
    """The entry's sequence number."""
    request_id: int
    """The client's request id."""


class WriteAcknowledged(ServerEvent, frozen=True, kw_only=True):
    """A response to a logged write left this server (to the client, or to the forwarder)."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    request_id: int
    """The client's request id."""
    durability: Durability
    """The part's durability; for `replicated` a replica had acknowledged `log_index`."""
    map_version: int
    """The epoch the entry was executed under."""
    log_index: int
    """The entry's sequence number."""
    client: NodeId
    """The client the answer is for."""
    from_dedup: bool
    """True when a retry was answered from the dedup table instead of executing again."""
    client_facing: bool
    """True when this server's message goes to the client itself (a direct answer, or the last
    relay of a forwarded one); False for the answer a target sends back to a forwarding server.
    Checkers count only client-facing acknowledgements: a relay may still drop an answer."""


class PrimaryInstalled(ServerEvent, frozen=True, kw_only=True):
    """This server became a part's primary."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    map_version: int
    """The epoch it is primary at."""
    log_index: int
    """The last sequence number it holds."""
    cause: InstallCause
    """Why."""


class PartRoleChanged(ServerEvent, frozen=True, kw_only=True):
    """A part's state machine took a transition on this server."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    previous: PartState
    """The state before."""
    state: PartState
    """The state after."""
    trigger: PartTrigger
    """What caused it."""
    epoch: int
    """The part's epoch after the transition."""


class MapVersionAdopted(ServerEvent, frozen=True, kw_only=True):
    """This server now works with shard-map `map_version` (it never goes back)."""

    node: NodeId
    """This server."""
    map_version: int
    """The adopted version."""
    previous_version: int
    """The version held before."""


class LogEntryApplied(ServerEvent, frozen=True, kw_only=True):
    """A replica (or handoff target) applied one log entry by re-running the handler."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    log_index: int
    """The entry's sequence number."""
    map_version: int
    """The epoch the primary executed it under."""
    request_id: int
    """The client's request id."""


class SnapshotInstalled(ServerEvent, frozen=True, kw_only=True):
    """A replica replaced its copy of a part with a snapshot."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    log_index: int
    """The sequence number the snapshot is at."""
    source: NodeId
    """The primary that sent it."""


class ReplicaDivergenceDetected(ServerEvent, frozen=True, kw_only=True):
    """A replica's copy disagrees with its primary's log."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    log_index: int
    """Where the disagreement is."""
    detail: str
    """`result` (re-execution answered differently: a non-deterministic handler) or `history`
    (the logs differ, after a failover that lost entries; the copy is reset)."""


class ServerSuperseded(ServerEvent, frozen=True, kw_only=True):
    """The manager closed this server's connection with SUPERSEDED: a newer incarnation of
    the same server id runs, so this process is a stale duplicate and stops (PROTOCOL.md 6.2)."""

    node: NodeId
    """This server."""
    reason: str
    """The manager's words."""


class LeaveProgressed(ServerEvent, frozen=True, kw_only=True):
    """The drain this leaving server asked for moved on (`ServerCore.leave`): emitted when the
    manager's `DrainReported` counts change."""

    node: NodeId
    """This server."""
    roles_left: int
    """Roles (primary and replica) the map still gives it."""
    primaries_left: int
    """Of them, the parts it still leads."""
    roles_waiting: int
    """Of them, roles no other server can take for now."""


class ServerLeft(ServerEvent, frozen=True, kw_only=True):
    """The leaving server may stop: the manager reports its drain finished (nothing left, no
    handoff of it running), or everything left has had nowhere to go for `LEAVE_STUCK_MS`
    (those roles fail over, or wait, as at any stop). Emitted once."""

    node: NodeId
    """This server."""
    roles_left: int
    """Roles the map still gave it (0 when the drain finished)."""
    primaries_left: int
    """Of them, the parts it still led."""
    failed_over: bool = False
    """The manager declared this server dead while it left (cut off past the failure timeout)
    and failed what it held over, rather than the drain handing it off, and then answered its
    leaving heartbeat finished: the report says so (`DrainReported.failed_over`), or the map
    lists this server dead (a manager before that field)."""


class StaleEpochRefused(ServerEvent, frozen=True, kw_only=True):
    """A request or log shipment from an older epoch than the part's was fenced off."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    peer: NodeId
    """Who sent it."""
    kind: str
    """`request`, `log` or `snapshot`."""
    message_version: int
    """The map version or epoch the message carried."""
    part_epoch: int
    """The part's epoch (or fence) here."""


class PartFenced(ServerEvent, frozen=True, kw_only=True):
    """A part stops accepting entries (and writes) from epochs below `fence_version`."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    fence_version: int
    """The new fence."""
    cause: str
    """`failover_prepared` or `replica_fenced` (a replica told this primary it moved on)."""


class RequestRedirected(ServerEvent, frozen=True, kw_only=True):
    """A request was answered with REDIRECT."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    request_id: int
    """The client's request id."""
    client: NodeId
    """The client."""
    map_version: int
    """The version the REDIRECT names."""


class RequestForwardedOut(ServerEvent, frozen=True, kw_only=True):
    """A handoff source (or backup) forwarded a request to the part's new primary."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    request_id: int
    """The client's request id."""
    target: NodeId
    """Where it went."""
    hops: int
    """Its hop count after this forward."""


class RequestRefused(ServerEvent, frozen=True, kw_only=True):
    """A request was answered with an error status without running."""

    node: NodeId
    """This server."""
    session_id: bytes
    """The session."""
    part: str
    """The part name."""
    request_id: int
    """The client's request id."""
    client: NodeId
    """The client (or the forwarding server)."""
    status: int
    """The status sent: NOT_FOUND, TRY_AGAIN, OVERLOADED, ..."""
    detail: str
    """Why, for logs."""


class HandoffStepCompleted(ServerEvent, frozen=True, kw_only=True):
    """This server finished one step of a handoff."""

    node: NodeId
    """This server."""
    handoff_id: int
    """The handoff."""
    side: HandoffSide
    """Source or target."""
    step: int
    """DESIGN.md numbering: 3 (sealed log delivered or applied), 4 (clients told), 5 (backup)."""
    refs: tuple[PartRef, ...]
    """The parts."""


class HandoffStepMissed(ServerEvent, frozen=True, kw_only=True):
    """A handoff ended without completing: its deadline passed or a newer map superseded it."""

    node: NodeId
    """This server."""
    handoff_id: int
    """The handoff."""
    side: HandoffSide
    """Source or target."""
    refs: tuple[PartRef, ...]
    """The parts."""
    detail: str
    """What was missed."""


class ClientHandedOff(ServerEvent, frozen=True, kw_only=True):
    """A HANDOFF frame went to a client (handoff step 4)."""

    node: NodeId
    """This server."""
    client: NodeId
    """The client."""
    session_id: bytes
    """The session."""
    parts: tuple[str, ...]
    """The parts moving."""
    target: NodeId
    """Where they go."""
    map_version: int
    """The map version placing them there."""
    sequence: int
    """The HANDOFF frame's sequence number."""


class ResumeAccepted(ServerEvent, frozen=True, kw_only=True):
    """A client resumed parts of a session here and is attached to it."""

    node: NodeId
    """This server."""
    client: NodeId
    """The client."""
    session_id: bytes
    """The session."""
    parts: tuple[str, ...]
    """The parts resumed."""
    map_version: int
    """The map version they are served under."""


class ResumeRejected(ServerEvent, frozen=True, kw_only=True):
    """A RESUME was refused, or a HELLO credential that expired was left unbound."""

    node: NodeId
    """This server."""
    client: NodeId
    """The client."""
    session_id: bytes
    """The session it named."""
    reason: int
    """A `ResumeRejectReason` value."""
    detail: str
    """Why, for logs."""


class ProtocolViolationDetected(ServerEvent, frozen=True, kw_only=True):
    """A peer broke the protocol: it got an ERROR frame and its connection is being closed."""

    node: NodeId
    """This server."""
    peer: NodeId
    """The offender."""
    error_code: int
    """The `ErrorCode` sent."""
    reason: str
    """Why."""


class RarePathTaken(ServerEvent, frozen=True, kw_only=True):
    """The server went down a rare path; the simulator counts them to show coverage."""

    node: NodeId
    """This server."""
    name: str
    """A stable name, such as `forward-hops-exceeded` or `map-gap`."""


class ReplicatedWritesStalled(ServerEvent, frozen=True, kw_only=True):
    """Answers to `replicated` writes have waited for a replica's acknowledgement without any
    progress over `REPLICATION_STALL_HEARTBEATS` heartbeat intervals (a primary cut off from its
    replicas while it still reaches the manager and its clients: the writes cannot be
    acknowledged, and their clients time out). Emitted when such a stall starts, and again
    with `parts` 0 once every stalled part has moved on (its answers released or failed)."""

    node: NodeId
    """This server."""
    parts: int
    """Parts whose oldest held answer made no progress (0: the stall is over)."""
    answers: int
    """Answers those parts hold."""
    replicas: tuple[NodeId, ...]
    """Their replicas that still owe an acknowledgement (at most 8 named)."""


class StateNotEncodable(ServerEvent, frozen=True, kw_only=True):
    """A part's state could not be encoded for a snapshot its replica needs: a handler left a
    value msgpack cannot carry (an integer beyond 64 bits, an object of no known type). The
    replica gets nothing until the state encodes again; the snapshot is tried again at the
    replication resend times, backing off."""

    node: NodeId
    """This server."""
    ref: PartRef
    """The part."""
    replica: NodeId
    """The server that needed the snapshot."""
    detail: str
    """The encoder's error."""
