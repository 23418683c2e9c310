"""Tests of resumption tokens, session credentials, the key ring and the replay cache."""

from __future__ import annotations

import random

import pytest

from forehand.core.tokens import (
    KEY_BYTES,
    CredentialClaims,
    KeyRing,
    ReplayCache,
    ReplayCacheFull,
    TokenClaims,
    TokenExpired,
    TokenInvalid,
    TokenReplayed,
    TokenSealer,
    key_fingerprint,
    key_ring_mismatch,
)
from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import ErrorCode, ResumeRejectReason

SESSION = bytes(range(16))
CLIENT = bytes(range(16, 32))
KEY_A = bytes([0xA5]) * KEY_BYTES
KEY_B = bytes([0x5B]) * KEY_BYTES


def make_sealer(
    seed: int = 1, *, keys: dict[int, bytes] | None = None, current: int = 1
) -> TokenSealer:
    ring = KeyRing(keys if keys is not None else {1: KEY_A}, current_key_id=current)
    return TokenSealer(ring, rng=random.Random(seed))


def make_claims(*, nonce: int = 7, expires_us: int = 10_000_000) -> TokenClaims:
    return TokenClaims(
        session_id=SESSION,
        parts=("auth", "cart"),
        target_server="s2",
        map_version=42,
        expires_us=expires_us,
        nonce=nonce,
    )


def test_round_trip_returns_the_same_claims() -> None:
    """A sealed token opens to exactly the claims that were sealed."""
    sealer = make_sealer()
    claims = make_claims()
    assert sealer.open(sealer.seal(claims), now_us=0) == claims


def test_token_layout_is_version_key_id_nonce_ciphertext() -> None:
    """The header is version 1 and the 4-byte key id, then a 12-byte nonce and a 16-byte tag."""
    sealer = make_sealer(keys={0x01020304: KEY_A}, current=0x01020304)
    token = sealer.seal(make_claims())
    assert token[0] == 1
    assert token[1:5] == bytes([1, 2, 3, 4])
    plaintext_bytes = len(token) - 5 - 12 - 16
    assert plaintext_bytes > 16  # the session id alone is 16 bytes of the claims


def test_seal_is_deterministic_for_a_seed_and_fresh_per_call() -> None:
    """Nonces come from the injected Random: same seed, same token; two seals differ."""
    first = make_sealer(seed=3).seal(make_claims())
    again = make_sealer(seed=3).seal(make_claims())
    sealer = make_sealer(seed=3)
    assert first == again
    assert sealer.seal(make_claims()) != sealer.seal(make_claims())


def test_issue_token_draws_a_new_claims_nonce_each_time() -> None:
    """issue_token sets the expiry from the lifetime and gives every token its own nonce."""
    sealer = make_sealer()
    tokens = [
        sealer.issue_token(
            session_id=SESSION,
            parts=("auth",),
            target_server="s1",
            map_version=3,
            now_us=1_000,
            lifetime_ms=50,
        )
        for _ in range(20)
    ]
    claims = [sealer.open(token, now_us=1_000) for token in tokens]
    assert len({c.nonce for c in claims}) == 20
    assert all(c.expires_us == 51_000 for c in claims)


def test_every_single_bit_flip_is_rejected_as_invalid() -> None:
    """Flipping any one bit of a token (header, nonce, ciphertext or tag) makes it TOKEN_INVALID."""
    sealer = make_sealer()
    token = sealer.seal(make_claims())
    for index in range(len(token)):
        for bit in range(8):
            forged = bytearray(token)
            forged[index] ^= 1 << bit
            with pytest.raises(TokenInvalid) as raised:
                sealer.open(bytes(forged), now_us=0)
            assert raised.value.reject_reason is ResumeRejectReason.TOKEN_INVALID


@pytest.mark.parametrize("cut", [0, 1, 5, 17, 32])
def test_truncated_and_extended_tokens_are_invalid(cut: int) -> None:
    """A token shortened to any length or with bytes appended does not open."""
    sealer = make_sealer()
    token = sealer.seal(make_claims())
    with pytest.raises(TokenInvalid):
        sealer.open(token[:cut], now_us=0)
    with pytest.raises(TokenInvalid):
        sealer.open(token + b"\x00", now_us=0)


def test_token_sealed_under_another_key_is_invalid() -> None:
    """A token sealed by a ring with a different key under the same id does not open."""
    ours = make_sealer(keys={1: KEY_A})
    theirs = make_sealer(keys={1: KEY_B})
    with pytest.raises(TokenInvalid):
        ours.open(theirs.seal(make_claims()), now_us=0)


def test_token_under_unknown_key_id_is_invalid() -> None:
    """A token naming a key id the ring does not hold is TOKEN_INVALID before any decryption."""
    ours = make_sealer(keys={1: KEY_A})
    theirs = make_sealer(keys={2: KEY_A}, current=2)
    with pytest.raises(TokenInvalid, match="unknown or retired key id 2"):
        ours.open(theirs.seal(make_claims()), now_us=0)


def test_expired_token_is_rejected_with_token_expired() -> None:
    """A token opens strictly before expires_us and is TOKEN_EXPIRED at and after it."""
    sealer = make_sealer()
    token = sealer.seal(make_claims(expires_us=5_000))
    assert sealer.open(token, now_us=4_999).expires_us == 5_000
    with pytest.raises(TokenExpired) as raised:
        sealer.open(token, now_us=5_000)
    assert raised.value.reject_reason is ResumeRejectReason.TOKEN_EXPIRED


def test_token_errors_are_remote_protocol_errors_with_unauthenticated_code() -> None:
    """Refusals are the peer's fault and carry the UNAUTHENTICATED error code."""
    sealer = make_sealer()
    with pytest.raises(RemoteProtocolError) as raised:
        sealer.open(b"garbage" * 8, now_us=0)
    assert raised.value.error_code == ErrorCode.UNAUTHENTICATED


def test_credential_round_trip_and_expiry() -> None:
    """A credential opens to its claims until its expiry and is TOKEN_EXPIRED after."""
    sealer = make_sealer()
    credential = sealer.issue_credential(
        session_id=SESSION, client_id=CLIENT, now_us=0, lifetime_ms=1_000
    )
    claims = sealer.open_credential(credential, now_us=999_999)
    assert claims == CredentialClaims(session_id=SESSION, client_id=CLIENT, expires_us=1_000_000)
    with pytest.raises(TokenExpired):
        sealer.open_credential(credential, now_us=1_000_000)


def test_credential_and_token_are_not_interchangeable() -> None:
    """A credential does not open as a token nor a token as a credential (purpose is bound)."""
    sealer = make_sealer()
    credential = sealer.issue_credential(
        session_id=SESSION, client_id=CLIENT, now_us=0, lifetime_ms=1_000
    )
    token = sealer.seal(make_claims())
    with pytest.raises(TokenInvalid):
        sealer.open(credential, now_us=0)
    with pytest.raises(TokenInvalid):
        sealer.open_credential(token, now_us=0)


def test_rotation_seals_with_the_new_key_and_still_opens_old_tokens() -> None:
    """After add+rotate, new tokens name the new key id and tokens under the old key still open."""
    sealer = make_sealer(keys={1: KEY_A})
    old_token = sealer.seal(make_claims(nonce=1))
    sealer.key_ring.add(2, KEY_B)
    sealer.key_ring.rotate(2)
    new_token = sealer.seal(make_claims(nonce=2))
    assert new_token[1:5] == (2).to_bytes(4, "big")
    assert sealer.open(old_token, now_us=0).nonce == 1
    assert sealer.open(new_token, now_us=0).nonce == 2


def test_node_that_only_added_the_new_key_opens_tokens_of_a_rotated_node() -> None:
    """A node that holds key 2 but still seals with key 1 opens tokens of a rotated node."""
    rotated = make_sealer(keys={1: KEY_A, 2: KEY_B}, current=2)
    lagging = make_sealer(keys={1: KEY_A, 2: KEY_B}, current=1)
    assert lagging.open(rotated.seal(make_claims()), now_us=0) == make_claims()


def test_retired_key_no_longer_opens() -> None:
    """Once the old key is retired, tokens sealed under it are TOKEN_INVALID."""
    sealer = make_sealer(keys={1: KEY_A})
    old_token = sealer.seal(make_claims())
    sealer.key_ring.add(2, KEY_B)
    sealer.key_ring.rotate(2)
    sealer.key_ring.retire(1)
    assert sealer.key_ring.key_ids == (2,)
    with pytest.raises(TokenInvalid):
        sealer.open(old_token, now_us=0)


def test_key_ring_misuse_raises_local_protocol_error() -> None:
    """Short keys, duplicate ids, retiring the current key and overfilling the ring are refused."""
    with pytest.raises(LocalProtocolError):
        KeyRing({1: b"short"}, current_key_id=1)
    with pytest.raises(LocalProtocolError):
        KeyRing({1: KEY_A}, current_key_id=2)
    ring = KeyRing({1: KEY_A}, current_key_id=1, keys_max=2)
    with pytest.raises(LocalProtocolError):
        ring.add(1, KEY_B)
    with pytest.raises(LocalProtocolError):
        ring.retire(1)
    with pytest.raises(LocalProtocolError):
        ring.rotate(9)
    ring.add(2, KEY_B)
    with pytest.raises(LocalProtocolError):
        ring.add(3, KEY_B)
    with pytest.raises(LocalProtocolError):
        ring.add(1 << 32, KEY_B)


def test_replay_cache_admits_a_nonce_once() -> None:
    """The first use of a token is admitted, the second is TOKEN_REPLAYED."""
    cache = ReplayCache(entries_max=4)
    claims = make_claims(nonce=11)
    cache.admit(claims, now_us=0)
    with pytest.raises(TokenReplayed) as raised:
        cache.admit(claims, now_us=1)
    assert raised.value.reject_reason is ResumeRejectReason.TOKEN_REPLAYED


def test_replayed_token_through_the_sealer_and_cache() -> None:
    """The same sealed token presented twice opens twice but the cache admits it only once."""
    sealer = make_sealer()
    cache = ReplayCache(entries_max=4)
    token = sealer.issue_token(
        session_id=SESSION,
        parts=("auth",),
        target_server="s1",
        map_version=1,
        now_us=0,
        lifetime_ms=100,
    )
    cache.admit(sealer.open(token, now_us=10), now_us=10)
    with pytest.raises(TokenReplayed):
        cache.admit(sealer.open(token, now_us=20), now_us=20)


def test_replay_cache_refuses_when_full_rather_than_forgetting() -> None:
    """At entries_max unexpired nonces a new token is refused (OVERLOADED) and old ones stay."""
    cache = ReplayCache(entries_max=2)
    cache.admit(make_claims(nonce=1, expires_us=100), now_us=0)
    cache.admit(make_claims(nonce=2, expires_us=200), now_us=0)
    with pytest.raises(ReplayCacheFull) as raised:
        cache.admit(make_claims(nonce=3, expires_us=300), now_us=50)
    assert raised.value.reject_reason is ResumeRejectReason.OVERLOADED
    with pytest.raises(TokenReplayed):
        cache.admit(make_claims(nonce=1, expires_us=100), now_us=50)
    assert len(cache) == 2


def test_replay_cache_frees_room_as_tokens_expire() -> None:
    """Expired nonces are forgotten, which makes room for new tokens without allowing replays."""
    cache = ReplayCache(entries_max=2)
    cache.admit(make_claims(nonce=1, expires_us=100), now_us=0)
    cache.admit(make_claims(nonce=2, expires_us=200), now_us=0)
    cache.admit(make_claims(nonce=3, expires_us=300), now_us=100)
    assert len(cache) == 2
    with pytest.raises(TokenExpired):
        cache.admit(make_claims(nonce=1, expires_us=100), now_us=100)


def test_replay_cache_rejects_bad_bound() -> None:
    """A replay cache must have room for at least one nonce."""
    with pytest.raises(LocalProtocolError):
        ReplayCache(entries_max=0)


def test_key_fingerprints_match_equal_keys_and_follow_the_ring() -> None:
    """A ring's fingerprints name each key it opens, by id, equal for equal keys; a retired
    key's goes with it. The manager's check (`key_ring_mismatch`) passes a ring that holds its
    sealing key under the same fingerprint, with or without keys of its own (a rotation under
    way), and refuses one where an id both hold is another key, or that lacks the sealing key
    (a server restarted with the keys file from before a rotation)."""
    one, two = bytes(range(32)), bytes(range(1, 33))
    ring = KeyRing({1: one, 2: two}, current_key_id=2)
    assert ring.fingerprints() == ((1, key_fingerprint(one)), (2, key_fingerprint(two)))
    assert key_fingerprint(one) != key_fingerprint(two) and len(key_fingerprint(one)) == 8
    manager = ring.fingerprints()
    assert key_ring_mismatch(manager, (), current_key_id=2) is None
    assert key_ring_mismatch(manager, manager, current_key_id=2) is None
    assert key_ring_mismatch(manager, ((2, key_fingerprint(two)),), current_key_id=2) is None
    newer = ((2, key_fingerprint(two)), (3, key_fingerprint(bytes(32))))
    assert key_ring_mismatch(manager, newer, current_key_id=2) is None
    before_rotation = ((1, key_fingerprint(one)),)
    problem = key_ring_mismatch(manager, before_rotation, current_key_id=2)
    assert problem is not None and "seals with key id 2, which this node does not hold" in problem
    other = ((1, key_fingerprint(two)), (2, key_fingerprint(two)))
    problem = key_ring_mismatch(manager, other, current_key_id=2)
    assert problem is not None and "key id(s) [1] hold other keys" in problem
    assert key_ring_mismatch(manager, newer, current_key_id=2, other_key_id=2) is None
    problem = key_ring_mismatch(manager, newer, current_key_id=2, other_key_id=3)
    assert problem is not None and "seals with key id 3, which the manager does not" in problem
    # Another cluster's file is named as such, not as a rotation out of order.
    problem = key_ring_mismatch(manager, other, current_key_id=2, other_key_id=3)
    assert problem is not None and "key id(s) [1] hold other keys" in problem
    ring.retire(1)
    assert ring.fingerprints() == ((2, key_fingerprint(two)),)
