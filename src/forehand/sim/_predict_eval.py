"""Input (a) of `forehand predict-eval`: telemetry and breaches from the per-message simulator.

Each run of a campaign is a `SimCluster` of the real cores (manager, servers, clients, the shop
workload) with the episodes of `_predict_eval_plan` as its fault plan. Two things are recorded:

- **What the manager receives.** The manager runs a `RecordingRiskPolicy`: every heartbeat it
  accepts hands the policy the server's `LoadReport`, and every heartbeat's `PathReport`s (the
  clients' PING measurements the servers relay) go to `observe_paths`. The policy keeps at most
  one `ServerSample` per server and one `PathSample` per (server, client bucket) per tick, as
  the manager's predictive policy does, plus one sample with no values when the manager
  declares a server dead (a dead server sends no heartbeat, so without it a crash's onset would
  go unseen), and moves nothing, so no handoff hides an outcome.
- **The ground truth, as the simulator measures it**, every `truth_interval_us`: a server
  breaches when it is crashed (dead), when the p99 latency its process model gives (what its
  next load report would say) exceeds the SLO, or when at least `server_breach_share_min` of
  its client paths breach: cut by a partition (down), or with a round trip above its floor by
  more than the path SLO (the delay ramps of both directions). Only the paths of clients that
  use the server count (a connection to it within `path_in_use_us`): a server no client talks
  to has no client paths to breach, as on the predictor's side. `BreachTracker` turns these into
  events with one onset each; an event's kind is the episode under way on that server.

A recorded sample carries the truth of its tick in `breached`, so the predictor learns from the
labels the evaluation scores. Runs go to a process pool; they are stitched on one timeline (the
servers keep their names, so each is one entity over the campaign) and the evaluation reads it
stretched by `time_scale`. The same seed gives the same digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from forehand.core import KeyRing, ManagerCore, NodeId, TokenSealer
from forehand.core import manager_events as me
from forehand.core._manager_risk import load_values
from forehand.core.messages import LoadReport, PathReport
from forehand.predict import (
    DEFAULT_SERVER_METRICS,
    GRADUAL_FAULTS,
    SUDDEN_FAULTS,
    BreachTracker,
    EvaluationConfig,
    EvaluationReport,
    FeatureConfig,
    LabelConfig,
    LabelledEvent,
    OnlinePredictor,
    PathSample,
    PathSloConfig,
    PolicyConfig,
    PredictorConfig,
    Sample,
    ServerSample,
    evaluate,
    replay,
)
from forehand.sim._cluster import CLUSTER_KEY, ClusterConfig, ClusterPlan, SimCluster, draw_plan
from forehand.sim._predict_eval_plan import (
    EVALUATED_KINDS,
    EvalEpisode,
    RunPlan,
    SimEvalConfig,
    draw_run_plan,
)
from forehand.sim._process import NodeStart, NodeState, slowdown_for
from forehand.sim._rng import derive_rng, derive_seed

__all__ = [
    "RecordingRiskPolicy",
    "RunTrace",
    "SimTelemetry",
    "generate",
    "plan_campaign",
    "sim_predictor_config",
    "sim_report",
]

SAMPLES_PER_RUN_MAX = 2_000_000
"""Bound on the samples one run records."""
MOVES_UNLIMITED = 1 << 30
"""What the recording policy's migration budget allows: it never moves anything itself."""


class RecordingRiskPolicy:
    """A manager risk policy that records what the manager receives and never acts.

    At most one server sample per server and one path sample per (server, client bucket) per
    `tick_us` from what heartbeats carry, plus one sample with no values when the manager
    declares a server dead (`forget`); each sample's `breached` comes from `truth` (the
    simulator's measurement).
    """

    def __init__(
        self, *, tick_us: int, path_tick_us: int, samples_max: int = SAMPLES_PER_RUN_MAX
    ) -> None:
        self.tick_us = tick_us
        """Least time between two samples of one server."""
        self.path_tick_us = path_tick_us
        """Least time between two samples of one path (server, client bucket)."""
        self.samples: list[tuple[int, Sample]] = []
        """(time_us, sample) in the order the manager received them."""
        self.truth: Callable[[str, int], bool] = lambda server_id, now_us: False
        """Whether `server_id` breached within the tick before `now_us` (set by the run)."""
        self.clock: Callable[[], int] | None = None
        """The simulated time (set by the run), for what the manager learns outside a
        heartbeat: that a server died."""
        self._samples_max = samples_max
        self._server_us: dict[str, int] = {}
        self._path_us: dict[tuple[str, int], int] = {}

    def _record(self, now_us: int, sample: Sample) -> None:
        if len(self.samples) >= self._samples_max:
            raise OverflowError(f"a run recorded more than {self._samples_max} samples")
        self.samples.append((now_us, sample))

    def assess(self, *, server_id: str, load: LoadReport, now_us: int) -> None:
        """Record the load report as a server sample, at most once per tick."""
        last_us = self._server_us.get(server_id)
        if last_us is not None and now_us - last_us < self.tick_us:
            return
        self._server_us[server_id] = now_us
        values = load_values(load)
        breached = self.truth(server_id, now_us)
        self._record(now_us, ServerSample(server_id=server_id, values=values, breached=breached))

    def forget(self, server_id: str) -> None:
        """The manager declared `server_id` dead: record a sample with no values (the features
        keep their last ones) carrying the truth, so a crash's breach has an onset on the
        predictor's side too. A dead server sends no heartbeat, so without it the predictor
        never learned that the ticks before a crash preceded a breach, while the evaluation
        scores them as such (measured: its probabilities averaged 0.14 where 0.18 of the
        validation ticks were positive)."""
        if self.clock is None:
            return
        now_us = self.clock()
        breached = self.truth(server_id, now_us)
        self._record(now_us, ServerSample(server_id=server_id, values={}, breached=breached))

    def observe_paths(self, paths: Sequence[PathReport], *, now_us: int) -> None:
        """Record each path report as a path sample, at most once per tick per bucket."""
        for report in paths:
            key = (report.server_id, report.client_bucket)
            last_us = self._path_us.get(key)
            if last_us is not None and now_us - last_us < self.path_tick_us:
                continue
            self._path_us[key] = now_us
            sample = PathSample(
                server_id=report.server_id,
                client_group=f"bucket{report.client_bucket}",
                rtt_us=report.rtt_us,
                jitter_us=report.jitter_us,
                loss_ratio=report.loss_ratio,
            )
            self._record(now_us, sample)

    def placement_blocked(self, server_id: str, *, now_us: int) -> bool:
        """Never: the recording policy leaves placement to the manager's own checks."""
        return False

    def target_allowed(self, *, source_id: str, target_id: str, now_us: int) -> bool:
        """Any target."""
        return True

    def movable(self, session_key: str, *, now_us: int) -> bool:
        """Any session."""
        return True

    def moves_allowed(self, server_id: str, *, now_us: int) -> int:
        """No budget of its own."""
        return MOVES_UNLIMITED

    def record_move(self, session_key: str, *, source_server_id: str, now_us: int) -> None:
        """Nothing to account."""

    def assessments(self) -> list[me.RiskAssessed]:
        """It decides nothing, so it logs nothing."""
        return []


class _Truth:
    """The simulator's own measurement of every server's SLO, and the breach events."""

    def __init__(self, cluster: _EvalCluster, config: SimEvalConfig, slo: PathSloConfig) -> None:
        self._cluster = cluster
        self._config = config
        self._slo = slo
        self._trackers = {
            server: BreachTracker(breach_clear_us=config.breach_clear_us)
            for server in cluster.server_ids
        }
        self._last_breached_us: dict[str, int] = {}
        self._connected_us: dict[tuple[NodeId, NodeId], int] = {}
        self.events: list[LabelledEvent] = []
        """Breach events (kind filled in later), onset order."""
        self._open: dict[str, int] = {}

    def start(self) -> None:
        self._cluster.sim.call_at(self._config.truth_interval_us, self._probe, label="truth")

    def breached_within(self, server_id: str, now_us: int) -> bool:
        """Whether the server breached in the tick before `now_us` (or at it)."""
        last_us = self._last_breached_us.get(server_id)
        return last_us is not None and now_us - last_us <= self._config.tick_us

    def _probe(self) -> None:
        sim = self._cluster.sim
        now_us = sim.now_us
        for server in self._cluster.server_ids:
            breached = self._breached(server)
            tracker = self._trackers[server]
            was_in_breach = tracker.in_breach
            if breached:
                self._last_breached_us[server] = now_us
            if tracker.update(breached, now_us=now_us):
                self._open[server] = len(self.events)
                self.events.append(
                    LabelledEvent(entity=server, onset_us=now_us, end_us=now_us, kind="")
                )
            elif was_in_breach and not tracker.in_breach:
                self._close(server)
        next_us = now_us + self._config.truth_interval_us
        if next_us <= self._config.run_us:
            sim.call_at(next_us, self._probe, label="truth")

    def close_all(self) -> None:
        for server in list(self._open):
            self._close(server)

    def _close(self, server: str) -> None:
        index = self._open.pop(server)
        event = self.events[index]
        last_us = self._trackers[server].last_breached_us or event.onset_us
        self.events[index] = dataclasses.replace(event, end_us=max(last_us, event.onset_us))

    def _breached(self, server: NodeId) -> bool:
        cluster = self._cluster
        sim = cluster.sim
        users = self._users(server)
        state = sim.node_state(server)
        if state is not NodeState.UP:
            return True
        stats = sim.process_stats(server)
        process = cluster.plan.processes[server]
        latency_us = process.service_time_us * slowdown_for(stats.load, process.slowdown_max)
        if latency_us * (1 + stats.inbox_depth) > self._config.latency_slo_us_p99:
            return True
        if not users:
            return False
        breaching = sum(self._path_breached(server, client) for client in users)
        return breaching >= self._slo.server_breach_share_min * len(users)

    def _users(self, server: NodeId) -> list[NodeId]:
        """The clients whose path to `server` counts: those with a connection to it now or
        within `path_in_use_us` (a client that stopped using a server, its parts failed over
        elsewhere, measures no path to it, and no session of its suffers there)."""
        sim = self._cluster.sim
        now_us = sim.now_us
        users = []
        for client in self._cluster.client_ids:
            key = (server, client)
            if sim.connection_open(client, server):
                self._connected_us[key] = now_us
            last_us = self._connected_us.get(key)
            if last_us is not None and now_us - last_us <= self._config.path_in_use_us:
                users.append(client)
        return users

    def _path_breached(self, server: NodeId, client: NodeId) -> bool:
        # The network's own state of both directions: what the messages on the path live through.
        network = self._cluster.sim._network
        now_us = self._cluster.sim.now_us
        if network.blocked(server, client) or network.blocked(client, server):
            return True
        excess_us = 0.0
        for source, target in ((server, client), (client, server)):
            for ramp in network.link_state(source, target).delay_ramps:
                excess_us += ramp.value_at(now_us)
        return excess_us > self._slo.rtt_excess_us_max


class _EvalCluster(SimCluster):
    """A `SimCluster` whose manager records through a `RecordingRiskPolicy`."""

    def __init__(
        self, seed: int, config: ClusterConfig, *, plan: ClusterPlan, eval_config: SimEvalConfig
    ) -> None:
        self.recorder = RecordingRiskPolicy(
            tick_us=eval_config.tick_us, path_tick_us=eval_config.path_tick_us
        )
        """What the manager received."""
        super().__init__(seed, config, plan=plan)

    def _build_manager(self, start: NodeStart) -> ManagerCore:
        return ManagerCore(
            config=self.plan.manager,
            placement_config=self.plan.placement,
            sealer=TokenSealer(KeyRing({1: CLUSTER_KEY}, current_key_id=1), rng=start.rng),
            rng=start.rng,
            now_us=start.now_us,
            risk_policy=self.recorder,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunTrace:
    """What one run recorded, in the run's own simulated time."""

    index: int
    """The run's place in the campaign."""
    seed: int
    """The run's root seed (derived from the campaign's seed and the index)."""
    samples: tuple[tuple[int, Sample], ...]
    """(time_us, sample) as the manager received them."""
    events: tuple[LabelledEvent, ...]
    """The simulator's breach events, each with the kind of the episode under way."""
    episodes: tuple[EvalEpisode, ...]
    """The episodes injected."""
    digest: str
    """The simulator's trace digest."""
    simulated_us: int
    """Where the run stopped (its length, unless an invariant failed)."""
    failure: str | None
    """The checker and message of the first failure, if any (the run stopped there)."""
    wall_seconds: float
    """Wall-clock time of the run (reporting only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SimTelemetry:
    """A whole campaign on one timeline, stretched by `config.time_scale`: the evaluation input."""

    config: SimEvalConfig
    """The campaign's shape."""
    seed: int
    """The campaign's root seed."""
    ticks: list[tuple[int, list[Sample]]]
    """Samples grouped by tick, in time order (paths first within a tick, then servers)."""
    events: list[LabelledEvent]
    """Ground-truth breach events."""
    runs: list[RunTrace]
    """Every run's record, in campaign order (their samples are also in `ticks`)."""
    digest: str = field(default="")
    """Blake2b of every run's trace digest, every sample and every event."""

    def episode_counts(self) -> dict[str, int]:
        """Episodes injected per kind, over the campaign."""
        counts: dict[str, int] = {}
        for run in self.runs:
            for episode in run.episodes:
                counts[episode.kind.value] = counts.get(episode.kind.value, 0) + 1
        return dict(sorted(counts.items()))

    def event_counts(self) -> dict[str, int]:
        """Breach events per kind, over the campaign."""
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.kind] = counts.get(event.kind, 0) + 1
        return dict(sorted(counts.items()))


def _cluster(
    seed: int, config: SimEvalConfig, *, campaign_seed: int, base_loads: dict[NodeId, float]
) -> tuple[ClusterConfig, ClusterPlan]:
    """The run's cluster: drawn from its seed, with the campaign's service time, base loads,
    network and report intervals (every server heartbeats and every client pings at the tick's
    pace). The servers' loads and the links keep their character from run to run, as the same
    machines would: a path's RTT floor and a server's load baseline carry over."""
    cluster_config = ClusterConfig(
        servers=config.servers,
        clients=config.clients,
        sessions=config.sessions,
        think_time_us=config.think_time_us,
        duration_us=config.run_us,
        heal_us=config.heal_us,
        liveness_bound_us=None,
        converge=False,
        server_service_time_us=config.service_time_us,
    )
    plan = draw_plan(derive_rng(seed, "cluster"), cluster_config)
    network = draw_plan(derive_rng(campaign_seed, "sim-eval/network"), cluster_config).network
    interval_ms = config.heartbeat_interval_ms
    processes = dict(plan.processes)
    servers = dict(plan.servers)
    for server_id, server in plan.servers.items():
        processes[server_id] = dataclasses.replace(
            processes[server_id], base_load=base_loads[server_id]
        )
        servers[server_id] = dataclasses.replace(
            server,
            heartbeat_interval_ms=interval_ms,
            path_report_ttl_ms=config.path_report_ttl_ms,
        )
    clients = {
        client_id: dataclasses.replace(client, ping_interval_ms=interval_ms)
        for client_id, client in plan.clients.items()
    }
    manager = dataclasses.replace(
        plan.manager,
        heartbeat_interval_ms=interval_ms,
        failure_timeout_ms=max(plan.manager.failure_timeout_ms, 4 * interval_ms),
        suspect_timeout_ms=max(plan.manager.suspect_timeout_ms, 2 * interval_ms),
        # Nothing moves but failovers: the recorded telemetry is that of the faults alone.
        rebalance_interval_ms=0,
    )
    return cluster_config, dataclasses.replace(
        plan,
        manager=manager,
        servers=servers,
        clients=clients,
        processes=processes,
        network=network,
    )


def _kind_at(event: LabelledEvent, episodes: Sequence[EvalEpisode], clear_us: int) -> str:
    """The kind of the latest episode of the event's server under way at its onset."""
    kind = "spontaneous"
    for episode in episodes:
        if episode.server_id != event.entity or episode.start_us > event.onset_us:
            continue
        if event.onset_us <= episode.end_us + clear_us:
            kind = episode.kind.value
    return kind


def run_one(
    config: SimEvalConfig, campaign_seed: int, plan: RunPlan, base_loads: dict[NodeId, float]
) -> RunTrace:
    """Run one planned run of a campaign and return what it recorded."""
    seed = derive_seed(campaign_seed, f"sim-eval/run/{plan.index}")
    cluster_config, cluster_plan = _cluster(
        seed, config, campaign_seed=campaign_seed, base_loads=base_loads
    )
    cluster = _EvalCluster(seed, cluster_config, plan=cluster_plan, eval_config=config)
    truth = _Truth(cluster, config, PathSloConfig())
    cluster.recorder.truth = truth.breached_within
    cluster.recorder.clock = lambda: cluster.sim.now_us
    cluster.sim.apply_fault_plan(plan.faults)
    truth.start()
    cluster.start()
    result = cluster.sim.run()
    truth.close_all()
    failure = result.failure
    return RunTrace(
        index=plan.index,
        seed=seed,
        samples=tuple(cluster.recorder.samples),
        events=tuple(
            dataclasses.replace(event, kind=_kind_at(event, plan.episodes, config.breach_clear_us))
            for event in truth.events
        ),
        episodes=plan.episodes,
        digest=result.digest,
        simulated_us=result.simulated_us,
        failure=None if failure is None else f"{failure.checker}: {failure.message}",
        wall_seconds=result.wall_seconds,
    )


def _run_job(job: tuple[SimEvalConfig, int, RunPlan, dict[NodeId, float]]) -> RunTrace:
    """`run_one` with one argument, for a process pool."""
    return run_one(*job)


def plan_campaign(config: SimEvalConfig, seed: int) -> tuple[dict[NodeId, float], list[RunPlan]]:
    """The servers' base loads and the runs' plans: runs are added until every fault kind has
    `episodes_per_kind` episodes (or `runs_max` runs)."""
    servers = [f"s{index + 1}" for index in range(config.servers)]
    clients = [f"c{index + 1}" for index in range(config.clients)]
    load_rng = derive_rng(seed, "sim-eval/base-loads")
    base_loads = {server: load_rng.choice(config.base_loads) for server in servers}
    rtt_excess_us_max = PathSloConfig().rtt_excess_us_max
    counts = dict.fromkeys(EVALUATED_KINDS, 0)
    plans: list[RunPlan] = []
    while len(plans) < config.runs_max and min(counts.values()) < config.episodes_per_kind:
        index = len(plans)
        plan = draw_run_plan(
            derive_rng(seed, f"sim-eval/plan/{index}"),
            index=index,
            config=config,
            servers=servers,
            clients=clients,
            base_loads=base_loads,
            rtt_excess_us_max=rtt_excess_us_max,
        )
        plans.append(plan)
        for episode in plan.episodes:
            if episode.kind in counts:
                counts[episode.kind] += 1
    return base_loads, plans


def generate(
    config: SimEvalConfig,
    *,
    seed: int,
    jobs: int = 1,
    progress: Callable[[RunTrace], None] | None = None,
) -> SimTelemetry:
    """Plan the campaign, run it (`jobs` processes), and stitch the runs on one timeline."""
    base_loads, plans = plan_campaign(config, seed)
    work = [(config, seed, plan, base_loads) for plan in plans]
    traces: list[RunTrace] = []
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for trace in pool.map(_run_job, work):
                traces.append(trace)
                if progress is not None:
                    progress(trace)
    else:
        for item in work:
            traces.append(_run_job(item))
            if progress is not None:
                progress(traces[-1])
    return _stitch(config, seed, traces)


def _stitch(config: SimEvalConfig, seed: int, traces: list[RunTrace]) -> SimTelemetry:
    scale = config.time_scale
    tick_us = config.tick_us * scale
    by_tick: dict[int, list[Sample]] = {}
    events: list[LabelledEvent] = []
    digest = hashlib.blake2b(digest_size=16)
    for trace in traces:
        offset_us = trace.index * (config.run_us + config.run_gap_us)
        digest.update(trace.digest.encode())
        for time_us, sample in trace.samples:
            stretched_us = (offset_us + time_us) * scale
            # Each tick closes at a multiple of the tick: the samples received since the last.
            tick_end_us = -(-stretched_us // tick_us) * tick_us
            by_tick.setdefault(tick_end_us, []).append(sample)
        for event in trace.events:
            events.append(
                dataclasses.replace(
                    event,
                    onset_us=(offset_us + event.onset_us) * scale,
                    end_us=(offset_us + event.end_us) * scale,
                )
            )
    ticks: list[tuple[int, list[Sample]]] = []
    for time_us in sorted(by_tick):
        # Paths first, so a server's sample sees its paths of the same tick.
        samples = sorted(by_tick[time_us], key=lambda sample: isinstance(sample, ServerSample))
        ticks.append((time_us, samples))
        digest.update(f"{time_us} {samples!r}".encode())
    for event in events:
        digest.update(repr(event).encode())
    return SimTelemetry(
        config=config, seed=seed, ticks=ticks, events=events, runs=traces, digest=digest.hexdigest()
    )


def sim_predictor_config(
    config: SimEvalConfig, *, path_intermittency: bool = True
) -> PredictorConfig:
    """The manager's predictor (`predictor_config` of a `ManagerConfig`) with the campaign's
    latency SLO, in the stretched time: H = 10 min, L = 10 s, a breach clears after 60 s
    (`path_intermittency` False: without the intermittency features of `FeatureConfig`)."""
    slo = float(config.latency_slo_us_p99)
    metrics = tuple(
        dataclasses.replace(metric, scale=slo, capacity=slo, slo_max=slo, noise_floor=slo / 125)
        if metric.name == "latency_us_p99"
        else metric
        for metric in DEFAULT_SERVER_METRICS
    )
    return PredictorConfig(
        metrics=metrics,
        features=FeatureConfig(path_intermittency=path_intermittency),
        labels=LabelConfig(breach_clear_us=config.breach_clear_us * config.time_scale),
    )


def sim_report(
    telemetry: SimTelemetry,
    *,
    seed: int,
    progress: Callable[[int], None] | None = None,
    path_intermittency: bool = True,
) -> EvaluationReport:
    """Replay the campaign through the predictor's heads, then score them on its events."""
    predictor_config = sim_predictor_config(telemetry.config, path_intermittency=path_intermittency)
    predictor = OnlinePredictor(config=predictor_config, rng=random.Random(seed + 1))
    series = replay(predictor, telemetry.ticks, progress=progress)
    groups = {
        "gradual": tuple(kind.value for kind in GRADUAL_FAULTS),
        "sudden": tuple(kind.value for kind in SUDDEN_FAULTS),
        **{kind.value: (kind.value,) for kind in EVALUATED_KINDS},
    }
    # Alarms as the trigger policy raises them: its threshold held on k of the last n ticks.
    policy = PolicyConfig()
    labels = predictor_config.labels
    evaluation = EvaluationConfig(
        horizon_us=labels.horizon_us,
        lead_us=labels.lead_us,
        groups=groups,
        after_breach_us=labels.breach_clear_us,
        alarm_ticks_k=policy.trigger_ticks_k,
        alarm_window_n=policy.trigger_window_n,
    )
    return evaluate(series, telemetry.events, evaluation)
