"""Which frame codec runs: the C accelerator `_speedups`, or the pure-Python codec.

Both implement `encode_frame`, `encode_frames`, `decode_frame`, `decode_body` and FrameDecoder's
`pop_frame` and `pop_frames` with the same signatures, results and errors: the C module encodes
and decodes the hot frames (REQUEST, RESPONSE, HANDOFF) itself and hands every other frame, and
every argument it does not expect, to the pure-Python codec in `_codec`. The accelerator is
optional: when it was not compiled (no C compiler when the package was installed) the pure-Python
codec runs alone. The environment variable FOREHAND_WIRE_PURE, set to anything but "" or "0"
before `forehand.wire` is first imported, forces the pure-Python codec, for debugging and for
comparing the two.

This module is the only place that chooses; everything else imports the chosen functions.
"""

from __future__ import annotations

import os
from collections.abc import Set
from dataclasses import dataclass
from typing import Final, Protocol

from forehand.wire import _codec
from forehand.wire._config import DEFAULT_CONFIG, WireConfig
from forehand.wire._frames import Frame

__all__ = [
    "ACCELERATED_CODEC",
    "CODEC",
    "CODEC_IMPLEMENTATION",
    "PURE_CODEC",
    "PURE_ENVIRONMENT_VARIABLE",
    "Codec",
    "decode_body",
    "decode_frame",
    "encode_frame",
    "encode_frames",
    "pop_frame",
    "pop_frames",
]

PURE_ENVIRONMENT_VARIABLE: Final = "FOREHAND_WIRE_PURE"
"""Set to anything but "" or "0" to run the pure-Python codec even when the C one is built."""


class EncodeFrame(Protocol):
    """The signature of `encode_frame`."""

    def __call__(self, frame: Frame, *, config: WireConfig = DEFAULT_CONFIG) -> bytes: ...


class EncodeFrames(Protocol):
    """The signature of `encode_frames`."""

    def __call__(
        self, frames: list[Frame] | tuple[Frame, ...], *, config: WireConfig = DEFAULT_CONFIG
    ) -> bytes: ...


class DecodeFrame(Protocol):
    """The signature of `decode_frame`."""

    def __call__(self, data: bytes, *, config: WireConfig = DEFAULT_CONFIG) -> Frame: ...


class DecodeBody(Protocol):
    """The signature of `decode_body`."""

    def __call__(
        self, frame_type: int, data: bytes, start: int = 0, config: WireConfig = DEFAULT_CONFIG
    ) -> Frame: ...


class PopFrame(Protocol):
    """The signature of `pop_frame`."""

    def __call__(
        self, buffer: bytearray, allowed: Set[int], config: WireConfig, /
    ) -> Frame | None: ...


class PopFrames(Protocol):
    """The signature of `pop_frames`."""

    def __call__(
        self, buffer: bytearray, allowed: Set[int], limit: int, config: WireConfig, /
    ) -> list[Frame]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Codec:
    """One implementation of the frame codec."""

    name: str
    """"c" for the C accelerator, "python" for the pure-Python codec."""
    encode_frame: EncodeFrame
    """Frame to bytes."""
    encode_frames: EncodeFrames
    """Frames to their bytes, one after the other."""
    decode_frame: DecodeFrame
    """Bytes of exactly one frame to the frame."""
    decode_body: DecodeBody
    """A frame body of a known type to the frame."""
    pop_frame: PopFrame
    """The complete common-header frame at the front of a FrameDecoder's buffer, if any."""
    pop_frames: PopFrames
    """Every complete common-header frame at the front of a FrameDecoder's buffer, up to a limit."""


PURE_CODEC: Final = Codec(
    name="python",
    encode_frame=_codec.encode_frame,
    encode_frames=_codec.encode_frames,
    decode_frame=_codec.decode_frame,
    decode_body=_codec.decode_body,
    pop_frame=_codec.pop_frame,
    pop_frames=_codec.pop_frames,
)
"""The pure-Python codec, always available; the reference the C codec is tested against."""


def _load_accelerated_codec() -> Codec | None:
    """The C codec, or None when the extension was not built (or does not match this code)."""
    try:
        from forehand.wire import _speedups
    except ImportError:
        return None
    return Codec(
        name="c",
        encode_frame=_speedups.encode_frame,
        encode_frames=_speedups.encode_frames,
        decode_frame=_speedups.decode_frame,
        decode_body=_speedups.decode_body,
        pop_frame=_speedups.pop_frame,
        pop_frames=_speedups.pop_frames,
    )


def _pure_requested() -> bool:
    return os.environ.get(PURE_ENVIRONMENT_VARIABLE, "") not in ("", "0")


ACCELERATED_CODEC: Final = _load_accelerated_codec()
"""The C codec when it is built, else None (whatever FOREHAND_WIRE_PURE says)."""
CODEC: Final = PURE_CODEC if ACCELERATED_CODEC is None or _pure_requested() else ACCELERATED_CODEC
"""The codec `forehand.wire` uses."""
CODEC_IMPLEMENTATION: Final = CODEC.name
""""c" when the C accelerator is in use, "python" otherwise."""

encode_frame: Final = CODEC.encode_frame
encode_frames: Final = CODEC.encode_frames
decode_frame: Final = CODEC.decode_frame
decode_body: Final = CODEC.decode_body
pop_frame: Final = CODEC.pop_frame
pop_frames: Final = CODEC.pop_frames
