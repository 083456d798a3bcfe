"""The character model: logistic regression on the byte 4-grams of a message's start.

The token model (``bayes``) counts words, and two things limit it on mail from another
source or year: its words must be spelled as in training (a spammer's ``V1agra``, ``c1ick``
or a word split by markup is a word it never saw), and naive Bayes counts correlated words
as independent evidence. This model reads the same message differently, as the filters that
did best in the TREC spam tracks did: every overlapping four-character sequence of the
message's first ``READ`` bytes (a few headers, then the decoded text, UTF-8) is a binary
feature, and the weights are fitted discriminatively by online logistic regression, so
features that always come together share the evidence instead of repeating it. Misspellings
and new words still share most of their 4-grams with the known ones.

The 4-grams are hashed into ``BUCKETS`` weights (each 4-byte gram read as a little-endian
number, modulo a prime), kept as one array of 32-bit floats: 256 KiB that stay in the CPU's
cache. A dictionary of 38,000 gram strings did the same job in ten times the time inside a
busy scanner (0.5 ms a message, almost all of it waiting for memory); sharing buckets cost
nothing measurable on the training data.

Its margin (the weighted sum, a log-odds) becomes one of the ``GRAMS_*`` rules by its
probability, whose weights ``scripts/tune_spam.py`` fits with the other rules'. The table is
shipped (``data/spamdb/grams.tsv.gz``, written by ``mailgate train``) and fixed like the rule
weights; what a site learns goes into the token table, which the rules combine with it.

Invariants: at most ``READ`` bytes are read, so the cost per message is bounded whatever
its size; the file holds the buckets whose weight is at least ``PRUNE``; the buckets do not
depend on the machine's byte order.
"""

from __future__ import annotations

import gzip
import math
import random
import sys
from array import array
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from operator import mod
from pathlib import Path

from mailgate.scan.spam.bayes import save_table

MODEL_FILE = "grams.tsv.gz"
VERSION = "2"
GRAM = 4
READ = 2500  # bytes: headers, then text, whitespace runs folded to one space
BUCKETS = 65521  # a prime: the remainders of 4-byte numbers spread evenly
HEADERS = ("from", "reply-to", "to", "cc", "subject", "content-type", "user-agent", "organization")
EPOCHS, RATE, SEED = 3, 0.02, 1
SURE = 0.01  # a training message already judged this well is not stepped on again
PRUNE = 0.001  # smaller weights are not written
MARGIN_LIMIT = 30.0
_UINT32 = next(code for code in "IL" if array(code).itemsize == 4)


def text_of(headers: Mapping[str, str], text: str) -> str:
    """What the model reads: the headers that describe a message's author and form (not the
    relays, which say whose mailbox it reached), then its text, with whitespace folded."""
    lines = [f"{name}: {headers[name][:READ]}" for name in HEADERS if headers.get(name)]
    head = " ".join(" ".join(lines).split())[:READ]
    body = " ".join(text[: 2 * READ].split())
    return f"{head}\n{body}"[:READ]


def of(text: str) -> frozenset[int]:
    """The buckets of the distinct 4-grams of ``text``'s first ``READ`` bytes (UTF-8)."""
    data = text.encode("utf-8", "surrogateescape")[:READ]
    numbers: set[int] = set()
    for offset in range(GRAM):
        words = array(_UINT32)
        words.frombytes(data[offset : offset + (len(data) - offset) // GRAM * GRAM])
        if sys.byteorder == "big":
            words.byteswap()
        numbers.update(words)
    return frozenset(map(mod, numbers, repeat(BUCKETS)))


def features(headers: Mapping[str, str], text: str) -> frozenset[int]:
    """The model's features of a message: the buckets of what ``text_of`` reads. Scoring and
    training both call this, so they read the same thing."""
    return of(text_of(headers, text))


def packed(buckets: Iterable[int]) -> array:
    """``buckets`` two bytes each (``BUCKETS`` < 2**16): how a training corpus is held."""
    return array("H", buckets)


def probability(margin: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-MARGIN_LIMIT, min(MARGIN_LIMIT, margin))))


def _zeros() -> array:
    return array("f", bytes(4 * BUCKETS))


@dataclass
class Model:
    """``weights[bucket]``: the share of a message's log-odds of being spam of the 4-grams
    that fall in that bucket."""

    weights: array = field(default_factory=_zeros)

    def margin(self, buckets: Iterable[int]) -> float:
        return sum(map(self.weights.__getitem__, buckets))

    def step(self, buckets: Collection[int], is_spam: bool, rate: float = RATE) -> None:
        """One online gradient step of the log loss on one message."""
        error = (1.0 if is_spam else 0.0) - probability(self.margin(buckets))
        if abs(error) < SURE:
            return
        change = rate * error
        weights = self.weights
        for bucket in buckets:
            weights[bucket] += change

    @classmethod
    def train(cls, examples: list[tuple[Collection[int], bool]], epochs: int = EPOCHS) -> Model:
        """Fit on ``examples`` (distinct buckets, is spam): ``epochs`` passes in a fixed
        shuffled order, so the same mail gives the same table."""
        model, order = cls(), list(examples)
        shuffle = random.Random(SEED).shuffle
        for _ in range(epochs):
            shuffle(order)
            for buckets, is_spam in order:
                model.step(buckets, is_spam)
        return model

    def save(self, directory: Path) -> Path:
        """Write the weights of at least ``PRUNE`` with ``bayes.save_table``."""
        lines = [f"#mailgate-grams\t{VERSION}\t{BUCKETS}\n"]
        lines += [f"{i}\t{w:.5f}\n" for i, w in enumerate(self.weights) if abs(w) >= PRUNE]
        return save_table(directory / MODEL_FILE, "".join(lines).encode("ascii"))

    @classmethod
    def load(cls, path: Path) -> Model:
        model = cls()
        with gzip.open(path, "rt", encoding="ascii") as f:
            head = f.readline().rstrip("\n").split("\t")
            if head != ["#mailgate-grams", VERSION, str(BUCKETS)]:
                raise ValueError(f"{path}: not a mailgate character model (version {VERSION})")
            weights = model.weights
            for number, line in enumerate(f, 2):
                bucket, _, weight = line.partition("\t")
                index, value = int(bucket), float(weight)
                if not 0 <= index < BUCKETS or not math.isfinite(value):
                    raise ValueError(f"{path}:{number}: not a bucket and a weight: {line!r}")
                weights[index] = value
        return model
