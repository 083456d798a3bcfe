"""The ``mailgate`` command line: every command, its arguments and its help."""

from __future__ import annotations

import argparse
from pathlib import Path

from mailgate import __version__
from mailgate.spool import STATES


def build() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate",
        description="SMTP mail gateway: run it, check its configuration, manage its queue.",
        epilog="Exit codes: 0 ok, 1 invalid configuration or template, 2 usage, 3 no such "
        "message (or engine unavailable, or no database to install), 4 busy or not applicable, "
        "5 already running, 6 database rejected, 7 clamd did not confirm the reload, "
        "8 run: cannot listen or cannot run as User.",
    )
    parser.add_argument("--version", action="version", version=f"mailgate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "-c",
            "--config",
            type=Path,
            default=None,
            help="configuration file (default: etc/mailgate.conf)",
        )
        return p

    # Also accepted after the action (``mailgate queue list -c FILE``); SUPPRESS keeps the
    # action's parser from resetting a -c given before it.
    again = argparse.ArgumentParser(add_help=False)
    again.add_argument("-c", "--config", type=Path, default=argparse.SUPPRESS)

    command("run", "run the gateway in the foreground (supervisor and workers)")
    command("check-config", "validate the configuration; print FILE:LINE: message per error")

    queue = command("queue", "inspect and manage the queue")
    qsub = queue.add_subparsers(dest="action", required=True, metavar="ACTION")
    lst = qsub.add_parser("list", parents=[again], help="list queued messages, oldest first")
    lst.add_argument(
        "--state", choices=STATES[1:], action="append", help="only this state (repeatable)"
    )
    lst.add_argument("--json", action="store_true", help="print a JSON array")
    show = qsub.add_parser("show", parents=[again], help="show one message's envelope and header")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    req = qsub.add_parser(
        "requeue", parents=[again], help="deliver now: deferred → ready (corrupt → incoming)"
    )
    group = req.add_mutually_exclusive_group(required=True)
    group.add_argument("id", nargs="?")
    group.add_argument("--deferred", action="store_true", help="every deferred message")
    for name, help_text in (
        ("delete", "delete a message that no worker holds"),
        ("hold", "take a message out of circulation (to hold/)"),
        ("release", "put a held message back in circulation"),
    ):
        qsub.add_parser(name, parents=[again], help=help_text).add_argument("id")

    scan = command("scan", "scan message files offline: print the verdict, queue nothing")
    scan.add_argument("--json", action="store_true", help="one JSON object per file and line")
    scan.add_argument(
        "--no-network", action="store_true", help="no DNS lookups (block lists, SPF, DKIM, DMARC)"
    )
    scan.add_argument("--client", default="", metavar="IP", help="SPF: the sending client")
    scan.add_argument("--mail-from", default="", metavar="ADDRESS", help="SPF: the MAIL FROM")
    scan.add_argument("--helo", default="", metavar="NAME", help="SPF: the HELO name")
    scan.add_argument("files", nargs="+", type=Path, metavar="FILE")

    quar = command("quarantine", "inspect, release and expire quarantined messages")
    quar_sub = quar.add_subparsers(dest="action", required=True, metavar="ACTION")
    qlist = quar_sub.add_parser("list", parents=[again], help="list quarantined messages")
    qlist.add_argument("--status", help="only this status (infected, banned, ...)")
    qlist.add_argument("--json", action="store_true", help="print a JSON array")
    qlist.add_argument("--sender", help="address mask, e.g. *@example.org")
    qlist.add_argument("--recipient", help="address mask")
    qlist.add_argument("--subject", help="text in the Subject")
    qlist.add_argument("--since", help="first day quarantined, YYYY-MM-DD")
    qlist.add_argument("--until", help="last day quarantined, YYYY-MM-DD")
    qshow = quar_sub.add_parser(
        "show", parents=[again], help="show a quarantined message's verdict and header"
    )
    qshow.add_argument("id")
    qshow.add_argument("--json", action="store_true")
    quar_sub.add_parser(
        "release", parents=[again], help="deliver the original, unscanned"
    ).add_argument("id")
    quar_sub.add_parser(
        "delete", parents=[again], help="delete a quarantined message"
    ).add_argument("id")
    quar_sub.add_parser(
        "expire", parents=[again], help="delete what is older than [smtpgw.quarantine] Retention"
    )

    arch = command("archive", "list, search, show and export archived mail")
    arch_sub = arch.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_text in (("list", "list archived messages"), ("search", "search them")):
        a = arch_sub.add_parser(name, parents=[again], help=help_text)
        a.add_argument("--kind", choices=("received", "sent"))
        a.add_argument("--json", action="store_true")
        if name == "search":
            a.add_argument("--sender", help="address mask, e.g. *@example.org")
            a.add_argument("--recipient", help="address mask")
            a.add_argument("--subject", help="text in the Subject")
            a.add_argument("--since", help="first day, YYYY-MM-DD")
            a.add_argument("--until", help="last day, YYYY-MM-DD")
            a.add_argument("--id", dest="queue_id", help="queue ID")
    for name, help_text in (("show", "show one archived message"), ("export", "print its .eml")):
        a = arch_sub.add_parser(name, parents=[again], help=help_text)
        a.add_argument("id")
        a.add_argument("--kind", choices=("received", "sent"))
    arch_sub.add_parser("expire", parents=[again], help="remove days older than Retention")

    st = command("stats", "print the counters of every process: totals and since start")
    st.add_argument("--json", action="store_true", help="print the JSON document")
    st.add_argument(
        "--cluster", action="store_true", help="every node's figures and their sum (clustered)"
    )

    rep = command("report", "traffic report: volumes per hour, top viruses, top spam senders")
    rep.add_argument("--since", default="1d", help="1d, 12h, ... ago, or a day YYYY-MM-DD")
    rep.add_argument("--format", choices=("text", "json", "html"), default="text")
    rep.add_argument("--top", type=int, default=10, help="rows in each top list")
    rep.add_argument("--mail", action="store_true", help="also mail it to the Administrator")

    tr = command("track", "each message's life from the journal: received, scanned, delivered...")
    tr.add_argument("--sender", metavar="MASK", help="envelope sender mask, e.g. '*@example.org'")
    tr.add_argument("--recipient", metavar="MASK", help="recipient mask, e.g. 'bob@*'")
    tr.add_argument("--id", dest="queue_id", metavar="ID", help="one message's queue ID")
    tr.add_argument("--since", default="1d", help="1d, 12h, ... ago, or a day YYYY-MM-DD")
    tr.add_argument("--json", action="store_true", help="one JSON document")

    pw = command("passwd", "set the web console password (in [smtpgw.admin] PasswordFile)")
    pw.add_argument("--stdin", action="store_true", help="read the password from standard input")

    update = command("update", "install a new anti-virus database and have clamd reload it")
    update.add_argument("--from", dest="source", type=Path, required=True, metavar="DIR")
    update.add_argument("--watch", action="store_true", help="keep applying new databases")

    train = command("train", "build the spam token database from folders of ham and spam")
    train.add_argument("--ham", type=Path, action="append", required=True, metavar="DIR")
    train.add_argument("--spam", type=Path, action="append", required=True, metavar="DIR")
    train.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write tokens.tsv.gz and grams.tsv.gz (default: [smtpgw.spamtest] Database)",
    )

    learn = command(
        "learn", "teach the spool's spam database: message files, folders, Maildirs, mbox files"
    )
    kind = learn.add_mutually_exclusive_group(required=True)
    kind.add_argument("--spam", action="store_true", help="these messages are spam")
    kind.add_argument("--ham", action="store_true", help="these messages are not spam")
    kind.add_argument("--forget", action="store_true", help="take these messages back out")
    learn.add_argument("files", nargs="+", type=Path, metavar="PATH")

    idx = command("index", "the search index of the archives, the quarantine and the journal")
    idx_sub = idx.add_subparsers(dest="action", required=True, metavar="ACTION")
    idx_sub.add_parser("rebuild", parents=[again], help="build it anew from the spool's files")
    idx_sub.add_parser("status", parents=[again], help="its state, size and what it holds")

    dkim = command("dkim", "DKIM signing keys")
    dkim_sub = dkim.add_subparsers(dest="action", required=True, metavar="ACTION")
    keygen = dkim_sub.add_parser(
        "keygen",
        parents=[again],
        help="write a private key (mode 0600) and print the DNS TXT record to publish",
    )
    keygen.add_argument("domain")
    keygen.add_argument("selector")
    keygen.add_argument("--bits", type=int, default=2048, choices=(1024, 2048, 3072, 4096))
    keygen.add_argument(
        "--directory", type=Path, default=None, help="where (default: dkim/ beside the config)"
    )

    tpl = command("check-template", "check notification templates; FILE:LINE: message each")
    tpl.add_argument("templates", nargs="+", type=Path, metavar="FILE")
    return parser


def build_worker() -> argparse.ArgumentParser:
    """``mailgate worker ROLE``: how the supervisor starts each worker; not in the help."""
    parser = argparse.ArgumentParser(prog="mailgate worker")
    parser.add_argument("role", choices=("receiver", "scanner", "sender", "admin", "indexer"))
    parser.add_argument("-c", "--config", type=Path, default=None)
    parser.add_argument("--snapshot", type=Path, default=None)
    parser.set_defaults(command="worker")
    return parser
