"""Crash failover time: SIGKILL of a server to the first good response, over several trials.

A manager and three servers run as processes on 127.0.0.1 (TLS 1.3); 60 sessions of the cart
example's replicated part (two replicas) call `cart.add` every `--pause-ms` on average. Each trial
SIGKILLs the server holding the most primaries, and for every session whose primary it was
measures the time from the SIGKILL to the first response OK from another server. Then the killed
server is started again (a new incarnation, empty) and, once it is an ACTIVE member, the next
trial begins. Reported: p50/p99/max over every affected session of every trial, and where the
time goes, per trial:

- detection: SIGKILL until the manager's membership says `dead` (admin Status, polled every
  `STATUS_POLL_MS`, so each phase end is late by at most one poll plus one admin round trip);
- promotion and map commit: until the manager's map no longer lists the server as active;
- client relocation: until each client learned the new primary from the manager (PartRelocated
  naming a server other than the killed one);
- first response: until the session's first answer from the new primary.

The detection settings are the benchmark's knobs (`--heartbeat-ms`, `--failure-ms`,
`--prepare-ms`, `--retry-backoff-ms`); their values are in the JSON output. Clients notice the
lost connection at once (the kernel closes a killed process's sockets), so the client side
waits on the manager's map, not on its own pings.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._cluster import SessionLoad, running_cluster
from benchmarks._common import Metric, percentile, print_metrics, record

from forehand.core import ClientConfig
from forehand.demo._cluster import DemoCluster
from forehand.runtime import run

SERVERS = ("s1", "s2", "s3")
SESSIONS = 60
STATUS_POLL_MS = 20
TRIAL_TIMEOUT_S = 30.0
"""A trial whose sessions have not all been answered by a new primary by then is incomplete."""
TARGET_P99_MS = 1000.0


def _settings(arguments: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    heartbeat_ms = arguments.heartbeat_ms
    failure_ms = arguments.failure_ms
    manager = {
        "heartbeat_interval_ms": heartbeat_ms,
        "suspect_timeout_ms": max(heartbeat_ms * 2, failure_ms // 2),
        "failure_timeout_ms": failure_ms,
        "failover_prepare_timeout_ms": arguments.prepare_ms,
        "handoff_deadline_ms": 10_000,
        "handoff_backup_report_timeout_ms": 5_000,
        # Only the SIGKILLs move parts: the rule risk policy, with a threshold nothing reaches.
        "risk_policy": "rule",
        "overload_threshold": 100.0,
    }
    server = {
        "heartbeat_interval_ms": heartbeat_ms,
        "backup_period_ms": 1000,
        "handoff_deadline_ms": 10_000,
    }
    return manager, server


async def _poll_phases(cluster: DemoCluster, victim: str, killed_s: float) -> dict[str, float]:
    """Poll the manager until the victim is dead in its membership and out of its active map."""
    phases: dict[str, float] = {}
    deadline_s = killed_s + TRIAL_TIMEOUT_S
    while len(phases) < 2 and time.monotonic() < deadline_s:
        reply = await cluster.status()
        now_s = time.monotonic()
        for server in reply.servers:
            if server.server_id != victim:
                continue
            if server.member_state == "dead":
                phases.setdefault("dead_s", now_s)
            if server.map_state != "active":
                phases.setdefault("out_of_map_s", now_s)
        await asyncio.sleep(STATUS_POLL_MS / 1000)
    return phases


async def _restart(cluster: DemoCluster, server_id: str) -> None:
    """Start a killed server again (a new incarnation) and wait until it is ACTIVE."""
    # DemoCluster starts servers only in start(); its per-server helpers do the same here.
    process = cluster._start_server(server_id)
    cluster.servers[server_id] = process
    deadline_s = time.monotonic() + 60
    await cluster._wait_ready(process, deadline_s)
    await cluster._wait_active(deadline_s)


async def _trial(load: SessionLoad, cluster: DemoCluster, *, freeze: bool) -> dict[str, Any]:
    primaries = load.primaries()
    victim, _ = Counter(primaries.values()).most_common(1)[0]
    affected = [session_id for session_id, primary in primaries.items() if primary == victim]
    killed_s = time.monotonic()
    if freeze:
        # A freeze: no RST, no ICMP; the connections stay open and silent.
        cluster.signal_server(victim, signal.SIGSTOP)
    else:
        cluster.kill_server(victim, now_s=killed_s)
    phases = await _poll_phases(cluster, victim, killed_s)
    deadline_s = killed_s + TRIAL_TIMEOUT_S

    def answered(session_id: bytes) -> float | None:
        trace = load.traces[session_id]
        for done_s, server in trace.responses:
            if done_s > killed_s and server != victim:
                return done_s
        return None

    while time.monotonic() < deadline_s and any(answered(s) is None for s in affected):
        await asyncio.sleep(0.02)
    first_ms: list[float] = []
    relocated_ms: list[float] = []
    for session_id in affected:
        done_s = answered(session_id)
        if done_s is not None:
            first_ms.append((done_s - killed_s) * 1000)
        trace = load.traces[session_id]
        moved = [t for t, server in trace.relocated if t > killed_s and server != victim]
        if moved:
            relocated_ms.append((moved[0] - killed_s) * 1000)
    failed = load.failed_between(killed_s, time.monotonic())
    if freeze:
        # The frozen server was declared dead; SIGKILL it (a stopped process dies too) and
        # start a new incarnation rather than thaw a member the cluster has written off.
        cluster.kill_server(victim, now_s=time.monotonic())
    await _restart(cluster, victim)
    return {
        "victim": victim,
        "affected_sessions": len(affected),
        "answered_sessions": len(first_ms),
        "failed_requests": failed,
        "first_good_response_ms": first_ms,
        "relocated_ms": relocated_ms,
        "declared_dead_ms": (phases["dead_s"] - killed_s) * 1000 if "dead_s" in phases else None,
        "out_of_map_ms": (
            (phases["out_of_map_s"] - killed_s) * 1000 if "out_of_map_s" in phases else None
        ),
    }


async def bench(arguments: argparse.Namespace) -> list[Metric]:
    manager_core, server_core = _settings(arguments)
    client_config = ClientConfig(
        ping_interval_ms=arguments.ping_ms,
        request_timeout_ms=20_000,
        retry_backoff_ms=arguments.retry_backoff_ms,
        retry_backoff_max_ms=max(arguments.retry_backoff_ms, arguments.retry_backoff_max_ms),
        retry_attempts_max=arguments.retry_attempts_max,
    )
    trials: list[dict[str, Any]] = []
    async with (
        running_cluster(
            servers=SERVERS, manager_core=manager_core, server_core=server_core
        ) as cluster,
        SessionLoad(
            cluster,
            sessions=SESSIONS,
            clients=2,
            pause_ms=arguments.pause_ms,
            client_config=client_config,
        ) as load,
    ):
        await asyncio.sleep(2.0)
        broke = "froze" if arguments.freeze else "killed"
        for number in range(arguments.trials):
            trial = await _trial(load, cluster, freeze=arguments.freeze)
            trials.append(trial)
            first = trial["first_good_response_ms"]
            print(
                f"trial {number + 1}: {broke} {trial['victim']}, "
                f"{trial['answered_sessions']}/{trial['affected_sessions']} sessions answered, "
                f"p50 {percentile(first, 0.5):.0f} ms, max {max(first, default=0):.0f} ms",
                flush=True,
            )
            await asyncio.sleep(1.0)
    signal_name = "SIGSTOP" if arguments.freeze else "SIGKILL"
    return _metrics(trials, manager_core, server_core, client_config, signal_name)


def _metrics(
    trials: list[dict[str, Any]],
    manager_core: dict[str, Any],
    server_core: dict[str, Any],
    client_config: ClientConfig,
    signal_name: str = "SIGKILL",
) -> list[Metric]:
    first = [ms for trial in trials for ms in trial["first_good_response_ms"]]
    relocated = [ms for trial in trials for ms in trial["relocated_ms"]]
    dead = [trial["declared_dead_ms"] for trial in trials if trial["declared_dead_ms"] is not None]
    out = [trial["out_of_map_ms"] for trial in trials if trial["out_of_map_ms"] is not None]
    affected = sum(trial["affected_sessions"] for trial in trials)
    failed = sum(trial["failed_requests"] for trial in trials)
    p99 = percentile(first, 0.99)
    record(
        "failover" if signal_name == "SIGKILL" else "failover-freeze",
        {
            "trials": trials,
            "manager_core": manager_core,
            "server_core": server_core,
            "client": {
                "retry_backoff_ms": client_config.retry_backoff_ms,
                "retry_backoff_max_ms": client_config.retry_backoff_max_ms,
                "retry_attempts_max": client_config.retry_attempts_max,
                "ping_interval_ms": client_config.ping_interval_ms,
            },
        },
    )
    return [
        Metric(name="trials", value=len(trials), unit="trials"),
        Metric(
            name="affected sessions answered",
            value=len(first),
            unit="sessions",
            baseline=affected,
            baseline_name="affected sessions",
            target="all",
            met=len(first) == affected,
        ),
        Metric(name="failed requests", value=failed, unit="requests", target="0", met=failed == 0),
        Metric(
            name=f"{signal_name} to first good response p50",
            value=percentile(first, 0.5),
            unit="ms",
        ),
        Metric(
            name=f"{signal_name} to first good response p99",
            value=p99,
            unit="ms",
            # The target is the crash's (issue: SIGKILL on loopback); a freeze is reported only.
            target=f"< {TARGET_P99_MS:.0f} ms" if signal_name == "SIGKILL" else "",
            met=p99 < TARGET_P99_MS and len(first) == affected
            if signal_name == "SIGKILL"
            else None,
        ),
        Metric(
            name=f"{signal_name} to first good response max", value=max(first, default=0), unit="ms"
        ),
        Metric(name="phase: declared dead (p50 of trials)", value=percentile(dead, 0.5), unit="ms"),
        Metric(name="phase: out of the map (p50 of trials)", value=percentile(out, 0.5), unit="ms"),
        Metric(name="phase: client relocated p50", value=percentile(relocated, 0.5), unit="ms"),
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 trials instead of 10")
    parser.add_argument("--trials", type=int, default=0, help="SIGKILLs")
    parser.add_argument("--pause-ms", type=float, default=100.0, help="mean pause between calls")
    parser.add_argument("--freeze", action="store_true", help="SIGSTOP instead of SIGKILL")
    parser.add_argument("--ping-ms", type=int, default=200, help="client ping interval")
    parser.add_argument("--heartbeat-ms", type=int, default=50, help="server heartbeat interval")
    parser.add_argument("--failure-ms", type=int, default=300, help="silence until dead")
    parser.add_argument("--prepare-ms", type=int, default=100, help="failover prepare timeout")
    parser.add_argument("--retry-backoff-ms", type=int, default=25, help="client first retry")
    parser.add_argument("--retry-backoff-max-ms", type=int, default=100, help="client retry cap")
    parser.add_argument("--retry-attempts-max", type=int, default=32, help="client retries")
    arguments = parser.parse_args(argv)
    arguments.trials = arguments.trials or (3 if arguments.quick else 10)
    rows = run(bench(arguments))
    kind, signal_name = ("Freeze", "SIGSTOP") if arguments.freeze else ("Crash", "SIGKILL")
    print_metrics(
        f"{kind} failover, {arguments.trials} {signal_name}s (3 servers, 2 replicas, TLS)",
        rows,
    )


if __name__ == "__main__":
    main()
