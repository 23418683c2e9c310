"""docs/PROTOCOL.md names what the code has: registries, limits, frame headings, cluster messages.

Each test reads the document's own tables and compares them with the enums, config defaults and
message Structs they describe, both ways: every member documented, nothing documented that the
code does not have. The hex vectors are checked by test_vectors_doc.py.
"""

from __future__ import annotations

import enum
import re
from dataclasses import fields
from pathlib import Path

import msgspec
import pytest

from forehand.core import CLIENT_PLACEMENTS_ENCODING, ManagerConfig, ServerConfig, messages
from forehand.errors import RemoteProtocolError
from forehand.placement import MAP_ENCODING, Operation
from forehand.wire import (
    DEFAULT_CONFIG,
    ErrorCode,
    FrameType,
    GoAway,
    HandoffFlag,
    HandoffState,
    PathMetric,
    Ping,
    ReasonCode,
    ResponseStatus,
    ResumeRejectReason,
    StreamType,
    decode_frame,
)
from forehand.wire._config import DNS_NAME_BYTES_MAX

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
DOCUMENT = PROTOCOL.read_text(encoding="utf-8")
GREASED = 0x1F * 1 + 0x21
"""A greased code point that fits every registry's field (0x40)."""


def section(heading: str) -> str:
    """The text of the section whose heading line starts with `heading`, up to the next one."""
    match = re.search(rf"^#+ {re.escape(heading)}.*?$(.*?)(?=^#+ )", DOCUMENT, re.M | re.S)
    assert match is not None, heading
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table row in `text`, header and separator rows left out."""
    lines = text.splitlines()
    rows = []
    for line, following in zip(lines, [*lines[1:], ""], strict=True):
        is_separator = set(following) <= set("|-: ") and following.startswith("|")
        if line.startswith("|") and not set(line) <= set("|-: ") and not is_separator:
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def registry(heading: str) -> dict[int, str]:
    """Value to name of a registry table: single values only, reserved ranges left out."""
    entries: dict[int, str] = {}
    for row in table_rows(section(heading)):
        value, name = row[0].strip("`"), row[1]
        if re.fullmatch(r"0x[0-9a-f]+", value) and name not in ("reserved", "private use"):
            entries[int(value, 16)] = name
    return entries


@pytest.mark.parametrize(
    ("heading", "enum_type"),
    [
        ("8.1 Frame types", FrameType),
        ("8.2 Reason codes", ReasonCode),
        ("8.3 Error codes", ErrorCode),
        ("8.4 Response statuses", ResponseStatus),
        ("8.5 Handoff flags", HandoffFlag),
        ("8.6 Handoff states", HandoffState),
        ("8.7 Resume reject reasons", ResumeRejectReason),
        ("8.8 Path metrics", PathMetric),
    ],
)
def test_registry_tables_list_exactly_the_enum(heading: str, enum_type: type[enum.IntEnum]) -> None:
    """Every member of the enum is in the section 8 table with its value, and nothing else is."""
    members = {int(member): member.name for member in enum_type if member.name != "NONE"}
    assert registry(heading) == members


def test_stream_types_and_map_encodings_are_documented() -> None:
    """Sections 8.9 and 8.10 give the control stream's type and both MAP_UPDATE encodings."""
    assert registry("8.9 QUIC stream types") == {StreamType.CONTROL: "control stream"}
    assert registry("8.10 MAP_UPDATE encodings") == {
        MAP_ENCODING: "MAP_ENCODING",
        CLIENT_PLACEMENTS_ENCODING: "CLIENT_PLACEMENTS",
    }


def test_frame_headings_name_each_frame_type_once() -> None:
    """Each `### 5.N NAME (0xTT)` heading matches FrameType, one heading per frame type."""
    headings = re.findall(r"^### 5\.\d+ ([A-Z_]+) \((0x[0-9a-f]+)\)", DOCUMENT, re.M)
    assert {int(value, 16): name for name, value in headings} == {
        int(frame_type): frame_type.name for frame_type in FrameType
    }
    assert len(headings) == len(FrameType)


def test_size_limits_table_is_wire_config() -> None:
    """Section 7 lists every WireConfig bound with its default, and the DNS name bound."""
    documented = {
        row[0]: int(row[1].split()[0].replace(",", ""))
        for row in table_rows(section("7. Size limits"))
    }
    expected = {field.name: getattr(DEFAULT_CONFIG, field.name) for field in fields(DEFAULT_CONFIG)}
    expected["DNS name"] = DNS_NAME_BYTES_MAX
    assert documented == expected


def _strip_parentheses(text: str) -> str:
    """`text` without any parenthesised remark (nested ones included)."""
    while True:
        stripped = re.sub(r"\([^()]*\)", "", text)
        if stripped == text:
            return text
        text = stripped


def _documented_fields(cell: str) -> list[str]:
    """The field names of a section 5.21 cell, in order, remarks and trailing sentences cut."""
    names = re.split(r"[.:] ", _strip_parentheses(cell))[0]
    return [name.strip() for name in names.split(",")]


def _struct_fields(struct_type: type[msgspec.Struct]) -> list[str]:
    return [field.name for field in msgspec.structs.fields(struct_type)]


def test_cluster_records_list_their_fields_in_order() -> None:
    """The records table of section 5.21 gives each nested record's fields in encoding order."""
    rows = table_rows(section("5.21 CLUSTER_MESSAGE"))
    records = {row[0]: _documented_fields(row[1]) for row in rows if len(row) == 2}
    expected = {
        name: _struct_fields(getattr(messages, name))
        for name in ("PartRef", "LoadReport", "PartLoad", "PathReport", "PartProgress", "LogEntry")
    }
    assert records == expected


def test_cluster_messages_table_lists_every_message_and_field() -> None:
    """Every message of forehand.core.messages is in section 5.21 with all its fields, in order."""
    rows = table_rows(section("5.21 CLUSTER_MESSAGE"))
    documented = {row[0]: _documented_fields(row[2]) for row in rows if len(row) == 4}
    message_types = messages.ClusterMessageType.__args__
    expected = {message.__name__: _struct_fields(message) for message in message_types}
    assert documented == expected


def _frame(frame_type: int, body: bytes) -> bytes:
    assert len(body) < 0x40
    return bytes((frame_type, len(body))) + body


def test_greased_codes_are_unknown_where_unknown_is_tolerated() -> None:
    """A greased reason code reads as UNSPECIFIED and a greased path metric is skipped (8)."""
    goaway = decode_frame(_frame(FrameType.GOAWAY, b"\x05" + GREASED.to_bytes(2) + b"\x09"))
    assert goaway == GoAway(map_version=5, reason=ReasonCode.UNSPECIFIED, last_request_id=9)
    sample = b"\x02s1" + b"\x02" + b"\x01\x10" + bytes((0x40 | GREASED >> 8, GREASED & 0xFF, 0x07))
    ping = decode_frame(_frame(FrameType.PING, b"\x01\x02\x01" + sample))
    assert isinstance(ping, Ping)
    assert ping.telemetry[0].rtt_us == 0x10
    assert ErrorCode.from_wire(GREASED) is ErrorCode.PROTOCOL_ERROR
    assert ResumeRejectReason.from_wire(GREASED) is ResumeRejectReason.UNSPECIFIED


def test_greased_status_and_state_are_encoding_errors() -> None:
    """A greased response status or handoff state is refused like any unknown one (8)."""
    head = bytes(16) + (1).to_bytes(8) + (3).to_bytes(8)
    with pytest.raises(RemoteProtocolError) as raised:
        decode_frame(_frame(FrameType.RESPONSE, head + bytes((GREASED,))))
    assert raised.value.error_code == ErrorCode.FRAME_ENCODING_ERROR
    status = bytes(16) + b"\x2a" + bytes((0x40 | GREASED >> 8, GREASED & 0xFF)) + b"\x00"
    with pytest.raises(RemoteProtocolError) as raised:
        decode_frame(_frame(FrameType.HANDOFF_STATUS, status))
    assert raised.value.error_code == ErrorCode.FRAME_ENCODING_ERROR


def _documented_number(pattern: str) -> int:
    match = re.search(pattern, DOCUMENT)
    assert match is not None, pattern
    return int(match.group(1).replace(",", ""))


def test_token_lifetimes_and_replay_cache_bound_are_the_defaults() -> None:
    """Section 5.22's lifetimes and replay cache bound are the config defaults."""
    server, manager = ServerConfig(server_id="s1"), ManagerConfig()
    assert server.replay_cache_entries_max == _documented_number(
        r"`ServerConfig.replay_cache_entries_max`,\s+([\d,]+)\s+nonces"
    )
    assert server.token_lifetime_ms == 1000 * _documented_number(
        r"`ServerConfig.token_lifetime_ms`\s+\((\d+)\s+seconds"
    )
    assert manager.token_lifetime_ms == 1000 * _documented_number(
        r"`ManagerConfig.token_lifetime_ms`\s+\((\d+)\s+seconds"
    )
    assert manager.credential_lifetime_ms == 3_600_000 * _documented_number(
        r"`ManagerConfig.credential_lifetime_ms`\s+\((\d+)\s+hours"
    )


def _top_level_items(text: str) -> int:
    """How many comma-separated items `text` has outside brackets."""
    depth, items = 0, 1
    for character in text:
        depth += {"[": 1, "]": -1}.get(character, 0)
        items += character == "," and depth == 0
    return items


def test_shard_map_delta_operations_have_their_tags_and_arity() -> None:
    """Section 5.10 lists each delta operation of forehand.placement with its tag and fields."""
    documented = {
        int(tag): (name, _top_level_items(rest))
        for tag, rest, name in re.findall(r"`\[(\d), ([^`]*)\]` (\w+)", section("5.10 MAP_UPDATE"))
    }
    operations: tuple[type[msgspec.Struct], ...] = Operation.__args__
    expected = {
        operation.__struct_config__.tag: (
            operation.__name__,
            len(msgspec.structs.fields(operation)),
        )
        for operation in operations
    }
    assert documented == expected
