"""``mailgate train`` (the shipped token table) and ``mailgate learn`` (the spool's)."""

from __future__ import annotations

import argparse
from array import array
from collections import Counter

from mailgate.cli.common import EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import Config
from mailgate.runtime.cluster import Cluster
from mailgate.scan import mime
from mailgate.scan.spam import bayes, grams, learning, spamtest
from mailgate.spool import Spool


def train(args: argparse.Namespace, config: Config) -> int:
    missing = [str(f) for f in [*args.ham, *args.spam] if not f.is_dir()]
    if missing:
        raise CommandError(f"no such directory: {', '.join(missing)}", EXIT_USAGE)
    model = bayes.Model()
    examples: list[tuple[array, bool]] = []
    for folders, is_spam in ((args.ham, False), (args.spam, True)):
        for folder in folders:
            for raw in learning.messages(folder):
                split = mime.split(raw)
                try:
                    model.learn(bayes.tokens(split.message, mime.decode_words), is_spam)
                    examples.append((spamtest.grams_of(split, config), is_spam))
                finally:
                    split.close()
    target_dir = args.output or config.shipped("spam_database", "spamdb")
    target = model.save(target_dir)
    characters = grams.Model.train(examples).save(target_dir)
    print(
        f"{target}: trained on {model.nham} ham and {model.nspam} spam, "
        f"{target.stat().st_size // 1024} KiB; {characters.name} "
        f"{characters.stat().st_size // 1024} KiB"
    )
    return EXIT_OK


def learn(args: argparse.Namespace, config: Config) -> int:
    """Learn (or forget) every message at the paths: files, folders, Maildirs, mbox files."""
    spool = Spool(config.spool_path)
    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        raise CommandError(f"no such file or directory: {', '.join(missing)}", EXIT_USAGE)
    spool.create()
    results: Counter[str] = Counter()
    shipped = config.shipped("spam_database", "spamdb")
    with learning.Learner(spool, shipped, cluster=Cluster(config)) as learner:
        for path in args.files:
            for raw in learning.messages(path):
                tokens = learning.tokens_of(raw)
                results[
                    learner.forget(tokens) if args.forget else learner.learn(tokens, args.spam)
                ] += 1
        model = learner.model
    what = "forgot" if args.forget else f"learned as {'spam' if args.spam else 'ham'}"
    done = ", ".join(f"{n} {result}" for result, n in sorted(results.items())) or "no messages"
    print(f"{what}: {done}; {learner.path} now has {model.nspam} spam and {model.nham} ham")
    return EXIT_OK
