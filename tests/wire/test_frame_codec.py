"""encode_frame and decode_frame enforce every rule of PROTOCOL.md, on both sides of the wire."""

from __future__ import annotations

import struct

import pytest

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import (
    VARINT_MAX,
    ClusterMessage,
    Endpoint,
    Error,
    ErrorCode,
    Extension,
    Frame,
    FrameDecoder,
    FrameType,
    GoAway,
    Handoff,
    HandoffFlag,
    HandoffState,
    HandoffStatus,
    Hello,
    MapUpdate,
    OpenSession,
    OpenSessionRefused,
    PathSample,
    PeerRole,
    Ping,
    ReasonCode,
    Redirect,
    Request,
    Response,
    ResponseStatus,
    ResumeReject,
    ResumeRejectReason,
    Settings,
    Welcome,
    WireConfig,
    encode_frame,
    encode_varint,
)
from forehand.wire._implementation import Codec

SESSION = bytes(range(16))
HERE = Endpoint(server_id="edge-1", host="10.0.0.1", port=4433)
THERE = Endpoint(server_id="edge-2", host="10.0.0.2", port=4433)


def framed(frame_type: int, body: bytes) -> bytes:
    """A frame header around a hand-made body."""
    return encode_varint(frame_type) + encode_varint(len(body)) + body


def request(**changes: object) -> Request:
    """A valid REQUEST, with some fields replaced."""
    fields: dict[str, object] = {
        "request_id": 7,
        "session_id": SESSION,
        "part": "cart",
        "op": "add",
        "map_version": 3,
        "payload": b"{}",
    }
    fields.update(changes)
    return Request(**fields)  # type: ignore[arg-type]


def handoff(**changes: object) -> Handoff:
    """A valid HANDOFF, with some fields replaced."""
    fields: dict[str, object] = {
        "sequence": 1,
        "session_id": SESSION,
        "parts": ("cart",),
        "map_version": 9,
        "reason": ReasonCode.REBALANCE,
        "flags": HandoffFlag.NONE,
        "deadline_ms": 1000,
        "current": HERE,
        "targets": (THERE,),
        "token": b"sealed",
    }
    fields.update(changes)
    return Handoff(**fields)  # type: ignore[arg-type]


def assert_remote_error(
    codec: Codec, data: bytes, code: ErrorCode = ErrorCode.FRAME_ENCODING_ERROR
) -> None:
    """Decoding `data` fails with the given wire error code."""
    with pytest.raises(RemoteProtocolError) as caught:
        codec.decode_frame(data)
    assert caught.value.error_code == code


def test_request_layout_is_the_documented_fixed_head(codec: Codec) -> None:
    """REQUEST: session_id, request_id u64, map_version u64, two 8-bit lengths, names, payload."""
    encoded = codec.encode_frame(request())
    body = SESSION + struct.pack(">QQBB", 7, 3, 4, 3) + b"cartadd{}"
    assert encoded == bytes([0x10, len(body)]) + body


def test_a_wait_budget_is_flagged_in_the_op_length_and_follows_the_head(codec: Codec) -> None:
    """REQUEST with a budget: op length | 0x80, then the budget (u32) before the part name; a
    REQUEST without one keeps the plain layout, and a budget of 0 is carried, not dropped."""
    for budget_ms in (0, 24_500, 2**32 - 1):
        encoded = codec.encode_frame(request(wait_budget_ms=budget_ms))
        body = SESSION + struct.pack(">QQBBI", 7, 3, 4, 0x83, budget_ms) + b"cartadd{}"
        assert encoded == bytes([0x10, len(body)]) + body
        decoded = codec.decode_frame(encoded)
        assert isinstance(decoded, Request)
        assert decoded.wait_budget_ms == budget_ms
        assert decoded == request(wait_budget_ms=budget_ms)
    plain = codec.decode_frame(codec.encode_frame(request()))
    assert isinstance(plain, Request)
    assert plain.wait_budget_ms is None


def test_a_malformed_wait_budget_is_a_frame_encoding_error(codec: Codec) -> None:
    """A flagged REQUEST that ends inside its budget, or whose op length without the flag is 0
    or over the bound, is FRAME_ENCODING_ERROR, with a reason that names what is wrong."""
    head = SESSION + struct.pack(">QQ", 7, 3)
    cases = {
        head + bytes([4, 0x83]) + b"\x00\x00": "ends inside its wait budget",
        head + bytes([4, 0x83]): "ends inside its wait budget",
        head + bytes([4, 0x83]) + bytes(4) + b"cart": "ends inside its op name",
        head + bytes([4, 0x80]) + bytes(4) + b"cart": "length out of bounds",
        head + bytes([4, 0x80 | 65]) + bytes(4) + b"cart" + b"x" * 65: "op (65)",
        head + bytes([4, 0xFF]) + bytes(4) + b"cart" + b"x" * 127: "op (127)",
    }
    for body, reason in cases.items():
        with pytest.raises(RemoteProtocolError) as caught:
            codec.decode_frame(framed(0x10, body))
        assert caught.value.error_code == ErrorCode.FRAME_ENCODING_ERROR
        assert reason in str(caught.value), (body.hex(), str(caught.value))


def test_trailing_bytes_are_malformed(codec: Codec) -> None:
    """A body longer than its fields is an error, not silently ignored."""
    for frame in (handoff(), GoAway(map_version=1, reason=ReasonCode.SCALE_IN, last_request_id=4)):
        encoded = codec.encode_frame(frame)
        assert_remote_error(codec, framed(encoded[0], encoded[2:] + b"\x00"))


def test_truncated_bodies_are_malformed(codec: Codec) -> None:
    """Every proper prefix of a body is rejected (lengths are re-framed to match)."""
    frames: list[Frame] = [
        handoff(extensions=(Extension(5, b"ab"),)),
        Hello(versions=(1,), client_id=SESSION),
        Ping(sequence=1, sent_us=2, telemetry=(PathSample("edge-1", rtt_us=900),)),
    ]
    for frame in frames:
        encoded = codec.encode_frame(frame)
        body = encoded[2:]
        for size in range(len(body)):
            assert_remote_error(codec, framed(encoded[0], body[:size]))


def test_frame_length_must_match_the_data(codec: Codec) -> None:
    """decode_frame wants exactly one frame."""
    encoded = codec.encode_frame(request())
    assert_remote_error(codec, encoded + b"\x00")
    assert_remote_error(codec, encoded[:-1])
    assert_remote_error(codec, b"")


def test_oversize_frame_is_frame_too_large(codec: Codec) -> None:
    """A length over frame_bytes_max is refused from the header alone."""
    header = encode_varint(FrameType.REQUEST) + encode_varint(WireConfig().frame_bytes_max + 1)
    assert_remote_error(codec, header, ErrorCode.FRAME_TOO_LARGE)


def test_unknown_frame_type_in_decode_frame(codec: Codec) -> None:
    """decode_frame knows no frame type 0x3f and no extension types."""
    assert_remote_error(codec, framed(0x3F, b""), ErrorCode.UNKNOWN_FRAME_TYPE)
    assert_remote_error(codec, framed(0x9D, b""), ErrorCode.UNKNOWN_FRAME_TYPE)


def test_non_shortest_frame_type_is_malformed(codec: Codec) -> None:
    """Frame types use the shortest varint, as in RFC 9000 s.12.4."""
    assert_remote_error(codec, b"\x40\x0a" + bytes([16]) + SESSION)


def test_request_rejects_out_of_range_fields(codec: Codec) -> None:
    """62-bit ids, non-empty bounded names, valid UTF-8."""
    base = bytearray(codec.encode_frame(request()))
    too_big = bytearray(base)
    too_big[18:26] = struct.pack(">Q", VARINT_MAX + 1)
    assert_remote_error(codec, bytes(too_big))
    assert_remote_error(codec, framed(0x10, SESSION + struct.pack(">QQBB", 1, 1, 0, 1) + b"x"))
    assert_remote_error(codec, framed(0x10, SESSION + struct.pack(">QQBB", 1, 1, 1, 1) + b"\xffx"))
    assert_remote_error(codec, framed(0x10, SESSION + struct.pack(">QQBB", 1, 1, 4, 1) + b"ab"))


@pytest.mark.parametrize(
    "frame",
    [
        request(session_id=b"short"),
        request(part=""),
        request(op="x" * 65),
        request(request_id=VARINT_MAX + 1),
        request(map_version=-1),
        request(payload=bytes(1 << 20)),
        request(wait_budget_ms=-1),
        request(wait_budget_ms=1 << 32),
        request(wait_budget_ms=True),
        request(wait_budget_ms="5"),
        request(wait_budget_ms=5, payload=bytes(1 << 20)),
        handoff(targets=()),
        handoff(targets=(THERE,) * 9),
        handoff(parts=()),
        handoff(parts=("cart", "cart")),
        handoff(deadline_ms=1 << 32),
        handoff(flags=HandoffFlag(1 << 16)),
        handoff(token=bytes(1025)),
        handoff(extensions=(Extension(1, b""),) * 17),
        Hello(versions=(), client_id=SESSION),
        Welcome(version=1, server_id="s", map_version=1, frame_bytes_max=1024, idle_timeout_ms=1),
        MapUpdate(map_version=5, base_version=5, encoding=1, body=b""),
        OpenSession(request_id=1, parts=("a",) * 65),
        Redirect(request_id=1, session_id=SESSION, part="p", map_version=2, targets=(HERE,) * 9),
        Error(code=ErrorCode.INTERNAL_ERROR, reason="x" * 1025),
        Settings(credential_lifetime_ms=-1),
        Settings(credential_lifetime_ms=VARINT_MAX + 1),
    ],
    ids=lambda frame: type(frame).__name__,
)
def test_encoder_refuses_invalid_frames(codec: Codec, frame: Frame) -> None:
    """A frame the protocol cannot carry is the caller's LocalProtocolError."""
    with pytest.raises(LocalProtocolError):
        codec.encode_frame(frame)


def test_encode_frame_refuses_non_frames(codec: Codec) -> None:
    """Only frame classes encode."""
    with pytest.raises(LocalProtocolError):
        codec.encode_frame(HERE)  # type: ignore[arg-type]


def test_encode_frames_is_the_concatenation_of_encode_frame(codec: Codec) -> None:
    """encode_frames of a list or tuple (hot and other frames mixed) is b"".join of each one's
    encode_frame, with the config applied to each."""
    frames: list[Frame] = [
        request(),
        Response(
            request_id=7, session_id=SESSION, status=ResponseStatus.OK, map_version=3, payload=b""
        ),
        handoff(),
        Ping(sequence=1, sent_us=2),
        request(request_id=8, payload=b"x" * 300),
    ]
    expected = b"".join(codec.encode_frame(frame) for frame in frames)
    assert codec.encode_frames(frames) == expected
    assert codec.encode_frames(tuple(frames)) == expected
    assert codec.encode_frames(frames[:1]) == codec.encode_frame(frames[0])
    assert codec.encode_frames([]) == b""
    small = WireConfig(frame_bytes_max=16384, op_name_bytes_max=2)
    with pytest.raises(LocalProtocolError):
        codec.encode_frames(frames, config=small)


def test_encode_frames_refuses_what_encode_frame_refuses(codec: Codec) -> None:
    """One invalid frame anywhere in the batch raises LocalProtocolError for the batch."""
    for position in range(3):
        frames: list[Frame] = [request(), request(request_id=9)]
        frames.insert(position, request(part=""))
        with pytest.raises(LocalProtocolError):
            codec.encode_frames(frames)
    with pytest.raises(LocalProtocolError):
        codec.encode_frames([request(), HERE])  # type: ignore[list-item]


def test_unknown_reason_codes_mean_unspecified(codec: Codec) -> None:
    """Greased, private and unassigned reason codes decode as UNSPECIFIED."""
    for wire_value in (0x21, 0x3F, 0xFF05):
        body = encode_varint(4) + struct.pack(">H", wire_value) + encode_varint(2)
        decoded = codec.decode_frame(framed(FrameType.GOAWAY, body))
        assert decoded == GoAway(map_version=4, reason=ReasonCode.UNSPECIFIED, last_request_id=2)
    encoded = bytearray(codec.encode_frame(handoff()))
    assert encoded[1] >> 6 == 1  # a two-byte length: the body starts at offset 3
    reason_at = 3 + 16 + 8 + 8
    assert encoded[reason_at : reason_at + 2] == struct.pack(">H", ReasonCode.REBALANCE)
    encoded[reason_at : reason_at + 2] = struct.pack(">H", 0x5F)
    decoded_handoff = codec.decode_frame(bytes(encoded))
    assert isinstance(decoded_handoff, Handoff)
    assert decoded_handoff.reason is ReasonCode.UNSPECIFIED


def test_unknown_handoff_flags_are_kept(codec: Codec) -> None:
    """Flag bits this version does not define survive decoding, to be ignored by the client."""
    frame = handoff(flags=HandoffFlag.URGENT | HandoffFlag(0x8000))
    decoded = codec.decode_frame(codec.encode_frame(frame))
    assert isinstance(decoded, Handoff)
    assert decoded.flags & HandoffFlag.URGENT
    assert int(decoded.flags) == 0x8001


def test_unknown_extensions_are_preserved_in_order(codec: Codec) -> None:
    """TLV extensions round-trip whatever their type."""
    extensions = (Extension(0x3F00, b"private"), Extension(0x21, b""), Extension(1, b"\x00"))
    decoded = codec.decode_frame(codec.encode_frame(handoff(extensions=extensions)))
    assert isinstance(decoded, Handoff)
    assert decoded.extensions == extensions


def test_unknown_error_codes_mean_protocol_error(codec: Codec) -> None:
    """An ERROR with a code this version does not know is a PROTOCOL_ERROR."""
    decoded = codec.decode_frame(framed(FrameType.ERROR, encode_varint(0x1234) + b"\x02hi"))
    assert decoded == Error(code=ErrorCode.PROTOCOL_ERROR, reason="hi")


def test_unknown_resume_reject_reason_means_unspecified(codec: Codec) -> None:
    """RESUME_REJECT reasons fall back like reason codes."""
    body = SESSION + encode_varint(0x30) + b"\x00"
    decoded = codec.decode_frame(framed(FrameType.RESUME_REJECT, body))
    assert decoded == ResumeReject(session_id=SESSION, reason=ResumeRejectReason.UNSPECIFIED)


def test_unknown_status_and_state_are_errors(codec: Codec) -> None:
    """RESPONSE status and HANDOFF_STATUS state have no fallback: unknown is malformed."""
    response = bytearray(
        codec.encode_frame(
            Response(
                request_id=1,
                session_id=SESSION,
                status=ResponseStatus.OK,
                map_version=1,
                payload=b"",
            )
        )
    )
    response[-1] = 0x7F
    assert_remote_error(codec, bytes(response))
    status = codec.encode_frame(
        HandoffStatus(sequence=1, session_id=SESSION, state=HandoffState.ACCEPTED, detail_code=0)
    )
    assert_remote_error(codec, status[:-2] + b"\x09" + status[-1:])


def test_telemetry_skips_unknown_metrics_and_wants_ascending_ids(codec: Codec) -> None:
    """Unknown metric ids are skipped; repeated or descending ids are malformed."""
    sample = b"\x02s1" + b"\x03" + b"\x01\x05" + b"\x30\x09" + b"\x31\x01"
    decoded = codec.decode_frame(framed(FrameType.PING, b"\x01\x02\x01" + sample))
    assert decoded == Ping(sequence=1, sent_us=2, telemetry=(PathSample("s1", rtt_us=5),))
    descending = b"\x02s1" + b"\x02" + b"\x02\x05" + b"\x01\x09"
    assert_remote_error(codec, framed(FrameType.PING, b"\x01\x02\x01" + descending))


def test_duplicate_part_names_are_malformed(codec: Codec) -> None:
    """A list of parts names each part once."""
    assert_remote_error(codec, framed(FrameType.OPEN_SESSION, b"\x01\x02\x01a\x01a"))


def test_welcome_below_the_frame_size_floor_is_malformed(codec: Codec) -> None:
    """No endpoint may advertise less than 16 KiB."""
    body = b"\x01" + b"\x01s" + b"\x01" + encode_varint(1024) + b"\x01"
    assert_remote_error(codec, framed(FrameType.WELCOME, body))


def test_map_update_base_must_precede_version(codec: Codec) -> None:
    """A delta applies to an older version."""
    assert_remote_error(codec, framed(FrameType.MAP_UPDATE, b"\x05\x05\x01"))


def test_cluster_message_body_is_opaque(codec: Codec) -> None:
    """The cluster frame carries a kind and the rest of the body untouched."""
    frame = ClusterMessage(kind=300, body=b"\x93\x01\x02\x03")
    assert codec.decode_frame(codec.encode_frame(frame)) == frame
    assert codec.encode_frame(frame)[0] == 0x40


def test_decode_body_reports_unknown_types(codec: Codec) -> None:
    """decode_body refuses a type with no decoder."""
    with pytest.raises(RemoteProtocolError) as caught:
        codec.decode_body(0x3E, b"")
    assert caught.value.error_code == ErrorCode.UNKNOWN_FRAME_TYPE


def test_config_bounds_apply_to_decoding(codec: Codec) -> None:
    """A tighter WireConfig tightens what is accepted."""
    config = WireConfig(part_name_bytes_max=2)
    encoded = codec.encode_frame(request(part="cart"))
    with pytest.raises(RemoteProtocolError):
        codec.decode_frame(encoded, config=config)
    with pytest.raises(LocalProtocolError):
        codec.encode_frame(request(part="cart"), config=config)


def _settings_frame(*pairs: tuple[int, int]) -> bytes:
    """A SETTINGS frame of the given (id, value) pairs, as any sender may lay it out."""
    body = encode_varint(len(pairs))
    for setting_id, value in pairs:
        body += encode_varint(setting_id) + encode_varint(value)
    return encode_varint(FrameType.SETTINGS) + encode_varint(len(body)) + body


def test_settings_ignores_ids_it_does_not_know_and_refuses_one_repeated(codec: Codec) -> None:
    """An id this implementation does not know (0x07, a later version's) is ignored, the ones it
    knows are read; an id twice in one frame is malformed; an empty frame says nothing."""
    known = _settings_frame((0x07, 5), (0x01, 90_000), (0x3E, 1))
    assert codec.decode_frame(known) == Settings(credential_lifetime_ms=90_000)
    assert codec.decode_frame(_settings_frame()) == Settings()
    with pytest.raises(RemoteProtocolError, match="repeats") as raised:
        codec.decode_frame(_settings_frame((0x01, 1), (0x01, 2)))
    assert raised.value.error_code == ErrorCode.FRAME_ENCODING_ERROR
    too_many = _settings_frame(*((0x100 + index, 1) for index in range(65)))
    with pytest.raises(RemoteProtocolError, match="65"):
        codec.decode_frame(too_many)
    most = _settings_frame(*((0x100 + index, 1) for index in range(64)))
    assert codec.decode_frame(most) == Settings()


def test_settings_reads_the_managers_client_sessions_max(codec: Codec) -> None:
    both = _settings_frame((0x02, 1_024), (0x01, 90_000))
    assert codec.decode_frame(both) == Settings(
        credential_lifetime_ms=90_000, client_sessions_max=1_024
    )


def _refusal_frame(body: bytes) -> bytes:
    return encode_varint(FrameType.OPEN_SESSION_REFUSED) + encode_varint(len(body)) + body


def test_an_open_session_refused_that_stands_has_the_first_layout(codec: Codec) -> None:
    """retry_after_ms is absent when 0: a refusal that stands is the frame's first layout
    (request id, reason), which a receiver of that version reads; one with a wait carries it;
    an explicit 0 is malformed (one value, one encoding)."""
    reason = b"\x02no"
    stands = _refusal_frame(b"\x05" + reason)
    assert codec.decode_frame(stands) == OpenSessionRefused(request_id=5, reason="no")
    assert codec.encode_frame(OpenSessionRefused(request_id=5, reason="no")) == stands
    busy = _refusal_frame(b"\x05" + reason + b"\x40\x64")
    assert codec.decode_frame(busy) == OpenSessionRefused(
        request_id=5, reason="no", retry_after_ms=100
    )
    with pytest.raises(RemoteProtocolError, match="retry_after_ms 0") as raised:
        codec.decode_frame(_refusal_frame(b"\x05" + reason + b"\x00"))
    assert raised.value.error_code == ErrorCode.FRAME_ENCODING_ERROR


def test_a_receiver_that_may_not_read_settings_skips_it_and_reads_on() -> None:
    """SETTINGS lies in the extension range: a decoder that does not take it (here one reading
    a cluster node, as one of an implementation without SETTINGS would read a server) skips it
    and goes on with the next frame, where a client's decoder delivers it."""
    data = encode_frame(Settings(credential_lifetime_ms=60_000)) + encode_frame(
        Ping(sequence=1, sent_us=2)
    )
    skipping = FrameDecoder(sender=PeerRole.CLUSTER_NODE)
    skipping.receive_data(data)
    assert skipping.next_frame() == Ping(sequence=1, sent_us=2)
    assert skipping.skipped_frame_count == 1
    reading = FrameDecoder(sender=PeerRole.SERVER)
    reading.receive_data(data)
    assert reading.next_frame() == Settings(credential_lifetime_ms=60_000)
    assert reading.next_frame() == Ping(sequence=1, sent_us=2)
