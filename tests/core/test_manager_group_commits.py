"""Group commits: groupable changes queued side by side commit as one map version."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from forehand.core._manager_commits import Built, Change, CommitPipeline, Committed
from forehand.core._manager_events import HandoffStarted, MapChange, MapCommitted
from forehand.placement import PartKey, PlacementConfig, ShardMap
from forehand.stores import DeltaCommitRequested, DeltaRejected, MemoryStore, RejectionReason
from forehand.wire import OpenSession, SessionOpened

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness, complete_handoffs, execute
    from tests.core.test_manager_planning import fleet
else:
    from _manager_helpers import MANAGER, ManagerHarness, complete_handoffs, execute
    from test_manager_planning import fleet


def merge(current: ShardMap, builds: Sequence[Built]) -> Built:
    """Every operation of the builds, as one delta against `current`."""
    operations = [op for built in builds for op in (built.delta.operations if built.delta else ())]
    delta = current.delta(*operations)
    servers = tuple(s for built in builds for s in built.servers)
    return Built(delta=delta, new_map=current.apply(delta), parts=(), servers=servers)


def join_change(server_id: str, log: list[str], *, groupable: bool = True) -> Change:
    """A groupable change joining `server_id`, logging what happens to it."""

    def build(current: ShardMap) -> Built:
        delta = current.join_server(server_id=server_id, address="h:1", zone="z")
        return Built(delta=delta, new_map=current.apply(delta), parts=(), servers=(server_id,))

    return Change(
        kind=MapChange.SERVER_JOINED,
        build=build,
        committed=lambda built, now_us: log.append(f"{server_id}@{built.new_map.version}"),
        dropped=lambda cause, now_us: log.append(f"dropped {server_id}"),
        groupable=groupable,
    )


def started(store: MemoryStore, *, group_changes_max: int = 8) -> CommitPipeline:
    commits = CommitPipeline(
        placement_config=PlacementConfig(),
        pending_max=16,
        timeout_us=1_000,
        snapshot_interval_deltas=100,
        group_changes_max=group_changes_max,
        merge=merge,
    )
    commits.load(now_us=0)
    (request,) = commits.requests()
    commits.result(execute(store, request), now_us=0)
    return commits


def test_groupable_changes_side_by_side_make_one_version() -> None:
    """Three groupable joins commit as version 1, each told with the group's map; the
    non-groupable one behind them gets a version of its own."""
    store, log = MemoryStore(), list[str]()
    commits = started(store)
    for server_id in ("a", "b", "c"):
        commits.submit(join_change(server_id, log))
    commits.submit(join_change("d", log, groupable=False))
    commits.pump(now_us=0, hold=False)
    (request,) = commits.requests()
    outcome = commits.result(execute(store, request), now_us=0)
    assert isinstance(outcome, Committed) and len(outcome.members) == 3
    for change, member in outcome.members:
        change.committed(member, 0)
    assert log == ["a@1", "b@1", "c@1"]
    assert commits.shard_map is not None
    assert {entry.server_id for entry in commits.shard_map.servers} == {"a", "b", "c"}
    assert commits.pending == 1


def test_a_group_is_bounded_and_a_rejected_group_goes_back_in_order() -> None:
    """At most group_changes_max per version; a rejected group returns to the queue's head in
    its order and is built again after the reload."""
    store, log = MemoryStore(), list[str]()
    commits = started(store, group_changes_max=2)
    for server_id in ("a", "b", "c"):
        commits.submit(join_change(server_id, log))
    commits.pump(now_us=0, hold=False)
    (request,) = commits.requests()
    assert isinstance(request, DeltaCommitRequested)
    rejected = DeltaRejected(
        request_id=request.request_id,
        base_version=0,
        current_version=0,
        reason=RejectionReason.STALE_BASE,
    )
    commits.result(rejected, now_us=1)
    assert commits.pending == 3
    (reload,) = commits.requests()
    commits.result(execute(store, reload), now_us=1)
    commits.pump(now_us=1, hold=False)
    (request,) = commits.requests()
    outcome = commits.result(execute(store, request), now_us=1)
    assert isinstance(outcome, Committed)
    assert [member.servers for _, member in outcome.members] == [("a",), ("b",)]
    assert commits.pending == 1 and log == []


def test_a_planning_pass_commits_its_handoffs_as_one_version() -> None:
    """Handoffs started together share a map version: one MapCommitted for several starts."""
    servers = fleet(12)
    harness = ManagerHarness(handoffs_per_server_max=4)
    harness.join(*servers)
    sessions = [harness.open_session(("auth", "cart", "feed")) for _ in range(40)]
    for opened in sessions:
        harness.manager.handoff(opened.session_id, now_us=harness.router.now_us)
    complete_handoffs(harness, servers, 30, tick_ms=200)
    handoffs = harness.events(HandoffStarted)
    versions = [handoff.map_version for handoff in handoffs]
    assert len(handoffs) > 10 and len(set(versions)) < len(versions)
    commits = [c for c in harness.events(MapCommitted) if c.change is MapChange.HANDOFF_ASSIGNED]
    assert len(commits) == len(set(versions))
    last_target = {ref: handoff.target for handoff in handoffs for ref in handoff.parts}
    for ref, target in last_target.items():
        assert harness.placement(ref).primary == target


def test_the_planning_interval_spaces_passes_and_groups_what_became_possible() -> None:
    """With handoff_plan_interval_ms, passes (and so handoff commits) are that far apart, and
    handoffs that end together free slots that the next pass fills in one version."""
    servers = fleet(12)
    harness = ManagerHarness(handoffs_per_server_max=4, handoff_plan_interval_ms=50)
    harness.join(*servers)
    sessions = [harness.open_session(("auth", "cart", "feed")) for _ in range(40)]
    for opened in sessions:
        harness.manager.handoff(opened.session_id, now_us=harness.router.now_us)
    complete_handoffs(harness, servers, 30, tick_ms=200)
    handoffs = harness.events(HandoffStarted)
    planned = sorted({handoff.planned_us for handoff in handoffs})
    assert len(handoffs) > 10 and len(planned) > 1
    assert all(later - earlier >= 50_000 for earlier, later in itertools.pairwise(planned))
    commits = [c for c in harness.events(MapCommitted) if c.change is MapChange.HANDOFF_ASSIGNED]
    assert len(commits) <= len(planned) < len(handoffs)
    assert harness.manager.orchestrator.queued_moves == 0


def test_session_opens_waiting_behind_a_commit_make_one_version() -> None:
    """Twenty OPEN_SESSIONs arriving while the first one's commit is in flight: the first
    commits alone, the other nineteen as one version, and every client is answered with its
    session's placements in that version."""
    harness = ManagerHarness()
    harness.join("s1", "s2", "s3")
    before = harness.map.version
    harness.router.run()
    harness.router.events[MANAGER].clear()
    for request_id in range(1, 21):
        harness.manager.receive_message(
            OpenSession(request_id=request_id, parts=("auth", "cart")),
            source="c1",
            now_us=harness.router.now_us,
        )
    harness.router.run()
    commits = [e for e in harness.router.events[MANAGER] if isinstance(e, MapCommitted)]
    assert [e.change for e in commits] == [MapChange.SESSION_OPENED] * 2
    assert [len(e.parts) for e in commits] == [2, 38]
    assert harness.map.version == before + 2
    opened = harness.router.take("c1", SessionOpened)
    assert sorted(frame.request_id for frame in opened) == list(range(1, 21))
    for frame in opened:
        for placement in frame.placements:
            key = PartKey(session_id=frame.session_id, part=placement.part)
            assert harness.map.lookup(key).primary == placement.primary.server_id
