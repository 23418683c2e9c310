"""Workloads: sessions open, request parts closed-loop with a seeded mix and think times."""

from __future__ import annotations

import pytest

from forehand.core import CoreDriver
from forehand.errors import ConfigError
from forehand.sim import (
    LivenessChecker,
    Simulator,
    SimulatorConfig,
    Workload,
    WorkloadConfig,
    WorkloadRequest,
    WorkloadSession,
)

from ._cores import EchoRequest, EchoServerCore, SessionClientCore


class EchoAdapter:
    """Drives `SessionClientCore` verbs; refuses requests of sessions it has not opened yet."""

    def open_session(self, core: CoreDriver, session: WorkloadSession, now_us: int) -> None:
        assert isinstance(core, SessionClientCore)
        core.open_session(f"session-{session.index}")

    def issue(self, core: CoreDriver, request: WorkloadRequest, now_us: int) -> int | None:
        assert isinstance(core, SessionClientCore)
        session_id = f"session-{request.session.index}"
        if session_id not in core.sessions:
            return None
        return core.request(session_id, request.part, request.operation)


def _echo_sim(seed: int, config: WorkloadConfig) -> tuple[Simulator, Workload]:
    sim = Simulator(
        seed=seed,
        config=SimulatorConfig(duration_us=10_000_000),
        checkers=[LivenessChecker(bound_us=1_000_000)],
    )
    sim.add_node("server", lambda start: EchoServerCore(start.node_id))
    for client in ("c1", "c2"):
        sim.add_node(client, lambda start: SessionClientCore(start.node_id, server="server"))
    workload = Workload(sim, config, clients=("c1", "c2"), adapter=EchoAdapter())
    workload.start()
    return sim, workload


def test_sessions_make_requests_closed_loop_with_the_configured_mix() -> None:
    """Every session opens and keeps requesting; the operation mix follows its weights."""
    config = WorkloadConfig(
        sessions=8, think_time_us=20_000, request_mix=(("read", 3.0), ("write", 1.0))
    )
    sim, workload = _echo_sim(1, config)
    result = sim.run()
    assert result.ok, result.failure
    server = sim.core("server")
    assert isinstance(server, EchoServerCore)
    # At most one request per session is outstanding when the run ends.
    assert workload.answered <= len(server.operations) <= workload.issued <= workload.answered + 8
    assert workload.answered > 8 * 100
    assert 0.7 < workload.operations["read"] / workload.issued < 0.8
    sessions = {session.client for session in workload.sessions}
    assert sessions == {"c1", "c2"}


class _SilentOnWatchServer(EchoServerCore):
    """Answers every request at once but `watch`, which it never answers."""

    def receive_message(self, message: object, *, source: str, now_us: int) -> None:
        if isinstance(message, EchoRequest) and message.operation == "watch":
            self.operations.append(message.operation)
            return
        super().receive_message(message, source=source, now_us=now_us)


def test_background_operations_do_not_hold_the_session_up() -> None:
    """A session goes on while its background request waits, and has at most one outstanding:
    a server that never answers `watch` gets one per session, and the others keep flowing."""
    config = WorkloadConfig(
        sessions=8,
        think_time_us=20_000,
        request_mix=(("read", 2.0), ("write", 1.0), ("watch", 1.0)),
        background_operations=("watch",),
    )
    sim = Simulator(seed=1, config=SimulatorConfig(duration_us=10_000_000))
    sim.add_node("server", lambda start: _SilentOnWatchServer(start.node_id))
    for client in ("c1", "c2"):
        sim.add_node(client, lambda start: SessionClientCore(start.node_id, server="server"))
    workload = Workload(sim, config, clients=("c1", "c2"), adapter=EchoAdapter())
    workload.start()
    result = sim.run()
    assert result.ok, result.failure
    server = sim.core("server")
    assert isinstance(server, _SilentOnWatchServer)
    assert server.operations.count("watch") == workload.operations["watch"] == 8
    assert workload.answered > 8 * 100 and workload.background_answered == 0
    assert workload.abandoned == 0


def test_request_bound_and_abandonment() -> None:
    """Sessions stop at their request bound; unanswered requests are abandoned and counted."""
    config = WorkloadConfig(
        sessions=3, requests_per_session_max=4, think_time_us=1_000, abandon_after_us=500_000
    )
    sim, workload = _echo_sim(2, config)
    sim.call_at(2_000_000, lambda: sim.crash("server"), label="crash")
    sim.run(until_us=1_500_000)
    assert workload.issued == workload.answered == 12
    config = WorkloadConfig(
        sessions=2, think_time_us=10_000, abandon_after_us=100_000, open_spread_us=10
    )
    sim, workload = _echo_sim(3, config)
    sim.call_at(50_000, lambda: sim.crash("server", permanent=True), label="crash")
    result = sim.run(until_us=1_000_000)
    assert workload.abandoned > 0
    assert result.counters["workload-request-abandoned"] == workload.abandoned


def test_workloads_replay_from_the_seed() -> None:
    """The same seed gives the same requests at the same times."""
    config = WorkloadConfig(sessions=4, think_time_us=50_000)
    digests = {_echo_sim(5, config)[0].run(until_us=2_000_000).digest for _ in range(2)}
    assert len(digests) == 1
    assert _echo_sim(6, config)[0].run(until_us=2_000_000).digest not in digests


def test_workload_config_validation() -> None:
    """A workload needs sessions, parts and positive weights."""
    with pytest.raises(ConfigError):
        WorkloadConfig(sessions=0)
    with pytest.raises(ConfigError):
        WorkloadConfig(request_mix=(("read", 0.0),))
    with pytest.raises(ConfigError, match="in the request mix"):
        WorkloadConfig(background_operations=("watch",))
    with pytest.raises(ConfigError, match="sessions wait for"):
        WorkloadConfig(request_mix=(("watch", 1.0),), background_operations=("watch",))
