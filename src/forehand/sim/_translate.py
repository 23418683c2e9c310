"""From the real cores' events to the observation contract, plus what a cluster run counts.

The server, client and manager cores each emit their own events; `CoreTranslator` maps them onto
`forehand.sim.observations` so the generic checkers can judge a run of the real cores. Two joins
happen here:

* A RESPONSE frame carries no log index, so the client's `ResponseReceived` (which has the
  per-part `issue_sequence`) is joined with the servers' client-facing `WriteAcknowledged` of the
  same client and request id, from the server the answer arrived from, at the same map version.
* Only client-facing acknowledgements count: a target answering a forwarding source is not an
  acknowledgement the client saw, the source's relay is.

Rare paths of all three cores, and the manager's notable outcomes (handoffs aborted, failovers,
parts lost, ...), become `RarePathReached` observations, which the simulator counts per run.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from forehand.core import NodeId
from forehand.core import client_events as ce
from forehand.core import manager_events as me
from forehand.core import server_events as se
from forehand.core.messages import PartRef
from forehand.placement import format_session_id
from forehand.sim._checkers import InvariantViolated
from forehand.sim.observations import (
    ClientResponseObserved,
    Durability,
    InstallCause,
    MapVersionObserved,
    Observation,
    PartKey,
    PrimaryAcceptedWrite,
    PrimaryInstalled,
    RarePathReached,
    ReplicaDiverged,
    RequestExecuted,
    SessionExpired,
    SessionOpened,
    WriteAcknowledged,
)
from forehand.wire import ResponseStatus

__all__ = ["ClusterStats", "CoreTranslator", "SessionDirectory"]

_INSTALL_CAUSES = {
    se.InstallCause.INITIAL: InstallCause.INITIAL,
    se.InstallCause.HANDOFF: InstallCause.HANDOFF,
    se.InstallCause.FAILOVER: InstallCause.FAILOVER,
    # A reverted handoff gives the part back to its source: planned, so nothing may be lost.
    se.InstallCause.REINSTATED: InstallCause.HANDOFF,
}
_DURABILITIES = {"async": Durability.ASYNC, "replicated": Durability.REPLICATED}

Acknowledgement = tuple[NodeId, int, int]
"""(answering node, map version, log index) of one client-facing write acknowledgement."""


class SessionDirectory(Protocol):
    """What the translator tells the workload adapter about sessions and requests."""

    def session_established(self, client: NodeId, request_id: int, session_id: bytes) -> None:
        """A session the adapter opened is open."""
        ...

    def session_open_failed(self, client: NodeId, request_id: int) -> None:
        """A session open the adapter sent failed; it will open again."""
        ...

    def is_write(self, client: NodeId, request_id: int) -> bool | None:
        """Whether the request was a write (None when the adapter did not issue it)."""
        ...

    def request_failed(self, client: NodeId, part: str, request_id: int) -> None:
        """The client gave up on a request; the workload moves on."""
        ...

    def session_closed(self, client: NodeId, session_id: bytes) -> None:
        """A peer (the manager, a server) closed a session of the client; its user stops."""
        ...


@dataclass(slots=True)
class ClusterStats:
    """What a cluster run counted, for scenario tests and reports."""

    responses: int = 0
    """Final answers the clients received."""
    error_responses: dict[str, int] = field(default_factory=dict)
    """Final answers with a status other than OK, per status name."""
    failed_requests: list[ce.RequestFailed] = field(default_factory=list)
    """Requests the clients gave up on."""
    executions: dict[tuple[PartKey, int], int] = field(default_factory=dict)
    """Executions of each write (part, request id) by any primary, surviving or not."""
    handoffs_started: list[me.HandoffStarted] = field(default_factory=list)
    """Handoffs the manager assigned."""
    handoffs_completed: list[me.HandoffCompleted] = field(default_factory=list)
    """Handoffs a participant reported done."""
    handoffs_aborted: list[me.HandoffAborted] = field(default_factory=list)
    """Handoffs that ended otherwise."""
    failovers: list[me.FailoverCompleted] = field(default_factory=list)
    """Failovers the manager committed."""
    drains_finished: list[str] = field(default_factory=list)
    """Servers whose drain finished."""
    handoffs_followed: int = 0
    """HANDOFF frames clients followed to RESUME_OK."""

    def duplicate_executions(self) -> int:
        """Writes executed more than once, counted over every primary (no failover forgives)."""
        return sum(count - 1 for count in self.executions.values() if count > 1)


Hook = Callable[[NodeId, Any], None]


class CoreTranslator:
    """The `Translator` of a cluster of real cores; callable as `translate(node_id, event)`."""

    def __init__(self, directory: SessionDirectory, count: Callable[[str], None]) -> None:
        self.stats = ClusterStats()
        """Counts of the run so far."""
        self._directory = directory
        self._count = count
        self._keys: dict[PartRef, PartKey] = {}
        self._acks: dict[tuple[NodeId, int], list[Acknowledgement]] = {}
        self._hooks: dict[type, list[Hook]] = {}
        self._producers: dict[type, list[Callable[[NodeId, Any], Iterable[Observation]]]] = {}
        self._handlers: dict[type, Callable[[NodeId, Any], Iterable[Observation]]] = {
            se.RequestExecuted: self._executed,
            se.PrimaryAcceptedWrite: self._accepted,
            se.WriteAcknowledged: self._acknowledged,
            se.PrimaryInstalled: self._installed,
            se.MapVersionAdopted: self._map_adopted,
            se.RarePathTaken: self._server_rare,
            se.ReplicaDivergenceDetected: self._diverged,
            ce.ResponseReceived: self._response,
            ce.SessionEstablished: self._session_established,
            ce.SessionOpenFailed: self._session_open_failed,
            ce.RequestFailed: self._request_failed,
            ce.SessionClosed: self._session_closed,
            ce.MapVersionAdopted: self._map_adopted,
            ce.RarePathTaken: self._client_rare,
            me.MapCommitted: self._map_committed,
            me.SessionsExpired: self._sessions_expired,
        }
        for kind, (name, attribute) in _COUNTED.items():
            self._handlers[kind] = self._counter(name, attribute)
        for kind in _MANAGER_OUTCOMES:
            self._handlers[kind] = self._manager_outcome

    def on(self, kind: type, hook: Hook) -> None:
        """Call `hook(node_id, event)` for every core event of type `kind` (scenario triggers)."""
        self._hooks.setdefault(kind, []).append(hook)

    def also(self, kind: type, producer: Callable[[NodeId, Any], Iterable[Observation]]) -> None:
        """Add `producer(node_id, event)`'s observations to those of every core event of type
        `kind` (what a workload adapter reads in the answers to its own calls)."""
        self._producers.setdefault(kind, []).append(producer)

    def __call__(self, node_id: NodeId, event: object) -> Iterable[Observation]:
        """Map one core event onto observations (and run the hooks registered for its type)."""
        if self._hooks:
            for hook in self._hooks.get(type(event), ()):
                hook(node_id, event)
        handler = self._handlers.get(type(event))
        observations = () if handler is None else handler(node_id, event)
        if self._producers:
            producers = self._producers.get(type(event))
            if producers:
                extra = [item for produce in producers for item in produce(node_id, event)]
                return [*observations, *extra]
        return observations

    def part_key(self, ref: PartRef) -> PartKey:
        """The observation key of a part."""
        key = self._keys.get(ref)
        if key is None:
            key = self._keys[ref] = (format_session_id(ref.session_id), ref.part)
        return key

    # Servers.

    def _executed(self, node_id: NodeId, event: se.RequestExecuted) -> Iterable[Observation]:
        key = self.part_key(event.ref)
        if event.log_index is not None:
            executions = self.stats.executions
            slot = (key, event.request_id)
            executions[slot] = executions.get(slot, 0) + 1
        return (
            RequestExecuted(
                node=node_id,
                part_key=key,
                request_id=event.request_id,
                map_version=event.map_version,
                log_index=event.log_index,
            ),
        )

    def _accepted(self, node_id: NodeId, event: se.PrimaryAcceptedWrite) -> Iterable[Observation]:
        key = self.part_key(event.ref)
        return (PrimaryAcceptedWrite(node=node_id, part_key=key, map_version=event.map_version),)

    def _acknowledged(self, node_id: NodeId, event: se.WriteAcknowledged) -> Iterable[Observation]:
        if not event.client_facing:
            return ()
        acks = self._acks.setdefault((event.client, event.request_id), [])
        acks.append((node_id, event.map_version, event.log_index))
        return (
            WriteAcknowledged(
                node=node_id,
                part_key=self.part_key(event.ref),
                request_id=event.request_id,
                durability=_DURABILITIES[event.durability.value],
                map_version=event.map_version,
                log_index=event.log_index,
            ),
        )

    def _installed(self, node_id: NodeId, event: se.PrimaryInstalled) -> Iterable[Observation]:
        self._count(f"server/primary-installed-{event.cause.value}")
        return (
            PrimaryInstalled(
                node=node_id,
                part_key=self.part_key(event.ref),
                map_version=event.map_version,
                log_index=event.log_index,
                cause=_INSTALL_CAUSES[event.cause],
            ),
        )

    def _map_adopted(self, node_id: NodeId, event: Any) -> Iterable[Observation]:
        return (MapVersionObserved(node=node_id, map_version=event.map_version),)

    def _server_rare(self, node_id: NodeId, event: se.RarePathTaken) -> Iterable[Observation]:
        return (RarePathReached(node=node_id, name=f"server/{event.name}"),)

    def _diverged(
        self, node_id: NodeId, event: se.ReplicaDivergenceDetected
    ) -> Iterable[Observation]:
        return (
            RarePathReached(node=node_id, name=f"server/divergence-{event.detail}"),
            ReplicaDiverged(
                node=node_id,
                part_key=self.part_key(event.ref),
                log_index=event.log_index,
                history=event.detail == "history",
            ),
        )

    # Clients.

    def _response(self, node_id: NodeId, event: ce.ResponseReceived) -> Iterable[Observation]:
        stats = self.stats
        stats.responses += 1
        write = self._directory.is_write(node_id, event.request_id)
        acks = self._acks.pop((node_id, event.request_id), None)
        if event.status is not ResponseStatus.OK:
            name = event.status.name
            stats.error_responses[name] = stats.error_responses.get(name, 0) + 1
            self._count(f"client/response-{name.lower()}")
            log_index = None
        elif write:
            log_index = _matching_index(acks, event.server, event.map_version)
            if log_index is None:
                raise InvariantViolated(
                    f"client {node_id} got OK for write {event.request_id} on part "
                    f"{event.part!r} from {event.server} at map version {event.map_version}, "
                    f"which no server acknowledged to it (acknowledgements: {acks})",
                    checker="ResponseJoin",
                )
        else:
            log_index = None
        return (
            ClientResponseObserved(
                client=node_id,
                part_key=self.part_key(PartRef(session_id=event.session_id, part=event.part)),
                request_id=event.request_id,
                issue_sequence=event.issue_sequence,
                map_version=event.map_version,
                log_index=log_index,
            ),
        )

    def _session_established(
        self, node_id: NodeId, event: ce.SessionEstablished
    ) -> Iterable[Observation]:
        self._directory.session_established(node_id, event.request_id, event.session_id)
        session_id = format_session_id(event.session_id)
        return (SessionOpened(client=node_id, session_id=session_id),)

    def _session_open_failed(
        self, node_id: NodeId, event: ce.SessionOpenFailed
    ) -> Iterable[Observation]:
        self._directory.session_open_failed(node_id, event.request_id)
        return (RarePathReached(node=node_id, name="client/session-open-failed"),)

    def _request_failed(self, node_id: NodeId, event: ce.RequestFailed) -> Iterable[Observation]:
        self.stats.failed_requests.append(event)
        self._directory.request_failed(node_id, event.part, event.request_id)
        return (RarePathReached(node=node_id, name=f"client/request-failed-{event.why.value}"),)

    def _session_closed(self, node_id: NodeId, event: ce.SessionClosed) -> Iterable[Observation]:
        if event.closed_by is None:
            return ()
        # Closed by a peer: its user stops. Liveness still expects it served unless the manager
        # expired it (`SessionExpired`, whose legitimacy ExpiryChecker judges).
        self._directory.session_closed(node_id, event.session_id)
        return (RarePathReached(node=node_id, name="client/session-closed-by-peer"),)

    def _client_rare(self, node_id: NodeId, event: ce.RarePathTaken) -> Iterable[Observation]:
        return (RarePathReached(node=node_id, name=f"client/{event.name}"),)

    # The manager.

    def _map_committed(self, node_id: NodeId, event: me.MapCommitted) -> Iterable[Observation]:
        observed = MapVersionObserved(node=node_id, map_version=event.map_version)
        if event.change is me.MapChange.SERVER_LEFT:
            # Rare enough to count: a server that left, or dead servers forgotten, out of the map.
            return (observed, RarePathReached(node=node_id, name="manager/server-entry-removed"))
        return (observed,)

    def _sessions_expired(
        self, node_id: NodeId, event: me.SessionsExpired
    ) -> Iterable[Observation]:
        observations: list[Observation] = [
            SessionExpired(session_id=session_id) for session_id in event.session_ids
        ]
        observations.append(RarePathReached(node=node_id, name="manager/sessions-expired"))
        return observations

    def _manager_outcome(self, node_id: NodeId, event: Any) -> Iterable[Observation]:
        stats = self.stats
        if isinstance(event, me.HandoffStarted):
            stats.handoffs_started.append(event)
            name = "handoff-started"
        elif isinstance(event, me.HandoffCompleted):
            stats.handoffs_completed.append(event)
            name = "handoff-completed"
        elif isinstance(event, me.HandoffAborted):
            stats.handoffs_aborted.append(event)
            name = f"handoff-aborted-{event.outcome.value}"
        elif isinstance(event, me.FailoverCompleted):
            stats.failovers.append(event)
            name = "failover-completed"
        else:
            assert isinstance(event, me.DrainProgressed)
            if not event.finished:
                return ()
            stats.drains_finished.append(event.server_id)
            name = "drain-finished"
        return (RarePathReached(node=node_id, name=f"manager/{name}"),)

    def _counter(
        self, name: str, attribute: str | None
    ) -> Callable[[NodeId, Any], Iterable[Observation]]:
        def count(node_id: NodeId, event: Any) -> Iterable[Observation]:
            detail = _detail(event, attribute)
            label = f"{name}-{detail}" if detail else name
            return (RarePathReached(node=node_id, name=label),)

        return count


def _matching_index(
    acks: list[Acknowledgement] | None, server: NodeId, map_version: int
) -> int | None:
    """The log index of the newest acknowledgement from `server` at `map_version`, if any."""
    for node, version, log_index in reversed(acks or ()):
        if node == server and version == map_version:
            return log_index
    return None


def _detail(event: Any, attribute: str | None) -> str:
    """The value of the attribute that splits an event's counter, as text ("" for none)."""
    if attribute is None:
        return ""
    value = getattr(event, attribute)
    return str(value.value) if isinstance(value, enum.Enum) else str(value)


_COUNTED: dict[type, tuple[str, str | None]] = {
    se.HandoffStepMissed: ("server/handoff-step-missed", None),
    se.PartFenced: ("server/part-fenced", "cause"),
    se.StaleEpochRefused: ("server/stale-epoch-refused", "kind"),
    se.SnapshotInstalled: ("server/snapshot-installed", None),
    se.ResumeRejected: ("server/resume-rejected", "reason"),
    se.ProtocolViolationDetected: ("server/protocol-violation", None),
    ce.HandoffFollowed: ("client/handoff-followed", None),
    ce.HandoffAbandoned: ("client/handoff-abandoned", None),
    ce.HandoffIgnored: ("client/handoff-ignored", "why"),
    ce.PartRelocated: ("client/part-relocated", None),
    ce.PartRedirected: ("client/part-redirected", None),
    ce.SessionResumeRejected: ("client/session-resume-rejected", None),
    ce.CredentialRenewed: ("client/credential-renewed", None),
    me.ServerDeclaredDead: ("manager/server-declared-dead", "cause"),
    me.PartsLost: ("manager/parts-lost", None),
    me.RiskFlagged: ("manager/risk-flagged", None),
    me.MovesDropped: ("manager/moves-dropped", None),
    me.RebalanceQueued: ("manager/rebalance-queued", None),
    me.ReplicasRebalanced: ("manager/replicas-rebalanced", None),
    me.MapCommitRejected: ("manager/map-commit-rejected", None),
    me.FailoverStarted: ("manager/failover-started", None),
}
"""Events that only count: the counter's name, and the attribute that splits it (or None)."""

_MANAGER_OUTCOMES: tuple[type, ...] = (
    me.HandoffStarted,
    me.HandoffCompleted,
    me.HandoffAborted,
    me.FailoverCompleted,
    me.DrainProgressed,
)
"""Manager events that count and are kept in `ClusterStats`."""
