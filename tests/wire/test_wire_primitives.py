"""Varints follow RFC 9000 s.16 to the byte; names and endpoints encode as PROTOCOL.md says."""

from __future__ import annotations

import pytest

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import VARINT_MAX, Endpoint, encode_varint, pull_varint
from forehand.wire._primitives import encode_endpoint, encode_name, pull_endpoint, pull_name

# RFC 9000 Appendix A.1, "Sample Variable-Length Integer Decoding".
RFC9000_VECTORS = [
    ("c2197c5eff14e88c", 151_288_809_941_952_652),
    ("9d7f3e7d", 494_878_333),
    ("7bbd", 15_293),
    ("25", 37),
    ("4025", 37),
]


@pytest.mark.parametrize(("encoded", "value"), RFC9000_VECTORS)
def test_rfc9000_vectors_decode(encoded: str, value: int) -> None:
    """Each RFC 9000 sample decodes to its value and consumes exactly its bytes."""
    data = bytes.fromhex(encoded)
    assert pull_varint(data, 0) == (value, len(data))


@pytest.mark.parametrize(("encoded", "value"), RFC9000_VECTORS[:4])
def test_rfc9000_vectors_encode(encoded: str, value: int) -> None:
    """The shortest-form samples are exactly what encode_varint produces."""
    assert encode_varint(value).hex() == encoded


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 1),
        (63, 1),
        (64, 2),
        (16_383, 2),
        (16_384, 4),
        (2**30 - 1, 4),
        (2**30, 8),
        (VARINT_MAX, 8),
    ],
)
def test_varint_uses_the_shortest_length(value: int, size: int) -> None:
    """Boundary values take the length RFC 9000 assigns them and read back unchanged."""
    encoded = encode_varint(value)
    assert len(encoded) == size
    assert pull_varint(b"\xff" + encoded, 1) == (value, size + 1)


@pytest.mark.parametrize("value", [-1, VARINT_MAX + 1])
def test_varint_out_of_range_is_a_local_error(value: int) -> None:
    """Values a varint cannot carry are the caller's mistake."""
    with pytest.raises(LocalProtocolError):
        encode_varint(value)


@pytest.mark.parametrize("encoded", ["", "40", "80aabb", "c0010203040506"])
def test_truncated_varint_raises_index_error(encoded: str) -> None:
    """A varint cut short is detected, never read from beyond the data."""
    with pytest.raises(IndexError):
        pull_varint(bytes.fromhex(encoded), 0)


def test_name_round_trip_and_bounds() -> None:
    """Names carry an 8-bit length; empty or over-long names are refused both ways."""
    encoded = encode_name("feature/vidéo", 64, name="part")
    assert encoded[0] == len("feature/vidéo".encode())
    assert pull_name(encoded, 0, 64) == ("feature/vidéo", len(encoded))
    with pytest.raises(LocalProtocolError):
        encode_name("", 64, name="part")
    with pytest.raises(LocalProtocolError):
        encode_name("x" * 65, 64, name="part")
    with pytest.raises(RemoteProtocolError):
        pull_name(b"\x00", 0, 64)
    with pytest.raises(RemoteProtocolError):
        pull_name(b"\x05abcde", 0, 4)
    with pytest.raises(UnicodeDecodeError):
        pull_name(b"\x02\xc3\x28", 0, 64)


@pytest.mark.parametrize(
    ("host", "encoded_address"),
    [
        ("192.0.2.7", "01c0000207"),
        ("2001:db8::1", "0220010db8000000000000000000000001"),
        ("edge-1.example.net", "0312656467652d312e6578616d706c652e6e6574"),
    ],
)
def test_endpoint_address_forms(host: str, encoded_address: str) -> None:
    """IPv4 and IPv6 literals travel as raw addresses, anything else as a DNS name."""
    endpoint = Endpoint(server_id="s1", host=host, port=4433)
    encoded = encode_endpoint(endpoint, 64)
    assert encoded.hex() == "027331" + encoded_address + "1151"
    assert pull_endpoint(encoded, 0, 64) == (endpoint, len(encoded))


@pytest.mark.parametrize(
    "host",
    ["2001:DB8::1", "2001:db8:0::1", "fe80::1%eth0", "1.2.3", "256.1.1.1", "bad_name", "-a.b", ""],
)
def test_endpoint_refuses_non_canonical_or_invalid_hosts(host: str) -> None:
    """Only canonical literals and LDH names are sent, so equal endpoints encode equally."""
    with pytest.raises(LocalProtocolError):
        encode_endpoint(Endpoint(server_id="s1", host=host, port=1), 64)


@pytest.mark.parametrize("port", [0, 65_536])
def test_endpoint_refuses_invalid_ports(port: int) -> None:
    """Ports are 1..65535."""
    with pytest.raises(LocalProtocolError):
        encode_endpoint(Endpoint(server_id="s1", host="192.0.2.1", port=port), 64)


@pytest.mark.parametrize(
    "encoded",
    [
        "027331" + "0305" + "312e322e33" + "1151",  # DNS name "1.2.3" would read as IPv4
        "027331" + "0304" + "615f6263" + "1151",  # "a_bc" is not an LDH name
        "027331" + "09" + "1151",  # unknown address type
        "027331" + "01c0000207" + "0000",  # port 0
        "007331" + "01c0000207" + "1151",  # empty server id
    ],
)
def test_endpoint_decoding_rejects_invalid_encodings(encoded: str) -> None:
    """A peer cannot smuggle an address that would not encode back the same way."""
    with pytest.raises(RemoteProtocolError):
        pull_endpoint(bytes.fromhex(encoded), 0, 64)


def test_endpoint_decoding_rejects_truncation() -> None:
    """An endpoint cut anywhere is detected."""
    encoded = encode_endpoint(Endpoint(server_id="s1", host="2001:db8::1", port=9), 64)
    for size in range(len(encoded)):
        with pytest.raises((IndexError, ValueError)):
            pull_endpoint(encoded[:size], 0, 64)
