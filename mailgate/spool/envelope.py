"""The envelope of a queued message: a JSON-friendly dict kept in ``envelope.json``.

Fields (all written by the receiver unless noted):
  id, mail_from, ret (FULL|HDRS|None), envid, body (7BIT|8BITMIME), smtputf8, size,
  client {ip, port, helo, tls}, received_at (epoch seconds),
  recipients [{address, notify (list or None), orcpt, status, reply, remote, at}],
  headers (lines the scanner asks the sender to prepend), scanned (bool),
  attempts (delivery rounds), crashes (worker deaths while it alone was claimed),
  batch_crashes (a worker holding it among other claims died), next_attempt,
  last_error, warned (delay DSN sent), kind ("dsn" for our own reports),
  history [[state, epoch seconds, who]].

Recipient ``status`` is one of ``pending`` (not yet tried or to retry), ``delivered``
(next hop said 2xx), ``relayed`` (delivered to a hop without DSN, SUCCESS reported),
``failed`` (5xx or expired; a DSN was queued when asked for).
"""

from __future__ import annotations

import os
import time

PENDING, DELIVERED, RELAYED, FAILED = "pending", "delivered", "relayed", "failed"


def new(
    queue_id: str,
    mail_from: str,
    recipients: list[dict],
    first_state: tuple[str, str] = ("incoming", "receiver"),
    **fields,
) -> dict:
    """A fresh envelope; ``first_state`` is the (state, who) its history starts with."""
    now = time.time()
    envelope = {
        "id": queue_id,
        "mail_from": mail_from,
        "ret": None,
        "envid": None,
        "body": "7BIT",
        "smtputf8": False,
        "size": 0,
        "client": {},
        "received_at": now,
        "recipients": recipients,
        "headers": [],
        "scanned": False,
        "attempts": 0,
        "crashes": 0,
        "next_attempt": None,
        "last_error": None,
        "warned": False,
        "kind": "message",
        "history": [],
    }
    envelope.update(fields)
    record(envelope, *first_state)
    return envelope


def recipient(address: str, notify: list[str] | None = None, orcpt: str | None = None) -> dict:
    return {
        "address": address,
        "notify": notify,
        "orcpt": orcpt,
        "status": PENDING,
        "reply": None,
        "remote": None,
        "at": None,
    }


def record(envelope: dict, state: str, who: str) -> None:
    envelope.setdefault("history", []).append(
        [state, round(time.time(), 6), f"{who}:{os.getpid()}"]
    )


def pending(envelope: dict) -> list[dict]:
    return [r for r in envelope["recipients"] if r["status"] == PENDING]


def wants(rcpt: dict, event: str) -> bool:
    """Does this recipient's NOTIFY ask for ``event`` (SUCCESS, FAILURE, DELAY)?

    Without NOTIFY, failures are reported and nothing else (RFC 3461 section 4.1 leaves
    the default to the MTA; this is what Postfix and sendmail do for DELAY too, in effect).
    """
    notify = rcpt.get("notify")
    if notify is None:
        return event == "FAILURE"
    return event in notify
