"""Failover on the manager: fence the survivors, collect their positions, promote the best.

A failover job covers the parts of one or more dead servers (every part they are primary for)
and parts whose handoff fell silent (the manager could not tell who has the newest log). It runs
in three phases:

1. PENDING: waiting for the map to settle (no commit in flight), so that the fence version is
   exactly the version the promotion will commit at;
2. PREPARING: `FailoverPrepared(map_version=current + 1)` went to every live holder of those
   parts; each answers `PositionsReported` after fencing (no entries below that epoch from now);
   the job waits for all of them or `failover_prepare_timeout_ms`; at that deadline, the
   candidates still silent that the manager heard from since it sent the fence and that hear
   it (live, so they may hold writes nobody who answered has) get their FailoverPrepared again
   and one more `failover_prepare_timeout_ms` (`plan_resend`); a candidate declared dead
   meanwhile is not waited for;
3. PROMOTING: the promotion delta is at the head of the commit queue: each part's new primary is
   the candidate with the highest applied sequence number (a replicated write was acknowledged
   only once a replica held it, and fencing stops the old primary from adding more; a handoff's
   live source that did not answer stays primary unless the target has written,
   `_silent_source`), replicas are topped up to the placement's `replica_count`, and parts
   no live server holds are removed and reported lost, with every other part of their
   sessions (a session does not go on without one of its parts). While a job prepares or
   promotes, no other change commits.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from forehand.core._manager_events import PartPromoted, ReplicaPosition
from forehand.core._manager_planning import fill_replicas, key_of, override, ref_of
from forehand.core.messages import FailoverPrepared, PartRef, PositionsReported
from forehand.errors import LocalProtocolError
from forehand.placement import (
    Operation,
    PartKey,
    PartsRemoved,
    Placement,
    ServerMarkedDead,
    ServerState,
    ShardMap,
)

__all__ = [
    "FailoverJob",
    "FailoverPhase",
    "FailoverTrigger",
    "fire",
    "transition_table",
    "Promotion",
    "build_promotion",
    "carry_landed",
    "count_unreplicated",
    "plan_prepare",
    "plan_resend",
    "record_positions",
]

UNKNOWN_SEQ = -1
"""The position of a candidate that did not say how far it is."""


class FailoverPhase(enum.Enum):
    """Where one failover job stands."""

    PENDING = "pending"
    """Waiting for the commit in flight to settle; more deaths may join."""
    PREPARING = "preparing"
    """Fenced; collecting positions."""
    PROMOTING = "promoting"
    """The promotion is queued or being committed."""
    COMPLETED = "completed"
    """The promotion is committed. Terminal."""
    ABANDONED = "abandoned"
    """The promotion could not be built; a successor job retries it. Terminal."""


class FailoverTrigger(enum.Enum):
    """What moves a failover job between phases."""

    MAP_SETTLED = "map_settled"
    POSITIONS_COLLECTED = "positions_collected"
    PROMOTION_COMMITTED = "promotion_committed"
    PROMOTION_DROPPED = "promotion_dropped"


_TRANSITIONS: dict[tuple[FailoverPhase, FailoverTrigger], FailoverPhase] = {
    (FailoverPhase.PENDING, FailoverTrigger.MAP_SETTLED): FailoverPhase.PREPARING,
    (FailoverPhase.PREPARING, FailoverTrigger.POSITIONS_COLLECTED): FailoverPhase.PROMOTING,
    (FailoverPhase.PROMOTING, FailoverTrigger.PROMOTION_COMMITTED): FailoverPhase.COMPLETED,
    (FailoverPhase.PROMOTING, FailoverTrigger.PROMOTION_DROPPED): FailoverPhase.ABANDONED,
}


def transition_table() -> list[tuple[FailoverPhase, FailoverTrigger, FailoverPhase]]:
    """Every legal failover transition as (from, trigger, to), for docs and diagrams."""
    return [(source, trigger, target) for (source, trigger), target in _TRANSITIONS.items()]


def fire(job: FailoverJob, trigger: FailoverTrigger) -> None:
    """Move `job` along the table; an illegal trigger is a programming error."""
    phase = _TRANSITIONS.get((job.phase, trigger))
    if phase is None:
        raise LocalProtocolError(
            f"failover {job.failover_id}: no transition from {job.phase.name} on {trigger.name}"
        )
    job.phase = phase


@dataclass(slots=True, kw_only=True)
class FailoverJob:
    """One failover (mutable state owned by the manager)."""

    failover_id: int
    """Manager-unique id, for events."""
    created_us: int
    """When the first death (or silent handoff) opened the job."""
    dead: set[str] = field(default_factory=set)
    """Dead servers whose primaries fail over."""
    explicit: dict[PartKey, str] = field(default_factory=dict)
    """Parts failed over for another reason (a silent handoff), each with an extra candidate
    (the handoff's source, which may not be in the placement) or ""."""
    handoff_ids: list[int] = field(default_factory=list)
    """Handoffs that fell back to this failover."""
    moved_at: dict[PartKey, int] = field(default_factory=dict)
    """For parts of a handoff whose source was live: the map version of the move, which no
    entry of the source's own can carry (`_silent_source`)."""
    phase: FailoverPhase = FailoverPhase.PENDING
    """Where it stands."""
    fence_version: int = 0
    """The version FailoverPrepared fenced at (set when preparing)."""
    prepared_us: int = 0
    """When FailoverPrepared went out."""
    deadline_us: int | None = None
    """When the job stops waiting for positions."""
    resent: bool = False
    """Whether the silent live candidates got their FailoverPrepared again (once per job)."""
    sent: dict[str, list[FailoverPrepared]] = field(default_factory=dict)
    """The FailoverPrepared messages each candidate was sent (for `plan_resend`)."""
    parts: tuple[PartKey, ...] = ()
    """The parts decided on, fixed when preparing."""
    candidates: dict[PartKey, tuple[str, ...]] = field(default_factory=dict)
    """Live holders of each part, preferred first (current primary, replicas, extra)."""
    keys: dict[PartRef, PartKey] = field(default_factory=dict)
    """The key of each part's reference, as sent: answers name parts by reference, and building
    a key hashes and checks it (a failover of tens of thousands of parts gets two answers each)."""
    waiting: set[str] = field(default_factory=set)
    """Candidates that have not answered yet (every message they were sent)."""
    unanswered: dict[str, int] = field(default_factory=dict)
    """FailoverPrepared messages each candidate has not answered yet (a candidate of more than
    `failover_prepare_parts_max` parts gets several, and answers each on its own)."""
    answered: set[str] = field(default_factory=set)
    """Candidates that answered every message they were sent."""
    positions: dict[PartKey, dict[str, int]] = field(default_factory=dict)
    """Reported applied_seq per part and candidate."""
    last_epochs: dict[PartKey, dict[str, int]] = field(default_factory=dict)
    """Reported epoch of the last entry per part and candidate (newer histories rank first)."""
    promotion: Promotion | None = None
    """The promotion last built: it may have landed though its store answer was lost."""

    def absorb(self, *, dead: Iterable[str] = (), explicit: Mapping[PartKey, str] = {}) -> None:
        """Add more dead servers or parts (only while PENDING)."""
        assert self.phase is FailoverPhase.PENDING, self.phase
        self.dead.update(dead)
        for key, extra in explicit.items():
            self.explicit.setdefault(key, extra)


@dataclass(frozen=True, slots=True, kw_only=True)
class Promotion:
    """The promotion delta's operations and what they decide."""

    operations: tuple[Operation, ...]
    """Dead servers marked, promoted parts and repaired replicas overridden, the sessions of
    lost parts removed."""
    promotions: tuple[PartPromoted, ...]
    """One decision per part saved."""
    lost: tuple[PartKey, ...]
    """Parts no live server holds."""
    replicas_added: int
    """Replica roles assigned to servers that did not hold the part."""
    intended: frozenset[PartKey]
    """Parts the promotion means to move (for the stability check)."""
    exposed: frozenset[PartKey] = frozenset()
    """Parts a dead server was a replica of: with the promoted ones, the parts whose replicas
    the promotion may leave short (`count_unreplicated`)."""
    unreplicated: int = 0
    """Parts it leaves with no replica although `replica_count` asks for some: no live holder
    survived beside the primary and no server may take a new role (ACTIVE and alive). Counted
    on the map the promotion leads to (`count_unreplicated`)."""
    emptied: tuple[PartKey, ...] = ()
    """Promoted parts whose new primary holds none of their history (position 0, no entry)
    although their last primary reported some: a second failure before a new replica caught
    up (its snapshot not yet installed), or an `async` part whose writes had not shipped yet
    (its replicas are then up to date as far as anything was replicated: the manager cannot
    tell the two apart). The promotion goes ahead (the part keeps serving), and says so."""
    ended: tuple[PartKey, ...] = ()
    """The other parts of the sessions of `lost`, removed with them (saved or not): a session
    does not go on without one of its parts, which no client could open again, so it ends
    whole and its clients are told (CLOSE_SESSION) instead of locating the lost part in
    vain."""

    @property
    def sessions_lost(self) -> tuple[bytes, ...]:
        """The sessions ended: those of `lost`, in order."""
        return tuple(sorted({key.session_id for key in self.lost}))


def _candidates(
    placement: Placement, extra: str, dead: set[str], live: Callable[[str], bool]
) -> tuple[str, ...]:
    ordered: list[str] = []
    for server_id in (placement.primary, *placement.replicas, extra):
        if server_id and server_id not in dead and live(server_id) and server_id not in ordered:
            ordered.append(server_id)
    return tuple(ordered)


def _failing_parts(job: FailoverJob, current: ShardMap) -> list[PartKey]:
    parts: set[PartKey] = {key for key in job.explicit if key in current}
    known = {entry.server_id for entry in current.servers}
    for server_id in job.dead:
        if server_id in known:
            parts.update(current.parts_for(server_id).primary)
    return sorted(parts)


def plan_prepare(
    job: FailoverJob,
    current: ShardMap,
    *,
    live: Callable[[str], bool],
    parts_per_message_max: int,
    now_us: int,
    timeout_us: int,
) -> list[tuple[str, FailoverPrepared]]:
    """Fix the job's parts and candidates; the FailoverPrepared messages to send, by server."""
    fire(job, FailoverTrigger.MAP_SETTLED)
    job.fence_version = current.version + 1
    job.prepared_us = now_us
    job.deadline_us = now_us + timeout_us
    job.parts = tuple(_failing_parts(job, current))
    job.keys = {}
    live = _memoized(live)
    by_server: dict[str, list[PartRef]] = {}
    for key, placement in zip(job.parts, current.lookup_many(job.parts), strict=True):
        extra = job.explicit.get(key, "")
        candidates = _candidates(placement, extra, job.dead, live)
        job.candidates[key] = candidates
        ref = ref_of(key)
        job.keys[ref] = key
        for server_id in candidates:
            by_server.setdefault(server_id, []).append(ref)
    job.waiting = set(by_server)
    messages: list[tuple[str, FailoverPrepared]] = []
    for server_id in sorted(by_server):
        refs = by_server[server_id]
        for start in range(0, len(refs), parts_per_message_max):
            chunk = tuple(refs[start : start + parts_per_message_max])
            prepared = FailoverPrepared(map_version=job.fence_version, parts=chunk)
            messages.append((server_id, prepared))
            job.sent.setdefault(server_id, []).append(prepared)
            job.unanswered[server_id] = job.unanswered.get(server_id, 0) + 1
    return messages


def plan_resend(
    job: FailoverJob, *, reachable_since: Callable[[str, int], bool], now_us: int, timeout_us: int
) -> list[tuple[str, FailoverPrepared]]:
    """At the deadline, the FailoverPrepared messages to send again, by server; none when the
    job should promote now.

    A candidate still silent but heard from since the fence went out is live: its answer or
    the fence was lost or delayed (a slow link, a paused loop). It may be the only copy of a
    `replicated` write the dead primary acknowledged (one replica's acknowledgement suffices),
    and its heartbeat, older or naming other parts, cannot show it. Promoting the copies that
    answered would drop that write, and the fence would make the silent copy step down to the
    new primary's shorter log. So it gets the fence again and the job waits once more; the
    server answers a repeated fence as the first. A candidate not heard from since is not
    waited for (it may be dead and the failure detector does not know it yet), nor one whose
    heartbeats leave the maps sent to it unconfirmed (the manager's messages to it are lost, a
    one-way partition: it would not get the fence again, and `_silent_source` or its heartbeat
    decides for it), and the job resends once: a failover waits at most twice
    `failover_prepare_timeout_ms`.
    """
    if job.resent or job.phase is not FailoverPhase.PREPARING:
        return []
    silent = [s for s in sorted(job.waiting) if reachable_since(s, job.prepared_us)]
    if not silent:
        return []
    job.resent = True
    job.deadline_us = now_us + timeout_us
    messages: list[tuple[str, FailoverPrepared]] = []
    for server_id in silent:
        sent = job.sent.get(server_id, [])
        # Every message counts again: an answer to the first copy or to the second is as good.
        job.unanswered[server_id] = len(sent)
        messages.extend((server_id, prepared) for prepared in sent)
    return messages


def record_positions(job: FailoverJob, message: PositionsReported) -> bool:
    """Take a candidate's answer; True when it was expected (and now counts)."""
    if job.phase is not FailoverPhase.PREPARING or message.map_version != job.fence_version:
        return False
    server_id = message.server_id
    if server_id not in job.waiting and server_id not in job.answered:
        return False
    if server_id in job.waiting:
        # One answer per message: the candidate counts as answered once all of them came (the
        # parts of a message not answered yet still rank by their heartbeat positions).
        job.unanswered[server_id] -= 1
        if job.unanswered[server_id] <= 0:
            job.waiting.discard(server_id)
            job.answered.add(server_id)
    keys = job.keys
    for progress in message.parts:
        key = keys.get(progress.ref)
        if key is not None:
            job.positions.setdefault(key, {})[server_id] = progress.applied_seq
            job.last_epochs.setdefault(key, {})[server_id] = progress.last_epoch
    return True


Fallback = Callable[[str, PartKey], tuple[int, int] | None]
"""A candidate's `(last_epoch, applied_seq)` for a part as its last heartbeat said, or None."""


def _rank(job: FailoverJob, key: PartKey, fallback: Fallback) -> list[tuple[str, int, int, bool]]:
    """(server, last_epoch, applied_seq, reported) for the candidates that may hold the part."""
    reported = job.positions.get(key, {})
    epochs = job.last_epochs.get(key, {})
    ranked: list[tuple[str, int, int, bool]] = []
    for server_id in job.candidates.get(key, ()):
        if server_id in reported:
            ranked.append((server_id, epochs.get(server_id, 0), reported[server_id], True))
        elif server_id not in job.answered:
            beat = fallback(server_id, key)
            last_epoch, seq = (UNKNOWN_SEQ, UNKNOWN_SEQ) if beat is None else beat
            ranked.append((server_id, last_epoch, seq, False))
    return ranked


def _choose(ranked: list[tuple[str, int, int, bool]]) -> tuple[str, int] | None:
    """The best candidate and its position: the newest, longest history, then reported first.

    Candidates may hold diverged logs (a replaced primary kept writing under its old epoch while
    cut off), so the epoch of the last entry ranks before the length, as in Raft's up-to-date
    rule; logs of one history rank by length alone. A candidate that did not answer ranks by its
    last heartbeat: a live holder's history only grows, so a heartbeat under-states it, and one
    that says the candidate is ahead of every answer means it is. It wins then: the answers are
    fenced, and the candidate promoted needs no fence. Before, every answer ranked first, so a
    handoff's source that kept serving while the manager's messages to it were lost (a one-way
    partition) lost the writes it acknowledged after the target's copy to a target far behind.
    At a tie the answer wins (fresh and fenced), then the preference order.
    """
    best: tuple[str, int] | None = None
    best_key: tuple[int, int, bool] | None = None
    for server_id, last_epoch, seq, reported in ranked:
        # Candidates come preferred first, so a tie keeps the earlier one.
        if best_key is None or (last_epoch, seq, reported) > best_key:
            best, best_key = (server_id, seq), (last_epoch, seq, reported)
    return best


def _silent_source(
    job: FailoverJob, key: PartKey, ranked: list[tuple[str, int, int, bool]]
) -> tuple[str, int] | None:
    """The source of a handoff that fell back to failover, when it must stay primary: live,
    silent to the fence for this part, and no candidate holds an entry written at the move's
    version or later.

    Such a source may still be serving: the manager's messages to it may be lost (a one-way
    partition) while its heartbeats arrive. Its heartbeat says how far it was, not how far it is
    now, and may not even name the part (progress goes in rotating batches). Promoting another
    copy would leave it acknowledging writes on a history the failover gave up. A candidate with
    an entry of the move's version or later proves the target served, which it does only after
    applying the source's sealed log: the source sealed, and the usual ranking is safe. A source
    kept this way that is really gone is declared dead in its turn, and its parts fail over then.
    """
    moved_at = job.moved_at.get(key)
    source = job.explicit.get(key, "")
    if moved_at is None or not source:
        return None
    kept: tuple[str, int] | None = None
    for server_id, last_epoch, seq, reported in ranked:
        if last_epoch >= moved_at:
            return None
        if server_id == source and not reported:
            kept = (server_id, seq)
    return kept


def build_promotion(
    job: FailoverJob,
    current: ShardMap,
    *,
    live: Callable[[str], bool],
    eligible: list[str],
    fallback: Fallback,
    parts_of: Callable[[bytes], Iterable[str]],
    lacking: Callable[[str], Collection[str]] = lambda part: (),
) -> Promotion:
    """The promotion against `current`: every decision, lost part and repaired override.
    `parts_of` names a session's parts (to end the sessions of lost parts whole); `lacking`,
    the servers whose app does not declare a part (new replicas go there last)."""
    dead = job.dead
    states = {entry.server_id: entry.state for entry in current.servers}
    operations: list[Operation] = [
        ServerMarkedDead(server_id=server_id)
        for server_id in sorted(dead)
        if states.get(server_id) not in (None, ServerState.DEAD)
    ]
    count = current.config.replica_count
    lost: list[PartKey] = []
    emptied: list[PartKey] = []
    chosen: list[tuple[PartKey, Placement, str, int, list[tuple[str, int, int, bool]]]] = []
    live = _memoized(live)
    present = [key for key in job.parts if key in current]
    for key, placement in zip(present, current.lookup_many(present), strict=True):
        if key not in job.explicit and placement.primary not in dead:
            continue
        ranked = _rank(job, key, fallback)
        alive = [entry for entry in ranked if live(entry[0]) and entry[0] not in dead]
        choice = _silent_source(job, key, alive) or _choose(alive)
        if choice is None:
            lost.append(key)
            continue
        primary, seq = choice
        if seq == 0 and _holds_history(fallback(placement.primary, key)):
            chosen_epoch = next((e for s, e, _, _ in alive if s == primary), 0)
            if chosen_epoch == 0:
                emptied.append(key)
        chosen.append((key, placement, primary, seq, ranked))
    ended_sessions = {key.session_id for key in lost}
    ended = _ended_parts(current, ended_sessions, set(lost), parts_of)
    # The parts of ended sessions are removed, so none of them is promoted or repaired.
    decided: set[PartKey] = set(ended)
    promotions: list[PartPromoted] = []
    added = 0
    for key, placement, primary, seq, ranked in chosen:
        if key.session_id in ended_sessions:
            continue
        keep = [s for s in placement.servers if s not in dead and live(s)]
        replicas = fill_replicas(
            key,
            primary=primary,
            keep=keep,
            eligible=eligible,
            count=count,
            lacking=lacking(key.part),
        )
        added += sum(1 for s in replicas if s not in placement.servers)
        operations.append(override(key, Placement(primary=primary, replicas=replicas)))
        decided.add(key)
        positions = tuple(
            ReplicaPosition(server_id=s, applied_seq=q) for s, _, q, _ in sorted(ranked)
        )
        promotions.append(
            PartPromoted(
                ref=ref_of(key),
                previous_primary=placement.primary,
                primary=primary,
                applied_seq=seq,
                positions=positions,
            )
        )
    added += _repair_overrides(
        current,
        operations,
        dead=dead,
        decided=decided,
        live=live,
        eligible=eligible,
        lacking=lacking,
    )
    operations.extend(_removals([*lost, *ended]))
    return Promotion(
        operations=tuple(operations),
        promotions=tuple(promotions),
        lost=tuple(lost),
        replicas_added=added,
        intended=frozenset(job.parts),
        emptied=tuple(k for k in emptied if k.session_id not in ended_sessions),
        ended=ended,
        # Hash-placed parts a dead server replicated fall to the next ACTIVE server on the
        # ring, or to none: they can end with no replica as well as the promoted ones.
        exposed=frozenset(
            key
            for server_id in sorted(dead)
            if server_id in states
            for key in current.parts_for(server_id).replica
        ),
    )


def _ended_parts(
    current: ShardMap,
    sessions: set[bytes],
    lost: set[PartKey],
    parts_of: Callable[[bytes], Iterable[str]],
) -> tuple[PartKey, ...]:
    """The parts of `sessions` in `current` other than the `lost` ones."""
    ended = []
    for session_id in sorted(sessions):
        for part in parts_of(session_id):
            key = PartKey(session_id=session_id, part=part)
            if key not in lost and key in current:
                ended.append(key)
    return tuple(ended)


def _holds_history(position: tuple[int, int] | None) -> bool:
    """Whether a `(last_epoch, applied_seq)` from a heartbeat names any applied entry."""
    return position is not None and position[1] > 0


def count_unreplicated(promotion: Promotion, new_map: ShardMap) -> Promotion:
    """`promotion` with `unreplicated` counted on `new_map`, the map it leads to: its parts,
    promoted or replicated by a dead server, that the map gives no replica although
    `replica_count` asks for some."""
    if not new_map.config.replica_count:
        return promotion
    keys = {key_of(p.ref) for p in promotion.promotions} | promotion.exposed
    present = sorted(key for key in keys if key in new_map)
    unreplicated = sum(1 for placement in new_map.lookup_many(present) if not placement.replicas)
    return replace(promotion, unreplicated=unreplicated)


def _memoized(live: Callable[[str], bool]) -> Callable[[str], bool]:
    """`live` asked once per server: a pass over a failover's parts asks it for each holder of
    each part, and nothing changes liveness during the pass."""
    answers: dict[str, bool] = {}

    def ask(server_id: str) -> bool:
        answer = answers.get(server_id)
        if answer is None:
            answer = answers[server_id] = live(server_id)
        return answer

    return ask


def carry_landed(promotion: Promotion, previous: Promotion | None, current: ShardMap) -> Promotion:
    """`promotion` with the decisions of `previous` that `current` already shows.

    A promotion whose store answer was lost may have landed: the reload shows its parts decided,
    so the promotion built again on it has no operation left for them, and its events would
    leave out parts promoted or removed as lost, or left with no replica.
    """
    if previous is None:
        return promotion
    decided = {key_of(p.ref) for p in promotion.promotions} | set(promotion.lost)
    carried = tuple(
        p
        for p in previous.promotions
        if (key := key_of(p.ref)) not in decided
        and key in current
        and current.primary_of(key) == p.primary
    )
    lost = tuple(key for key in previous.lost if key not in decided and key not in current)
    carried_keys = {key_of(p.ref) for p in carried}
    emptied = promotion.emptied + tuple(k for k in previous.emptied if k in carried_keys)
    ended = promotion.ended + tuple(
        key for key in previous.ended if key not in current and key not in promotion.ended
    )
    # The parts whose replicas the landed promotion may have left short: the reload shows their
    # dead replicas gone, so the rebuild would no longer find them.
    exposed = promotion.exposed | previous.exposed
    return replace(
        promotion,
        promotions=promotion.promotions + carried,
        lost=promotion.lost + lost,
        exposed=exposed,
        emptied=emptied,
        ended=ended,
    )


def _repair_overrides(
    current: ShardMap,
    operations: list[Operation],
    *,
    dead: set[str],
    decided: set[PartKey],
    live: Callable[[str], bool],
    eligible: list[str],
    lacking: Callable[[str], Collection[str]],
) -> int:
    """Replace dead replicas inside the overrides of parts whose primary survives."""
    added = 0
    count = current.config.replica_count
    for key, placement in sorted(current.overrides(), key=lambda item: item[0]):
        if key in decided or placement.primary in dead:
            continue
        if not any(server_id in dead for server_id in placement.replicas):
            continue
        keep = [s for s in placement.replicas if s not in dead and live(s)]
        replicas = fill_replicas(
            key,
            primary=placement.primary,
            keep=keep,
            eligible=eligible,
            count=count,
            lacking=lacking(key.part),
        )
        added += sum(1 for s in replicas if s not in placement.servers)
        operations.append(override(key, Placement(primary=placement.primary, replicas=replicas)))
    return added


def _removals(lost: list[PartKey]) -> list[Operation]:
    by_session: dict[bytes, list[str]] = {}
    for key in lost:
        by_session.setdefault(key.session_id, []).append(key.part)
    return [
        PartsRemoved(session_id=session_id, parts=tuple(parts))
        for session_id, parts in sorted(by_session.items())
    ]
