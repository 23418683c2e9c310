"""What the manager tells clients: only the sessions a connection proved, and "nothing newer"."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from forehand.core._client_map import CLIENT_PLACEMENTS_ENCODING, decode_client_placements
from forehand.core._manager_clients import PlacementChanges
from forehand.placement import (
    PartKey,
    PartsAdded,
    PlacementConfig,
    PlacementOverridden,
    ServerDrained,
    ShardMap,
    new_session_id,
)
from forehand.placement import Placement as MapPlacement
from forehand.wire import CloseSession, Credential, Hello, MapRequest, MapUpdate

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness
else:
    from _manager_helpers import MANAGER, ManagerHarness

SERVERS = ("s1", "s2", "s3")
SESSION_A = new_session_id(now_ms=1_700_000_000_000, rng=random.Random(1))
SESSION_B = new_session_id(now_ms=1_700_000_000_001, rng=random.Random(2))


def ask(harness: ManagerHarness, client: str, map_version: int) -> MapUpdate:
    harness.router.send(client, MANAGER, MapRequest(map_version=map_version))
    (update,) = harness.take(client, MapUpdate)
    assert update.encoding == CLIENT_PLACEMENTS_ENCODING
    return update


def listed(update: MapUpdate) -> list[tuple[bytes, str]]:
    return [(e.session_id, e.placement.part) for e in decode_client_placements(update.body).entries]


def hello(client_id: int, *credentials: Credential) -> Hello:
    return Hello(versions=(1,), client_id=bytes([client_id] * 16), credentials=credentials)


def test_a_client_without_proven_sessions_learns_nothing() -> None:
    """No whole map for clients: a connection that proved no session gets an empty answer."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    harness.open_session(("auth",), client="c1")
    harness.router.send("stranger", MANAGER, hello(9))
    update = ask(harness, "stranger", 0)
    assert (update.base_version, listed(update)) == (0, [])
    assert update.map_version == harness.map.version


def test_a_new_hello_forgets_what_an_earlier_connection_proved() -> None:
    """A reconnecting client is answered only for the sessions its new HELLO presents."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    first = harness.open_session(("auth",), client="c1")
    second = harness.open_session(("cart",), client="c1")
    assert len(listed(ask(harness, "c1", 0))) == 2
    credential = Credential(session_id=second.session_id, credential=second.credential)
    harness.router.send("c1", MANAGER, hello(1, credential))
    assert listed(ask(harness, "c1", 0)) == [(second.session_id, "cart")]
    harness.router.send("c1", MANAGER, hello(1))
    assert listed(ask(harness, "c1", 0)) == []
    assert first.session_id != second.session_id


def test_an_up_to_date_client_hears_nothing_newer() -> None:
    """A client whose version is current for its sessions gets an empty delta from it."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    opened = harness.open_session(("auth", "cart"), client="c1")
    version = opened.map_version
    # Another client's session commits: it does not change c1's placements.
    harness.open_session(("auth",), client="c2")
    assert harness.map.version > version
    update = ask(harness, "c1", version)
    assert (update.map_version, update.base_version) == (harness.map.version, version)
    assert listed(update) == []
    # A client claiming the newest version is answered against the version before it.
    update = ask(harness, "c1", harness.map.version)
    assert update.base_version == harness.map.version - 1 and listed(update) == []


def test_a_moved_session_is_answered_in_full() -> None:
    """After a handoff moves a client's session, its MAP_REQUEST gets the complete placements."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    opened = harness.open_session(("auth",), client="c1")
    version = opened.map_version
    source = opened.placements[0].primary.server_id
    target = next(s for s in SERVERS if s != source)
    queued = harness.manager.handoff(opened.session_id, target=target, now_us=harness.router.now_us)
    assert queued == 1
    harness.router.advance(ms=100)
    assert harness.map.primary_of(PartKey(session_id=opened.session_id, part="auth")) == target
    update = ask(harness, "c1", version)
    assert update.base_version == 0
    entries = decode_client_placements(update.body).entries
    assert [(e.placement.part, e.placement.primary.server_id) for e in entries] == [
        ("auth", target)
    ]


def test_a_server_change_answers_every_client_in_full() -> None:
    """A drain (a server operation) may move any part, so nobody hears "nothing newer"."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    opened = harness.open_session(("auth",), client="c1")
    assert harness.manager.drain("s3", now_us=harness.router.now_us)
    harness.router.advance(ms=1)
    update = ask(harness, "c1", opened.map_version)
    assert update.base_version == 0
    assert listed(update) == [(opened.session_id, "auth")]


def test_a_closed_session_is_answered_in_full_without_it() -> None:
    """A session closed elsewhere is left out of a complete answer, never "unchanged"."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    kept = harness.open_session(("auth",), client="c1")
    closed = harness.open_session(("cart",), client="c1")
    credentials = [
        Credential(session_id=o.session_id, credential=o.credential) for o in (kept, closed)
    ]
    harness.router.send("c2", MANAGER, hello(2, *credentials))
    harness.router.send("c1", MANAGER, CloseSession(session_id=closed.session_id))
    update = ask(harness, "c2", harness.map.version)
    assert update.base_version == 0
    assert listed(update) == [(kept.session_id, "auth")]


def test_a_session_the_map_no_longer_holds_is_closed_for_a_client_presenting_it() -> None:
    """A restarted client asks about a session closed meanwhile (its credential still valid):
    the manager answers CLOSE_SESSION for it, so its calls fail as closed by the manager, not as
    a placement never found; the sessions it still holds are answered as usual."""
    harness = ManagerHarness()
    harness.join(*SERVERS)
    kept = harness.open_session(("auth",), client="c1")
    closed = harness.open_session(("cart",), client="c1")
    harness.router.send("c1", MANAGER, CloseSession(session_id=closed.session_id))
    harness.router.run()
    credentials = tuple(
        Credential(session_id=o.session_id, credential=o.credential) for o in (kept, closed)
    )
    harness.router.send(
        "c2", MANAGER, MapRequest(map_version=harness.map.version, credentials=credentials)
    )
    assert harness.take("c2", CloseSession) == [CloseSession(session_id=closed.session_id)]
    (update,) = harness.take("c2", MapUpdate)
    assert listed(update) == []  # nothing newer for the session it still holds
    assert harness.take("c2", CloseSession) == []


def empty_map() -> ShardMap:
    return ShardMap.empty(config=PlacementConfig())


def committed(
    changes: PlacementChanges, version: int, *operations: Any, implicit: Any = ()
) -> None:
    changes.committed(empty_map().delta(*operations), version, implicit)


def test_placement_changes_follow_the_operations_that_name_sessions() -> None:
    """Session operations and implicit moves date their sessions; others keep their version."""
    changes = PlacementChanges(sessions_max=8)
    committed(changes, 3, PartsAdded(session_id=SESSION_A, parts=("auth",)))
    pin = PlacementOverridden(
        session_id=SESSION_A, part="auth", placement=MapPlacement(primary="s1", replicas=())
    )
    moved = PartKey(session_id=SESSION_B, part="cart")
    committed(changes, 5, pin, implicit=(moved,))
    assert changes.changed_after(SESSION_A) == 5 and changes.changed_after(SESSION_B) == 5
    assert changes.changed_after(bytes(16)) == 0


def test_placement_changes_assume_the_worst_when_they_cannot_tell() -> None:
    """A server operation, an unknown implicit move set or a full table date every session."""
    changes = PlacementChanges(sessions_max=1)
    committed(changes, 2, PartsAdded(session_id=SESSION_A, parts=("auth",)))
    committed(changes, 4, ServerDrained(server_id="s1"))
    assert changes.changed_after(SESSION_B) == 4
    committed(changes, 6, PartsAdded(session_id=SESSION_A, parts=("cart",)), implicit=None)
    assert changes.changed_after(SESSION_B) == 6
    committed(changes, 7, PartsAdded(session_id=SESSION_A, parts=("video",)))
    assert (changes.changed_after(SESSION_A), changes.changed_after(SESSION_B)) == (7, 6)
    committed(changes, 8, PartsAdded(session_id=SESSION_B, parts=("video",)))
    assert changes.changed_after(bytes(16)) == 8
