"""Tests of the handoff orchestrator: move queue, batches, caps, jitter and the handoff table."""

from __future__ import annotations

import random

import pytest

from forehand.core._manager_config import ManagerConfig
from forehand.core._orchestrator import (
    Handoff,
    HandoffPhase,
    HandoffTrigger,
    MoveOrigin,
    MoveRequest,
    Orchestrator,
    TargetChooser,
    transition_table,
)
from forehand.core.messages import PartRef
from forehand.errors import LocalProtocolError
from forehand.wire import ReasonCode

MS = 1000


def ref(index: int) -> PartRef:
    return PartRef(session_id=index.to_bytes(16, "big"), part="p")


def move(
    index: int,
    source: str = "s1",
    *,
    reason: ReasonCode = ReasonCode.OVERLOAD,
    origin: MoveOrigin = MoveOrigin.RISK,
    now_us: int = 0,
) -> MoveRequest:
    return MoveRequest(
        ref=ref(index),
        source=source,
        reason=reason,
        origin=origin,
        target=None,
        requested_us=now_us,
    )


def fixed_target(target: str) -> TargetChooser:
    def choose(request: MoveRequest, avoid: frozenset[str]) -> str | None:
        return None if target in avoid else target

    return choose


def phase_of(handoff: Handoff) -> HandoffPhase:
    """The phase, read through a call so the type checker does not pin it between steps."""
    return handoff.phase


def always_valid(request: MoveRequest) -> bool:
    return True


def orchestrator(**overrides: int) -> Orchestrator:
    values = {"handoff_jitter_ms_max": 0}
    values.update(overrides)
    return Orchestrator(config=ManagerConfig(**values), rng=random.Random(7))  # type: ignore[arg-type]


def test_moves_of_one_source_and_target_form_one_batch() -> None:
    """Queued moves sharing source, target and reason go in one handoff, up to the part bound."""
    orch = orchestrator(handoff_parts_max=3)
    for index in range(5):
        assert orch.request_move(move(index))
    started, invalid = orch.plan(
        now_us=0, choose_target=fixed_target("s2"), is_valid=always_valid, batches_max=1
    )
    assert invalid == []
    (handoff,) = started
    assert handoff.parts == (ref(0), ref(1), ref(2))
    assert (handoff.source, handoff.target, handoff.phase) == ("s1", "s2", HandoffPhase.COMMITTING)
    assert orch.queued_moves == 2
    assert orch.is_moving(ref(0)) and orch.is_moving(ref(4))


def test_a_part_already_moving_is_not_queued_twice() -> None:
    """request_move refuses a part that is queued or in a handoff, and a full queue."""
    orch = orchestrator(handoff_queue_parts_max=2)
    assert orch.request_move(move(1))
    assert not orch.request_move(move(1))
    assert orch.request_move(move(2))
    assert not orch.request_move(move(3))


def test_per_server_cap_limits_concurrent_handoffs() -> None:
    """A source at handoffs_per_server_max starts no further handoff until one finishes."""
    orch = orchestrator(handoff_parts_max=1, handoffs_per_server_max=2)
    for index in range(4):
        orch.request_move(move(index))
    targets = iter(["s2", "s3", "s4", "s5"])

    def choose(request: MoveRequest, avoid: frozenset[str]) -> str | None:
        return next(targets)

    started, _ = orch.plan(now_us=0, choose_target=choose, is_valid=always_valid, batches_max=10)
    assert len(started) == 2
    assert orch.load_of("s1") == 2
    assert orch.queued_moves == 2
    orch.assigned(started[0], map_version=5, now_us=1)
    orch.fire(started[0], HandoffTrigger.SOURCE_COMPLETED, now_us=2)
    again, _ = orch.plan(now_us=2, choose_target=choose, is_valid=always_valid, batches_max=10)
    assert len(again) == 1


def test_target_at_its_cap_is_avoided() -> None:
    """The chooser is told which servers are at their cap, the source included."""
    orch = orchestrator(handoff_parts_max=1, handoffs_per_server_max=1)
    orch.request_move(move(1, "a"))
    orch.request_move(move(2, "b"))
    seen: list[frozenset[str]] = []

    def choose(request: MoveRequest, avoid: frozenset[str]) -> str | None:
        seen.append(avoid)
        return None if "t" in avoid else "t"

    started, _ = orch.plan(now_us=0, choose_target=choose, is_valid=always_valid, batches_max=5)
    assert [h.source for h in started] == ["a"]
    assert "t" in seen[-1] and "b" in seen[-1]


def test_cluster_wide_cap_limits_handoffs() -> None:
    """No more than handoffs_concurrent_max handoffs are active at once."""
    orch = orchestrator(handoff_parts_max=1, handoffs_concurrent_max=2, handoffs_per_server_max=2)
    for index in range(4):
        orch.request_move(move(index, f"s{index}"))
    started, _ = orch.plan(
        now_us=0, choose_target=fixed_target("t9"), is_valid=always_valid, batches_max=9
    )
    assert len(started) == 2


def test_batches_are_separated_by_jitter_from_the_rng() -> None:
    """With jitter, one batch starts per planning round and the next waits a random pause."""
    orch = Orchestrator(
        config=ManagerConfig(handoff_jitter_ms_max=100, handoff_parts_max=1),
        rng=random.Random(3),
    )
    for index in range(3):
        orch.request_move(move(index, f"s{index}"))
    started, _ = orch.plan(
        now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=9
    )
    assert len(started) == 1
    pause = orch.next_timer_us()
    assert pause is not None and 0 <= pause <= 100 * MS
    replay = Orchestrator(
        config=ManagerConfig(handoff_jitter_ms_max=100, handoff_parts_max=1),
        rng=random.Random(3),
    )
    for index in range(3):
        replay.request_move(move(index, f"s{index}"))
    replay.plan(now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=9)
    assert replay.next_timer_us() == pause


def test_no_target_leaves_moves_queued_and_retries_later() -> None:
    """When no target exists the moves stay queued and planning backs off."""
    orch = orchestrator()
    orch.request_move(move(1))
    started, _ = orch.plan(
        now_us=0, choose_target=lambda m, a: None, is_valid=always_valid, batches_max=1
    )
    assert started == []
    assert orch.queued_moves == 1
    timer = orch.next_timer_us()
    assert timer is not None and timer > 0


def test_invalid_moves_are_dropped_and_returned() -> None:
    """A move whose source is no longer the primary is removed from the queue."""
    orch = orchestrator()
    orch.request_move(move(1))
    orch.request_move(move(2))
    started, invalid = orch.plan(
        now_us=0,
        choose_target=fixed_target("t"),
        is_valid=lambda m: m.ref != ref(1),
        batches_max=1,
    )
    assert [m.ref for m in invalid] == [ref(1)]
    assert started[0].parts == (ref(2),)


def test_expired_moves_are_dropped() -> None:
    """Moves waiting longer than handoff_queue_timeout_ms are dropped."""
    orch = orchestrator(handoff_queue_timeout_ms=1_000)
    orch.request_move(move(1, now_us=0))
    orch.request_move(move(2, now_us=500 * MS))
    assert orch.next_timer_us() == 0
    assert [m.ref for m in orch.drop_expired_moves(now_us=1_000 * MS)] == [ref(1)]
    assert orch.queued_moves == 1


def test_assigned_handoff_gets_a_deadline_and_expires() -> None:
    """After the override commits the handoff waits deadline plus grace, then expires."""
    orch = orchestrator(handoff_deadline_ms=2_000, handoff_deadline_grace_ms=500)
    orch.request_move(move(1))
    (handoff,), _ = orch.plan(
        now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=1
    )
    orch.assigned(handoff, map_version=9, now_us=100)
    assert phase_of(handoff) is HandoffPhase.ASSIGNED and handoff.map_version == 9
    assert handoff.deadline_us == 100 + 2_500 * MS
    assert orch.next_timer_us() == handoff.deadline_us
    assert orch.expired(now_us=handoff.deadline_us - 1) == []
    assert orch.expired(now_us=handoff.deadline_us) == [handoff]
    orch.fire(handoff, HandoffTrigger.DEADLINE_EXPIRED, now_us=handoff.deadline_us)
    assert phase_of(handoff) is HandoffPhase.FAILED_OVER
    assert orch.handoff(handoff.handoff_id) is None
    assert not orch.is_moving(ref(1))
    assert orch.load_of("s1") == 0 and orch.load_of("t") == 0


def test_target_report_frees_the_slots_and_counts_the_backup_of_its_source() -> None:
    """BACKING_UP keeps the parts moving, with the backup deadline, but frees both servers'
    slots: the next batch of the same source starts while the first backs up (holding the slots
    through the backup period made each batch of a drain take the whole period). Each source
    has at most `handoffs_backing_up_per_server_max` handoffs backing up; at that cap it starts
    none, though it may still be a target."""
    orch = orchestrator(
        handoff_backup_report_timeout_ms=4_000,
        handoffs_per_server_max=1,
        handoffs_backing_up_per_server_max=2,
        handoff_parts_max=1,
    )
    for index in range(1, 5):
        orch.request_move(move(index))
    (handoff,), _ = orch.plan(
        now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=1
    )
    assert orch.plan(
        now_us=1, choose_target=fixed_target("u"), is_valid=always_valid, batches_max=1
    ) == ([], [])
    orch.assigned(handoff, map_version=3, now_us=10)
    orch.target_reported(handoff, now_us=20)
    assert phase_of(handoff) is HandoffPhase.BACKING_UP and handoff.target_reported_us == 20
    assert handoff.deadline_us == 20 + 4_000 * MS
    assert orch.is_moving(ref(1)) and orch.load_of("s1") == 0 and orch.load_of("t") == 0
    (second,), _ = orch.plan(
        now_us=30, choose_target=fixed_target("u"), is_valid=always_valid, batches_max=1
    )
    assert (second.source, second.target) == ("s1", "u")
    orch.assigned(second, map_version=4, now_us=40)
    orch.target_reported(second, now_us=50)
    # Two backing up: s1 is at its backup cap and leads nothing more, but may be a target.
    orch.request_move(move(9, "x"))
    started, _ = orch.plan(
        now_us=60, choose_target=fixed_target("s1"), is_valid=always_valid, batches_max=5
    )
    assert [(h.source, h.target) for h in started] == [("x", "s1")]
    assert orch.load_of("s1") == 1
    orch.assigned(started[0], map_version=5, now_us=70)
    orch.target_reported(started[0], now_us=80)
    assert orch.expired(now_us=handoff.deadline_us) == [handoff]
    orch.fire(handoff, HandoffTrigger.SOURCE_SILENT, now_us=handoff.deadline_us)
    assert phase_of(handoff) is HandoffPhase.COMPLETED and orch.load_of("s1") == 0
    assert not orch.is_moving(ref(1))
    (third,), _ = orch.plan(
        now_us=handoff.deadline_us,
        choose_target=fixed_target("v"),
        is_valid=always_valid,
        batches_max=1,
    )
    assert third.source == "s1"


def test_the_cluster_cap_counts_handoffs_until_their_target_reports() -> None:
    """`handoffs_concurrent_max` counts handoffs whose target has not reported yet."""
    orch = orchestrator(handoff_parts_max=1, handoffs_concurrent_max=1, handoffs_per_server_max=1)
    orch.request_move(move(1, "a"))
    orch.request_move(move(2, "b"))
    (first,), _ = orch.plan(
        now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=5
    )
    assert orch.plan(
        now_us=1, choose_target=fixed_target("u"), is_valid=always_valid, batches_max=5
    ) == ([], [])
    orch.assigned(first, map_version=3, now_us=2)
    orch.target_reported(first, now_us=3)
    (second,), _ = orch.plan(
        now_us=4, choose_target=fixed_target("u"), is_valid=always_valid, batches_max=5
    )
    assert second.source == "b"


@pytest.mark.parametrize(
    ("trigger", "phase"),
    [
        (HandoffTrigger.SOURCE_COMPLETED, HandoffPhase.COMPLETED),
        (HandoffTrigger.SOURCE_DIED, HandoffPhase.COMPLETED),
        (HandoffTrigger.PARTICIPANT_DIED, HandoffPhase.FAILED_OVER),
        (HandoffTrigger.ABORT_REPORTED, HandoffPhase.FAILED_OVER),
    ],
)
def test_backing_up_ends_by_the_source_or_fails_over(
    trigger: HandoffTrigger, phase: HandoffPhase
) -> None:
    """From BACKING_UP: the source's report or death completes; an abort or death fails over."""
    orch = orchestrator()
    orch.request_move(move(1))
    (handoff,), _ = orch.plan(
        now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=1
    )
    orch.assigned(handoff, map_version=3, now_us=1)
    orch.target_reported(handoff, now_us=2)
    assert not orch.allows(handoff, HandoffTrigger.TARGET_COMPLETED)
    orch.fire(handoff, trigger, now_us=3)
    assert phase_of(handoff) is phase and not orch.is_moving(ref(1))


def test_abort_falls_back_to_failover() -> None:
    """An abort report ends the handoff FAILED_OVER: no blind revert, the manager fences both."""
    orch = orchestrator()
    orch.request_move(move(1))
    (handoff,), _ = orch.plan(
        now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=1
    )
    orch.assigned(handoff, map_version=2, now_us=1)
    orch.fire(handoff, HandoffTrigger.ABORT_REPORTED, now_us=2, cause="seal missed")
    assert phase_of(handoff) is HandoffPhase.FAILED_OVER and handoff.cause == "seal missed"
    assert not orch.is_moving(ref(1)) and handoff.finished_us == 2


def test_illegal_handoff_transitions_raise_and_allows_says_so() -> None:
    """A trigger the table does not allow is refused by allows() and raises from fire()."""
    orch = orchestrator()
    orch.request_move(move(1))
    (handoff,), _ = orch.plan(
        now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=1
    )
    assert not orch.allows(handoff, HandoffTrigger.SOURCE_COMPLETED)
    with pytest.raises(LocalProtocolError):
        orch.fire(handoff, HandoffTrigger.SOURCE_COMPLETED, now_us=1)


def test_cancelled_handoff_frees_its_parts_for_a_new_move() -> None:
    """A handoff whose override was refused frees its parts: asking again queues them."""
    orch = orchestrator()
    orch.request_move(move(1))
    (handoff,), _ = orch.plan(
        now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=1
    )
    assert not orch.request_move(move(1))
    orch.fire(handoff, HandoffTrigger.OVERRIDE_REFUSED, now_us=5)
    assert handoff.phase is HandoffPhase.CANCELLED
    assert not orch.is_moving(ref(1)) and orch.request_move(move(1))


def test_cancel_moves_by_origin() -> None:
    """Cancelling a drain forgets only the drain's queued moves."""
    orch = orchestrator()
    orch.request_move(move(1, origin=MoveOrigin.DRAIN))
    orch.request_move(move(2, origin=MoveOrigin.RISK))
    cancelled = orch.cancel_moves("s1", origin=MoveOrigin.DRAIN)
    assert [m.ref for m in cancelled] == [ref(1)]
    assert [m.ref for m in orch.moves_of("s1")] == [ref(2)]


def test_handoff_ids_are_unique_and_seeded() -> None:
    """Ids grow within a manager and differ between managers seeded differently."""
    first = Orchestrator(config=ManagerConfig(handoff_parts_max=1), rng=random.Random(1))
    other = Orchestrator(config=ManagerConfig(handoff_parts_max=1), rng=random.Random(2))
    ids = []
    for orch in (first, other):
        orch.request_move(move(1))
        orch.request_move(move(2, "s2"))
        started, _ = orch.plan(
            now_us=0, choose_target=fixed_target("t"), is_valid=always_valid, batches_max=1
        )
        ids.append(started[0].handoff_id)
    assert ids[0] != ids[1]
    assert all(0 < handoff_id < 1 << 62 for handoff_id in ids)


def test_handoff_transition_table_reaches_every_phase() -> None:
    """The table is importable for diagrams and reaches every phase but the initial one."""
    reached = {target for _, _, target in transition_table()}
    assert reached == set(HandoffPhase) - {HandoffPhase.COMMITTING}
