"""The spool: every path and every rename of a queued message lives here.

A message is one directory, named by its queue ID, holding ``message.eml`` (the bytes received,
after our Received: header) and ``envelope.json`` (sender, recipients with their DSN parameters
and delivery status, client, times, attempts, history). Its state is the directory it sits in:

    tmp/ ─► incoming/ ─► scanning/ID@PID ─► ready/ ─► sending/ID@PID ─► (delivered: removed)
                             │                            ├─► deferred/ (mtime = next attempt)
                             └─► corrupt/ (reason.txt)    └─► bounced (DSN queued, removed)
    hold/ takes a message out of circulation until an administrator releases it.

    quarantine/<status>/ID  a copy of a message as received, kept by the scanner's policy
                            (envelope.json carries the verdict); released as a new message.
    avdb/                   the anti-virus database clamd loads: ``current`` is a symlink to
                            one version directory, replaced by a rename (``update``).
    cache/                  iChecker's memory of objects already scanned.
    spamdb/                 the spam filter's token table (``tokens.tsv.gz``) and its origin.
    control/                files an administrator drops to control ``mailgate run``.
    archive/<kind>/<day>/ID copies of received and of sent mail (kind ``received``/``sent``).
    stats/                  counters of every process (``live/``, ``history.json``) and the
                            per-day journal of message events (``journal/<day>/``).
    log/                    ``mailgate.log``, every process's log events.

Invariants:
- A state change is one ``rename(2)`` of the message directory; the destination directory is
  fsync'd before the change is reported as done, except for hand-offs that acknowledge
  nothing (``release(durable=False)``). Nothing but this module builds spool paths.
- ``enqueue`` returns only when the message, its envelope and its name are on disk, so the
  receiver may answer 250 afterwards.
- A claim is a rename into ``scanning/`` or ``sending/`` whose new name ends in ``@PID`` of the
  claimer. A rename that fails with ENOENT means another worker was first; that is not an error.
- A claim whose owner died goes back to its queue with ``crashes`` raised; after ``MaxAttempts``
  crashes it goes to ``corrupt/`` with ``reason.txt``, so a poison message cannot loop.
- Queue IDs are checked against ``ID_RE`` before they become part of a path.
- ``deferred/`` entries carry their next attempt time as the directory's mtime (as Postfix
  does), so finding the due ones needs one ``scandir`` and no file reads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CLAIMS = {"incoming": "scanning", "ready": "sending"}
RETURNS = {claimed: queue for queue, claimed in CLAIMS.items()}
STATES = ("tmp", "incoming", "scanning", "ready", "sending", "deferred", "hold", "corrupt")
QUARANTINE = "quarantine"
ARCHIVES = ("received", "sent")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STATUS_RE = re.compile(r"^[a-z][a-z-]{0,30}$")
MESSAGE = "message.eml"
ENVELOPE = "envelope.json"
REASON = "reason.txt"

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_RE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{21}$")
_CLAIM_RE = re.compile(r"^([0-9A-HJKMNP-TV-Z]{21})@(\d+)$")


class InvalidQueueID(ValueError):
    """A string that is not a queue ID (and so must never reach the file system)."""


class NotFound(LookupError):
    """No message with that ID in the states looked at."""


def _b32(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 32)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_queue_id() -> str:
    """21 characters: microseconds since the epoch (11) then 50 random bits (10).

    Sorting IDs sorts by arrival time; the random part makes them unique across processes
    and hosts sharing a spool without any coordination.
    """
    return _b32(time.time_ns() // 1000, 11) + _b32(secrets.randbits(50), 10)


def check_id(queue_id: str) -> str:
    if not isinstance(queue_id, str) or not ID_RE.match(queue_id):
        raise InvalidQueueID(f"invalid queue ID {queue_id!r}")
    return queue_id


def id_time(queue_id: str) -> float:
    """The arrival time encoded in a queue ID, in seconds since the epoch."""
    number = 0
    for char in queue_id[:11]:
        number = number * 32 + _ALPHABET.index(char)
    return number / 1e6


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path | str, data: bytes, durable: bool = True) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync it if durable; mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Entry:
    """A message directory in one state. ``name`` is the ID, or ``ID@PID`` while claimed.

    ``where`` is the directory's path as a string: the spool's own operations run several
    times per message in every worker, where building ``pathlib`` paths cost about 0.1 ms of
    CPU per message in each scanner and sender. ``path`` gives a ``Path`` to everyone else.
    """

    state: str
    name: str
    where: str

    @property
    def path(self) -> Path:
        return Path(self.where)

    @property
    def id(self) -> str:
        return self.name.partition("@")[0]

    @property
    def message_path(self) -> Path:
        return Path(f"{self.where}/{MESSAGE}")

    @property
    def owner(self) -> int | None:
        m = _CLAIM_RE.match(self.name)
        return int(m.group(2)) if m else None

    def read_message(self) -> bytes:
        with open(f"{self.where}/{MESSAGE}", "rb") as f:
            return f.read()

    def read_envelope(self) -> dict:
        with open(f"{self.where}/{ENVELOPE}", "rb") as f:
            return json.load(f)

    def read_reason(self) -> str | None:
        try:
            with open(f"{self.where}/{REASON}", encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return None


class Spool:
    """One spool root. Safe for any number of processes to use at once."""

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

    def requeue_all_deferred(self) -> list[str]:
        """Every deferred message into ready/ now (``flush``)."""
        return self.promote_due(now=float("inf"))[0]

    # ------------------------------------------------------------ archive

    def archive(self, kind: str, message: bytes, envelope: dict, when: float) -> None:
        """Keep a copy in ``archive/<kind>/<YYYY-MM-DD>/ID`` (not fsync'd: a copy, not mail)."""
        if kind not in ARCHIVES:
            raise ValueError(f"bad archive kind {kind!r}")
        queue_id = check_id(envelope["id"])
        day = time.strftime("%Y-%m-%d", time.localtime(when))
        folder = self.root / "archive" / kind / day
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        work = self.state_dir("tmp") / f"{queue_id}.archive-{kind}@{self.pid}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        write_file(work / MESSAGE, message, durable=False)
        write_file(work / ENVELOPE, _dump(envelope), durable=False)
        try:
            os.rename(work, folder / queue_id)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)  # already archived (a repeated delivery)

    def archived(self, kind: str | None = None) -> Iterator[tuple[str, str, Entry]]:
        """(kind, day, entry) of every archived message, oldest day first."""
        for name in [kind] if kind else ARCHIVES:
            base = self.root / "archive" / name
            days = sorted(d for d in os.listdir(base) if _DAY_RE.match(d)) if base.is_dir() else []
            for day in days:
                folder = os.path.join(base, day)
                for queue_id in sorted(os.listdir(folder)):
                    if ID_RE.match(queue_id):
                        yield name, day, Entry("archive", queue_id, f"{folder}/{queue_id}")

    def expire_archive(self, retention: float, now: float | None = None) -> list[str]:
        """Remove whole days older than ``retention`` seconds; the ``kind/day`` removed."""
        cutoff = time.strftime(
            "%Y-%m-%d", time.localtime((time.time() if now is None else now) - retention)
        )
        removed = []
        for kind in ARCHIVES:
            base = self.root / "archive" / kind
            for day in sorted(os.listdir(base)) if base.is_dir() else []:
                if _DAY_RE.match(day) and day < cutoff:
                    grave = self.state_dir("tmp") / f"archive-{kind}-{day}.removed.{self.pid}"
                    os.rename(base / day, grave)
                    shutil.rmtree(grave, ignore_errors=True)
                    removed.append(f"{kind}/{day}")
        return removed

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
        if not _DAY_RE.match(day):
            raise ValueError(f"bad journal day {day!r}")
        return self.root / "stats" / "journal" / day

    def journal_days(self) -> list[str]:
        base = self.root / "stats" / "journal"
        return sorted(d for d in os.listdir(base) if _DAY_RE.match(d)) if base.is_dir() else []

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

    def run_path(self, name: str) -> Path:
        """A file of the supervisor's in ``run/`` (lock, worker table, config snapshot)."""
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad run file name {name!r}")
        return self.root / "run" / name

    def names(self, state: str) -> list[str]:
        """Entry names in ``state``, oldest first (queue IDs sort by time). One scandir."""
        pattern = _CLAIM_RE if state in RETURNS else ID_RE
        with os.scandir(self._dir(state)) as it:
            return sorted(e.name for e in it if pattern.match(e.name))

    def entries(self, state: str) -> Iterator[Entry]:
        folder = self._dir(state)
        for name in self.names(state):
            yield Entry(state, name, f"{folder}/{name}")

    def count(self, state: str) -> int:
        with os.scandir(self._dir(state)) as it:
            return sum(1 for _ in it)

    def find(self, queue_id: str, states: tuple[str, ...] = STATES[1:]) -> Entry:
        """The entry of ``queue_id`` in any of ``states`` (claims included)."""
        check_id(queue_id)
        for state in states:
            if state in RETURNS:
                for name in self.names(state):
                    if name.startswith(queue_id + "@"):
                        return Entry(state, name, f"{self._dir(state)}/{name}")
            elif os.path.isdir(f"{self._dir(state)}/{queue_id}"):
                return Entry(state, queue_id, f"{self._dir(state)}/{queue_id}")
        raise NotFound(queue_id)

    # ------------------------------------------------------------ writing

    def enqueue(self, message: bytes, envelope: dict, state: str = "incoming") -> Entry:
        """Store a new message durably in ``state``; the envelope's ``id`` names it."""
        queue_id = check_id(envelope["id"])
        work = f"{self._dir('tmp')}/{queue_id}@{self.pid}"
        os.mkdir(work, 0o700)
        write_file(f"{work}/{MESSAGE}", message)
        write_file(f"{work}/{ENVELOPE}", _dump(envelope))
        fsync_dir(work)
        folder = self._dir(state)
        target = f"{folder}/{queue_id}"
        os.rename(work, target)
        fsync_dir(folder)
        return Entry(state, queue_id, target)

    def write_envelope(self, entry: Entry, envelope: dict, durable: bool = True) -> None:
        """Replace the envelope atomically: write beside, rename over (fsync'd when durable)."""
        new = f"{entry.where}/{ENVELOPE}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        write_file(new, _dump(envelope), durable)
        os.rename(new, f"{entry.where}/{ENVELOPE}")
        if durable:
            fsync_dir(entry.where)

    # ------------------------------------------------------------ moving

    def _move(self, entry: Entry, state: str, durable: bool = True) -> Entry:
        folder = self._dir(state)
        target = f"{folder}/{entry.id}"
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "already in the spool", target)
        os.rename(entry.where, target)
        if durable:
            fsync_dir(folder)
        return Entry(state, entry.id, target)

    def claim(self, state: str, queue_id: str) -> Entry | None:
        """Take ``queue_id`` from queue ``state`` for this process; None if another was first."""
        name = f"{queue_id}@{self.pid}"
        target = f"{self._dir(CLAIMS[state])}/{name}"
        try:
            os.rename(f"{self._dir(state)}/{queue_id}", target)
        except FileNotFoundError:
            return None
        return Entry(CLAIMS[state], name, target)

    def release(
        self, entry: Entry, state: str, envelope: dict | None = None, durable: bool = True
    ) -> Entry:
        """Hand a claimed (or held) entry on to ``state``, saving its envelope first.

        ``durable=False`` skips the fsyncs, for hand-offs that nothing is acknowledged on:
        after a power loss such a hand-off may be undone (the work is done again) but is
        never half done, since the envelope is replaced by a rename that precedes the move.
        """
        if envelope is not None:
            self.write_envelope(entry, envelope, durable)
        return self._move(entry, state, durable)

    def defer(self, entry: Entry, envelope: dict, next_attempt: float) -> Entry:
        """Park in ``deferred/`` until ``next_attempt`` (kept as the directory's mtime)."""
        self.write_envelope(entry, envelope)
        os.utime(entry.where, (next_attempt, next_attempt))
        return self._move(entry, "deferred")

    def mark_corrupt(self, entry: Entry, reason: str) -> Entry:
        write_file_replacing(f"{entry.where}/{REASON}", reason.encode("utf-8") + b"\n")
        return self._move(entry, "corrupt")

    def clear_reason(self, entry: Entry) -> None:
        """Forget why an entry was put in corrupt/ (an administrator is giving it another go)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{entry.where}/{REASON}")

    def replace_message(self, entry: Entry, message: bytes) -> None:
        """Replace ``message.eml`` of a claimed entry (a cured message), durably."""
        new = f"{entry.where}/{MESSAGE}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        write_file(new, message)
        os.rename(new, f"{entry.where}/{MESSAGE}")
        fsync_dir(entry.where)

    # ------------------------------------------------------------ quarantine

    def _quarantine_dir(self, status: str) -> Path:
        if not _STATUS_RE.match(status):
            raise ValueError(f"bad quarantine status {status!r}")
        return self.root / QUARANTINE / status

    def quarantine(self, message: bytes, envelope: dict, status: str) -> Entry:
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
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        write_file(work / MESSAGE, message)
        write_file(work / ENVELOPE, _dump({**envelope, "quarantined_at": time.time()}))
        fsync_dir(work)
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
                sorted(n for n in os.listdir(base) if _STATUS_RE.match(n)) if base.is_dir() else []
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
            if _STATUS_RE.match(name) and (base / name / queue_id).is_dir():
                return name, Entry(QUARANTINE, queue_id, os.fspath(base / name / queue_id))
        raise NotFound(queue_id)

    def remove(self, entry: Entry) -> None:
        """Forget a message: one rename out of its state (durable), then delete the files."""
        grave = f"{self._dir('tmp')}/{entry.id}.removed.{self.pid}"
        os.rename(entry.where, grave)
        fsync_dir(os.path.dirname(entry.where))
        try:
            os.unlink(f"{grave}/{MESSAGE}")
            os.unlink(f"{grave}/{ENVELOPE}")
            os.rmdir(grave)
        except OSError:  # not the usual two files: whatever is there goes
            shutil.rmtree(grave, ignore_errors=True)

    def move(self, queue_id: str, from_states: tuple[str, ...], to_state: str) -> Entry:
        """Administrator's move of an unclaimed message, e.g. hold or requeue."""
        entry = self.find(queue_id, from_states)
        return self._move(entry, to_state)

    def promote_due(self, now: float | None = None) -> tuple[list[str], float | None]:
        """Move every deferred entry whose next attempt has come into ``ready/``.

        Returns the IDs moved and the earliest next attempt among those left (None if none).
        """
        now = time.time() if now is None else now
        due, later = [], []
        with os.scandir(self.state_dir("deferred")) as it:
            for e in it:
                if ID_RE.match(e.name):
                    mtime = e.stat().st_mtime
                    (due if mtime <= now else later).append((e.name, mtime))
        moved = []
        for name, _mtime in sorted(due):
            try:
                os.rename(self.state_dir("deferred") / name, self.state_dir("ready") / name)
            except FileNotFoundError:
                continue
            moved.append(name)
        if moved:
            fsync_dir(self.state_dir("ready"))
        return moved, min((m for _n, m in later), default=None)

    # ------------------------------------------------------------ recovery

    def recover(
        self, max_attempts: int, pid: int | None = None, alive: Callable[[int], bool] | None = None
    ) -> list[tuple[str, str]]:
        """Return the claims of ``pid`` to their queues; when None, of every owner not ``alive``.

        Call only when that owner is known to be dead: at supervisor start, or after reaping.
        Each recovered message has its ``crashes`` count raised; at ``max_attempts`` it goes to
        ``corrupt/`` instead. Returns (queue ID, new state) pairs.
        """
        moved = []
        for claimed, queue in RETURNS.items():
            for entry in list(self.entries(claimed)):
                if not _abandoned(entry.owner, pid, alive):
                    continue
                moved.append((entry.id, self.return_claim(entry, queue, max_attempts)))
        self.clean_tmp(pid, alive)
        return moved

    def return_claim(self, entry: Entry, queue: str, max_attempts: int) -> str:
        """Put a claim whose processing died back in ``queue``, or in corrupt/ at the limit."""
        try:
            envelope = entry.read_envelope()
        except (OSError, ValueError) as exc:
            self.mark_corrupt(entry, f"unreadable envelope: {exc}")
            return "corrupt"
        envelope["crashes"] = envelope.get("crashes", 0) + 1
        if envelope["crashes"] >= max_attempts:
            self.write_envelope(entry, envelope)
            self.mark_corrupt(
                entry,
                f"its processing killed the {CLAIMS[queue]} worker "
                f"{envelope['crashes']} times (MaxAttempts={max_attempts})",
            )
            return "corrupt"
        self.release(entry, queue, envelope)
        return queue

    def clean_tmp(self, pid: int | None = None, alive: Callable[[int], bool] | None = None) -> None:
        """Remove unfinished writes of ``pid`` (when None: of every owner not ``alive``).

        What is in tmp/ was never acknowledged (or was already removed from its queue).
        """
        with os.scandir(self.state_dir("tmp")) as it:
            names = [e.name for e in it]
        for name in names:
            owner = name.rpartition("@")[2] if "@" in name else name.rpartition(".")[2]
            if owner.isdigit() and _abandoned(int(owner), pid, alive):
                shutil.rmtree(self.state_dir("tmp") / name, ignore_errors=True)


def _abandoned(owner: int | None, pid: int | None, alive: Callable[[int], bool] | None) -> bool:
    """May this owner's claims and unfinished writes be taken back?

    Yes when it is ``pid`` (just reaped); with no ``pid``, when ``alive`` does not vouch for it.
    """
    if owner is None:
        return False
    if pid is not None:
        return owner == pid
    return alive is None or not alive(owner)


def write_file_replacing(path: Path | str, data: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    write_file(path, data)


def _dump(envelope: dict) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8") + b"\n"
