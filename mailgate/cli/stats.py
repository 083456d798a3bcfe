"""``mailgate stats`` (counters), ``mailgate report`` (traffic report, optionally mailed) and
``mailgate track`` (each message's life from the journal)."""

from __future__ import annotations

import argparse
import json
import sys

from mailgate.cli.common import EXIT_CONFIG, EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import BadValue, Config
from mailgate.ops import report, searching, track
from mailgate.runtime import stats
from mailgate.spool import Spool


def stats_command(args: argparse.Namespace, config: Config) -> int:
    spool = Spool(config.spool_path)
    snapshot = stats.Snapshot(spool)
    if args.json:
        print(json.dumps(snapshot.as_json(), indent=1))
    else:
        sys.stdout.write(stats.text_report(snapshot))
    return EXIT_OK


def report_command(args: argparse.Namespace, config: Config) -> int:
    spool = Spool(config.spool_path)

    try:
        since = report.parse_since(args.since)
    except BadValue as exc:
        raise CommandError(f"--since: {exc}", EXIT_USAGE) from None
    doc = report.build(spool, since, top=args.top)
    text = report.render(doc, args.format)
    sys.stdout.write(text)
    if args.mail:
        content_type = {"html": "text/html", "json": "application/json"}.get(
            args.format, "text/plain"
        )
        try:
            qid = report.mail(
                spool, config, f"mailgate report since {doc['from']}", text, content_type
            )
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_CONFIG) from None
        print(f"mailed to {config.administrator} as {qid}", file=sys.stderr)
    return EXIT_OK


def track_command(args: argparse.Namespace, config: Config) -> int:
    try:
        since = report.parse_since(args.since)
    except BadValue as exc:
        raise CommandError(f"--since: {exc}", EXIT_USAGE) from None
    found, note = searching.tracked(
        config, Spool(config.spool_path), since, args.sender, args.recipient, args.queue_id
    )
    if note:
        print(f"mailgate: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"since": since, "messages": found}, indent=1))
    else:
        sys.stdout.write(track.render(found))
    return EXIT_OK
