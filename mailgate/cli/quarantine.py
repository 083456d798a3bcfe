"""``mailgate quarantine``: list, show, release, delete and expire quarantined messages."""

from __future__ import annotations

import argparse
import json
import sys
import time

from mailgate.cli.common import (
    EXIT_BUSY,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    check_days,
)
from mailgate.config import Config
from mailgate.ops import nodes
from mailgate.runtime.cluster import Cluster
from mailgate.spool import STATUS_RE, InvalidQueueID, NotFound, Spool, quarantine


def run(args: argparse.Namespace, config: Config) -> int:
    spool = Spool(config.spool_path)

    if args.action == "expire":
        removed = quarantine.expire(spool, config.quarantine_retention)
        for status, queue_id in removed:
            print(f"{queue_id}: expired from quarantine/{status}")
        print(f"{len(removed)} expired")
        return EXIT_OK
    if args.action == "list":
        check_days(args.since, args.until)
        if args.status and not STATUS_RE.match(args.status):
            raise CommandError(f"invalid status {args.status!r}", EXIT_USAGE)
        rows, note = nodes.quarantined_everywhere(
            config,
            spool,
            Cluster(config),
            args.status,
            sender=args.sender,
            recipient=args.recipient,
            subject=args.subject,
            since=args.since,
            until=args.until,
        )
        if note:
            print(f"mailgate: {note}", file=sys.stderr)
        if args.json:
            print(json.dumps(rows, indent=1))
        else:
            for row in rows:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["quarantined_at"]))
                print(
                    f"{row['id']}  {row['status']:<12} {when}  {row['sender'] or '<>'} -> "
                    f"{', '.join(row['recipients'])}  {row['subject']!r}"
                )
        return EXIT_OK
    try:
        status, entry = spool.find_quarantined(args.id)
    except InvalidQueueID as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except NotFound:
        return _elsewhere(args, config)
    if args.action == "show":
        row = quarantine.summary(status, entry)
        row["verdict"] = entry.read_envelope().get("verdict")
        if args.json:
            print(json.dumps(row, indent=1))
        else:
            for key, value in row.items():
                print(f"{key}: {json.dumps(value) if not isinstance(value, str) else value}")
        return EXIT_OK
    if args.action == "release":
        new_id = quarantine.release(spool, status, entry)
        print(f"{entry.id}: released from quarantine/{status} as {new_id}")
        return EXIT_OK
    spool.remove(entry)
    print(f"{entry.id}: deleted from quarantine/{status}")
    return EXIT_OK


def _elsewhere(args: argparse.Namespace, config: Config) -> int:
    """A message not in this node's quarantine: in a cluster, have the node that holds it
    release or delete it (``ops.nodes``); its answer is printed."""
    cluster = Cluster(config)
    found = nodes.holder(cluster, args.id) if cluster.enabled else None
    if found is None or args.action not in nodes.ACTIONS:
        where = "quarantine" if found is None else f"this node's quarantine (node {found[0]})"
        raise CommandError(f"no message {args.id} in {where}", EXIT_NOT_FOUND)
    node, status = found
    answer = nodes.request(cluster, node, args.action, status, args.id)
    print(f"node {node}: {answer}")
    if " released from " in answer or " deleted from " in answer:
        return EXIT_OK
    return EXIT_BUSY if "answer" in answer else EXIT_NOT_FOUND
