"""Tests of the manager's membership: member states, heartbeats and both failure detectors."""

from __future__ import annotations

import pytest

from forehand.core._manager_config import FailureDetectorKind, ManagerConfig
from forehand.core._membership import (
    AnnounceOutcome,
    HeartbeatOutcome,
    Membership,
    MemberState,
    MemberTrigger,
    PhiAccrualDetector,
    transition_table,
)
from forehand.core.messages import (
    HeartbeatReported,
    LoadReport,
    PartProgress,
    PartRef,
    PartRole,
    ServerAnnounced,
)
from forehand.errors import LocalProtocolError

MS = 1000
LOAD = LoadReport(
    cpu_utilization=0.2, queue_depth=0, latency_us_p99=900, error_ratio=0.0, requests_per_second=5
)


def announce(server_id: str = "s1", incarnation: int = 1) -> ServerAnnounced:
    return ServerAnnounced(
        server_id=server_id, incarnation=incarnation, address="h:1", zone="z", weight=1.0
    )


def beat(
    server_id: str = "s1",
    *,
    incarnation: int = 1,
    sequence: int = 0,
    parts: tuple[PartProgress, ...] = (),
) -> HeartbeatReported:
    return HeartbeatReported(
        server_id=server_id,
        incarnation=incarnation,
        sequence=sequence,
        map_version=3,
        load=LOAD,
        parts=parts,
    )


def joined(membership: Membership, server_id: str = "s1", *, now_us: int = 0) -> None:
    assert membership.announce(announce(server_id), now_us=now_us) is AnnounceOutcome.JOINED
    assert membership.join_committed(server_id, incarnation=1)


def witness(membership: Membership, *, heard_at_us: tuple[int, ...] = ()) -> None:
    """A second member, "w", heard at each of `heard_at_us`: deaths by silence need a member
    that is still heard (`Membership.check`)."""
    joined(membership, "w")
    for sequence, now_us in enumerate(heard_at_us):
        membership.heartbeat(beat("w", sequence=sequence), now_us=now_us)


def test_announce_then_commit_makes_a_member_alive() -> None:
    """A new server is JOINING until its join commits, then ALIVE and listed as live."""
    membership = Membership(config=ManagerConfig())
    assert membership.announce(announce(), now_us=0) is AnnounceOutcome.JOINED
    assert membership.state_of("s1") is MemberState.JOINING
    assert membership.live_ids() == []
    assert membership.join_committed("s1", incarnation=1)
    assert membership.state_of("s1") is MemberState.ALIVE
    assert membership.live_ids() == ["s1"]


def test_repeated_and_stale_announcements_change_nothing() -> None:
    """The same incarnation again is REPEATED; an older one is STALE."""
    membership = Membership(config=ManagerConfig())
    membership.announce(announce(incarnation=5), now_us=0)
    assert membership.announce(announce(incarnation=5), now_us=1) is AnnounceOutcome.REPEATED
    assert membership.announce(announce(incarnation=4), now_us=2) is AnnounceOutcome.STALE
    member = membership.get("s1")
    assert member is not None and member.incarnation == 5


def test_membership_refuses_servers_beyond_the_bound() -> None:
    """`servers_max` bounds the table: one more announcement is REFUSED."""
    membership = Membership(config=ManagerConfig(servers_max=2))
    membership.announce(announce("a"), now_us=0)
    membership.announce(announce("b"), now_us=0)
    assert membership.announce(announce("c"), now_us=0) is AnnounceOutcome.REFUSED
    assert len(membership) == 2


def test_heartbeat_records_load_progress_and_map_version() -> None:
    """An accepted heartbeat stores the load, the reported map version and part progress."""
    membership = Membership(config=ManagerConfig())
    joined(membership)
    ref = PartRef(session_id=bytes(16), part="cart")
    progress = PartProgress(ref=ref, role=PartRole.PRIMARY, applied_seq=7, epoch=2)
    assert membership.heartbeat(beat(parts=(progress,)), now_us=100) is HeartbeatOutcome.ACCEPTED
    member = membership.get("s1")
    assert member is not None
    assert member.load == LOAD and member.map_version == 3
    assert member.progress[ref].applied_seq == 7
    assert member.last_heard_us == 100


def test_old_sequence_and_old_incarnation_heartbeats_are_stale() -> None:
    """Reordered heartbeats (same or lower sequence) and old incarnations are ignored."""
    membership = Membership(config=ManagerConfig())
    joined(membership)
    assert membership.heartbeat(beat(sequence=3), now_us=10) is HeartbeatOutcome.ACCEPTED
    assert membership.heartbeat(beat(sequence=3), now_us=20) is HeartbeatOutcome.STALE
    assert membership.heartbeat(beat(sequence=2), now_us=30) is HeartbeatOutcome.STALE
    member = membership.get("s1")
    assert member is not None and member.last_heard_us == 10
    assert membership.heartbeat(beat("nobody"), now_us=40) is HeartbeatOutcome.UNKNOWN


def test_part_progress_is_bounded_forgetting_the_stalest() -> None:
    """Progress records per server never exceed the bound; the least recently updated goes."""
    membership = Membership(config=ManagerConfig(part_progress_per_server_max=2))
    joined(membership)
    refs = [PartRef(session_id=bytes(16), part=f"p{i}") for i in range(3)]
    reports = tuple(
        PartProgress(ref=r, role=PartRole.REPLICA, applied_seq=1, epoch=1) for r in refs
    )
    membership.heartbeat(beat(parts=reports[:2]), now_us=1)
    membership.heartbeat(beat(sequence=1, parts=(reports[0], reports[2])), now_us=2)
    member = membership.get("s1")
    assert member is not None
    assert set(member.progress) == {refs[0], refs[2]}


def test_timeout_detector_suspects_then_declares_dead() -> None:
    """Silence past suspect_timeout_ms suspects; past failure_timeout_ms declares dead."""
    config = ManagerConfig(suspect_timeout_ms=1_000, failure_timeout_ms=3_000)
    membership = Membership(config=config)
    joined(membership, now_us=0)
    witness(membership, heard_at_us=(900 * MS,))
    assert membership.next_check_us() == 1_000 * MS
    assert membership.check(now_us=999 * MS) == []
    (suspected,) = membership.check(now_us=1_000 * MS)
    assert suspected.state is MemberState.SUSPECTED and suspected.silent_us == 1_000 * MS
    membership.heartbeat(beat("w", sequence=1), now_us=2_500 * MS)
    assert membership.next_check_us() == 3_000 * MS
    (dead,) = membership.check(now_us=3_000 * MS)
    assert dead.state is MemberState.DEAD
    assert membership.live_ids() == ["w"]


def test_a_heartbeat_clears_suspicion() -> None:
    """A suspected member that heartbeats is ALIVE again and its clock restarts."""
    config = ManagerConfig(suspect_timeout_ms=1_000, failure_timeout_ms=3_000)
    membership = Membership(config=config)
    joined(membership)
    membership.check(now_us=1_500 * MS)
    assert membership.state_of("s1") is MemberState.SUSPECTED
    membership.heartbeat(beat(), now_us=2_000 * MS)
    assert membership.state_of("s1") is MemberState.ALIVE
    assert membership.check(now_us=4_000 * MS)[0].state is MemberState.SUSPECTED


def test_a_joining_server_that_falls_silent_is_dead_without_suspicion() -> None:
    """A server that announces and goes silent before its join commits dies at the timeout."""
    membership = Membership(config=ManagerConfig())
    membership.announce(announce(), now_us=0)
    assert membership.check(now_us=2_000 * MS) == []
    (change,) = membership.check(now_us=3_000 * MS)
    assert change.state is MemberState.DEAD


def test_restart_of_a_live_member_kills_the_old_incarnation_until_readmitted() -> None:
    """A new incarnation of a live member makes it DEAD (rejoin pending) until readmitted."""
    membership = Membership(config=ManagerConfig())
    joined(membership)
    assert membership.announce(announce(incarnation=2), now_us=5) is AnnounceOutcome.RESTARTED
    member = membership.get("s1")
    assert member is not None
    assert member.state is MemberState.DEAD and member.incarnation == 2 and member.rejoin_pending
    assert membership.readmit("s1", now_us=10)
    assert membership.state_of("s1") is MemberState.JOINING
    assert membership.join_committed("s1", incarnation=2)
    assert membership.state_of("s1") is MemberState.ALIVE


def test_restart_while_joining_just_adopts_the_new_incarnation() -> None:
    """A server restarting before its join commits stays JOINING with the new incarnation."""
    membership = Membership(config=ManagerConfig())
    membership.announce(announce(), now_us=0)
    assert membership.announce(announce(incarnation=2), now_us=1) is AnnounceOutcome.JOINED
    assert not membership.join_committed("s1", incarnation=1)
    assert membership.join_committed("s1", incarnation=2)


def test_a_dead_member_heard_again_asks_to_rejoin() -> None:
    """After death, a newer heartbeat of the same incarnation sets rejoin_pending."""
    membership = Membership(config=ManagerConfig())
    joined(membership)
    witness(membership, heard_at_us=(4_900 * MS,))
    membership.check(now_us=5_000 * MS)
    assert membership.state_of("s1") is MemberState.DEAD
    assert not membership.readmit("s1", now_us=5_000 * MS)
    outcome = membership.heartbeat(beat(sequence=9), now_us=6_000 * MS)
    assert outcome is HeartbeatOutcome.REJOIN_PENDING
    assert membership.state_of("s1") is MemberState.DEAD
    assert membership.readmit("s1", now_us=6_000 * MS)
    assert membership.state_of("s1") is MemberState.JOINING


def test_dead_members_are_forgotten_after_the_bound() -> None:
    """A dead member is dropped from the table `dead_servers_forget_ms` after its death."""
    membership = Membership(config=ManagerConfig(dead_servers_forget_ms=10_000))
    joined(membership)
    witness(membership, heard_at_us=(2_900 * MS, 12_000 * MS))
    membership.check(now_us=3_000 * MS)
    assert membership.next_check_us() == 13_000 * MS
    assert membership.forget_dead(now_us=12_999 * MS) == []
    assert membership.forget_dead(now_us=13_000 * MS) == ["s1"]
    assert "s1" not in membership


def test_illegal_member_transition_raises() -> None:
    """Firing a trigger the table does not allow is a LocalProtocolError."""
    membership = Membership(config=ManagerConfig())
    joined(membership)
    member = membership.get("s1")
    assert member is not None
    with pytest.raises(LocalProtocolError):
        membership._transition(member, MemberTrigger.JOIN_COMMITTED)


def test_transition_table_lists_every_state() -> None:
    """The table is importable for diagrams and reaches every state."""
    table = transition_table()
    assert {target for _, _, target in table} == set(MemberState)
    assert (MemberState.ALIVE, MemberTrigger.RESTARTED, MemberState.DEAD) in table


def phi_config(**overrides: int | float) -> ManagerConfig:
    values: dict[str, object] = {
        "failure_detector": FailureDetectorKind.PHI_ACCRUAL,
        "heartbeat_interval_ms": 100,
        "phi_deviation_ms_min": 10,
        "failure_timeout_ms": 10_000,
        "suspect_timeout_ms": 5_000,
    }
    values.update(overrides)
    return ManagerConfig(**values)  # type: ignore[arg-type]


def test_phi_grows_with_silence() -> None:
    """Phi is small before the mean interval and grows monotonically after it."""
    detector = PhiAccrualDetector(config=phi_config(), now_us=0)
    for step in range(1, 21):
        detector.heard(now_us=step * 100 * MS)
    values = [detector.phi(silent_us=ms * MS) for ms in (50, 100, 150, 200, 400)]
    assert values[0] < 0.5
    assert values == sorted(values)
    assert values[-1] > 10


def test_phi_detector_declares_a_regular_sender_dead_sooner_than_the_timeout() -> None:
    """With steady 100 ms heartbeats, phi crosses its thresholds long before 10 s of silence."""
    detector = PhiAccrualDetector(config=phi_config(), now_us=0)
    for step in range(1, 21):
        detector.heard(now_us=step * 100 * MS)
    last = 2_000 * MS
    suspect_at = detector.suspect_at_us()
    dead_at = detector.dead_at_us()
    assert last < suspect_at < dead_at < last + 1_000 * MS
    assert detector.phi(silent_us=dead_at - last) >= 8.0
    assert detector.phi(silent_us=dead_at - last - 2) < 8.0


def test_phi_detector_tolerates_jittery_senders_longer() -> None:
    """Irregular intervals widen the distribution, so death is declared later."""
    steady = PhiAccrualDetector(config=phi_config(), now_us=0)
    jittery = PhiAccrualDetector(config=phi_config(), now_us=0)
    now_steady = now_jittery = 0
    for step in range(20):
        now_steady += 100 * MS
        now_jittery += (40 if step % 2 else 160) * MS
        steady.heard(now_us=now_steady)
        jittery.heard(now_us=now_jittery)
    assert jittery.dead_at_us() - now_jittery > steady.dead_at_us() - now_steady


def test_phi_detector_never_waits_past_the_failure_timeout() -> None:
    """However wide the distribution, death comes at failure_timeout_ms at the latest."""
    config = phi_config(
        heartbeat_interval_ms=500,
        failure_timeout_ms=600,
        suspect_timeout_ms=300,
        phi_dead_threshold=50.0,
    )
    membership = Membership(config=config)
    joined(membership)
    witness(membership, heard_at_us=(550 * MS,))
    membership.check(now_us=599 * MS)
    assert membership.state_of("s1") is not MemberState.DEAD
    membership.check(now_us=600 * MS)
    assert membership.state_of("s1") is MemberState.DEAD


def test_phi_window_is_bounded() -> None:
    """The detector keeps at most phi_samples_max intervals; old ones stop counting."""
    detector = PhiAccrualDetector(config=phi_config(phi_samples_max=4), now_us=0)
    now = 0
    for _ in range(10):
        now += 1_000 * MS
        detector.heard(now_us=now)
    for _ in range(4):
        now += 100 * MS
        detector.heard(now_us=now)
    # Only the four 100 ms intervals remain, so 500 ms of silence is already alarming.
    assert detector.phi(silent_us=500 * MS) > 8.0


def test_no_death_by_silence_while_every_member_is_silent() -> None:
    """Every member silent past the death line: all SUSPECTED, none DEAD, no deadline to
    spin on; the first one heard again makes the others' deaths due at once."""
    config = ManagerConfig(suspect_timeout_ms=1_000, failure_timeout_ms=3_000)
    membership = Membership(config=config)
    for server_id in ("s1", "s2", "s3"):
        joined(membership, server_id)
    changes = membership.check(now_us=3_000 * MS)
    assert [(c.server_id, c.state) for c in changes] == [
        (server_id, MemberState.SUSPECTED) for server_id in ("s1", "s2", "s3")
    ]
    assert membership.deaths_held()
    assert membership.next_check_us() is None
    assert membership.check(now_us=60_000 * MS) == []
    assert membership.live_ids() == ["s1", "s2", "s3"]

    membership.heartbeat(beat("s2"), now_us=61_000 * MS)
    assert not membership.deaths_held()
    due = membership.next_check_us()
    assert due is not None and due <= 61_000 * MS
    dead = membership.check(now_us=61_000 * MS)
    assert [(c.server_id, c.state) for c in dead] == [
        ("s1", MemberState.DEAD),
        ("s3", MemberState.DEAD),
    ]
    assert membership.live_ids() == ["s2"]


def test_a_lone_member_dies_by_restart_not_by_silence() -> None:
    """With one member there is no one else to hear: its silence only suspects it, while a
    new incarnation still declares the old one dead."""
    membership = Membership(config=ManagerConfig())
    joined(membership)
    membership.check(now_us=10_000 * MS)
    assert membership.state_of("s1") is MemberState.SUSPECTED
    assert membership.announce(announce(incarnation=2), now_us=11_000 * MS) is (
        AnnounceOutcome.RESTARTED
    )
    assert membership.state_of("s1") is MemberState.DEAD


def test_a_silent_joining_member_still_dies_while_the_others_are_silent() -> None:
    """A JOINING member is not in the map: its silence kills it whatever the others do."""
    membership = Membership(config=ManagerConfig())
    joined(membership)
    membership.announce(announce("s2"), now_us=0)
    states = {c.server_id: c.state for c in membership.check(now_us=3_000 * MS)}
    assert states == {"s1": MemberState.SUSPECTED, "s2": MemberState.DEAD}


def test_a_stall_of_the_manager_is_not_the_members_silence() -> None:
    """Silence the manager could not hear (a stall it reports) moves a member's suspicion and
    death lines by that much; a heartbeat ends the excuse."""
    config = ManagerConfig(suspect_timeout_ms=1_000, failure_timeout_ms=3_000)
    membership = Membership(config=config)
    joined(membership)
    witness(membership, heard_at_us=(2_900 * MS,))
    membership.excuse(stalled_us=2_500 * MS, now_us=2_900 * MS)
    assert membership.next_check_us() == 3_500 * MS
    assert membership.check(now_us=3_000 * MS) == []
    membership.heartbeat(beat("w", sequence=1), now_us=5_400 * MS)
    (dead,) = membership.check(now_us=5_500 * MS)
    assert dead.server_id == "s1" and dead.state is MemberState.DEAD
    assert dead.silent_us == 5_500 * MS

    membership.heartbeat(beat("w", sequence=2), now_us=6_000 * MS)
    membership.excuse(stalled_us=10_000 * MS, now_us=6_100 * MS)
    member = membership.get("w")
    assert member is not None and member.detector.excused_us == 100 * MS
    membership.heartbeat(beat("w", sequence=3), now_us=6_200 * MS)
    assert member.detector.excused_us == 0
    assert membership.next_check_us() == 7_200 * MS


def test_a_member_adopting_a_heavy_version_dies_after_its_allowance_unless_it_reports_it() -> None:
    """`allow_adoption` holds a death by silence until its instant while the member reports an
    older map version; suspicion is unchanged; once it reports the version (or a later one) the
    failure timeout alone judges it again."""
    config = ManagerConfig(suspect_timeout_ms=1_000, failure_timeout_ms=3_000)
    membership = Membership(config=config)
    joined(membership)
    witness(membership, heard_at_us=(0, 4_000 * MS, 8_000 * MS, 12_000 * MS))
    membership.allow_adoption("s1", version=4, until_us=8_000 * MS)
    (suspected,) = membership.check(now_us=1_000 * MS)
    assert suspected.state is MemberState.SUSPECTED
    assert membership.next_check_us() == 8_000 * MS
    assert membership.check(now_us=7_999 * MS) == []
    (dead,) = membership.check(now_us=8_000 * MS)
    assert dead.state is MemberState.DEAD and dead.server_id == "s1"

    joined(membership, "s2")
    membership.allow_adoption("s2", version=3, until_us=20_000 * MS)
    membership.heartbeat(beat("s2", sequence=1), now_us=100 * MS)  # Reports version 3.
    assert [
        c.server_id for c in membership.check(now_us=3_100 * MS) if c.state is MemberState.DEAD
    ] == ["s2"]


def test_phi_intervals_leave_out_an_excused_stall() -> None:
    """Heartbeats a stall held back arrive together: the interval the phi detector learns is
    the one before the stall, not the stall."""
    detector = PhiAccrualDetector(config=phi_config(), now_us=0)
    for beat_us in range(500 * MS, 3_000 * MS, 500 * MS):
        detector.heard(now_us=beat_us)
    before = detector.phi(silent_us=1_000 * MS)
    detector.excuse(stalled_us=5_000 * MS, now_us=7_500 * MS)
    detector.heard(now_us=8_000 * MS)
    assert detector.phi(silent_us=1_000 * MS) == pytest.approx(before, rel=0.2)
    assert detector.last_heard_us == 8_000 * MS and detector.excused_us == 0
