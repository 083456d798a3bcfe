"""``mailgate archive``: list, search, show, export and expire archived mail."""

from __future__ import annotations

import argparse
import json
import re
import sys

from mailgate.cli.common import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import Config
from mailgate.spool import InvalidQueueID, Spool, archive, check_id


def run(args: argparse.Namespace, config: Config) -> int:
    spool = Spool(config.spool_path)

    if args.action == "expire":
        for day in spool.expire_archive(config.archive_retention):
            print(f"archive/{day}: expired")
        return EXIT_OK
    if args.action in ("list", "search"):
        filters = {}
        if args.action == "search":
            for day in (args.since, args.until):
                if day and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
                    raise CommandError(f"a day is YYYY-MM-DD, got {day!r}", EXIT_USAGE)
            filters = {
                "sender": args.sender,
                "recipient": args.recipient,
                "subject": args.subject,
                "since": args.since,
                "until": args.until,
                "queue_id": args.queue_id,
            }
        rows = list(archive.search(spool, args.kind, **filters))
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            for row in rows:
                print(
                    f"{row['id']}  {row['kind']:<8} {row['date']}  {row['sender'] or '<>'} -> "
                    f"{', '.join(row['recipients'])}  {row['subject']!r}"
                )
        return EXIT_OK
    try:
        check_id(args.id)
    except InvalidQueueID as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    found = archive.find(spool, args.id, args.kind)
    if found is None:
        raise CommandError(f"no message {args.id} in the archive", EXIT_NOT_FOUND)
    kind, day, entry = found
    if args.action == "export":
        sys.stdout.buffer.write(entry.read_message())
        sys.stdout.buffer.flush()
        return EXIT_OK
    row = archive.summary(kind, day, entry)
    row["envelope"] = entry.read_envelope()
    print(json.dumps(row, indent=1))
    return EXIT_OK
