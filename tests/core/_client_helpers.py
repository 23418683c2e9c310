"""Helpers for client-core tests: a harness that plays the servers and the manager by hand."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TypeVar

from forehand.core._client_config import ClientConfig
from forehand.core._client_map import (
    CLIENT_PLACEMENTS_ENCODING,
    SessionPlacement,
    encode_client_placements,
)
from forehand.core._driver import ConnectionLost, NodeId, Outbound
from forehand.core.client import ClientCore
from forehand.wire import (
    Credential,
    Endpoint,
    MapRequest,
    MapUpdate,
    Placement,
    Request,
    Response,
    ResponseStatus,
    SessionOpened,
    Welcome,
)

T = TypeVar("T")

CLIENT_ID = bytes(range(16))
SESSION = bytes([0x01, 0x8F] + [0x11] * 14)
MANAGER = "manager"
TIMER_FIRINGS_MAX = 100_000
"""An advance that fires the timer more often than this has a timer stuck in the past."""


def endpoint(server: NodeId) -> Endpoint:
    """A plausible endpoint for `server`."""
    return Endpoint(server_id=server, host=f"{server}.example", port=4433)


def placement(part: str, primary: NodeId, *replicas: NodeId) -> Placement:
    """A placement of `part` on `primary` with `replicas`."""
    return Placement(part=part, primary=endpoint(primary), replicas=tuple(map(endpoint, replicas)))


def map_request(
    map_version: int, session_id: bytes = SESSION, credential: bytes | None = None
) -> MapRequest:
    """The MAP_REQUEST a client sends about one session, presenting its credential (by default
    the one `Harness.open` hands out)."""
    presented = b"cred-" + session_id[:4] if credential is None else credential
    return MapRequest(map_version=map_version, credentials=(Credential(session_id, presented),))


class Harness:
    """A client core plus a clock and the frames it sent, drained as the test goes."""

    def __init__(self, *, seed: int = 7, **overrides: object) -> None:
        config = replace(ClientConfig(node_id="c1"), **overrides)  # type: ignore[arg-type]
        self.client = ClientCore(config=config, client_id=CLIENT_ID, rng=random.Random(seed))
        self.now_us = 0
        self.outbox: list[Outbound] = []
        self.events: list[object] = []

    def drain(self) -> None:
        """Move the client's outputs into `outbox` and `events`."""
        self.outbox.extend(self.client.messages_to_send())
        event = self.client.next_event()
        while event is not None:
            self.events.append(event)
            event = self.client.next_event()

    def feed(self, source: NodeId, message: object) -> None:
        """Deliver one message from `source` at the current time."""
        self.client.receive_message(message, source=source, now_us=self.now_us)
        self.drain()

    def advance(self, *, ms: int = 0, us: int = 0) -> None:
        """Let time pass, firing the client's timer every time it falls due on the way."""
        target_us = self.now_us + ms * 1000 + us
        for _ in range(TIMER_FIRINGS_MAX):
            due = self.client.timer_us()
            if due is None or due > target_us:
                break
            self.now_us = max(self.now_us, due)
            self.client.handle_timer(now_us=self.now_us)
            self.drain()
        else:
            raise AssertionError("the client keeps a timer in the past")
        self.now_us = target_us

    def lose(self, peer: NodeId, reason: str = "reset") -> None:
        """The driver reports that the connection to `peer` broke."""
        self.feed(peer, ConnectionLost(peer=peer, reason=reason))

    def welcome(
        self, server: NodeId, map_version: int = 1, *, frame_bytes_max: int = 1 << 20
    ) -> None:
        """`server` answers HELLO (announcing `frame_bytes_max`)."""
        self.feed(
            server,
            Welcome(
                version=1,
                server_id=server,
                map_version=map_version,
                frame_bytes_max=frame_bytes_max,
                idle_timeout_ms=60_000,
            ),
        )

    def take(self, kind: type[T], destination: NodeId | None = None) -> list[T]:
        """Pop the frames of `kind` sent (to `destination`, if given), oldest first."""
        taken: list[T] = []
        kept: list[Outbound] = []
        for outbound in self.outbox:
            match = isinstance(outbound.message, kind) and (
                destination is None or outbound.destination == destination
            )
            if match:
                taken.append(outbound.message)  # type: ignore[arg-type]
            else:
                kept.append(outbound)
        self.outbox = kept
        return taken

    def sent_to(self, destination: NodeId) -> list[object]:
        """Pop every frame sent to `destination`, oldest first."""
        return self.take(object, destination)

    def of(self, kind: type[T]) -> list[T]:
        """Pop the events of `kind`, oldest first."""
        taken = [event for event in self.events if isinstance(event, kind)]
        self.events = [event for event in self.events if not isinstance(event, kind)]
        return taken

    def open(
        self,
        *placements: Placement,
        map_version: int = 5,
        session_id: bytes = SESSION,
        welcome_manager: bool = True,
    ) -> bytes:
        """Open a session whose parts are placed as given, answering as the manager."""
        request_id = self.client.open_session(tuple(p.part for p in placements), now_us=self.now_us)
        self.drain()
        if welcome_manager:
            self.welcome(MANAGER)
        self.feed(
            MANAGER,
            SessionOpened(
                request_id=request_id,
                session_id=session_id,
                credential=b"cred-" + session_id[:4],
                map_version=map_version,
                placements=placements,
                token=b"token-" + session_id[:4],
            ),
        )
        self.outbox.clear()
        return session_id


def respond(
    h: Harness,
    server: str,
    request: Request,
    *,
    status: ResponseStatus = ResponseStatus.OK,
    payload: bytes = b"ok",
    map_version: int = 5,
) -> None:
    """`server` answers `request` (OK by default)."""
    h.feed(
        server,
        Response(
            request_id=request.request_id,
            session_id=request.session_id,
            status=status,
            map_version=map_version,
            payload=payload,
        ),
    )


def answer(
    *entries: tuple[bytes, Placement], map_version: int = 7, base_version: int = 0
) -> MapUpdate:
    """The manager's MAP_UPDATE listing `entries` (none: "nothing newer" than `base_version`)."""
    body = tuple(SessionPlacement(session_id=s, placement=p) for s, p in entries)
    return MapUpdate(
        map_version=map_version,
        base_version=base_version,
        encoding=CLIENT_PLACEMENTS_ENCODING,
        body=encode_client_placements(body),
    )


def ready_session(h: Harness) -> bytes:
    """A session with auth on s1 (replica s2) and cart on s2 (replica s3); s1 and s2 welcomed."""
    session = h.open(placement("auth", "s1", "s2"), placement("cart", "s2", "s3"))
    h.client.call(session, "auth", "warm", b"", now_us=h.now_us)
    h.client.call(session, "cart", "warm", b"", now_us=h.now_us)
    h.drain()
    h.welcome("s1")
    h.welcome("s2")
    for server in ("s1", "s2"):
        for request in h.take(Request, server):
            respond(h, server, request)
    h.outbox.clear()
    h.events.clear()
    return session
