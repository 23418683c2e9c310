"""Session ids are RFC 9562 UUIDv7 minted from the caller's clock and rng; part keys validate."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from forehand.placement import (
    PART_NAME_LENGTH_MAX,
    InvalidPartKeyError,
    PartKey,
    check_part_name,
    check_session_id,
    format_session_id,
    new_session_id,
    parse_session_id,
    part_key_hash,
    session_id_time_ms,
)

_FIXED_SESSION = bytes.fromhex("0190b0b4c0de7abc8123456789abcdef")


@given(now_ms=st.integers(0, (1 << 48) - 1), seed=st.integers(0, 2**32))
def test_session_id_is_uuid_v7_with_the_given_time(now_ms: int, seed: int) -> None:
    """The id carries version 7, the RFC variant and `now_ms` in its first 48 bits."""
    session_id = new_session_id(now_ms=now_ms, rng=random.Random(seed))
    parsed = uuid.UUID(bytes=session_id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert session_id_time_ms(session_id) == now_ms
    assert check_session_id(session_id) == session_id


def test_session_ids_are_deterministic_per_seed_and_unique() -> None:
    """The same seed gives the same ids; many ids in one millisecond never collide."""
    first = [new_session_id(now_ms=5, rng=random.Random(7)) for _ in range(3)]
    again = [new_session_id(now_ms=5, rng=random.Random(7)) for _ in range(3)]
    assert first == again
    rng = random.Random(1)
    minted = {new_session_id(now_ms=1_700_000_000_000, rng=rng) for _ in range(20_000)}
    assert len(minted) == 20_000


def test_session_ids_sort_by_creation_time() -> None:
    """Ids minted later sort after earlier ones, whatever their random bits."""
    rng = random.Random(3)
    ids = [new_session_id(now_ms=1_000 + step, rng=rng) for step in range(200)]
    assert sorted(ids) == ids


def test_out_of_range_time_is_refused() -> None:
    """A time that does not fit 48 bits cannot be encoded."""
    with pytest.raises(InvalidPartKeyError):
        new_session_id(now_ms=1 << 48, rng=random.Random(0))
    with pytest.raises(InvalidPartKeyError):
        new_session_id(now_ms=-1, rng=random.Random(0))


@pytest.mark.parametrize(
    "session_id",
    [
        b"",
        bytes(15),
        bytes(17),
        uuid.UUID(int=1).bytes,  # version 0
        bytes.fromhex("0190b0b4c0de4abc8123456789abcdef"),  # version 4
        bytes.fromhex("0190b0b4c0de7abcc123456789abcdef"),  # Microsoft variant
    ],
)
def test_malformed_session_ids_are_refused(session_id: bytes) -> None:
    """Only 16-byte RFC-variant version-7 UUIDs pass."""
    with pytest.raises(InvalidPartKeyError):
        check_session_id(session_id)


def test_text_form_round_trips() -> None:
    """format_session_id and parse_session_id are inverse; junk text is refused."""
    text = format_session_id(_FIXED_SESSION)
    assert text == "0190b0b4-c0de-7abc-8123-456789abcdef"
    assert parse_session_id(text) == _FIXED_SESSION
    with pytest.raises(InvalidPartKeyError):
        parse_session_id("not-a-uuid")


@pytest.mark.parametrize(
    "part", ["auth", "cart", "feature/video", "a", "x1_y-z.v2/b", "a" * PART_NAME_LENGTH_MAX]
)
def test_valid_part_names_pass(part: str) -> None:
    """Lowercase segments joined by slashes are part names."""
    assert check_part_name(part) == part


@pytest.mark.parametrize(
    "part",
    ["", "Auth", "/auth", "auth/", "a//b", "-a", "a b", "é", "a" * (PART_NAME_LENGTH_MAX + 1)],
)
def test_invalid_part_names_are_refused(part: str) -> None:
    """Empty, uppercase, badly slashed, non-ASCII or overlong names are refused."""
    with pytest.raises(InvalidPartKeyError):
        check_part_name(part)


def test_part_key_hash_is_stable_and_cached() -> None:
    """The key hash has a fixed value (the same in every process and release) and is cached."""
    key = PartKey(session_id=_FIXED_SESSION, part="auth")
    assert key.key_hash == 16307873576211997043
    assert part_key_hash(_FIXED_SESSION, "feature/video") == 671478039946345028
    assert hash(key) == hash(PartKey(session_id=_FIXED_SESSION, part="auth"))
    assert key == PartKey(session_id=_FIXED_SESSION, part="auth")
    assert key != PartKey(session_id=_FIXED_SESSION, part="cart")


def test_part_key_validates_its_fields() -> None:
    """A part key with a malformed session id or part name cannot be built."""
    with pytest.raises(InvalidPartKeyError):
        PartKey(session_id=bytes(16), part="auth")
    with pytest.raises(InvalidPartKeyError):
        PartKey(session_id=_FIXED_SESSION, part="Bad Name")
