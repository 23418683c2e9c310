"""A store that keeps failing is asked again after a growing wait, not as fast as it answers.

The first failure reloads at once (most failures pass); after a second one in a row the manager
waits `store_retry_backoff_ms`, doubling up to `store_retry_backoff_max_ms`, and commits nothing
meanwhile; an answer that is not a failure starts the count over.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from forehand.errors import ConfigError
from forehand.stores import DeltaCommitRequested, MapLoadRequested, MemoryStore, StoreFailed

if TYPE_CHECKING:
    from tests.core._manager_helpers import execute, manager_config
    from tests.core.test_manager import announce, bare_manager, run_store
else:
    from _manager_helpers import execute, manager_config
    from test_manager import announce, bare_manager, run_store


def test_a_store_that_keeps_failing_is_reloaded_after_a_doubling_wait() -> None:
    """Failures in a row: reload at once, then after 100, 200 and 400 ms (capped at 400), with
    no commit meanwhile; once the store answers, the queued join commits, and the next failure
    reloads at once again."""
    core = bare_manager(
        store_retry_backoff_ms=100,
        store_retry_backoff_max_ms=400,
        suspect_timeout_ms=30_000,  # s1 sends no heartbeat here: it must not die meanwhile.
        failure_timeout_ms=60_000,
    )
    store = MemoryStore()
    run_store(core, store)
    core.receive_message(announce("s1"), source="s1", now_us=0)
    (commit,) = core.store_requests()
    assert isinstance(commit, DeltaCommitRequested)
    core.store_result(StoreFailed(request_id=commit.request_id, reason="disk"), now_us=1_000)
    (reload,) = core.store_requests()  # The first failure: at once.
    assert isinstance(reload, MapLoadRequested)
    now_us = 2_000
    for wait_ms in (100, 200, 400, 400):
        core.store_result(StoreFailed(request_id=reload.request_id, reason="disk"), now_us=now_us)
        assert core.store_requests() == []
        due_us = now_us + wait_ms * 1000
        timer_us = core.timer_us()
        assert timer_us is not None and timer_us <= due_us  # Its timer is armed by then.
        core.handle_timer(now_us=due_us - 1)
        assert core.store_requests() == []  # Not before it is due, and no commit meanwhile.
        core.handle_timer(now_us=due_us)
        (reload,) = core.store_requests()
        assert isinstance(reload, MapLoadRequested)
        now_us = due_us + 1_000
    core.store_result(execute(store, reload), now_us=now_us)
    assert run_store(core, store) == 1  # The join, committed once the store answers.
    assert core.map_version == 1
    core.receive_message(announce("s2"), source="s2", now_us=now_us)
    (commit,) = core.store_requests()
    assert isinstance(commit, DeltaCommitRequested)
    core.store_result(StoreFailed(request_id=commit.request_id, reason="disk"), now_us=now_us)
    (reload,) = core.store_requests()  # The count started over: at once.
    assert isinstance(reload, MapLoadRequested)


def test_a_backoff_above_its_bound_is_refused() -> None:
    """store_retry_backoff_ms above store_retry_backoff_max_ms is a ConfigError naming both."""
    with pytest.raises(ConfigError, match="store_retry_backoff_max_ms"):
        manager_config(store_retry_backoff_ms=1_000, store_retry_backoff_max_ms=500)


def test_a_stall_of_the_manager_does_not_time_its_commit_out() -> None:
    """A commit in flight while the manager's loop stalls past `store_timeout_ms`: the stall
    the driver reports does not count, so the answer waiting meanwhile commits the change (a
    timeout would reload the whole map and send it whole to every server); time the manager
    could listen still counts, and the timeout then reloads."""
    core = bare_manager(
        store_timeout_ms=5_000, suspect_timeout_ms=30_000, failure_timeout_ms=60_000
    )
    store = MemoryStore()
    run_store(core, store)
    core.receive_message(announce("s1"), source="s1", now_us=0)
    (commit,) = core.store_requests()
    assert isinstance(commit, DeltaCommitRequested)
    core.excuse_stall(stalled_us=6_000_000, now_us=6_500_000)
    core.handle_timer(now_us=6_500_000)
    assert core.store_requests() == []  # No reload: the stall is not the store's silence.
    core.store_result(execute(store, commit), now_us=6_500_000)
    assert core.map_version == 1
    core.receive_message(announce("s2"), source="s2", now_us=6_600_000)
    (commit,) = core.store_requests()
    core.excuse_stall(stalled_us=1_000_000, now_us=7_600_000)
    core.handle_timer(now_us=12_600_000)
    (reload,) = core.store_requests()  # 6 s after it was sent, 1 s of it excused: timed out.
    assert isinstance(reload, MapLoadRequested)
