"""The fleet model: aggregate load per server, tick by tick, with faults drawn from the seed.

No individual requests: every part carries a request load drawn once from a heavy-tailed
(lognormal) distribution, and a server's CPU follows the load of the primary parts it holds
relative to its initial parts' (so moving parts off a hot server cools it, a busy part more than
a quiet one), scaled by its fault's intensity; latency follows CPU by a queueing curve; faults
add latency, errors, silence or death. Everything random is drawn up
front or per tick from one numpy generator seeded by the study, and nothing drawn depends on the
policy, so every policy meets the same servers, noise and faults at the same instants.

A server breaches its SLO (the predictor's `latency_us_p99` 250 ms and `error_ratio` 5%) or is
unreachable or dead: its primary parts are then impaired, and so are their sessions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forehand.sim.study._config import FaultKind, StudyConfig

__all__ = ["Fault", "FleetModel", "FleetTick", "draw_faults", "part_loads"]

LATENCY_US_BASE = 20_000
"""p99 latency of an idle server; it grows as 1 / (1 - cpu) (M/M/1-like queueing)."""
LATENCY_US_SLO = 250_000
"""p99 latency above which a server breaches (the predictor's default SLO)."""
ERROR_RATIO_SLO = 0.05
"""Error ratio above which a server breaches (the predictor's default SLO)."""
CPU_IDLE = 0.05
"""CPU a server burns with no sessions."""
CPU_SESSION_LOW, CPU_SESSION_HIGH = 0.25, 0.5
"""Range of the CPU a server's initial share of sessions costs (drawn per server)."""
NOISE_DECAY, NOISE_SD = 0.8, 0.02
"""AR(1) load noise per tick."""
RECOVERY_S = 60
"""A gradual fault that does not end in a death fades over this long."""
REQUESTS_PER_SECOND_PER_LOAD = 1.0
"""Requests per second of a part of load 1.0 (the mean part) on a server without a fault."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """One fault on one server."""

    kind: FaultKind
    """What happens."""
    server: int
    """Index of the server."""
    start_tick: int
    """Tick the fault starts (a sudden fault strikes then)."""
    ramp_ticks: int
    """Ticks the intensity takes to climb from 0 to 1 (0 for sudden and planned faults)."""
    hold_ticks: int
    """Ticks it stays at full intensity."""
    peak: float
    """Full intensity: the CPU multiplier, the error ratio, or the flap down-probability."""
    ends_dead: bool
    """Whether the server dies (crash or cut) when the hold ends."""
    onset_tick: int | None
    """First tick the server breaches with its initial parts and no noise (None: never)."""
    flaps: tuple[float, ...] = ()
    """Flapping links: a uniform draw per tick of the fault; the link is down at a tick whose
    draw is below intensity squared times `peak`."""

    @property
    def end_tick(self) -> int:
        """Tick the hold ends."""
        return self.start_tick + self.ramp_ticks + self.hold_ticks


def draw_faults(
    config: StudyConfig, rng: np.random.Generator, base_cpu: npt.NDArray[np.float64]
) -> list[Fault]:
    """The faults of a run: Poisson counts per kind, at most one fault per server."""
    hours = config.duration_s / 3600.0
    tick_s = config.tick_s
    order = rng.permutation(config.servers)
    taken = 0
    faults: list[Fault] = []
    for kind in FaultKind:
        expected = config.mix.rate_per_server_hour(kind) * config.servers * hours
        count = min(int(rng.poisson(expected)), config.servers - taken)
        for _ in range(count):
            server = int(order[taken])
            taken += 1
            faults.append(
                _draw_one(
                    kind,
                    server=server,
                    config=config,
                    rng=rng,
                    base=base_cpu[server],
                    tick_s=tick_s,
                )
            )
    faults.sort(key=lambda fault: (fault.start_tick, fault.server))
    return faults


def _draw_one(
    kind: FaultKind,
    *,
    server: int,
    config: StudyConfig,
    rng: np.random.Generator,
    base: float,
    tick_s: int,
) -> Fault:
    mix = config.mix
    start = int(rng.integers(0, config.ticks))
    if not kind.gradual:
        return Fault(
            kind=kind,
            server=server,
            start_tick=start,
            ramp_ticks=0,
            hold_ticks=0,
            peak=1.0,
            ends_dead=kind is not FaultKind.DRAIN,
            onset_tick=None if kind is FaultKind.DRAIN else start,
        )
    ramp = max(1, int(rng.uniform(300, 1_200)) // tick_s)
    hold = max(1, int(rng.uniform(120, 600)) // tick_s)
    draw = float(rng.random())
    flaps: npt.NDArray[np.float64] | None = None
    drawn: tuple[float, ...] = ()
    if kind is FaultKind.OVERLOAD_RAMP:
        # Full intensity takes the server's CPU to 1.1-1.6: past the SLO, into saturation.
        peak = float(rng.uniform(1.1, 1.6)) / (CPU_IDLE + base)
        ends_dead = draw < mix.ramp_crash_probability
    elif kind is FaultKind.CONGESTION_RAMP:
        peak = float(rng.uniform(0.08, 0.3))
        ends_dead = draw < mix.flap_cut_probability
    else:
        peak = float(rng.uniform(0.3, 0.6))
        ends_dead = draw < mix.flap_cut_probability
        flaps = rng.random(ramp + hold)
    drawn = () if flaps is None else tuple(float(value) for value in flaps)
    fault = Fault(
        kind=kind,
        server=server,
        start_tick=start,
        ramp_ticks=ramp,
        hold_ticks=hold,
        peak=peak,
        ends_dead=ends_dead,
        onset_tick=None,
        flaps=drawn,
    )
    onset = _onset(fault, base)
    return Fault(
        kind=kind,
        server=server,
        start_tick=start,
        ramp_ticks=ramp,
        hold_ticks=hold,
        peak=peak,
        ends_dead=ends_dead,
        onset_tick=onset,
        flaps=drawn,
    )


def part_loads(config: StudyConfig) -> npt.NDArray[np.float64]:
    """Every part's request load, lognormal with mean 1.0 and `part_load_sigma` (all 1.0 at 0),
    from a stream of the seed that nothing else draws from (the same for every policy)."""
    sigma = config.part_load_sigma
    if sigma == 0.0:
        return np.ones(config.parts)
    rng = np.random.default_rng([config.seed, 0x5CA1E, 0x10AD])
    return rng.lognormal(mean=-sigma * sigma / 2.0, sigma=sigma, size=config.parts)


def _intensity(fault: Fault, tick: int) -> float:
    """0 before the start, climbing to 1 over the ramp, 1 in the hold, fading after."""
    if tick < fault.start_tick:
        return 0.0
    into = tick - fault.start_tick
    if into < fault.ramp_ticks:
        return (into + 1) / fault.ramp_ticks
    if tick < fault.end_tick:
        return 1.0
    return 0.0


def _onset(fault: Fault, base: float) -> int | None:
    """The first breaching tick of the fault alone, on the server's initial load."""
    for tick in range(fault.start_tick, fault.end_tick):
        level = _intensity(fault, tick)
        if fault.kind is FaultKind.OVERLOAD_RAMP:
            cpu = CPU_IDLE + base * (1.0 + level * (fault.peak - 1.0))
            if _latency_us(cpu) > LATENCY_US_SLO:
                return tick
        elif fault.kind is FaultKind.CONGESTION_RAMP:
            if 0.001 + level * fault.peak > ERROR_RATIO_SLO:
                return tick
        elif fault.flaps and _link_down(fault, tick):
            return tick
    return fault.end_tick if fault.ends_dead else None


def _link_down(fault: Fault, tick: int) -> bool:
    into = tick - fault.start_tick
    level = _intensity(fault, tick)
    return 0 <= into < len(fault.flaps) and fault.flaps[into] < level * level * fault.peak


def _latency_us(cpu: float) -> float:
    return LATENCY_US_BASE / (1.0 - min(max(cpu, 0.0), 0.985))


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetTick:
    """Every server's state at one tick (arrays indexed by server)."""

    cpu: npt.NDArray[np.float64]
    """CPU utilization (above 1.0 when work queues)."""
    latency_us_p99: npt.NDArray[np.float64]
    """p99 request latency."""
    error_ratio: npt.NDArray[np.float64]
    """Share of requests failing."""
    reachable: npt.NDArray[np.bool_]
    """Whether its heartbeats reach the manager and its clients reach it."""
    alive: npt.NDArray[np.bool_]
    """Whether the process is up (and not taken out of service)."""
    impaired: npt.NDArray[np.bool_]
    """Breaching, unreachable or dead: its primary parts are impaired."""
    cause: npt.NDArray[np.int8]
    """The `FaultKind` acting on the server (0: none)."""
    demand: npt.NDArray[np.float64]
    """Factor on every part's request rate on the server (an overload ramp's intensity; 1.0)."""


class FleetModel:
    """Steps the fleet tick by tick; `primaries` (from the map) is the only policy input."""

    def __init__(self, *, config: StudyConfig) -> None:
        self.config = config
        self._rng = np.random.default_rng([config.seed, 0x5CA1E])
        n = config.servers
        self.base_cpu = self._rng.uniform(CPU_SESSION_LOW, CPU_SESSION_HIGH, n)
        self.faults = draw_faults(config, self._rng, self.base_cpu)
        self.part_load = part_loads(config)
        """Every part's request load (mean 1.0), in session order; drawn from its own stream so
        the faults and noise do not depend on it."""
        self._noise = np.zeros(n)
        self._dead = np.zeros(n, dtype=np.bool_)
        self._dead_cause = np.zeros(n, dtype=np.int8)
        self.tick = 0

    def planned_drains(self, tick: int) -> list[int]:
        """Servers an operator drains at `tick`."""
        return [
            fault.server
            for fault in self.faults
            if fault.kind is FaultKind.DRAIN and fault.start_tick == tick
        ]

    def step(
        self,
        *,
        load: npt.NDArray[np.float64],
        initial_load: npt.NDArray[np.float64],
        drains_kill: bool,
    ) -> FleetTick:
        """Advance one tick; `load` per server (its primaries' `part_load` summed), against
        `initial_load` (the same at the start, which costs the server its `base_cpu`).

        With `drains_kill` (the static policy) a drained server goes down at once, as a sticky
        server restarted for maintenance does; otherwise draining leaves it up and serving.
        """
        config = self.config
        tick = self.tick
        self.tick += 1
        n = config.servers
        self._noise = self._noise * NOISE_DECAY + self._rng.normal(0.0, NOISE_SD, n)
        multiplier = np.ones(n)
        extra_error = np.zeros(n)
        extra_latency = np.zeros(n)
        reachable = np.ones(n, dtype=np.bool_)
        cause = np.zeros(n, dtype=np.int8)
        for fault in self.faults:
            if tick < fault.start_tick or (tick >= fault.end_tick + RECOVERY_S // config.tick_s):
                continue
            self._apply(
                fault,
                tick,
                drains_kill=drains_kill,
                multiplier=multiplier,
                extra_error=extra_error,
                extra_latency=extra_latency,
            )
            if fault.flaps and _link_down(fault, tick):
                reachable[fault.server] = False
            if fault.kind is not FaultKind.DRAIN:
                cause[fault.server] = int(fault.kind)
        relative = load / np.maximum(initial_load, 1e-9)
        cpu = CPU_IDLE + self.base_cpu * relative * multiplier + self._noise
        cpu = np.maximum(cpu, 0.0)
        latency = LATENCY_US_BASE / (1.0 - np.minimum(cpu, 0.985)) + extra_latency
        error = 0.001 + np.maximum(cpu - 1.0, 0.0) * 0.5 + extra_error
        alive = ~self._dead
        reachable &= alive
        impaired = ~reachable | (latency > LATENCY_US_SLO) | (error > ERROR_RATIO_SLO)
        cause = np.where(self._dead, self._dead_cause, cause).astype(np.int8)
        return FleetTick(
            cpu=cpu,
            latency_us_p99=latency,
            error_ratio=error,
            reachable=reachable,
            alive=alive,
            impaired=impaired,
            cause=cause,
            demand=multiplier,
        )

    def _apply(
        self,
        fault: Fault,
        tick: int,
        *,
        drains_kill: bool,
        multiplier: npt.NDArray[np.float64],
        extra_error: npt.NDArray[np.float64],
        extra_latency: npt.NDArray[np.float64],
    ) -> None:
        server = fault.server
        if fault.kind is FaultKind.DRAIN:
            if drains_kill and tick == fault.start_tick:
                self._kill(server, fault.kind)
            return
        if not fault.kind.gradual:
            if tick == fault.start_tick:
                self._kill(server, fault.kind)
            return
        if tick >= fault.end_tick:
            if fault.ends_dead:
                self._kill(server, fault.kind)
                return
            level = max(0.0, 1.0 - (tick - fault.end_tick + 1) * self.config.tick_s / RECOVERY_S)
        else:
            level = _intensity(fault, tick)
        if fault.kind is FaultKind.OVERLOAD_RAMP:
            multiplier[server] = 1.0 + level * (fault.peak - 1.0)
        elif fault.kind is FaultKind.CONGESTION_RAMP:
            extra_error[server] = level * fault.peak
            extra_latency[server] = level * 150_000.0
        else:
            # Between drops the flapping link shows its strain: retransmissions, some errors.
            extra_error[server] = level * 0.08
            extra_latency[server] = level * 80_000.0

    def _kill(self, server: int, kind: FaultKind) -> None:
        if not self._dead[server]:
            self._dead[server] = True
            self._dead_cause[server] = int(kind)
