"""One part on one server: its role state machine, its state, its log and its dedup table.

A part is the unit of placement, replication and handoff. On its primary, requests run one at a
time through the application's deterministic handler; each run becomes a `LogEntry` with the next
sequence number. Replicas apply the same entries by re-executing the handler (state-machine
replication) and compare the outcome with the primary's answer. The dedup table maps request ids
to the entry that answered them, so a retried request is answered again instead of re-executed;
it is rebuilt from the log on every holder and travels in snapshots.

Every change of role is a transition of the table below (`PART_TRANSITIONS`); an illegal one
raises `LocalProtocolError`.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import msgspec

from forehand.core.messages import LogEntry, PartProgress, PartRef, PartRole
from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import ErrorCode, ResponseStatus

__all__ = [
    "PART_TRANSITIONS",
    "DedupTable",
    "Durability",
    "Handler",
    "HandlerResult",
    "Part",
    "PartLog",
    "PartSpec",
    "PartState",
    "PartTrigger",
    "ReplayOutcome",
    "WAIT_MS_MAX",
    "part_transition_table",
    "transition_table",
]


class StateNotEncodableError(Exception):
    """A part's state does not encode as msgpack (`Part.snapshot_state`)."""


class Durability(enum.Enum):
    """When a part's primary answers a write."""

    ASYNC = "async"
    """Answer as soon as the primary executed it; replicas catch up (a crash may lose the lag)."""
    REPLICATED = "replicated"
    """Answer only once at least one replica acknowledged the entry."""


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerResult:
    """What an application handler returns for one operation."""

    state: object
    """The part's new state (any msgspec-serialisable value); may be the same object."""
    status: int
    """A `ResponseStatus` value for the client."""
    result: bytes
    """The response payload."""
    waiting: bool = False
    """Nothing to answer yet (a waiting read, an op of `PartSpec.wait_ops`, only): the primary
    parks the request and runs the handler again after each write to the part; `status` and
    `result` are the answer it gives if the wait ends first (its deadline, the part moving)."""


Handler = Callable[[Any, str, bytes], HandlerResult]
"""`handler(state, op, payload) -> HandlerResult`: deterministic, no I/O, clock or randomness."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PartSpec:
    """How parts of one name behave: their handler, their initial state and their durability."""

    handler: Handler
    """Runs each operation; replicas re-run it on every log entry."""
    initial_state: Callable[[], object]
    """Builds the state of a new part."""
    durability: Durability = Durability.ASYNC
    """When the primary answers a write."""
    state_type: Any = Any
    """The type snapshots decode the state as (msgspec); `Any` keeps plain msgpack values."""
    read_ops: frozenset[str] = frozenset()
    """Operations that never change the state: run on the primary, answered, never logged."""
    wait_ops: Mapping[str, int] = field(default_factory=dict)
    """Read operations that may wait for a write (waiting reads, a subset of `read_ops`), with
    the longest each waits, in ms (1 to `WAIT_MS_MAX`)."""

    def __post_init__(self) -> None:
        for op, wait_ms in self.wait_ops.items():
            assert op in self.read_ops, f"waiting op {op!r} is not a read op"
            assert 1 <= wait_ms <= WAIT_MS_MAX, (op, wait_ms)


WAIT_MS_MAX = 300_000
"""The longest a waiting read may wait, in ms (5 minutes)."""


class PartState(enum.Enum):
    """The role this server plays for one part."""

    ABSENT = "absent"
    """Not held yet: the state a new `Part` starts in, before its first transition."""
    PRIMARY = "primary"
    """Executes requests and ships the log to the replicas."""
    REPLICA = "replica"
    """Applies the primary's log; redirects clients to the primary."""
    RECEIVING = "receiving"
    """Handoff target waiting for the source's sealed log; queues requests meanwhile."""
    HANDING_OFF = "handing_off"
    """Handoff source: executes nothing, ships the sealed log, forwards requests to the target."""
    BACKUP = "backup"
    """Handoff source after the target took over: read-only, forwards stragglers."""
    ABORTING = "aborting"
    """Handoff source that missed its deadline: executes nothing until the map decides."""
    DROPPED = "dropped"
    """No longer held; the server forgets the part."""


class PartTrigger(enum.Enum):
    """What moves a part from one state to another."""

    PLACED_AS_PRIMARY = "placed_as_primary"
    """The map names this server primary of a part nobody held before."""
    PLACED_AS_REPLICA = "placed_as_replica"
    """The map names this server a replica."""
    HANDOFF_TARGETED = "handoff_targeted"
    """A handoff (or a map move without failover) makes this server the part's next primary."""
    SEALED_LOG_RECEIVED = "sealed_log_received"
    """The handoff source's last (sealed) batch is applied: this server is primary now."""
    PROMOTED = "promoted"
    """Failover: the map makes this fenced replica the primary."""
    HANDOFF_ASSIGNED = "handoff_assigned"
    """Handoff step 2 is done: this primary gives the part up."""
    SEAL_ACKNOWLEDGED = "seal_acknowledged"
    """The target acknowledged the sealed log: it serves the part now."""
    HANDOFF_DEADLINE_MISSED = "handoff_deadline_missed"
    """The target did not acknowledge the sealed log in time."""
    REINSTATED = "reinstated"
    """The map names this server primary again after it started giving the part up."""
    DEMOTED = "demoted"
    """The map names another primary and lists this server as a replica."""
    REMOVED = "removed"
    """The map no longer lists this server for the part."""


_S = PartState
_T = PartTrigger
PART_TRANSITIONS: Mapping[tuple[PartState, PartTrigger], PartState] = {
    (_S.ABSENT, _T.PLACED_AS_PRIMARY): _S.PRIMARY,
    (_S.ABSENT, _T.PLACED_AS_REPLICA): _S.REPLICA,
    (_S.ABSENT, _T.HANDOFF_TARGETED): _S.RECEIVING,
    (_S.PRIMARY, _T.HANDOFF_ASSIGNED): _S.HANDING_OFF,
    (_S.PRIMARY, _T.DEMOTED): _S.REPLICA,
    (_S.PRIMARY, _T.REMOVED): _S.DROPPED,
    (_S.REPLICA, _T.HANDOFF_TARGETED): _S.RECEIVING,
    (_S.REPLICA, _T.PROMOTED): _S.PRIMARY,
    (_S.REPLICA, _T.REMOVED): _S.DROPPED,
    (_S.RECEIVING, _T.SEALED_LOG_RECEIVED): _S.PRIMARY,
    (_S.RECEIVING, _T.PROMOTED): _S.PRIMARY,
    (_S.RECEIVING, _T.DEMOTED): _S.REPLICA,
    (_S.RECEIVING, _T.REMOVED): _S.DROPPED,
    (_S.HANDING_OFF, _T.SEAL_ACKNOWLEDGED): _S.BACKUP,
    (_S.HANDING_OFF, _T.HANDOFF_DEADLINE_MISSED): _S.ABORTING,
    (_S.HANDING_OFF, _T.REINSTATED): _S.PRIMARY,
    (_S.HANDING_OFF, _T.DEMOTED): _S.REPLICA,
    (_S.HANDING_OFF, _T.REMOVED): _S.DROPPED,
    (_S.BACKUP, _T.HANDOFF_TARGETED): _S.RECEIVING,
    (_S.BACKUP, _T.DEMOTED): _S.REPLICA,
    (_S.BACKUP, _T.PROMOTED): _S.PRIMARY,
    (_S.BACKUP, _T.REMOVED): _S.DROPPED,
    (_S.ABORTING, _T.REINSTATED): _S.PRIMARY,
    (_S.ABORTING, _T.DEMOTED): _S.REPLICA,
    (_S.ABORTING, _T.REMOVED): _S.DROPPED,
}
"""Every legal (state, trigger) -> next state of a part; anything else is a programming error."""


def part_transition_table() -> list[tuple[PartState, PartTrigger, PartState]]:
    """The part state machine as (from, trigger, to) rows, for diagrams."""
    return [(source, trigger, target) for (source, trigger), target in PART_TRANSITIONS.items()]


transition_table = part_transition_table
"""The name every state-machine module gives its table function (for the docs generator)."""


_ROLES = {
    PartState.PRIMARY: PartRole.PRIMARY,
    PartState.REPLICA: PartRole.REPLICA,
    PartState.RECEIVING: PartRole.RECEIVING,
    PartState.HANDING_OFF: PartRole.HANDING_OFF,
    PartState.BACKUP: PartRole.BACKUP,
    PartState.ABORTING: PartRole.HANDING_OFF,
}


_NO_ENTRIES: tuple[LogEntry, ...] = ()
"""The entries of every empty `PartLog`: most parts of a server are fresh placements or idle
primaries whose replicas hold everything (docs/PERFORMANCE.md, memory per session)."""
SHORT_LOG_ENTRIES_MAX = 16
"""A log keeps up to this many entries in a list (about 100 bytes for one entry) and more in a
deque (about 600 bytes even for one, but O(1) at both ends for long logs)."""
_NO_DEDUP: Mapping[int, LogEntry] = MappingProxyType({})
"""The table of every empty `DedupTable` (read-only: a table makes its own on the first entry)."""
SHORT_DEDUP_ENTRIES_MAX = 16
"""A dedup table keeps up to this many entries in a dict, more in an OrderedDict (which evicts
its oldest in O(1); a dict is smaller)."""


class PartLog:
    """The retained suffix of a part's log: entries `first_seq`..`last_seq`, without gaps."""

    __slots__ = ("_base_epoch", "_entries", "_entries_max", "_last_seq")

    def __init__(self, *, entries_max: int) -> None:
        assert entries_max >= 1, entries_max
        self._entries: tuple[LogEntry, ...] | list[LogEntry] | deque[LogEntry] = _NO_ENTRIES
        self._entries_max = entries_max
        self._last_seq = 0
        self._base_epoch = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest entry ever appended (0 for an empty part)."""
        return self._last_seq

    @property
    def last_epoch(self) -> int:
        """Epoch of the entry at `last_seq` (0 for an empty part)."""
        return self._entries[-1].epoch if self._entries else self._base_epoch

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest retained entry; `last_seq + 1` when none is retained."""
        return self._entries[0].seq if self._entries else self._last_seq + 1

    def append(self, entry: LogEntry) -> None:
        """Append the next entry; drops the oldest beyond the bound."""
        assert entry.seq == self._last_seq + 1, (entry.seq, self._last_seq)
        entries = self._entries
        if isinstance(entries, tuple):
            entries = self._entries = [entry]
        elif isinstance(entries, list) and len(entries) >= SHORT_LOG_ENTRIES_MAX:
            entries = self._entries = deque(entries)
            entries.append(entry)
        else:
            entries.append(entry)
        self._last_seq = entry.seq
        if len(entries) > self._entries_max:
            self._base_epoch = self._pop_oldest().epoch

    def _pop_oldest(self) -> LogEntry:
        entries = self._entries
        if isinstance(entries, deque):
            return entries.popleft()
        assert isinstance(entries, list) and entries
        return entries.pop(0)

    def get(self, seq: int) -> LogEntry | None:
        """The retained entry with sequence number `seq`, or None."""
        first = self.first_seq
        if seq < first or seq > self._last_seq:
            return None
        return self._entries[seq - first]

    def epoch_at(self, seq: int) -> int | None:
        """Epoch of the entry at `seq` if known: retained, or the one just before the oldest."""
        if seq == self.first_seq - 1:
            return self._base_epoch
        entry = self.get(seq)
        return None if entry is None else entry.epoch

    def slice(self, start_seq: int, count_max: int) -> tuple[LogEntry, ...]:
        """Up to `count_max` retained entries from `start_seq` on (which must be retained)."""
        first = self.first_seq
        assert first <= start_seq <= self._last_seq + 1, (start_seq, first, self._last_seq)
        offset = start_seq - first
        entries = self._entries
        end = min(offset + count_max, len(entries))
        if isinstance(entries, deque):
            return tuple(entries[index] for index in range(offset, end))
        return tuple(entries[offset:end])

    def trim_through(self, seq: int) -> None:
        """Forget retained entries up to and including `seq`."""
        while self._entries and self._entries[0].seq <= seq:
            self._base_epoch = self._pop_oldest().epoch
        if not self._entries:
            # A primary whose replicas acknowledged everything holds nothing.
            self._entries = _NO_ENTRIES

    def reset(self, *, last_seq: int, last_epoch: int) -> None:
        """Forget every entry; the next append is `last_seq + 1` (after a snapshot)."""
        self._entries = _NO_ENTRIES
        self._last_seq = last_seq
        self._base_epoch = last_epoch

    def entries(self) -> Iterator[LogEntry]:
        """The retained entries, oldest first."""
        return iter(self._entries)


class DedupTable:
    """Request id -> the log entry that answered it, oldest sequence evicted first."""

    __slots__ = ("_entries", "_entries_max")

    def __init__(self, *, entries_max: int) -> None:
        assert entries_max >= 1, entries_max
        self._entries: Mapping[int, LogEntry] = _NO_DEDUP
        self._entries_max = entries_max

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, request_id: int) -> LogEntry | None:
        """The entry that answered `request_id`, if it is still remembered."""
        return self._entries.get(request_id)

    def record(self, entry: LogEntry) -> None:
        """Remember `entry` (entries arrive in sequence order, so insertion order is seq order)."""
        entries = self._entries
        request_id = entry.request_id
        if isinstance(entries, OrderedDict):
            entries[request_id] = entry
            entries.move_to_end(request_id)
            while len(entries) > self._entries_max:
                entries.popitem(last=False)
            return
        if not isinstance(entries, dict):
            entries = self._entries = {}
        elif len(entries) >= SHORT_DEDUP_ENTRIES_MAX and request_id not in entries:
            entries = self._entries = OrderedDict(entries)
            self.record(entry)
            return
        entries.pop(request_id, None)  # A re-recorded id moves to the newest end.
        entries[request_id] = entry
        while len(entries) > self._entries_max:
            del entries[next(iter(entries))]

    def entries(self) -> tuple[LogEntry, ...]:
        """Every remembered entry, oldest sequence first (what a snapshot carries)."""
        return tuple(self._entries.values())

    def replace(self, entries: Iterable[LogEntry]) -> None:
        """Forget everything and remember `entries` instead (from a snapshot)."""
        self._entries = _NO_DEDUP
        for entry in sorted(entries, key=lambda entry: entry.seq):
            self.record(entry)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayOutcome:
    """What happened when a replica re-executed one log entry."""

    entry: LogEntry
    """The entry applied, as the primary logged it."""
    status: int
    """The status the local re-execution produced."""
    result: bytes
    """The result the local re-execution produced."""

    @property
    def diverged(self) -> bool:
        """Whether the re-execution disagrees with the primary's answer."""
        return self.status != self.entry.status or self.result != self.entry.result


_state_encoder = msgspec.msgpack.Encoder()
_STATUS_VALUES = frozenset(int(status) for status in ResponseStatus)


class Part:
    """One part held by this server in some role, with its data, log and dedup table."""

    __slots__ = (
        "awaited",
        "data",
        "dedup",
        "epoch",
        "fence_version",
        "log",
        "ref",
        "sealed_by",
        "spec",
        "state",
    )

    def __init__(
        self,
        *,
        ref: PartRef,
        spec: PartSpec,
        epoch: int,
        log_entries_max: int,
        dedup_entries_max: int,
    ) -> None:
        self.ref = ref
        """Which part."""
        self.spec = spec
        """Its handler, initial state and durability."""
        self.state = PartState.ABSENT
        """This server's role for the part."""
        self.epoch = epoch
        """Map version at which the part's placement last changed, as this server knows it."""
        self.fence_version = 0
        """Log entries and writes from epochs below this are refused (failover fencing)."""
        self.data: object = spec.initial_state()
        """The application state, as of `applied_seq`."""
        self.log = PartLog(entries_max=log_entries_max)
        """The retained log."""
        self.dedup = DedupTable(entries_max=dedup_entries_max)
        """Request id -> answering entry."""
        self.sealed_by: tuple[str, int, int] | None = None
        """The handoff seal this copy last became primary with: (source node, epoch, sealed
        sequence); a resent seal is acknowledged only when it is that one's (same source and
        epoch, ending at that sequence or past it with entries of this copy's own log)."""
        self.awaited: tuple[str, int] | None = None
        """While RECEIVING: the source whose sealed log this copy waits for ("" when unknown)
        and the map version of the move; kept past the handoff's deadline, until the part
        leaves RECEIVING (`ServerCore._sealing_soon`)."""

    @property
    def applied_seq(self) -> int:
        """Highest sequence number applied to `data`."""
        return self.log.last_seq

    @property
    def role(self) -> PartRole | None:
        """The role reported to the manager, or None when the part is not (or no longer) held."""
        return _ROLES.get(self.state)

    @property
    def fenced(self) -> bool:
        """Whether a failover fenced the part above its epoch: no writes until the map moves."""
        return self.fence_version > self.epoch

    def transition(self, trigger: PartTrigger) -> PartState:
        """Apply `trigger` per the table; returns the previous state."""
        previous = self.state
        following = PART_TRANSITIONS.get((previous, trigger))
        if following is None:
            raise LocalProtocolError(
                f"part {self.ref.part!r}: no transition from {previous.name} on {trigger.name}"
            )
        self.state = following
        if following is not PartState.RECEIVING:
            self.awaited = None
        return previous

    def progress(self) -> PartProgress | None:
        """This server's position on the part, as heartbeats and failover report it."""
        role = self.role
        if role is None:
            return None
        return PartProgress(
            ref=self.ref,
            role=role,
            applied_seq=self.applied_seq,
            epoch=self.epoch,
            last_epoch=self.log.last_epoch,
        )

    def execute(self, *, request_id: int, op: str, payload: bytes) -> LogEntry:
        """Run one request on the primary: the handler, then the log and the dedup table."""
        status, result, _ = self._run(op, payload)
        entry = LogEntry(
            seq=self.log.last_seq + 1,
            request_id=request_id,
            op=op,
            payload=payload,
            status=status,
            result=result,
            epoch=self.epoch,
        )
        self.log.append(entry)
        self.dedup.record(entry)
        return entry

    def read(self, *, op: str, payload: bytes) -> tuple[int, bytes, bool]:
        """Run a read-only operation: the handler's answer, with the state left untouched, and
        whether it said it has nothing yet (`HandlerResult.waiting`)."""
        data = self.data
        try:
            return self._run(op, payload)
        finally:
            self.data = data

    def replay(self, entry: LogEntry) -> ReplayOutcome:
        """Apply the primary's next entry by re-running the handler; the primary's answer wins."""
        if entry.seq != self.log.last_seq + 1:
            raise RemoteProtocolError(
                f"log entry {entry.seq} does not follow {self.log.last_seq}",
                error_code=ErrorCode.PROTOCOL_ERROR,
            )
        status, result, _ = self._run(entry.op, entry.payload)
        self.log.append(entry)
        self.dedup.record(entry)
        return ReplayOutcome(entry=entry, status=status, result=result)

    def snapshot_state(self) -> bytes:
        """The application state, msgpack-encoded for a `SnapshotShipped`.

        `StateNotEncodableError` when a handler left a value msgpack cannot carry (an integer
        beyond 64 bits, say): the application's bug, which must not pass for this server's."""
        try:
            return _state_encoder.encode(self.data)
        except Exception as error:
            raise StateNotEncodableError(f"{type(error).__name__}: {error}") from error

    def install_snapshot(
        self, *, seq: int, seq_epoch: int, state: bytes, dedup: Iterable[LogEntry]
    ) -> None:
        """Replace everything with a snapshot taken at `seq`; bad encoding is the sender's fault."""
        try:
            data = msgspec.msgpack.decode(state, type=self.spec.state_type)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise RemoteProtocolError(f"snapshot state does not decode: {error}") from error
        self.data = data
        self.log.reset(last_seq=seq, last_epoch=seq_epoch)
        self.dedup.replace(dedup)

    def reset(self) -> None:
        """Forget everything (a replica found its log diverged from a new primary's)."""
        self.data = self.spec.initial_state()
        self.log.reset(last_seq=0, last_epoch=0)
        self.dedup.replace(())

    def _run(self, op: str, payload: bytes) -> tuple[int, bytes, bool]:
        # A handler that raises is an application bug; the request fails with APP_ERROR and the
        # state stays as it was, identically on every replica, instead of killing the server.
        try:
            outcome = self.spec.handler(self.data, op, payload)
        except Exception as error:
            return int(ResponseStatus.APP_ERROR), type(error).__name__.encode(), False
        self.data = outcome.state
        status = int(outcome.status)
        if status not in _STATUS_VALUES:
            # Only registered statuses can go on the wire; an unknown one is an application bug.
            return int(ResponseStatus.APP_ERROR), b"unknown response status", False
        return status, outcome.result, outcome.waiting
