"""Quarantine management: what the scanner kept, and giving it back.

A quarantined message is a copy of the message as received, in ``quarantine/<status>/ID``
with its envelope and the scanner's verdict. Releasing it queues that original as a new
message straight into ``ready/`` (marked scanned, so it is not scanned again) for the
original recipients, then deletes the quarantined copy; a crash between the two can only
release it twice, never lose it.
"""

from __future__ import annotations

import email
import time

from mailgate.message.headers import POLICY, decode_words, header_block
from mailgate.spool import Entry, Spool, new_queue_id
from mailgate.spool import envelope as envmod
from mailgate.spool.journal import Journal


def summary(status: str, entry: Entry) -> dict:
    envelope = entry.read_envelope()
    header = email.message_from_bytes(read_header(entry), policy=POLICY)
    verdict = envelope.get("verdict") or {}
    return {
        "id": entry.id,
        "status": status,
        "quarantined_at": envelope.get("quarantined_at") or entry.path.stat().st_mtime,
        "sender": envelope.get("mail_from", ""),
        "recipients": [r["address"] for r in envelope.get("recipients", [])],
        "subject": decode_words(header.get("Subject")),
        "size": entry.message_path.stat().st_size,
        "action": verdict.get("action", ""),
        "objects": [o for o in verdict.get("objects", []) if o.get("status") != "clean"],
    }


def read_header(entry: Entry, limit: int = 65536) -> bytes:
    """The header of a stored message, reading no more than ``limit`` bytes of it."""
    with open(entry.message_path, "rb") as f:
        return header_block(f.read(limit))


def release(spool: Spool, status: str, entry: Entry) -> str:
    """Queue the original for its original recipients, unscanned; returns the new queue ID."""
    old = entry.read_envelope()
    message = entry.read_message()
    queue_id = new_queue_id()
    fresh = envmod.new(
        queue_id,
        old.get("mail_from", ""),
        [
            envmod.recipient(r["address"], r.get("notify"), r.get("orcpt"))
            for r in old.get("recipients", [])
        ],
        first_state=("ready", "quarantine-release"),
        ret=old.get("ret"),
        envid=old.get("envid"),
        body=old.get("body", "7BIT"),
        smtputf8=old.get("smtputf8", False),
        size=len(message),
        client=old.get("client", {}),
        scanned=True,
        released_from={"id": entry.id, "status": status},
        headers=[
            f"X-Mailgate-Queue-ID: {queue_id}",
            f"X-Mailgate-Released: from quarantine ({status}), original queue ID {entry.id}",
        ],
    )
    released_at = time.time()  # the copy may be delivered before the event below is written
    spool.enqueue(message, fresh, state="ready")
    spool.remove(entry)
    journal = Journal(spool, "quarantine")
    journal.write("released", entry.id, at=released_at, status=status, new_id=queue_id)
    journal.close()
    return queue_id


def expire(spool: Spool, retention: float, now: float | None = None) -> list[tuple[str, str]]:
    """Delete quarantined messages older than ``retention`` seconds; (status, ID) removed."""
    cutoff = (time.time() if now is None else now) - retention
    removed = []
    for status, entry in list(spool.quarantined()):
        try:
            when = entry.read_envelope().get("quarantined_at") or entry.path.stat().st_mtime
        except (OSError, ValueError):
            when = entry.path.stat().st_mtime
        if when < cutoff:
            spool.remove(entry)
            removed.append((status, entry.id))
    return removed
