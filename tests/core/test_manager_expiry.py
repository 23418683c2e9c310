"""Session expiry: the manager closes a session once no credential was issued for it in
`session_expiry_ms` (`forehand.core._manager_expiry`), never earlier."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from forehand.core._manager_config import ManagerConfig
from forehand.core._manager_events import MapChange, MapCommitted, SessionsExpired
from forehand.core._manager_expiry import SessionExpiry
from forehand.errors import ConfigError
from forehand.placement import new_session_id
from forehand.wire import CloseSession, Credential, Hello, MapRequest, MapUpdate, Welcome

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness
else:
    from _manager_helpers import MANAGER, ManagerHarness

SERVERS = ("s1", "s2", "s3")
EXPIRY_MS = 2_000


def sessions(count: int) -> list[bytes]:
    rng = random.Random(5)
    return [new_session_id(now_ms=1_700_000_000_000 + i, rng=rng) for i in range(count)]


def sweep_all(expiry: SessionExpiry, now_us: int) -> list[bytes]:
    """Every session a whole round finds expired at `now_us` (batches included)."""
    found: list[bytes] = []
    due = expiry.due_us()
    while due is not None and due <= now_us:
        found += expiry.sweep(now_us=now_us)
        due = expiry.due_us()
        if due is not None and due > now_us:
            break
        now_us = max(now_us, due or now_us)
    return found


def test_a_session_expires_only_after_its_last_credential_plus_the_expiry() -> None:
    """Stamped at open and at each renewal, in grains of 1/64 of the expiry: a sweep never finds
    a session whose last credential is younger than the expiry, and finds it within two grains
    after; the others keep being tracked."""
    expiry = SessionExpiry(expiry_ms=6_400, batch=2, step_ms=10)
    first, second, third = sessions(3)
    expiry.track(first, now_us=0)
    expiry.track(second, now_us=0)
    expiry.track(third, now_us=250_000)
    expiry.renewed([second, bytes(16)], now_us=3_000_000)  # an unknown id is ignored
    assert len(expiry) == 3
    # The first sweep may fall at any instant: nothing is expired just before 6.4 s.
    for now_us in range(0, 6_400_000, 97_000):
        assert expiry.sweep(now_us=now_us) == []
    found = []
    now_us = 6_400_000
    while now_us < 6_700_000:
        found += expiry.sweep(now_us=now_us)
        now_us += 10_000
    assert found == [first]
    found = []
    while now_us < 9_300_000:
        found += expiry.sweep(now_us=now_us)
        now_us += 10_000
    assert sorted(found) == sorted([third])  # the renewed one lives until 9.4 s
    while now_us < 9_700_000:
        found += expiry.sweep(now_us=now_us)
        now_us += 10_000
    assert sorted(found) == sorted([third, second])
    assert len(expiry) == 0
    assert expiry.due_us() is None


def test_a_sweep_walks_the_sessions_in_bounded_batches() -> None:
    """A round examines at most `batch` sessions per step, steps `step_ms` apart, and starts
    again at most once a grain; a session closed meanwhile is skipped."""
    expiry = SessionExpiry(expiry_ms=640, batch=3, step_ms=10)
    ids = sessions(8)
    for session_id in ids:
        expiry.track(session_id, now_us=0)
    now_us = 700_000
    found = expiry.sweep(now_us=now_us)
    assert found == ids[:3]
    assert expiry.due_us() == now_us + 10_000
    assert expiry.sweep(now_us=now_us + 5_000) == []  # not yet due
    expiry.forget(ids[4])
    assert expiry.sweep(now_us=now_us + 10_000) == [ids[3], ids[5]]
    assert expiry.sweep(now_us=now_us + 20_000) == ids[6:]
    assert expiry.due_us() is None


def test_a_loaded_map_counts_every_session_as_renewed_at_the_load() -> None:
    """Renewals reported to a manager before this one are lost: a reset stamps every session
    with the load time, and a disabled expiry tracks nothing."""
    expiry = SessionExpiry(expiry_ms=640, batch=100, step_ms=10)
    ids = sessions(3)
    expiry.track(ids[0], now_us=0)
    expiry.reset(ids, now_us=1_000_000)
    assert expiry.sweep(now_us=1_600_000) == []
    assert sorted(sweep_all(expiry, 1_700_000)) == sorted(ids)
    disabled = SessionExpiry(expiry_ms=0, batch=100, step_ms=10)
    disabled.track(ids[0], now_us=0)
    disabled.reset(ids, now_us=0)
    assert (len(disabled), disabled.due_us(), disabled.sweep(now_us=10**12)) == (0, None, [])


def expiring_harness(*, session_expiry_ms: int = EXPIRY_MS) -> ManagerHarness:
    harness = ManagerHarness(credential_lifetime_ms=1_000, session_expiry_ms=session_expiry_ms)
    harness.join(*SERVERS)
    return harness


def test_the_manager_closes_a_session_no_credential_was_issued_for_in_the_expiry() -> None:
    """Two sessions opened together; servers keep reporting renewals of one. The other leaves
    the map in one SESSION_CLOSED commit once the expiry has passed (not before), with a
    `SessionsExpired`; a client presenting its credential afterwards hears CLOSE_SESSION."""
    harness = expiring_harness()
    kept = harness.open_session(("auth", "cart"), client="c1")
    gone = harness.open_session(("auth", "cart"), client="c1")
    for _ in range(EXPIRY_MS // 500 - 1):
        harness.heartbeat("s1", renewed=[kept.session_id])
        harness.tick(500, alive=SERVERS)
    assert harness.events(SessionsExpired) == []
    assert {key.session_id for key in harness.map.part_keys()} == {
        kept.session_id,
        gone.session_id,
    }
    for _ in range(4):
        harness.heartbeat("s2", renewed=[kept.session_id])
        harness.tick(250, alive=SERVERS)
    (expired,) = harness.events(SessionsExpired)
    assert expired.session_ids == (gone.session_id,)
    assert {key.session_id for key in harness.map.part_keys()} == {kept.session_id}
    closes = [e for e in harness.events(MapCommitted) if e.change is MapChange.SESSION_CLOSED]
    assert [{p.session_id for p in e.parts} for e in closes] == [{gone.session_id}]
    credentials = tuple(
        Credential(session_id=o.session_id, credential=o.credential) for o in (kept, gone)
    )
    harness.router.send("c1", MANAGER, MapRequest(map_version=0, credentials=credentials))
    assert harness.take("c1", CloseSession) == [CloseSession(session_id=gone.session_id)]
    assert len(harness.take("c1", MapUpdate)) == 1


def test_a_new_manager_counts_the_expiry_from_its_map_load() -> None:
    """A manager that loads the map (a restart, a new leader) never heard the renewals sent to
    the one before: every session's expiry starts again at the load, so a session whose
    renewal went to the old manager is not closed early."""
    first = expiring_harness()
    opened = first.open_session(("auth",), client="c1")
    first.tick(EXPIRY_MS - 500, alive=SERVERS)
    second = ManagerHarness(
        store=first.store, credential_lifetime_ms=1_000, session_expiry_ms=EXPIRY_MS
    )
    second.join(*SERVERS)
    second.tick(EXPIRY_MS - 100, alive=SERVERS)
    assert second.events(SessionsExpired) == []
    second.tick(300, alive=SERVERS)
    (expired,) = second.events(SessionsExpired)
    assert expired.session_ids == (opened.session_id,)


def test_no_expiry_keeps_sessions_and_sets_no_timer_for_them() -> None:
    """`session_expiry_ms` 0: sessions stay until closed, and the manager sweeps nothing."""
    harness = expiring_harness(session_expiry_ms=0)
    opened = harness.open_session(("auth",), client="c1")
    harness.tick(10 * EXPIRY_MS, alive=SERVERS)
    assert harness.events(SessionsExpired) == []
    assert {key.session_id for key in harness.map.part_keys()} == {opened.session_id}


@pytest.mark.parametrize("expiry_ms", [1_000, 500])
def test_an_expiry_a_live_credential_outlasts_is_refused(expiry_ms: int) -> None:
    """An expiry at or under the credential lifetime would close sessions whose clients still
    hold a valid credential."""
    with pytest.raises(ConfigError, match="session_expiry_ms must exceed credential_lifetime_ms"):
        ManagerConfig(credential_lifetime_ms=1_000, session_expiry_ms=expiry_ms)


def test_a_client_back_after_its_credential_expired_hears_its_expired_session_closed() -> None:
    """A client away for longer than the expiry comes back on a new connection with an expired
    credential: that proves nothing, but an authentic credential of a session the map no longer
    holds gets CLOSE_SESSION (after the WELCOME of a HELLO), so its calls fail as closed instead
    of locating a session no answer will ever name. An expired credential of a session still in
    the map gets nothing, nor does a forged one."""
    harness = expiring_harness()
    gone = harness.open_session(("auth",), client="c1")
    still = harness.open_session(("cart",), client="c1")
    for _ in range(6):
        harness.heartbeat("s1", renewed=[still.session_id])
        harness.tick(500, alive=SERVERS)
    assert harness.events(SessionsExpired)[0].session_ids == (gone.session_id,)
    credentials = (
        Credential(session_id=gone.session_id, credential=gone.credential),
        Credential(session_id=still.session_id, credential=still.credential),
        Credential(session_id=bytes(16), credential=gone.credential[:-1] + b"\x00"),
    )
    harness.router.send(
        "c2", MANAGER, Hello(versions=(1,), client_id=bytes(16), credentials=credentials)
    )
    received = harness.router.take("c2", object)
    assert [type(frame) for frame in received] == [Welcome, CloseSession]
    assert received[1] == CloseSession(session_id=gone.session_id)
    harness.router.send("c3", MANAGER, MapRequest(map_version=0, credentials=credentials))
    assert harness.take("c3", CloseSession) == [CloseSession(session_id=gone.session_id)]
