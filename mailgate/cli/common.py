"""What every command shares: exit codes, the error that carries one, finding a message.

Exit codes are a contract with administrators' scripts (the README lists them): 0 success;
1 invalid configuration (or template); 2 usage error (bad arguments, malformed queue ID);
3 no such message (``scan``: the anti-virus engine is unavailable; ``update``: no database in
the source directory); 4 the message is busy (claimed by a worker) or the action does not apply
to it in its state (``update``: the database is not managed here); 5 another ``mailgate run``
already uses this spool; 6 ``update`` rejected the new database and kept the old one; 7
``update`` installed it but clamd did not confirm the reload; 8 ``run`` cannot listen or cannot
run as ``User``.
"""

from __future__ import annotations

import re
import time

from mailgate.spool import STATES, Entry, InvalidQueueID, NotFound, Spool

EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_BUSY = 0, 1, 2, 3, 4
EXIT_ENGINE = 3


class CommandError(Exception):
    """A command that cannot do what was asked: ``mailgate: MESSAGE`` and exit ``code``."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def find_entry(spool: Spool, queue_id: str, states: tuple[str, ...] = STATES[1:]) -> Entry:
    try:
        return spool.find(queue_id, states)
    except InvalidQueueID as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except NotFound:
        where = "the queue" if states == STATES[1:] else "/".join(states)
        raise CommandError(f"no message {queue_id} in {where}", EXIT_NOT_FOUND) from None


def span(seconds: float) -> str:
    """A duration as a person reads it: ``45s``, ``12m``, ``3h``, ``2d``."""
    seconds = max(0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def age(seconds: float | None) -> str:
    """How long ago the epoch time ``seconds`` was (``?`` when unknown)."""
    return "?" if seconds is None else span(time.time() - seconds)


def check_days(*days: str | None) -> None:
    """Days given on the command line are YYYY-MM-DD (exit 2 otherwise)."""
    for day in days:
        if day and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
            raise CommandError(f"a day is YYYY-MM-DD, got {day!r}", EXIT_USAGE)
