"""Tests of the manager's commit pipeline: one request in flight, rejections, snapshots, urgency."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._manager_commits import Built, Change, CommitPipeline, Committed, Rejected
from forehand.core._manager_events import MapChange
from forehand.errors import LocalProtocolError
from forehand.placement import PlacementConfig, ShardMap
from forehand.stores import (
    DeltaCommitRequested,
    DeltaRejected,
    MapLoadRequested,
    MemoryStore,
    RejectionReason,
    SnapshotSaveRequested,
    StoreConfig,
)

if TYPE_CHECKING:
    from tests.core._manager_helpers import execute
else:
    from _manager_helpers import execute


def pipeline(**overrides: int) -> CommitPipeline:
    values = {"pending_max": 4, "timeout_us": 1_000, "snapshot_interval_deltas": 100}
    values.update(overrides)
    return CommitPipeline(
        placement_config=PlacementConfig(),
        pending_max=values["pending_max"],
        timeout_us=values["timeout_us"],
        snapshot_interval_deltas=values["snapshot_interval_deltas"],
    )


def join_change(server_id: str, log: list[str], *, urgent: bool = False) -> Change:
    """A change that joins `server_id`, logging what happens to it."""

    def build(current: ShardMap) -> Built:
        delta = current.join_server(server_id=server_id, address="h:1", zone="z")
        return Built(delta=delta, new_map=current.apply(delta), parts=(), servers=(server_id,))

    return Change(
        kind=MapChange.SERVER_JOINED,
        build=build,
        committed=lambda built, now_us: log.append(f"committed {server_id}"),
        dropped=lambda cause, now_us: log.append(f"dropped {server_id}: {cause}"),
        urgent=urgent,
    )


def loaded(commits: CommitPipeline, store: MemoryStore) -> None:
    commits.load(now_us=0)
    (request,) = commits.requests()
    commits.result(execute(store, request), now_us=0)


def test_one_request_in_flight_and_late_results_are_ignored() -> None:
    """The second change waits; a result with another request id changes nothing."""
    commits, store = pipeline(), MemoryStore()
    log: list[str] = []
    loaded(commits, store)
    commits.submit(join_change("a", log))
    commits.submit(join_change("b", log))
    commits.pump(now_us=0, hold=False)
    (first,) = commits.requests()
    assert commits.busy and commits.pending == 1
    commits.pump(now_us=0, hold=False)
    assert commits.requests() == []
    result = execute(store, first)
    stale = DeltaRejected(
        request_id=12345, base_version=0, current_version=0, reason=RejectionReason.STALE_BASE
    )
    assert commits.result(stale, now_us=1) is None
    outcome = commits.result(result, now_us=1)
    assert isinstance(outcome, Committed) and outcome.built.servers == ("a",)
    assert commits.shard_map is not None and commits.shard_map.version == 1


def test_urgent_changes_go_first_past_the_bound_and_the_hold() -> None:
    """An urgent change jumps the queue, ignores pending_max and commits while others hold."""
    commits, store = pipeline(pending_max=1), MemoryStore()
    log: list[str] = []
    loaded(commits, store)
    assert commits.submit(join_change("a", log))
    assert not commits.submit(join_change("b", log))
    assert commits.submit(join_change("c", log, urgent=True))
    commits.pump(now_us=0, hold=True)
    (request,) = commits.requests()
    outcome = commits.result(execute(store, request), now_us=0)
    assert isinstance(outcome, Committed) and outcome.built.servers == ("c",)
    commits.pump(now_us=0, hold=True)
    assert commits.requests() == []


def test_a_change_that_cannot_apply_is_dropped() -> None:
    """A build raising a placement error drops the change and the next one goes on."""
    commits, store = pipeline(), MemoryStore()
    log: list[str] = []
    loaded(commits, store)

    def broken(current: ShardMap) -> Built:
        raise LocalProtocolError("no such server")

    commits.submit(
        Change(
            kind=MapChange.DRAIN_MARKED,
            build=broken,
            committed=lambda built, now_us: None,
            dropped=lambda cause, now_us: log.append(cause),
        )
    )
    commits.submit(join_change("a", log))
    commits.pump(now_us=0, hold=False)
    assert log == ["cannot apply: no such server"]
    (request,) = commits.requests()
    assert isinstance(request, DeltaCommitRequested)


def test_too_large_drops_and_stale_base_reloads() -> None:
    """TOO_LARGE drops the change; STALE_BASE requeues it and reloads the map."""
    commits = pipeline()
    log: list[str] = []
    store = MemoryStore(config=StoreConfig(delta_bytes_max=1))
    loaded(commits, store)
    commits.submit(join_change("a", log))
    commits.pump(now_us=0, hold=False)
    (request,) = commits.requests()
    outcome = commits.result(execute(store, request), now_us=0)
    assert isinstance(outcome, Rejected) and log == [
        "dropped a: the store refused the delta as too large"
    ]
    assert not commits.busy
    commits.submit(join_change("b", log))
    commits.pump(now_us=0, hold=False)
    (request,) = commits.requests()
    assert isinstance(request, DeltaCommitRequested)
    stale = DeltaRejected(
        request_id=request.request_id,
        base_version=0,
        current_version=3,
        reason=RejectionReason.STALE_BASE,
    )
    assert isinstance(commits.result(stale, now_us=0), Rejected)
    (reload,) = commits.requests()
    assert isinstance(reload, MapLoadRequested) and commits.pending == 1


def test_snapshot_required_saves_a_snapshot_then_retries() -> None:
    """SNAPSHOT_REQUIRED: the pipeline saves the whole map, then commits the change."""
    commits = pipeline()
    log: list[str] = []
    store = MemoryStore(config=StoreConfig(deltas_since_snapshot_max=1))
    loaded(commits, store)
    for server_id in ("a", "b"):
        commits.submit(join_change(server_id, log))
    kinds: list[str] = []
    committed: list[tuple[str, ...]] = []
    for _ in range(6):
        commits.pump(now_us=0, hold=False)
        for request in commits.requests():
            kinds.append(type(request).__name__)
            outcome = commits.result(execute(store, request), now_us=0)
            if isinstance(outcome, Committed):
                committed.append(outcome.built.servers)
    commit, snapshot = DeltaCommitRequested.__name__, SnapshotSaveRequested.__name__
    assert kinds == [commit, commit, snapshot, commit]
    assert committed == [("a",), ("b",)]
    assert store.version == 2


def test_silence_times_out_into_a_reload() -> None:
    """No answer within timeout_us: the request is abandoned and the map reloaded."""
    commits, store = pipeline(timeout_us=500), MemoryStore()
    log: list[str] = []
    loaded(commits, store)
    commits.submit(join_change("a", log))
    commits.pump(now_us=0, hold=False)
    commits.requests()
    assert commits.deadline_us() == 500
    assert commits.timed_out(now_us=499) is None
    assert isinstance(commits.timed_out(now_us=500), Rejected)
    (reload,) = commits.requests()
    assert isinstance(reload, MapLoadRequested) and commits.pending == 1
