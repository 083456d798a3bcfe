"""``mailgate scan`` (offline verdicts of message files) and ``mailgate check-template``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from mailgate.cli.common import EXIT_CONFIG, EXIT_ENGINE, EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import Config
from mailgate.message.content import MessageFile
from mailgate.runtime.auth import lookup, spfcheck
from mailgate.runtime.auth.verdict import (
    Verdict,
    authenticate,
    author_domain,
    results_field,
    settings_of,
)
from mailgate.scan import notify
from mailgate.scan.av import archives, avdb, clamd
from mailgate.scan.av.engine import Engine, EngineUnavailable
from mailgate.scan.inspection import Inspector
from mailgate.scan.spam.spamtest import Spamtest
from mailgate.spool import Spool


def run(args: argparse.Namespace, config: Config) -> int:

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
            spam = Spamtest(config, None, network=config.spam_network and not args.no_network)
        inspector = Inspector(config, engine, types=True, spam=spam)
        checks = None
        if config.auth_enabled and not args.no_network:
            checks = lookup.configure(config.nameservers, config.auth_dns_timeout)
        spf = None
        if checks is not None and args.client:
            spf = spfcheck.check(args.client, args.mail_from, args.helo, config.auth_dns_timeout)
        for path in args.files:
            try:
                with MessageFile(path) as message:
                    inspection = inspector.inspect(message)
                    inspection.split.close()
            except EngineUnavailable as exc:
                raise CommandError(f"{path}: {exc}", EXIT_ENGINE) from None
            result = {"file": str(path), **inspection.public()}
            if checks is not None:
                result["auth"] = _authenticate(path, spf, checks, config).public()
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
                if checks is not None:
                    verdict = Verdict.from_public(result["auth"])
                    found.append(" ".join(results_field(verdict, "auth").split()[2:]))
                print(
                    f"{path}: {result['status']} ({result['action']}){spam_line}"
                    + "".join(f"\n  {line}" for line in found),
                    flush=True,
                )
    return EXIT_OK


def _authenticate(path, spf, checks, config: Config) -> Verdict:
    """SPF (when ``--client`` was given), DKIM, ARC and DMARC of one message file."""
    settings = settings_of(config)
    if path.stat().st_size > config.auth_max_size:
        with MessageFile(path) as message:
            author = author_domain(message.head(1 << 20))
        return authenticate(None, spf, checks, settings, author)
    return authenticate(path.read_bytes(), spf, checks, settings)


def check_templates(args: argparse.Namespace, config: Config) -> int:
    paths = args.templates

    problems = [p for path in paths for p in notify.check(path)]
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    for path in paths:
        print(f"{path}: OK")
    return EXIT_OK


def check_config(args: argparse.Namespace, config: Config) -> int:
    """The configuration has loaded; the spam rule files it names must load too, since a
    scanner would otherwise run with fewer rules than the administrator wrote."""
    problems = Spamtest(config, None, network=False).problems if config.spam_enabled else []
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return EXIT_CONFIG
    if config.av_enabled and not config.manage_clamd:
        for warning in clamd.external_warnings(
            config.resolve(config.clamd_config), archives.limits_of(config)
        ):
            print(f"warning: {warning}", file=sys.stderr)
    where = config.path if config.path.is_file() else f"built-in defaults (no {config.path})"
    print(f"{where}: OK")
    return EXIT_OK
