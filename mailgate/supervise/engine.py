"""The clamd that ``mailgate run`` manages: its configuration file, written from ours, and
its process.

The text is derived from the configuration and the spool (socket, database version,
temporary directory, size limits), so comparing it before and after a reload tells whether
clamd must restart or only reload its database.

clamd unpacks archives into its TemporaryDirectory. That directory is not on the spool's
file system unless ``ClamdTempDir`` puts it there: a spool filling up must make the receiver
answer 452, not make clean mail ``unscannable`` because clamd had no room to unpack it. The
default is a fresh private directory (``mkdtemp``, mode 0700) made once per supervisor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from mailgate.config import Config
from mailgate.runtime import privileges
from mailgate.scan.av import archives, avdb, clamd
from mailgate.spool import Spool

SCRATCH_CANDIDATES = ("/dev/shm",)


class ManagedClamd:
    def __init__(self, spool: Spool):
        self.spool = spool
        self._scratch: Path | None = None

    def scratch(self, config: Config) -> Path:
        """clamd's TemporaryDirectory (made on first use, then the same until ``close``)."""
        if config.clamd_temp_dir:
            return config.resolve(config.clamd_temp_dir)
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="mailgate-clamd-", dir=self._base()))
        return self._scratch

    def _base(self) -> str:
        """The first temporary directory on another file system than the spool."""
        spool_dev = os.stat(self.spool.root).st_dev
        for base in (tempfile.gettempdir(), *SCRATCH_CANDIDATES):
            try:
                if os.stat(base).st_dev != spool_dev and os.access(base, os.W_OK | os.X_OK):
                    return base
            except OSError:
                continue
        return tempfile.gettempdir()

    def config_text(self, config: Config) -> str:
        return clamd.config_text(
            config.clamd_socket_path,
            avdb.current(self.spool),
            self.scratch(config),
            config.max_object_size,
            self.spool.run_path("clamd.log"),
            archives.limits_of(config),
            config.object_timeout,
        )

    def write_config(self, config: Config) -> Path:
        """Write ``run/clamd.conf`` for ``config`` (only if it changed); return its path."""
        conf = self.spool.run_path("clamd.conf")
        self.scratch(config).mkdir(parents=True, exist_ok=True, mode=0o700)
        text = self.config_text(config)
        if not conf.exists() or conf.read_text() != text:
            conf.write_text(text)
        return conf

    def start(self, config: Config, log) -> subprocess.Popen:
        """Start clamd, first installing the shipped database if there is none (or it changed)."""
        installed = avdb.ensure_seeded(self.spool, config.signatures_path)
        if installed:
            log.info("database_installed", version=installed, origin="shipped")
        config.clamd_socket_path.unlink(missing_ok=True)
        return subprocess.Popen(
            clamd.command(self.write_config(config)),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=privileges.die_with_parent,
        )

    def wait_ready(self, config: Config, process: subprocess.Popen, log) -> None:
        """Wait for the PING of a clamd just started (before any scanner starts)."""
        ready = clamd.wait_ready(config.clamd_socket_path, config.clamd_start_timeout, process)
        (log.info if ready else log.error)(
            "clamd_ready" if ready else "clamd_not_ready",
            socket=str(config.clamd_socket_path),
            version=avdb.current_version(self.spool),
            scratch=str(self.scratch(config)),
        )

    def close(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
