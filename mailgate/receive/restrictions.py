"""The receiver's checks on what a client says, in the spirit of Postfix's smtpd restrictions.

- HELO/EHLO: a name that claims to be this gateway (its Hostname or a ListenOn address) is
  refused with ``550 5.7.1`` (``RejectHeloAsUs``); one that is neither a domain name nor an
  address literal with ``501 5.5.2`` (``RejectInvalidHelo``). Trusted clients are not checked.
- Recipients: with ``ValidRecipients``, a protected domain that has entries in the list
  accepts only those addresses (masks allowed), everybody else gets ``550 5.1.1`` at RCPT,
  so the gateway never accepts mail it would have to bounce (backscatter).
- Block lists at connect (``ConnectRBL``): a listed client is refused with ``554 5.7.1`` before
  the greeting, or with ``ConnectRBLAction=mark`` let in and its mail marked
  ``X-Mailgate-RBL``.
- DATA: too large a header block, too many fields or hops is refused (``header_refusal``).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import time

from mailgate.config import Config
from mailgate.message.headers import header_block

_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?$"
)


def helo_valid(name: str) -> bool:
    if name.startswith("[") and name.endswith("]"):
        literal = name[1:-1]
        if literal.lower().startswith("ipv6:"):
            literal = literal[5:]
        try:
            ipaddress.ip_address(literal)
        except ValueError:
            return False
        return True
    return bool(_DOMAIN_RE.match(name))


def helo_refusal(config: Config, name: str, client_ip: str) -> str | None:
    if config.is_trusted(client_ip):
        return None
    name = name.strip()
    bare = name.strip("[]").lower().removeprefix("ipv6:").rstrip(".")
    ours = {config.hostname.lower(), *(host.lower() for host, _port in config.listen)}
    if config.reject_helo_as_us and bare in ours:
        return f"550 5.7.1 {name}: you are not me"
    if config.reject_invalid_helo and not helo_valid(name):
        return f"501 5.5.2 {name}: invalid HELO name"
    return None


class Recipients:
    """``ValidRecipients``: per protected domain, the addresses (or masks) that exist."""

    def __init__(self, config: Config):
        self.by_domain: dict[str, list[str]] = {}
        for item in config.list_items(config.valid_recipients):
            item = item.lower()
            domain = item.rpartition("@")[2]
            self.by_domain.setdefault(domain, []).append(item)

    def unknown(self, address: str) -> bool:
        if not self.by_domain:
            return False
        address = address.lower()
        known = self.by_domain.get(address.rpartition("@")[2].rstrip("."))
        if known is None:
            return False  # a domain nobody listed: not verified
        return not any(fnmatch.fnmatchcase(address, mask) for mask in known)


def relay_refusal(config: Config, ip: str, address: str) -> str | None:
    """Never an open relay: outside TrustedNetworks, only ProtectedDomains, and no address
    tricks a next hop could route onward (percent hack, bang paths, quoted @)."""
    local, _, domain = address.rpartition("@")
    if not local or not domain:
        return "501 5.1.3 Recipient address must be user@domain"
    if config.is_trusted(ip):
        return None
    if not config.is_protected(domain) or any(c in local for c in "@%!"):
        return "550 5.7.1 Relay access denied"
    return None


def header_refusal(config: Config, data: bytes) -> str | None:
    """Too many header fields, too large a header block, or too many hops (a loop)."""
    head = header_block(data)
    if config.max_header_size and len(head) > config.max_header_size:
        return "552 5.3.4 Message header too large"
    fields = [line for line in head.split(b"\r\n") if line and line[:1] not in b" \t"]
    if config.max_headers and len(fields) > config.max_headers:
        return "552 5.3.4 Too many header fields"
    hops = sum(1 for line in fields if line[:9].lower() == b"received:")
    if config.max_hops and hops + 1 > config.max_hops:  # with the one we would add
        return f"554 5.4.6 Too many hops ({hops} Received headers): mail loop?"
    return None


def declared_size(mail_options: list[str]) -> int:
    """The SIZE= a client declared at MAIL (RFC 1870), 0 if none or unreadable."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isdigit() and len(value) <= 20:
            return int(value)
    return 0


class Storage:
    """Can new mail be stored now? ``incoming/`` under MaxQueueSize and the spool's file
    system above MinFreeDisk (with room for a declared SIZE); looked at no more than every
    ``CACHE_SECONDS``, so a flood of MAIL commands costs no flood of statvfs calls."""

    CACHE_SECONDS = 0.5

    def __init__(self, spool):
        self.spool = spool
        self.checked = 0.0
        self.reason: str | None = None
        self.room = 0

    def refusal(self, config: Config, declared: int = 0) -> str | None:
        """Why new mail (of ``declared`` bytes) cannot be stored now, else None."""
        now = time.monotonic()
        if now - self.checked >= self.CACHE_SECONDS:
            self.checked = now
            self.reason = None
            try:
                if self.spool.count("incoming") >= config.max_queue_size:
                    self.reason = "queue full"
                st = os.statvfs(self.spool.root)
            except OSError as exc:
                self.reason = f"spool unusable: {exc.strerror}"
            else:
                floor = config.min_free_disk.of(st.f_blocks * st.f_frsize)
                self.room = st.f_bavail * st.f_frsize - floor
                if self.reason is None and self.room < 0:
                    self.reason = "disk full"
        if self.reason is None and declared > self.room:
            return "declared size does not fit"
        return self.reason
