"""Workloads: sessions with several parts, a request mix and think times, driven closed-loop.

The workload decides *what* clients do and *when*, from the seed; an adapter decides *how*, by
calling the client core's own verbs. Each session issues one request at a time: the next one
follows the response (seen as a `ClientResponseObserved`) after a think time, or follows anyway
once `abandon_after_us` passes without one, which is counted. An operation of
`background_operations` (a waiting read, say) does not hold the session up: its next request
follows after a think time, while the background one waits for its answer; a session has at most
one background request outstanding.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from forehand.core import CoreDriver, NodeId
from forehand.errors import ConfigError
from forehand.sim.observations import ClientResponseObserved, Observed

if TYPE_CHECKING:
    from forehand.sim._simulator import Simulator

__all__ = [
    "Workload",
    "WorkloadAdapter",
    "WorkloadConfig",
    "WorkloadRequest",
    "WorkloadSession",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadConfig:
    """What the simulated users do."""

    sessions: int = 10
    """Sessions to open, spread round-robin over the clients."""
    parts: tuple[str, ...] = ("auth", "cart")
    """The parts every session has; each request picks one uniformly."""
    request_mix: tuple[tuple[str, float], ...] = (("read", 0.8), ("write", 0.2))
    """Operation names and their relative weights."""
    think_time_us: int = 100_000
    """Mean of the exponential pause between a response and the session's next request."""
    start_us: int = 0
    """When the first session may open."""
    open_spread_us: int = 1_000_000
    """Sessions open at uniform times in [start_us, start_us + open_spread_us)."""
    requests_per_session_max: int | None = None
    """Bound on requests per session; None keeps sessions busy until the run ends."""
    abandon_after_us: int = 10_000_000
    """Bound on waiting for one response before the session moves on to its next request."""
    background_operations: tuple[str, ...] = ()
    """Operations of the mix the session does not wait for (at most one outstanding per
    session: one drawn meanwhile is drawn again until the draw gives another operation)."""

    def __post_init__(self) -> None:
        if self.sessions < 1 or not self.parts or not self.request_mix:
            raise ConfigError("a workload needs sessions, parts and a request mix")
        if any(weight <= 0 for _, weight in self.request_mix):
            raise ConfigError("request mix weights must be positive")
        if min(self.think_time_us, self.start_us, self.open_spread_us) < 0:
            raise ConfigError("workload times are non-negative")
        if self.abandon_after_us <= 0:
            raise ConfigError("abandon_after_us must be positive")
        operations = {operation for operation, _ in self.request_mix}
        if not set(self.background_operations) <= operations:
            raise ConfigError("background operations must be in the request mix")
        if operations <= set(self.background_operations):
            raise ConfigError("the request mix needs an operation sessions wait for")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadSession:
    """One simulated user session."""

    index: int
    """The session's number in the workload (0, 1, 2, ...)."""
    client: NodeId
    """The client node that holds it."""
    parts: tuple[str, ...]
    """Its parts."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkloadRequest:
    """One request the workload wants a session to make."""

    session: WorkloadSession
    """The session making it."""
    part: str
    """The part it addresses."""
    operation: str
    """The operation, drawn from the request mix."""
    sequence: int
    """1 for the session's first request, then 2, 3, ..."""


class WorkloadAdapter(Protocol):
    """Turns workload decisions into calls on a client core's verbs."""

    def open_session(self, core: CoreDriver, session: WorkloadSession, now_us: int) -> None:
        """Open `session` on the client core."""
        ...

    def issue(self, core: CoreDriver, request: WorkloadRequest, now_us: int) -> int | None:
        """Issue `request`; return the request id its response will carry, or None if not ready.

        None (the session is still opening, say) makes the workload try again after a think time.
        """
        ...


class _SessionState:
    __slots__ = ("background_key", "closed", "issued", "session", "token", "waiting_key")

    def __init__(self, session: WorkloadSession) -> None:
        self.session = session
        self.issued = 0
        self.token = 0
        self.waiting_key: tuple[NodeId, str, int] | None = None
        self.background_key: tuple[NodeId, str, int] | None = None
        self.closed = False


class Workload:
    """Drives sessions on client nodes: open, then request, think, request, ..."""

    def __init__(
        self,
        sim: Simulator,
        config: WorkloadConfig,
        *,
        clients: Sequence[NodeId],
        adapter: WorkloadAdapter,
        name: str = "workload",
    ) -> None:
        if not clients:
            raise ConfigError("a workload needs at least one client")
        self._sim = sim
        self._config = config
        self._adapter = adapter
        self._rng = sim.rng(name)
        self._operations = [operation for operation, _ in config.request_mix]
        self._cumulative = list(itertools.accumulate(weight for _, weight in config.request_mix))
        self._states = [
            _SessionState(
                WorkloadSession(
                    index=index, client=clients[index % len(clients)], parts=config.parts
                )
            )
            for index in range(config.sessions)
        ]
        self._waiting: dict[tuple[NodeId, str, int], tuple[_SessionState, int]] = {}
        self._background_operations = frozenset(config.background_operations)
        self._background: dict[tuple[NodeId, str, int], _SessionState] = {}
        self.issued = 0
        """Requests issued so far."""
        self.answered = 0
        """Responses received so far."""
        self.abandoned = 0
        """Requests given up on after `abandon_after_us`."""
        self.failed = 0
        """Requests the client reported failed (`request_failed`)."""
        self.operations: dict[str, int] = {}
        """Requests issued per operation."""
        self.background_answered = 0
        """Background requests answered (counted in `answered` too)."""
        sim.add_observer(self._observe)

    @property
    def sessions(self) -> list[WorkloadSession]:
        """Every session of the workload."""
        return [state.session for state in self._states]

    def start(self) -> None:
        """Schedule every session's opening and its first request."""
        config = self._config
        for state in self._states:
            open_us = config.start_us + self._rng.randrange(config.open_spread_us or 1)
            session = state.session
            self._sim.command(
                session.client,
                functools.partial(self._open, session),
                at_us=open_us,
                label=f"open session {session.index}",
            )
            self._schedule_request(state, open_us + self._think_us())

    def _open(self, session: WorkloadSession, core: CoreDriver, now_us: int) -> None:
        self._adapter.open_session(core, session, now_us)

    def _think_us(self) -> int:
        mean_us = self._config.think_time_us
        return int(self._rng.expovariate(1.0 / mean_us)) if mean_us else 0

    def _schedule_request(self, state: _SessionState, at_us: int) -> None:
        limit = self._config.requests_per_session_max
        if state.closed or (limit is not None and state.issued >= limit):
            return
        state.issued += 1
        state.token += 1
        token = state.token
        session = state.session
        part = self._rng.choice(session.parts)
        operation = self._draw_operation(state)
        request = WorkloadRequest(
            session=session, part=part, operation=operation, sequence=state.issued
        )

        def issue(core: CoreDriver, now_us: int) -> None:
            self._issue(state, token, request, core, now_us)

        self._sim.command(session.client, issue, at_us=at_us, label=f"request {request!r}")
        self._sim.call_at(
            at_us + self._config.abandon_after_us,
            lambda: self._abandon(state, token),
            label=f"abandon check {session.index}/{state.issued}",
        )

    def _draw_operation(self, state: _SessionState) -> str:
        while True:
            operation = self._rng.choices(self._operations, cum_weights=self._cumulative)[0]
            if state.background_key is None or operation not in self._background_operations:
                return operation

    def _issue(
        self,
        state: _SessionState,
        token: int,
        request: WorkloadRequest,
        core: CoreDriver,
        now_us: int,
    ) -> None:
        if state.token != token:
            return
        request_id = self._adapter.issue(core, request, now_us)
        if request_id is None:
            # Not ready: try the same step again later, as a user would.
            state.issued -= 1
            self._schedule_request(state, now_us + self._think_us())
            return
        self.issued += 1
        self.operations[request.operation] = self.operations.get(request.operation, 0) + 1
        key = (request.session.client, request.part, request_id)
        if request.operation in self._background_operations:
            # The session goes on at once; the answer is only counted when it comes.
            state.background_key = key
            self._background[key] = state
            self._schedule_request(state, now_us + self._think_us())
            return
        state.waiting_key = key
        self._waiting[key] = (state, token)

    def _abandon(self, state: _SessionState, token: int) -> None:
        if state.token != token:
            return
        if state.waiting_key is not None:
            self._waiting.pop(state.waiting_key, None)
            state.waiting_key = None
        self.abandoned += 1
        self._sim.count("workload-request-abandoned")
        self._schedule_request(state, self._sim.now_us)

    def session_closed(self, index: int) -> None:
        """A peer closed workload session `index` (the manager expired it, say): its user
        stops; what it waits for is forgotten."""
        state = self._states[index]
        state.closed = True
        state.token += 1
        if state.waiting_key is not None:
            self._waiting.pop(state.waiting_key, None)
            state.waiting_key = None
        if state.background_key is not None:
            self._background.pop(state.background_key, None)
            state.background_key = None

    def _background_ended(self, key: tuple[NodeId, str, int]) -> bool:
        """Forget background request `key` if it is one; whether it was."""
        state = self._background.pop(key, None)
        if state is None:
            return False
        state.background_key = None
        return True

    def request_failed(self, client: NodeId, part: str, request_id: int) -> None:
        """The client gave up on a request: the session moves on after a think time."""
        if self._background_ended((client, part, request_id)):
            self.failed += 1
            return
        waiting = self._waiting.pop((client, part, request_id), None)
        if waiting is None:
            return
        state, token = waiting
        if state.token != token:
            return
        state.waiting_key = None
        self.failed += 1
        self._schedule_request(state, self._sim.now_us + self._think_us())

    def _observe(self, event: Observed) -> None:
        observation = event.observation
        if not isinstance(observation, ClientResponseObserved):
            return
        key = (observation.client, observation.part_key[1], observation.request_id)
        if self._background and self._background_ended(key):
            self.answered += 1
            self.background_answered += 1
            return
        waiting = self._waiting.pop(key, None)
        if waiting is None:
            return
        state, token = waiting
        if state.token != token:
            return
        state.waiting_key = None
        self.answered += 1
        self._schedule_request(state, event.time_us + self._think_us())
