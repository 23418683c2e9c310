"""Fuzzing: random and mutated byte streams only ever raise RemoteProtocolError, stay bounded.

Over 10,000 inputs from one seed, once per codec implementation (pure Python, then C): pure
noise, and valid streams of every frame type mutated by bit flips, overwrites, insertions,
deletions, truncations and forged length prefixes. Each is fed to a FrameDecoder in random
chunks. The decoder may return frames or raise RemoteProtocolError; anything else fails the
test. After draining, it never holds more than frame_bytes_max plus a header; once it has
raised, it raises on every later call and yields nothing more. Every frame it does return
encodes again and decodes to itself, so decoding accepts nothing encoding refuses.
"""

from __future__ import annotations

import contextlib
import random

from forehand.errors import RemoteProtocolError
from forehand.wire import (
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
    WireConfig,
    encode_frame,
    encode_varint,
    grease_frame,
)
from forehand.wire._implementation import Codec

SEED = 20_240_611
RANDOM_INPUTS = 3_000
MUTATED_INPUTS = 7_500
CONFIG = WireConfig(frame_bytes_max=16_384, parts_max=8, targets_max=4)
SESSION = bytes.fromhex("0190f5a3c2e87d4b9a3f1c2d3e4f5a6b")
V4 = Endpoint(server_id="edge-1", host="10.0.0.1", port=4433)
V6 = Endpoint(server_id="edge-2", host="2001:db8::2", port=443)
DNS = Endpoint(server_id="edge-3", host="edge-3.example.net", port=8443)

SAMPLES: list[Frame] = [
    Hello(versions=(1, 0x0A0A0A0A), client_id=SESSION, credentials=(Credential(SESSION, b"c"),)),
    Welcome(
        version=1, server_id="edge-1", map_version=7, frame_bytes_max=16_384, idle_timeout_ms=1
    ),
    Settings(credential_lifetime_ms=86_400_000),
    Settings(credential_lifetime_ms=86_400_000, client_sessions_max=1_024),
    OpenSessionRefused(request_id=3, reason="no server declares 'prfile'"),
    OpenSessionRefused(request_id=4, reason="the commit queue is full", retry_after_ms=100),
    OpenSession(request_id=1, parts=("auth", "cart")),
    SessionOpened(
        request_id=1,
        session_id=SESSION,
        credential=b"cred",
        map_version=7,
        placements=(Placement("auth", V4, (V6, DNS)), Placement("cart", DNS, ())),
        token=b"token",
    ),
    CloseSession(session_id=SESSION),
    Request(request_id=9, session_id=SESSION, part="cart", op="add", map_version=7, payload=b"p"),
    Response(
        request_id=9, session_id=SESSION, status=ResponseStatus.OK, map_version=7, payload=b"r"
    ),
    Redirect(request_id=9, session_id=SESSION, part="cart", map_version=8, targets=(V6,)),
    Handoff(
        sequence=3,
        session_id=SESSION,
        parts=("cart",),
        map_version=8,
        reason=ReasonCode.PREDICTED_FAILURE,
        flags=HandoffFlag.URGENT,
        deadline_ms=2_000,
        current=V4,
        targets=(V6, DNS),
        token=b"sealed",
        extensions=(Extension(0x21, b"x"),),
    ),
    HandoffStatus(sequence=3, session_id=SESSION, state=HandoffState.COMPLETED, detail_code=0),
    Resume(session_id=SESSION, token=b"sealed", parts=("cart",), map_version=8, unanswered=(9,)),
    ResumeOk(session_id=SESSION, parts=("cart",), map_version=8, credential=b"new"),
    ResumeReject(session_id=SESSION, reason=ResumeRejectReason.TOKEN_REPLAYED, message="no"),
    MapRequest(map_version=7, credentials=(Credential(SESSION, b"cred"),)),
    MapUpdate(map_version=8, base_version=7, encoding=1, body=b"delta"),
    Ping(sequence=1, sent_us=5, telemetry=(PathSample("edge-1", rtt_us=900, loss_ppm=10),)),
    Pong(sequence=1, sent_us=5),
    GoAway(map_version=8, reason=ReasonCode.PLANNED_MAINTENANCE, last_request_id=9),
    Error(code=ErrorCode.FRAME_TOO_LARGE, reason="too big"),
    ClusterMessage(kind=2, body=b"\x92\x01\x02"),
]
ENCODED = [encode_frame(frame, config=CONFIG) for frame in SAMPLES]


def mutate(data: bytearray, rng: random.Random) -> None:
    """Apply one random mutation in place."""
    kind = rng.randrange(7)
    position = rng.randrange(len(data) + 1)
    if kind == 0 and data:
        data[min(position, len(data) - 1)] ^= 1 << rng.randrange(8)
    elif kind == 1 and data:
        data[min(position, len(data) - 1)] = rng.choice((0x00, 0x3F, 0x40, 0x7F, 0xC0, 0xFF))
    elif kind == 2:
        data[position:position] = rng.randbytes(rng.randrange(1, 9))
    elif kind == 3:
        del data[position : position + rng.randrange(1, 9)]
    elif kind == 4:
        del data[position:]
    elif kind == 5:
        # A forged length prefix: huge, just over the bound, or just under it.
        claimed = rng.choice((CONFIG.frame_bytes_max + 1, CONFIG.frame_bytes_max - 1, 2**62 - 1))
        data[position:position] = encode_varint(rng.randrange(0x40)) + encode_varint(claimed)
    else:
        data[position:position] = data[: rng.randrange(len(data) + 1)]


def mutated_stream(rng: random.Random) -> bytes:
    """One to four valid frames, maybe a greased one, then one to five mutations."""
    data = bytearray()
    for _ in range(rng.randrange(1, 5)):
        data += rng.choice(ENCODED)
        if rng.random() < 0.2:
            data += grease_frame(rng)
    for _ in range(rng.randrange(1, 6)):
        mutate(data, rng)
    return bytes(data)


def drain(decoder: FrameDecoder, frames: list[Frame]) -> None:
    """Pull frames until the decoder has none, checking the buffer bound afterwards."""
    while not isinstance(item := decoder.next_frame(), DecoderSignal):
        frames.append(item)
    assert decoder.buffered_bytes <= CONFIG.buffered_bytes_max


def feed(data: bytes, rng: random.Random) -> tuple[list[Frame], bool]:
    """Feed `data` in random chunks; return the frames and whether the decoder raised."""
    decoder = FrameDecoder(config=CONFIG, sender=None)
    frames: list[Frame] = []
    offset = 0
    try:
        while offset < len(data):
            size = rng.choice((1, 2, 3, 7, 64, 1024, len(data)))
            decoder.receive_data(data[offset : offset + size])
            offset += size
            drain(decoder, frames)
        decoder.receive_data(b"")
        drain(decoder, frames)
    except RemoteProtocolError:
        assert decoder.poisoned
        assert decoder.buffered_bytes == 0
        for call in (decoder.next_frame, lambda: decoder.receive_data(b"more")):
            try:
                call()
            except RemoteProtocolError:
                continue
            raise AssertionError("a poisoned decoder answered") from None
        return frames, True
    return frames, False


def check_input(codec: Codec, data: bytes, rng: random.Random) -> bool:
    """Run one input through both entry points; return whether the stream was rejected."""
    frames, rejected = feed(data, rng)
    for frame in frames:
        assert codec.decode_frame(codec.encode_frame(frame, config=CONFIG), config=CONFIG) == frame
    with contextlib.suppress(RemoteProtocolError):
        codec.decode_frame(data, config=CONFIG)
    return rejected


def test_fuzzed_streams_only_raise_remote_protocol_errors(codec: Codec) -> None:
    """10,500 random and mutated inputs; both rejected and accepted streams are exercised."""
    rng = random.Random(SEED)
    outcomes = {True: 0, False: 0}
    for _ in range(RANDOM_INPUTS):
        noise = rng.randbytes(rng.randrange(0, 300))
        outcomes[check_input(codec, noise, rng)] += 1
    for _ in range(MUTATED_INPUTS):
        outcomes[check_input(codec, mutated_stream(rng), rng)] += 1
    assert sum(outcomes.values()) >= 10_000
    # Both paths must be exercised, or the fuzzer is not testing what it claims.
    assert outcomes[True] > 1_000
    assert outcomes[False] > 100


def test_valid_samples_cover_every_frame_type(codec: Codec) -> None:
    """The mutation corpus starts from every frame type, and each sample decodes as itself."""
    assert len({type(frame) for frame in SAMPLES}) == 22
    for frame, encoded in zip(SAMPLES, ENCODED, strict=True):
        assert codec.decode_frame(encoded, config=CONFIG) == frame
