"""The Retry tokens of a QUIC listener (`forehand.runtime._retry`), sans-IO: `now_us` by hand."""

from __future__ import annotations

import random

import pytest

from forehand.runtime._retry import RETRY_KEY_BYTES, RetryTokens

KEY = random.Random(1).randbytes(RETRY_KEY_BYTES)
ADDRESS = ("127.0.0.1", 40_000)
ORIGINAL_ID = bytes(range(8))
RETRY_ID = bytes(range(8, 16))
ISSUED_US = 5_000_000_000
LIFETIME_MS = 10_000


def tokens(key: bytes = KEY) -> RetryTokens:
    return RetryTokens(key=key, lifetime_ms=LIFETIME_MS)


def issued(address: tuple[str, int] = ADDRESS) -> bytes:
    return tokens().create_token(address, ORIGINAL_ID, RETRY_ID, now_us=ISSUED_US)


def test_a_token_gives_back_its_connection_ids_for_its_lifetime() -> None:
    """A token is valid at its address from its issue time to `lifetime_ms` after, inclusive,
    and gives back the two connection ids it was issued for; 1 us outside either end it is
    refused, so tokens expire and tokens from the future are refused."""
    token = issued()
    lifetime_us = LIFETIME_MS * 1000
    for now_us in (ISSUED_US, ISSUED_US + 1, ISSUED_US + lifetime_us):
        assert tokens().validate_token(ADDRESS, token, now_us=now_us) == (ORIGINAL_ID, RETRY_ID)
    for now_us in (ISSUED_US - 1, ISSUED_US + lifetime_us + 1):
        with pytest.raises(ValueError, match="expired"):
            tokens().validate_token(ADDRESS, token, now_us=now_us)


@pytest.mark.parametrize(
    "address",
    [("127.0.0.1", 40_001), ("127.0.0.2", 40_000), ("::1", 40_000), ("127.0.0.10", 4_000)],
)
def test_a_token_is_refused_from_another_address(address: tuple[str, int]) -> None:
    """Another port or another host (even one whose text runs into the port's) is refused."""
    with pytest.raises(ValueError, match="not issued"):
        tokens().validate_token(address, issued(), now_us=ISSUED_US)


def test_an_ipv6_address_with_flow_and_scope_is_bound_by_host_and_port() -> None:
    """A 4-tuple address (IPv6 sockets) binds the token by its host and port."""
    token = tokens().create_token(("::1", 443, 0, 0), ORIGINAL_ID, RETRY_ID, now_us=ISSUED_US)
    assert tokens().validate_token(("::1", 443, 0, 0), token, now_us=ISSUED_US) == (
        ORIGINAL_ID,
        RETRY_ID,
    )
    with pytest.raises(ValueError):
        tokens().validate_token(("::1", 444, 0, 0), token, now_us=ISSUED_US)


def test_every_flipped_bit_is_refused() -> None:
    """A token with any one of its bits flipped (time, ids, lengths or MAC) is refused."""
    token = issued()
    for index in range(len(token)):
        for bit in range(8):
            changed = bytearray(token)
            changed[index] ^= 1 << bit
            with pytest.raises(ValueError):
                tokens().validate_token(ADDRESS, bytes(changed), now_us=ISSUED_US)


def test_cut_extended_forged_and_foreign_tokens_are_refused() -> None:
    """A token cut short or extended, random bytes of any length, and a token of another key
    are refused."""
    token = issued()
    rng = random.Random(2)
    candidates = [token[:cut] for cut in range(len(token))]
    candidates += [token + b"\x00", token + token]
    candidates += [rng.randbytes(length) for length in range(100)]
    candidates.append(
        tokens(key=bytes(RETRY_KEY_BYTES)).create_token(
            ADDRESS, ORIGINAL_ID, RETRY_ID, now_us=ISSUED_US
        )
    )
    for candidate in candidates:
        with pytest.raises(ValueError):
            tokens().validate_token(ADDRESS, candidate, now_us=ISSUED_US)


@pytest.mark.parametrize("lengths", [(0, 0), (20, 0), (0, 20), (20, 20), (8, 20)])
def test_connection_ids_of_every_length_round_trip(lengths: tuple[int, int]) -> None:
    """Connection ids of 0 to 20 bytes come back as they went in."""
    original, retry = bytes([1]) * lengths[0], bytes([2]) * lengths[1]
    token = tokens().create_token(ADDRESS, original, retry, now_us=0)
    assert tokens().validate_token(ADDRESS, token, now_us=0) == (original, retry)
