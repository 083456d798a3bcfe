"""Filters shared by every search of stored copies (archive, quarantine), whether the rows
come from walking the files or from the index (``ops.index``): the same function decides, so
both answer alike.

Address masks are ``fnmatch`` patterns (``*@example.com``), case-insensitive; the subject
filter is a case-insensitive substring; days are ``YYYY-MM-DD``, inclusive.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator

from mailgate.spool import Spool, quarantine
from mailgate.spool.journal import day_of


def matches(
    row: dict, sender: str | None = None, recipient: str | None = None, subject: str | None = None
) -> bool:
    if sender and not fnmatch.fnmatchcase(row["sender"].lower(), sender.lower()):
        return False
    if recipient and not any(
        fnmatch.fnmatchcase(r.lower(), recipient.lower()) for r in row["recipients"]
    ):
        return False
    return not (subject and subject.lower() not in row["subject"].lower())


def quarantine_row_matches(
    row: dict,
    status: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    subject: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> bool:
    """A quarantine summary against every filter (the day is the one it was quarantined)."""
    day = day_of(row["quarantined_at"])
    if (status and row["status"] != status) or (since and day < since) or (until and day > until):
        return False
    return matches(row, sender, recipient, subject)


def quarantined(
    spool: Spool,
    status: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    subject: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> Iterator[dict]:
    """Quarantined messages matching every filter, by status then queue ID (the file walk)."""
    for found, entry in spool.quarantined(status):
        try:
            row = quarantine.summary(found, entry)
        except (OSError, ValueError):
            continue  # released or deleted while we looked
        if quarantine_row_matches(row, status, sender, recipient, subject, since, until):
            yield row
