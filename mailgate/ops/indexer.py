"""The indexer: the one process that writes the search index (``ops.index``).

It is started by the supervisor (``mailgate worker indexer``) like the console, runs as the
service user and never touches a message's way through the queue: receivers, scanners and
senders do not know it exists. At start it opens the index, or moves a damaged one aside and
builds a new one from the files (commands walk the files meanwhile); then watchdog tells it
which folders of ``archive/`` and ``quarantine/`` changed, and it brings just those up to
date: copies that appeared are read and added, copies that went (released, deleted, expired,
moved by hand with ``mv``) are dropped. The journal is not watched but read on every
``JOURNAL_POLL`` seconds from where it stopped (complete lines only): every message appends
three or four lines to it, and a watchdog event per line cost a third of the indexer's CPU
under load, where one read a second takes them all in one transaction. Every ``FULL_SYNC``
seconds it compares every folder, in case an event was missed. In a cluster it also publishes
this node's quarantine and answers the other nodes' requests to release or delete from it
(``ops.nodes``).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from mailgate import config as configmod
from mailgate.ops import index, nodes
from mailgate.runtime import log as logmod
from mailgate.runtime import stats
from mailgate.runtime.cluster import Cluster
from mailgate.spool import ARCHIVES, Spool, archive, quarantine
from mailgate.spool.journal import day_of

FULL_SYNC = 300.0
HEARTBEAT = 20.0  # clustered: the node's heartbeat, well within nodes.HEARTBEAT_TTL
SETTLE = 0.25
JOURNAL_POLL = 1.0  # seconds between two reads of the journal: what `track` may lag behind
JOURNAL_CHUNK = 4 << 20  # bytes of a journal file read at once (a line is far shorter)
BATCH = 1000  # rows per transaction while building: readers see progress, memory stays flat


class Indexer:
    def __init__(self, spool: Spool):
        self.spool = spool
        self.path = spool.index_path
        self.db: sqlite3.Connection | None = None

    # ------------------------------------------------------------ opening

    def open(self) -> bool:
        """Open the index; True when it had to be built anew (missing, damaged, old)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists():
            try:
                db = index.connect(self.path)
                if index.state(db) == "ready" and _sound(db):
                    self.db = db
                    return False
                db.close()
            except sqlite3.Error:
                pass
            self._set_aside()
        self.rebuild()
        return True

    def _set_aside(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{self.path}{suffix}")
            if old.exists():
                os.replace(old, Path(f"{self.path}.damaged{suffix}"))

    def rebuild(self) -> None:
        """Empty the index and fill it from the files; ``state`` says ``building`` until done."""
        db = self.db or index.connect(self.path)
        self.db = db
        with db:
            db.executescript(index.SCHEMA)
            for table in ("copies", "words", "events", "event_words", "journal_files"):
                db.execute(f"DELETE FROM {table}")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (index.VERSION,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('state', 'building')")
        self.sync_all()
        db.execute("ANALYZE")  # row counts for the query planner (place is not selective)
        with db:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('state', 'ready')")

    # ------------------------------------------------------------ bringing up to date

    def sync_all(self) -> int:
        """Compare every folder with the index; the number of rows added or dropped."""
        changed = 0
        present = set()
        for kind in ARCHIVES:
            for day in self.spool.archive_days(kind):
                present.add((kind, day))
                changed += self.sync_archive(kind, day)
        for kind, day in index.folders(self.db, "archive") - present:
            changed += self.sync_archive(kind, day)
        statuses = {status for status, _ in self.spool.quarantined()}
        statuses |= {kind for kind, _ in index.folders(self.db, "quarantine")}
        for status in sorted(statuses):
            changed += self.sync_quarantine(status)
        return changed + self.sync_journal()

    def sync_archive(self, kind: str, day: str) -> int:
        entries = {e.id: e for e in self.spool.archived_on(kind, day)}
        return self._sync(
            "archive", kind, day, entries, lambda e: (day, archive.summary(kind, day, e))
        )

    def sync_quarantine(self, status: str) -> int:
        try:
            entries = {e.id: e for _s, e in self.spool.quarantined(status)}
        except (ValueError, OSError):
            entries = {}

        def read(entry):
            row = quarantine.summary(status, entry)
            return day_of(row["quarantined_at"]), row

        return self._sync("quarantine", status, None, entries, read)

    def _sync(self, place: str, kind: str, day: str | None, entries: dict, read) -> int:
        have = index.copies_in(self.db, place, kind, day)
        gone = [n for queue_id, n in have.items() if queue_id not in entries]
        new = [e for queue_id, e in entries.items() if queue_id not in have]
        for start in range(0, max(len(new), 1), BATCH):
            with self.db:
                if start == 0:
                    index.drop_copies(self.db, gone)
                for entry in new[start : start + BATCH]:
                    try:
                        found_day, row = read(entry)
                    except (OSError, ValueError):
                        continue  # gone while we read it, or half written: the next pass
                    index.add_copy(self.db, place, kind, found_day, row)
        return len(gone) + len(new)

    def sync_journal(self) -> int:
        added = 0
        days = self.spool.journal_days()
        known = {d for (d,) in self.db.execute("SELECT DISTINCT day FROM journal_files")}
        with self.db:
            for day in known - set(days):
                index.drop_journal_day(self.db, day)
        for day in days:
            folder = self.spool.journal_dir(day)
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                continue
            for name in names:
                added += self._read_on(day, folder / name, name)
        return added

    def _read_on(self, day: str, path: Path, name: str) -> int:
        """Index what one journal file gained since the offset stored for it, complete lines
        only, ``JOURNAL_CHUNK`` bytes at a time: a day's file of a busy node runs to hundreds
        of megabytes, and a rebuild reads it from the start."""
        row = self.db.execute(
            "SELECT offset FROM journal_files WHERE day=? AND file=?", (day, name)
        ).fetchone()
        offset = row[0] if row else 0
        added = 0
        try:
            with open(path, "rb") as handle:
                while True:
                    handle.seek(offset)
                    data = handle.read(JOURNAL_CHUNK)
                    end = data.rfind(b"\n") + 1  # a line still being written waits
                    if not end and len(data) == JOURNAL_CHUNK:
                        end = len(data)  # no line is that long: a fragment, passed over
                    if end:
                        added += self._index_lines(day, name, offset, data[:end])
                        offset += end
                    if len(data) < JOURNAL_CHUNK:
                        return added
        except OSError:
            return added

    def _index_lines(self, day: str, name: str, offset: int, data: bytes) -> int:
        """Add the events of the whole lines ``data`` read at ``offset``, then move the
        file's offset past them, in one transaction."""
        added = 0
        with self.db:
            pos = offset
            for raw in data.splitlines(keepends=True):
                try:
                    event = json.loads(raw)
                except ValueError:
                    event = None
                if (
                    isinstance(event, dict)
                    and isinstance(event.get("qid"), str)
                    and isinstance(event.get("t", 0), int | float)
                ):
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    index.add_event(self.db, day, name, pos, event, line)
                    added += 1
                pos += len(raw)
            self.db.execute(
                "INSERT OR REPLACE INTO journal_files VALUES (?,?,?)",
                (day, name, offset + len(data)),
            )
        return added

    def sync_paths(self, paths: set[str]) -> int:
        """Bring up to date the folders these changed paths are in."""
        root = os.fspath(self.spool.root)
        archives, statuses, journal = set(), set(), False
        for path in paths:
            parts = os.path.relpath(path, root).split(os.sep)
            if parts[0] == "archive" and len(parts) >= 3 and parts[1] in ARCHIVES:
                archives.add((parts[1], parts[2]))
            elif parts[0] == "archive" and len(parts) == 2 and parts[1] in ARCHIVES:
                present = set(self.spool.archive_days(parts[1]))
                archives |= {(parts[1], d) for d in present}
                archives |= {(k, d) for k, d in index.folders(self.db, "archive") if k == parts[1]}
            elif parts[0] == "quarantine" and len(parts) >= 2:
                statuses.add(parts[1])
            elif parts[:2] == ["stats", "journal"]:
                journal = True
        changed = 0
        for kind, day in sorted(archives):
            try:
                changed += self.sync_archive(kind, day)
            except ValueError:
                continue
        for status in sorted(statuses):
            changed += self.sync_quarantine(status)
        return changed + (self.sync_journal() if journal else 0)


def _publish(cluster: Cluster, indexer: Indexer, published: float | None) -> float | None:
    """Beat the heart (with this node's statistics) and publish its quarantine when it
    changed (``published`` None) or long ago. Returns when it last published (None: to do)."""
    nodes.heartbeat(cluster, stats.Snapshot(indexer.spool).as_json())
    if published is not None and time.monotonic() - published < nodes.PUBLISHED_TTL / 4:
        return published
    done = nodes.publish(cluster, index.quarantine(indexer.db))
    return time.monotonic() if done else None


def _sound(db: sqlite3.Connection) -> bool:
    try:
        return db.execute("PRAGMA quick_check(1)").fetchone()[0] == "ok"
    except sqlite3.Error:
        return False


class _Changes(FileSystemEventHandler):
    def __init__(self):
        self.paths: set[str] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()

    def on_any_event(self, event) -> None:
        with self.lock:
            self.paths.add(os.fsdecode(event.src_path))
            if getattr(event, "dest_path", ""):
                self.paths.add(os.fsdecode(event.dest_path))
        self.wake.set()

    def take(self) -> set[str]:
        with self.lock:
            taken, self.paths = self.paths, set()
            self.wake.clear()
        return taken


def run(config: configmod.Config, snapshot: Path | None = None) -> int:
    """The indexer process: keep the index current until SIGTERM."""
    log = logmod.get()
    spool = Spool(config.spool_path)
    stop = threading.Event()
    changes = _Changes()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    signal.pthread_sigmask(signal.SIG_BLOCK, handled)  # the threads started below keep it so
    watched = [spool.root / "archive", spool.root / "quarantine"]
    observer = Observer()
    for folder in watched:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        observer.schedule(changes, os.fspath(folder), recursive=True)
    observer.start()
    indexer = Indexer(spool)
    started = time.monotonic()
    built = indexer.open()
    log.info("index_ready", built=built, seconds=round(time.monotonic() - started, 2))
    cluster = Cluster(config)
    if cluster.enabled:
        threading.Thread(
            target=nodes.serve, args=(config, cluster, spool, stop, log), daemon=True
        ).start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: (stop.set(), changes.wake.set()))
    signal.signal(signal.SIGHUP, lambda *_: logmod.reopen())
    signal.signal(signal.SIGUSR1, lambda *_: log.info("statistics", index=str(indexer.path)))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)  # the main thread alone takes them
    last_full, published, beat = time.monotonic(), None, 0.0
    while not stop.is_set():
        if cluster.enabled and (published is None or time.monotonic() - beat >= HEARTBEAT):
            published, beat = _publish(cluster, indexer, published), time.monotonic()
        if changes.wake.wait(JOURNAL_POLL):
            stop.wait(SETTLE)  # let a burst of events (an archive run) come in as one pass
        if stop.is_set():
            break
        try:
            if not indexer.path.exists():  # deleted by hand: build it again
                log.warning("index_missing", path=str(indexer.path))
                indexer.db.close()
                indexer.db = None
                indexer.open()
            journaled = 0
            if time.monotonic() - last_full >= FULL_SYNC:
                changes.take()
                changed = indexer.sync_all()
                indexer.db.execute("PRAGMA optimize")  # ANALYZE where the tables have grown
                last_full = time.monotonic()
            else:
                changed = indexer.sync_paths(changes.take())
                journaled = indexer.sync_journal()
        except (sqlite3.Error, OSError) as exc:
            log.error("index_failed", error=str(exc))
            stop.wait(5.0)  # a full disk, say; the files stay the truth meanwhile
            continue
        if changed:
            published = None  # publish this node's quarantine again
        if changed or journaled:
            log.debug("index_updated", changed=changed, events=journaled)
    observer.stop()
    observer.join(5)
    if indexer.db is not None:
        indexer.db.close()
    return 0
