"""ClientCore wired to real ServerCores by the test Router; the test plays the manager."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from forehand.core._client_config import ClientConfig
from forehand.core._client_events import (
    HandoffFollowed,
    HandoffIgnored,
    RequestFailed,
    ResponseReceived,
)
from forehand.core._client_map import (
    CLIENT_PLACEMENTS_ENCODING,
    SessionPlacement,
    encode_client_placements,
)
from forehand.core._client_session import RouteState
from forehand.core._server_events import RequestExecuted
from forehand.core.client import ClientCore
from forehand.core.messages import PartRef
from forehand.placement import PartKey
from forehand.wire import (
    Endpoint,
    Handoff,
    Hello,
    MapRequest,
    MapUpdate,
    OpenSession,
    Placement,
    Response,
    SessionOpened,
    Welcome,
)

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, SESSION, Cluster, sealer
else:
    from _server_helpers import MANAGER, SESSION, Cluster, sealer

CLIENT = "c1"


def endpoint(server: str) -> Endpoint:
    return Endpoint(server_id=server, host=f"{server}.test", port=4433)


def wire_placement(cluster: Cluster, part: str) -> Placement:
    placement = cluster.map.lookup(PartKey(session_id=SESSION, part=part))
    return Placement(
        part=part,
        primary=endpoint(placement.primary),
        replicas=tuple(endpoint(r) for r in placement.replicas),
    )


def connect_client(cluster: Cluster, *parts: str, seed: int = 5) -> ClientCore:
    """A client core in the router whose session (SESSION) the test opens as the manager."""
    client = ClientCore(
        config=ClientConfig(node_id=CLIENT), client_id=bytes(16), rng=random.Random(seed)
    )
    router = cluster.router
    router.add(client)
    request_id = client.open_session(parts, now_us=router.now_us)
    router.run()
    assert len(router.take(MANAGER, Hello)) == 1
    welcome = Welcome(
        version=1,
        server_id=MANAGER,
        map_version=cluster.map.version,
        frame_bytes_max=1 << 20,
        idle_timeout_ms=60_000,
    )
    router.send(MANAGER, CLIENT, welcome)
    assert [o.request_id for o in router.take(MANAGER, OpenSession)] == [request_id]
    token_sealer = sealer(99)
    opened = SessionOpened(
        request_id=request_id,
        session_id=SESSION,
        credential=token_sealer.issue_credential(
            session_id=SESSION, client_id=bytes(16), now_us=router.now_us, lifetime_ms=3_600_000
        ),
        map_version=cluster.map.version,
        placements=tuple(wire_placement(cluster, part) for part in parts),
        token=token_sealer.issue_token(
            session_id=SESSION,
            parts=parts,
            target_server="",
            map_version=cluster.map.version,
            now_us=router.now_us,
            lifetime_ms=60_000,
        ),
    )
    router.send(MANAGER, CLIENT, opened)
    return client


def executed(cluster: Cluster, part: str) -> list[int]:
    """Request ids executed (not replayed from dedup) for `part`, across every server."""
    return [
        event.request_id
        for _, event in cluster.router.all_events(RequestExecuted)
        if event.ref.part == part
    ]


def responses(cluster: Cluster) -> list[ResponseReceived]:
    return cluster.router.events_of(CLIENT, ResponseReceived)


def test_calls_execute_once_in_call_order() -> None:
    """Calls on one part execute once each, in call order, and come back as responses."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    client = connect_client(cluster, "counter")
    ids = [
        client.call(SESSION, "counter", "add", b"1", now_us=cluster.router.now_us) for _ in range(5)
    ]
    cluster.router.run()
    received = responses(cluster)
    assert [r.request_id for r in received] == ids
    assert [r.payload for r in received] == [b"1", b"2", b"3", b"4", b"5"]
    assert executed(cluster, "counter") == ids


def test_planned_handoff_loses_nothing_and_keeps_order() -> None:
    """A planned handoff mid-stream: every call is answered once, in order, none fails."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    client = connect_client(cluster, "counter")
    router = cluster.router
    before = [client.call(SESSION, "counter", "add", b"1", now_us=router.now_us) for _ in range(3)]
    router.run()
    in_flight = [
        client.call(SESSION, "counter", "add", b"1", now_us=router.now_us) for _ in range(2)
    ]
    cluster.place("counter", "s2", "s1")
    cluster.assign_handoff([cluster_ref("counter")], source="s1", target="s2")
    after = [client.call(SESSION, "counter", "add", b"1", now_us=router.now_us) for _ in range(3)]
    router.run()
    router.advance(ms=2_000)
    ids = before + in_flight + after
    received = responses(cluster)
    assert sorted(r.request_id for r in received) == sorted(ids)
    assert [r.payload for r in sorted(received, key=lambda r: r.issue_sequence)] == [
        str(n).encode() for n in range(1, 9)
    ]
    assert router.events_of(CLIENT, RequestFailed) == []
    assert sorted(executed(cluster, "counter")) == sorted(ids)
    followed = router.events_of(CLIENT, HandoffFollowed)
    assert [(e.source, e.target) for e in followed] == [("s1", "s2")]
    assert client.route(SESSION, "counter").primary == "s2"


def test_lost_response_is_answered_from_dedup_after_reconnect() -> None:
    """A response lost with its connection is re-requested with the same id and not re-executed."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    client = connect_client(cluster, "counter")
    router = cluster.router

    def drop_responses(source: str, destination: str, message: object) -> bool:
        return destination == CLIENT and isinstance(message, Response)

    router.filters.append(drop_responses)
    request_id = client.call(SESSION, "counter", "add", b"5", now_us=router.now_us)
    router.run()
    router.filters.remove(drop_responses)
    router.disconnect(CLIENT, "s1")
    assert client.route(SESSION, "counter").state is RouteState.LOCATING
    assert len(router.take(MANAGER, MapRequest)) == 1
    entries = (SessionPlacement(session_id=SESSION, placement=wire_placement(cluster, "counter")),)
    update = MapUpdate(
        map_version=cluster.map.version,
        base_version=0,
        encoding=CLIENT_PLACEMENTS_ENCODING,
        body=encode_client_placements(entries),
    )
    router.send(MANAGER, CLIENT, update)
    received = responses(cluster)
    assert [(r.request_id, r.payload, r.attempts) for r in received] == [(request_id, b"5", 2)]
    assert executed(cluster, "counter") == [request_id]


def test_replayed_handoff_frame_is_ignored_by_the_client() -> None:
    """A HANDOFF delivered twice is followed once; the copy is ignored as stale."""
    cluster = Cluster()
    cluster.place("counter", "s1", "s2")
    client = connect_client(cluster, "counter")
    router = cluster.router
    client.call(SESSION, "counter", "add", b"1", now_us=router.now_us)
    router.run()
    cluster.place("counter", "s2", "s1")
    cluster.assign_handoff([cluster_ref("counter")], source="s1", target="s2")
    router.advance(ms=2_000)
    handoffs = router.sent(Handoff, source="s1")
    assert len(handoffs) == 1
    router.send("s1", CLIENT, handoffs[0])
    ignored = router.events_of(CLIENT, HandoffIgnored)
    assert len(ignored) == 1
    assert client.route(SESSION, "counter").primary == "s2"


def cluster_ref(part: str) -> PartRef:
    return PartRef(session_id=SESSION, part=part)
