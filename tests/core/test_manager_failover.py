"""Tests of the manager's failover: fencing, positions, promotion, replica repair, lost parts."""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING, Any

import pytest

import forehand.core.manager as manager_module
from forehand.core._manager_events import (
    FailoverAbandoned,
    FailoverCompleted,
    FailoverStarted,
    MapChange,
    MapCommitted,
    PartsLost,
    PartsReset,
    ServerDeclaredDead,
    ServersSilent,
    ServerSuspected,
    StallExcused,
)
from forehand.core.messages import (
    FailoverPrepared,
    MapPublished,
    PartProgress,
    PartRef,
    PartRole,
    PositionsReported,
)
from forehand.placement import PartKey, PlacementConfig, ServerState
from forehand.wire import CloseSession, OpenSession, SessionOpened

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, HeldCommit, ManagerHarness, opened_refs
else:
    from _manager_helpers import MANAGER, HeldCommit, ManagerHarness, opened_refs

SERVERS = ("s1", "s2", "s3", "s4")
PARTS = ("auth", "cart", "feed", "chat", "mail", "pay")


def cluster(replica_count: int = 2, **overrides: Any) -> tuple[ManagerHarness, list[PartRef]]:
    """Four servers and one session of six parts."""
    harness = ManagerHarness(replica_count=replica_count, **overrides)
    harness.join(*SERVERS)
    opened = harness.open_session(PARTS)
    assert opened is not None
    return harness, opened_refs(opened)


def kill(harness: ManagerHarness, victim: str) -> list[str]:
    """Let `victim` fall silent until it is declared dead; the survivors."""
    survivors = [s for s in SERVERS if s != victim]
    harness.tick(700, alive=survivors)
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == [victim]
    return survivors


def test_death_fences_the_survivors_at_the_next_version() -> None:
    """FailoverPrepared goes to each live holder of the dead primary's parts, fencing at v+1."""
    harness, _ = cluster()
    victim_parts = set(harness.primaries("s1"))
    assert victim_parts
    version = harness.map.version
    survivors = kill(harness, "s1")
    (started,) = harness.events(FailoverStarted)
    assert started.servers == ("s1",) and started.fence_version == version + 1
    assert started.parts == len(victim_parts)
    fenced: set[PartRef] = set()
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            assert prepared.map_version == version + 1
            for ref in prepared.parts:
                assert server_id in harness.placement(ref).replicas
            fenced.update(prepared.parts)
    assert fenced == victim_parts
    assert harness.take("s1", FailoverPrepared) == []


def test_a_newer_history_beats_a_longer_one() -> None:
    """Diverged candidates rank by the epoch of their last entry before length (up-to-date rule)."""
    harness, _ = cluster()
    ref = harness.primaries("s1")[0]
    first, second = harness.placement(ref).replicas
    survivors = kill(harness, "s1")
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            # `first` holds a longer log of an older epoch (a replaced primary's tail), `second`
            # a shorter one that a later primary wrote under a newer epoch.
            parts = tuple(
                PartProgress(
                    ref=part,
                    role=PartRole.REPLICA,
                    applied_seq=9 if server_id == first else 4,
                    epoch=3,
                    last_epoch=2 if server_id == first else 3,
                )
                for part in prepared.parts
            )
            message = PositionsReported(
                server_id=server_id, map_version=prepared.map_version, parts=parts
            )
            harness.router.send(server_id, "manager", message)
    assert harness.placement(ref).primary == second


def test_the_most_advanced_replica_is_promoted() -> None:
    """Per part, the candidate reporting the highest applied_seq becomes primary."""
    harness, _ = cluster()
    victim_parts = harness.primaries("s1")
    replicas = {ref: harness.placement(ref).replicas for ref in victim_parts}
    survivors = kill(harness, "s1")
    # The last replica in promotion order is the most advanced one, on every part.
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            seqs = {ref: 10 + replicas[ref].index(server_id) * 5 for ref in prepared.parts}
            harness.positions(server_id, prepared.map_version, seqs)
    (done,) = harness.events(FailoverCompleted)
    assert done.servers == ("s1",) and done.map_version == harness.map.version
    assert {p.ref for p in done.promotions} == set(victim_parts)
    for promoted in done.promotions:
        assert promoted.previous_primary == "s1"
        assert promoted.primary == replicas[promoted.ref][-1]
        assert promoted.applied_seq == max(p.applied_seq for p in promoted.positions)
        assert harness.placement(promoted.ref).primary == promoted.primary
    assert harness.map.server("s1").state is ServerState.DEAD


def test_promotion_commits_one_new_version_published_to_survivors() -> None:
    """The failover is one delta, one version, sent to every live server."""
    harness, _ = cluster()
    survivors = kill(harness, "s1")
    before = harness.map.version
    for server_id in survivors:
        harness.take(server_id, MapPublished)
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 3))
    assert harness.map.version == before + 1
    failover_commits = [c for c in harness.events(MapCommitted) if c.change is MapChange.FAILOVER]
    assert len(failover_commits) == 1
    for server_id in survivors:
        (published,) = harness.take(server_id, MapPublished)
        assert (published.base_version, published.map_version) == (before, before + 1)


def test_replica_count_is_restored_after_failover() -> None:
    """Every part ends with replica_count live replicas, none of them the dead server."""
    harness, refs = cluster()
    survivors = kill(harness, "s2")
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    (done,) = harness.events(FailoverCompleted)
    for ref in refs:
        placement = harness.placement(ref)
        assert "s2" not in placement.servers
        assert len(placement.replicas) == 2
    assert done.replicas_added >= 1


def test_silent_replicas_time_out_and_the_answers_decide() -> None:
    """Live candidates silent at failover_prepare_timeout_ms get the fence once more; silent
    after another timeout, the manager promotes among those who answered."""
    harness, _ = cluster()
    victim_parts = harness.primaries("s1")
    survivors = kill(harness, "s1")
    answering = survivors[0]
    silent = survivors[1:]
    first = {s: harness.prepared(s) for s in silent}
    for prepared in harness.prepared(answering):
        harness.positions(answering, prepared.map_version, dict.fromkeys(prepared.parts, 7))
    assert harness.events(FailoverCompleted) == []
    harness.tick(250, alive=survivors)
    assert harness.events(FailoverCompleted) == []
    assert harness.prepared(answering) == []
    for server_id in silent:
        assert harness.prepared(server_id) == first[server_id]
    harness.tick(250, alive=survivors)
    (done,) = harness.events(FailoverCompleted)
    assert {p.ref for p in done.promotions} == set(victim_parts)
    for promoted in done.promotions:
        reported = {p.server_id: p.applied_seq for p in promoted.positions}
        if answering in harness.placement(promoted.ref).servers and reported.get(answering) == 7:
            assert promoted.primary == answering
    assert done.positions_us >= 400_000


def test_a_live_candidate_silent_at_the_deadline_is_asked_again_and_its_answer_counts() -> None:
    """A holder heard from since the fence whose answer was lost gets the fence again; its late
    answer, ahead of the replica that answered at once, decides (a `replicated` write that only
    it acknowledged is kept)."""
    harness, _ = cluster()
    ref = harness.primaries("s1")[0]
    holder, lagging = harness.placement(ref).replicas
    survivors = kill(harness, "s1")
    lost = harness.prepared(holder)
    for prepared in harness.prepared(lagging):
        harness.positions(lagging, prepared.map_version, dict.fromkeys(prepared.parts, 3))
    for server_id in survivors:
        if server_id not in (holder, lagging):
            for prepared in harness.prepared(server_id):
                harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 3))
    harness.tick(200, alive=survivors)
    assert harness.events(FailoverCompleted) == []
    again = harness.prepared(holder)
    assert again == lost
    for prepared in again:
        seqs = {part: 4 if part == ref else 3 for part in prepared.parts}
        harness.positions(holder, prepared.map_version, seqs)
    (done,) = harness.events(FailoverCompleted)
    (decision,) = [p for p in done.promotions if p.ref == ref]
    assert decision.primary == holder and decision.applied_seq == 4


def test_a_candidate_not_heard_from_since_the_fence_does_not_hold_up_the_promotion() -> None:
    """A silent candidate that has not heartbeated since the fence went out may be dead: the
    failover promotes at failover_prepare_timeout_ms, before the detector declares it dead."""
    harness, _ = cluster()
    mute, *answering = [s for s in SERVERS if s != "s1"]
    # `mute` falls silent a little after s1: still live when the fence goes out.
    harness.tick(300, alive=[mute, *answering])
    harness.tick(400, alive=answering)
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s1"]
    for server_id in answering:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    harness.tick(200, alive=answering)
    (done,) = harness.events(FailoverCompleted)
    assert done.servers == ("s1",) and done.positions_us == 200_000
    assert harness.prepared(mute) != []


def test_no_commit_changes_the_map_while_positions_are_collected() -> None:
    """A session opened during the fence waits until the promotion is committed."""
    harness, _ = cluster()
    survivors = kill(harness, "s1")
    version = harness.map.version
    assert harness.open_session(("late",), client="c9") is None
    assert harness.map.version == version
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    (late,) = harness.take("c9", SessionOpened)
    assert late.map_version == version + 2
    placed = harness.map.lookup(PartKey(session_id=late.session_id, part="late"))
    assert "s1" not in placed.servers


def test_a_promotion_of_holders_with_none_of_the_history_is_reported_as_a_reset() -> None:
    """A server's heartbeat said it had applied entries of each of its parts; when it dies and the
    best survivor of some parts holds nothing (position 0: a replica that joined and had not
    installed its snapshot yet, or an `async` part whose writes had not shipped, which the
    manager cannot tell apart), the promotion goes ahead and PartsReset names those parts. The
    session is not ended: an `async` part may lose its replication lag, not its session (a
    first version ended it, and the simulator's liveness check caught the sessions it ended).
    A survivor that holds the history is promoted as usual, with no report."""
    harness, refs = cluster(replica_count=1)
    victim = max(SERVERS, key=lambda server: (len(harness.primaries(server)), server))
    victim_parts = harness.primaries(victim)
    assert len(victim_parts) >= 2
    reset, kept = victim_parts[0], victim_parts[1:]
    harness.heartbeat(
        victim,
        parts=[
            PartProgress(ref=ref, role=PartRole.PRIMARY, applied_seq=7, epoch=1, last_epoch=1)
            for ref in victim_parts
        ],
    )
    survivors = kill(harness, victim)
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(
                server_id,
                prepared.map_version,
                {ref: 0 if ref == reset else 7 for ref in prepared.parts},
            )
    (done,) = harness.events(FailoverCompleted)
    assert {p.ref for p in done.promotions} == set(victim_parts)
    (event,) = harness.events(PartsReset)
    assert event.parts == (reset,) and event.servers == (victim,)
    assert event.map_version == done.map_version
    assert all(harness.placement(ref).primary != victim for ref in kept)
    assert harness.events(PartsLost) == [] and harness.take("c1", CloseSession) == []
    assert len(harness.map) == len(refs)


def test_parts_whose_holders_all_died_are_reported_lost_and_removed() -> None:
    """Without replicas a dead primary's parts cannot be saved: PartsLost, not silence. Their
    sessions end whole (their parts on the survivors removed in the same version, and their
    clients told); the sessions with no part on the dead server go on untouched."""
    harness, refs = cluster(replica_count=0)
    others = [harness.open_session(("auth", "cart"), client="c2") for _ in range(24)]
    assert None not in others
    victim_parts = harness.primaries("s3")
    assert victim_parts
    on_victim = {ref.session_id for ref in victim_parts}
    kill(harness, "s3")
    (lost,) = harness.events(PartsLost)
    assert set(lost.parts) == set(victim_parts) and lost.servers == ("s3",)
    assert lost.map_version == harness.map.version
    assert set(lost.sessions) == on_victim
    survivors = {key.session_id for key in harness.map.part_keys()}
    assert not survivors & on_victim
    spared = {opened.session_id for opened in others} - on_victim
    assert spared and survivors == spared
    assert len(harness.map) == 2 * len(spared)
    told = {c.session_id for client in ("c1", "c2") for c in harness.take(client, CloseSession)}
    assert told == on_victim
    assert lost.parts_ended == len(refs) + 2 * (len(others) - len(spared)) - len(victim_parts)


def test_two_deaths_during_one_failover_are_handled_in_turn() -> None:
    """A second death while positions are collected gets its own failover right after."""
    harness, refs = cluster(failover_prepare_timeout_ms=5_000)
    harness.tick(700, alive=["s2", "s3", "s4"])
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s1"]
    first_prepares = {s: harness.prepared(s) for s in ("s2", "s3", "s4")}
    harness.tick(700, alive=["s3", "s4"])
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s1", "s2"]
    assert harness.events(FailoverCompleted) == []
    for server_id in ("s3", "s4"):
        for prepared in first_prepares[server_id]:
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    (first,) = harness.events(FailoverCompleted)
    assert first.servers == ("s1",)
    for server_id in ("s3", "s4"):
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    second = harness.events(FailoverCompleted)[-1]
    assert second.servers == ("s2",) and second.map_version == first.map_version + 1
    ended = {s for event in harness.events(PartsLost) for s in event.sessions}
    for ref in refs:
        if PartKey(session_id=ref.session_id, part=ref.part) in harness.map:
            assert harness.placement(ref).primary in ("s3", "s4")
        else:
            assert ref.session_id in ended


def test_heartbeat_progress_breaks_ties_when_nobody_answers() -> None:
    """If no candidate answers, the positions last heartbeated decide."""
    from forehand.core.messages import PartProgress, PartRole

    harness, _ = cluster()
    victim_parts = harness.primaries("s1")
    ref = victim_parts[0]
    last = harness.placement(ref).replicas[-1]
    progress = PartProgress(ref=ref, role=PartRole.REPLICA, applied_seq=99, epoch=1)
    harness.heartbeat(last, parts=(progress,))
    survivors = [s for s in SERVERS if s != "s1"]
    harness.tick(1_000, alive=survivors)
    (done,) = harness.events(FailoverCompleted)
    (decision,) = [p for p in done.promotions if p.ref == ref]
    assert decision.primary == last and decision.applied_seq == 99


def test_failover_transition_table_is_complete() -> None:
    """The job table is importable for diagrams and an illegal trigger raises."""
    import pytest

    from forehand.core._manager_failover import (
        FailoverJob,
        FailoverPhase,
        FailoverTrigger,
        fire,
        transition_table,
    )
    from forehand.errors import LocalProtocolError

    reached = {target for _, _, target in transition_table()}
    assert reached == set(FailoverPhase) - {FailoverPhase.PENDING}
    job = FailoverJob(failover_id=1, created_us=0)
    with pytest.raises(LocalProtocolError):
        fire(job, FailoverTrigger.PROMOTION_COMMITTED)


def test_a_rejoining_server_tops_up_the_replicas_a_failover_could_not_find() -> None:
    """With only one live holder the promoted part keeps no replica; the next join adds them."""
    harness, refs = cluster()
    ref = next(r for r in refs if "s1" in harness.placement(r).replicas)
    harness.tick(700, alive=["s1"])
    for server_id in ("s2", "s3", "s4"):
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 0))
    for prepared in harness.prepared("s1"):
        harness.positions("s1", prepared.map_version, dict.fromkeys(prepared.parts, 5))
    harness.tick(300, alive=["s1"])
    assert harness.placement(ref).primary == "s1" and harness.placement(ref).replicas == ()
    harness.announce("s2", incarnation=2)
    harness.tick(600, alive=["s1", "s2"])
    assert harness.placement(ref).replicas == ("s2",)


def test_a_fleet_silent_at_once_is_held_not_failed_over() -> None:
    """Every server silent together (the manager cut off, say): ServersSilent once, no death,
    no failover, no part lost; the first server heard again is the evidence that the others
    are gone, and they fail over to it."""
    harness, refs = cluster(replica_count=3)
    version = harness.map.version
    harness.tick(30_000, alive=[])
    (silent,) = harness.events(ServersSilent)
    assert silent.servers == SERVERS
    assert harness.events(ServerDeclaredDead) == []
    assert harness.events(FailoverStarted) == [] and harness.events(PartsLost) == []
    assert harness.map.version == version

    harness.tick(500, alive=["s2"])
    assert sorted(d.server_id for d in harness.events(ServerDeclaredDead)) == ["s1", "s3", "s4"]
    (started,) = harness.events(FailoverStarted)
    assert started.servers == ("s1", "s3", "s4")
    for prepared in harness.prepared("s2"):
        harness.positions("s2", prepared.map_version, dict.fromkeys(prepared.parts, 0))
    harness.tick(500, alive=["s2"])
    assert harness.events(FailoverCompleted) and harness.events(PartsLost) == []
    assert {harness.placement(ref).primary for ref in refs} == {"s2"}


def test_a_stall_the_driver_reports_defers_every_death() -> None:
    """The manager's loop stalls past the failure timeout (no timer runs, nothing is read) and
    the driver reports it: StallExcused, and no server whose only silence is that stall is
    suspected or declared dead when the late timer runs; a server still silent afterwards is."""
    harness, _ = cluster()
    harness.tick(500, alive=SERVERS)
    harness.router.now_us += 2_000_000  # The stall: time passes, the manager runs nothing.
    harness.manager.excuse_stall(stalled_us=2_000_000, now_us=harness.router.now_us)
    harness.router.run()
    assert [e.stalled_us for e in harness.events(StallExcused)] == [2_000_000]
    harness.router.advance(ms=0)
    harness.tick(200, alive=SERVERS)
    assert harness.events(ServerSuspected) == [] and harness.events(ServerDeclaredDead) == []
    harness.tick(1_000, alive=[s for s in SERVERS if s != "s4"])
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s4"]


@pytest.mark.slow
def test_a_server_leading_over_ten_thousand_parts_fails_over() -> None:
    """Three servers, 12,000 sessions of three parts: the one that dies led some 12,000 parts,
    and its promotion (one override per part) commits as one version; a delta bound of 10,000
    operations dropped it, four attempts in a row, and the parts never failed over."""
    harness = ManagerHarness(replica_count=2, client_sessions_max=16_384)
    harness.join("s1", "s2", "s3")
    for start in range(0, 12_000, 200):
        for request_id in range(start, start + 200):
            opening = OpenSession(request_id=request_id, parts=("auth", "cart", "feed"))
            harness.manager.receive_message(opening, source="c1", now_us=harness.router.now_us)
        harness.router.run()
        harness.router.take("c1", SessionOpened)
    led = set(harness.primaries("s2"))
    assert len(led) > 10_000
    harness.tick(700, alive=["s1", "s3"])
    for server in ("s1", "s3"):
        for prepared in harness.prepared(server):
            harness.positions(server, prepared.map_version, dict.fromkeys(prepared.parts, 0))
    harness.tick(500, alive=["s1", "s3"])
    (completed,) = harness.events(FailoverCompleted)
    assert {promoted.ref for promoted in completed.promotions} == led
    assert harness.events(PartsLost) == []
    assert {harness.placement(ref).primary for ref in led} <= {"s1", "s3"}


def test_a_promotion_that_cannot_be_built_is_abandoned_aloud(monkeypatch: Any) -> None:
    """A map whose deltas may carry fewer operations than the promotion needs: after the last
    attempt the failover is abandoned with FailoverAbandoned naming why, not silently."""
    helpers = sys.modules[ManagerHarness.__module__]
    monkeypatch.setattr(
        helpers, "PlacementConfig", functools.partial(PlacementConfig, delta_operations_max=1)
    )
    harness, _ = cluster()
    assert harness.primaries("s1")  # Marked dead and promoted: two operations at least.
    kill(harness, "s1")
    harness.tick(2_000, alive=["s2", "s3", "s4"])
    (abandoned,) = harness.events(FailoverAbandoned)
    assert abandoned.servers == ("s1",) and "at most 1 operations" in abandoned.cause
    assert harness.events(FailoverCompleted) == []


def test_a_server_adopting_a_heavy_version_dies_only_after_its_allowance() -> None:
    """On three servers a failover moves every part of the survivors. Each survivor sent that
    version may stay silent `map_adopt_allowance_us_per_part` per part the version may move
    (here bounded at 2 s) before it is declared dead, where the failure timeout is 600 ms: it
    is suspected as before, and dies once the allowance ends."""
    harness = ManagerHarness(
        replica_count=2, map_adopt_allowance_us_per_part=100_000, map_adopt_allowance_max_ms=2_000
    )
    harness.join("s1", "s2", "s3")
    for _ in range(20):
        assert harness.open_session(("auth", "cart", "feed")) is not None
    harness.tick(700, alive=["s1", "s3"])
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s2"]
    for server in ("s1", "s3"):
        for prepared in harness.prepared(server):
            harness.positions(server, prepared.map_version, dict.fromkeys(prepared.parts, 0))
    harness.router.run()
    assert harness.events(FailoverCompleted)
    harness.tick(1_500, alive=["s3"])  # s1 adopts the failover's version, silent.
    assert "s1" in {s.server_id for s in harness.events(ServerSuspected)}
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s2"]
    harness.tick(600, alive=["s3"])
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s2", "s1"]
    (death,) = [d for d in harness.events(ServerDeclaredDead) if d.server_id == "s1"]
    assert 2_000_000 <= death.silent_us < 2_200_000


def test_a_survivor_silent_when_the_failover_lands_has_its_allowance_from_its_last_beat() -> None:
    """A second crash during a failover: s1 falls silent before s2 is declared dead, so it is
    suspected when the failover's heavy version goes out. Its allowance (2 s here) counts from
    its last heartbeat, not from the version: it dies 2 s after it fell silent (a busy survivor
    would have had that long), not 2 s after the version, and no later version moves that."""
    harness = ManagerHarness(
        replica_count=2, map_adopt_allowance_us_per_part=100_000, map_adopt_allowance_max_ms=2_000
    )
    harness.join("s1", "s2", "s3", "s4")
    for _ in range(20):
        assert harness.open_session(("auth", "cart", "feed")) is not None
    harness.tick(300, alive=["s1", "s3", "s4"])
    harness.tick(400, alive=["s3", "s4"])  # s1 crashes; s2 is declared dead meanwhile.
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s2"]
    assert "s1" in {s.server_id for s in harness.events(ServerSuspected)}
    for server in ("s1", "s3", "s4"):  # s1's answer was sent before it crashed.
        for prepared in harness.prepared(server):
            harness.positions(server, prepared.map_version, dict.fromkeys(prepared.parts, 0))
    harness.tick(500, alive=["s3", "s4"])
    assert harness.events(FailoverCompleted)
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s2"]
    harness.tick(1_700, alive=["s3", "s4"])
    (death,) = [d for d in harness.events(ServerDeclaredDead) if d.server_id == "s1"]
    assert 2_000_000 <= death.silent_us < 2_100_000


def test_a_dead_server_forgotten_leaves_the_map_and_may_join_again_as_new() -> None:
    """`dead_servers_forget_ms` after its death the manager forgets s2, and its DEAD entry
    leaves the map in a SERVER_LEFT version (before, every server id that ever died stayed in
    the map for good, sent whole to every newcomer, up to `servers_max`). A process under that
    id later joins as a new server, ACTIVE; a dead server not yet forgotten stays listed."""
    harness, refs = cluster(dead_servers_forget_ms=2_000)
    survivors = kill(harness, "s2")
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    assert harness.events(FailoverCompleted)
    harness.tick(1_000, alive=survivors)
    assert harness.map.server("s2").state is ServerState.DEAD
    harness.tick(1_500, alive=survivors)
    listed = {entry.server_id for entry in harness.map.servers}
    assert listed == set(survivors)
    (removed,) = [e for e in harness.events(MapCommitted) if e.change is MapChange.SERVER_LEFT]
    assert removed.servers == ("s2",)
    for ref in refs:
        assert "s2" not in harness.placement(ref).servers
    harness.announce("s2", incarnation=2)
    harness.tick(1_000, alive=SERVERS)
    assert harness.map.server("s2").state is ServerState.ACTIVE


def test_forgotten_dead_servers_leave_the_map_a_batch_a_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each removal scans the overrides, so a version removes at most `FORGOTTEN_REMOVALS_MAX`
    forgotten entries (a map from before the removal existed may hold thousands, all forgotten
    together 10 minutes after a load) and the next batch follows its commit: with a batch of
    2, three forgotten servers leave in two versions."""
    monkeypatch.setattr(manager_module, "FORGOTTEN_REMOVALS_MAX", 2)
    servers = ("s1", "s2", "s3", "s4", "s5", "s6")
    harness = ManagerHarness(dead_servers_forget_ms=2_000)
    harness.join(*servers)
    for index in range(3):
        assert harness.open_session(PARTS, client=f"c{index}") is not None
    survivors = ("s1", "s2", "s3")
    harness.tick(700, alive=survivors)
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 1))
    harness.tick(3_000, alive=survivors)
    assert {entry.server_id for entry in harness.map.servers} == set(survivors)
    removed = [e for e in harness.events(MapCommitted) if e.change is MapChange.SERVER_LEFT]
    assert [len(e.servers) for e in removed] == [2, 1]


def test_a_holder_ranked_by_a_stale_heartbeat_of_nothing_is_promoted_not_lost() -> None:
    """A replica whose fence answer never comes is ranked by its heartbeat, which only
    under-states what it holds: its rotating batch last named the part before its snapshot
    was installed, at (0, 0). That is no proof the history is gone: the part is promoted on it
    and its session goes on (a second reading found such sessions ended)."""
    harness = ManagerHarness(replica_count=1)
    harness.join(*SERVERS)
    opened = harness.open_session(PARTS)
    assert opened is not None
    victim = max(SERVERS, key=lambda s: (len(harness.primaries(s)), s))
    ref = harness.primaries(victim)[0]
    (replica,) = harness.placement(ref).replicas
    harness.heartbeat(
        victim,
        parts=[
            PartProgress(ref=r, role=PartRole.PRIMARY, applied_seq=7, epoch=1, last_epoch=1)
            for r in harness.primaries(victim)
        ],
    )
    harness.heartbeat(
        replica,
        parts=[PartProgress(ref=ref, role=PartRole.REPLICA, applied_seq=0, epoch=0, last_epoch=0)],
    )
    survivors = [s for s in SERVERS if s != victim]
    for _ in range(30):
        harness.tick(100, alive=survivors)
        for server_id in survivors:
            for prepared in harness.prepared(server_id):
                if server_id != replica:  # the replica's answers are lost
                    harness.positions(
                        server_id, prepared.map_version, dict.fromkeys(prepared.parts, 7)
                    )
        if harness.events(FailoverCompleted):
            break
    (done,) = harness.events(FailoverCompleted)
    assert harness.events(PartsLost) == []
    assert ref in {p.ref for p in done.promotions}
    assert harness.placement(ref).primary == replica
    assert len(harness.map) == len(opened_refs(opened))


@pytest.mark.parametrize("answer", ["on time", "lost"])
def test_a_lost_part_ends_its_session_also_when_the_promotion_is_rebuilt(answer: str) -> None:
    """A promotion whose store answer was lost is built again on the reloaded map, where it
    landed (`carry_landed`): the ended sessions are still reported whole (lost parts, parts
    ended), removed from the map, and their clients told once each."""
    harness = ManagerHarness(replica_count=0, store_timeout_ms=300)
    harness.join(*SERVERS)
    for index in range(8):
        opened = harness.open_session(("auth", "cart", "feed", "chat"), client=f"c{index % 2}")
        assert opened is not None
    victim = "s1"
    victim_parts = harness.primaries(victim)
    on_victim = sorted({ref.session_id for ref in victim_parts})
    assert victim_parts
    held = HeldCommit(harness)
    if answer == "lost":
        harness.router.store_executors[MANAGER] = held
    survivors = [s for s in SERVERS if s != victim]
    harness.tick(700, alive=survivors)
    if answer == "lost":
        assert held.held
        held.held = []  # the commit landed; its answer never comes
    harness.tick(1_500, alive=survivors)
    (lost,) = harness.events(PartsLost)
    assert set(lost.parts) == set(victim_parts) and list(lost.sessions) == on_victim
    assert lost.parts_ended == 4 * len(on_victim) - len(victim_parts)
    assert not set(on_victim) & {key.session_id for key in harness.map.part_keys()}
    told = [c.session_id for client in ("c0", "c1") for c in harness.take(client, CloseSession)]
    assert sorted(told) == on_victim


def test_a_failover_gives_new_replicas_on_servers_whose_app_declares_the_part() -> None:
    """s5's app does not declare `notes` (an old version in a rolling upgrade). After s1 dies,
    the `notes` parts it held get their new replicas on s2 to s4, never on s5: a replica there,
    promoted at the next failure, would answer every call UNKNOWN_OP."""
    harness = ManagerHarness()
    servers = (*SERVERS, "s5")
    for server_id in servers:
        harness.announce(server_id, parts=("auth",) if server_id == "s5" else ("auth", "notes"))
    harness.tick(700, alive=servers)
    for _ in range(30):
        assert harness.open_session(("auth", "notes")) is not None
    notes = [key for key in harness.map.part_keys() if key.part == "notes"]
    held_by_s1 = [key for key in notes if "s1" in harness.map.lookup(key).servers]
    assert held_by_s1 and all("s5" not in harness.map.lookup(k).servers for k in notes)
    harness.tick(700, alive=servers[1:])
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s1"]
    harness.tick(1_000, alive=servers[1:])
    for key in held_by_s1:
        placement = harness.map.lookup(key)
        assert "s1" not in placement.servers
        assert set(placement.servers) <= {"s2", "s3", "s4"}, (key, placement)
