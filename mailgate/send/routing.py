"""Where a recipient's mail goes: the ForwardRoute table first, then MX, then A/AAAA.

``Router.targets(address)`` returns the ordered list of (host, ip, port) to try, or raises
``RouteError`` whose ``temporary`` flag says whether a later attempt may succeed (DNS timeout,
server failure) or not (no such domain, null MX, RFC 7505).
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.exception
import dns.nameserver
import dns.resolver

from mailgate.config import Config, NextHop


@dataclass(frozen=True)
class Target:
    host: str
    ip: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}[{self.ip}]:{self.port}"


class RouteError(Exception):
    def __init__(self, text: str, temporary: bool):
        super().__init__(text)
        self.temporary = temporary


class Router:
    def __init__(self, config: Config):
        self.config = config
        if config.nameservers:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in config.nameservers
            ]
        else:
            self.resolver = dns.resolver.Resolver()
        self.resolver.cache = dns.resolver.Cache()
        self.resolver.lifetime = 10.0
        self.resolver.timeout = 3.0

    def targets(self, address: str) -> list[Target]:
        domain = address.rpartition("@")[2].rstrip(".").lower()
        route = self.config.route_for(address)
        hops = route.hops if route else (NextHop(domain, None, mx=True),)
        found: list[Target] = []
        errors: list[RouteError] = []
        for hop in hops:
            try:
                found.extend(self._resolve_hop(hop))
            except RouteError as exc:
                errors.append(exc)
        if found:
            return found
        if any(e.temporary for e in errors):
            raise next(e for e in errors if e.temporary)
        raise errors[0]

    def _resolve_hop(self, hop: NextHop) -> list[Target]:
        port = hop.port or self.config.delivery_port
        if domain_literal(hop.host):
            return [Target(hop.host, domain_literal(hop.host), port)]
        if not hop.mx:
            return [Target(hop.host, ip, port) for ip in self._addresses(hop.host)]
        try:
            answer = self.resolver.resolve(hop.host, "MX")
        except dns.resolver.NXDOMAIN:
            raise RouteError(f"5.1.2 domain {hop.host} does not exist", False) from None
        except dns.resolver.NoAnswer:
            return [Target(hop.host, ip, port) for ip in self._addresses(hop.host)]
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise RouteError(f"4.4.3 MX lookup for {hop.host} failed: {exc}", True) from None
        records = sorted(answer, key=lambda r: (r.preference, random.random()))
        if len(records) == 1 and str(records[0].exchange) == ".":
            raise RouteError(f"5.1.10 {hop.host} accepts no mail (null MX)", False)
        targets: list[Target] = []
        last: RouteError | None = None
        for record in records:
            host = str(record.exchange).rstrip(".")
            try:
                targets.extend(Target(host, ip, port) for ip in self._addresses(host))
            except RouteError as exc:
                last = exc
        if not targets:
            raise last or RouteError(f"4.4.3 no address for the MX hosts of {hop.host}", True)
        return targets

    def _addresses(self, host: str) -> list[str]:
        try:
            ipaddress.ip_address(host)
            return [host]
        except ValueError:
            pass
        ips: list[str] = []
        temporary = False
        for rdtype in ("A", "AAAA"):
            try:
                ips.extend(r.address for r in self.resolver.resolve(host, rdtype))
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.exception.Timeout, dns.resolver.NoNameservers):
                temporary = True
        if ips:
            return ips
        if temporary:
            raise RouteError(f"4.4.3 address lookup for {host} failed", True)
        raise RouteError(f"5.1.2 host {host} has no address", False)


def domain_literal(domain: str) -> str | None:
    """The IP of ``[1.2.3.4]`` or ``[IPv6:::1]`` recipient domains (and bare IPs), else None."""
    text = domain.strip("[]")
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None
