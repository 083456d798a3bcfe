"""Structured option values: routes, actions, attachment rules, lists, groups, DNS zones.

Like ``values``, each parser turns one option's text into typed, immutable objects and raises
``BadValue`` on anything it cannot use.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass

from mailgate.config.values import HOST_RE, BadValue, parse_hostport, parse_masks, split_list


@dataclass(frozen=True)
class NextHop:
    """Where to connect. ``mx`` is true when ``host`` is a domain whose MX records decide."""

    host: str
    port: int | None
    mx: bool

    def __str__(self) -> str:
        if self.mx:
            return self.host if self.port is None else f"{self.host}:{self.port}"
        host = self.host if ":" not in self.host else f"IPv6:{self.host}"
        return f"[{host}]" if self.port is None else f"[{host}]:{self.port}"


@dataclass(frozen=True)
class Route:
    """``ForwardRoute=MASK NEXTHOP[, NEXTHOP...]``: the first route whose mask matches wins."""

    mask: str
    hops: tuple[NextHop, ...]

    def matches(self, address: str) -> bool:
        address = address.lower()
        if "@" in self.mask:
            return fnmatch.fnmatchcase(address, self.mask)
        return fnmatch.fnmatchcase(address.rpartition("@")[2], self.mask)


def parse_nexthop(text: str) -> NextHop:
    text = text.strip()
    if not text:
        raise BadValue("missing next hop")
    if text.startswith("["):
        host, port = parse_hostport(text)
        return NextHop(host, port, mx=False)
    host, port = parse_hostport(text)
    return NextHop(host, port, mx=True)


def parse_route(text: str) -> Route:
    parts = text.split(None, 1)
    if len(parts) != 2:
        raise BadValue(f"route needs 'MASK NEXTHOP', got {text!r}")
    mask = parse_masks(parts[0])
    if len(mask) != 1:
        raise BadValue(f"invalid route mask {parts[0]!r}")
    hops = tuple(parse_nexthop(h) for h in parts[1].split(","))
    return Route(mask[0], hops)


def parse_routes(text: str) -> list[Route]:
    return [parse_route(line) for line in text.splitlines() if line.strip()]


ACTIONS = ("deliver", "cure", "block", "quarantine")
MODES = ("speed", "recommended", "protection")
AV_STATUSES = ("infected", "suspicious", "encrypted", "corrupted", "unscannable")


def parse_actions(text: str) -> tuple[str, ...]:
    """``deliver``, ``cure``, ``block``, ``quarantine``, combinable with commas.

    Empty means "as the scan Mode says". ``block`` excludes ``deliver`` and ``cure``, and
    ``deliver`` excludes ``cure`` (a cured message is delivered anyway).
    """
    items = tuple(dict.fromkeys(split_list(text.lower())))
    for item in items:
        if item not in ACTIONS:
            raise BadValue(f"unknown action {item!r} (known: {', '.join(ACTIONS)})")
    if "block" in items and ("deliver" in items or "cure" in items):
        raise BadValue(f"'block' cannot be combined with deliver or cure: {text!r}")
    if "deliver" in items and "cure" in items:
        raise BadValue(f"choose one of 'deliver' and 'cure': {text!r}")
    return items


def parse_mode(text: str) -> str:
    low = text.strip().lower()
    if low not in MODES:
        raise BadValue(f"Mode must be one of {', '.join(MODES)}, got {text!r}")
    return low


def parse_statuses(text: str) -> tuple[str, ...]:
    known = (*AV_STATUSES, "banned")
    items = tuple(split_list(text.lower()))
    for item in items:
        if item not in known:
            raise BadValue(f"unknown status {item!r} (known: {', '.join(known)})")
    return items


def parse_address(text: str) -> str:
    text = text.strip()
    if text and not re.fullmatch(r"[^@\s<>]+@[^@\s<>]+", text):
        raise BadValue(f"expected an address like postmaster@company.com, got {text!r}")
    return text


@dataclass(frozen=True)
class AttachmentRule:
    """``ACTIONS PATTERN [PATTERN...]``: a file-name mask or a true (content) type mask."""

    actions: tuple[str, ...]
    patterns: tuple[str, ...]


def parse_rules(text: str) -> list[AttachmentRule]:
    rules = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2:
            raise BadValue(f"rule needs 'ACTIONS PATTERN...', got {line.strip()!r}")
        actions = parse_actions(parts[0])
        if not actions:
            raise BadValue(f"rule without actions: {line.strip()!r}")
        rules.append(AttachmentRule(actions, tuple(p.lower() for p in parts[1:])))
    return rules


SPAM_ACTIONS = ("deliver", "mark", "block", "quarantine")
SPAM_STATUSES = ("spam", "probable-spam", "blacklisted")
INTENSITIES = ("low", "medium", "high")


def parse_spam_actions(text: str) -> tuple[str, ...]:
    """``deliver``, ``mark``, ``block``, ``quarantine``; empty means "as Mode says"."""
    items = tuple(dict.fromkeys(split_list(text.lower())))
    for item in items:
        if item not in SPAM_ACTIONS:
            raise BadValue(f"unknown action {item!r} (known: {', '.join(SPAM_ACTIONS)})")
    if "block" in items and ("deliver" in items or "mark" in items):
        raise BadValue(f"'block' cannot be combined with deliver or mark: {text!r}")
    return items


def parse_intensity(text: str) -> str:
    low = text.strip().lower()
    if low and low not in INTENSITIES:
        raise BadValue(f"Intensity must be low, medium or high, got {text!r}")
    return low


@dataclass(frozen=True)
class ListSource:
    """A list entry: an inline item, or ``file:PATH`` whose lines are items (read on load)."""

    item: str


def parse_list_sources(text: str) -> list[ListSource]:
    return [ListSource(item) for item in split_list(text)]


def _one_of(text: str, *choices: str) -> str:
    value = text.strip().lower()
    if value not in choices:
        raise BadValue(f"expected {' or '.join(choices)}, got {text!r}")
    return value


def parse_rbl_action(text: str) -> str:
    return _one_of(text, "reject", "mark")


def parse_zones(text: str) -> list:
    zones = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (2, 3):
            raise BadValue(f"expected 'ZONE [MASKS] WEIGHT', got {line.strip()!r}")
        if not HOST_RE.match(parts[0]):
            raise BadValue(f"invalid zone {parts[0]!r}")
        try:
            weight = float(parts[-1])
        except ValueError:
            raise BadValue(f"weight must be a number, got {parts[-1]!r}") from None
        masks = tuple(parts[1].split(",")) if len(parts) == 3 else ("127.*",)
        zones.append(Zone(parts[0].lower().rstrip("."), masks, weight))
    return zones


def parse_connect_zones(text: str) -> list:
    """``ZONE [MASKS]`` lines (no weight: a listing refuses or marks)."""
    zones = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or not HOST_RE.match(parts[0]):
            raise BadValue(f"expected 'ZONE [MASKS]', got {line.strip()!r}")
        masks = tuple(parts[1].split(",")) if len(parts) == 2 else ("127.*",)
        zones.append(Zone(parts[0].lower().rstrip("."), masks, 0.0))
    return zones


@dataclass(frozen=True)
class Group:
    """``Group=NAME MASK...``: recipients (or senders) whose address matches a mask."""

    name: str
    masks: tuple[str, ...]

    def matches(self, address: str) -> bool:
        address = address.lower()
        return any(fnmatch.fnmatchcase(address, m) for m in self.masks)


def parse_groups(text: str) -> list[Group]:
    groups = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not re.fullmatch(r"[A-Za-z][\w-]{0,40}", parts[0]):
            raise BadValue(f"expected 'NAME MASK...', got {line.strip()!r}")
        groups.append(Group(parts[0].lower(), tuple(parse_masks(" ".join(parts[1:])))))
    return groups


def parse_group_actions(text: str) -> list[tuple[str, str, tuple[str, ...]]]:
    result = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if not parts:
            continue
        if len(parts) != 3 or parts[1].lower() not in SPAM_STATUSES:
            raise BadValue(
                f"expected 'GROUP STATUS ACTIONS' with STATUS one of "
                f"{', '.join(SPAM_STATUSES)}, got {line.strip()!r}"
            )
        actions = parse_spam_actions(parts[2])
        if not actions:
            raise BadValue(f"no actions in {line.strip()!r}")
        result.append((parts[0].lower(), parts[1].lower(), actions))
    return result


@dataclass(frozen=True)
class Zone:
    """``ZONE [MASKS] WEIGHT``: a listing counts when an A reply matches one of the masks
    (``127.0.0.2``, ``127.0.0.*``, ``127.0.0.2-127.0.0.11``, comma-separated)."""

    zone: str
    masks: tuple[str, ...]
    weight: float

    @property
    def rule(self) -> str:
        return "RBL_" + "".join(c if c.isalnum() else "_" for c in self.zone.upper())

    def matches(self, reply: str) -> bool:
        for mask in self.masks:
            if "-" in mask:
                low, high = mask.split("-", 1)
                try:
                    if (
                        ipaddress.ip_address(low)
                        <= ipaddress.ip_address(reply)
                        <= ipaddress.ip_address(high)
                    ):
                        return True
                except ValueError:
                    continue
            elif fnmatch.fnmatchcase(reply, mask):
                return True
        return False


def parse_bounce_content(text: str) -> str:
    """``headers`` or ``full``: what a DSN to a sender outside TrustedNetworks carries."""
    return _one_of(text, "headers", "full")


def parse_verification(text: str) -> str:
    """``no`` or ``next-hop``: how recipients in ProtectedDomains are checked at RCPT."""
    return _one_of(text, "no", "next-hop")


def parse_spf_action(text: str) -> str:
    """``mark`` or ``reject``: what an SPF fail gets at RCPT."""
    return _one_of(text, "mark", "reject")


def parse_dmarc_action(text: str) -> str:
    """``reject``, ``quarantine`` or ``mark``: what a DMARC fail under a policy gets."""
    return _one_of(text, "reject", "quarantine", "mark")


@dataclass(frozen=True)
class SigningKey:
    domain: str
    selector: str
    path: str


def parse_dkim_keys(text: str) -> list[SigningKey]:
    keys = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or "." not in parts[0] or not re.fullmatch(r"[A-Za-z0-9_.-]+", parts[1]):
            raise BadValue(f"expected DOMAIN SELECTOR KEYFILE, got {line.strip()!r}")
        keys.append(SigningKey(parts[0].lower().strip("."), parts[1], parts[2]))
    return keys
