"""Small seeded telemetry streams for the predictor tests."""

from __future__ import annotations

import random
from collections.abc import Iterator

from forehand.predict import PathSample, Sample, ServerSample

S = 1_000_000


def ramp_stream(*, seed: int, ticks: int, servers: int = 2) -> Iterator[tuple[int, list[Sample]]]:
    """Servers whose CPU ramps to overload every 60 ticks (latency follows), with two paths each."""
    rng = random.Random(seed)
    for tick in range(ticks):
        now_us = tick * 10 * S
        samples: list[Sample] = []
        for index in range(servers):
            phase = (tick + 17 * index) % 60
            cpu = 0.3 + rng.gauss(0.0, 0.02) + (0.7 * (phase - 30) / 25 if phase > 30 else 0.0)
            busy = min(max(cpu, 0.01), 0.985)
            for group in ("a", "b"):
                samples.append(
                    PathSample(
                        server_id=f"s{index}",
                        client_group=group,
                        rtt_us=20_000 + rng.randrange(2_000),
                    )
                )
            samples.append(
                ServerSample(
                    server_id=f"s{index}",
                    values={
                        "cpu_utilization": cpu,
                        "memory_utilization": 0.5,
                        "queue_depth": busy / (1 - busy),
                        "latency_us_p99": 20_000 / (1 - busy),
                        "error_ratio": 0.001,
                        "loop_lag_us": 500.0,
                    },
                )
            )
        yield now_us, samples
