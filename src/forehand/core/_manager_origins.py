"""The open rate per origin: how fast one network address may open sessions at the manager.

Anyone who reaches the manager may open sessions, and each one stays in the map until its client
closes it or it expires (`session_expiry_ms`, 48 h by default). A client connection may hold at
most `client_sessions_max` sessions, but it can reconnect as often as it likes, so before this
bound a single host could fill the map with sessions nobody uses at the manager's full commit
rate. The runtime names each accepted client connection's origin (its IP address, the /64 of an
IPv6 one: `ConnectionOpened.origin`), and `OpenRateLimit` paces the opens of each origin with a
token bucket: `burst` opens at once, then `rate` a second.

The table is bounded by `origins_max`; the origin heard from longest ago is forgotten first. A
bucket left alone for `burst / rate` seconds is full again, so forgetting one that old loses
nothing; only more than `origins_max` origins opening within that time can get round the pace,
and then `map_parts_max` stays the hard bound. Time is the `now_us` the core is given (no clock
is read here), so the simulator replays it.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["OpenRateLimit"]


class OpenRateLimit:
    """A token bucket per origin: `take` one open, or learn how long to wait for one; or
    `take_up_to` several (the manager's credential checks)."""

    __slots__ = ("_buckets", "_burst", "_origins_max", "_rate_per_s")

    def __init__(self, *, rate_per_s: float, burst: int, origins_max: int) -> None:
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._origins_max = origins_max
        self._buckets: OrderedDict[str, tuple[float, int]] = OrderedDict()
        """Per origin: (tokens left, when they were counted), oldest heard first."""

    @property
    def enabled(self) -> bool:
        """Whether opens are paced at all (a rate of 0 turns the limit off)."""
        return self._rate_per_s > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take_up_to(self, origin: str, wanted: int, now_us: int) -> int:
        """Count up to `wanted` tokens from `origin`'s bucket; how many it had (all of them
        when the pace is off or the origin unknown)."""
        if not self.enabled or not origin or wanted <= 0:
            return max(wanted, 0)
        tokens = self._tokens(origin, now_us)
        granted = min(wanted, int(tokens))
        self._buckets[origin] = (tokens - granted, now_us)
        self._bound()
        return granted

    def _tokens(self, origin: str, now_us: int) -> float:
        entry = self._buckets.get(origin)
        if entry is None:
            return self._burst
        left, counted_us = entry
        refilled = max(0, now_us - counted_us) * self._rate_per_s / 1_000_000
        self._buckets.move_to_end(origin)
        return min(self._burst, left + refilled)

    def _bound(self) -> None:
        while len(self._buckets) > self._origins_max:
            self._buckets.popitem(last=False)

    def take(self, origin: str, now_us: int) -> int:
        """Count one open from `origin` and return 0, or, when its bucket is empty, count
        nothing and return the milliseconds until it holds one open again (at least 1)."""
        if not self.enabled or not origin:
            return 0
        tokens = self._tokens(origin, now_us)
        if tokens < 1.0:
            self._buckets[origin] = (tokens, now_us)
            wait_us = int((1.0 - tokens) * 1_000_000 / self._rate_per_s)
            return max(1, -(-wait_us // 1000))
        self._buckets[origin] = (tokens - 1.0, now_us)
        self._bound()
        return 0
