"""Fixtures of the wire tests: the codec tests run once per implementation of the codec."""

from __future__ import annotations

import pytest

from forehand.wire import _decoder
from forehand.wire._implementation import ACCELERATED_CODEC, PURE_CODEC, Codec

NOT_BUILT = "forehand.wire._speedups is not built here; only the pure-Python codec is tested"


@pytest.fixture(params=["python", "c"])
def codec(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Codec:
    """The pure-Python codec, then the C accelerator; FrameDecoder decodes frames with it too."""
    if request.param == "python":
        chosen = PURE_CODEC
    elif ACCELERATED_CODEC is None:
        pytest.skip(NOT_BUILT)
    else:
        chosen = ACCELERATED_CODEC
    monkeypatch.setattr(_decoder, "decode_body", chosen.decode_body)
    monkeypatch.setattr(_decoder, "pop_frame", chosen.pop_frame)
    monkeypatch.setattr(_decoder, "pop_frames", chosen.pop_frames)
    return chosen
