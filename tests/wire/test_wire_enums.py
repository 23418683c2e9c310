"""Registries: fallbacks for unknown values, greasing, and the ranges PROTOCOL.md documents."""

from __future__ import annotations

import pytest

from forehand.wire import (
    ErrorCode,
    FrameType,
    ReasonCode,
    ResumeRejectReason,
    is_greased,
    is_greased_version,
)
from forehand.wire._enums import (
    CLUSTER_FRAME_TYPES,
    EXTENSION_FRAME_TYPES_MIN,
    REASON_CODES_PRIVATE,
    REASON_CODES_STANDARD,
    STANDARD_FRAME_TYPES,
)


def test_reason_code_from_wire_maps_unknown_to_unspecified() -> None:
    """Known codes map to themselves; reserved, private and greased ones to UNSPECIFIED."""
    for code in ReasonCode:
        assert ReasonCode.from_wire(int(code)) is code
    for value in (0x0B, 0x3F, 0x40, 0xFF00, 0xFFFF, 0x1F * 5 + 0x21):
        assert ReasonCode.from_wire(value) is ReasonCode.UNSPECIFIED


def test_other_registries_fall_back_as_documented() -> None:
    """ERROR codes fall back to PROTOCOL_ERROR, resume reject reasons to UNSPECIFIED."""
    assert ErrorCode.from_wire(0x0E) is ErrorCode.PROTOCOL_ERROR
    assert ErrorCode.from_wire(int(ErrorCode.IDLE_TIMEOUT)) is ErrorCode.IDLE_TIMEOUT
    assert ResumeRejectReason.from_wire(0x21) is ResumeRejectReason.UNSPECIFIED
    assert ResumeRejectReason.from_wire(2) is ResumeRejectReason.TOKEN_REPLAYED


def test_reason_codes_are_assigned_in_the_standard_range() -> None:
    """The issue's reason codes all exist, in the standard range, none of them greased."""
    expected = {
        "UNSPECIFIED",
        "PLANNED_MAINTENANCE",
        "REBALANCE",
        "PREDICTED_FAILURE",
        "OVERLOAD",
        "PART_MOVED",
        "ZONE_EVACUATION",
        "LOCALITY",
        "SCALE_IN",
        "TRY_AGAIN_LATER",
        "IMMEDIATE",
    }
    assert {code.name for code in ReasonCode} == expected
    for code in ReasonCode:
        assert code in REASON_CODES_STANDARD
        assert code not in REASON_CODES_PRIVATE
        assert not is_greased(code)


def test_frame_types_fall_in_their_ranges() -> None:
    """Client-protocol frames below 0x40, the cluster frame in 0x40-0x7f, and SETTINGS and
    OPEN_SESSION_REFUSED alone in the extension range (a receiver that does not know them skips
    them), not greased.

    Greased frame types are 0x1f * N + 0x21 from 0x80 up only, so 0x21 (HANDOFF_STATUS) is not one.
    """
    for frame_type in FrameType:
        if frame_type >= EXTENSION_FRAME_TYPES_MIN:
            optional = (FrameType.SETTINGS, FrameType.OPEN_SESSION_REFUSED)
            assert frame_type in optional and not is_greased(frame_type)
            continue
        in_cluster_range = frame_type in CLUSTER_FRAME_TYPES
        assert in_cluster_range == (frame_type is FrameType.CLUSTER_MESSAGE)
        assert in_cluster_range or frame_type in STANDARD_FRAME_TYPES


@pytest.mark.parametrize(
    ("value", "greased"), [(0x21, True), (0x40, True), (0x9D, True), (0x22, False), (0x20, False)]
)
def test_is_greased(value: int, greased: bool) -> None:
    """Greased values are 0x1f * N + 0x21."""
    assert is_greased(value) is greased


def test_greased_versions() -> None:
    """Versions 0x?a?a?a?a are greased; version 1 is not."""
    assert is_greased_version(0x0A0A0A0A)
    assert is_greased_version(0xFAEA1A2A)
    assert not is_greased_version(1)
