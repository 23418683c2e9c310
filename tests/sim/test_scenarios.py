"""The test scenarios end to end: the checkers pass a correct log and catch a broken one."""

from __future__ import annotations

from forehand.sim.observations import Durability

from .scenarios import build_log, build_ping_mesh


def test_correct_log_survives_primary_crash_on_every_seed() -> None:
    """A replicated primary-backup log fails over and passes every checker, liveness included."""
    for seed in range(5):
        result = build_log(seed).run()
        assert result.ok, result.failure
        assert result.counters["failover"] == 1


def test_log_acknowledging_before_replication_is_caught() -> None:
    """Acknowledging replicated writes early loses one at the crash; the checker names it."""
    result = build_log(0, ack_before_replication=True).run()
    assert result.failure is not None
    assert result.failure.checker == "AcknowledgedWritesChecker"
    assert "replicated write" in result.failure.message


def test_async_log_counts_its_losses_without_failing() -> None:
    """An async log may lose its replication lag at a failover: counted, not failed."""
    results = [build_log(seed, durability=Durability.ASYNC).run() for seed in range(5)]
    assert all(result.ok for result in results), [result.failure for result in results]
    assert sum(result.counters.get("async-write-lost", 0) for result in results) > 0


def test_ping_mesh_survives_mixed_faults() -> None:
    """Pinging nodes under drawn mixed faults run to the end and reach several rare paths."""
    reached: set[str] = set()
    for seed in range(6):
        result = build_ping_mesh(seed).run()
        assert result.ok, result.failure
        reached.update(result.counters)
    assert {"retransmission", "connection-timeout", "node-crashed"} <= reached
