"""Planned handoff of 1,000 sessions on a real loopback cluster, under load.

A manager and three servers run as processes on 127.0.0.1 (TLS 1.3 transport); one benchmark
process opens sessions of the cart example over several SDK clients, each session calling
`cart.add` (a replicated write) in a loop with an exponential pause, `--rate` requests per second
in all. After a warm-up and a window of load measured as "before", one operator command over the
admin path (mutual TLS to the manager) moves the sessions:

- `--trigger drain` (the default): 3,000 sessions are opened (`--quick`: 600), so that the
  server holding the most primaries holds about 1,000, and one `Drain` of that server moves all
  of them (the manager picks targets, batches parts into handoffs, at most
  `handoffs_per_server_max` at once per server);
- `--trigger move`: 1,000 sessions (`--quick`: 200), one `MoveSession` command per session, 16
  in flight (each command is its own admin connection: a TLS handshake and HELLO per command).

The benchmark then waits until every moved session's client has completed a handoff (RESUME_OK
from the target). Measured:

- time from the command to the last session switched (and, for `move`, the command phase alone);
- failed requests from the command to the end (expected 0);
- p50/p99 latency of the calls answered in the window before and during the handoffs;
- per session, from the HANDOFF reaching the client to the first response from the target
  (p50/p99), and from the HANDOFF to RESUME_OK.

On a HANDOFF a session calls again at once instead of pausing, so the first target response is
not delayed by the load's own pause. Times are `time.monotonic()` in the client process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._cluster import SessionLoad, running_cluster
from benchmarks._common import Metric, percentile, print_metrics, record

from forehand.core import ClientConfig
from forehand.demo._cluster import ADMIN_NODE, MANAGER_NODE, DemoCluster
from forehand.runtime import run
from forehand.runtime.admin import Drain, MoveSession, admin_request

SERVERS = ("s1", "s2", "s3")
MANAGER_CORE = {
    "heartbeat_interval_ms": 100,
    "suspect_timeout_ms": 500,
    "failure_timeout_ms": 1000,
    "failover_prepare_timeout_ms": 300,
    "handoff_deadline_ms": 10_000,
    "handoff_backup_report_timeout_ms": 5_000,
    # Only the benchmark moves parts: the rule risk policy, with a threshold nothing reaches.
    "risk_policy": "rule",
    "overload_threshold": 100.0,
    "handoffs_per_server_max": 8,
    "handoffs_concurrent_max": 32,
    "handoff_parts_max": 16,
}
SERVER_CORE = {
    "heartbeat_interval_ms": 100,
    "backup_period_ms": 1000,
    "handoff_deadline_ms": 10_000,
}
CLIENT_CONFIG = ClientConfig(ping_interval_ms=1000, request_timeout_ms=20_000)
"""Pings every second (silence after 5 s): the client process runs thousands of sessions and
must not take its own slow loop for a silent manager."""
COMMANDS_IN_FLIGHT = 16
SESSIONS_PER_CLIENT = 800
"""Sessions per SDK client (below ClientConfig.sessions_max)."""
WARM_UP_S = 2.0
BEFORE_WINDOW_S = 4.0
PROGRESS_INTERVAL_S = 5.0
SWITCH_TIMEOUT_S = 180.0
"""A handoff of every session not done after this long is reported as incomplete."""


async def _move_all(cluster: DemoCluster, session_ids: list[bytes]) -> int:
    """Send one MoveSession per session; the number the manager accepted."""
    limit = asyncio.Semaphore(COMMANDS_IN_FLIGHT)

    async def move(session_id: bytes) -> bool:
        async with limit:
            reply = await admin_request(
                cluster.manager_address,
                MoveSession(session_id=session_id),
                certs_dir=cluster.certs_dir,
                node_id=ADMIN_NODE,
                manager_id=MANAGER_NODE,
                timeout_s=60,
            )
            return reply.ok

    accepted = await asyncio.gather(*(move(session_id) for session_id in session_ids))
    return sum(accepted)


async def _wait_switched(load: SessionLoad, since_s: float, old: dict[bytes, str]) -> int:
    """Wait until every session completed a handoff away from its old primary; how many did."""
    deadline_s = time.monotonic() + SWITCH_TIMEOUT_S

    def switched() -> int:
        return sum(
            1
            for session_id, primary in old.items()
            if any(
                t > since_s and target != primary for t, target in load.traces[session_id].followed
            )
        )

    reported_s = time.monotonic()
    while (count := switched()) < len(old) and time.monotonic() < deadline_s:
        if time.monotonic() - reported_s > PROGRESS_INTERVAL_S:
            reported_s = time.monotonic()
            print(f"  {count}/{len(old)} sessions switched", file=sys.stderr, flush=True)
        await asyncio.sleep(0.05)
    return count


async def _drain(cluster: DemoCluster, server_id: str) -> int:
    reply = await admin_request(
        cluster.manager_address,
        Drain(server_id=server_id),
        certs_dir=cluster.certs_dir,
        node_id=ADMIN_NODE,
        manager_id=MANAGER_NODE,
    )
    assert reply.ok, reply.detail
    return 1


async def bench(*, sessions: int, rate: float, trigger: str) -> list[Metric]:
    opened = sessions * len(SERVERS) if trigger == "drain" else sessions
    async with (
        running_cluster(
            servers=SERVERS, manager_core=MANAGER_CORE, server_core=SERVER_CORE
        ) as cluster,
        SessionLoad(
            cluster,
            sessions=opened,
            clients=max(2, -(-opened // SESSIONS_PER_CLIENT)),
            pause_ms=opened / rate * 1000,
            client_config=CLIENT_CONFIG,
        ) as load,
    ):
        print(f"  {opened} sessions open", file=sys.stderr, flush=True)
        await asyncio.sleep(WARM_UP_S + BEFORE_WINDOW_S)
        primaries = load.primaries()
        spread = {server: list(primaries.values()).count(server) for server in SERVERS}
        print(f"  primaries per server: {spread}", file=sys.stderr, flush=True)
        record("primaries_per_server", spread)
        if trigger == "drain":
            drained = max(SERVERS, key=list(primaries.values()).count)
            old = {s: primary for s, primary in primaries.items() if primary == drained}
        else:
            old = primaries
        command_s = time.monotonic()
        if trigger == "drain":
            accepted = await _drain(cluster, drained)
        else:
            accepted = await _move_all(cluster, list(old))
        commands_done_s = time.monotonic()
        switched = await _wait_switched(load, command_s, old)
        followed = [
            min(t for t, _ in load.traces[s].followed if t > command_s)
            for s in old
            if any(t > command_s for t, _ in load.traces[s].followed)
        ]
        all_switched_s = max(followed) if followed else time.monotonic()
        await asyncio.sleep(1.0)
        end_s = time.monotonic()
        record("trigger", {"trigger": trigger, "sessions_opened": opened, "rate": rate})
        return _metrics(
            load=load,
            sessions=len(old),
            accepted=accepted,
            switched=switched,
            command_s=command_s,
            commands_done_s=commands_done_s,
            all_switched_s=all_switched_s,
            end_s=end_s,
        )


def _metrics(
    *,
    load: SessionLoad,
    sessions: int,
    accepted: int,
    switched: int,
    command_s: float,
    commands_done_s: float,
    all_switched_s: float,
    end_s: float,
) -> list[Metric]:
    before = load.latencies_ms(command_s - BEFORE_WINDOW_S, command_s)
    during = load.latencies_ms(command_s, all_switched_s)
    first_target_ms: list[float] = []
    resume_ms: list[float] = []
    for trace in load.traces.values():
        started = [(t, target) for t, _, target in trace.started if t > command_s]
        if not started:
            continue
        started_s, target = started[0]
        answered_s = trace.first_response_after(started_s, server=target)
        if answered_s is not None:
            first_target_ms.append((answered_s - started_s) * 1000)
        done = [t for t, _ in trace.followed if t > started_s]
        if done:
            resume_ms.append((done[0] - started_s) * 1000)
    failed = load.failed_between(command_s, end_s)
    before_rate = len(before) / BEFORE_WINDOW_S
    record(
        "handoff",
        {
            "sessions": sessions,
            "moves_accepted": accepted,
            "sessions_switched": switched,
            "requests_per_second_before": round(before_rate),
            "latency_ms_before": _quantiles(before),
            "latency_ms_during": _quantiles(during),
            "handoff_to_first_target_response_ms": _quantiles(first_target_ms),
            "handoff_to_resume_ok_ms": _quantiles(resume_ms),
            "failures": load.failures[:20],
            "manager_core": MANAGER_CORE,
            "server_core": SERVER_CORE,
        },
    )
    p99_before = percentile(before, 0.99)
    p99_during = percentile(during, 0.99)
    return [
        Metric(
            name="sessions switched",
            value=switched,
            unit="sessions",
            baseline=sessions,
            baseline_name="sessions moved",
            target="all",
            met=switched == sessions,
        ),
        Metric(
            name="move command to all switched",
            value=(all_switched_s - command_s) * 1000,
            unit="ms",
        ),
        Metric(
            name="move commands sent (admin path)",
            value=(commands_done_s - command_s) * 1000,
            unit="ms",
        ),
        Metric(name="failed requests", value=failed, unit="requests", target="0", met=failed == 0),
        Metric(name="requests answered before", value=before_rate, unit="requests/s"),
        Metric(name="latency p50 before", value=percentile(before, 0.5), unit="ms"),
        Metric(name="latency p50 during", value=percentile(during, 0.5), unit="ms"),
        Metric(name="latency p99 before", value=p99_before, unit="ms"),
        Metric(
            name="latency p99 during",
            value=p99_during,
            unit="ms",
            baseline=p99_before,
            baseline_name="p99 before",
        ),
        Metric(name="latency p99 increase", value=p99_during - p99_before, unit="ms"),
        Metric(
            name="HANDOFF to first target response p50",
            value=percentile(first_target_ms, 0.5),
            unit="ms",
        ),
        Metric(
            name="HANDOFF to first target response p99",
            value=percentile(first_target_ms, 0.99),
            unit="ms",
        ),
        Metric(name="HANDOFF to RESUME_OK p50", value=percentile(resume_ms, 0.5), unit="ms"),
        Metric(name="HANDOFF to RESUME_OK p99", value=percentile(resume_ms, 0.99), unit="ms"),
    ]


def _quantiles(values: list[float]) -> dict[str, float]:
    return {
        "count": len(values),
        "p50": round(percentile(values, 0.5), 2),
        "p90": round(percentile(values, 0.9), 2),
        "p99": round(percentile(values, 0.99), 2),
        "max": round(max(values), 2) if values else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 sessions moved, not 1,000")
    parser.add_argument("--sessions", type=int, default=0, help="sessions to move (about)")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s of all sessions")
    parser.add_argument("--trigger", choices=("drain", "move"), default="drain")
    arguments = parser.parse_args(argv)
    sessions = arguments.sessions or (200 if arguments.quick else 1000)
    rows = run(bench(sessions=sessions, rate=arguments.rate, trigger=arguments.trigger))
    how = "one Drain" if arguments.trigger == "drain" else "MoveSession per session"
    print_metrics(f"Planned handoff, {how} (3 servers, TLS, loopback, under load)", rows)


if __name__ == "__main__":
    main()
