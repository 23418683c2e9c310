"""`Buffer`: a cursor with `pull_*` over received bytes and an output with `push_*`.

It wraps the functions of `_primitives` with bounds checks and clear errors. The frame codecs
use it for every frame except the hot ones (REQUEST, RESPONSE, HANDOFF), which call the
functions directly.
"""

from __future__ import annotations

from forehand.errors import LocalProtocolError
from forehand.wire._config import WireConfig
from forehand.wire._frames import Endpoint
from forehand.wire._primitives import (
    PACK_UINT16,
    VARINT_ONE_BYTE,
    encode_endpoint,
    encode_name,
    encode_varint,
    malformed,
    pull_endpoint,
    pull_name,
    pull_varint,
)

__all__ = ["Buffer"]

_UINT8_MAX = 0xFF
_UINT16_MAX = 0xFFFF


class Buffer:
    """A cursor over received bytes (`pull_*`) and an output under construction (`push_*`).

    A pull past the end, a length over its bound or invalid UTF-8 raises RemoteProtocolError
    (FRAME_ENCODING_ERROR): the bytes came from the peer. A push of a value the protocol cannot
    carry raises LocalProtocolError: the caller built an invalid frame.
    """

    __slots__ = ("_data", "_offset", "_output")

    def __init__(self, data: bytes = b"", *, offset: int = 0) -> None:
        self._data = data
        self._offset = offset
        self._output: list[bytes] = []

    @property
    def offset(self) -> int:
        """Where the next pull starts."""
        return self._offset

    @property
    def remaining(self) -> int:
        """How many bytes are left to pull."""
        return len(self._data) - self._offset

    def at_end(self) -> bool:
        """Whether every byte has been pulled."""
        return self._offset == len(self._data)

    def expect_end(self) -> None:
        """Raise unless every byte has been pulled: trailing bytes in a frame are an error."""
        if self._offset != len(self._data):
            raise malformed(f"{len(self._data) - self._offset} trailing bytes in frame body")

    def pull_varint(self) -> int:
        """Pull one variable-length integer (any of its four lengths)."""
        try:
            value, self._offset = pull_varint(self._data, self._offset)
        except IndexError:
            raise malformed("frame body ends inside a varint") from None
        return value

    def pull_bytes(self, size: int) -> bytes:
        """Pull exactly `size` bytes."""
        end = self._offset + size
        if end > len(self._data):
            raise malformed(f"frame body ends inside a {size}-byte field")
        value = self._data[self._offset : end]
        self._offset = end
        return value

    def pull_uint8(self) -> int:
        """Pull one unsigned byte."""
        return self.pull_bytes(1)[0]

    def pull_uint16(self) -> int:
        """Pull a big-endian unsigned 16-bit integer."""
        return int.from_bytes(self.pull_bytes(2))

    def pull_bytes_prefixed(self, max_bytes: int) -> bytes:
        """Pull a varint length, at most `max_bytes`, then that many bytes."""
        size = self.pull_varint()
        if size > max_bytes:
            raise malformed(f"field of {size} bytes exceeds its bound of {max_bytes}")
        return self.pull_bytes(size)

    def pull_text(self, max_bytes: int) -> str:
        """Pull free text: a varint length, at most `max_bytes`, then UTF-8 (may be empty)."""
        try:
            return self.pull_bytes_prefixed(max_bytes).decode()
        except UnicodeDecodeError:
            raise malformed("text field is not valid UTF-8") from None

    def pull_name(self, max_bytes: int) -> str:
        """Pull a name: an 8-bit length, 1 to `max_bytes`, then UTF-8."""
        try:
            value, self._offset = pull_name(self._data, self._offset, max_bytes)
        except (IndexError, UnicodeDecodeError):
            raise malformed("malformed name field") from None
        return value

    def pull_count(self, max_items: int, *, allow_empty: bool = True) -> int:
        """Pull a list's element count, at most `max_items`."""
        count = self.pull_varint()
        if count > max_items:
            raise malformed(f"list of {count} items exceeds its bound of {max_items}")
        if count == 0 and not allow_empty:
            raise malformed("empty list where at least one item is required")
        return count

    def pull_endpoint(self, config: WireConfig) -> Endpoint:
        """Pull one endpoint (server id, address, port)."""
        try:
            endpoint, self._offset = pull_endpoint(
                self._data, self._offset, config.server_id_bytes_max
            )
        except (IndexError, ValueError):
            raise malformed("malformed endpoint") from None
        return endpoint

    def pull_rest(self) -> bytes:
        """Pull every remaining byte (the last field of some frames)."""
        value = self._data[self._offset :]
        self._offset = len(self._data)
        return value

    def push_varint(self, value: int) -> None:
        """Push one variable-length integer in its shortest form."""
        self._output.append(encode_varint(value))

    def push_bytes(self, value: bytes) -> None:
        """Push raw bytes."""
        self._output.append(value)

    def push_fixed(self, value: bytes, size: int, *, name: str) -> None:
        """Push a field of exactly `size` bytes."""
        if len(value) != size:
            raise LocalProtocolError(f"{name} must be {size} bytes, got {len(value)}")
        self._output.append(value)

    def push_uint8(self, value: int) -> None:
        """Push one unsigned byte."""
        if not 0 <= value <= _UINT8_MAX:
            raise LocalProtocolError(f"uint8 out of range: {value}")
        self._output.append(VARINT_ONE_BYTE[value])

    def push_uint16(self, value: int) -> None:
        """Push a big-endian unsigned 16-bit integer."""
        if not 0 <= value <= _UINT16_MAX:
            raise LocalProtocolError(f"uint16 out of range: {value}")
        self._output.append(PACK_UINT16(value))

    def push_bytes_prefixed(self, value: bytes, max_bytes: int, *, name: str) -> None:
        """Push a varint length then the bytes; the length must be at most `max_bytes`."""
        if len(value) > max_bytes:
            raise LocalProtocolError(f"{name} of {len(value)} bytes exceeds {max_bytes}")
        self._output.append(encode_varint(len(value)))
        self._output.append(value)

    def push_text(self, value: str, max_bytes: int, *, name: str) -> None:
        """Push free text: a varint length then UTF-8 (may be empty)."""
        self.push_bytes_prefixed(value.encode(), max_bytes, name=name)

    def push_name(self, value: str, max_bytes: int, *, name: str) -> None:
        """Push a name: an 8-bit length, 1 to `max_bytes`, then UTF-8."""
        self._output.append(encode_name(value, max_bytes, name=name))

    def push_count(
        self, count: int, max_items: int, *, name: str, allow_empty: bool = True
    ) -> None:
        """Push a list's element count, checked against its bound."""
        if count > max_items:
            raise LocalProtocolError(f"{name} has {count} items, more than {max_items}")
        if count == 0 and not allow_empty:
            raise LocalProtocolError(f"{name} must not be empty")
        self._output.append(encode_varint(count))

    def push_endpoint(self, endpoint: Endpoint, config: WireConfig) -> None:
        """Push one endpoint (server id, address, port)."""
        self._output.append(encode_endpoint(endpoint, config.server_id_bytes_max))

    def data(self) -> bytes:
        """Everything pushed so far, as one bytes object."""
        return b"".join(self._output)
