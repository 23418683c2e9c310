"""Review tests of the server's handoff procedure: each failed on the code before its fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from forehand.core._part import PartState
from forehand.core._server_events import ClientHandedOff, HandoffStepMissed
from forehand.core.messages import (
    HandoffAborted,
    HandoffCompleted,
    LogShipped,
    PartRef,
    ResponseForwarded,
)
from forehand.placement import PartKey, Placement
from forehand.wire import Handoff, ResponseStatus

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, SESSION, Cluster, ref
else:
    from _server_helpers import MANAGER, SESSION, Cluster, ref

COUNTER = ref("counter")
LEDGER = ref("ledger")


def state(cluster: Cluster, server: str, part: PartRef) -> PartState | None:
    """The state of `part` on `server` (None when not held)."""
    held = cluster.server(server).part(part)
    return None if held is None else held.state


def place(
    cluster: Cluster, placements: dict[str, tuple[str, ...]], *, to: list[str] | None = None
) -> None:
    """Pin each named part on (primary, *replicas), all in one map version, sent to `to`."""
    operations = [
        operation
        for name, (primary, *replicas) in placements.items()
        for operation in cluster.map.override_placement(
            PartKey(session_id=SESSION, part=name),
            Placement(primary=primary, replicas=tuple(replicas)),
        ).operations
    ]
    cluster.publish(*operations, to=to)


def moved_together(
    cluster: Cluster, *, source: str, target: str, replicas: tuple[str, ...]
) -> None:
    """Place `counter` and `ledger` on `source`, then hand both to `target` in one handoff whose
    HandoffAssigned reaches the servers before its map (so the source runs both parts as one)."""
    cluster.place("counter", source, *replicas)
    cluster.place("ledger", source, *replicas)
    cluster.request(source, "counter")
    cluster.request(source, "ledger")
    cluster.router.advance(ms=50)
    others = tuple(server for server in (source, *replicas) if server != target)
    place(cluster, {"counter": (target, *others), "ledger": (target, *others)}, to=[])
    cluster.assign_handoff([COUNTER, LEDGER], source=source, target=target)
    cluster.publish_full()


def test_failover_of_one_backup_part_leaves_the_others_of_its_handoff_a_backup_period() -> None:
    """A failover promoting one of a handoff's backups ends only that part's share of the run:
    the other backup, failed over elsewhere, still ends its backup period (demoted, reported),
    instead of staying BACKUP for ever with no run."""
    cluster = Cluster(("s1", "s2", "s3"), handoff_notify_jitter_ms=0, backup_period_ms=500)
    moved_together(cluster, source="s1", target="s2", replicas=("s2", "s3"))
    assert state(cluster, "s1", COUNTER) is PartState.BACKUP
    assert state(cluster, "s1", LEDGER) is PartState.BACKUP
    cluster.take(MANAGER, HandoffCompleted)
    cluster.router.remove("s2")
    cluster.prepare_failover([COUNTER, LEDGER], to=["s1", "s3"])
    place(cluster, {"counter": ("s1", "s3"), "ledger": ("s3", "s1")})
    assert state(cluster, "s1", COUNTER) is PartState.PRIMARY
    assert state(cluster, "s3", LEDGER) is PartState.PRIMARY
    cluster.router.advance(ms=600)
    assert state(cluster, "s1", LEDGER) is PartState.REPLICA
    completed = [m for m in cluster.take(MANAGER, HandoffCompleted) if m.server_id == "s1"]
    assert [(m.handoff_id, m.parts) for m in completed] == [(77, (LEDGER,))]


def test_an_earlier_backup_period_does_not_end_a_later_handoffs_backup() -> None:
    """A part handed back to its old source and handed off again within the first backup
    period stays BACKUP for its second handoff's whole backup period: the first run's timer
    ends only the parts still in that run."""
    cluster = Cluster(("s1", "s2", "s3"), handoff_notify_jitter_ms=0, backup_period_ms=1000)
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.place("counter", "s2", "s1", "s3")
    cluster.assign_handoff([COUNTER], source="s1", target="s2", handoff_id=77)
    cluster.router.advance(ms=0)
    assert state(cluster, "s1", COUNTER) is PartState.BACKUP
    cluster.place("counter", "s1", "s2", "s3")
    assert state(cluster, "s1", COUNTER) is PartState.PRIMARY
    cluster.router.advance(ms=300)
    cluster.place("counter", "s3", "s1", "s2")
    cluster.assign_handoff([COUNTER], source="s1", target="s3", handoff_id=78)
    cluster.router.advance(ms=0)
    assert state(cluster, "s1", COUNTER) is PartState.BACKUP
    cluster.take(MANAGER, HandoffCompleted)
    cluster.router.advance(ms=800)  # past the first backup period, within the second
    assert state(cluster, "s1", COUNTER) is PartState.BACKUP
    cluster.router.advance(ms=300)
    assert state(cluster, "s1", COUNTER) is PartState.REPLICA
    reports = [m.handoff_id for m in cluster.take(MANAGER, HandoffCompleted) if m.server_id == "s1"]
    assert sorted(reports) == [77, 78]


def test_a_client_that_writes_before_its_jittered_notification_gets_one_handoff() -> None:
    """A client attached at step 4 whose request reaches the backup before its jittered HANDOFF
    is due gets the frame then, and not a second time when the jitter runs out."""
    cluster = Cluster(handoff_notify_jitter_ms=1000, backup_period_ms=5000)
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.place("counter", "s2", "s1", "s3")
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    assert state(cluster, "s1", COUNTER) is PartState.BACKUP
    assert cluster.take("c1", Handoff) == []
    cluster.request("s1", "counter", map_version=cluster.map.version - 1)
    assert len(cluster.take("c1", Handoff)) == 1
    cluster.router.advance(ms=1000)
    assert cluster.take("c1", Handoff) == []
    assert len(cluster.events("s1", ClientHandedOff)) == 1


def test_an_answer_from_another_server_does_not_cancel_a_forward() -> None:
    """A ResponseForwarded from a server the request was not forwarded to is ignored without
    forgetting the forward, so the target's own answer still reaches the client."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.responses()
    drops = {"left": 1}

    def drop_first_seal(source: str, destination: str, message: object) -> bool:
        if isinstance(message, LogShipped) and message.sealed and drops["left"]:
            drops["left"] -= 1
            return True
        return False

    cluster.router.filters.append(drop_first_seal)
    cluster.place("counter", "s2", "s1", "s3")
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    assert state(cluster, "s1", COUNTER) is PartState.HANDING_OFF
    request_id = cluster.request("s1", "counter", payload=b"5")
    assert cluster.responses() == []  # forwarded to s2, queued there until the seal
    stray = ResponseForwarded(
        client="c1",
        request_id=request_id,
        session_id=SESSION,
        status=int(ResponseStatus.OK),
        map_version=cluster.map.version,
        payload=b"999",
        log_index=9,
    )
    cluster.router.send("s3", "s1", stray)
    assert cluster.responses() == []
    cluster.router.advance(ms=600)
    assert state(cluster, "s2", COUNTER) is PartState.PRIMARY
    (answer,) = cluster.responses()
    assert (answer.request_id, answer.status, answer.payload) == (
        request_id,
        ResponseStatus.OK,
        b"6",
    )


def test_a_target_that_skipped_the_moving_map_version_takes_the_sealed_log() -> None:
    """A target that learns of the move from a full map newer than the move (it missed the
    delta) still accepts the source's sealed log, stamped with the version that moved the part:
    the handoff completes instead of aborting into a failover."""
    cluster = Cluster(("s1", "s2", "s3"))
    cluster.place("counter", "s1", "s2", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cut = cluster.router.partition("s1", "s2")
    cluster.place("counter", "s2", "s1", "s3", to=["s1", "s3"])
    moved_at = cluster.map.version
    cluster.place("ledger", "s3", "s1", "s2", to=["s1", "s3"])
    cluster.publish_full(to=["s2"])
    assert state(cluster, "s2", COUNTER) is PartState.RECEIVING
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    assert state(cluster, "s1", COUNTER) is PartState.BACKUP
    assert state(cluster, "s2", COUNTER) is PartState.PRIMARY
    target = cluster.server("s2").part(COUNTER)
    assert target is not None and (target.data, target.epoch) == (1, moved_at)
    assert cluster.events("s1", HandoffStepMissed) == []


def test_a_target_that_cannot_hold_a_part_does_not_report_it_taken() -> None:
    """A target at `parts_max` that cannot create a part it is handed does not report the
    handoff completed (the manager would take it for the part's new primary); the part waits
    for its sealed log like any other and the deadline reports the handoff aborted."""
    cluster = Cluster(("s1", "s2", "s3"))
    cluster.start("s2", parts_max=1)
    cluster.publish_full(to=["s2"])
    cluster.place("ledger", "s2", "s3")
    cluster.place("counter", "s1", "s3")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    cluster.place("counter", "s2", "s1", "s3", to=[])
    cluster.assign_handoff([COUNTER], source="s1", target="s2", deadline_ms=300)
    cluster.publish_full()
    assert cluster.server("s2").part(COUNTER) is None
    cluster.router.advance(ms=300)
    reports = cluster.take(MANAGER, object)
    assert not [m for m in reports if isinstance(m, HandoffCompleted) and m.server_id == "s2"]
    aborted = [m for m in reports if isinstance(m, HandoffAborted) and m.server_id == "s2"]
    assert [(m.handoff_id, m.parts) for m in aborted] == [(77, (COUNTER,))]
