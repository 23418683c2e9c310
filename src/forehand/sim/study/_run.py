"""One policy's run: the real ManagerCore over the fleet model, tick by tick.

The manager starts as a manager restarted over a running fleet does: it loads a map of every
server and session from its store (built here with the placement's public API), adopts the
servers it lists, and from then on hears one heartbeat per reachable server per tick. Simulated
servers answer what the manager asks of them (handoff reports after a short catch-up and backup
period; failover fences are left to the manager's prepare timeout). Between heartbeats the
manager's timers run at the instants it asks for, so its deadlines fire in order.

Sessions are never individual objects: parts live in numpy arrays (primary server per part, in
session order), synchronised from the manager's map by `ShardMap.diff` after every commit.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil  # type: ignore[import-untyped]

from forehand.core import (
    KeyRing,
    ManagerConfig,
    ManagerCore,
    RiskPolicy,
    TokenSealer,
    messages,
)
from forehand.core._manager_events import (
    FailoverCompleted,
    HandoffCompleted,
    MapCommitted,
    PartsLost,
    RiskFlagged,
)
from forehand.core._manager_risk import predictor_config
from forehand.core._server_config import HEARTBEAT_PART_LOADS_MAX
from forehand.placement import (
    PartKey,
    PlacementConfig,
    ServerEntry,
    ServerState,
    ShardMap,
    new_session_id,
)
from forehand.sim.study._config import FaultKind, Policy, StudyConfig
from forehand.sim.study._fleet import REQUESTS_PER_SECOND_PER_LOAD, Fault, FleetModel, FleetTick
from forehand.sim.study._risk import (
    PREDICTOR_MODELS,
    MemoPredictor,
    NoRiskPolicy,
    SampledPredictiveRiskPolicy,
)
from forehand.stores import MemoryStore, StoreConfig
from forehand.stores._messages import StoreRequest
from forehand.wire import ReasonCode

__all__ = [
    "NO_FAULT",
    "PolicyResult",
    "decision_cause",
    "fault_window_s",
    "run_policy",
    "study_manager_config",
]

SECOND_US = 1_000_000
PART_NAMES = ("auth", "cart", "video", "chat", "feed", "game", "media", "search")
"""Names of a session's parts, the first `parts_per_session` of them."""
EPOCH_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: the session ids' creation time (fixed, so ids follow from the seed)."""
TARGET_REPORT_US = 200_000
"""A handoff target reports it caught up this long after the assignment."""
SOURCE_REPORT_US = 1_000_000
"""The source reports the end of its backup period this long after the assignment."""
RISK_REASONS = frozenset({ReasonCode.PREDICTED_FAILURE, ReasonCode.OVERLOAD})
"""Handoff reasons that come from the risk policy."""
QUEUE_TIMEOUT_TICKS = 4
"""A queued move that finds no target within this many ticks is dropped: the risk that asked
for it is that old by then, and the next assessment asks again if it still holds."""
PLAN_INTERVAL_MS = 100
"""The manager's `handoff_plan_interval_ms` in the study: handoffs that end together (the
study's servers report at the same instants) are replaced in one pass, one map version."""
HANDOFFS_PER_SERVER_MAX = 8
"""The manager's `handoffs_per_server_max` in the study (2 by default): a source hands its parts
to as many different targets at once (each part goes to its own replica), so one pass moves
several parts of a flagged server in one version."""
HANDOFFS_CONCURRENT_MAX = 256
"""The manager's `handoffs_concurrent_max` in the study (32 by default, a small cluster's)."""
TRACKED_PER_SERVER = 2 * HEARTBEAT_PART_LOADS_MAX
"""Busiest parts the study keeps per server, so that a source losing some of its reported
parts still has the next ones at hand without a scan."""
KEY = bytes(range(32))
"""The study's token key (nothing is sealed that leaves the process)."""
FAULT_AFTERMATH_TICKS = 12
"""A decision this many ticks after a fault's hold ended still counts as on that fault (a
gradual fault fades over `RECOVERY_S`, 60 s at the default 5 s tick)."""
NO_FAULT = "none"
"""The cause of a move decided on a server with no fault under way or within the horizon: a
move that was not needed."""


@dataclass(slots=True, kw_only=True)
class PolicyResult:
    """What one policy did to the fleet, and what it cost the manager."""

    policy: Policy
    """The policy."""
    session_hours: float = 0.0
    """Session-hours tracked (a lost session stops counting)."""
    disruptions: int = 0
    """Sessions impaired, counted once per episode (`disruption_merge_s`)."""
    disruptions_by_cause: dict[str, int] = field(default_factory=dict)
    """The same, by the fault acting on the impaired part's server."""
    sessions_lost: int = 0
    """Sessions whose part lost its state (its server died with no replica)."""
    handoff_part_moves: int = 0
    """Parts moved by completed handoffs (risk, drains)."""
    risk_part_moves: int = 0
    """Of those, parts the risk policy asked to move."""
    failover_part_moves: int = 0
    """Parts promoted by failovers."""
    handoff_moves_by_cause: dict[str, int] = field(default_factory=dict)
    """`handoff_part_moves` by the fault on the source server when the move was decided
    (`decision_cause`: a `FaultKind` label, or `NO_FAULT`); sums to `handoff_part_moves`. Not
    part of the digest."""
    ping_pongs: int = 0
    """Part moves back to a server the part left less than `dwell_s` before."""
    part_moves: int = 0
    """Every primary change seen in the map (handoffs, failovers, rebalancing)."""
    risk_flags: int = 0
    """Risk decisions the manager acted on."""
    risk_flags_on_faults: int = 0
    """Of those, on a server with a fault under way (or starting within the horizon)."""
    lead_times_s: list[float] = field(default_factory=list)
    """Per gradual fault flagged before its onset: onset minus first flag."""
    gradual_faults_flagged: int = 0
    """Gradual faults with an onset flagged at or before it."""
    gradual_faults: int = 0
    """Gradual faults with an onset in the run."""
    handoffs_per_minute: list[int] = field(default_factory=list)
    """Handoff part moves completed in each simulated minute."""
    manager_cpu_s: float = 0.0
    """CPU time inside ManagerCore calls (the placement rebuilds and predictor included)."""
    manager_cpu_breakdown_s: dict[str, float] = field(default_factory=dict)
    """The same by input: heartbeats, timers, store results, commands, load."""
    map_load_s: float = 0.0
    """Wall time of the manager's map load (decode and rebuild)."""
    manager_rss_bytes: int = 0
    """Resident memory the manager gained loading the map (RSS delta)."""
    map_bytes: int = 0
    """The whole map, encoded, at the start."""
    map_bytes_end: int = 0
    """The whole map, encoded, at the end (overrides added by moves)."""
    commits: int = 0
    """Map versions committed."""
    delta_bytes: int = 0
    """Encoded deltas committed, summed."""
    messages_out: int = 0
    """Messages the manager sent (map updates to every live server dominate)."""
    heartbeats: int = 0
    """Heartbeats fed to the manager."""
    predictor_assessments: int = 0
    """Heartbeats that reached the predictor."""
    predictor_skipped_quiet: int = 0
    """Due heartbeats of quiet servers left to the next quiet assessment."""
    wall_s: float = 0.0
    """Wall time of the run, setup included."""
    setup_s: float = 0.0
    """Wall time building the map before the manager loads it."""
    cpu_s: float = 0.0
    """CPU time of the whole run in its process (`time.process_time`), setup included."""
    rss_end_bytes: int = 0
    """The process's resident memory at the end of the run."""
    digest: str = ""
    """SHA-256 over every counted outcome, in order: equal seeds give equal digests."""


def study_manager_config(config: StudyConfig) -> ManagerConfig:
    """The manager's configuration for a fleet this size, ticking this coarsely.

    Planning passes run at most every `PLAN_INTERVAL_MS` and start every batch they can at once
    (no jitter between batches: the fleet model has no transfer load for it to spread, and the
    pass's handoffs then commit as one version): every version costs the manager a push to
    every live server, which at ten thousand servers dominates one version per handoff.

    No automatic rebalance (`rebalance_interval_ms` 0): the study compares what each policy
    moves (static moves nothing until a crash), and a rebalance would move parts under all
    three alike.
    """
    failure_ms = config.failure_timeout_s * 1000
    return ManagerConfig(
        servers_max=max(1024, config.servers),
        handoff_jitter_ms_max=0,
        handoff_plan_interval_ms=PLAN_INTERVAL_MS,
        handoffs_per_server_max=HANDOFFS_PER_SERVER_MAX,
        handoffs_concurrent_max=HANDOFFS_CONCURRENT_MAX,
        heartbeat_interval_ms=config.tick_s * 1000,
        suspect_timeout_ms=failure_ms * 2 // 3,
        failure_timeout_ms=failure_ms,
        snapshot_interval_deltas=100_000,
        handoff_queue_timeout_ms=QUEUE_TIMEOUT_TICKS * config.tick_s * 1000,
        events_buffered_max=1_048_576,
        rebalance_interval_ms=0,
    )


def fault_window_s(fault: Fault, *, tick_s: int, horizon_s: int) -> tuple[int, int]:
    """The span (first and last second, inclusive) in which a decision on the fault's server
    counts as on that fault: from `horizon_s` before it starts (the predictor's horizon) to
    `FAULT_AFTERMATH_TICKS` after its hold ends."""
    return (
        fault.start_tick * tick_s - horizon_s,
        (fault.end_tick + FAULT_AFTERMATH_TICKS) * tick_s,
    )


def decision_cause(fault: Fault | None, decision_s: int, *, tick_s: int, horizon_s: int) -> str:
    """What a move decided at `decision_s` on a server with `fault` (its only one, or None) was
    for: the fault's kind label inside its `fault_window_s`, else `NO_FAULT`."""
    if fault is None:
        return NO_FAULT
    first_s, last_s = fault_window_s(fault, tick_s=tick_s, horizon_s=horizon_s)
    return fault.kind.label if first_s <= decision_s <= last_s else NO_FAULT


def _placement_config(config: StudyConfig, policy: Policy) -> PlacementConfig:
    return PlacementConfig(
        servers_max=max(4096, config.servers),
        replica_count=0 if policy is Policy.STATIC else 2,
        parts_max=max(20_000_000, config.parts),
    )


def server_name(index: int) -> str:
    """The id of server `index`."""
    return f"s{index:05d}"


def _server_index(name: str) -> int:
    return int(name[1:])


class _Parts:
    """Every part's primary server, in session order, and the lookup from key hash to part."""

    def __init__(self, config: StudyConfig) -> None:
        rng = random.Random(config.seed * 7_919 + 17)
        count = config.parts
        per = config.parts_per_session
        names = PART_NAMES[:per]
        hashes = np.empty(count, dtype=np.uint64)
        keys: list[PartKey] = []
        self.session_ids = np.empty((config.sessions, 16), dtype=np.uint8)
        """Every session's id, by session index (a part's `PartRef` is built when reported)."""
        for session in range(config.sessions):
            session_id = new_session_id(now_ms=EPOCH_MS + session // 1_000, rng=rng)
            self.session_ids[session] = np.frombuffer(session_id, dtype=np.uint8)
            for offset, name in enumerate(names):
                key = PartKey(session_id=session_id, part=name)
                hashes[session * per + offset] = key.key_hash
                keys.append(key)
        self.keys: list[PartKey] | None = keys
        self.order = np.argsort(hashes, kind="stable")
        self.sorted_hashes = hashes[self.order]
        self.primary = np.full(count, -1, dtype=np.int32)
        self.per = per
        self.names = names

    def place_all(self, current: ShardMap) -> None:
        """Read every part's primary from the map, in part order, then forget the keys (the
        manager's map holds its own)."""
        keys = self.keys
        assert keys is not None
        # One lookup per key in C-level map() passes: a third of asking every server for its
        # parts, which also lists (and sorts) the replicas.
        index_of = {entry.server_id: _server_index(entry.server_id) for entry in current.servers}
        primaries = map(index_of.__getitem__, map(current.primary_of, keys))
        self.primary[:] = np.fromiter(primaries, dtype=np.int32, count=len(keys))
        self.keys = None

    def index_of(self, key: PartKey) -> int:
        position = int(np.searchsorted(self.sorted_hashes, np.uint64(key.key_hash)))
        return int(self.order[position])

    def ref(self, index: int) -> messages.PartRef:
        """The `PartRef` of part `index`."""
        session, offset = divmod(index, self.per)
        session_id = self.session_ids[session].tobytes()
        return messages.PartRef(session_id=session_id, part=self.names[offset])


class _BusiestParts:
    """Each server's busiest primaries by load, as its heartbeats report them (`PartLoad`).

    A real server measures its parts' request rates; the study's are fixed per part (times the
    server's demand). Each server keeps its `TRACKED_PER_SERVER` busiest parts, sorted, updated
    part by part as moves commit; a server whose list falls under `HEARTBEAT_PART_LOADS_MAX`
    while it holds more parts is scanned again. A server's report is rebuilt only when its list
    or its demand changed.
    """

    def __init__(self, parts: _Parts, part_load: npt.NDArray[np.float64], servers: int) -> None:
        self._parts = parts
        self._part_load = part_load
        self._servers = servers
        self._top: list[list[int]] = [[] for _ in range(servers)]
        self._complete = [True] * servers
        self._reports: dict[int, tuple[float, tuple[messages.PartLoad, ...]]] = {}
        self._rescan: set[int] = set()
        self.all_moved()

    def all_moved(self) -> None:
        """Every server's busiest parts found again (at the start, and when parts left the map):
        one sort of every part by (server, load descending)."""
        primary = self._parts.primary
        order = np.lexsort((-self._part_load, primary))
        starts = np.searchsorted(primary[order], np.arange(self._servers + 1))
        for server in range(self._servers):
            start, end = int(starts[server]), int(starts[server + 1])
            self._top[server] = order[start : min(start + TRACKED_PER_SERVER, end)].tolist()
            self._complete[server] = end - start <= TRACKED_PER_SERVER
        self._reports.clear()
        self._rescan.clear()

    def moved(self, index: int, source: int, target: int) -> None:
        """Part `index` moved from `source` to `target`."""
        load = self._part_load
        top = self._top[source]
        if index in top:
            top.remove(index)
            self._reports.pop(source, None)
            if len(top) < HEARTBEAT_PART_LOADS_MAX and not self._complete[source]:
                self._rescan.add(source)
        top = self._top[target]
        if self._complete[target] or (top and load[index] > load[top[-1]]):
            keys = [-float(load[held]) for held in top]
            top.insert(bisect.bisect_right(keys, -float(load[index])), index)
            if len(top) > TRACKED_PER_SERVER:
                del top[TRACKED_PER_SERVER:]
                self._complete[target] = False
            self._reports.pop(target, None)

    def report(self, server: int, demand: float) -> tuple[messages.PartLoad, ...]:
        """The server's busiest primaries and their request rates at `demand`."""
        if self._rescan:
            self._scan()
        cached = self._reports.get(server)
        if cached is not None and cached[0] == demand:
            return cached[1]
        per_load = demand * REQUESTS_PER_SECOND_PER_LOAD
        report = tuple(
            messages.PartLoad(
                ref=self._parts.ref(index),
                requests_per_second=float(self._part_load[index]) * per_load,
            )
            for index in self._top[server][:HEARTBEAT_PART_LOADS_MAX]
        )
        self._reports[server] = (demand, report)
        return report

    def _scan(self) -> None:
        primary = self._parts.primary
        load = self._part_load
        for server in sorted(self._rescan):
            held = np.flatnonzero(primary == server)
            busiest = held[np.argsort(-load[held], kind="stable")[:TRACKED_PER_SERVER]]
            self._top[server] = busiest.tolist()
            self._complete[server] = len(held) <= TRACKED_PER_SERVER
            self._reports.pop(server, None)
        self._rescan.clear()


def _build_snapshot(config: StudyConfig, policy: Policy, parts: _Parts) -> bytes:
    servers = [
        ServerEntry(
            server_id=server_name(index),
            address=f"10.{index >> 8 & 255}.{index & 255}.1:7000",
            zone=f"zone-{index % config.zones}",
            weight=1.0,
            state=ServerState.ACTIVE,
        )
        for index in range(config.servers)
    ]
    assert parts.keys is not None
    # The bytes of the built map without computing its assignment: the manager computes it
    # when it loads them.
    return ShardMap.encode_built(
        config=_placement_config(config, policy), version=1, servers=servers, parts=parts.keys
    )


@dataclass(order=True, slots=True)
class _Reply:
    due_us: int
    sequence: int
    message: object = field(compare=False)
    source: str = field(compare=False)


class PolicyRun:
    """The state of one policy's run."""

    def __init__(
        self,
        config: StudyConfig,
        policy: Policy,
        *,
        predictor_snapshot: bytes | None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.config = config
        self.policy = policy
        self.result = PolicyResult(policy=policy)
        self.fleet = FleetModel(config=config)
        self._progress = progress
        self._digest = hashlib.sha256()
        self._replies: list[_Reply] = []
        self._sequence = 0
        self._cpu: dict[str, float] = {}
        self._last_left: dict[int, tuple[int, int]] = {}
        self._alive_reported = np.ones(config.servers, dtype=np.bool_)
        self._heartbeat_sequence = np.zeros(config.servers, dtype=np.int64)
        self._flags: dict[int, list[int]] = {}
        self._drains: dict[int, list[int]] = {}
        self._handoffs: list[tuple[int, int, bool, int]] = []
        """Completed handoffs: (source server, second the target was picked, risk move, parts)."""
        self._unplaced = False
        self.fleet_reachable = np.ones(config.servers, dtype=np.bool_)
        self._cpu_started = time.process_time()
        started = time.perf_counter()
        self.parts = _Parts(config)
        snapshot = _build_snapshot(config, policy, self.parts)
        self.result.setup_s = time.perf_counter() - started
        self.result.map_bytes = len(snapshot)
        # The study's manager never snapshots mid-run, so deltas may pile up for the whole hour.
        self.store = MemoryStore(
            config=StoreConfig(deltas_since_snapshot_max=1_000_000),
            snapshot=snapshot,
            snapshot_version=1,
        )
        self.manager_config = study_manager_config(config)
        self.risk = self._risk_policy(predictor_snapshot)
        rss_before = psutil.Process().memory_info().rss
        loaded = time.perf_counter()
        self.manager = ManagerCore(
            config=self.manager_config,
            placement_config=_placement_config(config, policy),
            sealer=TokenSealer(KeyRing({1: KEY}, current_key_id=1), rng=random.Random(1)),
            rng=random.Random(config.seed),
            now_us=0,
            risk_policy=self.risk,
        )
        self._pump(0, "load")
        self.result.map_load_s = time.perf_counter() - loaded
        self.result.manager_rss_bytes = psutil.Process().memory_info().rss - rss_before
        current = self.manager.shard_map
        assert current is not None and len(current) == config.parts
        self._map = current
        self.parts.place_all(current)
        self.part_load = self.fleet.part_load
        self.initial_load = self._server_load()
        self.load = self.initial_load.copy()
        """Each server's load now, kept in step with the moves."""
        self.busiest = _BusiestParts(self.parts, self.part_load, config.servers)
        self.active = np.ones(config.sessions, dtype=np.bool_)
        self.active_count = config.sessions
        self.last_impaired = np.full(config.sessions, -(10**9), dtype=np.int64)
        self.minutes = np.zeros(config.duration_s // 60 + 1, dtype=np.int64)

    def _risk_policy(self, snapshot: bytes | None) -> RiskPolicy:
        if self.policy is not Policy.PREDICTIVE:
            return NoRiskPolicy()
        predictor = MemoPredictor(
            config=predictor_config(study_manager_config(self.config)),
            rng=random.Random(self.config.seed + 3),
            models=PREDICTOR_MODELS,
        )
        if snapshot is not None:
            predictor.restore(snapshot)
        return SampledPredictiveRiskPolicy(
            config=study_manager_config(self.config),
            rng=random.Random(self.config.seed + 5),
            predictor=predictor,
            interval_us=self.config.assess_interval_s * SECOND_US,
            quiet_interval_us=self.config.quiet_assess_interval_s * SECOND_US,
        )

    # Feeding the manager.

    def _timed(self, kind: str, call: Callable[..., object], *args: object, **kwargs: Any) -> None:
        started = time.thread_time()
        call(*args, **kwargs)
        self._cpu[kind] = self._cpu.get(kind, 0.0) + time.thread_time() - started

    def _pump(self, now_us: int, kind: str) -> None:
        """Drain the manager: run its store requests, schedule replies, read its events."""
        manager = self.manager
        while True:
            requests = manager.store_requests()
            for request in requests:
                assert isinstance(request, StoreRequest), request
                result = self.store.execute(request)
                delta = getattr(request, "delta", None)
                if isinstance(delta, bytes):
                    self.result.delta_bytes += len(delta)
                label = "load" if kind == "load" else "store results"
                self._timed(label, manager.store_result, result, now_us=now_us)
            outbox = manager.messages_to_send()
            self.result.messages_out += len(outbox)
            for outbound in outbox:
                if isinstance(outbound.message, messages.HandoffAssigned):
                    self._schedule_handoff(outbound.destination, outbound.message, now_us)
            if not requests and not outbox:
                break
        self._read_events(now_us)

    def _schedule_handoff(
        self, destination: str, assigned: messages.HandoffAssigned, now_us: int
    ) -> None:
        delay = TARGET_REPORT_US if destination == assigned.target else SOURCE_REPORT_US
        reply = messages.HandoffCompleted(
            handoff_id=assigned.handoff_id, server_id=destination, parts=assigned.parts
        )
        self._sequence += 1
        heapq.heappush(self._replies, _Reply(now_us + delay, self._sequence, reply, destination))

    def _read_events(self, now_us: int) -> None:
        manager = self.manager
        committed = False
        while (event := manager.next_event()) is not None:
            if isinstance(event, MapCommitted):
                committed = True
                self.result.commits += 1
            elif isinstance(event, HandoffCompleted):
                moved = len(event.parts)
                self.result.handoff_part_moves += moved
                risk = event.reason in RISK_REASONS
                if risk:
                    self.result.risk_part_moves += moved
                picked_s = (now_us - event.duration_us) // SECOND_US
                self._handoffs.append((_server_index(event.source), picked_s, risk, moved))
                self.minutes[now_us // (60 * SECOND_US)] += moved
            elif isinstance(event, FailoverCompleted):
                self.result.failover_part_moves += len(event.promotions)
            elif isinstance(event, PartsLost):
                self._digest.update(f"lost {len(event.parts)} {now_us}".encode())
            elif isinstance(event, RiskFlagged):
                self.result.risk_flags += 1
                server = _server_index(event.server_id)
                self._flags.setdefault(server, []).append(now_us // SECOND_US)
        if committed:
            self._sync_map(now_us)

    def _sync_map(self, now_us: int) -> None:
        current = self.manager.shard_map
        assert current is not None
        if current is self._map:
            return
        diff = self._map.diff(current)
        self._map = current
        parts = self.parts
        tick = now_us // SECOND_US
        dwell = self.config.dwell_s
        for key in diff.removed:
            index = parts.index_of(key)
            if parts.primary[index] >= 0:
                self.load[parts.primary[index]] -= self.part_load[index]
            parts.primary[index] = -1
            self._unplaced = True
        if diff.removed:
            self.busiest.all_moved()
        for moved in diff.moved:
            source = _server_index(moved.source.primary)
            target = _server_index(moved.target.primary)
            if source == target:
                continue
            index = parts.index_of(moved.key)
            parts.primary[index] = target
            self.load[source] -= self.part_load[index]
            self.load[target] += self.part_load[index]
            self.busiest.moved(index, source, target)
            self.result.part_moves += 1
            previous = self._last_left.get(index)
            if previous is not None and previous[0] == target and tick - previous[1] < dwell:
                self.result.ping_pongs += 1
            self._last_left[index] = (source, tick)
        self._digest.update(
            f"v{current.version} +{len(diff.added)} -{len(diff.removed)} "
            f"~{len(diff.moved)}".encode()
        )

    # The tick loop.

    def run(self) -> PolicyResult:
        """Run every tick; the result."""
        started = time.perf_counter()
        config = self.config
        tick_us = config.tick_s * SECOND_US
        for tick in range(config.ticks):
            now_us = tick * tick_us
            state = self.fleet.step(
                load=self.load,
                initial_load=self.initial_load,
                drains_kill=self.policy is Policy.STATIC,
            )
            if self.policy is not Policy.STATIC:
                for server in self.fleet.planned_drains(tick):
                    self._drains.setdefault(server, []).append(now_us // SECOND_US)
                    self._timed(
                        "commands",
                        self.manager.drain,
                        server_name(server),
                        now_us=now_us,
                    )
                    self._pump(now_us, "commands")
            self._heartbeats(state, now_us)
            self._account(state, tick)
            self._until(now_us + tick_us)
            if self._progress is not None:
                self._progress(1)
        self._finish(started)
        return self.result

    def _server_load(self) -> npt.NDArray[np.float64]:
        """Each server's load: its primaries' part loads summed (unplaced parts, -1, land in
        bin 0, which is dropped)."""
        servers = self.config.servers
        weights = self.part_load
        load = np.bincount(self.parts.primary + 1, weights=weights, minlength=servers + 1)[1:]
        return load.astype(np.float64, copy=False)

    def _heartbeats(self, state: FleetTick, now_us: int) -> None:
        manager = self.manager
        version = self._map.version
        cpu, latency, error = state.cpu, state.latency_us_p99, state.error_ratio
        requests = self.load * state.demand * REQUESTS_PER_SECOND_PER_LOAD
        busiest = self.busiest
        sequence = self._heartbeat_sequence
        started = time.thread_time()
        for index in np.flatnonzero(state.reachable).tolist():
            sequence[index] += 1
            busy = min(float(cpu[index]), 0.985)
            load = messages.LoadReport(
                cpu_utilization=float(cpu[index]),
                queue_depth=int(busy / (1.0 - busy)),
                latency_us_p99=int(latency[index]),
                error_ratio=float(error[index]),
                requests_per_second=float(requests[index]),
                part_loads=busiest.report(index, float(state.demand[index])),
            )
            name = server_name(index)
            heartbeat = messages.HeartbeatReported(
                server_id=name,
                incarnation=1,
                sequence=int(sequence[index]),
                map_version=version,
                load=load,
                parts=(),
            )
            manager.receive_message(heartbeat, source=name, now_us=now_us)
        self._cpu["heartbeats"] = self._cpu.get("heartbeats", 0.0) + time.thread_time() - started
        self.result.heartbeats += int(state.reachable.sum())
        self._pump(now_us, "heartbeats")

    def _until(self, end_us: int) -> None:
        """Deliver replies and fire timers, in time order, up to `end_us`."""
        manager = self.manager
        while True:
            timer = manager.timer_us()
            reply_us = self._replies[0].due_us if self._replies else None
            candidates = [t for t in (timer, reply_us) if t is not None and t < end_us]
            if not candidates:
                return
            now_us = min(candidates)
            if reply_us is not None and reply_us == now_us:
                reply = heapq.heappop(self._replies)
                index = _server_index(reply.source)
                if self.fleet_reachable[index]:
                    self._timed(
                        "replies",
                        manager.receive_message,
                        reply.message,
                        source=reply.source,
                        now_us=now_us,
                    )
            else:
                self._timed("timers", manager.handle_timer, now_us=now_us)
            self._pump(now_us, "timers")

    def _affected(self, state: FleetTick) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """The sessions with a part on an impaired server or a part lost (sorted), and which of
        them lost one; a fleet with few faults touches a few thousand of a million."""
        primary = self.parts.primary
        sessions = self.config.sessions
        per = self.parts.per
        if self._unplaced:
            lost_all = ~(primary >= 0).reshape(sessions, per).all(axis=1) & self.active
            lost_sessions = np.flatnonzero(lost_all)
        else:
            lost_sessions = np.zeros(0, dtype=np.int64)
        if state.impaired.any():
            # The extra last entry is what an unplaced part (-1) reads: not impaired.
            hit = np.zeros(self.config.servers + 1, dtype=np.bool_)
            hit[: self.config.servers] = state.impaired
            hit_sessions = np.flatnonzero(hit[primary]) // per
            affected = np.union1d(hit_sessions, lost_sessions)
        else:
            affected = lost_sessions
        return affected, np.isin(affected, lost_sessions, assume_unique=True)

    def _account(self, state: FleetTick, tick: int) -> None:
        """Count the sessions whose parts are impaired at this tick."""
        self.fleet_reachable = state.reachable
        config = self.config
        affected, lost = self._affected(state)
        # Per server 0 when healthy, else its fault cause + 1; the extra last entry is what an
        # unplaced part (-1) reads.
        codes = np.zeros(config.servers + 1, dtype=np.int8)
        codes[: config.servers] = np.where(state.impaired, state.cause + 1, 0)
        parts = self.parts.primary.reshape(config.sessions, self.parts.per)[affected]
        session_code = codes[parts].max(axis=1) if len(affected) else codes[:0]
        session_impaired = session_code > 0
        session_cause = np.maximum(session_code, 1) - 1
        merge_ticks = config.disruption_merge_s // config.tick_s
        fresh = (
            (session_impaired | lost)
            & self.active[affected]
            & (tick - self.last_impaired[affected] > merge_ticks)
        )
        count = int(fresh.sum())
        if count:
            causes = np.bincount(session_cause[fresh], minlength=len(FaultKind) + 1)
            for kind in FaultKind:
                if causes[kind]:
                    label = kind.label
                    self.result.disruptions_by_cause[label] = self.result.disruptions_by_cause.get(
                        label, 0
                    ) + int(causes[kind])
            self.result.disruptions += count
        self.last_impaired[affected[session_impaired | lost]] = tick
        lost_now = int(lost.sum())
        if lost_now:
            self.result.sessions_lost += lost_now
            self.active[affected[lost]] = False
            self.active_count -= lost_now
        self.result.session_hours += float(self.active_count) * config.tick_s / 3600.0
        self._digest.update(f"t{tick} d{count} l{lost_now}".encode())

    def _finish(self, started: float) -> None:
        result = self.result
        config = self.config
        result.manager_cpu_breakdown_s = dict(sorted(self._cpu.items()))
        result.manager_cpu_s = sum(self._cpu.values())
        result.handoffs_per_minute = [
            int(value) for value in self.minutes[: config.duration_s // 60]
        ]
        if isinstance(self.risk, SampledPredictiveRiskPolicy):
            result.predictor_assessments = self.risk.assessments_run
            result.predictor_skipped_quiet = self.risk.assessments_skipped_quiet
        self._lead_times()
        self._move_causes()
        current = self.manager.shard_map
        assert current is not None
        result.map_bytes_end = len(current.encode())
        result.wall_s = time.perf_counter() - started + result.setup_s + result.map_load_s
        result.cpu_s = time.process_time() - self._cpu_started
        result.rss_end_bytes = psutil.Process().memory_info().rss
        self._digest.update(
            f"{result.disruptions} {result.handoff_part_moves} {result.failover_part_moves} "
            f"{result.ping_pongs} {result.risk_flags} {result.sessions_lost}".encode()
        )
        result.digest = self._digest.hexdigest()

    def _lead_times(self) -> None:
        result = self.result
        tick_s = self.config.tick_s
        horizon_s = self.manager_config.risk_horizon_ms // 1000
        for fault in self.fleet.faults:
            flags = self._flags.get(fault.server, [])
            first_s, last_s = fault_window_s(fault, tick_s=tick_s, horizon_s=horizon_s)
            on_fault = [flag for flag in flags if first_s <= flag <= last_s]
            result.risk_flags_on_faults += len(on_fault)
            if not fault.kind.gradual or fault.onset_tick is None:
                continue
            result.gradual_faults += 1
            onset_s = fault.onset_tick * tick_s
            early = [flag for flag in on_fault if flag <= onset_s]
            if early:
                result.gradual_faults_flagged += 1
                result.lead_times_s.append(float(onset_s - min(early)))

    def _move_causes(self) -> None:
        """Attribute every completed handoff's parts to the fault on its source when the move
        was decided: a risk move's decision is the source's latest risk flag at or before the
        target was picked, a drain's the drain command (else the pick itself)."""
        tick_s = self.config.tick_s
        horizon_s = self.manager_config.risk_horizon_ms // 1000
        faults = {fault.server: fault for fault in self.fleet.faults}
        causes: dict[str, int] = {}
        for source, picked_s, risk, moved in self._handoffs:
            decisions = (self._flags if risk else self._drains).get(source, [])
            at = bisect.bisect_right(decisions, picked_s)
            decided_s = decisions[at - 1] if at else picked_s
            cause = decision_cause(
                faults.get(source), decided_s, tick_s=tick_s, horizon_s=horizon_s
            )
            causes[cause] = causes.get(cause, 0) + moved
        self.result.handoff_moves_by_cause = dict(sorted(causes.items()))


def run_policy(
    config: StudyConfig,
    policy: Policy,
    *,
    predictor_snapshot: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> PolicyResult:
    """Run `policy` on the study's fleet; its result."""
    return PolicyRun(config, policy, predictor_snapshot=predictor_snapshot, progress=progress).run()
