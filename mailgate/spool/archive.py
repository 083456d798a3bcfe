"""The archives of received and sent mail: listing, searching, exporting.

Copies live in ``archive/<kind>/<YYYY-MM-DD>/ID`` (``message.eml`` and ``envelope.json``), written
by the receiver at enqueue (``[smtpgw.archive] Received=yes``) and by the sender after delivery
(``Sent=yes``), and removed a whole day at a time once older than ``Retention`` (the
supervisor checks every few seconds; ``mailgate archive expire`` does it at once).
"""

from __future__ import annotations

import email
from collections.abc import Iterator

from mailgate.message.headers import POLICY, decode_words
from mailgate.spool import Entry, Spool
from mailgate.spool.quarantine import read_header
from mailgate.spool.search import matches


def summary(kind: str, day: str, entry: Entry) -> dict:
    envelope = entry.read_envelope()
    header = email.message_from_bytes(read_header(entry), policy=POLICY)
    return {
        "id": entry.id,
        "kind": kind,
        "date": day,
        "sender": envelope.get("mail_from", ""),
        "recipients": [r["address"] for r in envelope.get("recipients", [])],
        "subject": decode_words(header.get("Subject")),
        "size": entry.message_path.stat().st_size,
    }


def search(
    spool: Spool,
    kind: str | None = None,
    sender: str | None = None,
    recipient: str | None = None,
    subject: str | None = None,
    since: str | None = None,
    until: str | None = None,
    queue_id: str | None = None,
) -> Iterator[dict]:
    """Archived messages matching every filter given: address masks (``*@x.com``), a
    case-insensitive Subject substring, days as YYYY-MM-DD (inclusive), a queue ID."""
    for found_kind, day, entry in spool.archived(kind):
        if (since and day < since) or (until and day > until):
            continue
        if queue_id and entry.id != queue_id:
            continue
        try:
            row = summary(found_kind, day, entry)
        except (OSError, ValueError):
            continue  # expired while we looked
        if matches(row, sender, recipient, subject):
            yield row


def find(spool: Spool, queue_id: str, kind: str | None = None) -> tuple[str, str, Entry] | None:
    for found in spool.archived(kind):
        if found[2].id == queue_id:
            return found
    return None
