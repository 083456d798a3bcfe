"""Configuration: an INI file read with its line numbers, checked against one schema.

Why not configparser: errors must name ``FILE:LINE``, keys such as ``ForwardRoute`` and
``ListenOn`` may be repeated, and a value like ``100% clean`` must stay as written.

Invariants:
- Every option has a documented default in ``OPTIONS``; a file that sets only the network,
  route and spool options yields a complete, working ``Config``.
- Defaults go through the same parsers as file values, so a default can never be invalid.
- Relative paths are resolved against the directory of the configuration file, never against
  the current working directory; shipped data is found relative to the package.
- ``load`` either returns a fully valid ``Config`` or raises ``ConfigError`` listing every
  problem it found; a running process keeps its old ``Config`` when a reload fails.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_ETC = PACKAGE_DIR.parent / "etc"
DEFAULT_CONFIG = Path("etc/mailgate.conf")


class ConfigError(Exception):
    """One or more problems in a configuration file, each as ``FILE:LINE: message``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class BadValue(ValueError):
    """A value that does not parse; its text becomes the message after ``FILE:LINE:``."""


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


# ---------------------------------------------------------------- value parsers

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MASK_RE = re.compile(r"^[A-Za-z0-9.*?_+=!#$%&'/^`{|}~@-]+$")
_HOST_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)


def parse_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadValue(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise BadValue(f"expected a number >= 0, got {text!r}")
    return value


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([bkmgt]?)b?", text.strip().lower())
    if not m:
        raise BadValue(f"expected a size such as 512K, 25M or 1G, got {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw]?)", text.strip().lower())
    if not m:
        raise BadValue(f"expected a duration such as 30s, 5m, 4h or 5d, got {text!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("yes", "true", "on", "1"):
        return True
    if low in ("no", "false", "off", "0"):
        return False
    raise BadValue(f"expected yes or no, got {text!r}")


def split_list(text: str) -> list[str]:
    return [item.strip() for item in re.split(r"[,\s]+", text) if item.strip()]


def parse_port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BadValue(f"port must be 1-65535, got {text!r}")
    return int(text)


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[host]:port``, ``[host:port]``, ``[::1]:25`` or ``[::1]``."""
    text = text.strip()
    m = re.fullmatch(r"\[([^\]]+)\](?::(\S+))?", text)
    if m:
        host, port = m.group(1), m.group(2)
        if port is None and host.count(":") == 1:
            host, port = host.split(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if host.lower().startswith("ipv6:"):
        host = host[5:]
    if not host:
        raise BadValue(f"missing host in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_RE.match(host):
            raise BadValue(f"invalid host name {host!r}") from None
    return host, parse_port(port) if port is not None else default_port


def parse_listen(text: str) -> list[tuple[str, int]]:
    result = []
    for item in split_list(text):
        host, port = parse_hostport(item)
        if port is None:
            raise BadValue(f"ListenOn needs host:port, got {item!r}")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host != "localhost":
                raise BadValue(f"ListenOn needs an IP address, got {host!r}") from None
        result.append((host, port))
    return result


def parse_admin_address(text: str) -> tuple[str, int] | None:
    """One ``host:port`` for the console or the metrics endpoint; empty turns it off."""
    if not text.strip():
        return None
    addresses = parse_listen(text)
    if len(addresses) != 1:
        raise BadValue(f"expected one host:port, got {text!r}")
    return addresses[0]


def parse_password_hash(text: str) -> str:
    from mailgate import passwords

    text = text.strip()
    if text and not passwords.well_formed(text):
        raise BadValue("PasswordHash is not a hash written by 'mailgate passwd'")
    return text


def parse_masks(text: str) -> list[str]:
    masks = []
    for item in split_list(text):
        if not _MASK_RE.match(item):
            raise BadValue(f"invalid address or domain mask {item!r}")
        if item.count("@") > 1:
            raise BadValue(f"invalid mask {item!r}: more than one '@'")
        masks.append(item.lower())
    return masks


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for item in split_list(text):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise BadValue(f"invalid network {item!r} (expected an address or CIDR)") from None
    return nets


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


def parse_durations(text: str) -> list[float]:
    values = [parse_duration(item) for item in split_list(text)]
    if not values:
        raise BadValue("expected at least one interval")
    return values


def parse_nameservers(text: str) -> list[tuple[str, int]]:
    result = []
    for item in split_list(text):
        host, port = parse_hostport(item, 53)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise BadValue(f"a name server must be an IP address, got {host!r}") from None
        result.append((host, port))
    return result


def parse_level(text: str) -> str:
    low = text.strip().lower()
    if low not in ("debug", "info", "warning", "error"):
        raise BadValue(f"log level must be debug, info, warning or error, got {text!r}")
    return low


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


def parse_rbl_action(text: str) -> str:
    low = text.strip().lower()
    if low not in ("reject", "mark"):
        raise BadValue(f"expected reject or mark, got {text!r}")
    return low


def parse_zones(text: str) -> list:
    from mailgate.dnsbl import Zone

    zones = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (2, 3):
            raise BadValue(f"expected 'ZONE [MASKS] WEIGHT', got {line.strip()!r}")
        if not _HOST_RE.match(parts[0]):
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
    from mailgate.dnsbl import Zone

    zones = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2 or not _HOST_RE.match(parts[0]):
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


def parse_text(text: str) -> str:
    return text.strip()


def parse_path(text: str) -> str:
    return text.strip()


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as a comparable object (IPv4-mapped IPv6 unwrapped); None if bad."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if addr.version == 6 and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def in_networks(ip: str, networks) -> bool:
    addr = client_address(ip)
    return addr is not None and any(addr in net for net in networks)


# ---------------------------------------------------------------- the schema


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    attr: str
    parse: Callable[[str], Any]
    default: str
    repeatable: bool = False
    doc: str = ""


_NET, _FWD, _PATH, _LIM, _RETRY, _LOG = (
    "smtpgw.network",
    "smtpgw.forward",
    "smtpgw.path",
    "smtpgw.limits",
    "smtpgw.retry",
    "smtpgw.log",
)
_SPAM = "smtpgw.spamtest"
_ARCH = "smtpgw.archive"
_ADMIN = "smtpgw.admin"
_PROC = "smtpgw.process"
_SCAN, _AV, _ATT, _NOTE, _QUAR = (
    "smtpgw.scan",
    "smtpgw.antivirus",
    "smtpgw.attachments",
    "smtpgw.notify",
    "smtpgw.quarantine",
)
_EXEC = (
    "*.exe *.scr *.pif *.com *.bat *.cmd *.cpl *.vbs *.vbe *.js *.jse *.wsf *.wsh *.hta "
    "*.lnk *.msi *.ps1 *.jar *.reg"
)
_EXEC_TYPES = (
    "application/x-dosexec application/x-msdownload application/x-executable "
    "application/x-ms-shortcut application/x-msi application/vnd.microsoft.portable-executable"
)
# fmt: off
_TABLE = [
    Option(_NET, "ListenOn", "listen", parse_listen, "127.0.0.1:2525", True,
           "addresses the receiver listens on"),
    Option(_NET, "ProtectedDomains", "protected_domains", parse_masks, "", True,
           "domains (masks) anyone may send to"),
    Option(_NET, "TrustedNetworks", "trusted_networks", parse_networks, "127.0.0.0/8, ::1/128",
           True, "clients that may relay to any domain"),
    Option(_NET, "Hostname", "hostname", parse_text, "", doc="name in banner and Received"),
    Option(_NET, "TLSCertificate", "tls_certificate", parse_path, "",
           doc="PEM certificate: enables STARTTLS"),
    Option(_NET, "TLSKey", "tls_key", parse_path, "", doc="PEM key for TLSCertificate"),
    Option(_NET, "SessionTimeout", "session_timeout", parse_duration, "300s",
           doc="idle time before a session is closed"),
    Option(_NET, "DataTimeout", "data_timeout", parse_duration, "180s",
           doc="wait for each line of DATA (RFC 5321 4.5.3.2.6)"),
    Option(_NET, "ClientAllow", "client_allow", parse_list_sources, "", True,
           "addresses, CIDR, masks or file:PATH always let in"),
    Option(_NET, "ClientDeny", "client_deny", parse_list_sources, "", True,
           "addresses, CIDR, masks or file:PATH refused at connect"),
    Option(_NET, "ConnectRBL", "connect_rbl", parse_connect_zones, "", True,
           "ZONE [MASKS]: block lists asked at connect"),
    Option(_NET, "ConnectRBLAction", "connect_rbl_action", parse_rbl_action, "reject",
           doc="reject (554 at connect) or mark (X-Mailgate-RBL header)"),
    Option(_NET, "RejectHeloAsUs", "reject_helo_as_us", parse_bool, "yes",
           doc="refuse a HELO naming this gateway or its address"),
    Option(_NET, "RejectInvalidHelo", "reject_invalid_helo", parse_bool, "no",
           doc="refuse a HELO that is neither a domain nor an address literal"),
    Option(_NET, "ValidRecipients", "valid_recipients", parse_list_sources, "", True,
           "addresses or file:PATH; their domains accept only these (550 5.1.1)"),
    Option(_FWD, "ForwardRoute", "routes", parse_routes, "", True,
           "MASK NEXTHOP routes, first match wins"),
    Option(_FWD, "DeliveryPort", "delivery_port", parse_port, "25",
           doc="port for MX and A/AAAA deliveries"),
    Option(_FWD, "Nameservers", "nameservers", parse_nameservers, "",
           doc="DNS servers ip[:port]; empty: the system resolver"),
    Option(_FWD, "ConnectTimeout", "connect_timeout", parse_duration, "30s"),
    Option(_FWD, "CommandTimeout", "command_timeout", parse_duration, "300s"),
    Option(_FWD, "ConnectionCacheTime", "connection_cache_time", parse_duration, "10s",
           doc="how long an idle next-hop connection is kept open"),
    Option(_PATH, "SpoolDir", "spool_dir", parse_path, "/var/spool/mailgate",
           doc="spool root; relative paths from this file's directory"),
    Option(_LIM, "MaxMessageSize", "max_message_size", parse_size, "25M"),
    Option(_LIM, "MaxRecipients", "max_recipients", parse_int, "1000"),
    Option(_LIM, "MaxQueueSize", "max_queue_size", parse_int, "10000",
           doc="messages waiting in incoming/ before 452 4.3.1"),
    Option(_LIM, "MinFreeDisk", "min_free_disk", parse_size, "100M",
           doc="free space under the spool before 452 4.3.1"),
    Option(_LIM, "MaxSessions", "max_sessions", parse_int, "200",
           doc="concurrent sessions in all; 0: no limit"),
    Option(_LIM, "MaxSessionsPerClient", "max_sessions_per_client", parse_int, "20",
           doc="concurrent sessions per client address; 0: no limit"),
    Option(_LIM, "ConnectionRate", "connection_rate", parse_int, "0",
           doc="connections per client address per minute; 0: no limit"),
    Option(_LIM, "MaxMessagesPerSession", "max_messages_per_session", parse_int, "1000",
           doc="then 421 4.7.0; 0: no limit"),
    Option(_LIM, "MaxSessionBytes", "max_session_bytes", parse_size, "0",
           doc="message bytes per session, then 421 4.7.0; 0: no limit"),
    Option(_LIM, "MaxLineLength", "max_line_length", parse_size, "64K",
           doc="longest text line accepted; longer ones are folded when sent"),
    Option(_LIM, "MaxHeaders", "max_headers", parse_int, "1000",
           doc="header fields in a message, then 552 5.3.4; 0: no limit"),
    Option(_LIM, "MaxHeaderSize", "max_header_size", parse_size, "256K",
           doc="size of the header block, then 552 5.3.4; 0: no limit"),
    Option(_LIM, "MaxHops", "max_hops", parse_int, "50",
           doc="Received: headers before 554 5.4.6 (a mail loop); 0: no limit"),
    Option(_LIM, "MaxErrors", "max_errors", parse_int, "20",
           doc="5xx replies in a session before 421 4.7.0 and disconnect; 0: no limit"),
    Option(_LIM, "Scanners", "scanners", parse_int, "2"),
    Option(_LIM, "Senders", "senders", parse_int, "2"),
    Option(_LIM, "MaxAttempts", "max_attempts", parse_int, "3",
           doc="worker deaths on one message before it goes to corrupt/"),
    Option(_LIM, "RestartDelay", "restart_delay", parse_duration, "1s",
           doc="first delay before restarting a dead worker; doubles per quick death"),
    Option(_LIM, "MaxRestartDelay", "max_restart_delay", parse_duration, "30s"),
    Option(_RETRY, "RetryIntervals", "retry_intervals", parse_durations,
           "1m, 5m, 15m, 30m, 1h, 2h, 4h"),
    Option(_RETRY, "MaxQueueLifetime", "max_queue_lifetime", parse_duration, "5d"),
    Option(_RETRY, "DelayWarningAfter", "delay_warning_after", parse_duration, "4h"),
    Option(_LOG, "Level", "log_level", parse_level, "info"),
    Option(_PROC, "User", "user", parse_text, "mailgate",
           doc="started as root, run as this user (after binding ListenOn); empty: stay root"),
    Option(_LOG, "File", "log_file", parse_path, "",
           doc="log file of every process; default: log/mailgate.log in the spool; none: off"),
    Option(_SCAN, "Mode", "mode", parse_mode, "recommended",
           doc="preset of actions: speed, recommended or protection"),
    Option(_AV, "Enabled", "av_enabled", parse_bool, "yes", doc="scan with clamd"),
    Option(_AV, "ManageClamd", "manage_clamd", parse_bool, "yes",
           doc="the supervisor runs its own clamd on the spool's database"),
    Option(_AV, "ClamdSocket", "clamd_socket", parse_path, "",
           doc="clamd unix socket; empty with ManageClamd: run/clamd.sock in the spool"),
    Option(_AV, "Signatures", "signatures", parse_path, "",
           doc="database shipped to seed the spool's; empty: etc/avdb of the package"),
    Option(_AV, "ClamdStartTimeout", "clamd_start_timeout", parse_duration, "120s",
           doc="how long the supervisor waits for a new clamd to answer PING"),
    Option(_AV, "ObjectTimeout", "object_timeout", parse_duration, "30s",
           doc="clamd time for one object"),
    Option(_AV, "MessageTimeout", "message_timeout", parse_duration, "120s",
           doc="clamd time for all objects of one message"),
    Option(_AV, "ScanAttempts", "scan_attempts", parse_int, "3",
           doc="tries of a message that errs or times out before it is unscannable"),
    Option(_AV, "MaxObjectSize", "max_object_size", parse_size, "25M",
           doc="larger objects are unscannable"),
    Option(_AV, "MaxUnpackedSize", "max_unpacked_size", parse_size, "400M",
           doc="a zip that unpacks to more (or 1000:1) is unscannable; 0: ratio only"),
    Option(_AV, "MaxDepth", "max_depth", parse_int, "20", doc="MIME nesting limit"),
    Option(_AV, "MaxParts", "max_parts", parse_int, "1000", doc="MIME parts limit"),
    Option(_AV, "ICheckerSize", "ichecker_size", parse_int, "100000",
           doc="objects remembered as already scanned; 0 turns iChecker off"),
    Option(_AV, "AddHeaders", "av_headers", parse_bool, "yes",
           doc="add X-Mailgate-Virus-* headers"),
    Option(_AV, "ActionInfected", "action_infected", parse_actions, "", doc="default: Mode"),
    Option(_AV, "ActionSuspicious", "action_suspicious", parse_actions, "", doc="default: Mode"),
    Option(_AV, "ActionEncrypted", "action_encrypted", parse_actions, "", doc="default: Mode"),
    Option(_AV, "ActionCorrupted", "action_corrupted", parse_actions, "", doc="default: Mode"),
    Option(_AV, "ActionUnscannable", "action_unscannable", parse_actions, "",
           doc="default: Mode"),
    Option(_ATT, "Enabled", "attachments_enabled", parse_bool, "yes",
           doc="the attachment filter"),
    Option(_ATT, "NameRule", "name_rules", parse_rules, "cure,quarantine " + _EXEC, True,
           "ACTIONS MASK...: banned file names"),
    Option(_ATT, "TypeRule", "type_rules", parse_rules, "cure,quarantine " + _EXEC_TYPES, True,
           "ACTIONS TYPE...: banned true types (python-magic)"),
    Option(_ATT, "DoubleExtension", "double_extension", parse_actions, "cure,quarantine",
           doc="names like invoice.pdf.exe; empty: off"),
    Option(_NOTE, "Administrator", "administrator", parse_address, "",
           doc="address of administrator notices; empty: none"),
    Option(_NOTE, "NotifyAdmin", "notify_admin", parse_statuses,
           "infected, suspicious, banned, unscannable"),
    Option(_NOTE, "NotifySender", "notify_sender", parse_statuses, "",
           doc="off: virus senders are forged"),
    Option(_NOTE, "NotifyRecipients", "notify_recipients", parse_statuses, "infected, banned"),
    Option(_NOTE, "From", "notify_from", parse_address, "",
           doc="From: of notices; empty: postmaster@Hostname"),
    Option(_NOTE, "Templates", "templates", parse_path, "",
           doc="template directory; empty: etc/templates of the package"),
    Option(_NOTE, "DateFormat", "date_format", parse_text, "%Y-%m-%d %H:%M:%S %z",
           doc="strftime format of ${date}"),
    Option(_QUAR, "Retention", "quarantine_retention", parse_duration, "30d",
           doc="age at which quarantine expire removes"),
    Option(_ARCH, "Received", "archive_received", parse_bool, "no",
           doc="keep a copy of every accepted message"),
    Option(_ARCH, "Sent", "archive_sent", parse_bool, "no",
           doc="keep a copy of every delivered message, as sent"),
    Option(_ARCH, "Retention", "archive_retention", parse_duration, "30d",
           doc="archived days older than this are removed"),
    Option(_ADMIN, "Listen", "admin_listen", parse_admin_address, "127.0.0.1:9825",
           doc="web console address; empty: no console"),
    Option(_ADMIN, "MetricsListen", "metrics_listen", parse_admin_address, "127.0.0.1:9825",
           doc="Prometheus /metrics address (may equal Listen); empty: none"),
    Option(_ADMIN, "PasswordHash", "password_hash", parse_password_hash, "",
           doc="console password, written by mailgate passwd; empty: nobody logs in"),
    Option(_ADMIN, "StatsRetention", "stats_retention", parse_duration, "90d",
           doc="days of the message journal (reports, alerts) kept"),
    Option(_ADMIN, "DailyTrafficLimit", "daily_traffic_limit", parse_size, "0",
           doc="alert when a day's accepted bytes pass this; 0: off"),
    Option(_ADMIN, "DailyMessageLimit", "daily_message_limit", parse_int, "0",
           doc="alert when a day's accepted messages pass this; 0: off"),
    Option(_ADMIN, "ProtectedAddressLimit", "protected_address_limit", parse_int, "0",
           doc="alert when more protected addresses got mail in AddressWindow; 0: off"),
    Option(_ADMIN, "AddressWindow", "address_window", parse_duration, "30d",
           doc="period over which protected addresses are counted"),
    Option(_SPAM, "Enabled", "spam_enabled", parse_bool, "yes", doc="the spam filter"),
    Option(_SPAM, "Intensity", "intensity", parse_intensity, "",
           doc="low, medium or high; default: Mode"),
    Option(_SPAM, "Rules", "spam_rules", parse_path, "", doc="rule file; default: shipped"),
    Option(_SPAM, "Phrases", "spam_phrases", parse_path, "",
           doc="typical terms and phrases; default: shipped"),
    Option(_SPAM, "Database", "spam_database", parse_path, "",
           doc="token database seeding the spool's; default: etc/spamdb"),
    Option(_SPAM, "Network", "spam_network", parse_bool, "yes",
           doc="DNS block list lookups"),
    Option(_SPAM, "DNSTimeout", "dns_timeout", parse_duration, "2s",
           doc="all DNS lookups of one message"),
    Option(_SPAM, "RBLZone", "rbl_zones", parse_zones, "", True,
           "ZONE [MASKS] WEIGHT: client IP block lists"),
    Option(_SPAM, "URIBLZone", "uribl_zones", parse_zones, "", True,
           "ZONE [MASKS] WEIGHT: URL domain block lists"),
    Option(_SPAM, "WhitelistSenders", "whitelist_senders", parse_list_sources, "", True),
    Option(_SPAM, "BlacklistSenders", "blacklist_senders", parse_list_sources, "", True),
    Option(_SPAM, "WhitelistRecipients", "whitelist_recipients", parse_list_sources, "", True),
    Option(_SPAM, "BlacklistRecipients", "blacklist_recipients", parse_list_sources, "", True),
    Option(_SPAM, "WhitelistNetworks", "whitelist_networks", parse_list_sources, "", True),
    Option(_SPAM, "BlacklistNetworks", "blacklist_networks", parse_list_sources, "", True),
    Option(_SPAM, "ActionSpam", "action_spam", parse_spam_actions, "", doc="default: Mode"),
    Option(_SPAM, "ActionProbableSpam", "action_probable_spam", parse_spam_actions, "",
           doc="default: Mode"),
    Option(_SPAM, "ActionBlacklisted", "action_blacklisted", parse_spam_actions, "",
           doc="default: Mode"),
    Option(_SPAM, "SubjectPrefix", "subject_prefix", parse_text, "[SPAM]"),
    Option(_SPAM, "ProbableSubjectPrefix", "probable_prefix", parse_text, "[PROBABLE SPAM]"),
    Option(_SPAM, "Group", "groups", parse_groups, "", True, "NAME MASK...: a group"),
    Option(_SPAM, "GroupAction", "group_actions", parse_group_actions, "", True,
           "GROUP STATUS ACTIONS: a group's own actions"),
    Option(_SPAM, "AddHeaders", "spam_headers", parse_bool, "yes",
           doc="add X-Spam-Status and X-Spam-Level"),
]
# fmt: on
OPTIONS = {(o.section.lower(), o.key.lower()): o for o in _TABLE}
SECTIONS = {o.section for o in _TABLE}


@dataclass
class Config:
    """A complete, validated configuration. Attributes are named after ``Option.attr``."""

    path: Path
    text: str
    listen: list[tuple[str, int]]
    protected_domains: list[str]
    trusted_networks: list
    hostname: str
    tls_certificate: str
    tls_key: str
    session_timeout: float
    data_timeout: float
    client_allow: list
    client_deny: list
    connect_rbl: list
    connect_rbl_action: str
    reject_helo_as_us: bool
    reject_invalid_helo: bool
    valid_recipients: list
    routes: list[Route]
    delivery_port: int
    nameservers: list[tuple[str, int]]
    connect_timeout: float
    command_timeout: float
    connection_cache_time: float
    spool_dir: str
    max_message_size: int
    max_recipients: int
    max_queue_size: int
    min_free_disk: int
    max_sessions: int
    max_sessions_per_client: int
    connection_rate: int
    max_messages_per_session: int
    max_session_bytes: int
    max_errors: int
    max_line_length: int
    max_headers: int
    max_header_size: int
    max_hops: int
    scanners: int
    senders: int
    max_attempts: int
    restart_delay: float
    max_restart_delay: float
    retry_intervals: list[float]
    max_queue_lifetime: float
    delay_warning_after: float
    log_level: str
    mode: str
    av_enabled: bool
    manage_clamd: bool
    clamd_socket: str
    signatures: str
    clamd_start_timeout: float
    object_timeout: float
    message_timeout: float
    scan_attempts: int
    max_object_size: int
    max_unpacked_size: int
    max_depth: int
    max_parts: int
    ichecker_size: int
    av_headers: bool
    action_infected: tuple
    action_suspicious: tuple
    action_encrypted: tuple
    action_corrupted: tuple
    action_unscannable: tuple
    attachments_enabled: bool
    name_rules: list
    type_rules: list
    double_extension: tuple
    administrator: str
    notify_admin: tuple
    notify_sender: tuple
    notify_recipients: tuple
    notify_from: str
    templates: str
    date_format: str
    quarantine_retention: float
    archive_received: bool
    archive_sent: bool
    archive_retention: float
    admin_listen: tuple[str, int] | None
    metrics_listen: tuple[str, int] | None
    password_hash: str
    stats_retention: float
    daily_traffic_limit: int
    daily_message_limit: int
    protected_address_limit: int
    address_window: float
    log_file: str
    user: str
    spam_enabled: bool
    intensity: str
    spam_rules: str
    spam_phrases: str
    spam_database: str
    spam_network: bool
    dns_timeout: float
    rbl_zones: list
    uribl_zones: list
    whitelist_senders: list
    blacklist_senders: list
    whitelist_recipients: list
    blacklist_recipients: list
    whitelist_networks: list
    blacklist_networks: list
    action_spam: tuple
    action_probable_spam: tuple
    action_blacklisted: tuple
    subject_prefix: str
    probable_prefix: str
    groups: list
    group_actions: list
    spam_headers: bool

    @property
    def spool_path(self) -> Path:
        return (self.path.parent / self.spool_dir).resolve()

    def resolve(self, name: str) -> Path:
        """A path option, resolved against the configuration file's directory."""
        return (self.path.parent / name).resolve()

    def is_protected(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        return any(fnmatch.fnmatchcase(domain, mask) for mask in self.protected_domains)

    def is_trusted(self, ip: str) -> bool:
        return in_networks(ip, self.trusted_networks)

    def route_for(self, address: str) -> Route | None:
        return next((r for r in self.routes if r.matches(address)), None)

    def actions(self, status: str) -> tuple[str, ...]:
        """What to do with a message (or object) of anti-virus ``status``."""
        if status == "clean":
            return ("deliver",)
        return getattr(self, f"action_{status}")

    @property
    def clamd_socket_path(self) -> Path:
        if self.clamd_socket:
            return self.resolve(self.clamd_socket)
        return self.spool_path / "run" / "clamd.sock"

    @property
    def signatures_path(self) -> Path:
        return self.resolve(self.signatures) if self.signatures else SHIPPED_ETC / "avdb"

    @property
    def templates_path(self) -> Path:
        return self.resolve(self.templates) if self.templates else SHIPPED_ETC / "templates"

    def spam_actions(self, status: str, group: str | None = None) -> tuple[str, ...]:
        """Actions for a spam ``status`` for a recipient of ``group`` (None: everyone)."""
        if status in ("clean", "whitelisted"):
            return ("deliver",)
        for name, wanted, actions in self.group_actions:
            if name == group and wanted == status:
                return actions
        return getattr(self, "action_" + status.replace("-", "_"))

    def group_of(self, recipient: str, sender: str) -> str | None:
        for group in self.groups:
            if group.matches(recipient) or (sender and group.matches(sender)):
                return group.name
        return None

    def shipped(self, option: str, default: str) -> Path:
        value = getattr(self, option)
        return self.resolve(value) if value else SHIPPED_ETC / default

    def list_items(self, sources: list) -> list[str]:
        """The items of a list option, ``file:PATH`` entries read now (so SIGHUP re-reads)."""
        items = []
        for source in sources:
            if source.item.startswith("file:"):
                path = self.resolve(source.item[5:])
                for line in path.read_text(encoding="utf-8").splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        items.extend(split_list(line))
            else:
                items.append(source.item)
        return items

    @property
    def sender_address(self) -> str:
        return self.notify_from or f"postmaster@{self.hostname}"


# Actions of each preset; an Action* option set in the file overrides its entry.
SPAM_PRESETS = {
    "speed": {
        "intensity": "low",
        "spam": ("mark",),
        "probable_spam": ("deliver",),
        "blacklisted": ("block",),
    },
    "recommended": {
        "intensity": "medium",
        "spam": ("quarantine",),
        "probable_spam": ("mark",),
        "blacklisted": ("block",),
    },
    "protection": {
        "intensity": "high",
        "spam": ("block", "quarantine"),
        "probable_spam": ("quarantine",),
        "blacklisted": ("block",),
    },
}

PRESETS = {
    "speed": {
        "infected": ("cure",),
        "suspicious": ("deliver",),
        "encrypted": ("deliver",),
        "corrupted": ("deliver",),
        "unscannable": ("quarantine",),
    },
    "recommended": {
        "infected": ("cure", "quarantine"),
        "suspicious": ("cure", "quarantine"),
        "encrypted": ("deliver",),
        "corrupted": ("deliver",),
        "unscannable": ("quarantine",),
    },
    "protection": {
        "infected": ("block", "quarantine"),
        "suspicious": ("block", "quarantine"),
        "encrypted": ("quarantine",),
        "corrupted": ("quarantine",),
        "unscannable": ("quarantine",),
    },
}


# ---------------------------------------------------------------- reading


def _strip_comment(line: str) -> str:
    m = re.search(r"\s[;#]", line)
    return line[: m.start()] if m else line


def _read_ini(
    text: str, problem: Callable[[int, str], None]
) -> dict[Option, list[tuple[int, str]]]:
    """Every known option set in ``text`` with its (line, value) occurrences."""
    values: dict[Option, list[tuple[int, str]]] = {}
    section: str | None = None
    section_known = True
    last: Option | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).rstrip()
        if not line.strip() or line.lstrip()[0] in ";#":
            continue
        if raw[0] in " \t" and last is not None:
            values[last].append((lineno, line.strip()))
            continue
        last = None
        stripped = line.strip()
        if stripped.startswith("["):
            name = stripped[1:-1].strip()
            section, section_known = name.lower(), True
            if not stripped.endswith("]"):
                problem(lineno, f"malformed section header {stripped!r}")
                section_known = False
            elif section not in {s.lower() for s in SECTIONS}:
                problem(lineno, f"unknown section [{name}] (known: {', '.join(sorted(SECTIONS))})")
                section_known = False
            continue
        if "=" not in stripped:
            problem(lineno, f"expected 'Key=value', got {stripped!r}")
            continue
        key, _, value = stripped.partition("=")
        key = key.strip()
        if section is None:
            problem(lineno, f"key {key!r} before any [section]")
            continue
        if not section_known:
            continue
        opt = OPTIONS.get((section, key.lower()))
        if opt is None:
            problem(lineno, f"unknown key {key!r} in [{section}]")
            continue
        if opt in values and not opt.repeatable:
            problem(lineno, f"{opt.key} is set twice (first on line {values[opt][0][0]})")
            continue
        values.setdefault(opt, []).append((lineno, value.strip()))
        last = opt
    return values


def tls_context(config: Config) -> ssl.SSLContext | None:
    """The receiver's STARTTLS context from TLSCertificate/TLSKey; None when not configured."""
    if not config.tls_certificate:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.resolve(config.tls_certificate), config.resolve(config.tls_key))
    return context


def parse(text: str, path: Path) -> Config:
    """Parse and validate ``text`` as read from ``path``; raise ConfigError with every problem."""
    problems: list[tuple[int, str]] = []

    def problem(lineno: int, message: str) -> None:
        problems.append((lineno, message))

    values = _read_ini(text, problem)
    fields: dict[str, Any] = {}
    for opt in OPTIONS.values():
        fields[opt.attr] = [] if opt.repeatable else opt.parse(opt.default)
        for lineno, value in values.get(opt) or [(0, opt.default)]:
            try:
                item = opt.parse(value)
            except BadValue as exc:
                if lineno == 0:  # pragma: no cover - a shipped default that does not parse
                    raise AssertionError(f"bad default for {opt.key}: {exc}") from exc
                problem(lineno, f"{opt.key}: {exc}")
                continue
            fields[opt.attr] = fields[opt.attr] + item if opt.repeatable else item
    config = Config(path=path.resolve(), text=text, **fields)

    def line_of(key: str) -> int:
        opt = next(o for o in _TABLE if o.key == key)
        return values[opt][0][0] if opt in values else 0

    if not config.listen:
        problem(line_of("ListenOn"), "ListenOn: at least one address needed")
    if bool(config.tls_certificate) != bool(config.tls_key):
        problem(
            line_of("TLSCertificate") or line_of("TLSKey"), "TLSCertificate and TLSKey go together"
        )
    for key, name in (("TLSCertificate", config.tls_certificate), ("TLSKey", config.tls_key)):
        if name and not config.resolve(name).is_file():
            problem(line_of(key), f"{key}: no such file {name!r}")
    tls_files = (config.tls_certificate, config.tls_key)
    if all(tls_files) and all(config.resolve(name).is_file() for name in tls_files):
        try:
            tls_context(config)
        except (OSError, ssl.SSLError) as exc:
            problem(line_of("TLSCertificate"), f"TLSCertificate/TLSKey do not load: {exc}")
    if config.max_line_length < 1001:
        problem(line_of("MaxLineLength"), "MaxLineLength must be at least 1001 (RFC 5321)")
    if config.max_attempts < 1:
        problem(line_of("MaxAttempts"), "MaxAttempts must be at least 1")
    if not config.hostname:
        config.hostname = socket.gethostname()  # never DNS: it may be down at start
    for status, actions in PRESETS[config.mode].items():
        if not getattr(config, f"action_{status}"):
            setattr(config, f"action_{status}", actions)
    for key, value in SPAM_PRESETS[config.mode].items():
        attr = key if key == "intensity" else f"action_{key}"
        if not getattr(config, attr):
            setattr(config, attr, value)
    known_groups = {g.name for g in config.groups}
    for name, _status, _actions in config.group_actions:
        if name not in known_groups:
            problem(line_of("GroupAction"), f"GroupAction: no Group named {name!r}")
    for key in (
        "WhitelistSenders",
        "BlacklistSenders",
        "WhitelistRecipients",
        "BlacklistRecipients",
        "WhitelistNetworks",
        "BlacklistNetworks",
        "ClientAllow",
        "ClientDeny",
        "ValidRecipients",
    ):
        opt = next(o for o in _TABLE if o.key == key)
        for source in getattr(config, opt.attr):
            if source.item.startswith("file:") and not config.resolve(source.item[5:]).is_file():
                problem(line_of(key), f"{key}: no such file {source.item[5:]!r}")
    try:
        for item in config.list_items(config.whitelist_networks + config.blacklist_networks):
            parse_networks(item)
        for item in config.list_items(
            config.whitelist_senders
            + config.blacklist_senders
            + config.whitelist_recipients
            + config.blacklist_recipients
        ):
            parse_masks(item)
    except (BadValue, OSError) as exc:
        problem(line_of("WhitelistNetworks") or line_of("BlacklistNetworks"), str(exc))
    for key, sources in (("ClientAllow", config.client_allow), ("ClientDeny", config.client_deny)):
        try:
            for item in config.list_items(sources):
                try:
                    ipaddress.ip_network(item, strict=False)
                except ValueError:
                    if not re.fullmatch(r"[0-9a-fA-F:.*?]+", item):
                        problem(line_of(key), f"{key}: not an address, network or mask: {item!r}")
        except OSError:
            pass
    if config.scan_attempts < 1:
        problem(line_of("ScanAttempts"), "ScanAttempts must be at least 1")
    if config.av_enabled and not config.manage_clamd and not config.clamd_socket:
        problem(line_of("ManageClamd"), "ManageClamd=no needs ClamdSocket= (clamd's socket)")
    if len(os.fsencode(str(config.clamd_socket_path))) > 107:
        problem(
            line_of("ClamdSocket") or line_of("SpoolDir"),
            f"clamd socket path too long for a unix socket: {config.clamd_socket_path}",
        )
    if config.manage_clamd and config.av_enabled and not config.signatures_path.is_dir():
        problem(line_of("Signatures"), f"Signatures: no such directory {config.signatures}")
    if problems:
        problems.sort(key=lambda p: p[0])
        raise ConfigError([f"{path}:{lineno}: {message}" for lineno, message in problems])
    return config


def default_path() -> Path:
    """``etc/mailgate.conf`` of the current directory if there is one, else the shipped one."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else SHIPPED_ETC / "mailgate.conf"


def load(path: Path | str | None = None, text_from: Path | None = None) -> Config:
    """Read a configuration file.

    ``text_from`` reads the text from another file (the supervisor's validated snapshot) while
    relative paths and error messages still refer to ``path``.
    """
    path = Path(path) if path is not None else default_path()
    try:
        text = (text_from or path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}:0: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}:0: not UTF-8 text ({exc.reason})"]) from None
    return parse(text, path)


def reload(current: Config, snapshot: Path | None, log) -> Config | None:
    """Re-read ``current``'s file (its text from ``snapshot`` if given) for a SIGHUP.

    Returns the new configuration, or None after logging every problem: the caller keeps
    running on ``current`` (and logs ``config_reloaded`` once it has applied a new one).
    """
    try:
        return load(current.path, text_from=snapshot)
    except ConfigError as exc:
        log.error(
            "config_reload_failed", problems=exc.problems, note="keeping the running configuration"
        )
        return None
