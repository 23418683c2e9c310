"""Primitive encodings of `forehand/1` as plain functions over (data, offset).

RFC 9000 s.16 variable-length integers, short names and endpoints. The hot frame codecs call
these directly, without a method call per field; `Buffer` wraps the same functions for the rest.
A `pull_*` function returns the value and the offset after it and may raise IndexError or
ValueError on truncated or invalid input: callers turn those into one malformed-frame error.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from functools import lru_cache

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire._config import DNS_NAME_BYTES_MAX, VARINT_MAX
from forehand.wire._enums import AddressType, ErrorCode
from forehand.wire._frames import Endpoint

__all__ = [
    "encode_endpoint",
    "encode_name",
    "encode_varint",
    "malformed",
    "pull_endpoint",
    "pull_name",
    "pull_varint",
]

PACK_UINT16 = struct.Struct(">H").pack
_PACK_UINT32 = struct.Struct(">I").pack
_PACK_UINT64 = struct.Struct(">Q").pack
VARINT_ONE_BYTE = tuple(bytes((value,)) for value in range(0x100))
"""bytes((n,)) for every byte value, precomputed: the one-byte varints and the name lengths."""
_VARINT_TWO_BYTES_FLAG = 0x4000
_VARINT_FOUR_BYTES_FLAG = 0x8000_0000
_VARINT_EIGHT_BYTES_FLAG = 0xC000_0000_0000_0000
_VARINT_VALUE_MASKS = (0x3F, 0x3FFF, 0x3FFF_FFFF, VARINT_MAX)
PORT_MAX = 0xFFFF
"""The largest TCP or UDP port."""
_ADDRESS_BYTES: dict[int, int] = {AddressType.IPV4: 4, AddressType.IPV6: 16}
ENDPOINT_CACHE_MAX = 4096
"""How many distinct endpoints keep their encoding cached; a fleet has few servers."""
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_decoded_endpoints: dict[bytes, Endpoint] = {}
"""Endpoints by their encoding: a connection sees the same few servers again and again."""


def malformed(message: str) -> RemoteProtocolError:
    """The error for a frame body that breaks the encoding rules."""
    return RemoteProtocolError(message, error_code=ErrorCode.FRAME_ENCODING_ERROR)


def encode_varint(value: int) -> bytes:
    """The shortest RFC 9000 s.16 encoding of `value` (0 <= value < 2**62)."""
    if value < 0x4000:
        if value < 0x40:
            if value < 0:
                raise LocalProtocolError(f"varint must not be negative, got {value}")
            return VARINT_ONE_BYTE[value]
        return PACK_UINT16(value | _VARINT_TWO_BYTES_FLAG)
    if value < 0x4000_0000:
        return _PACK_UINT32(value | _VARINT_FOUR_BYTES_FLAG)
    if value <= VARINT_MAX:
        return _PACK_UINT64(value | _VARINT_EIGHT_BYTES_FLAG)
    raise LocalProtocolError(f"varint must be below 2**62, got {value}")


def pull_varint(data: bytes, offset: int) -> tuple[int, int]:
    """Read one varint at `offset`; return it and the offset after it.

    Non-shortest encodings are accepted, as RFC 9000 allows. Raises IndexError when `data` ends
    before the varint does.
    """
    first = data[offset]
    prefix = first >> 6
    if prefix == 0:
        return first, offset + 1
    end = offset + (1 << prefix)
    if end > len(data):
        raise IndexError("varint runs past the end of the data")
    if prefix == 1:
        return ((first & 0x3F) << 8) | data[offset + 1], end
    return int.from_bytes(data[offset:end]) & _VARINT_VALUE_MASKS[prefix], end


def encode_name(value: str, max_bytes: int, *, name: str) -> bytes:
    """A name: 8-bit length then 1 to `max_bytes` (at most 255) bytes of UTF-8."""
    raw = value.encode()
    size = len(raw)
    if not 0 < size <= max_bytes:
        raise LocalProtocolError(f"{name} must be 1 to {max_bytes} bytes of UTF-8, got {size}")
    return VARINT_ONE_BYTE[size] + raw


def pull_name(data: bytes, offset: int, max_bytes: int) -> tuple[str, int]:
    """Read a name: 8-bit length then 1 to `max_bytes` bytes of UTF-8."""
    size = data[offset]
    if not 0 < size <= max_bytes:
        raise malformed(f"name of {size} bytes is outside 1..{max_bytes}")
    end = offset + 1 + size
    if end > len(data):
        raise IndexError("name runs past the end of the data")
    return data[offset + 1 : end].decode(), end


@lru_cache(maxsize=ENDPOINT_CACHE_MAX)
def encode_endpoint(endpoint: Endpoint, server_id_bytes_max: int) -> bytes:
    """server_id (name) | address type (8 bits) | address | port (16 bits)."""
    server_id = encode_name(endpoint.server_id, server_id_bytes_max, name="Endpoint.server_id")
    port = endpoint.port
    if not 0 < port <= PORT_MAX:
        raise LocalProtocolError(f"Endpoint.port must be 1 to {PORT_MAX}, got {port}")
    return server_id + _encode_address(endpoint.host) + PACK_UINT16(port)


def _encode_address(host: str) -> bytes:
    """Address type and address for a host: IPv6 if it has a colon, IPv4 if it ends in digits."""
    try:
        if ":" in host:
            ipv6 = ipaddress.IPv6Address(host)
            if ipv6.scope_id is not None or ipv6.compressed != host:
                raise ValueError("IPv6 literal must be in RFC 5952 form, without a zone")
            return VARINT_ONE_BYTE[AddressType.IPV6] + ipv6.packed
        if host.rpartition(".")[2].isdigit():
            return VARINT_ONE_BYTE[AddressType.IPV4] + ipaddress.IPv4Address(host).packed
    except ValueError as error:
        raise LocalProtocolError(f"invalid IP literal {host!r}: {error}") from None
    if len(host) > DNS_NAME_BYTES_MAX or not host.isascii() or not _DNS_NAME.fullmatch(host):
        raise LocalProtocolError(f"invalid DNS name {host!r}")
    return VARINT_ONE_BYTE[AddressType.DNS] + encode_name(host, DNS_NAME_BYTES_MAX, name="host")


def pull_endpoint(data: bytes, offset: int, server_id_bytes_max: int) -> tuple[Endpoint, int]:
    """Read one endpoint; the inverse of `encode_endpoint`."""
    server_id_size = data[offset]
    if not 0 < server_id_size <= server_id_bytes_max:
        raise malformed(f"server id of {server_id_size} bytes is outside 1..{server_id_bytes_max}")
    address_at = offset + 1 + server_id_size
    address_type = data[address_at]
    address_size = _ADDRESS_BYTES.get(address_type)
    if address_size is None:
        if address_type != AddressType.DNS:
            raise malformed(f"unknown endpoint address type {address_type}")
        address_size = 1 + data[address_at + 1]
    end = address_at + 1 + address_size + 2
    if end > len(data):
        raise IndexError("endpoint runs past the end of the data")
    encoded = data[offset:end]
    endpoint = _decoded_endpoints.get(encoded)
    if endpoint is None:
        endpoint = _parse_endpoint(encoded)
        if len(_decoded_endpoints) >= ENDPOINT_CACHE_MAX:
            _decoded_endpoints.clear()
        _decoded_endpoints[encoded] = endpoint
    return endpoint, end


def _parse_endpoint(encoded: bytes) -> Endpoint:
    """Decode one whole endpoint whose size `pull_endpoint` already checked."""
    server_id, offset = pull_name(encoded, 0, len(encoded))
    address_type = encoded[offset]
    address = encoded[offset + 1 : -2]
    if address_type == AddressType.IPV4:
        host = "%d.%d.%d.%d" % tuple(address)  # noqa: UP031 - four bytes, fastest this way
    elif address_type == AddressType.IPV6:
        host = ipaddress.IPv6Address(address).compressed
    elif address_type == AddressType.DNS:
        host, _ = pull_name(address, 0, DNS_NAME_BYTES_MAX)
        _check_dns_name(host)
    else:
        raise malformed(f"unknown endpoint address type {address_type}")
    port = int.from_bytes(encoded[-2:])
    if port == 0:
        raise malformed("endpoint port 0")
    return Endpoint(server_id=server_id, host=host, port=port)


def _check_dns_name(host: str) -> None:
    """Reject names that are not LDH host names, or that would read back as an IPv4 literal."""
    if not host.isascii() or not _DNS_NAME.fullmatch(host):
        raise malformed(f"invalid DNS name in endpoint: {host!r}")
    if host.rpartition(".")[2].isdigit():
        raise malformed(f"DNS name ends in an all-numeric label: {host!r}")
