"""Content analysis: a statistical token model with chi-square (Fisher) combining.

Tokens come from the headers that tell senders apart (Subject words, From/Reply-To address
parts, mailer, content types, charsets; not the relays, which say whose mailbox a message
reached rather than what it is), the decoded text of every text part without a list's footer
(HTML with its tags removed; a few markup features kept as tokens), URLs (host, registered
domain, public suffix, path words), and attachment names and types. Each token is counted
once per message.

Per token, the spam probability is Gary Robinson's: the ratio of its spam frequency to the sum
of its spam and ham frequencies, pulled toward 0.5 for rarely seen tokens (``STRENGTH``,
``UNKNOWN``). The ``MAX_DISCRIMINATORS`` tokens farthest from 0.5 are combined with Fisher's
chi-square method in both directions (as SpamBayes does), giving a score from 0 (ham) to 1
(spam) that stays near 0.5 when the evidence is mixed, instead of being forced to an extreme.

The model is a table of (spam count, ham count) per token plus the two message counts, kept as
a gzip'd TSV file: small, diffable, loaded in a fraction of a second.
"""

from __future__ import annotations

import email.utils
import gzip
import html
import math
import os
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from mailgate.message.domains import registered_domain

STRENGTH = 0.45
UNKNOWN = 0.5
MIN_STRENGTH = 0.1
MAX_DISCRIMINATORS = 150
MIN_WORD, MAX_WORD = 3, 12
MODEL_FILE = "tokens.tsv.gz"
# A From address's messages are counted (``from:address:``) for the sender's history
# (``checks.known_ham``), not scored: a newsletter's address says who sent it, not whether
# the content is spam, and it would count twice beside its user and domain tokens.
HISTORY = "from:address:"
MAX_ADDRESS = 100
MIN_SAVED = 2  # tokens seen fewer times are not written: half the file, little evidence
_UNSEEN = object()

_WORD = re.compile(r"[^\s<>\"'()\[\]{},;:!?*=|\\]+")
_URL = re.compile(r"""(?i)\b(?:https?://|www\.)([^\s"'<>()\[\]{}]+)""")
_TAG = re.compile(r"(?s)<[^>]*>")
_HTML_FEATURES = {
    "img": re.compile(r"(?i)<img\b"),
    "font-color": re.compile(r"(?i)<font[^>]+color"),
    "table": re.compile(r"(?i)<table\b"),
    "form": re.compile(r"(?i)<form\b"),
    "script": re.compile(r"(?i)<script\b"),
    "comment": re.compile(r"<!--"),
    "hidden": re.compile(r"(?i)display\s*:\s*none|visibility\s*:\s*hidden"),
}
TEXT_LIMIT = 50_000  # bytes of each text part the filter reads (SpamAssassin's default)
FOOTER_TAIL = 1000
_SEPARATOR = re.compile(r"(?m)^[ \t]*(?:-{10,}|_{10,}|={10,})[ \t]*$")

# soft hyphen, combining grapheme joiner, Mongolian vowel separator, zero-width space and
# joiners, word joiner, invisible operators, byte-order mark
_INVISIBLE_CHARS = "\u00ad\u034f\u180e\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff"
_INVISIBLE = re.compile(f"[{_INVISIBLE_CHARS}]+")

_HEADER_WORDS = ("subject",)
_HEADER_ADDRESSES = ("from", "reply-to")
_HEADER_WHOLE = ("x-mailer", "user-agent", "content-type", "x-priority", "mime-version")


def fold(text: str) -> str:
    """Text as a reader sees it: compatibility forms folded (NFKC: fullwidth letters,
    ligatures, mathematical alphabets become plain ones) and invisible characters removed
    (soft hyphen, zero-width space and joiners, BOM), so that a word written to slip past
    a filter letter by letter is the word the rules and the token table know. ASCII text is
    returned as it is; NFKC costs about 0.07 ms for 50 KB of other text, and the invisible
    characters are searched for only when ``in`` finds one."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", text)
    if any(c in text for c in _INVISIBLE_CHARS):
        text = _INVISIBLE.sub("", text)
    return text


def _words(text: str, prefix: str = "") -> Iterable[str]:
    for raw in set(_WORD.findall(fold(text).lower())):
        word = raw.strip(".-_/")
        if not word:
            continue
        if len(word) > MAX_WORD:
            if "@" in word:
                user, _, domain = word.partition("@")
                yield f"{prefix}email-user:{user[:MAX_WORD]}"
                yield f"{prefix}email-domain:{domain}"
            else:
                yield f"{prefix}skip:{word[0]}{len(word) // 10 * 10}"
            continue
        if len(word) < MIN_WORD and not word.isdigit():
            continue
        yield prefix + word


def _url_tokens(text: str) -> Iterable[str]:
    """The host of every link, its registered domain (Public Suffix List) and public suffix,
    and the words of its path: a spammer's throw-away hosts share the domain they bought.

    Text without "http" or "www." (in any case) has none; that test costs a few µs where the
    pattern, whose case-insensitive alternation has no literal to jump to, costs 60 µs on 5 KB."""
    lowered = text.lower()
    if "http" not in lowered and "www." not in lowered:
        return
    for m in _URL.finditer(text):
        rest = m.group(1).lower()
        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        host = authority.rpartition("@")[2].partition(":")[0].strip(".")
        if not host:
            continue
        if re.fullmatch(r"[\d.]+", host):
            yield "url:ip-host"
            continue
        yield "url:" + host[:80]
        domain = registered_domain(host)
        if domain:
            if domain != host:
                yield "url:" + domain
            yield "url-suffix:" + domain.partition(".")[2]
        path = rest[len(authority) :]
        for piece in re.split(r"[/?&=#.%_-]+", path):
            if MIN_WORD <= len(piece) <= MAX_WORD:
                yield "url-path:" + piece


def without_footer(text: str) -> str:
    """``text`` without a footer: what follows a separator line (ten or more ``-``, ``_`` or
    ``=``) in its last ``FOOTER_TAIL`` characters, when at least as much text comes before.

    Mailing lists and mail providers append such blocks (Mailman's list address and links, a
    sponsor's advertisement) to whatever passes through them, spam included; their words say
    which list carried a message, not what it is, and a model trained on one site's lists
    learns them as the strongest signs of ham. The rules still read the whole text."""
    found = _SEPARATOR.search(text, max(0, len(text) - FOOTER_TAIL))
    if found and found.start() * 2 >= len(text):
        return text[: found.start()]
    return text


def _decoded_text(part: Message) -> str:
    """A text part's content, its first ``TEXT_LIMIT`` bytes only (as SpamAssassin's
    body_part_scan_size): what spam says, it says early, and a 20 MB text body must not cost
    seconds and hundreds of megabytes."""
    try:
        payload = (part.get_payload(decode=True) or b"")[:TEXT_LIMIT]
    except (ValueError, LookupError, AssertionError):
        return ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("latin-1", "replace")


def sender_token(address: str) -> str:
    """The token that counts a From address's messages (``HISTORY``)."""
    return f"{HISTORY}{address.lower()[:MAX_ADDRESS]}"


def sender_history(counts: dict, tokens: set, address: str, headers: dict, envelope: dict) -> tuple:
    """(spam, ham) messages of the From address in the token table; (0, 0) when ``tokens``
    lacks its token (a parse that differs from the tokens' gives nothing) or when the From
    domain is a recipient's (envelope, To or Cc): spam that forges the recipient's own
    address must not inherit the history of his own mail; nor when Reply-To is in another
    registered domain."""
    token = sender_token(address)
    known = counts.get(token) if token in tokens else None
    if known is None:  # most mail: the recipients are not parsed
        return 0, 0
    domain = address.rpartition("@")[2].lower()
    fields = [headers.get("to", ""), headers.get("cc", "")]
    addresses = [r["address"] for r in envelope.get("recipients", [])]
    addresses += [a for _n, a in email.utils.getaddresses(fields)]
    if any(a.rpartition("@")[2].lower() == domain for a in addresses):
        return 0, 0
    reply_to = email.utils.parseaddr(headers.get("reply-to", ""))[1].rpartition("@")[2]
    if reply_to and registered_domain(reply_to.lower()) != registered_domain(domain):
        return 0, 0  # answers would go elsewhere: how a borrowed address is turned to use
    spam, ham = known
    return spam, ham


def tokens(message: Message, header_text=None) -> set[str]:
    """The distinct tokens of a parsed message (``email`` compat32)."""
    out: set[str] = set()
    decode = header_text or (lambda v: str(v or ""))
    for name in _HEADER_WORDS:
        value = decode(message.get(name))
        out.update(_words(value, f"{name}:"))
        if value and value.isupper() and len(value) > 8:
            out.add(f"{name}:all-caps")
    for name in _HEADER_ADDRESSES:
        value = decode(message.get(name)).lower()
        for addr in re.findall(r"[\w.+-]+@[\w.-]+", value):
            user, _, domain = addr.partition("@")
            out.add(f"{name}:user:{user[:MAX_WORD]}")
            out.add(f"{name}:domain:{domain}")
            if name == "from":
                out.add(sender_token(addr))
        if not value:
            out.add(f"{name}:none")
    for name in _HEADER_WHOLE:
        value = decode(message.get(name)).lower()
        out.add(f"{name}:" + " ".join(value.split()[:2])[:40])
    out.add(f"header-count:{min(40, len(message.keys())) // 5}")
    for part in message.walk():
        ctype = part.get_content_type()
        out.add(f"content-type:{ctype}")
        charset = part.get_content_charset()
        if charset:
            out.add(f"charset:{charset}")
        cte = (part.get("content-transfer-encoding") or "").strip().lower()
        if cte:
            out.add(f"encoding:{cte}")
        name = part.get_filename()
        if name:
            out.add("filename:" + str(name).lower().rsplit(".", 1)[-1][:10])
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        text = without_footer(_decoded_text(part))
        if ctype == "text/html":
            for feature, pattern in _HTML_FEATURES.items():
                if pattern.search(text):
                    out.add(f"html:{feature}")
            out.update(_url_tokens(text))
            text = html.unescape(_TAG.sub(" ", text))
        else:
            out.update(_url_tokens(text))
        out.update(_words(text))
    return out


@dataclass
class Model:
    """Token counts: ``counts[token] = [spam messages, ham messages]``."""

    nspam: int = 0
    nham: int = 0
    counts: dict[str, list[int]] = field(default_factory=dict)
    # Probabilities of the known tokens scored so far, valid for one state of the counts:
    # a scanner scores thousands of messages between two changes of its model.
    _known: dict[str, float | None] = field(default_factory=dict, repr=False, compare=False)
    _known_for: tuple = field(default=(), repr=False, compare=False)

    def learn(self, toks: Iterable[str], is_spam: bool, weight: int = 1) -> None:
        """Count a message (``weight`` -1 takes one back out; no count goes below 0)."""
        self._known_for = ()
        index = 0 if is_spam else 1
        if is_spam:
            self.nspam = max(0, self.nspam + weight)
        else:
            self.nham = max(0, self.nham + weight)
        for tok in toks:
            pair = self.counts.get(tok)
            if pair is None:
                if weight < 0:
                    continue
                pair = self.counts[tok] = [0, 0]
            pair[index] = max(0, pair[index] + weight)
            if pair == [0, 0]:
                del self.counts[tok]

    def probability(self, tok: str) -> float | None:
        pair = self.counts.get(tok)
        if pair is None or not self.nspam or not self.nham or tok.startswith(HISTORY):
            return None
        spam, ham = pair
        spam_ratio = spam / self.nspam
        ham_ratio = ham / self.nham
        if spam_ratio + ham_ratio == 0:
            return None
        prob = spam_ratio / (spam_ratio + ham_ratio)
        n = spam + ham
        return (STRENGTH * UNKNOWN + n * prob) / (STRENGTH + n)

    def score(self, toks: Iterable[str]) -> tuple[float, list[tuple[str, float]]]:
        """(spam probability 0..1, the discriminating tokens with their probabilities)."""
        state = (id(self.counts), len(self.counts), self.nspam, self.nham)
        if self._known_for != state:
            self._known, self._known_for = {}, state
        known, counts = self._known, self.counts
        clues = []
        for tok in toks:
            prob = known.get(tok, _UNSEEN)
            if prob is _UNSEEN:
                if tok not in counts:
                    continue
                prob = known[tok] = self.probability(tok)
            if prob is not None and abs(prob - 0.5) >= MIN_STRENGTH:
                clues.append((abs(prob - 0.5), tok, prob))
        clues.sort(reverse=True)
        clues = clues[:MAX_DISCRIMINATORS]
        if not clues:
            return 0.5, []
        ham_sum = spam_sum = 0.0
        for _, _, prob in clues:
            prob = min(max(prob, 1e-6), 1 - 1e-6)
            spam_sum += math.log(1.0 - prob)
            ham_sum += math.log(prob)
        n = len(clues)
        spam_evidence = 1.0 - _chi2q(-2.0 * spam_sum, 2 * n)
        ham_evidence = 1.0 - _chi2q(-2.0 * ham_sum, 2 * n)
        value = (spam_evidence - ham_evidence + 1.0) / 2.0
        return value, [(tok, prob) for _, tok, prob in clues]

    # ---------------------------------------------------------------- storage

    def save(self, directory: Path, min_count: int = MIN_SAVED) -> Path:
        """Write the model (tokens seen fewer than ``min_count`` times are left out) with
        ``save_table``."""
        lines = [f"#mailgate-tokens\t{self.nspam}\t{self.nham}\n"]
        for tok in sorted(self.counts):
            spam, ham = self.counts[tok]
            if spam + ham >= min_count and "\t" not in tok and "\n" not in tok:
                lines.append(f"{tok}\t{spam}\t{ham}\n")
        return save_table(directory / MODEL_FILE, "".join(lines).encode("utf-8", "replace"))

    @classmethod
    def load(cls, directory: Path) -> Model:
        path = directory / MODEL_FILE
        model = cls()
        with gzip.open(path, "rt", encoding="utf-8") as f:
            head = f.readline().rstrip("\n").split("\t")
            if head[0] != "#mailgate-tokens" or len(head) != 3:
                raise ValueError(f"{path}: not a mailgate token table")
            model.nspam, model.nham = int(head[1]), int(head[2])
            counts = model.counts
            for line in f:
                tok, spam, ham = line.rstrip("\n").rsplit("\t", 2)
                counts[tok] = [int(spam), int(ham)]
        return model


def save_table(target: Path, data: bytes) -> Path:
    """Write ``data`` gzip'd beside ``target``, fsync it, rename it over ``target``, fsync the
    directory: a crash leaves the old table or the new, both whole. Readable by all (mode as
    the umask allows): a shipped table is read by the service user."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as raw:
        raw.write(gzip.compress(data, compresslevel=9, mtime=0))
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, target)
    fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


def _chi2q(x2: float, v: int) -> float:
    """P(chi-square with ``v`` (even) degrees of freedom >= ``x2``)."""
    m = x2 / 2.0
    total = term = math.exp(-m)
    for i in range(1, v // 2):
        term *= m / i
        total += term
    return min(total, 1.0)
