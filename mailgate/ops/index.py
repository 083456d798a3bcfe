"""The search index: a SQLite database (WAL, FTS5) of what ``archive/``, ``quarantine/`` and the
journal hold, so that "where is my mail?" is answered without reading every file.

It is a cache, never the truth: files in the spool decide. It can be deleted at any time
(``mailgate index rebuild``, or the indexer at its start when it is missing or does not
open); while it is being built (``meta.state`` is not ``ready``) every query falls back to
walking the files. One process writes it, the indexer (``ops.indexer``); commands and the
console only read it.

Each stored copy is one row of ``copies`` holding the summary the file walk would produce
(its fields as columns), so both answer with the same rows; ``words`` (FTS5, trigram tokenizer)
holds its subject and addresses, so a subject substring or the literal part of an address
mask finds candidates at once, and the same ``spool.search.matches`` as the file walk then
decides. Journal events keep their line, their file and offset (``events``), so message
tracking groups exactly the events the file walk would read, in the same order.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from mailgate.spool import ARCHIVES
from mailgate.spool.search import matches

VERSION = "3"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS copies (
    n INTEGER PRIMARY KEY,
    place TEXT NOT NULL,          -- archive | quarantine
    kind TEXT NOT NULL,           -- received | sent, or the quarantine status
    day TEXT NOT NULL,            -- the archive's day folder, or the day quarantined
    id TEXT NOT NULL,
    rank INTEGER NOT NULL,        -- the file walk's order of kinds
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,     -- one per line (addresses never hold a line break)
    subject TEXT NOT NULL,
    size INTEGER NOT NULL,
    at REAL,                      -- quarantined_at
    extra TEXT,                   -- a quarantined copy's action and objects (JSON)
    UNIQUE (place, kind, day, id)
);
CREATE INDEX IF NOT EXISTS copies_order ON copies (place, rank, day, id);
CREATE INDEX IF NOT EXISTS copies_id ON copies (id);
CREATE INDEX IF NOT EXISTS copies_day ON copies (place, day);
CREATE VIRTUAL TABLE IF NOT EXISTS words USING fts5 (subject, addresses, tokenize = 'trigram');
CREATE TABLE IF NOT EXISTS events (
    n INTEGER PRIMARY KEY,
    day TEXT NOT NULL,
    file TEXT NOT NULL,
    pos INTEGER NOT NULL,
    t REAL NOT NULL,
    qid TEXT NOT NULL,
    ref TEXT,                     -- a released copy's new queue ID
    line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (t);
CREATE INDEX IF NOT EXISTS events_qid ON events (qid);
CREATE UNIQUE INDEX IF NOT EXISTS events_file ON events (day, file, pos);
CREATE VIRTUAL TABLE IF NOT EXISTS event_words USING fts5 (addresses, tokenize = 'trigram');
CREATE TABLE IF NOT EXISTS journal_files (
    day TEXT NOT NULL, file TEXT NOT NULL, offset INTEGER NOT NULL, PRIMARY KEY (day, file)
);
"""
MAX_WANTED = 20_000  # queue IDs in one query (SQLite allows 32,766 parameters)
FTS_MIN = 3  # the trigram tokenizer finds substrings of three characters or more
LITERAL = re.compile(r"[^*?\[\]]+")


class Unavailable(Exception):
    """The index cannot answer (missing, being built, unreadable): walk the files."""


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    else:
        db = sqlite3.connect(path, timeout=60)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")  # a cache: losing the last commit is fine
    return db


def state(db: sqlite3.Connection) -> str:
    found = dict(db.execute("SELECT key, value FROM meta").fetchall())
    return found.get("state", "") if found.get("version") == VERSION else "stale"


def open_ready(path: Path) -> sqlite3.Connection:
    """A read-only connection to a complete index, or ``Unavailable``."""
    if not path.is_file():
        raise Unavailable("no index yet")
    try:
        db = connect(path, readonly=True)
        current = state(db)
    except sqlite3.Error as exc:
        raise Unavailable(f"index unreadable ({exc})") from None
    if current != "ready":
        db.close()
        raise Unavailable("index being built")
    return db


def _phrase(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _longest_literal(mask: str | None) -> str:
    """The longest run of plain characters in an ``fnmatch`` mask."""
    plain = re.split(r"[*?]", re.sub(r"\[[^\]]*\]?", "*", mask or ""))
    return max(plain, key=len, default="")


def _narrowing(terms: list[tuple[str, str | None]]) -> str:
    """An FTS5 query for the literal parts of the filters ("" when none is long enough)."""
    return " AND ".join(f"{c} : {_phrase(t)}" for c, t in terms if t and len(t) >= FTS_MIN)


# ------------------------------------------------------------------ writing


def add_copy(db: sqlite3.Connection, place: str, kind: str, day: str, row: dict) -> None:
    """Index one copy from its summary (``archive.summary`` or ``quarantine.summary``)."""
    rank = ARCHIVES.index(kind) if place == "archive" and kind in ARCHIVES else 0
    before = db.execute(
        "SELECT n FROM copies WHERE place=? AND kind=? AND day=? AND id=?",
        (place, kind, day, row["id"]),
    ).fetchone()
    if before:  # indexed again (a rebuild beside the indexer): one row, one set of words
        drop_copies(db, [before[0]])
    extra = None
    if place == "quarantine":
        extra = json.dumps({"action": row.get("action", ""), "objects": row.get("objects", [])})
    cursor = db.execute(
        "INSERT OR REPLACE INTO copies (place, kind, day, id, rank, sender, recipients, subject,"
        " size, at, extra) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (
            place,
            kind,
            day,
            row["id"],
            rank,
            row["sender"],
            "\n".join(row["recipients"]),
            row["subject"],
            row["size"],
            row.get("quarantined_at"),
            extra,
        ),
    )
    addresses = " ".join([row["sender"], *row["recipients"]])
    db.execute(
        "INSERT OR REPLACE INTO words (rowid, subject, addresses) VALUES (?,?,?)",
        (cursor.lastrowid, row["subject"], addresses),
    )


def _summary(place: str, found: tuple) -> dict:
    """The file walk's summary back from a row (same keys, same order)."""
    kind, day, queue_id, sender, rcpts, subject, size, at, extra = found
    recipients = rcpts.split("\n") if rcpts else []
    if place == "archive":
        return {
            "id": queue_id,
            "kind": kind,
            "date": day,
            "sender": sender,
            "recipients": recipients,
            "subject": subject,
            "size": size,
        }
    return {
        "id": queue_id,
        "status": kind,
        "quarantined_at": at,
        "sender": sender,
        "recipients": recipients,
        "subject": subject,
        "size": size,
        **json.loads(extra or "{}"),
    }


def drop_copies(db: sqlite3.Connection, numbers: Iterable[int]) -> None:
    numbers = [(n,) for n in numbers]
    db.executemany("DELETE FROM copies WHERE n = ?", numbers)
    db.executemany("DELETE FROM words WHERE rowid = ?", numbers)


def copies_in(db: sqlite3.Connection, place: str, kind: str, day: str | None) -> dict[str, int]:
    """queue ID → row number of what the index holds for one folder."""
    if day is None:
        rows = db.execute("SELECT id, n FROM copies WHERE place=? AND kind=?", (place, kind))
    else:
        rows = db.execute(
            "SELECT id, n FROM copies WHERE place=? AND kind=? AND day=?", (place, kind, day)
        )
    return dict(rows.fetchall())


def folders(db: sqlite3.Connection, place: str) -> set[tuple[str, str]]:
    return set(db.execute("SELECT DISTINCT kind, day FROM copies WHERE place=?", (place,)))


def add_event(db, day: str, file: str, pos: int, event: dict, line: str) -> None:
    cursor = db.execute(
        "INSERT OR IGNORE INTO events (day, file, pos, t, qid, ref, line) VALUES (?,?,?,?,?,?,?)",
        (day, file, pos, float(event.get("t", 0)), str(event.get("qid")), _ref(event), line),
    )
    if not cursor.rowcount:  # read already (a rebuild beside the indexer)
        return
    sender, rcpts = event.get("from"), event.get("to")
    if isinstance(sender, str) or isinstance(rcpts, list):
        text = " ".join([sender if isinstance(sender, str) else ""] + [str(r) for r in rcpts or []])
        db.execute(
            "INSERT INTO event_words (rowid, addresses) VALUES (?,?)", (cursor.lastrowid, text)
        )


def _ref(event: dict) -> str | None:
    new_id = event.get("new_id")
    return new_id if event.get("ev") == "released" and isinstance(new_id, str) else None


def drop_journal_day(db: sqlite3.Connection, day: str) -> None:
    db.execute(
        "DELETE FROM event_words WHERE rowid IN (SELECT n FROM events WHERE day = ?)", (day,)
    )
    db.execute("DELETE FROM events WHERE day = ?", (day,))
    db.execute("DELETE FROM journal_files WHERE day = ?", (day,))


# ------------------------------------------------------------------ reading


def counts(db: sqlite3.Connection) -> dict[str, int]:
    found = dict(db.execute("SELECT place, COUNT(*) FROM copies GROUP BY place").fetchall())
    events = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    return {
        "archive": found.get("archive", 0),
        "quarantine": found.get("quarantine", 0),
        "events": events,
    }


COLUMNS = "c.kind, c.day, c.id, c.sender, c.recipients, c.subject, c.size, c.at, c.extra"


def _copies(db, place: str, where: list[str], args: list, narrowing: str) -> Iterator[dict]:
    """Rows of ``place`` passing ``where``; with a ``narrowing`` FTS query, only among its
    matches (the query starts from them: a handful out of millions)."""
    conditions = "".join(f" AND c.{w}" for w in where)
    order = " ORDER BY c.rank, c.kind, c.day, c.id"
    if narrowing:
        sql = (
            f"SELECT {COLUMNS} FROM words CROSS JOIN copies AS c ON c.n = words.rowid"
            " WHERE words MATCH ? AND c.place = ?" + conditions + order
        )
        params = [narrowing, place, *args]
    else:
        sql = f"SELECT {COLUMNS} FROM copies AS c WHERE c.place = ?" + conditions + order
        params = [place, *args]
    for found in db.execute(sql, params):
        yield _summary(place, found)


def _search(db, place: str, kind, sender, recipient, subject, since, until, queue_id=None):
    """The copies of ``place`` matching every filter given, in the file walk's order."""
    where, args = [], []
    for clause, value in (
        ("kind = ?", kind),
        ("day >= ?", since),
        ("day <= ?", until),
        ("id = ?", queue_id),
    ):
        if value:
            where.append(clause)
            args.append(value)
    narrowing = _narrowing(
        [
            ("subject", subject),
            ("addresses", _longest_literal(sender)),
            ("addresses", _longest_literal(recipient)),
        ]
    )
    rows = _copies(db, place, where, args, narrowing)
    return [r for r in rows if matches(r, sender, recipient, subject)]


def archive(
    db: sqlite3.Connection,
    kind: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    subject: str | None = None,
    since: str | None = None,
    until: str | None = None,
    queue_id: str | None = None,
) -> list[dict]:
    """What ``spool.archive.search`` would answer, in its order."""
    return _search(db, "archive", kind, sender, recipient, subject, since, until, queue_id)


def quarantine(
    db: sqlite3.Connection,
    status: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    subject: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> list[dict]:
    """What ``spool.search.quarantined`` would answer, in its order."""
    return _search(db, "quarantine", status, sender, recipient, subject, since, until)


def events(
    db: sqlite3.Connection, since: float, sender: str | None, recipient: str | None
) -> list[dict]:
    """The journal events ``ops.track`` needs for these filters, in the file walk's order: every
    event since ``since`` of the messages whose addresses could match (and of the copies
    released from them)."""
    query = _narrowing(
        [("addresses", _longest_literal(sender)), ("addresses", _longest_literal(recipient))]
    )
    order = " ORDER BY day, file, pos"
    if not query:
        rows = db.execute("SELECT line FROM events WHERE t >= ?" + order, (since,))
        return [json.loads(line) for (line,) in rows]
    wanted = {
        q
        for (q,) in db.execute(
            "SELECT DISTINCT qid FROM events WHERE t >= ? AND n IN "
            "(SELECT rowid FROM event_words WHERE event_words MATCH ?)",
            (since, query),
        )
    }
    fresh = set(wanted)
    while fresh:  # copies released from these messages (and from those copies)
        marks = ",".join("?" * len(fresh))
        sql = f"SELECT ref FROM events WHERE ref IS NOT NULL AND t >= ? AND qid IN ({marks})"
        fresh = {r for (r,) in db.execute(sql, (since, *fresh))} - wanted
        wanted |= fresh
    if not wanted:
        return []
    if len(wanted) > MAX_WANTED:  # a mask matching most mail: reading all is no slower
        rows = db.execute("SELECT line FROM events WHERE t >= ?" + order, (since,))
        return [json.loads(line) for (line,) in rows]
    marks = ",".join("?" * len(wanted))
    sql = f"SELECT line FROM events WHERE t >= ? AND qid IN ({marks})" + order
    return [json.loads(line) for (line,) in db.execute(sql, (since, *wanted))]
