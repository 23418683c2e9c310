"""A real cluster (a manager and three servers as processes) serves the cart example, TLS and QUIC.

One cluster per transport serves every test of this module, in order: sessions and calls,
resumption after a client restart, a planned handoff under load, resumption tokens and session
credentials, HANDOFF frames the client must ignore, and last a drain (which moves parts around).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

import forehand
from forehand.core import client_events
from forehand.core.tokens import TokenSealer
from forehand.runtime import Credentials, create_transport
from forehand.runtime.admin import (
    AdminError,
    Drain,
    MoveSession,
    Rebalance,
    Status,
    Undrain,
    admin_request,
)
from forehand.runtime.config import parse_address
from forehand.runtime.keys import CLUSTER_KEYS_FILE, load_key_ring
from forehand.runtime.transport import Connection, ConnectionClosedError
from forehand.wire import (
    ClusterMessage,
    Credential,
    Endpoint,
    Error,
    ErrorCode,
    Frame,
    Handoff,
    HandoffFlag,
    Hello,
    PeerRole,
    ReasonCode,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
    Settings,
    Welcome,
)

if TYPE_CHECKING:
    from tests.runtime._cluster import (
        SERVERS,
        CartLoad,
        Cluster,
        eventually,
        make_certs,
        run_async,
    )
else:
    from _cluster import SERVERS, CartLoad, Cluster, eventually, make_certs, run_async

PARTS = ["auth", "cart", "feature/video"]
READS = (("auth", "whoami"), ("cart", "list"), ("feature/video", "position"))
"""A read-only operation of each part."""
HandoffKind = forehand.HandoffEventKind


def Item(*, sku: str, quantity: int = 1) -> dict[str, Any]:
    """The payload of `cart.add` (the example's `Item`, as a msgpack map)."""
    return {"sku": sku, "quantity": quantity}


@pytest.fixture(scope="module", params=["tls", "quic"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A manager and three servers over one transport, stopped at the end of the module."""
    directory = tmp_path_factory.mktemp(f"cluster-{request.param}")
    certs_dir = make_certs(directory / "certs")
    running = Cluster(directory, certs_dir=certs_dir, transport=request.param)
    running.start()
    yield running
    running.stop()


def test_open_session_and_call(cluster: Cluster) -> None:
    """A session's parts are placed on servers; calls answer; failures raise typed errors."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            placements = session.placements()
            assert set(placements) == set(PARTS)
            for placement in placements.values():
                assert placement.primary in SERVERS
                assert set(placement.backups) == set(SERVERS) - {placement.primary}
            assert await session.call("auth", "login", "alice") == "welcome alice"
            assert await session.call("auth", "whoami") == "alice"
            for count in range(1, 6):
                assert await session.call("cart", "add", Item(sku="apple")) == count
            assert await session.call("cart", "list") == {"apple": 5}
            assert await session.call("feature/video", "seek", 1500) == 1500
            with pytest.raises(forehand.AppError) as refused:
                await session.call("cart", "add", Item(sku="pear", quantity=0))
            assert refused.value.message == "quantity must be 1 to 1000000"
            assert refused.value.detail == 0
            await session.call("cart", "add", Item(sku="pear", quantity=999_999))
            with pytest.raises(forehand.AppError) as beyond:
                await session.call("cart", "add", Item(sku="pear", quantity=2))
            assert beyond.value.message == "at most 1000000 units of one product"
            assert await session.call("cart", "remove", "pear") == 5
            with pytest.raises(forehand.CallError) as unknown:
                await session.call("cart", "refund")
            assert unknown.value.status is ResponseStatus.UNKNOWN_OP
            with pytest.raises(forehand.CallError) as malformed:
                await session.call("feature/video", "seek", "not a number")
            assert malformed.value.status is ResponseStatus.BAD_REQUEST
            assert await session.call("cart", "checkout") == {"order": 1, "units": 5}
            await session.close()
            with pytest.raises(forehand.SessionClosedError):
                await session.call("cart", "list")

    run_async(scenario())


def test_resume_session_after_client_restart(cluster: Cluster) -> None:
    """A new client process takes a session back from its snapshot, with the state it had;
    closed right before that client closes, the session is gone from the shard map (the
    client had no manager connection yet: its CLOSE_SESSION waited for one, and was lost
    when the client closed); a third client taking it back then hears from the manager that it
    was closed (before: a placement never found, after the request timeout)."""

    async def scenario() -> tuple[bytes, bytes]:
        async with cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            await session.call("auth", "login", "bob")
            await session.call("cart", "add", Item(sku="tea", quantity=3))
            return session.snapshot(), session.id

    saved, session_id = run_async(scenario())

    async def resumed() -> None:
        async with cluster.connect() as client:
            session = await client.resume_session(saved)
            assert await session.call("auth", "whoami") == "bob"
            assert await session.call("cart", "add", Item(sku="tea")) == 4
            assert await session.call("cart", "list") == {"tea": 4}
            await session.close()

    run_async(resumed())

    async def forgotten() -> bool:
        # A target no cluster has: for a session the map still holds, the reply names the
        # target and nothing moves; once the map forgot the session, it names the session.
        reply = await cluster.admin(MoveSession(session_id=session_id, target="no-such-server"))
        assert not reply.ok
        return f"no session {session_id.hex()}" in reply.detail

    run_async(eventually(forgotten, what="the closed session gone from the shard map"))

    async def resumed_after_close() -> None:
        # Its credential is still valid, but the session is gone: the manager says so.
        async with cluster.connect() as client:
            session = await client.resume_session(saved)
            with pytest.raises(forehand.SessionClosedError, match="closed by manager"):
                await session.call("cart", "list")

    run_async(resumed_after_close())


def test_planned_handoff_under_load(cluster: Cluster) -> None:
    """An operator's handoff of a session under load: no call fails, none runs twice, the parts
    move, and the application hears of it only through on_handoff."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            # A server tells the clients attached to a session (by a call or a credential) of
            # its handoff; so every part is used once.
            await session.call("auth", "login", "carol")
            await session.call("feature/video", "seek", 10)
            before = session.placements()
            seen: list[forehand.HandoffEvent] = []
            session.on_handoff(seen.append)
            streamed: list[forehand.HandoffEvent] = []

            async def stream() -> None:
                async for event in session.handoffs():
                    streamed.append(event)

            streaming = asyncio.create_task(stream())

            def moved() -> bool:
                # A second HANDOFF of the same session to the same target while the first is
                # resuming is not followed: that part is located through the manager instead
                # (RELOCATED), which moves it just as well.
                settled = {HandoffKind.COMPLETED, HandoffKind.RELOCATED, HandoffKind.REDIRECTED}
                heard = {part for e in seen if e.kind in settled for part in e.parts}
                now = session.placements()
                return heard == set(PARTS) and all(
                    now[part].primary != before[part].primary for part in PARTS
                )

            async with CartLoad(session, writers=4) as load:
                await load.wait_for(40, what="writes before the handoff")
                reply = await cluster.admin(MoveSession(session_id=session.id))
                assert reply.ok and reply.queued == len(PARTS)
                # Asked again while its parts move: nothing queued, and the reply says why.
                again = await cluster.admin(MoveSession(session_id=session.id))
                assert (again.ok, again.queued) == (False, 0)
                assert again.detail == "no part was queued: already there, or already moving"
                await eventually(
                    moved,
                    what="every part handed off",
                    state=lambda: (before, session.placements(), seen),
                )
                await load.wait_for(40, what="writes after the handoff")
            await load.check_exactly_once()
            await eventually(lambda: streamed == seen, what="the iterator saw every event")
            streaming.cancel()
            after = session.placements()
            assert after["cart"].map_version > before["cart"].map_version
            assert any(e.kind is HandoffKind.COMPLETED for e in seen)
            assert all(e.reason is ReasonCode.REBALANCE for e in seen if e.reason)

    run_async(scenario())


async def _raw_connection(
    cluster: Cluster, server_id: str, credentials: tuple[Credential, ...] = ()
) -> tuple[Connection, Frame]:
    """A bare `forehand/1` client connection to a server, after HELLO; and the answer to it.
    A WELCOME is followed by SETTINGS, stating the server's credential lifetime: taken here."""
    transport = create_transport(
        cluster.transport, credentials=Credentials.for_client(cluster.certs_dir)
    )
    host, port = parse_address(cluster.addresses[server_id], where="address")
    connection = await transport.connect(host, port, server_id=server_id, peer_role=PeerRole.SERVER)
    connection.send_frame(Hello(versions=(1,), client_id=os.urandom(16), credentials=credentials))
    answer = await connection.receive()
    if isinstance(answer, Welcome):
        settings = await connection.receive()
        assert isinstance(settings, Settings) and settings.credential_lifetime_ms > 0, settings
    return connection, answer


async def _resume(connection: Connection, session_id: bytes, token: bytes, version: int) -> Frame:
    connection.send_frame(
        Resume(session_id=session_id, map_version=version, token=token, parts=("cart",))
    )
    return await connection.receive()


def test_tokens_forged_expired_replayed_are_refused(cluster: Cluster) -> None:
    """RESUME with a forged, tampered, expired, misdirected or replayed token is refused with its
    RESUME_REJECT reason; a HELLO with a forged credential leaves that session unbound and says
    so (RESUME_REJECT CREDENTIAL_REFUSED after the WELCOME)."""
    sealer = TokenSealer(load_key_ring(cluster.certs_dir / CLUSTER_KEYS_FILE), rng=random.Random(7))

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            await session.call("cart", "add", Item(sku="jam"))
            placement = session.placements()["cart"]
            primary, version = placement.primary, placement.map_version
            other = placement.backups[0]

            def token(
                *, target: str = primary, lifetime_ms: int = 30_000, age_ms: int = 0
            ) -> bytes:
                now_us = time.time_ns() // 1000 - age_ms * 1000
                return sealer.issue_token(
                    session_id=session.id,
                    parts=("cart",),
                    target_server=target,
                    map_version=version,
                    now_us=now_us,
                    lifetime_ms=lifetime_ms,
                )

            connection, welcome = await _raw_connection(cluster, primary)
            assert isinstance(welcome, Welcome)
            valid = token()
            tampered = valid[:-1] + bytes([valid[-1] ^ 1])
            cases = [
                (os.urandom(64), ResumeRejectReason.TOKEN_INVALID),
                (tampered, ResumeRejectReason.TOKEN_INVALID),
                (token(lifetime_ms=1_000, age_ms=60_000), ResumeRejectReason.TOKEN_EXPIRED),
                (token(target=other), ResumeRejectReason.WRONG_SERVER),
            ]
            for sealed, reason in cases:
                answer = await _resume(connection, session.id, sealed, version)
                assert isinstance(answer, ResumeReject) and answer.reason is reason, answer
            assert isinstance(await _resume(connection, session.id, valid, version), ResumeOk)
            replayed = await _resume(connection, session.id, valid, version)
            assert isinstance(replayed, ResumeReject)
            assert replayed.reason is ResumeRejectReason.TOKEN_REPLAYED
            connection.close()
            await connection.wait_closed()

            forged = (Credential(session_id=session.id, credential=os.urandom(80)),)
            refused, answer = await _raw_connection(cluster, primary, forged)
            assert isinstance(answer, Welcome), answer
            told = await refused.receive()
            assert isinstance(told, ResumeReject), told
            assert told.reason is ResumeRejectReason.CREDENTIAL_REFUSED
            refused.close()
            genuine = client.core.session_snapshot(session.id).credential
            accepted, answer = await _raw_connection(
                cluster, primary, (Credential(session_id=session.id, credential=genuine),)
            )
            assert isinstance(answer, Welcome)
            accepted.close()
            await accepted.wait_closed()
            assert await session.call("cart", "list") == {"jam": 1}

    run_async(scenario())


def test_peers_may_send_only_what_their_certificate_allows(cluster: Cluster) -> None:
    """A client (no certificate) that sends a cluster message, and a cluster node that is not an
    operator sending an admin command, lose their connection; everybody else is served."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            await session.call("cart", "add", Item(sku="kiwi"))
            primary = session.placements()["cart"].primary
            connection, welcome = await _raw_connection(cluster, primary)
            assert isinstance(welcome, Welcome)
            connection.send_frame(ClusterMessage(kind=0, body=b"\x80"))
            # Over TLS the server's driver answers ERROR; over QUIC the client listener's
            # decoder refuses the frame type itself, with CONNECTION_CLOSE. Same code either way.
            try:
                answer = await connection.receive()
                assert isinstance(answer, Error)
                code = answer.code
            except ConnectionClosedError as closed:
                code = ErrorCode.from_wire(closed.close.error_code)
            assert code is ErrorCode.FRAME_UNEXPECTED
            await connection.wait_closed()
            with pytest.raises(AdminError, match="UNAUTHENTICATED"):
                await admin_request(
                    cluster.manager_address, Status(), certs_dir=cluster.certs_dir, node_id="s9"
                )
            assert await session.call("cart", "add", Item(sku="kiwi")) == 2
            assert (await cluster.admin(Status())).ok

    run_async(scenario())


def test_stale_or_foreign_handoff_is_ignored(cluster: Cluster) -> None:
    """A HANDOFF on the primary's authenticated connection is ignored when its map version is not
    newer, or when it names a server outside the cluster; the session stays where it is."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            await session.call("cart", "add", Item(sku="fig"))
            placement = session.placements()["cart"]
            ignored: list[client_events.HandoffIgnored] = []
            started: list[forehand.HandoffEvent] = []
            session.on_handoff(started.append)

            def watch(event: object) -> None:
                if isinstance(event, client_events.HandoffIgnored):
                    ignored.append(event)

            client._driver.subscribe(watch)
            current = client.core.endpoint(placement.primary)
            backup = client.core.endpoint(placement.backups[0])
            assert current is not None and backup is not None
            outsider = Endpoint(server_id="evil", host="127.0.0.1", port=9)
            frames: list[Frame] = [
                _handoff(session.id, current, backup, placement.map_version, sequence=1 << 40),
                _handoff(
                    session.id,
                    current,
                    outsider,
                    placement.map_version + 100,
                    sequence=(1 << 40) + 1,
                ),
            ]
            _inject(client, placement.primary, frames)
            await eventually(lambda: len(ignored) == 2, what="both HANDOFFs ignored")
            assert [event.why for event in ignored] == [
                client_events.HandoffIgnoredWhy.STALE_MAP_VERSION,
                client_events.HandoffIgnoredWhy.UNKNOWN_TARGET,
            ]
            assert await session.call("cart", "add", Item(sku="fig")) == 2
            assert session.placements()["cart"].primary == placement.primary
            assert started == []

    run_async(scenario())


def _handoff(
    session_id: bytes, current: Endpoint, target: Endpoint, map_version: int, *, sequence: int
) -> Handoff:
    return Handoff(
        sequence=sequence,
        session_id=session_id,
        parts=("cart",),
        map_version=map_version,
        reason=ReasonCode.PREDICTED_FAILURE,
        flags=HandoffFlag.MAKE_BEFORE_BREAK_REQUIRED,
        deadline_ms=2_000,
        current=current,
        targets=(target,),
        token=b"not a token",
    )


def _inject(client: forehand.Client, server: str, frames: list[Frame]) -> None:
    """Deliver frames to the client's driver as if they had arrived on its connection to `server`
    (the authenticated one: its certificate was verified for that server id)."""
    link = client._driver._peers[server].sender()
    assert link is not None and link.connection.peer_id == server
    link.connection._frame_handler(frames)  # type: ignore[misc]


def test_drain_moves_every_part_without_failures(cluster: Cluster) -> None:
    """Draining the server that holds a session's cart moves its parts away under load: no call
    fails and none runs twice; undrained, the server is active again."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            session = await client.open_session(parts=PARTS)
            drained = session.placements()["cart"].primary

            def moved_off() -> bool:
                return all(p.primary != drained for p in session.placements().values())

            async with CartLoad(session, writers=3) as load:
                await load.wait_for(30, what="writes before the drain")
                reply = await cluster.admin(Drain(server_id=drained))
                assert reply.ok, reply.detail
                await eventually(
                    moved_off,
                    what=f"every part of the session off {drained}",
                    state=session.placements,
                )
                await load.wait_for(30, what="writes after the drain")
            await load.check_exactly_once()
            status = await cluster.admin(Status())
            states = {s.server_id: s.map_state for s in status.servers}
            assert states[drained] == "draining"
            assert (await cluster.admin(Undrain(server_id=drained))).ok
            await cluster.wait_active(SERVERS)

    run_async(scenario())


def test_rebalance_gives_an_undrained_server_its_share_under_load(cluster: Cluster) -> None:
    """Sessions opened while a server is drained go to the others; undrained, it gets back only
    what the hash returns. `Rebalance` hands it primaries, under load: no call fails and none
    runs twice. A bad tolerance is refused, naming it."""

    async def scenario() -> None:
        async with cluster.connect() as client:
            drained = SERVERS[0]
            assert (await cluster.admin(Drain(server_id=drained))).ok

            async def draining() -> bool:
                reply = await cluster.admin(Status())
                return any(
                    s.server_id == drained and s.map_state == "draining" for s in reply.servers
                )

            # New sessions are not placed on a DRAINING server.
            await eventually(draining, what=f"{drained} draining in the map")
            # Most of the cluster's parts, so that the rebalance moves some of these.
            sessions = [await client.open_session(parts=PARTS) for _ in range(30)]
            assert (await cluster.admin(Undrain(server_id=drained))).ok
            await cluster.wait_active(SERVERS)
            before = sum(p.primary == drained for s in sessions for p in s.placements().values())
            refused = await cluster.admin(Rebalance(tolerance=-1.0))
            assert not refused.ok and "tolerance must be in [0, 10.0]" in refused.detail
            async with CartLoad(sessions[0], writers=3) as load:
                await load.wait_for(20, what="writes before the rebalance")
                reply = await cluster.admin(Rebalance())
                assert reply.ok and reply.queued > 0, reply.detail

                async def gained() -> bool:
                    # An idle session's client hears of a move at its next call (a REDIRECT).
                    await asyncio.gather(
                        *(s.call(part, op) for s in sessions[1:] for part, op in READS)
                    )
                    placed = [p for s in sessions for p in s.placements().values()]
                    return sum(p.primary == drained for p in placed) > before

                await eventually(gained, what=f"primaries handed to {drained}")
                await load.wait_for(20, what="writes after the rebalance")
            await load.check_exactly_once()

    run_async(scenario())


def test_admin_tries_each_manager_endpoint_in_turn(cluster: Cluster) -> None:
    """With several endpoints, a refused one (a standby does not listen) moves on to the next;
    when none accepts, one AdminError names every endpoint."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"

    async def scenario() -> None:
        endpoints = f"{closed},{cluster.manager_address}"
        reply = await admin_request(endpoints, Status(), certs_dir=cluster.certs_dir)
        assert reply.ok and reply.servers
        with pytest.raises(AdminError, match="no manager accepted") as refused:
            await admin_request(f"{closed}, {closed}", Status(), certs_dir=cluster.certs_dir)
        assert str(refused.value).count(closed) == 2

    run_async(scenario())
