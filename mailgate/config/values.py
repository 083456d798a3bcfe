"""Scalar option values: numbers, sizes, durations, addresses, networks, paths.

Each ``parse_*`` takes the text after ``Key=`` and returns the typed value or raises
``BadValue`` with a sentence an administrator can act on; the loader prefixes ``FILE:LINE``.
The schema names these functions, so a default goes through the same parser as a file value
and the ``Config`` field's type is the parser's return annotation.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from mailgate.config import passwords


class ConfigError(Exception):
    """One or more problems in a configuration file, each as ``FILE:LINE: message``."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class BadValue(ValueError):
    """A value that does not parse; its text becomes the message after ``FILE:LINE:``."""


# ---------------------------------------------------------------- value parsers

_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MASK_RE = re.compile(r"^[A-Za-z0-9.*?_+=!#$%&'/^`{|}~@-]+$")
HOST_RE = re.compile(
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


def parse_score(text: str) -> float:
    """A spam score: a number, negative allowed (``-3.0``)."""
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"expected a score such as 12.0 or -3.0, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadValue(f"expected a finite score, got {text!r}")
    return value


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([bkmgt]?)b?", text.strip().lower())
    if not m:
        raise BadValue(f"expected a size such as 512K, 25M or 1G, got {text!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2)]


@dataclass(frozen=True)
class Space:
    """A floor of free space: a size, or a share of the file system's size (``percent``)."""

    size: int = 0
    percent: float | None = None

    def of(self, total: int) -> int:
        """The floor in bytes on a file system of ``total`` bytes."""
        return int(total * self.percent / 100) if self.percent is not None else self.size


def parse_space(text: str) -> Space:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", text.strip())
    if m:
        percent = float(m.group(1))
        if percent > 100:
            raise BadValue(f"expected a percentage up to 100%, got {text!r}")
        return Space(percent=percent)
    try:
        return Space(size=parse_size(text))
    except BadValue:
        raise BadValue(
            f"expected a size such as 100M or a percentage such as 2%, got {text!r}"
        ) from None


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
        if not HOST_RE.match(host):
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


def parse_durations(text: str) -> list[float]:
    values = [parse_duration(item) for item in split_list(text)]
    if not values:
        raise BadValue("expected at least one interval")
    if min(values) < 1:
        raise BadValue(
            f"every interval must be at least 1s (0 would retry without a pause): {text!r}"
        )
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


def parse_text(text: str) -> str:
    return text.strip()


def parse_path(text: str) -> str:
    return text.strip()


@functools.lru_cache(maxsize=4096)
def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as a comparable object (IPv4-mapped IPv6 unwrapped); None if bad.

    Remembered for the last 4,096 addresses: a session asks about its client's address at
    every check (trust, relay, rates, HELO), six to seven times per message, and parsing it
    is most of what those checks cost."""
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


def parse_redis_url(text: str) -> str:
    """A Redis address: ``redis://``, ``rediss://``, ``unix://``, ``sentinel://``; "": none."""
    value = text.strip()
    if value and not re.match(r"^(redis|rediss|unix|sentinel)://\S+$", value):
        raise BadValue(f"expected redis://, rediss://, unix:// or sentinel:// URL, got {text!r}")
    return value
