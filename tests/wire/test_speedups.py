"""The C codec (_speedups) agrees with the pure-Python one: same frames, same bytes, same errors.

Differential tests from one seed. Thousands of REQUEST, RESPONSE and HANDOFF frames, valid and
invalid (fields of the wrong type, out of range, over their bounds, lone surrogates), are encoded
by both codecs: the bytes are identical, or both raise the same exception with the same message.
Their encodings, mutated inside the body (then re-framed, so that the body decoders are reached)
and around the header, are decoded by both: the frames are equal down to the types of their
fields, or both raise RemoteProtocolError with the same error code. A final test checks that
repeating all of it allocates nothing that is not freed, which a reference leak would.
"""

from __future__ import annotations

import gc
import random
import sys
from collections.abc import Callable

import msgspec
import pytest

from forehand.errors import RemoteProtocolError
from forehand.wire import (
    DEFAULT_CONFIG,
    VARINT_MAX,
    ClusterMessage,
    Endpoint,
    Extension,
    Frame,
    FrameDecoder,
    FrameType,
    Handoff,
    HandoffFlag,
    ReasonCode,
    Request,
    Response,
    ResponseStatus,
    WireConfig,
    _decoder,
    encode_varint,
)
from forehand.wire._implementation import ACCELERATED_CODEC, PURE_CODEC, Codec

NOT_BUILT = "forehand.wire._speedups is not built here; there is nothing to compare"
pytestmark = pytest.mark.skipif(ACCELERATED_CODEC is None, reason=NOT_BUILT)

SEED = 20_250_114
FRAMES_PER_KIND = 1_200
MUTATIONS_PER_ENCODING = 3
TIGHT = WireConfig(
    frame_bytes_max=16_384,
    server_id_bytes_max=18,
    part_name_bytes_max=6,
    op_name_bytes_max=5,
    token_bytes_max=40,
    parts_max=3,
    targets_max=2,
    extensions_max=2,
    extension_bytes_max=4,
)
"""Bounds that random frames often break, so that every bound check is exercised."""
CONFIGS = (DEFAULT_CONFIG, TIGHT)
ENDPOINTS = (
    Endpoint(server_id="edge-1", host="10.0.0.1", port=4433),
    Endpoint(server_id="edge-eu-1b-03-long", host="2001:db8::2", port=443),
    Endpoint(server_id="é", host="edge-3.example.net", port=1),
    Endpoint(server_id="x" * 64, host="::ffff:102:304", port=65535),
)
BAD_ENDPOINTS = (
    Endpoint(server_id="", host="10.0.0.1", port=1),
    Endpoint(server_id="edge", host="10.0.0.1", port=0),
    Endpoint(server_id="edge", host="not a host", port=1),
    Endpoint(server_id="edge", host="2001:DB8::2", port=1),
)

Outcome = tuple[str, object]


def outcome(function: Callable[..., object], *args: object, **kwargs: object) -> Outcome:
    """What a call did: its result, a remote error code, or another error's type and text."""
    try:
        result = function(*args, **kwargs)
    except RemoteProtocolError as error:
        return ("remote", int(error.error_code))
    except Exception as error:  # any error at all must match the reference's
        return ("raised", (type(error), str(error)))
    return ("ok", result)


def shape(value: object) -> object:
    """The value with the type of every part beside it, so that 1 and True, or an IntEnum
    member and a plain int, or a NamedTuple and a plain tuple, do not compare equal."""
    if isinstance(value, msgspec.Struct):
        fields = value.__struct_fields__
        return (type(value), tuple(shape(getattr(value, field)) for field in fields))
    if isinstance(value, tuple):
        return (type(value), tuple(shape(item) for item in value))
    return (type(value), value)


def assert_same(reference: Outcome, candidate: Outcome, what: object) -> None:
    """The C codec's outcome is the pure codec's, field types included."""
    assert candidate[0] == reference[0], (what, reference, candidate)
    if reference[0] == "ok":
        assert shape(candidate[1]) == shape(reference[1]), what
    else:
        assert candidate[1] == reference[1], what


class FrameMaker:
    """Random hot frames; `valid=False` lets any field go wrong in one of many ways."""

    def __init__(self, rng: random.Random, *, valid: bool) -> None:
        self.rng = rng
        self.valid = valid

    def wrong(self) -> bool:
        """Whether this field is to be invalid (about one field in twenty)."""
        return not self.valid and self.rng.random() < 0.05

    def integer(self, maximum: int) -> object:
        rng = self.rng
        if self.wrong():
            return rng.choice((-1, maximum + 1, 2**64, True, 1.5, "7", None))
        return rng.choice((0, 1, 63, 64, 16_383, 16_384, maximum, rng.randrange(maximum + 1)))

    def name(self) -> object:
        rng = self.rng
        if self.wrong():
            return rng.choice(("", "x" * 300, "\ud800", b"cart", 7, "ü" * 70))
        alphabet = rng.choice(("abcdefgh", "aé€𝄞", "-/._09"))
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 9)))

    def blob(self, size_max: int) -> object:
        if self.wrong():
            return self.rng.choice((bytearray(b"ab"), memoryview(b"cd"), "ef", None, bytes(2000)))
        return self.rng.randbytes(self.rng.randrange(size_max + 1))

    def session_id(self) -> object:
        if self.wrong():
            return self.rng.choice((bytes(15), bytes(17), bytearray(16), "s" * 16))
        return self.rng.randbytes(16)

    def endpoint(self) -> object:
        if self.wrong():
            return self.rng.choice((*BAD_ENDPOINTS, "edge", None))
        return self.rng.choice(ENDPOINTS)

    def sequence(self, item: Callable[[], object], count_max: int, *, unique: bool) -> object:
        items = tuple(item() for _ in range(self.rng.randrange(1, count_max + 1)))
        if unique:
            items = tuple(dict.fromkeys(items))
        if self.wrong():
            return self.rng.choice(((), list(items), items + items[:1], items * 20, "ab"))
        return items

    def extension(self) -> object:
        value = self.blob(6)
        if self.wrong():
            return self.rng.choice(((1,), [1, b""], (1, b"", 2), Extension(-1, b"")))
        kind = self.integer(VARINT_MAX)
        return Extension(kind, value) if self.rng.random() < 0.8 else (kind, value)  # type: ignore[arg-type]

    def request(self) -> Frame:
        return Request(
            request_id=self.integer(VARINT_MAX),  # type: ignore[arg-type]
            session_id=self.session_id(),  # type: ignore[arg-type]
            part=self.name(),  # type: ignore[arg-type]
            op=self.name(),  # type: ignore[arg-type]
            map_version=self.integer(VARINT_MAX),  # type: ignore[arg-type]
            payload=self.blob(200),  # type: ignore[arg-type]
            wait_budget_ms=self.wait_budget(),  # type: ignore[arg-type]
        )

    def wait_budget(self) -> object:
        """None (no budget, most REQUESTs), or a budget: the flagged layout."""
        if self.rng.random() < 0.5:
            return None
        return self.integer(0xFFFF_FFFF)

    def response(self) -> Frame:
        status: object = self.rng.choice(list(ResponseStatus))
        if self.wrong():
            status = self.rng.choice((9, 255, 256, -1, "ok"))
        return Response(
            request_id=self.integer(VARINT_MAX),  # type: ignore[arg-type]
            session_id=self.session_id(),  # type: ignore[arg-type]
            status=status,  # type: ignore[arg-type]
            map_version=self.integer(VARINT_MAX),  # type: ignore[arg-type]
            payload=self.blob(300),  # type: ignore[arg-type]
        )

    def handoff(self) -> Frame:
        rng = self.rng
        reason: object = rng.choice((*ReasonCode, 0x21, 0xFF05))
        flags: object = HandoffFlag(rng.choice((0, 3, 7, 8, 0x8001, rng.randrange(0x10000))))
        if self.wrong():
            reason, flags = rng.choice(((0x10000, 0), (0, -1), (0, 1 << 16), ("x", 0)))
        return Handoff(
            sequence=self.integer(VARINT_MAX),  # type: ignore[arg-type]
            session_id=self.session_id(),  # type: ignore[arg-type]
            parts=self.sequence(self.name, 4, unique=True),  # type: ignore[arg-type]
            map_version=self.integer(VARINT_MAX),  # type: ignore[arg-type]
            reason=reason,  # type: ignore[arg-type]
            flags=flags,  # type: ignore[arg-type]
            deadline_ms=self.integer(0xFFFF_FFFF),  # type: ignore[arg-type]
            current=self.endpoint(),  # type: ignore[arg-type]
            targets=self.sequence(self.endpoint, 3, unique=False),  # type: ignore[arg-type]
            token=self.blob(60),  # type: ignore[arg-type]
            extensions=self.sequence(self.extension, 3, unique=False) if rng.random() < 0.6 else (),  # type: ignore[arg-type]
        )

    def frame(self) -> Frame:
        return self.rng.choice((self.request, self.response, self.handoff))()


def header(frame_type: int, body: bytes) -> bytes:
    """Frame type and the length of `body` in front of it."""
    return encode_varint(frame_type) + encode_varint(len(body)) + body


def body_of(encoded: bytes) -> tuple[int, bytes]:
    """The frame type and body of a frame with one-byte type (the hot frames)."""
    length_size = 1 << (encoded[1] >> 6)
    return encoded[0], encoded[1 + length_size :]


HEAD_BYTES_MAX = 40
"""The longest fixed head of a hot frame (HANDOFF); half the mutations land inside it."""


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random change: a bit flip, a byte overwritten, bytes inserted, cut or duplicated."""
    buffer = bytearray(data)
    if rng.random() < 0.5:
        position = rng.randrange(len(buffer) + 1)
    else:
        position = rng.randrange(min(len(buffer), HEAD_BYTES_MAX) + 1)
    kind = rng.randrange(6)
    if kind == 0 and buffer:
        buffer[min(position, len(buffer) - 1)] ^= 1 << rng.randrange(8)
    elif kind == 1 and buffer:
        buffer[min(position, len(buffer) - 1)] = rng.choice(
            (0x00, 0x01, 0x3F, 0x40, 0x80, 0xC0, 0xFF)
        )
    elif kind == 2:
        buffer[position:position] = rng.randbytes(rng.randrange(1, 5))
    elif kind == 3:
        del buffer[position : position + rng.randrange(1, 9)]
    elif kind == 4:
        del buffer[position:]
    else:
        buffer[position:position] = buffer[position : position + rng.randrange(1, 30)]
    return bytes(buffer)


def decode_inputs(rng: random.Random) -> list[bytes]:
    """Valid hot frames, their bodies mutated then re-framed, and whole frames mutated."""
    maker = FrameMaker(rng, valid=True)
    inputs: list[bytes] = []
    for _ in range(FRAMES_PER_KIND):
        encoded = PURE_CODEC.encode_frame(maker.frame())
        frame_type, body = body_of(encoded)
        inputs.append(encoded)
        for _ in range(MUTATIONS_PER_ENCODING):
            inputs.append(header(frame_type, mutate(body, rng)))
        inputs.append(mutate(encoded, rng))
        inputs.append(header(frame_type, rng.randbytes(rng.randrange(80))))
    return inputs


def compare_decoding(data: bytes, rng: random.Random) -> None:
    """decode_frame and decode_body of one input agree, under both configurations."""
    reference: Codec = PURE_CODEC
    candidate = ACCELERATED_CODEC
    assert candidate is not None
    for config in CONFIGS:
        assert_same(
            outcome(reference.decode_frame, data, config=config),
            outcome(candidate.decode_frame, data, config=config),
            (data.hex(), config),
        )
    frame_type = rng.choice((FrameType.REQUEST, FrameType.RESPONSE, FrameType.HANDOFF, 0x05))
    start = rng.randrange(len(data) + 2)
    assert_same(
        outcome(reference.decode_body, frame_type, data, start, TIGHT),
        outcome(candidate.decode_body, frame_type, data, start, TIGHT),
        (frame_type, data.hex(), start),
    )


def compare_encoding(frame: Frame, *configs: WireConfig) -> bytes | None:
    """Both codecs encode `frame` to the same bytes or fail alike (under CONFIGS, or the configs
    given); the bytes if they encoded it under the default config."""
    assert ACCELERATED_CODEC is not None
    result: bytes | None = None
    for config in configs or CONFIGS:
        reference = outcome(PURE_CODEC.encode_frame, frame, config=config)
        candidate = outcome(ACCELERATED_CODEC.encode_frame, frame, config=config)
        assert_same(reference, candidate, (frame, config))
        if reference[0] == "ok" and config is DEFAULT_CONFIG:
            assert isinstance(reference[1], bytes)
            result = reference[1]
    return result


def test_encodings_are_identical_and_failures_alike() -> None:
    """3,600 hot frames, about half with a wrong field: same bytes, or the same exception."""
    rng = random.Random(SEED)
    maker = FrameMaker(rng, valid=False)
    outcomes = {"encoded": 0, "refused": 0}
    for _ in range(3 * FRAMES_PER_KIND):
        encoded = compare_encoding(maker.frame())
        outcomes["encoded" if encoded is not None else "refused"] += 1
    assert outcomes["encoded"] > 1_000
    assert outcomes["refused"] > 1_000


def test_decodings_are_equal_and_errors_alike() -> None:
    """7,200 valid, mutated and noise inputs decode to the same frames or the same error code."""
    rng = random.Random(SEED + 1)
    inputs = decode_inputs(rng)
    for data in inputs:
        compare_decoding(data, rng)
    results = [outcome(PURE_CODEC.decode_frame, data) for data in inputs]
    # Both acceptance and every kind of rejection must be reached, or the test proves little.
    assert sum(result[0] == "ok" for result in results) > 1_500
    assert sum(result[0] == "remote" for result in results) > 3_000


def test_many_configs_in_turn_give_their_own_bounds() -> None:
    """Configs used in rotation, more than the C codec caches, each apply their own bounds."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 6)
    maker = FrameMaker(rng, valid=True)
    configs = [WireConfig(part_name_bytes_max=size, targets_max=size) for size in range(1, 9)]
    for index in range(1_000):
        frame = maker.frame()
        config = configs[index % len(configs)]
        encoded = compare_encoding(frame, config)
        data = PURE_CODEC.encode_frame(frame)
        assert_same(
            outcome(PURE_CODEC.decode_frame, data, config=config),
            outcome(ACCELERATED_CODEC.decode_frame, data, config=config),
            (frame, config, encoded),
        )


def test_streams_decode_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """A FrameDecoder yields the same frames, then the same error, with either body decoder."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 2)
    maker = FrameMaker(rng, valid=True)
    for _ in range(300):
        stream = b"".join(PURE_CODEC.encode_frame(maker.frame()) for _ in range(4))
        stream = mutate(stream, rng) if rng.random() < 0.7 else stream
        results = []
        for codec in (PURE_CODEC, ACCELERATED_CODEC):
            monkeypatch.setattr(_decoder, "decode_body", codec.decode_body)
            monkeypatch.setattr(_decoder, "pop_frame", codec.pop_frame)
            monkeypatch.setattr(_decoder, "pop_frames", codec.pop_frames)
            results.append(decode_stream(stream))
        assert shape(results[1][0]) == shape(results[0][0])
        assert results[1][1] == results[0][1]


def test_pop_frame_takes_the_same_frames() -> None:
    """pop_frame returns the same frame or error and leaves the same bytes behind, for every
    kind of peer (and a plain set of types), on valid, mutated and truncated buffers."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 5)
    maker = FrameMaker(rng, valid=True)
    allowed_sets = [*_decoder.ALLOWED_FRAME_TYPES.values(), {0x10, 0x11, 0x20, 0x06}]
    popped = 0
    for _ in range(2_000):
        stream = PURE_CODEC.encode_frame(maker.frame()) + PURE_CODEC.encode_frame(maker.frame())
        if rng.random() < 0.5:
            stream = mutate(stream, rng)
        allowed = rng.choice(allowed_sets)
        config = rng.choice(CONFIGS)
        buffers = [bytearray(stream), bytearray(stream)]
        reference = outcome(PURE_CODEC.pop_frame, buffers[0], allowed, config)
        candidate = outcome(ACCELERATED_CODEC.pop_frame, buffers[1], allowed, config)
        assert_same(reference, candidate, (stream.hex(), allowed, config))
        assert buffers[1] == buffers[0]
        popped += reference[0] == "ok" and reference[1] is not None
    assert popped > 500


def test_pop_frames_takes_the_same_frames() -> None:
    """pop_frames returns the same frames (or error) and leaves the same bytes behind as the
    pure-Python codec, for any limit, on valid, mutated and truncated multi-frame buffers."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 6)
    maker = FrameMaker(rng, valid=True)
    allowed_sets = [*_decoder.ALLOWED_FRAME_TYPES.values(), {0x10, 0x11, 0x20, 0x06}]
    batches = 0
    for _ in range(1_500):
        stream = b"".join(PURE_CODEC.encode_frame(maker.frame()) for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.5:
            stream = mutate(stream, rng)
        allowed = rng.choice(allowed_sets)
        config = rng.choice(CONFIGS)
        limit = rng.choice([-1, 0, 1, 2, 5])
        buffers = [bytearray(stream), bytearray(stream)]
        reference = outcome(
            lambda *a: tuple(PURE_CODEC.pop_frames(*a)), buffers[0], allowed, limit, config
        )
        candidate = outcome(
            lambda *a: tuple(ACCELERATED_CODEC.pop_frames(*a)), buffers[1], allowed, limit, config
        )
        assert_same(reference, candidate, (stream.hex(), allowed, limit, config))
        assert buffers[1] == buffers[0]
        if reference[0] == "ok" and isinstance(reference[1], tuple) and len(reference[1]) > 1:
            batches += 1
    assert batches > 100


def cluster_message(rng: random.Random) -> ClusterMessage:
    """A CLUSTER_MESSAGE whose kind and length take each of their varint sizes now and then."""
    kind = rng.choice((0, 1, 63, 64, 16_383, 16_384, 1 << 40, rng.randrange(1 << 62)))
    size = rng.choice((0, 1, 60, 61, 62, 300, 16_370, 16_384, rng.randrange(400)))
    return ClusterMessage(kind=kind, body=rng.randbytes(size))


def test_cluster_messages_pop_alike() -> None:
    """pop_frame and pop_frames take CLUSTER_MESSAGE frames (a two-byte type) as the pure codec
    does: the same frames or error, the same bytes left behind, on streams that mix them with
    hot frames, valid, mutated and truncated, for every kind of peer."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 9)
    maker = FrameMaker(rng, valid=True)
    allowed_sets = [*_decoder.ALLOWED_FRAME_TYPES.values(), {0x40}, {0x10, 0x40}]
    clusters = 0
    for _ in range(1_500):
        frames = [
            cluster_message(rng) if rng.random() < 0.6 else maker.frame()
            for _ in range(rng.randint(1, 5))
        ]
        stream = b"".join(PURE_CODEC.encode_frame(frame) for frame in frames)
        if rng.random() < 0.5:
            stream = mutate(stream, rng)
        allowed = rng.choice(allowed_sets)
        config = rng.choice(CONFIGS)
        limit = rng.choice([-1, 1, 3])
        buffers = [bytearray(stream), bytearray(stream)]
        reference = outcome(
            lambda *a: tuple(PURE_CODEC.pop_frames(*a)), buffers[0], allowed, limit, config
        )
        candidate = outcome(
            lambda *a: tuple(ACCELERATED_CODEC.pop_frames(*a)), buffers[1], allowed, limit, config
        )
        assert_same(reference, candidate, (stream.hex(), allowed, limit, config))
        assert buffers[1] == buffers[0]
        if reference[0] == "ok" and isinstance(reference[1], tuple):
            clusters += sum(type(frame) is ClusterMessage for frame in reference[1])
        reference = outcome(PURE_CODEC.pop_frame, buffers[0], allowed, config)
        candidate = outcome(ACCELERATED_CODEC.pop_frame, buffers[1], allowed, config)
        assert_same(reference, candidate, (stream.hex(), allowed, config))
        assert buffers[1] == buffers[0]
    assert clusters > 500


def test_cluster_messages_encode_alike() -> None:
    """encode_frame and encode_frames give CLUSTER_MESSAGE the pure codec's bytes, or its error,
    for kinds and bodies of every varint size, of unexpected types, and over frame_bytes_max."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 10)
    maker = FrameMaker(rng, valid=True)
    odd_kinds: tuple[object, ...] = (-1, 1 << 62, True, 1.5, "7", None, FrameType.PING)
    odd_bodies: tuple[object, ...] = (bytearray(b"ab"), memoryview(b"cd"), "ef", None)
    encoded = 0
    for _ in range(1_500):
        frame = cluster_message(rng)
        if rng.random() < 0.2:
            kind = rng.choice(odd_kinds) if rng.random() < 0.5 else frame.kind
            body = rng.choice(odd_bodies) if rng.random() < 0.5 else frame.body
            frame = ClusterMessage(kind=kind, body=body)  # type: ignore[arg-type]
        config = rng.choice(CONFIGS)
        reference = outcome(PURE_CODEC.encode_frame, frame, config=config)
        candidate = outcome(ACCELERATED_CODEC.encode_frame, frame, config=config)
        assert_same(reference, candidate, (frame, config))
        batch = [frame, maker.frame()] if rng.random() < 0.5 else [frame]
        reference = outcome(PURE_CODEC.encode_frames, batch, config=config)
        candidate = outcome(ACCELERATED_CODEC.encode_frames, batch, config=config)
        assert_same(reference, candidate, (batch, config))
        encoded += reference[0] == "ok"
    assert encoded > 1_000


def test_repeated_and_colliding_names_decode_alike() -> None:
    """Part and op names decode to the same strings whatever the C codec's name cache holds:
    names seen before, many distinct names that share cache slots, and non-ASCII names."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 8)
    names = [f"part-{n}" for n in range(300)] + ["caf\u00e9", "\u00e9t\u00e9", "a", "b"]
    for _ in range(3_000):
        frame = Request(
            request_id=rng.randrange(1 << 62),
            session_id=bytes(16),
            part=rng.choice(names),
            op=rng.choice(names)[:64],
            map_version=1,
            payload=b"",
        )
        data = PURE_CODEC.encode_frame(frame)
        decoded = ACCELERATED_CODEC.decode_frame(data)
        assert shape(decoded) == shape(frame)


def test_encode_frames_gives_the_same_bytes_or_error() -> None:
    """encode_frames gives the pure codec's bytes, or its error, on batches of random valid and
    invalid frames."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 7)
    makers = [FrameMaker(rng, valid=True), FrameMaker(rng, valid=False)]
    refused = 0
    for _ in range(1_000):
        frames = tuple(rng.choice(makers).frame() for _ in range(rng.randint(0, 5)))
        config = rng.choice(CONFIGS)
        reference = outcome(PURE_CODEC.encode_frames, frames, config=config)
        candidate = outcome(ACCELERATED_CODEC.encode_frames, frames, config=config)
        assert_same(reference, candidate, (frames, config))
        refused += reference[0] != "ok"
    assert 50 < refused < 950


def decode_stream(stream: bytes) -> tuple[tuple[Frame, ...], int | None]:
    """The frames a FrameDecoder yields for `stream`, and the error code it ends with."""
    decoder = FrameDecoder(sender=None)
    frames: list[Frame] = []
    try:
        decoder.receive_data(stream)
        decoder.receive_data(b"")
        while not isinstance(item := decoder.next_frame(), _decoder.DecoderSignal):
            frames.append(item)
    except RemoteProtocolError as error:
        return tuple(frames), int(error.error_code)
    return tuple(frames), None


@pytest.mark.parametrize(
    "call",
    [
        lambda codec: codec.decode_frame(bytearray(b"\x11\x21" + bytes(33))),
        lambda codec: codec.decode_frame(memoryview(b"\x06\x02\x01\x02")),
        lambda codec: codec.decode_frame(b"\x06\x02\x01\x02", config=object()),
        lambda codec: codec.decode_frame(b"\x06\x02\x01\x02", DEFAULT_CONFIG),
        lambda codec: codec.decode_frame(data=b"\x06\x02\x01\x02"),
        lambda codec: codec.encode_frame(ENDPOINTS[0]),
        lambda codec: codec.encode_frame(
            Request(
                request_id=1, session_id=bytes(16), part="p", op="o", map_version=1, payload=b""
            ),
            DEFAULT_CONFIG,
        ),
        lambda codec: codec.encode_frame(
            Response(request_id=1, session_id=bytes(16), status=0, map_version=1, payload=b""),  # type: ignore[arg-type]
            config=WireConfig(frame_bytes_max=16_384),
        ),
        lambda codec: codec.decode_body(0x11, b"\x00" * 33, start=0),
        lambda codec: codec.decode_body(0x11, b"\x00" * 33, -33),
        lambda codec: codec.decode_body(0x11, b"\x00" * 33, 34),
        lambda codec: codec.decode_body(2**70, b"", 0),
        lambda codec: codec.decode_body(FrameType.RESPONSE, b"\x00" * 33),
        lambda codec: codec.decode_body("17", b"\x00" * 33),
        lambda codec: codec.decode_body(0x11, bytearray(33)),
        lambda codec: codec.pop_frame(b"\x06\x02\x01\x02", {6}, DEFAULT_CONFIG),
        lambda codec: codec.pop_frame(bytearray(b"\x06\x02\x01\x02"), [6], DEFAULT_CONFIG),
        lambda codec: codec.pop_frame(bytearray(b"\x06\x02\x01\x02"), {6}, None),
        lambda codec: codec.pop_frame(bytearray(b"\x06\x02\x01\x02"), {6}),
    ],
)
def test_unusual_arguments_behave_like_the_pure_codec(call: Callable[[Codec], object]) -> None:
    """Arguments of other types or shapes give exactly what the pure-Python functions give."""
    assert ACCELERATED_CODEC is not None
    assert_same(outcome(call, PURE_CODEC), outcome(call, ACCELERATED_CODEC), call)


def test_repeated_calls_free_what_they_allocate() -> None:
    """Encoding and decoding, valid and invalid, thousands of times leaves no object behind."""
    assert ACCELERATED_CODEC is not None
    rng = random.Random(SEED + 3)
    maker = FrameMaker(rng, valid=False)
    frames = [maker.frame() for _ in range(300)]
    inputs = decode_inputs(random.Random(SEED + 4))[:1_500]
    codec = ACCELERATED_CODEC

    def run() -> None:
        for frame in frames:
            outcome(codec.encode_frame, frame, config=TIGHT)
        for data in inputs:
            outcome(codec.decode_frame, data, config=TIGHT)
            outcome(codec.decode_body, 0x20, data, 2)

    blocks = []
    for _ in range(6):
        run()
        gc.collect()
        blocks.append(sys.getallocatedblocks())
    # The first rounds fill caches (endpoints, enum pseudo-members); later ones must not grow.
    # A leak of one object per call would add thousands of blocks per round.
    assert blocks[-1] - blocks[2] < 300, blocks
