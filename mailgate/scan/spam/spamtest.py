"""Spamtest: a spam status with a score that explains itself.

The score is a sum of named rules with their weights, as SpamAssassin's tests or rspamd's
symbols: the header and body rules of ``spamrules`` (``data/spamtest/rules.conf``), the typical
terms and phrases (``data/spamtest/phrases.conf``), the token model of ``bayes`` (one of the
``BAYES_*`` rules by its probability), the character model of ``grams`` (one of the
``GRAMS_*`` rules), and DNS block lists (``dnsbl``). Black and white lists
decide before any scoring: a whitelisted message is ``whitelisted`` whatever it says, a
blacklisted one ``blacklisted``. Otherwise the score against the thresholds of the Intensity
gives ``spam``, ``probable-spam`` or ``clean``.

The token database the scanners use is the spool's ``spamdb/tokens.tsv.gz``, seeded from the
shipped ``data/spamdb/`` and changed by ``mailgate learn`` and ``mailgate update``; a scanner
re-reads it when its mtime changes.
"""

from __future__ import annotations

import gc
import gzip
import hashlib
import html
import os
import re
import shutil
import socket
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import filelock

from mailgate.config import Config, data_path, in_networks, parse_networks
from mailgate.message.domains import address_listed, registered_domain
from mailgate.runtime import log as logmod
from mailgate.runtime.cluster import Cluster
from mailgate.runtime.dnsbl import Checker
from mailgate.scan.av.avdb import REJECTED, UPDATED
from mailgate.scan.mime import Split, decode_words
from mailgate.scan.spam import bayes, grams, trust
from mailgate.scan.spam import rules as spamrules
from mailgate.scan.spam.authrules import auth_rules
from mailgate.scan.spam.checks import Facts
from mailgate.scan.spam.shared import SharedTokens
from mailgate.spool import Spool

# (score needed for spam, for probable-spam) per Intensity.
THRESHOLDS = {"low": (7.0, 2.0), "medium": (5.0, 1.6), "high": (4.0, 0.2)}
_LINK = re.compile(r"(?is)<a\s[^>]*href\s*=\s*[\"']?([^\"'\s>]+)[^>]*>(.*?)</a>")
_URL = re.compile(r"(?i)\bhttps?://[^\s\"'<>()]+")
_TAG = re.compile(r"(?s)<[^>]*>")
_ZERO_WIDTH_CHARS = "\u200b\u200c\u200d\u2060\ufeff"
_ZERO_WIDTH = re.compile(f"[{_ZERO_WIDTH_CHARS}]+")
_MATH_LETTERS = re.compile("[\U0001d400-\U0001d7ff]{3,}")


def _obfuscated(text: str) -> bool:
    """Zero-width characters between Latin letters (legitimate between the letters of scripts
    that need joiners, never in a Latin word), or a run of mathematical alphanumeric letters.

    Searched only where they can be: not in ASCII text, zero-width runs only where ``in``
    finds such a character, mathematical letters (outside the Basic Multilingual Plane) only
    where UTF-16 needs surrogates. A pattern scan of every text would cost about 1 ms for
    50 KB of accented text, 2 ms when led by a letter class."""
    if text.isascii():
        return False
    if any(c in text for c in _ZERO_WIDTH_CHARS):
        for run in _ZERO_WIDTH.finditer(text):
            pair = text[run.start() - 1 : run.start()] + text[run.end() : run.end() + 1]
            if len(pair) == 2 and pair.isascii() and pair.isalpha():
                return True
    astral = len(text.encode("utf-16-le", "surrogatepass")) != 2 * len(text)
    return astral and _MATH_LETTERS.search(text) is not None


@dataclass
class SpamVerdict:
    status: str
    score: float
    required: float
    rules: dict[str, float] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set, repr=False, compare=False)  # for learning

    def public(self) -> dict:
        return {
            "status": self.status,
            "score": round(self.score, 2),
            "required": self.required,
            "rules": {k: round(v, 2) for k, v in self.rules.items()},
        }

    def header_status(self, tagged: bool) -> str:
        """``Yes|No, score=..., required=..., status=..., tests=NAME(weight),...``, folded
        (CRLF and a tab) so that no line grows past 78 characters. ``Yes`` when the copy
        is ``tagged`` (the policy marks it as spam or probable spam), else ``No``."""
        flag = "Yes" if tagged else "No"
        items = [f"{name}({weight:g})" for name, weight in sorted(self.rules.items())]
        text = (
            f"{flag}, score={self.score:.1f}, required={self.required:.1f}, "
            f"status={self.status}, tests="
        )
        line = len("X-Spam-Status: ") + len(text)
        for i, item in enumerate(items or ["none"]):
            piece = item + ("," if i < len(items) - 1 else "")
            if line + len(piece) > 78:
                text += "\r\n\t"
                line = 1
            text += piece
            line += len(piece)
        return text

    def header_level(self) -> str:
        return "*" * max(0, min(50, int(self.score)))


def _facts(split: Split, envelope: dict, config: Config) -> Facts:
    message = split.message
    headers: dict[str, str] = {}
    received: list[str] = []
    received_skipped = False
    for name, value in message.items():
        key = name.lower()
        text = decode_words(str(value))
        if key == "received":
            if not received_skipped and "(mailgate)" in text:
                received_skipped = True  # our own trace header is not evidence
                continue
            received.append(text)
        headers[key] = headers[key] + "\n" + text if key in headers else text
    for name, value in trust.missing_fields(headers, envelope, config.is_trusted, config.hostname):
        headers[name.lower()] = value  # the scanner adds them: not evidence against the sender
    texts, raws = [], []
    has_plain = has_html = False
    obfuscated = _obfuscated(headers.get("subject", ""))
    links: list[tuple[str, str]] = []
    for obj in split.objects:
        if not obj.content_type.startswith("text/") or obj.name:
            continue
        part = obj.part
        charset = (part.get_content_charset() if part is not None else None) or "latin-1"
        data = obj.head(bayes.TEXT_LIMIT)
        try:
            text = data.decode(charset, "replace")
        except LookupError:
            text = data.decode("latin-1", "replace")
        raws.append(text)
        if obj.content_type == "text/html":
            has_html = True
            links += [(h, html.unescape(_TAG.sub("", t))) for h, t in _LINK.findall(text)]
            text = html.unescape(_TAG.sub(" ", text))
        else:
            has_plain = True
        obfuscated = obfuscated or _obfuscated(text)
        texts.append(bayes.fold(text))
    raw_text = "\n".join(raws)
    judged = trust.boundary(envelope.get("client") or {}, received, config.is_trusted)
    return Facts(
        message=message,
        headers=headers,
        text="\n".join(texts),
        raw_text=raw_text,
        html_only=has_html and not has_plain,
        obfuscated=obfuscated,
        links=links,
        urls=_URL.findall(raw_text) if "http" in raw_text.lower() else [],  # 5 µs, not 30
        mail_from=envelope.get("mail_from", ""),
        helo=judged.helo,
        client_ip=judged.ip,
        inside=judged.inside,
        hostname=config.hostname,
        our_names={config.hostname.lower(), *(h for h, _p in config.listen)},
    )


def _domains(urls: list[str]) -> list[str]:
    """The registered domains of the URLs' hosts, first seen first: URI block lists list
    the domain a registrant bought, not the sites a provider's customers make under it."""
    seen = []
    for url in urls:
        host = re.split(r"[/?#:]", url.split("//", 1)[-1], maxsplit=1)[0].lower().strip(".")
        if not host or re.fullmatch(r"[\d.]+", host):
            continue
        domain = registered_domain(host)
        if domain and domain not in seen:
            seen.append(domain)
    return seen


class Spamtest:
    """One process's spam filter. Build it again to pick up a new configuration."""

    def __init__(self, config: Config, spool: Spool | None = None, network: bool | None = None):
        self.config = config
        self.spool = spool
        self.network = config.spam_network if network is None else network
        self.rules, problems = spamrules.load(config.shipped("spam_rules", "spamtest/rules.conf"))
        phrases, more = spamrules.load(config.shipped("spam_phrases", "spamtest/phrases.conf"))
        self.rules += [r for r in phrases if not r.phrase]
        self.phrases = spamrules.PhraseSet([r for r in self.rules + phrases if r.phrase])
        self.rules = [r for r in self.rules if not r.phrase]
        self.problems = problems + more
        self.white_senders = [m.lower() for m in config.list_items(config.whitelist_senders)]
        self.black_senders = [m.lower() for m in config.list_items(config.blacklist_senders)]
        self.white_rcpts = [m.lower() for m in config.list_items(config.whitelist_recipients)]
        self.black_rcpts = [m.lower() for m in config.list_items(config.blacklist_recipients)]
        self.white_nets = [
            n for i in config.list_items(config.whitelist_networks) for n in parse_networks(i)
        ]
        self.black_nets = [
            n for i in config.list_items(config.blacklist_networks) for n in parse_networks(i)
        ]
        self.dns = Checker(config.nameservers, config.dns_timeout)
        self.model_path = self._model_path()
        self.model_mtime = 0.0
        self.model = self.base = bayes.Model()
        cluster = Cluster(config) if spool is not None and config.cluster_redis else None
        self.shared = SharedTokens(cluster) if cluster is not None else None
        self._load_model()
        self.grams = _load_grams(config)

    # ------------------------------------------------------------ the token model

    def _model_path(self) -> Path:
        shipped = self.config.shipped("spam_database", "spamdb")
        if self.spool is None:
            return shipped / bayes.MODEL_FILE
        return ensure_seeded(self.spool, shipped)

    def _load_model(self) -> None:
        """The node's table (re-read when its file changed) plus, in a cluster, what was
        learned on any node (``shared``)."""
        try:
            mtime = os.stat(self.model_path).st_mtime
        except OSError:
            return
        changed = mtime != self.model_mtime
        if changed:
            self.base = bayes.Model.load(self.model_path.parent)
            self.model_mtime = mtime
        if self.shared is not None and (self.shared.refresh() or changed):
            self.model, changed = self.shared.merged(self.base), True
        elif changed:
            self.model = self.base
        if changed:
            gc.collect()
            gc.freeze()  # tens of thousands of long-lived counts: keep them out of every GC pass

    # ------------------------------------------------------------ lists

    def _lists(self, envelope: dict) -> tuple[str, str] | None:
        """White and black lists, of the sender, the recipients and the client (the one that
        connected: lists name the hosts an administrator knows)."""
        client_ip = (envelope.get("client") or {}).get("ip") or ""
        sender = envelope.get("mail_from", "")
        rcpts = [r["address"] for r in envelope.get("recipients", [])]
        if (
            address_listed(sender, self.white_senders)
            or any(address_listed(r, self.white_rcpts) for r in rcpts)
            or in_networks(client_ip, self.white_nets)
        ):
            return "whitelisted", "WHITELISTED"
        if (
            address_listed(sender, self.black_senders)
            or any(address_listed(r, self.black_rcpts) for r in rcpts)
            or in_networks(client_ip, self.black_nets)
        ):
            return "blacklisted", "BLACKLISTED"
        return None

    # ------------------------------------------------------------ scoring

    def check(self, split: Split, envelope: dict) -> SpamVerdict:
        config = self.config
        spam_at, probable_at = THRESHOLDS[config.intensity]
        client_ip = (envelope.get("client") or {}).get("ip") or ""
        if client_ip and config.is_trusted(client_ip) and not config.probable_for_trusted:
            probable_at = spam_at
        facts = _facts(split, envelope, config)
        listed = self._lists(envelope)
        if listed:
            return SpamVerdict(listed[0], 0.0, spam_at, {listed[1]: 0.0})
        if self.spool is not None:
            self._load_model()
        tokens = bayes.tokens(split.message, decode_words)
        probability, clues = self.model.score(tokens)
        facts.bayes = probability if clues else None
        if self.grams is not None:
            found = grams.features(facts.headers, facts.text)
            facts.grams = grams.probability(self.grams.margin(found))
        authentication = auth_rules(envelope)
        if not any(w > 0 for w in authentication.values()):
            facts.sender_counts = bayes.sender_history(
                self.model.counts, tokens, facts.from_address, facts.headers, envelope
            )
        rules: dict[str, float] = {}
        for rule in self.rules:
            try:
                if rule.test(facts) and rule.weight:
                    rules[rule.name] = rule.weight
            except (ValueError, TypeError, LookupError, re.error):
                continue
        for rule in self.phrases.hits(facts.text, facts.folded_text):
            rules[rule.name] = rule.weight
        rules.update(authentication)
        if self.network and (config.rbl_zones or config.uribl_zones):
            for name, (weight, _why) in self.dns.check(
                facts.client_ip, _domains(facts.urls), config.rbl_zones, config.uribl_zones
            ).items():
                rules[name] = weight
        score = sum(rules.values())
        if score >= spam_at:
            status = "spam"
        elif score >= probable_at:
            status = "probable-spam"
        else:
            status = "clean"
        return SpamVerdict(status, score, spam_at, rules, tokens)


def _load_grams(config: Config) -> grams.Model | None:
    """The character model beside the token table that ships (``Database``), else the
    package's; None when neither loads (then no ``GRAMS_*`` rule fires). A table that is
    there but cannot be read (damaged, another version) is logged, never passed over quietly:
    the administrator who trained it would otherwise not know it is not in use."""
    folders = (config.shipped("spam_database", "spamdb"), data_path("spamdb"))
    for folder in dict.fromkeys(folders):
        path = folder / grams.MODEL_FILE
        try:
            return grams.Model.load(path)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, EOFError) as exc:
            logmod.get().error("spam_model_unreadable", path=str(path), error=repr(exc)[:200])
    return None


def grams_of(split: Split, config: Config) -> array:
    """The character model's features of a message, as ``Spamtest.check`` computes them, for
    training (``mailgate train``, ``scripts/tune_spam.py``): packed two bytes a bucket, so a
    corpus of 100,000 messages holds 400 MB of them rather than the 12 GB of as many sets."""
    facts = _facts(split, {"mail_from": "", "recipients": []}, config)
    return grams.packed(grams.features(facts.headers, facts.text))


def ensure_seeded(spool: Spool, shipped: Path) -> Path:
    """The spool's token table, copied from ``shipped`` when missing or when the shipped one
    changed and the spool's was never changed by learn or update."""
    folder = spool.spamdb_root
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / bayes.MODEL_FILE
    origin = folder / "origin"
    source = shipped / bayes.MODEL_FILE
    if not source.is_file():
        return target
    stamp = "shipped " + hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    have = origin.read_text().strip() if origin.exists() else ""
    if not target.exists() or (have.startswith("shipped ") and have != stamp):
        tmp = folder / f"{bayes.MODEL_FILE}.{os.getpid()}.{socket.gethostname()}.tmp"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        origin.write_text(stamp + "\n")
    return target


def database_lock(spool: Spool, timeout: float = -1) -> filelock.FileLock:
    """Held while the spool's token table is rewritten (learn, update, a merge of what the
    scanners auto-learned); ``timeout`` 0 gives up at once when another holds it."""
    folder = spool.spamdb_root
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return filelock.FileLock(str(folder / "update.lock"), timeout=timeout)


def mark_changed(spool: Spool, how: str) -> None:
    """Record that the spool's token table no longer is the shipped one."""
    (spool.spamdb_root / "origin").write_text(how + "\n")


def update(spool: Spool, source: Path) -> tuple[int, str]:
    """Install ``source``/tokens.tsv.gz as the spool's token table: (exit code, what happened).

    The new table must load (else exit 6 and the old one stays); it replaces the old one with
    one rename, and every scanner re-reads it before its next message.
    """
    new = source / bayes.MODEL_FILE
    digest = hashlib.sha256(new.read_bytes()).hexdigest()[:16]
    try:
        model = bayes.Model.load(source)
    except (OSError, ValueError, EOFError, gzip.BadGzipFile) as exc:
        return REJECTED, f"spam database rejected, keeping the old one: {exc}"
    folder = spool.spamdb_root
    with database_lock(spool):
        origin = folder / "origin"
        if origin.exists() and origin.read_text().strip() == f"update {digest}":
            return UPDATED, f"spam database {digest} is already installed"
        tmp = folder / f"{bayes.MODEL_FILE}.update.tmp"
        shutil.copyfile(new, tmp)
        os.replace(tmp, folder / bayes.MODEL_FILE)
        mark_changed(spool, f"update {digest}")
    return UPDATED, (
        f"spam database {digest} installed ({model.nham} ham, {model.nspam} spam trained)"
    )
