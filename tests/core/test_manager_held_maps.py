"""MAP_REQUESTs the manager holds while the server they would send the client back to is being
failed over: answered when the failover commits, when the server is heard again, at the hold's
deadline, and never to a connection that is gone."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest

from forehand.core._client_map import decode_client_placements
from forehand.core._driver import ConnectionOpened
from forehand.core._manager_clients import HeldMapRequests
from forehand.core._manager_events import (
    HoldEnded,
    MapCommitted,
    MapRequestsAnswered,
    ServerDeclaredDead,
)
from forehand.core.manager import ManagerCore
from forehand.placement import PlacementConfig
from forehand.stores import MemoryStore
from forehand.wire import Credential, MapRequest, MapUpdate

if TYPE_CHECKING:
    from tests.core._manager_helpers import (
        MANAGER,
        ManagerHarness,
        execute,
        manager_config,
        opened_refs,
        sealer,
    )
else:
    from _manager_helpers import (
        MANAGER,
        ManagerHarness,
        execute,
        manager_config,
        opened_refs,
        sealer,
    )

SERVERS = ("s1", "s2", "s3", "s4")
SURVIVORS = ("s2", "s3", "s4")
PARTS = ("auth", "cart", "feed", "chat", "mail", "pay")


def cluster(**overrides: Any) -> tuple[ManagerHarness, Credential]:
    """Four servers and one session of c1 with a part led by s1: the harness and its credential."""
    harness = ManagerHarness(**overrides)
    harness.join(*SERVERS)
    opened = harness.open_session(PARTS, client="c1")
    assert opened is not None
    assert any(harness.placement(ref).primary == "s1" for ref in opened_refs(opened))
    # Later versions (the first may pin c1's placements where they are): c1 is up to date.
    for _ in range(2):
        assert harness.open_session(("auth",), client="c2") is not None
    return harness, Credential(session_id=opened.session_id, credential=opened.credential)


def ask(
    harness: ManagerHarness,
    *credentials: Credential,
    client: str = "c1",
    map_version: int | None = None,
) -> None:
    """A MAP_REQUEST from `client` presenting the sessions, by default at the current version."""
    version = harness.map.version if map_version is None else map_version
    request = MapRequest(map_version=version, credentials=credentials)
    harness.router.send(client, MANAGER, request)


def asked_after_losing_s1(hold_ms: int) -> tuple[ManagerHarness, Credential]:
    """The manager loses its connection to s1, then c1 asks about its session on s1."""
    harness, credential = cluster(map_request_hold_ms=hold_ms)
    harness.router.disconnect(MANAGER, "s1")
    ask(harness, credential)
    return harness, credential


def primaries(update: MapUpdate) -> dict[str, str]:
    entries = decode_client_placements(update.body).entries
    return {entry.placement.part: entry.placement.primary.server_id for entry in entries}


def test_a_request_about_a_reachable_primary_is_answered_at_once() -> None:
    harness, credential = cluster(map_request_hold_ms=5_000)
    ask(harness, credential)
    (update,) = harness.take("c1", MapUpdate)
    assert update.base_version > 0 and primaries(update) == {}


def test_a_request_about_a_lost_primary_waits_for_its_failover() -> None:
    """The connection to s1 is lost: "nothing newer" would send c1 back to it, so the request
    is held through the suspicion, the death and the preparation, and answered by the version
    that promotes s1's parts elsewhere."""
    harness, _ = asked_after_losing_s1(5_000)
    assert harness.take("c1", MapUpdate) == []
    harness.tick(700, alive=SURVIVORS)
    assert [death.server_id for death in harness.events(ServerDeclaredDead)] == ["s1"]
    assert harness.take("c1", MapUpdate) == []
    committed = len(harness.events(MapCommitted))
    harness.tick(500, alive=SURVIVORS)
    assert len(harness.events(MapCommitted)) > committed
    (update,) = harness.take("c1", MapUpdate)
    assert update.base_version == 0
    placed = primaries(update)
    assert set(placed) == set(PARTS) and "s1" not in placed.values()
    assert harness.events(MapRequestsAnswered) == [
        MapRequestsAnswered(requests=1, why=HoldEnded.MOVED)
    ]


def test_a_request_from_an_old_version_is_held_too() -> None:
    """A client whose parts were placed long ago asks from that version: the answer would list
    its parts in full, still on s1, which is no more news than "nothing newer"."""
    harness, credential = cluster(map_request_hold_ms=5_000)
    harness.router.disconnect(MANAGER, "s1")
    ask(harness, credential, map_version=1)
    assert harness.take("c1", MapUpdate) == []
    harness.tick(1_200, alive=SURVIVORS)
    (update,) = harness.take("c1", MapUpdate)
    assert "s1" not in primaries(update).values()


def test_a_request_about_any_reachable_session_is_answered_at_once() -> None:
    """One of the presented sessions has every part on servers the manager reaches: whatever
    the answer tells of it is news the client may need now."""
    harness, credential = cluster(map_request_hold_ms=5_000)
    while True:
        other = harness.open_session(("auth",), client="c1")
        assert other is not None
        if harness.placement(opened_refs(other)[0]).primary != "s1":
            break
    harness.router.disconnect(MANAGER, "s1")
    ask(harness, credential, Credential(session_id=other.session_id, credential=other.credential))
    assert len(harness.take("c1", MapUpdate)) == 1


def test_a_held_request_is_answered_at_its_deadline() -> None:
    harness, _ = asked_after_losing_s1(400)
    harness.tick(399, alive=SURVIVORS)
    assert harness.take("c1", MapUpdate) == []
    harness.tick(1, alive=SURVIVORS)
    (update,) = harness.take("c1", MapUpdate)
    assert update.base_version > 0 and primaries(update) == {}
    assert harness.events(ServerDeclaredDead) == []
    assert [event.why for event in harness.events(MapRequestsAnswered)] == [HoldEnded.DEADLINE]


@pytest.mark.parametrize("how", ["heartbeat", "reconnect"])
def test_a_held_request_is_answered_when_the_server_is_back(how: str) -> None:
    harness, _ = asked_after_losing_s1(5_000)
    harness.tick(100, alive=SURVIVORS)
    assert harness.take("c1", MapUpdate) == []
    if how == "heartbeat":
        harness.heartbeat("s1")
    else:
        harness.manager.receive_message(
            ConnectionOpened(peer="s1"), source="s1", now_us=harness.router.now_us
        )
        harness.router.run()
    (update,) = harness.take("c1", MapUpdate)
    assert update.base_version > 0 and primaries(update) == {}
    assert [event.why for event in harness.events(MapRequestsAnswered)] == [HoldEnded.SERVER_HEARD]


def test_a_request_about_a_suspected_primary_is_held() -> None:
    """Silence alone (the connection still up) is enough once it makes s1 suspected."""
    harness, credential = cluster(map_request_hold_ms=5_000)
    harness.tick(400, alive=SURVIVORS)
    ask(harness, credential)
    assert harness.take("c1", MapUpdate) == []
    harness.heartbeat("s1")
    assert len(harness.take("c1", MapUpdate)) == 1


def test_a_newer_request_replaces_the_held_one_and_keeps_its_deadline() -> None:
    harness, credential = asked_after_losing_s1(400)
    harness.tick(300, alive=SURVIVORS)
    ask(harness, credential)
    harness.tick(99, alive=SURVIVORS)
    assert harness.take("c1", MapUpdate) == []
    harness.tick(1, alive=SURVIVORS)
    assert len(harness.take("c1", MapUpdate)) == 1
    harness.tick(150, alive=SURVIVORS)
    assert harness.take("c1", MapUpdate) == []


def test_a_gone_connection_is_not_answered() -> None:
    harness, _ = asked_after_losing_s1(5_000)
    harness.router.disconnect(MANAGER, "c1")
    harness.tick(1_200, alive=SURVIVORS)
    assert harness.events(ServerDeclaredDead)
    assert harness.take("c1", MapUpdate) == []
    assert harness.events(MapRequestsAnswered) == []


def test_no_hold_answers_at_once() -> None:
    harness, credential = cluster(map_request_hold_ms=0)
    harness.router.disconnect(MANAGER, "s1")
    ask(harness, credential)
    (update,) = harness.take("c1", MapUpdate)
    assert update.base_version > 0


def test_a_request_before_the_map_loads_is_answered_by_the_load() -> None:
    """A manager starting up has no map yet: a client's request waits for the load instead of
    being dropped (the client would ask again only after its timeout)."""
    manager = ManagerCore(
        config=manager_config(map_request_hold_ms=1_000),
        placement_config=PlacementConfig(replica_count=2),
        sealer=sealer(),
        rng=random.Random(1),
        now_us=0,
    )
    loads = manager.store_requests()
    assert loads
    manager.receive_message(MapRequest(map_version=0), source="c1", now_us=10)
    assert not any(isinstance(out.message, MapUpdate) for out in manager.messages_to_send())
    store = MemoryStore()
    for request in loads:
        manager.store_result(execute(store, request), now_us=20)
    answers = [out for out in manager.messages_to_send() if isinstance(out.message, MapUpdate)]
    assert [out.destination for out in answers] == ["c1"]


def test_held_requests_are_bounded_by_the_sessions_they_present() -> None:
    held = HeldMapRequests(hold_us=1_000, sessions_max=3)
    assert held.hold("c1", map_version=5, sessions=(b"a", b"b"), now_us=0)
    assert not held.hold("c2", map_version=5, sessions=(b"c", b"d"), now_us=10)
    assert "c2" not in held and held.sessions == 2
    # A connection over the bound lets go of what it held before.
    assert not held.hold("c1", map_version=6, sessions=(b"a", b"b", b"c", b"d"), now_us=20)
    assert len(held) == 0 and held.sessions == 0 and held.deadline_us() is None


def test_held_requests_are_taken_by_session_deadline_and_connection() -> None:
    held = HeldMapRequests(hold_us=1_000)
    held.hold("c1", map_version=5, sessions=(b"a", b"b"), now_us=0)
    held.hold("c2", map_version=7, sessions=(b"b", b"c"), now_us=100)
    # The newest presenter of a session is the one its move answers.
    assert [source for source, _ in held.take_sessions([b"b", b"x"])] == ["c2"]
    # c1 still waits, for `a` only now (its `b` was c2's to answer).
    assert held.sessions == 1 and held.deadline_us() == 1_000
    held.hold("c1", map_version=6, sessions=(b"a",), now_us=900)
    assert held.deadline_us() == 1_000 and held.sessions == 1
    assert held.take_expired(999) == []
    [(source, request)] = held.take_expired(1_000)
    assert (source, request.map_version, request.sessions) == ("c1", 6, (b"a",))
    assert len(held) == 0 and held.sessions == 0
    assert not HeldMapRequests(hold_us=0).hold("c1", map_version=1, sessions=(), now_us=0)
