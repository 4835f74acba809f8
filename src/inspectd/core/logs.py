"""structlog set-up: JSON lines on stdout for journald, readable console rendering on a TTY.

Events carry small values only: arrays are replaced by a shape description, and tracebacks are plain text
without local variables.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _no_arrays(_logger, _name, event_dict: dict) -> dict:
    for key, value in event_dict.items():
        if isinstance(value, np.ndarray):
            event_dict[key] = f"<array {value.dtype} {list(value.shape)}>"
    return event_dict


def _head_first(_logger, _name, event_dict: dict) -> dict:
    """timestamp, level, event first: what a person scanning journalctl reads first."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "event") if k in event_dict}
    head.update(event_dict)
    return head


def configure(level: str = "info", fmt: str = "auto", stream=None) -> str:
    """Configure structlog; returns the format actually chosen ('json' or 'console')."""
    stream = sys.stdout if stream is None else stream
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _no_arrays,
        structlog.processors.StackInfoRenderer(),
    ]
    if fmt == "json":
        renderer: list[Any] = [
            structlog.processors.format_exc_info,
            _head_first,
            structlog.processors.JSONRenderer(sort_keys=False),
        ]
    else:
        renderer = [structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)]
    structlog.configure(
        processors=[*shared, *renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return fmt
