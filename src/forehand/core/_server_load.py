"""Per-part request rates: what a server's heartbeat tells the manager about its busiest parts.

Session load is heavy-tailed (a few sessions carry most requests), so a server that must shed a
share of its load sheds it with fewest moves by handing off its busiest parts first. The server
counts the requests offered to each primary part; every `part_loads_interval_ms` it folds the
counts since the last time into a smoothed rate per part and picks the `heartbeat_part_loads_max`
busiest primaries, which its heartbeats report (`LoadReport.part_loads`). Sans-IO: the caller
passes `now_us`.

Offered, not served: a request the part refuses as OVERLOADED (too many answers await replicas)
counts. Shedding moves a part's demand, and the refused requests follow the part to its target
as much as the served ones; counting only what was served would rate lowest the parts that
saturate, exactly when the server must shed. What is not new demand is not counted: a
retransmission answered from the dedup table, a request redirected for a stale map version or
refused TRY_AGAIN by a fenced part (the client sends it again, and it counts then).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from forehand.core.messages import PartLoad, PartRef

__all__ = ["RATE_SMOOTHING", "PartLoadMeter"]

RATE_SMOOTHING = 0.5
"""Weight of the newest interval in a part's smoothed rate (an exponential moving average over
`part_loads_interval_ms` intervals: a burst shows at once, a part gone quiet fades within a few)."""
RATE_FLOOR_PER_SECOND = 0.01
"""A part whose smoothed rate falls under this, with no request in the interval, is forgotten."""


class PartLoadMeter:
    """Requests offered per part, as smoothed rates; bounded by `parts_max` parts tracked."""

    def __init__(self, *, parts_max: int) -> None:
        assert parts_max >= 1, parts_max
        self._parts_max = parts_max
        self._counts: dict[PartRef, int] = {}
        self._rates: dict[PartRef, float] = {}
        self._rolled_us: int | None = None
        self._tracked = 0
        """Parts in `_rates` or `_counts` (either or both), kept so that a new part's first
        request checks the bound without a pass over every tracked part."""
        self.dropped = 0
        """Requests not counted because `parts_max` parts were tracked already."""

    def __len__(self) -> int:
        return self._tracked

    def record(self, ref: PartRef) -> None:
        """Count one request offered to `ref` (executed, or refused OVERLOADED)."""
        counts = self._counts
        count = counts.get(ref)
        if count is None:
            if ref not in self._rates:
                if self._tracked >= self._parts_max:
                    self.dropped += 1
                    return
                self._tracked += 1
            count = 0
        counts[ref] = count + 1

    def forget(self, ref: PartRef) -> None:
        """Stop tracking `ref` (it left this server)."""
        counted = self._counts.pop(ref, None) is not None
        if self._rates.pop(ref, None) is not None or counted:
            self._tracked -= 1

    def roll(self, *, now_us: int) -> None:
        """Fold the counts since the last roll into each part's smoothed rate."""
        rolled_us = self._rolled_us
        self._rolled_us = now_us
        if rolled_us is None or now_us <= rolled_us:
            # The first roll (or a clock that did not move) only starts the interval; the
            # requests counted before it belong to the next one.
            return
        interval_s = (now_us - rolled_us) / 1_000_000
        counts = self._counts
        rates = self._rates
        alpha = RATE_SMOOTHING
        for ref in list(rates):
            rate = (1.0 - alpha) * rates[ref] + alpha * counts.pop(ref, 0) / interval_s
            if rate < RATE_FLOOR_PER_SECOND:
                del rates[ref]
            else:
                rates[ref] = rate
        for ref, count in counts.items():
            rates[ref] = alpha * count / interval_s
        counts.clear()
        self._tracked = len(rates)

    def rate(self, ref: PartRef) -> float:
        """The smoothed requests per second of `ref` (0.0 when not tracked)."""
        return self._rates.get(ref, 0.0)

    def busiest(
        self, count_max: int, *, eligible: Callable[[PartRef], bool]
    ) -> tuple[PartLoad, ...]:
        """The `count_max` busiest `eligible` parts, busiest first (ties in first-seen order)."""
        if count_max <= 0 or not self._rates:
            return ()
        top = heapq.nlargest(
            count_max,
            ((rate, ref) for ref, rate in self._rates.items() if eligible(ref)),
            key=lambda item: item[0],
        )
        return tuple(PartLoad(ref=ref, requests_per_second=rate) for rate, ref in top)
