"""The spool's directories beside the queue: archive, quarantine, caches, statistics, control.

``SpoolPaths`` knows where everything is; ``Stores`` adds the copies kept outside the queue
(archive and quarantine). ``Spool`` (the package) adds the queue's state transitions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from mailgate.message.content import Content
from mailgate.spool.files import fsync_dir, write_entry
from mailgate.spool.ids import ID_RE, check_id
from mailgate.spool.layout import (
    ARCHIVES,
    DAY_RE,
    QUARANTINE,
    STATES,
    STATUS_RE,
    Entry,
    NotFound,
)


class SpoolPaths:
    """One spool root and the paths under it. Safe for any number of processes at once."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.pid = os.getpid()
        self._dirs = {state: os.path.join(self.root, state) for state in STATES}

    # ------------------------------------------------------------ layout

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for state in STATES:
            (self.root / state).mkdir(parents=True, exist_ok=True, mode=0o700)
        for extra in ("run", QUARANTINE, "avdb", "cache", "control", "stats", "log"):
            (self.root / extra).mkdir(exist_ok=True, mode=0o700)

    def control_requests(self) -> list[str]:
        """Names of the files waiting in ``control/`` (each is removed once acted upon)."""
        folder = self.root / "control"
        try:
            return sorted(n for n in os.listdir(folder) if not n.startswith("."))
        except FileNotFoundError:
            return []

    def take_control_request(self, name: str) -> None:
        (self.root / "control" / name).unlink(missing_ok=True)

    @property
    def paused_flag(self) -> Path:
        """Present while the receiver must not accept mail (``pause`` control file)."""
        return self.root / "run" / "paused"

    def scratch_file(self) -> BinaryIO:
        """An unnamed file in tmp/ for what a scan unpacks: gone when closed or when its
        process dies, so no sweep ever sees it, and on the spool's file system, so a full disk
        is a storage error like any other."""
        return tempfile.TemporaryFile(dir=self.state_dir("tmp"))

    def cache_path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad cache file name {name!r}")
        (self.root / "cache").mkdir(exist_ok=True, mode=0o700)
        return self.root / "cache" / name

    @property
    def spamdb_root(self) -> Path:
        """Where the spam filter's token table lives (see ``spamtest``)."""
        return self.root / "spamdb"

    @property
    def avdb_root(self) -> Path:
        """Where the anti-virus database versions live (see ``avdb``)."""
        return self.root / "avdb"

    def stats_path(self, name: str) -> Path:
        """A file or folder of the statistics (see ``stats``) under ``stats/``."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad stats name {name!r}")
        return self.root / "stats" / name

    def journal_dir(self, day: str) -> Path:
        """The journal files of one day (``YYYY-MM-DD``), one per writing process."""
        if not DAY_RE.match(day):
            raise ValueError(f"bad journal day {day!r}")
        return self.root / "stats" / "journal" / day

    def journal_days(self) -> list[str]:
        base = self.root / "stats" / "journal"
        return sorted(d for d in os.listdir(base) if DAY_RE.match(d)) if base.is_dir() else []

    @property
    def log_path(self) -> Path:
        """The log every process of ``mailgate run`` appends its events to."""
        return self.root / "log" / "mailgate.log"

    def state_dir(self, state: str) -> Path:
        return Path(self._dir(state))

    def _dir(self, state: str) -> str:
        """``state_dir`` as a string, for the per-message operations."""
        try:
            return self._dirs[state]
        except KeyError:
            raise ValueError(f"unknown spool state {state!r}") from None

    @property
    def run_dir(self) -> Path:
        """``run/``: the supervisor's lock, worker table and configuration snapshot."""
        return self.root / "run"

    def run_path(self, name: str) -> Path:
        """A file of the supervisor's in ``run/`` (lock, worker table, config snapshot)."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad run file name {name!r}")
        return self.root / "run" / name


class Stores(SpoolPaths):
    """Copies kept beside the queue: the archive and the quarantine."""

    def archive(self, kind: str, message: Content, envelope: dict, when: float) -> None:
        """Keep a copy in ``archive/<kind>/<YYYY-MM-DD>/ID`` (not fsync'd: a copy, not mail)."""
        if kind not in ARCHIVES:
            raise ValueError(f"bad archive kind {kind!r}")
        queue_id = check_id(envelope["id"])
        day = time.strftime("%Y-%m-%d", time.localtime(when))
        folder = self.root / "archive" / kind / day
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = self.state_dir("tmp") / f"{queue_id}.archive-{kind}@{self.pid}"
        write_entry(os.fspath(work), message, envelope, durable=False)
        try:
            os.rename(work, folder / queue_id)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)  # already archived (a repeated delivery)

    def archived(self, kind: str | None = None) -> Iterator[tuple[str, str, Entry]]:
        """(kind, day, entry) of every archived message, oldest day first."""
        for name in [kind] if kind else ARCHIVES:
            for day in self.archive_days(name):
                for entry in self.archived_on(name, day):
                    yield name, day, entry

    def archive_days(self, kind: str) -> list[str]:
        base = self.root / "archive" / kind
        return sorted(d for d in os.listdir(base) if DAY_RE.match(d)) if base.is_dir() else []

    def archived_on(self, kind: str, day: str) -> list[Entry]:
        """The messages archived as ``kind`` on ``day``, by queue ID ([] when none)."""
        if kind not in ARCHIVES or not DAY_RE.match(day):
            raise ValueError(f"bad archive folder {kind}/{day}")
        folder = os.path.join(self.root, "archive", kind, day)
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [Entry("archive", n, f"{folder}/{n}") for n in names if ID_RE.match(n)]

    @property
    def index_path(self) -> Path:
        """The search index (``ops.index``): derived from the spool, rebuilt when lost."""
        return self.root / "index" / "index.sqlite3"

    def expire_archive(self, retention: float, now: float | None = None) -> list[str]:
        """Remove whole days older than ``retention`` seconds; the ``kind/day`` removed."""
        cutoff = time.strftime(
            "%Y-%m-%d", time.localtime((time.time() if now is None else now) - retention)
        )
        removed = []
        for kind in ARCHIVES:
            base = self.root / "archive" / kind
            for day in sorted(os.listdir(base)) if base.is_dir() else []:
                if DAY_RE.match(day) and day < cutoff:
                    grave = self.state_dir("tmp") / f"archive-{kind}-{day}.removed.{self.pid}"
                    os.rename(base / day, grave)
                    shutil.rmtree(grave, ignore_errors=True)
                    removed.append(f"{kind}/{day}")
        return removed

    def _quarantine_dir(self, status: str) -> Path:
        if not STATUS_RE.match(status):
            raise ValueError(f"bad quarantine status {status!r}")
        return self.root / QUARANTINE / status

    def quarantine(self, message: Content, envelope: dict, status: str) -> Entry:
        """Keep a durable copy in ``quarantine/<status>/ID``, its envelope stamped with
        ``quarantined_at``; a copy already there is kept.

        A scanner that dies after quarantining scans the message again and comes here a
        second time: the existing copy is the same message, so the call is idempotent.
        """
        queue_id = check_id(envelope["id"])
        target_dir = self._quarantine_dir(status)
        target_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = target_dir / queue_id
        if target.is_dir():
            return Entry(QUARANTINE, queue_id, os.fspath(target))
        work = self.state_dir("tmp") / f"{queue_id}.quarantine@{self.pid}"
        write_entry(os.fspath(work), message, {**envelope, "quarantined_at": time.time()})
        os.rename(work, target)
        fsync_dir(target_dir)
        return Entry(QUARANTINE, queue_id, os.fspath(target))

    def quarantined(self, status: str | None = None) -> Iterator[tuple[str, Entry]]:
        """(status, entry) of every quarantined message, oldest first within a status."""
        base = self.root / QUARANTINE
        if status is not None:
            self._quarantine_dir(status)
            statuses = [status]
        else:
            statuses = (
                sorted(n for n in os.listdir(base) if STATUS_RE.match(n)) if base.is_dir() else []
            )
        for name in statuses:
            folder = self._quarantine_dir(name)
            if not folder.is_dir():
                continue
            for queue_id in sorted(os.listdir(folder)):
                if ID_RE.match(queue_id):
                    yield name, Entry(QUARANTINE, queue_id, os.fspath(folder / queue_id))

    def find_quarantined(self, queue_id: str) -> tuple[str, Entry]:
        check_id(queue_id)
        base = self.root / QUARANTINE
        for name in sorted(os.listdir(base)) if base.is_dir() else []:
            if STATUS_RE.match(name) and (base / name / queue_id).is_dir():
                return name, Entry(QUARANTINE, queue_id, os.fspath(base / name / queue_id))
        raise NotFound(queue_id)
