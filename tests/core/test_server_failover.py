"""Tests of the server side of failover: fencing, positions, promotion, divergence, step-down."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forehand.core._driver import ConnectionLost
from forehand.core._part import PartState
from forehand.core._server_config import ServerConfig
from forehand.core._server_events import (
    PartFenced,
    PrimaryInstalled,
    RarePathTaken,
    RequestExecuted,
    SnapshotInstalled,
    StaleEpochRefused,
)
from forehand.core.messages import (
    FailoverPrepared,
    HandoffAborted,
    HeartbeatReported,
    LogShipped,
    MapPublished,
    MapRequested,
    PartRole,
    PositionsReported,
)
from forehand.placement import PartKey, Placement
from forehand.wire import ResponseStatus

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, OTHER_SESSION, SESSION, Cluster, ref
else:
    from _server_helpers import MANAGER, OTHER_SESSION, SESSION, Cluster, ref

COUNTER = ref("counter")
LEDGER = ref("ledger")


def state(cluster: Cluster, server: str, part: str = "counter") -> PartState | None:
    """The state of `part` on `server`."""
    held = cluster.server(server).part(ref(part))
    return None if held is None else held.state


def test_failover_prepared_fences_and_reports_positions() -> None:
    """Replicas fence at the new version and report role, applied seq and epoch."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    for _ in range(4):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.prepare_failover([COUNTER], to=["s2", "s3"])
    reports = cluster.take(MANAGER, PositionsReported)
    assert sorted(report.server_id for report in reports) == ["s2", "s3"]
    for report in reports:
        assert report.map_version == cluster.map.version + 1
        (progress,) = report.parts
        assert (progress.ref, progress.role, progress.applied_seq) == (COUNTER, PartRole.REPLICA, 4)
    fenced = cluster.events("s2", PartFenced)
    assert [(event.fence_version, event.cause) for event in fenced] == [
        (cluster.map.version + 1, "failover_prepared")
    ]


def test_fenced_replica_refuses_the_old_primary_which_then_stops_writing() -> None:
    """After fencing, the old primary's log is refused and its next writes get TRY_AGAIN."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.prepare_failover([COUNTER], to=["s2"])
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    assert cluster.events("s2", StaleEpochRefused)
    replica = cluster.server("s2").part(COUNTER)
    assert replica is not None and replica.applied_seq == 1
    (fenced,) = cluster.events("s1", PartFenced)
    assert fenced.cause == "replica_fenced"
    cluster.responses()
    cluster.request("s1", "counter")
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.TRY_AGAIN


def test_a_primary_a_replica_fences_answers_its_held_replicated_writes_try_again() -> None:
    """A replicated write held for its replica's acknowledgement when the replica answers with
    a newer epoch (a failover replaced this primary, cut off from the manager) gets TRY_AGAIN at
    once: no replica will take it on this history. Before, it stayed held until the client's
    own timeout, though the client, sent back, would find the promoted replica (found live)."""
    cluster = Cluster()
    cluster.place("ledger", "s1", "s2")
    cluster.request("s1", "ledger")
    cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK]
    cluster.prepare_failover([LEDGER], to=["s2"])
    cluster.request("s1", "ledger")
    cluster.router.advance(ms=50)
    (fenced,) = cluster.events("s1", PartFenced)
    assert fenced.cause == "replica_fenced"
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.TRY_AGAIN


def test_promoted_replica_serves_and_ships_from_its_log() -> None:
    """The map naming a fenced replica primary promotes it; it ships to the other replica."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    for _ in range(3):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.router.remove("s1")
    cluster.prepare_failover([COUNTER], to=["s2", "s3"])
    cluster.place("counter", "s2", "s3")
    assert state(cluster, "s2") is PartState.PRIMARY
    (installed,) = cluster.events("s2", PrimaryInstalled)
    assert (installed.cause.value, installed.log_index) == ("failover", 3)
    assert installed.map_version == cluster.map.version
    cluster.request("s2", "counter", payload=b"10")
    (response,) = [r for r in cluster.responses() if r.request_id == 4]
    assert response.payload == b"13"
    cluster.router.advance(ms=50)
    replica = cluster.server("s3").part(COUNTER)
    assert replica is not None and (replica.applied_seq, replica.data) == (4, 13)
    assert replica.epoch == cluster.map.version


def test_retry_on_promoted_replica_is_answered_from_dedup() -> None:
    """A write acknowledged by the dead primary and retried at the new one executes once."""
    cluster = Cluster()
    cluster.place("ledger", "s1", "s2")
    request_id = cluster.request("s1", "ledger", payload=b"7")
    (acknowledged,) = cluster.responses()
    cluster.router.remove("s1")
    cluster.prepare_failover([LEDGER], to=["s2"])
    cluster.place("ledger", "s2", "s3")
    cluster.request("s2", "ledger", payload=b"7", request_id=request_id)
    cluster.router.advance(ms=50)
    (retry,) = cluster.responses()
    assert (retry.status, retry.payload) == (acknowledged.status, acknowledged.payload)
    assert cluster.events("s2", RequestExecuted) == []


def test_replicated_write_waits_for_the_new_replicas_after_promotion() -> None:
    """A promoted primary answers a retry of a replicated write only once a replica holds it."""
    cluster = Cluster()
    cluster.place("ledger", "s1", "s2", "s3")
    request_id = cluster.request("s1", "ledger", payload=b"7")
    cluster.responses()
    cluster.router.remove("s1")
    cut = cluster.router.partition("s2", "s3")
    cluster.prepare_failover([LEDGER], to=["s2"])
    cluster.place("ledger", "s2", "s3")
    cluster.request("s2", "ledger", payload=b"7", request_id=request_id)
    cluster.router.advance(ms=100)
    assert cluster.responses() == []
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    (retry,) = cluster.responses()
    assert retry.payload == b"7"


def promoted_while_its_replica_is_cut_off(
    servers: tuple[str, ...] = ("s1", "s2", "s3"), **overrides: Any
) -> tuple[Cluster, Any]:
    """Three `ledger` writes acknowledged on s1 (replicas s2, s3), s1 dead, s2 promoted while
    cut off from s3; the cut, to heal."""
    cluster = Cluster(servers, **overrides)
    cluster.place("ledger", "s1", "s2", "s3")
    for _ in range(3):
        cluster.request("s1", "ledger")
    cluster.router.advance(ms=50)
    assert len(cluster.responses()) == 3
    cluster.router.remove("s1")
    cut = cluster.router.partition("s2", "s3")
    cluster.prepare_failover([LEDGER], to=["s2"])
    cluster.place("ledger", "s2", "s3")
    return cluster, cut


def test_a_promoted_primary_serves_once_a_replica_holds_what_it_took_over() -> None:
    """Each acknowledged write was held by the dead primary and one replica at least: until a
    second copy of s2's history exists, requests wait at s2 (queued, in order), so that a second
    failure (a call that stalls each server it runs on, sent on to s2) cannot lose them. Once
    s3 acknowledged it, they run."""
    cluster, cut = promoted_while_its_replica_is_cut_off()
    cluster.request("s2", "ledger", payload=b"5")
    cluster.request("s2", "ledger", payload=b"2")
    cluster.router.advance(ms=100)
    assert cluster.responses() == []
    assert cluster.events("s2", RequestExecuted) == []
    assert cluster.server("s2").requests_waiting_count == 2
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    assert cluster.server("s3").part(LEDGER).applied_seq == 5  # type: ignore[union-attr]
    answered = cluster.responses()
    assert [(r.status, r.payload) for r in answered] == [
        (ResponseStatus.OK, b"8"),
        (ResponseStatus.OK, b"10"),
    ]


def test_a_promoted_primary_waits_for_its_replicas_failover_catch_up_ms_at_most() -> None:
    """No replica catches up (s3 stays cut off): at `failover_catch_up_ms` s2 runs what waited
    (a `replicated` write's answer then waits for a replica, as always)."""
    cluster, _ = promoted_while_its_replica_is_cut_off(failover_catch_up_ms=200)
    cluster.request("s2", "ledger", payload=b"5")
    cluster.router.advance(ms=150)
    assert cluster.events("s2", RequestExecuted) == []
    cluster.router.advance(ms=100)
    assert len(cluster.events("s2", RequestExecuted)) == 1
    assert "failover-catch-up-timed-out" in [e.name for e in cluster.events("s2", RarePathTaken)]


def test_what_waits_for_a_replica_is_sent_on_when_the_part_moves_again() -> None:
    """Another failover makes s3 the primary while requests wait at s2: they get TRY_AGAIN
    (their clients send them to s3) rather than wait at a server that no longer leads the
    part."""
    cluster, _ = promoted_while_its_replica_is_cut_off()
    cluster.request("s2", "ledger", payload=b"5")
    cluster.router.advance(ms=10)
    cluster.prepare_failover([LEDGER], to=["s2", "s3"])
    cluster.place("ledger", "s3", "s2")
    cluster.router.advance(ms=10)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.TRY_AGAIN]
    assert cluster.server("s2").requests_waiting_count == 0


def test_lagging_promoted_replica_overwrites_a_diverged_replica() -> None:
    """A replica ahead of the promoted primary (entries the new history lacks) is reset."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cut = cluster.router.partition("s1", "s3")
    for _ in range(3):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.router.remove("s1")
    cluster.router.heal(cut)
    cluster.prepare_failover([COUNTER], to=["s3"])
    cluster.place("counter", "s3", "s2")
    cluster.request("s3", "counter", payload=b"100")
    cluster.router.advance(ms=100)
    replica = cluster.server("s2").part(COUNTER)
    primary = cluster.server("s3").part(COUNTER)
    assert replica is not None and primary is not None
    assert (replica.data, replica.applied_seq) == (primary.data, primary.applied_seq) == (100, 1)
    assert cluster.events("s2", SnapshotInstalled)
    names = [event.name for event in cluster.events("s3", RarePathTaken)]
    assert "replica-history-diverged" in names


def test_primary_steps_down_for_a_newer_epoch() -> None:
    """A primary that receives a newer epoch's log becomes that primary's replica."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.router.send(
        "s2",
        "s1",
        LogShipped(
            ref=COUNTER, epoch=cluster.map.version + 5, prev_seq=1, entries=(), sealed=False
        ),
    )
    assert state(cluster, "s1") is PartState.REPLICA
    names = [event.name for event in cluster.events("s1", RarePathTaken)]
    assert "primary-stepped-down-for-newer-epoch" in names


def test_restarted_server_does_not_serve_a_part_it_lost() -> None:
    """A restarted server (incarnation 2) named primary by its first map waits for the part
    (RECEIVING, empty) and answers nothing from its empty state."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.responses()
    cluster.router.remove("s1")
    cluster.start("s1", incarnation=2)
    cluster.publish_full(to=["s1"])
    held = cluster.server("s1").part(COUNTER)
    assert held is not None and (held.state, held.applied_seq) == (PartState.RECEIVING, 0)
    cluster.request("s1", "counter")
    assert cluster.responses() == []
    names = [event.name for event in cluster.events("s1", RarePathTaken)]
    assert "primary-without-state-after-restart" in names


def test_restarted_replica_catches_up_from_the_primary() -> None:
    """A restarted replica starts empty and the primary ships it the whole part again."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    for _ in range(5):
        cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.router.remove("s2")
    cluster.start("s2", incarnation=2)
    cluster.router.disconnect("s1", "s2")
    cluster.publish_full(to=["s2"])
    cluster.router.advance(ms=600)
    replica = cluster.server("s2").part(COUNTER)
    assert replica is not None and (replica.data, replica.applied_seq) == (5, 5)


def test_a_replica_refuses_a_replaced_primary_its_map_moved_past() -> None:
    """A replica whose map names another primary (it may have restarted and forgotten a fence)
    refuses the old primary's log, without fencing anyone with a map version."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.router.advance(ms=50)
    # The map moves the part to s2; s1, cut off from the manager, never hears of it.
    cluster.place("counter", "s2", "s3", to=["s2", "s3"])
    cluster.request("s1", "counter", map_version=cluster.map.version - 1)
    cluster.router.advance(ms=50)
    refused = cluster.events("s3", StaleEpochRefused)
    assert [(event.peer, event.kind) for event in refused] == [("s1", "log")]
    held = cluster.server("s3").part(COUNTER)
    assert held is not None and held.applied_seq == 0 and held.fence_version == 0
    assert any(
        event.name == "shipment-from-replaced-primary"
        for event in cluster.events("s3", RarePathTaken)
    )


def test_a_stale_seal_does_not_make_a_replica_primary() -> None:
    """A sealed log that arrives after a map naming its sender primary leaves the receiver a
    replica: taking over would make two primaries."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    part = cluster.server("s1").part(COUNTER)
    assert part is not None
    seal = LogShipped(
        ref=COUNTER, epoch=part.epoch, prev_seq=part.applied_seq, entries=(), sealed=True
    )
    cluster.router.send("s1", "s2", seal)
    assert state(cluster, "s2") is PartState.REPLICA and state(cluster, "s1") is PartState.PRIMARY
    assert any(
        event.name == "stale-seal-not-taken-over" for event in cluster.events("s2", RarePathTaken)
    )


def test_a_restarted_server_never_serves_a_part_it_should_hold_from_an_empty_state() -> None:
    """Restarted, a primary waits for its part on the first map and on every later delta that
    still names it primary, never installing it: an empty state must not answer for
    acknowledged writes."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.start("s1", seed=99, incarnation=2)
    cluster.publish_full(to=["s1"])
    cluster.place("counter", "s1", "s3")
    held = cluster.server("s1").part(COUNTER)
    assert held is not None and (held.state, held.applied_seq) == (PartState.RECEIVING, 0)
    installed = [e for e in cluster.events("s1", PrimaryInstalled) if e.ref == COUNTER]
    assert len(installed) == 1
    rare = [event.name for event in cluster.events("s1", RarePathTaken)]
    assert rare.count("primary-without-state-after-restart") == 1


def test_a_restarted_primary_that_no_seal_reaches_reports_it_and_a_failover_settles() -> None:
    """Two implicit moves in a row (s1 to s2, whose seal is lost, then on to a restarted s3)
    leave no holder to hand the part over: s3 waits RECEIVING, reports HandoffAborted at the
    deadline, and the failover that follows keeps s1's write (sim seed 7600466)."""
    cluster = Cluster(handoff_deadline_ms=300)
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cut = cluster.router.partition("s1", "s2")
    cluster.place("counter", "s2", "s1", "s3", to=["s1", "s2"])
    cluster.start("s3", seed=99, incarnation=2)
    cluster.place("counter", "s3", "s1", "s2", to=["s1", "s2"])
    cluster.publish_full(to=["s3"])
    assert (state(cluster, "s1"), state(cluster, "s2")) == (PartState.REPLICA, PartState.REPLICA)
    assert state(cluster, "s3") is PartState.RECEIVING
    cluster.take(MANAGER, HandoffAborted)
    cluster.responses()
    cluster.request("s3", "counter")
    cluster.router.advance(ms=300)
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.TRY_AGAIN
    (aborted,) = [m for m in cluster.take(MANAGER, HandoffAborted) if m.server_id == "s3"]
    assert (aborted.handoff_id, aborted.parts) == (0, (COUNTER,))
    # The manager's answer: fence the candidates, then promote the longest log (s1's).
    cluster.router.heal(cut)
    cluster.prepare_failover([COUNTER], to=["s1", "s2", "s3"])
    cluster.place("counter", "s1", "s2", "s3")
    assert state(cluster, "s1") is PartState.PRIMARY
    cluster.request("s1", "counter")
    (ok,) = cluster.responses()
    assert (ok.status, ok.payload) == (ResponseStatus.OK, b"2")
    cluster.router.advance(ms=600)
    copy = cluster.server("s3").part(COUNTER)
    assert copy is not None and (copy.state, copy.data) == (PartState.REPLICA, 2)


def test_a_primary_that_hears_it_was_declared_dead_hands_nothing_over() -> None:
    """A primary cut off from the manager misses the failover that replaced it, and learns of
    it at its readmission from the map that marks it dead. It used to take that map for a move
    of a live primary's part and ran the source's side of a handoff with its stale log; the copy
    it kept then became primary again in a later handoff to it, losing what the promoted
    replica had acknowledged since (campaign seed 16900996). It now lets the part go."""
    from forehand.placement import PartKey, Placement

    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.router.advance(ms=20)
    cluster.request("s1", "counter")
    cluster.responses()
    cluster.router.advance(ms=50)
    cluster.router.take("s1", LogShipped)
    key = PartKey(session_id=ref("counter").session_id, part="counter")
    operations = [
        *cluster.map.mark_server_dead("s1").operations,
        *cluster.map.override_placement(key, Placement(primary="s2", replicas=("s3",))).operations,
    ]
    cluster.publish(*operations)
    cluster.router.advance(ms=2_000)
    sealed = [
        m
        for m in cluster.router.sent(LogShipped, source="s1")
        if isinstance(m, LogShipped) and m.sealed
    ]
    assert sealed == []
    assert state(cluster, "s1") in (None, PartState.REPLICA)


def test_a_fenced_primary_catching_up_keeps_a_part_the_failover_gives_back() -> None:
    """A primary the manager's messages no longer reach (a one-way cut) misses a drain's move
    of its part and the failover that the aborted handoff fell back to, which keeps it primary
    (its history is ahead). A replica's refusal fenced it at the failover's version meanwhile.
    When the cut heals it gets both versions in a burst: the move must not drop its copy before
    the failover's version gives the part back, or the `async` writes it acknowledged during
    the cut are lost (`forehand sim --scenario drain-one-way --seed 17600000`)."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    # The drain moves the part to s2 (s1 not kept as a replica); s1 never hears of it.
    moved = cluster.place("counter", "s2", "s3", to=["s2", "s3"])
    for _ in range(2):
        cluster.request("s1", "counter", map_version=cluster.map.version - 1)
        cluster.router.advance(ms=50)
    # The handoff fails over: s2 and s3 are fenced, s1's next write fences it too.
    cluster.prepare_failover([COUNTER], to=["s2", "s3"])
    cluster.request("s1", "counter", map_version=cluster.map.version - 1)
    cluster.router.advance(ms=50)
    part = cluster.server("s1").part(COUNTER)
    assert part is not None and part.fence_version == cluster.map.version + 1
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK] * 4
    # The failover keeps s1 (its last heartbeat showed it ahead); then the cut heals.
    kept = cluster.place("counter", "s1", "s2", "s3", to=["s2", "s3"])
    cluster.router.send(MANAGER, "s1", moved)
    assert state(cluster, "s1") is PartState.PRIMARY
    cluster.router.send(MANAGER, "s1", kept)
    assert cluster.server("s1").map_version == cluster.map.version
    part = cluster.server("s1").part(COUNTER)
    assert part is not None and (part.state, part.applied_seq) == (PartState.PRIMARY, 4)
    installed = [e for e in cluster.events("s1", PrimaryInstalled) if e.ref == COUNTER]
    assert [(e.cause.value, e.log_index) for e in installed][-1] == ("failover", 4)
    cluster.request("s1", "counter")
    (ok,) = cluster.responses()
    assert (ok.status, ok.payload) == (ResponseStatus.OK, b"5")
    cluster.router.advance(ms=100)
    for replica in ("s2", "s3"):
        copy = cluster.server(replica).part(COUNTER)
        assert copy is not None and (copy.state, copy.data) == (PartState.REPLICA, 5)


def test_a_source_caught_up_in_a_burst_takes_back_a_part_the_failover_kept_unfenced() -> None:
    """A drain moves s1's part while the manager's messages to s1 are lost (a one-way cut); the
    handoff fails over and the failover keeps s1 (no candidate wrote at the move's version), but
    its fence never reaches s1. When the cut heals, s1 gets the move (an implicit run to s2) and
    then the failover's map, which names it primary again: it takes the part back at once. It
    used to wait HANDING_OFF for a seal the fenced target refuses; the drain's next move left it
    out, and the run's abort dropped the only copy of the `async` writes s1 acknowledged during
    the cut (`forehand sim --scenario drain-one-way --seed 17700316`)."""
    cluster = Cluster(handoff_deadline_ms=300)
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    held = cluster.map.version
    moved = cluster.place("counter", "s2", "s3", to=["s2", "s3"])
    for _ in range(2):
        cluster.request("s1", "counter", map_version=held)
        cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK] * 3
    cluster.prepare_failover([COUNTER], to=["s2", "s3"])
    kept = cluster.place("counter", "s1", "s2", "s3", to=["s2", "s3"])
    # The cut heals: both versions reach s1 back to back, the target's refusal of the seal
    # still in flight (held back here by cutting s1 from s2).
    in_flight = cluster.router.partition("s1", "s2")
    cluster.router.send(MANAGER, "s1", moved)
    assert state(cluster, "s1") is PartState.HANDING_OFF
    cluster.router.send(MANAGER, "s1", kept)
    part = cluster.server("s1").part(COUNTER)
    assert part is not None
    assert (part.state, part.epoch, part.applied_seq) == (PartState.PRIMARY, kept.map_version, 3)
    installed = [e for e in cluster.events("s1", PrimaryInstalled) if e.ref == COUNTER]
    assert [(e.cause.value, e.log_index) for e in installed][-1] == ("reinstated", 3)
    cluster.router.heal(in_flight)
    cluster.router.advance(ms=100)
    # The drain moves the part again: s1 hands it over with every write it acknowledged.
    cluster.place("counter", "s2", "s3")
    cluster.router.advance(ms=500)
    target = cluster.server("s2").part(COUNTER)
    assert target is not None and (target.state, target.applied_seq) == (PartState.PRIMARY, 3)
    cluster.request("s2", "counter")
    (ok,) = cluster.responses()
    assert (ok.status, ok.payload) == (ResponseStatus.OK, b"4")


def test_a_source_a_failover_replaced_does_not_take_back_a_part_moved_back_to_it() -> None:
    """A source cut off from everyone gets, in one burst, the move of its part to s4, the
    failover that lists it dead and promotes s4, its readmission and a move of the part back to
    it. That last map names it primary right after the run's target, but its log is a replaced
    primary's (here with a write no replica took): it must wait for s4's seal, not take the part
    back as if a failover had kept it (`forehand sim --scenario all --seed 326`)."""
    from forehand.placement import PartKey, Placement

    cluster = Cluster(("s1", "s2", "s3", "s4"))
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    held = cluster.map.version
    others = ["s2", "s3", "s4"]
    cuts = [cluster.router.partition("s1", peer) for peer in others]
    cluster.request("s1", "counter", map_version=held)
    cluster.router.advance(ms=50)
    moved = cluster.place("counter", "s4", "s2", "s3", to=others)
    cluster.prepare_failover([COUNTER], to=others)
    key = PartKey(session_id=COUNTER.session_id, part="counter")
    failed = cluster.publish(
        *cluster.map.mark_server_dead("s1").operations,
        *cluster.map.override_placement(
            key, Placement(primary="s4", replicas=("s2", "s3"))
        ).operations,
        to=others,
    )
    entry = cluster.map.server("s1")
    readmitted = cluster.publish(
        *cluster.map.leave_server("s1").operations,
        *cluster.map.join_server(server_id="s1", address=entry.address, zone=entry.zone).operations,
        to=others,
    )
    back = cluster.place("counter", "s1", "s2", "s3", to=others)
    for message in (moved, failed, readmitted, back):
        cluster.router.send(MANAGER, "s1", message)
    assert cluster.server("s1").map_version == back.map_version
    assert state(cluster, "s1") is not PartState.PRIMARY
    installed = [e for e in cluster.events("s1", PrimaryInstalled) if e.ref == COUNTER]
    assert [e.cause.value for e in installed] == ["initial"]
    for cut in cuts:
        cluster.router.heal(cut)


def test_a_target_whose_fence_a_map_settled_before_the_move_does_not_fence_its_source() -> None:
    """A drain moves the part off s1, which the manager's messages no longer reach; the
    handoff fails over, the failover keeps s1 (its history ahead), and the drain moves the part
    again. The target, fenced by that failover before the move, used to refuse s1's shipments
    at its old epoch with the move's version: s1, fenced there, took the move for a failover
    that replaced it when it caught up and dropped its part, losing the `async` writes it had
    acknowledged (`forehand sim --scenario drain-one-way --seed 17600018`). Fenced only by the
    failover, it settles at the failover's map and hands the part over at the move's."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    held = cluster.map.version
    behind = [cluster.place("counter", "s2", "s3", to=["s2", "s3"])]
    cluster.prepare_failover([COUNTER], to=["s2", "s3"])
    behind.append(cluster.place("counter", "s1", "s2", "s3", to=["s2", "s3"]))
    kept = cluster.map.version
    behind.append(cluster.place("counter", "s2", "s3", to=["s2", "s3"]))
    assert state(cluster, "s2") is PartState.RECEIVING
    cluster.request("s1", "counter", map_version=held)
    cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK] * 2
    part = cluster.server("s1").part(COUNTER)
    assert part is not None and part.fence_version == kept
    # The cut heals: s1 gets the three versions in a burst and hands the part over.
    for message in behind:
        cluster.router.send(MANAGER, "s1", message)
    cluster.router.advance(ms=50)
    target = cluster.server("s2").part(COUNTER)
    assert target is not None and (target.state, target.applied_seq) == (PartState.PRIMARY, 2)
    cluster.request("s2", "counter")
    (ok,) = cluster.responses()
    assert (ok.status, ok.payload) == (ResponseStatus.OK, b"3")


def test_a_target_past_its_deadline_still_does_not_fence_its_source() -> None:
    """The target of a move s1 has not heard of (a one-way cut) reports its missed deadline and
    waits RECEIVING for the manager. It used to refuse s1's shipments from then on, fencing s1
    at the move's version: catching up, s1 took the move for a failover that replaced it and
    dropped its part with the `async` writes it had acknowledged (`forehand sim --scenario
    drain-one-way --seed 17600012`). It ignores them until a failover fences it, and s1, once
    it hears of the move, hands the part over."""
    cluster = Cluster(handoff_deadline_ms=300)
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    held = cluster.map.version
    moved = cluster.place("counter", "s2", "s3", to=["s2", "s3"])
    cluster.router.advance(ms=400)
    (aborted,) = [m for m in cluster.take(MANAGER, HandoffAborted) if m.server_id == "s2"]
    assert aborted.parts == (COUNTER,)
    assert state(cluster, "s2") is PartState.RECEIVING
    for _ in range(2):
        cluster.request("s1", "counter", map_version=held)
        cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK] * 3
    part = cluster.server("s1").part(COUNTER)
    assert part is not None and part.fence_version == 0
    cluster.router.send(MANAGER, "s1", moved)
    cluster.router.advance(ms=50)
    target = cluster.server("s2").part(COUNTER)
    assert target is not None and (target.state, target.applied_seq) == (PartState.PRIMARY, 3)


def test_a_fenced_primary_cut_off_from_the_manager_learns_the_map_from_its_fencer() -> None:
    """A primary whose replica refused its log (fenced by a failover it never heard of) asks
    that replica for the map when the manager's does not come within a retry interval: the
    failover's map kept it primary, so it serves again at the new epoch. Its heartbeats still
    report the manager's newest map it got itself, so the manager goes on seeing it as not
    hearing. Before, it answered TRY_AGAIN until its manager link healed (`drain-one-way`, seed
    17,600,251: about 9 s)."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    heard = cluster.map.version
    cluster.prepare_failover([COUNTER], to=["s2"])
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    (fenced,) = cluster.events("s1", PartFenced)
    assert fenced.cause == "replica_fenced"
    # The promotion keeps s1 primary; its map reaches every server but s1.
    cluster.place("ledger", "s2", "s3", to=["s2", "s3"])
    assert cluster.map.version == fenced.fence_version
    cluster.responses()
    cluster.router.advance(ms=ServerConfig(server_id="s1").map_request_retry_ms + 100)
    s1 = cluster.server("s1")
    assert s1.map_version == fenced.fence_version
    assert "map-learned-from-peer" in rare_paths(cluster, "s1")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    (served,) = cluster.responses()
    assert served.status is ResponseStatus.OK
    part = s1.part(COUNTER)
    assert part is not None and part.epoch == fenced.fence_version
    cluster.router.advance(ms=ServerConfig(server_id="s1").heartbeat_interval_ms)
    beat = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"][-1]
    assert (beat.map_version, beat.manager_map_version) == (fenced.fence_version, heard)


def test_a_peer_map_not_asked_for_is_ignored() -> None:
    """A server takes a map from a peer only as the answer it asked for, after a refusal fenced
    it: anything else from a peer changes nothing."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    held = cluster.server("s1").map_version
    message = cluster.place("ledger", "s2", "s3", to=["s2"])
    cluster.router.send(
        "s2",
        "s1",
        MapPublished(map_version=message.map_version, base_version=0, body=cluster.map.encode()),
    )
    assert cluster.server("s1").map_version == held
    assert "peer-map-ignored" in rare_paths(cluster, "s1")


def test_a_failover_prepared_behind_the_map_held_does_not_fence() -> None:
    """A FailoverPrepared whose failover's map this server already holds (learned from a peer
    while the manager's message was delayed) fences nothing: fenced now, the part would wait
    for a map after the one that settled it."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.router.send(
        MANAGER, "s1", FailoverPrepared(map_version=cluster.map.version, parts=(COUNTER,))
    )
    assert cluster.events("s1", PartFenced) == []
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK]


def fence_s1_by_s2(cluster: Cluster) -> None:
    """s1 writes the counter, s2 (its replica) is fenced by a failover s1 does not hear of,
    and s1's next write is refused by s2, which fences the part on s1."""
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.prepare_failover([COUNTER], to=["s2"])
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)


def rare_paths(cluster: Cluster, server: str) -> list[str]:
    """The rare paths `server` took so far."""
    return [event.name for event in cluster.events(server, RarePathTaken)]


def test_a_refusal_at_a_version_the_map_held_reaches_waits_for_the_next_map_from_the_peer() -> None:
    """A primary whose map, come whole past the failover's version, still names it primary, is
    refused by a replica at a version that map reaches: it cannot tell what the fence was for
    (a failover that kept it, or a copy that cannot vouch for it), so the part waits for the
    next map, as for the manager's; cut off from the manager, it asks the peer for a map newer
    than its own, which settles the part at a new epoch."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.prepare_failover([COUNTER], to=["s2"])
    cluster.place("ledger", "s2", "s3", to=["s2", "s3"])
    cluster.publish_full(to=["s1"])
    held = cluster.map.version
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    (fenced,) = cluster.events("s1", PartFenced)
    assert fenced.fence_version == held
    cluster.place("other", "s2", "s3", to=["s2", "s3"])
    cluster.responses()
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.TRY_AGAIN]
    cluster.router.advance(ms=ServerConfig(server_id="s1").map_request_retry_ms)
    assert cluster.server("s1").map_version == held + 1
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK]
    part = cluster.server("s1").part(COUNTER)
    assert part is not None and part.epoch == held + 1


def test_a_peer_answers_with_the_managers_deltas_it_kept_or_not_at_all() -> None:
    """A server asked by a peer for the maps after the peer's version sends the manager's deltas
    from that version on, when it kept them all (`map_deltas_kept_max`), and nothing otherwise:
    a whole map would skip versions, which hides a failover that kept the asker primary."""
    cluster = Cluster(map_deltas_kept_max=1)
    base = cluster.map.version
    cluster.place("counter", "s1", "s2")
    cluster.place("ledger", "s1", "s2")
    cluster.router.send("s1", "s2", MapRequested(server_id="s1", map_version=base + 1))
    answers = [
        message
        for _, source, destination, message in cluster.router.trace
        if (source, destination) == ("s2", "s1") and isinstance(message, MapPublished)
    ]
    assert [(m.base_version, m.map_version) for m in answers] == [(base + 1, base + 2)]
    cluster.router.send("s1", "s2", MapRequested(server_id="s1", map_version=base))
    assert "map-chain-not-kept-for-peer" in rare_paths(cluster, "s2")


def test_a_fenced_primary_gets_the_failovers_map_from_the_peer_it_asked_as_soon_as_it_has_it() -> (
    None
):
    """Cut off from the manager, s1 is fenced by s2's refusal and asks s2 for its maps before
    the failover's version is committed: s2 has nothing newer yet. When the manager's next
    delta reaches s2, s2 sends it on to s1 at once, and s1 serves again then, not a whole
    `map_request_retry_ms` later at its next ask (`drain-one-way` seed 17,600,251: a write
    outlived its client's deadline by that wait)."""
    retry_ms = ServerConfig(server_id="s1").map_request_retry_ms
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    held = cluster.map.version
    fence_s1_by_s2(cluster)
    assert cluster.events("s1", PartFenced)
    cluster.router.advance(ms=retry_ms)
    assert "map-asked-of-peer" in rare_paths(cluster, "s1")
    assert cluster.server("s1").map_version == held
    cluster.place("other", "s2", "s3", to=["s2", "s3"])
    cluster.router.advance(ms=50)
    assert cluster.server("s1").map_version == held + 1
    assert "map-sent-to-follower" in rare_paths(cluster, "s2")
    cluster.responses()
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    assert [r.status for r in cluster.responses()] == [ResponseStatus.OK]


def test_a_peer_that_asked_for_maps_gets_the_next_deltas_for_one_retry_interval() -> None:
    """s2, asked by s1 for the maps after its own (none newer yet), sends s1 each delta the
    manager sends it for `map_request_retry_ms` after the ask, and none after that."""
    retry_ms = ServerConfig(server_id="s2").map_request_retry_ms
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    held = cluster.map.version
    cluster.router.send("s1", "s2", MapRequested(server_id="s1", map_version=held))
    cluster.place("ledger", "s2", "s3", to=["s2", "s3"])
    cluster.router.advance(ms=retry_ms + 1)
    cluster.place("other", "s2", "s3", to=["s2", "s3"])
    sent = [
        (message.base_version, message.map_version)
        for _, source, destination, message in cluster.router.trace
        if (source, destination) == ("s2", "s1") and isinstance(message, MapPublished)
    ]
    assert sent == [(held, held + 1)]


def test_peer_maps_that_move_a_part_this_server_serves_are_not_taken() -> None:
    """A peer's chain that moves a part this server is PRIMARY of elsewhere is not adopted: a
    handoff or step-down started from maps the manager's fences cannot follow lost writes
    (`drain-one-way`, seeds 17,600,026 and 17,600,260). The server waits for the manager."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    cluster.place("ledger", "s1", "s3")
    held = cluster.map.version
    fence_s1_by_s2(cluster)
    (fenced,) = cluster.events("s1", PartFenced)
    cluster.place("ledger", "s3", "s1", to=["s2", "s3"])
    assert cluster.map.version == fenced.fence_version
    cluster.router.advance(ms=ServerConfig(server_id="s1").map_request_retry_ms + 100)
    assert "peer-maps-not-taken" in rare_paths(cluster, "s1")
    assert cluster.server("s1").map_version == held


def test_a_catching_up_part_moved_on_runs_its_requests_in_call_order() -> None:
    """A waits at s2 (catching up) when a map moves the part on to s4 and B arrives: B queues
    behind A, and s4 runs A then B. Before, B was forwarded at once and ran first."""
    cluster, _ = promoted_while_its_replica_is_cut_off(("s1", "s2", "s3", "s4"))
    cluster.router.advance(ms=10)
    first = cluster.request("s2", "ledger", payload=b"5")
    cluster.router.advance(ms=10)

    def seal_delayed(source: str, destination: str, message: object) -> bool:
        return (source, destination) == ("s2", "s4") and isinstance(message, LogShipped)

    cluster.router.filters.append(seal_delayed)
    cluster.place("ledger", "s4", "s2", "s3")
    cluster.router.advance(ms=10)
    second = cluster.request("s2", "ledger", payload=b"100")
    cluster.router.advance(ms=1_200)
    cluster.router.filters.remove(seal_delayed)
    cluster.router.advance(ms=1_500)
    assert [e.request_id for e in cluster.events("s4", RequestExecuted)] == [first, second]


def test_a_catching_up_part_fenced_answers_what_waited_at_once() -> None:
    """A newer failover fences s2 while a request waits there: it gets TRY_AGAIN at once, as
    the held answers and the later requests do, not at the end of `failover_catch_up_ms`."""
    cluster, _ = promoted_while_its_replica_is_cut_off()
    waiting = cluster.request("s2", "ledger", payload=b"5")
    cluster.router.advance(ms=10)
    cluster.prepare_failover([LEDGER], to=["s2"])
    cluster.router.advance(ms=10)
    later = cluster.request("s2", "ledger", payload=b"6")
    cluster.router.advance(ms=10)
    assert [(r.request_id, r.status) for r in cluster.responses()] == [
        (waiting, ResponseStatus.TRY_AGAIN),
        (later, ResponseStatus.TRY_AGAIN),
    ]


def test_a_promoted_primary_whose_replicas_are_all_down_does_not_wait_for_them() -> None:
    """s3, s2's only replica, crashes and its connection is lost: no acknowledgement can come
    before `failover_catch_up_ms`, so the request runs at once (its `replicated` answer waits
    for a replica, as always)."""
    cluster, cut = promoted_while_its_replica_is_cut_off()
    cluster.router.remove("s3")
    cluster.router.heal(cut)
    cluster.router.send("s3", "s2", ConnectionLost(peer="s3", reason="reset"))
    cluster.request("s2", "ledger", payload=b"5")
    cluster.router.advance(ms=10)
    assert len(cluster.events("s2", RequestExecuted)) == 1


def test_every_part_a_failover_gave_a_server_waits_until_all_have_a_replica_caught_up() -> None:
    """s2 takes over two `ledger` parts from s1. The first's replica s3 catches up at once; the
    second's, s4, is cut off. A request to the first still waits: run, it might stall s2 (a
    call that blocks every server it runs on is sent on to the promoted replica) and lose the
    second's acknowledged writes, which s2 alone holds (`forehand sim --scenario stall --seed
    1478`). Once s4 caught up too, it runs."""
    cluster = Cluster(servers=("s1", "s2", "s3", "s4"))
    cluster.place("ledger", "s1", "s2", "s3")
    cluster.place("ledger", "s1", "s2", "s4", session=OTHER_SESSION)
    for session in (SESSION, OTHER_SESSION):
        for _ in range(3):
            cluster.request("s1", "ledger", session=session)
    cluster.router.advance(ms=50)
    assert len(cluster.responses()) == 6
    cluster.router.remove("s1")
    cut = cluster.router.partition("s2", "s4")
    other = ref("ledger", OTHER_SESSION)
    cluster.prepare_failover([LEDGER, other], to=["s2"])
    # One failover promotes both in one map version.
    promotions = [
        operation
        for session, replica in ((SESSION, "s3"), (OTHER_SESSION, "s4"))
        for operation in cluster.map.override_placement(
            PartKey(session_id=session, part="ledger"),
            Placement(primary="s2", replicas=(replica,)),
        ).operations
    ]
    cluster.publish(*promotions)
    cluster.router.advance(ms=50)
    assert cluster.server("s3").part(LEDGER).applied_seq == 3  # type: ignore[union-attr]
    cluster.request("s2", "ledger", payload=b"5")
    cluster.router.advance(ms=100)
    assert cluster.responses() == []
    assert cluster.events("s2", RequestExecuted) == []
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    assert [(r.status, r.payload) for r in cluster.responses()] == [(ResponseStatus.OK, b"8")]
