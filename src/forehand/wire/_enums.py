"""The registries of `forehand/1`: frame types, reason, error and status codes, flags.

Each registry says what a receiver does with a value it does not know. Reason codes and resume
reject reasons fall back to UNSPECIFIED, error codes to PROTOCOL_ERROR, flags keep unknown bits;
an unknown response status, handoff state, address type or path metric is handled as
docs/PROTOCOL.md says for that field.
"""

from __future__ import annotations

from enum import Enum, IntEnum, IntFlag

__all__ = [
    "AddressType",
    "ErrorCode",
    "FrameType",
    "HandoffFlag",
    "HandoffState",
    "PathMetric",
    "PeerRole",
    "ReasonCode",
    "ResponseStatus",
    "ResumeRejectReason",
    "StreamType",
    "is_greased",
    "is_greased_version",
]

GREASE_STEP = 0x1F
"""Greased values are `GREASE_STEP * n + GREASE_OFFSET`, as in HTTP/3 (RFC 9114 s.7.2.8)."""
GREASE_OFFSET = 0x21
"""See GREASE_STEP."""


GREASED_VERSION_MASK = 0x0F0F0F0F
"""A HELLO version `v` is greased when `v & GREASED_VERSION_MASK == GREASED_VERSION_PATTERN`."""
GREASED_VERSION_PATTERN = 0x0A0A0A0A
"""See GREASED_VERSION_MASK; servers ignore such versions, like QUIC's reserved versions."""


def is_greased_version(version: int) -> bool:
    """Whether a HELLO version is a greased one that no server ever selects."""
    return version & GREASED_VERSION_MASK == GREASED_VERSION_PATTERN


def is_greased(value: int) -> bool:
    """Whether `value` is a greased code point, never assigned in any registry."""
    return value >= GREASE_OFFSET and (value - GREASE_OFFSET) % GREASE_STEP == 0


class FrameType(IntEnum):
    """Frame types. 0x01-0x3f are `forehand/1` frames, 0x40-0x7f cluster-internal frames.

    Unknown types below 0x80 are a connection error; unknown types from 0x80 up (extensions,
    private use, greased values) are skipped by the receiver. SETTINGS is a `forehand/1` frame
    in that range: optional, skipped by a receiver that does not know it.
    """

    HELLO = 0x01
    WELCOME = 0x02
    ERROR = 0x03
    GOAWAY = 0x04
    PING = 0x05
    PONG = 0x06
    OPEN_SESSION = 0x08
    SESSION_OPENED = 0x09
    CLOSE_SESSION = 0x0A
    REQUEST = 0x10
    RESPONSE = 0x11
    REDIRECT = 0x12
    MAP_REQUEST = 0x18
    MAP_UPDATE = 0x19
    HANDOFF = 0x20
    HANDOFF_STATUS = 0x21
    RESUME = 0x22
    RESUME_OK = 0x23
    RESUME_REJECT = 0x24
    CLUSTER_MESSAGE = 0x40
    SETTINGS = 0x80
    """In the extension range: a receiver that does not know it skips it."""
    OPEN_SESSION_REFUSED = 0x81
    """In the extension range: a client that does not know it skips it (its open times out)."""


STANDARD_FRAME_TYPES = range(0x00, 0x40)
"""Frame types of `forehand/1` itself; unassigned ones are reserved and an error to receive."""
CLUSTER_FRAME_TYPES = range(0x40, 0x80)
"""Frame types only exchanged between servers and managers on mutually authenticated links."""
EXTENSION_FRAME_TYPES_MIN = 0x80
"""From this type up, a receiver skips frames whose type it does not know."""
PRIVATE_FRAME_TYPES = range(0x3E00, 0x4000)
"""Frame types for private use between consenting deployments (skipped when unknown)."""


class ReasonCode(IntEnum):
    """Why a server hands a session off or goes away. Unknown codes mean UNSPECIFIED."""

    UNSPECIFIED = 0x00
    PLANNED_MAINTENANCE = 0x01
    REBALANCE = 0x02
    PREDICTED_FAILURE = 0x03
    OVERLOAD = 0x04
    PART_MOVED = 0x05
    ZONE_EVACUATION = 0x06
    LOCALITY = 0x07
    SCALE_IN = 0x08
    TRY_AGAIN_LATER = 0x09
    IMMEDIATE = 0x0A

    @classmethod
    def from_wire(cls, value: int) -> ReasonCode:
        """The code for a received value; unknown, private and greased ones are UNSPECIFIED."""
        return _REASON_CODES.get(value, ReasonCode.UNSPECIFIED)


_REASON_CODES = {int(code): code for code in ReasonCode}

REASON_CODES_STANDARD = range(0x0000, 0x0040)
"""Reason codes assigned by this specification; unassigned ones are reserved."""
REASON_CODES_PRIVATE = range(0xFF00, 0x1_0000)
"""Reason codes for private use (reason codes are 16-bit fields)."""


class ErrorCode(IntEnum):
    """Why a connection is closed with ERROR. Unknown codes mean PROTOCOL_ERROR."""

    NO_ERROR = 0x00
    PROTOCOL_ERROR = 0x01
    INTERNAL_ERROR = 0x02
    FRAME_ENCODING_ERROR = 0x03
    FRAME_TOO_LARGE = 0x04
    FRAME_UNEXPECTED = 0x05
    UNKNOWN_FRAME_TYPE = 0x06
    VERSION_NEGOTIATION_FAILED = 0x07
    UNAUTHENTICATED = 0x08
    LIMIT_EXCEEDED = 0x09
    CLOSED_CRITICAL_STREAM = 0x0A
    IDLE_TIMEOUT = 0x0B
    TRUNCATED_STREAM = 0x0C
    SUPERSEDED = 0x0D
    """A newer incarnation of the sender's node id runs: this process is a stale duplicate."""

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        """The code for a received value; unknown ones are PROTOCOL_ERROR."""
        return _ERROR_CODES.get(value, ErrorCode.PROTOCOL_ERROR)


_ERROR_CODES = {int(code): code for code in ErrorCode}


class ResponseStatus(IntEnum):
    """The outcome of one REQUEST. An unknown status is a FRAME_ENCODING_ERROR."""

    OK = 0x00
    APP_ERROR = 0x01
    NOT_FOUND = 0x02
    """The session is unknown to this server."""
    OVERLOADED = 0x03
    UNKNOWN_OP = 0x04
    UNAUTHORIZED = 0x05
    DEADLINE_EXCEEDED = 0x06
    TRY_AGAIN = 0x07
    """The part is moving; retry after the next MAP_UPDATE or HANDOFF."""
    BAD_REQUEST = 0x08


class HandoffState(IntEnum):
    """What a client reports about one HANDOFF. An unknown state is a FRAME_ENCODING_ERROR."""

    ACCEPTED = 0x01
    COMPLETED = 0x02
    DECLINED = 0x03
    FAILED = 0x04


class HandoffFlag(IntFlag):
    """Bits of HANDOFF.flags. Unknown bits are kept and ignored."""

    NONE = 0x00
    URGENT = 0x01
    """Move now: the source expects to fail before the deadline."""
    MAKE_BEFORE_BREAK_REQUIRED = 0x02
    """The client MUST keep the old connection until the target answers RESUME_OK."""
    PREWARMED = 0x04
    """The target already holds the parts' state; resuming costs no state transfer."""


class ResumeRejectReason(IntEnum):
    """Why a RESUME was refused. Unknown reasons mean UNSPECIFIED."""

    UNSPECIFIED = 0x00
    TOKEN_EXPIRED = 0x01
    TOKEN_REPLAYED = 0x02
    TOKEN_INVALID = 0x03
    WRONG_PART = 0x04
    SHARD_MAP_STALE = 0x05
    WRONG_SERVER = 0x06
    SESSION_UNKNOWN = 0x07
    OVERLOADED = 0x08
    HELLO_CREDENTIAL_EXPIRED = 0x09
    """Sent unasked after WELCOME, answering no RESUME: the session's credential in HELLO had
    expired, so the session is not bound to this connection."""
    CREDENTIAL_REFUSED = 0x0A
    """Sent unasked, answering no RESUME: the session's credential does not verify, so the
    session is not bound to this connection. From a server, after the WELCOME of a HELLO that
    presented it (forged, tampered with, sealed under a key the server does not hold, another
    session's); from the session manager, after the WELCOME of a HELLO or before the MAP_UPDATE
    of a MAP_REQUEST that presented it (expired too), which ends the session at the client."""

    @classmethod
    def from_wire(cls, value: int) -> ResumeRejectReason:
        """The reason for a received value; unknown ones are UNSPECIFIED."""
        return _RESUME_REJECT_REASONS.get(value, ResumeRejectReason.UNSPECIFIED)


_RESUME_REJECT_REASONS = {int(reason): reason for reason in ResumeRejectReason}


class AddressType(IntEnum):
    """How an endpoint's address is encoded. An unknown type is a FRAME_ENCODING_ERROR."""

    IPV4 = 0x01
    IPV6 = 0x02
    DNS = 0x03


class PathMetric(IntEnum):
    """Metric identifiers inside a PING's path telemetry. Unknown metrics are skipped."""

    RTT_US = 0x01
    JITTER_US = 0x02
    LOSS_PPM = 0x03
    THROUGHPUT_BPS = 0x04
    RTT_MIN_US = 0x05
    RETRANSMISSIONS = 0x06
    PROBE = 0x07


class StreamType(IntEnum):
    """The prefix of a unidirectional QUIC stream; unknown (and greased) types are ignored."""

    CONTROL = 0x00


class PeerRole(Enum):
    """Who sent the frames a decoder reads; decides which frame types are allowed."""

    CLIENT = "client"
    SERVER = "server"
    CLUSTER_NODE = "cluster_node"
