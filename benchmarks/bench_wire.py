"""forehand/1 frame codec against msgspec msgpack of the very same frame objects.

Each round encodes a frame and decodes the bytes back, the way a connection handles every
REQUEST and HANDOFF. The baseline encodes the identical msgspec Struct with msgspec's msgpack
encoder and decodes it with a typed msgspec decoder, so both sides produce the same Python
object and validate the same types; the ratio says how close the hand-written binary layout of
docs/PROTOCOL.md comes to msgspec's C implementation. A third row pushes frames through a
FrameDecoder, as a connection does, to show the streaming overhead.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import msgspec

# Run as a script (make bench): make the repository root importable for benchmarks._common.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Comparison, compare, print_comparisons

from forehand.wire import (
    Endpoint,
    Extension,
    Frame,
    FrameDecoder,
    Handoff,
    HandoffFlag,
    PeerRole,
    ReasonCode,
    Request,
    decode_frame,
    encode_frame,
)

SESSION_ID = bytes.fromhex("0190f5a3c2e87d4b9a3f1c2d3e4f5a6b")
PAYLOAD_BYTES = 100
COUNT = 50_000
ROUNDS = 7
STREAM_BATCH = 100
"""Frames fed to a FrameDecoder per receive_data call in the streaming row."""


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


def forehand_round_trip(frame: Frame) -> Callable[[int], None]:
    """encode_frame then decode_frame, `count` times."""

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


def forehand_stream(frame: Frame) -> Callable[[int], None]:
    """Encode a batch, feed it to a FrameDecoder in one chunk, drain it; per frame."""
    decoder = FrameDecoder(sender=PeerRole.CLIENT)

    def run(count: int) -> None:
        for _ in range(count // STREAM_BATCH):
            decoder.receive_data(b"".join([encode_frame(frame) for _ in range(STREAM_BATCH)]))
            for _ in range(STREAM_BATCH):
                decoder.next_frame()

    return run


def msgspec_stream(frame: Frame) -> Callable[[int], None]:
    """The baseline of the streaming row: the same round trip as msgspec_round_trip."""
    return msgspec_round_trip(frame)


def main() -> None:
    """Measure and print the table."""
    request = request_frame()
    handoff = handoff_frame()
    rows: list[Comparison] = [
        compare(
            f"REQUEST encode+decode ({PAYLOAD_BYTES} B payload)",
            candidate=forehand_round_trip(request),
            baseline=msgspec_round_trip(request),
            baseline_name="msgspec msgpack, same Struct",
            count=COUNT,
            rounds=ROUNDS,
        ),
        compare(
            "HANDOFF encode+decode",
            candidate=forehand_round_trip(handoff),
            baseline=msgspec_round_trip(handoff),
            baseline_name="msgspec msgpack, same Struct",
            count=COUNT // 4,
            rounds=ROUNDS,
        ),
        compare(
            "REQUEST via FrameDecoder (streamed)",
            candidate=forehand_stream(request),
            baseline=msgspec_stream(request),
            baseline_name="msgspec msgpack, same Struct",
            count=COUNT,
            rounds=ROUNDS,
        ),
    ]
    print_comparisons("forehand/1 wire codec (operations per second)", rows)
    print(
        f"sizes: REQUEST {len(encode_frame(request))} B (msgpack "
        f"{len(msgspec.msgpack.encode(request))} B), HANDOFF {len(encode_frame(handoff))} B "
        f"(msgpack {len(msgspec.msgpack.encode(handoff))} B)"
    )


if __name__ == "__main__":
    main()
