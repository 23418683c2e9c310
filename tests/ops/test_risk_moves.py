"""A move the risk policy asks for, end to end: a policy update through the API makes the policy
flag servers, and the audit log records the moves with the decision behind them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from tests.ops._ops_cluster import TOKEN, CartLoad, OpsCluster, eventually, run_async
else:
    from _ops_cluster import TOKEN, CartLoad, OpsCluster, eventually, run_async

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_a_lowered_threshold_moves_parts_with_an_audited_decision(ops_cluster: OpsCluster) -> None:
    """With the CPU threshold lowered through the API, the loaded servers are flagged (the
    busiest alone when every server runs above it): the alarm counter moves and the audit log
    records moves of reason overload carrying the decision's detail and a lead time; the
    threshold is put back afterwards."""
    cluster = ops_cluster

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=cluster.api_url, timeout=10) as api:
            before = (await api.get("/api/policy")).json()
            last = (await api.get("/api/history", params={"limit": 1})).json()
            after = last[-1]["sequence"] if last else 0
            async with cluster.connect() as client:
                session = await client.open_session(parts=["auth", "cart"])
                async with CartLoad(session, writers=2) as load:
                    await load.wait_for(20, what="writes before the policy change")
                    # Above an idle server's CPU (heartbeats only, reported to 0.001) and below
                    # a loaded one's: at 0.001 an idle server could be flagged too, and with
                    # every server flagged no move has a target.
                    change = {"overload_threshold": 0.02, "overload_cooldown_ms": 120_000}
                    response = await api.put("/api/policy", json=change, headers=AUTH)
                    assert response.status_code == 200, response.text
                    try:
                        seen: list[object] = []
                        threshold = [change["overload_threshold"]]

                        async def audited() -> bool:
                            params = {"reason": "overload", "after": after}
                            records = (await api.get("/api/history", params=params)).json()
                            if any(r["risk"] is not None for r in records):
                                return True
                            # What the servers reported, shown if no move ever comes.
                            servers = (await api.get("/api/status")).json()["servers"]
                            seen[:] = [
                                (s["server_id"], s["cpu_utilization"], s["risk"]) for s in servers
                            ]
                            # On a busy machine every server (the cart's replicas, a server
                            # another test started) may run above the threshold, and then no
                            # move has a target: the threshold goes between the busiest server
                            # and the next, which flags the busiest alone.
                            cpus = sorted(float(s["cpu_utilization"]) for s in servers)
                            if len(cpus) >= 2 and cpus[0] >= threshold[0] and cpus[-1] > cpus[-2]:
                                threshold[0] = round((cpus[-1] + cpus[-2]) / 2, 4)
                                update = {**change, "overload_threshold": threshold[0]}
                                response = await api.put("/api/policy", json=update, headers=AUTH)
                                assert response.status_code == 200, response.text
                            return False

                        await eventually(
                            audited,
                            what="a move of reason overload in the audit",
                            state=lambda: seen,
                        )
                    finally:
                        restore = {key: before[key] for key in change}
                        await api.put("/api/policy", json=restore, headers=AUTH)
                    await load.wait_for(20, what="writes after the moves")
                await load.check_exactly_once()
            params = {"reason": "overload", "after": after}
            records = (await api.get("/api/history", params=params)).json()
            decided = [r for r in records if r["risk"] is not None]
            record = decided[0]
            assert "cpu" in record["risk"]["detail"] and record["risk"]["reason"] == "overload"
            assert record["risk"]["server_id"] == record["source"]
            assert record["lead_time_ms"] is not None and record["lead_time_ms"] >= 0
            metrics = (await api.get("/metrics")).text
            assert 'forehand_predictor_alarms_total{reason="overload"}' in metrics
            assert (await api.get("/api/policy")).json() == before

    run_async(scenario())
