"""Learning on site: corrections from users' folders, and verdicts the filter is sure of.

The spool's token table (``spamdb/tokens.tsv.gz``) changes in two ways:

- ``mailgate learn --spam|--ham [--forget] PATH…`` reads single messages, directories of
  them, Maildir folders and mbox files (Python's ``mailbox``), regular files only and none
  larger than ``MaxMessageSize``, and applies them at once under the table's lock. Run by
  root, each PATH is read by a child process with the rights of the PATH's owner (a user's
  Junk folder with hers), so a link she plants there reaches only what she can read. Every
  learned message is remembered by a digest of its tokens (``spamdb/learned.sqlite3``), as
  sa-learn remembers what it learned: learning it again as the same class does nothing, as
  the other class moves it over, and ``--forget`` takes it back out exactly.
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
from dataclasses import dataclass
from pathlib import Path

import filelock

from mailgate.config import Config, open_regular
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


@dataclass(frozen=True)
class Unreadable:
    """An entry of a folder that is passed over, and why: not a regular file (a FIFO or a
    device would block the reading or never end), larger than the largest message the
    gateway accepts, or closed to whoever reads."""

    where: str
    why: str


def messages(path: Path, largest: int) -> Iterator[bytes | Unreadable]:
    """The raw messages at ``path``: a Maildir (``cur``/``new``), an mbox file (it begins with
    a ``From `` line), a directory of message files, or one message file.

    Only regular files are read, each opened without blocking, and at most ``largest``
    bytes of a message: what a user keeps in her own folders is read, never waited on. An
    entry that cannot be read is yielded as ``Unreadable`` and the rest goes on; ``path``
    itself unreadable raises ``NotMail``."""
    if path.is_dir():
        maildir = (path / "cur").is_dir() and (path / "new").is_dir()
        for folder in (path / "cur", path / "new") if maildir else (path,):
            with os.scandir(folder) as found:
                entries = sorted(
                    (e for e in found if not e.name.startswith(".") and not _is_dir(e)),
                    key=lambda e: e.name,
                )
            for entry in entries:
                try:
                    yield _read_regular(entry.path, largest)
                except (OSError, NotMail) as exc:
                    yield Unreadable(entry.path, _why(exc))
        return
    try:
        with open_regular(path) as f:
            first = f.read(5)
    except (OSError, NotMail) as exc:
        raise NotMail(_why(exc)) from None
    if first != b"From ":
        try:
            yield _read_regular(str(path), largest)
        except (OSError, NotMail) as exc:
            yield Unreadable(str(path), _why(exc))
        return
    box = mailbox.mbox(path, factory=None, create=False)
    try:
        for key in box.iterkeys():
            with box.get_file(key) as f:
                data = f.read(largest + 1)
            if len(data) > largest:
                yield Unreadable(f"{path} message {key + 1}", f"larger than {largest} bytes")
            else:
                yield data
    finally:
        box.close()


def token_items(path: Path, largest: int) -> Iterator[list[str] | dict[str, str]]:
    """What ``mailgate learn`` takes from the messages at ``path``, in a form that crosses a
    pipe as JSON: each message's tokens, or ``{"where", "why"}`` of an entry passed over."""
    for item in messages(path, largest):
        if isinstance(item, Unreadable):
            yield {"where": item.where, "why": item.why}
        else:
            yield sorted(tokens_of(item))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _read_regular(path: str, largest: int) -> bytes:
    with open_regular(path) as f:
        data = f.read(largest + 1)
    if len(data) > largest:
        raise NotMail(f"larger than {largest} bytes")
    return data


def _why(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def tokens_of(raw: bytes) -> set[str]:
    split = mime.split(raw)
    try:
        return bayes.tokens(split.message, mime.decode_words)
    finally:
        split.close()


def digest(tokens: Iterable[str]) -> str:
    """What a message is remembered by. The From address's token (``bayes.HISTORY``) is left
    out, so a message learned before the table counted addresses is still recognised (its
    user and domain tokens name the address anyway)."""
    kept = sorted(t for t in tokens if not t.startswith(bayes.HISTORY))
    return hashlib.sha256("\n".join(kept).encode("utf-8", "replace")).hexdigest()


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
