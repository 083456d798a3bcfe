"""Answers to "where is my mail?" for the commands and the console: from the index when it is
ready, else from the files (``note`` then says why, for the administrator to see).

Both ways give the same rows in the same order (``spool.search.matches`` decides for both; a
test compares them on a generated spool); the index only makes it fast.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from mailgate.config import Config
from mailgate.ops import index, track
from mailgate.spool import Spool, archive, journal, search

FALLBACK = "the search index is not ready ({why}); searched the files instead"


def _answer(config: Config, spool: Spool, from_index: Callable, from_files: Callable):
    if not config.index_enabled:
        return from_files(), None
    try:
        db = index.open_ready(spool.index_path)
    except index.Unavailable as exc:
        return from_files(), FALLBACK.format(why=exc)
    try:
        return from_index(db), None
    except sqlite3.Error as exc:
        return from_files(), FALLBACK.format(why=f"index unreadable: {exc}")
    finally:
        db.close()


def archived(config: Config, spool: Spool, kind: str | None = None, **filters):
    """(rows of ``archive.search``, note or None)."""
    return _answer(
        config,
        spool,
        lambda db: index.archive(db, kind, **filters),
        lambda: list(archive.search(spool, kind, **filters)),
    )


def quarantined(config: Config, spool: Spool, status: str | None = None, **filters):
    """(rows of ``search.quarantined``, note or None)."""
    return _answer(
        config,
        spool,
        lambda db: index.quarantine(db, status, **filters),
        lambda: list(search.quarantined(spool, status, **filters)),
    )


def tracked(
    config: Config,
    spool: Spool,
    since: float,
    sender: str | None = None,
    recipient: str | None = None,
    queue_id: str | None = None,
):
    """(messages of ``track.messages``, note or None)."""
    return _answer(
        config,
        spool,
        lambda db: track.grouped(
            index.events(db, since, sender, recipient), sender, recipient, queue_id
        ),
        lambda: track.grouped(journal.read(spool, since), sender, recipient, queue_id),
    )
