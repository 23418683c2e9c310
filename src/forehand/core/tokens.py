"""Resumption tokens and session credentials: AEAD-sealed claims, a key ring, a replay cache.

A resumption token lets a client resume parts of its session on one named server: the HANDOFF
source seals one for the handoff's target, the manager one in SESSION_OPENED for the primary of the
session's first part. It is sealed with AES-256-GCM under a
cluster key, so only cluster members can mint or read it, and any change to a single bit is
detected. The byte layout is

    version (1) | key_id (4, big-endian) | nonce (12) | ciphertext + tag (16)

where the ciphertext holds the claims encoded with msgspec msgpack, and the associated data is the
header (version and key id) plus a purpose label, so a credential never opens as a token or the
other way round. Nonces come from the `random.Random` the owner injects (the runtime passes a
`random.SystemRandom`, the simulator a seeded one), which keeps this module sans-IO.

Tokens are single-use: the server that accepts a RESUME records the claims' nonce in a bounded
`ReplayCache` until the token expires. The cache is per server, so a token is single-use only
because it names one target server. A session credential is the long-lived sibling: it names the
session, is presented in HELLO (servers and the manager check it there; RESUME checks only the
token), and may be used many times, which is how a restarted client takes its sessions back.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import random
import struct
from collections.abc import Mapping
from typing import ClassVar

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from forehand.errors import LocalProtocolError, RemoteProtocolError
from forehand.wire import ErrorCode, ResumeRejectReason

__all__ = [
    "KEY_BYTES",
    "KEY_FINGERPRINT_BYTES",
    "KEY_ID_MAX",
    "KEY_RING_KEYS_MAX",
    "NONCE_BYTES",
    "TOKEN_FORMAT_VERSION",
    "CredentialClaims",
    "KeyRing",
    "ReplayCache",
    "ReplayCacheFull",
    "TokenClaims",
    "TokenError",
    "TokenExpired",
    "TokenInvalid",
    "TokenKeyUnknown",
    "TokenReplayed",
    "TokenSealer",
    "key_fingerprint",
    "key_ring_mismatch",
]

TOKEN_FORMAT_VERSION = 1
"""The first byte of every sealed token and credential."""
KEY_BYTES = 32
"""AES-256: every cluster key is 32 bytes."""
KEY_ID_MAX = (1 << 32) - 1
"""Key ids travel as 4 big-endian bytes."""
NONCE_BYTES = 12
"""The AES-GCM nonce length (96 bits, the size GCM is defined for)."""
TAG_BYTES = 16
"""The AES-GCM authentication tag length."""
KEY_RING_KEYS_MAX = 16
"""Default bound on keys held at once (the current one plus those not yet retired)."""
CLAIMS_NONCE_BITS = 64
"""Width of the single-use nonce inside the claims (the replay cache key)."""

_HEADER = struct.Struct(">BI")
_HEADER_BYTES = _HEADER.size
_SEALED_BYTES_MIN = _HEADER_BYTES + NONCE_BYTES + TAG_BYTES
_PURPOSE_TOKEN = b"forehand/1 resumption token"
_PURPOSE_CREDENTIAL = b"forehand/1 session credential"


class TokenClaims(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What a resumption token asserts; the sealer encrypts and authenticates all of it."""

    session_id: bytes
    """The session (16 bytes) whose parts may resume."""
    parts: tuple[str, ...]
    """The parts the bearer may resume; a RESUME naming others is WRONG_PART."""
    target_server: str
    """The server the token is for. Servers also accept an empty one (any server holding the
    parts), which no `forehand.core` node issues: each server's replay cache would admit it once."""
    map_version: int
    """The shard-map version that placed the parts on the target."""
    expires_us: int
    """The token opens until this instant (cluster clock, microseconds) and not at or after it."""
    nonce: int
    """Random, unique per token (64 bits): the replay cache remembers it until `expires_us`."""


class CredentialClaims(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """What a session credential asserts: the bearer owns the session until it expires."""

    session_id: bytes
    """The session (16 bytes) the credential names."""
    client_id: bytes
    """The client (16 bytes) the session was opened for."""
    expires_us: int
    """The credential is valid until this instant (microseconds)."""


class TokenError(RemoteProtocolError):
    """A token or credential the peer presented is refused; `reject_reason` goes on the wire.

    The subclasses are named after the RESUME_REJECT reasons they map to, not with an Error suffix.
    """

    reject_reason: ClassVar[ResumeRejectReason] = ResumeRejectReason.UNSPECIFIED
    """The RESUME_REJECT reason that tells the client why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=ErrorCode.UNAUTHENTICATED)


class TokenInvalid(TokenError):  # noqa: N818
    """Malformed, forged, tampered with, sealed for another purpose, or under an unknown key."""

    reject_reason = ResumeRejectReason.TOKEN_INVALID


class TokenKeyUnknown(TokenInvalid):
    """Sealed under a key id this node does not hold: not added here yet (a key rollout out of
    order: every node must hold a key before any seals with it), or retired. Not proof of a
    forgery, so the session manager does not end a session for it."""


class TokenExpired(TokenError):  # noqa: N818
    """Authentic but past its expiry."""

    reject_reason = ResumeRejectReason.TOKEN_EXPIRED

    def __init__(self, message: str, *, session_id: bytes | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id
        """The session an expired credential names (authentic, so its holder once held the
        session); None for tokens."""


class TokenReplayed(TokenError):  # noqa: N818
    """Authentic and unexpired, but its nonce was already used."""

    reject_reason = ResumeRejectReason.TOKEN_REPLAYED


class ReplayCacheFull(TokenError):  # noqa: N818
    """The replay cache holds `entries_max` unexpired nonces; the RESUME is refused for now."""

    reject_reason = ResumeRejectReason.OVERLOADED


class KeyRing:
    """Cluster keys by id: one current key seals, every key still held opens.

    Rotation is three steps spread over time: `add` the new key on every node, `rotate` to it once
    all nodes have it (so every node can open what any node seals), then `retire` the old key once
    the longest-lived thing sealed under it (a credential) has expired.
    """

    def __init__(
        self,
        keys: Mapping[int, bytes],
        *,
        current_key_id: int,
        keys_max: int = KEY_RING_KEYS_MAX,
    ) -> None:
        if keys_max < 1:
            raise LocalProtocolError(f"keys_max must be positive, got {keys_max}")
        self._keys_max = keys_max
        self._aeads: dict[int, AESGCM] = {}
        self._fingerprints: dict[int, bytes] = {}
        for key_id in sorted(keys):
            self.add(key_id, keys[key_id])
        if current_key_id not in self._aeads:
            raise LocalProtocolError(f"current key id {current_key_id} is not in the ring")
        self._current_key_id = current_key_id

    @property
    def current_key_id(self) -> int:
        """The id of the key that seals."""
        return self._current_key_id

    @property
    def key_ids(self) -> tuple[int, ...]:
        """Every key id the ring opens, ascending."""
        return tuple(sorted(self._aeads))

    def add(self, key_id: int, key: bytes) -> None:
        """Hold one more key, for opening only until `rotate` makes it current."""
        if not 0 <= key_id <= KEY_ID_MAX:
            raise LocalProtocolError(f"key id must fit 32 bits, got {key_id}")
        if len(key) != KEY_BYTES:
            raise LocalProtocolError(f"cluster keys are {KEY_BYTES} bytes, got {len(key)}")
        if key_id in self._aeads:
            raise LocalProtocolError(f"key id {key_id} is already in the ring")
        if len(self._aeads) >= self._keys_max:
            raise LocalProtocolError(f"the key ring holds keys_max={self._keys_max} keys")
        self._aeads[key_id] = AESGCM(key)
        self._fingerprints[key_id] = key_fingerprint(key)

    def fingerprints(self) -> tuple[tuple[int, bytes], ...]:
        """`(key id, key_fingerprint)` of every key the ring opens, by id: what two nodes
        compare to tell whether they hold the same keys, revealing none."""
        return tuple(sorted(self._fingerprints.items()))

    def rotate(self, key_id: int) -> None:
        """Seal with `key_id` from now on; the previous current key still opens."""
        if key_id not in self._aeads:
            raise LocalProtocolError(f"cannot rotate to unknown key id {key_id}")
        self._current_key_id = key_id

    def retire(self, key_id: int) -> None:
        """Stop opening what `key_id` sealed; the current key cannot be retired."""
        if key_id == self._current_key_id:
            raise LocalProtocolError("cannot retire the current key; rotate first")
        if key_id not in self._aeads:
            raise LocalProtocolError(f"cannot retire unknown key id {key_id}")
        del self._aeads[key_id]
        del self._fingerprints[key_id]

    def aead(self, key_id: int) -> AESGCM | None:
        """The cipher for `key_id`, or None when the ring does not hold it."""
        return self._aeads.get(key_id)

    def current_aead(self) -> AESGCM:
        """The cipher that seals."""
        return self._aeads[self._current_key_id]


KEY_FINGERPRINT_BYTES = 8
"""Bytes of a key's fingerprint (`key_fingerprint`)."""
_FINGERPRINT_LABEL = b"forehand/1 key fingerprint"


def key_fingerprint(key: bytes) -> bytes:
    """The first `KEY_FINGERPRINT_BYTES` of HMAC-SHA256 under `key` of a fixed label: equal for
    equal keys, and telling nothing of the key."""
    return hmac.new(key, _FINGERPRINT_LABEL, hashlib.sha256).digest()[:KEY_FINGERPRINT_BYTES]


def key_ring_mismatch(
    own: tuple[tuple[int, bytes], ...],
    other: tuple[tuple[int, bytes], ...],
    *,
    current_key_id: int,
    other_key_id: int = -1,
    holder: str = "the manager",
) -> str | None:
    """Why a node holding the keys of fingerprints `other` and sealing with `other_key_id`
    could not work with `holder` (the manager, or another server), which holds `own` and seals
    with `current_key_id` (-1: not said, not checked), or None. A key id both hold must be the
    same key; `other` must hold the holder's sealing key (what the manager seals, the session
    credentials every client presents, must open there; what a server seals, the credentials it
    renews, too, as the client presents them wherever its parts move), and the holder the
    node's. During a rotation as `KeyRing` says (add the key on every node, then rotate) the
    rings differ only by keys neither seals with. `other` empty: not said, not checked;
    `other_key_id` -1: not said."""
    if not other:
        return None
    mine = dict(own)
    differing = sorted(
        key_id for key_id, print_ in other if key_id in mine and mine[key_id] != print_
    )
    if differing:
        return (
            f"key id(s) {differing} hold other keys than {holder}'s: the cluster's keys "
            "file (cluster-keys.toml) must be the same on every node"
        )
    if other_key_id >= 0 and other_key_id not in mine:
        return (
            f"this node seals with key id {other_key_id}, which {holder} does not hold (it "
            f"holds {sorted(mine)}): a new key must be added on every node, the manager "
            "included (and each restarted), before any node seals with it"
        )
    held = sorted(key_id for key_id, _ in other)
    if current_key_id >= 0 and current_key_id not in held:
        return (
            f"{holder} seals with key id {current_key_id}, which this node does not hold "
            f"(it holds {held}): the cluster's keys file (cluster-keys.toml) must be the same "
            "on every node, and a new key added on every node before it seals"
        )
    return None


_token_encoder = msgspec.msgpack.Encoder()
_token_decoder = msgspec.msgpack.Decoder(TokenClaims)
_credential_decoder = msgspec.msgpack.Decoder(CredentialClaims)


class TokenSealer:
    """Seals and opens tokens and credentials with a key ring and an injected random source."""

    def __init__(self, key_ring: KeyRing, *, rng: random.Random) -> None:
        self.key_ring = key_ring
        """The keys; rotate and retire through it, the sealer always reads the current state."""
        self._rng = rng

    def new_nonce(self) -> int:
        """A fresh single-use claims nonce from the injected random source."""
        return self._rng.getrandbits(CLAIMS_NONCE_BITS)

    def issue_token(
        self,
        *,
        session_id: bytes,
        parts: tuple[str, ...],
        target_server: str,
        map_version: int,
        now_us: int,
        lifetime_ms: int,
    ) -> bytes:
        """Seal fresh claims valid for `lifetime_ms` from `now_us`, with a new nonce."""
        assert lifetime_ms > 0, lifetime_ms
        claims = TokenClaims(
            session_id=session_id,
            parts=parts,
            target_server=target_server,
            map_version=map_version,
            expires_us=now_us + lifetime_ms * 1000,
            nonce=self.new_nonce(),
        )
        return self.seal(claims)

    def issue_credential(
        self, *, session_id: bytes, client_id: bytes, now_us: int, lifetime_ms: int
    ) -> bytes:
        """Seal a session credential valid for `lifetime_ms` from `now_us`."""
        assert lifetime_ms > 0, lifetime_ms
        claims = CredentialClaims(
            session_id=session_id, client_id=client_id, expires_us=now_us + lifetime_ms * 1000
        )
        return self.seal_credential(claims)

    def seal(self, claims: TokenClaims) -> bytes:
        """The sealed resumption token for `claims`, under the current key."""
        assert 0 <= claims.nonce < 1 << CLAIMS_NONCE_BITS, claims.nonce
        return self._seal(_token_encoder.encode(claims), _PURPOSE_TOKEN)

    def seal_credential(self, claims: CredentialClaims) -> bytes:
        """The sealed session credential for `claims`, under the current key."""
        return self._seal(_token_encoder.encode(claims), _PURPOSE_CREDENTIAL)

    def open(self, token: bytes, *, now_us: int) -> TokenClaims:
        """The claims of an authentic, unexpired token; raises TokenInvalid or TokenExpired.

        Replay is not checked here: the server that accepts the RESUME records the nonce in its
        `ReplayCache`, after its own checks (target, parts, map version) passed.
        """
        plaintext = self._open(token, _PURPOSE_TOKEN)
        try:
            claims = _token_decoder.decode(plaintext)
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            raise TokenInvalid(f"token claims do not decode: {error}") from error
        if now_us >= claims.expires_us:
            raise TokenExpired(f"token expired at {claims.expires_us} us, now {now_us} us")
        return claims

    def open_credential(self, credential: bytes, *, now_us: int) -> CredentialClaims:
        """The claims of an authentic, unexpired credential; raises TokenInvalid or TokenExpired."""
        plaintext = self._open(credential, _PURPOSE_CREDENTIAL)
        try:
            claims = _credential_decoder.decode(plaintext)
        except (msgspec.DecodeError, UnicodeDecodeError) as error:
            raise TokenInvalid(f"credential claims do not decode: {error}") from error
        if now_us >= claims.expires_us:
            raise TokenExpired(
                f"credential expired at {claims.expires_us} us, now {now_us} us",
                session_id=claims.session_id,
            )
        return claims

    def _seal(self, plaintext: bytes, purpose: bytes) -> bytes:
        header = _HEADER.pack(TOKEN_FORMAT_VERSION, self.key_ring.current_key_id)
        nonce = self._rng.getrandbits(NONCE_BYTES * 8).to_bytes(NONCE_BYTES, "big")
        ciphertext = self.key_ring.current_aead().encrypt(nonce, plaintext, header + purpose)
        return header + nonce + ciphertext

    def _open(self, sealed: bytes, purpose: bytes) -> bytes:
        if len(sealed) < _SEALED_BYTES_MIN:
            raise TokenInvalid(f"sealed value too short: {len(sealed)} bytes")
        version, key_id = _HEADER.unpack_from(sealed)
        if version != TOKEN_FORMAT_VERSION:
            raise TokenInvalid(f"unknown token format version {version}")
        aead = self.key_ring.aead(key_id)
        if aead is None:
            raise TokenKeyUnknown(f"unknown or retired key id {key_id}")
        header = sealed[:_HEADER_BYTES]
        nonce = sealed[_HEADER_BYTES : _HEADER_BYTES + NONCE_BYTES]
        try:
            return aead.decrypt(nonce, sealed[_HEADER_BYTES + NONCE_BYTES :], header + purpose)
        except InvalidTag as error:
            raise TokenInvalid("token authentication failed") from error


class ReplayCache:
    """Nonces of accepted tokens, each kept until its token expires: a token works once.

    The bound is `entries_max` unexpired nonces. When it is reached the cache refuses the new
    token (`ReplayCacheFull`, sent as RESUME_REJECT OVERLOADED) instead of forgetting an old nonce:
    forgetting would silently make an unexpired token usable a second time, which breaks the
    single-use promise exactly when the server is busiest (and when an attacker floods it). A
    refusal is visible and safe: the client tries the next target or asks the manager, and the
    cache drains by itself as tokens expire. Size it as resumes per second times token lifetime.
    """

    def __init__(self, *, entries_max: int) -> None:
        if entries_max < 1:
            raise LocalProtocolError(f"entries_max must be positive, got {entries_max}")
        self._entries_max = entries_max
        self._expiry_by_nonce: dict[int, int] = {}
        self._expiry_heap: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self._expiry_by_nonce)

    @property
    def entries_max(self) -> int:
        """The bound on nonces held."""
        return self._entries_max

    def admit(self, claims: TokenClaims, *, now_us: int) -> None:
        """Record the token's nonce, or raise TokenReplayed / ReplayCacheFull / TokenExpired."""
        self.expire(now_us=now_us)
        if now_us >= claims.expires_us:
            raise TokenExpired(f"token expired at {claims.expires_us} us, now {now_us} us")
        if claims.nonce in self._expiry_by_nonce:
            raise TokenReplayed(f"token nonce {claims.nonce:#x} was already used")
        if len(self._expiry_by_nonce) >= self._entries_max:
            raise ReplayCacheFull(f"replay cache holds entries_max={self._entries_max} nonces")
        self._expiry_by_nonce[claims.nonce] = claims.expires_us
        heapq.heappush(self._expiry_heap, (claims.expires_us, claims.nonce))

    def expire(self, *, now_us: int) -> None:
        """Forget the nonces of tokens that expired at or before `now_us`: they cannot open."""
        heap = self._expiry_heap
        while heap and heap[0][0] <= now_us:
            _, nonce = heapq.heappop(heap)
            del self._expiry_by_nonce[nonce]
