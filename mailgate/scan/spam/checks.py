"""What a message is judged on (``Facts``, computed once per message) and the built-in checks
that rule files name with ``check NAME``.

Each check is a pure function of the facts; none reads the network or the spool.
"""

from __future__ import annotations

import datetime
import email.utils
import ipaddress
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from functools import cached_property

KNOWN_SENDER_HAM = 2
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@dataclass
class Facts:
    """What the rules look at, computed once per message."""

    message: Message
    headers: dict[str, str]
    text: str
    raw_text: str
    html_only: bool
    obfuscated: bool  # letters written to slip past a filter (``spamtest._obfuscated``)
    links: list[tuple[str, str]]
    urls: list[str]
    mail_from: str
    helo: str  # of the hop the client checks judge (``trust``); empty when none
    client_ip: str
    hostname: str
    inside: int = 0  # newest Received fields (ours excluded) written by our trusted side
    our_names: set[str] = field(default_factory=set)
    bayes: float | None = None  # None: the token model found no clue either way
    grams: float | None = None  # the character model's spam probability; None: no model
    # (spam, ham) messages of the From address in the token table (``bayes.sender_history``);
    # (0, 0) when unknown or when the message failed sender authentication
    sender_counts: tuple[int, int] = (0, 0)

    @cached_property
    def folded_text(self) -> str:
        return fold(self.text)

    @cached_property
    def folded_raw(self) -> str:
        return fold(self.raw_text)

    @cached_property
    def date(self) -> datetime.datetime | None:
        """The Date header parsed; None when absent or malformed."""
        value = self.headers.get("date")
        return _parse_date(value) if value else None

    @cached_property
    def from_address(self) -> str:
        return email.utils.parseaddr(self.headers.get("from", ""))[1]

    @cached_property
    def received(self) -> list[tuple[str, float | None]]:
        """Each Received header, newest first, with its time stamp when it has a valid one."""
        out = []
        for value in self.message.get_all("received") or []:
            text = str(value)
            out.append((text, _received_time(text)))
        return out


# The characters that ``re.IGNORECASE`` matches to an ASCII letter although ``str.lower`` does
# not give that letter (İ lowers to two characters); every other case-insensitive match of an
# ASCII letter survives ``str.lower``.
_FOLDS = str.maketrans({"\u0130": "i", "\u0131": "i", "\u017f": "s"})


def fold(text: str) -> str:
    """Lower case in which every case-insensitive match of an ASCII literal is a substring,
    each character at the index it had (only İ lowers to two, and it is mapped first)."""
    if "\u0130" in text or "\u0131" in text or "\u017f" in text:
        text = text.translate(_FOLDS)
    return text.lower()


def _date_malformed(f: Facts) -> bool:
    return bool(f.headers.get("date")) and f.date is None


def _parse_date(value: str) -> datetime.datetime | None:
    """An RFC 5322 date; None when it does not parse."""
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def _received_time(text: str) -> float | None:
    stamp = _parse_date(text.rpartition(";")[2].strip())
    return stamp.timestamp() if stamp is not None and stamp.tzinfo is not None else None


def _date_far_from_received(f: Facts) -> bool:
    """Date: over 96 hours before the newest Received stamp, or over 24 hours after it.

    Real mailers stamp the time of sending; bulk senders reuse a template's date or send
    with a wrong clock. The newest stamp is the receiving side's (ours, once received).
    """
    sent = f.date
    if sent is None or sent.tzinfo is None:
        return False
    for _text, received in f.received:
        if received is not None:
            return not -86400 <= received - sent.timestamp() <= 96 * 3600
    return False


def _message_id_malformed(f: Facts) -> bool:
    value = f.headers.get("message-id", "")
    return bool(value) and not re.fullmatch(r"\s*<[^<>@\s]+@[^<>@\s]+>\s*", value)


def _from_malformed(f: Facts) -> bool:
    if "from" not in f.headers:
        return False
    return not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", f.from_address)


def _from_envelope_mismatch(f: Facts) -> bool:
    addr = f.from_address
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
    chain = f.received
    if chain and "(mailgate)" in chain[0][0]:
        chain = chain[1:]  # our own trace header, added on receipt
    chain = chain[f.inside :]  # only what was written outside can be forged
    for text, stamp in chain:
        if host and host in text.lower() and re.search(rf"\bby\s+{re.escape(host)}\b", text, re.I):
            return True
        if stamp is not None:
            stamps.append(stamp)
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


def known_ham(spam: int, ham: int) -> bool:
    """A From address with these counts in the token table (spam, ham messages) has sent at
    least ``KNOWN_SENDER_HAM`` messages learned as ham and none learned as spam: the same
    sender's earlier mail, as SpamAssassin's TxRep remembers it. It tells a subscribed
    newsletter from spam written alike. The address, not the domain: spam from a mail
    provider's other users must not inherit it; one spam learned from the address ends it."""
    return ham >= KNOWN_SENDER_HAM and spam == 0


def _gtube(f: Facts) -> bool:
    return GTUBE in f.raw_text


CHECKS: dict[str, Callable[[Facts], bool]] = {
    "date_malformed": _date_malformed,
    "date_far_from_received": _date_far_from_received,
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
    "obfuscated_letters": lambda f: f.obfuscated,
    "subject_encoded_unneeded": _subject_encoded_unneeded,
    "known_ham_sender": lambda f: known_ham(*f.sender_counts),
    "gtube": _gtube,
}
