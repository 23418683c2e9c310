"""QUIC Retry tokens (RFC 9000 s.8.1.2): a listener's stateless proof that a client receives
packets at the address it sends from.

A token is the time it was issued, the client's original destination connection id and the
Retry's source connection id, followed by an HMAC-SHA256 over those and the client's address
(host and port) under a key of the listener:

    issued_us (8 bytes, big-endian) | odcid length (1) | odcid | rscid length (1) | rscid | mac (32)

Checking one costs one HMAC, whatever the token holds, so a flood of forged tokens costs the
listener little CPU (qh3's own handler RSA-decrypts every token, about a millisecond each, and
its tokens never expire). Tokens expire `lifetime_ms` after they are issued; one dated after
`now_us` is refused too. The handler is sans-IO: it reads no clock and draws no randomness, the
caller passes `now_us` and the key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

__all__ = ["RETRY_KEY_BYTES", "RetryTokens"]

RETRY_KEY_BYTES = 32
"""Length of a listener's token key."""
_MAC_BYTES = hashlib.sha256().digest_size
_ISSUED_BYTES = 8
_CONNECTION_ID_BYTES_MAX = 20
"""The longest QUIC version 1 connection id (RFC 9000 s.17.2)."""
_TOKEN_BYTES_MIN = _ISSUED_BYTES + 2 + _MAC_BYTES
_TOKEN_BYTES_MAX = _TOKEN_BYTES_MIN + 2 * _CONNECTION_ID_BYTES_MAX


class RetryTokens:
    """Issues and checks the Retry tokens of one listener.

    `create_token` and `validate_token` take the arguments qh3's QuicServer passes to its retry
    handler, plus `now_us`."""

    __slots__ = ("_key", "_lifetime_us")

    def __init__(self, *, key: bytes, lifetime_ms: int) -> None:
        assert len(key) == RETRY_KEY_BYTES, f"a retry key is {RETRY_KEY_BYTES} bytes"
        assert lifetime_ms > 0, "a token must live a while"
        self._key = key
        self._lifetime_us = lifetime_ms * 1000

    def create_token(
        self,
        addr: Any,
        original_destination_connection_id: bytes,
        retry_source_connection_id: bytes,
        *,
        now_us: int,
    ) -> bytes:
        """A token for the client at `addr` (host, port, ...) issued at `now_us`."""
        assert 0 <= now_us < 1 << 63, now_us
        for connection_id in (original_destination_connection_id, retry_source_connection_id):
            assert len(connection_id) <= _CONNECTION_ID_BYTES_MAX, connection_id
        body = b"".join(
            (
                now_us.to_bytes(_ISSUED_BYTES, "big"),
                bytes((len(original_destination_connection_id),)),
                original_destination_connection_id,
                bytes((len(retry_source_connection_id),)),
                retry_source_connection_id,
            )
        )
        return body + self._mac(body, addr)

    def validate_token(self, addr: Any, token: bytes, *, now_us: int) -> tuple[bytes, bytes]:
        """(original destination connection id, retry source connection id) of a token this
        handler issued to `addr` no more than `lifetime_ms` before `now_us`; ValueError for any
        other token."""
        if not _TOKEN_BYTES_MIN <= len(token) <= _TOKEN_BYTES_MAX:
            raise ValueError("not a retry token: wrong length")
        body, mac = token[:-_MAC_BYTES], token[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(body, addr)):
            raise ValueError("retry token not issued by this listener to this address")
        # The body is this handler's own from here on: its lengths are consistent.
        issued_us = int.from_bytes(body[:_ISSUED_BYTES], "big")
        if not issued_us <= now_us <= issued_us + self._lifetime_us:
            raise ValueError("retry token expired, or issued in the future")
        original_end = _ISSUED_BYTES + 1 + body[_ISSUED_BYTES]
        original = body[_ISSUED_BYTES + 1 : original_end]
        retry = body[original_end + 1 :]
        assert len(retry) == body[original_end], "a token's MAC covers its lengths"
        return original, retry

    def _mac(self, body: bytes, addr: Any) -> bytes:
        host = str(addr[0]).encode()
        port = int(addr[1])
        message = b"".join((body, bytes((len(host),)), host, port.to_bytes(2, "big")))
        return hmac.digest(self._key, message, "sha256")
