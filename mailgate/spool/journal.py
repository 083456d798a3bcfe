"""The journal: one JSON line per message event, the raw material of reports and traffic alerts.

Counters say how many; reports need who and what (top viruses, top spam senders, volume per
hour), so the receiver, scanners and senders also append one line per message event to a file
of their own, ``stats/journal/<day>/<role>-<pid>.jsonl``. No locks and no sharing: each file
has one writer, each line leaves in one write(2), and a reader skips a torn last line.

Events (``ev``) and their fields, besides ``t`` (Unix time) and ``qid``:
- ``received``: ``from``, ``to`` (recipients), ``size``, ``client``
- ``scanned``: ``from``, ``to``, ``virus`` (status), ``viruses`` (names), ``spam`` (status),
  ``score``, ``rules`` (the spam rules that fired, with their weights), ``actions``
- ``quarantined``: ``status`` (the quarantine it went to)
- ``delivered`` / ``bounced``: ``to`` (the recipients concerned), ``replies`` (each
  recipient's ``[address, reply, next hop]``)
- ``deferred``: ``to`` (recipients still pending), ``reply`` (the last error), ``retry``
  (when the next attempt is due)
- ``released``: ``status``, ``new_id`` (the queue ID of the released copy)

``mailgate track`` (``ops.track``) reads a message's life back from these lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator

from mailgate.spool import Spool


def day_of(when: float) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(when))


class Journal:
    """The journal file of this process; opened per day, on the first event of the day."""

    def __init__(self, spool: Spool, role: str):
        self.spool = spool
        self.role = role
        self.day = ""
        self.fd: int | None = None

    def write(self, event: str, queue_id: str, at: float | None = None, **fields) -> None:
        """Append one event; ``at`` when it happened, if that was before now (an event
        journaled after the step it records, which other processes may already follow)."""
        now = time.time() if at is None else at
        line = json.dumps({"t": round(now, 3), "ev": event, "qid": queue_id, **fields})
        try:
            day = day_of(now)
            if day != self.day or self.fd is None:
                self._open(day)
            os.write(self.fd, (line + "\n").encode("utf-8", "backslashreplace"))
        except OSError:
            pass  # statistics must never stop or lose mail

    def _open(self, day: str) -> None:
        self.close()
        folder = self.spool.journal_dir(day)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{self.role}-{os.getpid()}.jsonl"
        self.fd = os.open(folder / name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.day = day

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read(spool: Spool, since: float, until: float | None = None) -> Iterator[dict]:
    """Every event with ``since <= t < until``, file by file (not in time order)."""
    until = time.time() + 1 if until is None else until
    first, last = day_of(since), day_of(until)
    for day in spool.journal_days():
        if not first <= day <= last:
            continue
        folder = spool.journal_dir(day)
        for name in sorted(os.listdir(folder)):
            yield from _events(folder / name, since, until)


def _events(path, since: float, until: float) -> Iterator[dict]:
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
        for raw in handle:
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # the last line of a file whose writer died mid-write
            if isinstance(event, dict) and since <= event.get("t", 0) < until:
                yield event


def expire(spool: Spool, retention: float, now: float | None = None) -> list[str]:
    """Remove the days older than ``retention``; the days removed."""
    cutoff = day_of((time.time() if now is None else now) - retention)
    removed = []
    for day in spool.journal_days():
        if day < cutoff:
            shutil.rmtree(spool.journal_dir(day), ignore_errors=True)
            removed.append(day)
    return removed
