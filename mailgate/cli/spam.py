"""``mailgate train`` (the shipped token table) and ``mailgate learn`` (the spool's)."""

from __future__ import annotations

import argparse
from pathlib import Path

from mailgate.cli.common import EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import Config
from mailgate.scan import mime
from mailgate.scan.spam import bayes, spamtest
from mailgate.spool import Spool


def _message_files(folders: list[Path]) -> list[Path]:
    files = []
    for folder in folders:
        if not folder.is_dir():
            raise CommandError(f"no such directory: {folder}", EXIT_USAGE)
        files += sorted(p for p in folder.iterdir() if p.is_file())
    return files


def train(args: argparse.Namespace, config: Config) -> int:

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


def learn(args: argparse.Namespace, config: Config) -> int:
    spool = Spool(config.spool_path)

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
