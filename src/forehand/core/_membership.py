"""Membership of the Session Manager: servers, their incarnations, liveness, load and part progress.

Each server is a member with a state machine (its transitions are the table below). Liveness comes
from heartbeats, judged by a failure detector: a plain timeout, or phi accrual (Hayashibara et
al., as in Akka and Cassandra) over the observed heartbeat intervals. Both give, for the time
since the last heartbeat, an instant at which the member is suspected and one at which it is
declared dead, so the manager can arm one timer instead of polling.

A restarted server (a new incarnation) lost its memory: the manager treats the old incarnation as
dead, fails its parts over, and only then readmits the new one, so that the new process is never
primary for parts whose state it does not have.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

from forehand.core._manager_config import FailureDetectorKind, ManagerConfig
from forehand.core.messages import (
    HeartbeatReported,
    LoadReport,
    PartProgress,
    PartRef,
    ServerAnnounced,
)
from forehand.errors import LocalProtocolError

__all__ = [
    "AnnounceOutcome",
    "HeartbeatOutcome",
    "LivenessChanged",
    "Member",
    "MemberState",
    "MemberTrigger",
    "Membership",
    "PhiAccrualDetector",
    "UNKNOWN_INCARNATION",
    "TimeoutDetector",
    "transition_table",
]

UNKNOWN_INCARNATION = -1
"""The incarnation of a member restored from a map, until its first heartbeat names it."""
PHI_LINEAR_FROM = 40.0
"""Beyond this exponent log(1 + exp(x)) equals x to double precision."""
PHI_SEARCH_STEPS_MAX = 64
"""Bisection steps when inverting phi; 64 halvings of a microsecond range reach one microsecond."""


class MemberState(enum.Enum):
    """Where a server stands in the membership."""

    JOINING = "joining"
    """Announced; the join is being committed to the map. Serves nothing yet."""
    ALIVE = "alive"
    """A member in the committed map, heartbeating."""
    SUSPECTED = "suspected"
    """Silent long enough to worry; still a member, still primary for its parts."""
    DEAD = "dead"
    """Declared dead (or restarted): its parts fail over; it may be readmitted afterwards."""


class MemberTrigger(enum.Enum):
    """What moves a member between states."""

    JOIN_COMMITTED = "join_committed"
    HEARTBEAT_RECEIVED = "heartbeat_received"
    SILENCE_SUSPECTED = "silence_suspected"
    SILENCE_CONFIRMED = "silence_confirmed"
    RESTARTED = "restarted"
    READMITTED = "readmitted"
    LEFT = "left"


_TRANSITIONS: dict[tuple[MemberState, MemberTrigger], MemberState] = {
    (MemberState.JOINING, MemberTrigger.JOIN_COMMITTED): MemberState.ALIVE,
    (MemberState.JOINING, MemberTrigger.HEARTBEAT_RECEIVED): MemberState.JOINING,
    (MemberState.JOINING, MemberTrigger.RESTARTED): MemberState.JOINING,
    (MemberState.JOINING, MemberTrigger.SILENCE_CONFIRMED): MemberState.DEAD,
    (MemberState.JOINING, MemberTrigger.LEFT): MemberState.DEAD,
    (MemberState.ALIVE, MemberTrigger.HEARTBEAT_RECEIVED): MemberState.ALIVE,
    (MemberState.ALIVE, MemberTrigger.SILENCE_SUSPECTED): MemberState.SUSPECTED,
    (MemberState.ALIVE, MemberTrigger.SILENCE_CONFIRMED): MemberState.DEAD,
    (MemberState.ALIVE, MemberTrigger.RESTARTED): MemberState.DEAD,
    (MemberState.ALIVE, MemberTrigger.LEFT): MemberState.DEAD,
    (MemberState.SUSPECTED, MemberTrigger.HEARTBEAT_RECEIVED): MemberState.ALIVE,
    (MemberState.SUSPECTED, MemberTrigger.SILENCE_CONFIRMED): MemberState.DEAD,
    (MemberState.SUSPECTED, MemberTrigger.RESTARTED): MemberState.DEAD,
    (MemberState.DEAD, MemberTrigger.RESTARTED): MemberState.DEAD,
    (MemberState.DEAD, MemberTrigger.READMITTED): MemberState.JOINING,
}


def transition_table() -> list[tuple[MemberState, MemberTrigger, MemberState]]:
    """Every legal member transition as (from, trigger, to), for docs and diagrams."""
    return [(source, trigger, target) for (source, trigger), target in _TRANSITIONS.items()]


class AnnounceOutcome(enum.Enum):
    """What a `ServerAnnounced` did to the membership."""

    JOINED = "joined"
    """A new member: commit its join."""
    RESTARTED = "restarted"
    """A live member came back with a new incarnation: its old incarnation is now dead."""
    REJOIN_PENDING = "rejoin_pending"
    """A dead member announced again: readmit it once its failover is over."""
    REPEATED = "repeated"
    """The same incarnation announced again; nothing changes."""
    STALE = "stale"
    """An older incarnation than the one known: refused (`HeartbeatOutcome.SUPERSEDED`)."""
    REFUSED = "refused"
    """The membership table is full (`servers_max`)."""


class HeartbeatOutcome(enum.Enum):
    """What a `HeartbeatReported` did to the membership."""

    ACCEPTED = "accepted"
    """Liveness, load and progress recorded."""
    REJOIN_PENDING = "rejoin_pending"
    """A dead member is heard from again: readmit it once its failover is over."""
    STALE = "stale"
    """An old sequence number: ignored."""
    SUPERSEDED = "superseded"
    """An older incarnation than the one known: another process of the same id outlived its
    replacement (a stray restarted by hand); refused."""
    UNKNOWN = "unknown"
    """No such member, or an incarnation it never announced: ignored."""
    DEAD_LEAVING = "dead_leaving"
    """A dead member's heartbeat that says it is leaving: the process is stopping and its
    failover took what it held, so it is not readmitted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LivenessChanged:
    """A member became suspected or dead because it fell silent."""

    server_id: str
    """The member."""
    incarnation: int
    """Its incarnation."""
    state: MemberState
    """SUSPECTED or DEAD."""
    silent_us: int
    """Time since its last heartbeat (or announcement)."""


class TimeoutDetector:
    """Suspected and dead at fixed silences after the last heartbeat."""

    def __init__(self, *, config: ManagerConfig, now_us: int) -> None:
        self._suspect_after_us = config.suspect_timeout_ms * 1000
        self._dead_after_us = config.failure_timeout_us
        self.last_heard_us = now_us
        """When the member was last heard from."""
        self.excused_us = 0
        """Silence since then that does not count (`excuse`)."""

    def heard(self, *, now_us: int) -> None:
        """Record a heartbeat."""
        self.last_heard_us = max(self.last_heard_us, now_us)
        self.excused_us = 0

    def excuse(self, *, stalled_us: int, now_us: int) -> None:
        """The manager could not listen for `stalled_us` up to `now_us`: that silence is not
        the member's (at most its silence so far)."""
        self.excused_us = min(self.excused_us + stalled_us, max(0, now_us - self.last_heard_us))

    def suspect_at_us(self) -> int:
        """When silence makes the member suspected."""
        return self.last_heard_us + self.excused_us + self._suspect_after_us

    def dead_at_us(self) -> int:
        """When silence makes the member dead."""
        return self.last_heard_us + self.excused_us + self._dead_after_us


class PhiAccrualDetector:
    """Phi accrual: suspicion grows with silence measured against the interval distribution.

    phi(t) = -log10(P(interval > t)) under a normal distribution fitted to the last
    `phi_samples_max` intervals (the logistic approximation Akka uses). Phi grows with silence, so
    the instant a threshold is crossed is found by bisection, capped by `failure_timeout_ms`.
    """

    def __init__(self, *, config: ManagerConfig, now_us: int) -> None:
        self._config = config
        self._intervals_us: deque[int] = deque(maxlen=config.phi_samples_max)
        self._sum_us = 0
        self._sum_squares_us = 0
        self._silences_us: dict[float, int] = {}
        self.last_heard_us = now_us
        """When the member was last heard from."""
        self.excused_us = 0
        """Silence since then that does not count (`excuse`)."""

    def excuse(self, *, stalled_us: int, now_us: int) -> None:
        """The manager could not listen for `stalled_us` up to `now_us`: that silence is not
        the member's (at most its silence so far), nor part of its next interval."""
        self.excused_us = min(self.excused_us + stalled_us, max(0, now_us - self.last_heard_us))

    def heard(self, *, now_us: int) -> None:
        """Record a heartbeat and the interval since the previous one (less any excused
        silence: the heartbeats a stall held back arrive together, not late)."""
        interval_us = now_us - self.last_heard_us - self.excused_us
        if now_us <= self.last_heard_us:
            return
        self.excused_us = 0
        if interval_us <= 0:
            self.last_heard_us = now_us
            return
        if len(self._intervals_us) == self._intervals_us.maxlen:
            oldest = self._intervals_us[0]
            self._sum_us -= oldest
            self._sum_squares_us -= oldest * oldest
        self._intervals_us.append(interval_us)
        self._silences_us.clear()
        self._sum_us += interval_us
        self._sum_squares_us += interval_us * interval_us
        self.last_heard_us = now_us

    def _distribution_us(self) -> tuple[float, float]:
        config = self._config
        count = len(self._intervals_us)
        if count < 2:
            mean = float(config.heartbeat_interval_ms * 1000)
            deviation = mean / 4
        else:
            mean = self._sum_us / count
            deviation = math.sqrt(max(self._sum_squares_us / count - mean * mean, 0.0))
        mean += config.heartbeat_pause_acceptable_ms * 1000
        return mean, max(deviation, config.phi_deviation_ms_min * 1000.0)

    def phi(self, *, silent_us: int) -> float:
        """Suspicion level after `silent_us` without a heartbeat."""
        mean, deviation = self._distribution_us()
        y = (silent_us - mean) / deviation
        # phi = -log10(e / (1 + e)) with e = exp(-x): written as log10(1 + exp(x)), which neither
        # overflows nor underflows at the far ends of the silence range.
        x = y * (1.5976 + 0.070566 * y * y)
        if x > PHI_LINEAR_FROM:
            return x / math.log(10.0)
        return math.log1p(math.exp(x)) / math.log(10.0)

    def _silence_at_phi_us(self, threshold: float) -> int:
        # The answer only changes with the interval history, so it is kept until a heartbeat.
        cached = self._silences_us.get(threshold)
        if cached is None:
            cached = self._silences_us[threshold] = self._search_silence_us(threshold)
        return cached

    def _search_silence_us(self, threshold: float) -> int:
        low, high = 0, self._config.failure_timeout_us
        if self.phi(silent_us=high) < threshold:
            return high
        for _ in range(PHI_SEARCH_STEPS_MAX):
            if high - low <= 1:
                break
            middle = (low + high) // 2
            if self.phi(silent_us=middle) >= threshold:
                high = middle
            else:
                low = middle
        return high

    def suspect_at_us(self) -> int:
        """When phi reaches the suspect threshold."""
        return (
            self.last_heard_us
            + self.excused_us
            + self._silence_at_phi_us(self._config.phi_suspect_threshold)
        )

    def dead_at_us(self) -> int:
        """When phi reaches the dead threshold, or the failure timeout, whichever is first."""
        return (
            self.last_heard_us
            + self.excused_us
            + self._silence_at_phi_us(self._config.phi_dead_threshold)
        )


FailureDetector = TimeoutDetector | PhiAccrualDetector


UNCONFIRMED_BEATS_MIN = 2
"""Heartbeats that must arrive without confirming a map version sent before a server counts as
not hearing the manager (`Member.unconfirmed_for_us`)."""


LACKING_PARTS_MAX = 1024
"""Part names `Membership.lacking` remembers its answer for at once."""

KeyRingSaid = tuple[tuple[tuple[int, bytes], ...], int]
"""A server's keys as its announcement said them: (key id, fingerprint) pairs, sealing key id."""


@dataclass(slots=True, kw_only=True)
class Member:
    """One server as the manager knows it (mutable state owned by `Membership`)."""

    server_id: str
    """The server's stable name."""
    incarnation: int
    """The newest incarnation announced."""
    address: str
    """Where clients reach it, `host:port`."""
    zone: str
    """Failure domain."""
    weight: float
    """Relative capacity."""
    state: MemberState
    """Where it stands."""
    detector: FailureDetector
    """Judges its silence."""
    heartbeat_sequence: int = -1
    """The newest heartbeat sequence accepted for `incarnation`."""
    map_version: int = 0
    """The newest map version it reported having applied."""
    map_version_sent: int = 0
    """The newest map version the manager sent it (0: none yet, in this incarnation); what it
    holds is at most this."""
    map_version_heard: int = 0
    """The newest map version it reported receiving from the manager itself
    (`HeartbeatReported.manager_map_version`; its `map_version` for a server before the field):
    a map learned from a peer is held but not heard. This one confirms the versions sent."""
    unconfirmed: tuple[int, int] | None = None
    """A map version sent to it that its heartbeats have not confirmed yet, and when it was
    sent (None: every version sent is confirmed); `sent_map` sets it, a heartbeat that heard it
    (`map_version_heard`) clears it or moves it to the newest version sent. How long it stays
    tells a server that does not hear the manager, though its heartbeats arrive
    (`unconfirmed_for_us`)."""
    unconfirmed_beats: int = 0
    """Heartbeats accepted since `unconfirmed` was set that did not confirm it."""
    not_hearing_since_us: int | None = None
    """While the manager reports it not hearing (`ServerNotHearing`): when the version it left
    unconfirmed was sent."""
    load: LoadReport | None = None
    """Its latest load report."""
    progress: dict[PartRef, PartProgress] = field(default_factory=dict)
    """Its latest progress per part, oldest update first."""
    progress_before: dict[PartRef, tuple[int, int]] = field(default_factory=dict)
    """Per part in `progress`, the `(last_epoch, applied_seq)` of the report before the latest
    (none until a second): a replica's newest report at least this far is streaming the log,
    whatever the instants the two servers' heartbeats took theirs at."""
    died_us: int | None = None
    """When it was declared dead."""
    rejoin_pending: bool = False
    """A dead member asked to come back; readmitted when its failover is over."""
    adopting_version: int = 0
    """A map version sent to it that may move many of its parts (`allow_adoption`)."""
    adopting_until_us: int = 0
    """Until then it is not declared dead by silence while it reports an older version than
    `adopting_version`."""
    declared_parts: frozenset[str] | None = None
    """The part names its app declares, as its announcement or a heartbeat of this incarnation
    said them (None: not said, by a server before the field or one restored from a map)."""
    key_fingerprints: tuple[tuple[int, bytes], ...] = ()
    """The (key id, fingerprint) of each cluster key it holds, as its announcement said them
    (empty: not said, or restored from a map): the announcements of other servers are checked
    against them."""
    sealing_key_id: int = -1
    """The key id it seals with, as its announcement said it (-1: not said)."""

    def sent_map(self, version: int, *, now_us: int) -> None:
        """A map version went to it."""
        self.map_version_sent = max(self.map_version_sent, version)
        if self.unconfirmed is None and version > self.map_version_heard:
            self.unconfirmed = (version, now_us)

    def unconfirmed_for_us(self, now_us: int) -> int:
        """How long a version sent to it has gone unconfirmed by its heartbeats (0: none, or
        fewer than `UNCONFIRMED_BEATS_MIN` of them arrived meanwhile: a server silent both
        ways is the failure detector's, and the first heartbeat after a partition heals
        reports the version it held before the maps sent since reach it)."""
        if self.unconfirmed is None or self.unconfirmed_beats < UNCONFIRMED_BEATS_MIN:
            return 0
        return now_us - self.unconfirmed[1]

    def dead_at_us(self) -> int:
        """When silence makes it dead: its detector's line, held while it adopts a heavy map."""
        dead_at_us = self.detector.dead_at_us()
        if self.map_version < self.adopting_version:
            return max(dead_at_us, self.adopting_until_us)
        return dead_at_us

    @property
    def last_heard_us(self) -> int:
        """When it was last heard from."""
        return self.detector.last_heard_us

    @property
    def is_live(self) -> bool:
        """ALIVE or SUSPECTED: a committed member that still counts as up."""
        return self.state in (MemberState.ALIVE, MemberState.SUSPECTED)


class Membership:
    """The table of members, their state machines and failure detectors."""

    def __init__(self, *, config: ManagerConfig) -> None:
        self._config = config
        self._members: dict[str, Member] = {}
        # Sorted views, dropped when a member comes, goes or changes state: a commit sends the
        # new version to every live member, and sorting ten thousand ids per commit adds up.
        self._sorted: list[Member] | None = None
        self._live: tuple[Member, ...] | None = None
        self._declared: tuple[frozenset[str] | None] | None = None
        """`declared_parts()` while nothing it reads changed (None: to compute)."""
        self._lacking: dict[str, frozenset[str]] = {}
        """`lacking(part)` per part asked about, until a member joins, dies, restarts, is
        readmitted or says its parts again (not at each suspicion: opens read it); at most
        `LACKING_PARTS_MAX` parts."""
        self._deaths_held = False
        """The last `check` held deaths by silence (see `check`); a member heard again ends it."""
        self._rings: dict[KeyRingSaid, list[str]] | None = None
        """`key_rings()` (None: to compute): kept as members join, recomputed after a member
        dies, restarts or is readmitted, so that a fleet starting announces in linear time."""

    def _changed(self, *, membership: bool) -> None:
        self._live = None
        self._declared = None
        if membership:
            self._sorted = None

    def __contains__(self, server_id: object) -> bool:
        return server_id in self._members

    def __len__(self) -> int:
        return len(self._members)

    def get(self, server_id: str) -> Member | None:
        """The member named `server_id`, if known."""
        return self._members.get(server_id)

    def key_rings(self) -> dict[KeyRingSaid, list[str]]:
        """The members not dead whose announcements said their keys, by (key fingerprints,
        sealing key id): a few entries in a cluster, where every node has the same keys file
        but during a rotation."""
        rings = self._rings
        if rings is None:
            rings = self._rings = {}
            for member in self._members.values():
                if member.key_fingerprints and member.state is not MemberState.DEAD:
                    ring = (member.key_fingerprints, member.sealing_key_id)
                    rings.setdefault(ring, []).append(member.server_id)
        return rings

    def members(self) -> list[Member]:
        """Every member, sorted by server id (deterministic iteration)."""
        if self._sorted is None:
            self._sorted = [self._members[server_id] for server_id in sorted(self._members)]
        return list(self._sorted)

    def live_ids(self) -> list[str]:
        """Ids of ALIVE and SUSPECTED members, sorted."""
        return [member.server_id for member in self.live_members()]

    def live_members(self) -> tuple[Member, ...]:
        """ALIVE and SUSPECTED members, sorted by server id."""
        if self._live is None:
            self._live = tuple(member for member in self.members() if member.is_live)
        return self._live

    def declared_parts(self) -> frozenset[str] | None:
        """The part names the apps of the members not dead declare, together; None unless
        every one of them said its own (a server before the field, or one restored from a
        loaded map until its heartbeat names them, may serve any part). Kept until a member
        comes, goes, changes state or says its parts again: every OPEN_SESSION reads it."""
        if self._declared is None:
            said = [m.declared_parts for m in self.members() if m.state is not MemberState.DEAD]
            union: frozenset[str] | None = None
            if said and all(parts is not None for parts in said):
                union = frozenset().union(*(parts for parts in said if parts is not None))
            self._declared = (union,)
        return self._declared[0]

    def lacking(self, part: str) -> frozenset[str]:
        """The members not dead whose app said its parts without `part` (a member that said
        nothing may serve any): a rolling upgrade that adds a part type runs old servers
        beside new ones, and a part placed on an old one fails every call UNKNOWN_OP."""
        lacking = self._lacking.get(part)
        if lacking is None:
            if len(self._lacking) >= LACKING_PARTS_MAX:
                self._lacking.clear()
            lacking = self._lacking[part] = frozenset(
                m.server_id
                for m in self.members()
                if m.state is not MemberState.DEAD
                and m.declared_parts is not None
                and part not in m.declared_parts
            )
        return lacking

    def held_version(self, server_id: str) -> int:
        """The newest map version the member surely holds: what it reported, at most what it
        was sent (0 when unknown: it needs the whole map)."""
        member = self._members.get(server_id)
        if member is None:
            return 0
        return min(member.map_version, member.map_version_sent)

    def state_of(self, server_id: str) -> MemberState | None:
        """The member's state, or None when unknown."""
        member = self._members.get(server_id)
        return None if member is None else member.state

    def _transition(self, member: Member, trigger: MemberTrigger) -> None:
        target = _TRANSITIONS.get((member.state, trigger))
        if target is None:
            raise LocalProtocolError(
                f"member {member.server_id}: no transition from {member.state.name} "
                f"on {trigger.name}"
            )
        if member.state is not target:
            self._changed(membership=False)
            if MemberState.DEAD in (member.state, target):
                self._rings = None
                self._lacking.clear()
        member.state = target

    def _new_detector(self, *, now_us: int) -> FailureDetector:
        if self._config.failure_detector is FailureDetectorKind.PHI_ACCRUAL:
            return PhiAccrualDetector(config=self._config, now_us=now_us)
        return TimeoutDetector(config=self._config, now_us=now_us)

    def announce(self, message: ServerAnnounced, *, now_us: int) -> AnnounceOutcome:
        """Apply a server's announcement (start or restart)."""
        member = self._members.get(message.server_id)
        if member is None:
            if len(self._members) >= self._config.servers_max:
                return AnnounceOutcome.REFUSED
            member = self._members[message.server_id] = self._new_member(message, now_us=now_us)
            self._changed(membership=True)
            if member.declared_parts is not None:
                self._lacking.clear()
            if self._rings is not None and member.key_fingerprints:
                ring = (member.key_fingerprints, member.sealing_key_id)
                self._rings.setdefault(ring, []).append(member.server_id)
            return AnnounceOutcome.JOINED
        if message.incarnation < member.incarnation:
            return AnnounceOutcome.STALE
        if message.incarnation == member.incarnation:
            return AnnounceOutcome.REPEATED
        was_live = member.is_live
        was_joining = member.state is MemberState.JOINING
        self._transition(member, MemberTrigger.RESTARTED)
        self._adopt_incarnation(member, message, now_us=now_us)
        if was_joining:
            return AnnounceOutcome.JOINED
        if was_live:
            member.died_us = now_us
        member.rejoin_pending = True
        return AnnounceOutcome.RESTARTED if was_live else AnnounceOutcome.REJOIN_PENDING

    def _new_member(self, message: ServerAnnounced, *, now_us: int) -> Member:
        return Member(
            server_id=message.server_id,
            incarnation=message.incarnation,
            address=message.address,
            zone=message.zone,
            weight=message.weight,
            state=MemberState.JOINING,
            detector=self._new_detector(now_us=now_us),
            declared_parts=frozenset(message.parts) or None,
            key_fingerprints=message.key_fingerprints,
            sealing_key_id=message.sealing_key_id,
        )

    def _adopt_incarnation(self, member: Member, message: ServerAnnounced, *, now_us: int) -> None:
        member.incarnation = message.incarnation
        member.address = message.address
        member.zone = message.zone
        member.weight = message.weight
        member.detector = self._new_detector(now_us=now_us)
        member.heartbeat_sequence = -1
        member.map_version = member.map_version_heard = 0
        member.map_version_sent = 0
        member.unconfirmed = member.not_hearing_since_us = None
        member.unconfirmed_beats = 0
        member.adopting_version = member.adopting_until_us = 0
        member.load = None
        member.progress.clear()
        member.progress_before.clear()
        member.declared_parts = frozenset(message.parts) or None
        member.key_fingerprints = message.key_fingerprints
        member.sealing_key_id = message.sealing_key_id
        self._declared = None
        self._lacking.clear()
        self._rings = None

    def restore(
        self, server_id: str, *, address: str, zone: str, weight: float, dead: bool, now_us: int
    ) -> bool:
        """Adopt a server known only from a loaded map (a new manager), with a fresh grace period.

        Its incarnation is unknown: the first heartbeat names it, and any announcement counts as
        a restart (a server announces only when its process starts). False when already known.
        """
        if server_id in self._members or len(self._members) >= self._config.servers_max:
            return False
        self._members[server_id] = Member(
            server_id=server_id,
            incarnation=UNKNOWN_INCARNATION,
            address=address,
            zone=zone,
            weight=weight,
            state=MemberState.DEAD if dead else MemberState.ALIVE,
            detector=self._new_detector(now_us=now_us),
            died_us=now_us if dead else None,
        )
        self._changed(membership=True)
        return True

    def heartbeat(self, message: HeartbeatReported, *, now_us: int) -> HeartbeatOutcome:
        """Apply a heartbeat: liveness, load and part progress."""
        member = self._members.get(message.server_id)
        if member is not None and member.incarnation == UNKNOWN_INCARNATION:
            member.incarnation = message.incarnation
        if member is None or message.incarnation > member.incarnation:
            return HeartbeatOutcome.UNKNOWN
        if message.incarnation < member.incarnation:
            return HeartbeatOutcome.SUPERSEDED
        if message.sequence <= member.heartbeat_sequence:
            return HeartbeatOutcome.STALE
        member.heartbeat_sequence = message.sequence
        member.detector.heard(now_us=now_us)
        member.map_version = max(member.map_version, message.map_version)
        # A map it learned from a peer is no sign that the manager's messages reach it.
        heard = message.manager_map_version
        heard = message.map_version if heard < 0 else min(heard, message.map_version)
        member.map_version_heard = max(member.map_version_heard, heard)
        unconfirmed = member.unconfirmed
        if unconfirmed is not None and member.map_version_heard >= unconfirmed[0]:
            # Versions sent after the one confirmed are watched from now (an under-estimate).
            behind = member.map_version_heard < member.map_version_sent
            member.unconfirmed = (member.map_version_sent, now_us) if behind else None
            member.unconfirmed_beats = 0
        elif unconfirmed is not None:
            member.unconfirmed_beats += 1
        member.load = message.load
        if message.declared_parts:
            member.declared_parts = frozenset(message.declared_parts)
            self._declared = None
            self._lacking.clear()
        self.record_progress(member, message.parts)
        if member.state is MemberState.DEAD:
            if message.leaving:
                return HeartbeatOutcome.DEAD_LEAVING
            member.rejoin_pending = True
            return HeartbeatOutcome.REJOIN_PENDING
        self._transition(member, MemberTrigger.HEARTBEAT_RECEIVED)
        return HeartbeatOutcome.ACCEPTED

    def record_progress(self, member: Member, parts: tuple[PartProgress, ...]) -> None:
        """Remember the newest progress per part, forgetting the stalest beyond the bound."""
        progress, before = member.progress, member.progress_before
        for report in parts:
            old = progress.pop(report.ref, None)
            if old is not None:
                before[report.ref] = (old.last_epoch, old.applied_seq)
            progress[report.ref] = report
        excess = len(progress) - self._config.part_progress_per_server_max
        for ref in list(progress)[:excess] if excess > 0 else ():
            del progress[ref]
            before.pop(ref, None)

    def join_committed(self, server_id: str, *, incarnation: int) -> bool:
        """The map now holds the member's join; False when it is no longer that incarnation."""
        member = self._members.get(server_id)
        if member is None or member.incarnation != incarnation:
            return False
        if member.state is not MemberState.JOINING:
            return False
        self._transition(member, MemberTrigger.JOIN_COMMITTED)
        return True

    def readmit(self, server_id: str, *, now_us: int) -> bool:
        """Let a dead member whose failover is over join again; False when it did not ask."""
        member = self._members.get(server_id)
        if member is None or member.state is not MemberState.DEAD or not member.rejoin_pending:
            return False
        self._transition(member, MemberTrigger.READMITTED)
        member.rejoin_pending = False
        member.died_us = None
        member.detector = self._new_detector(now_us=now_us)
        member.adopting_version = member.adopting_until_us = 0
        return True

    def depart(self, server_id: str, *, now_us: int) -> bool:
        """An ALIVE (or JOINING: readmitted after a death, its join not committed yet)
        member's last heartbeat said it left (its drain finished and its process stops): it is
        dead at once, with no silence to wait for. False otherwise."""
        member = self._members.get(server_id)
        if member is None or member.state not in (MemberState.ALIVE, MemberState.JOINING):
            return False
        self._transition(member, MemberTrigger.LEFT)
        member.died_us = now_us
        return True

    def check(self, *, now_us: int) -> list[LivenessChanged]:
        """Suspect or declare dead every member whose silence crossed its detector's line.

        Deaths by silence need a member that is still heard: while every committed member is
        silent past its suspicion line, none is declared dead (those past the death line stay
        SUSPECTED) until one is heard again. A whole fleet falling silent at once is more likely
        the manager's own trouble (its network, host or load) than every server failing, and
        declaring them dead could only fail parts over to servers it cannot hear either, or
        lose them when no server is left. A JOINING member is not in the map and dies as before.
        """
        changes: list[LivenessChanged] = []
        confirmed: list[Member] = []
        for member in self.members():
            trigger = self._silence_trigger(member, now_us=now_us)
            if trigger is None:
                continue
            if (
                trigger is MemberTrigger.SILENCE_CONFIRMED
                and member.state is not MemberState.JOINING
            ):
                confirmed.append(member)
                continue
            self._record(member, trigger, now_us, changes)
        silent = {member.server_id for member in confirmed}
        self._deaths_held = bool(confirmed) and not any(
            member.state is MemberState.ALIVE and member.server_id not in silent
            for member in self._members.values()
        )
        for member in confirmed:
            if not self._deaths_held:
                self._record(member, MemberTrigger.SILENCE_CONFIRMED, now_us, changes)
            elif member.state is MemberState.ALIVE:
                self._record(member, MemberTrigger.SILENCE_SUSPECTED, now_us, changes)
        return changes

    def deaths_held(self) -> bool:
        """Every committed member is silent: deaths by silence wait for one to be heard."""
        return self._deaths_held and not any(
            member.state is MemberState.ALIVE for member in self._members.values()
        )

    def _record(
        self, member: Member, trigger: MemberTrigger, now_us: int, changes: list[LivenessChanged]
    ) -> None:
        self._transition(member, trigger)
        if member.state is MemberState.DEAD:
            member.died_us = now_us
        changes.append(
            LivenessChanged(
                server_id=member.server_id,
                incarnation=member.incarnation,
                state=member.state,
                silent_us=now_us - member.last_heard_us,
            )
        )

    def _silence_trigger(self, member: Member, *, now_us: int) -> MemberTrigger | None:
        if member.state is MemberState.DEAD:
            return None
        if now_us >= member.dead_at_us():
            return MemberTrigger.SILENCE_CONFIRMED
        if member.state is MemberState.ALIVE and now_us >= member.detector.suspect_at_us():
            return MemberTrigger.SILENCE_SUSPECTED
        return None

    def allow_adoption(self, server_id: str, *, version: int, until_us: int) -> None:
        """`server_id` was sent `version`, which may keep it busy until `until_us`: until it
        reports that version (or later), its silence does not make it dead before then."""
        member = self._members.get(server_id)
        if member is None or member.state is MemberState.DEAD or until_us <= 0:
            return
        member.adopting_version = max(member.adopting_version, version)
        member.adopting_until_us = max(member.adopting_until_us, until_us)

    def excuse(self, *, stalled_us: int, now_us: int) -> None:
        """The manager could not read its connections for `stalled_us` up to `now_us` (a long
        callback, a paused process): what its members sent meanwhile is still in the sockets, so
        no member's silence counts that time."""
        for member in self._members.values():
            if member.state is not MemberState.DEAD:
                member.detector.excuse(stalled_us=stalled_us, now_us=now_us)

    def forget_dead(self, *, now_us: int) -> list[str]:
        """Forget members dead for `dead_servers_forget_ms` (unless they asked to rejoin)."""
        forget_after_us = self._config.dead_servers_forget_ms * 1000
        forgotten = [
            member.server_id
            for member in self.members()
            if member.state is MemberState.DEAD
            and not member.rejoin_pending
            and member.died_us is not None
            and now_us >= member.died_us + forget_after_us
        ]
        for server_id in forgotten:
            del self._members[server_id]
        if forgotten:
            self._changed(membership=True)
        return forgotten

    def next_check_us(self) -> int | None:
        """The earliest instant a member's silence changes its state, or None."""
        held = self.deaths_held()
        deadlines = [
            None
            if held and member.state is MemberState.SUSPECTED
            else self._next_deadline_us(member)
            for member in self._members.values()
        ]
        present = [deadline for deadline in deadlines if deadline is not None]
        return min(present) if present else None

    def _next_deadline_us(self, member: Member) -> int | None:
        if member.state is MemberState.DEAD:
            if member.died_us is None or member.rejoin_pending:
                return None
            return member.died_us + self._config.dead_servers_forget_ms * 1000
        if member.state is MemberState.ALIVE:
            return min(member.detector.suspect_at_us(), member.dead_at_us())
        return member.dead_at_us()
