"""Structured process logs: structlog over the standard `logging` module.

Every record, whether it comes from structlog or from a library's `logging` call, goes through
one processor chain (level, logger name, UTC timestamp, the record's `fields` extra) and is
rendered either as one JSON object per line (`log_format = "json"`, for log shippers; a
traceback goes in its `exception` key) or as one readable line (`console`, the default; a
traceback follows it as plain text). Tracebacks never show the frames' local variables.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

__all__ = ["LOG_FORMATS", "configure_logging"]

LOG_FORMATS = ("console", "json")
"""Renderings of the process log."""


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
