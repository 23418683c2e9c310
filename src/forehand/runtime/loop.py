"""The event loop the runtime runs on: uvloop when it is installed, asyncio's own otherwise.

`run(coroutine)` is the one way the runtime starts a loop. It refuses to start when Python runs
with `-O`, because the runtime relies on asserts to guard both sides of every boundary (STYLE.md
rule 7) and `-O` strips them.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "GC_OLDER_THRESHOLDS",
    "GC_YOUNG_THRESHOLD",
    "AssertionsDisabledError",
    "loop_factory",
    "require_assertions",
    "run",
    "settle_gc",
    "stop_event",
    "uvloop_available",
]

_T = TypeVar("_T")

GC_YOUNG_THRESHOLD = 50_000
"""Container objects allocated (net) between two collections of the youngest generation;
CPython's default is 700. A server allocates a few tracked objects per request and keeps some of
them for a while (log and dedup entries, held answers), so at the default the collector ran every
few hundred requests and took about a tenth of a busy server's CPU time (docs/PERFORMANCE.md)."""
GC_OLDER_THRESHOLDS = (20, 100)
"""Young collections per middle one, middle collections per full one (defaults: 10, 10)."""


class _GCState:
    """How many nodes of this process settled the collector, and the thresholds before."""

    settled = 0
    previous: tuple[int, int, int] = (700, 10, 10)


class AssertionsDisabledError(RuntimeError):
    """Python runs with -O, which strips the asserts the runtime relies on."""


def require_assertions() -> None:
    """Raise AssertionsDisabledError when Python was started with -O."""
    if sys.flags.optimize:
        raise AssertionsDisabledError(
            "the Forehand runtime refuses to run under python -O: it relies on asserts "
            "to guard its boundaries; run without -O"
        )


def uvloop_available() -> bool:
    """Whether uvloop can be imported on this platform."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """`uvloop.new_event_loop` when uvloop is available, else `asyncio.new_event_loop`."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(coroutine: Coroutine[Any, Any, _T], *, use_uvloop: bool = True) -> _T:
    """Run `coroutine` to completion on a new loop (uvloop if available and wanted).

    Refuses to start under `python -O`. Tasks left running at the end are cancelled and
    awaited, as `asyncio.run` does.
    """
    try:
        require_assertions()
    except AssertionsDisabledError:
        coroutine.close()
        raise
    factory = loop_factory() if use_uvloop else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def settle_gc() -> Callable[[], None]:
    """Tune the cyclic garbage collector for a long-running node; returns the call that undoes it.

    What start-up allocated (modules, the application, configuration) is collected once and then
    frozen out of every later collection (`gc.freeze`), and collections run less often
    (`GC_YOUNG_THRESHOLD`, `GC_OLDER_THRESHOLDS`). Reference counting still frees acyclic
    garbage at once; only cycles wait longer. Nodes run in one process (tests) share the setting:
    the last one to stop restores the previous thresholds.
    """
    if _GCState.settled == 0:
        _GCState.previous = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *GC_OLDER_THRESHOLDS)
    _GCState.settled += 1
    undone = False

    def undo() -> None:
        nonlocal undone
        if undone:
            return
        undone = True
        _GCState.settled -= 1
        if _GCState.settled == 0:
            gc.unfreeze()
            gc.set_threshold(*_GCState.previous)

    return undo


def stop_event(given: asyncio.Event | None) -> tuple[asyncio.Event, Callable[[], None]]:
    """`given`, or an event that SIGTERM and SIGINT set; and the call that removes the handlers.

    Processes stop on a signal; tests and embedders pass their own event and keep their signals.
    """
    if given is not None:
        return given, _nothing
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for number in signals:
        loop.add_signal_handler(number, stop.set)

    def remove() -> None:
        for number in signals:
            loop.remove_signal_handler(number)

    return stop, remove


def _nothing() -> None:
    return None
