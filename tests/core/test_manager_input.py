"""Bad input from peers never raises out of ManagerCore: an ERROR and a close, others unaffected."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import pytest

from forehand.core._driver import ConnectionCloseRequested
from forehand.core._manager_events import PeerRefused, ServerJoined
from forehand.core._membership import MemberState
from forehand.core.messages import (
    HandoffRequested,
    HeartbeatReported,
    LoadReport,
    MapPublished,
    PartProgress,
    PartRef,
    PartRole,
    PositionsReported,
    ServerAnnounced,
)
from forehand.core.tokens import key_fingerprint
from forehand.wire import (
    ClusterMessage,
    Error,
    ErrorCode,
    MapRequest,
    Request,
    ResumeOk,
)

if TYPE_CHECKING:
    from tests.core._manager_helpers import CLUSTER_KEY, IDLE, MANAGER, ManagerHarness
else:
    from _manager_helpers import CLUSTER_KEY, IDLE, MANAGER, ManagerHarness

BAD_REF = PartRef(session_id=b"short", part="UPPER")


def bad_inputs() -> list[tuple[str, object]]:
    """(sender, message) pairs a buggy or hostile peer might send."""
    return [
        ("s1", HandoffRequested(server_id="s1", parts=(BAD_REF,), reason=4)),
        (
            "s1",
            PositionsReported(
                server_id="s1",
                map_version=9,
                parts=(PartProgress(ref=BAD_REF, role=PartRole.REPLICA, applied_seq=1, epoch=1),),
            ),
        ),
        ("s9", ServerAnnounced(server_id="s9", incarnation=1, address="x", zone="", weight=1.0)),
        ("s8", ServerAnnounced(server_id="s8", incarnation=1, address="x", zone="z", weight=-1.0)),
        # Well formed, but outside this manager's placement bounds (server_weight_max 100,
        # zone_length_max 64): the map could never hold it.
        ("s7", ServerAnnounced(server_id="s7", incarnation=1, address="x", zone="z", weight=500.0)),
        (
            "s6",
            ServerAnnounced(server_id="s6", incarnation=1, address="x", zone="z" * 65, weight=1),
        ),
        ("c1", ClusterMessage(kind=1, body=b"\xff\x00garbage")),
        # A string that is not UTF-8 inside an otherwise well-formed MapRequested.
        (
            "s1",
            ClusterMessage(
                kind=1,
                body=b"\x83\xa4type\xacMapRequested\xa9server_id\xa2\xc3(\xabmap_version\x01",
            ),
        ),
        (
            "c1",
            Request(
                request_id=1, session_id=bytes(16), part="p", op="o", map_version=1, payload=b""
            ),
        ),
        ("c1", ResumeOk(session_id=bytes(16), parts=("p",), map_version=1)),
        ("c1", "not a message at all"),
        ("s1", MapPublished(map_version=99, base_version=98, body=b"")),
    ]


@pytest.mark.parametrize("index", range(len(bad_inputs())))
def test_bad_input_gets_an_error_and_a_close_for_that_peer_only(index: int) -> None:
    """Each malformed or unexpected message closes only its sender's connection."""
    harness = ManagerHarness()
    harness.join("s1", "s2")
    sender, message = bad_inputs()[index]
    harness.router.send(sender, MANAGER, message)
    (error,) = harness.take(sender, Error)
    assert error.code in (
        ErrorCode.FRAME_UNEXPECTED,
        ErrorCode.PROTOCOL_ERROR,
        ErrorCode.FRAME_ENCODING_ERROR,
    )
    assert harness.take(sender, ConnectionCloseRequested)
    (refused,) = harness.events(PeerRefused)
    assert (refused.peer, refused.error_code) == (sender, int(error.code))
    harness.join("s3")
    assert [j.server_id for j in harness.events(ServerJoined)] == ["s1", "s2", "s3"]


def test_a_server_outside_the_placement_bounds_is_told_why() -> None:
    """A weight beyond server_weight_max is refused with the bound named, not retried silently."""
    harness = ManagerHarness()
    harness.join("s1")
    announce = ServerAnnounced(server_id="s2", incarnation=1, address="x", zone="z", weight=500.0)
    harness.router.send("s2", MANAGER, announce)
    (error,) = harness.take("s2", Error)
    assert "weight of 's2' must be in [0.001, 100.0]" in error.reason
    assert harness.manager.membership.get("s2") is None


def refusal(harness: ManagerHarness, **fields: Any) -> str | None:
    """Announce s2 with `fields`: the reason of the ERROR refusing it, or None when it joined
    (and a refused server is no member)."""
    announce = ServerAnnounced(
        server_id="s2", incarnation=1, address="x", zone="z", weight=1.0, **fields
    )
    harness.router.send("s2", MANAGER, announce)
    errors = harness.take("s2", Error)
    member = harness.manager.membership.get("s2")
    if not errors:
        assert member is not None
        return None
    (error,) = errors
    assert member is None
    return error.reason


@pytest.mark.parametrize(("lifetime_ms", "joins"), [(172_800_000, False), (172_799_999, True)])
def test_a_server_whose_credentials_outlive_the_session_expiry_is_told_why(
    lifetime_ms: int, joins: bool
) -> None:
    """Credentials that last as long as the manager's `session_expiry_ms` (48 h) or longer let
    it close sessions whose clients still hold a valid one: that server is refused, the setting
    named; a shorter lifetime joins."""
    harness = ManagerHarness()
    harness.join("s1")
    reason = refusal(harness, credential_lifetime_ms=lifetime_ms)
    if joins:
        assert reason is None
        return
    assert reason is not None
    assert (
        "credential_lifetime_ms of 's2' (172800000) must be below the manager's "
        "session_expiry_ms (172800000)" in reason
    )


@pytest.mark.parametrize(("interval_ms", "joins"), [(0, True), (1_500, True), (1_501, False)])
def test_a_server_that_heartbeats_too_rarely_is_told_why(interval_ms: int, joins: bool) -> None:
    """A heartbeat interval above half the manager's `failure_timeout_ms` (3 s) would have one
    late heartbeat declare the server dead and fail over its parts, again and again: refused,
    both settings named; at half, or not said (0), it joins."""
    reason = refusal(ManagerHarness(failure_timeout_ms=3_000), heartbeat_interval_ms=interval_ms)
    if joins:
        assert reason is None
        return
    assert reason is not None
    assert (
        "heartbeat_interval_ms of 's2' (1501) must be at most half the manager's "
        "failure_timeout_ms (3000)" in reason
    )


@pytest.mark.parametrize(
    ("manager", "server", "joins"),
    [("tls", "tls", True), ("tls", "", True), ("", "quic", True), ("tls", "quic", False)],
)
def test_a_server_of_another_transport_than_the_clients_is_told_why(
    manager: str, server: str, joins: bool
) -> None:
    """A server serving clients over QUIC in a cluster whose clients use TLS used to join and
    get parts no client could reach: refused, both transports named; either side unsaid, it
    joins."""
    reason = refusal(ManagerHarness(client_transport=manager), transport=server)
    if joins:
        assert reason is None
        return
    assert reason is not None
    assert "transport of 's2' ('quic') must be the manager's ('tls')" in reason


_MANAGER_KEY = key_fingerprint(CLUSTER_KEY)
_OTHER_KEY = key_fingerprint(bytes(32))


@pytest.mark.parametrize(
    ("fingerprints", "problem"),
    [
        ((), None),
        (((1, _MANAGER_KEY),), None),
        # A rotation under way: a key one side holds alone is no mismatch.
        (((1, _MANAGER_KEY), (2, _OTHER_KEY)), None),
        (((1, _OTHER_KEY),), "key id(s) [1] hold other keys than the manager's"),
        (((2, _OTHER_KEY),), "the manager seals with key id 1, which this node does not hold"),
        (tuple((i, _OTHER_KEY) for i in range(17)), "17 key fingerprints, more than a ring"),
    ],
)
def test_a_server_whose_cluster_keys_differ_is_told_why(
    fingerprints: tuple[tuple[int, bytes], ...], problem: str | None
) -> None:
    """A server given another cluster's keys file used to join, be placed parts and fail every
    client call (it could open no credential the manager issued): refused, naming the keys
    that differ. The same key under an id both hold, or fingerprints unsaid, joins."""
    reason = refusal(ManagerHarness(), key_fingerprints=fingerprints)
    if problem is None:
        assert reason is None
        return
    assert reason is not None and f"cluster keys of 's2': {problem}" in reason


@pytest.mark.parametrize(("sealing_key_id", "joins"), [(-1, True), (1, True), (2, False)])
def test_a_server_that_seals_with_a_key_the_manager_lacks_is_told_why(
    sealing_key_id: int, joins: bool
) -> None:
    """A server rotated to a new key before the manager was given it used to join: the
    credentials it renewed opened nowhere else, so its clients' next open or rejoin failed.
    Refused, naming the key; its sealing key held by the manager (or unsaid) joins."""
    fingerprints = ((1, _MANAGER_KEY), (2, _OTHER_KEY))
    reason = refusal(ManagerHarness(), key_fingerprints=fingerprints, sealing_key_id=sealing_key_id)
    if joins:
        assert reason is None
        return
    assert reason is not None
    assert "cluster keys of 's2': this node seals with key id 2, which the manager does not" in (
        reason
    )


_NEW_KEY = key_fingerprint(bytes(range(32)))
_BOTH = {1: CLUSTER_KEY, 2: bytes(range(32))}
Keys = tuple[tuple[tuple[int, bytes], ...], int]


def announce_keys(
    harness: ManagerHarness, server_id: str, keys: Keys, *, incarnation: int = 1
) -> None:
    """`server_id` announces itself holding `keys` (fingerprints, sealing key id) and joins."""
    fingerprints, sealing = keys
    announce = ServerAnnounced(
        server_id=server_id,
        incarnation=incarnation,
        address="x",
        zone="z",
        weight=1.0,
        key_fingerprints=fingerprints,
        sealing_key_id=sealing,
    )
    harness.incarnations[server_id] = incarnation
    harness.router.send(server_id, MANAGER, announce)
    assert harness.take(server_id, Error) == []


@pytest.mark.parametrize(
    ("manager", "s1_keys", "s2_keys", "problem"),
    [
        # Step 1 of a rotation on both: key 2 added, key 1 sealing; s2 rotated.
        (
            (_BOTH, 1),
            (((1, _MANAGER_KEY), (2, _NEW_KEY)), 1),
            (((1, _MANAGER_KEY), (2, _NEW_KEY)), 2),
            None,
        ),
        # s1 was left out of step 1; s2, rotated, seals with a key s1 lacks.
        (
            (_BOTH, 1),
            (((1, _MANAGER_KEY),), 1),
            (((1, _MANAGER_KEY), (2, _NEW_KEY)), 2),
            "this node seals with key id 2, which server 's1' does not hold (it holds [1])",
        ),
        # The manager rotated; s2 retired key 1 while s1 still seals with it.
        (
            (_BOTH, 2),
            (((1, _MANAGER_KEY), (2, _NEW_KEY)), 1),
            (((2, _NEW_KEY),), 2),
            "server 's1' seals with key id 1, which this node does not hold (it holds [2])",
        ),
        # Key id 2, which the manager does not hold, is another key on each (two keys files).
        (
            ({1: CLUSTER_KEY}, 1),
            (((1, _MANAGER_KEY), (2, _NEW_KEY)), 1),
            (((1, _MANAGER_KEY), (2, _OTHER_KEY)), 1),
            "key id(s) [2] hold other keys than server 's1''s",
        ),
        # s1's announcement said nothing of its keys: nothing to check against.
        ((_BOTH, 1), ((), -1), (((1, _MANAGER_KEY), (2, _NEW_KEY)), 2), None),
    ],
)
def test_a_server_whose_keys_do_not_work_with_another_server_s_is_told_why(
    manager: tuple[dict[int, bytes], int], s1_keys: Keys, s2_keys: Keys, problem: str | None
) -> None:
    """Each server's keys are checked against the manager's, and against those of every other
    server not dead: a server left out of a rotation's first step passed the manager's check
    (the manager still sealing with the old key), and the first server rotated after it joined,
    though the credentials it renewed opened nowhere on the one left out."""
    keys, sealing = manager
    harness = ManagerHarness(keys=keys, sealing_key_id=sealing)
    announce_keys(harness, "s1", s1_keys)
    reason = refusal(harness, key_fingerprints=s2_keys[0], sealing_key_id=s2_keys[1])
    if problem is None:
        assert reason is None
        return
    assert reason is not None and f"cluster keys of 's2': {problem}" in reason


def test_a_dead_server_s_keys_are_not_checked_against() -> None:
    """s1, left out of step 1, is declared dead: s2, sealing with the new key, then joins."""
    harness = ManagerHarness(keys=_BOTH)
    announce_keys(harness, "s1", (((1, _MANAGER_KEY),), 1))
    harness.join("s3")
    rotated = ((1, _MANAGER_KEY), (2, _NEW_KEY))
    assert refusal(harness, key_fingerprints=rotated, sealing_key_id=2) is not None
    harness.tick(5_000, alive=["s3"])
    assert harness.manager.membership.state_of("s1") is MemberState.DEAD
    assert refusal(harness, key_fingerprints=rotated, sealing_key_id=2) is None


def test_a_restarted_server_is_checked_with_its_new_keys_not_its_old_ones() -> None:
    """s1 was left out of step 1 (key 1 only). Restarted with both keys and sealing with the
    new one, it is not checked against its own previous incarnation; s2, then sealing with the
    new key, joins, s1's old keys forgotten."""
    harness = ManagerHarness(keys=_BOTH)
    announce_keys(harness, "s1", (((1, _MANAGER_KEY),), 1))
    rotated = ((1, _MANAGER_KEY), (2, _NEW_KEY))
    announce_keys(harness, "s1", (rotated, 2), incarnation=2)
    assert harness.manager.membership.get("s1").sealing_key_id == 2  # type: ignore[union-attr]
    assert refusal(harness, key_fingerprints=rotated, sealing_key_id=2) is None


def test_a_manager_that_takes_over_does_not_check_the_servers_already_joined() -> None:
    """The credential check runs on ServerAnnounced, which a server sends only while it holds
    no map: a manager that starts or takes over with a shorter `session_expiry_ms` keeps the
    servers the map lists, their heartbeats accepted, whatever their credentials' lifetime (the
    docs ask for the same expiry on every manager)."""
    harness = ManagerHarness()
    announce = ServerAnnounced(
        server_id="s1",
        incarnation=1,
        address="x",
        zone="z",
        weight=1.0,
        credential_lifetime_ms=100_000_000,
    )
    harness.incarnations["s1"] = 1
    harness.router.send("s1", MANAGER, announce)
    harness.tick(300, alive=["s1"])
    assert harness.map.server("s1") is not None
    successor = ManagerHarness(
        store=harness.store, credential_lifetime_ms=30_000_000, session_expiry_ms=50_000_000
    )
    successor.incarnations["s1"] = 1
    successor.tick(300, alive=["s1"])
    assert successor.take("s1", Error) == []
    assert successor.manager.membership.state_of("s1") is MemberState.ALIVE


def test_messages_claiming_another_senders_identity_are_refused_saying_so() -> None:
    """A server cannot heartbeat or announce for another one: its connection is closed with
    UNAUTHENTICATED naming both ids (a server started with another node's certificate was
    dropped in silence before, and never joined with nothing in its log)."""
    harness = ManagerHarness()
    harness.join("s1")
    spoofed = HeartbeatReported(
        server_id="s1", incarnation=1, sequence=50, map_version=1, load=IDLE, parts=()
    )
    harness.router.send("s2", MANAGER, spoofed)
    member = harness.manager.membership.get("s1")
    assert member is not None and member.heartbeat_sequence < 50
    (refused,) = harness.take("s2", Error)
    assert refused.code is ErrorCode.UNAUTHENTICATED
    assert "certificate was issued for 's2'" in refused.reason and "server 's1'" in refused.reason


@pytest.mark.parametrize("seed", range(3))
def test_random_garbage_never_raises(seed: int) -> None:
    """Random byte strings in ClusterMessage frames only ever produce ERRORs."""
    rng = random.Random(seed)
    harness = ManagerHarness()
    harness.join("s1")
    for _ in range(200):
        body = rng.randbytes(rng.randrange(0, 40))
        harness.router.send("s1", MANAGER, ClusterMessage(kind=rng.randrange(8), body=body))
    harness.router.send("c1", MANAGER, MapRequest(map_version=0))
    assert harness.manager.map_version == 1


def test_load_report_type_is_the_cluster_one() -> None:
    """The helper's idle load is a real LoadReport (guards the fixtures above)."""
    assert isinstance(IDLE, LoadReport)
