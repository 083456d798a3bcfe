"""DNS block lists: the client's IP in ``RBLZone`` lists, URL domains in ``URIBLZone`` lists.

All lookups of a message are sent at once (dnspython's asyncio resolver) and bounded together
by ``DNSTimeout``; answers, including "not listed" (NXDOMAIN), stay in dnspython's resolver
cache for the time the list publishes. A DNS server that fails or does not answer means "not
listed": a broken resolver must never hold up or reject mail.
"""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from mailgate.config import Zone, client_address

CACHE_SIZE = 100_000  # names; the least recently used go first


def reversed_ip(ip: str) -> str | None:
    addr = client_address(ip)
    if addr is None:
        return None
    if addr.is_link_local or (addr.is_private and not addr.is_loopback):
        return None  # loopback stays: 127.0.0.2 is every list's test entry
    if addr.version == 4:
        return ".".join(reversed(str(addr).split(".")))
    return ".".join(reversed(addr.exploded.replace(":", "")))


class Checker:
    def __init__(self, nameservers: list[tuple[str, int]], timeout: float):
        self.timeout = timeout
        self.resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        if nameservers:
            self.resolver.nameservers = [
                dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers
            ]
        self.resolver.lifetime = timeout
        self.resolver.timeout = timeout
        self.resolver.cache = dns.resolver.LRUCache(CACHE_SIZE)
        self.failures = 0

    @property
    def lookups(self) -> int:
        """Look-ups the cache could not answer (each sends at least one query)."""
        return self.resolver.cache.get_statistics_snapshot().misses

    async def _query(self, name: str) -> list[str]:
        try:
            answer = await self.resolver.resolve(name, "A", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.DNSException, OSError):
            self.failures += 1
            return []  # not cached: the server may be back next time
        return [r.address for r in answer] if answer.rrset else []

    async def _all(self, queries: list[tuple[Zone, str, str]]) -> dict[str, tuple[float, str]]:
        answers = await asyncio.wait_for(
            asyncio.gather(*(self._query(name) for _z, name, _what in queries)),
            self.timeout + 0.5,
        )
        hits: dict[str, tuple[float, str]] = {}
        for (zone, _name, what), replies in zip(queries, answers, strict=True):
            listed = [r for r in replies if zone.matches(r)]
            if listed and zone.rule not in hits:
                hits[zone.rule] = (zone.weight, f"{what} listed ({listed[0]})")
        return hits

    async def listed(self, client_ip: str, zones: list[Zone]) -> tuple[str, str] | None:
        """(zone, why) of the first zone listing ``client_ip``, from inside an event loop."""
        reverse = reversed_ip(client_ip)
        if not reverse or not zones:
            return None
        queries = [(z, f"{reverse}.{z.zone}", client_ip) for z in zones]
        try:
            hits = await self._all(queries)
        except (TimeoutError, dns.exception.DNSException, OSError):
            self.failures += 1
            return None
        for zone in zones:
            if zone.rule in hits:
                return zone.zone, hits[zone.rule][1]
        return None

    def check(
        self, client_ip: str, domains: list[str], rbl: list[Zone], uribl: list[Zone]
    ) -> dict[str, tuple[float, str]]:
        """Rules hit: ``{RBL_ZONE: (weight, why)}``; empty on any DNS trouble."""
        queries: list[tuple[Zone, str, str]] = []
        reverse = reversed_ip(client_ip) if client_ip else None
        if reverse:
            queries += [(z, f"{reverse}.{z.zone}", client_ip) for z in rbl]
        for domain in domains[:20]:
            queries += [(z, f"{domain}.{z.zone}", domain) for z in uribl]
        if not queries:
            return {}
        try:
            return asyncio.run(self._all(queries))
        except (TimeoutError, dns.exception.DNSException, OSError):
            self.failures += 1
            return {}
