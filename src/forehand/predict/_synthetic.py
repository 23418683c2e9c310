"""Synthetic fleet telemetry with labelled faults: the evaluation runs end to end without a cluster.

Each server has a diurnal load with autoregressive noise, a queueing latency curve
(`latency = base / (1 - cpu)`), and a few client groups whose paths have their own base RTT.
Episodes are drawn from one seed: gradual faults (overload ramps, congestion ramps, flapping links),
sudden ones (crash, link cut), and distractors that look alarming but never breach (short load
spikes, load ramps that level off below saturation, one client group's own network degrading).

Ground truth comes from the telemetry, not from the plan: an event's onset is the first sample
that breaches the SLO (the same rule the predictor applies), so an episode that never actually
breaches yields no event, and the kind of an event is the episode under way at its onset.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from forehand.errors import ConfigError
from forehand.predict._config import SECOND_US, LabelConfig, PathSloConfig
from forehand.predict._labels import BreachTracker, LabelledEvent
from forehand.predict._samples import PathSample, Sample, ServerSample

__all__ = [
    "GRADUAL_FAULTS",
    "SUDDEN_FAULTS",
    "Episode",
    "EpisodeKind",
    "SyntheticConfig",
    "SyntheticFleet",
]

MINUTE_US = 60 * SECOND_US
DAY_US = 86_400 * SECOND_US
LATENCY_SLO_US = 250_000
"""The p99 latency SLO of the synthetic servers (the default `latency_us_p99` spec)."""
ERROR_SLO = 0.05
"""The error-ratio SLO of the synthetic servers (the default `error_ratio` spec)."""
CPU_CEILING = 0.985
"""Utilisation at which the queueing latency curve is capped."""


class EpisodeKind(StrEnum):
    """What happens to a server during an episode."""

    OVERLOAD_RAMP = "overload_ramp"
    CONGESTION_RAMP = "congestion_ramp"
    FLAPPING_LINK = "flapping_link"
    CRASH = "crash"
    LINK_CUT = "link_cut"
    LOAD_SPIKE = "load_spike"
    BENIGN_RAMP = "benign_ramp"
    CLIENT_PATH = "client_path"


GRADUAL_FAULTS = (EpisodeKind.OVERLOAD_RAMP, EpisodeKind.CONGESTION_RAMP, EpisodeKind.FLAPPING_LINK)
"""Faults with precursors a predictor can see."""
SUDDEN_FAULTS = (EpisodeKind.CRASH, EpisodeKind.LINK_CUT)
"""Faults with none: the reactive failover is their backstop."""
_RECOVERING = (*GRADUAL_FAULTS, EpisodeKind.BENIGN_RAMP)
"""Episodes that end with a two-minute recovery rather than at once."""
DISTRACTORS = (EpisodeKind.LOAD_SPIKE, EpisodeKind.BENIGN_RAMP, EpisodeKind.CLIENT_PATH)
"""Episodes that look alarming and never breach."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SyntheticConfig:
    """Size and texture of a synthetic fleet."""

    servers: int = 10
    """Servers in the fleet."""
    duration_us: int = 3 * DAY_US
    """Length of the trace."""
    tick_us: int = 10 * SECOND_US
    """Sampling period of every server and path."""
    client_groups: int = 4
    """Client groups per server, each with its own path."""
    episode_gap_us_min: int = 15 * MINUTE_US
    """Quiet time after an episode, at least (more than a horizon, so events stay apart)."""
    episode_gap_us_mean: int = 15 * MINUTE_US
    """Mean of the exponential extra quiet time between episodes."""
    fault_weight: float = 0.13
    """Weight of each fault kind when an episode is drawn."""
    distractor_weight: float = 0.1167
    """Weight of each distractor kind."""
    ramp_us_min: int = 4 * MINUTE_US
    """Shortest precursor of a gradual fault."""
    ramp_us_max: int = 20 * MINUTE_US
    """Longest precursor of a gradual fault."""

    def __post_init__(self) -> None:
        if self.servers < 1 or self.client_groups < 1:
            raise ConfigError("a synthetic fleet needs servers and client groups")
        if not 0 < self.tick_us < self.duration_us:
            raise ConfigError("need 0 < tick_us < duration_us")
        if not 0 < self.ramp_us_min <= self.ramp_us_max:
            raise ConfigError("need 0 < ramp_us_min <= ramp_us_max")
        if self.episode_gap_us_min < 0 or self.episode_gap_us_mean <= 0:
            raise ConfigError("episode gaps must be non-negative (mean positive)")
        if self.fault_weight <= 0 or self.distractor_weight < 0:
            raise ConfigError("episode weights out of range")


@dataclass(frozen=True, slots=True, kw_only=True)
class Episode:
    """One planned disturbance of one server."""

    server_id: str
    """The server."""
    kind: EpisodeKind
    """What happens."""
    start_us: int
    """When the precursor (or the sudden fault) begins."""
    peak_us: int
    """When the precursor ends and the fault (or the distractor's peak) is fully there."""
    end_us: int
    """When everything is back to normal."""
    magnitude: float
    """Kind-specific strength (peak CPU, peak loss, ...)."""
    bucket: int
    """The client group a `CLIENT_PATH` episode hits."""


class _ServerModel:
    """The generator state of one server."""

    def __init__(self, *, server_id: str, config: SyntheticConfig, rng: random.Random) -> None:
        self.server_id = server_id
        self.rng = rng
        self.cpu_base = rng.uniform(0.25, 0.45)
        self.diurnal_phase = rng.uniform(0.0, 2 * math.pi)
        self.latency_base_us = rng.uniform(15_000.0, 28_000.0)
        self.memory = rng.uniform(0.3, 0.6)
        self.noise = 0.0
        self.rtt_base_us = [rng.uniform(5_000.0, 80_000.0) for _ in range(config.client_groups)]
        self.episodes: list[Episode] = []
        self.breach = BreachTracker(breach_clear_us=LabelConfig().breach_clear_us)


class SyntheticFleet:
    """A seeded fleet: `ticks()` streams the samples, `events` collects the ground truth."""

    def __init__(
        self,
        *,
        config: SyntheticConfig,
        rng: random.Random,
        path_slo: PathSloConfig | None = None,
        labels: LabelConfig | None = None,
    ) -> None:
        self.config = config
        self._path_slo = path_slo or PathSloConfig()
        self._labels = labels or LabelConfig()
        self._servers = [
            _ServerModel(
                server_id=f"server-{index:03d}",
                config=config,
                rng=random.Random(rng.getrandbits(64)),
            )
            for index in range(config.servers)
        ]
        for server in self._servers:
            server.breach = BreachTracker(breach_clear_us=self._labels.breach_clear_us)
            server.episodes = _plan_episodes(server, config)
        self.events: list[LabelledEvent] = []
        """Breach events, appended as `ticks()` generates them."""

    @property
    def server_ids(self) -> list[str]:
        """The servers, in order."""
        return [server.server_id for server in self._servers]

    @property
    def episodes(self) -> list[Episode]:
        """Every planned episode, by server then time."""
        return [episode for server in self._servers for episode in server.episodes]

    def ticks(self) -> Iterator[tuple[int, list[Sample]]]:
        """Every tick's samples (each server's paths first, then the server itself)."""
        config = self.config
        cursors = [0] * len(self._servers)
        for now_us in range(0, config.duration_us, config.tick_us):
            samples: list[Sample] = []
            for index, server in enumerate(self._servers):
                episodes = server.episodes
                while cursors[index] < len(episodes) and episodes[cursors[index]].end_us <= now_us:
                    cursors[index] += 1
                episode = None
                if cursors[index] < len(episodes) and episodes[cursors[index]].start_us <= now_us:
                    episode = episodes[cursors[index]]
                samples.extend(self._server_tick(server, episode, now_us=now_us))
            yield now_us, samples
        for server in self._servers:
            self._close_breach(server)

    def _server_tick(
        self, server: _ServerModel, episode: Episode | None, *, now_us: int
    ) -> list[Sample]:
        paths, paths_breached = _path_samples(server, episode, now_us=now_us, slo=self._path_slo)
        values = _server_values(server, episode, now_us=now_us)
        breached = (
            values["latency_us_p99"] > LATENCY_SLO_US
            or values["error_ratio"] > ERROR_SLO
            or paths_breached >= self._path_slo.server_breach_share_min * len(paths)
        )
        self._track(server, episode, breached=breached, now_us=now_us)
        samples: list[Sample] = list(paths)
        samples.append(ServerSample(server_id=server.server_id, values=values))
        return samples

    def _track(
        self, server: _ServerModel, episode: Episode | None, *, breached: bool, now_us: int
    ) -> None:
        tracker = server.breach
        was_in_breach = tracker.in_breach
        if tracker.update(breached, now_us=now_us):
            kind = episode.kind.value if episode is not None else "spontaneous"
            self.events.append(
                LabelledEvent(entity=server.server_id, onset_us=now_us, end_us=now_us, kind=kind)
            )
        elif was_in_breach and not tracker.in_breach:
            self._close_breach(server)

    def _close_breach(self, server: _ServerModel) -> None:
        for index in range(len(self.events) - 1, -1, -1):
            event = self.events[index]
            if event.entity == server.server_id:
                last = server.breach.last_breached_us
                if last is not None and last > event.end_us:
                    self.events[index] = LabelledEvent(
                        entity=event.entity, onset_us=event.onset_us, end_us=last, kind=event.kind
                    )
                return


def _plan_episodes(server: _ServerModel, config: SyntheticConfig) -> list[Episode]:
    rng = server.rng
    kinds = list(EpisodeKind)
    weights = [
        config.fault_weight if kind in GRADUAL_FAULTS + SUDDEN_FAULTS else config.distractor_weight
        for kind in kinds
    ]
    episodes: list[Episode] = []
    start_us = int(rng.expovariate(1.0 / config.episode_gap_us_mean)) + config.episode_gap_us_min
    while True:
        kind = rng.choices(kinds, weights)[0]
        episode = _draw_episode(server, kind, start_us=start_us, config=config)
        if episode.end_us >= config.duration_us:
            return episodes
        episodes.append(episode)
        gap_us = config.episode_gap_us_min + int(rng.expovariate(1.0 / config.episode_gap_us_mean))
        start_us = episode.end_us + gap_us


def _draw_episode(
    server: _ServerModel, kind: EpisodeKind, *, start_us: int, config: SyntheticConfig
) -> Episode:
    rng = server.rng
    ramp_us = int(rng.uniform(config.ramp_us_min, config.ramp_us_max))
    hold_us = int(rng.uniform(3, 10) * MINUTE_US)
    magnitude = 0.0
    if kind is EpisodeKind.OVERLOAD_RAMP:
        magnitude = rng.uniform(1.05, 1.3)
    elif kind is EpisodeKind.BENIGN_RAMP:
        magnitude = rng.uniform(0.15, 0.3)
        hold_us = int(rng.uniform(10, 30) * MINUTE_US)
    elif kind is EpisodeKind.LOAD_SPIKE:
        ramp_us = 0
        hold_us = config.tick_us * rng.randint(1, 3)
        magnitude = rng.uniform(0.78, 0.84)
    elif kind is EpisodeKind.CONGESTION_RAMP:
        magnitude = rng.uniform(0.07, 0.2)
    elif kind is EpisodeKind.FLAPPING_LINK:
        magnitude = rng.uniform(0.2, 0.6)
    elif kind is EpisodeKind.CLIENT_PATH:
        magnitude = rng.uniform(0.07, 0.2)
        hold_us = int(rng.uniform(10, 30) * MINUTE_US)
    elif kind in SUDDEN_FAULTS:
        ramp_us = 0
        magnitude = 1.0
    recover_us = 2 * MINUTE_US if kind in _RECOVERING else 0
    peak_us = start_us + ramp_us
    return Episode(
        server_id=server.server_id,
        kind=kind,
        start_us=start_us,
        peak_us=peak_us,
        end_us=peak_us + hold_us + recover_us,
        magnitude=magnitude,
        bucket=rng.randrange(config.client_groups),
    )


def _progress(episode: Episode, now_us: int) -> float:
    """0 at the start, 1 at the peak and through the hold, falling to 0 over the recovery."""
    if now_us < episode.peak_us:
        return (now_us - episode.start_us) / max(episode.peak_us - episode.start_us, 1)
    recover_us = 2 * MINUTE_US if episode.kind in _RECOVERING else 0
    if recover_us and now_us > episode.end_us - recover_us:
        return max(0.0, (episode.end_us - now_us) / recover_us)
    return 1.0


def _server_values(
    server: _ServerModel, episode: Episode | None, *, now_us: int
) -> dict[str, float]:
    rng = server.rng
    server.noise = 0.9 * server.noise + rng.gauss(0.0, 0.012)
    diurnal = 0.08 * math.sin(2 * math.pi * now_us / DAY_US + server.diurnal_phase)
    normal = server.cpu_base + diurnal + server.noise
    cpu = normal
    errors = 0.001 + abs(rng.gauss(0.0, 0.001))
    crashed = False
    if episode is not None:
        progress = _progress(episode, now_us)
        kind = episode.kind
        if kind is EpisodeKind.OVERLOAD_RAMP:
            shape = progress if episode.magnitude < 1.15 else progress**1.5
            cpu = normal + (episode.magnitude - normal) * shape
        elif kind is EpisodeKind.BENIGN_RAMP:
            cpu = normal + episode.magnitude * (1.0 - math.exp(-4.0 * progress)) / (
                1 - math.exp(-4)
            )
            cpu = min(cpu, 0.8)
        elif kind is EpisodeKind.LOAD_SPIKE:
            cpu = max(normal, episode.magnitude)
        elif kind is EpisodeKind.CRASH and now_us >= episode.start_us:
            crashed = True
        elif kind is EpisodeKind.LINK_CUT:
            cpu = normal * 0.3
    busy = min(max(cpu, 0.01), CPU_CEILING)
    latency = server.latency_base_us / (1.0 - busy) * math.exp(rng.gauss(0.0, 0.05))
    if cpu > 1.0:
        latency *= 1.0 + 4.0 * (cpu - 1.0)
        errors += 0.3 * (cpu - 1.0)
    if crashed:
        errors, latency, cpu = 1.0, 5_000_000.0, 0.0
    return {
        "cpu_utilization": max(cpu, 0.0),
        "memory_utilization": server.memory + rng.gauss(0.0, 0.005),
        "queue_depth": 2.0 * busy / (1.0 - busy) + rng.random(),
        "latency_us_p99": latency,
        "error_ratio": min(errors, 1.0),
        "loop_lag_us": 400.0 / (1.0 - busy) + 100.0 * rng.random(),
    }


def _path_samples(
    server: _ServerModel, episode: Episode | None, *, now_us: int, slo: PathSloConfig
) -> tuple[list[PathSample], int]:
    rng = server.rng
    samples: list[PathSample] = []
    breached = 0
    flap = False
    if episode is not None and episode.kind is EpisodeKind.FLAPPING_LINK:
        hazard = 0.05 + 0.45 * _progress(episode, now_us)
        flap = now_us < episode.peak_us and rng.random() < hazard
    for bucket, base_us in enumerate(server.rtt_base_us):
        excess_us = abs(rng.gauss(0.0, 0.03)) * base_us + rng.uniform(0.0, 2_000.0)
        loss = abs(rng.gauss(0.0, 0.0005))
        if episode is not None:
            excess_us, loss = _path_effect(
                episode,
                bucket=bucket,
                excess_us=excess_us,
                loss=loss,
                now_us=now_us,
                flap=flap,
                rng=rng,
            )
        if loss > slo.loss_max or excess_us > slo.rtt_excess_us_max:
            breached += 1
        samples.append(
            PathSample(
                server_id=server.server_id,
                client_group=f"{server.server_id}-group-{bucket}",
                rtt_us=int(base_us + excess_us),
                jitter_us=int(0.1 * base_us + 0.3 * excess_us * rng.random()),
                loss_ratio=min(loss, 1.0),
            )
        )
    return samples, breached


def _path_effect(
    episode: Episode,
    *,
    bucket: int,
    excess_us: float,
    loss: float,
    now_us: int,
    flap: bool,
    rng: random.Random,
) -> tuple[float, float]:
    kind = episode.kind
    progress = _progress(episode, now_us)
    if kind is EpisodeKind.CONGESTION_RAMP:
        spread = 0.8 + 0.4 * ((bucket * 0.37) % 1.0)
        excess_us += 250_000.0 * progress**1.5 * spread
        loss += episode.magnitude * progress**3 * spread
    elif kind is EpisodeKind.CLIENT_PATH and bucket == episode.bucket:
        excess_us += 200_000.0 * progress
        loss += episode.magnitude * progress**2
    elif kind is EpisodeKind.FLAPPING_LINK:
        if now_us >= episode.peak_us and progress > 0.5:
            loss += episode.magnitude
        elif flap:
            loss += rng.uniform(0.01, 0.04)
            excess_us += rng.uniform(10_000.0, 30_000.0)
    elif kind is EpisodeKind.LINK_CUT:
        loss = 1.0
    return excess_us, loss
