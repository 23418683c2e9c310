"""Every frame type survives encode then decode unchanged, whole and split into any chunks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forehand.wire import (
    END_OF_STREAM,
    NEED_DATA,
    VARINT_MAX,
    CloseSession,
    ClusterMessage,
    Credential,
    DecoderSignal,
    Endpoint,
    Error,
    ErrorCode,
    Extension,
    Frame,
    FrameDecoder,
    GoAway,
    Handoff,
    HandoffFlag,
    HandoffState,
    HandoffStatus,
    Hello,
    MapRequest,
    MapUpdate,
    OpenSession,
    OpenSessionRefused,
    PathSample,
    Ping,
    Placement,
    Pong,
    ReasonCode,
    Redirect,
    Request,
    Response,
    ResponseStatus,
    Resume,
    ResumeOk,
    ResumeReject,
    ResumeRejectReason,
    SessionOpened,
    Settings,
    Welcome,
)
from forehand.wire._frames import FRAME_CLASSES
from forehand.wire._implementation import Codec

varints = st.integers(0, VARINT_MAX)
ids = st.binary(min_size=16, max_size=16)
small_bytes = st.binary(max_size=64)


def names(max_chars: int) -> st.SearchStrategy[str]:
    """Non-empty UTF-8 names; four bytes per character at most keeps them within bounds."""
    return st.text(min_size=1, max_size=max_chars)


def part_lists() -> st.SearchStrategy[tuple[str, ...]]:
    """1 to 8 distinct part names."""
    return st.lists(names(32), min_size=1, max_size=8, unique=True).map(tuple)


dns_names = st.lists(
    st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True), min_size=1, max_size=4
).map(".".join)
hosts = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda address: address.compressed),
    dns_names,
)
endpoints = st.builds(Endpoint, server_id=names(16), host=hosts, port=st.integers(1, 0xFFFF))
path_samples = st.builds(
    PathSample,
    names(16),
    st.none() | varints,
    st.none() | varints,
    st.none() | varints,
    st.none() | varints,
    st.none() | varints,
    st.none() | varints,
    st.booleans(),
)
map_versions_with_base = st.integers(1, VARINT_MAX).flatmap(
    lambda version: st.tuples(st.just(version), st.integers(0, version - 1))
)

FRAME_STRATEGIES: dict[type[Frame], st.SearchStrategy[Frame]] = {
    Hello: st.builds(
        Hello,
        versions=st.lists(varints, min_size=1, max_size=16).map(tuple),
        client_id=ids,
        credentials=st.lists(st.builds(Credential, ids, small_bytes), max_size=4).map(tuple),
    ),
    Welcome: st.builds(
        Welcome,
        version=varints,
        server_id=names(16),
        map_version=varints,
        frame_bytes_max=st.integers(16_384, VARINT_MAX),
        idle_timeout_ms=varints,
    ),
    Settings: st.builds(Settings, credential_lifetime_ms=varints, client_sessions_max=varints),
    OpenSessionRefused: st.builds(
        OpenSessionRefused,
        request_id=varints,
        reason=st.text(max_size=100),
        retry_after_ms=varints,
    ),
    OpenSession: st.builds(OpenSession, request_id=varints, parts=part_lists()),
    SessionOpened: st.builds(
        SessionOpened,
        request_id=varints,
        session_id=ids,
        credential=small_bytes,
        map_version=varints,
        placements=st.lists(
            st.builds(Placement, names(32), endpoints, st.lists(endpoints, max_size=3).map(tuple)),
            max_size=4,
        ).map(tuple),
        token=st.binary(max_size=200),
    ),
    CloseSession: st.builds(CloseSession, session_id=ids),
    Request: st.builds(
        Request,
        request_id=varints,
        session_id=ids,
        part=names(32),
        op=names(16),
        map_version=varints,
        payload=st.binary(max_size=300),
        wait_budget_ms=st.none() | st.integers(0, 2**32 - 1),
    ),
    Response: st.builds(
        Response,
        request_id=varints,
        session_id=ids,
        status=st.sampled_from(ResponseStatus),
        map_version=varints,
        payload=st.binary(max_size=300),
    ),
    Redirect: st.builds(
        Redirect,
        request_id=varints,
        session_id=ids,
        part=names(32),
        map_version=varints,
        targets=st.lists(endpoints, max_size=8).map(tuple),
    ),
    Handoff: st.builds(
        Handoff,
        sequence=varints,
        session_id=ids,
        parts=part_lists(),
        map_version=varints,
        reason=st.sampled_from(ReasonCode),
        flags=st.integers(0, 0xFFFF).map(HandoffFlag),
        deadline_ms=st.integers(0, 0xFFFF_FFFF),
        current=endpoints,
        targets=st.lists(endpoints, min_size=1, max_size=8).map(tuple),
        token=st.binary(max_size=200),
        extensions=st.lists(st.builds(Extension, varints, small_bytes), max_size=16).map(tuple),
    ),
    HandoffStatus: st.builds(
        HandoffStatus,
        sequence=varints,
        session_id=ids,
        state=st.sampled_from(HandoffState),
        detail_code=varints,
    ),
    Resume: st.builds(
        Resume,
        session_id=ids,
        token=st.binary(max_size=200),
        parts=part_lists(),
        map_version=varints,
        unanswered=st.lists(varints, max_size=20).map(tuple),
    ),
    ResumeOk: st.builds(
        ResumeOk, session_id=ids, parts=part_lists(), map_version=varints, credential=small_bytes
    ),
    ResumeReject: st.builds(
        ResumeReject,
        session_id=ids,
        reason=st.sampled_from(ResumeRejectReason),
        message=st.text(max_size=100),
    ),
    MapRequest: st.builds(
        MapRequest,
        map_version=varints,
        credentials=st.lists(st.builds(Credential, ids, small_bytes), max_size=4).map(tuple),
    ),
    MapUpdate: map_versions_with_base.flatmap(
        lambda versions: st.builds(
            MapUpdate,
            map_version=st.just(versions[0]),
            base_version=st.just(versions[1]),
            encoding=varints,
            body=st.binary(max_size=300),
        )
    ),
    Ping: st.builds(
        Ping,
        sequence=varints,
        sent_us=varints,
        telemetry=st.lists(path_samples, max_size=8).map(tuple),
    ),
    Pong: st.builds(Pong, sequence=varints, sent_us=varints),
    GoAway: st.builds(
        GoAway, map_version=varints, reason=st.sampled_from(ReasonCode), last_request_id=varints
    ),
    Error: st.builds(Error, code=st.sampled_from(ErrorCode), reason=st.text(max_size=100)),
    ClusterMessage: st.builds(ClusterMessage, kind=varints, body=st.binary(max_size=300)),
}
"""One strategy per frame class; a test checks that none is missing."""

frames: st.SearchStrategy[Frame] = st.one_of(*FRAME_STRATEGIES.values())
"""Any frame."""

# The codec fixture is function-scoped but constant across examples, so reusing it is sound.
ROUND_TRIP = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def test_every_frame_class_has_a_strategy() -> None:
    """The round trip below covers all frame types of the registry."""
    assert set(FRAME_STRATEGIES) == set(FRAME_CLASSES.values())


FRAME_CLASS_LIST = sorted(FRAME_STRATEGIES, key=lambda cls: cls.__name__)


@pytest.mark.parametrize(
    "frame_class", FRAME_CLASS_LIST, ids=[cls.__name__ for cls in FRAME_CLASS_LIST]
)
@ROUND_TRIP
@given(data=st.data())
def test_frame_round_trips(codec: Codec, frame_class: type[Frame], data: st.DataObject) -> None:
    """decode_frame(encode_frame(f)) == f and the encoding is canonical (re-encodes identically)."""
    frame = data.draw(FRAME_STRATEGIES[frame_class])
    encoded = codec.encode_frame(frame)
    decoded = codec.decode_frame(encoded)
    assert decoded == frame
    assert type(decoded) is frame_class
    assert codec.encode_frame(decoded) == encoded


@ROUND_TRIP
@given(batch=st.lists(frames, min_size=1, max_size=6), data=st.data())
def test_stream_of_frames_survives_any_chunking(
    codec: Codec, batch: list[Frame], data: st.DataObject
) -> None:
    """A FrameDecoder returns the same frames however the stream is cut into chunks."""
    stream = b"".join(codec.encode_frame(frame) for frame in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = FrameDecoder(sender=None)
    received: list[Frame] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        if end > start:
            decoder.receive_data(stream[start:end])
        while not isinstance(item := decoder.next_frame(), DecoderSignal):
            received.append(item)
        assert item is NEED_DATA
    decoder.receive_data(b"")
    assert decoder.next_frame() is END_OF_STREAM
    assert received == batch
