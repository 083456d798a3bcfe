"""``mailgate queue``: list, show, requeue, hold, release and delete queued messages."""

from __future__ import annotations

import argparse
import json
import sys
import time

from mailgate.cli.common import (
    EXIT_BUSY,
    EXIT_NOT_FOUND,
    EXIT_OK,
    CommandError,
    age,
    find_entry,
    span,
)
from mailgate.config import Config
from mailgate.message.headers import header_block
from mailgate.spool import STATES, Spool, queueops


def run(args: argparse.Namespace, config: Config) -> int:
    spool = Spool(config.spool_path)
    if not spool.state_dir("incoming").is_dir():
        raise CommandError(
            f"no spool at {spool.root} (has 'mailgate run' been started?)", EXIT_NOT_FOUND
        )
    action = args.action
    if action == "list":
        rows = [
            queueops.summary(e)
            for state in (args.state or STATES[1:])
            for e in spool.entries(state)
        ]
        if args.json:
            print(json.dumps(rows, indent=1))
            return EXIT_OK
        for row in rows:
            rcpts = row["recipients"]
            more = f" (+{len(rcpts) - 1})" if len(rcpts) > 1 else ""
            print(
                f"{row['id']}  {row['state']:<8} {row['size'] or 0:>9}  "
                f"{age(row['received_at']):>4}  <{row['sender']}> -> "
                f"{'<' + rcpts[0] + '>' if rcpts else '-'}{more}"
                + next_try(row)
                + (
                    f"  [{row['last_error'] or row['reason']}]"
                    if row["last_error"] or row["reason"]
                    else ""
                )
            )
        print(f"{len(rows)} message(s)", file=sys.stderr)
        return EXIT_OK
    if action == "show":
        entry = find_entry(spool, args.id)
        try:
            envelope = entry.read_envelope()
        except (OSError, ValueError) as exc:
            raise CommandError(
                f"{entry.id} in {entry.state}: unreadable envelope ({exc}); "
                f"reason: {entry.read_reason() or 'none'}",
                EXIT_BUSY,
            ) from None
        if args.json:
            print(
                json.dumps(
                    {"state": entry.state, "reason": entry.read_reason(), "envelope": envelope},
                    indent=1,
                )
            )
            return EXIT_OK
        print(f"id: {entry.id}\nstate: {entry.state}\nfrom: <{envelope['mail_from']}>")
        for rcpt in envelope["recipients"]:
            print(f"to: <{rcpt['address']}> {rcpt['status']} {rcpt.get('reply') or ''}".rstrip())
        if entry.read_reason():
            print(f"reason: {entry.read_reason().strip()}")
        print()
        head = header_block(entry.read_message()).rstrip(b"\r\n")
        print(head.decode("utf-8", "replace").replace("\r\n", "\n"))
        return EXIT_OK
    if action == "requeue" and args.deferred:
        moved = spool.requeue_all_deferred()
        print(f"{len(moved)} message(s) requeued")
        return EXIT_OK
    entry = find_entry(spool, args.id)
    try:
        print(queueops.act(spool, action, entry))
    except queueops.Refused as exc:
        raise CommandError(str(exc), EXIT_BUSY) from None
    return EXIT_OK


def next_try(row: dict) -> str:
    """``  next try 14:05 (in 3h)`` for a deferred message; JSON keeps the epoch seconds."""
    when = row.get("next_attempt")
    if row["state"] != "deferred" or not when:
        return ""
    wait = when - time.time()
    clock = time.strftime("%H:%M" if wait < 86400 else "%Y-%m-%d %H:%M", time.localtime(when))
    return f"  next try {clock} ({'due' if wait <= 0 else 'in ' + span(wait)})"
