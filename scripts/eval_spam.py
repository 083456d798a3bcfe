"""Spam filter figures: a cross-era split of the training data beside the held-out test split.

1. Cross-era split (``--train``, default ``../shared/corpus/train``): a token table and a
   character model are trained on the older sub-collections (easy_ham, hard_ham and spam of
   2002) and the filter scores the newer ones (easy_ham_2 and spam_2 of 2003), which they
   never saw: how the filter fares on mail from another year. (The rule weights are the
   shipped ones, fitted on the whole training split, so the rules are not blind to the newer
   part; the two models are.)
2. Held-out split (CORPUS, default ``../shared/corpus/test``): the shipped token table and
   character model, or those of ``--database DIR``.
3. SpamAssassin (its stock rules and Bayes, through Mail::SpamAssassin in one Perl process)
   on both: trained on the same older part and scoring the same newer part, then trained on
   the whole training split and scoring the held-out split; when it is installed.

For each: spam caught and ham tagged, where a message counts as tagged when it gets the
``spam`` or ``probable-spam`` status (both are marked or acted on by default), the score that
would have tagged at most 0.1% of the ham, and the CPU per message. DNS lookups are off.
Train and tune only on the training split: the test split is for reporting.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mailgate import config as configmod
from mailgate.scan import mime
from mailgate.scan.spam import bayes, grams, spamtest

ROOT = Path(__file__).resolve().parent.parent
OLDER = ("easy-ham-1", "hard-ham-1", "spam-1")
NEWER = ("easy-ham-2", "spam-2")
TAGGED = ("spam", "probable-spam")


def era(path: Path) -> str:
    return "older" if path.name.startswith(OLDER) else "newer"


def checker(database: Path | None, intensity: str) -> spamtest.Spamtest:
    conf = Path(tempfile.mkdtemp(prefix="eval-spam-")) / "eval.conf"
    conf.write_text(
        "[smtpgw.path]\nSpoolDir=/nonexistent\n[smtpgw.spamtest]\nNetwork=no\n"
        f"Intensity={intensity}\n" + (f"Database={database.resolve()}\n" if database else "")
    )
    config = configmod.load(conf)
    shutil.rmtree(conf.parent)
    return spamtest.Spamtest(config, None, network=False)


def evaluate(check: spamtest.Spamtest, ham: list[Path], spam: list[Path]) -> dict:
    scores: dict[str, list[tuple[float, str, str]]] = {"ham": [], "spam": []}
    cpu: list[float] = []
    for part, paths in (("ham", ham), ("spam", spam)):
        for path in paths:
            split = mime.split(path.read_bytes())
            started = time.process_time()
            verdict = check.check(split, {"mail_from": "", "recipients": []})
            cpu.append(time.process_time() - started)
            scores[part].append((verdict.score, verdict.status, path.name))
    return {"scores": scores, "cpu": cpu}


def report(title: str, result: dict) -> None:
    ham, spam = result["scores"]["ham"], result["scores"]["spam"]
    caught = sum(1 for _s, status, _n in spam if status in TAGGED)
    tagged = sum(1 for _s, status, _n in ham if status in TAGGED)
    probable = sum(1 for _s, status, _n in ham if status == "probable-spam")
    print(f"{title}: {len(ham)} ham, {len(spam)} spam")
    print(f"  spam caught: {caught / len(spam):.2%} ({caught} of {len(spam)})")
    print(
        f"  ham tagged: {tagged / len(ham):.2%} ({tagged} of {len(ham)}; {probable} of them "
        "probable-spam)"
    )
    ordered = sorted((s for s, _st, _n in ham), reverse=True)
    cut = ordered[int(len(ordered) * 0.001)] + 0.01 if ordered else 0.0
    at_cut = sum(1 for s, _st, _n in spam if s >= cut)
    print(f"  at most 0.1% ham tagged needs a threshold of {cut:.2f}: {at_cut / len(spam):.2%}")
    cpu = sorted(result["cpu"])
    print(
        f"  spam verdict CPU per message: median {statistics.median(cpu) * 1000:.2f} ms, "
        f"mean {statistics.fmean(cpu) * 1000:.2f} ms"
    )
    worst = sorted(ham, reverse=True)[:3]
    print("  highest-scoring ham: " + ", ".join(f"{n} {s:.1f}" for s, _st, n in worst))


def spamassassin(title: str, train_ham, train_spam, ham, spam) -> None:
    """SpamAssassin's stock rules, its Bayes learned from ``train_*``, scoring ``ham`` and
    ``spam``: one Perl process (``eval_spam_sa.pl``) that compiles the rules once."""
    probe = subprocess.run(["perl", "-MMail::SpamAssassin", "-e1"], capture_output=True)
    if probe.returncode != 0:
        print("SpamAssassin: not installed (apt-get install spamassassin to compare)")
        return
    home = Path(tempfile.mkdtemp(prefix="eval-sa-"))
    commands = [f"ham\t{p}" for p in train_ham] + [f"spam\t{p}" for p in train_spam]
    commands += [f"check\t{p}" for p in (*ham, *spam)]
    try:
        done = subprocess.run(
            ["perl", str(ROOT / "scripts" / "eval_spam_sa.pl"), str(home)],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)
    answers = {}
    for line in done.stdout.splitlines():
        path, score, is_spam, seconds = line.split("\t")[:4]
        answers[path] = (float(score), "spam" if is_spam == "1" else "clean", float(seconds))
    if len(answers) != len(ham) + len(spam):
        print(f"SpamAssassin: failed ({done.stderr.strip()[-300:]})")
        return
    result: dict = {"scores": {"ham": [], "spam": []}, "cpu": []}
    for part, paths in (("ham", ham), ("spam", spam)):
        for path in paths:
            score, status, seconds = answers[str(path)]
            result["scores"][part].append((score, status, path.name))
            result["cpu"].append(seconds)
    report(f"SpamAssassin 4, stock rules + Bayes, {title}; wall time", result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", type=Path, nargs="?", default=ROOT.parent / "shared/corpus/test")
    parser.add_argument("--train", type=Path, default=ROOT.parent / "shared/corpus/train")
    parser.add_argument("--database", type=Path, default=None)
    parser.add_argument("--intensity", choices=("low", "medium", "high"), default="medium")
    parser.add_argument("--no-spamassassin", action="store_true")
    args = parser.parse_args()
    for folder in (args.corpus, args.train):
        if not (folder / "ham").is_dir() or not (folder / "spam").is_dir():
            print(f"eval-spam: {folder} needs ham/ and spam/ folders", file=sys.stderr)
            return 2
    train_ham = sorted((args.train / "ham").iterdir())
    train_spam = sorted((args.train / "spam").iterdir())
    older_ham = [p for p in train_ham if era(p) == "older"]
    older_spam = [p for p in train_spam if era(p) == "older"]
    newer_ham = [p for p in train_ham if era(p) == "newer"]
    newer_spam = [p for p in train_spam if era(p) == "newer"]
    model, examples = bayes.Model(), []
    shipped = checker(None, args.intensity).config
    for paths, is_spam in ((older_ham, False), (older_spam, True)):
        for path in paths:
            split = mime.split(path.read_bytes())
            model.learn(bayes.tokens(split.message, mime.decode_words), is_spam)
            examples.append((spamtest.grams_of(split, shipped), is_spam))
    table = Path(tempfile.mkdtemp(prefix="eval-spam-table-"))
    model.save(table)
    grams.Model.train(examples).save(table)
    print(f"Intensity={args.intensity}; DNS lookups off")
    report(
        f"cross-era: trained on {len(older_ham)} ham + {len(older_spam)} spam of 2002, "
        "scored on 2003",
        evaluate(checker(table, args.intensity), newer_ham, newer_spam),
    )
    shutil.rmtree(table)
    test_ham, test_spam = (
        sorted((args.corpus / "ham").iterdir()),
        sorted((args.corpus / "spam").iterdir()),
    )
    report(
        f"held-out {args.corpus}",
        evaluate(checker(args.database, args.intensity), test_ham, test_spam),
    )
    if not args.no_spamassassin:
        spamassassin("same cross-era split", older_ham, older_spam, newer_ham, newer_spam)
        spamassassin(
            f"trained on {args.train}, held-out {args.corpus}",
            train_ham,
            train_spam,
            test_ham,
            test_spam,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
