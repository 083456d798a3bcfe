"""``mailgate stats`` (counters), ``mailgate report`` (traffic report, optionally mailed) and
``mailgate track`` (each message's life from the journal)."""

from __future__ import annotations

import argparse
import json
import sys

from mailgate.cli.common import EXIT_BUSY, EXIT_CONFIG, EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import BadValue, Config
from mailgate.ops import nodes, report, track
from mailgate.runtime import stats
from mailgate.runtime.cluster import Cluster
from mailgate.spool import Spool


def stats_command(args: argparse.Namespace, config: Config) -> int:
    spool = Spool(config.spool_path)
    if args.cluster:
        return _cluster_stats(args, config)
    snapshot = stats.Snapshot(spool)
    if args.json:
        print(json.dumps(snapshot.as_json(), indent=1))
    else:
        sys.stdout.write(stats.text_report(snapshot))
    return EXIT_OK


def _cluster_stats(args: argparse.Namespace, config: Config) -> int:
    """``mailgate stats --cluster``: every node's figures (as its indexer last published
    them) and their sum."""
    cluster = Cluster(config)
    if not cluster.enabled:
        raise CommandError("not in a cluster ([smtpgw.cluster] Redis is not set)", EXIT_BUSY)
    found = nodes.figures(cluster)
    if found is None:
        raise CommandError("the cluster's Redis does not answer", EXIT_BUSY)
    total = nodes.summed(list(found.values())) if found else {}
    if args.json:
        print(json.dumps({"nodes": found, "sum": total}, indent=1))
        return EXIT_OK
    names = list(found)
    print(f"{'counter':<32}" + "".join(f"{n[:16]:>17}" for n in names) + f"{'sum':>12}")
    for key, value in sorted((total.get("totals") or {}).items()):
        if isinstance(value, int | float):
            row = [(found[n].get("totals") or {}).get(key, 0) for n in names]
            print(f"{key:<32}" + "".join(f"{v:>17g}" for v in row) + f"{value:>12g}")
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
    found, note = nodes.tracked_everywhere(
        config,
        Spool(config.spool_path),
        Cluster(config),
        since,
        args.sender,
        args.recipient,
        args.queue_id,
    )
    if note:
        print(f"mailgate: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"since": since, "messages": found}, indent=1))
    else:
        sys.stdout.write(track.render(found))
    return EXIT_OK
