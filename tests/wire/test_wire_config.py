"""WireConfig validates its bounds and exposes the buffering cap the decoder honours."""

from __future__ import annotations

import pytest

from forehand.errors import ConfigError
from forehand.wire import DEFAULT_CONFIG, FRAME_HEADER_BYTES_MAX, WireConfig


def test_defaults_match_the_documented_limits() -> None:
    """The defaults PROTOCOL.md section 7 lists."""
    assert DEFAULT_CONFIG.frame_bytes_max == 1 << 20
    assert DEFAULT_CONFIG.part_name_bytes_max == 128
    assert DEFAULT_CONFIG.op_name_bytes_max == 64
    assert DEFAULT_CONFIG.targets_max == 8
    assert DEFAULT_CONFIG.buffered_bytes_max == (1 << 20) + FRAME_HEADER_BYTES_MAX


@pytest.mark.parametrize(
    "changes",
    [
        {"frame_bytes_max": 16_383},
        {"frame_bytes_max": 1 << 62},
        {"targets_max": 0},
        {"parts_max": -1},
        {"part_name_bytes_max": 256},
        {"server_id_bytes_max": 300},
        {"op_name_bytes_max": 128},
        {"token_bytes_max": 1.5},
    ],
)
def test_invalid_bounds_are_config_errors(changes: dict[str, object]) -> None:
    """Non-positive, non-integer, or wire-incompatible bounds are refused."""
    with pytest.raises(ConfigError):
        WireConfig(**changes)  # type: ignore[arg-type]


def test_op_names_may_use_seven_bits_of_their_length_byte() -> None:
    """REQUEST's op length byte keeps its high bit for the wait budget flag: 127 is the most."""
    assert WireConfig(op_name_bytes_max=127).op_name_bytes_max == 127
