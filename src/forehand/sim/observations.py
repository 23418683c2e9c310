"""The observation contract: what cores report so the simulator's checkers can judge a run.

Cores emit their own events through `next_event()`; a scenario's translator maps them onto these
observations (test cores emit them directly). Checkers read only these types, so the invariants of
the project (one writer per part and map version, no acknowledged write lost on `replicated` parts,
at-most-once execution, monotonic map versions, per-part order, liveness) are stated once, here,
independently of how any core is built.

Positions: a write's position in a part's log is `(map_version, log_index)`, compared
lexicographically. Every change of primary (handoff or failover) comes with a new map version, so
positions grow with time along the part's surviving history even when a failover truncates the log
and indices are reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from forehand.core import NodeId

__all__ = [
    "ClientResponseObserved",
    "Durability",
    "FaultsHealed",
    "InstallCause",
    "MapVersionObserved",
    "NodeCrashed",
    "NodePaused",
    "NodeRestarted",
    "NodeResumed",
    "Observation",
    "Observed",
    "PartKey",
    "PrimaryAcceptedWrite",
    "PrimaryInstalled",
    "RarePathReached",
    "ReplicaDiverged",
    "RequestExecuted",
    "SessionClosed",
    "SessionExpired",
    "SessionOpened",
    "WaitingReadAnswered",
    "WaitingReadFailed",
    "WaitingReadIssued",
    "WriteAcknowledged",
    "WriteVersionSeen",
]

PartKey = tuple[str, str]
"""`(session_id, part_name)`, the session id in its canonical text form."""


class Durability(StrEnum):
    """How a part's writes are acknowledged."""

    REPLICATED = "replicated"
    """Acknowledged only once a replica holds the write: no acknowledged write may be lost."""
    ASYNC = "async"
    """Acknowledged by the primary alone: a failover may lose the replication lag, counted."""


class InstallCause(StrEnum):
    """Why a node became a part's primary."""

    INITIAL = "initial"
    """The part's first placement."""
    HANDOFF = "handoff"
    """A planned move: the source shipped its whole log, so nothing may be lost."""
    FAILOVER = "failover"
    """A replica promoted after its primary was declared dead: `async` writes may be lost."""


class Observation:
    """Base class of everything checkers read; the simulator passes instances through unchanged."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryAcceptedWrite(Observation):
    """A node, acting as a part's primary, accepted a write under a map version."""

    node: NodeId
    """The node that accepted the write."""
    part_key: PartKey
    """The part written."""
    map_version: int
    """The shard-map version under which the node believed it was the primary."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryInstalled(Observation):
    """A node became a part's primary at a map version, holding its log up to `log_index`."""

    node: NodeId
    """The new primary."""
    part_key: PartKey
    """The part."""
    map_version: int
    """The map version that made it primary."""
    log_index: int
    """The index of the last log entry it holds (0 when the log is empty)."""
    cause: InstallCause
    """Why it became primary; only a failover may lose `async` writes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestExecuted(Observation):
    """A primary ran a request's handler (replicas applying the log do not report this)."""

    node: NodeId
    """The node that executed it."""
    part_key: PartKey
    """The part the request addressed."""
    request_id: int
    """The request id; executing a write's id twice on the surviving history is a violation."""
    map_version: int
    """The map version under which it ran."""
    log_index: int | None
    """The log index its change was appended at; None for a read, which is not checked."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteAcknowledged(Observation):
    """A primary told the client that a write succeeded."""

    node: NodeId
    """The primary that answered."""
    part_key: PartKey
    """The part written."""
    request_id: int
    """The request id of the write."""
    durability: Durability
    """The part's durability, which decides whether losing this write is allowed."""
    map_version: int
    """The map version under which the write was appended."""
    log_index: int
    """The log index of the write."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MapVersionObserved(Observation):
    """A node adopted a shard-map version (it must never adopt an older one afterwards)."""

    node: NodeId
    """The node."""
    map_version: int
    """The version it now holds."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientResponseObserved(Observation):
    """A client received the final response to one of its requests on a part."""

    client: NodeId
    """The client node."""
    part_key: PartKey
    """The part the request addressed; its session id is what liveness tracks."""
    request_id: int
    """The request id."""
    issue_sequence: int
    """The client's per-part counter at the time it issued the request (1, 2, 3, ...)."""
    map_version: int
    """The map version of the write's position, as the response reports it."""
    log_index: int | None
    """The write's log index, as the response reports it; None for a read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteVersionSeen(Observation):
    """A client got OK for a write whose answer shows the part's version after it (the
    application's number that no write makes smaller)."""

    client: NodeId
    """The client node."""
    part_key: PartKey
    """The part written."""
    request_id: int
    """The write's request id."""
    version: int
    """The part's version the answer shows."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitingReadIssued(Observation):
    """A client called a waiting read: it asks for the part's version once it reaches
    `wanted`."""

    client: NodeId
    """The client node."""
    part_key: PartKey
    """The part read."""
    request_id: int
    """The read's request id."""
    wanted: int
    """The version the handler waits for."""
    timeout_us: int
    """The call's own timeout (`timeout_ms`), longer than the op's `wait_ms`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitingReadAnswered(Observation):
    """A client received the final answer to a waiting read."""

    client: NodeId
    """The client node."""
    part_key: PartKey
    """The part read."""
    request_id: int
    """The read's request id."""
    status: str
    """The response status' name (`OK` for a version or "nothing yet")."""
    version: int | None
    """The version answered; None for "nothing yet" (or a status other than OK)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitingReadFailed(Observation):
    """A client gave up on a waiting read (`RequestFailed`)."""

    client: NodeId
    """The client node."""
    part_key: PartKey
    """The part read."""
    request_id: int
    """The read's request id."""
    why: str
    """Why, as the client said (`timeout`, `session-closed`, ...)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOpened(Observation):
    """A client opened a session; from now on liveness expects it to be served."""

    client: NodeId
    """The client node."""
    session_id: str
    """The session id in canonical text form."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed(Observation):
    """A client closed a session on purpose; liveness stops expecting service."""

    client: NodeId
    """The client node."""
    session_id: str
    """The session id in canonical text form."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionExpired(Observation):
    """The manager closed a session no credential was issued for in its expiry."""

    session_id: bytes
    """The session (16 bytes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RarePathReached(Observation):
    """A core went down a rare path; the simulator counts these so a campaign shows coverage."""

    node: NodeId
    """The node that reached it."""
    name: str
    """A stable name for the path, such as `forward-to-new-primary`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaDiverged(Observation):
    """A replica applying its primary's log found that its copy disagrees with the primary's."""

    node: NodeId
    """The replica."""
    part_key: PartKey
    """The part."""
    log_index: int
    """Where the disagreement is."""
    history: bool
    """True when the logs differ (allowed after a failover dropped entries: the copy resets);
    False when re-running an entry answered differently, which means the replica's state was
    not the primary's: a violation."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeCrashed(Observation):
    """The simulator crashed a node; its core and in-flight state are gone."""

    node: NodeId
    """The crashed node."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRestarted(Observation):
    """The simulator restarted a crashed node with a fresh core."""

    node: NodeId
    """The restarted node."""
    incarnation: int
    """How many times this node has been started before this one (0 for the first start)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodePaused(Observation):
    """The simulator paused a node (like SIGSTOP): it handles nothing until resumed."""

    node: NodeId
    """The paused node."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeResumed(Observation):
    """The simulator resumed a paused node; queued inputs are delivered in order."""

    node: NodeId
    """The resumed node."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultsHealed(Observation):
    """Every scheduled fault is over: links, loads and pauses are back to healthy."""

    heal_us: int
    """The simulated time of healing; liveness is judged from here."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """One observation as checkers receive it, with where and when it happened."""

    index: int
    """The index of the simulated event during which it was observed."""
    time_us: int
    """Simulated time."""
    node: NodeId
    """The node whose core emitted it, or the node a simulator observation is about."""
    observation: Observation
    """The observation itself."""
