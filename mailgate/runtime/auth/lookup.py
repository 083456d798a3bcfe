"""DNS for sender authentication: one dnspython resolver per process, bounded by a timeout.

pyspf asks dnspython's default resolver, so ``configure`` makes that resolver the configured
one (``[smtpgw.forward] Nameservers``); dkimpy and the DMARC lookup take ``Lookup.txt``, which
tells a name without a TXT record (None) from a server that failed (``TemporaryFailure``).
"""

from __future__ import annotations

import dns.exception
import dns.nameserver
import dns.resolver

CACHE_SIZE = 50_000


class TemporaryFailure(Exception):
    """The DNS did not answer (timeout, SERVFAIL): the result is ``temperror``, never a pass
    or a fail. Not a dkimpy exception, so dkimpy lets it through to us."""


def resolver(nameservers: list[tuple[str, int]], timeout: float) -> dns.resolver.Resolver:
    made = dns.resolver.Resolver(configure=not nameservers)
    if nameservers:
        made.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in nameservers]
    made.lifetime = timeout
    made.timeout = timeout
    made.cache = dns.resolver.LRUCache(CACHE_SIZE)
    return made


def configure(nameservers: list[tuple[str, int]], timeout: float) -> Lookup:
    """The process's lookups, and dnspython's default resolver (pyspf's) set to the same."""
    made = resolver(nameservers, timeout)
    dns.resolver.default_resolver = made
    return Lookup(made)


class Lookup:
    def __init__(self, made: dns.resolver.Resolver):
        self.resolver = made

    @property
    def timeout(self) -> float:
        return self.resolver.lifetime

    def txt_records(self, name: str) -> list[bytes]:
        """Every TXT record of ``name``, each with its strings joined; [] when none."""
        try:
            answer = self.resolver.resolve(name, "TXT", raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except (dns.exception.DNSException, OSError) as exc:
            raise TemporaryFailure(f"{name}: {type(exc).__name__}") from None
        if answer.rrset is None:
            return []
        return [b"".join(r.strings) for r in answer.rrset]

    def txt(self, name: str | bytes, timeout: float = 0) -> bytes | None:
        """dkimpy's ``dnsfunc``: the first TXT record of ``name`` or None."""
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        records = self.txt_records(name)
        return records[0] if records else None
