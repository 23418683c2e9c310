"""Pure planning helpers of the manager over one `ShardMap`: replicas, stability, endpoints.

The central rule lives here: *a map change never moves a live primary's part unless the change
means to*. Consistent hashing with bounded loads reassigns some parts whenever the set of
eligible servers or their capacities change (a join, a death, a drain, even a new session that
fills a server); a primary that silently changes would skip the handoff procedure (no sealed
log, no client HANDOFF) or a failover's fencing. `stabilize` therefore applies a candidate change,
diffs it against the current map, and pins every part whose primary moved without being meant to
back on its old primary with an explicit override, until the result is stable.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence

from forehand.core.messages import PartRef
from forehand.placement import (
    Delta,
    Operation,
    PartKey,
    Placement,
    PlacementOverridden,
    ServerState,
    ShardMap,
)
from forehand.wire import Endpoint

__all__ = [
    "DEFAULT_PORT",
    "REPLICA_CANDIDATES_MAX",
    "candidate_window",
    "stabilize_additions",
    "STABILIZE_ROUNDS_MAX",
    "Stabilized",
    "endpoint_for",
    "fill_replicas",
    "key_of",
    "override",
    "ref_of",
    "rendezvous_order",
    "stabilize",
    "steer_additions",
]

STABILIZE_ROUNDS_MAX = 4
"""Most rounds of pinning per change (each round pins what the previous one still moved)."""
DEFAULT_PORT = 4433
"""Port of an endpoint whose map address has none (the simulator routes by server id)."""
REPLICA_CANDIDATES_MAX = 32
"""Most eligible servers `fill_replicas` ranks for a part's new replicas: with more eligible
servers it ranks a sample of this many taken along the part's walk (`candidate_window`), so
choosing a replica costs the same in a fleet of ten thousand servers as in one of thirty."""
_MASK64 = (1 << 64) - 1


def key_of(ref: PartRef) -> PartKey:
    """The placement key of a cluster-message part reference."""
    return PartKey(session_id=ref.session_id, part=ref.part)


def ref_of(key: PartKey) -> PartRef:
    """The cluster-message reference of a placement key."""
    return PartRef(session_id=key.session_id, part=key.part)


def override(key: PartKey, placement: Placement | None) -> PlacementOverridden:
    """The operation that pins `key` to `placement` (None: follow the hash again)."""
    return PlacementOverridden(session_id=key.session_id, part=key.part, placement=placement)


def endpoint_for(server_id: str, address: str) -> Endpoint:
    """The wire endpoint of a server from its `host:port` map address."""
    host, separator, port_text = address.rpartition(":")
    if separator and host and port_text.isdigit() and 0 < int(port_text) < 1 << 16:
        return Endpoint(server_id=server_id, host=host.strip("[]"), port=int(port_text))
    return Endpoint(server_id=server_id, host=server_id, port=DEFAULT_PORT)


def _rank(key_hash: int, server_id: str) -> bytes:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(key_hash.to_bytes(8, "big"))
    digest.update(server_id.encode())
    return digest.digest()


def rendezvous_order(key: PartKey, servers: Iterable[str]) -> list[str]:
    """`servers` in rendezvous-hash order for `key`: stable, spread, the same in every process."""
    return sorted(servers, key=lambda server_id: _rank(key.key_hash, server_id), reverse=True)


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a well-spread 64-bit value from any integer."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def _walk(key: PartKey, size: int) -> tuple[int, int]:
    """Start and step of `key`'s walk over `size` positions; the step is coprime with `size`,
    so the walk visits every position once before it repeats."""
    first = _mix64(key.key_hash)
    start = first % size
    step = 1 if size < 3 else _mix64(first) % (size - 1) + 1
    while math.gcd(step, size) != 1:
        step += 1
    return start, step


def candidate_window(
    key: PartKey, servers: Sequence[str], *, count: int, window: int = 0
) -> list[str]:
    """The `window`-th group of `count` servers along `key`'s walk over `servers`, in rendezvous
    order; all of `servers` (in rendezvous order) when there are at most `count`.

    The walk is a permutation of `servers` fixed by the key, so successive windows (the manager
    moves a part's window on after each planning pass that found no target) cover every server
    in `ceil(len(servers) / count)` passes, each pass costing `count` candidates, not the fleet.
    `servers` must be in the same order in every call (the map's order: sorted by id).
    """
    size = len(servers)
    if size <= count:
        return rendezvous_order(key, servers)
    windows = -(-size // count)
    begin = (window % windows) * count
    start, step = _walk(key, size)
    picked = [servers[(start + i * step) % size] for i in range(begin, min(begin + count, size))]
    return rendezvous_order(key, picked)


def fill_replicas(
    key: PartKey,
    *,
    primary: str,
    keep: Sequence[str],
    eligible: Sequence[str],
    count: int,
    lacking: Collection[str] = (),
) -> tuple[str, ...]:
    """Replicas for `key`: those of `keep` that are not the primary, then rendezvous picks.

    The picks rank every eligible server when there are at most `REPLICA_CANDIDATES_MAX`, else a
    sample of that many along the key's walk (plus what the sample needs to cover the ones
    already chosen). Servers in `lacking` (whose app does not declare the part: a replica there
    promoted would answer UNKNOWN_OP) come after every other: when the sample holds too few of
    the others, they are sampled apart (a scan of `eligible`, during a rolling upgrade only).
    """
    chosen: list[str] = []
    for server_id in keep:
        if server_id != primary and server_id not in chosen and len(chosen) < count:
            chosen.append(server_id)
    if len(chosen) < count:
        taken = {primary, *chosen}
        spare = _spare(key, eligible, taken)
        if lacking:
            good = [s for s in spare if s not in lacking]
            if len(good) < count - len(chosen) and len(spare) < len(eligible) - len(taken):
                good = _spare(key, [s for s in eligible if s not in lacking], taken)
            ordered = rendezvous_order(key, good) + rendezvous_order(
                key, [s for s in spare if s in lacking]
            )
        else:
            ordered = rendezvous_order(key, spare)
        chosen.extend(ordered[: count - len(chosen)])
    return tuple(chosen)


def _spare(key: PartKey, eligible: Sequence[str], taken: set[str]) -> list[str]:
    """The candidates `fill_replicas` ranks: every eligible server not `taken` up to
    `REPLICA_CANDIDATES_MAX` of them, else a sample of that many along the key's walk."""
    if len(eligible) <= REPLICA_CANDIDATES_MAX + len(taken):
        return [s for s in eligible if s not in taken]
    sample = candidate_window(key, eligible, count=REPLICA_CANDIDATES_MAX + len(taken), window=0)
    return [s for s in sample if s not in taken]


class Stabilized:
    """A change ready to commit: delta, resulting map, what it pinned and what still moves."""

    __slots__ = ("delta", "implicit_moves", "new_map", "pinned")

    def __init__(
        self,
        delta: Delta,
        new_map: ShardMap,
        pinned: tuple[PartKey, ...],
        implicit_moves: tuple[PartKey, ...],
    ) -> None:
        self.delta = delta
        """The delta to commit (base = the current version)."""
        self.new_map = new_map
        """The version it produces."""
        self.pinned = pinned
        """Parts pinned to their old primary so the change would not move them."""
        self.implicit_moves = implicit_moves
        """Live primaries the change still moves (servers hand them off implicitly)."""


def _usable(candidate: ShardMap, server_id: str) -> bool:
    """Whether `server_id` is in the map and not DEAD (one lookup, not a pass over the map)."""
    try:
        return candidate.server(server_id).state is not ServerState.DEAD
    except KeyError:
        return False


def _pin_for(candidate: ShardMap, source: Placement, target: Placement) -> Placement | None:
    """The old placement of a part the change would move, topped up from the new one."""
    if not _usable(candidate, source.primary):
        return None
    replicas: list[str] = []
    for server_id in (*source.replicas, *target.servers):
        if (
            server_id != source.primary
            and server_id not in replicas
            and _usable(candidate, server_id)
        ):
            replicas.append(server_id)
    return Placement(
        primary=source.primary, replicas=tuple(replicas[: candidate.config.replica_count])
    )


def _unintended(
    current: ShardMap, candidate: ShardMap, intended: Callable[[PartKey], bool]
) -> list[tuple[PartKey, Placement, Placement]]:
    return [
        (moved.key, moved.source, moved.target)
        for moved in current.diff(candidate).moved
        if moved.source.primary != moved.target.primary and not intended(moved.key)
    ]


def stabilize(
    current: ShardMap,
    operations: Sequence[Operation],
    *,
    intended: Callable[[PartKey], bool],
) -> Stabilized:
    """The delta of `operations`, plus pins for the live primaries it would move unintentionally.

    Bounded loads make pinning cascade (a pin uses up its server's capacity, which pushes other
    parts along their walk), so pinning runs in rounds and keeps the last round that leaves the
    fewest unintended moves; what still moves, the servers hand off implicitly (PART_MOVED).
    Placement errors (`InvalidDeltaError`) go to the caller, which drops the change.
    """
    pins: dict[PartKey, PlacementOverridden] = {}
    best: Stabilized | None = None
    for _ in range(STABILIZE_ROUNDS_MAX):
        delta = current.delta(*operations, *pins.values())
        candidate = current.apply(delta)
        moves = _unintended(current, candidate, intended)
        # A pin that only pushes another part along the walk (as many moves as before) is kept
        # and the pushed part pinned in turn: stopping there left parts flip-flopping between
        # two servers from one commit to the next, each flip an implicit handoff.
        if best is not None and len(moves) > len(best.implicit_moves):
            break
        best = Stabilized(delta, candidate, tuple(sorted(pins)), tuple(m[0] for m in moves))
        fresh = {
            key: override(key, pin)
            for key, source, target in moves
            if key not in pins and (pin := _pin_for(candidate, source, target)) is not None
        }
        if not fresh:
            break
        pins.update(fresh)
    assert best is not None
    return best


def steer_additions(
    current: ShardMap,
    operations: Sequence[Operation],
    *,
    added: Sequence[PartKey],
    avoid: frozenset[str],
    eligible: Sequence[str],
    lacking: Mapping[str, frozenset[str]] | None = None,
) -> Stabilized:
    """`stabilize_additions`, with new parts steered off servers that should not take them.

    The risk policy stops new placements on the servers it flags (`avoid`), and a server whose
    app does not declare a part (`lacking`, by part name: an old version beside new ones in a
    rolling upgrade) would answer its every call UNKNOWN_OP. A new part whose hash primary is
    avoided or lacks it, or one of whose hash replicas lacks it, is pinned to the first server of
    its rendezvous order among `eligible` that is neither, with replicas from the eligible
    servers that declare it first (`fill_replicas`). A part no eligible server may take stays
    where the hash puts it.
    """
    stable = stabilize_additions(current, operations, added=added)
    lacking = lacking or {}
    if not avoid and not lacking:
        return stable
    count = current.config.replica_count
    # A pin changes the hash-placed counts, so a new part the first look found elsewhere may
    # then be pushed onto an avoided server: look again, at most once per new part (each round
    # pins at least one more).
    steered: dict[PartKey, Operation] = {}
    for _ in range(len(added)):
        landed: list[tuple[PartKey, list[str], frozenset[str]]] = []
        for key in added:
            if key in steered:
                continue
            without = lacking.get(key.part, frozenset())
            primary = stable.new_map.primary_of(key)
            if primary not in avoid and not (
                without
                and (
                    primary in without
                    or any(r in without for r in stable.new_map.lookup(key).replicas)
                )
            ):
                continue
            declaring = [s for s in eligible if s not in without]
            allowed = [s for s in declaring if s not in avoid]
            if not allowed and without:
                # A server whose app lacks the part would fail its every call: one the risk
                # policy avoids is still better, when every server declaring it is avoided.
                allowed = declaring
            if allowed:
                landed.append((key, allowed, without))
        if not landed:
            break
        for key, allowed, shunned in landed:
            primary = rendezvous_order(key, allowed)[0]
            replicas = fill_replicas(
                key, primary=primary, keep=(), eligible=eligible, count=count, lacking=shunned
            )
            steered[key] = override(key, Placement(primary=primary, replicas=replicas))
        stable = stabilize_additions(current, [*operations, *steered.values()], added=added)
    return stable


def stabilize_additions(
    current: ShardMap, operations: Sequence[Operation], *, added: Sequence[PartKey]
) -> Stabilized:
    """`stabilize` for a change that only adds parts, skipping the diff in the common case.

    New parts can push existing ones along their walk only when a server is at its bound, and
    every push leaves a trace in the primary counts: the pushed part's new server holds one more
    than the new parts alone explain. When the counts add up, nothing moved and the (costly,
    whole-map) diff is skipped; otherwise the full check runs.
    """
    delta = current.delta(*operations)
    candidate = current.apply(delta)
    expected = dict(current.primary_loads())
    for key in added:
        primary = candidate.primary_of(key)
        expected[primary] = expected.get(primary, 0) + 1
    if candidate.primary_loads() == expected:
        return Stabilized(delta, candidate, (), ())
    return stabilize(current, operations, intended=lambda key: False)
