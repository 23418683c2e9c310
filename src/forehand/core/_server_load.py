"""Per-part request rates: what a server's heartbeat tells the manager about its busiest parts.

Session load is heavy-tailed (a few sessions carry most requests), so a server that must shed a
share of its load sheds it with fewest moves by handing off its busiest parts first. The server
counts the requests it executes per part; at each heartbeat it folds the counts since the last
one into a smoothed rate per part and reports the `heartbeat_part_loads_max` busiest primaries
(`LoadReport.part_loads`). Sans-IO: the caller passes `now_us`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from forehand.core.messages import PartLoad, PartRef

__all__ = ["RATE_SMOOTHING", "PartLoadMeter"]

RATE_SMOOTHING = 0.5
"""Weight of the newest interval in a part's smoothed rate (an exponential moving average over
heartbeat intervals: a burst shows at once, and a part gone quiet fades within a few)."""
RATE_FLOOR_PER_SECOND = 0.01
"""A part whose smoothed rate falls under this, with no request in the interval, is forgotten."""


class PartLoadMeter:
    """Requests executed per part, as smoothed rates; bounded by `parts_max` parts tracked."""

    def __init__(self, *, parts_max: int) -> None:
        assert parts_max >= 1, parts_max
        self._parts_max = parts_max
        self._counts: dict[PartRef, int] = {}
        self._rates: dict[PartRef, float] = {}
        self._rolled_us: int | None = None
        self.dropped = 0
        """Requests not counted because `parts_max` parts were tracked already."""

    def __len__(self) -> int:
        return len(self._rates.keys() | self._counts.keys())

    def record(self, ref: PartRef) -> None:
        """Count one request executed for `ref`."""
        counts = self._counts
        count = counts.get(ref)
        if count is None:
            if ref not in self._rates and len(self) >= self._parts_max:
                self.dropped += 1
                return
            count = 0
        counts[ref] = count + 1

    def forget(self, ref: PartRef) -> None:
        """Stop tracking `ref` (it left this server)."""
        self._counts.pop(ref, None)
        self._rates.pop(ref, None)

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
