"""Seeded churn against ManagerCore: joins, crashes, restarts, sessions, drains, handoff outcomes.

Fake servers answer FailoverPrepared and HandoffAssigned (completing, aborting or staying silent
at random); after every step the checks below must hold, and at the end, once every server is
back and quiet, the manager must have settled.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from forehand.core._manager_events import MapCommitted
from forehand.core.messages import (
    FailoverPrepared,
    HandoffAborted,
    HandoffAssigned,
    HandoffCompleted,
    HandoffRequested,
    MapPublished,
)
from forehand.placement import ServerState, ShardMap
from forehand.wire import CloseSession, ReasonCode, SessionOpened

if TYPE_CHECKING:
    from tests.core._manager_helpers import MANAGER, ManagerHarness
else:
    from _manager_helpers import MANAGER, ManagerHarness

STEPS = 120
POOL = ("s1", "s2", "s3", "s4", "s5")


class Churn:
    """The fake servers and clients, and the invariant checks."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.harness = ManagerHarness(seed=seed, handoff_jitter_ms_max=self.rng.choice((0, 30)))
        self.alive: set[str] = set()
        self.maps: dict[str, ShardMap] = {}
        self.sessions: list[tuple[str, bytes]] = []
        self.clients = 0

    # Fake servers.

    def start(self, server_id: str) -> None:
        incarnation = self.harness.incarnations.get(server_id, 0) + 1
        # What reached the old process dies with it; the new one starts with no map.
        self.harness.router.run()
        self.harness.take(server_id, MapPublished)
        self.harness.announce(server_id, incarnation=incarnation)
        self.alive.add(server_id)
        self.maps.pop(server_id, None)

    def serve(self) -> None:
        """Each live fake server answers what the manager asked of it."""
        for server_id in sorted(self.alive):
            for prepared in self.harness.take(server_id, FailoverPrepared):
                seqs = {ref: self.rng.randrange(0, 50) for ref in prepared.parts}
                self.harness.positions(server_id, prepared.map_version, seqs)
            for assigned in self.harness.take(server_id, HandoffAssigned):
                if assigned.source == server_id:
                    self.report(server_id, assigned)

    def report(self, server_id: str, assigned: HandoffAssigned) -> None:
        roll = self.rng.random()
        if roll < 0.7:
            message: object = HandoffCompleted(
                handoff_id=assigned.handoff_id, server_id=server_id, parts=assigned.parts
            )
        elif roll < 0.9:
            message = HandoffAborted(
                handoff_id=assigned.handoff_id,
                server_id=server_id,
                parts=assigned.parts,
                detail="churn",
            )
        else:
            return
        self.harness.router.send(server_id, MANAGER, message)

    # Steps.

    def step(self) -> None:
        roll = self.rng.random()
        down = [s for s in POOL if s not in self.alive]
        up = sorted(self.alive)
        if roll < 0.15 and down:
            self.start(self.rng.choice(down))
        elif roll < 0.22 and len(up) > 2:
            self.alive.discard(self.rng.choice(up))
        elif roll < 0.27 and up:
            self.start(self.rng.choice(up))
        elif roll < 0.50:
            self.open_session()
        elif roll < 0.55 and self.sessions:
            client, session_id = self.sessions.pop(self.rng.randrange(len(self.sessions)))
            self.harness.router.send(client, MANAGER, CloseSession(session_id=session_id))
        elif roll < 0.62 and up:
            self.harness.manager.drain(self.rng.choice(up), now_us=self.harness.router.now_us)
        elif roll < 0.66 and up:
            self.harness.manager.undrain(self.rng.choice(up), now_us=self.harness.router.now_us)
        elif roll < 0.80 and up:
            source = self.rng.choice(up)
            reason = self.rng.choice((ReasonCode.OVERLOAD, ReasonCode.PLANNED_MAINTENANCE))
            message = HandoffRequested(server_id=source, parts=(), reason=int(reason))
            self.harness.router.send(source, MANAGER, message)
        elif roll < 0.85 and up:
            self.harness.heartbeat(self.rng.choice(up), cpu=0.97)
        self.harness.tick(self.rng.choice((50, 100, 300)), alive=sorted(self.alive))
        self.serve()
        self.check()

    def open_session(self) -> None:
        self.clients += 1
        client = f"c{self.clients % 4}"
        parts = tuple(self.rng.sample(("auth", "cart", "feed", "chat", "mail"), 2))
        opened = self.harness.open_session(parts, client=client)
        if opened is not None:
            self.sessions.append((client, opened.session_id))
        for frame in self.harness.take(client, SessionOpened):
            self.sessions.append((client, frame.session_id))

    # Invariants.

    def check(self) -> None:
        current = self.harness.manager.shard_map
        assert current is not None
        for server_id in POOL:
            for message in self.harness.take(server_id, MapPublished):
                self.follow(server_id, message)
        dead = {e.server_id for e in current.servers if e.state is ServerState.DEAD}
        for key, placement in current.overrides():
            assert not dead & set(placement.servers), (key, placement, dead)
        versions = [c.map_version for c in self.harness.events(MapCommitted)]
        assert versions == sorted(set(versions)), "map versions went backwards or repeated"

    def follow(self, server_id: str, message: MapPublished) -> None:
        """A server applies what it receives; versions only grow and deltas chain."""
        held = self.maps.get(server_id)
        if message.base_version == 0:
            fresh = ShardMap.decode(message.body)
            assert held is None or fresh.version > held.version
            self.maps[server_id] = fresh
            return
        assert held is not None and held.version == message.base_version, (
            server_id,
            None if held is None else held.version,
            message.base_version,
        )
        self.maps[server_id] = held.apply(ShardMap.decode_delta(message.body))
        assert self.maps[server_id].version == message.map_version

    def settle(self) -> None:
        """Bring every server back, let the manager finish, and check it is quiet."""
        for server_id in POOL:
            if server_id not in self.alive:
                self.start(server_id)
        for _ in range(60):
            self.harness.tick(100, alive=sorted(self.alive))
            self.serve()
            self.check()
        manager = self.harness.manager
        current = manager.shard_map
        assert current is not None
        assert manager.orchestrator.handoffs() == []
        assert self.harness.store.version == current.version
        live = set(manager.membership.live_ids())
        assert live == set(POOL)
        for server_id in POOL:
            assert current.server(server_id).state is not ServerState.DEAD
            assert self.maps[server_id].version == current.version


@pytest.mark.parametrize("seed", range(8))
def test_manager_churn_keeps_its_invariants(seed: int) -> None:
    """Random churn: versions chain per server, no override names the dead, it settles."""
    churn = Churn(seed)
    for server_id in POOL[:3]:
        churn.start(server_id)
    for _ in range(STEPS):
        churn.step()
    churn.settle()
