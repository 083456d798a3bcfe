"""The trust boundary: which hop of a message's path the client checks judge.

As SpamAssassin's ``trusted_networks`` and Postfix's ``local_header_rewrite_clients`` draw it:
checks about the connecting client (HELO names, the client's block lists, forged Received
chains) are about the hop where the message entered from outside ``TrustedNetworks``. For a
client outside them that is this session. For a trusted client (an internal relay, an
application server, a printer) it is the newest Received hop whose sending address is
outside them, read from headers our own trusted relays wrote; when the chain shows none the
message was written inside, and those checks have no one to judge.

A trusted client that leaves out From, Date or Message-ID gets them added
(``missing_fields``), as Postfix's cleanup adds them for local submissions, rather than a
score for a header an application never writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate

_FROM = re.compile(r"\s*from\s+(\S+)", re.I)
_FROM_IP = re.compile(r"\s*from\s[^;]*?\[(?:IPv6:)?([0-9A-Fa-f:.]+)\]", re.I)


@dataclass(frozen=True)
class Boundary:
    """The hop judged by the client checks (``helo``, ``ip``: empty when there is none),
    and how many of the newest Received fields (ours excluded) our side wrote: the forgery
    check reads only the ones after them, written outside."""

    helo: str
    ip: str
    inside: int = 0

    @property
    def judged(self) -> bool:
        return bool(self.ip)


def boundary(client: dict, received: list[str], trusted: Callable[[str], bool]) -> Boundary:
    """``client`` is the envelope's (``ip``, ``helo``); ``received`` the Received fields
    newest first, our own trace field left out."""
    ip = client.get("ip") or ""
    if not ip or not trusted(ip):
        return Boundary(client.get("helo") or "", ip)
    for index, text in enumerate(received):
        hop = _FROM_IP.match(text)
        if hop is None:  # written without a network hop (a local submission): inside
            return Boundary("", "", len(received))
        if trusted(hop.group(1)):
            continue
        helo = _FROM.match(text)
        return Boundary(helo.group(1) if helo else "", hop.group(1), index + 1)
    return Boundary("", "", len(received))


def cleaned_up(envelope: dict, trusted: Callable[[str], bool]) -> bool:
    """Does this message get missing fields added: a message (not a notice or DSN of ours)
    from a trusted client?"""
    ip = (envelope.get("client") or {}).get("ip") or ""
    return bool(ip) and trusted(ip) and envelope.get("kind", "message") == "message"


def missing_fields(
    present: Iterable[str], envelope: dict, trusted: Callable[[str], bool], hostname: str
) -> list[tuple[str, str]]:
    """The From, Date and Message-ID a message from a trusted client lacks, with the values
    the scanner adds (the same for every look at the same message: from the envelope sender,
    the queue ID and the time of receipt). ``present`` holds the names of its header
    fields, in any case."""
    if not cleaned_up(envelope, trusted):
        return []
    names = {name.lower() for name in present}
    added = []
    if "from" not in names and envelope.get("mail_from"):
        added.append(("From", envelope["mail_from"]))
    if "date" not in names:
        added.append(("Date", formatdate(envelope.get("received_at"), localtime=True)))
    if "message-id" not in names:
        added.append(("Message-ID", f"<{envelope['id']}@{hostname}>"))
    return added
