"""Session expiry: the manager closes a session once no credential was issued for it in
`session_expiry_ms` (`forehand.core._manager_expiry`), never earlier."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from forehand.core._driver import ConnectionLost, ConnectionOpened
from forehand.core._manager_config import ManagerConfig
from forehand.core._manager_events import (
    CredentialRefused,
    MapChange,
    MapCommitted,
    MapLoaded,
    SessionsExpired,
)
from forehand.core._manager_expiry import SessionExpiry
from forehand.core.tokens import KeyRing, TokenSealer
from forehand.errors import ConfigError
from forehand.placement import new_session_id
from forehand.stores import DeltaCommitRequested, StoreFailed
from forehand.wire import (
    CloseSession,
    Credential,
    Hello,
    MapRequest,
    MapUpdate,
    ResumeReject,
    ResumeRejectReason,
    Settings,
    Welcome,
)

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness, opened_refs, sealer
else:
    from _manager_helpers import MANAGER, ManagerHarness, opened_refs, sealer

SERVERS = ("s1", "s2", "s3")
EXPIRY_MS = 2_000
OTHER = bytes(range(1, 17))


def sessions(count: int) -> list[bytes]:
    rng = random.Random(5)
    return [new_session_id(now_ms=1_700_000_000_000 + i, rng=rng) for i in range(count)]


def sweep_all(expiry: SessionExpiry, now_us: int) -> list[bytes]:
    """Every session a whole round finds expired at `now_us` (batches included), forgotten as
    the manager forgets the sessions whose close committed."""
    found: list[bytes] = []
    due = expiry.due_us()
    while due is not None and due <= now_us:
        batch = expiry.sweep(now_us=now_us)
        close(expiry, batch)
        found += batch
        due = expiry.due_us()
    return found


def close(expiry: SessionExpiry, session_ids: list[bytes]) -> None:
    """What the manager does once their close commits: the map loses them."""
    for session_id in session_ids:
        expiry.forget(session_id)


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

    def sweep_until(end_us: int) -> list[bytes]:
        nonlocal now_us
        found = []
        while now_us < end_us:
            batch = expiry.sweep(now_us=now_us)
            close(expiry, batch)
            found += batch
            now_us += 10_000
        return found

    now_us = 6_400_000
    assert sweep_until(6_700_000) == [first]
    assert sweep_until(9_300_000) == [third]  # the renewed one lives until 9.4 s
    assert sweep_until(9_700_000) == [second]
    assert len(expiry) == 0
    assert expiry.due_us() is None


def test_a_sweep_walks_the_sessions_in_bounded_batches() -> None:
    """A round examines at most `batch` sessions per step, steps `step_ms` apart, and starts
    again at most once a grain; a session closed meanwhile is skipped, and one left open (the
    manager did not close it) is found again by the next round."""
    expiry = SessionExpiry(expiry_ms=640, batch=3, step_ms=10)
    ids = sessions(8)
    for session_id in ids:
        expiry.track(session_id, now_us=0)
    now_us = 700_000
    assert expiry.sweep(now_us=now_us) == ids[:3]
    close(expiry, ids[:2])
    assert expiry.due_us() == now_us + 10_000
    assert expiry.sweep(now_us=now_us + 5_000) == []  # not yet due
    expiry.forget(ids[4])
    assert expiry.sweep(now_us=now_us + 10_000) == [ids[3], ids[5]]
    assert expiry.sweep(now_us=now_us + 20_000) == ids[6:]
    close(expiry, [ids[3], ids[5], ids[6], ids[7]])
    assert expiry.due_us() == now_us + 20_000 + 10_000  # the next round, a grain later
    assert expiry.sweep(now_us=now_us + 30_000) == [ids[2]]


def test_a_reload_keeps_what_this_manager_heard_and_stamps_the_rest_at_the_load() -> None:
    """A map load stamps the sessions this manager did not track with the load time (renewals
    reported to a manager before it are lost), and keeps the stamps of those it tracks (a
    reload after a store failure must not restart every expiry); a disabled expiry tracks
    nothing."""
    expiry = SessionExpiry(expiry_ms=640, batch=100, step_ms=10)
    ids = sessions(3)
    expiry.track(ids[0], now_us=0)
    expiry.reset(ids, now_us=1_000_000)
    assert sweep_all(expiry, 1_000_000) == []
    assert sweep_all(expiry, 1_050_000) == [ids[0]]
    assert sweep_all(expiry, 1_600_000) == []
    assert sorted(sweep_all(expiry, 1_700_000)) == sorted(ids[1:])
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
    second.tick(600, alive=SERVERS)
    (expired,) = second.events(SessionsExpired)
    assert expired.session_ids == (opened.session_id,)


def test_no_expiry_keeps_sessions_and_sets_no_timer_for_them() -> None:
    """`session_expiry_ms` 0: sessions stay until closed, and the manager sweeps nothing."""
    harness = expiring_harness(session_expiry_ms=0)
    opened = harness.open_session(("auth",), client="c1")
    harness.tick(10 * EXPIRY_MS, alive=SERVERS)
    assert harness.events(SessionsExpired) == []
    assert {key.session_id for key in harness.map.part_keys()} == {opened.session_id}


@pytest.mark.parametrize("expiry_ms", [1_499, 1_000, 500])
def test_an_expiry_a_live_credential_outlasts_is_refused(expiry_ms: int) -> None:
    """An expiry under 1.5 credential lifetimes could close a session whose client still holds
    a valid credential: one renewed at half its lifetime, the renewal's report to the manager
    lost. 1.5 lifetimes is accepted."""
    rule = r"session_expiry_ms must be at least 1.5 x credential_lifetime_ms \(1500\)"
    with pytest.raises(ConfigError, match=rule):
        ManagerConfig(credential_lifetime_ms=1_000, session_expiry_ms=expiry_ms)
    assert ManagerConfig(credential_lifetime_ms=1_000, session_expiry_ms=1_500).session_expiry_ms


def test_a_client_back_after_its_credential_expired_hears_its_expired_session_closed() -> None:
    """A client away for longer than the expiry comes back on a new connection with an expired
    credential: that proves nothing, but an authentic credential of a session the map no longer
    holds gets CLOSE_SESSION (after the WELCOME of a HELLO), so its calls fail as closed instead
    of locating a session no answer will ever name. An expired credential of a session still in
    the map, and a forged one, get RESUME_REJECT(CREDENTIAL_REFUSED) with the reason: the
    manager will say nothing of those sessions on that connection, so their client ends them
    (they got nothing before, and their calls located them until their timeout)."""
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
    assert [type(frame) for frame in received] == [
        Welcome,
        Settings,
        CloseSession,
        ResumeReject,
        ResumeReject,
    ]
    assert received[2] == CloseSession(session_id=gone.session_id)
    refused = {f.session_id: f for f in received[3:] if isinstance(f, ResumeReject)}
    assert set(refused) == {still.session_id, bytes(16)}
    assert all(f.reason is ResumeRejectReason.CREDENTIAL_REFUSED for f in refused.values())
    assert "expired" in refused[still.session_id].message
    harness.router.send("c3", MANAGER, MapRequest(map_version=0, credentials=credentials))
    assert harness.take("c3", CloseSession) == [CloseSession(session_id=gone.session_id)]
    assert {f.session_id for f in harness.take("c3", ResumeReject)} == set(refused)
    # A session bound on the connection before is not refused for a stale credential beside.
    renewed = sealer().issue_credential(
        session_id=still.session_id,
        client_id=bytes(16),
        now_us=harness.router.now_us,
        lifetime_ms=60_000,
    )
    fresh = Credential(session_id=still.session_id, credential=renewed)
    harness.router.send("c3", MANAGER, MapRequest(map_version=0, credentials=(fresh,)))
    harness.router.send("c3", MANAGER, MapRequest(map_version=0, credentials=credentials))
    assert {f.session_id for f in harness.take("c3", ResumeReject)} == {bytes(16)}
    # A credential under a key this manager does not hold (a server renewed under a key the
    # manager was not given yet): not bound, but the session is not ended for it either.
    other_key = TokenSealer(KeyRing({7: bytes(range(32))}, current_key_id=7), rng=random.Random(2))
    unknown = other_key.issue_credential(
        session_id=OTHER,
        client_id=bytes(16),
        now_us=harness.router.now_us,
        lifetime_ms=60_000,
    )
    refusals = len(harness.events(CredentialRefused))
    harness.router.send(
        "c4",
        MANAGER,
        MapRequest(map_version=0, credentials=(Credential(session_id=OTHER, credential=unknown),)),
    )
    assert harness.take("c4", ResumeReject) == [] and harness.take("c4", CloseSession) == []
    assert len(harness.events(CredentialRefused)) == refusals + 1


def test_a_reload_after_a_store_failure_does_not_restart_the_expiry() -> None:
    """A failed commit reloads the map (`CommitPipeline`); the manager heard every renewal
    meanwhile, so a session nobody renews still expires on time. Before, each reload stamped
    every session anew, and a store that failed once per expiry kept every session for ever."""
    harness = expiring_harness()
    gone = harness.open_session(("auth",), client="c1")
    harness.tick(1_000, alive=SERVERS)
    failed: list[object] = []

    def fail_once(request: object) -> object:
        if isinstance(request, DeltaCommitRequested) and not failed:
            failed.append(request)
            return StoreFailed(request_id=request.request_id, reason="disk")
        return harness.execute(request)

    harness.router.store_executors[MANAGER] = fail_once
    assert harness.open_session(("cart",), client="c1") is not None
    assert failed and harness.events(MapLoaded)[-1].map_version == harness.map.version - 1
    harness.tick(EXPIRY_MS - 1_000 + 300, alive=SERVERS)
    assert [e.session_ids for e in harness.events(SessionsExpired)] == [(gone.session_id,)]


def test_thousands_of_expired_sessions_close_in_one_version_and_opens_go_on() -> None:
    """Sessions that expire together close in one map version per sweep batch (before: one
    version per session, each a store commit and a push to every server, and a commit queue so
    full that opens were refused); an open during the sweep is served."""
    harness = ManagerHarness(
        credential_lifetime_ms=1_000,
        session_expiry_ms=EXPIRY_MS,
        session_expiry_batch=1_000,
        client_sessions_max=4_096,
    )
    harness.join(*SERVERS)
    opened = [harness.open_session(("auth",), client="c1") for _ in range(2_500)]
    assert all(o is not None for o in opened)
    version = harness.map.version
    harness.tick(EXPIRY_MS + 200, alive=SERVERS)
    assert harness.open_session(("auth",), client="c2") is not None
    harness.tick(200, alive=SERVERS)
    closes = [e for e in harness.events(MapCommitted) if e.change is MapChange.SESSION_CLOSED]
    assert sum(len(e.parts) for e in closes) == 2_500
    assert len(closes) == 3  # batches of 1,000
    assert len(harness.map) == 1
    assert harness.map.version <= version + 4


def test_a_session_led_by_a_server_the_manager_does_not_hear_waits() -> None:
    """Renewals reported by a server whose connection to the manager is lost are lost with its
    heartbeats: a session it leads is not closed meanwhile, however long, and counts as renewed
    when the server is heard again (its expiry runs from there)."""
    harness = ManagerHarness(
        credential_lifetime_ms=1_000,
        session_expiry_ms=EXPIRY_MS,
        suspect_timeout_ms=30_000,  # the silent server must not be suspected and failed over
        failure_timeout_ms=60_000,
    )
    harness.join(*SERVERS)
    opened = harness.open_session(("auth",), client="c1")
    primary = harness.placement(opened_refs(opened)[0]).primary
    harness.router.send(primary, MANAGER, ConnectionLost(peer=primary))
    others = [server for server in SERVERS if server != primary]
    harness.tick(3 * EXPIRY_MS, alive=others)
    assert harness.events(SessionsExpired) == []
    harness.router.send(primary, MANAGER, ConnectionOpened(peer=primary))
    harness.tick(EXPIRY_MS - 100, alive=SERVERS)
    assert harness.events(SessionsExpired) == []
    harness.tick(300, alive=SERVERS)
    assert [e.session_ids for e in harness.events(SessionsExpired)] == [(opened.session_id,)]
