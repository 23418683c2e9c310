"""Tests of ManagerCore: start-up, membership, the commit pipeline, map distribution, sessions."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from forehand.core._client_map import CLIENT_PLACEMENTS_ENCODING, decode_client_placements
from forehand.core._driver import ConnectionCloseRequested, ConnectionOpened
from forehand.core._manager_config import ManagerConfig
from forehand.core._manager_events import (
    CredentialRefused,
    CredentialsPaced,
    DeathCause,
    MapChange,
    MapCommitRejected,
    MapCommitted,
    MapLoaded,
    PeerRefused,
    ServerDeclaredDead,
    ServerJoined,
    ServerSuspected,
    SessionOpenRefused,
    SessionRegistered,
)
from forehand.core._manager_origins import OpenRateLimit
from forehand.core._membership import MemberState
from forehand.core.manager import OPEN_RETRY_AFTER_MS, REFUSAL_NAMES_MAX, ManagerCore
from forehand.core.messages import (
    ANNOUNCED_PARTS_MAX,
    HeartbeatReported,
    MapPublished,
    MapRequested,
    ServerAnnounced,
)
from forehand.errors import ConfigError
from forehand.placement import PartKey, PlacementConfig, ShardMap
from forehand.stores import (
    DeltaCommitRequested,
    DeltaRejected,
    MapLoadRequested,
    MemoryStore,
    RejectionReason,
    SnapshotSaveRequested,
    StoreFailed,
)
from forehand.stores import (
    MapLoaded as StoreMapLoaded,
)
from forehand.wire import (
    CloseSession,
    Credential,
    Error,
    ErrorCode,
    Hello,
    MapRequest,
    MapUpdate,
    OpenSession,
    OpenSessionRefused,
    Ping,
    Pong,
    ResumeReject,
    ResumeRejectReason,
    SessionOpened,
    Settings,
    Welcome,
    encode_frame,
)

if TYPE_CHECKING:
    from tests.core._manager_helpers import (
        IDLE,
        MANAGER,
        ManagerHarness,
        execute,
        manager_config,
        sealer,
    )
else:
    from _manager_helpers import IDLE, MANAGER, ManagerHarness, execute, manager_config, sealer

SERVERS = ("s1", "s2", "s3")


def bare_manager(**overrides: object) -> ManagerCore:
    """A manager driven by hand, without a router or a store executor."""
    return ManagerCore(
        config=manager_config(**overrides),
        placement_config=PlacementConfig(replica_count=2),
        sealer=sealer(),
        rng=random.Random(5),
        now_us=0,
    )


def announce(server_id: str, incarnation: int = 1) -> ServerAnnounced:
    return ServerAnnounced(
        server_id=server_id, incarnation=incarnation, address=f"{server_id}:1", zone="z", weight=1.0
    )


def run_store(core: ManagerCore, store: MemoryStore) -> int:
    """Execute every pending store request of `core` on `store`; how many ran."""
    ran = 0
    while requests := core.store_requests():
        for request in requests:
            core.store_result(execute(store, request), now_us=0)
            ran += 1
    return ran


# Start-up.


def test_start_up_asks_the_store_for_the_map_first() -> None:
    """The very first output is a map load request, before any input."""
    core = bare_manager()
    (request,) = core.store_requests()
    assert isinstance(request, MapLoadRequested)
    assert core.shard_map is None and core.map_version == 0


def test_nothing_commits_before_the_map_is_loaded() -> None:
    """A server announced before the load waits; its join commits right after the load."""
    core = bare_manager()
    (load,) = core.store_requests()
    core.receive_message(announce("s1"), source="s1", now_us=0)
    assert core.store_requests() == []
    assert core.messages_to_send() == []
    store = MemoryStore()
    core.store_result(execute(store, load), now_us=1)
    (commit,) = core.store_requests()
    assert isinstance(commit, DeltaCommitRequested) and commit.base_version == 0
    core.store_result(execute(store, commit), now_us=2)
    assert core.map_version == 1
    published = [o.message for o in core.messages_to_send() if o.destination == "s1"]
    assert core.shard_map is not None
    assert published == [MapPublished(map_version=1, base_version=0, body=core.shard_map.encode())]


def test_a_new_manager_resumes_from_the_stored_map() -> None:
    """A manager started on a store with history restores its servers as members."""
    first = ManagerHarness()
    first.join(*SERVERS)
    first.open_session()
    second = ManagerHarness(store=first.store)
    (loaded,) = second.events(MapLoaded)
    assert loaded.map_version == first.map.version == 4
    assert loaded.servers == 3 and loaded.parts == 2
    assert second.manager.membership.live_ids() == list(SERVERS)
    # The restored members get the whole map at once.
    assert second.take("s2", MapPublished)[-1].map_version == 4


def test_a_restored_member_learns_its_incarnation_from_its_first_heartbeat() -> None:
    """After a manager restart a heartbeat names the incarnation; a later announce is a restart."""
    first = ManagerHarness()
    first.join(*SERVERS)
    second = ManagerHarness(store=first.store)
    second.incarnations["s1"] = 4
    second.heartbeat("s1")
    member = second.manager.membership.get("s1")
    assert member is not None and member.incarnation == 4
    second.announce("s1", incarnation=5)
    (dead,) = second.events(ServerDeclaredDead)
    assert dead.cause is DeathCause.RESTARTED


# Membership.


def test_a_join_is_committed_then_published_whole_to_the_new_server() -> None:
    """ServerAnnounced -> join delta -> committed -> the new server gets the whole map."""
    harness = ManagerHarness()
    harness.join("s1")
    (joined,) = harness.events(ServerJoined)
    assert (joined.server_id, joined.incarnation, joined.map_version) == ("s1", 1, 1)
    (committed,) = harness.events(MapCommitted)
    assert committed.change is MapChange.SERVER_JOINED and committed.servers == ("s1",)
    (whole,) = harness.take("s1", MapPublished)
    assert whole.base_version == 0 and ShardMap.decode(whole.body).server("s1").zone == "zone-s1"
    assert harness.manager.membership.state_of("s1") is MemberState.ALIVE


def test_members_get_every_later_version_as_a_delta_in_order() -> None:
    """Live servers receive each committed version once, in order, chaining base versions."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    harness.open_session()
    harness.open_session(("video",))
    received = harness.take("s1", MapPublished)
    assert [m.map_version for m in received] == [1, 2, 3, 4, 5]
    assert [m.base_version for m in received] == [0, 1, 2, 3, 4]
    rebuilt = ShardMap.decode(received[0].body)
    for message in received[1:]:
        rebuilt = rebuilt.apply(ShardMap.decode_delta(message.body))
    assert rebuilt.version == harness.map.version
    assert rebuilt.diff(harness.map).moved == () and len(rebuilt) == len(harness.map) == 3


def test_heartbeats_update_liveness_and_load() -> None:
    """A heartbeat records the load and keeps the server alive past the timeouts."""
    harness = ManagerHarness()
    harness.join("s1")
    harness.heartbeat("s1", cpu=0.42)
    member = harness.manager.membership.get("s1")
    assert member is not None and member.load is not None
    assert member.load.cpu_utilization == 0.42
    harness.tick(2_000, alive=["s1"])
    assert harness.events(ServerSuspected) == []
    assert harness.manager.membership.state_of("s1") is MemberState.ALIVE


def test_silence_suspects_then_declares_dead() -> None:
    """No heartbeat: suspected at suspect_timeout_ms, dead at failure_timeout_ms."""
    harness = ManagerHarness()
    harness.join("s1", "s2")
    harness.tick(400, alive=["s2"])
    (suspected,) = harness.events(ServerSuspected)
    assert suspected.server_id == "s1" and suspected.silent_us == 300_000
    harness.tick(300, alive=["s2"])
    (dead,) = harness.events(ServerDeclaredDead)
    assert dead.server_id == "s1" and dead.cause is DeathCause.SILENCE
    assert dead.silent_us == 600_000


def test_a_restarted_server_rejoins_after_its_old_incarnation_failed_over() -> None:
    """A new incarnation: the old one is dead (failover), then the new one joins again."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    opened = harness.open_session(("auth", "cart", "feed", "chat"))
    assert opened is not None
    held = harness.primaries("s1")
    harness.announce("s1", incarnation=2)
    (dead,) = harness.events(ServerDeclaredDead)
    assert dead.cause is DeathCause.RESTARTED and dead.primary_parts == len(held)
    # The survivors fence and answer; the promotion commits, then the new incarnation joins.
    for server_id in ("s2", "s3"):
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 0))
    joins = harness.events(ServerJoined)
    assert [(j.server_id, j.incarnation) for j in joins][-1] == ("s1", 2)
    assert harness.map.server("s1").state.value == "active"
    assert harness.primaries("s1") == []


def test_a_second_process_under_a_running_servers_id_is_refused_as_superseded() -> None:
    """A walkthrough left a server restarted by hand running, and the next cluster's s2 joined
    beside it: each process's connection replaced the other's at the manager, whose messages
    went to whichever held it; 1,603 failovers of the same parts, one a second. The older
    incarnation is now closed with SUPERSEDED (on which a server stops), whether it announces
    or only heartbeats; the running one is untouched."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    assert harness.open_session(("auth", "cart")) is not None
    harness.announce("s2", incarnation=5)
    for prepared_by in ("s1", "s3"):
        for prepared in harness.prepared(prepared_by):
            harness.positions(prepared_by, prepared.map_version, dict.fromkeys(prepared.parts, 0))
    harness.tick(500, alive=SERVERS)
    harness.take("s2", Error)
    deaths = len(harness.events(ServerDeclaredDead))
    # The stray (incarnation 1) announces again, then heartbeats.
    harness.announce("s2", incarnation=1)
    harness.incarnations["s2"] = 1
    harness.heartbeat("s2")
    harness.router.run()
    refused = harness.take("s2", Error)
    assert [e.code for e in refused] == [ErrorCode.SUPERSEDED, ErrorCode.SUPERSEDED]
    assert "older than its running incarnation 5" in refused[0].reason
    assert {e.error_code for e in harness.events(PeerRefused)} == {ErrorCode.SUPERSEDED}
    # Nothing else changed: no death, and the running incarnation is still the member's.
    harness.incarnations["s2"] = 5
    harness.tick(2_000, alive=SERVERS)
    assert len(harness.events(ServerDeclaredDead)) == deaths
    member = harness.manager.membership.get("s2")
    assert member is not None and member.incarnation == 5 and member.is_live


# The commit pipeline.


def test_only_one_commit_is_in_flight() -> None:
    """A second change waits until the first commit's result arrives."""
    core = bare_manager()
    store = MemoryStore()
    run_store(core, store)
    core.receive_message(announce("s1"), source="s1", now_us=0)
    core.receive_message(announce("s2"), source="s2", now_us=0)
    (first,) = core.store_requests()
    assert core.store_requests() == []
    core.store_result(execute(store, first), now_us=1)
    (second,) = core.store_requests()
    assert isinstance(second, DeltaCommitRequested) and second.base_version == 1


def manager_with_one_server(**overrides: object) -> tuple[ManagerCore, MemoryStore]:
    """A manager over a memory store with s1 joined, its outbox drained."""
    core = bare_manager(**overrides)
    store = MemoryStore()
    run_store(core, store)
    core.receive_message(announce("s1"), source="s1", now_us=0)
    run_store(core, store)
    core.messages_to_send()
    return core, store


def refusals(core: ManagerCore) -> list[SessionOpenRefused]:
    """The SessionOpenRefused events among those not yet taken."""
    found = []
    while (event := core.next_event()) is not None:
        if isinstance(event, SessionOpenRefused):
            found.append(event)
    return found


def test_a_full_map_refuses_new_sessions() -> None:
    """Past map_parts_max parts, OPEN_SESSION is refused for good (OPEN_SESSION_REFUSED naming
    the bound, no retry: anyone who reaches the manager may open sessions, and they stay until
    closed); the connection and the sessions already open are kept."""
    core, store = manager_with_one_server(map_parts_max=4)
    core.receive_message(OpenSession(request_id=1, parts=("a", "b", "c")), source="c", now_us=0)
    run_store(core, store)
    opened = [o.message for o in core.messages_to_send() if isinstance(o.message, SessionOpened)]
    assert len(opened) == 1
    core.receive_message(OpenSession(request_id=2, parts=("a", "b")), source="c", now_us=0)
    sent = [o.message for o in core.messages_to_send()]
    assert sent == [
        OpenSessionRefused(
            request_id=2, reason="the shard map holds map_parts_max=4 parts", retry_after_ms=0
        )
    ]
    (event,) = refusals(core)
    assert event.cause == "map_full" and event.parts == ("a", "b")
    assert core.shard_map is not None and len(core.shard_map) == 3
    # A smaller session still fits, on the same connection.
    core.receive_message(OpenSession(request_id=3, parts=("a",)), source="c", now_us=0)
    run_store(core, store)
    opened = [o.message for o in core.messages_to_send() if isinstance(o.message, SessionOpened)]
    assert [m.request_id for m in opened] == [3]


def test_an_origin_that_opens_too_fast_is_paced() -> None:
    """Past its burst, an origin's OPEN_SESSIONs are refused with the wait until its bucket
    holds one open again (retry_after_ms), the connection kept; another origin, and a client
    connection with no origin (a transport without addresses), open as before; the wait over,
    the paced origin opens again. Before, one host reconnecting could open sessions at the
    manager's full commit rate."""
    core, store = manager_with_one_server(open_rate_per_origin=2.0, open_burst_per_origin=3)
    for source, origin in (("a1", "192.0.2.7"), ("a2", "192.0.2.7"), ("b", "198.51.100.1")):
        core.receive_message(ConnectionOpened(peer=source, origin=origin), source=source, now_us=0)
    now_us = 1_000_000

    def opened(source: str, request_id: int) -> list[object]:
        core.receive_message(
            OpenSession(request_id=request_id, parts=("a",)), source=source, now_us=now_us
        )
        run_store(core, store)
        return [o.message for o in core.messages_to_send() if o.destination == source]

    # The burst spans the origin's connections: two on a1, one on a2.
    for source, request_id in (("a1", 1), ("a1", 2), ("a2", 3)):
        assert [type(m) for m in opened(source, request_id)] == [SessionOpened]
    (refused,) = opened("a1", 4)
    assert isinstance(refused, OpenSessionRefused) and refused.retry_after_ms == 500
    assert "192.0.2.7" in refused.reason and "open_rate_per_origin=2" in refused.reason
    (event,) = refusals(core)
    assert event.cause == "origin_rate" and event.retry_after_ms == 500
    assert [type(m) for m in opened("b", 5)] == [SessionOpened]
    assert [type(m) for m in opened("c", 6)] == [SessionOpened]
    # A quarter of a second later half a token came back: the wait is the other half.
    now_us += 250_000
    (refused,) = opened("a2", 7)
    assert isinstance(refused, OpenSessionRefused) and refused.retry_after_ms == 250
    now_us += 250_000
    assert [type(m) for m in opened("a2", 8)] == [SessionOpened]
    assert core.shard_map is not None and len(core.shard_map) == 6


def test_open_pacing_forgets_the_quietest_origin_first() -> None:
    """The table of origins is bounded (`origins_max`): the origin heard from longest ago goes
    first, and a rate of 0 keeps no table at all."""
    pace = OpenRateLimit(rate_per_s=1.0, burst=1, origins_max=2)
    assert pace.take("x", 0) == 0 and pace.take("x", 0) == 1000
    assert pace.take("y", 0) == 0 and pace.take("x", 10) > 0
    assert pace.take("z", 20) == 0  # y is forgotten, x was heard from last
    assert len(pace) == 2
    assert pace.take("x", 30) > 0
    assert pace.take("y", 30) == 0  # forgotten: a full bucket again
    off = OpenRateLimit(rate_per_s=0.0, burst=1, origins_max=2)
    assert not off.enabled
    assert all(off.take("x", 0) == 0 for _ in range(5)) and len(off) == 0


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("open_rate_per_origin", float("nan")),
        ("open_rate_per_origin", -1.0),
        ("origins_max", 0),
        ("credential_rate_per_origin", float("inf")),
        ("credential_rate_per_origin", -1.0),
        ("credential_burst_per_origin", 0),
    ],
)
def test_bad_open_pacing_settings_are_refused(setting: str, value: float) -> None:
    with pytest.raises(ConfigError, match=setting):
        ManagerConfig(**{setting: value})  # type: ignore[arg-type]


def test_a_full_queue_pushes_back_on_new_sessions() -> None:
    """Beyond pending_deltas_max queued changes, OPEN_SESSION is refused for a while
    (retry_after_ms > 0), and the connection stays: before, the refusal was an ERROR that closed
    it, and with it the client's other opens."""
    core, store = manager_with_one_server(pending_deltas_max=2)
    for request_id in range(4):
        core.receive_message(OpenSession(request_id=request_id, parts=("a",)), source="c", now_us=0)
    sent = [o.message for o in core.messages_to_send()]
    assert sent == [
        OpenSessionRefused(
            request_id=3,
            reason="the manager's commit queue is full",
            retry_after_ms=OPEN_RETRY_AFTER_MS,
        )
    ]
    run_store(core, store)
    opened = [o.message for o in core.messages_to_send() if isinstance(o.message, SessionOpened)]
    assert len(opened) == 3
    # Sent again, it opens.
    core.receive_message(OpenSession(request_id=3, parts=("a",)), source="c", now_us=1_000)
    run_store(core, store)
    opened = [o.message for o in core.messages_to_send() if isinstance(o.message, SessionOpened)]
    assert [m.request_id for m in opened] == [3]
    causes = [e.cause for e in refusals(core)]
    assert causes == ["queue_full"]


def test_a_connection_holds_at_most_client_sessions_max_sessions() -> None:
    """Past client_sessions_max sessions (open or opening) on one connection, OPEN_SESSION is
    refused for good: the connection would forget its oldest sessions, whose CLOSE_SESSION then
    proves nothing (2,000 sessions opened on one connection left 976 in the map once all were
    closed). A close makes room; another connection has its own count."""
    core, store = manager_with_one_server(client_sessions_max=2)
    for request_id in (1, 2, 3):
        core.receive_message(OpenSession(request_id=request_id, parts=("a",)), source="c", now_us=0)
    (refused,) = [o.message for o in core.messages_to_send()]
    assert isinstance(refused, OpenSessionRefused) and refused.request_id == 3
    assert refused.retry_after_ms == 0 and "client_sessions_max=2" in refused.reason
    assert [e.cause for e in refusals(core)] == ["client_full"]
    run_store(core, store)
    opened = [o.message for o in core.messages_to_send() if isinstance(o.message, SessionOpened)]
    assert [m.request_id for m in opened] == [1, 2]
    core.receive_message(OpenSession(request_id=4, parts=("a",)), source="d", now_us=0)
    core.receive_message(CloseSession(session_id=opened[0].session_id), source="c", now_us=0)
    core.receive_message(OpenSession(request_id=5, parts=("a",)), source="c", now_us=0)
    run_store(core, store)
    answered = [o.message for o in core.messages_to_send()]
    assert sorted(m.request_id for m in answered if isinstance(m, SessionOpened)) == [4, 5]
    assert core.shard_map is not None and len(core.shard_map) == 3


def hello(core: ManagerCore, source: str, client_id: bytes) -> None:
    core.receive_message(Hello(versions=(1,), client_id=client_id), source=source, now_us=0)
    core.messages_to_send()


def test_an_open_sent_again_on_a_new_connection_opens_one_session() -> None:
    """A client loses its connection before SESSION_OPENED and sends the same OPEN_SESSION on a
    new one: still being committed, the answer goes to the new connection; committed, it is
    answered again with the same session. Before, each retry opened another session, and the
    first stayed in the map with no client to close it (a burst of opens over a dropped
    connection left hundreds)."""
    core, store = manager_with_one_server()
    client_id = bytes(range(16))
    hello(core, "c-1", client_id)
    core.receive_message(OpenSession(request_id=7, parts=("a", "b")), source="c-1", now_us=0)
    # Lost before the commit: sent again on the next connection.
    hello(core, "c-2", client_id)
    core.receive_message(OpenSession(request_id=7, parts=("a", "b")), source="c-2", now_us=0)
    run_store(core, store)
    sent = core.messages_to_send()
    ((to, opened),) = [
        (o.destination, o.message) for o in sent if o.message.__class__ is SessionOpened
    ]
    assert isinstance(opened, SessionOpened)
    assert to == "c-2" and opened.request_id == 7
    # Lost again after the commit: answered again, the same session.
    hello(core, "c-3", client_id)
    core.receive_message(OpenSession(request_id=7, parts=("a", "b")), source="c-3", now_us=1)
    ((to, again),) = [
        (o.destination, o.message)
        for o in core.messages_to_send()
        if o.message.__class__ is SessionOpened
    ]
    assert isinstance(again, SessionOpened)
    assert to == "c-3"
    assert again.session_id == opened.session_id and again.credential != opened.credential
    assert core.shard_map is not None and len(core.shard_map) == 2
    # The new connection may close it.
    core.receive_message(CloseSession(session_id=again.session_id), source="c-3", now_us=2)
    run_store(core, store)
    assert len(core.shard_map) == 0


def test_another_client_or_other_parts_under_the_same_request_id_open_anew() -> None:
    """The same request id from another client id, or with other parts, is a new session."""
    core, store = manager_with_one_server()
    hello(core, "c-1", bytes(16))
    hello(core, "c-2", bytes(range(16)))
    for source, parts in (("c-1", ("a",)), ("c-2", ("a",)), ("c-1", ("a", "b"))):
        core.receive_message(OpenSession(request_id=7, parts=parts), source=source, now_us=0)
        run_store(core, store)
    opened = [o.message for o in core.messages_to_send() if isinstance(o.message, SessionOpened)]
    assert len({m.session_id for m in opened}) == 3
    assert core.shard_map is not None and len(core.shard_map) == 4


def test_an_open_no_server_can_take_is_refused_for_a_while() -> None:
    """With no server ACTIVE (the only one draining), the open's parts cannot be placed: it is
    refused with a retry hint and the cause, and the connection stays; once a server is
    ACTIVE again the same open succeeds."""
    core, store = manager_with_one_server()
    assert core.drain("s1", now_us=0)
    run_store(core, store)
    core.messages_to_send()
    core.receive_message(OpenSession(request_id=5, parts=("a",)), source="c", now_us=0)
    run_store(core, store)
    sent = [o.message for o in core.messages_to_send() if o.destination == "c"]
    (refused,) = sent
    assert isinstance(refused, OpenSessionRefused) and refused.request_id == 5
    assert refused.retry_after_ms == OPEN_RETRY_AFTER_MS
    assert "no ACTIVE server" in refused.reason
    (event,) = refusals(core)
    assert event.cause == "unplaceable"


def test_a_rejected_commit_reloads_the_map_and_replans() -> None:
    """Another writer moved the store on: the manager reloads, rebuilds and commits on top."""
    core = bare_manager()
    store = MemoryStore()
    run_store(core, store)
    core.receive_message(announce("s1"), source="s1", now_us=0)
    run_store(core, store)
    # Another manager commits a version behind this one's back.
    rival = ShardMap.empty(config=PlacementConfig(replica_count=2))
    rival = rival.apply(rival.join_server(server_id="s1", address="s1:1", zone="z"))
    theirs = rival.join_server(server_id="s9", address="s9:1", zone="z")
    execute(
        store,
        DeltaCommitRequested(request_id=99, base_version=1, delta=ShardMap.encode_delta(theirs)),
    )
    core.receive_message(OpenSession(request_id=1, parts=("a",)), source="c", now_us=0)
    (commit,) = core.store_requests()
    result = execute(store, commit)
    assert isinstance(result, DeltaRejected) and result.reason is RejectionReason.STALE_BASE
    core.store_result(result, now_us=1)
    events = []
    while (event := core.next_event()) is not None:
        events.append(event)
    assert any(isinstance(e, MapCommitRejected) for e in events)
    (reload,) = core.store_requests()
    assert isinstance(reload, MapLoadRequested)
    core.store_result(execute(store, reload), now_us=2)
    assert core.map_version == 2 and core.shard_map is not None
    assert "s9" in {entry.server_id for entry in core.shard_map.servers}
    run_store(core, store)
    opened = [o.message for o in core.messages_to_send() if isinstance(o.message, SessionOpened)]
    assert [frame.map_version for frame in opened] == [3]


def test_a_store_failure_reloads_and_retries_the_change() -> None:
    """StoreFailed says nothing changed for sure: reload, then commit the change again."""
    core = bare_manager()
    store = MemoryStore()
    run_store(core, store)
    core.receive_message(announce("s1"), source="s1", now_us=0)
    (commit,) = core.store_requests()
    assert isinstance(commit, DeltaCommitRequested)
    core.store_result(StoreFailed(request_id=commit.request_id, reason="disk"), now_us=1)
    (reload,) = core.store_requests()
    assert isinstance(reload, MapLoadRequested)
    core.store_result(execute(store, reload), now_us=2)
    assert run_store(core, store) == 1
    assert core.map_version == 1


def test_a_silent_store_times_out_and_a_commit_that_landed_is_not_repeated() -> None:
    """After store_timeout_ms the manager reloads; a join that did land is found done."""
    core = bare_manager(store_timeout_ms=100)
    store = MemoryStore()
    run_store(core, store)
    core.receive_message(announce("s1"), source="s1", now_us=0)
    (commit,) = core.store_requests()
    execute(store, commit)  # lands, but the answer is lost
    assert core.timer_us() == 100_000
    core.handle_timer(now_us=100_000)
    (reload,) = core.store_requests()
    core.store_result(execute(store, reload), now_us=100_001)
    assert core.store_requests() == []
    assert core.map_version == 1 and store.version == 1
    assert core.membership.state_of("s1") is MemberState.ALIVE


def test_snapshots_are_saved_every_interval() -> None:
    """Every snapshot_interval_deltas commits the manager saves the whole map."""
    core = bare_manager(snapshot_interval_deltas=2)
    store = MemoryStore()
    run_store(core, store)
    seen = []
    for index in range(3):
        core.receive_message(announce(f"s{index}"), source=f"s{index}", now_us=0)
        while requests := core.store_requests():
            for request in requests:
                seen.append(type(request))
                core.store_result(execute(store, request), now_us=0)
    assert seen.count(SnapshotSaveRequested) == 1
    loaded = execute(store, MapLoadRequested(request_id=1))
    assert isinstance(loaded, StoreMapLoaded) and loaded.snapshot_version == 2


# Map distribution.


def test_map_requested_gets_the_deltas_since_the_version_held() -> None:
    """A server that saw a gap asks; it gets the deltas from its version to the current one."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    harness.take("s1", MapPublished)
    harness.router.send("s1", MANAGER, MapRequested(server_id="s1", map_version=1))
    chain = harness.take("s1", MapPublished)
    assert [m.base_version for m in chain] == list(range(1, harness.map.version))
    assert chain[-1].map_version == harness.map.version


def test_a_reconnected_member_is_sent_the_versions_its_broken_connection_lost() -> None:
    """The manager's messages to s1 are lost (a one-way partition, its heartbeats still
    arriving, reporting the version it holds) while two sessions commit; when a new connection
    to s1 opens, the versions since the one it reported go again, and nothing goes to a member
    that reported the current version."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    harness.tick(300, alive=SERVERS)
    held = harness.map.version
    cut = harness.router.partition(MANAGER, "s1")
    harness.open_session()
    harness.open_session()
    harness.router.heal(cut)
    harness.take("s1", MapPublished)
    harness.take("s2", MapPublished)
    stale = HeartbeatReported(
        server_id="s1", incarnation=1, sequence=1_000, map_version=held, load=IDLE, parts=()
    )
    harness.router.send("s1", MANAGER, stale)
    assert harness.take("s1", MapPublished) == []
    harness.router.send("s1", MANAGER, ConnectionOpened(peer="s1"))
    chain = harness.take("s1", MapPublished)
    assert [m.base_version for m in chain] == list(range(held, harness.map.version))
    harness.heartbeat("s2")  # s2 got them, and says so.
    harness.router.send("s2", MANAGER, ConnectionOpened(peer="s2"))
    assert harness.take("s2", MapPublished) == []


def test_dead_servers_stop_receiving_versions() -> None:
    """Only live members get MapPublished."""
    harness = ManagerHarness(replica_count=1)
    harness.join(*SERVERS)
    harness.tick(700, alive=["s1", "s2"])
    harness.take("s3", MapPublished)
    harness.open_session()
    assert harness.take("s3", MapPublished) == []
    assert harness.take("s1", MapPublished) != []


# Sessions.


def test_an_open_naming_a_part_no_server_declares_is_refused_and_the_connection_kept() -> None:
    """Every server said its app declares auth and cart: an OPEN_SESSION naming "crat" gets
    OPEN_SESSION_REFUSED naming it and what is declared, nothing is committed, and the same
    connection's next open succeeds. Before, such a session opened, its calls failed, and every
    handoff moving its parts (held by no server) ran to its deadline and failed over."""
    harness = ManagerHarness()
    for server_id in SERVERS:
        harness.announce(server_id, parts=("auth", "cart"))
    harness.tick(700, alive=SERVERS)
    version = harness.map.version
    harness.router.send("c1", MANAGER, Hello(versions=(1,), client_id=bytes(16)))
    harness.router.take("c1", object)
    harness.router.send("c1", MANAGER, OpenSession(request_id=7, parts=("auth", "crat")))
    (refused,) = harness.router.take("c1", object)
    assert isinstance(refused, OpenSessionRefused) and refused.request_id == 7
    assert refused.reason == "no server's app declares part(s) 'crat' (they declare 'auth', 'cart')"
    assert harness.map.version == version
    (event,) = harness.events(SessionOpenRefused)
    assert event.client == "c1" and event.parts == ("auth", "crat")
    assert harness.open_session(("auth", "cart")) is not None


def test_opens_are_not_checked_while_a_server_has_not_said_its_parts() -> None:
    """A server of an earlier version announces no parts, and may serve any: nothing is
    refused until it restarts on the new version, saying them."""
    harness = ManagerHarness()
    harness.announce("s1", parts=("auth",))
    harness.announce("s2")
    harness.announce("s3", parts=("auth",))
    harness.tick(700, alive=SERVERS)
    assert harness.open_session(("auth", "cart")) is not None
    harness.announce("s2", incarnation=2, parts=("auth",))
    harness.tick(2_000, alive=SERVERS)
    assert harness.open_session(("auth", "cart")) is None
    assert len(harness.events(SessionOpenRefused)) == 1


@pytest.mark.parametrize("upgraded", [("s1", "s2", "s3"), ("s1",)])
def test_new_parts_are_placed_on_servers_whose_app_declares_them(
    upgraded: tuple[str, ...],
) -> None:
    """A rolling upgrade adds the part type `notes`: the `upgraded` servers declare it, the
    others not yet. Every new `notes` part is placed on upgraded servers only, its replicas
    too while enough of them are (three for a primary and two replicas; with one, its
    replicas are old servers, as no other can be); `auth`, which every app declares, still
    goes to the old ones. Before, a third to three quarters of the `notes` parts went to old
    servers, and every call to them failed UNKNOWN_OP."""
    harness = ManagerHarness()
    servers = (*SERVERS, "s4")
    for server_id in servers:
        parts = ("auth", "notes") if server_id in upgraded else ("auth",)
        harness.announce(server_id, parts=parts)
    harness.tick(700, alive=servers)
    opened = [harness.open_session(("auth", "notes")) for _ in range(40)]
    assert all(opened)
    notes = [p for o in opened for p in o.placements if p.part == "notes"]
    auth = [p for o in opened for p in o.placements if p.part == "auth"]
    assert {p.primary.server_id for p in notes} == set(upgraded)
    if len(upgraded) == 3:
        assert all({r.server_id for r in p.replicas} <= set(upgraded) for p in notes)
    # The old servers still take the parts their app declares.
    assert {p.primary.server_id for p in auth} - set(upgraded)


def test_a_server_the_manager_did_not_admit_says_nothing_about_the_parts() -> None:
    """An announcement refused (past servers_max) or stale (an older incarnation) changes
    nothing: a refused server of another app does not widen what is declared, and a stale one
    without the field does not turn the check off (both did, in a first version)."""
    harness = ManagerHarness(servers_max=3)
    for server_id in SERVERS:
        harness.announce(server_id, incarnation=2, parts=("auth", "cart"))
    harness.tick(700, alive=SERVERS)
    harness.announce("s9", parts=("auth", "crat"))
    harness.announce("s1", incarnation=1)
    assert harness.open_session(("auth", "crat")) is None
    assert harness.open_session(("auth", "cart")) is not None


def test_a_manager_that_took_over_learns_the_parts_from_the_next_heartbeats() -> None:
    """A successor loads the map: its members' parts are unknown, so nothing is refused (a
    server that holds a map does not announce again); each server names them in its first
    heartbeat on the new connection, and once all did, an undeclared part is refused, and one
    declared by any server is not."""
    harness = ManagerHarness()
    for server_id in SERVERS:
        harness.announce(server_id, parts=("auth", "cart"))
    harness.tick(700, alive=SERVERS)
    successor = ManagerHarness(store=harness.store)
    successor.tick(300, alive=SERVERS)
    assert successor.open_session(("auth", "crat")) is not None
    successor.heartbeat("s1", declared=("auth",))
    successor.heartbeat("s2", declared=("auth",))
    assert successor.open_session(("cart", "crat")) is not None
    successor.heartbeat("s3", declared=("auth", "cart"))
    assert successor.open_session(("auth", "crat")) is None
    assert successor.open_session(("cart",)) is not None


def test_a_refusal_names_a_bounded_number_of_parts_and_fits_its_frame() -> None:
    """Long part names, many of them: the reason lists REFUSAL_NAMES_MAX of each kind and
    counts the rest, and the frame encodes (a reason over 1024 bytes could not be sent, and
    the client waited for its timeout)."""
    declared = tuple(f"{index:02d}" + "d" * 62 for index in range(40))
    asked = tuple(f"{index:02d}" + "u" * 62 for index in range(64))
    harness = ManagerHarness()
    for server_id in SERVERS:
        harness.announce(server_id, parts=declared)
    harness.tick(700, alive=SERVERS)
    harness.router.send("c1", MANAGER, Hello(versions=(1,), client_id=bytes(16)))
    harness.router.take("c1", object)
    harness.router.send("c1", MANAGER, OpenSession(request_id=3, parts=asked))
    (refused,) = harness.router.take("c1", object)
    assert isinstance(refused, OpenSessionRefused)
    assert f"and {64 - REFUSAL_NAMES_MAX} more" in refused.reason
    assert f"and {40 - REFUSAL_NAMES_MAX} more" in refused.reason
    assert len(encode_frame(refused)) < 1100


def test_an_announcement_with_bad_part_names_is_refused() -> None:
    """A name that is not a part name, or more than ANNOUNCED_PARTS_MAX of them, is a broken
    announcement: ERROR, and the server is not admitted."""
    harness = ManagerHarness()
    harness.announce("s1", parts=("Bad Name",))
    (error,) = harness.take("s1", Error)
    assert "bad ServerAnnounced" in error.reason and "invalid part name" in error.reason
    many = tuple(f"p{index}" for index in range(ANNOUNCED_PARTS_MAX + 1))
    harness.announce("s2", parts=many)
    (error,) = harness.take("s2", Error)
    assert f"more than {ANNOUNCED_PARTS_MAX} parts" in error.reason


def test_open_session_commits_the_parts_and_answers_with_placements_and_tokens() -> None:
    """SESSION_OPENED carries the committed placements, a credential and a token that open."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    opened = harness.open_session(("auth", "cart"))
    assert opened is not None and opened.map_version == harness.map.version
    for placement in opened.placements:
        key = PartKey(session_id=opened.session_id, part=placement.part)
        placed = harness.map.lookup(key)
        assert placement.primary.server_id == placed.primary
        assert tuple(r.server_id for r in placement.replicas) == placed.replicas
        assert placement.primary.host == f"{placed.primary}.test"
    claims = sealer().open(opened.token, now_us=0)
    # The token names one server, the first part's primary, and the parts it serves there.
    first = opened.placements[0].primary.server_id
    assert claims.session_id == opened.session_id and claims.target_server == first
    on_first = tuple(p.part for p in opened.placements if p.primary.server_id == first)
    assert claims.parts == on_first and claims.parts[0] == "auth"
    credential = sealer().open_credential(opened.credential, now_us=0)
    assert credential.session_id == opened.session_id
    (registered,) = harness.events(SessionRegistered)
    assert registered.client == "c1" and registered.session_id == opened.session_id
    # The id is a UUIDv7 minted from the clock and the seeded rng.
    assert opened.session_id[6] >> 4 == 7


def test_bad_open_session_closes_only_that_connection() -> None:
    """An invalid part name gets an ERROR and a close request for that client only."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    harness.router.send("bad", MANAGER, OpenSession(request_id=1, parts=("Not Valid",)))
    (error,) = harness.take("bad", Error)
    assert error.code is ErrorCode.PROTOCOL_ERROR
    assert harness.take("bad", ConnectionCloseRequested)
    assert harness.open_session() is not None


def test_hello_is_welcomed_and_ping_answered() -> None:
    """HELLO gets WELCOME with the map version, then SETTINGS with the lifetime of the
    credentials SESSION_OPENED brings (so that the client renews them in time) and the most
    sessions it keeps for one connection; PING gets PONG."""
    harness = ManagerHarness(
        credential_lifetime_ms=7_200_000, session_expiry_ms=14_400_000, client_sessions_max=77
    )
    harness.join("s1")
    harness.router.send("c1", MANAGER, Hello(versions=(1,), client_id=bytes(16)))
    welcome, settings = harness.router.take("c1", object)
    assert isinstance(welcome, Welcome)
    assert welcome.server_id == MANAGER and welcome.map_version == 1
    assert settings == Settings(credential_lifetime_ms=7_200_000, client_sessions_max=77)
    harness.router.send("c1", MANAGER, Ping(sequence=3, sent_us=77))
    assert harness.take("c1", Pong) == [Pong(sequence=3, sent_us=77)]
    harness.router.send("c2", MANAGER, Hello(versions=(9,), client_id=bytes(16)))
    assert harness.take("c2", Error)[0].code is ErrorCode.VERSION_NEGOTIATION_FAILED


def test_map_request_answers_with_the_clients_own_sessions() -> None:
    """MAP_REQUEST returns the placements of the sessions opened on that connection."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    mine = harness.open_session(("auth",), client="c1")
    harness.open_session(("cart",), client="c2")
    harness.router.send("c1", MANAGER, MapRequest(map_version=0))
    (update,) = harness.take("c1", MapUpdate)
    assert update.encoding == CLIENT_PLACEMENTS_ENCODING and update.base_version == 0
    entries = decode_client_placements(update.body).entries
    assert [(e.session_id, e.placement.part) for e in entries] == [(mine.session_id, "auth")]


def test_hello_credentials_let_a_new_connection_locate_its_sessions() -> None:
    """Sessions whose credentials a HELLO presents are answered on that connection."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    opened = harness.open_session(("auth",), client="c1")
    credential = Credential(session_id=opened.session_id, credential=opened.credential)
    forged = Credential(session_id=bytes(16), credential=b"x" * 40)
    hello = Hello(versions=(1,), client_id=bytes(16), credentials=(credential, forged))
    harness.router.send("c1-again", MANAGER, hello)
    harness.router.send("c1-again", MANAGER, MapRequest(map_version=0))
    (update,) = harness.take("c1-again", MapUpdate)
    entries = decode_client_placements(update.body).entries
    assert [e.session_id for e in entries] == [opened.session_id]


def test_hello_credentials_that_do_not_open_are_reported() -> None:
    """A forged credential and one naming another session each give a CredentialRefused."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    opened = harness.open_session(("auth",), client="c1")
    other = bytes([7] * 16)
    forged = Credential(session_id=bytes(16), credential=b"x" * 40)
    borrowed = Credential(session_id=other, credential=opened.credential)
    hello = Hello(versions=(1,), client_id=bytes(16), credentials=(forged, borrowed))
    harness.router.send("c2", MANAGER, hello)
    refused = harness.events(CredentialRefused)
    assert [(r.client, r.session_id) for r in refused] == [("c2", bytes(16)), ("c2", other)]
    assert {r.reason for r in refused} == {int(ResumeRejectReason.TOKEN_INVALID)}
    assert refused[1].detail == "the credential is another session's"


def test_credential_checks_are_paced_per_origin_and_a_proved_session_costs_none() -> None:
    """A MAP_REQUEST from an origin past its `credential_burst_per_origin` gets only that many
    credentials checked (each costs the manager about 5 us, and a frame carries up to 1,024:
    one client could keep the manager's loop busy with forged ones); the rest bind nothing and
    get no answer (`CredentialsPaced`), and are checked once the bucket refills. A session the
    connection proved is not checked again, however often a frame names it, and another origin
    is not paced by this one's."""
    harness = ManagerHarness(credential_rate_per_origin=100.0, credential_burst_per_origin=3)
    harness.join(*SERVERS)
    opened = harness.open_session(("auth",), client="c1")
    valid = Credential(session_id=opened.session_id, credential=opened.credential)
    forged = tuple(
        Credential(session_id=bytes([n] * 16), credential=b"x" * 40) for n in range(1, 5)
    )
    for client, origin in (("a", "192.0.2.7"), ("b", "198.51.100.1")):
        harness.router.send(client, MANAGER, ConnectionOpened(peer=client, origin=origin))

    def ask(client: str, credentials: tuple[Credential, ...]) -> list[bytes]:
        harness.router.send(client, MANAGER, MapRequest(map_version=0, credentials=credentials))
        (update,) = harness.take(client, MapUpdate)
        return [e.session_id for e in decode_client_placements(update.body).entries]

    assert ask("a", (valid, *forged)) == [opened.session_id]
    assert [len(harness.take("a", ResumeReject))] == [2]
    (paced,) = harness.events(CredentialsPaced)
    assert (paced.client, paced.origin, paced.presented, paced.checked) == ("a", "192.0.2.7", 5, 3)
    # The proved session costs nothing, even named 100 times; the forged ones wait for tokens.
    assert ask("a", (valid,) * 100 + forged) == [opened.session_id]
    assert harness.take("a", ResumeReject) == []
    assert [(p.presented, p.checked) for p in harness.events(CredentialsPaced)] == [(5, 3), (4, 0)]
    harness.router.advance(ms=20)
    ask("a", forged)
    assert len(harness.take("a", ResumeReject)) == 2
    assert ask("b", (valid, *forged[:2])) == [opened.session_id]
    assert len(harness.take("b", ResumeReject)) == 2
    assert len(harness.events(CredentialsPaced)) == 3


def test_close_session_removes_its_parts() -> None:
    """CLOSE_SESSION commits the removal of the session's parts."""
    from forehand.wire import CloseSession

    harness = ManagerHarness()
    harness.join(*SERVERS)
    opened = harness.open_session(("auth", "cart"))
    harness.router.send("c1", MANAGER, CloseSession(session_id=opened.session_id))
    assert len(harness.map) == 0
    assert harness.events(MapCommitted)[-1].change is MapChange.SESSION_CLOSED


def test_events_are_bounded() -> None:
    """Undrained events beyond events_buffered_max drop the oldest, counted."""
    core = bare_manager(events_buffered_max=2)
    store = MemoryStore()
    run_store(core, store)
    for index in range(3):
        core.receive_message(announce(f"s{index}"), source=f"s{index}", now_us=0)
        run_store(core, store)
    assert core.events_dropped > 0
    kept = []
    while (event := core.next_event()) is not None:
        kept.append(event)
    assert len(kept) == 2


@pytest.mark.parametrize("seed", range(5))
def test_config_randomized_is_valid(seed: int) -> None:
    """randomized(rng) always yields a configuration a manager accepts."""
    from forehand.core._manager_config import ManagerConfig

    config = ManagerConfig.randomized(random.Random(seed))
    ManagerCore(
        config=config,
        placement_config=PlacementConfig(),
        sealer=sealer(),
        rng=random.Random(seed),
        now_us=0,
    )
