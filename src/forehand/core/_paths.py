"""Clients' path reports, as a server keeps them for the manager: bounded, bucketed, rotating.

A client's PING carries its measurements of its paths to servers (`forehand.wire.PathSample`):
the serving ones and the potential targets it probes. The server that receives them does not
keep one entry per client: it hashes the client's HELLO id into one of `path_buckets_max`
buckets and keeps the newest report per (bucket, server the path leads to), at most
`path_reports_max` of them, the least recently refreshed going first. Each heartbeat carries at
most `heartbeat_paths_max` of them, rotating so that every path goes out in turn; a report not
refreshed for `path_report_ttl_ms` is dropped instead of being sent again.
"""

from __future__ import annotations

import hashlib

from forehand.core.messages import PathReport
from forehand.wire import PathSample

__all__ = ["PathTable", "client_bucket", "path_report"]

_LOSS_PPM_SCALE = 1_000_000
_BITS_PER_BYTE = 8


def client_bucket(client_id: bytes, *, buckets: int) -> int:
    """The bucket of a client id: a stable hash (the same on every server) modulo `buckets`."""
    assert buckets >= 1, buckets
    digest = hashlib.blake2b(client_id, digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def path_report(sample: PathSample, *, client_bucket: int) -> PathReport | None:
    """The `PathReport` of one PING sample, or None when it carries no RTT (nothing measured)."""
    if sample.rtt_us is None:
        return None
    rtt_us = sample.rtt_us
    loss_ppm = min(sample.loss_ppm or 0, _LOSS_PPM_SCALE)
    return PathReport(
        client_bucket=client_bucket,
        server_id=sample.server_id,
        rtt_us=rtt_us,
        rtt_us_min=min(rtt_us, sample.rtt_min_us if sample.rtt_min_us is not None else rtt_us),
        jitter_us=sample.jitter_us or 0,
        loss_ratio=loss_ppm / _LOSS_PPM_SCALE,
        retransmissions=sample.retransmissions or 0,
        throughput_bytes_per_second=(sample.throughput_bps or 0) / _BITS_PER_BYTE,
        probe=bool(sample.probe),
    )


class PathTable:
    """The newest report per (client bucket, server), bounded, with a rotating batch cursor."""

    __slots__ = ("_cursor", "_entries", "_reports_max", "_ttl_us")

    def __init__(self, *, reports_max: int, ttl_ms: int) -> None:
        assert reports_max >= 1 and ttl_ms >= 1, (reports_max, ttl_ms)
        self._reports_max = reports_max
        self._ttl_us = ttl_ms * 1000
        # (bucket, server_id) -> (report, refreshed_us); insertion order is refresh order, so
        # the first entry is always the stalest.
        self._entries: dict[tuple[int, str], tuple[PathReport, int]] = {}
        self._cursor = 0

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, report: PathReport, *, now_us: int) -> None:
        """Keep `report` as the newest of its path; the stalest path goes past the bound."""
        key = (report.client_bucket, report.server_id)
        entries = self._entries
        entries.pop(key, None)
        while len(entries) >= self._reports_max:
            del entries[next(iter(entries))]
        entries[key] = (report, now_us)

    def batch(self, *, count_max: int, now_us: int) -> tuple[PathReport, ...]:
        """Up to `count_max` fresh reports, continuing where the previous batch stopped."""
        self._expire(now_us)
        entries = list(self._entries.values())
        if not entries or count_max < 1:
            return ()
        count = min(len(entries), count_max)
        start = self._cursor % len(entries)
        self._cursor = start + count
        chosen = entries[start : start + count] + entries[: max(0, start + count - len(entries))]
        return tuple(report for report, _ in chosen)

    def _expire(self, now_us: int) -> None:
        entries = self._entries
        deadline_us = now_us - self._ttl_us
        while entries:
            key = next(iter(entries))
            if entries[key][1] > deadline_us:
                return
            del entries[key]
