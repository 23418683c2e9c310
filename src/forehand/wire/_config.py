"""Constants and named bounds of `forehand/1`.

Every variable-length field on the wire has a bound here; docs/PROTOCOL.md states the defaults
and a decoder rejects a frame that exceeds them before it allocates anything for the excess.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from forehand.errors import ConfigError

__all__ = [
    "ALPN",
    "DNS_NAME_BYTES_MAX",
    "FRAME_BYTES_MAX_FLOOR",
    "FRAME_HEADER_BYTES_MAX",
    "NAME_BYTES_MAX",
    "OP_NAME_BYTES_MAX",
    "PROTOCOL_VERSION",
    "SESSION_ID_BYTES",
    "VARINT_MAX",
    "WireConfig",
]

ALPN = "forehand/1"
"""The ALPN identifier that selects this protocol on QUIC and on TLS 1.3 over TCP."""
PROTOCOL_VERSION = 1
"""The version number HELLO offers and WELCOME selects for `forehand/1`."""
VARINT_MAX = (1 << 62) - 1
"""The largest value a variable-length integer (RFC 9000 s.16) can carry."""
FRAME_HEADER_BYTES_MAX = 16
"""The longest frame header: an 8-byte type and an 8-byte length."""
SESSION_ID_BYTES = 16
"""Session ids and client ids are 128-bit UUIDv7 values, sent as 16 raw bytes."""
DNS_NAME_BYTES_MAX = 253
"""The longest DNS name in an endpoint (RFC 1035)."""
NAME_BYTES_MAX = 255
"""Names (part, op, server id, DNS name) carry an 8-bit length."""
OP_NAME_BYTES_MAX = 127
"""REQUEST's op length byte keeps its high bit for the wait budget flag: op names fit 7 bits."""
FRAME_BYTES_MAX_FLOOR = 16_384
"""No endpoint may advertise a frame_bytes_max below this; every peer can send this much."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WireConfig:
    """The bounds a frame encoder and decoder enforce; one per connection."""

    frame_bytes_max: int = 1 << 20
    """Largest frame body accepted (the length field); larger frames are FRAME_TOO_LARGE."""
    server_id_bytes_max: int = 64
    """Longest server id (UTF-8)."""
    part_name_bytes_max: int = 128
    """Longest part name (UTF-8)."""
    op_name_bytes_max: int = 64
    """Longest operation name (UTF-8)."""
    message_bytes_max: int = 1024
    """Longest human-readable text: ERROR reasons and RESUME_REJECT messages (UTF-8)."""
    credential_bytes_max: int = 256
    """Longest session credential."""
    token_bytes_max: int = 1024
    """Longest resumption token."""
    versions_max: int = 16
    """Most protocol versions one HELLO may offer."""
    credentials_max: int = 1024
    """Most session credentials one HELLO (or MAP_REQUEST) may present: as many sessions as the
    session manager keeps bound per connection (`client_sessions_max`), so that a client
    reconnecting, or locating the parts a crashed server led, proves them in one frame (about
    150 KiB with credentials of 128 bytes) rather than in one round trip per 64."""
    parts_max: int = 64
    """Most parts one frame may name (OPEN_SESSION, HANDOFF, RESUME, RESUME_OK)."""
    placements_max: int = 64
    """Most part placements one SESSION_OPENED may carry."""
    replicas_max: int = 8
    """Most replica endpoints per placement."""
    targets_max: int = 8
    """Most target endpoints in a HANDOFF or REDIRECT."""
    extensions_max: int = 16
    """Most TLV extensions in a HANDOFF."""
    extension_bytes_max: int = 1024
    """Longest value of one TLV extension."""
    unanswered_max: int = 1024
    """Most request ids one RESUME may list as unanswered."""
    telemetry_samples_max: int = 32
    """Most path samples one PING may carry."""
    telemetry_metrics_max: int = 16
    """Most metrics one path sample may carry."""
    settings_max: int = 64
    """Most (id, value) pairs one SETTINGS may carry, ids unknown to the receiver included."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"WireConfig.{field.name} must be a positive int, got {value!r}")
        for name in ("server_id_bytes_max", "part_name_bytes_max", "op_name_bytes_max"):
            if getattr(self, name) > NAME_BYTES_MAX:
                raise ConfigError(f"WireConfig.{name} must be at most {NAME_BYTES_MAX}")
        if self.op_name_bytes_max > OP_NAME_BYTES_MAX:
            raise ConfigError(f"WireConfig.op_name_bytes_max must be at most {OP_NAME_BYTES_MAX}")
        if self.frame_bytes_max < FRAME_BYTES_MAX_FLOOR:
            raise ConfigError(
                f"WireConfig.frame_bytes_max must be at least {FRAME_BYTES_MAX_FLOOR}, "
                f"got {self.frame_bytes_max}"
            )
        if self.frame_bytes_max > VARINT_MAX:
            raise ConfigError("WireConfig.frame_bytes_max must fit a variable-length integer")

    @property
    def buffered_bytes_max(self) -> int:
        """The most bytes a FrameDecoder holds once drained: one incomplete frame."""
        return self.frame_bytes_max + FRAME_HEADER_BYTES_MAX


DEFAULT_CONFIG = WireConfig()
"""The bounds docs/PROTOCOL.md gives as defaults."""
