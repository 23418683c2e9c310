"""Tests of `ServerCore`: start-up, maps, ordered execution, dedup, durability, fencing, input."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import pytest

from forehand.core._driver import ConnectionCloseRequested, ConnectionOpened
from forehand.core._part import PartState
from forehand.core._server_config import ServerConfig
from forehand.core._server_events import (
    LogEntryApplied,
    MapVersionAdopted,
    PrimaryAcceptedWrite,
    PrimaryInstalled,
    ProtocolViolationDetected,
    ReplicatedWritesStalled,
    RequestExecuted,
    ServerEvent,
    StaleEpochRefused,
    WriteAcknowledged,
)
from forehand.core.messages import (
    ANNOUNCED_PARTS_MAX,
    HeartbeatReported,
    LoadReport,
    LogAcknowledged,
    LogEntry,
    LogShipped,
    MapPublished,
    MapRequested,
    PartRef,
    PartRole,
    ServerAnnounced,
    encode_cluster_message,
)
from forehand.core.server import PLACEMENT_CACHE_ENTRIES_MAX, REPLICATION_STALL_HEARTBEATS
from forehand.errors import ConfigError
from forehand.placement import ShardMap
from forehand.wire import (
    FRAME_BYTES_MAX_FLOOR,
    ClusterMessage,
    Error,
    ErrorCode,
    Hello,
    Ping,
    Pong,
    Redirect,
    ResponseStatus,
    Settings,
    Welcome,
)

if TYPE_CHECKING:
    from tests.core._server_helpers import MANAGER, OTHER_SESSION, SESSION, SPECS, Cluster, ref
else:
    from _server_helpers import MANAGER, OTHER_SESSION, SESSION, SPECS, Cluster, ref


@pytest.fixture
def cluster() -> Cluster:
    """Three servers, map version 1 (servers only), nothing placed yet."""
    return Cluster()


def test_server_announces_itself_and_heartbeats(cluster: Cluster) -> None:
    """Each server sends ServerAnnounced at start, then a heartbeat every interval."""
    announced = cluster.take(MANAGER, ServerAnnounced)
    assert sorted(message.server_id for message in announced) == ["s1", "s2", "s3"]
    cluster.router.advance(ms=0)
    first = [beat for beat in cluster.take(MANAGER, HeartbeatReported) if beat.server_id == "s1"]
    assert [beat.sequence for beat in first] == [1]
    cluster.router.advance(ms=499)
    assert not [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"]
    cluster.router.advance(ms=1)
    (second,) = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"]
    assert (second.sequence, second.map_version) == (2, 1)


def test_the_apps_parts_go_in_the_announcement_and_the_first_heartbeat_on_each_connection(
    cluster: Cluster,
) -> None:
    """ServerAnnounced lists the app's parts, and so does the first heartbeat, and the first
    after each new connection to the manager or a whole map from it (a manager that took over
    hears no announcement from a server holding a map); the heartbeats between list none."""
    (announced,) = [m for m in cluster.take(MANAGER, ServerAnnounced) if m.server_id == "s1"]
    assert announced.parts == ("counter", "ledger")

    def declared() -> list[tuple[str, ...]]:
        beats = cluster.take(MANAGER, HeartbeatReported)
        return [beat.declared_parts for beat in beats if beat.server_id == "s1"]

    cluster.router.advance(ms=0)
    assert declared() == [("counter", "ledger")]
    cluster.router.advance(ms=500)
    assert declared() == [()]
    cluster.router.send(MANAGER, "s1", ConnectionOpened(peer=MANAGER))
    cluster.router.advance(ms=500)
    assert declared() == [("counter", "ledger")]
    # A whole map (what a manager sends once it loaded the map, maybe after a first heartbeat
    # it could not place yet) has the next heartbeat name them again, at any version.
    cluster.router.advance(ms=500)
    assert declared() == [()]
    cluster.publish_full(to=["s1"])
    cluster.router.advance(ms=500)
    assert declared() == [("counter", "ledger")]


def test_an_app_of_more_parts_than_an_announcement_holds_says_none() -> None:
    """Past ANNOUNCED_PARTS_MAX the list would be cut short and the manager would refuse the
    parts left out: the server says none instead (not said: nothing is refused)."""
    specs = {f"p{index}": SPECS["counter"] for index in range(ANNOUNCED_PARTS_MAX + 1)}
    cluster = Cluster(specs=specs)
    (announced,) = [m for m in cluster.take(MANAGER, ServerAnnounced) if m.server_id == "s1"]
    assert announced.parts == ()


def test_heartbeat_carries_load_and_a_rotating_bounded_batch() -> None:
    """Load comes from report_load; parts are reported at most heartbeat_parts_max at a time."""
    cluster = Cluster(heartbeat_parts_max=2)
    for name in ("counter", "ledger"):
        cluster.place(name, "s1", "s2")
    cluster.place("counter", "s1", "s2", session=OTHER_SESSION)
    load = LoadReport(
        cpu_utilization=0.5,
        queue_depth=3,
        latency_us_p99=900,
        error_ratio=0.0,
        requests_per_second=10.0,
    )
    cluster.server("s1").report_load(load)
    cluster.router.advance(ms=0)
    cluster.take(MANAGER, HeartbeatReported)
    seen: list[tuple[bytes, str]] = []
    for _ in range(3):
        cluster.router.advance(ms=500)
        (beat,) = [b for b in cluster.take(MANAGER, HeartbeatReported) if b.server_id == "s1"]
        assert beat.load == load
        assert len(beat.parts) == 2
        seen.extend((progress.ref.session_id, progress.ref.part) for progress in beat.parts)
    assert len(set(seen)) == 3
    assert all(progress.role is PartRole.PRIMARY for progress in beat.parts)


def test_first_map_places_primaries_and_replicas(cluster: Cluster) -> None:
    """A map pinning a new part on s1 with replica s2 makes s1 primary and s2 replica."""
    cluster.place("counter", "s1", "s2")
    primary = cluster.server("s1").part(ref("counter"))
    replica = cluster.server("s2").part(ref("counter"))
    assert primary is not None and replica is not None
    assert (primary.state, replica.state) == (PartState.PRIMARY, PartState.REPLICA)
    assert cluster.server("s3").part(ref("counter")) is None
    (installed,) = cluster.events("s1", PrimaryInstalled)
    assert installed.map_version == cluster.map.version == primary.epoch
    adopted = [event.map_version for event in cluster.events("s2", MapVersionAdopted)]
    assert adopted == [1, 2]


def test_map_gap_requests_the_map_and_versions_never_go_back(cluster: Cluster) -> None:
    """A delta from a missing base asks the manager; an older version is ignored."""
    skipped = cluster.place("counter", "s1", "s2", to=[])
    cluster.place("counter", "s1", "s3", to=["s1"])
    requested = cluster.take(MANAGER, MapRequested)
    assert [(message.server_id, message.map_version) for message in requested] == [("s1", 1)]
    assert cluster.server("s1").map_version == 1
    cluster.router.send(MANAGER, "s1", skipped)
    assert cluster.server("s1").map_version == 3
    part = cluster.server("s1").part(ref("counter"))
    assert part is not None and part.state is PartState.PRIMARY
    old = MapPublished(map_version=1, base_version=0, body=ShardMap.empty().encode())
    cluster.router.send(MANAGER, "s1", old)
    assert cluster.server("s1").map_version == 3
    versions = [event.map_version for event in cluster.events("s1", MapVersionAdopted)]
    assert versions == [1, 2, 3]


def test_map_request_is_retried_until_the_gap_closes(cluster: Cluster) -> None:
    """Without an answer, MapRequested is repeated every map_request_retry_ms."""
    cluster.publish(*cluster.map.add_session_parts(SESSION, ["counter"]).operations, to=[])
    cluster.place("counter", "s1", to=["s1"])
    cluster.take(MANAGER, MapRequested)
    cluster.router.advance(ms=1000)
    assert len([m for m in cluster.take(MANAGER, MapRequested) if m.server_id == "s1"]) == 1
    cluster.publish_full(to=["s1"])
    cluster.router.advance(ms=3000)
    assert not [m for m in cluster.take(MANAGER, MapRequested) if m.server_id == "s1"]


def test_requests_execute_in_order_with_contiguous_seqs(cluster: Cluster) -> None:
    """Five requests run in arrival order; the log holds seqs 1..5 and answers follow."""
    cluster.place("counter", "s1", "s2")
    ids = [cluster.request("s1", "counter", payload=str(n).encode()) for n in range(1, 6)]
    responses = cluster.responses()
    assert [response.request_id for response in responses] == ids
    assert [response.payload for response in responses] == [b"1", b"3", b"6", b"10", b"15"]
    executed = cluster.events("s1", RequestExecuted)
    assert [event.log_index for event in executed] == [1, 2, 3, 4, 5]
    accepted = cluster.events("s1", PrimaryAcceptedWrite)
    assert {event.map_version for event in accepted} == {cluster.map.version}


def test_replicas_apply_the_log_by_re_executing(cluster: Cluster) -> None:
    """After a replication round the replica's state, position and dedup match the primary's."""
    cluster.place("counter", "s1", "s2", "s3")
    for n in range(1, 8):
        cluster.request("s1", "counter", payload=str(n).encode())
    cluster.router.advance(ms=50)
    primary = cluster.server("s1").part(ref("counter"))
    for replica_id in ("s2", "s3"):
        replica = cluster.server(replica_id).part(ref("counter"))
        assert replica is not None and primary is not None
        assert (replica.data, replica.applied_seq) == (28, 7)
        assert replica.dedup.get(3) == primary.dedup.get(3)
        applied = cluster.events(replica_id, LogEntryApplied)
        assert [event.log_index for event in applied] == list(range(1, 8))
    assert primary is not None and len(primary.log) == 0


def test_retry_is_answered_from_dedup_table(cluster: Cluster) -> None:
    """Re-sending a request id returns the first answer and executes nothing."""
    cluster.place("counter", "s1", "s2")
    request_id = cluster.request("s1", "counter", payload=b"5")
    cluster.request("s1", "counter", payload=b"7")
    cluster.request("s1", "counter", payload=b"5", request_id=request_id)
    first, _, retry = cluster.responses()
    assert (retry.status, retry.payload, retry.request_id) == (first.status, b"5", request_id)
    assert len(cluster.events("s1", RequestExecuted)) == 2
    acknowledged = cluster.events("s1", WriteAcknowledged)
    assert [event.from_dedup for event in acknowledged] == [False, False, True]


def test_read_only_operation_is_not_logged(cluster: Cluster) -> None:
    """A read op answers with the state and appends nothing to the log."""
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter", payload=b"4")
    cluster.request("s1", "counter", "get", b"")
    assert [response.payload for response in cluster.responses()] == [b"4", b"4"]
    executed = cluster.events("s1", RequestExecuted)
    assert [event.log_index for event in executed] == [1, None]


def test_async_answers_before_any_replica_acknowledges(cluster: Cluster) -> None:
    """An async part answers although its replica is cut off."""
    cluster.place("counter", "s1", "s2")
    cluster.router.partition("s1", "s2")
    cluster.request("s1", "counter")
    (response,) = cluster.responses()
    assert response.status is ResponseStatus.OK
    (ack,) = cluster.events("s1", WriteAcknowledged)
    assert ack.durability.value == "async"


def test_replicated_answers_only_after_a_replica_acknowledged(cluster: Cluster) -> None:
    """A replicated write waits while the replica is unreachable and is answered once it acks."""
    cluster.place("ledger", "s1", "s2")
    cut = cluster.router.partition("s1", "s2")
    cluster.request("s1", "ledger", payload=b"9")
    cluster.router.advance(ms=100)
    assert cluster.responses() == []
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    (response,) = cluster.responses()
    assert response.payload == b"9"
    (ack,) = cluster.events("s1", WriteAcknowledged)
    replica = cluster.server("s2").part(ref("ledger"))
    assert replica is not None and replica.applied_seq >= ack.log_index


def test_per_request_objects_are_left_out_of_garbage_collection(cluster: Cluster) -> None:
    """The events and queued answers a replicated write produces are not tracked by the garbage
    collector (they hold only immutable values), and every server event class says so too."""
    cluster.place("ledger", "s1", "s2")
    cut = cluster.router.partition("s1", "s2")
    cluster.request("s1", "ledger", payload=b"9")
    held = [inbound for answers in cluster.server("s1")._held.values() for _, inbound, _ in answers]
    assert held and not any(gc.is_tracked(inbound) for inbound in held)
    cluster.router.heal(cut)
    cluster.router.advance(ms=600)
    assert len(cluster.responses()) == 1
    events = [event for server in ("s1", "s2") for event in cluster.events(server, ServerEvent)]
    kinds = {type(event) for event in events}
    assert {RequestExecuted, PrimaryAcceptedWrite, WriteAcknowledged, LogEntryApplied} <= kinds
    assert not any(gc.is_tracked(event) for event in events)
    classes = [ServerEvent]
    for cls in classes:
        classes.extend(cls.__subclasses__())
        assert cls.__struct_config__.gc is False, cls


def test_replicated_answers_are_bounded(cluster: Cluster) -> None:
    """Beyond replicated_answers_max waiting answers, new writes are refused with OVERLOADED."""
    small = Cluster(replicated_answers_max=2)
    small.place("ledger", "s1", "s2")
    small.router.partition("s1", "s2")
    for _ in range(3):
        small.request("s1", "ledger")
    (refused,) = small.responses()
    assert refused.status is ResponseStatus.OVERLOADED
    assert len(small.events("s1", RequestExecuted)) == 2


def test_request_with_stale_map_version_is_redirected(cluster: Cluster) -> None:
    """A request stamped before the part's epoch gets REDIRECT with the newer version."""
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter", map_version=1)
    (redirect,) = cluster.take("c1", Redirect)
    assert redirect.map_version == cluster.map.version
    assert redirect.targets[0].server_id == "s1"
    assert redirect.targets[0].host == "s1.test"
    assert cluster.events("s1", RequestExecuted) == []


def test_request_to_a_replica_is_redirected_to_the_primary(cluster: Cluster) -> None:
    """A replica points the client at the primary named by its map."""
    cluster.place("counter", "s1", "s2")
    cluster.request("s2", "counter")
    (redirect,) = cluster.take("c1", Redirect)
    assert [target.server_id for target in redirect.targets] == ["s1"]


def test_log_from_an_older_epoch_is_refused(cluster: Cluster) -> None:
    """A LogShipped below the replica's epoch is fenced and answered with the newer epoch."""
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    replica = cluster.server("s2").part(ref("counter"))
    assert replica is not None
    stale = LogShipped(
        ref=ref("counter"),
        epoch=replica.epoch - 1,
        prev_seq=1,
        entries=(
            LogEntry(seq=2, request_id=99, op="add", payload=b"1", status=0, result=b"", epoch=1),
        ),
        sealed=False,
    )
    cluster.router.send("s9", "s2", stale)
    (answer,) = cluster.take("s9", LogAcknowledged)
    assert (answer.epoch, answer.acked_seq) == (replica.epoch, 1)
    assert replica.applied_seq == 1
    (refused,) = cluster.events("s2", StaleEpochRefused)
    assert refused.kind == "log"


def test_unknown_session_gets_not_found(cluster: Cluster) -> None:
    """A request naming a session the server does not know is answered NOT_FOUND."""
    cluster.request("s1", "counter", session=OTHER_SESSION)
    (response,) = cluster.responses()
    assert response.status is ResponseStatus.NOT_FOUND


def test_unknown_part_of_a_known_session_gets_not_found(cluster: Cluster) -> None:
    """A part name the map does not hold is NOT_FOUND, even for a session held here."""
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "nope")
    (response,) = cluster.responses()
    assert response.status is ResponseStatus.NOT_FOUND


def test_a_part_the_app_does_not_declare_gets_a_final_answer(cluster: Cluster) -> None:
    """A part the map places here but this server's app does not declare (a part no app has,
    or servers running different apps) is answered UNKNOWN_OP naming it and the app's parts:
    a final status, where TRY_AGAIN had the client retry until its attempts ran out."""
    cluster.place("nosuch", "s1", "s2")
    cluster.request("s1", "nosuch")
    (response,) = cluster.responses()
    assert response.status is ResponseStatus.UNKNOWN_OP
    assert b"declares no part 'nosuch'" in response.payload and b"counter" in response.payload


def test_malformed_session_id_is_not_found_not_a_crash(cluster: Cluster) -> None:
    """A session id that is not a UUIDv7 is answered, never raised."""
    cluster.request("s1", "counter", session=b"short")
    (response,) = cluster.responses()
    assert response.status is ResponseStatus.NOT_FOUND


def test_handler_exception_answers_app_error(cluster: Cluster) -> None:
    """An application handler that raises yields APP_ERROR and the server keeps serving."""
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter", "boom", b"")
    cluster.request("s1", "counter", payload=b"2")
    failed, ok = cluster.responses()
    assert failed.status is ResponseStatus.APP_ERROR
    assert (ok.status, ok.payload) == (ResponseStatus.OK, b"2")


def test_unexpected_frame_closes_only_that_peer(cluster: Cluster) -> None:
    """A client sending a server-only frame gets ERROR and a close request; others still work."""
    cluster.place("counter", "s1", "s2")
    cluster.router.send(
        "bad",
        "s1",
        Welcome(
            version=1, server_id="x", map_version=0, frame_bytes_max=1 << 20, idle_timeout_ms=1
        ),
    )
    (error,) = cluster.take("bad", Error)
    assert error.code is ErrorCode.FRAME_UNEXPECTED
    (close,) = cluster.take("bad", ConnectionCloseRequested)
    assert (close.peer, close.error_code) == ("bad", ErrorCode.FRAME_UNEXPECTED)
    (violation,) = cluster.events("s1", ProtocolViolationDetected)
    assert violation.peer == "bad"
    cluster.request("s1", "counter")
    assert cluster.responses()[0].status is ResponseStatus.OK


def test_non_contiguous_log_is_a_protocol_violation(cluster: Cluster) -> None:
    """Entries that skip a sequence number close the sender's connection."""
    cluster.place("counter", "s1", "s2")
    entry = LogEntry(seq=5, request_id=1, op="add", payload=b"1", status=0, result=b"", epoch=9)
    cluster.router.send(
        "s9",
        "s2",
        LogShipped(ref=ref("counter"), epoch=9, prev_seq=0, entries=(entry,), sealed=False),
    )
    assert [error.code for error in cluster.take("s9", Error)] == [ErrorCode.PROTOCOL_ERROR]


def test_malformed_map_body_is_the_managers_fault(cluster: Cluster) -> None:
    """A MapPublished whose body does not decode is answered with ERROR, not an exception."""
    cluster.router.send(MANAGER, "s1", MapPublished(map_version=9, base_version=0, body=b"\x00"))
    assert cluster.take(MANAGER, Error)
    assert cluster.server("s1").map_version == 1


def test_hello_gets_welcome_and_bad_versions_are_refused(cluster: Cluster) -> None:
    """HELLO with version 1 gets WELCOME, then SETTINGS with the lifetime of the credentials
    RESUME_OK brings; without version 1 the connection is refused."""
    cluster.router.send("c1", "s1", Hello(versions=(1,), client_id=bytes(16)))
    welcome, settings = cluster.router.take("c1", object)
    assert isinstance(welcome, Welcome)
    assert (welcome.server_id, welcome.map_version) == ("s1", 1)
    expected = cluster.server("s1")._config.credential_lifetime_ms
    assert settings == Settings(credential_lifetime_ms=expected) and expected > 0
    cluster.router.send("c2", "s1", Hello(versions=(9,), client_id=bytes(16)))
    (error,) = cluster.take("c2", Error)
    assert error.code is ErrorCode.VERSION_NEGOTIATION_FAILED


def test_ping_is_answered(cluster: Cluster) -> None:
    """PING gets a PONG echoing sequence and time."""
    cluster.router.send("c1", "s1", Ping(sequence=4, sent_us=123))
    assert cluster.take("c1", Pong) == [Pong(sequence=4, sent_us=123)]


def test_config_is_validated() -> None:
    """Bounds below 1, a frame limit below what every peer may send, and a server named like
    the manager are refused."""
    with pytest.raises(ConfigError):
        ServerConfig(server_id="s1", log_batch_entries_max=0)
    with pytest.raises(ConfigError, match="frame_bytes_max"):
        ServerConfig(server_id="s1", frame_bytes_max=FRAME_BYTES_MAX_FLOOR - 1)
    assert ServerConfig(server_id="s1", frame_bytes_max=FRAME_BYTES_MAX_FLOOR)
    with pytest.raises(ConfigError):
        ServerConfig(server_id="manager")
    with pytest.raises(ConfigError):
        ServerConfig(server_id="s1", weight=0.0)


def test_randomized_configs_are_valid() -> None:
    """Configs drawn for simulation pass validation for many seeds."""
    import random

    for seed in range(50):
        config = ServerConfig.randomized(random.Random(seed), server_id="s1")
        assert config.log_batch_entries_max >= 1


def test_cluster_message_frames_are_unwrapped(cluster: Cluster) -> None:
    """A ClusterMessage frame is decoded and handled; a garbage body closes the sender."""
    cluster.place("counter", "s1", "s2")
    cluster.request("s1", "counter")
    cluster.router.advance(ms=50)
    heartbeat = ClusterMessage(
        kind=0,
        body=encode_cluster_message(
            LogShipped(ref=ref("counter"), epoch=0, prev_seq=1, entries=(), sealed=False)
        ),
    )
    cluster.router.send("s9", "s2", heartbeat)
    (answer,) = cluster.take("s9", LogAcknowledged)
    assert answer.acked_seq == 1
    cluster.router.send("s9", "s2", ClusterMessage(kind=0, body=b"\xc1"))
    assert [error.code for error in cluster.take("s9", Error)] == [ErrorCode.PROTOCOL_ERROR]


def test_transition_tables_share_the_generator_name() -> None:
    """Both server state machines expose `transition_table()` rows for the docs generator."""
    from forehand.core import _handoff, _part

    assert _part.transition_table() == _part.part_transition_table()
    assert _handoff.transition_table() == _handoff.handoff_transition_table()


def test_remembered_placements_follow_the_map_and_stay_bounded(cluster: Cluster) -> None:
    """The placement a server checks shipments against is the current map's after a move (what
    it remembered from the previous map is forgotten), and it remembers at most
    PLACEMENT_CACHE_ENTRIES_MAX placements however many parts it is asked about."""
    core = cluster.server("s1")
    cluster.place("counter", "s1", "s2")
    before = core._placement(ref("counter"))
    cluster.place("counter", "s2", "s1")
    after = core._placement(ref("counter"))
    assert before is not None and after is not None
    assert (before.primary, after.primary) == ("s1", "s2")
    for index in range(PLACEMENT_CACHE_ENTRIES_MAX + 10):
        core._placement(PartRef(session_id=index.to_bytes(16, "big"), part="counter"))
        assert len(core._placements) <= PLACEMENT_CACHE_ENTRIES_MAX


def test_a_result_too_large_for_a_response_frame_answers_app_error() -> None:
    """A handler's result longer than a RESPONSE frame carries: the client gets APP_ERROR
    saying so at once (before, the runtime dropped the frame and the client waited for its
    timeout); the write is executed, and its retry is answered the same way."""
    from forehand.core._part import HandlerResult, PartSpec

    def blob(state: object, op: str, payload: bytes) -> HandlerResult:
        size = int(payload)
        return HandlerResult(state=size, status=ResponseStatus.OK, result=b"x" * size)

    cluster = Cluster(specs={"blob": PartSpec(handler=blob, initial_state=lambda: 0)})
    cluster.place("blob", "s1", "s2")
    limit = ServerConfig(server_id="s1").frame_bytes_max
    request_id = cluster.request("s1", "blob", "make", str(limit).encode())
    (refused,) = cluster.responses()
    assert refused.status is ResponseStatus.APP_ERROR
    assert f"the result is {limit} bytes" in refused.payload.decode()
    part = cluster.server("s1").part(ref("blob"))
    assert part is not None and part.applied_seq == 1
    cluster.request("s1", "blob", "make", str(limit).encode(), request_id=request_id)
    (again,) = cluster.responses()
    assert again.status is ResponseStatus.APP_ERROR
    cluster.request("s1", "blob", "make", b"1000")
    (fits,) = cluster.responses()
    assert fits.status is ResponseStatus.OK and fits.payload == b"x" * 1000
    # frame_bytes_max bounds what a server accepts, not what it sends (at least 1 MiB frames).
    small = Cluster(
        specs={"blob": PartSpec(handler=blob, initial_state=lambda: 0)}, frame_bytes_max=16_384
    )
    small.place("blob", "s1", "s2")
    small.request("s1", "blob", "make", b"100000")
    (longer,) = small.responses()
    assert longer.status is ResponseStatus.OK and len(longer.payload) == 100_000


def test_a_server_the_manager_calls_superseded_says_so_and_no_one_else_can() -> None:
    """SUPERSEDED from the manager naming this server's incarnation is the event the process
    stops on. The same code from a client, another code from the manager, or a SUPERSEDED
    naming another incarnation (meant for a stale process whose connection this one replaced:
    a first version stopped the running server in a live test) is only a closed connection."""
    from forehand.core._server_events import ServerSuperseded
    from forehand.wire import Error, ErrorCode

    cluster = Cluster()
    assert cluster.server("s1")._config.incarnation == 1
    reason = "incarnation 1 of s1 is older than its running incarnation 5"
    other = "incarnation 0 of s1 is older than its running incarnation 1"
    cluster.router.send("c9", "s1", Error(code=ErrorCode.SUPERSEDED, reason=reason))
    cluster.router.send(MANAGER, "s1", Error(code=ErrorCode.PROTOCOL_ERROR, reason="bad"))
    cluster.router.send(MANAGER, "s1", Error(code=ErrorCode.SUPERSEDED, reason=other))
    cluster.router.run()
    assert cluster.events("s1", ServerSuperseded) == []
    cluster.router.send(MANAGER, "s1", Error(code=ErrorCode.SUPERSEDED, reason=reason))
    cluster.router.run()
    assert [e.reason for e in cluster.events("s1", ServerSuperseded)] == [reason]


def test_a_server_s_announcement_carries_its_keys_fingerprints() -> None:
    """The manager compares them with its own (a server given another cluster's keys file is
    refused), so the announcement names every key the server holds, by id."""
    from forehand.core.messages import ServerAnnounced

    cluster = Cluster()
    server = cluster.server("s1")
    server._announce()
    (announced,) = [m for m in cluster.take(MANAGER, ServerAnnounced) if m.server_id == "s1"]
    ring = server._sealer.key_ring
    assert [key_id for key_id, _ in announced.key_fingerprints] == list(ring.key_ids)
    assert announced.key_fingerprints == ring.fingerprints() != ()
    assert announced.sealing_key_id == ring.current_key_id


def test_replicated_answers_waiting_without_progress_are_reported(cluster: Cluster) -> None:
    """A primary cut off from its replica alone holds its `replicated` answers: after
    REPLICATION_STALL_HEARTBEATS heartbeats with no progress it says so, naming the replica,
    once; and once more with no parts when the cut heals and the answers go out."""
    cluster.place("ledger", "s1", "s2")
    cut = cluster.router.partition("s1", "s2")
    cluster.request("s1", "ledger", payload=b"9")
    cluster.request("s1", "ledger", payload=b"1", bind=False)
    interval_ms = cluster.server("s1")._config.heartbeat_interval_ms
    cluster.router.advance(ms=interval_ms * (REPLICATION_STALL_HEARTBEATS - 1))
    assert cluster.events("s1", ReplicatedWritesStalled) == [], "not yet"
    cluster.router.advance(ms=interval_ms * 4)
    (stalled,) = cluster.events("s1", ReplicatedWritesStalled)
    assert (stalled.parts, stalled.answers, stalled.replicas) == (1, 2, ("s2",))
    cluster.router.heal(cut)
    cluster.router.advance(ms=interval_ms * 3)
    assert [r.payload for r in cluster.responses()] == [b"9", b"10"]
    stall, over = cluster.events("s1", ReplicatedWritesStalled)
    assert stall is stalled and (over.parts, over.answers, over.replicas) == (0, 0, ())


def test_replicated_answers_that_flow_are_no_stall(cluster: Cluster) -> None:
    """Writes acknowledged as they come, across many heartbeats, report nothing."""
    cluster.place("ledger", "s1", "s2")
    interval_ms = cluster.server("s1")._config.heartbeat_interval_ms
    for index in range(REPLICATION_STALL_HEARTBEATS * 3):
        cluster.request("s1", "ledger", payload=b"1", bind=index == 0)
        cluster.router.advance(ms=interval_ms)
    assert len(cluster.responses()) == REPLICATION_STALL_HEARTBEATS * 3
    assert cluster.events("s1", ReplicatedWritesStalled) == []
