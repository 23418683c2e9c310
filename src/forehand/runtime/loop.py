"""The event loop the runtime runs on: uvloop when it is installed, asyncio's own otherwise.

`run(coroutine)` is the one way the runtime starts a loop. It refuses to start when Python runs
with `-O`, because the runtime relies on asserts to guard both sides of every boundary (STYLE.md
rule 7) and `-O` strips them.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "AssertionsDisabledError",
    "loop_factory",
    "require_assertions",
    "run",
    "stop_event",
    "uvloop_available",
]

_T = TypeVar("_T")


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
