"""Tests of catching servers up: a readmitted or lagging server gets the deltas since the version
it holds (`MapHistory`), the whole map only when it holds none or the history is too short."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from forehand.core._driver import ConnectionOpened
from forehand.core._manager_commits import MapHistory
from forehand.core._manager_config import ManagerConfig
from forehand.core._manager_events import (
    FailoverCompleted,
    PartsMovedImplicitly,
    ServerDeclaredDead,
    ServerJoined,
)
from forehand.core._membership import MemberState
from forehand.core.messages import MapPublished, MapRequested
from forehand.errors import ConfigError
from forehand.placement import ShardMap
from forehand.stores import MemoryStore
from forehand.wire import FRAME_BYTES_MAX_FLOOR

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness
    from tests.core._server_helpers import wire_servers
else:
    from _manager_helpers import MANAGER, ManagerHarness
    from _server_helpers import wire_servers

SERVERS = ("s1", "s2", "s3")


class Follower:
    """What one hand-played server holds: every MapPublished it received, applied strictly."""

    def __init__(self) -> None:
        self.map: ShardMap | None = None
        self.whole_maps = 0

    def receive(self, messages: list[MapPublished]) -> None:
        for message in messages:
            if message.base_version == 0:
                self.map = ShardMap.decode(message.body)
                self.whole_maps += 1
                continue
            assert self.map is not None and self.map.version == message.base_version
            self.map = self.map.apply(ShardMap.decode_delta(message.body))
            assert self.map.version == message.map_version


def fail_over(harness: ManagerHarness, *survivors: str) -> None:
    """The survivors answer every FailoverPrepared, so the running failover promotes."""
    for server_id in survivors:
        for prepared in harness.prepared(server_id):
            harness.positions(server_id, prepared.map_version, dict.fromkeys(prepared.parts, 0))


def silence_and_readmit(harness: ManagerHarness, follower: Follower, *, sessions: int) -> None:
    """s1 falls silent past the failure timeout (declared dead, failed over) while `sessions`
    sessions open (a version each), then heartbeats again and is readmitted."""
    harness.tick(700, alive=["s2", "s3"])
    (dead,) = harness.events(ServerDeclaredDead)
    assert dead.server_id == "s1"
    fail_over(harness, "s2", "s3")
    assert harness.events(FailoverCompleted)
    for _ in range(sessions):
        assert harness.open_session() is not None
    assert harness.take("s1", MapPublished) == [], "a dead member is sent nothing"
    harness.heartbeat("s1")
    joins = [j for j in harness.events(ServerJoined) if j.server_id == "s1"]
    assert len(joins) == 2, "joined, then readmitted"
    follower.receive(harness.take("s1", MapPublished))


def joined_cluster(**overrides: object) -> tuple[ManagerHarness, Follower]:
    harness = ManagerHarness(**overrides)  # type: ignore[arg-type]
    harness.join(*SERVERS)
    assert harness.open_session() is not None
    follower = Follower()
    follower.receive(harness.take("s1", MapPublished))
    assert follower.map is not None and follower.map.version == harness.map.version
    return harness, follower


def test_a_readmitted_server_gets_the_deltas_since_its_version_not_the_whole_map() -> None:
    """Silence, death, failover, new sessions, readmission: s1 gets only deltas, and applying
    them in order gives exactly the manager's map (byte for byte)."""
    harness, follower = joined_cluster()
    held = harness.map.version
    silence_and_readmit(harness, follower, sessions=3)
    assert follower.whole_maps == 1, "only the first join sent the whole map"
    assert follower.map is not None and follower.map.version == harness.map.version > held + 4
    assert follower.map.encode() == harness.map.encode()
    member = harness.manager.membership.get("s1")
    assert member is not None and member.state is MemberState.ALIVE
    assert member.map_version_sent == harness.map.version


def test_a_server_that_reports_a_newer_version_than_it_was_sent_starts_from_what_it_was_sent() -> (
    None
):
    """The harness's heartbeats claim the manager's current version (more than a dead server
    could hold): the deltas start at the version the manager last sent it."""
    harness, follower = joined_cluster()
    held = harness.map.version
    silence_and_readmit(harness, follower, sessions=2)
    member = harness.manager.membership.get("s1")
    # It claimed more than it held; the strict follower would have failed on a wrong base.
    assert member is not None and member.map_version > held + 2
    assert follower.map is not None and follower.map.encode() == harness.map.encode()


def test_beyond_the_history_a_readmitted_server_gets_the_whole_map() -> None:
    """More versions during its silence than `map_history_deltas_max`: the whole map."""
    harness, follower = joined_cluster(map_history_deltas_max=2)
    silence_and_readmit(harness, follower, sessions=3)
    assert follower.whole_maps == 2
    assert follower.map is not None and follower.map.encode() == harness.map.encode()


def test_without_a_history_every_catch_up_is_the_whole_map() -> None:
    """`map_history_deltas_max=0` keeps nothing: readmissions get the whole map, as before."""
    harness, follower = joined_cluster(map_history_deltas_max=0)
    silence_and_readmit(harness, follower, sessions=1)
    assert follower.whole_maps == 2
    assert follower.map is not None and follower.map.encode() == harness.map.encode()


def test_a_restarted_server_gets_the_whole_map() -> None:
    """A new incarnation holds no map: its join sends a whole map, newer than any its last
    incarnation held."""
    harness, follower = joined_cluster()
    harness.announce("s1", incarnation=2)
    fail_over(harness, "s2", "s3")
    assert [j.incarnation for j in harness.events(ServerJoined) if j.server_id == "s1"] == [1, 2]
    # The new incarnation's follower starts from nothing.
    restarted = Follower()
    received = harness.take("s1", MapPublished)
    assert received[0].base_version == 0
    # Never a version older than its last incarnation held: map versions do not go back on a
    # node (`forehand sim --seed 18001478` did, when a restarted server got the version before
    # its readmission, which still listed it dead).
    assert follower.map is not None and received[0].map_version > follower.map.version
    restarted.receive(received)
    assert restarted.whole_maps == 1 and restarted.map is not None
    assert restarted.map.encode() == harness.map.encode()
    assert follower.whole_maps == 1


def test_map_requested_from_before_the_history_gets_the_whole_map() -> None:
    """A gap older than the history (or a server at version 0) is answered with the whole map."""
    harness, _ = joined_cluster(map_history_deltas_max=1)
    for _ in range(2):
        assert harness.open_session() is not None
    harness.take("s1", MapPublished)
    for held in (1, 0):
        harness.router.send("s1", MANAGER, MapRequested(server_id="s1", map_version=held))
        (whole,) = harness.take("s1", MapPublished)
        assert whole.base_version == 0 and whole.map_version == harness.map.version
    # Within the history: the one delta.
    version = harness.map.version
    harness.router.send("s1", MANAGER, MapRequested(server_id="s1", map_version=version - 1))
    (delta,) = harness.take("s1", MapPublished)
    assert (delta.base_version, delta.map_version) == (version - 1, version)


def test_map_history_chains_and_forgets_the_oldest_beyond_its_bounds() -> None:
    """Count and byte bounds drop the oldest; `since` answers only what it can chain."""
    history = MapHistory(deltas_max=3, bytes_max=25)
    for version in range(1, 6):
        history.record(MapPublished(map_version=version + 1, base_version=version, body=bytes(10)))
    # Five recorded, the byte bound (25) keeps two: bases 4 and 5.
    assert len(history) == 2 and history.bytes == 20
    chain = history.since(4, 6)
    assert chain is not None and [m.base_version for m in chain] == [4, 5]
    assert history.since(3, 6) is None, "older than the history"
    assert history.since(5, 7) is None, "newer than the history"
    assert history.since(0, 6) is None, "a server holding nothing needs the whole map"
    assert history.since(6, 6) is None
    # A version that does not follow starts the history again.
    history.record(MapPublished(map_version=10, base_version=9, body=b"x"))
    assert len(history) == 1 and history.since(5, 6) is None
    history.clear()
    assert len(history) == 0 and history.bytes == 0


def test_the_first_delta_from_the_empty_map_is_not_kept() -> None:
    """Base version 0 means "whole map" in MapPublished: it never goes into the history."""
    history = MapHistory(deltas_max=8, bytes_max=1 << 10)
    history.record(MapPublished(map_version=1, base_version=0, body=b"d"))
    history.record(MapPublished(map_version=2, base_version=1, body=b"d"))
    assert len(history) == 1 and history.since(0, 2) is None


def test_frame_limit_is_at_least_the_protocol_floor() -> None:
    """A frame_bytes_max below what every peer may send (WELCOME could not announce it) is a
    ConfigError at load, not an error at the first HELLO."""
    with pytest.raises(ConfigError, match="frame_bytes_max"):
        ManagerConfig(frame_bytes_max=FRAME_BYTES_MAX_FLOOR - 1)
    assert ManagerConfig(frame_bytes_max=FRAME_BYTES_MAX_FLOOR)


@pytest.mark.parametrize("field", ["map_history_deltas_max", "map_history_bytes_max"])
def test_map_history_bounds_are_checked(field: str) -> None:
    """A negative bound is a ConfigError; a zero byte bound too (zero deltas turns it off)."""
    with pytest.raises(ConfigError, match=field):
        ManagerConfig(**{field: -1})  # type: ignore[arg-type]
    if field == "map_history_bytes_max":
        with pytest.raises(ConfigError, match=field):
            ManagerConfig(map_history_bytes_max=0)
    else:
        assert ManagerConfig(map_history_deltas_max=0).map_history_deltas_max == 0


def test_a_real_server_partitioned_past_the_failure_timeout_catches_up_from_deltas() -> None:
    """A real ServerCore cut off from the manager is declared dead and failed over; healed, it
    is readmitted with the deltas since its version and ends on the manager's version."""
    harness = ManagerHarness(
        heartbeat_interval_ms=100, suspect_timeout_ms=400, failure_timeout_ms=800
    )
    router = harness.router
    servers = wire_servers(router, SERVERS, heartbeat_interval_ms=100)
    router.run()
    router.advance(ms=300)
    assert harness.open_session(("counter",)) is not None
    router.advance(ms=200)
    held = servers["s1"].map_version
    assert held == harness.map.version
    cut = router.partition("s1", MANAGER)
    router.advance(ms=2_000)
    assert [d.server_id for d in harness.events(ServerDeclaredDead)] == ["s1"]
    assert harness.open_session(("counter",)) is not None
    assert harness.map.version > held + 1
    start = len(router.trace)
    router.heal(cut)
    router.advance(ms=1_000)
    sent = [
        message
        for _, source, destination, message in router.trace[start:]
        if destination == "s1" and isinstance(message, MapPublished)
    ]
    assert sent and all(m.base_version > 0 for m in sent), "deltas only, no whole map"
    assert sent[0].base_version <= held
    assert servers["s1"].map_version == harness.map.version
    assert harness.manager.membership.state_of("s1") is MemberState.ALIVE


def test_a_new_manager_sends_the_stored_snapshot_itself_as_the_whole_map() -> None:
    """A store whose snapshot is the current version: the restored members get its bytes, not a
    new encode; with deltas on top of the snapshot, a fresh encode of the loaded version."""
    first = ManagerHarness()
    first.join(*SERVERS)
    assert first.open_session() is not None
    snapshot = first.map.encode()
    version = first.map.version
    store = MemoryStore(snapshot=snapshot, snapshot_version=version)
    second = ManagerHarness(store=store)
    (whole,) = second.take("s1", MapPublished)
    assert whole.body is snapshot and whole.map_version == version
    # The same history as deltas: the loaded map is encoded again, to the same bytes.
    third = ManagerHarness(store=first.store)
    (again,) = third.take("s1", MapPublished)
    assert again.body is not snapshot and again.body == snapshot


def test_the_live_members_follow_deaths_readmissions_and_restarts() -> None:
    """The cached sorted list of live members (a commit's fan-out) changes with every state
    change: a dead member leaves it and gets no versions, a readmitted one is back."""
    harness, follower = joined_cluster()
    membership = harness.manager.membership
    assert [m.server_id for m in membership.live_members()] == list(SERVERS)
    assert membership.live_members() is membership.live_members(), "kept between changes"
    harness.tick(700, alive=["s2", "s3"])
    assert membership.live_ids() == ["s2", "s3"]
    fail_over(harness, "s2", "s3")
    assert harness.open_session() is not None
    assert harness.take("s1", MapPublished) == []
    harness.heartbeat("s1")
    assert membership.live_ids() == list(SERVERS)
    follower.receive(harness.take("s1", MapPublished))
    assert follower.map is not None and follower.map.version == harness.map.version
    harness.announce("s4")
    assert membership.live_ids() == [*SERVERS, "s4"], "a new member, once its join commits"
    assert [m.server_id for m in membership.members()] == [*SERVERS, "s4"]


def test_a_new_server_gets_the_version_before_its_join_whole_then_the_join_delta() -> None:
    """A server that joins holding no map is sent the version before its join (which does not
    list it) whole, then the join's delta, so it sees what the join moved onto it. The same
    again if those were lost before it reported a version; once it has, a request for a map
    from nothing gets today's whole map."""
    harness, _ = joined_cluster()
    before = harness.map.version
    harness.announce("s4")
    first = harness.take("s4", MapPublished)
    assert [(m.base_version, m.map_version) for m in first] == [(0, before), (before, before + 1)]
    assert harness.events(PartsMovedImplicitly) == [], "stabilize pinned every live primary"
    assert "s4" not in {entry.server_id for entry in ShardMap.decode(first[0].body).servers}
    follower = Follower()
    follower.receive(first)
    assert follower.map is not None and follower.map.encode() == harness.map.encode()
    harness.router.send("s4", MANAGER, ConnectionOpened(peer="s4"))
    assert harness.take("s4", MapPublished) == first, "lost before any heartbeat: sent again"
    harness.heartbeat("s4")
    harness.router.send("s4", MANAGER, MapRequested(server_id="s4", map_version=0))
    (whole,) = harness.take("s4", MapPublished)
    assert whole.base_version == 0 and whole.map_version == harness.map.version


def test_the_first_server_of_a_new_map_gets_it_whole() -> None:
    """No version before the first join: the first server gets version 1 whole, as before."""
    harness = ManagerHarness()
    harness.announce("s1")
    (whole,) = harness.take("s1", MapPublished)
    assert (whole.base_version, whole.map_version) == (0, 1)
