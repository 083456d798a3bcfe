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
    check NAME                  a built-in check (see ``CHECKS``)

The rule name is what an administrator sees in ``X-Spam-Status: tests=NAME(WEIGHT)``; a weight
may be negative. ``load`` reports every malformed line as ``FILE:LINE: message``.
"""

from __future__ import annotations

import email.utils
import ipaddress
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@dataclass
class Facts:
    """What the rules look at, computed once per message."""

    message: Message
    headers: dict[str, str]
    text: str
    raw_text: str
    html_only: bool
    links: list[tuple[str, str]]
    urls: list[str]
    mail_from: str
    helo: str
    client_ip: str
    hostname: str
    our_names: set[str] = field(default_factory=set)
    bayes: float | None = None  # None: the token model found no clue either way


@dataclass(frozen=True)
class Rule:
    name: str
    weight: float
    test: Callable[[Facts], bool]
    phrase: str = ""  # the regex of a ``phrase`` rule, matched in one pass with the others


class RuleError(ValueError):
    pass


class PhraseSet:
    """All ``phrase`` rules together: a substring test on the lowered text (fast, in C) picks
    the few whose first word occurs at all; only those are searched with their regex."""

    def __init__(self, rules: list[Rule]):
        self.rules = [
            (
                rule,
                rule.phrase.split("\\s+")[0].replace("\\", "").lower(),
                re.compile(rf"(?i)\b{rule.phrase}\b"),
            )
            for rule in rules
        ]

    def hits(self, text: str) -> list[Rule]:
        low = text.lower()
        return [
            rule for rule, first, pattern in self.rules if first in low and pattern.search(text)
        ]


# ---------------------------------------------------------------- built-in checks


def _date_malformed(f: Facts) -> bool:
    value = f.headers.get("date")
    if not value:
        return False
    try:
        return email.utils.parsedate_to_datetime(value) is None
    except (TypeError, ValueError, IndexError):
        return True


def _message_id_malformed(f: Facts) -> bool:
    value = f.headers.get("message-id", "")
    return bool(value) and not re.fullmatch(r"\s*<[^<>@\s]+@[^<>@\s]+>\s*", value)


def _from_malformed(f: Facts) -> bool:
    value = f.headers.get("from")
    if value is None:
        return False
    _name, addr = email.utils.parseaddr(value)
    return not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", addr or "")


def _from_envelope_mismatch(f: Facts) -> bool:
    _name, addr = email.utils.parseaddr(f.headers.get("from", ""))
    if not addr or not f.mail_from or "@" not in addr:
        return False
    return addr.rpartition("@")[2].lower() != f.mail_from.rpartition("@")[2].lower()


def _helo_bare_ip(f: Facts) -> bool:
    helo = f.helo.strip("[]")
    try:
        ipaddress.ip_address(helo)
    except ValueError:
        return False
    return True


def _helo_is_us(f: Facts) -> bool:
    return bool(f.helo) and f.helo.lower().strip("[].") in f.our_names


def _received_forged(f: Facts) -> bool:
    """A Received chain that cannot be true: dates running backwards by more than a day,
    or a hop that claims to be this gateway although the message has not reached it yet."""
    stamps = []
    host = f.hostname.lower()
    chain = [str(v) for v in f.message.get_all("received") or []]
    if chain and "(mailgate)" in chain[0]:
        chain = chain[1:]  # our own trace header, added on receipt
    for text in chain:
        if host and host in text.lower() and re.search(rf"\bby\s+{re.escape(host)}\b", text, re.I):
            return True
        date = text.rpartition(";")[2].strip()
        try:
            stamp = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            continue
        if stamp is not None and stamp.tzinfo is not None:
            stamps.append(stamp.timestamp())
    return any(older - newer > 86400 for newer, older in itertools.pairwise(stamps))


def _url_ip(f: Facts) -> bool:
    return any(re.match(r"https?://\d{1,3}(\.\d{1,3}){3}\b", u, re.I) for u in f.urls)


def _link_text_mismatch(f: Facts) -> bool:
    """A link whose visible text is itself a URL to another host (a phishing classic)."""
    for href, text in f.links:
        shown = re.match(r"\s*(?:https?://)?(?:www\.)?([a-z0-9.-]+\.[a-z]{2,})", text, re.I)
        target = re.match(r"\s*https?://(?:www\.)?([a-z0-9.-]+)", href, re.I)
        if shown and target and re.match(r"\s*(?:https?://|www\.)", text, re.I):
            a, b = shown.group(1).lower(), target.group(1).lower()
            if not (a.endswith(b) or b.endswith(a)):
                return True
    return False


def _html_only(f: Facts) -> bool:
    return f.html_only


def _hidden_text(f: Facts) -> bool:
    low = f.raw_text.lower()
    if "display" not in low and "visibility" not in low and "font" not in low:
        return False
    return bool(
        re.search(
            r"(?i)display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*[01]px"
            r"|<font[^>]+size\s*=\s*\"?[01]\b",
            f.raw_text,
        )
    )


def _subject_encoded_unneeded(f: Facts) -> bool:
    raw = str(f.message.get("subject") or "")
    return "=?" in raw and f.headers.get("subject", "").isascii()


def _gtube(f: Facts) -> bool:
    return GTUBE in f.raw_text


CHECKS: dict[str, Callable[[Facts], bool]] = {
    "date_malformed": _date_malformed,
    "message_id_malformed": _message_id_malformed,
    "from_malformed": _from_malformed,
    "from_envelope_mismatch": _from_envelope_mismatch,
    "helo_bare_ip": _helo_bare_ip,
    "helo_is_us": _helo_is_us,
    "received_forged": _received_forged,
    "url_ip": _url_ip,
    "link_text_mismatch": _link_text_mismatch,
    "html_only": _html_only,
    "hidden_text": _hidden_text,
    "subject_encoded_unneeded": _subject_encoded_unneeded,
    "gtube": _gtube,
}


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
        pattern = _regex(m.group(1))
        if kind == "body":
            return Rule(name, weight, lambda f: bool(pattern.search(f.text)))
        return Rule(name, weight, lambda f: bool(pattern.search(f.raw_text)))
    if kind == "phrase":
        words = rest.split()
        if not words:
            raise RuleError("phrase needs some words")
        phrase = r"\s+".join(re.escape(w) for w in words)
        pattern = re.compile(r"(?i)\b" + phrase + r"\b")
        return Rule(name, weight, lambda f: bool(pattern.search(f.text)), phrase)
    if kind == "bayes":
        try:
            low, high = (float(x) for x in rest.split())
        except ValueError:
            raise RuleError(f"expected 'bayes LOW HIGH', got {rest.strip()!r}") from None
        if not 0.0 <= low < high <= 1.0:
            raise RuleError(f"need 0 <= LOW < HIGH <= 1, got {low} {high}")
        if high == 1.0:
            high = 1.0000001
        return Rule(name, weight, lambda f: f.bayes is not None and low <= f.bayes < high)
    if kind == "check":
        check = CHECKS.get(rest.strip())
        if check is None:
            known = ", ".join(sorted(CHECKS))
            raise RuleError(f"unknown check {rest.strip()!r} (known: {known})")
        return Rule(name, weight, check)
    raise RuleError(f"unknown test {kind!r} (header, missing, body, rawbody, phrase, bayes, check)")


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
