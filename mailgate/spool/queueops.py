"""What an administrator does to a queued message (CLI ``queue`` and the web console alike).

Every action is one spool rename: requeue (deferred → ready, corrupt → incoming), hold,
release, delete. A message a worker holds (``scanning/``, ``sending/``) is left alone.
"""

from __future__ import annotations

import os

from mailgate.spool import RETURNS, Entry, Spool
from mailgate.spool import envelope as envmod

ACTIONS = ("requeue", "hold", "release", "delete")


class Refused(Exception):
    """The action does not apply to the message as it is now (busy, wrong state)."""


def summary(entry: Entry) -> dict:
    """One queued message as the ``queue list --json`` row."""
    try:
        env = entry.read_envelope()
    except (OSError, ValueError):
        env = {}
    return {
        "id": entry.id,
        "state": entry.state,
        "owner": entry.owner,
        "size": env.get("size"),
        "sender": env.get("mail_from"),
        "recipients": [r["address"] for r in env.get("recipients", [])],
        "pending": [
            r["address"] for r in env.get("recipients", []) if r["status"] == envmod.PENDING
        ],
        "received_at": env.get("received_at"),
        "attempts": env.get("attempts"),
        "next_attempt": _next_attempt(entry, env),
        "last_error": env.get("last_error"),
        "reason": entry.read_reason(),
    }


def act(spool: Spool, action: str, entry: Entry) -> str:
    """Carry out ``action`` on ``entry``; what was done, in words. Raises ``Refused``."""
    if entry.state in RETURNS:
        raise Refused(f"{entry.id} is being processed by pid {entry.owner}; try again")
    try:
        return _act(spool, action, entry)
    except FileNotFoundError:
        raise Refused(f"{entry.id} was taken by a worker meanwhile; try again") from None


def _act(spool: Spool, action: str, entry: Entry) -> str:
    if action == "delete":
        spool.remove(entry)
        return f"{entry.id}: deleted from {entry.state}"
    if action == "hold":
        if entry.state not in ("incoming", "ready", "deferred"):
            raise Refused(f"{entry.id} is in {entry.state}; only queued mail can be held")
        spool.move(entry.id, (entry.state,), "hold")
        return f"{entry.id}: held"
    if action == "release" and entry.state != "hold":
        raise Refused(f"{entry.id} is in {entry.state}, not held")
    if action not in ACTIONS:
        raise Refused(f"unknown action {action!r}")
    if entry.state in ("incoming", "ready"):
        return f"{entry.id}: already queued in {entry.state}"
    envelope = entry.read_envelope()
    target = "ready" if envelope.get("scanned") else "incoming"
    if entry.state == "corrupt":
        envelope["crashes"] = 0
        target = "incoming"
        spool.clear_reason(entry)
    envmod.record(envelope, target, action)
    spool.release(entry, target, envelope)
    return f"{entry.id}: {entry.state} -> {target}"


def _next_attempt(entry: Entry, env: dict) -> float | None:
    """A deferred message's next try is its directory's mtime (what the sender goes by, and
    what an administrator's ``touch`` changes); elsewhere, what the envelope last said."""
    if entry.state == "deferred":
        try:
            return os.stat(entry.where).st_mtime
        except FileNotFoundError:
            pass
    return env.get("next_attempt")
