"""structlog set-up shared by every process: one event per line, key=value, queue ID as ``qid``.

Every process writes to the same inherited stderr, so each event must leave in a single
write(2) (WriteLogger writes line and newline together; print() wrote them apart and two
processes could interleave their events on one line).
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def setup(role: str, level: str = "info") -> None:
    """Configure structlog for this process; every line names the role and the pid."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
            structlog.processors.format_exc_info,
            structlog.processors.KeyValueRenderer(
                key_order=["ts", "level", "proc", "pid", "event", "qid"], drop_missing=True
            ),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(proc=role, pid=os.getpid())


def get(**bound) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**bound)
