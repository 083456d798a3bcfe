"""The clamd that ``mailgate run`` manages: its configuration file, written from ours.

The text is derived from the configuration and the spool (socket, database version,
temporary directory, size limits), so comparing it before and after a reload tells whether
clamd must restart or only reload its database.
"""

from __future__ import annotations

from pathlib import Path

from mailgate.config import Config
from mailgate.scan.av import avdb, clamd
from mailgate.spool import Spool


def config_text(config: Config, spool: Spool) -> str:
    return clamd.config_text(
        config.clamd_socket_path,
        avdb.current(spool),
        spool.run_path("clamd-tmp"),
        config.max_object_size,
        spool.run_path("clamd.log"),
    )


def write_config(config: Config, spool: Spool) -> Path:
    """Write ``run/clamd.conf`` for ``config`` (only if it changed); return its path."""
    conf = spool.run_path("clamd.conf")
    spool.run_path("clamd-tmp").mkdir(exist_ok=True, mode=0o700)
    text = config_text(config, spool)
    if not conf.exists() or conf.read_text() != text:
        conf.write_text(text)
    return conf
