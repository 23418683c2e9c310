"""Structured process logs: structlog over the standard `logging` module.

Every record, whether it comes from structlog or from a library's `logging` call, goes through
one processor chain (level, logger name, UTC timestamp, the record's `fields` extra) and is
rendered either as one JSON object per line (`log_format = "json"`, for log shippers; a
traceback goes in its `exception` key) or as one readable line (`console`, the default; a
traceback follows it as plain text). Tracebacks never show the frames' local variables.

Lines a peer causes (a connection closed for breaking the protocol, a handshake that timed out,
a refused open or RESUME) carry `forehand._peer_log.PEER_CAUSED` in their extra, and
`PeerLogLimiter` lets at most `PEER_LOG_LINES_MAX` of each kind through per `PEER_LOG_WINDOW_S`:
a flood of bad input would otherwise fill the disk with one line per frame (177 MB in 40 s of
refused opens). The next line of a kind says how many were left out.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["LOG_FORMATS", "PeerLogLimiter", "configure_logging"]

LOG_FORMATS = ("console", "json")
"""Renderings of the process log."""
PEER_LOG_WINDOW_S = 10.0
"""The window over which `PeerLogLimiter` counts the lines of one kind."""
PEER_LOG_LINES_MAX = 20
"""Lines of one kind a peer may cause per window; more are left out and counted."""


class PeerLogLimiter(logging.Filter):
    """Lets at most `lines_max` peer-caused records of each kind (logger, message template and
    core event) through per `window_s`; the first one after a window that left some out says
    how many. Records without a true `peer_caused` attribute (`forehand._peer_log.PEER_CAUSED`
    in their extra) pass untouched. The kinds are the code's own templates, so the table stays
    small."""

    def __init__(
        self,
        *,
        window_s: float = PEER_LOG_WINDOW_S,
        lines_max: int = PEER_LOG_LINES_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._window_s = window_s
        self._lines_max = lines_max
        self._clock = clock
        # kind -> [window start, lines let through, lines left out]
        self._windows: dict[tuple[str, str, object], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "peer_caused", False):
            return True
        fields = getattr(record, "fields", None)
        event = fields.get("core_event") if isinstance(fields, dict) else None
        kind = (record.name, str(record.msg), event)
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= self._window_s:
            left_out = 0 if window is None else int(window[2])
            self._windows[kind] = [now, 1, 0]
            if left_out:
                note = f" ({left_out} more like it left out in the {self._window_s:g} s before)"
                record.msg = f"{record.msg}{note}"
                if isinstance(fields, dict):
                    fields["left_out"] = left_out
            return True
        if window[1] < self._lines_max:
            window[1] += 1
            return True
        window[2] += 1
        return False


def _fields(logger: Any, method_name: str, event_dict: Any) -> Any:
    """Lift the `fields` extra of a standard-library record into the event itself."""
    record = event_dict.get("_record")
    fields = getattr(record, "fields", None)
    if isinstance(fields, dict):
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


def configure_logging(level: str, log_format: str = "console") -> None:
    """Send every log record of the process to stderr as JSON or readable lines."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format must be one of {LOG_FORMATS}, got {log_format!r}")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # Tracebacks are plain text, without the frames' local variables: those hold a part's
    # state and a request's payload, which have no place in a log.
    rendering: list[Any] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(default=str)]
        if log_format == "json"
        else [
            structlog.dev.ConsoleRenderer(
                colors=False, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, _fields],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *rendering],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(PeerLogLimiter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # The QUIC stack warns about every peer's close, and uvicorn logs every request; routine.
    if level != "debug":
        logging.getLogger("quic").setLevel(logging.ERROR)
        logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
