"""Seeded random walks of ClientCore against erratic fake servers: invariants hold at every step."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from forehand.core._client_events import (
    MapVersionAdopted,
    RequestFailed,
    ResponseReceived,
)
from forehand.core._client_map import (
    CLIENT_PLACEMENTS_ENCODING,
    SessionPlacement,
    encode_client_placements,
)
from forehand.core._client_session import RouteState
from forehand.core._driver import ConnectionCloseRequested, ConnectionLost, Outbound
from forehand.core.client import BackpressureError
from forehand.wire import (
    Error,
    ErrorCode,
    GoAway,
    Handoff,
    HandoffFlag,
    Hello,
    MapRequest,
    MapUpdate,
    ReasonCode,
    Redirect,
    Request,
    Response,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
)

if TYPE_CHECKING:
    from tests.core._client_helpers import MANAGER, Harness, endpoint, placement
else:
    from _client_helpers import MANAGER, Harness, endpoint, placement

SERVERS = ("s1", "s2", "s3", "s4")
PARTS = ("auth", "cart", "video")
STEPS = 400


class World:
    """Fake servers and manager that answer the client at random, but within the protocol."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.h = Harness(
            seed=seed,
            inflight_requests_max=32,
            request_timeout_ms=2_000,
            retry_backoff_ms=5,
            map_request_timeout_ms=50,
            resume_timeout_ms=30,
            ping_interval_ms=40,
        )
        self.version = 5
        self.sequence: dict[str, int] = dict.fromkeys(SERVERS, 0)
        self.pending: list[Outbound] = []
        placements = tuple(placement(p, *self.rng.sample(SERVERS, 2)) for p in PARTS)
        self.session = self.h.open(*placements)
        self.final: dict[int, int] = {}
        self.issued: set[int] = set()
        self.last_version = 0

    def step(self) -> None:
        if self.rng.random() < 0.5:
            # Calls made with defer_send go out now, whatever happened since they were made.
            self.h.client.send_deferred(now_us=self.h.now_us)
        action = self.rng.random()
        if action < 0.35:
            self.call()
        elif action < 0.75:
            self.deliver_one()
        elif action < 0.85:
            self.h.advance(ms=self.rng.choice((1, 5, 20, 60)))
        elif action < 0.90:
            self.lose()
        elif action < 0.95:
            self.handoff()
        else:
            self.push_map()
        self.h.drain()
        self.pending.extend(self.h.outbox)
        self.h.outbox.clear()
        self.check()

    def call(self) -> None:
        part = self.rng.choice(PARTS)
        try:
            request_id = self.h.client.call(
                self.session,
                part,
                "op",
                b"",
                now_us=self.h.now_us,
                defer_send=self.rng.random() < 0.5,
            )
        except BackpressureError:
            return
        assert request_id not in self.issued
        self.issued.add(request_id)

    def deliver_one(self) -> None:
        if not self.pending:
            return
        outbound = self.pending.pop(self.rng.randrange(len(self.pending)))
        destination, message = outbound.destination, outbound.message
        if isinstance(message, ConnectionCloseRequested):
            self.h.lose(destination, "closed")
        elif isinstance(message, Hello):
            self.h.welcome(destination, map_version=self.rng.randint(1, self.version))
        elif isinstance(message, Request):
            self.answer(destination, message)
        elif isinstance(message, Resume):
            self.answer_resume(destination, message)
        elif isinstance(message, MapRequest):
            self.push_map()

    def answer(self, server: str, request: Request) -> None:
        roll = self.rng.random()
        if roll < 0.7:
            status = ResponseStatus.OK
        elif roll < 0.8:
            status = ResponseStatus.TRY_AGAIN
        elif roll < 0.85:
            status = ResponseStatus.NOT_FOUND
        else:
            self.version += 1
            target = endpoint(self.rng.choice(SERVERS))
            self.h.feed(
                server,
                Redirect(
                    request_id=request.request_id,
                    session_id=request.session_id,
                    part=request.part,
                    map_version=self.version,
                    targets=(target,),
                ),
            )
            return
        self.h.feed(
            server,
            Response(
                request_id=request.request_id,
                session_id=request.session_id,
                status=status,
                map_version=self.rng.randint(1, self.version),
                payload=b"",
            ),
        )

    def answer_resume(self, server: str, resume: Resume) -> None:
        if self.rng.random() < 0.7:
            self.h.feed(
                server,
                ResumeOk(
                    session_id=resume.session_id, parts=resume.parts, map_version=resume.map_version
                ),
            )
        else:
            reason = self.rng.choice(list(ResumeRejectReason))
            self.h.feed(server, ResumeReject(session_id=resume.session_id, reason=reason))

    def lose(self) -> None:
        server = self.rng.choice((*SERVERS, MANAGER))
        roll = self.rng.random()
        if roll < 0.6:
            self.h.feed(server, ConnectionLost(peer=server, reason="reset"))
        elif roll < 0.8:
            self.h.feed(server, Error(code=ErrorCode.INTERNAL_ERROR, reason="x"))
        else:
            self.h.feed(
                server,
                GoAway(map_version=self.version, reason=ReasonCode.SCALE_IN, last_request_id=0),
            )

    def handoff(self) -> None:
        source = self.rng.choice(SERVERS)
        self.sequence[source] += self.rng.choice((0, 1, 1, 2))
        self.version += self.rng.choice((0, 1, 1))
        parts = tuple(self.rng.sample(PARTS, self.rng.randint(1, 2)))
        targets = tuple(endpoint(s) for s in self.rng.sample(SERVERS, self.rng.randint(1, 2)))
        self.h.feed(
            source,
            Handoff(
                sequence=self.sequence[source],
                session_id=self.session,
                parts=parts,
                map_version=self.version,
                reason=ReasonCode.REBALANCE,
                flags=HandoffFlag.NONE,
                deadline_ms=self.rng.choice((0, 20, 200)),
                current=endpoint(source),
                targets=targets,
                token=b"t",
            ),
        )

    def push_map(self) -> None:
        self.version += self.rng.choice((0, 1))
        listed = self.rng.sample(PARTS, self.rng.randint(0, len(PARTS)))
        entries = tuple(
            SessionPlacement(
                session_id=self.session, placement=placement(part, *self.rng.sample(SERVERS, 2))
            )
            for part in listed
        )
        base = self.rng.choice((0, self.version - 1))
        self.h.feed(
            MANAGER,
            MapUpdate(
                map_version=self.version,
                base_version=base,
                encoding=CLIENT_PLACEMENTS_ENCODING,
                body=encode_client_placements(entries),
            ),
        )

    def check(self) -> None:
        client = self.h.client
        for event in self.h.events:
            if isinstance(event, ResponseReceived | RequestFailed):
                assert event.request_id in self.issued
                assert event.request_id not in self.final, "two final events for one request"
                self.final[event.request_id] = 1
            if isinstance(event, MapVersionAdopted):
                assert event.map_version > event.previous_map_version >= 0
                assert event.previous_map_version == self.last_version
                self.last_version = event.map_version
        self.h.events.clear()
        assert client.inflight_count <= 32
        outstanding = sum(len(client.route(self.session, p).inflight) for p in PARTS)
        assert outstanding == len(self.issued) - len(self.final)
        due = client.timer_us()
        assert due is None or due > self.h.now_us, "a timer was left in the past"
        for part in PARTS:
            assert client.route(self.session, part).state is not RouteState.CLOSED


@pytest.mark.parametrize("seed", range(40))
def test_random_walk_keeps_invariants(seed: int) -> None:
    """Whatever servers answer, each request ends at most once, bounds hold, timers move on."""
    world = World(seed)
    for _ in range(STEPS):
        world.step()
    # Let everything time out: every request ends exactly once.
    world.pending.clear()
    world.h.advance(ms=10_000)
    world.check()
    assert len(world.final) == len(world.issued)
    assert world.h.client.inflight_count == 0
