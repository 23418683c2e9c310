"""Frame bodies to bytes and back, one encoder and one decoder per frame type.

REQUEST, RESPONSE and HANDOFF are written against the offset functions of `_primitives` because
they dominate traffic (the benchmark holds them within reach of msgspec); every other frame uses
`Buffer`, which reads like the byte-layout tables of docs/PROTOCOL.md.

A decoder reads one complete body and may raise IndexError or ValueError on truncated or invalid
input; `decode_body` turns those into RemoteProtocolError(FRAME_ENCODING_ERROR). Truncation inside
the hot decoders is caught by the final length check: every offset is computed, never clamped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
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
    HandoffFlag,
    HandoffState,
    PathMetric,
    ReasonCode,
    ResponseStatus,
    ResumeRejectReason,
)
from forehand.wire._frames import (
    CloseSession,
    ClusterMessage,
    Credential,
    Endpoint,
    Error,
    Extension,
    Frame,
    GoAway,
    Handoff,
    HandoffStatus,
    Hello,
    MapRequest,
    MapUpdate,
    OpenSession,
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
    Welcome,
)
from forehand.wire._primitives import (
    encode_endpoint,
    encode_name,
    encode_varint,
    malformed,
    pull_endpoint,
    pull_name,
    pull_varint,
)

__all__ = ["decode_body", "decode_frame", "encode_frame"]

_REASON_CODES = {int(code): code for code in ReasonCode}
_STATUSES = {int(status): status for status in ResponseStatus}
_COMMON_FLAGS = {int(flags): HandoffFlag(flags) for flags in range(8)}
_METRIC_FIELDS: dict[int, str] = {
    PathMetric.RTT_US: "rtt_us",
    PathMetric.JITTER_US: "jitter_us",
    PathMetric.LOSS_PPM: "loss_ppm",
    PathMetric.THROUGHPUT_BPS: "throughput_bps",
}


def _session_id(value: bytes, *, name: str = "session_id") -> bytes:
    """Check a 16-byte id before it goes on the wire."""
    if len(value) != SESSION_ID_BYTES:
        raise LocalProtocolError(f"{name} must be {SESSION_ID_BYTES} bytes, got {len(value)}")
    return value


def _with_header(frame_type: FrameType, body: bytes, config: WireConfig) -> bytes:
    """Prefix a body with its frame type and length, refusing bodies over the bound."""
    size = len(body)
    if size > config.frame_bytes_max:
        raise LocalProtocolError(f"{frame_type.name} body of {size} bytes exceeds frame_bytes_max")
    return encode_varint(frame_type) + encode_varint(size) + body


# REQUEST, RESPONSE and HANDOFF: inlined for speed.


def _encode_request(frame: Request, config: WireConfig) -> bytes:
    part = encode_name(frame.part, config.part_name_bytes_max, name="Request.part")
    op = encode_name(frame.op, config.op_name_bytes_max, name="Request.op")
    head = (
        _session_id(frame.session_id)
        + encode_varint(frame.request_id)
        + encode_varint(frame.map_version)
    )
    size = len(head) + len(part) + len(op) + len(frame.payload)
    if size > config.frame_bytes_max:
        raise LocalProtocolError(f"REQUEST body of {size} bytes exceeds frame_bytes_max")
    return b"".join((b"\x10", encode_varint(size), head, part, op, frame.payload))


def _decode_request(body: bytes, config: WireConfig) -> Request:
    request_id = body[SESSION_ID_BYTES]
    if request_id < 0x40:
        offset = SESSION_ID_BYTES + 1
    else:
        request_id, offset = pull_varint(body, SESSION_ID_BYTES)
    map_version = body[offset]
    if map_version < 0x40:
        offset += 1
    else:
        map_version, offset = pull_varint(body, offset)
    part, offset = pull_name(body, offset, config.part_name_bytes_max)
    op, offset = pull_name(body, offset, config.op_name_bytes_max)
    return Request(
        request_id=request_id,
        session_id=body[:SESSION_ID_BYTES],
        part=part,
        op=op,
        map_version=map_version,
        payload=body[offset:],
    )


def _encode_response(frame: Response, config: WireConfig) -> bytes:
    head = (
        _session_id(frame.session_id)
        + encode_varint(frame.request_id)
        + encode_varint(frame.map_version)
        + encode_varint(frame.status)
    )
    size = len(head) + len(frame.payload)
    if size > config.frame_bytes_max:
        raise LocalProtocolError(f"RESPONSE body of {size} bytes exceeds frame_bytes_max")
    return b"".join((b"\x11", encode_varint(size), head, frame.payload))


def _decode_response(body: bytes, config: WireConfig) -> Response:
    request_id, offset = pull_varint(body, SESSION_ID_BYTES)
    map_version, offset = pull_varint(body, offset)
    status_value, offset = pull_varint(body, offset)
    status = _STATUSES.get(status_value)
    if status is None:
        raise malformed(f"unknown response status {status_value}")
    return Response(
        request_id=request_id,
        session_id=body[:SESSION_ID_BYTES],
        status=status,
        map_version=map_version,
        payload=body[offset:],
    )


def _encode_handoff(frame: Handoff, config: WireConfig) -> bytes:
    targets = frame.targets
    if not 0 < len(targets) <= config.targets_max:
        raise LocalProtocolError(f"Handoff.targets must hold 1 to {config.targets_max} endpoints")
    server_id_max = config.server_id_bytes_max
    pieces = [
        _session_id(frame.session_id),
        encode_varint(frame.sequence),
        encode_varint(frame.map_version),
        encode_varint(frame.reason),
        encode_varint(frame.flags),
        encode_varint(frame.deadline_ms),
        encode_endpoint(frame.current, server_id_max),
        encode_varint(len(targets)),
    ]
    pieces.extend(encode_endpoint(target, server_id_max) for target in targets)
    pieces.append(_bytes_field(frame.token, config.token_bytes_max, name="Handoff.token"))
    pieces.append(_names(frame.parts, config.parts_max, config.part_name_bytes_max, "Handoff"))
    pieces.append(_encode_extensions(frame.extensions, config))
    return _with_header(FrameType.HANDOFF, b"".join(pieces), config)


def _decode_handoff(body: bytes, config: WireConfig) -> Handoff:
    sequence, offset = pull_varint(body, SESSION_ID_BYTES)
    map_version, offset = pull_varint(body, offset)
    reason, offset = pull_varint(body, offset)
    flags, offset = pull_varint(body, offset)
    deadline_ms, offset = pull_varint(body, offset)
    server_id_max = config.server_id_bytes_max
    current, offset = pull_endpoint(body, offset, server_id_max)
    count, offset = pull_varint(body, offset)
    if not 0 < count <= config.targets_max:
        raise malformed(f"HANDOFF with {count} targets, outside 1..{config.targets_max}")
    targets = []
    for _ in range(count):
        target, offset = pull_endpoint(body, offset, server_id_max)
        targets.append(target)
    token, offset = _pull_bytes(body, offset, config.token_bytes_max)
    parts, offset = _pull_names(body, offset, config.parts_max, config.part_name_bytes_max)
    extensions, offset = _pull_extensions(body, offset, config)
    if offset != len(body):
        raise malformed("HANDOFF body has trailing bytes")
    flag_set = _COMMON_FLAGS.get(flags)
    return Handoff(
        sequence=sequence,
        session_id=body[:SESSION_ID_BYTES],
        parts=parts,
        map_version=map_version,
        reason=_REASON_CODES.get(reason, ReasonCode.UNSPECIFIED),
        flags=HandoffFlag(flags) if flag_set is None else flag_set,
        deadline_ms=deadline_ms,
        current=current,
        targets=tuple(targets),
        token=token,
        extensions=extensions,
    )


def _bytes_field(value: bytes, max_bytes: int, *, name: str) -> bytes:
    """Varint length then bytes, checked against the bound."""
    size = len(value)
    if size > max_bytes:
        raise LocalProtocolError(f"{name} of {size} bytes exceeds {max_bytes}")
    return encode_varint(size) + value


def _pull_bytes(data: bytes, offset: int, max_bytes: int) -> tuple[bytes, int]:
    size, offset = pull_varint(data, offset)
    if size > max_bytes:
        raise malformed(f"field of {size} bytes exceeds its bound of {max_bytes}")
    end = offset + size
    if end > len(data):
        raise IndexError("field runs past the end of the data")
    return data[offset:end], end


def _names(values: tuple[str, ...], max_items: int, max_bytes: int, frame: str) -> bytes:
    """A non-empty list of distinct part names."""
    if not 0 < len(values) <= max_items:
        raise LocalProtocolError(f"{frame}.parts must hold 1 to {max_items} names")
    if len(set(values)) != len(values):
        raise LocalProtocolError(f"{frame}.parts must not repeat a name")
    pieces = [encode_varint(len(values))]
    pieces.extend(encode_name(value, max_bytes, name=f"{frame}.parts") for value in values)
    return b"".join(pieces)


def _pull_names(
    data: bytes, offset: int, max_items: int, max_bytes: int
) -> tuple[tuple[str, ...], int]:
    count, offset = pull_varint(data, offset)
    if not 0 < count <= max_items:
        raise malformed(f"list of {count} names is outside 1..{max_items}")
    names = []
    for _ in range(count):
        name, offset = pull_name(data, offset, max_bytes)
        names.append(name)
    if len(set(names)) != count:
        raise malformed("list of part names repeats a name")
    return tuple(names), offset


def _encode_extensions(extensions: tuple[Extension, ...], config: WireConfig) -> bytes:
    if len(extensions) > config.extensions_max:
        raise LocalProtocolError(f"more than {config.extensions_max} HANDOFF extensions")
    pieces = [encode_varint(len(extensions))]
    for extension_type, value in extensions:
        pieces.append(encode_varint(extension_type))
        pieces.append(
            _bytes_field(value, config.extension_bytes_max, name="Handoff extension value")
        )
    return b"".join(pieces)


def _pull_extensions(
    data: bytes, offset: int, config: WireConfig
) -> tuple[tuple[Extension, ...], int]:
    count, offset = pull_varint(data, offset)
    if count > config.extensions_max:
        raise malformed(f"{count} HANDOFF extensions exceed {config.extensions_max}")
    extensions = []
    for _ in range(count):
        extension_type, offset = pull_varint(data, offset)
        value, offset = _pull_bytes(data, offset, config.extension_bytes_max)
        extensions.append(Extension(extension_type, value))
    return tuple(extensions), offset


# Every other frame, through Buffer, in the order of docs/PROTOCOL.md.


def _encode_hello(frame: Hello, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_count(
        len(frame.versions), config.versions_max, name="Hello.versions", allow_empty=False
    )
    for version in frame.versions:
        buffer.push_varint(version)
    buffer.push_fixed(frame.client_id, SESSION_ID_BYTES, name="Hello.client_id")
    buffer.push_count(len(frame.credentials), config.credentials_max, name="Hello.credentials")
    for session_id, credential in frame.credentials:
        buffer.push_fixed(session_id, SESSION_ID_BYTES, name="Hello credential session_id")
        buffer.push_bytes_prefixed(credential, config.credential_bytes_max, name="Hello credential")
    return _with_header(FrameType.HELLO, buffer.data(), config)


def _decode_hello(buffer: Buffer, config: WireConfig) -> Hello:
    count = buffer.pull_count(config.versions_max, allow_empty=False)
    versions = tuple(buffer.pull_varint() for _ in range(count))
    client_id = buffer.pull_bytes(SESSION_ID_BYTES)
    count = buffer.pull_count(config.credentials_max)
    credentials = tuple(
        Credential(
            buffer.pull_bytes(SESSION_ID_BYTES),
            buffer.pull_bytes_prefixed(config.credential_bytes_max),
        )
        for _ in range(count)
    )
    return Hello(versions=versions, client_id=client_id, credentials=credentials)


def _encode_welcome(frame: Welcome, config: WireConfig) -> bytes:
    if frame.frame_bytes_max < FRAME_BYTES_MAX_FLOOR:
        raise LocalProtocolError(f"Welcome.frame_bytes_max must be >= {FRAME_BYTES_MAX_FLOOR}")
    buffer = Buffer()
    buffer.push_varint(frame.version)
    buffer.push_string(frame.server_id, config.server_id_bytes_max, name="Welcome.server_id")
    buffer.push_varint(frame.map_version)
    buffer.push_varint(frame.frame_bytes_max)
    buffer.push_varint(frame.idle_timeout_ms)
    return _with_header(FrameType.WELCOME, buffer.data(), config)


def _decode_welcome(buffer: Buffer, config: WireConfig) -> Welcome:
    version = buffer.pull_varint()
    server_id = buffer.pull_string(config.server_id_bytes_max)
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
    buffer.push_string(
        frame.reason, config.message_bytes_max, name="Error.reason", allow_empty=True
    )
    return _with_header(FrameType.ERROR, buffer.data(), config)


def _decode_error(buffer: Buffer, config: WireConfig) -> Error:
    code = ErrorCode.from_wire(buffer.pull_varint())
    return Error(code=code, reason=buffer.pull_string(config.message_bytes_max, allow_empty=True))


def _encode_goaway(frame: GoAway, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_varint(frame.map_version)
    buffer.push_varint(frame.reason)
    buffer.push_varint(frame.last_request_id)
    return _with_header(FrameType.GOAWAY, buffer.data(), config)


def _decode_goaway(buffer: Buffer, config: WireConfig) -> GoAway:
    map_version = buffer.pull_varint()
    reason = ReasonCode.from_wire(buffer.pull_varint())
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
    buffer.push_string(sample.server_id, config.server_id_bytes_max, name="PathSample.server_id")
    metrics = [
        (metric, value)
        for metric, field in _METRIC_FIELDS.items()
        if (value := getattr(sample, field)) is not None
    ]
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
    server_id = buffer.pull_string(config.server_id_bytes_max)
    count = buffer.pull_count(config.telemetry_metrics_max)
    values: dict[str, int] = {}
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
    return PathSample(server_id, **values)


def _encode_pong(frame: Pong, config: WireConfig) -> bytes:
    body = encode_varint(frame.sequence) + encode_varint(frame.sent_us)
    return _with_header(FrameType.PONG, body, config)


def _decode_pong(buffer: Buffer, config: WireConfig) -> Pong:
    sequence = buffer.pull_varint()
    return Pong(sequence=sequence, sent_us=buffer.pull_varint())


def _encode_open_session(frame: OpenSession, config: WireConfig) -> bytes:
    body = encode_varint(frame.request_id) + _names(
        frame.parts, config.parts_max, config.part_name_bytes_max, "OpenSession"
    )
    return _with_header(FrameType.OPEN_SESSION, body, config)


def _decode_open_session(buffer: Buffer, config: WireConfig) -> OpenSession:
    request_id = buffer.pull_varint()
    return OpenSession(request_id=request_id, parts=_pull_parts(buffer, config))


def _pull_parts(buffer: Buffer, config: WireConfig) -> tuple[str, ...]:
    count = buffer.pull_count(config.parts_max, allow_empty=False)
    parts = tuple(buffer.pull_string(config.part_name_bytes_max) for _ in range(count))
    if len(set(parts)) != count:
        raise malformed("list of part names repeats a name")
    return parts


def _push_parts(buffer: Buffer, parts: tuple[str, ...], config: WireConfig, frame: str) -> None:
    buffer.push_bytes(_names(parts, config.parts_max, config.part_name_bytes_max, frame))


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
        buffer.push_string(part, config.part_name_bytes_max, name="Placement.part")
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
    part = buffer.pull_string(config.part_name_bytes_max)
    primary = buffer.pull_endpoint(config)
    count = buffer.pull_count(config.replicas_max)
    return Placement(part, primary, tuple(buffer.pull_endpoint(config) for _ in range(count)))


def _encode_close_session(frame: CloseSession, config: WireConfig) -> bytes:
    return _with_header(FrameType.CLOSE_SESSION, _session_id(frame.session_id), config)


def _decode_close_session(buffer: Buffer, config: WireConfig) -> CloseSession:
    return CloseSession(session_id=buffer.pull_bytes(SESSION_ID_BYTES))


def _encode_redirect(frame: Redirect, config: WireConfig) -> bytes:
    buffer = Buffer()
    buffer.push_fixed(frame.session_id, SESSION_ID_BYTES, name="Redirect.session_id")
    buffer.push_varint(frame.request_id)
    buffer.push_varint(frame.map_version)
    buffer.push_string(frame.part, config.part_name_bytes_max, name="Redirect.part")
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
    part = buffer.pull_string(config.part_name_bytes_max)
    count = buffer.pull_count(config.targets_max)
    return Redirect(
        request_id=request_id,
        session_id=session_id,
        part=part,
        map_version=map_version,
        targets=tuple(buffer.pull_endpoint(config) for _ in range(count)),
    )


def _encode_map_request(frame: MapRequest, config: WireConfig) -> bytes:
    return _with_header(FrameType.MAP_REQUEST, encode_varint(frame.map_version), config)


def _decode_map_request(buffer: Buffer, config: WireConfig) -> MapRequest:
    return MapRequest(map_version=buffer.pull_varint())


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
    buffer.push_string(
        frame.message, config.message_bytes_max, name="ResumeReject.message", allow_empty=True
    )
    return _with_header(FrameType.RESUME_REJECT, buffer.data(), config)


def _decode_resume_reject(buffer: Buffer, config: WireConfig) -> ResumeReject:
    session_id = buffer.pull_bytes(SESSION_ID_BYTES)
    reason = ResumeRejectReason.from_wire(buffer.pull_varint())
    message = buffer.pull_string(config.message_bytes_max, allow_empty=True)
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
    Error: _encode_error,
    GoAway: _encode_goaway,
    Ping: _encode_ping,
    Pong: _encode_pong,
    OpenSession: _encode_open_session,
    SessionOpened: _encode_session_opened,
    CloseSession: _encode_close_session,
    Request: _encode_request,
    Response: _encode_response,
    Redirect: _encode_redirect,
    MapRequest: _encode_map_request,
    MapUpdate: _encode_map_update,
    Handoff: _encode_handoff,
    HandoffStatus: _encode_handoff_status,
    Resume: _encode_resume,
    ResumeOk: _encode_resume_ok,
    ResumeReject: _encode_resume_reject,
    ClusterMessage: _encode_cluster_message,
}

_FAST_DECODERS: dict[int, Callable[[bytes, WireConfig], Frame]] = {
    FrameType.REQUEST: _decode_request,
    FrameType.RESPONSE: _decode_response,
    FrameType.HANDOFF: _decode_handoff,
}

_BUFFER_DECODERS: dict[int, Callable[[Buffer, WireConfig], Frame]] = {
    FrameType.HELLO: _decode_hello,
    FrameType.WELCOME: _decode_welcome,
    FrameType.ERROR: _decode_error,
    FrameType.GOAWAY: _decode_goaway,
    FrameType.PING: _decode_ping,
    FrameType.PONG: _decode_pong,
    FrameType.OPEN_SESSION: _decode_open_session,
    FrameType.SESSION_OPENED: _decode_session_opened,
    FrameType.CLOSE_SESSION: _decode_close_session,
    FrameType.REDIRECT: _decode_redirect,
    FrameType.MAP_REQUEST: _decode_map_request,
    FrameType.MAP_UPDATE: _decode_map_update,
    FrameType.HANDOFF_STATUS: _decode_handoff_status,
    FrameType.RESUME: _decode_resume,
    FrameType.RESUME_OK: _decode_resume_ok,
    FrameType.RESUME_REJECT: _decode_resume_reject,
    FrameType.CLUSTER_MESSAGE: _decode_cluster_message,
}


def _decode_with_buffer(
    decode: Callable[[Buffer, WireConfig], Frame], body: bytes, config: WireConfig
) -> Frame:
    buffer = Buffer(body)
    frame = decode(buffer, config)
    buffer.expect_end()
    return frame


def encode_frame(frame: Frame, *, config: WireConfig = DEFAULT_CONFIG) -> bytes:
    """The bytes of one frame: type, length and body as docs/PROTOCOL.md lays them out.

    Raises LocalProtocolError when a field cannot be carried (a name too long, a list over its
    bound, an integer outside 0..2**62-1, a body over `config.frame_bytes_max`).
    """
    encoder = _ENCODERS.get(type(frame))
    if encoder is None:
        raise LocalProtocolError(f"not a forehand/1 frame: {type(frame).__name__}")
    return encoder(frame, config)


def decode_body(frame_type: int, body: bytes, config: WireConfig = DEFAULT_CONFIG) -> Frame:
    """Decode the body of one known frame type; raise RemoteProtocolError if it is invalid."""
    try:
        fast = _FAST_DECODERS.get(frame_type)
        if fast is not None:
            return fast(body, config)
        decode = _BUFFER_DECODERS.get(frame_type)
        if decode is not None:
            return _decode_with_buffer(decode, body, config)
    except (IndexError, ValueError, struct.error) as error:
        raise malformed(f"malformed {FrameType(frame_type).name} frame: {error}") from None
    raise RemoteProtocolError(
        f"unknown frame type {frame_type:#x}", error_code=ErrorCode.UNKNOWN_FRAME_TYPE
    )


def decode_frame(data: bytes, *, config: WireConfig = DEFAULT_CONFIG) -> Frame:
    """Decode exactly one complete frame of a known type; anything else is RemoteProtocolError."""
    try:
        frame_type, offset = pull_varint(data, 0)
        size, offset = pull_varint(data, offset)
    except IndexError:
        raise malformed("data ends inside a frame header") from None
    if size > config.frame_bytes_max:
        raise RemoteProtocolError(
            f"frame body of {size} bytes exceeds {config.frame_bytes_max}",
            error_code=ErrorCode.FRAME_TOO_LARGE,
        )
    if offset + size != len(data):
        raise malformed(f"frame length {size} does not match the {len(data) - offset} bytes given")
    return decode_body(frame_type, data[offset:], config)
