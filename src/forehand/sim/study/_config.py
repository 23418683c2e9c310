"""The scale study's configuration: fleet size, fault mix, policies, clocks, all validated.

One frozen dataclass per component (STYLE.md rule 10): `FaultMix` says how often each fault
starts, `StudyConfig` everything else. A bad value raises `ConfigError` naming the field, before
anything runs.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields

from forehand.errors import ConfigError

__all__ = [
    "FAULT_MIXES",
    "QUIET_ASSESS_INTERVAL_S",
    "FaultKind",
    "FaultMix",
    "Policy",
    "StudyConfig",
    "fault_mix",
]

SERVERS_MIN = 8
"""Fewest servers a study runs (failover needs replicas on other servers)."""
SERVERS_MAX = 16_384
"""Most servers a study runs (the placement's 16-bit server index leaves room)."""
SESSIONS_MAX = 2_000_000
"""Most sessions a study tracks (6,000,000 parts of 3)."""
DURATION_S_MAX = 86_400
"""Longest simulated span, one day."""
QUIET_ASSESS_INTERVAL_S = 120
"""Default predictor cadence for a server whose load stays quiet."""
PART_LOAD_SIGMA = 1.0
"""Default lognormal sigma of the parts' request loads: the busiest 10% of parts carry about
39% of the requests, the busiest 1% about 9% (session request rates are heavy-tailed)."""
PART_LOAD_SIGMA_MAX = 3.0
"""Largest sigma a study accepts (at 3.0 the busiest 1% of parts carry most requests)."""


class FaultKind(enum.IntEnum):
    """What disrupts a server; the value is the cause code in the fleet arrays (0 is none)."""

    OVERLOAD_RAMP = 1
    """Gradual: demand on the server ramps past saturation; latency breaches, it may crash."""
    CONGESTION_RAMP = 2
    """Gradual: the server's network path loses more and more packets; errors breach."""
    FLAPPING_LINK = 3
    """Gradual: the link drops for seconds at a time, more and more often; it may end cut."""
    CRASH = 4
    """Sudden: the process dies, without warning."""
    LINK_CUT = 5
    """Sudden: the server becomes unreachable, without warning."""
    DRAIN = 6
    """Planned: an operator takes the server out of service."""

    @property
    def gradual(self) -> bool:
        """Whether the fault gives warning (ramps) before it disrupts."""
        return self in (FaultKind.OVERLOAD_RAMP, FaultKind.CONGESTION_RAMP, FaultKind.FLAPPING_LINK)

    @property
    def label(self) -> str:
        """The name used in reports."""
        return self.name.lower()


class Policy(enum.Enum):
    """How the fleet reacts to faults; every policy runs on the same seeded fleet."""

    STATIC = "static"
    """Sticky placement, no replicas, nothing moves: a part whose server dies (or is drained,
    which for a sticky server means restarted) loses its state and is re-placed only when its
    client reconnects as a new session."""
    REACTIVE = "reactive"
    """Replicated parts; the manager fails parts over when it declares a server dead and moves
    them off drained servers by planned handoff; it never moves parts on load or risk."""
    PREDICTIVE = "predictive"
    """REACTIVE plus the predictor: a server whose predicted risk crosses the trigger policy's
    threshold has a share of its primary parts handed off before the disruption."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultMix:
    """How often each fault starts, per 1,000 server-hours, and how gradual faults end."""

    name: str = "custom"
    """Label used in reports."""
    overload_ramps: float = 0.0
    """Overload ramps per 1,000 server-hours."""
    congestion_ramps: float = 0.0
    """Congestion ramps per 1,000 server-hours."""
    flapping_links: float = 0.0
    """Flapping links per 1,000 server-hours."""
    crashes: float = 0.0
    """Crashes per 1,000 server-hours."""
    link_cuts: float = 0.0
    """Link cuts per 1,000 server-hours."""
    drains: float = 0.0
    """Planned drains per 1,000 server-hours."""
    ramp_crash_probability: float = 0.2
    """Share of overload ramps that end with the process crashing (out of memory)."""
    flap_cut_probability: float = 0.3
    """Share of flapping links and congestion ramps that end with the link cut for good."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "name":
                if not isinstance(value, str) or not value:
                    raise ConfigError("FaultMix.name must be a non-empty string")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"FaultMix.{item.name} must be a number, got {value!r}")
            if not 0.0 <= value <= FAULT_RATE_MAX:
                raise ConfigError(
                    f"FaultMix.{item.name} must be in [0, {FAULT_RATE_MAX}], got {value!r}"
                )
        for name in ("ramp_crash_probability", "flap_cut_probability"):
            if getattr(self, name) > 1.0:
                raise ConfigError(f"FaultMix.{name} is a probability, at most 1.0")

    def scaled(self, factor: float) -> FaultMix:
        """The same mix with every rate times `factor` (small fleets need more faults)."""
        if not 0.0 < factor <= FAULT_RATE_MAX:
            raise ConfigError(f"a fault-rate factor must be in (0, {FAULT_RATE_MAX}]")

        def rate(value: float) -> float:
            return min(FAULT_RATE_MAX, value * factor)

        return FaultMix(
            name=self.name if factor == 1.0 else f"{self.name} x{factor:g}",
            overload_ramps=rate(self.overload_ramps),
            congestion_ramps=rate(self.congestion_ramps),
            flapping_links=rate(self.flapping_links),
            crashes=rate(self.crashes),
            link_cuts=rate(self.link_cuts),
            drains=rate(self.drains),
            ramp_crash_probability=self.ramp_crash_probability,
            flap_cut_probability=self.flap_cut_probability,
        )

    def rate_per_server_hour(self, kind: FaultKind) -> float:
        """Starts of `kind` per server-hour."""
        per_thousand = {
            FaultKind.OVERLOAD_RAMP: self.overload_ramps,
            FaultKind.CONGESTION_RAMP: self.congestion_ramps,
            FaultKind.FLAPPING_LINK: self.flapping_links,
            FaultKind.CRASH: self.crashes,
            FaultKind.LINK_CUT: self.link_cuts,
            FaultKind.DRAIN: self.drains,
        }[kind]
        return per_thousand / 1_000.0


FAULT_RATE_MAX = 1_000.0
"""Most starts of one fault kind per 1,000 server-hours (one per server-hour)."""

FAULT_MIXES: dict[str, FaultMix] = {
    "gradual": FaultMix(
        name="gradual",
        overload_ramps=4.0,
        congestion_ramps=2.0,
        flapping_links=2.0,
        drains=0.3,
        ramp_crash_probability=0.1,
        flap_cut_probability=0.1,
    ),
    "sudden": FaultMix(name="sudden", crashes=1.0, link_cuts=0.5, drains=0.3),
    "mixed": FaultMix(
        name="mixed",
        overload_ramps=2.0,
        congestion_ramps=1.0,
        flapping_links=1.0,
        crashes=0.5,
        link_cuts=0.3,
        drains=0.3,
    ),
}
"""The named mixes of `--mix`. Rates are per 1,000 server-hours: `gradual` starts 80 faults an
hour in a fleet of 10,000 servers, most of which end without a death, as real gradual faults do."""


def fault_mix(name: str) -> FaultMix:
    """The named mix; ConfigError listing the names for an unknown one."""
    try:
        return FAULT_MIXES[name]
    except KeyError:
        known = ", ".join(sorted(FAULT_MIXES))
        raise ConfigError(f"unknown fault mix {name!r}; known: {known}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyConfig:
    """One study: the fleet, its sessions, the faults, the policies compared and the clocks."""

    servers: int = 1_000
    """Servers in the fleet, all ACTIVE at the start."""
    sessions: int = 100_000
    """Sessions, each of `parts_per_session` parts, placed by the map at the start."""
    parts_per_session: int = 3
    """Parts per session (`auth`, `cart`, `video`, ...)."""
    zones: int = 3
    """Failure zones the servers are spread over (replicas span zones)."""
    duration_s: int = 3_600
    """Simulated time."""
    tick_s: int = 5
    """Step of the fleet model; servers heartbeat once a tick."""
    assess_interval_s: int = 30
    """How often the predictive policy runs the predictor on one server's load reports (each
    assessment costs a few hundred microseconds; every heartbeat still reaches the manager)."""
    quiet_assess_interval_s: int = QUIET_ASSESS_INTERVAL_S
    """How often it runs the predictor on a server whose load stays quiet (CPU, latency and errors
    well below the SLO, `QUIET_*` in `_risk.py`) and was quiet at its last assessment; a server
    that leaves the quiet band is assessed at its next `assess_interval_s`. Equal to
    `assess_interval_s`: every server at that cadence."""
    seed: int = 1
    """Root seed: the fleet, the faults, the manager and the predictor all derive from it."""
    mix: FaultMix = field(default_factory=lambda: FAULT_MIXES["gradual"])
    """The faults."""
    policies: tuple[Policy, ...] = (Policy.STATIC, Policy.REACTIVE, Policy.PREDICTIVE)
    """The policies compared, each on the same fleet and faults."""
    dwell_s: int = 600
    """A part handed back to a server it left less than this long ago counts as a ping-pong."""
    disruption_merge_s: int = 60
    """A session impaired again less than this long after its last impairment ended counts one
    disruption, not two (a flapping link is one disruption per episode, not one per flap)."""
    training_servers: int = 200
    """Servers of the separate, seeded fleet the predictor is trained on before the study."""
    training_hours: float = 4.0
    """Simulated hours of that training fleet."""
    training_fault_boost: float = 10.0
    """Fault rates of the training fleet, as a multiple of the study's (more labelled onsets)."""
    failure_timeout_s: int = 15
    """Silence after which the manager declares a server dead (three ticks by default)."""
    part_load_sigma: float = PART_LOAD_SIGMA
    """Spread of the parts' request loads: lognormal with mean 1.0 and this sigma (0.0: every
    part carries the same load)."""

    def __post_init__(self) -> None:
        self._check_ranges()
        if not self.policies:
            raise ConfigError("StudyConfig.policies must name at least one policy")
        if len(set(self.policies)) != len(self.policies):
            raise ConfigError("StudyConfig.policies must not repeat a policy")
        if not all(isinstance(policy, Policy) for policy in self.policies):
            raise ConfigError("StudyConfig.policies must hold Policy values")
        if not isinstance(self.mix, FaultMix):
            raise ConfigError("StudyConfig.mix must be a FaultMix")
        if self.duration_s % self.tick_s:
            raise ConfigError("StudyConfig.duration_s must be a multiple of tick_s")
        if self.assess_interval_s % self.tick_s:
            raise ConfigError("StudyConfig.assess_interval_s must be a multiple of tick_s")
        if self.quiet_assess_interval_s < self.assess_interval_s:
            raise ConfigError(
                "StudyConfig.quiet_assess_interval_s must be at least assess_interval_s"
            )
        if self.failure_timeout_s < 2 * self.tick_s:
            raise ConfigError("StudyConfig.failure_timeout_s must be at least two ticks")

    def _check_ranges(self) -> None:
        bounds: dict[str, tuple[float, float]] = {
            "servers": (SERVERS_MIN, SERVERS_MAX),
            "sessions": (1, SESSIONS_MAX),
            "parts_per_session": (1, 8),
            "zones": (1, 16),
            "duration_s": (60, DURATION_S_MAX),
            "tick_s": (1, 60),
            "assess_interval_s": (1, 600),
            "quiet_assess_interval_s": (1, 3_600),
            "seed": (0, 2**63 - 1),
            "dwell_s": (0, DURATION_S_MAX),
            "disruption_merge_s": (0, DURATION_S_MAX),
            "training_servers": (0, 4_096),
            "training_hours": (0.0, 48.0),
            "training_fault_boost": (1.0, 100.0),
            "failure_timeout_s": (2, 600),
            "part_load_sigma": (0.0, PART_LOAD_SIGMA_MAX),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"StudyConfig.{name} must be a number, got {value!r}")
            if not low <= value <= high:
                raise ConfigError(f"StudyConfig.{name} must be in [{low}, {high}], got {value!r}")

    @property
    def ticks(self) -> int:
        """Fleet-model steps in the run."""
        return self.duration_s // self.tick_s

    @property
    def parts(self) -> int:
        """Part keys in the map."""
        return self.sessions * self.parts_per_session
