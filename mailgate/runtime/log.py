"""structlog set-up shared by every process: one event per line, key=value, queue ID as ``qid``.

Every process writes to the same inherited stderr, so each event must leave in a single
write(2) (WriteLogger writes line and newline together; print() wrote them apart and two
processes could interleave their events on one line).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path

import structlog

from mailgate.spool import Spool

_file_path: Path | None = None
_file_fd: int | None = None

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _Tee:
    """Writes each event line to stderr and, when one is set, appends it to the log file.

    The file is opened with O_APPEND and each line leaves in one write(2), so the processes
    sharing it never interleave inside a line (and ``reopen`` follows a log rotation).
    """

    def __init__(self, stream):
        self.stream = stream

    def msg(self, message: str) -> None:
        line = message + "\n"
        with contextlib.suppress(OSError, ValueError):  # a full disk must not stop mail
            self.stream.write(line)
            self.stream.flush()
        if _file_fd is not None:
            with contextlib.suppress(OSError):
                os.write(_file_fd, line.encode("utf-8", "backslashreplace"))

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def reopen() -> None:
    """Open the log file again (after a rotation moved it away); SIGHUP calls this."""
    global _file_fd
    if _file_fd is not None:
        os.close(_file_fd)
        _file_fd = None
    if _file_path is not None:
        try:
            _file_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _file_fd = os.open(
                _file_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600
            )
        except OSError as exc:
            sys.stderr.write(f"mailgate: cannot open log file {_file_path}: {exc}\n")


def setup(role: str, level: str = "info", file: Path | None = None, open_now: bool = True) -> None:
    """Configure structlog for this process; every line names the role and the pid.

    ``file``: also append every event there (``mailgate run`` and its workers), opened at
    once or, with ``open_now`` False, at the first ``reopen`` (a root supervisor opens it only
    once it runs as User: the file is in a directory that user can write). The file itself is
    never opened through a symlink.
    """
    global _file_path
    _file_path = file
    if open_now:
        reopen()
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
        logger_factory=lambda *args: _Tee(sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(proc=role, pid=os.getpid())


def file_for(config) -> Path | None:
    """``[smtpgw.log] File``: ``none``, a path, or by default ``log/mailgate.log`` in the spool."""
    if config.log_file.lower() == "none":
        return None
    return config.resolve(config.log_file) if config.log_file else Spool(config.spool_path).log_path


def get(**bound) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**bound)
