"""`PeerLogLimiter`: a flood of bad input logs a bounded number of lines per kind, the next
line of the kind saying how many were left out; lines no peer caused always pass."""

from __future__ import annotations

import logging

from forehand._peer_log import PEER_CAUSED
from forehand.core._manager_events import SessionOpenRefused
from forehand.ops.logs import PeerLogLimiter
from forehand.runtime.process import EventLogger


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *, peer: bool, name: str = "forehand.runtime.transport") -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, ("x",), None)
    if peer:
        record.__dict__.update(PEER_CAUSED)
    return record


def test_a_kind_of_peer_caused_line_is_bounded_per_window() -> None:
    clock = _Clock()
    limiter = PeerLogLimiter(window_s=10.0, lines_max=3, clock=clock)
    template = "closing the connection of %s: FRAME_ENCODING_ERROR"
    passed = [limiter.filter(_record(template, peer=True)) for _ in range(100)]
    assert passed.count(True) == 3 and passed[:3] == [True] * 3
    # Another kind has its own count, and lines no peer caused are never held back.
    assert limiter.filter(_record("closing the TLS handshake of %s", peer=True))
    assert all(limiter.filter(_record(template, peer=False)) for _ in range(100))
    # The next window lets lines through again; its first says how many were left out.
    clock.now = 10.0
    first = _record(template, peer=True)
    assert limiter.filter(first)
    assert first.getMessage().endswith("(97 more like it left out in the 10 s before)")
    second = _record(template, peer=True)
    assert limiter.filter(second) and "left out" not in second.getMessage()


def test_refused_opens_logged_by_the_event_logger_are_bounded() -> None:
    """The event logger marks the events a peer's input causes (refused opens, RESUMEs,
    violations); with the process log's limiter, 1,000 refusals log a handful of lines."""
    logger = EventLogger("manager")
    handler = _Collect()
    handler.addFilter(PeerLogLimiter(window_s=60.0, lines_max=5))
    events_log = logging.getLogger("forehand.events.manager")
    events_log.addHandler(handler)
    level = events_log.level
    events_log.setLevel(logging.INFO)
    try:
        for _ in range(1_000):
            logger(SessionOpenRefused(client="c", parts=("a",), reason="r", cause="queue_full"))
    finally:
        events_log.removeHandler(handler)
        events_log.setLevel(level)
    assert len(handler.records) == 5
    assert all("SessionOpenRefused" in r.getMessage() for r in handler.records)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
