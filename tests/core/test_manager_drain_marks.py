"""Tests of drain marks whose store answer is lost, refused for a full queue, or loaded by a
manager whose risk policy does not steer: the map's drain and the manager's owner stay in step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forehand.core._manager_events import DrainProgressed
from forehand.core._manager_risk import RiskDecision
from forehand.core.messages import LoadReport
from forehand.placement import DrainCause, ServerState
from forehand.stores import DeltaCommitRequested

if TYPE_CHECKING:
    from tests.core._manager_helpers import ManagerHarness, complete_handoffs, execute
else:
    from _manager_helpers import ManagerHarness, complete_handoffs, execute

SERVERS = ("s1", "s2", "s3", "s4")
HOT: dict[str, Any] = {"overload_parts_fraction": 1.0, "overload_cooldown_ms": 1_000}
"""A hot server is emptied whole, so four servers need the risk mark to keep it empty."""


class _LostAnswers:
    """The manager's store executor: runs every request, and loses the answer of the next
    `count` delta commits (they land in the store; the manager hears nothing and times out),
    or with `hold` keeps them back until `release`; the next `unheard` delta commits never
    reach the store at all."""

    def __init__(self, harness: ManagerHarness) -> None:
        self.harness = harness
        self.count = 0
        self.unheard = 0
        """Delta commits to drop before the store sees them (they never land)."""
        self.hold = False
        self.held: list[object] = []

    def __call__(self, request: object) -> object:
        if self.unheard and isinstance(request, DeltaCommitRequested):
            self.unheard -= 1
            return None
        result = execute(self.harness.store, request)
        if self.count and isinstance(request, DeltaCommitRequested):
            self.count -= 1
            if self.hold:
                self.held.append(result)
            return None
        return result

    def release(self) -> None:
        """Deliver the answers held back (running the requests still waiting first)."""
        self.harness.router.run()
        held, self.held = self.held, []
        for result in held:
            self.harness.manager.store_result(result, now_us=self.harness.router.now_us)
        self.harness.router.run()


def _cluster(**overrides: Any) -> tuple[ManagerHarness, _LostAnswers]:
    """Four servers, twenty sessions of four parts, answers lost on demand."""
    harness = ManagerHarness(store_timeout_ms=100, **overrides)
    harness.join(*SERVERS)
    for _ in range(20):
        assert harness.open_session(("auth", "cart", "feed", "chat"))
    lost = _LostAnswers(harness)
    harness.router.store_executors["manager"] = lost
    return harness, lost


def _time_out(harness: ManagerHarness) -> None:
    """Let the store timeout pass: the manager reloads the map and builds its change again."""
    harness.router.advance(ms=200)
    harness.router.run()


def _held(harness: ManagerHarness, server_id: str) -> int:
    parts = harness.map.parts_for(server_id)
    return len(parts.primary) + len(parts.replica)


def _calm_clears_the_mark(harness: ManagerHarness, server_id: str) -> None:
    """The alarm ends (a calm heartbeat, then 2 s): the risk mark is cleared, the server ACTIVE."""
    harness.heartbeat(server_id, cpu=0.1)
    harness.tick(2_000, alive=SERVERS)
    assert harness.map.server(server_id).state is ServerState.ACTIVE


def _finished(harness: ManagerHarness, server_id: str) -> bool:
    return any(e.finished for e in harness.events(DrainProgressed) if e.server_id == server_id)


def test_an_operator_drain_whose_answer_is_lost_still_evacuates_the_server() -> None:
    """The drain mark landed but its answer was lost: the rebuild after the reload finds it done,
    and the drain goes on until the server holds no role."""
    harness, lost = _cluster()
    lost.count = 1
    assert harness.manager.drain("s2", now_us=harness.router.now_us)
    _time_out(harness)
    entry = harness.map.server("s2")
    assert (entry.state, entry.drain_cause) == (ServerState.DRAINING, DrainCause.OPERATOR)
    complete_handoffs(harness, SERVERS, 40)
    assert _held(harness, "s2") == 0
    assert _finished(harness, "s2")


def test_a_risk_mark_whose_answer_is_lost_is_still_cleared_by_the_policy() -> None:
    """The risk mark landed but its answer was lost: the manager still owns it, so the end of
    the alarm makes the server ACTIVE again."""
    harness, lost = _cluster(**HOT)
    lost.count = 1
    harness.heartbeat("s1", cpu=0.97)
    _time_out(harness)
    entry = harness.map.server("s1")
    assert (entry.state, entry.drain_cause) == (ServerState.DRAINING, DrainCause.RISK)
    _calm_clears_the_mark(harness, "s1")


def test_a_takeover_whose_answer_is_lost_is_still_the_operators_drain() -> None:
    """An operator's takeover of a risk mark landed but its answer was lost: the drain is the
    operator's (it finishes, and the end of the alarm leaves the server DRAINING)."""
    harness, lost = _cluster(**HOT)
    harness.heartbeat("s1", cpu=0.97)
    harness.router.run()
    assert harness.map.server("s1").drain_cause is DrainCause.RISK
    lost.count = 1
    assert harness.manager.drain("s1", now_us=harness.router.now_us)
    _time_out(harness)
    assert harness.map.server("s1").drain_cause is DrainCause.OPERATOR
    harness.heartbeat("s1", cpu=0.1)
    complete_handoffs(harness, SERVERS, 40)
    assert _finished(harness, "s1")
    entry = harness.map.server("s1")
    assert (entry.state, entry.drain_cause) == (ServerState.DRAINING, DrainCause.OPERATOR)


def test_an_operator_drain_refused_for_a_full_queue_leaves_the_risk_mark_its_owner() -> None:
    """A drain refused while the risk mark waits in a full queue does not orphan the mark: it
    commits as the risk policy's and the end of the alarm clears it."""
    harness, lost = _cluster(pending_deltas_max=1, **HOT)
    lost.count = 1
    assert harness.manager.drain("s2", now_us=harness.router.now_us)
    harness.heartbeat("s1", cpu=0.97)
    assert not harness.manager.drain("s1", now_us=harness.router.now_us)
    _time_out(harness)
    entry = harness.map.server("s1")
    assert (entry.state, entry.drain_cause) == (ServerState.DRAINING, DrainCause.RISK)
    _calm_clears_the_mark(harness, "s1")


def test_an_undrain_refused_for_a_full_queue_lets_the_drain_go_on() -> None:
    """An undrain the full queue refuses forgets nothing: the drain still empties the server."""
    harness, lost = _cluster(pending_deltas_max=1)
    assert harness.manager.drain("s2", now_us=harness.router.now_us)
    harness.router.run()
    lost.count, lost.hold = 1, True
    assert harness.manager.drain("s3", now_us=harness.router.now_us)
    assert harness.manager.drain("s4", now_us=harness.router.now_us)
    assert not harness.manager.undrain("s2", now_us=harness.router.now_us)
    lost.release()
    assert harness.map.server("s2").state is ServerState.DRAINING
    assert harness.manager.undrain("s3", now_us=harness.router.now_us)
    assert harness.manager.undrain("s4", now_us=harness.router.now_us)
    complete_handoffs(harness, SERVERS, 40)
    assert _held(harness, "s2") == 0
    assert _finished(harness, "s2")


class _QuietPolicy:
    """A risk policy that never flags a server and offers no steering (no alarms, no blocks)."""

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> RiskDecision | None:
        """Never a decision."""
        return None

    def forget(self, server_id: str) -> None:
        """Nothing kept."""


def test_a_manager_without_steering_clears_a_risk_mark_it_loads() -> None:
    """A risk mark left by a manager whose policy steers ends at the server's next heartbeat
    under a manager whose policy does not: no alarm of its own holds the server."""
    first, _ = _cluster(**HOT)
    first.heartbeat("s1", cpu=0.97)
    first.router.run()
    assert first.map.server("s1").drain_cause is DrainCause.RISK
    restarted = ManagerHarness(store=first.store, risk_policy=_QuietPolicy(), **HOT)
    restarted.sequences = dict(first.sequences)
    restarted.incarnations = dict(first.incarnations)
    assert restarted.map.server("s1").state is ServerState.DRAINING
    restarted.tick(1_000, alive=SERVERS)
    assert restarted.map.server("s1").state is ServerState.ACTIVE


def test_an_operator_undrain_that_never_landed_leaves_no_drain_behind() -> None:
    """The undrain's commit never reached the store: the reload still shows the server
    DRAINING, yet the drain is not given back, and once the rebuilt undrain commits the server
    is ACTIVE, owned by no drain, and can be drained again."""
    harness, lost = _cluster()
    assert harness.manager.drain("s2", now_us=harness.router.now_us)
    harness.router.run()
    assert harness.map.server("s2").state is ServerState.DRAINING
    progressed = len(harness.events(DrainProgressed))
    lost.unheard = 1
    assert harness.manager.undrain("s2", now_us=harness.router.now_us)
    _time_out(harness)
    harness.tick(500, alive=SERVERS)
    assert harness.map.server("s2").state is ServerState.ACTIVE
    assert len(harness.events(DrainProgressed)) == progressed
    assert harness.manager.drain("s2", now_us=harness.router.now_us)


def test_a_risk_undrain_that_never_landed_lets_the_next_alarm_mark_again() -> None:
    """The risk policy's undrain never reached the store: once it commits after the reload the
    policy no longer owns the server, so the next alarm marks it DRAINING again."""
    harness, lost = _cluster(**HOT)
    harness.heartbeat("s1", cpu=0.97)
    harness.router.run()
    assert harness.map.server("s1").drain_cause is DrainCause.RISK
    lost.unheard = 1
    harness.heartbeat("s1", cpu=0.1)
    for _ in range(30):
        harness.tick(100, alive=SERVERS)
        if harness.map.server("s1").state is ServerState.ACTIVE:
            break
    assert harness.map.server("s1").state is ServerState.ACTIVE
    # At once, within the alarm's cooldown: no heartbeat in between clears a stale owner.
    harness.heartbeat("s1", cpu=0.97)
    for _ in range(30):
        harness.tick(100, alive=SERVERS)
    entry = harness.map.server("s1")
    assert (entry.state, entry.drain_cause) == (ServerState.DRAINING, DrainCause.RISK)
