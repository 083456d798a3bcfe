"""Header and body rules for the spam score, read from a rule file an administrator can edit.

A rule file has one rule per line: ``NAME WEIGHT TEST [ARGUMENT]`` (``#`` starts a comment).
Tests:

    header NAME =~ /REGEX/i     a header (decoded, all occurrences joined) matches
    header NAME !~ /REGEX/i     a header is present and does not match
    missing NAME                the header is absent
    body =~ /REGEX/i            the decoded text of the message (HTML without its tags)
    rawbody =~ /REGEX/i         the decoded text, HTML tags included
    phrase TEXT                 the text contains TEXT (case-insensitive; words, not regex)
    bayes LOW HIGH              the token model's spam probability is in [LOW, HIGH)
    grams LOW HIGH              the character model's (``grams``) probability is in [LOW, HIGH)
    check NAME                  a built-in check (see ``CHECKS``)

The rule name is what an administrator sees in ``X-Spam-Status: tests=NAME(WEIGHT)``; a weight
may be negative. ``load`` reports every malformed line as ``FILE:LINE: message``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailgate.scan.spam.checks import CHECKS, Facts, fold
from mailgate.scan.spam.literals import literal_starts


def first_start(folded: str, starts: tuple[str, ...]) -> int:
    """Where the earliest of ``starts`` occurs in ``folded`` (-1: none does).

    ``fold`` keeps every character in its place, so no match can begin before this index in
    the original text either, and ``search(text, index)`` still sees the characters before it
    for ``\\b`` and look-behinds: the result is the same as searching from the beginning.
    """
    found = [i for i in (folded.find(x) for x in starts) if i >= 0]
    return min(found) if found else -1


def _text_test(pattern: re.Pattern, attr: str) -> Callable[[Facts], bool]:
    """Does ``pattern`` occur in the ``attr`` text (``text`` or ``raw_text``) of the facts?

    Searched from the first place one of its literal starts occurs, when it has any."""
    starts = literal_starts(pattern)
    if not starts:
        return lambda f: bool(pattern.search(getattr(f, attr)))
    folded_attr = "folded_text" if attr == "text" else "folded_raw"

    def test(f: Facts) -> bool:
        at = first_start(getattr(f, folded_attr), starts)
        return at >= 0 and bool(pattern.search(getattr(f, attr), at))

    return test


@dataclass(frozen=True)
class Rule:
    name: str
    weight: float
    test: Callable[[Facts], bool]
    phrase: str = ""  # the regex of a ``phrase`` rule, matched in one pass with the others


class RuleError(ValueError):
    pass


class PhraseSet:
    """All ``phrase`` rules together, each as fast as the engine allows.

    An ASCII phrase ``\\bWORDS\\b`` is searched case-sensitively in the folded text without
    its leading ``\\b``: a pattern that starts with a literal lets the engine jump from one
    occurrence of it to the next (a C substring search) instead of trying every position;
    the word boundary before a found occurrence is then checked by hand, and a failed one
    resumes the search one character on, so overlapping occurrences are not skipped. The
    matches are those of the case-insensitive search of the text. Other phrases are searched
    as written."""

    def __init__(self, rules: list[Rule]):
        self.rules: list[tuple[Rule, re.Pattern, bool]] = []
        for rule in rules:
            if rule.phrase.isascii():
                self.rules.append((rule, re.compile(rf"{fold(rule.phrase)}\b"), True))
            else:
                self.rules.append((rule, re.compile(rf"(?i)\b{rule.phrase}\b"), False))

    def hits(self, text: str, folded: str) -> list[Rule]:
        return [
            rule
            for rule, pattern, on_folded in self.rules
            if (_bounded_search(pattern, folded) if on_folded else pattern.search(text))
        ]


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _bounded_search(pattern: re.Pattern, text: str) -> bool:
    """``pattern`` preceded by ``\\b`` (the same test as ``re``'s: word vs non-word)."""
    at = 0
    while (m := pattern.search(text, at)) is not None:
        start = m.start()
        before = _is_word(text[start - 1]) if start else False
        if before != _is_word(text[start]):
            return True
        at = start + 1
    return False


# ---------------------------------------------------------------- the rule file


def _regex(text: str) -> re.Pattern:
    m = re.fullmatch(r"/(.*)/([imsx]*)", text.strip())
    if not m:
        raise RuleError(f"expected /REGEX/flags, got {text.strip()!r}")
    flags = 0
    for char in m.group(2):
        flags |= {"i": re.I, "m": re.M, "s": re.S, "x": re.X}[char]
    try:
        return re.compile(m.group(1), flags)
    except re.error as exc:
        raise RuleError(f"bad regular expression: {exc}") from None


def parse_rule(line: str) -> Rule:
    parts = line.split(None, 3)
    if len(parts) < 3:
        raise RuleError(f"expected 'NAME WEIGHT TEST ...', got {line.strip()!r}")
    name, weight_text, kind = parts[0], parts[1], parts[2]
    rest = parts[3] if len(parts) > 3 else ""
    if not re.fullmatch(r"[A-Z][A-Z0-9_]{1,40}", name):
        raise RuleError(f"rule name must be A-Z, 0-9 and _, got {name!r}")
    try:
        weight = float(weight_text)
    except ValueError:
        raise RuleError(f"weight must be a number, got {weight_text!r}") from None
    if kind == "header":
        m = re.fullmatch(r"([A-Za-z0-9-]+)\s+(=~|!~)\s+(.+)", rest.strip())
        if not m:
            raise RuleError(f"expected 'header NAME =~ /REGEX/', got {rest.strip()!r}")
        header, op, pattern = m.group(1).lower(), m.group(2), _regex(m.group(3))
        if op == "=~":
            return Rule(name, weight, lambda f: bool(pattern.search(f.headers.get(header, ""))))
        return Rule(
            name,
            weight,
            lambda f: header in f.headers and not pattern.search(f.headers[header]),
        )
    if kind == "missing":
        header = rest.strip().lower()
        if not re.fullmatch(r"[a-z0-9-]+", header):
            raise RuleError(f"expected a header name, got {rest.strip()!r}")
        return Rule(name, weight, lambda f: header not in f.headers)
    if kind in ("body", "rawbody"):
        m = re.fullmatch(r"=~\s+(.+)", rest.strip())
        if not m:
            raise RuleError(f"expected '{kind} =~ /REGEX/', got {rest.strip()!r}")
        attr = "text" if kind == "body" else "raw_text"
        return Rule(name, weight, _text_test(_regex(m.group(1)), attr))
    if kind == "phrase":
        words = rest.split()
        if not words:
            raise RuleError("phrase needs some words")
        phrase = r"\s+".join(re.escape(w) for w in words)
        pattern = re.compile(r"(?i)\b" + phrase + r"\b")
        return Rule(name, weight, lambda f: bool(pattern.search(f.text)), phrase)
    if kind in ("bayes", "grams"):
        try:
            low, high = (float(x) for x in rest.split())
        except ValueError:
            raise RuleError(f"expected '{kind} LOW HIGH', got {rest.strip()!r}") from None
        if not 0.0 <= low < high <= 1.0:
            raise RuleError(f"need 0 <= LOW < HIGH <= 1, got {low} {high}")
        if high == 1.0:
            high = 1.0000001
        if kind == "grams":
            return Rule(name, weight, lambda f: f.grams is not None and low <= f.grams < high)
        return Rule(name, weight, lambda f: f.bayes is not None and low <= f.bayes < high)
    if kind == "check":
        check = CHECKS.get(rest.strip())
        if check is None:
            known = ", ".join(sorted(CHECKS))
            raise RuleError(f"unknown check {rest.strip()!r} (known: {known})")
        return Rule(name, weight, check)
    raise RuleError(
        f"unknown test {kind!r} (header, missing, body, rawbody, phrase, bayes, grams, check)"
    )


def load(path: Path) -> tuple[list[Rule], list[str]]:
    """The rules of a file, and every problem as ``FILE:LINE: message``."""
    rules, problems = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if not line:
            continue
        try:
            rules.append(parse_rule(line))
        except RuleError as exc:
            problems.append(f"{path}:{lineno}: {exc}")
    return rules, problems
