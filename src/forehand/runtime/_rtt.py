"""A round-trip time estimator with the weights of RFC 6298 and RFC 9002 section 5.3."""

from __future__ import annotations

__all__ = ["RttEstimator"]


class RttEstimator:
    """Smoothed RTT, its variation and the minimum, from samples in microseconds."""

    __slots__ = ("latest_us", "min_us", "sample_count", "smoothed_us", "variance_us")

    def __init__(self) -> None:
        self.smoothed_us: int | None = None
        """Smoothed RTT: 7/8 of the previous value plus 1/8 of each new sample."""
        self.variance_us: int | None = None
        """RTT variation: 3/4 of the previous value plus 1/4 of each new deviation."""
        self.min_us: int | None = None
        """Smallest sample."""
        self.latest_us: int | None = None
        """Newest sample."""
        self.sample_count = 0
        """How many samples were added."""

    def add_sample_us(self, sample_us: int) -> None:
        """Fold one round-trip sample in."""
        assert sample_us >= 0, sample_us
        self.sample_count += 1
        self.latest_us = sample_us
        self.min_us = sample_us if self.min_us is None else min(self.min_us, sample_us)
        if self.smoothed_us is None or self.variance_us is None:
            self.smoothed_us = sample_us
            self.variance_us = sample_us // 2
            return
        self.variance_us = (3 * self.variance_us + abs(self.smoothed_us - sample_us)) // 4
        self.smoothed_us = (7 * self.smoothed_us + sample_us) // 8
