"""MAP_REQUEST carries the client's map version and 0..credentials_max credentials, as HELLO."""

from __future__ import annotations

import pytest

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import (
    Credential,
    ErrorCode,
    FrameType,
    Hello,
    MapRequest,
    WireConfig,
    encode_varint,
)
from forehand.wire._implementation import Codec

SESSION = bytes(range(16))
CREDENTIAL = Credential(SESSION, b"sealed")


def framed(body: bytes) -> bytes:
    """A MAP_REQUEST header around a hand-made body."""
    return encode_varint(FrameType.MAP_REQUEST) + encode_varint(len(body)) + body


def credentials_bytes(count: int) -> bytes:
    """A credential list of `count` entries, as HELLO encodes it."""
    entry = SESSION + encode_varint(len(CREDENTIAL.credential)) + CREDENTIAL.credential
    return encode_varint(count) + entry * count


def test_credentials_follow_the_map_version_as_in_hello(codec: Codec) -> None:
    """The credential list after map_version has the bytes of HELLO's credential list."""
    credentials = (CREDENTIAL, Credential(bytes(16), b""))
    encoded = codec.encode_frame(MapRequest(map_version=300, credentials=credentials))
    hello = codec.encode_frame(Hello(versions=(1,), client_id=SESSION, credentials=credentials))
    assert encoded[2:4] == encode_varint(300)
    assert encoded[4:] == hello[2 + 1 + 1 + 16 :]
    assert codec.decode_frame(encoded) == MapRequest(map_version=300, credentials=credentials)


def test_no_credentials_is_one_zero_count(codec: Codec) -> None:
    """A request without credentials ends with a zero count (the count is not optional)."""
    assert codec.encode_frame(MapRequest(map_version=5)) == framed(b"\x05\x00")
    with pytest.raises(RemoteProtocolError) as caught:
        codec.decode_frame(framed(b"\x05"))
    assert caught.value.error_code == ErrorCode.FRAME_ENCODING_ERROR


def test_credentials_max_bounds_both_sides(codec: Codec) -> None:
    """credentials_max credentials encode and decode; one more is refused on either side."""
    bound = WireConfig().credentials_max
    full = MapRequest(map_version=1, credentials=(CREDENTIAL,) * bound)
    assert codec.decode_frame(codec.encode_frame(full)) == full
    with pytest.raises(LocalProtocolError):
        codec.encode_frame(MapRequest(map_version=1, credentials=(CREDENTIAL,) * (bound + 1)))
    with pytest.raises(RemoteProtocolError) as caught:
        codec.decode_frame(framed(b"\x01" + credentials_bytes(bound + 1)))
    assert caught.value.error_code == ErrorCode.FRAME_ENCODING_ERROR


@pytest.mark.parametrize(
    "credential",
    [Credential(b"short", b"x"), Credential(SESSION, bytes(WireConfig().credential_bytes_max + 1))],
    ids=["short-session-id", "long-credential"],
)
def test_encoder_refuses_a_malformed_credential(codec: Codec, credential: Credential) -> None:
    """A session id that is not 16 bytes, or a credential over the bound, does not encode."""
    with pytest.raises(LocalProtocolError):
        codec.encode_frame(MapRequest(map_version=1, credentials=(credential,)))


def test_truncated_or_padded_credentials_are_malformed(codec: Codec) -> None:
    """Every proper prefix of the body, and a trailing byte, fail to decode."""
    body = codec.encode_frame(MapRequest(map_version=9, credentials=(CREDENTIAL,)))[2:]
    for size in range(len(body)):
        with pytest.raises(RemoteProtocolError):
            codec.decode_frame(framed(body[:size]))
    with pytest.raises(RemoteProtocolError):
        codec.decode_frame(framed(body + b"\x00"))
