"""``mailgate train`` (the shipped token table) and ``mailgate learn`` (the spool's)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from array import array
from collections import Counter

from mailgate.cli.common import EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import Config
from mailgate.runtime import privileges
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
            for raw in learning.messages(folder, config.max_message_size):
                if isinstance(raw, learning.Unreadable):
                    print(f"mailgate: {raw.where}: {raw.why} (passed over)", file=sys.stderr)
                    continue
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
    """Learn (or forget) every message at the paths: files, folders, Maildirs, mbox files.

    Run by root, each path is read with its owner's rights (``privileges.read_as_owner``)
    and the spool is changed as its owner: the readers are started before root is given up.
    Entries passed over (not a regular file, too large, closed) are named on stderr and
    counted as ``unreadable``; a path that cannot be read at all is exit 2, nothing learned.
    """
    missing = [str(f) for f in args.files if not os.path.lexists(f)]
    if missing:
        raise CommandError(f"no such file or directory: {', '.join(missing)}", EXIT_USAGE)
    produce = functools.partial(learning.token_items, largest=config.max_message_size)
    readers = [(path, privileges.read_as_owner(path, produce)) for path in args.files]
    privileges.act_as_spool_owner(config.user, config.spool_path)
    spool = Spool(config.spool_path)
    spool.create()
    results: Counter[str] = Counter()
    shipped = config.shipped("spam_database", "spamdb")
    with learning.Learner(spool, shipped, cluster=Cluster(config)) as learner:
        for path, reader in readers:
            try:
                for item in reader:
                    if isinstance(item, dict):
                        print(
                            f"mailgate: {item['where']}: {item['why']} (passed over)",
                            file=sys.stderr,
                        )
                        results["unreadable"] += 1
                        continue
                    tokens = set(item)
                    results[
                        learner.forget(tokens) if args.forget else learner.learn(tokens, args.spam)
                    ] += 1
            except (OSError, learning.NotMail, privileges.ReaderFailed) as exc:
                raise CommandError(
                    f"cannot read {path}: {exc}; nothing learned", EXIT_USAGE
                ) from None
        model = learner.model
    what = "forgot" if args.forget else f"learned as {'spam' if args.spam else 'ham'}"
    done = ", ".join(f"{n} {result}" for result, n in sorted(results.items())) or "no messages"
    print(f"{what}: {done}; {learner.path} now has {model.nspam} spam and {model.nham} ham")
    return EXIT_OK
