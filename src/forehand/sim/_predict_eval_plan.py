"""The fault episodes of a predictor-evaluation campaign on the simulator, drawn from the seed.

A campaign is many short runs of the per-message simulator. In each run every server lives
through a sequence of episodes separated by quiet gaps longer than the horizon: the gradual
faults (an overload ramp of its background load past saturation, a congestion ramp of the delay
and loss on its links to every client past the path SLO, a flapping uplink that first blips,
with a little loss, and then goes down and up), the sudden ones (a crash and restart, its uplink
cut for a while) and distractors that look alarming and never breach (short load spikes, load
ramps that level off with a margin below saturation, one client's path degrading below the path
SLO). Each episode becomes the simulator's own faults (`NodeOverload`, `LinkDegradation`,
`Partition`, `NodeCrash`), so the cores, the network and the processes react to it as they react
to any drawn fault plan.

Whether an episode breaches is not decided here: the simulator measures it. Precursors last no
longer than the horizon and long enough for a lead of L after the trigger's k of n ticks on a
linear ramp. Time in a run is simulated time; the evaluation reads it stretched by
`SimEvalConfig.time_scale`, so a ramp of 30 simulated seconds stands for ten minutes.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from forehand.core import NodeId
from forehand.errors import ConfigError
from forehand.predict import GRADUAL_FAULTS, SUDDEN_FAULTS, EpisodeKind
from forehand.sim._faults import (
    Fault,
    FaultPlan,
    LinkDegradation,
    NodeCrash,
    NodeOverload,
    Partition,
)
from forehand.sim._ramp import Ramp, RampShape

__all__ = [
    "EVALUATED_KINDS",
    "EvalEpisode",
    "RunPlan",
    "SimEvalConfig",
    "draw_run_plan",
]

SECOND_US = 1_000_000
EVALUATED_KINDS: tuple[EpisodeKind, ...] = (*GRADUAL_FAULTS, *SUDDEN_FAULTS)
"""The fault types the evaluation reports, each with its own row."""
DISTRACTOR_KINDS: tuple[EpisodeKind, ...] = (
    EpisodeKind.LOAD_SPIKE,
    EpisodeKind.BENIGN_RAMP,
    EpisodeKind.CLIENT_PATH,
)
"""Episodes that look alarming and never breach."""
OVERLOAD_TOTAL_MIN = 1.02
"""Least total load an overload ramp reaches: past saturation, so it breaches (an overload that
stops a hair short of the SLO is a coin flip for any predictor, not a fault to predict)."""
OVERLOAD_TOTAL_MAX = 1.3
"""Most total load an overload ramp reaches."""
BENIGN_TOTAL_MIN = 0.5
"""Least total load a benign ramp levels off at."""
BENIGN_TOTAL_MAX = 0.8
"""Most total load a benign ramp levels off at: a clear margin below saturation (the SLO breaches
near 0.98), as on the synthetic fleet."""
CONGESTION_EXCESS_MIN = 1.1
"""Least peak round-trip excess of a congestion ramp, in path SLOs: it breaches."""
CONGESTION_EXCESS_MAX = 2.5
"""Most peak round-trip excess of a congestion ramp, in path SLOs."""
CLIENT_PATH_EXCESS_MIN = 0.3
"""Least peak round-trip excess of one client's degrading path (a distractor), in path SLOs."""
CLIENT_PATH_EXCESS_MAX = 0.7
"""Most peak round-trip excess of one client's degrading path: below the path SLO."""
RAMP_STEEPNESS = 2.0
"""Growth constant of an exponential precursor: its rate grows e^2-fold. At the simulator's
default 4, the last tenth of a ramp carries a third of its rise, and an overload took 0.8 to
1.7 s from the highest level a distractor reaches (0.8) to the breach: less than L and the
trigger's k of n ticks (1.5 s), so most exponential overloads could not be told from a benign
ramp in time by any predictor (measured: 9 of 28 predicted on test, against 24 of 34 linear)."""
PATH_LOSS_MIN = 0.005
"""Least packet loss a congested or flapping path reaches: queues overflow, links drop."""
PATH_LOSS_MAX = 0.04
"""Most packet loss of a congested path or a flapping uplink's blip (under the path SLO's 5%;
at the few packets a second a session's connection carries, a blip rarely loses one)."""
FLAP_BLIPS_MAX = 30
"""Bound on the precursor blips of one flapping uplink (each is a delay ramp on every link)."""
FLAP_CYCLES_MAX = 20
"""Bound on the down/up cycles of one flapping uplink."""
BLIP_DELAY_US_MIN = 30_000
"""Least one-way delay a precursor blip adds: the RTT degrades, it does not breach."""
BLIP_DELAY_US_MAX = 60_000
"""Most one-way delay a precursor blip adds (twice this stays under the path SLO)."""
BLIP_RISE_US = 200_000
"""How fast a blip reaches its peak delay."""
BLIP_US_MIN = 1_000_000
"""Shortest blip (rise and linear fall): a few PINGs see it through the smoothed RTT."""
BLIP_US_MAX = 2_500_000
"""Longest blip."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimEvalConfig:
    """The shape of a campaign: the cluster of each run, its episodes and the time scale."""

    servers: int = 6
    """Servers per run, s1, s2, ...; the same names in every run, so each is one entity."""
    clients: int = 2
    """Client nodes per run; each measures its path to every server it talks to."""
    sessions: int = 6
    """Sessions the workload keeps busy."""
    think_time_us: int = 500_000
    """Mean pause between a response and a session's next request."""
    run_us: int = 600 * SECOND_US
    """Simulated length of one run."""
    run_gap_us: int = 60 * SECOND_US
    """Simulated time between two stitched runs (more than the horizon: no label crosses)."""
    time_scale: int = 20
    """The evaluation reads simulated time stretched by this factor (30 s stand for 10 min)."""
    tick_us: int = 500_000
    """The manager takes at most one sample per server this often (10 s, stretched)."""
    path_tick_us: int = 1_000_000
    """... and at most one per path (server, client bucket) this often."""
    heartbeat_interval_ms: int = 500
    """Every server's heartbeat and every client's PING interval (one tick)."""
    path_report_ttl_ms: int = 2_000
    """A path report not refreshed this long leaves the server's heartbeats (a cut path goes
    quiet instead of repeating its last RTT)."""
    truth_interval_us: int = 100_000
    """How often the simulator's ground truth is measured."""
    path_in_use_us: int = 30 * SECOND_US
    """A client's path to a server counts towards the server's SLO while the client has a
    connection to it and this long after (through a cut or a flapping uplink); a server no
    client talks to breaches on its own process only, as no client measures or uses its paths
    (the predictor's labels, too, count only fresh path buckets)."""
    breach_clear_us: int = 3 * SECOND_US
    """A breach ends after this long without breaching (the predictor's 60 s, scaled)."""
    service_time_us: int = 200
    """Every server's CPU time per input; saturation stretches it up to a hundredfold."""
    latency_slo_us_p99: int = 10_000
    """The p99 latency SLO: 50x the service time, a load of 0.98 with an empty inbox."""
    base_loads: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)
    """Background loads the servers draw from (once per campaign: a server keeps its own)."""
    quiet_start_us: int = 15 * SECOND_US
    """No episode in a run before this (sessions open and the predictor's inputs settle)."""
    settle_us: int = 15 * SECOND_US
    """No episode in the last this long of a run; every fault is healed when it begins."""
    gap_us_min: int = 45 * SECOND_US
    """Quiet time after an episode on a server, at least (1.5 horizons: events stay apart and
    about a quarter of the ticks precede an onset, as on the synthetic fleet)."""
    gap_us_mean: int = 35 * SECOND_US
    """Mean of the exponential extra quiet time between a server's episodes."""
    ramp_us_min: int = 15 * SECOND_US
    """Shortest precursor of a gradual fault (five minutes, scaled): from the highest level a
    distractor reaches to the breach takes a linear overload 2 to 9 s, time for the trigger's
    k of n ticks and the lead L."""
    ramp_us_max: int = 30 * SECOND_US
    """Longest precursor of a gradual fault (ten minutes, scaled): no longer than the horizon,
    so an alarm at a precursor's first sign is not more than H early."""
    fall_us_min: int = 8 * SECOND_US
    """Shortest fall of a ramp from its peak back to zero (linear), or flapping phase."""
    fall_us_max: int = 20 * SECOND_US
    """Longest fall of a ramp, or flapping phase."""
    sudden_us_min: int = 4 * SECOND_US
    """Shortest crash (until the restart) or cut."""
    sudden_us_max: int = 15 * SECOND_US
    """Longest crash or cut."""
    crash_spacing_us: int = 10 * SECOND_US
    """After a restart, no other crash for this long: one faulty server at a time, the failure
    model the cores guarantee under (`FAULTY_SERVERS_MAX`)."""
    deck_faults_each: int = 2
    """Episodes of each fault type per deck of kinds, beside one of each distractor."""
    events_per_kind: int = 50
    """Fault events per type the campaign is sized for on the test split."""
    test_fraction: float = 0.4
    """Share of each entity's time span the evaluation tests on (after warm-up and validation)."""
    plan_margin: float = 1.4
    """Planned episodes per kind over the events wanted on test (network faults on a server
    no client uses at the time never breach)."""
    runs_max: int = 400
    """Bound on the runs of one campaign."""

    def __post_init__(self) -> None:
        if self.servers < 2 or self.clients < 1 or self.sessions < 1:
            raise ConfigError("a campaign needs two servers, a client and a session at least")
        if self.time_scale < 1 or self.tick_us <= 0 or self.truth_interval_us <= 0:
            raise ConfigError("time_scale, tick_us and truth_interval_us must be positive")
        if self.quiet_start_us + self.settle_us >= self.run_us:
            raise ConfigError("a run must be longer than its quiet start and settling time")
        if not 0 < self.ramp_us_min <= self.ramp_us_max:
            raise ConfigError("need 0 < ramp_us_min <= ramp_us_max")
        if not 0 < self.fall_us_min <= self.fall_us_max:
            raise ConfigError("need 0 < fall_us_min <= fall_us_max")
        if not 0 < self.sudden_us_min <= self.sudden_us_max:
            raise ConfigError("need 0 < sudden_us_min <= sudden_us_max")
        if self.events_per_kind < 1 or not 0 < self.test_fraction <= 1:
            raise ConfigError("events_per_kind must be positive and test_fraction in (0, 1]")
        if not self.base_loads or not all(0 <= load < 0.9 for load in self.base_loads):
            raise ConfigError("base loads must be in [0, 0.9)")

    @classmethod
    def quick(cls, *, events_per_kind: int = 2) -> SimEvalConfig:
        """A small campaign for tests: short runs, `events_per_kind` episodes of each fault type."""
        return cls(
            run_us=150 * SECOND_US,
            events_per_kind=events_per_kind,
            test_fraction=1.0,
            plan_margin=1.0,
        )

    @property
    def episodes_per_kind(self) -> int:
        """Episodes of each fault kind the campaign plans."""
        return math.ceil(self.events_per_kind / self.test_fraction * self.plan_margin)

    @property
    def heal_us(self) -> int:
        """When every fault of a run is over."""
        return self.run_us - self.settle_us


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalEpisode:
    """One planned disturbance of one server in one run."""

    server_id: NodeId
    """The server."""
    kind: EpisodeKind
    """What happens."""
    start_us: int
    """When the precursor (or the sudden fault) begins, in the run's simulated time."""
    peak_us: int
    """When the precursor ends and the fault is fully there."""
    end_us: int
    """When it is all over."""
    magnitude: float
    """Kind-specific strength: total load, peak RTT excess in µs, down share of a flap cycle."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RunPlan:
    """Everything one run injects."""

    index: int
    """The run's place in the campaign."""
    episodes: tuple[EvalEpisode, ...]
    """The episodes, in start order."""
    faults: FaultPlan
    """The simulator faults that make them."""


@dataclass(slots=True)
class _Planner:
    """Draws episodes and their faults for one run."""

    rng: random.Random
    config: SimEvalConfig
    clients: tuple[NodeId, ...]
    base_loads: dict[NodeId, float]
    rtt_excess_us_max: int

    def duration(self, low_us: int, high_us: int) -> int:
        return int(self.rng.uniform(low_us, high_us))

    def episode(
        self, kind: EpisodeKind, server: NodeId, start_us: int
    ) -> tuple[EvalEpisode, list[Fault]]:
        if kind in SUDDEN_FAULTS:
            return self._sudden(kind, server, start_us)
        if kind is EpisodeKind.FLAPPING_LINK:
            return self._flapping(server, start_us)
        if kind in (EpisodeKind.CONGESTION_RAMP, EpisodeKind.CLIENT_PATH):
            return self._congestion(kind, server, start_us)
        return self._load(kind, server, start_us)

    def _ramp(self, start_us: int, peak_value: float) -> tuple[Ramp, int]:
        config = self.config
        peak_us = start_us + self.duration(config.ramp_us_min, config.ramp_us_max)
        shape = self.rng.choice((RampShape.LINEAR, RampShape.EXPONENTIAL))
        recover_us = peak_us + self.duration(config.fall_us_min, config.fall_us_max)
        ramp = Ramp(
            start_us=start_us,
            peak_us=peak_us,
            peak_value=peak_value,
            shape=shape,
            recover_us=recover_us,
            steepness=RAMP_STEEPNESS,
        )
        return ramp, recover_us

    def _load(
        self, kind: EpisodeKind, server: NodeId, start_us: int
    ) -> tuple[EvalEpisode, list[Fault]]:
        rng = self.rng
        base = self.base_loads[server]
        if kind is EpisodeKind.LOAD_SPIKE:
            total = rng.uniform(0.85, 0.95)
            peak_us = start_us + 200_000
            end_us = peak_us + self.duration(500_000, 1_500_000)
            ramp = Ramp(
                start_us=start_us, peak_us=peak_us, peak_value=total - base, recover_us=end_us
            )
        else:
            total = (
                rng.uniform(OVERLOAD_TOTAL_MIN, OVERLOAD_TOTAL_MAX)
                if kind is EpisodeKind.OVERLOAD_RAMP
                else rng.uniform(BENIGN_TOTAL_MIN, BENIGN_TOTAL_MAX)
            )
            ramp, end_us = self._ramp(start_us, max(total - base, 0.05))
            peak_us = ramp.peak_us
        episode = EvalEpisode(
            server_id=server,
            kind=kind,
            start_us=start_us,
            peak_us=peak_us,
            end_us=end_us,
            magnitude=total,
        )
        return episode, [NodeOverload(node=server, ramp=ramp)]

    def _congestion(
        self, kind: EpisodeKind, server: NodeId, start_us: int
    ) -> tuple[EvalEpisode, list[Fault]]:
        """The delay (and, as queues overflow, the loss) of the server's links to every client
        rises past the path SLO; or, a distractor, of one client's link, staying below it."""
        rng = self.rng
        clients = self.clients
        if kind is EpisodeKind.CLIENT_PATH:
            excess = rng.uniform(CLIENT_PATH_EXCESS_MIN, CLIENT_PATH_EXCESS_MAX)
            clients = (rng.choice(clients),)
        else:
            excess = rng.uniform(CONGESTION_EXCESS_MIN, CONGESTION_EXCESS_MAX)
        excess_us = excess * self.rtt_excess_us_max
        ramp, end_us = self._ramp(start_us, excess_us / 2)
        # Loss follows the delay late: queues fill before they overflow.
        loss = dataclasses.replace(
            ramp,
            peak_value=rng.uniform(PATH_LOSS_MIN, PATH_LOSS_MAX),
            shape=RampShape.EXPONENTIAL,
        )
        faults: list[Fault] = [
            LinkDegradation(source=server, target=client, delay_ramp=ramp, loss_ramp=loss)
            for client in clients
        ]
        episode = EvalEpisode(
            server_id=server,
            kind=kind,
            start_us=start_us,
            peak_us=ramp.peak_us,
            end_us=end_us,
            magnitude=excess_us,
        )
        return episode, faults

    def _flapping(self, server: NodeId, start_us: int) -> tuple[EvalEpisode, list[Fault]]:
        """Blips of extra delay, more and more often, then the uplink goes down and up."""
        rng, config = self.rng, self.config
        peak_us = start_us + self.duration(config.ramp_us_min, config.ramp_us_max)
        faults: list[Fault] = []
        at_us = start_us
        blips = 0
        while at_us < peak_us and blips < FLAP_BLIPS_MAX:
            progress = (at_us - start_us) / (peak_us - start_us)
            if rng.random() >= 0.1 + 0.4 * progress:
                at_us += config.tick_us
                continue
            # One blip at a time: overlapping ones would add up to a breach before the flapping.
            blip = Ramp(
                start_us=at_us,
                peak_us=at_us + BLIP_RISE_US,
                peak_value=rng.uniform(BLIP_DELAY_US_MIN, BLIP_DELAY_US_MAX),
                recover_us=at_us + self.duration(BLIP_US_MIN, BLIP_US_MAX),
            )
            # A blip loses a little too: a failing link drops packets before it goes down.
            lossy = dataclasses.replace(blip, peak_value=rng.uniform(PATH_LOSS_MIN, PATH_LOSS_MAX))
            faults.extend(
                LinkDegradation(source=server, target=client, delay_ramp=blip, loss_ramp=lossy)
                for client in self.clients
            )
            blips += 1
            at_us = (blip.recover_us or at_us) + config.tick_us
        period_us = self.duration(1_000_000, 3_000_000)
        down_share = rng.uniform(0.3, 0.6)
        end_us = peak_us + self.duration(config.fall_us_min, config.fall_us_max)
        at_us = peak_us
        for _ in range(FLAP_CYCLES_MAX):
            if at_us >= end_us:
                break
            down_until_us = min(at_us + int(period_us * down_share), end_us)
            faults.append(
                Partition(
                    side_a=(server,), side_b=self.clients, at_us=at_us, heal_at_us=down_until_us
                )
            )
            at_us += period_us
        episode = EvalEpisode(
            server_id=server,
            kind=EpisodeKind.FLAPPING_LINK,
            start_us=start_us,
            peak_us=peak_us,
            end_us=end_us,
            magnitude=down_share,
        )
        return episode, faults

    def _sudden(
        self, kind: EpisodeKind, server: NodeId, start_us: int
    ) -> tuple[EvalEpisode, list[Fault]]:
        config = self.config
        end_us = start_us + self.duration(config.sudden_us_min, config.sudden_us_max)
        fault: Fault
        if kind is EpisodeKind.CRASH:
            fault = NodeCrash(
                node=server, at_us=start_us, restart_at_us=end_us, silent=self.rng.random() < 0.3
            )
        else:
            fault = Partition(
                side_a=(server,), side_b=self.clients, at_us=start_us, heal_at_us=end_us
            )
        episode = EvalEpisode(
            server_id=server,
            kind=kind,
            start_us=start_us,
            peak_us=start_us,
            end_us=end_us,
            magnitude=1.0,
        )
        return episode, [fault]


def draw_run_plan(
    rng: random.Random,
    *,
    index: int,
    config: SimEvalConfig,
    servers: Sequence[NodeId],
    clients: Sequence[NodeId],
    base_loads: dict[NodeId, float],
    rtt_excess_us_max: int,
) -> RunPlan:
    """Every server's episodes of one run, and the simulator faults that make them."""
    planner = _Planner(
        rng=rng,
        config=config,
        clients=tuple(clients),
        base_loads=base_loads,
        rtt_excess_us_max=rtt_excess_us_max,
    )
    deck: list[EpisodeKind] = []
    heal_us = config.heal_us
    # Servers take turns by their next free time (ties by name), so the draw order is fixed.
    next_free = {
        server: config.quiet_start_us + int(rng.expovariate(1.0 / config.gap_us_mean))
        for server in servers
    }
    crash_free_us = 0
    episodes: list[EvalEpisode] = []
    faults: list[Fault] = []
    while next_free:
        server = min(next_free, key=lambda name: (next_free[name], name))
        if not deck:
            # Kinds come from a shuffled deck, so every fault type gets its share of each run.
            deck = [*EVALUATED_KINDS] * config.deck_faults_each + [*DISTRACTOR_KINDS]
            rng.shuffle(deck)
        kind = deck.pop()
        start_us = next_free[server]
        if kind is EpisodeKind.CRASH:
            start_us = max(start_us, crash_free_us)
        episode, made = planner.episode(kind, server, start_us)
        if episode.end_us > heal_us:
            del next_free[server]
            continue
        if kind is EpisodeKind.CRASH:
            crash_free_us = episode.end_us + config.crash_spacing_us
        episodes.append(episode)
        faults.extend(made)
        gap_us = config.gap_us_min + int(rng.expovariate(1.0 / config.gap_us_mean))
        next_free[server] = episode.end_us + gap_us
    episodes.sort(key=lambda episode: (episode.start_us, episode.server_id))
    return RunPlan(
        index=index,
        episodes=tuple(episodes),
        faults=FaultPlan(faults=tuple(faults), heal_us=heal_us),
    )
