"""The demo's timeline: start the cluster, load it, degrade a server, crash another, report.

1. Certificates and a manager plus four servers, as processes on 127.0.0.1 (`DemoCluster`).
2. `sessions` cart sessions through the client SDK, each issuing requests (`LoadGenerator`), and
   one SLO probe per server (`ServerProbe`).
3. Warm-up: the `before` latency.
4. Degrade: SIGUSR1 starts a CPU burner inside one server, ramping up. Its CPU utilization,
   reported in heartbeats, crosses the manager's risk threshold while its response time is still
   within the SLO; the manager hands parts off (reason OVERLOAD). The burner keeps ramping until
   the server breaches its SLO (seen by the probe), holds, then stops.
5. Crash: SIGKILL another server. Nobody predicted it; the manager declares it dead and promotes
   replicas, and clients relocate its parts (reactive failover).
6. Recover: start the killed server again (a new incarnation, holding nothing) and ask the
   manager for a rebalance, which hands it its share of the primaries by planned handoffs.
7. Planned restart: SIGTERM a third server, as a rolling deploy does. It asks the manager to
   drain it, hands every part off, and exits by itself; its last heartbeat takes it out of the
   manager's map at once (no failover); it is then started again.
8. Stop the load, read every cart back, print the report, stop every process.

The run exits with status 1 when a request failed while predicted handoffs ran, while the
rebalance ran or from the SIGTERM on, when no predicted handoff happened, when the rebalance
moved nothing, when the server stopped with SIGTERM did not exit by itself with status 0 or
the manager did not take it out of its map within 2 s of its exit, or when an acknowledged
write was lost; 2 when the cluster could not start; 0 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from forehand.demo._burner import BurnerConfig
from forehand.demo._cluster import ClusterConfig, ClusterStartError, DemoCluster
from forehand.demo._load import LoadConfig, LoadGenerator
from forehand.demo._probe import ProbeConfig, ServerProbe
from forehand.demo._report import (
    PREDICTED_REASONS,
    DemoSummary,
    LeaveTimeline,
    Timeline,
    print_report,
    summarize,
)
from forehand.demo._view import ProcessCpu, ServerRow, Snapshot, View
from forehand.errors import ConfigError
from forehand.runtime.admin import AdminError, AdminReply
from forehand.runtime.client import HandoffEventKind

__all__ = ["DemoConfig", "run_demo"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_START_FAILED = 2
TICK_S = 0.5
"""The demo samples and redraws this often."""
LEFT_MAP_WAIT_S = 2.0
"""How long after its exit the server stopped with SIGTERM may still be in the manager's map
(its last heartbeat takes it out at once; a failure timeout of silence is 3 s)."""
STATUS_TIMEOUT_S = 2.0
"""A manager status poll that takes longer is skipped."""
REPORT_WIDTH = 132
"""Columns of the report when stdout is not a terminal (a log, a pipe)."""
FLAG_MEMORY_S = 5.0
"""A server stays FLAGGED in the view this long after its last risk move."""
REBALANCE_ATTEMPTS = 5
"""Rebalances asked for, a second apart, until one queues a part."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoConfig:
    """Everything a demo run depends on; `scaled` shortens the timeline."""

    server_ids: tuple[str, ...] = ("s1", "s2", "s3", "s4")
    """The servers."""
    degraded_server: str = "s2"
    """The server whose CPU burner is started."""
    killed_server: str = "s3"
    """The server that is SIGKILLed."""
    left_server: str = "s4"
    """The server stopped the planned way (SIGTERM) at the end, then started again: a rolling
    restart's step."""
    app_dir: Path = field(default_factory=Path.cwd)
    """Where `examples/cart` is imported from."""
    load: LoadConfig = field(default_factory=LoadConfig)
    """The sessions and their requests."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """The SLO and how it is probed."""
    warmup_s: float = 20.0
    """Load before the degradation."""
    ramp_s: float = 30.0
    """The burner's ramp to its peak."""
    hold_s: float = 6.0
    """The burner at its peak before it stops."""
    settle_s: float = 10.0
    """Between the burner's stop and the SIGKILL."""
    failover_window_s: float = 10.0
    """After the SIGKILL, the failover window."""
    after_s: float = 12.0
    """After the failover window, until the killed server is started again."""
    rebalance_s: float = 10.0
    """After the restarted server rejoined and the rebalance was asked for, until the SIGTERM
    of `left_server`."""
    after_leave_s: float = 4.0
    """After the server stopped with SIGTERM is ACTIVE again, until the load stops."""
    leave_wait_s: float = 45.0
    """How long the server stopped with SIGTERM may take to exit (its own bound,
    `leave_timeout_ms`, is 30 s)."""
    overload_latency_ms: float = 60.0
    """The manager's risk input: a server reporting a p99 request latency or event-loop lag
    (`latency_us_p99`, `loop_lag_us_p99`) above this has its parts moved away. Well under the
    SLO, so the move comes before the breach."""
    overload_threshold: float = 0.9
    """The risk input's CPU threshold (the manager's default). CPU use alone is a poor signal
    on a machine whose cores other processes share: the burning server gets only its share."""
    overload_parts_fraction: float = 1.0
    """Share of the flagged server's primaries each risk decision moves: all of them, since
    the server is heading for an SLO breach."""
    overload_cooldown_ms: int = 3_000
    """Quiet time after a risk decision about one server."""
    target_cpu_utilization_max: float = 0.5
    """A handoff target must report less CPU than this."""
    handoffs_per_server_max: int = 8
    """Handoffs one server takes part in at once (each moves up to 16 parts); a handoff holds
    its slot until the source's backup period ends."""
    backup_period_ms: int = 1_500
    """How long a handoff source keeps a moved part as a read-only backup."""
    suspect_timeout_ms: int = 1_000
    """The manager suspects a server silent this long."""
    failure_timeout_ms: int = 2_000
    """And declares it dead after this long."""
    burner_chunk_ms_peak: float = 500.0
    """The burner's longest GIL-holding chunk at its peak."""
    keep_directory: bool = False
    """Keep the run's directory (logs, configuration, certificates) afterwards."""
    summary_json: Path | None = None
    """Write the summary as JSON here."""
    live: bool | None = None
    """Force the live table on or off; None: on when stdout is a terminal."""
    dashboard_port: int = 0
    """Port of the manager's dashboard on 127.0.0.1; 0 lets the system pick, -1: none."""

    def __post_init__(self) -> None:
        if self.degraded_server not in self.server_ids or self.killed_server not in self.server_ids:
            raise ConfigError("the degraded and the killed server must be among server_ids")
        if self.degraded_server == self.killed_server:
            raise ConfigError("the degraded and the killed server must differ")
        if self.left_server not in self.server_ids:
            raise ConfigError("the server stopped with SIGTERM must be among server_ids")

    def scaled(self, factor: float) -> DemoConfig:
        """The same run with every phase `factor` times as long (failover windows kept long
        enough for failure detection)."""
        if not 0.05 <= factor <= 10:
            raise ConfigError(f"duration scale must be 0.05 to 10, got {factor}")
        detection_s = 2 * self.failure_timeout_ms / 1000 + 2.0
        return replace(
            self,
            warmup_s=max(4.0, self.warmup_s * factor),
            ramp_s=max(8.0, self.ramp_s * factor),
            hold_s=max(1.5, self.hold_s * factor),
            settle_s=max(2.0, self.settle_s * factor),
            failover_window_s=max(detection_s, self.failover_window_s * factor),
            after_s=max(3.0, self.after_s * factor),
            rebalance_s=max(6.0, self.rebalance_s * factor),
            after_leave_s=max(2.0, self.after_leave_s * factor),
        )

    def cluster_config(self) -> ClusterConfig:
        """What the cluster processes run with."""
        return ClusterConfig(
            server_ids=self.server_ids,
            app_dir=self.app_dir,
            manager_core={
                "overload_threshold": self.overload_threshold,
                "overload_latency_us_p99": round(self.overload_latency_ms * 1000),
                "overload_parts_fraction": self.overload_parts_fraction,
                "overload_cooldown_ms": self.overload_cooldown_ms,
                "suspect_timeout_ms": self.suspect_timeout_ms,
                "failure_timeout_ms": self.failure_timeout_ms,
                "handoffs_per_server_max": self.handoffs_per_server_max,
                "target_cpu_utilization_max": self.target_cpu_utilization_max,
            },
            server_core={"backup_period_ms": self.backup_period_ms},
            admin_http_port=self.dashboard_port,
            burner=BurnerConfig(
                ramp_ms=round(self.ramp_s * 1000), chunk_ms_peak=self.burner_chunk_ms_peak
            ),
        )


class _Run:
    """One run's live state: the cluster, the load, the probes, the view."""

    def __init__(self, config: DemoConfig, cluster: DemoCluster, console: Console) -> None:
        self.config = config
        self.cluster = cluster
        self.console = console
        self.load: LoadGenerator | None = None
        self.probes: dict[str, ServerProbe] = {}
        self.cpu: dict[str, ProcessCpu] = {}
        self.status: AdminReply | None = None
        self.phase = "starting"
        self.origin_s = 0.0
        self.view = View(console, live=config.live)
        self._handoffs_seen = 0
        self._flagged_at: dict[str, float] = {}
        self._breach_reported: set[str] = set()
        self._polling: asyncio.Task[None] | None = None

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def event(self, text: str) -> None:
        self.view.event(self.now() - self.origin_s, text)

    async def start(self) -> None:
        config = self.config
        self.console.print(
            f"starting a manager and {len(config.server_ids)} servers in {self.cluster.directory}"
        )
        await self.cluster.start()
        dashboard = self.cluster.dashboard_url
        if dashboard is not None:
            self.console.print(f"[bold]dashboard[/]: {dashboard} (live while the demo runs)")
        for server_id in self.cluster.servers:
            self._watch(server_id)
        self._polling = asyncio.get_running_loop().create_task(self._poll_status())
        self.console.print(f"opening {config.load.sessions} sessions")
        self.load = LoadGenerator(
            manager_address=self.cluster.manager_address,
            ca_path=self.cluster.ca_path,
            config=config.load,
        )
        await self.load.open()

    async def _poll_status(self) -> None:
        while True:
            try:
                async with asyncio.timeout(STATUS_TIMEOUT_S):
                    self.status = await self.cluster.status()
            except (AdminError, OSError, TimeoutError):
                pass
            await asyncio.sleep(1.0)

    def _watch(self, server_id: str) -> None:
        """Measure a server process's CPU and probe its latency (again after a restart: a new
        process, on a new port)."""
        process = self.cluster.servers[server_id]
        self.cpu[server_id] = ProcessCpu(process.pid)
        probe = ServerProbe(
            server_id=server_id,
            address=process.address,
            ca_path=self.cluster.ca_path,
            config=self.config.probe,
        )
        probe.start()
        self.probes[server_id] = probe

    async def stop(self) -> None:
        if self._polling is not None:
            self._polling.cancel()
            await asyncio.gather(self._polling, return_exceptions=True)
        for probe in self.probes.values():
            await probe.stop()
        if self.load is not None:
            await self.load.close()

    async def phase_for(self, phase: str, seconds: float) -> None:
        """Run `seconds` of phase `phase`, sampling and redrawing every tick."""
        self.phase = phase
        end_s = self.now() + seconds
        while (remaining_s := end_s - self.now()) > 0:
            await asyncio.sleep(min(TICK_S, remaining_s))
            self.tick()

    def tick(self) -> None:
        """Report new handoffs and breaches, redraw."""
        load = self.load
        assert load is not None
        now_s = self.now()
        new = load.handoffs[self._handoffs_seen :]
        self._handoffs_seen = len(load.handoffs)
        moved: dict[tuple[str, str, str], int] = {}
        for record in new:
            event = record.event
            if event.kind is HandoffEventKind.COMPLETED and event.source and event.target:
                key = (event.source, event.target, event.reason.name)
                moved[key] = moved.get(key, 0) + len(event.parts)
                if event.reason in PREDICTED_REASONS:
                    self._flagged_at[event.source] = record.at_s
        for (source, target, reason), parts in moved.items():
            self.event(f"handoff {source} -> {target}: {parts} part(s), reason {reason}")
        for server_id, probe in self.probes.items():
            if probe.breach_at_s is not None and server_id not in self._breach_reported:
                self._breach_reported.add(server_id)
                self.event(
                    f"{server_id} breached its SLO (probe over {self.config.probe.slo_ms:.0f} ms)"
                )
        self.view.update(self.snapshot(now_s))

    def snapshot(self, now_s: float) -> Snapshot:
        load = self.load
        assert load is not None
        states = {}
        map_version = 0
        if self.status is not None:
            map_version = self.status.map_version
            states = {s.server_id: f"{s.member_state}/{s.map_state}" for s in self.status.servers}
        primaries = load.primaries()
        recent = [
            call
            for call in load.calls[-5000:]
            if call.started_s + call.latency_ms / 1000 >= now_s - 1.0
        ]
        per_server: dict[str, int] = {}
        for call in recent:
            if call.ok:
                per_server[call.server] = per_server.get(call.server, 0) + 1
        rows = []
        for server_id in self.config.server_ids:
            process = self.cluster.servers[server_id]
            probe = self.probes[server_id]
            rows.append(
                ServerRow(
                    server_id=server_id,
                    state="killed"
                    if process.killed_at_s is not None
                    else states.get(server_id, "?"),
                    cpu=self.cpu[server_id].sample(),
                    flagged=now_s - self._flagged_at.get(server_id, -1e9) < FLAG_MEMORY_S,
                    primaries=primaries.get(server_id, 0),
                    requests_per_second=per_server.get(server_id, 0),
                    probe_ms=probe.latest_ms(window_s=1.0, now_s=now_s),
                    breached=probe.breach_at_s is not None,
                )
            )
        completed = sum(
            1 for record in load.handoffs if record.event.kind is HandoffEventKind.COMPLETED
        )
        relocated = sum(
            len(record.event.parts)
            for record in load.handoffs
            if record.event.kind in (HandoffEventKind.RELOCATED, HandoffEventKind.MOVED)
        )
        return Snapshot(
            elapsed_s=now_s - self.origin_s,
            phase=self.phase,
            sessions=load.session_count,
            requests_per_second=float(len(recent)),
            requests=load.call_count,
            failed=load.failed_count,
            handoffs=completed,
            relocations=relocated,
            map_version=map_version,
            overload_latency_ms=self.config.overload_latency_ms,
            slo_ms=self.config.probe.slo_ms,
            servers=tuple(rows),
        )

    async def timeline(self) -> Timeline:
        """Warm up, degrade, crash; returns when the load has stopped."""
        config = self.config
        load = self.load
        assert load is not None
        load.start()
        self.origin_s = self.now()
        self.event(f"load started: {load.session_count} sessions")
        await self.phase_for("warm-up", config.warmup_s)
        degraded = config.degraded_server
        self.cluster.signal_server(degraded, signal.SIGUSR1)
        degrade_started_s = self.now()
        self.event(f"degrading {degraded}: CPU burner ramping up over {config.ramp_s:.0f} s")
        await self.phase_for(f"degrading {degraded}", config.ramp_s + config.hold_s)
        self.cluster.signal_server(degraded, signal.SIGUSR2)
        degrade_stopped_s = self.now()
        self.event(f"burner in {degraded} stopped")
        await self.phase_for("settling", config.settle_s)
        killed = config.killed_server
        killed_parts = load.parts_on(killed)
        killed_s = self.now()
        self.cluster.kill_server(killed, now_s=killed_s)
        self.event(f"SIGKILL {killed}")
        await self.phase_for(f"{killed} killed", config.failover_window_s + config.after_s)
        # Recovery: the killed server comes back empty, and a rebalance hands it its share.
        self.phase = f"restarting {killed}"
        restart = asyncio.create_task(self.cluster.restart_server(killed))
        while not restart.done():
            await asyncio.wait({restart}, timeout=TICK_S)
            self.tick()
        await restart
        await self.probes[killed].stop()
        self._watch(killed)
        restarted_s = self.now()
        self.event(f"{killed} started again (a new incarnation): ACTIVE, holding nothing")
        queued = await self._rebalance()
        rebalanced_s = self.now()
        self.event(f"rebalance: {queued} part(s) queued for planned handoffs")
        await self.phase_for("rebalancing", config.rebalance_s)
        leave = await self._planned_restart(config.left_server)
        await self.phase_for("after the planned restart", config.after_leave_s)
        await load.stop()
        load_stopped_s = self.now()
        self.event("load stopped; reading every cart back")
        return Timeline(
            load_started_s=self.origin_s,
            degraded_server=degraded,
            degrade_started_s=degrade_started_s,
            degrade_stopped_s=degrade_stopped_s,
            killed_server=killed,
            killed_s=killed_s,
            load_stopped_s=load_stopped_s,
            failover_window_s=config.failover_window_s,
            killed_parts=killed_parts,
            restarted_s=restarted_s,
            rebalanced_s=rebalanced_s,
            rebalance_queued=queued,
            leave=leave,
        )

    async def _planned_restart(self, server_id: str) -> LeaveTimeline:
        """SIGTERM `server_id`: it asks to be drained, hands its parts off and exits; then
        start it again, as a rolling restart does."""
        load = self.load
        assert load is not None
        parts = load.parts_on(server_id)
        signalled_s = self.now()
        self.cluster.signal_server(server_id, signal.SIGTERM)
        self.event(f"SIGTERM {server_id}: it hands its parts off, then exits")
        self.phase = f"{server_id} leaving (SIGTERM)"
        exited = asyncio.ensure_future(
            asyncio.to_thread(self.cluster.wait_server, server_id, self.config.leave_wait_s)
        )
        while not exited.done():
            await asyncio.wait({exited}, timeout=TICK_S)
            self.tick()
        code = await exited
        exited_s = self.now()
        if code is None:
            self.event(f"{server_id} still runs {self.config.leave_wait_s:.0f} s after SIGTERM")
            self.cluster.kill_server(server_id, now_s=exited_s)
        else:
            self.event(f"{server_id} exited (status {code}) {exited_s - signalled_s:.1f} s later")
        left_map = None if code is None else await self._left_map(server_id)
        self.phase = f"restarting {server_id}"
        restart = asyncio.create_task(self.cluster.restart_server(server_id))
        while not restart.done():
            await asyncio.wait({restart}, timeout=TICK_S)
            self.tick()
        await restart
        await self.probes[server_id].stop()
        self._watch(server_id)
        self.event(f"{server_id} started again: ACTIVE")
        return LeaveTimeline(
            server=server_id,
            parts=parts,
            signalled_s=signalled_s,
            exited_s=exited_s,
            exit_code=code,
            restarted_s=self.now(),
            left_map=left_map,
        )

    async def _left_map(self, server_id: str) -> bool:
        """Whether the manager takes `server_id` out of its map within `LEFT_MAP_WAIT_S` of its
        exit: its last heartbeat said it left. Its silence would take a failure timeout (3 s),
        and leave it in the map as dead."""
        deadline_s = self.now() + LEFT_MAP_WAIT_S
        while True:
            try:
                reply = await self.cluster.status()
            except (AdminError, OSError, TimeoutError):
                reply = None
            listed = None if reply is None else {s.server_id: s for s in reply.servers}
            if listed is not None and (
                server_id not in listed or listed[server_id].map_state == ""
            ):
                self.event(f"the manager took {server_id} out of its map: no failover")
                return True
            if self.now() >= deadline_s:
                self.event(f"the manager still lists {server_id} in its map")
                return False
            await asyncio.sleep(TICK_S / 5)
            self.tick()

    async def _rebalance(self) -> int:
        """Ask for a rebalance; asked again a few times while nothing is queued (the restarted
        server's first load report, its start-up included, may show it without headroom)."""
        queued = 0
        for _ in range(REBALANCE_ATTEMPTS):
            reply = await self.cluster.rebalance()
            queued = reply.queued
            if queued:
                break
            await self.phase_for("waiting to rebalance", 1.0)
        return queued


async def run_demo(config: DemoConfig, *, console: Console | None = None) -> int:
    """Run the whole demo; the exit status (see the module docstring)."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=REPORT_WIDTH)
    directory = Path(tempfile.mkdtemp(prefix="forehand-demo-"))
    _log_to(directory / "demo.log")
    cluster = DemoCluster(directory, config.cluster_config())
    run = _Run(config, cluster, console)
    _stop_on_sigterm()
    try:
        try:
            await run.start()
        except (ClusterStartError, ConfigError, OSError) as error:
            console.print(f"[bold red]the cluster did not start[/]: {error}")
            return EXIT_START_FAILED
        with run.view:
            timeline = await run.timeline()
        assert run.load is not None
        verification = await run.load.verify()
        summary = summarize(
            calls=run.load.calls,
            handoffs=run.load.handoffs,
            breaches={sid: probe.breach_at_s for sid, probe in run.probes.items()},
            timeline=timeline,
            verification=verification,
            request_count=run.load.call_count,
            failed_count=run.load.failed_count,
        )
        print_report(summary, timeline, console)
        if config.summary_json is not None:
            config.summary_json.write_text(json.dumps(_jsonable(summary), indent=2))
        return EXIT_OK if summary.ok else EXIT_FAILED
    finally:
        await run.stop()
        cluster.stop()
        if config.keep_directory:
            console.print(f"logs and configuration kept in {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


def _log_to(path: Path) -> None:
    """The SDK's own log lines go to a file of the run, not across the live view."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _stop_on_sigterm() -> None:
    """SIGTERM cancels the run like Ctrl-C does, so the `finally` stops every process."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


def _jsonable(summary: DemoSummary) -> dict[str, Any]:
    data = asdict(summary)
    data["ok"] = summary.ok
    for group in data["handoffs"]:
        group["reason"] = group["reason"].name
    return data
