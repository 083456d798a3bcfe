"""Evaluate the shipped spam filter on a corpus with ham/ and spam/ folders of raw messages.

Prints spam caught (as spam or probable-spam), ham marked spam (false positives), the
probable-spam counts of each class, and the score threshold that would have given at most
0.1% false positives. DNS lookups are off; the token database is the shipped one (or
``--database DIR``), so a message of CORPUS is scored by a model that never saw it as long as
the model was not trained on CORPUS.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from mailgate import config as configmod
from mailgate.scan import mime
from mailgate.scan.spam import spamtest

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--database", type=Path, default=None)
    parser.add_argument("--intensity", choices=("low", "medium", "high"), default="medium")
    args = parser.parse_args()
    for part in ("ham", "spam"):
        if not (args.corpus / part).is_dir():
            print(f"eval-spam: {args.corpus / part} is not a directory", file=sys.stderr)
            return 2
    conf = Path(sys.prefix) / "eval-spam.conf"
    conf.write_text(
        "[smtpgw.path]\nSpoolDir=/nonexistent\n[smtpgw.spamtest]\nNetwork=no\n"
        f"Intensity={args.intensity}\n"
        + (f"Database={args.database.resolve()}\n" if args.database else "")
    )
    config = configmod.load(conf)
    conf.unlink()
    checker = spamtest.Spamtest(config, None, network=False)
    results: dict[str, list[tuple[float, str, str]]] = {"ham": [], "spam": []}
    fired: dict[str, Counter] = {"ham": Counter(), "spam": Counter()}
    parse_cpu = check_cpu = 0.0
    count = 0
    for part in ("ham", "spam"):
        for path in sorted((args.corpus / part).iterdir()):
            raw = path.read_bytes()
            started = time.process_time()
            split = mime.split(raw)
            parsed = time.process_time()
            verdict = checker.check(split, {"mail_from": "", "recipients": []})
            parse_cpu += parsed - started
            check_cpu += time.process_time() - parsed
            results[part].append((verdict.score, verdict.status, path.name))
            fired[part].update(verdict.rules)
            count += 1
    ham, spam = results["ham"], results["spam"]

    def share(rows, *statuses):
        return sum(1 for _s, status, _n in rows if status in statuses)

    print(f"corpus: {args.corpus} ({len(ham)} ham, {len(spam)} spam), Intensity={args.intensity}")
    caught = share(spam, "spam", "probable-spam")
    print(
        f"spam caught: {caught / len(spam):.2%} ({share(spam, 'spam')} spam + "
        f"{share(spam, 'probable-spam')} probable-spam of {len(spam)})"
    )
    print(
        f"ham marked spam (false positives): {share(ham, 'spam') / len(ham):.2%} "
        f"({share(ham, 'spam')} of {len(ham)})"
    )
    print(f"probable-spam: {share(ham, 'probable-spam')} ham, {share(spam, 'probable-spam')} spam")
    scores = sorted((s for s, _st, _n in ham), reverse=True)
    allowed = int(len(scores) * 0.001)
    cut = scores[allowed] + 0.01 if scores else 0.0
    at_cut = sum(1 for s, _st, _n in spam if s >= cut)
    print(
        f"threshold for at most 0.1% false positives: {cut:.2f} "
        f"(spam at or above it: {at_cut / len(spam):.2%})"
    )
    per = max(1, count) / 1000
    print(
        f"CPU per message: spam check {check_cpu / per:.2f} ms, MIME parsing (shared with "
        f"the anti-virus) {parse_cpu / per:.2f} ms"
    )
    worst = sorted(ham, reverse=True)[:5]
    print("highest-scoring ham: " + ", ".join(f"{n} {s:.1f}" for s, _st, n in worst))
    return 0


if __name__ == "__main__":
    sys.exit(main())
