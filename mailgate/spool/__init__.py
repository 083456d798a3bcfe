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
    stats/                  counters of every process (``live/``, ``retired.json``,
                            ``history.json``) and the per-day journal of message events
                            (``journal/<day>/``).
    log/                    ``mailgate.log``, every process's log events.

Invariants:
- A state change is one ``rename(2)`` of the message directory. Every file in it was fsync'd,
  and the directory itself, before the rename; the destination directory is fsync'd after it,
  before the change is reported as done (claims excepted: a claim lost to a power cut only
  puts the message back in its queue). Nothing but this module builds spool paths.
- A message split for several recipient groups stages its copies inside its own claim
  (``split/ID``) and hands each on with one rename, after its own envelope records the split:
  a worker that dies part way leaves every copy either staged or queued, never both.
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

import collections
import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator

from mailgate.message.content import Content
from mailgate.spool.files import (
    MessageWriter,
    dump,
    fsync_dir,
    write_entry,
    write_file,
    write_file_replacing,
)
from mailgate.spool.ids import (
    CLAIM_RE,
    ID_RE,
    InvalidQueueID,
    check_id,
    derived_id,
    id_time,
    new_queue_id,
)
from mailgate.spool.layout import (
    ARCHIVES,
    CLAIMS,
    ENVELOPE,
    MESSAGE,
    QUARANTINE,
    REASON,
    RETURNS,
    SPLIT,
    STATES,
    STATUS_RE,
    Entry,
    NotFound,
)
from mailgate.spool.stores import Stores

__all__ = [
    "ARCHIVES",
    "CLAIMS",
    "ENVELOPE",
    "ID_RE",
    "MESSAGE",
    "QUARANTINE",
    "REASON",
    "RETURNS",
    "STATES",
    "STATUS_RE",
    "Entry",
    "InvalidQueueID",
    "NotFound",
    "Spool",
    "check_id",
    "derived_id",
    "fsync_dir",
    "id_time",
    "new_queue_id",
    "write_file",
    "write_file_replacing",
]


class Spool(Stores):
    """One spool root: the queue's state transitions, on top of its paths and stores."""

    def requeue_all_deferred(self) -> list[str]:
        """Every deferred message into ready/ now (``flush``)."""
        return self.promote_due(now=float("inf"))[0]

    def names(self, state: str) -> list[str]:
        """Entry names in ``state``, oldest first (queue IDs sort by time). One scandir."""
        pattern = CLAIM_RE if state in RETURNS else ID_RE
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
        writer = self.open_message(envelope["id"], state)
        try:
            writer.write(message)
        except OSError:
            writer.abort()  # a full disk leaves no half message behind
            raise
        return Entry(state, writer.queue_id, writer.commit(envelope))

    def open_message(self, queue_id: str, state: str = "incoming") -> MessageWriter:
        """A message to be written as it arrives, then ``commit``-ted to ``state``."""
        return MessageWriter(
            f"{self._dir('tmp')}/{check_id(queue_id)}@{self.pid}", self._dir(state)
        )

    def write_envelope(self, entry: Entry, envelope: dict) -> None:
        """Replace the envelope atomically and durably: write beside, fsync, rename over."""
        new = f"{entry.where}/{ENVELOPE}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        write_file(new, dump(envelope))
        os.rename(new, f"{entry.where}/{ENVELOPE}")
        fsync_dir(entry.where)

    # ------------------------------------------------------------ moving

    def _move(self, entry: Entry, state: str) -> Entry:
        folder = self._dir(state)
        target = f"{folder}/{entry.id}"
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "already in the spool", target)
        os.rename(entry.where, target)
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

    def release(self, entry: Entry, state: str, envelope: dict | None = None) -> Entry:
        """Hand a claimed (or held) entry on to ``state``, saving its envelope first."""
        if envelope is not None:
            self.write_envelope(entry, envelope)
        return self._move(entry, state)

    def unclaim(self, entry: Entry) -> Entry:
        """Put a claim back in its queue as it is, without a write: the way back when the
        disk is full, since a rename needs no free blocks (the crash count stays as it is)."""
        return self._move(entry, RETURNS[entry.state])

    # ------------------------------------------------------------ split copies

    def stage_copy(self, entry: Entry, message: Content, envelope: dict) -> None:
        """Write a copy of a claimed message, for other recipients, inside the claim."""
        folder = f"{entry.where}/{SPLIT}"
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        write_entry(f"{folder}/{check_id(envelope['id'])}", message, envelope)
        fsync_dir(folder)
        fsync_dir(entry.where)

    def staged_copies(self, entry: Entry) -> list[str]:
        try:
            return sorted(n for n in os.listdir(f"{entry.where}/{SPLIT}") if ID_RE.match(n))
        except FileNotFoundError:
            return []

    def discard_copies(self, entry: Entry) -> None:
        """Forget copies staged by an attempt that did not get as far as recording the split."""
        shutil.rmtree(f"{entry.where}/{SPLIT}", ignore_errors=True)

    def hand_on_copies(self, entry: Entry, state: str = "ready") -> list[str]:
        """Move every staged copy into ``state``, each with one rename; the IDs moved."""
        folder, target = f"{entry.where}/{SPLIT}", self._dir(state)
        moved = self.staged_copies(entry)
        for name in moved:
            os.rename(f"{folder}/{name}", f"{target}/{name}")
        if moved:
            fsync_dir(target)
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(folder)
            fsync_dir(entry.where)
        return moved

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

    def replace_message(self, entry: Entry, message: Content) -> None:
        """Replace ``message.eml`` of a claimed entry (a cured message), durably."""
        new = f"{entry.where}/{MESSAGE}.new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(new)
        write_file(new, message)
        os.rename(new, f"{entry.where}/{MESSAGE}")
        fsync_dir(entry.where)

    # ------------------------------------------------------------ quarantine

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
                    try:
                        mtime = e.stat().st_mtime
                    except FileNotFoundError:
                        continue  # another sender promoted it between the listing and here
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
            dead = [e for e in self.entries(claimed) if _abandoned(e.owner, pid, alive)]
            held = collections.Counter(e.owner for e in dead)
            for entry in dead:
                try:
                    state = self.return_claim(entry, queue, max_attempts, held[entry.owner] > 1)
                except FileNotFoundError:
                    continue  # someone else (an administrator's mv) took it first
                moved.append((entry.id, state))
        self.clean_tmp(pid, alive if pid is not None or alive is not None else _nobody)
        return moved

    def return_claim(
        self, entry: Entry, queue: str, max_attempts: int, one_of_several: bool = False
    ) -> str:
        """Put a claim whose processing died back in ``queue``, or in corrupt/ at the limit.

        A claim that was ``one_of_several`` a dead worker held (a scanner's batch) raises
        ``batch_crashes`` instead: which of them killed it is not known, so none of them
        comes nearer to corrupt/; the worker then processes such a message alone
        (``Worker.batchable``), where a death counts. Raises FileNotFoundError when the claim
        is no longer there (someone else took it)."""
        try:
            envelope = entry.read_envelope()
        except (OSError, ValueError) as exc:
            if not os.path.isdir(entry.where):
                raise FileNotFoundError(errno.ENOENT, "claim gone", entry.where) from None
            self.mark_corrupt(entry, f"unreadable envelope: {exc}")
            return "corrupt"
        if one_of_several:
            envelope["batch_crashes"] = envelope.get("batch_crashes", 0) + 1
            self.release(entry, queue, envelope)
            return queue
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

    def clean_tmp(
        self,
        pid: int | None = None,
        alive: Callable[[int], bool] | None = None,
        older_than: float | None = None,
    ) -> list[str]:
        """Remove unfinished writes of ``pid`` (or of every owner not ``alive``) and, with
        ``older_than``, anything in tmp/ not touched for that many seconds. The names removed.

        What is in tmp/ was never acknowledged (or was already removed from its queue).
        """
        cutoff = None if older_than is None else time.time() - older_than
        removed = []
        with os.scandir(self.state_dir("tmp")) as it:
            found = list(it)
        for item in found:
            name = item.name
            owner = name.rpartition("@")[2] if "@" in name else name.rpartition(".")[2]
            by_owner = pid is not None or alive is not None
            gone = by_owner and owner.isdigit() and _abandoned(int(owner), pid, alive)
            if not gone and cutoff is not None:
                try:
                    gone = item.stat(follow_symlinks=False).st_mtime < cutoff
                except FileNotFoundError:
                    continue
            if gone:
                shutil.rmtree(self.state_dir("tmp") / name, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.state_dir("tmp") / name)  # a stray file, not a directory
                removed.append(name)
        return removed


def _nobody(_pid: int) -> bool:
    return False


def _abandoned(owner: int | None, pid: int | None, alive: Callable[[int], bool] | None) -> bool:
    """May this owner's claims and unfinished writes be taken back?

    Yes when it is ``pid`` (just reaped); with no ``pid``, when ``alive`` does not vouch for it.
    """
    if owner is None:
        return False
    if pid is not None:
        return owner == pid
    return alive is None or not alive(owner)
