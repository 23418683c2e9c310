"""ManagerCore with real ServerCores and a real ClientCore on one router: the flows end to end."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from forehand.core import _manager_planning
from forehand.core._client_config import ClientConfig
from forehand.core._client_events import (
    HandoffFollowed,
    RequestFailed,
    ResponseReceived,
    SessionEstablished,
)
from forehand.core._manager_events import (
    DrainProgressed,
    FailoverCompleted,
    HandoffCompleted,
    MapChange,
    PartsMovedImplicitly,
    ServerJoined,
)
from forehand.core._server_events import InstallCause, PrimaryInstalled
from forehand.core.client import ClientCore
from forehand.core.messages import HeartbeatReported, LogShipped, MapPublished, PositionsReported
from forehand.placement import PartKey
from forehand.wire import ResponseStatus

if TYPE_CHECKING:
    from tests.core._manager_helpers import ManagerHarness
    from tests.core._server_helpers import wire_servers
else:
    from _manager_helpers import ManagerHarness
    from _server_helpers import wire_servers

SERVERS = ("s1", "s2", "s3")


class World:
    """A manager, three servers and one client, wired by the harness's router."""

    def __init__(
        self, *, server_overrides: dict[str, object] | None = None, **overrides: object
    ) -> None:
        self.harness = ManagerHarness(
            heartbeat_interval_ms=100,
            suspect_timeout_ms=400,
            failure_timeout_ms=800,
            handoff_deadline_ms=2_000,
            **overrides,  # type: ignore[arg-type]
        )
        self.router = self.harness.router
        self.servers = wire_servers(
            self.router,
            SERVERS,
            heartbeat_interval_ms=100,
            backup_period_ms=200,
            handoff_deadline_ms=2_000,
            **(server_overrides or {}),
        )
        self.router.run()
        self.router.advance(ms=300)
        self.client = ClientCore(
            config=ClientConfig(node_id="c1"), client_id=bytes(range(16)), rng=random.Random(9)
        )
        self.router.add(self.client)
        self.session_id = b""

    def open(self, part: str = "counter") -> bytes:
        self.client.open_session((part,), now_us=self.router.now_us)
        self.router.advance(ms=50)
        (established,) = self.router.events_of("c1", SessionEstablished)
        self.session_id = established.session_id
        return established.session_id

    def call(self, op: str = "add", payload: bytes = b"1") -> int:
        request_id = self.client.call(
            self.session_id, "counter", op, payload, now_us=self.router.now_us
        )
        self.router.advance(ms=50)
        return request_id

    def primary(self) -> str:
        return self.harness.map.primary_of(PartKey(session_id=self.session_id, part="counter"))

    def answers(self) -> list[ResponseReceived]:
        return self.router.events_of("c1", ResponseReceived)


def test_servers_join_and_a_client_session_is_served() -> None:
    """Real servers announce and join; a real client opens a session and its calls succeed."""
    world = World()
    assert {j.server_id for j in world.harness.events(ServerJoined)} == set(SERVERS)
    for core in world.servers.values():
        assert core.map_version == world.harness.map.version
    world.open()
    for _ in range(3):
        world.call()
    answers = world.answers()
    assert [a.status for a in answers] == [ResponseStatus.OK] * 3
    assert answers[-1].payload == b"3"


def test_draining_the_primary_moves_the_session_without_a_failed_request() -> None:
    """Drain -> HandoffAssigned -> the real source hands off -> the client follows; no failure."""
    world = World()
    world.open()
    world.call()
    source = world.primary()
    assert world.harness.manager.drain(source, now_us=world.router.now_us)
    for _ in range(20):
        world.call()
    world.router.advance(ms=2_000)
    assert world.primary() != source
    completed = world.harness.events(HandoffCompleted)
    assert completed and completed[0].source == source
    assert world.harness.events(DrainProgressed)[-1].finished
    assert world.router.events_of("c1", RequestFailed) == []
    answers = world.answers()
    assert all(a.status is ResponseStatus.OK for a in answers)
    assert answers[-1].payload == str(len(answers)).encode()
    followed = world.router.events_of("c1", HandoffFollowed)
    assert followed and followed[0].source == source


def test_a_crashed_primary_fails_over_and_the_client_carries_on() -> None:
    """The primary dies: positions, promotion of the up-to-date replica, the client resumes."""
    world = World()
    world.open()
    for _ in range(3):
        world.call()
    world.router.advance(ms=300)
    victim = world.primary()
    world.router.remove(victim)
    for peer in [*SERVERS, "c1"]:
        if peer != victim:
            world.router.disconnect(peer, victim, reason="peer-crashed")
    world.router.advance(ms=2_000)
    (done,) = world.harness.events(FailoverCompleted)
    assert done.servers == (victim,)
    (promotion,) = [p for p in done.promotions if p.ref.part == "counter"]
    assert promotion.applied_seq == 3
    assert world.primary() == promotion.primary != victim
    # The client's reconnection to the dead server is refused (the router only tells it so).
    world.call()
    world.router.disconnect("c1", victim, reason="refused")
    world.router.advance(ms=1_000)
    answers = world.answers()
    assert answers[-1].status is ResponseStatus.OK and answers[-1].payload == b"4"
    assert world.router.events_of("c1", RequestFailed) == []


def test_a_joining_server_made_primary_of_live_parts_waits_for_their_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A join may move live primaries onto the joining server (bounded loads; `stabilize` pins
    back only what its rounds reach, here none). The new server first gets the version before
    its join whole, then the join's delta, so it sees those parts move and takes them over with
    their state: a write after the join counts on from the writes before it."""
    world = World()
    for _ in range(12):
        world.client.open_session(("counter",), now_us=world.router.now_us)
        world.router.advance(ms=50)
    sessions = [e.session_id for e in world.router.events_of("c1", SessionEstablished)]
    assert len(sessions) == 12
    for session_id in sessions:
        for _ in range(2):
            world.client.call(session_id, "counter", "add", b"1", now_us=world.router.now_us)
        world.router.advance(ms=50)
    world.router.advance(ms=300)
    before = {
        s: world.harness.map.primary_of(PartKey(session_id=s, part="counter")) for s in sessions
    }
    monkeypatch.setattr(_manager_planning, "STABILIZE_ROUNDS_MAX", 1)
    start = len(world.router.trace)
    joined = wire_servers(
        world.router, ("s4",), heartbeat_interval_ms=100, handoff_deadline_ms=2_000
    )
    world.router.run()
    world.router.advance(ms=1_000)
    moved = [
        s
        for s in sessions
        if world.harness.map.primary_of(PartKey(session_id=s, part="counter")) == "s4"
    ]
    assert moved and all(before[s] != "s4" for s in moved), "the join moved live primaries"
    (implicit,) = world.harness.events(PartsMovedImplicitly)
    assert implicit.change is MapChange.SERVER_JOINED and implicit.servers == ("s4",)
    assert implicit.count == len(implicit.parts) >= len(moved)
    assert {ref.session_id for ref in implicit.parts} >= set(moved)
    assert joined["s4"].map_version == world.harness.map.version
    for session_id in moved:
        world.client.call(session_id, "counter", "add", b"1", now_us=world.router.now_us)
        world.router.advance(ms=200)
    last = {a.session_id: a.payload for a in world.answers()}
    assert [last[s] for s in moved] == [b"3"] * len(moved)
    first_maps = [
        message
        for _, _, destination, message in world.router.trace[start:]
        if destination == "s4" and isinstance(message, MapPublished)
    ]
    assert first_maps[0].base_version == 0
    assert first_maps[1].base_version == first_maps[0].map_version == first_maps[1].map_version - 1
    assert [
        e for e in world.router.events_of("s4", PrimaryInstalled) if e.cause is InstallCause.INITIAL
    ] == []


def test_an_acknowledged_write_held_by_a_silent_live_replica_survives_the_failover() -> None:
    """A `replicated` write only one replica acknowledged survives the primary's crash though
    that replica's answer to the fence is lost and no heartbeat of its names the part since the
    write, while the other replica, behind, answers at once: the manager asks the silent live
    replica again before it promotes, and the client reads the write back."""
    world = World(failover_prepare_timeout_ms=300, server_overrides={"heartbeat_parts_max": 1})
    # Many sessions, so that each heartbeat names one part of many.
    for _ in range(20):
        world.client.open_session(("counter",), now_us=world.router.now_us)
        world.router.advance(ms=20)
    world.client.open_session(("ledger",), now_us=world.router.now_us)
    world.router.advance(ms=50)
    session_id = world.router.events_of("c1", SessionEstablished)[-1].session_id
    key = PartKey(session_id=session_id, part="ledger")

    def add(amount: int) -> None:
        now_us = world.router.now_us
        world.client.call(session_id, "ledger", "add", str(amount).encode(), now_us=now_us)
        world.router.advance(ms=20)

    for _ in range(3):
        add(1)
    world.router.advance(ms=3_000)
    placement = world.harness.map.lookup(key)
    primary, holder, lagging = placement.primary, *placement.replicas
    lost_answers: list[object] = []

    def drop(source: str, destination: str, message: object) -> bool:
        if (source, destination) == (primary, lagging) and isinstance(message, LogShipped):
            return True  # the lagging replica misses the write
        if source == holder and isinstance(message, HeartbeatReported):
            # The holder's heartbeats that name the part are lost; the others keep it live.
            return any(progress.ref.part == "ledger" for progress in message.parts)
        if source == holder and isinstance(message, PositionsReported) and not lost_answers:
            lost_answers.append(message)  # its first answer to the fence is lost
            return True
        return False

    world.router.filters.append(drop)
    add(10)
    (written,) = world.answers()[-1:]
    assert written.status is ResponseStatus.OK and written.payload == b"13"
    world.router.remove(primary)
    for peer in [*SERVERS, "c1"]:
        if peer != primary:
            world.router.disconnect(peer, primary, reason="peer-crashed")
    world.router.advance(ms=3_000)
    assert lost_answers
    (done,) = world.harness.events(FailoverCompleted)
    (promotion,) = [p for p in done.promotions if p.ref.part == "ledger"]
    assert promotion.primary == holder and promotion.applied_seq == 4
    assert world.harness.map.lookup(key).primary == holder
    world.client.call(session_id, "ledger", "add", b"0", now_us=world.router.now_us)
    world.router.disconnect("c1", primary, reason="refused")
    world.router.advance(ms=1_000)
    (read,) = world.answers()[-1:]
    assert read.status is ResponseStatus.OK and read.payload == b"13"
