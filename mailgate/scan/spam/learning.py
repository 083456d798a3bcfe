"""Learning on site: corrections from users' folders, and verdicts the filter is sure of.

The spool's token table (``spamdb/tokens.tsv.gz``) changes in two ways:

- ``mailgate learn --spam|--ham [--forget] PATH…`` reads single messages, directories of
  them, Maildir folders and mbox files (Python's ``mailbox``), and applies them at once under
  the table's lock. Every learned message is remembered by a digest of its tokens
  (``spamdb/learned.sqlite3``), as sa-learn remembers what it learned: learning it again as
  the same class does nothing, as the other class moves it over, and ``--forget`` takes it
  back out exactly.
- Auto-learning: a scanner whose verdict is beyond ``AutoLearnSpam`` or below
  ``AutoLearnHam`` (ham from TrustedNetworks only with ``AutoLearnTrustedHam``) writes the
  message's tokens to ``spamdb/autolearn/`` (one small durable file) and goes on scanning.
  Whichever scanner finds the queue non-empty in its housekeeping and the lock free merges
  it into the table; the others never wait. A crash between the merge and the removal of a
  queued file counts that message twice; nothing learned is lost.

Every write of the table is fsync'd before the rename that installs it (``bayes.Model.save``),
and every scanner re-reads a table whose mtime changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import mailbox
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

import filelock

from mailgate.config import Config
from mailgate.runtime.cluster import LOCAL, Cluster
from mailgate.scan import mime
from mailgate.scan.spam import bayes, spamtest
from mailgate.scan.spam.shared import SharedTokens
from mailgate.spool import Spool
from mailgate.spool.files import write_file

QUEUE = "autolearn"
LISTED = ("whitelisted", "blacklisted")
LEARNED = "learned.sqlite3"


class NotMail(ValueError):
    """A path that is neither a message, a folder of messages, a Maildir nor an mbox."""


def messages(path: Path) -> Iterator[bytes]:
    """The raw messages at ``path``: a Maildir (``cur``/``new``), an mbox file (it begins with
    a ``From `` line), a directory of message files, or one message file."""
    if path.is_dir():
        if (path / "cur").is_dir() and (path / "new").is_dir():
            box = mailbox.Maildir(path, factory=None, create=False)
            for key in box.iterkeys():
                with contextlib.closing(box.get_file(key)) as f:
                    yield f.read()
            return
        for child in sorted(p for p in path.iterdir() if p.is_file()):
            yield child.read_bytes()
        return
    if not path.is_file():
        raise NotMail(f"no such file or directory: {path}")
    with open(path, "rb") as f:
        first = f.read(5)
    if first == b"From ":
        box = mailbox.mbox(path, factory=None, create=False)
        try:
            for key in box.iterkeys():
                yield box.get_bytes(key)
        finally:
            box.close()
        return
    yield path.read_bytes()


def tokens_of(raw: bytes) -> set[str]:
    split = mime.split(raw)
    try:
        return bayes.tokens(split.message, mime.decode_words)
    finally:
        split.close()


def digest(tokens: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(tokens)).encode("utf-8", "replace")).hexdigest()


class Learner:
    """The spool's token table open for changes (a context manager: lock held, saved and
    fsync'd on a clean exit). ``timeout`` 0: raise ``filelock.Timeout`` at once if another
    process holds the lock."""

    def __init__(
        self, spool: Spool, shipped: Path, timeout: float = -1, cluster: Cluster | None = None
    ):
        self.spool = spool
        self.shared = SharedTokens(cluster) if cluster is not None and cluster.enabled else None
        self.path = spamtest.ensure_seeded(spool, shipped)
        self.lock = spamtest.database_lock(spool, timeout)
        self.model = bayes.Model()
        self.seen: sqlite3.Connection | None = None
        self.changed = 0

    def __enter__(self) -> Learner:
        self.lock.acquire()
        try:
            if self.path.exists():
                self.model = bayes.Model.load(self.path.parent)
            self.seen = sqlite3.connect(self.path.parent / LEARNED)
            self.seen.execute(
                "CREATE TABLE IF NOT EXISTS learned (digest TEXT PRIMARY KEY, spam INTEGER)"
            )
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.save()
        finally:
            if self.seen is not None:
                self.seen.close()
            self.lock.release()

    def save(self) -> None:
        """Install the changed table (fsync'd, renamed over) and record what was learned."""
        if self.changed:
            self.model.save(self.path.parent, min_count=1)
            spamtest.mark_changed(self.spool, "learned")
            self.seen.commit()
            self.changed = 0

    def learn(self, tokens: set[str], is_spam: bool) -> str:
        """Learn one message: ``learned``, ``moved`` (it was learned as the other class) or
        ``already`` (nothing to do)."""
        key = digest(tokens)
        if self.shared is not None:
            done = self.shared.learn(key, tokens, is_spam)
            if done is not LOCAL:
                return done
        row = self.seen.execute("SELECT spam FROM learned WHERE digest = ?", (key,)).fetchone()
        if row is not None and bool(row[0]) == is_spam:
            return "already"
        if row is not None:
            self.model.learn(tokens, not is_spam, weight=-1)
        self.model.learn(tokens, is_spam)
        self.seen.execute("INSERT OR REPLACE INTO learned VALUES (?, ?)", (key, int(is_spam)))
        self.changed += 1
        return "moved" if row is not None else "learned"

    def forget(self, tokens: set[str]) -> str:
        """Take a learned message back out: ``forgotten``, or ``unknown`` if never learned."""
        key = digest(tokens)
        if self.shared is not None:
            done = self.shared.learn(key, tokens, None)
            if done is not LOCAL and done != "unknown":
                return done
        row = self.seen.execute("SELECT spam FROM learned WHERE digest = ?", (key,)).fetchone()
        if row is None:
            return "unknown"
        self.model.learn(tokens, bool(row[0]), weight=-1)
        self.seen.execute("DELETE FROM learned WHERE digest = ?", (key,))
        self.changed += 1
        return "forgotten"

    def merge_queue(self) -> int:
        """Apply what scanners queued; the number of messages merged."""
        folder = self.spool.spamdb_root / QUEUE
        merged = []
        for name in _queued_names(self.spool):
            try:
                text = (folder / name).read_bytes().decode("utf-8", "surrogateescape")
            except FileNotFoundError:
                continue
            self.learn(set(text.splitlines()), name.endswith(".spam"))
            merged.append(name)
        self.save()
        for name in merged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(folder / name)
        return len(merged)


def queue(spool: Spool, queue_id: str, tokens: set[str], is_spam: bool) -> None:
    """A scanner's auto-learned message, written durably for a later merge."""
    folder = spool.spamdb_root / QUEUE
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    name = folder / f"{queue_id}.{'spam' if is_spam else 'ham'}"
    text = "\n".join(sorted(t for t in tokens if "\n" not in t))
    with contextlib.suppress(FileExistsError):
        write_file(name, text.encode("utf-8", "surrogateescape"))


def auto_learn(config: Config, spool: Spool, envelope: dict, verdict) -> str | None:
    """Queue a message the filter is sure of (``spam``/``ham``, or None): at or above
    AutoLearnSpam, or at or below AutoLearnHam and not from TrustedNetworks unless
    AutoLearnTrustedHam. Lists decide without a score: nothing is learned from them."""
    if not config.auto_learn or not verdict.tokens or verdict.status in LISTED:
        return None
    if verdict.score >= config.auto_learn_spam:
        is_spam = True
    elif verdict.score <= config.auto_learn_ham:
        client = (envelope.get("client") or {}).get("ip") or ""
        if client and config.is_trusted(client) and not config.auto_learn_trusted_ham:
            return None
        is_spam = False
    else:
        return None
    queue(spool, envelope["id"], verdict.tokens, is_spam)
    return "spam" if is_spam else "ham"


def _queued_names(spool: Spool) -> list[str]:
    try:
        names = os.listdir(spool.spamdb_root / QUEUE)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.endswith((".spam", ".ham")))


def queued(spool: Spool) -> bool:
    return bool(_queued_names(spool))


def merge_if_free(spool: Spool, shipped: Path, cluster: Cluster | None = None) -> int:
    """Merge the queue unless another process holds the table's lock (then it will); in a
    cluster, into the cluster's learned counts."""
    try:
        with Learner(spool, shipped, timeout=0, cluster=cluster) as learner:
            return learner.merge_queue()
    except filelock.Timeout:
        return 0
