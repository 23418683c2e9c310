"""The simulated cluster: the shop application, the event translation, determinism."""

from __future__ import annotations

import dataclasses
import functools
import random

import pytest

from forehand.core import Handler, HandlerResult, NodeId, client_events, server_events
from forehand.core.messages import PartRef
from forehand.placement import format_session_id, new_session_id
from forehand.sim import (
    APP_PARTS,
    ClusterConfig,
    CoreTranslator,
    FaultMix,
    InvariantViolated,
    RunResult,
    SimCluster,
    app_specs,
    build_all,
    build_mix,
    draw_plan,
    operation_for,
)
from forehand.sim._app import NOTHING_YET, WAIT_OP, version_of
from forehand.sim._cluster import (
    EXPIRING_CREDENTIAL_LIFETIME_MS,
    EXPIRING_SESSION_EXPIRY_MS,
    GONE_CLIENT_AT_US,
)
from forehand.sim._scenarios import WAITING_READ_SHARE, build_drain
from forehand.sim.observations import ClientResponseObserved, WriteAcknowledged
from forehand.wire import ResponseStatus

SESSION = new_session_id(now_ms=1_700_000_000_000, rng=random.Random(3))


class _Directory:
    """A SessionDirectory that knows one write and one read."""

    def __init__(self) -> None:
        self.failed: list[tuple[NodeId, str, int]] = []

    def session_established(self, client: NodeId, request_id: int, session_id: bytes) -> None:
        """Nothing to record."""

    def session_open_failed(self, client: NodeId, request_id: int) -> None:
        """Nothing to record."""

    def is_write(self, client: NodeId, request_id: int) -> bool | None:
        return request_id == 1

    def request_failed(self, client: NodeId, part: str, request_id: int) -> None:
        self.failed.append((client, part, request_id))

    def session_closed(self, client: NodeId, session_id: bytes) -> None:
        """Nothing to record."""


def _ack(node: NodeId, *, client_facing: bool, log_index: int) -> server_events.WriteAcknowledged:
    return server_events.WriteAcknowledged(
        node=node,
        ref=PartRef(session_id=SESSION, part="cart"),
        request_id=1,
        durability=app_specs()["cart"].durability,
        map_version=7,
        log_index=log_index,
        client="c1",
        from_dedup=False,
        client_facing=client_facing,
    )


def _response(request_id: int, server: NodeId) -> client_events.ResponseReceived:
    return client_events.ResponseReceived(
        node="c1",
        request_id=request_id,
        session_id=SESSION,
        part="cart",
        issue_sequence=request_id,
        status=ResponseStatus.OK,
        payload=b"",
        map_version=7,
        server=server,
        attempts=1,
        latency_us=10,
    )


def test_handlers_are_deterministic_and_reads_leave_the_state_alone() -> None:
    """Replaying the same operations gives the same answers; reads change nothing."""
    specs = app_specs()
    for name in APP_PARTS:
        spec = specs[name]
        runs = []
        for _ in range(2):
            state = spec.initial_state()
            answers = []
            for sequence in range(1, 30):
                op, payload, write = operation_for(
                    name, "write" if sequence % 3 else "read", sequence
                )
                outcome: HandlerResult = spec.handler(state, op, payload)
                assert outcome.status == ResponseStatus.OK
                if not write:
                    assert op in spec.read_ops and outcome.state is state
                state = outcome.state
                answers.append(outcome.result)
            runs.append(answers)
        assert runs[0] == runs[1]


def test_each_answer_shows_a_version_no_write_lowers_and_wait_waits_for_it() -> None:
    """Every write's answer shows the part's version (a logout none), no write lowers it, and
    `wait` answers it once it reaches the one asked for, "nothing yet" (waiting) before."""
    specs = app_specs()
    for name in APP_PARTS:
        spec = specs[name]
        assert spec.wait_ops == {WAIT_OP: spec.wait_ops[WAIT_OP]} and WAIT_OP in spec.read_ops
        state = spec.initial_state()
        version = 0
        for sequence in range(1, 40):
            op, payload, _ = operation_for(name, "write", sequence)
            outcome = spec.handler(state, op, payload)
            state = outcome.state
            shown = version_of(name, op, outcome.result)
            if shown is None:
                assert (name, op) == ("auth", "logout")
                continue
            assert shown >= version and (shown > version or name == "auth")
            version = shown
            reached = spec.handler(state, WAIT_OP, str(version).encode())
            assert (reached.waiting, reached.result, reached.state) == (
                False,
                str(version).encode(),
                state,
            )
            assert version_of(name, WAIT_OP, reached.result) == version
            ahead = spec.handler(state, WAIT_OP, str(version + 1).encode())
            assert (ahead.waiting, ahead.status, ahead.result) == (True, 0, NOTHING_YET)
            assert version_of(name, WAIT_OP, ahead.result) is None


def test_only_client_facing_acknowledgements_are_observed_and_joined() -> None:
    """The target's answer to a forwarder is not an acknowledgement; the relay's is, and the
    client's response gets the relay's log index."""
    directory = _Directory()
    translate = CoreTranslator(directory, count=lambda name: None)
    assert list(translate("s2", _ack("s2", client_facing=False, log_index=4))) == []
    (observed,) = translate("s1", _ack("s1", client_facing=True, log_index=4))
    assert isinstance(observed, WriteAcknowledged) and observed.log_index == 4
    (response,) = translate("c1", _response(1, "s1"))
    assert isinstance(response, ClientResponseObserved)
    assert response.log_index == 4 and response.part_key == (format_session_id(SESSION), "cart")
    (read,) = translate("c1", _response(2, "s1"))
    assert isinstance(read, ClientResponseObserved) and read.log_index is None


def test_a_write_answered_without_an_acknowledgement_is_a_violation() -> None:
    """An OK for a write that no server acknowledged to that client cannot be placed: it fails."""
    translate = CoreTranslator(_Directory(), count=lambda name: None)
    translate("s2", _ack("s2", client_facing=True, log_index=4))
    with pytest.raises(InvariantViolated, match="no server acknowledged"):
        list(translate("c1", _response(1, "s1")))


def test_a_failed_request_is_counted_and_the_workload_told() -> None:
    """RequestFailed lands in the stats and in the directory (the workload moves on)."""
    directory = _Directory()
    translate = CoreTranslator(directory, count=lambda name: None)
    failed = client_events.RequestFailed(
        node="c1",
        request_id=9,
        session_id=SESSION,
        part="auth",
        issue_sequence=3,
        why=client_events.RequestFailedWhy.TIMEOUT,
        attempts=2,
        elapsed_us=5,
    )
    (rare,) = translate("c1", failed)
    assert translate.stats.failed_requests == [failed]
    assert directory.failed == [("c1", "auth", 9)]
    assert getattr(rare, "name", "") == "client/request-failed-timeout"


def test_the_plan_is_drawn_from_the_seed_within_bounds() -> None:
    """The same generator draws the same plan; servers heartbeat as the manager expects."""
    config = ClusterConfig(servers=5, clients=3)
    one = draw_plan(random.Random(4), config)
    assert one == draw_plan(random.Random(4), config)
    assert sorted(one.servers) == ["s1", "s2", "s3", "s4", "s5"]
    assert sorted(one.clients) == ["c1", "c2", "c3"]
    for server in one.servers.values():
        assert server.heartbeat_interval_ms == one.manager.heartbeat_interval_ms
        assert server.heartbeat_interval_ms * 2 < one.manager.failure_timeout_ms
    assert all(client.request_timeout_ms <= 5_000 for client in one.clients.values())


def test_same_seed_same_digest_and_another_seed_another() -> None:
    """Two runs of one seed have the same trace digest; another seed differs."""
    first = build_mix(11, FaultMix.MIXED).sim.run()
    second = build_mix(11, FaultMix.MIXED).sim.run()
    other = build_mix(12, FaultMix.MIXED).sim.run()
    assert first.ok and second.ok and other.ok
    assert first.digest == second.digest and first.events == second.events
    assert first.counters == second.counters
    assert other.digest != first.digest


def test_scenario_all_runs_each_scenario_in_turn() -> None:
    """Seed n of `all` runs the (n mod 9)-th scenario of the rotation: 7 is crash-replicated,
    with waiting reads; run alone, the scenario makes none."""
    cluster = build_all(7)
    assert isinstance(cluster, SimCluster)
    assert cluster.config.waiting_read_share == WAITING_READ_SHARE
    result = cluster.sim.run()
    assert result.ok, result.failure
    assert result.counters["scenario/crash-replicated"] == 1
    assert result.counters["waiting-read/issued"] > 0
    alone = build_drain(5).sim.run()
    assert alone.ok and not any(name.startswith("waiting-read/") for name in alone.counters)


def _waiting_run(seed: int) -> RunResult:
    config = ClusterConfig(
        duration_us=6_000_000, liveness_bound_us=None, waiting_read_share=0.2, write_share=0.5
    )
    cluster = SimCluster(seed, config)
    cluster.start()
    return cluster.sim.run()


def test_waiting_reads_replay_and_reach_every_answer() -> None:
    """A run with waiting reads replays to the same digest; its reads are answered at once, after
    a later write of the session, and "nothing yet" at their wait's end, and the checker
    judges each."""
    first = _waiting_run(4)
    assert first.ok, first.failure
    assert _waiting_run(4).digest == first.digest
    counters = first.counters
    issued = counters["waiting-read/issued"]
    answered = counters["waiting-read/answered-version"]
    beyond = counters["waiting-read/answered-version-beyond-own-writes"]
    nothing = counters["waiting-read/answered-nothing-yet"]
    failed = sum(n for name, n in counters.items() if name.startswith("waiting-read/failed"))
    assert 0 < beyond < answered and nothing > 0
    # At most one outstanding per session (six) when the run ends.
    assert issued - 6 <= answered + nothing + failed <= issued


def test_a_waiting_read_that_ignores_its_condition_fails_the_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The checker can fail: an app whose `wait` answers one version below the part's, ignoring
    what it was asked to wait for, breaks the contract on the first read it answers."""
    specs = app_specs()

    def stale(state: object, op: str, payload: bytes, *, handler: Handler) -> HandlerResult:
        outcome = handler(state, op, payload)
        if op != WAIT_OP:
            return outcome
        current = handler(state, WAIT_OP, b"0").result
        return dataclasses.replace(outcome, result=str(int(current) - 1).encode(), waiting=False)

    broken = {
        name: dataclasses.replace(spec, handler=functools.partial(stale, handler=spec.handler))
        for name, spec in specs.items()
    }
    monkeypatch.setattr("forehand.sim._cluster.app_specs", lambda on_stall=None: broken)
    result = _waiting_run(4)
    assert result.failure is not None
    assert result.failure.checker == "WaitingReadChecker"


def _expiring_cluster(config: ClusterConfig) -> SimCluster:
    """Seed 21's cluster with credentials of 8 s, sessions expiring 12 s after their last, and
    clients renewing every second."""
    plan = draw_plan(random.Random(21), config)
    manager = dataclasses.replace(
        plan.manager,
        credential_lifetime_ms=EXPIRING_CREDENTIAL_LIFETIME_MS,
        session_expiry_ms=EXPIRING_SESSION_EXPIRY_MS,
    )
    plan = dataclasses.replace(
        plan,
        manager=manager,
        servers={
            server_id: dataclasses.replace(
                server, credential_lifetime_ms=EXPIRING_CREDENTIAL_LIFETIME_MS
            )
            for server_id, server in plan.servers.items()
        },
        clients={
            client_id: dataclasses.replace(client, credential_renew_interval_ms=1_000)
            for client_id, client in plan.clients.items()
        },
    )
    return SimCluster(21, config, plan=plan)


def test_sessions_of_a_client_gone_for_good_expire_and_the_others_stay() -> None:
    """In a run whose sessions expire, the last client goes for good at 1 s (`SimCluster.start`)
    and leaves its sessions behind: the manager closes them once the expiry has passed since
    their last renewal, while the other client renews and keeps all of its own.
    `ExpiryChecker` judges every expiry (no running client may hold a valid credential of an
    expired session), and liveness no longer expects the gone client's sessions served."""
    config = ClusterConfig(servers=3, clients=2, sessions=6, duration_us=20_000_000)
    cluster = _expiring_cluster(config)
    held: dict[str, tuple[bytes, ...]] = {}

    def record() -> None:
        for client_id in cluster.client_ids:
            core = cluster.client(client_id)
            assert core is not None
            held[client_id] = core.session_ids()

    cluster.sim.call_at(GONE_CLIENT_AT_US - 1, record, label="the sessions before c2 goes")
    cluster.start()
    result = cluster.sim.run()
    assert result.ok, result.failure
    assert held["c1"] and held["c2"]
    assert cluster.client("c2") is None
    current = cluster.manager().shard_map
    assert current is not None
    in_map = {key.session_id for key in current.part_keys()}
    assert set(held["c1"]) <= in_map
    assert not set(held["c2"]) & in_map
    assert result.counters["manager/sessions-expired"] >= 1


def _run_with_a_stale_session(at_us: int, *, stall_the_sweep: bool) -> RunResult:
    """Seed 21's expiring cluster, 6 s, in which one session of c1, renewed as usual, is made
    to look as if no credential had been issued for it for longer than the expiry at `at_us`
    (and the manager's sweep stalled, as if a close never committed, if `stall_the_sweep`)."""
    config = ClusterConfig(
        servers=3, clients=2, sessions=4, duration_us=6_000_000, liveness_bound_us=None
    )
    cluster = _expiring_cluster(config)

    def make_it_stale() -> None:
        core = cluster.client("c1")
        assert core is not None and core.session_ids()
        expiry = cluster.manager()._expiry
        expiry.closing = stall_the_sweep
        expiry.renewed(core.session_ids()[:1], now_us=-30_000_000)

    cluster.sim.call_at(at_us, make_it_stale, label="a stale session")
    cluster.start()
    return cluster.sim.run()


def test_an_expiry_while_a_client_holds_a_valid_credential_is_a_violation() -> None:
    """The checker can fail: a session the manager closes by expiry (forced here) while its
    client renews it is reported, naming the client and how long its credential is valid."""
    result = _run_with_a_stale_session(3_000_000, stall_the_sweep=False)
    assert not result.ok
    assert result.failure is not None
    assert "ExpiryChecker" in str(result.failure)
    assert "while client c1 holds a credential" in str(result.failure)


def test_a_session_left_overdue_for_expiry_fails_the_run() -> None:
    """The end check can fail: a sweep that stalls (forced here) leaves a session past its
    expiry in the map, and the run says which (before it, a manager that stopped expiring
    passed every campaign). Made stale just before the end, so that no renewal comes between."""
    result = _run_with_a_stale_session(5_990_000, stall_the_sweep=True)
    assert not result.ok
    assert result.failure is not None
    assert "overdue for expiry" in str(result.failure)
