"""SPF (RFC 7208) of the MAIL FROM identity, or of HELO when MAIL FROM is empty, by pyspf.

pyspf counts DNS-querying mechanisms (10) and void lookups (2) and answers ``permerror``
past them; a DNS server that fails is its ``temperror``. Anything pyspf raises is a
``temperror`` too: a bug or an odd record must not make a pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import spf

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")


@dataclass(frozen=True)
class SPFResult:
    result: str
    identity: str  # "mailfrom" or "helo"
    domain: str
    reason: str = ""

    def public(self) -> dict:
        return asdict(self)

    @classmethod
    def from_public(cls, data: dict) -> SPFResult:
        return cls(**{k: str(data.get(k, "")) for k in ("result", "identity", "domain", "reason")})


def check(ip: str, mail_from: str, helo: str, timeout: float) -> SPFResult:
    """The SPF result for a client; ``timeout`` bounds each lookup and four times it the whole
    evaluation."""
    identity = "mailfrom" if mail_from else "helo"
    domain = mail_from.rpartition("@")[2] if mail_from else helo
    if not domain:
        return SPFResult("none", identity, "", "no identity to check")
    try:
        result, explanation = spf.check2(
            i=ip, s=mail_from, h=helo, timeout=timeout, querytime=timeout * 4
        )
    except Exception as exc:
        return SPFResult("temperror", identity, domain, f"{type(exc).__name__}: {exc}")
    result = result if result in RESULTS else "permerror"
    return SPFResult(result, identity, domain.lower(), str(explanation)[:200])
