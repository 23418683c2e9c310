"""Frames to bytes and back: `encode_frame`, `decode_frame`, `decode_body`.

Every frame but the hot three (in `_hot_codec`) is written with `Buffer`, so that each codec
reads like its byte-layout table in docs/PROTOCOL.md. This is the pure-Python codec; the C
accelerator `_speedups` replaces these entry points for the hot frames and calls back here for
the rest (`_implementation` chooses). A decoder reads one complete body, from a
start offset to the end of the data, and raises RemoteProtocolError(FRAME_ENCODING_ERROR) when
it is truncated, has trailing bytes, or breaks a rule.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Set
from typing import Any

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire._buffer import Buffer
from forehand.wire._config import (
    DEFAULT_CONFIG,
    FRAME_BYTES_MAX_FLOOR,
    SESSION_ID_BYTES,
    WireConfig,
)
from forehand.wire._enums import (
    ErrorCode,
    FrameType,
    HandoffState,
    PathMetric,
    ReasonCode,
    ResumeRejectReason,
)
from forehand.wire._frames import (
    CloseSession,
    ClusterMessage,
    Credential,
    Endpoint,
    Error,
    Frame,
    GoAway,
    Handoff,
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
    Redirect,
    Request,
    Response,
    Resume,
    ResumeOk,
    ResumeReject,
    SessionOpened,
    Settings,
    Welcome,
)
from forehand.wire._hot_codec import (
    decode_handoff,
    decode_request,
    decode_response,
    encode_handoff,
    encode_names,
    encode_request,
    encode_response,
)
from forehand.wire._primitives import encode_varint, malformed, pull_varint

__all__ = [
    "decode_body",
    "decode_frame",
    "encode_frame",
    "encode_frames",
    "pop_frame",
    "pop_frames",
]

_METRIC_FIELDS: dict[int, str] = {
    PathMetric.RTT_US: "rtt_us",
    PathMetric.JITTER_US: "jitter_us",
    PathMetric.LOSS_PPM: "loss_ppm",
    PathMetric.THROUGHPUT_BPS: "throughput_bps",
    PathMetric.RTT_MIN_US: "rtt_min_us",
    PathMetric.RETRANSMISSIONS: "retransmissions",
}


def _with_header(frame_type: FrameType, body: bytes, config: WireConfig) -> bytes:
    """Prefix a body with its frame type and length, refusing bodies over the bound."""
    size = len(body)
    if size > config.frame_bytes_max:
        raise LocalProtocolError(f"{frame_type.name} body of {size} bytes exceeds frame_bytes_max")
    return encode_varint(frame_type) + encode_varint(size) + body


# Every frame but the hot three, through Buffer, in the order of docs/PROTOCOL.md.


def _encode_hello(frame: Hello, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_count(
        len(frame.versions), config.versions_max, name="Hello.versions", allow_empty=False
    )
    for version in frame.versions:
        buffer.push_varint(version)
    buffer.push_fixed(frame.client_id, SESSION_ID_BYTES, name="Hello.client_id")
    _push_credentials(buffer, frame.credentials, config, frame="Hello")
    return _with_header(FrameType.HELLO, buffer.data(), config)


def _decode_hello(buffer: Buffer, config: WireConfig) -> Hello:
    count = buffer.pull_count(config.versions_max, allow_empty=False)
    versions = tuple(buffer.pull_varint() for _ in range(count))
    client_id = buffer.pull_bytes(SESSION_ID_BYTES)
    credentials = _pull_credentials(buffer, config)
    return Hello(versions=versions, client_id=client_id, credentials=credentials)


def _push_credentials(
    buffer: Buffer, credentials: tuple[Credential, ...], config: WireConfig, *, frame: str
) -> None:
    """`list<credential>`, as HELLO and MAP_REQUEST carry it."""
    buffer.push_count(len(credentials), config.credentials_max, name=f"{frame}.credentials")
    for session_id, credential in credentials:
        buffer.push_fixed(session_id, SESSION_ID_BYTES, name=f"{frame} credential session_id")
        buffer.push_bytes_prefixed(
            credential, config.credential_bytes_max, name=f"{frame} credential"
        )


def _pull_credentials(buffer: Buffer, config: WireConfig) -> tuple[Credential, ...]:
    count = buffer.pull_count(config.credentials_max)
    return tuple(
        Credential(
            buffer.pull_bytes(SESSION_ID_BYTES),
            buffer.pull_bytes_prefixed(config.credential_bytes_max),
        )
        for _ in range(count)
    )


SETTING_CREDENTIAL_LIFETIME_MS = 0x01
"""The SETTINGS id of `Settings.credential_lifetime_ms`."""
SETTING_CLIENT_SESSIONS_MAX = 0x02
"""The SETTINGS id of `Settings.client_sessions_max`."""


def _encode_settings(frame: Settings, config: WireConfig) -> bytes:
    pairs = [
        (SETTING_CREDENTIAL_LIFETIME_MS, frame.credential_lifetime_ms),
        (SETTING_CLIENT_SESSIONS_MAX, frame.client_sessions_max),
    ]
    said = [(setting_id, value) for setting_id, value in pairs if value]
    buffer = Buffer()
    buffer.push_count(len(said), config.settings_max, name="Settings")
    for setting_id, value in said:
        buffer.push_varint(setting_id)
        buffer.push_varint(value)
    return _with_header(FrameType.SETTINGS, buffer.data(), config)


def _decode_settings(buffer: Buffer, config: WireConfig) -> Settings:
    count = buffer.pull_count(config.settings_max)
    values: dict[int, int] = {}
    for _ in range(count):
        setting_id = buffer.pull_varint()
        if setting_id in values:
            raise malformed(f"SETTINGS repeats id {setting_id:#x}")
        values[setting_id] = buffer.pull_varint()
    # Ids this implementation does not know are ignored, as the protocol requires.
    return Settings(
        credential_lifetime_ms=values.get(SETTING_CREDENTIAL_LIFETIME_MS, 0),
        client_sessions_max=values.get(SETTING_CLIENT_SESSIONS_MAX, 0),
    )


def _encode_welcome(frame: Welcome, config: WireConfig) -> bytes:
    if frame.frame_bytes_max < FRAME_BYTES_MAX_FLOOR:
        raise LocalProtocolError(f"Welcome.frame_bytes_max must be >= {FRAME_BYTES_MAX_FLOOR}")
    buffer = Buffer()
    buffer.push_varint(frame.version)
    buffer.push_name(frame.server_id, config.server_id_bytes_max, name="Welcome.server_id")
    buffer.push_varint(frame.map_version)
    buffer.push_varint(frame.frame_bytes_max)
    buffer.push_varint(frame.idle_timeout_ms)
    return _with_header(FrameType.WELCOME, buffer.data(), config)


def _decode_welcome(buffer: Buffer, config: WireConfig) -> Welcome:
    version = buffer.pull_varint()
    server_id = buffer.pull_name(config.server_id_bytes_max)
    map_version = buffer.pull_varint()
    frame_bytes_max = buffer.pull_varint()
    if frame_bytes_max < FRAME_BYTES_MAX_FLOOR:
        raise malformed(f"WELCOME frame_bytes_max {frame_bytes_max} below {FRAME_BYTES_MAX_FLOOR}")
    return Welcome(
        version=version,
        server_id=server_id,
        map_version=map_version,
        frame_bytes_max=frame_bytes_max,
        idle_timeout_ms=buffer.pull_varint(),
    )


def _encode_error(frame: Error, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_varint(frame.code)
    buffer.push_text(frame.reason, config.message_bytes_max, name="Error.reason")
    return _with_header(FrameType.ERROR, buffer.data(), config)


def _decode_error(buffer: Buffer, config: WireConfig) -> Error:
    code = ErrorCode.from_wire(buffer.pull_varint())
    return Error(code=code, reason=buffer.pull_text(config.message_bytes_max))


def _encode_goaway(frame: GoAway, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_varint(frame.map_version)
    buffer.push_uint16(frame.reason)
    buffer.push_varint(frame.last_request_id)
    return _with_header(FrameType.GOAWAY, buffer.data(), config)


def _decode_goaway(buffer: Buffer, config: WireConfig) -> GoAway:
    map_version = buffer.pull_varint()
    reason = ReasonCode.from_wire(buffer.pull_uint16())
    return GoAway(map_version=map_version, reason=reason, last_request_id=buffer.pull_varint())


def _encode_ping(frame: Ping, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_varint(frame.sequence)
    buffer.push_varint(frame.sent_us)
    buffer.push_count(len(frame.telemetry), config.telemetry_samples_max, name="Ping.telemetry")
    for sample in frame.telemetry:
        _push_path_sample(buffer, sample, config)
    return _with_header(FrameType.PING, buffer.data(), config)


def _push_path_sample(buffer: Buffer, sample: PathSample, config: WireConfig) -> None:
    """server_id, then (metric id, value) pairs in ascending id order for the metrics present."""
    sample = PathSample(*sample)  # a plain tuple in PathSample's field order is accepted too
    buffer.push_name(sample.server_id, config.server_id_bytes_max, name="PathSample.server_id")
    metrics = [
        (metric, value)
        for metric, field in _METRIC_FIELDS.items()
        if (value := getattr(sample, field)) is not None
    ]
    if sample.probe:
        # PROBE is a flag: present with value 1 when set, absent otherwise.
        metrics.append((PathMetric.PROBE, 1))
    buffer.push_varint(len(metrics))
    for metric, value in metrics:
        buffer.push_varint(metric)
        buffer.push_varint(value)


def _decode_ping(buffer: Buffer, config: WireConfig) -> Ping:
    sequence = buffer.pull_varint()
    sent_us = buffer.pull_varint()
    count = buffer.pull_count(config.telemetry_samples_max)
    telemetry = tuple(_pull_path_sample(buffer, config) for _ in range(count))
    return Ping(sequence=sequence, sent_us=sent_us, telemetry=telemetry)


def _pull_path_sample(buffer: Buffer, config: WireConfig) -> PathSample:
    """Metric ids must ascend strictly; ids this version does not know are skipped."""
    server_id = buffer.pull_name(config.server_id_bytes_max)
    count = buffer.pull_count(config.telemetry_metrics_max)
    values: dict[str, int] = {}
    probe = False
    previous = 0
    for _ in range(count):
        metric = buffer.pull_varint()
        value = buffer.pull_varint()
        if metric <= previous:
            raise malformed("path sample metric ids must ascend strictly")
        previous = metric
        field = _METRIC_FIELDS.get(metric)
        if field is not None:
            values[field] = value
        elif metric == PathMetric.PROBE:
            probe = value != 0
    return PathSample(server_id, **values, probe=probe)


def _encode_pong(frame: Pong, config: WireConfig) -> bytes:
    body = encode_varint(frame.sequence) + encode_varint(frame.sent_us)
    return _with_header(FrameType.PONG, body, config)


def _decode_pong(buffer: Buffer, config: WireConfig) -> Pong:
    sequence = buffer.pull_varint()
    return Pong(sequence=sequence, sent_us=buffer.pull_varint())


def _encode_open_session(frame: OpenSession, config: WireConfig) -> bytes:
    body = encode_varint(frame.request_id) + encode_names(frame.parts, config, "OpenSession")
    return _with_header(FrameType.OPEN_SESSION, body, config)


def _decode_open_session(buffer: Buffer, config: WireConfig) -> OpenSession:
    request_id = buffer.pull_varint()
    return OpenSession(request_id=request_id, parts=_pull_parts(buffer, config))


def _pull_parts(buffer: Buffer, config: WireConfig) -> tuple[str, ...]:
    count = buffer.pull_count(config.parts_max, allow_empty=False)
    parts = tuple(buffer.pull_name(config.part_name_bytes_max) for _ in range(count))
    if len(set(parts)) != count:
        raise malformed("list of part names repeats a name")
    return parts


def _push_parts(buffer: Buffer, parts: tuple[str, ...], config: WireConfig, frame: str) -> None:
    buffer.push_bytes(encode_names(parts, config, frame))


def _encode_session_opened(frame: SessionOpened, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_varint(frame.request_id)
    buffer.push_fixed(frame.session_id, SESSION_ID_BYTES, name="SessionOpened.session_id")
    buffer.push_bytes_prefixed(
        frame.credential, config.credential_bytes_max, name="SessionOpened.credential"
    )
    buffer.push_varint(frame.map_version)
    buffer.push_bytes_prefixed(frame.token, config.token_bytes_max, name="SessionOpened.token")
    placements = frame.placements
    buffer.push_count(len(placements), config.placements_max, name="SessionOpened.placements")
    for part, primary, replicas in placements:
        buffer.push_name(part, config.part_name_bytes_max, name="Placement.part")
        buffer.push_endpoint(primary, config)
        buffer.push_count(len(replicas), config.replicas_max, name="Placement.replicas")
        for replica in replicas:
            buffer.push_endpoint(replica, config)
    return _with_header(FrameType.SESSION_OPENED, buffer.data(), config)


def _decode_session_opened(buffer: Buffer, config: WireConfig) -> SessionOpened:
    request_id = buffer.pull_varint()
    session_id = buffer.pull_bytes(SESSION_ID_BYTES)
    credential = buffer.pull_bytes_prefixed(config.credential_bytes_max)
    map_version = buffer.pull_varint()
    token = buffer.pull_bytes_prefixed(config.token_bytes_max)
    count = buffer.pull_count(config.placements_max)
    placements = tuple(_pull_placement(buffer, config) for _ in range(count))
    return SessionOpened(
        request_id=request_id,
        session_id=session_id,
        credential=credential,
        map_version=map_version,
        placements=placements,
        token=token,
    )


def _pull_placement(buffer: Buffer, config: WireConfig) -> Placement:
    part = buffer.pull_name(config.part_name_bytes_max)
    primary = buffer.pull_endpoint(config)
    count = buffer.pull_count(config.replicas_max)
    return Placement(part, primary, tuple(buffer.pull_endpoint(config) for _ in range(count)))


def _encode_open_session_refused(frame: OpenSessionRefused, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_varint(frame.request_id)
    buffer.push_text(frame.reason, config.message_bytes_max, name="OpenSessionRefused.reason")
    if frame.retry_after_ms:
        # Absent when 0: a receiver of the frame's first layout, which ended at the reason,
        # reads every refusal that stands.
        buffer.push_varint(frame.retry_after_ms)
    return _with_header(FrameType.OPEN_SESSION_REFUSED, buffer.data(), config)


def _decode_open_session_refused(buffer: Buffer, config: WireConfig) -> OpenSessionRefused:
    request_id = buffer.pull_varint()
    reason = buffer.pull_text(config.message_bytes_max)
    retry_after_ms = 0
    if not buffer.at_end():
        retry_after_ms = buffer.pull_varint()
        if retry_after_ms == 0:
            raise malformed("OPEN_SESSION_REFUSED carries retry_after_ms 0, which goes absent")
    return OpenSessionRefused(request_id=request_id, reason=reason, retry_after_ms=retry_after_ms)


def _encode_close_session(frame: CloseSession, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_fixed(frame.session_id, SESSION_ID_BYTES, name="CloseSession.session_id")
    return _with_header(FrameType.CLOSE_SESSION, buffer.data(), config)


def _decode_close_session(buffer: Buffer, config: WireConfig) -> CloseSession:
    return CloseSession(session_id=buffer.pull_bytes(SESSION_ID_BYTES))


def _encode_redirect(frame: Redirect, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_fixed(frame.session_id, SESSION_ID_BYTES, name="Redirect.session_id")
    buffer.push_varint(frame.request_id)
    buffer.push_varint(frame.map_version)
    buffer.push_name(frame.part, config.part_name_bytes_max, name="Redirect.part")
    _push_endpoints(buffer, frame.targets, config, name="Redirect.targets")
    return _with_header(FrameType.REDIRECT, buffer.data(), config)


def _push_endpoints(
    buffer: Buffer, endpoints: tuple[Endpoint, ...], config: WireConfig, *, name: str
) -> None:
    buffer.push_count(len(endpoints), config.targets_max, name=name)
    for endpoint in endpoints:
        buffer.push_endpoint(endpoint, config)


def _decode_redirect(buffer: Buffer, config: WireConfig) -> Redirect:
    session_id = buffer.pull_bytes(SESSION_ID_BYTES)
    request_id = buffer.pull_varint()
    map_version = buffer.pull_varint()
    part = buffer.pull_name(config.part_name_bytes_max)
    count = buffer.pull_count(config.targets_max)
    return Redirect(
        request_id=request_id,
        session_id=session_id,
        part=part,
        map_version=map_version,
        targets=tuple(buffer.pull_endpoint(config) for _ in range(count)),
    )


def _encode_map_request(frame: MapRequest, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_varint(frame.map_version)
    _push_credentials(buffer, frame.credentials, config, frame="MapRequest")
    return _with_header(FrameType.MAP_REQUEST, buffer.data(), config)


def _decode_map_request(buffer: Buffer, config: WireConfig) -> MapRequest:
    map_version = buffer.pull_varint()
    return MapRequest(map_version=map_version, credentials=_pull_credentials(buffer, config))


def _encode_map_update(frame: MapUpdate, config: WireConfig) -> bytes:
    if frame.base_version >= frame.map_version:
        raise LocalProtocolError("MapUpdate.base_version must be below map_version")
    buffer = Buffer()
    buffer.push_varint(frame.map_version)
    buffer.push_varint(frame.base_version)
    buffer.push_varint(frame.encoding)
    buffer.push_bytes(frame.body)
    return _with_header(FrameType.MAP_UPDATE, buffer.data(), config)


def _decode_map_update(buffer: Buffer, config: WireConfig) -> MapUpdate:
    map_version = buffer.pull_varint()
    base_version = buffer.pull_varint()
    if base_version >= map_version:
        raise malformed("MAP_UPDATE base_version is not below map_version")
    return MapUpdate(
        map_version=map_version,
        base_version=base_version,
        encoding=buffer.pull_varint(),
        body=buffer.pull_rest(),
    )


def _encode_handoff_status(frame: HandoffStatus, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_fixed(frame.session_id, SESSION_ID_BYTES, name="HandoffStatus.session_id")
    buffer.push_varint(frame.sequence)
    buffer.push_varint(frame.state)
    buffer.push_varint(frame.detail_code)
    return _with_header(FrameType.HANDOFF_STATUS, buffer.data(), config)


def _decode_handoff_status(buffer: Buffer, config: WireConfig) -> HandoffStatus:
    session_id = buffer.pull_bytes(SESSION_ID_BYTES)
    sequence = buffer.pull_varint()
    state = HandoffState(buffer.pull_varint())
    return HandoffStatus(
        sequence=sequence, session_id=session_id, state=state, detail_code=buffer.pull_varint()
    )


def _encode_resume(frame: Resume, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_fixed(frame.session_id, SESSION_ID_BYTES, name="Resume.session_id")
    buffer.push_varint(frame.map_version)
    buffer.push_bytes_prefixed(frame.token, config.token_bytes_max, name="Resume.token")
    _push_parts(buffer, frame.parts, config, "Resume")
    buffer.push_count(len(frame.unanswered), config.unanswered_max, name="Resume.unanswered")
    for request_id in frame.unanswered:
        buffer.push_varint(request_id)
    return _with_header(FrameType.RESUME, buffer.data(), config)


def _decode_resume(buffer: Buffer, config: WireConfig) -> Resume:
    session_id = buffer.pull_bytes(SESSION_ID_BYTES)
    map_version = buffer.pull_varint()
    token = buffer.pull_bytes_prefixed(config.token_bytes_max)
    parts = _pull_parts(buffer, config)
    count = buffer.pull_count(config.unanswered_max)
    return Resume(
        session_id=session_id,
        token=token,
        parts=parts,
        map_version=map_version,
        unanswered=tuple(buffer.pull_varint() for _ in range(count)),
    )


def _encode_resume_ok(frame: ResumeOk, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_fixed(frame.session_id, SESSION_ID_BYTES, name="ResumeOk.session_id")
    buffer.push_varint(frame.map_version)
    _push_parts(buffer, frame.parts, config, "ResumeOk")
    buffer.push_bytes_prefixed(
        frame.credential, config.credential_bytes_max, name="ResumeOk.credential"
    )
    return _with_header(FrameType.RESUME_OK, buffer.data(), config)


def _decode_resume_ok(buffer: Buffer, config: WireConfig) -> ResumeOk:
    session_id = buffer.pull_bytes(SESSION_ID_BYTES)
    map_version = buffer.pull_varint()
    parts = _pull_parts(buffer, config)
    credential = buffer.pull_bytes_prefixed(config.credential_bytes_max)
    return ResumeOk(
        session_id=session_id, parts=parts, map_version=map_version, credential=credential
    )


def _encode_resume_reject(frame: ResumeReject, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_fixed(frame.session_id, SESSION_ID_BYTES, name="ResumeReject.session_id")
    buffer.push_varint(frame.reason)
    buffer.push_text(frame.message, config.message_bytes_max, name="ResumeReject.message")
    return _with_header(FrameType.RESUME_REJECT, buffer.data(), config)


def _decode_resume_reject(buffer: Buffer, config: WireConfig) -> ResumeReject:
    session_id = buffer.pull_bytes(SESSION_ID_BYTES)
    reason = ResumeRejectReason.from_wire(buffer.pull_varint())
    message = buffer.pull_text(config.message_bytes_max)
    return ResumeReject(session_id=session_id, reason=reason, message=message)


def _encode_cluster_message(frame: ClusterMessage, config: WireConfig) -> bytes:
    body = encode_varint(frame.kind) + frame.body
    return _with_header(FrameType.CLUSTER_MESSAGE, body, config)


def _decode_cluster_message(buffer: Buffer, config: WireConfig) -> ClusterMessage:
    kind = buffer.pull_varint()
    return ClusterMessage(kind=kind, body=buffer.pull_rest())


# Dispatch tables and the public entry points.

_Encoder = Callable[[Any, WireConfig], bytes]

_ENCODERS: dict[type[Frame], _Encoder] = {
    Hello: _encode_hello,
    Welcome: _encode_welcome,
    Settings: _encode_settings,
    Error: _encode_error,
    GoAway: _encode_goaway,
    Ping: _encode_ping,
    Pong: _encode_pong,
    OpenSession: _encode_open_session,
    SessionOpened: _encode_session_opened,
    OpenSessionRefused: _encode_open_session_refused,
    CloseSession: _encode_close_session,
    Request: encode_request,
    Response: encode_response,
    Redirect: _encode_redirect,
    MapRequest: _encode_map_request,
    MapUpdate: _encode_map_update,
    Handoff: encode_handoff,
    HandoffStatus: _encode_handoff_status,
    Resume: _encode_resume,
    ResumeOk: _encode_resume_ok,
    ResumeReject: _encode_resume_reject,
    ClusterMessage: _encode_cluster_message,
}

_SHORTEST_VARINT_MIN = {1: 0, 2: 0x40, 4: 0x4000, 8: 0x4000_0000}
"""The smallest value each varint length may carry when the shortest form is required."""

_Decoder = Callable[[bytes, int, WireConfig], Frame]

_CLUSTER_HEAD = encode_varint(FrameType.CLUSTER_MESSAGE)
"""The two header bytes of CLUSTER_MESSAGE's type, which `pop_frame` recognises."""
assert len(_CLUSTER_HEAD) == 2, "pop_frame reads exactly two type bytes"


def _with_buffer(decode: Callable[[Buffer, WireConfig], Frame]) -> _Decoder:
    """Adapt a Buffer-based decoder to the (data, start, config) shape; no trailing bytes."""

    def decode_from(data: bytes, start: int, config: WireConfig) -> Frame:
        buffer = Buffer(data, offset=start)
        frame = decode(buffer, config)
        buffer.expect_end()
        return frame

    return decode_from


_DECODERS: dict[int, _Decoder] = {
    FrameType.REQUEST: decode_request,
    FrameType.RESPONSE: decode_response,
    FrameType.HANDOFF: decode_handoff,
    FrameType.HELLO: _with_buffer(_decode_hello),
    FrameType.WELCOME: _with_buffer(_decode_welcome),
    FrameType.SETTINGS: _with_buffer(_decode_settings),
    FrameType.ERROR: _with_buffer(_decode_error),
    FrameType.GOAWAY: _with_buffer(_decode_goaway),
    FrameType.PING: _with_buffer(_decode_ping),
    FrameType.PONG: _with_buffer(_decode_pong),
    FrameType.OPEN_SESSION: _with_buffer(_decode_open_session),
    FrameType.SESSION_OPENED: _with_buffer(_decode_session_opened),
    FrameType.OPEN_SESSION_REFUSED: _with_buffer(_decode_open_session_refused),
    FrameType.CLOSE_SESSION: _with_buffer(_decode_close_session),
    FrameType.REDIRECT: _with_buffer(_decode_redirect),
    FrameType.MAP_REQUEST: _with_buffer(_decode_map_request),
    FrameType.MAP_UPDATE: _with_buffer(_decode_map_update),
    FrameType.HANDOFF_STATUS: _with_buffer(_decode_handoff_status),
    FrameType.RESUME: _with_buffer(_decode_resume),
    FrameType.RESUME_OK: _with_buffer(_decode_resume_ok),
    FrameType.RESUME_REJECT: _with_buffer(_decode_resume_reject),
    FrameType.CLUSTER_MESSAGE: _with_buffer(_decode_cluster_message),
}
"""The decoder of each frame type, called with the frame's data and where its body starts."""


def encode_frames(
    frames: list[Frame] | tuple[Frame, ...], *, config: WireConfig = DEFAULT_CONFIG
) -> bytes:
    """The bytes of `frames`, one after the other, as `encode_frame` gives them; raises what it
    raises for the first frame it refuses."""
    return b"".join([encode_frame(frame, config=config) for frame in frames])


def encode_frame(frame: Frame, *, config: WireConfig = DEFAULT_CONFIG) -> bytes:
    """The bytes of one frame: type, length and body as docs/PROTOCOL.md lays them out.

    Raises LocalProtocolError when a field cannot be carried (a name too long, a list over its
    bound, an integer outside its range, a body over `config.frame_bytes_max`).
    """
    encoder = _ENCODERS.get(type(frame))
    if encoder is None:
        raise LocalProtocolError(f"not a forehand/1 frame: {type(frame).__name__}")
    return encoder(frame, config)


def decode_body(
    frame_type: int, data: bytes, start: int = 0, config: WireConfig = DEFAULT_CONFIG
) -> Frame:
    """Decode one frame of a known type whose body is `data[start:]`.

    Raises RemoteProtocolError: FRAME_ENCODING_ERROR for an invalid body, UNKNOWN_FRAME_TYPE for
    a type this version does not define.
    """
    decode = _DECODERS.get(frame_type)
    if decode is None:
        raise RemoteProtocolError(
            f"unknown frame type {frame_type:#x}", error_code=ErrorCode.UNKNOWN_FRAME_TYPE
        )
    try:
        return decode(data, start, config)
    except (IndexError, ValueError, struct.error) as error:
        raise malformed(f"malformed {FrameType(frame_type).name} frame: {error}") from None


def decode_frame(data: bytes, *, config: WireConfig = DEFAULT_CONFIG) -> Frame:
    """Decode exactly one complete frame of a known type; anything else is RemoteProtocolError."""
    try:
        frame_type = data[0]
        length_first = data[1]
        if frame_type < 0x40 and length_first < 0x80:
            # The common header: a one-byte type and a one- or two-byte length.
            if length_first < 0x40:
                size = length_first
                start = 2
            else:
                size = ((length_first & 0x3F) << 8) | data[2]
                start = 3
        else:
            frame_type, start = pull_varint(data, 0)
            if frame_type < _SHORTEST_VARINT_MIN[start]:
                raise malformed("frame type not in its shortest encoding")
            size, start = pull_varint(data, start)
    except IndexError:
        raise malformed("data ends inside a frame header") from None
    if size > config.frame_bytes_max:
        raise RemoteProtocolError(
            f"frame body of {size} bytes exceeds {config.frame_bytes_max}",
            error_code=ErrorCode.FRAME_TOO_LARGE,
        )
    if start + size != len(data):
        raise malformed(f"frame length {size} does not match the {len(data) - start} bytes given")
    decode = _DECODERS.get(frame_type)
    if decode is None:
        return decode_body(frame_type, data, start, config)  # raises UNKNOWN_FRAME_TYPE
    # decode_body's work, inlined: this is the hot path of every single-frame decode.
    try:
        return decode(data, start, config)
    except (IndexError, ValueError, struct.error) as error:
        raise malformed(f"malformed {FrameType(frame_type).name} frame: {error}") from None


def pop_frame(buffer: bytearray, allowed: Set[int], config: WireConfig) -> Frame | None:
    """Decode and remove the frame at the front of `buffer` when it is complete and has the
    common header: a one-byte type in `allowed`, or CLUSTER_MESSAGE (the two-byte type servers
    ship their logs in) when allowed, then a length below 2**14.

    Such a length is under every permitted frame_bytes_max, so no other header check applies.
    Returns None, with the buffer untouched, for anything else; FrameDecoder's general path then
    parses the header. Raises RemoteProtocolError for an invalid body, leaving the buffer as is.
    """
    available = len(buffer)
    if available <= 2:
        return None
    first = buffer[0]
    if first < 0x40 and first in allowed:
        frame_type, at = first, 1
    elif (
        first == _CLUSTER_HEAD[0]
        and available > 3
        and buffer[1] == _CLUSTER_HEAD[1]
        and FrameType.CLUSTER_MESSAGE in allowed
    ):
        frame_type, at = FrameType.CLUSTER_MESSAGE.value, 2
    else:
        return None
    second = buffer[at]
    if second >= 0x80:
        return None
    start = at + 1 if second < 0x40 else at + 2
    end = start + (second if second < 0x40 else ((second & 0x3F) << 8) | buffer[at + 1])
    if end > available:
        return None
    frame = decode_body(frame_type, bytes(buffer[:end]), start, config)
    del buffer[:end]
    return frame


def pop_frames(buffer: bytearray, allowed: Set[int], limit: int, config: WireConfig) -> list[Frame]:
    """Decode and remove, in one call, the frames `pop_frame` would return one by one, at most
    `limit` of them (no bound when negative), ending after an ERROR frame (the peer closes).

    An invalid body raises RemoteProtocolError only when it is the first frame; otherwise the
    frames before it are returned and the invalid one stays at the front of `buffer`, so the
    next call raises, exactly as the next `pop_frame` would.
    """
    frames: list[Frame] = []
    while limit < 0 or len(frames) < limit:
        try:
            frame = pop_frame(buffer, allowed, config)
        except RemoteProtocolError:
            if not frames:
                raise
            break
        if frame is None:
            break
        frames.append(frame)
        if type(frame) is Error:
            break
    return frames
