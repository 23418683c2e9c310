"""forehand/1 frame codec against msgspec msgpack of the very same frame objects.

Each round encodes a frame and decodes the bytes back, the way a connection handles every
REQUEST and HANDOFF. The baseline encodes the identical msgspec Struct with msgspec's msgpack
encoder and decodes it with a typed msgspec decoder, so both sides produce the same Python
object and validate the same types; the ratio says how close the hand-written binary layout of
docs/PROTOCOL.md comes to msgspec's C implementation. The streamed rows push frames through a
FrameDecoder, as a connection does.

Every row is measured for both codecs: the C accelerator (forehand.wire._speedups, when it is
built) and the pure-Python codec, each against its own baseline measurement in the same run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import msgspec

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Comparison, compare, print_comparisons

from forehand.wire import (
    CODEC_IMPLEMENTATION,
    Endpoint,
    Extension,
    Frame,
    FrameDecoder,
    Handoff,
    HandoffFlag,
    PeerRole,
    ReasonCode,
    Request,
    _decoder,
)
from forehand.wire._implementation import ACCELERATED_CODEC, PURE_CODEC, Codec

SESSION_ID = bytes.fromhex("0190f5a3c2e87d4b9a3f1c2d3e4f5a6b")
PAYLOAD_BYTES = 100
COUNT = 50_000
ROUNDS = 7
STREAM_BATCH = 100
"""Frames fed to a FrameDecoder per receive_data call in the streaming row."""
BASELINE = "msgspec msgpack, same Struct"
LABELS = {"c": "C", "python": "pure Python"}


def request_frame() -> Request:
    """A REQUEST as a client sends it: a realistic request id and map version, 100-byte payload."""
    return Request(
        request_id=1_234_567,
        session_id=SESSION_ID,
        part="cart",
        op="add_item",
        map_version=48_211,
        payload=bytes(range(PAYLOAD_BYTES)),
    )


def handoff_frame() -> Handoff:
    """A HANDOFF with two targets, two parts, a 96-byte sealed token and one extension."""
    return Handoff(
        sequence=42,
        session_id=SESSION_ID,
        parts=("cart", "feature/video"),
        map_version=48_212,
        reason=ReasonCode.PREDICTED_FAILURE,
        flags=HandoffFlag.MAKE_BEFORE_BREAK_REQUIRED | HandoffFlag.PREWARMED,
        deadline_ms=5_000,
        current=Endpoint(server_id="edge-eu-1a-07", host="10.1.7.21", port=4433),
        targets=(
            Endpoint(server_id="edge-eu-1b-03", host="10.2.3.14", port=4433),
            Endpoint(server_id="edge-eu-1c-11", host="2001:db8:0:3::11", port=4433),
        ),
        token=bytes(96),
        extensions=(Extension(0x21, b"\x01\x02"),),
    )


def forehand_round_trip(codec: Codec, frame: Frame) -> Callable[[int], None]:
    """encode_frame then decode_frame of one codec, `count` times."""
    encode_frame = codec.encode_frame
    decode_frame = codec.decode_frame

    def run(count: int) -> None:
        for _ in range(count):
            decode_frame(encode_frame(frame))

    assert decode_frame(encode_frame(frame)) == frame
    return run


def msgspec_round_trip(frame: Frame) -> Callable[[int], None]:
    """msgspec msgpack encode then typed decode of the same Struct, `count` times."""
    encode = msgspec.msgpack.Encoder().encode
    decode = msgspec.msgpack.Decoder(type(frame)).decode

    def run(count: int) -> None:
        for _ in range(count):
            decode(encode(frame))

    assert decode(encode(frame)) == frame
    return run


@contextmanager
def frame_decoder_codec(codec: Codec) -> Iterator[None]:
    """Make FrameDecoder decode with `codec` for a while (it normally uses the chosen one)."""
    saved = vars(_decoder).copy()
    vars(_decoder).update(decode_body=codec.decode_body, pop_frame=codec.pop_frame)
    try:
        yield
    finally:
        vars(_decoder).update(decode_body=saved["decode_body"], pop_frame=saved["pop_frame"])


def forehand_stream(codec: Codec, frame: Frame) -> Callable[[int], None]:
    """Encode a batch, feed it to a FrameDecoder in one chunk, drain it; per frame."""
    decoder = FrameDecoder(sender=PeerRole.CLIENT)
    encode_frame = codec.encode_frame

    def run(count: int) -> None:
        with frame_decoder_codec(codec):
            for _ in range(count // STREAM_BATCH):
                decoder.receive_data(b"".join([encode_frame(frame) for _ in range(STREAM_BATCH)]))
                for _ in range(STREAM_BATCH):
                    decoder.next_frame()

    return run


def msgspec_stream(frame: Frame) -> Callable[[int], None]:
    """The baseline of the streaming row: the same round trip as msgspec_round_trip."""
    return msgspec_round_trip(frame)


def codec_rows(codec: Codec, request: Request, handoff: Handoff) -> list[Comparison]:
    """The three rows of one codec, each beside the msgspec baseline measured alongside it."""
    label = LABELS[codec.name]
    return [
        compare(
            f"REQUEST round trip [{label}]",
            candidate=forehand_round_trip(codec, request),
            baseline=msgspec_round_trip(request),
            baseline_name=BASELINE,
            count=COUNT,
            rounds=ROUNDS,
        ),
        compare(
            f"HANDOFF round trip [{label}]",
            candidate=forehand_round_trip(codec, handoff),
            baseline=msgspec_round_trip(handoff),
            baseline_name=BASELINE,
            count=COUNT // 4,
            rounds=ROUNDS,
        ),
        compare(
            f"REQUEST streamed [{label}]",
            candidate=forehand_stream(codec, request),
            baseline=msgspec_stream(request),
            baseline_name=BASELINE,
            count=COUNT,
            rounds=ROUNDS,
        ),
    ]


def main() -> None:
    """Measure and print the table."""
    request = request_frame()
    handoff = handoff_frame()
    codecs = [codec for codec in (ACCELERATED_CODEC, PURE_CODEC) if codec is not None]
    rows = [row for codec in codecs for row in codec_rows(codec, request, handoff)]
    print_comparisons(
        f"forehand/1 wire codec (operations per second; round trip = encode_frame then "
        f"decode_frame, {PAYLOAD_BYTES} B REQUEST payload)",
        rows,
    )
    if ACCELERATED_CODEC is None:
        print("the C accelerator forehand.wire._speedups is not built: pure-Python rows only")
    print(f"forehand.wire uses the {LABELS[CODEC_IMPLEMENTATION]} codec")
    encode_frame = PURE_CODEC.encode_frame
    print(
        f"sizes: REQUEST {len(encode_frame(request))} B (msgpack "
        f"{len(msgspec.msgpack.encode(request))} B), HANDOFF {len(encode_frame(handoff))} B "
        f"(msgpack {len(msgspec.msgpack.encode(handoff))} B)"
    )


if __name__ == "__main__":
    main()
