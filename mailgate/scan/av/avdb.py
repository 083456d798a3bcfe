"""The anti-virus database clamd loads, and how a new one replaces it.

Layout under the spool's ``avdb/``: one directory per version, ``v-<version>/``, holding the
signature files and ``origin`` (where they came from), and ``current``, a symlink to one of
them, which is the ``DatabaseDirectory`` of the clamd we manage. Installing a version is:
copy into ``v-<version>.tmp``, add the version canary, fsync, rename to ``v-<version>``, make
``current.new`` point at it, rename it over ``current`` (atomic), and ask clamd to RELOAD.
clamd (ConcurrentDatabaseReload) keeps scanning with the old database until the new one is
loaded; a scanner that asks meanwhile is told the old version, so iChecker never mixes them.

A new database is tried on a private clamd before it is installed: a file clamd cannot load
is rejected there and the old database stays in use.

At supervisor start the database shipped in ``data/avdb`` (``Signatures=``) is installed when
``current`` is missing or was itself seeded from a shipped set that has changed since; a
database installed by ``update`` is never replaced by the shipped one.
"""

from __future__ import annotations

import binascii
import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

import filelock
from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from mailgate.scan.av import clamd
from mailgate.scan.av.engine import CANARY, CANARY_PREFIX, Engine, EngineUnavailable, ObjectError
from mailgate.spool import Spool, fsync_dir

SUFFIXES = (
    ".cvd", ".cld", ".cud", ".ndb", ".ndu", ".hdb", ".hdu", ".hsb", ".hsu", ".mdb", ".mdu",
    ".msb", ".msu", ".ldb", ".ldu", ".idb", ".cdb", ".cfg", ".crb", ".cbc", ".fp", ".sfp",
    ".ign", ".ign2", ".ftm", ".pdb", ".gdb", ".wdb", ".info", ".yar", ".yara", ".pwdb",
)  # fmt: skip
VERSION_FILE = "mailgate-version.ndb"
ORIGIN = "origin"
KEEP_VERSIONS = 2
QUIET = 1.0
WATCH_FALLBACK = 30.0

# ``mailgate update`` exit codes (documented in the README).
UPDATED, NOTHING_NEW = 0, 0
NO_SOURCE, REJECTED, NOT_RELOADED, NOT_MANAGED = 3, 6, 7, 4


class Rejected(Exception):
    """The new database does not load; the old one stays."""


def signature_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in SUFFIXES and p.name != VERSION_FILE
    )


def digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(path.name.encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def current(spool: Spool) -> Path:
    return spool.avdb_root / "current"


def current_version(spool: Spool) -> str | None:
    try:
        target = os.readlink(current(spool))
    except OSError:
        return None
    return target.removeprefix("v-")


def current_origin(spool: Spool) -> str:
    try:
        return (current(spool) / ORIGIN).read_text().strip()
    except OSError:
        return ""


def _stage(spool: Spool, files: list[Path], origin: str) -> tuple[Path, str]:
    """Copy ``files`` into a staging directory with the version canary; (dir, version)."""
    version = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + "-" + digest(files)
    staging = spool.avdb_root / f"v-{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True, mode=0o755)
    for path in files:
        shutil.copyfile(path, staging / path.name)
    canary = binascii.hexlify(CANARY).decode()
    (staging / VERSION_FILE).write_text(f"{CANARY_PREFIX}{version}:0:*:{canary}\n")
    (staging / ORIGIN).write_text(origin + "\n")
    for path in staging.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(staging)
    return staging, version


def verify(directory: Path, timeout: float = 300.0) -> None:
    """Load ``directory`` in a private clamd; raise ``Rejected`` with clamd's complaint."""
    try:
        with clamd.temporary(directory, timeout) as socket_path:
            loaded = Engine(socket_path, 30.0).loaded_version()
    except (RuntimeError, EngineUnavailable) as exc:
        raise Rejected(str(exc)) from exc
    if not loaded:
        raise Rejected("clamd loaded the database but does not answer with its version")


def install(spool: Spool, files: list[Path], origin: str, check: bool = True) -> str:
    """Verify (unless ``check`` is false) and install ``files`` as the current database."""
    spool.avdb_root.mkdir(parents=True, exist_ok=True, mode=0o755)
    staging, version = _stage(spool, files, origin)
    try:
        if check:
            verify(staging)
    except Rejected:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = spool.avdb_root / f"v-{version}"
    shutil.rmtree(final, ignore_errors=True)
    os.rename(staging, final)
    link = spool.avdb_root / "current.new"
    link.unlink(missing_ok=True)
    os.symlink(final.name, link)
    os.rename(link, current(spool))
    fsync_dir(spool.avdb_root)
    _prune(spool, final.name)
    return version


def _prune(spool: Spool, keep_name: str) -> None:
    """Remove old versions, keeping the current one and the one before it."""
    versions = sorted(
        (p for p in spool.avdb_root.iterdir() if p.name.startswith("v-") and p.is_dir()),
        key=lambda p: p.name,
    )
    old = [p for p in versions if p.name != keep_name]
    for path in old[: max(0, len(old) - (KEEP_VERSIONS - 1))]:
        shutil.rmtree(path, ignore_errors=True)
    for path in spool.avdb_root.glob("v-*.tmp"):
        if path.stat().st_mtime < time.time() - 3600:
            shutil.rmtree(path, ignore_errors=True)


def ensure_seeded(spool: Spool, shipped: Path) -> str | None:
    """Install the shipped database when there is none, or when a shipped one changed.

    Returns the version installed, or None when the current database stays.
    """
    files = signature_files(shipped)
    if not files:
        raise FileNotFoundError(f"no signature files in {shipped}")
    origin = f"shipped {digest(files)}"
    have = current_origin(spool)
    if current_version(spool) and (have == origin or not have.startswith("shipped ")):
        return None
    return install(spool, files, origin, check=False)


def reload_and_confirm(socket_path: Path, version: str, timeout: float = 300.0) -> bool:
    """Ask clamd to RELOAD and wait until it answers with ``version`` loaded."""
    engine = Engine(socket_path, 10.0)
    try:
        engine.reload()
    except EngineUnavailable:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if engine.loaded_version() == version:
                return True
        except (EngineUnavailable, ObjectError):
            pass  # busy reloading: ask again
        time.sleep(0.2)
    return False


def update(spool: Spool, config, source: Path) -> tuple[int, str]:
    """``mailgate update --from DIR``: (exit code, what happened). DIR is a complete database."""
    if not (config.av_enabled and config.manage_clamd):
        return NOT_MANAGED, "the anti-virus database is not managed here (ManageClamd=no)"
    files = signature_files(source)
    if not files:
        return NO_SOURCE, f"no signature files in {source}"
    origin = f"update {digest(files)}"
    spool.avdb_root.mkdir(parents=True, exist_ok=True, mode=0o755)
    with filelock.FileLock(str(spool.avdb_root / "update.lock")):
        if current_origin(spool) == origin:
            return NOTHING_NEW, f"{source} is already installed ({current_version(spool)})"
        before = current_version(spool)
        try:
            version = install(spool, files, origin)
        except Rejected as exc:
            return REJECTED, f"rejected, keeping {before or 'no database'}: {exc}"
    socket_path = config.clamd_socket_path
    if not (socket_path.exists() and Engine(socket_path, 5.0).ping()):
        return UPDATED, f"installed {version}; clamd is not running and loads it when it starts"
    if reload_and_confirm(socket_path, version):
        return UPDATED, f"installed {version}; clamd reloaded it"
    return NOT_RELOADED, f"installed {version}; clamd did not confirm the reload"


def watch(spool: Spool, config, source: Path, report, stop: threading.Event, apply=None) -> int:
    """``update --watch``: apply every new complete database dropped into ``source``.

    A change is applied once the directory has been quiet for ``QUIET`` seconds, so a copy
    in progress is not taken for a broken database. Returns 0 when ``stop`` is set.
    """
    changed = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event):
            changed.set()

    observer = Observer()
    observer.schedule(Handler(), str(source), recursive=False)
    observer.start()
    try:
        changed.set()
        next_poll = 0.0
        while not stop.is_set():
            if not changed.wait(0.5) and time.monotonic() < next_poll:
                continue
            while changed.is_set() and not stop.is_set():
                changed.clear()
                stop.wait(QUIET)
            if stop.is_set():
                break
            next_poll = time.monotonic() + WATCH_FALLBACK
            if apply is None:
                report(*update(spool, config, source))
            else:
                for result in apply(spool, config, source):
                    report(*result)
    finally:
        observer.stop()
        observer.join()
    return 0
