"""What the simulated runtime measures: a server's load report and a client's transport counters.

The runtime's `LoadSampler` and `PathSampler` (`forehand.runtime._telemetry`) measure a real
process and a real transport stack; the simulator derives the same readings from its models.

- **A server's load report** comes from its process model (`ProcessStats`): the load is the
  server's utilization, and what a real server shows as its utilization approaches 1 follows
  queueing (M/M/1 at utilization rho, service time s): the number of requests waiting is
  geometric, P(n) = (1 - rho) rho^n, drawn afresh per report, plus the inputs really waiting in
  the simulated inbox; the event loop's p99 lag is the p99 wait of that queue, s ln(100 rho) /
  (1 - rho); the p99 latency is what the process model gives the next input (service time
  stretched by the load, times the inbox ahead of it), the quantity the simulator's SLO truth
  reads. Each reading carries measurement noise from a seeded generator: Gaussian on the CPU
  (psutil samples a busy CPU over a short interval), lognormal on latency and lag.
- **A client's transport counters** are the network's own counts of the packets of both
  directions of its connection to a server (`Network.transport_counters`): transmissions, those
  lost (drawn by the link's loss, or cut by a partition) and those sent again. The client core
  turns two readings into the loss ratio and retransmissions its path samples carry.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from forehand.core._pool import TransportCounters
from forehand.core.messages import LoadReport
from forehand.errors import ConfigError
from forehand.sim._process import ProcessModel, ProcessStats

__all__ = ["TelemetryConfig", "load_report", "transport_counters"]

CPU_REPORTED_MAX = 2.0
"""Bound on a reported CPU utilization (a saturated server queues work beyond 1.0)."""
P99_WAIT_FACTOR = 100.0
"""An M/M/1 wait exceeds t with probability rho exp(-(1 - rho) t / s): its p99 is
s ln(100 rho) / (1 - rho)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryConfig:
    """How the simulated runtime measures its servers and paths."""

    cpu_noise_sd: float = 0.02
    """Standard deviation of the Gaussian error of a CPU reading (as a share of the CPU)."""
    latency_noise_sigma: float = 0.05
    """Sigma of the lognormal error of a p99 latency reading."""
    lag_noise_sigma: float = 0.1
    """Sigma of the lognormal error of a loop-lag reading."""
    utilization_max: float = 0.995
    """The queueing formulas read the load capped here (a saturated server's queue and lag are
    bounded by what a report interval can hold, not infinite)."""
    transport_interval_us: int = 1_000_000
    """How often each client's transport counters are read (the runtime's `PathSampler`)."""

    def __post_init__(self) -> None:
        if min(self.cpu_noise_sd, self.latency_noise_sigma, self.lag_noise_sigma) < 0:
            raise ConfigError(f"telemetry noise must be non-negative: {self}")
        if not 0.0 < self.utilization_max < 1.0:
            raise ConfigError(f"utilization_max must be in (0, 1): {self}")
        if self.transport_interval_us <= 0:
            raise ConfigError(f"transport_interval_us must be positive: {self}")


def _waiting(rng: random.Random, utilization: float, bound: int) -> int:
    """Requests waiting in an M/M/1 queue at `utilization`: geometric, P(n) = (1 - rho) rho^n."""
    if utilization <= 0.0:
        return 0
    draw = 1.0 - rng.random()  # In (0, 1]: the logarithm is finite.
    return min(int(math.log(draw) / math.log(utilization)), bound)


def load_report(
    stats: ProcessStats, process: ProcessModel, *, rng: random.Random, config: TelemetryConfig
) -> LoadReport:
    """The load report a server's sampler would take now, drawn from `rng`."""
    load = max(stats.load, 0.0)
    utilization = min(load, config.utilization_max)
    service_us = process.service_time_us
    cpu = min(max(load + rng.gauss(0.0, config.cpu_noise_sd), 0.0), CPU_REPORTED_MAX)
    waiting = _waiting(rng, utilization, process.inbox_messages_max)
    lag_us = 0.0
    if utilization * P99_WAIT_FACTOR > 1.0:
        lag_us = service_us * math.log(P99_WAIT_FACTOR * utilization) / (1.0 - utilization)
        lag_us *= rng.lognormvariate(0.0, config.lag_noise_sigma)
    latency_us = service_us * stats.slowdown * (1 + stats.inbox_depth)
    latency_us *= rng.lognormvariate(0.0, config.latency_noise_sigma)
    return LoadReport(
        cpu_utilization=round(cpu, 3),
        queue_depth=stats.inbox_depth + waiting,
        latency_us_p99=round(latency_us),
        error_ratio=0.0,
        requests_per_second=0.0,
        loop_lag_us_p99=round(lag_us),
    )


def transport_counters(
    forward: tuple[int, int, int], backward: tuple[int, int, int]
) -> TransportCounters:
    """A connection's counters from the network's counts of its two directions (sent, lost,
    retransmitted): a transport stack sees the loss of what it sent and the gaps in what it
    receives. The simulator carries no payload sizes, so `bytes_count` stays 0."""
    return TransportCounters(
        packets_sent_count=forward[0] + backward[0],
        packets_lost_count=forward[1] + backward[1],
        packets_retransmitted_count=forward[2] + backward[2],
        bytes_count=0,
    )
