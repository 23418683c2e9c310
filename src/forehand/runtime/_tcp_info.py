"""Path statistics of a TCP connection from the kernel's `TCP_INFO` socket option (Linux).

`struct tcp_info` (linux/tcp.h) only ever grows at its end, so the offsets below hold on every
kernel that returns at least `_TCP_INFO_BYTES_MIN` bytes. Elsewhere, or when the socket is
gone, the statistics are empty rather than guessed.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from forehand.runtime.transport import PathStats

__all__ = ["tcp_path_stats"]

_TCP_INFO_BYTES_MIN = 152
"""Up to and including tcpi_min_rtt (Linux 4.6 and later); tcpi_bytes_acked,
tcpi_bytes_received and tcpi_segs_out (Linux 4.1 and 4.2) come before it."""
_OFFSET_LOST = 32
_OFFSET_RTT = 68
_OFFSET_RTT_VARIANCE = 72
_OFFSET_SEND_MSS = 16
_OFFSET_SEND_CONGESTION_WINDOW = 80
_OFFSET_TOTAL_RETRANSMITS = 100
_OFFSET_MIN_RTT = 148
_OFFSET_BYTES_ACKED = 120
_OFFSET_BYTES_RECEIVED = 128
_OFFSET_SEGMENTS_OUT = 136
_UINT64 = struct.Struct("=Q")
_UINT32 = struct.Struct("=I")
_NO_MIN_RTT = 0xFFFFFFFF
"""The kernel's value for tcpi_min_rtt before the first sample (~0U)."""


def tcp_path_stats(sock: Any, *, send_buffer_bytes: int) -> PathStats:
    """Figures of the kernel's TCP_INFO for `sock`, or empty stats when it has none."""
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return PathStats(source="none", send_buffer_bytes=send_buffer_bytes)
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 256)
    except (OSError, ValueError):
        return PathStats(source="none", send_buffer_bytes=send_buffer_bytes)
    if len(info) < _TCP_INFO_BYTES_MIN:
        return PathStats(source="none", send_buffer_bytes=send_buffer_bytes)

    def field(offset: int) -> int:
        value: int = _UINT32.unpack_from(info, offset)[0]
        return value

    rtt_us = field(_OFFSET_RTT)
    rtt_min_us = field(_OFFSET_MIN_RTT)
    return PathStats(
        source="tcp_info",
        rtt_smoothed_us=rtt_us,
        rtt_min_us=None if rtt_min_us == _NO_MIN_RTT else rtt_min_us,
        rtt_variance_us=field(_OFFSET_RTT_VARIANCE),
        rtt_sample_count=1 if rtt_us else 0,
        packets_lost_count=field(_OFFSET_LOST),
        packets_retransmitted_count=field(_OFFSET_TOTAL_RETRANSMITS),
        congestion_window_bytes=field(_OFFSET_SEND_CONGESTION_WINDOW) * field(_OFFSET_SEND_MSS),
        send_buffer_bytes=send_buffer_bytes,
        packets_sent_count=field(_OFFSET_SEGMENTS_OUT),
        bytes_sent_count=_UINT64.unpack_from(info, _OFFSET_BYTES_ACKED)[0],
        bytes_received_count=_UINT64.unpack_from(info, _OFFSET_BYTES_RECEIVED)[0],
    )
