"""Tests of graded risk drains, per-client target path risk, and risk blocks across restarts."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from forehand.core._manager_clients import SessionBuckets
from forehand.core._manager_events import HandoffStarted
from forehand.core._manager_risk import (
    ClientPathSteering,
    GradedDrain,
    PredictiveRiskPolicy,
)
from forehand.core._paths import client_bucket
from forehand.core.messages import PathReport
from forehand.placement import DrainCause, ServerState
from forehand.predict import Action, RiskLevel, path_bucket
from forehand.wire import CloseSession, Credential, Hello, ReasonCode

if TYPE_CHECKING:
    from tests.core._manager_helpers import (
        MANAGER,
        ManagerHarness,
        complete_handoffs,
        decision,
        manager_config,
    )
else:
    from _manager_helpers import (
        MANAGER,
        ManagerHarness,
        complete_handoffs,
        decision,
        manager_config,
    )

S = 1_000_000
SERVERS = ("s1", "s2", "s3", "s4")


def graded(**overrides: object) -> GradedDrain:
    return GradedDrain(config=manager_config(**overrides))


def test_a_risk_that_is_not_load_moves_the_unloaded_share_first() -> None:
    """A server at risk with its CPU under risk_drain_cpu_utilization_target has a fault that
    shedding load does not cure: the first step is risk_drain_unloaded_fraction."""
    drain = graded(risk_drain_first_fraction=0.05, risk_drain_unloaded_fraction=0.3)
    drain.observe("s1", cpu_utilization=0.4, now_us=0)
    drain.observe("s1", cpu_utilization=0.4, now_us=30 * S)
    assert drain.step(decision(Action.DRAIN)) == 0.3


def test_the_first_step_is_at_least_the_least_share() -> None:
    """Just above the CPU target the excess is tiny: the step is risk_drain_first_fraction."""
    drain = graded(risk_drain_first_fraction=0.05, risk_drain_cpu_utilization_target=0.75)
    drain.observe("s1", cpu_utilization=0.76, now_us=0)
    drain.observe("s1", cpu_utilization=0.76, now_us=30 * S)
    assert drain.step(decision(Action.DRAIN)) == 0.05


def test_the_first_step_sheds_the_load_above_the_target() -> None:
    """At a flat 0.9 CPU and a 0.75 target, the first step moves 1 - 0.75 / 0.9 of the parts."""
    drain = graded(risk_drain_first_fraction=0.05, risk_drain_cpu_utilization_target=0.75)
    drain.observe("s1", cpu_utilization=0.9, now_us=0)
    drain.observe("s1", cpu_utilization=0.9, now_us=30 * S)
    assert abs(drain.step(decision(Action.DRAIN)) - (1 - 0.75 / 0.9)) < 1e-9


def test_a_rising_load_is_projected_over_the_escalation_dwell() -> None:
    """A CPU climbing 0.1 a sample projects higher than its level, so the first step sheds more."""
    flat, rising = graded(), graded()
    for index, cpu in enumerate((0.6, 0.7, 0.8)):
        flat.observe("s1", cpu_utilization=0.8, now_us=index * 30 * S)
        rising.observe("s1", cpu_utilization=cpu, now_us=index * 30 * S)
    projected = rising.projected_cpu("s1")
    assert projected is not None and projected > 0.8
    assert rising.first_share("s1") > flat.first_share("s1") > 0.05


def test_steps_wait_for_the_dwell_then_escalate_up_to_everything() -> None:
    """After a step nothing moves until the risk stayed high for escalation_ticks; each further
    step doubles the share, at most all of it; a tick under the threshold restarts the count."""
    drain = graded(
        risk_drain_unloaded_fraction=0.2,
        risk_drain_escalation_ticks=2,
        risk_drain_escalation_factor=2.0,
    )
    shares = [
        drain.step(decision(Action.DRAIN, level))
        for level in (
            RiskLevel.SUSTAINED,  # first step
            RiskLevel.HIGH,
            RiskLevel.HOLD,  # under the threshold: the count restarts
            RiskLevel.HIGH,
            RiskLevel.SUSTAINED,  # two high ticks: 0.4
            RiskLevel.HIGH,
            RiskLevel.HIGH,  # 0.8
            RiskLevel.HIGH,
            RiskLevel.HIGH,  # capped at 1.0
        )
    ]
    assert shares == [0.2, 0.0, 0.0, 0.0, 0.4, 0.0, 0.8, 0.0, 1.0]


def test_once_at_everything_each_high_decision_moves_what_the_budget_allows() -> None:
    """An evacuating episode asks for every part on each decision above the threshold (the
    migration budget lets a bounded number through each time), none below it."""
    drain = graded(risk_drain_unloaded_fraction=1.0)
    levels = (RiskLevel.SUSTAINED, RiskLevel.HIGH, RiskLevel.HOLD, RiskLevel.HIGH)
    assert [drain.step(decision(Action.DRAIN, level)) for level in levels] == [1.0, 1.0, 0.0, 1.0]


def test_only_the_urgent_level_moves_everything_at_once() -> None:
    """MOVE_NOW moves every part; a load DRAIN starts with the share of load to shed."""
    drain = graded(risk_drain_first_fraction=0.1, risk_drain_cpu_utilization_target=0.75)
    assert drain.step(decision(Action.MOVE_NOW, RiskLevel.URGENT)) == 1.0
    assert drain.step(decision(Action.MOVE_NOW, RiskLevel.URGENT)) == 1.0
    drain.observe("s2", cpu_utilization=0.8, now_us=0)
    assert drain.step(decision(Action.DRAIN, server_id="s2")) == 0.1


def test_an_urgent_risk_explained_by_load_sheds_it_in_steps() -> None:
    """At the urgent level a server whose projected CPU is above the target sheds the excess
    first (escalating like a drain); with risk_drain_urgent_sheds_load off it moves everything."""
    for sheds, expected in ((True, 1 - 0.75 / 0.9), (False, 1.0)):
        drain = graded(risk_drain_cpu_utilization_target=0.75, risk_drain_urgent_sheds_load=sheds)
        drain.observe("s1", cpu_utilization=0.9, now_us=0)
        drain.observe("s1", cpu_utilization=0.9, now_us=30 * S)
        share = drain.step(decision(Action.MOVE_NOW, RiskLevel.URGENT))
        assert abs(share - expected) < 1e-9


def test_an_episode_ends_with_the_alarm_and_the_next_starts_small() -> None:
    """Back to CALM or WATCHING, the episode is over: the next drain starts at the first step."""
    drain = graded(risk_drain_unloaded_fraction=0.1, risk_drain_escalation_ticks=1)
    assert drain.step(decision(Action.DRAIN)) == 0.1
    assert drain.step(decision(Action.DRAIN)) == 0.2
    assert drain.draining("s1")
    assert drain.step(decision(Action.STOP_PLACEMENT, RiskLevel.ELEVATED)) == 0.0
    assert not drain.draining("s1")
    assert drain.step(decision(Action.DRAIN)) == 0.1


def test_unacted_decisions_move_nothing_and_start_no_episode() -> None:
    """A held-out (or shadow) drain decision moves nothing."""
    drain = graded()
    assert drain.step(decision(Action.DRAIN, acted=False)) == 0.0
    assert not drain.draining("s1")


def test_graded_state_is_bounded_by_servers_max() -> None:
    """Episodes and trends of more servers than servers_max do not grow without bound."""
    drain = graded(servers_max=4)
    for index in range(10):
        drain.observe(f"s{index}", cpu_utilization=0.5, now_us=0)
        drain.step(decision(Action.DRAIN, server_id=f"s{index}"))
    assert sum(drain.draining(f"s{index}") for index in range(10)) <= 4
    assert sum(drain.projected_cpu(f"s{index}") is not None for index in range(10)) <= 4


# The client's path risk to a target.


def test_session_buckets_hash_clients_as_the_servers_do_and_stay_bounded() -> None:
    """The bucket is the servers' `client_bucket` of the client id; the oldest binding goes."""
    buckets = SessionBuckets(buckets=256, sessions_max=2)
    buckets.bind(b"a" * 16, b"client-1")
    assert buckets.bucket_of(b"a" * 16) == client_bucket(b"client-1", buckets=256)
    buckets.bind(b"b" * 16, b"client-2")
    buckets.bind(b"c" * 16, b"client-3")
    assert len(buckets) == 2 and buckets.bucket_of(b"a" * 16) is None
    buckets.forget(b"b" * 16)
    assert buckets.bucket_of(b"b" * 16) is None and buckets.bucket_of(b"c" * 16) is not None


def _path(bucket: int, *, loss_ratio: float, rtt_us: int) -> PathReport:
    return PathReport(
        client_bucket=bucket,
        server_id="s2",
        rtt_us=rtt_us,
        rtt_us_min=10_000,
        jitter_us=1_000,
        loss_ratio=loss_ratio,
        retransmissions=0,
        throughput_bytes_per_second=1e6,
        probe=True,
    )


def _two_buckets(policy: PredictiveRiskPolicy) -> tuple[int, int]:
    """Two client buckets that fall in different path buckets of the predictor."""
    per_server = policy.predictor.config.path_buckets_per_server
    first = 0
    target = path_bucket(f"bucket{first}", buckets=per_server)
    others = (b for b in range(1, 256) if path_bucket(f"bucket{b}", buckets=per_server) != target)
    return first, next(others)


def test_a_target_risk_reads_the_moving_clients_own_path() -> None:
    """A lossy path from one client bucket makes the target riskier for that client only; an
    unknown or unreported bucket reads the mean of the target's paths."""
    policy = PredictiveRiskPolicy(config=manager_config(), rng=random.Random(1))
    lossy, clean = _two_buckets(policy)
    for second in range(30):
        policy.observe_paths(
            [
                _path(lossy, loss_ratio=0.2, rtt_us=400_000),
                _path(clean, loss_ratio=0.0, rtt_us=10_000),
            ],
            now_us=second * S,
        )
    now_us = 30 * S
    bad = policy.path_risk("s2", lossy, now_us=now_us)
    good = policy.path_risk("s2", clean, now_us=now_us)
    mean = policy.path_risk("s2", None, now_us=now_us)
    assert bad > good and good <= mean <= bad
    per_server = policy.predictor.config.path_buckets_per_server
    reported = {path_bucket(f"bucket{b}", buckets=per_server) for b in (lossy, clean)}
    unreported = next(
        b for b in range(256) if path_bucket(f"bucket{b}", buckets=per_server) not in reported
    )
    assert policy.path_risk("s2", unreported, now_us=now_us) == mean
    assert policy.target_risk("s2", now_us=now_us, client_bucket=lossy) > policy.target_risk(
        "s2", now_us=now_us, client_bucket=clean
    )


class RecordingPolicy(PredictiveRiskPolicy):
    """The real predictive policy, recording the client buckets its target checks are asked for."""

    def __init__(self) -> None:
        super().__init__(config=manager_config(), rng=random.Random(1))
        self.asked: list[tuple[str, str, int | None]] = []

    def target_allowed_for_client(
        self, *, source_id: str, target_id: str, client_bucket: int | None, now_us: int
    ) -> bool:
        self.asked.append((source_id, target_id, client_bucket))
        return super().target_allowed_for_client(
            source_id=source_id, target_id=target_id, client_bucket=client_bucket, now_us=now_us
        )


def test_the_manager_knows_each_sessions_client_bucket_and_asks_with_it() -> None:
    """The opening connection binds the session to its client's bucket; a risk move's target
    check is asked for that bucket; closing the session forgets it."""
    policy = RecordingPolicy()
    assert isinstance(policy, ClientPathSteering)
    harness = ManagerHarness(risk_policy=policy)
    harness.join(*SERVERS)
    harness.router.send("c7", MANAGER, Hello(versions=(1,), client_id=b"client-seven"))
    opened = harness.open_session(("auth", "cart", "feed", "chat"), client="c7")
    expected = client_bucket(b"client-seven", buckets=harness.config.path_client_buckets)
    assert harness.manager.session_client_bucket(opened.session_id) == expected
    source = opened.placements[0].primary.server_id
    now_us = harness.router.now_us
    reason = ReasonCode.PREDICTED_FAILURE
    harness.manager.request_handoff(source, reason=reason, parts_fraction=1.0, now_us=now_us)
    assert policy.asked and {bucket for _, _, bucket in policy.asked} == {expected}
    harness.router.send("c7", MANAGER, CloseSession(session_id=opened.session_id))
    assert harness.manager.session_client_bucket(opened.session_id) is None


def test_a_restarted_manager_learns_the_bucket_from_the_hello_credential() -> None:
    """After a manager restart, the HELLO presenting a session's credential binds it again."""
    first = ManagerHarness()
    first.join(*SERVERS)
    first.router.send("c7", MANAGER, Hello(versions=(1,), client_id=b"client-seven"))
    opened = first.open_session(client="c7")
    restarted = ManagerHarness(store=first.store)
    assert restarted.manager.session_client_bucket(opened.session_id) is None
    hello = Hello(
        versions=(1,),
        client_id=b"client-seven",
        credentials=(Credential(session_id=opened.session_id, credential=opened.credential),),
    )
    restarted.router.send("c7", MANAGER, hello)
    expected = client_bucket(b"client-seven", buckets=restarted.config.path_client_buckets)
    assert restarted.manager.session_client_bucket(opened.session_id) == expected


# Risk blocks are not operator drains.


def _loaded_harness(**overrides: Any) -> ManagerHarness:
    harness = ManagerHarness(**overrides)
    harness.join(*SERVERS)
    for _ in range(20):
        assert harness.open_session(("auth", "cart", "feed", "chat"))
    return harness


def test_a_partial_risk_move_blocks_the_server_without_draining_it_in_the_map() -> None:
    """A risk decision moving a share keeps the server ACTIVE in the map, blocked for new
    sessions by the risk policy while its alarm lasts, and free again after."""
    harness = _loaded_harness(overload_parts_fraction=0.25, overload_cooldown_ms=1_000)
    harness.heartbeat("s1", cpu=0.97)
    assert harness.map.server("s1").state is ServerState.ACTIVE
    policy = harness.manager.risk_policy
    assert isinstance(policy, PredictiveRiskPolicy)
    assert policy.placement_blocked("s1", now_us=harness.router.now_us)
    opened = harness.open_session(("auth", "cart", "feed", "chat"))
    assert all(p.primary.server_id != "s1" for p in opened.placements)
    harness.heartbeat("s1", cpu=0.1)
    harness.tick(2_000, alive=SERVERS)
    assert not policy.placement_blocked("s1", now_us=harness.router.now_us)
    assert harness.map.server("s1").state is ServerState.ACTIVE


def test_a_restarted_manager_does_not_take_a_risk_block_for_an_operator_drain() -> None:
    """The risk block lives in the manager, not the map: a manager restarted meanwhile reads an
    ACTIVE server and drains nothing, while an operator's drain survives the restart."""
    first = _loaded_harness(overload_parts_fraction=0.25)
    first.heartbeat("s1", cpu=0.97)
    assert first.manager.drain("s2", now_us=first.router.now_us)
    first.router.run()
    restarted = ManagerHarness(store=first.store)
    restarted.sequences = dict(first.sequences)
    restarted.incarnations = dict(first.incarnations)
    assert restarted.map.server("s1").state is ServerState.ACTIVE
    assert restarted.map.server("s2").state is ServerState.DRAINING
    restarted.tick(3_000, alive=SERVERS)
    # Nothing leaves s1 (the drain of s2 goes on, and its handoffs, unreported here, fail over).
    started = restarted.events(HandoffStarted)
    assert started and {e.source for e in started} == {"s2"}
    assert restarted.map.server("s1").state is ServerState.ACTIVE


def _restarted(first: ManagerHarness, **overrides: Any) -> ManagerHarness:
    """A new manager core on `first`'s store, the servers' sequences carried over."""
    restarted = ManagerHarness(store=first.store, **overrides)
    restarted.sequences = dict(first.sequences)
    restarted.incarnations = dict(first.incarnations)
    return restarted


def test_a_restarted_manager_resumes_a_risk_mark_and_an_operator_drain() -> None:
    """The map's drain cause survives a restart: the risk mark is cleared by the new manager's
    policy once the risk is gone, while the operator's drain of another server stays."""
    settings: dict[str, Any] = {"overload_parts_fraction": 1.0, "overload_cooldown_ms": 1_000}
    first = _loaded_harness(**settings)
    first.heartbeat("s1", cpu=0.97)
    assert first.manager.drain("s2", now_us=first.router.now_us)
    first.router.run()
    assert first.map.server("s1").drain_cause is DrainCause.RISK
    restarted = _restarted(first, **settings)
    marked, drained = restarted.map.server("s1"), restarted.map.server("s2")
    assert (marked.state, marked.drain_cause) == (ServerState.DRAINING, DrainCause.RISK)
    assert (drained.state, drained.drain_cause) == (ServerState.DRAINING, DrainCause.OPERATOR)
    restarted.heartbeat("s1", cpu=0.1)
    restarted.tick(2_000, alive=SERVERS)
    assert restarted.map.server("s1").state is ServerState.ACTIVE
    assert restarted.map.server("s2").state is ServerState.DRAINING


def test_an_operator_drain_takes_over_a_risk_mark_for_good() -> None:
    """An operator's drain of a risk-marked server commits the cause OPERATOR: neither the end of
    the alarm nor a manager restart clears it."""
    settings: dict[str, Any] = {"overload_parts_fraction": 1.0, "overload_cooldown_ms": 1_000}
    first = _loaded_harness(**settings)
    first.heartbeat("s1", cpu=0.97)
    first.router.run()
    assert first.map.server("s1").drain_cause is DrainCause.RISK
    assert first.manager.drain("s1", now_us=first.router.now_us)
    first.router.run()
    assert first.map.server("s1").drain_cause is DrainCause.OPERATOR
    first.heartbeat("s1", cpu=0.1)
    first.tick(2_000, alive=SERVERS)
    assert first.map.server("s1").state is ServerState.DRAINING
    restarted = _restarted(first, **settings)
    restarted.tick(2_000, alive=SERVERS)
    entry = restarted.map.server("s1")
    assert (entry.state, entry.drain_cause) == (ServerState.DRAINING, DrainCause.OPERATOR)


def test_a_whole_risk_move_is_marked_draining_until_the_alarm_ends() -> None:
    """Moving every part (urgent, or a rule set to move all) marks the server DRAINING, so
    bounded loads cannot spill parts back; the mark goes when the alarm does."""
    harness = _loaded_harness(overload_parts_fraction=1.0, overload_cooldown_ms=1_000)
    harness.heartbeat("s1", cpu=0.97)
    harness.router.run()
    assert harness.map.server("s1").state is ServerState.DRAINING
    harness.heartbeat("s1", cpu=0.1)
    harness.tick(2_000, alive=SERVERS)
    assert harness.map.server("s1").state is ServerState.ACTIVE


def test_a_large_enough_cluster_absorbs_an_evacuation_without_the_mark() -> None:
    """With 12 servers the others take a whole server's parts within their bounds: the evacuated
    server empties, stays empty and stays ACTIVE (risk-blocked), so no restart can misread it."""
    servers = tuple(f"s{index}" for index in range(1, 13))
    harness = ManagerHarness(
        overload_parts_fraction=1.0,
        overload_cooldown_ms=60_000,
        handoffs_per_server_max=8,
        handoff_parts_max=16,
    )
    harness.join(*servers)
    for _ in range(60):
        assert harness.open_session(("auth", "cart", "feed", "chat", "mail", "pay"))
    before = len(harness.primaries("s1"))
    assert before > 15
    harness.heartbeat("s1", cpu=0.97)
    counts = complete_handoffs(harness, servers, 30, counted="s1")
    assert counts[-1] == 0, counts
    assert all(b <= a for a, b in zip([before, *counts], counts, strict=False)), counts
    assert harness.map.server("s1").state is ServerState.ACTIVE
    policy = harness.manager.risk_policy
    assert isinstance(policy, PredictiveRiskPolicy)
    assert policy.placement_blocked("s1", now_us=harness.router.now_us)
