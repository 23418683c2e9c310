"""Prometheus metrics of a live cluster, scraped and parsed while a handoff happens."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.ops._ops_cluster import TOKEN, CartLoad, OpsCluster, eventually, run_async
else:
    from _ops_cluster import TOKEN, CartLoad, OpsCluster, eventually, run_async
from prometheus_client.parser import text_string_to_metric_families

from forehand.core._manager_events import (
    DrainProgressed,
    HoldEnded,
    MapChange,
    MapCommitted,
    MapRequestsAnswered,
    PartsMovedImplicitly,
    RebalanceQueued,
    SessionOpenRefused,
)
from forehand.ops.metrics import ManagerMetrics
from forehand.ops.view import ClusterView, RiskTracker

PARTS = ["auth", "cart", "feature/video"]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Every sample of a scrape: (name, sorted labels) -> value."""


def parse(text: str) -> Samples:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value, 0 when the series does not exist yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def test_counters_move_with_a_handoff_under_load(ops_cluster: OpsCluster) -> None:
    """A handoff under load moves the manager's handoff counters and duration histogram by one
    handoff, the servers count the requests per part with latencies, the gauges show the parts
    per server, the risk of the client's path buckets and the replication lag, and the audit log
    (API and JSONL file) holds the handoff's record."""
    cluster = ops_cluster

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=cluster.api_url, timeout=10) as api:

            async def scrape(url: str) -> Samples:
                response = await api.get(url + "/metrics")
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/plain")
                return parse(response.text)

            before = await scrape(cluster.api_url)
            records = (await api.get("/api/history", params={"limit": 1})).json()
            last = records[-1]["sequence"] if records else 0
            servers_before = {s: await scrape(u) for s, u in cluster.metrics_urls.items()}
            async with cluster.connect() as client:
                session = await client.open_session(parts=PARTS)
                for part, op, argument in (("auth", "login", "dora"), ("feature/video", "seek", 3)):
                    await session.call(part, op, argument)
                source = session.placements()["cart"].primary
                target = next(s for s in cluster.server_ids if s != source)
                async with CartLoad(session, writers=2) as load:
                    await load.wait_for(20, what="writes before the handoff")
                    response = await api.post(
                        f"/api/sessions/{session.id.hex()}/handoff",
                        json={"target": target},
                        headers={"Authorization": f"Bearer {TOKEN}"},
                    )
                    assert response.status_code == 202, response.text
                    assert response.json()["queued"] >= 1

                    seen: list[object] = []

                    async def recorded() -> bool:
                        params = {"kind": "handoff", "after": last}
                        history = await api.get("/api/history", params=params)
                        seen[:] = history.json()  # Shown if the record never comes.
                        # This session's handoff only: a drain's handoffs (an earlier test's,
                        # on the cluster the tests share) can also complete towards `target`.
                        mine = f"{session.id.hex()}/cart"
                        return any(
                            r["target"] == target
                            and r["outcome"] == "completed"
                            and r["reason"] == "rebalance"
                            and mine in r["parts"]
                            for r in history.json()
                        )

                    await eventually(
                        recorded, what="the handoff's audit record", state=lambda: seen
                    )
                    await load.wait_for(40, what="writes after the handoff")
                await load.check_exactly_once()

            after = await scrape(cluster.api_url)
            labels = {"reason": "rebalance", "outcome": "completed"}
            completed = value(after, "forehand_handoffs_total", **labels)
            assert completed - value(before, "forehand_handoffs_total", **labels) >= 1
            name = "forehand_handoffs_started_total"
            started = value(after, name, reason="rebalance")
            assert started - value(before, name, reason="rebalance") >= 1
            durations = value(after, "forehand_handoff_duration_seconds_count", outcome="completed")
            assert durations == total(after, "forehand_handoffs_total", outcome="completed")
            assert value(after, "forehand_map_version") > value(before, "forehand_map_version")

            async def gauges_show_the_session() -> bool:
                samples = await scrape(cluster.api_url)
                sessions = total(samples, "forehand_server_sessions")
                primaries = total(samples, "forehand_server_parts", role="primary")
                return sessions >= 1 and primaries >= len(PARTS)

            await eventually(gauges_show_the_session, what="sessions and parts per server")
            # Every server confirms the maps sent to it.
            samples = await scrape(cluster.api_url)
            hearing = [v for (n, _), v in samples.items() if n == "forehand_server_hearing"]
            assert len(hearing) >= len(cluster.server_ids) and set(hearing) == {1.0}

            async def path_risk_reported() -> bool:
                samples = await scrape(cluster.api_url)
                risks = [v for (n, _), v in samples.items() if n == "forehand_path_risk_ratio"]
                return bool(risks) and all(0.0 <= risk <= 1.0 for risk in risks)

            await eventually(path_risk_reported, what="risk of a client path bucket")
            cart = f"{session.id.hex()}/cart"

            async def lag_reported() -> bool:
                lags = (await api.get("/api/replication")).json()
                replicas = {lag["replica"] for lag in lags if lag["part"] == cart}
                samples = await scrape(cluster.api_url)
                series = total(samples, "forehand_replication_lag_entries", part=cart)
                return (
                    len(replicas) == 2
                    and target not in replicas
                    and series >= 0
                    and all(
                        (
                            ("forehand_replication_lag_seconds", (("part", cart), ("replica", r)))
                            in samples
                        )
                        for r in replicas
                    )
                )

            await eventually(lag_reported, what="replication lag of the cart's two replicas")

            requests = 0.0
            for server_id, url in cluster.metrics_urls.items():
                samples = await scrape(url)
                requests += total(samples, "forehand_requests_total", part="cart") - total(
                    servers_before[server_id], "forehand_requests_total", part="cart"
                )
                observed = total(samples, "forehand_request_duration_seconds_count", part="cart")
                executed = total(samples, "forehand_requests_total", part="cart", status="ok")
                assert observed <= executed
            assert requests >= 60
            source_samples = await scrape(cluster.metrics_urls[source])
            assert total(source_samples, "forehand_handoff_steps_total", side="source") >= 1
            assert total(source_samples, "forehand_request_duration_seconds_count") >= 1

        records = [json.loads(line) for line in cluster.audit_file.read_text().splitlines()]
        cart = f"{session.id.hex()}/cart"
        moved = [r for r in records if r["kind"] == "handoff" and cart in r["parts"]]
        assert len(moved) == 1, moved
        assert (moved[0]["source"], moved[0]["target"], moved[0]["outcome"]) == (
            source,
            target,
            "completed",
        )
        assert moved[0]["reason"] == "rebalance" and moved[0]["duration_ms"] > 0

    run_async(scenario())


def test_held_map_requests_are_counted_by_what_answered_them() -> None:
    view_risk = RiskTracker(clock_us=lambda: 0)
    manager_metrics = ManagerMetrics(
        view=ClusterView(risk=view_risk, thresholds=dict), risk=view_risk
    )
    manager_metrics(MapRequestsAnswered(requests=3, why=HoldEnded.MOVED))
    manager_metrics(MapRequestsAnswered(requests=1, why=HoldEnded.DEADLINE))
    manager_metrics(MapRequestsAnswered(requests=2, why=HoldEnded.MOVED))
    read = manager_metrics.registry.get_sample_value
    name = "forehand_map_requests_held_answered_total"
    assert read(name, {"why": "moved"}) == 5
    assert read(name, {"why": "deadline"}) == 1
    assert read(name, {"why": "server_heard"}) is None


def test_refused_opens_are_counted_by_cause() -> None:
    view_risk = RiskTracker(clock_us=lambda: 0)
    manager_metrics = ManagerMetrics(
        view=ClusterView(risk=view_risk, thresholds=dict), risk=view_risk
    )
    for cause in ("queue_full", "map_full", "queue_full"):
        manager_metrics(SessionOpenRefused(client="c", parts=("a",), reason="r", cause=cause))
    read = manager_metrics.registry.get_sample_value
    name = "forehand_sessions_open_refused_total"
    assert read(name, {"cause": "queue_full"}) == 2
    assert read(name, {"cause": "map_full"}) == 1
    assert read(name, {"cause": "undeclared_parts"}) is None


def test_automatic_rebalances_count_their_parts() -> None:
    view_risk = RiskTracker(clock_us=lambda: 0)
    manager_metrics = ManagerMetrics(
        view=ClusterView(risk=view_risk, thresholds=dict), risk=view_risk
    )
    read = manager_metrics.registry.get_sample_value
    name = "forehand_rebalance_parts_queued_total"
    assert read(name) == 0
    manager_metrics(RebalanceQueued(parts=12, tolerance=0.2, map_version=7))
    manager_metrics(RebalanceQueued(parts=3, tolerance=0.2, map_version=9))
    assert read(name) == 15


def test_a_drain_s_progress_shows_the_replica_roles_kept_behind() -> None:
    """The roles a drain keeps until another replica of the part catches up are a gauge per
    server, apart from the roles waiting for another server to take them; both go to 0 when
    the server is undrained (they kept their last values)."""
    view_risk = RiskTracker(clock_us=lambda: 0)
    manager_metrics = ManagerMetrics(
        view=ClusterView(risk=view_risk, thresholds=dict), risk=view_risk
    )
    read = manager_metrics.registry.get_sample_value
    for behind in (3, 0, 2):
        manager_metrics(
            DrainProgressed(
                server_id="s4",
                parts_moved=7,
                parts_total=10,
                finished=False,
                replicas_behind=behind,
                parts_waiting=1,
            )
        )
        assert read("forehand_drain_replicas_behind", {"server": "s4"}) == behind
        assert read("forehand_drain_parts_waiting", {"server": "s4"}) == 1
    # Undrained, its drain is over: nothing is left waiting or behind.
    cleared = MapCommitted(
        map_version=9, base_version=8, change=MapChange.DRAIN_CLEARED, parts=(), servers=("s4",)
    )
    manager_metrics(cleared)
    assert read("forehand_drain_replicas_behind", {"server": "s4"}) == 0
    assert read("forehand_drain_parts_waiting", {"server": "s4"}) == 0


def test_listener_counts_show_handshakes_under_way(ops_cluster: OpsCluster) -> None:
    """A server's and the manager's /metrics show their listeners' counts by transport: the
    connections they hold, and a TCP connection that never starts its TLS handshake as one
    under way until it leaves; the eviction and timeout counters are exported (0 here)."""
    cluster = ops_cluster
    server_id = cluster.server_ids[0]
    host, _, port = cluster.addresses[server_id].rpartition(":")

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=10) as http:

            async def scrape(url: str) -> Samples:
                return parse((await http.get(url + "/metrics")).text)

            url = cluster.metrics_urls[server_id]
            manager = await scrape(cluster.api_url)
            assert value(manager, "forehand_listener_connections", transport="tls") >= 3
            assert ("forehand_listener_handshakes_evicted_total", (("transport", "tls"),)) in (
                manager
            )
            silent = await asyncio.open_connection(host, int(port))

            async def under_way(count: int) -> bool:
                samples = await scrape(url)
                return value(samples, "forehand_listener_handshakes", transport="tls") == count

            await eventually(lambda: under_way(1), what="the silent connection's handshake")
            silent[1].close()
            await eventually(lambda: under_way(0), what="its handshake ended")
            samples = await scrape(url)
            name = "forehand_listener_handshakes_timed_out_total"
            assert (name, (("transport", "tls"),)) in samples

    run_async(scenario())


def test_implicit_moves_are_counted_by_change() -> None:
    view_risk = RiskTracker(clock_us=lambda: 0)
    manager_metrics = ManagerMetrics(
        view=ClusterView(risk=view_risk, thresholds=dict), risk=view_risk
    )
    joined = MapChange.SERVER_JOINED
    manager_metrics(
        PartsMovedImplicitly(map_version=4, change=joined, servers=("s4",), count=70, parts=())
    )
    manager_metrics(
        PartsMovedImplicitly(map_version=9, change=joined, servers=("s5",), count=2, parts=())
    )
    read = manager_metrics.registry.get_sample_value
    name = "forehand_parts_moved_implicitly_total"
    assert read(name, {"change": "server_joined"}) == 72
    assert read(name, {"change": "failover"}) is None
