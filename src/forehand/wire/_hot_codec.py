"""Codecs of the frames that dominate traffic: REQUEST, RESPONSE and HANDOFF.

Their bodies open with a fixed-layout head read and written by one precompiled `struct.Struct`,
and the rest is parsed with the offset functions of `_primitives`, without a method call per
field. These functions are the reference that the optional C accelerator `_speedups.c` follows
byte for byte and error for error; `_implementation` chooses which of the two runs, and
benchmarks/bench_wire.py measures both.

A decoder takes the data and the offset where the body starts; the body runs to the end of the
data. It may raise IndexError, ValueError or struct.error on truncated or invalid input, which
`decode_body` turns into RemoteProtocolError(FRAME_ENCODING_ERROR).
"""

from __future__ import annotations

import struct

from forehand.errors import LocalProtocolError
from forehand.wire._config import SESSION_ID_BYTES, VARINT_MAX, WireConfig
from forehand.wire._enums import FrameType, HandoffFlag, ReasonCode, ResponseStatus
from forehand.wire._frames import Extension, Handoff, Request, Response
from forehand.wire._primitives import (
    VARINT_ONE_BYTE,
    encode_endpoint,
    encode_varint,
    malformed,
    pull_endpoint,
    pull_varint,
)

__all__ = [
    "decode_handoff",
    "decode_request",
    "decode_response",
    "encode_handoff",
    "encode_request",
    "encode_response",
    "pull_bytes",
    "pull_names",
]

_REQUEST_HEAD = struct.Struct(">16sQQBB")
"""session_id, request_id, map_version, part length, op length."""
_REQUEST_FRAME_HEAD = struct.Struct(">BH16sQQBB")
"""Frame type and two-byte length, then the REQUEST head: the common case in one pack."""
_RESPONSE_HEAD = struct.Struct(">16sQQB")
"""session_id, request_id, map_version, status."""
_RESPONSE_FRAME_HEAD = struct.Struct(">BH16sQQB")
"""Frame type and two-byte length, then the RESPONSE head."""
_WAIT_BUDGET = struct.Struct(">I")
"""A REQUEST's wait budget in milliseconds, after the head when the op length byte flags it."""
_WAIT_BUDGET_FLAG = 0x80
"""The high bit of REQUEST's op length byte: a wait budget follows the head."""
_WAIT_BUDGET_MS_MAX = 0xFFFF_FFFF
_HANDOFF_HEAD = struct.Struct(">16sQQHHI")
"""session_id, sequence, map_version, reason, flags, deadline_ms."""
_TWO_BYTE_LENGTH_FLAG = 0x4000
_new_tuple = tuple.__new__
"""Builds a NamedTuple from a tuple without its Python-level __new__, at half the cost."""
# Plain ints and bound methods: enum member and attribute lookups cost more than the packing.
_REQUEST_TYPE = int(FrameType.REQUEST)
_RESPONSE_TYPE = int(FrameType.RESPONSE)
_REQUEST_HEAD_BYTES = _REQUEST_HEAD.size
_RESPONSE_HEAD_BYTES = _RESPONSE_HEAD.size
_pack_request_frame_head = _REQUEST_FRAME_HEAD.pack
_unpack_request_head = _REQUEST_HEAD.unpack_from
_pack_response_frame_head = _RESPONSE_FRAME_HEAD.pack
_unpack_response_head = _RESPONSE_HEAD.unpack_from
_STATUSES = {int(status): status for status in ResponseStatus}
_REASON_CODES = {int(code): code for code in ReasonCode}
_COMMON_FLAGS = {int(flags): HandoffFlag(flags) for flags in range(8)}


def _frame_bytes(frame_type: FrameType, size: int, config: WireConfig) -> bytes:
    """Type and length of a frame whose body does not fit the fused fast path."""
    if size > config.frame_bytes_max:
        raise LocalProtocolError(f"{frame_type.name} body of {size} bytes exceeds frame_bytes_max")
    return encode_varint(frame_type) + encode_varint(size)


def _check_head(session_id: bytes, first: int, second: int) -> None:
    """The fixed heads hold 62-bit integers and a 16-byte session id; refuse anything else."""
    if len(session_id) != SESSION_ID_BYTES:
        raise LocalProtocolError(f"session_id must be {SESSION_ID_BYTES} bytes")
    if not (0 <= first <= VARINT_MAX and 0 <= second <= VARINT_MAX):
        raise LocalProtocolError("request ids, sequences and map versions must be 0..2**62-1")


def encode_request(frame: Request, config: WireConfig) -> bytes:
    """REQUEST: head, part, op, payload (the rest of the body)."""
    if frame.wait_budget_ms is not None:
        return _encode_budgeted_request(frame, config)
    part = frame.part.encode()
    op = frame.op.encode()
    payload = frame.payload
    part_size = len(part)
    op_size = len(op)
    if not (
        0 < part_size <= config.part_name_bytes_max and 0 < op_size <= config.op_name_bytes_max
    ):
        raise LocalProtocolError(f"Request part and op must be 1 to their bound bytes: {frame}")
    session_id = frame.session_id
    request_id = frame.request_id
    map_version = frame.map_version
    if len(session_id) != SESSION_ID_BYTES or not 0 <= (request_id | map_version) <= VARINT_MAX:
        _check_head(session_id, request_id, map_version)
    size = _REQUEST_HEAD_BYTES + part_size + op_size + len(payload)
    if 0x40 <= size < 0x4000:
        head = _pack_request_frame_head(
            _REQUEST_TYPE,
            size | _TWO_BYTE_LENGTH_FLAG,
            session_id,
            request_id,
            map_version,
            part_size,
            op_size,
        )
    else:
        head = _frame_bytes(FrameType.REQUEST, size, config) + _REQUEST_HEAD.pack(
            session_id, request_id, map_version, part_size, op_size
        )
    return b"".join((head, part, op, payload))


def _encode_budgeted_request(frame: Request, config: WireConfig) -> bytes:
    """REQUEST with a wait budget: the op length byte's high bit set, the budget after the head.

    Off the hot path: only calls with a timeout of their own carry a budget."""
    budget_ms = frame.wait_budget_ms
    if (
        isinstance(budget_ms, bool)
        or not isinstance(budget_ms, int)
        or not 0 <= budget_ms <= _WAIT_BUDGET_MS_MAX
    ):
        raise LocalProtocolError(f"Request.wait_budget_ms must be None or 0..2**32-1: {frame}")
    part = frame.part.encode()
    op = frame.op.encode()
    part_size = len(part)
    op_size = len(op)
    if not (
        0 < part_size <= config.part_name_bytes_max and 0 < op_size <= config.op_name_bytes_max
    ):
        raise LocalProtocolError(f"Request part and op must be 1 to their bound bytes: {frame}")
    _check_head(frame.session_id, frame.request_id, frame.map_version)
    size = _REQUEST_HEAD_BYTES + _WAIT_BUDGET.size + part_size + op_size + len(frame.payload)
    head = _REQUEST_HEAD.pack(
        frame.session_id,
        frame.request_id,
        frame.map_version,
        part_size,
        op_size | _WAIT_BUDGET_FLAG,
    )
    return b"".join(
        (
            _frame_bytes(FrameType.REQUEST, size, config),
            head,
            _WAIT_BUDGET.pack(budget_ms),
            part,
            op,
            frame.payload,
        )
    )


def decode_request(data: bytes, start: int, config: WireConfig) -> Request:
    """The inverse of `encode_request`."""
    session_id, request_id, map_version, part_size, op_size = _unpack_request_head(data, start)
    if (request_id | map_version) > VARINT_MAX:
        raise malformed("REQUEST request_id or map_version exceeds 2**62-1")
    if not (
        0 < part_size <= config.part_name_bytes_max and 0 < op_size <= config.op_name_bytes_max
    ):
        # A flagged op length is above every bound, so the common REQUEST never comes here.
        return _decode_budgeted_request(data, start, config)
    part_start = start + _REQUEST_HEAD_BYTES
    op_start = part_start + part_size
    payload_start = op_start + op_size
    if payload_start > len(data):
        raise malformed("REQUEST body ends inside its op name")
    return Request(
        request_id=request_id,
        session_id=session_id,
        part=data[part_start:op_start].decode(),
        op=data[op_start:payload_start].decode(),
        map_version=map_version,
        payload=data[payload_start:],
    )


def _decode_budgeted_request(data: bytes, start: int, config: WireConfig) -> Request:
    """A REQUEST whose op length byte is flagged: the wait budget follows the head. A length out
    of bounds without the flag, or with it, is malformed."""
    session_id, request_id, map_version, part_size, op_size = _unpack_request_head(data, start)
    flagged = op_size & _WAIT_BUDGET_FLAG
    op_size ^= flagged
    if not (
        flagged
        and 0 < part_size <= config.part_name_bytes_max
        and 0 < op_size <= config.op_name_bytes_max
    ):
        raise malformed(f"REQUEST part ({part_size}) or op ({op_size}) length out of bounds")
    budget_start = start + _REQUEST_HEAD_BYTES
    part_start = budget_start + _WAIT_BUDGET.size
    op_start = part_start + part_size
    payload_start = op_start + op_size
    if part_start > len(data):
        raise malformed("REQUEST body ends inside its wait budget")
    if payload_start > len(data):
        raise malformed("REQUEST body ends inside its op name")
    return Request(
        request_id=request_id,
        session_id=session_id,
        part=data[part_start:op_start].decode(),
        op=data[op_start:payload_start].decode(),
        map_version=map_version,
        payload=data[payload_start:],
        wait_budget_ms=_WAIT_BUDGET.unpack_from(data, budget_start)[0],
    )


def encode_response(frame: Response, config: WireConfig) -> bytes:
    """RESPONSE: head, payload (the rest of the body)."""
    session_id = frame.session_id
    request_id = frame.request_id
    map_version = frame.map_version
    if len(session_id) != SESSION_ID_BYTES or not 0 <= (request_id | map_version) <= VARINT_MAX:
        _check_head(session_id, request_id, map_version)
    payload = frame.payload
    size = _RESPONSE_HEAD_BYTES + len(payload)
    if 0x40 <= size < 0x4000:
        head = _pack_response_frame_head(
            _RESPONSE_TYPE,
            size | _TWO_BYTE_LENGTH_FLAG,
            session_id,
            request_id,
            map_version,
            frame.status,
        )
    else:
        head = _frame_bytes(FrameType.RESPONSE, size, config) + _RESPONSE_HEAD.pack(
            session_id, request_id, map_version, frame.status
        )
    return head + payload


def decode_response(data: bytes, start: int, config: WireConfig) -> Response:
    """The inverse of `encode_response`; an unknown status is malformed."""
    session_id, request_id, map_version, status_value = _unpack_response_head(data, start)
    if (request_id | map_version) > VARINT_MAX:
        raise malformed("RESPONSE request_id or map_version exceeds 2**62-1")
    status = _STATUSES.get(status_value)
    if status is None:
        raise malformed(f"unknown RESPONSE status {status_value}")
    return Response(
        request_id=request_id,
        session_id=session_id,
        status=status,
        map_version=map_version,
        payload=data[start + _RESPONSE_HEAD_BYTES :],
    )


def encode_handoff(frame: Handoff, config: WireConfig) -> bytes:
    """HANDOFF: head, current, targets, token, parts, extensions."""
    targets = frame.targets
    if not 0 < len(targets) <= config.targets_max:
        raise LocalProtocolError(f"Handoff.targets must hold 1 to {config.targets_max} endpoints")
    _check_head(frame.session_id, frame.sequence, frame.map_version)
    server_id_max = config.server_id_bytes_max
    try:
        head = _HANDOFF_HEAD.pack(
            frame.session_id,
            frame.sequence,
            frame.map_version,
            frame.reason,
            frame.flags,
            frame.deadline_ms,
        )
    except struct.error as error:
        raise LocalProtocolError(
            f"Handoff reason, flags or deadline_ms out of range: {error}"
        ) from None
    pieces = [head, encode_endpoint(frame.current, server_id_max), encode_varint(len(targets))]
    for target in targets:
        pieces.append(encode_endpoint(target, server_id_max))
    pieces.append(encode_bytes(frame.token, config.token_bytes_max, name="Handoff.token"))
    pieces.append(encode_names(frame.parts, config, "Handoff"))
    pieces.append(_encode_extensions(frame.extensions, config))
    body = b"".join(pieces)
    return _frame_bytes(FrameType.HANDOFF, len(body), config) + body


def decode_handoff(data: bytes, start: int, config: WireConfig) -> Handoff:
    """The inverse of `encode_handoff`; unknown reasons mean UNSPECIFIED, unknown flags stay."""
    session_id, sequence, map_version, reason, flags, deadline_ms = _HANDOFF_HEAD.unpack_from(
        data, start
    )
    if (sequence | map_version) > VARINT_MAX:
        raise malformed("HANDOFF sequence or map_version exceeds 2**62-1")
    server_id_max = config.server_id_bytes_max
    current, offset = pull_endpoint(data, start + _HANDOFF_HEAD.size, server_id_max)
    count = data[offset]
    if count < 0x40:
        offset += 1
    else:
        count, offset = pull_varint(data, offset)
    if not 0 < count <= config.targets_max:
        raise malformed(f"HANDOFF with {count} targets, outside 1..{config.targets_max}")
    targets = []
    for _ in range(count):
        target, offset = pull_endpoint(data, offset, server_id_max)
        targets.append(target)
    token, offset = pull_bytes(data, offset, config.token_bytes_max)
    parts, offset = pull_names(data, offset, config)
    extensions, offset = _pull_extensions(data, offset, config)
    if offset != len(data):
        raise malformed("HANDOFF body has trailing bytes")
    flag_set = _COMMON_FLAGS.get(flags)
    return Handoff(
        sequence=sequence,
        session_id=session_id,
        parts=parts,
        map_version=map_version,
        reason=_REASON_CODES.get(reason, ReasonCode.UNSPECIFIED),
        flags=HandoffFlag(flags) if flag_set is None else flag_set,
        deadline_ms=deadline_ms,
        current=current,
        targets=tuple(targets),
        token=token,
        extensions=extensions,
    )


def encode_bytes(value: bytes, max_bytes: int, *, name: str) -> bytes:
    """Varint length then bytes, checked against the bound."""
    size = len(value)
    if size > max_bytes:
        raise LocalProtocolError(f"{name} of {size} bytes exceeds {max_bytes}")
    return encode_varint(size) + value


def pull_bytes(data: bytes, offset: int, max_bytes: int) -> tuple[bytes, int]:
    """Read a varint length, at most `max_bytes`, then that many bytes."""
    size = data[offset]
    if size < 0x40:
        offset += 1
    else:
        size, offset = pull_varint(data, offset)
    if size > max_bytes:
        raise malformed(f"field of {size} bytes exceeds its bound of {max_bytes}")
    end = offset + size
    if end > len(data):
        raise IndexError("field runs past the end of the data")
    return data[offset:end], end


def encode_names(parts: tuple[str, ...], config: WireConfig, frame: str) -> bytes:
    """A non-empty list of distinct part names: varint count, then names."""
    if not 0 < len(parts) <= config.parts_max:
        raise LocalProtocolError(f"{frame}.parts must hold 1 to {config.parts_max} names")
    if len(set(parts)) != len(parts):
        raise LocalProtocolError(f"{frame}.parts must not repeat a name")
    part_name_bytes_max = config.part_name_bytes_max
    pieces = [encode_varint(len(parts))]
    for part in parts:
        raw = part.encode()
        if not 0 < len(raw) <= part_name_bytes_max:
            raise LocalProtocolError(f"{frame} part names must be 1 to {part_name_bytes_max} bytes")
        pieces.append(VARINT_ONE_BYTE[len(raw)])
        pieces.append(raw)
    return b"".join(pieces)


def pull_names(data: bytes, offset: int, config: WireConfig) -> tuple[tuple[str, ...], int]:
    """The inverse of `encode_names`."""
    count = data[offset]
    if count < 0x40:
        offset += 1
    else:
        count, offset = pull_varint(data, offset)
    if not 0 < count <= config.parts_max:
        raise malformed(f"list of {count} part names is outside 1..{config.parts_max}")
    part_name_bytes_max = config.part_name_bytes_max
    names = []
    for _ in range(count):
        # pull_name, inlined: part lists are on the HANDOFF hot path.
        size = data[offset]
        end = offset + 1 + size
        if not 0 < size <= part_name_bytes_max or end > len(data):
            raise malformed(f"part name of {size} bytes is outside 1..{part_name_bytes_max}")
        names.append(data[offset + 1 : end].decode())
        offset = end
    if len(set(names)) != count:
        raise malformed("list of part names repeats a name")
    return tuple(names), offset


def _encode_extensions(extensions: tuple[Extension, ...], config: WireConfig) -> bytes:
    if not extensions:
        return b"\x00"
    if len(extensions) > config.extensions_max:
        raise LocalProtocolError(f"more than {config.extensions_max} HANDOFF extensions")
    pieces = [encode_varint(len(extensions))]
    for extension_type, value in extensions:
        pieces.append(encode_varint(extension_type))
        pieces.append(encode_bytes(value, config.extension_bytes_max, name="extension value"))
    return b"".join(pieces)


def _pull_extensions(
    data: bytes, offset: int, config: WireConfig
) -> tuple[tuple[Extension, ...], int]:
    count = data[offset]
    if count == 0:
        return (), offset + 1
    count, offset = pull_varint(data, offset)
    if count > config.extensions_max:
        raise malformed(f"{count} HANDOFF extensions exceed {config.extensions_max}")
    extensions = []
    for _ in range(count):
        extension_type, offset = pull_varint(data, offset)
        value, offset = pull_bytes(data, offset, config.extension_bytes_max)
        extensions.append(_new_tuple(Extension, (extension_type, value)))
    return tuple(extensions), offset
