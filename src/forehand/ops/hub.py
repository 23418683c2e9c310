"""`OpsHub`: what the manager's admin API stands on, wired to the manager's driver.

The hub subscribes the audit log, the metrics, the risk tracker and its own drain tracker to the
manager core's events (each to the event classes it reads: `NodeDriver.subscribe`), samples the
`ClusterView` every `sample_interval_ms`, runs the operator's verbs on the core through the driver
(`drain`, `undrain`, `handoff`, policy updates), answers queries about the shard map, and fans
live updates out to the dashboard's event streams: a `snapshot` after every sample, an `audit`
record when an operation ends, `handoff_started` and `drain` progress as they happen. Each stream
has a bounded queue; a stream that falls `stream_queue_max` messages behind is closed (the page
reconnects and starts from a snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import typing
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from forehand.core import ManagerCore, manager_events
from forehand.core._driver import CLIENT_NODE_PREFIX
from forehand.core.manager import rebalance_problem
from forehand.core.messages import PartRef
from forehand.errors import ConfigError
from forehand.ops.audit import AuditLog, AuditRecord, part_name
from forehand.ops.metrics import ManagerMetrics
from forehand.ops.policy import TunableRiskPolicy
from forehand.ops.view import ClusterView, RiskTracker
from forehand.placement import PartKey
from forehand.wire import ErrorCode, ReasonCode

__all__ = ["DrainProgress", "OpsError", "OpsHub", "OpsLimits"]


SAMPLE_LOOP_SHARE_INVERSE = 10
"""Sampling takes at most 1/this of the manager's event loop (the pause grows with its cost)."""
DRAINS_MAX = 4_096
"""Servers whose drain progress is remembered."""
SESSION_HEX_DIGITS = 32
"""A session id (16 bytes) as operators write it."""
RISK_EVENT_TYPES = frozenset(
    kind
    for kind in typing.get_args(manager_events.ManagerEvent)
    if {"server_id", "risk"} <= {field.name for field in dataclasses.fields(kind)}
)
"""The manager events the risk tracker reads (it takes the risk of every event with a string
`server_id` and a numeric `risk`)."""
STREAMED_EVENT_TYPES = frozenset({manager_events.HandoffStarted, manager_events.DrainProgressed})
"""The manager events the hub itself streams to the dashboard (`handoff_started`, `drain`)."""


class OpsError(Exception):
    """An operator request that cannot be done; `status` is the HTTP status to answer with."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        """HTTP status."""
        self.error = error
        """Short machine-readable error name."""
        self.detail = detail
        """What went wrong, for people."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OpsLimits:
    """Bounds of the hub."""

    sample_interval_ms: int = 1_000
    """How often the cluster view is sampled (and the dashboard updated)."""
    history_samples_max: int = 120
    """Sparkline points kept per server."""
    audit_records_max: int = 10_000
    """Audit records kept in memory."""
    streams_max: int = 32
    """Dashboard event streams open at once; beyond, new ones are refused (503)."""
    stream_queue_max: int = 256
    """Messages queued for one stream before it is closed as too slow."""
    listing_max: int = 1_000
    """Most sessions, overrides or records one API answer lists."""

    def __post_init__(self) -> None:
        for item in (
            "sample_interval_ms",
            "history_samples_max",
            "audit_records_max",
            "streams_max",
            "stream_queue_max",
            "listing_max",
        ):
            if getattr(self, item) < 1:
                raise ConfigError(f"OpsLimits.{item} must be at least 1")


@dataclass(slots=True, kw_only=True)
class DrainProgress:
    """Where a drain stands."""

    server_id: str
    """The server drained."""
    parts_moved: int
    """Roles moved away so far."""
    parts_total: int
    """Roles to move."""
    finished: bool
    """True once the server holds nothing."""
    parts_waiting: int = 0
    """Roles that stay for want of another server to take them (`DrainProgressed`)."""
    primaries_left: int | None = None
    """Parts the server still leads; None until the drain counted them."""
    replicas_behind: int = 0
    """Replica roles kept until another replica of the part catches up (`DrainProgressed`)."""


REFUSED_PEERS_MAX = 64
"""Cluster peers whose last refusal `OpsHub.refused` keeps (the oldest go first)."""


@dataclass(slots=True, kw_only=True)
class RefusedPeer:
    """A cluster node the manager refused (`PeerRefused`): one that is not in the map may be
    redialing, refused each time, and shows nowhere else."""

    peer: str
    """Its node id (a server id)."""
    error: str
    """The ERROR code sent, lower case (`superseded`, `protocol_error`, ...)."""
    reason: str
    """The manager's reason, as the peer's log shows it."""
    count: int
    """Refusals of it since the manager started (or since it was forgotten)."""
    last_at_ms: int
    """When the last one came, on the manager's clock (milliseconds)."""


class OpsHub:
    """See the module docstring."""

    def __init__(
        self,
        driver: Any,
        *,
        policy: TunableRiskPolicy | None,
        audit_path: Path | None = None,
        limits: OpsLimits | None = None,
    ) -> None:
        """`driver` is the manager's `NodeDriver`; `policy` the tunable risk policy its core
        uses (None: the policy endpoints answer 404)."""
        self.driver = driver
        self.limits = limits if limits is not None else OpsLimits()
        self.policy = policy
        self.risk = RiskTracker(clock_us=driver.now_us)
        self.view = ClusterView(
            risk=self.risk,
            thresholds=self._thresholds,
            history_samples_max=self.limits.history_samples_max,
        )
        self.audit = AuditLog(
            clock_us=driver.now_us, path=audit_path, records_max=self.limits.audit_records_max
        )
        self.metrics = ManagerMetrics(view=self.view, risk=self.risk)
        self.drains: dict[str, DrainProgress] = {}
        self.refused: dict[str, RefusedPeer] = {}
        """The last refusal of each cluster peer, oldest first, at most `REFUSED_PEERS_MAX`."""
        self._streams: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._sampler: asyncio.Task[None] | None = None
        driver.subscribe(self.risk, event_types=RISK_EVENT_TYPES)
        driver.subscribe(self.audit)  # Its `event_types`, like the metrics'.
        driver.subscribe(self.metrics)
        driver.subscribe(self._on_event, event_types=STREAMED_EVENT_TYPES)
        driver.subscribe(self._on_refused, event_types=frozenset({manager_events.PeerRefused}))
        self.audit.listen(self._on_record)

    @property
    def core(self) -> ManagerCore:
        """The manager core (read on the loop only)."""
        core: ManagerCore = self.driver.core
        return core

    def _thresholds(self) -> dict[str, Any]:
        return self.policy.settings() if self.policy is not None else {}

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Take a first sample and keep sampling (call on the driver's loop)."""
        self.sample()
        self._sampler = asyncio.get_running_loop().create_task(self._sample_forever())

    async def close(self) -> None:
        """Stop sampling, end every stream, close the audit file."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        for queue in list(self._streams):
            self._end(queue)
        self.audit.close()

    async def _sample_forever(self) -> None:
        interval_s = self.limits.sample_interval_ms / 1000
        pause_s = interval_s
        while True:
            await asyncio.sleep(pause_s)
            started_s = time.perf_counter()
            self.sample()
            # A sample walks the map's placements, on the loop that serves the cluster: on a
            # big map it is taken less often, so that it never takes more than a tenth of it.
            pause_s = max(interval_s, SAMPLE_LOOP_SHARE_INVERSE * (time.perf_counter() - started_s))
            current = self.core.shard_map
            if current is not None and current.version != self.view.session_counts_version:
                # A map too big to count on the loop (see SESSION_COUNTS_SYNC_PARTS_MAX): its
                # versions are immutable, so a worker thread counts it while the loop serves.
                counts = await asyncio.to_thread(current.primary_sessions)
                self.view.session_counts = counts
                self.view.session_counts_version = current.version

    def sample(self) -> None:
        """Sample the cluster view now and send the snapshot to every stream."""
        now_us = self.driver.now_us()
        predictor = getattr(self.policy, "predictor", None) if self.policy is not None else None
        if predictor is not None:
            members = [member.server_id for member in self.core.membership.members()]
            self.risk.sample_predictor(predictor, members, now_us=now_us)
        self.view.sample(self.core, now_us=now_us)
        self.broadcast({"type": "snapshot", "data": self.view.snapshot()})

    # -- live streams -----------------------------------------------------------------------

    def open_stream(self) -> asyncio.Queue[dict[str, Any] | None]:
        """A new stream's queue, primed with the newest snapshot and recent records."""
        if len(self._streams) >= self.limits.streams_max:
            raise OpsError(503, "too_many_streams", "too many dashboards are connected")
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(
            maxsize=self.limits.stream_queue_max
        )
        queue.put_nowait({"type": "snapshot", "data": self.view.snapshot()})
        recent = self.audit.query(limit=min(50, self.limits.stream_queue_max // 2))
        for record in recent:
            queue.put_nowait({"type": "audit", "data": record.to_json()})
        self._streams.add(queue)
        return queue

    def close_stream(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        """Forget a stream whose client went away."""
        self._streams.discard(queue)

    def _end(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        self._streams.discard(queue)
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(None)
        if queue.full():
            # The stream is too slow to take even the end marker: make room for it.
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)

    def broadcast(self, message: dict[str, Any]) -> None:
        """Queue `message` for every stream; a stream whose queue is full is ended."""
        for queue in list(self._streams):
            if queue.qsize() >= queue.maxsize - 1:
                self._end(queue)
                continue
            queue.put_nowait(message)

    def _on_record(self, record: AuditRecord) -> None:
        self.broadcast({"type": "audit", "data": record.to_json()})

    def _on_event(self, event: object) -> None:
        """Stream the `STREAMED_EVENT_TYPES` to the dashboard."""
        if isinstance(event, manager_events.HandoffStarted):
            self.broadcast(
                {
                    "type": "handoff_started",
                    "data": {
                        "handoff_id": event.handoff_id,
                        "reason": event.reason.name.lower(),
                        "parts": [part_name(ref) for ref in event.parts],
                        "source": event.source,
                        "target": event.target,
                        "at_ms": self.driver.now_us() // 1000,
                    },
                }
            )
        elif isinstance(event, manager_events.DrainProgressed):
            progress = DrainProgress(
                server_id=event.server_id,
                parts_moved=event.parts_moved,
                parts_total=event.parts_total,
                finished=event.finished,
                parts_waiting=event.parts_waiting,
                primaries_left=event.primaries_left,
                replicas_behind=event.replicas_behind,
            )
            self._remember_drain(progress)
            self.broadcast({"type": "drain", "data": asdict(progress)})

    def _on_refused(self, event: object) -> None:
        """Keep a cluster peer's refusal (clients' are theirs alone, and unbounded in number)."""
        assert isinstance(event, manager_events.PeerRefused)
        if event.peer.startswith(CLIENT_NODE_PREFIX):
            return
        refused = self.refused.pop(event.peer, None)
        if refused is None:
            while len(self.refused) >= REFUSED_PEERS_MAX:
                del self.refused[next(iter(self.refused))]
            refused = RefusedPeer(peer=event.peer, error="", reason="", count=0, last_at_ms=0)
        refused.error = ErrorCode.from_wire(event.error_code).name.lower()
        refused.reason = event.reason
        refused.count += 1
        refused.last_at_ms = self.driver.now_us() // 1000
        self.refused[event.peer] = refused

    def _remember_drain(self, progress: DrainProgress) -> None:
        if progress.server_id not in self.drains and len(self.drains) >= DRAINS_MAX:
            del self.drains[next(iter(self.drains))]
        self.drains[progress.server_id] = progress

    # -- verbs ------------------------------------------------------------------------------

    def _require_server(self, server_id: str) -> None:
        core = self.core
        in_map = False
        if core.shard_map is not None:
            try:
                core.shard_map.server(server_id)
                in_map = True
            except KeyError:
                in_map = False
        if not in_map and core.membership.get(server_id) is None:
            raise OpsError(404, "unknown_server", f"no server {server_id!r} in the cluster")

    def drain(self, server_id: str) -> DrainProgress:
        """Start draining a server; its progress so far."""
        self._require_server(server_id)
        accepted = self.driver.command(lambda core, now_us: core.drain(server_id, now_us=now_us))
        if not accepted and self.core.draining(server_id):
            # Already draining (asked again, by a script run twice, or after a manager restart
            # that resumed it): its progress, as for the first request.
            return self.drain_progress(server_id)
        if not accepted:
            state = self._map_state(server_id)
            why = (
                "a drain of it is already being committed, or the manager's commit queue is"
                " full; try again"
                if state == "active"
                else f"it is {state or 'not in the map'} (already drained by an operator, or dead)"
            )
            raise OpsError(409, "not_drainable", f"cannot drain {server_id}: {why}")
        # The drain counts its parts once the store committed the DRAINING mark; until then it
        # shows as started with nothing counted yet.
        progress = self.drains.get(server_id)
        if progress is None or progress.finished:
            progress = DrainProgress(
                server_id=server_id, parts_moved=0, parts_total=0, finished=False
            )
            self._remember_drain(progress)
        return progress

    def undrain(self, server_id: str) -> None:
        """Make a drained server ACTIVE again."""
        self._require_server(server_id)
        accepted = self.driver.command(lambda core, now_us: core.undrain(server_id, now_us=now_us))
        if not accepted:
            state = self._map_state(server_id)
            why = (
                "the manager's commit queue is full; try again"
                if state == "draining"
                else f"it is {state or 'not in the map'}, not draining"
            )
            raise OpsError(409, "not_draining", f"cannot undrain {server_id}: {why}")
        self.drains.pop(server_id, None)

    def _map_state(self, server_id: str) -> str:
        """`server_id`'s state in the shard map, lower case ("" when the map lacks it)."""
        current = self.core.shard_map
        if current is None:
            return ""
        try:
            return current.server(server_id).state.name.lower()
        except KeyError:
            return ""

    def drain_progress(self, server_id: str) -> DrainProgress:
        """Where the drain of `server_id` stands."""
        self._require_server(server_id)
        progress = self.drains.get(server_id)
        if progress is None and self.core.draining(server_id):
            # A drain this process has not counted yet (asked just now, or resumed from the map
            # by a manager that restarted): started, nothing counted.
            progress = DrainProgress(
                server_id=server_id, parts_moved=0, parts_total=0, finished=False
            )
            self._remember_drain(progress)
        if progress is None:
            raise OpsError(404, "no_drain", f"{server_id} has not been drained")
        return progress

    def handoff(self, session_hex: str, *, target: str | None, reason: str) -> int:
        """Queue a planned handoff of every part of a session; parts queued."""
        session_id = parse_session(session_hex)
        if not self.session_parts(session_id):
            raise OpsError(404, "unknown_session", f"no session {session_hex} in the shard map")
        if target is not None:
            self._require_server(target)
        try:
            code = ReasonCode[reason.upper()]
        except KeyError:
            names = [code.name.lower() for code in ReasonCode]
            raise OpsError(400, "bad_reason", f"reason must be one of {names}") from None
        queued: int = self.driver.command(
            lambda core, now_us: core.handoff(session_id, target=target, reason=code, now_us=now_us)
        )
        if queued == 0:
            raise OpsError(
                409, "nothing_queued", "no part was queued: already there, or already moving"
            )
        return queued

    def rebalance(self, *, tolerance: float, parts_max: int) -> tuple[int, bool]:
        """Queue planned handoffs evening out the servers' primaries: parts queued, and whether
        (none to queue, the primaries within `tolerance` of their shares) one commit moving
        replica roles was queued instead (`ManagerCore.rebalance_replicas`)."""
        problem = rebalance_problem(tolerance, parts_max)
        if problem is not None:
            raise OpsError(400, "bad_" + problem.split(" ", 1)[0], problem)

        def run(core: ManagerCore, now_us: int) -> tuple[int, bool]:
            queued = core.rebalance(tolerance=tolerance, parts_max=parts_max, now_us=now_us)
            return queued, not queued and core.rebalance_replicas(tolerance=tolerance)

        answer: tuple[int, bool] = self.driver.command(run)
        return answer

    def update_policy(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Change the trigger policy's settings; the new settings."""
        if self.policy is None:
            raise OpsError(404, "no_policy", "this manager's risk policy has no settings")
        try:
            return self.policy.update(changes)
        except ConfigError as error:
            raise OpsError(400, "bad_setting", str(error)) from error

    # -- queries ----------------------------------------------------------------------------

    def _keys(self) -> Iterator[PartKey]:
        current = self.core.shard_map
        return iter(()) if current is None else iter(current.part_keys())

    def session_parts(self, session_id: bytes) -> list[dict[str, Any]]:
        """Where each part of a session lives."""
        current = self.core.shard_map
        if current is None:
            return []
        keys = sorted(key for key in current.part_keys() if key.session_id == session_id)
        return [self._placement(key) for key in keys]

    def _placement(self, key: PartKey) -> dict[str, Any]:
        current = self.core.shard_map
        assert current is not None
        placement = current.lookup(key)
        return {
            "part": key.part,
            "primary": placement.primary,
            "replicas": list(placement.replicas),
            "overridden": current.is_overridden(key),
        }

    def sessions(self, *, server: str | None, limit: int) -> list[dict[str, Any]]:
        """Sessions with their parts' placements (those with a part on `server`, if given: 404
        for a server the cluster does not know)."""
        if server is not None:
            self._require_server(server)
        grouped: dict[bytes, list[PartKey]] = {}
        for key in self._keys():
            grouped.setdefault(key.session_id, []).append(key)
        result = []
        for session_id in sorted(grouped):
            parts = [self._placement(key) for key in sorted(grouped[session_id])]
            if server is not None and not any(
                server == p["primary"] or server in p["replicas"] for p in parts
            ):
                continue
            result.append({"session_id": session_id.hex(), "parts": parts})
            if len(result) >= min(limit, self.limits.listing_max):
                break
        return result

    def shard_map(self, *, limit: int) -> dict[str, Any]:
        """The map's version, servers and overrides."""
        current = self.core.shard_map
        if current is None:
            return {"version": 0, "parts": 0, "override_count": 0, "servers": [], "overrides": []}
        overrides: list[dict[str, Any]] = []
        for key, placement in current.overrides():
            if len(overrides) >= min(limit, self.limits.listing_max):
                break
            overrides.append(
                {
                    "part": part_name(PartRef(session_id=key.session_id, part=key.part)),
                    "primary": placement.primary,
                    "replicas": list(placement.replicas),
                }
            )
        return {
            "version": current.version,
            "parts": len(current),
            "override_count": current.override_count,
            "servers": [
                {
                    "server_id": entry.server_id,
                    "address": entry.address,
                    "zone": entry.zone,
                    "weight": entry.weight,
                    "state": str(entry.state.value),
                }
                for entry in current.servers
            ],
            "overrides": overrides,
        }


def parse_session(text: str) -> bytes:
    """A session id given as 32 hex digits; OpsError 400 otherwise."""
    try:
        # fromhex skips whitespace, which an id in a path or a command line should not carry.
        session_id = bytes.fromhex(text) if len(text) == SESSION_HEX_DIGITS else b""
    except ValueError:
        session_id = b""
    if len(session_id) != SESSION_HEX_DIGITS // 2:
        raise OpsError(400, "bad_session_id", f"a session id is 32 hex digits, got {text!r}")
    return session_id
