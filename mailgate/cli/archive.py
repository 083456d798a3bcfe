"""``mailgate archive``: list, search, show, export and expire archived mail.

In a cluster ``list`` and ``search`` also ask every other live node (rows name their
``node``); ``show``, ``export`` and ``expire`` are about this node's own archive."""

from __future__ import annotations

import argparse
import json
import sys
import time

from mailgate.cli.common import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, CommandError, check_days
from mailgate.config import Config
from mailgate.ops import index, nodes
from mailgate.ops.indexer import Indexer
from mailgate.runtime.cluster import Cluster
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
            check_days(args.since, args.until)
            filters = {
                "sender": args.sender,
                "recipient": args.recipient,
                "subject": args.subject,
                "since": args.since,
                "until": args.until,
                "queue_id": args.queue_id,
            }
        rows, note = nodes.archived_everywhere(config, spool, Cluster(config), args.kind, **filters)
        if note:
            print(f"mailgate: {note}", file=sys.stderr)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            for row in rows:
                node = f"  (on {row['node']})" if row.get("node") else ""
                print(
                    f"{row['id']}  {row['kind']:<8} {row['date']}  {row['sender'] or '<>'} -> "
                    f"{', '.join(row['recipients'])}  {row['subject']!r}{node}"
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


def index_command(args: argparse.Namespace, config: Config) -> int:
    """``mailgate index rebuild`` (anew from the files) and ``mailgate index status``."""
    spool = Spool(config.spool_path)
    path = spool.index_path
    if args.action == "rebuild":
        started = time.monotonic()
        indexer = Indexer(spool)
        if not indexer.open():  # it opened a sound index: rebuild that one
            indexer.rebuild()
        indexer.db.close()
        print(f"{path}: rebuilt in {time.monotonic() - started:.1f} s")
    try:
        db = index.open_ready(path)
    except index.Unavailable as exc:
        print(f"{path}: {exc}")
        return EXIT_OK
    with db:
        counts = index.counts(db)
    db.close()
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    print(
        f"{path}: ready, {size / 1e6:.1f} MB; {counts['archive']} archived, "
        f"{counts['quarantine']} quarantined, {counts['events']} journal events"
    )
    return EXIT_OK
