"""Invariant checkers: judged after every observation, and liveness at the end of a run.

Each checker reads only the observation contract (`forehand.sim.observations`) and raises
`InvariantViolated` with a message that names the part, request or node at fault. The simulator
catches it, records the seed and the event index, and stops the run so it can be replayed.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NoReturn, Protocol

from forehand.core import NodeId
from forehand.errors import ConfigError
from forehand.placement import format_session_id
from forehand.sim.observations import (
    ClientResponseObserved,
    Durability,
    InstallCause,
    MapVersionObserved,
    NodeCrashed,
    NodeRestarted,
    Observation,
    Observed,
    PartKey,
    PrimaryAcceptedWrite,
    PrimaryInstalled,
    RequestExecuted,
    SessionClosed,
    SessionExpired,
    SessionOpened,
    WaitingReadAnswered,
    WaitingReadFailed,
    WaitingReadIssued,
    WriteAcknowledged,
    WriteVersionSeen,
)

if TYPE_CHECKING:
    from forehand.sim._simulator import Simulator

__all__ = [
    "AcknowledgedWritesChecker",
    "AtMostOnceChecker",
    "Checker",
    "ClientOrderChecker",
    "InvariantViolated",
    "LivenessChecker",
    "MonotonicMapVersionChecker",
    "SingleWriterChecker",
    "WaitingReadChecker",
    "WriteLost",
    "default_checkers",
]


class InvariantViolated(Exception):  # noqa: N818 (the name states the finding)
    """A checker found a run that breaks one of the project's guarantees."""

    def __init__(self, message: str, *, checker: str = "") -> None:
        super().__init__(message)
        self.checker = checker
        """The name of the checker that found the violation."""


class Checker(Protocol):
    """What the simulator calls: once per matching observation, and once at the end."""

    @property
    def observes(self) -> tuple[type[Observation], ...]:
        """Observation types this checker wants; an empty tuple means all of them."""
        ...

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Judge one observation; raise `InvariantViolated` on a violation."""
        ...

    def at_end(self, sim: Simulator) -> None:
        """Judge the whole run once it is over (liveness); raise `InvariantViolated`."""
        ...


Position = tuple[int, int]
"""A write's place in its part's history: `(map_version, log_index)`."""


class SingleWriterChecker:
    """At most one node accepts writes for a part under any one map version."""

    observes: tuple[type[Observation], ...] = (PrimaryAcceptedWrite,)

    def __init__(self) -> None:
        self._writers: dict[tuple[PartKey, int], NodeId] = {}

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Record the writer of (part, version); a second, different writer is a violation."""
        observation = event.observation
        assert isinstance(observation, PrimaryAcceptedWrite)
        key = (observation.part_key, observation.map_version)
        writer = self._writers.setdefault(key, observation.node)
        if writer != observation.node:
            raise InvariantViolated(
                f"two primaries accepted writes for part {observation.part_key} at map version "
                f"{observation.map_version}: {writer} and {observation.node}",
                checker=type(self).__name__,
            )

    def at_end(self, sim: Simulator) -> None:
        """Nothing to judge at the end."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteLost:
    """An acknowledged write that the part's surviving history no longer holds."""

    part_key: PartKey
    """The part."""
    request_id: int
    """The lost write's request id."""
    durability: Durability
    """Its durability; only `async` losses after a failover are allowed."""
    position: Position
    """Where it had been acknowledged: `(map_version, log_index)`."""
    superseded_by: Position
    """The install that dropped it: `(map_version, log_index held by the new primary)`."""


@dataclass(slots=True)
class _AckedWrite:
    log_index: int
    map_version: int
    request_id: int
    durability: Durability


@dataclass(slots=True)
class _PartHistory:
    installed_version: int = -1
    installed_index: int = 0
    installed_cause: InstallCause = InstallCause.INITIAL
    installs: list[tuple[int, int, InstallCause]] = field(default_factory=list)
    """Every install so far, as (map_version, log_index, cause), versions increasing."""

    def superseding(self, map_version: int) -> tuple[int, int, InstallCause]:
        """The first install above `map_version`: the one that replaced that epoch's primary."""
        slot = bisect_right(self.installs, (map_version, _INDEX_MAX))
        return self.installs[slot]


_INDEX_MAX = 1 << 62
"""Above every log index, for searching installs by version."""


class AcknowledgedWritesChecker:
    """No acknowledged write is lost on `replicated` parts, nor on any part by a handoff.

    A write is lost when a new primary is installed at a higher map version holding a shorter log
    than the write's index. Losses of `async` writes to a failover are allowed and counted
    (counter `async-write-lost`, list `lost`); anything else is a violation.
    """

    observes: tuple[type[Observation], ...] = (WriteAcknowledged, PrimaryInstalled)

    def __init__(self) -> None:
        self._histories: dict[PartKey, _PartHistory] = {}
        self._acked: dict[PartKey, list[_AckedWrite]] = {}
        self.lost: list[WriteLost] = []
        """Every allowed loss (async writes dropped by a failover), in the order found."""

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Track acknowledgements; on each install, find the acknowledged writes it dropped."""
        observation = event.observation
        if isinstance(observation, WriteAcknowledged):
            self._acknowledged(sim, observation)
        else:
            assert isinstance(observation, PrimaryInstalled)
            self._installed(sim, observation)

    def _acknowledged(self, sim: Simulator, observation: WriteAcknowledged) -> None:
        history = self._histories.setdefault(observation.part_key, _PartHistory())
        write = _AckedWrite(
            log_index=observation.log_index,
            map_version=observation.map_version,
            request_id=observation.request_id,
            durability=observation.durability,
        )
        superseded = observation.map_version < history.installed_version
        if superseded:
            # A stale primary acknowledged a write that its successor never received; the
            # successor is the first primary installed after the write's epoch (later installs,
            # a handoff say, do not decide whether that loss was allowed).
            version, index, cause = history.superseding(observation.map_version)
            if observation.log_index > index:
                self._lose(sim, observation.part_key, write, (version, index), cause)
                return
        self._acked.setdefault(observation.part_key, []).append(write)

    def _installed(self, sim: Simulator, observation: PrimaryInstalled) -> None:
        history = self._histories.setdefault(observation.part_key, _PartHistory())
        if observation.map_version <= history.installed_version:
            return
        history.installed_version = observation.map_version
        history.installed_index = observation.log_index
        history.installed_cause = observation.cause
        history.installs.append((observation.map_version, observation.log_index, observation.cause))
        acked = self._acked.get(observation.part_key)
        if not acked:
            return
        kept: list[_AckedWrite] = []
        for write in acked:
            dropped = write.map_version < observation.map_version
            if dropped and write.log_index > observation.log_index:
                superseded_by = (observation.map_version, observation.log_index)
                self._lose(sim, observation.part_key, write, superseded_by, observation.cause)
            else:
                kept.append(write)
        self._acked[observation.part_key] = kept

    def _lose(
        self,
        sim: Simulator,
        part_key: PartKey,
        write: _AckedWrite,
        superseded_by: Position,
        cause: InstallCause,
    ) -> None:
        loss = WriteLost(
            part_key=part_key,
            request_id=write.request_id,
            durability=write.durability,
            position=(write.map_version, write.log_index),
            superseded_by=superseded_by,
        )
        allowed = write.durability is Durability.ASYNC and cause is InstallCause.FAILOVER
        if not allowed:
            raise InvariantViolated(
                f"acknowledged {write.durability.value} write {write.request_id} of part "
                f"{part_key} at position {loss.position} was lost by the "
                f"{cause.value} to {loss.superseded_by}",
                checker=type(self).__name__,
            )
        self.lost.append(loss)
        sim.count("async-write-lost")

    def at_end(self, sim: Simulator) -> None:
        """Nothing more to judge: every loss was judged when it happened."""


class AtMostOnceChecker:
    """Each write's request id is executed at most once on its part's surviving history.

    An execution that a later install drops (its log index is beyond what the new primary holds)
    no longer counts, so a client may retry it; nor does one at an older version than the
    newest install at a position a newer version already wrote (a primary replaced while it was
    cut off, executing a request that reached it late on a history that position replaces).
    Reads (`log_index is None`) are not checked.
    """

    observes: tuple[type[Observation], ...] = (RequestExecuted, PrimaryInstalled)

    def __init__(self) -> None:
        self._executed: dict[PartKey, dict[int, tuple[int, int, NodeId]]] = {}
        self._installed: dict[PartKey, tuple[int, int]] = {}
        self._written: dict[PartKey, dict[int, int]] = {}
        """Per part, the newest version a counted execution wrote at each log index."""

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Record executions; an id executed twice on the surviving history is a violation."""
        observation = event.observation
        if isinstance(observation, PrimaryInstalled):
            self._install(observation)
            return
        assert isinstance(observation, RequestExecuted)
        if observation.log_index is None:
            return
        installed_version, installed_index = self._installed.get(observation.part_key, (-1, 0))
        stale = observation.map_version < installed_version
        if stale and observation.log_index > installed_index:
            return
        written = self._written.setdefault(observation.part_key, {})
        if stale and written.get(observation.log_index, -1) > observation.map_version:
            return
        executed = self._executed.setdefault(observation.part_key, {})
        earlier = executed.get(observation.request_id)
        if earlier is not None:
            version, index, node = earlier
            raise InvariantViolated(
                f"request {observation.request_id} of part {observation.part_key} executed "
                f"twice: by {node} at {(version, index)} and by {observation.node} at "
                f"{(observation.map_version, observation.log_index)}",
                checker=type(self).__name__,
            )
        executed[observation.request_id] = (
            observation.map_version,
            observation.log_index,
            observation.node,
        )
        written[observation.log_index] = max(
            written.get(observation.log_index, -1), observation.map_version
        )

    def _install(self, observation: PrimaryInstalled) -> None:
        current = self._installed.get(observation.part_key, (-1, 0))
        if observation.map_version <= current[0]:
            return
        self._installed[observation.part_key] = (observation.map_version, observation.log_index)
        executed = self._executed.get(observation.part_key)
        if not executed:
            return
        dropped = [
            request_id
            for request_id, (version, index, _) in executed.items()
            if version < observation.map_version and index > observation.log_index
        ]
        for request_id in dropped:
            del executed[request_id]
        written = self._written.get(observation.part_key, {})
        for index in [
            index
            for index, version in written.items()
            if version < observation.map_version and index > observation.log_index
        ]:
            del written[index]

    def at_end(self, sim: Simulator) -> None:
        """Nothing to judge at the end."""


class MonotonicMapVersionChecker:
    """No node ever adopts a shard-map version older than one it adopted before.

    With `reset_on_restart`, a restarted node starts over (for nodes that keep no map on disk);
    by default a node must stay monotonic across restarts.
    """

    observes: tuple[type[Observation], ...] = (MapVersionObserved, NodeRestarted)

    def __init__(self, *, reset_on_restart: bool = False) -> None:
        self._reset_on_restart = reset_on_restart
        self._versions: dict[NodeId, int] = {}

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Compare the node's new version with the highest it held."""
        observation = event.observation
        if isinstance(observation, NodeRestarted):
            if self._reset_on_restart:
                self._versions.pop(observation.node, None)
            return
        assert isinstance(observation, MapVersionObserved)
        previous = self._versions.get(observation.node)
        if previous is not None and observation.map_version < previous:
            raise InvariantViolated(
                f"node {observation.node} went back from map version {previous} to "
                f"{observation.map_version}",
                checker=type(self).__name__,
            )
        self._versions[observation.node] = observation.map_version

    def at_end(self, sim: Simulator) -> None:
        """Nothing to judge at the end."""


class ClientOrderChecker:
    """A client's writes on a part take positions in the order the client issued them.

    For two writes a client issued on one part, the one issued first must sit earlier in the
    part's history: its `(map_version, log_index)` is smaller. Reads are not ordered.
    """

    observes: tuple[type[Observation], ...] = (ClientResponseObserved,)

    def __init__(self) -> None:
        self._sequences: dict[tuple[NodeId, PartKey], list[int]] = {}
        self._positions: dict[tuple[NodeId, PartKey], list[Position]] = {}

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Place the response between the client's earlier and later writes on the part."""
        observation = event.observation
        assert isinstance(observation, ClientResponseObserved)
        if observation.log_index is None:
            return
        key = (observation.client, observation.part_key)
        sequences = self._sequences.setdefault(key, [])
        positions = self._positions.setdefault(key, [])
        sequence = observation.issue_sequence
        position = (observation.map_version, observation.log_index)
        slot = bisect_left(sequences, sequence)
        if slot < len(sequences) and sequences[slot] == sequence:
            if positions[slot] != position:
                self._violate(observation, f"answered at {positions[slot]} and at {position}")
            return
        if slot > 0 and positions[slot - 1] >= position:
            self._violate(
                observation,
                f"issued after #{sequences[slot - 1]} but placed at {position}, not after "
                f"{positions[slot - 1]}",
            )
        if slot < len(sequences) and positions[slot] <= position:
            self._violate(
                observation,
                f"issued before #{sequences[slot]} but placed at {position}, not before "
                f"{positions[slot]}",
            )
        sequences.insert(slot, sequence)
        positions.insert(slot, position)

    def _violate(self, observation: ClientResponseObserved, detail: str) -> None:
        raise InvariantViolated(
            f"client {observation.client} on part {observation.part_key}: request "
            f"{observation.request_id} (#{observation.issue_sequence}) {detail}",
            checker=type(self).__name__,
        )

    def at_end(self, sim: Simulator) -> None:
        """Nothing to judge at the end."""


class LivenessChecker:
    """After the faults heal, every open session is served again within `bound_us`.

    A session counts as served when its client receives a response on any of its parts at or
    after `max(heal_us, opened_us)`. Sessions closed on purpose are exempt, and so are those the
    manager expired (`ExpiryChecker` judges whether rightly) and those of a client crashed and
    not restarted (nobody is there to be served). `heal_us` comes from
    the fault plan applied before the run. The run must last at least until `heal_us + bound_us`,
    or the check could not fail.
    """

    observes: tuple[type[Observation], ...] = (
        SessionOpened,
        SessionClosed,
        ClientResponseObserved,
        NodeCrashed,
        NodeRestarted,
        SessionExpired,
    )

    def __init__(self, *, bound_us: int) -> None:
        if bound_us <= 0:
            raise ConfigError("the liveness bound must be positive")
        self.bound_us = bound_us
        """How long after healing (or opening) a session may wait for service."""
        self._opened: dict[str, tuple[NodeId, int]] = {}
        self._closed: dict[str, int] = {}
        self._served: dict[str, int] = {}
        self._down: set[NodeId] = set()

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Track opened and closed sessions and the first service after healing."""
        observation = event.observation
        if isinstance(observation, SessionOpened):
            self._opened.setdefault(observation.session_id, (observation.client, event.time_us))
        elif isinstance(observation, SessionClosed):
            self._closed[observation.session_id] = event.time_us
        elif isinstance(observation, SessionExpired):
            self._closed[format_session_id(observation.session_id)] = event.time_us
        elif isinstance(observation, NodeCrashed):
            self._down.add(observation.node)
        elif isinstance(observation, NodeRestarted):
            self._down.discard(observation.node)
        else:
            assert isinstance(observation, ClientResponseObserved)
            session_id = observation.part_key[0]
            opened = self._opened.get(session_id)
            if opened is None or session_id in self._served:
                return
            if event.time_us >= max(sim.heal_us, opened[1]):
                self._served[session_id] = event.time_us

    def at_end(self, sim: Simulator) -> None:
        """Every open session was served within the bound after healing (or after opening)."""
        if sim.now_us < sim.heal_us + self.bound_us:
            raise ConfigError(
                f"the run ended at {sim.now_us} µs, before heal ({sim.heal_us} µs) plus the "
                f"liveness bound ({self.bound_us} µs); lengthen it"
            )
        for session_id, (client, opened_us) in self._opened.items():
            if session_id in self._closed or client in self._down:
                continue
            start_us = max(sim.heal_us, opened_us)
            if sim.now_us < start_us + self.bound_us:
                continue
            served_us = self._served.get(session_id)
            if served_us is None or served_us > start_us + self.bound_us:
                when = "never" if served_us is None else f"only at {served_us} µs"
                raise InvariantViolated(
                    f"session {session_id} of client {client} was not served within "
                    f"{self.bound_us} µs of {start_us} µs (served {when})",
                    checker=type(self).__name__,
                )


@dataclass(frozen=True, slots=True)
class _PendingRead:
    part_key: PartKey
    wanted: int
    floor: int
    deadline_us: int


class WaitingReadChecker:
    """Waiting reads keep their contract under faults.

    What the design promises (docs/ARCHITECTURE.md, Waiting reads): a parked read is answered by
    the handler's result after a write, or "nothing yet" at its wait's end (or its wait budget's),
    when the part stops being primary there, or when the server stops; the answer sees the
    primary's state, as any read does; the client ends every call, answered or failed, by its
    own `timeout_ms`. So, for each waiting read (`WaitingReadIssued`):

    * it ends once, answered (`WaitingReadAnswered`) or failed (`WaitingReadFailed`), at or
      before its call's deadline, and by the end of the run when that deadline passed (unless its
      client crashed, which forgets it);
    * a version answered satisfies the handler's condition: at least the version it waited for;
    * a version answered is at least the newest version of the client's own writes acknowledged
      on the part before the read was issued (`WriteVersionSeen`: read-your-writes), unless
      the part lost acknowledged `async` writes to a failover (`acknowledged.lost`), which the
      design allows and counts.

    "Nothing yet" says nothing of the state and is only counted. Counters: `waiting-read/issued`,
    `waiting-read/answered-version` (of which `-beyond-own-writes`: it waited for more than
    the client's acknowledged writes showed), `waiting-read/answered-nothing-yet`,
    `waiting-read/answered-<status>`, `waiting-read/failed-<why>`, and
    `waiting-read/read-your-writes-excused` for reads the loss rule let pass.
    """

    observes: tuple[type[Observation], ...] = (
        WriteVersionSeen,
        WaitingReadIssued,
        WaitingReadAnswered,
        WaitingReadFailed,
        NodeCrashed,
    )

    def __init__(self, acknowledged: AcknowledgedWritesChecker | None = None) -> None:
        self._acknowledged = acknowledged
        self._floors: dict[tuple[NodeId, PartKey], int] = {}
        self._pending: dict[tuple[NodeId, int], _PendingRead] = {}
        self._lossy: set[PartKey] = set()
        self._losses_seen = 0

    def after_event(self, sim: Simulator, event: Observed) -> None:
        """Record acknowledged versions and issued reads; judge each read's end."""
        observation = event.observation
        if isinstance(observation, WriteVersionSeen):
            key = (observation.client, observation.part_key)
            self._floors[key] = max(self._floors.get(key, 0), observation.version)
        elif isinstance(observation, WaitingReadIssued):
            floor = self._floors.get((observation.client, observation.part_key), 0)
            self._pending[(observation.client, observation.request_id)] = _PendingRead(
                part_key=observation.part_key,
                wanted=observation.wanted,
                floor=floor,
                deadline_us=event.time_us + observation.timeout_us,
            )
            sim.count("waiting-read/issued")
        elif isinstance(observation, NodeCrashed):
            gone = [key for key in self._pending if key[0] == observation.node]
            for pending in gone:
                del self._pending[pending]
        else:
            assert isinstance(observation, WaitingReadAnswered | WaitingReadFailed)
            self._ended(sim, event, observation)

    def _ended(
        self, sim: Simulator, event: Observed, observation: WaitingReadAnswered | WaitingReadFailed
    ) -> None:
        read = self._pending.pop((observation.client, observation.request_id), None)
        if read is None:
            self._violate(
                observation, "ended, but it is not outstanding (never issued, or ended before)"
            )
        if event.time_us > read.deadline_us:
            self._violate(
                observation,
                f"ended at {event.time_us} µs, after its call's deadline {read.deadline_us} µs",
            )
        if isinstance(observation, WaitingReadFailed):
            sim.count(f"waiting-read/failed-{observation.why}")
            return
        if observation.status != "OK":
            sim.count(f"waiting-read/answered-{observation.status.lower()}")
            return
        version = observation.version
        if version is None:
            sim.count("waiting-read/answered-nothing-yet")
            return
        sim.count("waiting-read/answered-version")
        if read.wanted > read.floor:
            # It asked for more than the client's acknowledged writes showed: it was answered
            # after a later write, mostly parked until one came.
            sim.count("waiting-read/answered-version-beyond-own-writes")
        if version < read.wanted:
            self._violate(
                observation, f"answered version {version}, below the {read.wanted} it waited for"
            )
        if version < read.floor:
            if self._lost_writes(read.part_key):
                sim.count("waiting-read/read-your-writes-excused")
                return
            self._violate(
                observation,
                f"answered version {version}, older than the client's own write acknowledged "
                f"at version {read.floor} before it issued the read",
            )

    def _lost_writes(self, part_key: PartKey) -> bool:
        """Whether the part lost acknowledged `async` writes to a failover (allowed, counted)."""
        if self._acknowledged is None:
            return False
        lost = self._acknowledged.lost
        for loss in lost[self._losses_seen :]:
            self._lossy.add(loss.part_key)
        self._losses_seen = len(lost)
        return part_key in self._lossy

    def _violate(
        self, observation: WaitingReadAnswered | WaitingReadFailed, detail: str
    ) -> NoReturn:
        raise InvariantViolated(
            f"waiting read {observation.request_id} of client {observation.client} on part "
            f"{observation.part_key} {detail}",
            checker=type(self).__name__,
        )

    def at_end(self, sim: Simulator) -> None:
        """Every read whose call deadline passed ended (its client did not crash)."""
        for (client, request_id), read in self._pending.items():
            if read.deadline_us < sim.now_us:
                raise InvariantViolated(
                    f"waiting read {request_id} of client {client} on part {read.part_key} "
                    f"never ended, though its call's deadline {read.deadline_us} µs passed",
                    checker=type(self).__name__,
                )


def default_checkers(*, liveness_bound_us: int | None) -> list[Checker]:
    """The five safety checkers, plus liveness when a bound is given."""
    checkers: list[Checker] = [
        SingleWriterChecker(),
        AcknowledgedWritesChecker(),
        AtMostOnceChecker(),
        MonotonicMapVersionChecker(),
        ClientOrderChecker(),
    ]
    if liveness_bound_us is not None:
        checkers.append(LivenessChecker(bound_us=liveness_bound_us))
    return checkers
