"""Bad input at the operator surfaces of a live cluster: the admin HTTP API, the TLS admin
commands, and forged or replayed tokens, which a server refuses and counts in /metrics."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from forehand.core.tokens import TokenSealer
from forehand.runtime import Credentials, create_transport
from forehand.runtime.admin import Drain, MoveSession, Status, Undrain, admin_request
from forehand.runtime.config import parse_address
from forehand.runtime.keys import CLUSTER_KEYS_FILE, load_key_ring
from forehand.runtime.transport import Connection
from forehand.wire import (
    Credential,
    Error,
    ErrorCode,
    Frame,
    Hello,
    PeerRole,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
    Settings,
    Welcome,
)

if TYPE_CHECKING:
    from tests.ops._ops_cluster import TOKEN, OpsCluster, run_async
else:
    from _ops_cluster import TOKEN, OpsCluster, run_async

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(ops_cluster: OpsCluster) -> Iterator[httpx.Client]:
    """A client of the admin API."""
    with httpx.Client(base_url=ops_cluster.api_url, timeout=10) as client:
        yield client


def test_json_the_api_cannot_mean_is_a_400_and_changes_nothing(api: httpx.Client) -> None:
    """NaN and Infinity (which Python's json reads, and which then made every later policy read
    a 500), nesting deep enough to exhaust the parser, an integer beyond 64 bits, and a session
    id padded with spaces are refused with 400 and a message; the policy stays as it was and the
    same connection goes on being served."""
    policy = api.get("/api/policy").json()
    session = "/api/sessions/" + "ab " * 16
    cases = [
        (api.put("/api/policy", content=b'{"overload_threshold": NaN}', headers=AUTH), "NaN"),
        (api.put("/api/policy", content=b'{"overload_threshold": -Infinity}', headers=AUTH), "Inf"),
        (api.put("/api/policy", content=b"[" * 30_000 + b"]" * 30_000, headers=AUTH), "nests"),
        (
            api.put(
                "/api/policy",
                content=b'{"overload_cooldown_ms": 1' + b"0" * 30 + b"}",
                headers=AUTH,
            ),
            "64 bits",
        ),
        (api.get(session), "32 hex digits"),
    ]
    for response, expected in cases:
        assert response.status_code == 400, response.text
        assert expected in response.json()["detail"]
    assert api.get("/api/policy").json() == policy


def test_tls_admin_commands_say_what_is_wrong(ops_cluster: OpsCluster) -> None:
    """Over the mutual-TLS admin link, an unknown server, an unknown session, a session id of the
    wrong length and an unknown reason code are refused naming the problem (they used to read as
    a full commit queue or `0 part(s) queued`), and the manager keeps answering."""
    manager = ops_cluster.manager_address

    async def scenario() -> list[str]:
        details = []
        for request in (
            Drain(server_id="nosuch"),
            Undrain(server_id="x" * 1_000),
            MoveSession(session_id=b"ab"),
            MoveSession(session_id=bytes(16)),
            MoveSession(session_id=bytes(16), reason=999_999),
        ):
            reply = await admin_request(manager, request, certs_dir=ops_cluster.certs_dir)
            assert not reply.ok
            details.append(reply.detail)
        status = await admin_request(manager, Status(), certs_dir=ops_cluster.certs_dir)
        assert status.ok and {s.server_id for s in status.servers} == set(ops_cluster.server_ids)
        return details

    assert run_async(scenario()) == [
        "no server 'nosuch' in the cluster",
        "no server '" + "x" * 80 + "...' in the cluster",
        "a session id is 16 bytes, got 2",
        "no session " + "00" * 16 + " in the shard map",
        "unknown reason code 999999",
    ]


def _counters(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_refused_tokens_and_credentials_are_counted(ops_cluster: OpsCluster) -> None:
    """A forged, an expired and a replayed token are refused on one connection, which goes on
    being served, and a forged credential in HELLO is refused alone (RESUME_REJECT
    CREDENTIAL_REFUSED after the WELCOME); the server's /metrics counts each refusal by reason
    (before, refusals were only logged)."""
    cluster = ops_cluster
    sealer = TokenSealer(load_key_ring(cluster.certs_dir / CLUSTER_KEYS_FILE), rng=random.Random(5))

    async def scenario() -> str:
        async with cluster.connect() as client:
            session = await client.open_session(parts=["cart"])
            placement = session.placements()["cart"]
            primary, version = placement.primary, placement.map_version
            transport = create_transport(
                "tls", credentials=Credentials.for_client(cluster.certs_dir)
            )
            host, port = parse_address(cluster.addresses[primary], where=primary)

            async def connect(credentials: tuple[Credential, ...] = ()) -> tuple[Connection, Frame]:
                connection = await transport.connect(
                    host, port, server_id=primary, peer_role=PeerRole.SERVER
                )
                connection.send_frame(
                    Hello(versions=(1,), client_id=os.urandom(16), credentials=credentials)
                )
                answer = await connection.receive()
                if isinstance(answer, Welcome):
                    # SETTINGS follows WELCOME (the server's credential lifetime).
                    assert isinstance(await connection.receive(), Settings)
                return connection, answer

            def token(lifetime_ms: int, age_ms: int = 0) -> bytes:
                return sealer.issue_token(
                    session_id=session.id,
                    parts=("cart",),
                    target_server=primary,
                    map_version=version,
                    now_us=time.time_ns() // 1000 - age_ms * 1000,
                    lifetime_ms=lifetime_ms,
                )

            connection, welcome = await connect()
            assert isinstance(welcome, Welcome)
            valid = token(30_000)
            answers = []
            for sealed in (os.urandom(64), token(1_000, age_ms=60_000), valid, valid):
                connection.send_frame(
                    Resume(
                        session_id=session.id, map_version=version, token=sealed, parts=("cart",)
                    )
                )
                answers.append(await connection.receive())
            assert [getattr(a, "reason", None) for a in answers] == [
                ResumeRejectReason.TOKEN_INVALID,
                ResumeRejectReason.TOKEN_EXPIRED,
                None,
                ResumeRejectReason.TOKEN_REPLAYED,
            ]
            assert isinstance(answers[2], ResumeOk) and isinstance(answers[3], ResumeReject)
            forged, welcome = await connect(
                (Credential(session_id=session.id, credential=os.urandom(80)),)
            )
            assert isinstance(welcome, Welcome)
            told = await forged.receive()
            assert isinstance(told, ResumeReject), told
            assert told.reason is ResumeRejectReason.CREDENTIAL_REFUSED
            forged.close()
            await session.call("cart", "list")
            connection.close()
            await connection.wait_closed()
            return primary

    before = {s: _counters(u) for s, u in cluster.metrics_urls.items()}
    primary = run_async(scenario())
    after = _counters(cluster.metrics_urls[primary])

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before[primary].get(key, 0.0)

    rejected = "forehand_resumes_rejected_total"
    assert moved(rejected, reason="token_invalid") == 2  # the forged token and credential
    assert moved(rejected, reason="token_expired") == 1
    assert moved(rejected, reason="token_replayed") == 1
    assert moved("forehand_protocol_violations_total", code="unauthenticated") == 0


def test_refused_credentials_and_peers_are_counted_by_the_manager(ops_cluster: OpsCluster) -> None:
    """A client HELLO to the manager with a forged session credential is still welcomed (the
    credential gives no rights, and a RESUME_REJECT CREDENTIAL_REFUSED after the WELCOME says
    so), and the manager's /metrics counts the refused credential; a
    frame the manager does not take from a client is counted as a protocol violation."""
    cluster = ops_cluster

    async def scenario() -> tuple[Frame, Frame]:
        transport = create_transport("tls", credentials=Credentials.for_client(cluster.certs_dir))
        host, port = parse_address(cluster.manager_address, where="manager")
        connection = await transport.connect(
            host, port, server_id="manager", peer_role=PeerRole.SERVER
        )
        forged = Credential(session_id=os.urandom(16), credential=os.urandom(80))
        connection.send_frame(Hello(versions=(1,), client_id=os.urandom(16), credentials=(forged,)))
        welcome = await connection.receive()
        assert isinstance(await connection.receive(), Settings)
        told = await connection.receive()
        assert isinstance(told, ResumeReject), told
        assert told.reason is ResumeRejectReason.CREDENTIAL_REFUSED
        assert told.session_id == forged.session_id
        # A RESUME goes to a part's server, never to the manager.
        connection.send_frame(
            Resume(session_id=os.urandom(16), map_version=1, token=b"x" * 40, parts=("cart",))
        )
        refused = await connection.receive()
        connection.close()
        await connection.wait_closed()
        return welcome, refused

    before = _counters(cluster.api_url)
    welcome, refused = run_async(scenario())
    after = _counters(cluster.api_url)
    assert isinstance(welcome, Welcome)
    assert isinstance(refused, Error) and refused.code is ErrorCode.FRAME_UNEXPECTED

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("forehand_manager_credentials_refused_total", reason="token_invalid") == 1
    assert moved("forehand_manager_protocol_violations_total", code="frame_unexpected") == 1
