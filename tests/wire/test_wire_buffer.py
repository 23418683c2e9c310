"""Buffer pushes and pulls every primitive symmetrically and blames the right side on errors."""

from __future__ import annotations

import pytest

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import DEFAULT_CONFIG, Buffer, Endpoint, ErrorCode


def test_push_then_pull_every_primitive() -> None:
    """What push_* writes, pull_* reads back in the same order, and nothing is left over."""
    endpoint = Endpoint(server_id="edge-1", host="10.0.0.1", port=4433)
    out = Buffer()
    out.push_varint(494_878_333)
    out.push_uint8(0xAB)
    out.push_uint16(0xBEEF)
    out.push_fixed(b"\x01" * 16, 16, name="session_id")
    out.push_bytes_prefixed(b"token", 64, name="token")
    out.push_text("", 64, name="message")
    out.push_text("héllo", 64, name="message")
    out.push_name("cart", 64, name="part")
    out.push_count(3, 8, name="list")
    out.push_endpoint(endpoint, DEFAULT_CONFIG)
    out.push_bytes(b"rest")
    data = out.data()

    source = Buffer(data)
    assert source.pull_varint() == 494_878_333
    assert source.pull_uint8() == 0xAB
    assert source.pull_uint16() == 0xBEEF
    assert source.pull_bytes(16) == b"\x01" * 16
    assert source.pull_bytes_prefixed(64) == b"token"
    assert source.pull_text(64) == ""
    assert source.pull_text(64) == "héllo"
    assert source.pull_name(64) == "cart"
    assert source.pull_count(8) == 3
    assert source.pull_endpoint(DEFAULT_CONFIG) == endpoint
    assert source.remaining == 4
    assert source.pull_rest() == b"rest"
    assert source.at_end()
    source.expect_end()


def test_buffer_starts_at_an_offset() -> None:
    """A Buffer over a whole frame can start at its body."""
    source = Buffer(b"\x10\x02\x07\x08", offset=2)
    assert source.offset == 2
    assert source.pull_uint8() == 7


@pytest.mark.parametrize(
    "pull",
    [
        lambda b: b.pull_varint(),
        lambda b: b.pull_bytes(4),
        lambda b: b.pull_uint16(),
        lambda b: b.pull_bytes_prefixed(64),
        lambda b: b.pull_name(64),
        lambda b: b.pull_text(64),
        lambda b: b.pull_endpoint(DEFAULT_CONFIG),
    ],
)
def test_pull_past_the_end_blames_the_peer(pull: object) -> None:
    """Reading beyond the body is the peer's FRAME_ENCODING_ERROR, not an IndexError."""
    with pytest.raises(RemoteProtocolError) as caught:
        pull(Buffer(b"\x43"))  # type: ignore[operator]
    assert caught.value.error_code == ErrorCode.FRAME_ENCODING_ERROR


def test_pull_bounds_and_validity() -> None:
    """Over-long fields, over-long lists, empty required lists, bad UTF-8 and trailing bytes."""
    with pytest.raises(RemoteProtocolError):
        Buffer(b"\x05hello").pull_bytes_prefixed(4)
    with pytest.raises(RemoteProtocolError):
        Buffer(b"\x09").pull_count(8)
    with pytest.raises(RemoteProtocolError):
        Buffer(b"\x00").pull_count(8, allow_empty=False)
    with pytest.raises(RemoteProtocolError):
        Buffer(b"\x02\xc3\x28").pull_text(64)
    with pytest.raises(RemoteProtocolError):
        Buffer(b"\x02\xc3\x28").pull_name(64)
    with pytest.raises(RemoteProtocolError):
        Buffer(b"\x01\x02").expect_end()


def test_push_refuses_what_the_wire_cannot_carry() -> None:
    """Pushing an invalid value is the caller's LocalProtocolError."""
    out = Buffer()
    with pytest.raises(LocalProtocolError):
        out.push_uint8(256)
    with pytest.raises(LocalProtocolError):
        out.push_uint16(-1)
    with pytest.raises(LocalProtocolError):
        out.push_fixed(b"short", 16, name="session_id")
    with pytest.raises(LocalProtocolError):
        out.push_bytes_prefixed(b"x" * 5, 4, name="token")
    with pytest.raises(LocalProtocolError):
        out.push_name("", 64, name="part")
    with pytest.raises(LocalProtocolError):
        out.push_count(9, 8, name="targets")
    with pytest.raises(LocalProtocolError):
        out.push_count(0, 8, name="parts", allow_empty=False)
    with pytest.raises(LocalProtocolError):
        out.push_varint(-5)
    assert out.data() == b""
