"""The cluster view's replication lag and load-based risk, from a hand-made membership."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any, cast

import msgspec

from forehand.core import ManagerCore
from forehand.core.messages import LoadReport, PartProgress, PartRef, PartRole
from forehand.ops import ClusterView, RiskTracker
from forehand.ops import view as view_module
from forehand.ops.hub import OpsHub, OpsLimits
from forehand.placement import PlacementConfig, ShardMap, new_session_id

CART = PartRef(session_id=new_session_id(now_ms=1_000, rng=random.Random(1)), part="cart")
SECOND_US = 1_000_000


def member(server_id: str, applied_seq: int, role: PartRole, cpu: float = 0.0) -> Any:
    """A live member whose heartbeat reported `applied_seq` on the cart."""
    load = LoadReport(
        cpu_utilization=cpu,
        queue_depth=0,
        latency_us_p99=0,
        error_ratio=0.0,
        requests_per_second=0.0,
    )
    progress = PartProgress(ref=CART, role=role, applied_seq=applied_seq, epoch=1)
    return SimpleNamespace(
        server_id=server_id,
        address="127.0.0.1:1",
        zone="z",
        state=SimpleNamespace(value="alive"),
        is_live=True,
        load=load,
        progress={CART: progress},
        not_hearing_since_us=None,
    )


class _Map:
    """A stand-in for the shard map: the cart's placement."""

    def __init__(self, primary: str, replicas: tuple[str, ...]) -> None:
        self._placement = SimpleNamespace(primary=primary, replicas=replicas)

    def __contains__(self, key: object) -> bool:
        return getattr(key, "part", None) == CART.part

    def lookup(self, key: object) -> Any:
        return self._placement

    override_count = 0
    version = 7

    def __len__(self) -> int:
        return 1

    def primary_sessions(self) -> dict[str, int]:
        return {"s1": 1}

    def server(self, server_id: str) -> Any:
        return SimpleNamespace(state=SimpleNamespace(value="active"))

    def part_counts(self, server_id: str) -> tuple[int, int]:
        return (1, 0) if server_id == "s1" else (0, 1)


def core(*members: Any, replicas: tuple[str, ...] | None = None) -> ManagerCore:
    """A stand-in for the manager core: only what the view reads (with `replicas`, a map that
    places the cart on s1 with them; the view shows lags of the map's roles only)."""
    membership = SimpleNamespace(members=lambda: list(members))
    shard_map = None if replicas is None else _Map("s1", replicas)
    return cast(
        ManagerCore, SimpleNamespace(shard_map=shard_map, map_version=7, membership=membership)
    )


def test_lag_in_entries_and_seconds_follows_the_primary_reports() -> None:
    """A replica's lag counts the entries it lacks and the time since the primary first
    reported the oldest of them; a caught-up replica shows 0 and 0."""
    risk = RiskTracker(clock_us=lambda: 0)
    view = ClusterView(risk=risk, thresholds=lambda: {"overload_threshold": 0.5})
    start_us = 100 * SECOND_US
    view.sample(
        core(
            member("s1", 10, PartRole.PRIMARY, cpu=0.25),
            member("s2", 4, PartRole.REPLICA),
            member("s3", 10, PartRole.REPLICA),
            replicas=("s2", "s3"),
        ),
        now_us=start_us,
    )
    lags = {lag.replica: (lag.entries, lag.seconds) for lag in view.lags}
    assert lags == {"s2": (6, 0.0), "s3": (0, 0.0)}
    view.sample(
        core(
            member("s1", 12, PartRole.PRIMARY),
            member("s2", 4, PartRole.REPLICA),
            member("s3", 10, PartRole.REPLICA),
            replicas=("s2", "s3"),
        ),
        now_us=start_us + 2 * SECOND_US,
    )
    lags = {lag.replica: (lag.entries, lag.seconds) for lag in view.lags}
    assert lags == {"s2": (8, 2.0), "s3": (2, 0.0)}
    view.sample(
        core(
            member("s1", 12, PartRole.PRIMARY),
            member("s2", 11, PartRole.REPLICA),
            member("s3", 12, PartRole.REPLICA),
            replicas=("s2", "s3"),
        ),
        now_us=start_us + 5 * SECOND_US,
    )
    lags = {lag.replica: (lag.entries, lag.seconds) for lag in view.lags}
    assert lags == {"s2": (1, 3.0), "s3": (0, 0.0)}
    assert view.map_version == 7
    assert [len(view.history[s]) for s in ("s1", "s2", "s3")] == [3, 3, 3]


def test_lag_shows_only_the_roles_the_map_gives() -> None:
    """A server's last report of a replica role it lost (a drain or rebalance moved it) stays
    in the membership; the view shows it no more (a walkthrough saw 186 such rows, ever
    further behind, burying real lag)."""
    view = ClusterView(risk=RiskTracker(clock_us=lambda: 0), thresholds=dict)
    members = (
        member("s1", 10, PartRole.PRIMARY),
        member("s2", 4, PartRole.REPLICA),
        member("s4", 1, PartRole.REPLICA),
    )
    view.sample(core(*members, replicas=("s2", "s3")), now_us=0)
    assert {lag.replica for lag in view.lags} == {"s2"}
    view.sample(core(*members, replicas=("s4",)), now_us=SECOND_US)
    assert {(lag.replica, lag.entries) for lag in view.lags} == {("s4", 9)}


def test_risk_is_the_decisions_when_fresh_else_the_load_over_the_threshold() -> None:
    """Without a decision a server's risk is its CPU over the threshold; a decision event's risk
    replaces it while fresh, and a path bucket's goes to the path table."""
    now = {"us": 0}
    risk = RiskTracker(clock_us=lambda: now["us"], fresh_ms=1_000)
    view = ClusterView(risk=risk, thresholds=lambda: {"overload_threshold": 0.5})
    view.sample(core(member("s1", 1, PartRole.PRIMARY, cpu=0.25)), now_us=0)
    assert view.servers[0].risk == 0.5
    risk(SimpleNamespace(server_id="s1", risk=0.9))
    risk(SimpleNamespace(server_id="s1", risk=0.3, path_bucket=4))
    view.sample(core(member("s1", 1, PartRole.PRIMARY, cpu=0.25)), now_us=500_000)
    assert view.servers[0].risk == 0.9
    assert risk.path_risks(now_us=500_000) == [("s1", "4", 0.3)]
    view.sample(core(member("s1", 1, PartRole.PRIMARY, cpu=0.25)), now_us=2_000_000)
    assert view.servers[0].risk == 0.5
    assert risk.path_risks(now_us=2_000_000) == []


def test_load_risk_reads_the_worse_of_request_latency_and_loop_lag() -> None:
    """Like the rule, the fallback risk counts a stalled event loop as latency."""
    risk = RiskTracker(clock_us=lambda: 0, fresh_ms=1_000)
    thresholds = {"overload_threshold": 0.9, "overload_latency_us_p99": 60_000}
    view = ClusterView(risk=risk, thresholds=lambda: thresholds)
    stalled = member("s1", 1, PartRole.PRIMARY, cpu=0.09)
    stalled.load = msgspec.structs.replace(stalled.load, loop_lag_us_p99=120_000)
    view.sample(core(stalled), now_us=0)
    assert view.servers[0].risk == 2.0


def test_a_server_not_hearing_the_manager_is_shown() -> None:
    """A member the manager reports not hearing (`ServerNotHearing`) is shown so, the others
    hearing."""
    view = ClusterView(risk=RiskTracker(clock_us=lambda: 0), thresholds=dict)
    deaf = member("s2", 4, PartRole.REPLICA)
    deaf.not_hearing_since_us = 2 * SECOND_US
    view.sample(
        core(member("s1", 10, PartRole.PRIMARY), deaf, replicas=("s2",)), now_us=5 * SECOND_US
    )
    assert {s.server_id: s.hearing for s in view.servers} == {"s1": True, "s2": False}


def _map(sessions: int) -> ShardMap:
    """A map of three servers and `sessions` sessions of two parts."""
    rng = random.Random(5)
    shard_map = ShardMap.empty(config=PlacementConfig(replica_count=1))
    for server_id in ("s1", "s2", "s3"):
        shard_map = shard_map.apply(
            shard_map.join_server(server_id=server_id, address="h:1", zone="z")
        )
    for index in range(sessions):
        session_id = new_session_id(now_ms=1_000 + index, rng=rng)
        shard_map = shard_map.apply(shard_map.add_session_parts(session_id, ("auth", "cart")))
    return shard_map


def _expected(shard_map: ShardMap, server_id: str) -> tuple[int, int, int]:
    held = shard_map.parts_for(server_id)
    return len(held.primary), len(held.replica), len({key.session_id for key in held.primary})


def _map_core(shard_map: ShardMap) -> ManagerCore:
    members = [member(server_id, 0, PartRole.PRIMARY) for server_id in ("s1", "s2", "s3")]
    for one in members:
        one.progress = {}
    membership = SimpleNamespace(members=lambda: list(members))
    return cast(
        ManagerCore,
        SimpleNamespace(shard_map=shard_map, map_version=shard_map.version, membership=membership),
    )


def test_a_small_map_is_counted_at_each_sample() -> None:
    """Primary, replica and session counts per server equal what listing the parts gives."""
    shard_map = _map(60)
    view = ClusterView(risk=RiskTracker(clock_us=lambda: 0), thresholds=dict)
    view.sample(_map_core(shard_map), now_us=0)
    assert view.session_counts_version == shard_map.version
    for server in view.servers:
        counts = (server.primary_parts, server.replica_parts, server.sessions)
        assert counts == _expected(shard_map, server.server_id)


def test_a_big_map_is_counted_off_the_loop_by_the_sampler(monkeypatch: Any) -> None:
    """Past SESSION_COUNTS_SYNC_PARTS_MAX a sample counts parts but not sessions (a pass over
    every part); the hub's sampler counts those on a worker thread, and the next sample shows
    them."""
    monkeypatch.setattr(view_module, "SESSION_COUNTS_SYNC_PARTS_MAX", 10)
    shard_map = _map(60)
    core_ = _map_core(shard_map)
    driver = SimpleNamespace(core=core_, now_us=lambda: 0, subscribe=lambda *a, **k: None)
    hub = OpsHub(driver, policy=None, limits=OpsLimits(sample_interval_ms=10))

    async def sampled() -> None:
        hub.start()
        assert hub.view.session_counts_version == -1
        assert {server.sessions for server in hub.view.servers} == {0}
        for _ in range(500):
            await asyncio.sleep(0.01)
            if hub.view.session_counts_version == shard_map.version:
                break
        hub.sample()
        await hub.close()

    asyncio.run(sampled())
    assert hub.view.session_counts_version == shard_map.version
    for server in hub.view.servers:
        counts = (server.primary_parts, server.replica_parts, server.sessions)
        assert counts == _expected(shard_map, server.server_id)
