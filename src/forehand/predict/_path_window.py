"""Intermittency features of a path bucket: counts and maxima over windows of its last samples.

A flapping uplink degrades a path in blips of a second or two, ever more often, before it goes
down. EWMAs and bucket averages smooth such blips into a small mean RTT excess; a count of the
degraded samples over the last few samples, and the largest RTT excess among them, keep them
whole. On by default (`FeatureConfig.path_intermittency`), O(window count) per sample, fixed
memory.
"""

from __future__ import annotations

from collections import deque

__all__ = [
    "IntermittencyTracker",
    "WindowCount",
    "WindowMaximum",
    "WindowMinimum",
    "intermittency_names",
]


class WindowCount:
    """How many of the last `size` flags were set, in O(1) per sample."""

    __slots__ = ("_flags", "count")

    def __init__(self, *, size: int) -> None:
        assert size >= 1
        self._flags: deque[bool] = deque(maxlen=size)
        self.count = 0
        """Set flags in the window."""

    def update(self, flag: bool) -> float:
        """Push `flag` and return the share of the window's samples that are set."""
        flags = self._flags
        if len(flags) == flags.maxlen and flags[0]:
            self.count -= 1
        flags.append(flag)
        self.count += flag
        return self.count / len(flags)


class WindowMinimum:
    """Minimum of the last `size` samples (a monotonic deque: amortised O(1))."""

    __slots__ = ("_candidates", "_count", "_size")

    def __init__(self, *, size: int) -> None:
        assert size >= 1
        self._size = size
        self._count = 0
        self._candidates: deque[tuple[int, float]] = deque()

    def update(self, x: float) -> float:
        """Push `x` and return the minimum of the window."""
        candidates = self._candidates
        while candidates and candidates[-1][1] >= x:
            candidates.pop()
        candidates.append((self._count, x))
        self._count += 1
        if candidates[0][0] <= self._count - 1 - self._size:
            candidates.popleft()
        return candidates[0][1]


class WindowMaximum:
    """Maximum of the last `size` samples: the window minimum of the negated samples."""

    __slots__ = ("_minimum",)

    def __init__(self, *, size: int) -> None:
        self._minimum = WindowMinimum(size=size)

    def update(self, x: float) -> float:
        """Push `x` and return the maximum of the window."""
        return -self._minimum.update(-x)


def intermittency_names(window_ticks: int) -> tuple[str, str]:
    """The path features of one window: share of degraded samples, largest RTT excess."""
    return f"path.degraded_{window_ticks}t_share", f"path.rtt_excess_{window_ticks}t.max"


class IntermittencyTracker:
    """For one path bucket and each window of the last n samples: the share of samples that were
    degraded (RTT above the minimum by more than `rtt_excess_us_min`, or loss above `loss_min`)
    and the largest RTT excess, in `rtt_scale_us` units (1.0 means trouble)."""

    __slots__ = ("_loss_min", "_maxima", "_names", "_rtt_excess_us_min", "_rtt_scale_us", "_shares")

    def __init__(
        self,
        *,
        windows_ticks: tuple[int, ...],
        rtt_excess_us_min: float,
        loss_min: float,
        rtt_scale_us: int,
    ) -> None:
        assert windows_ticks and all(size >= 2 for size in windows_ticks) and rtt_scale_us > 0
        self._rtt_excess_us_min = rtt_excess_us_min
        self._loss_min = loss_min
        self._rtt_scale_us = float(rtt_scale_us)
        self._shares = [WindowCount(size=size) for size in windows_ticks]
        self._maxima = [WindowMaximum(size=size) for size in windows_ticks]
        self._names = [intermittency_names(size) for size in windows_ticks]

    def update(self, *, rtt_excess_us: float, loss_ratio: float, out: dict[str, float]) -> bool:
        """Fold in one sample, write the window features into `out`; whether it was degraded."""
        degraded = rtt_excess_us > self._rtt_excess_us_min or loss_ratio > self._loss_min
        excess = max(rtt_excess_us, 0.0) / self._rtt_scale_us
        for share, maximum, (share_name, max_name) in zip(
            self._shares, self._maxima, self._names, strict=True
        ):
            out[share_name] = share.update(degraded)
            out[max_name] = maximum.update(excess)
        return degraded
