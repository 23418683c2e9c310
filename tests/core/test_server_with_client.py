"""ServerCore with the real ClientCore: ordered calls, a followed handoff, a failover retry."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from forehand.core._client_config import ClientConfig
from forehand.core._client_events import (
    HandoffFollowed,
    RequestFailed,
    ResponseReceived,
    SessionEstablished,
)
from forehand.core._server_events import RequestExecuted
from forehand.core.client import ClientCore
from forehand.placement import MAP_ENCODING
from forehand.wire import (
    Endpoint,
    MapRequest,
    MapUpdate,
    OpenSession,
    Placement,
    ResponseStatus,
    SessionOpened,
    Welcome,
)

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, SESSION, Cluster, ref, sealer
else:
    from _server_helpers import MANAGER, SESSION, Cluster, ref, sealer

COUNTER = ref("counter")


def endpoint(server: str) -> Endpoint:
    """The endpoint the fake manager hands out for `server`."""
    return Endpoint(server_id=server, host=f"{server}.test", port=4433)


def connect_client(cluster: Cluster) -> ClientCore:
    """A real client that opened SESSION, placed on s1 with replicas s2 and s3."""
    cluster.place("counter", "s1", "s2", "s3")
    client = ClientCore(
        config=ClientConfig(node_id="c1"), client_id=bytes(range(16)), rng=random.Random(5)
    )
    cluster.router.add(client)
    request_id = client.open_session(("counter",), now_us=cluster.router.now_us)
    cluster.router.run()
    now = cluster.router.now_us
    cluster.router.send(
        MANAGER,
        "c1",
        Welcome(
            version=1,
            server_id=MANAGER,
            map_version=cluster.map.version,
            frame_bytes_max=1 << 20,
            idle_timeout_ms=60_000,
        ),
    )
    assert cluster.take(MANAGER, OpenSession)
    cluster.router.send(
        MANAGER,
        "c1",
        SessionOpened(
            request_id=request_id,
            session_id=SESSION,
            credential=sealer().issue_credential(
                session_id=SESSION, client_id=bytes(range(16)), now_us=now, lifetime_ms=600_000
            ),
            map_version=cluster.map.version,
            placements=(
                Placement(
                    part="counter",
                    primary=endpoint("s1"),
                    replicas=(endpoint("s2"), endpoint("s3")),
                ),
            ),
            token=sealer().issue_token(
                session_id=SESSION,
                parts=("counter",),
                target_server="",
                map_version=cluster.map.version,
                now_us=now,
                lifetime_ms=600_000,
            ),
        ),
    )
    assert cluster.router.events_of("c1", SessionEstablished)
    return client


def call(cluster: Cluster, client: ClientCore, payload: bytes = b"1") -> int:
    """One `add` through the client."""
    request_id = client.call(SESSION, "counter", "add", payload, now_us=cluster.router.now_us)
    cluster.router.run()
    return request_id


def answers(cluster: Cluster) -> list[ResponseReceived]:
    """Every answer the client delivered so far."""
    return cluster.router.events_of("c1", ResponseReceived)


def test_client_requests_run_on_the_primary_in_order() -> None:
    """Calls through the client reach s1 and come back in issue order with the running sum."""
    cluster = Cluster()
    client = connect_client(cluster)
    for _ in range(4):
        call(cluster, client)
    assert [(a.status, a.payload, a.server) for a in answers(cluster)] == [
        (ResponseStatus.OK, str(n).encode(), "s1") for n in range(1, 5)
    ]


def test_client_follows_a_planned_handoff_without_a_failed_request() -> None:
    """The client resumes at s2 with the HANDOFF token; every call before and after succeeds."""
    cluster = Cluster()
    client = connect_client(cluster)
    for _ in range(3):
        call(cluster, client)
    cluster.router.advance(ms=50)
    cluster.place("counter", "s2", "s1", "s3")
    cluster.assign_handoff([COUNTER], source="s1", target="s2")
    call(cluster, client)
    cluster.router.advance(ms=100)
    (followed,) = cluster.router.events_of("c1", HandoffFollowed)
    assert (followed.source, followed.target) == ("s1", "s2")
    for _ in range(3):
        call(cluster, client)
    cluster.router.advance(ms=6000)
    results = answers(cluster)
    assert [a.payload for a in results] == [str(n).encode() for n in range(1, 8)]
    assert all(a.status is ResponseStatus.OK for a in results)
    assert [a.server for a in results[-3:]] == ["s2"] * 3
    assert cluster.router.events_of("c1", RequestFailed) == []
    part = cluster.server("s1").part(COUNTER)
    assert part is not None and part.data == 7


def test_client_retries_at_the_promoted_replica_after_a_crash() -> None:
    """After s1 dies and s2 is promoted, the client's retry is answered exactly once."""
    cluster = Cluster()
    client = connect_client(cluster)
    call(cluster, client)
    cluster.router.advance(ms=50)
    cluster.router.remove("s1")
    cluster.router.disconnect("s1", "c1")
    cluster.prepare_failover([COUNTER], to=["s2", "s3"])
    cluster.place("counter", "s2", "s3")
    call(cluster, client, b"10")
    for _ in range(20):
        for request in cluster.take(MANAGER, MapRequest):
            update = MapUpdate(
                map_version=cluster.map.version,
                base_version=0,
                encoding=MAP_ENCODING,
                body=cluster.map.encode(),
            )
            assert request.map_version <= update.map_version
            cluster.router.send(MANAGER, "c1", update)
        cluster.router.advance(ms=100)
    payloads = [a.payload for a in answers(cluster)]
    assert payloads == [b"1", b"11"]
    assert answers(cluster)[-1].server == "s2"
    executed = [e.request_id for e in cluster.events("s2", RequestExecuted)]
    assert executed == [answers(cluster)[-1].request_id]
    assert cluster.router.events_of("c1", RequestFailed) == []
