"""The ``mailgate`` command. Exit codes (documented in the README):

0 success; 1 invalid configuration (or template); 2 usage error (bad arguments, malformed
queue ID); 3 no such message (``scan``: the anti-virus engine is unavailable; ``update``: no
database in the source directory); 4 the message is busy (claimed by a worker) or the action
does not apply to it in its state (``update``: the database is not managed here); 5 another
``mailgate run`` already uses this spool; 6 ``update`` rejected the new database and kept the
old one; 7 ``update`` installed it but clamd did not confirm the reload.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from mailgate import config as configmod
from mailgate import log as logmod
from mailgate import queueops, stats
from mailgate.spool import STATES, Entry, InvalidQueueID, NotFound, Spool

EXIT_OK, EXIT_CONFIG, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_BUSY = 0, 1, 2, 3, 4
EXIT_ENGINE = 3
UNCLAIMED = ("incoming", "ready", "deferred", "hold", "corrupt")


class CommandError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate",
        description="SMTP mail gateway: run it, check its configuration, manage its queue.",
        epilog="Exit codes: 0 ok, 1 invalid configuration or template, 2 usage, 3 no such "
        "message (or engine unavailable, or no database to install), 4 busy or not applicable, "
        "5 already running, 6 database rejected, 7 clamd did not confirm the reload, "
        "8 run: cannot listen or cannot run as User.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    worker = command("worker", "run one worker process (started by 'mailgate run')")
    worker.add_argument("role", choices=("receiver", "scanner", "sender", "admin"))
    worker.add_argument("--snapshot", type=Path, default=None)

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
    scan.add_argument("--no-network", action="store_true", help="no DNS block list lookups")
    scan.add_argument("files", nargs="+", type=Path, metavar="FILE")

    quar = command("quarantine", "inspect, release and expire quarantined messages")
    quar_sub = quar.add_subparsers(dest="action", required=True, metavar="ACTION")
    qlist = quar_sub.add_parser("list", parents=[again], help="list quarantined messages")
    qlist.add_argument("--status", help="only this status (infected, banned, ...)")
    qlist.add_argument("--json", action="store_true", help="print a JSON array")
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

    rep = command("report", "traffic report: volumes per hour, top viruses, top spam senders")
    rep.add_argument("--since", default="1d", help="1d, 12h, ... ago, or a day YYYY-MM-DD")
    rep.add_argument("--format", choices=("text", "json", "html"), default="text")
    rep.add_argument("--top", type=int, default=10, help="rows in each top list")
    rep.add_argument("--mail", action="store_true", help="also mail it to the Administrator")

    pw = command("passwd", "set the web console password ([smtpgw.admin] PasswordHash)")
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
        help="where to write tokens.tsv.gz (default: [smtpgw.spamtest] Database)",
    )

    learn = command("learn", "teach the spool's spam database a correction")
    kind = learn.add_mutually_exclusive_group(required=True)
    kind.add_argument("--spam", action="store_true", help="these messages are spam")
    kind.add_argument("--ham", action="store_true", help="these messages are not spam")
    learn.add_argument("files", nargs="+", type=Path, metavar="FILE")

    tpl = command("check-template", "check notification templates; FILE:LINE: message each")
    tpl.add_argument("templates", nargs="+", type=Path, metavar="FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = configmod.load(args.config, text_from=getattr(args, "snapshot", None))
    except configmod.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"{config.path}: OK")
        return EXIT_OK
    if args.command in ("run", "worker"):
        os.umask(0o077)  # spool, logs, quarantine, caches: readable by the gateway alone
    logmod.setup(
        getattr(args, "role", None) or args.command,
        config.log_level,
        logmod.file_for(config) if args.command in ("run", "worker") else None,
    )
    if args.command in ("queue", "quarantine", "archive", "update", "learn", "report", "stats"):
        from mailgate import privileges

        privileges.act_as_spool_owner(config.user, config.spool_path)
    if args.command == "run":
        from mailgate import supervisor

        return supervisor.run(config)
    if args.command == "worker":
        return _worker(args.role, config, args.snapshot)
    try:
        if args.command == "check-template":
            return _check_templates(args.templates)
        if args.command == "scan":
            return _scan(args, config)
        if args.command == "quarantine":
            return _quarantine(args, config, Spool(config.spool_path))
        if args.command == "update":
            return _update(args, config, Spool(config.spool_path))
        if args.command == "archive":
            return _archive(args, config, Spool(config.spool_path))
        if args.command == "stats":
            return _stats(args, Spool(config.spool_path))
        if args.command == "report":
            return _report(args, config, Spool(config.spool_path))
        if args.command == "passwd":
            return _passwd(args, config)
        if args.command == "train":
            return _train(args, config)
        if args.command == "learn":
            return _learn(args, config, Spool(config.spool_path))
        return _queue(args, Spool(config.spool_path))
    except CommandError as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return exc.code


def _worker(role: str, config: configmod.Config, snapshot: Path | None) -> int:
    from mailgate.supervisor import exit_with_parent

    exit_with_parent()
    stats.start(Spool(config.spool_path))
    if role == "receiver":
        from mailgate import receiver

        return receiver.run(config, snapshot)
    if role == "admin":
        from mailgate import console

        return console.run(config, snapshot)
    if role == "scanner":
        from mailgate.scanner import Scanner

        return Scanner(config, snapshot).run()
    from mailgate.sender import Sender

    return Sender(config, snapshot).run()


# ---------------------------------------------------------------- queue


def _find(spool: Spool, queue_id: str, states: tuple[str, ...] = STATES[1:]) -> Entry:
    try:
        return spool.find(queue_id, states)
    except InvalidQueueID as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except NotFound:
        where = "the queue" if states == STATES[1:] else "/".join(states)
        raise CommandError(f"no message {queue_id} in {where}", EXIT_NOT_FOUND) from None


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _queue(args: argparse.Namespace, spool: Spool) -> int:
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
                f"{_age(row['received_at']):>4}  <{row['sender']}> -> "
                f"{'<' + rcpts[0] + '>' if rcpts else '-'}{more}"
                + (
                    f"  [{row['last_error'] or row['reason']}]"
                    if row["last_error"] or row["reason"]
                    else ""
                )
            )
        print(f"{len(rows)} message(s)", file=sys.stderr)
        return EXIT_OK
    if action == "show":
        entry = _find(spool, args.id)
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
        from mailgate.mime import header_block

        head = header_block(entry.read_message()).rstrip(b"\r\n")
        print(head.decode("utf-8", "replace").replace("\r\n", "\n"))
        return EXIT_OK
    if action == "requeue" and args.deferred:
        moved = spool.requeue_all_deferred()
        print(f"{len(moved)} message(s) requeued")
        return EXIT_OK
    entry = _find(spool, args.id)
    try:
        print(queueops.act(spool, action, entry))
    except queueops.Refused as exc:
        raise CommandError(str(exc), EXIT_BUSY) from None
    return EXIT_OK


# ---------------------------------------------------------------- anti-virus


def _check_templates(paths: list[Path]) -> int:
    from mailgate import notify

    problems = [p for path in paths for p in notify.check(path)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    for path in paths:
        print(f"{path}: OK")
    return EXIT_OK


def _scan(args: argparse.Namespace, config: configmod.Config) -> int:
    import contextlib

    from mailgate import avdb, clamd
    from mailgate.antivirus import Engine, EngineUnavailable
    from mailgate.scanner import Inspector

    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise CommandError(f"no such file: {', '.join(missing)}", EXIT_USAGE)
    with contextlib.ExitStack() as stack:
        engine = None
        if config.av_enabled:
            engine = Engine(config.clamd_socket_path, config.object_timeout)
            if not engine.ping():
                if not config.manage_clamd:
                    raise CommandError(
                        f"clamd does not answer at {config.clamd_socket_path}", EXIT_ENGINE
                    )
                database = avdb.current(Spool(config.spool_path))
                if not database.is_dir():
                    database = config.signatures_path
                try:
                    socket_path = stack.enter_context(
                        clamd.temporary(database, config.clamd_start_timeout)
                    )
                except (RuntimeError, FileNotFoundError) as exc:
                    raise CommandError(f"cannot start clamd: {exc}", EXIT_ENGINE) from None
                engine = Engine(socket_path, config.object_timeout)
        spam = None
        if config.spam_enabled:
            from mailgate.spamtest import Spamtest

            spam = Spamtest(config, None, network=config.spam_network and not args.no_network)
        inspector = Inspector(config, engine, types=True, spam=spam)
        for path in args.files:
            try:
                inspection = inspector.inspect(path.read_bytes())
            except EngineUnavailable as exc:
                raise CommandError(f"{path}: {exc}", EXIT_ENGINE) from None
            result = {"file": str(path), **inspection.public()}
            if args.json:
                print(json.dumps(result), flush=True)
            else:
                found = [
                    f"{o['name'] or o['content_type']}: {o['status']} {o['detail']}".strip()
                    for o in result["objects"]
                    if o["status"] != "clean"
                ]
                spam_line = ""
                if result["spam"]:
                    spam_line = (
                        f"; spam: {result['spam']['status']} score {result['spam']['score']}"
                        f" of {result['spam']['required']}"
                    )
                print(
                    f"{path}: {result['status']} ({result['action']}){spam_line}"
                    + "".join(f"\n  {line}" for line in found),
                    flush=True,
                )
    return EXIT_OK


def _quarantine(args: argparse.Namespace, config: configmod.Config, spool: Spool) -> int:
    from mailgate import quarantine
    from mailgate.spool import InvalidQueueID, NotFound

    if args.action == "expire":
        removed = quarantine.expire(spool, config.quarantine_retention)
        for status, queue_id in removed:
            print(f"{queue_id}: expired from quarantine/{status}")
        print(f"{len(removed)} expired")
        return EXIT_OK
    if args.action == "list":
        try:
            rows = [quarantine.summary(s, e) for s, e in spool.quarantined(args.status)]
        except ValueError:
            raise CommandError(f"invalid status {args.status!r}", EXIT_USAGE) from None
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
        raise CommandError(f"no message {args.id} in quarantine", EXIT_NOT_FOUND) from None
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


def _update(args: argparse.Namespace, config: configmod.Config, spool: Spool) -> int:
    from mailgate import avdb

    if not args.source.is_dir():
        raise CommandError(f"no such directory: {args.source}", avdb.NO_SOURCE)
    if not args.watch:
        code = EXIT_OK
        for part_code, text in _update_once(spool, config, args.source):
            print(f"mailgate update: {text}", file=sys.stderr if part_code else sys.stdout)
            code = max(code, part_code)
        return code
    stop = threading.Event()

    def on_signal(_signum, _frame):
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    log = logmod.get()

    def report(code: int, text: str) -> None:
        (log.info if code == 0 else log.error)("database_update", code=code, result=text)

    return avdb.watch(spool, config, args.source, report, stop, _update_once)


def _update_once(spool: Spool, config: configmod.Config, source: Path) -> list[tuple[int, str]]:
    """Apply what ``source`` holds: a token table, signature files, or both."""
    from mailgate import avdb, bayes, spamtest

    results = []
    if (source / bayes.MODEL_FILE).is_file():
        spool.create()
        spamtest.ensure_seeded(spool, config.shipped("spam_database", "spamdb"))
        results.append(spamtest.update(spool, source))
    if avdb.signature_files(source):
        results.append(avdb.update(spool, config, source))
    return results or [(avdb.NO_SOURCE, f"no signature files or token table in {source}")]


# ---------------------------------------------------------------- spam database


def _message_files(folders: list[Path]) -> list[Path]:
    files = []
    for folder in folders:
        if not folder.is_dir():
            raise CommandError(f"no such directory: {folder}", EXIT_USAGE)
        files += sorted(p for p in folder.iterdir() if p.is_file())
    return files


def _train(args: argparse.Namespace, config: configmod.Config) -> int:
    from mailgate import bayes, mime

    model = bayes.Model()
    for folders, is_spam in ((args.ham, False), (args.spam, True)):
        for path in _message_files(folders):
            split = mime.split(path.read_bytes())
            model.learn(bayes.tokens(split.message, mime.decode_words), is_spam)
    target_dir = args.output or config.shipped("spam_database", "spamdb")
    target = model.save(target_dir)
    print(
        f"{target}: trained on {model.nham} ham and {model.nspam} spam, "
        f"{target.stat().st_size // 1024} KiB"
    )
    return EXIT_OK


def _learn(args: argparse.Namespace, config: configmod.Config, spool: Spool) -> int:
    from mailgate import bayes, mime, spamtest

    missing = [str(f) for f in args.files if not f.is_file()]
    if missing:
        raise CommandError(f"no such file: {', '.join(missing)}", EXIT_USAGE)
    spool.create()
    path = spamtest.ensure_seeded(spool, config.shipped("spam_database", "spamdb"))
    with spamtest.database_lock(spool):
        model = bayes.Model.load(path.parent) if path.exists() else bayes.Model()
        for file in args.files:
            split = mime.split(file.read_bytes())
            model.learn(bayes.tokens(split.message, mime.decode_words), args.spam)
        model.save(path.parent, min_count=1)
        spamtest.mark_changed(spool, "learned")
    what = "spam" if args.spam else "ham"
    print(
        f"learned {len(args.files)} message(s) as {what}; {path} now has "
        f"{model.nspam} spam and {model.nham} ham"
    )
    return EXIT_OK


# ---------------------------------------------------------------- statistics


def _stats(args: argparse.Namespace, spool: Spool) -> int:
    snapshot = stats.Snapshot(spool)
    if args.json:
        print(json.dumps(snapshot.as_json(), indent=1))
    else:
        sys.stdout.write(stats.text_report(snapshot))
    return EXIT_OK


def _report(args: argparse.Namespace, config: configmod.Config, spool: Spool) -> int:
    from mailgate import report

    try:
        since = report.parse_since(args.since)
    except configmod.BadValue as exc:
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


def _passwd(args: argparse.Namespace, config: configmod.Config) -> int:
    import getpass

    from mailgate import passwords

    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New console password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the two passwords differ; nothing changed", EXIT_USAGE)
    if len(password) < passwords.MIN_LENGTH:
        raise CommandError(
            f"a password needs at least {passwords.MIN_LENGTH} characters; nothing changed",
            EXIT_USAGE,
        )
    text = passwords.with_hash(config.text, passwords.hash_password(password))
    configmod.parse(text, config.path)  # the edit must leave a valid file
    passwords.write_config(config.path, text)
    print(f"{config.path}: PasswordHash written; 'mailgate run' picks it up on reload (SIGHUP)")
    return EXIT_OK


# ---------------------------------------------------------------- archive


def _archive(args: argparse.Namespace, config: configmod.Config, spool: Spool) -> int:
    import re

    from mailgate import archive
    from mailgate.spool import check_id

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
