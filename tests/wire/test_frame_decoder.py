"""FrameDecoder: incremental, bounded, strict about direction, skips greased frames, poisons."""

from __future__ import annotations

import random

import pytest

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import (
    ALLOWED_FRAME_TYPES,
    END_OF_STREAM,
    NEED_DATA,
    ClusterMessage,
    Endpoint,
    Error,
    ErrorCode,
    FrameDecoder,
    FrameType,
    Handoff,
    HandoffFlag,
    PeerRole,
    Ping,
    ReasonCode,
    Request,
    WireConfig,
    encode_frame,
    encode_varint,
    grease_frame,
    is_greased,
)

# Every test runs once per codec: the fixture makes FrameDecoder decode bodies with it.
pytestmark = pytest.mark.usefixtures("codec")

SESSION = bytes(range(16))
REQUEST = Request(
    request_id=1, session_id=SESSION, part="cart", op="add", map_version=2, payload=b"x" * 200
)
HANDOFF = Handoff(
    sequence=1,
    session_id=SESSION,
    parts=("cart",),
    map_version=3,
    reason=ReasonCode.OVERLOAD,
    flags=HandoffFlag.URGENT,
    deadline_ms=500,
    current=Endpoint(server_id="a", host="10.0.0.1", port=1),
    targets=(Endpoint(server_id="b", host="10.0.0.2", port=1),),
    token=b"t",
)


def remote_error(decoder: FrameDecoder) -> RemoteProtocolError:
    """The error next_frame raises."""
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frame()
    return caught.value


def test_byte_by_byte_feeding() -> None:
    """Frames come out only once complete, whatever the chunking."""
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    data = encode_frame(REQUEST) * 2
    frames = []
    for index in range(len(data)):
        decoder.receive_data(data[index : index + 1])
        while (item := decoder.next_frame()) is not NEED_DATA:
            frames.append(item)
    assert frames == [REQUEST, REQUEST]
    assert decoder.buffered_bytes == 0


def test_clean_end_of_stream() -> None:
    """b"" between frames ends the stream; receive_data after it is a local error."""
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(encode_frame(REQUEST))
    decoder.receive_data(b"")
    assert decoder.next_frame() == REQUEST
    assert decoder.next_frame() is END_OF_STREAM
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(b"x")


@pytest.mark.parametrize("cut", [1, 2, 3, 40])
def test_end_of_stream_inside_a_frame_is_truncated_stream(cut: int) -> None:
    """A stream that ends mid-frame (even mid-header) is TRUNCATED_STREAM."""
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    decoder.receive_data(encode_frame(REQUEST)[:cut])
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(b"")
    assert remote_error(decoder).error_code == ErrorCode.TRUNCATED_STREAM


def test_oversize_frame_is_rejected_from_its_header() -> None:
    """Only the header is needed: the body is never buffered."""
    config = WireConfig(frame_bytes_max=16_384)
    decoder = FrameDecoder(config=config, sender=PeerRole.CLIENT)
    decoder.receive_data(encode_varint(FrameType.REQUEST) + encode_varint(16_385))
    assert remote_error(decoder).error_code == ErrorCode.FRAME_TOO_LARGE
    assert decoder.buffered_bytes == 0


def test_largest_allowed_frame_is_accepted() -> None:
    """A body of exactly frame_bytes_max decodes."""
    config = WireConfig(frame_bytes_max=16_384)
    frame = ClusterMessage(kind=1, body=bytes(16_384 - 1))
    decoder = FrameDecoder(config=config, sender=PeerRole.CLUSTER_NODE)
    decoder.receive_data(encode_frame(frame, config=config))
    assert decoder.next_frame() == frame


def test_poisoned_decoder_raises_forever() -> None:
    """After one violation every call raises the same error and nothing more is decoded."""
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    decoder.receive_data(encode_varint(0x3F) + b"\x00" + encode_frame(REQUEST))
    first = remote_error(decoder)
    assert first.error_code == ErrorCode.UNKNOWN_FRAME_TYPE
    assert decoder.poisoned
    assert decoder.buffered_bytes == 0
    for _ in range(3):
        again = remote_error(decoder)
        assert (str(again), again.error_code) == (str(first), first.error_code)
    with pytest.raises(RemoteProtocolError):
        decoder.receive_data(encode_frame(REQUEST))


def test_greased_and_unknown_extension_frames_are_skipped() -> None:
    """Types from 0x80 up that the receiver does not know are skipped, like HTTP/3."""
    rng = random.Random(7)
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    greased = [grease_frame(rng) for _ in range(5)]
    decoder.receive_data(b"".join(greased) + encode_varint(0x3E00) + b"\x01z")
    decoder.receive_data(encode_frame(REQUEST))
    assert decoder.next_frame() == REQUEST
    assert decoder.skipped_frame_count == 6
    for frame in greased:
        frame_type = int.from_bytes(frame[:2]) & 0x3FFF
        assert is_greased(frame_type) and frame_type >= 0x80


def test_unknown_standard_frame_type_is_an_error() -> None:
    """Unassigned types below 0x80 are UNKNOWN_FRAME_TYPE."""
    for frame_type in (0x00, 0x07, 0x3F, 0x41, 0x7F):
        decoder = FrameDecoder(sender=None)
        decoder.receive_data(encode_varint(frame_type) + b"\x00")
        assert remote_error(decoder).error_code == ErrorCode.UNKNOWN_FRAME_TYPE


def test_frame_type_must_be_shortest() -> None:
    """0x40 0x10 is REQUEST's type in two bytes: refused."""
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    decoder.receive_data(b"\x40\x10\x00")
    assert remote_error(decoder).error_code == ErrorCode.FRAME_ENCODING_ERROR


@pytest.mark.parametrize(
    ("sender", "frame"),
    [
        (PeerRole.CLIENT, HANDOFF),
        (PeerRole.CLIENT, ClusterMessage(kind=1, body=b"")),
        (PeerRole.SERVER, REQUEST),
        (PeerRole.SERVER, ClusterMessage(kind=1, body=b"")),
        (PeerRole.CLUSTER_NODE, REQUEST),
    ],
)
def test_frames_in_the_wrong_direction_are_unexpected(sender: PeerRole, frame: object) -> None:
    """HANDOFF only from servers; cluster frames only from cluster nodes."""
    decoder = FrameDecoder(sender=sender)
    decoder.receive_data(encode_frame(frame))  # type: ignore[arg-type]
    assert remote_error(decoder).error_code == ErrorCode.FRAME_UNEXPECTED


def test_direction_table_is_consistent() -> None:
    """Both sides may PING; HANDOFF is server-only; only cluster nodes send cluster frames."""
    for role in PeerRole:
        assert FrameType.PING in ALLOWED_FRAME_TYPES[role]
        assert FrameType.ERROR in ALLOWED_FRAME_TYPES[role]
    assert FrameType.HANDOFF in ALLOWED_FRAME_TYPES[PeerRole.SERVER]
    assert FrameType.HANDOFF not in ALLOWED_FRAME_TYPES[PeerRole.CLIENT]
    owners = [role for role in PeerRole if FrameType.CLUSTER_MESSAGE in ALLOWED_FRAME_TYPES[role]]
    assert owners == [PeerRole.CLUSTER_NODE]


def test_undrained_decoder_refuses_more_data() -> None:
    """Feeding more while a full frame's worth is still buffered is a caller error."""
    config = WireConfig(frame_bytes_max=16_384)
    decoder = FrameDecoder(config=config, sender=PeerRole.CLIENT)
    ping = encode_frame(Ping(sequence=1, sent_us=1))
    decoder.receive_data(ping * (config.buffered_bytes_max // len(ping) + 1))
    with pytest.raises(LocalProtocolError):
        decoder.receive_data(ping)
    while decoder.next_frame() is not NEED_DATA:
        pass
    decoder.receive_data(ping)
    assert decoder.next_frame() == Ping(sequence=1, sent_us=1)


def test_next_frames_takes_every_common_frame_in_one_call() -> None:
    """next_frames returns the frames next_frame would, up to `limit`, and stops at the rest."""
    pings = [Ping(sequence=n, sent_us=n) for n in range(1, 6)]
    long_request = encode_frame(REQUEST)  # a 200-byte payload still has the common header
    stream = b"".join(encode_frame(p) for p in pings[:3]) + long_request
    stream += grease_frame(random.Random(1)) + encode_frame(pings[3]) + encode_frame(pings[4])[:2]
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    decoder.receive_data(stream)
    assert decoder.next_frames(2) == pings[:2]
    assert decoder.next_frames() == [pings[2], REQUEST]
    assert decoder.next_frames() == []  # the greased frame is next_frame's to skip
    assert decoder.next_frame() == pings[3]
    assert decoder.next_frames() == []
    assert decoder.next_frame() is NEED_DATA
    decoder.receive_data(encode_frame(pings[4])[2:])
    assert decoder.next_frames(0) == []
    assert decoder.next_frames() == [pings[4]]


def test_next_frames_takes_cluster_messages_in_one_call() -> None:
    """CLUSTER_MESSAGE frames (a two-byte type) with a length below 2**14 come out in the batch
    with the one-byte types; a longer length, a body ending inside its kind and a type the peer
    may not send stop the batch and are next_frame's."""
    short = ClusterMessage(kind=1, body=b"\x92\x01\x02")
    medium = ClusterMessage(kind=300, body=bytes(range(256)) * 20)  # a two-byte length
    long = ClusterMessage(kind=2, body=bytes(16_384))  # a four-byte length
    ping = Ping(sequence=1, sent_us=2)
    stream = b"".join(encode_frame(frame) for frame in (short, ping, medium, long, short))
    decoder = FrameDecoder(sender=PeerRole.CLUSTER_NODE)
    decoder.receive_data(stream)
    assert decoder.next_frames() == [short, ping, medium]
    assert decoder.next_frames() == []
    assert decoder.next_frame() == long
    assert decoder.next_frames() == [short]
    kind_cut = bytes.fromhex("4040 01 41")  # the kind's varint says two bytes, one follows
    decoder.receive_data(encode_frame(short) + kind_cut)
    assert decoder.next_frames() == [short]
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frames()
    assert caught.value.error_code == ErrorCode.FRAME_ENCODING_ERROR
    from_client = FrameDecoder(sender=PeerRole.CLIENT)
    from_client.receive_data(encode_frame(short))
    assert from_client.next_frames() == []
    assert remote_error(from_client).error_code == ErrorCode.FRAME_UNEXPECTED


def test_next_frames_delivers_good_frames_before_an_error() -> None:
    """A bad frame in a batch ends the batch; the next call raises and poisons the decoder."""
    good = encode_frame(Ping(sequence=1, sent_us=2))
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    decoder.receive_data(good + bytes.fromhex("05 04 01 02 00 00") + good)
    assert decoder.next_frames() == [Ping(sequence=1, sent_us=2)]
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_frames()
    assert caught.value.error_code == ErrorCode.FRAME_ENCODING_ERROR
    assert decoder.poisoned
    assert remote_error(decoder).error_code == ErrorCode.FRAME_ENCODING_ERROR


def test_next_frames_ends_a_batch_after_an_error() -> None:
    """A batch stops right after an ERROR frame; what follows stays for a later call."""
    error = Error(code=ErrorCode.PROTOCOL_ERROR, reason="bye")
    ping = Ping(sequence=1, sent_us=2)
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    decoder.receive_data(encode_frame(ping) + encode_frame(error) + encode_frame(ping))
    assert decoder.next_frames() == [ping, error]
    assert decoder.next_frames() == [ping]
