"""Helpers for core tests: a `Router` that wires sans-IO cores together with a hand-stepped clock.

The router is a miniature, fully deterministic driver: it drains every core's outputs in node-id
order, delivers messages in one global FIFO queue (so each link is FIFO too), fires timers in time
order when the test advances the clock, executes store requests through per-node executors, and
keeps what was sent to nodes that are not cores (a fake client, say) in inboxes the test reads.
Nothing happens unless the test calls `run`, `advance` or `advance_to`.

Tests get a router from the `router` fixture (or build one); to annotate with the class, import it
under `TYPE_CHECKING` from `tests.core.conftest`, the name mypy knows this module by.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

import pytest

from forehand.core._driver import ConnectionLost, CoreDriver, NodeId

__all__ = ["Router"]

T = TypeVar("T")

MESSAGES_PER_RUN_MAX = 200_000
"""A run that delivers more messages than this is a livelock in the cores under test."""
TIMER_FIRINGS_PER_ADVANCE_MAX = 100_000
"""An advance that fires more timers than this has a core re-arming a timer in the past."""

Filter = Callable[[NodeId, NodeId, object], bool]
"""`(source, destination, message) -> True` drops the message on the floor."""


class Router:
    """Delivers messages between cores, in order, and steps their clock by hand."""

    def __init__(self, *cores: CoreDriver, now_us: int = 0) -> None:
        self.now_us = now_us
        """The current simulated time."""
        self.cores: dict[NodeId, CoreDriver] = {}
        """The cores wired together, by node id."""
        self.inboxes: dict[NodeId, list[tuple[NodeId, object]]] = {}
        """(source, message) sent to nodes that are not cores, oldest first."""
        self.events: dict[NodeId, list[object]] = {}
        """Every event each core emitted, oldest first."""
        self.trace: list[tuple[int, NodeId, NodeId, object]] = []
        """(time, source, destination, message) of every delivered or inboxed message."""
        self.filters: list[Filter] = []
        """Drop rules, consulted for every message."""
        self.dropped: list[tuple[NodeId, NodeId, object]] = []
        """Messages a filter dropped."""
        self.store_executors: dict[NodeId, Callable[[object], object]] = {}
        """Executes a core's store requests; its results go back through `store_result`."""
        self._queue: deque[tuple[NodeId, NodeId, object]] = deque()
        for core in cores:
            self.add(core)

    def add(self, core: CoreDriver) -> None:
        """Wire one more core in (a restart replaces the core of the same node id)."""
        self.cores[core.node_id] = core
        self.events.setdefault(core.node_id, [])

    def remove(self, node: NodeId) -> None:
        """Take a core out (a crash); messages to it go to its inbox from now on."""
        del self.cores[node]

    def send(self, source: NodeId, destination: NodeId, message: object) -> None:
        """Queue a message from a node the test plays (a fake client or peer), then run."""
        self._queue.append((source, destination, message))
        self.run()

    def run(self) -> int:
        """Deliver until no core has anything left to send; returns the messages delivered."""
        delivered = 0
        while True:
            produced = self._collect()
            if not self._queue:
                if produced:
                    continue
                return delivered
            source, destination, message = self._queue.popleft()
            self._deliver(source, destination, message)
            delivered += 1
            assert delivered <= MESSAGES_PER_RUN_MAX, "the cores under test livelock"

    def advance(self, *, ms: int = 0, us: int = 0) -> None:
        """Let `ms` milliseconds plus `us` microseconds pass, firing timers as they fall due."""
        self.advance_to(self.now_us + ms * 1000 + us)

    def advance_to(self, now_us: int) -> None:
        """Let time pass up to `now_us`, firing every timer due on the way, in time order."""
        assert now_us >= self.now_us, (now_us, self.now_us)
        self.run()
        for _ in range(TIMER_FIRINGS_PER_ADVANCE_MAX):
            due = self._next_due(now_us)
            if due is None:
                break
            node, time_us = due
            self.now_us = max(self.now_us, time_us)
            self.cores[node].handle_timer(now_us=self.now_us)
            self.run()
        else:
            raise AssertionError("a core keeps re-arming a timer that is already due")
        self.now_us = now_us

    def disconnect(self, first: NodeId, second: NodeId, *, reason: str = "reset") -> None:
        """Tell both ends (those that are cores) that their connection broke, then run."""
        for node, peer in ((first, second), (second, first)):
            core = self.cores.get(node)
            if core is not None:
                core.receive_message(
                    ConnectionLost(peer=peer, reason=reason), source=peer, now_us=self.now_us
                )
        self.run()

    def partition(self, first: NodeId, second: NodeId) -> Filter:
        """Drop every message between two nodes until `heal` removes the returned filter."""

        def cut(source: NodeId, destination: NodeId, message: object) -> bool:
            return {source, destination} == {first, second}

        self.filters.append(cut)
        return cut

    def heal(self, rule: Filter) -> None:
        """Remove a drop rule."""
        self.filters.remove(rule)

    def take(self, node: NodeId, kind: type[T]) -> list[T]:
        """Pop the messages of type `kind` a non-core node received (`object` takes them all)."""
        inbox = self.inboxes.get(node, [])
        taken = [message for _, message in inbox if isinstance(message, kind)]
        self.inboxes[node] = [item for item in inbox if not isinstance(item[1], kind)]
        return taken

    def sent(self, kind: type[T], *, source: NodeId | None = None) -> list[T]:
        """Every message of type `kind` delivered so far (from `source`, if given)."""
        return [
            message
            for _, origin, _, message in self.trace
            if isinstance(message, kind) and (source is None or origin == source)
        ]

    def events_of(self, node: NodeId, kind: type[T]) -> list[T]:
        """The events of type `kind` one core emitted so far."""
        return [event for event in self.events.get(node, []) if isinstance(event, kind)]

    def all_events(self, kind: type[T]) -> list[tuple[NodeId, T]]:
        """(node, event) of every event of type `kind` from every core, per node in id order."""
        return [
            (node, event)
            for node in sorted(self.events)
            for event in self.events[node]
            if isinstance(event, kind)
        ]

    def _next_due(self, limit_us: int) -> tuple[NodeId, int] | None:
        best: tuple[int, NodeId] | None = None
        for node in sorted(self.cores):
            timer = self.cores[node].timer_us()
            if timer is not None and timer <= limit_us and (best is None or timer < best[0]):
                best = (timer, node)
        return None if best is None else (best[1], best[0])

    def _collect(self) -> int:
        """Drain every core's outputs; returns how many messages and store requests it found."""
        produced = 0
        for node in sorted(self.cores):
            core = self.cores[node]
            for outbound in core.messages_to_send():
                self._queue.append((node, outbound.destination, outbound.message))
                produced += 1
            produced += self._execute_stores(node, core)
            event = core.next_event()
            while event is not None:
                self.events[node].append(event)
                event = core.next_event()
        return produced

    def _execute_stores(self, node: NodeId, core: CoreDriver) -> int:
        requests = core.store_requests()
        if not requests:
            return 0
        executor = self.store_executors.get(node)
        assert executor is not None, f"{node} emitted store requests but has no executor"
        for request in requests:
            core.store_result(executor(request), now_us=self.now_us)
        return len(requests)

    def _deliver(self, source: NodeId, destination: NodeId, message: object) -> None:
        if any(rule(source, destination, message) for rule in self.filters):
            self.dropped.append((source, destination, message))
            return
        self.trace.append((self.now_us, source, destination, message))
        core = self.cores.get(destination)
        if core is None:
            self.inboxes.setdefault(destination, []).append((source, message))
            return
        core.receive_message(message, source=source, now_us=self.now_us)


def drain_events(core: CoreDriver) -> list[object]:
    """Pop every pending event of a core that is not wired into a router."""
    events: list[object] = []
    event = core.next_event()
    while event is not None:
        events.append(event)
        event = core.next_event()
    return events


def of_kind(items: Iterable[object], kind: type[T]) -> list[T]:
    """The items of type `kind`, in order."""
    return [item for item in items if isinstance(item, kind)]


@pytest.fixture
def router() -> Router:
    """An empty router at time 0; tests add their cores."""
    return Router()
