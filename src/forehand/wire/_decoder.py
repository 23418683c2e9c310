"""`FrameDecoder`: bytes of one stream in, frames out, with a hard cap on what it buffers.

The caller feeds whatever the transport delivered with `receive_data` (b"" at end of stream) and
drains `next_frame()` until it returns NEED_DATA. A frame whose length prefix exceeds
`frame_bytes_max` is rejected before any of its body is buffered, so once drained the decoder
holds at most one incomplete frame. The first violation poisons the decoder: every later call
raises the same RemoteProtocolError, because nothing after a framing error can be trusted.
"""

from __future__ import annotations

import random
from enum import Enum
from typing import Final, Literal

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire._config import DEFAULT_CONFIG, WireConfig
from forehand.wire._enums import (
    EXTENSION_FRAME_TYPES_MIN,
    ErrorCode,
    FrameType,
    PeerRole,
)
from forehand.wire._frames import Frame
from forehand.wire._implementation import decode_body, pop_frame, pop_frames
from forehand.wire._primitives import encode_varint

__all__ = [
    "END_OF_STREAM",
    "NEED_DATA",
    "DecoderSignal",
    "FrameDecoder",
    "grease_frame",
]


class DecoderSignal(Enum):
    """What `next_frame` returns when it has no frame to give."""

    NEED_DATA = "need_data"
    """Feed more bytes with `receive_data`."""
    END_OF_STREAM = "end_of_stream"
    """The peer ended the stream cleanly, between two frames."""


NEED_DATA: Final = DecoderSignal.NEED_DATA
END_OF_STREAM: Final = DecoderSignal.END_OF_STREAM

_FT = FrameType
_COMMON_FRAMES = frozenset({_FT.PING, _FT.PONG, _FT.ERROR})
ALLOWED_FRAME_TYPES: dict[PeerRole, frozenset[int]] = {
    PeerRole.CLIENT: _COMMON_FRAMES
    | {
        _FT.HELLO,
        _FT.OPEN_SESSION,
        _FT.CLOSE_SESSION,
        _FT.REQUEST,
        _FT.HANDOFF_STATUS,
        _FT.RESUME,
        _FT.MAP_REQUEST,
    },
    PeerRole.SERVER: _COMMON_FRAMES
    | {
        _FT.WELCOME,
        _FT.SETTINGS,
        _FT.SESSION_OPENED,
        _FT.OPEN_SESSION_REFUSED,
        _FT.CLOSE_SESSION,
        _FT.RESPONSE,
        _FT.REDIRECT,
        _FT.HANDOFF,
        _FT.RESUME_OK,
        _FT.RESUME_REJECT,
        _FT.MAP_UPDATE,
        _FT.GOAWAY,
    },
    PeerRole.CLUSTER_NODE: _COMMON_FRAMES
    | {_FT.HELLO, _FT.WELCOME, _FT.GOAWAY, _FT.CLUSTER_MESSAGE},
}
"""Which frame types each kind of peer may send (docs/PROTOCOL.md, "Directions")."""
_ANY_PEER = frozenset(int(frame_type) for frame_type in FrameType)
_VARINT_SIZES = (1, 2, 4, 8)
GREASE_BODY_BYTES_MAX = 16
"""The longest body `grease_frame` draws."""
_GREASE_INDEX_MIN = 4
"""0x1f * 4 + 0x21 = 0x9d is the first greased type in the extension range."""
_GREASE_INDEX_MAX = (0x3FFF - 0x21) // 0x1F + 1
"""Keeps greased types within two-byte varints (the largest is 0x3ff2)."""


class FrameDecoder:
    """Turns the bytes of one stream into frames, bounded and strict.

    `sender` names who writes the stream; frames that peer may not send are FRAME_UNEXPECTED.
    None accepts every frame type (for tools and tests). Unknown frame types from 0x80 up are
    skipped, as docs/PROTOCOL.md requires; unknown types below 0x80 are UNKNOWN_FRAME_TYPE.
    """

    __slots__ = ("_allowed", "_buffer", "_config", "_ended", "_error", "skipped_frame_count")

    def __init__(self, *, config: WireConfig = DEFAULT_CONFIG, sender: PeerRole | None) -> None:
        self._config = config
        self._allowed = _ANY_PEER if sender is None else ALLOWED_FRAME_TYPES[sender]
        self._buffer = bytearray()
        self._ended = False
        self._error: tuple[str, int] | None = None
        self.skipped_frame_count = 0
        """How many unknown extension (or greased) frames were skipped."""

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buffer)

    @property
    def poisoned(self) -> bool:
        """Whether the stream broke the protocol; every later call raises."""
        return self._error is not None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the stream; b"" means the peer ended it."""
        self._raise_if_poisoned()
        if self._ended:
            raise LocalProtocolError("receive_data() after end of stream")
        if len(self._buffer) > self._config.buffered_bytes_max:
            raise LocalProtocolError("drain next_frame() until NEED_DATA before receive_data()")
        if data:
            self._buffer += data
        else:
            self._ended = True

    def next_frame(self) -> Frame | DecoderSignal:
        """The next complete frame, NEED_DATA, or END_OF_STREAM after a clean end."""
        if self._error is not None:
            self._raise_if_poisoned()
        try:
            # The common case in one call: a complete frame with a one-byte type (or
            # CLUSTER_MESSAGE's two-byte one) and a short length at the front. With the C codec
            # this decodes straight from the buffer.
            popped = pop_frame(self._buffer, self._allowed, self._config)
            if popped is not None:
                return popped
            while True:
                frame = self._next_frame()
                if frame is not None:
                    return frame
        except RemoteProtocolError as error:
            self._poison(error)
            raise

    def next_frames(self, limit: int = -1) -> list[Frame]:
        """The complete frames with the common header at the front of the buffer, in one call
        (at most `limit` of them; no bound when negative), possibly none.

        A batch is what repeated `next_frame` calls would return, without their per-call cost;
        it stops early at anything else (a long header, an incomplete frame, an extension, the
        end of the stream), which `next_frame` then handles. An invalid frame raises only when
        it comes first, so the frames before it are delivered and the error comes next. A batch
        ends after an ERROR frame: the peer closes, and what follows is not delivered with it.
        """
        if self._error is not None:
            self._raise_if_poisoned()
        try:
            return pop_frames(self._buffer, self._allowed, limit, self._config)
        except RemoteProtocolError as error:
            self._poison(error)
            raise

    def _poison(self, error: RemoteProtocolError) -> None:
        """Remember the first violation and drop the buffer: nothing after it can be trusted."""
        self._error = (str(error), error.error_code)
        self._buffer = bytearray()

    def _next_frame(self) -> Frame | DecoderSignal | None:
        """One step: a frame, a signal, or None after skipping an unknown extension frame."""
        buffer = self._buffer
        available = len(buffer)
        if available == 0:
            return END_OF_STREAM if self._ended else NEED_DATA
        first = buffer[0]
        if first < 0x40 and first in self._allowed and available > 2 and buffer[1] < 0x80:
            # The common header: a one-byte known type and a length below 2**14, which is under
            # every permitted frame_bytes_max, so no other check applies.
            second = buffer[1]
            frame_type = first
            known = True
            if second < 0x40:
                size = second
                header_size = 2
            else:
                size = ((second & 0x3F) << 8) | buffer[2]
                header_size = 3
        else:
            header = self._parse_header(buffer, available)
            if header is None:
                return self._incomplete()
            frame_type, header_size, size, known = header
        end = header_size + size
        if available < end:
            return self._incomplete()
        if not known:
            del buffer[:end]
            self.skipped_frame_count += 1
            return None
        data = bytes(buffer[:end])
        del buffer[:end]
        return decode_body(frame_type, data, header_size, self._config)

    def _parse_header(self, buffer: bytearray, available: int) -> tuple[int, int, int, bool] | None:
        """Type, header size, body size and whether to decode; None if the header is incomplete."""
        type_size = _VARINT_SIZES[buffer[0] >> 6]
        if available <= type_size:
            return None
        length_size = _VARINT_SIZES[buffer[type_size] >> 6]
        header_size = type_size + length_size
        if available < header_size:
            return None
        frame_type = int.from_bytes(buffer[:type_size]) & ((1 << (8 * type_size - 2)) - 1)
        size = int.from_bytes(buffer[type_size:header_size]) & ((1 << (8 * length_size - 2)) - 1)
        known = self._check_header(frame_type, type_size, size)
        return frame_type, header_size, size, known

    def _check_header(self, frame_type: int, type_size: int, size: int) -> bool:
        """Validate a frame header; return whether the frame is to be decoded (not skipped)."""
        if type_size > 1 and frame_type < (1 << (8 * (type_size >> 1) - 2)):
            raise RemoteProtocolError(
                "frame type not in its shortest encoding", error_code=ErrorCode.FRAME_ENCODING_ERROR
            )
        if size > self._config.frame_bytes_max:
            raise RemoteProtocolError(
                f"frame of {size} bytes exceeds frame_bytes_max {self._config.frame_bytes_max}",
                error_code=ErrorCode.FRAME_TOO_LARGE,
            )
        if frame_type in self._allowed:
            return True
        if frame_type >= EXTENSION_FRAME_TYPES_MIN:
            return False
        if frame_type in _ANY_PEER:
            raise RemoteProtocolError(
                f"{FrameType(frame_type).name} may not be sent by this peer",
                error_code=ErrorCode.FRAME_UNEXPECTED,
            )
        raise RemoteProtocolError(
            f"unknown frame type {frame_type:#x}", error_code=ErrorCode.UNKNOWN_FRAME_TYPE
        )

    def _incomplete(self) -> Literal[DecoderSignal.NEED_DATA]:
        if self._ended:
            raise RemoteProtocolError(
                "stream ended inside a frame", error_code=ErrorCode.TRUNCATED_STREAM
            )
        return NEED_DATA

    def _raise_if_poisoned(self) -> None:
        if self._error is not None:
            message, error_code = self._error
            raise RemoteProtocolError(message, error_code=error_code)


def grease_frame(rng: random.Random) -> bytes:
    """A frame of a greased type with a short random body, which every receiver must skip.

    Senders include one now and then so that peers which fail on unknown types are found early.
    """
    index = rng.randrange(_GREASE_INDEX_MIN, _GREASE_INDEX_MAX)
    body = rng.randbytes(rng.randrange(GREASE_BODY_BYTES_MAX + 1))
    return encode_varint(0x1F * index + 0x21) + encode_varint(len(body)) + body
