"""One place chooses the codec: the C accelerator when built, pure Python when asked or missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import forehand.wire
from forehand.wire import _codec, _decoder
from forehand.wire._implementation import (
    ACCELERATED_CODEC,
    CODEC,
    CODEC_IMPLEMENTATION,
    PURE_CODEC,
    PURE_ENVIRONMENT_VARIABLE,
)


def implementation_in_subprocess(pure_value: str | None) -> str:
    """CODEC_IMPLEMENTATION as a fresh interpreter sees it with the variable set (or not)."""
    environment = dict(os.environ)
    environment.pop(PURE_ENVIRONMENT_VARIABLE, None)
    if pure_value is not None:
        environment[PURE_ENVIRONMENT_VARIABLE] = pure_value
    completed = subprocess.run(
        [sys.executable, "-c", "import forehand.wire as w; print(w.CODEC_IMPLEMENTATION)"],
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout.strip()


def test_public_functions_are_the_chosen_codec() -> None:
    """forehand.wire and FrameDecoder use exactly the functions of the chosen codec."""
    assert forehand.wire.encode_frame is CODEC.encode_frame
    assert forehand.wire.encode_frames is CODEC.encode_frames
    assert forehand.wire.decode_frame is CODEC.decode_frame
    assert forehand.wire.decode_body is CODEC.decode_body
    assert vars(_decoder)["decode_body"] is CODEC.decode_body
    assert vars(_decoder)["pop_frame"] is CODEC.pop_frame
    assert vars(_decoder)["pop_frames"] is CODEC.pop_frames
    assert forehand.wire.CODEC_IMPLEMENTATION == CODEC.name == CODEC_IMPLEMENTATION


def test_pure_codec_is_the_python_module() -> None:
    """The reference codec is the pure-Python one, whatever is built."""
    assert PURE_CODEC.name == "python"
    assert PURE_CODEC.encode_frame is _codec.encode_frame
    assert PURE_CODEC.encode_frames is _codec.encode_frames
    assert PURE_CODEC.decode_frame is _codec.decode_frame
    assert PURE_CODEC.decode_body is _codec.decode_body
    assert PURE_CODEC.pop_frame is _codec.pop_frame
    assert PURE_CODEC.pop_frames is _codec.pop_frames


def test_environment_variable_forces_pure_python() -> None:
    """FOREHAND_WIRE_PURE=1 selects pure Python; unset or "0" selects C when it is built."""
    built = "python" if ACCELERATED_CODEC is None else "c"
    assert implementation_in_subprocess("1") == "python"
    assert implementation_in_subprocess("0") == built
    assert implementation_in_subprocess(None) == built


@pytest.mark.skipif(ACCELERATED_CODEC is None, reason="forehand.wire._speedups is not built")
def test_accelerated_codec_is_the_extension_module() -> None:
    """The C codec's functions are the built-ins of forehand.wire._speedups."""
    from forehand.wire import _speedups

    assert ACCELERATED_CODEC is not None
    assert ACCELERATED_CODEC.name == "c"
    assert ACCELERATED_CODEC.encode_frame is _speedups.encode_frame
    assert ACCELERATED_CODEC.encode_frames is _speedups.encode_frames
    assert ACCELERATED_CODEC.decode_frame is _speedups.decode_frame
    assert ACCELERATED_CODEC.decode_body is _speedups.decode_body
    assert ACCELERATED_CODEC.pop_frame is _speedups.pop_frame
    assert ACCELERATED_CODEC.pop_frames is _speedups.pop_frames
    pure_requested = os.environ.get(PURE_ENVIRONMENT_VARIABLE, "") not in ("", "0")
    assert CODEC is (PURE_CODEC if pure_requested else ACCELERATED_CODEC)
