"""The hex test vectors of docs/PROTOCOL.md hold: each decodes to its frame, encodes to its bytes.

Frame vectors are marked `<!-- vector: NAME -->` and followed by a ```python block (the frame)
and a ```text block (its hex). Stream vectors, marked `<!-- stream: NAME sender=ROLE -->`, give
the list of frames a decoder yields for that sender, ending in an ErrorCode when it must fail.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from forehand import wire
from forehand.errors import RemoteProtocolError
from forehand.wire import (
    DecoderSignal,
    ErrorCode,
    FrameDecoder,
    FrameType,
    PeerRole,
)
from forehand.wire._implementation import Codec

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
_BLOCKS = r"\s*```python\n(?P<expression>.*?)```\s*```text\n(?P<hex>.*?)```"
FRAME_VECTOR = re.compile(r"<!-- vector: (?P<name>[\w-]+) -->" + _BLOCKS, re.DOTALL)
STREAM_VECTOR = re.compile(
    r"<!-- stream: (?P<name>[\w-]+) sender=(?P<sender>\w+) -->" + _BLOCKS, re.DOTALL
)
NAMESPACE: dict[str, object] = {name: getattr(wire, name) for name in wire.__all__}
NAMESPACE["bytes"] = bytes


def evaluate(expression: str) -> object:
    """Evaluate a vector's Python expression with only forehand.wire names in scope."""
    # No builtins are in scope; the expressions come from the project's own document.
    return eval(expression, {"__builtins__": {}}, NAMESPACE)


def hex_bytes(text: str) -> bytes:
    """The bytes of a hex block; anything after '#' on a line is a comment."""
    return bytes.fromhex(" ".join(line.split("#")[0] for line in text.splitlines()))


VARIANT_VECTORS = {"request-with-wait-budget"}
"""Vectors of a frame's other layouts, beside the one vector per frame type."""
DOCUMENT = PROTOCOL.read_text(encoding="utf-8")
FRAME_VECTORS = list(FRAME_VECTOR.finditer(DOCUMENT))
STREAM_VECTORS = list(STREAM_VECTOR.finditer(DOCUMENT))


@pytest.mark.parametrize("vector", FRAME_VECTORS, ids=lambda match: match["name"])
def test_frame_vector_decodes_and_encodes(codec: Codec, vector: re.Match[str]) -> None:
    """decode(hex) equals the documented frame, and encode(frame) reproduces the hex exactly."""
    frame = evaluate(vector["expression"])
    assert isinstance(frame, wire.Frame)
    data = hex_bytes(vector["hex"])
    assert codec.decode_frame(data) == frame
    assert codec.encode_frame(frame) == data


def vector_name(frame_type: FrameType) -> str:
    """The name of a frame type's vector: `close-session` for CLOSE_SESSION."""
    return frame_type.name.lower().replace("_", "-")


def test_every_frame_type_has_a_vector(codec: Codec) -> None:
    """The document shows the bytes of every frame type, each vector named after its type; a
    variant's vector (another layout of the same frame) is named after its type too."""
    names = {vector["name"] for vector in FRAME_VECTORS}
    assert names == {vector_name(frame_type) for frame_type in FrameType} | VARIANT_VECTORS
    for vector in FRAME_VECTORS:
        frame_type = codec.decode_frame(hex_bytes(vector["hex"])).frame_type
        assert re.fullmatch(re.escape(vector_name(frame_type)) + r"(-.+)?", vector["name"])


@pytest.mark.parametrize("vector", STREAM_VECTORS, ids=lambda match: match["name"])
@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["whole", "byte-by-byte"])
@pytest.mark.usefixtures("codec")
def test_stream_vector(vector: re.Match[str], chunk_bytes: int | None) -> None:
    """A decoder for the named sender yields exactly the documented frames, then the error."""
    expected = evaluate(vector["expression"])
    assert isinstance(expected, list)
    data = hex_bytes(vector["hex"])
    decoder = FrameDecoder(sender=PeerRole(vector["sender"]))
    step = chunk_bytes or len(data)
    received: list[object] = []
    try:
        for offset in range(0, len(data), step):
            decoder.receive_data(data[offset : offset + step])
            while not isinstance(item := decoder.next_frame(), DecoderSignal):
                received.append(item)
        decoder.receive_data(b"")
        while not isinstance(item := decoder.next_frame(), DecoderSignal):
            received.append(item)
    except RemoteProtocolError as error:
        received.append(ErrorCode(error.error_code))
    assert received == expected


def test_document_has_the_vectors_it_promises() -> None:
    """Parsing found every vector: one per frame type, and the stream cases."""
    assert len(FRAME_VECTORS) == len(FrameType) + len(VARIANT_VECTORS)
    assert len(STREAM_VECTORS) >= 10
