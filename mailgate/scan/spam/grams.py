"""The character model: logistic regression on the character 4-grams of a message's start.

The token model (``bayes``) counts words, and two things limit it on mail from another
source or year: its words must be spelled as in training (a spammer's ``V1agra``, ``c1ick``
or a word split by markup is a word it never saw), and naive Bayes counts correlated words
as independent evidence. This model reads the same message differently, as the filters that
did best in the TREC spam tracks did: every overlapping four-character sequence of the
message's first ``READ`` characters (a few headers, then the decoded text) is a binary
feature, and the weights are fitted discriminatively by online logistic regression, so
features that always come together share the evidence instead of repeating it. Misspellings
and new words still share most of their 4-grams with the known ones.

Its margin (the weighted sum, a log-odds) becomes one of the ``GRAMS_*`` rules by its
probability, whose weights ``scripts/tune_spam.py`` fits with the other rules'. The table is
shipped (``data/spamdb/grams.tsv.gz``, written by ``mailgate train``) and fixed like the rule
weights; what a site learns goes into the token table, which the rules combine with it.

Invariants: at most ``READ`` characters are read, so the cost per message is bounded
(about 0.3 ms) whatever its size; the table holds only weights of at least ``PRUNE``, a
few tens of thousands of entries (a few MB in memory).
"""

from __future__ import annotations

import gzip
import math
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from pathlib import Path

MODEL_FILE = "grams.tsv.gz"
GRAM = 4
READ = 2500  # characters: headers, then text, whitespace runs folded to one space
HEADERS = ("from", "reply-to", "to", "cc", "subject", "content-type", "user-agent", "organization")
EPOCHS, RATE, SEED = 3, 0.02, 1
SURE = 0.01  # a training message already judged this well is not stepped on again
PRUNE = 0.01  # smaller weights are not written: three quarters of them, no measurable loss
MARGIN_LIMIT = 30.0


def text_of(headers: Mapping[str, str], text: str) -> str:
    """What the model reads: the headers that describe a message's author and form (not the
    relays, which say whose mailbox it reached), then its text, with whitespace folded."""
    lines = [f"{name}: {headers[name]}" for name in HEADERS if headers.get(name)]
    head = " ".join(" ".join(lines).split())[:READ]
    body = " ".join(text[: 2 * READ].split())
    return f"{head}\n{body}"[:READ]


_SLICES = [slice(i, i + GRAM) for i in range(READ - GRAM + 1)]


def of(text: str) -> frozenset[str]:
    """The distinct 4-grams of ``text`` (its first ``READ`` characters)."""
    return frozenset(map(text.__getitem__, _SLICES[: max(0, min(len(text), READ) - GRAM + 1)]))


def probability(margin: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-MARGIN_LIMIT, min(MARGIN_LIMIT, margin))))


@dataclass
class Model:
    """``weights[gram]``: the gram's share of a message's log-odds of being spam."""

    weights: dict[str, float] = field(default_factory=dict)

    def margin(self, grams: Iterable[str]) -> float:
        return sum(map(self.weights.get, grams, repeat(0.0)))

    def step(self, grams: frozenset[str], is_spam: bool, rate: float = RATE) -> None:
        """One online gradient step of the log loss on one message."""
        error = (1.0 if is_spam else 0.0) - probability(self.margin(grams))
        if abs(error) < SURE:
            return
        change = rate * error
        weights = self.weights
        for gram in grams:
            weights[gram] = weights.get(gram, 0.0) + change

    @classmethod
    def train(cls, examples: list[tuple[frozenset[str], bool]], epochs: int = EPOCHS) -> Model:
        """Fit on ``examples`` (grams, is spam): ``epochs`` passes in a fixed shuffled order,
        so the same mail gives the same table."""
        model, order = cls(), list(examples)
        shuffle = random.Random(SEED).shuffle
        for _ in range(epochs):
            shuffle(order)
            for grams, is_spam in order:
                model.step(grams, is_spam)
        return model

    def save(self, directory: Path) -> Path:
        """Write beside, fsync, rename over, fsync the directory (as ``bayes.Model.save``)."""
        directory.mkdir(parents=True, exist_ok=True)
        target, tmp = directory / MODEL_FILE, directory / (MODEL_FILE + ".tmp")
        lines = ["#mailgate-grams\t1\n"]
        for gram in sorted(self.weights):
            weight = self.weights[gram]
            if abs(weight) >= PRUNE and not any(c in gram for c in "\t\n\r"):
                lines.append(f"{gram}\t{weight:.4f}\n")
        with open(tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as z:
                z.write("".join(lines).encode("utf-8", "surrogatepass"))
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, target)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return target

    @classmethod
    def load(cls, path: Path) -> Model:
        model = cls()
        with gzip.open(path, "rt", encoding="utf-8", errors="surrogatepass", newline="\n") as f:
            if f.readline().split("\t")[0] != "#mailgate-grams":
                raise ValueError(f"{path}: not a mailgate character model")
            weights = model.weights
            for line in f:
                gram, _, weight = line.rstrip("\n").rpartition("\t")
                weights[gram] = float(weight)
        return model
