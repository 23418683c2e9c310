"""The study: train the predictor, run every policy on the same fleet, and an optional sweep.

Policies run in worker processes (`jobs`), each its own deterministic run, so the digest does
not depend on how many run at once. Progress reaches the caller through `on_progress`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import queue
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field

from forehand.errors import ConfigError
from forehand.sim.study._config import Policy, StudyConfig
from forehand.sim.study._risk import train_predictor
from forehand.sim.study._run import PolicyResult, run_policy, study_manager_config

__all__ = ["SweepPoint", "StudyResult", "parse_sweep", "run_study", "run_sweep"]

SWEEP_DURATION_S = 600
"""Simulated time of each sweep point (its costs are scaled to an hour)."""
SWEEP_POINTS_MAX = 16
"""Most points one sweep runs."""
START_ORDER = (Policy.PREDICTIVE, Policy.REACTIVE, Policy.STATIC)
"""Parallel runs start the costliest policy first: with two workers and three policies the
predictive hour runs beside static and reactive one after the other, rather than alone at the
end."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    """The manager's cost at one fleet size (reactive policy, `SWEEP_DURATION_S`)."""

    servers: int
    """Servers."""
    sessions: int
    """Sessions."""
    manager_cpu_s_per_hour: float
    """Manager CPU time per simulated hour."""
    map_load_s: float
    """Wall time to load (decode and rebuild) the map."""
    manager_rss_bytes: int
    """Resident memory the manager gained loading the map."""
    map_bytes: int
    """The encoded map."""
    wall_s: float
    """Wall time of the point."""


@dataclass(slots=True, kw_only=True)
class StudyResult:
    """Every policy's result, the training cost, the sweep, the digest."""

    config: StudyConfig
    """What ran."""
    results: dict[Policy, PolicyResult] = field(default_factory=dict)
    """Per policy, in the configured order."""
    training_s: float = 0.0
    """Wall time training the predictor."""
    wall_s: float = 0.0
    """Wall time of the whole study (sweep excluded)."""
    sweep: list[SweepPoint] = field(default_factory=list)
    """The scaling sweep, when asked for."""
    digest: str = ""
    """SHA-256 over the policies' digests: the same seed and config give the same digest."""


Progress = Callable[[Policy, int], None]

_progress_queue: queue.Queue[tuple[str, int]] | None = None


def _init_worker(channel: queue.Queue[tuple[str, int]]) -> None:
    global _progress_queue  # noqa: PLW0603 - one queue per worker process, set once at start
    _progress_queue = channel


_FINISHED = -1
"""The ticks a worker reports last, after all its progress: the parent waits for it, since a
queue's items can reach the parent after the worker's result does."""


def _worker(config: StudyConfig, policy: Policy, snapshot: bytes | None) -> PolicyResult:
    channel = _progress_queue

    def report(ticks: int) -> None:
        if channel is not None:
            channel.put((policy.value, ticks))

    try:
        return run_policy(config, policy, predictor_snapshot=snapshot, progress=report)
    finally:
        report(_FINISHED)


def run_study(
    config: StudyConfig, *, jobs: int = 1, on_progress: Progress | None = None
) -> StudyResult:
    """Train, then run every policy; `jobs` worker processes (1: all in this process)."""
    if not 1 <= jobs <= len(Policy):
        raise ConfigError(f"jobs must be in [1, {len(Policy)}], got {jobs}")
    started = time.perf_counter()
    study = StudyResult(config=config)
    snapshot = None
    if Policy.PREDICTIVE in config.policies:
        study.training_s = -time.perf_counter()
        snapshot = train_predictor(config, study_manager_config(config))
        study.training_s += time.perf_counter()
    if jobs == 1:
        for policy in config.policies:
            report = None if on_progress is None else _bind(on_progress, policy)
            study.results[policy] = run_policy(
                config, policy, predictor_snapshot=snapshot, progress=report
            )
    else:
        study.results = _run_parallel(config, snapshot, jobs, on_progress)
    study.wall_s = time.perf_counter() - started
    digest = hashlib.sha256()
    for policy in config.policies:
        digest.update(f"{policy.value}:{study.results[policy].digest};".encode())
    study.digest = digest.hexdigest()
    return study


def _bind(on_progress: Progress, policy: Policy) -> Callable[[int], None]:
    return lambda ticks: on_progress(policy, ticks)


def _run_parallel(
    config: StudyConfig, snapshot: bytes | None, jobs: int, on_progress: Progress | None
) -> dict[Policy, PolicyResult]:
    context = multiprocessing.get_context("spawn")
    channel: queue.Queue[tuple[str, int]] = context.Queue()  # type: ignore[assignment]
    futures: dict[Policy, Future[PolicyResult]] = {}
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(channel,)
    ) as pool:
        for policy in sorted(config.policies, key=START_ORDER.index):
            futures[policy] = pool.submit(_worker, config, policy, snapshot)
        finished: set[Policy] = set()

        def awaited() -> bool:
            # A worker that died without a word (its future failed) sends no last report.
            return any(
                not future.done() or (policy not in finished and future.exception() is None)
                for policy, future in futures.items()
            )

        while awaited():
            _drain(channel, on_progress, finished, timeout_s=0.5)
        return {policy: futures[policy].result() for policy in config.policies}


def _drain(
    channel: queue.Queue[tuple[str, int]],
    on_progress: Progress | None,
    finished: set[Policy],
    *,
    timeout_s: float,
) -> None:
    """Pass on what the workers reported, waiting up to `timeout_s` for the first item."""
    try:
        item = channel.get(timeout=timeout_s)
    except queue.Empty:
        return
    while True:
        name, ticks = item
        if ticks == _FINISHED:
            finished.add(Policy(name))
        elif on_progress is not None:
            on_progress(Policy(name), ticks)
        try:
            item = channel.get_nowait()
        except queue.Empty:
            return


def parse_sweep(text: str) -> list[tuple[int, int]]:
    """`SERVERSxSESSIONS,...` as pairs; ConfigError on anything else."""
    points: list[tuple[int, int]] = []
    for item in text.split(","):
        servers, _, sessions = item.strip().partition("x")
        try:
            points.append((int(servers), int(sessions)))
        except ValueError:
            raise ConfigError(
                f"bad sweep point {item.strip()!r}: write SERVERSxSESSIONS, e.g. 1000x100000"
            ) from None
    if not 1 <= len(points) <= SWEEP_POINTS_MAX:
        raise ConfigError(f"a sweep has 1 to {SWEEP_POINTS_MAX} points")
    return points


def run_sweep(
    config: StudyConfig,
    points: list[tuple[int, int]],
    *,
    on_point: Callable[[int, int], None] | None = None,
) -> list[SweepPoint]:
    """The reactive policy at each size for `SWEEP_DURATION_S`; the manager's costs."""
    sweep: list[SweepPoint] = []
    for servers, sessions in points:
        sized = dataclasses.replace(
            config,
            servers=servers,
            sessions=sessions,
            duration_s=SWEEP_DURATION_S,
            policies=(Policy.REACTIVE,),
        )
        if on_point is not None:
            on_point(servers, sessions)
        result = run_policy(sized, Policy.REACTIVE)
        sweep.append(
            SweepPoint(
                servers=servers,
                sessions=sessions,
                manager_cpu_s_per_hour=result.manager_cpu_s * 3600 / SWEEP_DURATION_S,
                map_load_s=result.map_load_s,
                manager_rss_bytes=result.manager_rss_bytes,
                map_bytes=result.map_bytes,
                wall_s=result.wall_s,
            )
        )
    return sweep
