"""``mailgate update``: install a new anti-virus database and/or spam token table."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from mailgate.cli.common import EXIT_OK, CommandError
from mailgate.config import Config
from mailgate.runtime import log as logmod
from mailgate.scan.av import avdb
from mailgate.scan.spam import bayes, spamtest
from mailgate.spool import Spool


def run(args: argparse.Namespace, config: Config) -> int:
    spool = Spool(config.spool_path)

    try:
        os.listdir(args.source)
    except (FileNotFoundError, NotADirectoryError):
        raise CommandError(f"no such directory: {args.source}", avdb.NO_SOURCE) from None
    except OSError as exc:  # run by root, the command is the spool's owner by now
        raise CommandError(
            f"cannot read {args.source}: {exc.strerror}; the command acts as the spool's "
            "owner: put the new files where that user can read them",
            avdb.NO_SOURCE,
        ) from None
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


def _update_once(spool: Spool, config: Config, source: Path) -> list[tuple[int, str]]:
    """Apply what ``source`` holds: a token table, signature files, or both."""

    results = []
    if (source / bayes.MODEL_FILE).is_file():
        spool.create()
        spamtest.ensure_seeded(spool, config.shipped("spam_database", "spamdb"))
        results.append(spamtest.update(spool, source))
    if avdb.signature_files(source):
        results.append(avdb.update(spool, config, source))
    return results or [(avdb.NO_SOURCE, f"no signature files or token table in {source}")]
