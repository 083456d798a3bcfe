"""One message's sender authentication: SPF, DKIM, ARC and DMARC combined, what to do about
it, and the ``Authentication-Results`` field (RFC 8601) that reports it.

The verdict travels from the receiver to the scanner in the envelope (``auth``); ``action``
is ``reject`` (only the receiver can carry it out, before its 250), ``quarantine``, ``mark``
or ``deliver``.
"""

from __future__ import annotations

import email.utils
import fnmatch
import re
from dataclasses import dataclass, field

import authres
import authres.arc
import authres.dmarc

from mailgate.runtime.auth import dkimcheck, dmarc
from mailgate.runtime.auth.dkimcheck import ARCResult, DKIMResult
from mailgate.runtime.auth.dmarc import DMARCResult
from mailgate.runtime.auth.lookup import Lookup
from mailgate.runtime.auth.spfcheck import SPFResult

_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Settings:
    """What ``[smtpgw.auth]`` asks for (built from the Config by its users)."""

    authserv_id: str
    trusted_sealers: tuple[str, ...] = ()
    protected: tuple[str, ...] = ()
    on_reject: str = "reject"  # DMARC p=reject: reject | quarantine | mark
    on_quarantine: str = "quarantine"  # DMARC p=quarantine: quarantine | mark


def settings_of(config) -> Settings:
    """The ``Settings`` of a ``Config`` (its ``[smtpgw.auth]`` and ProtectedDomains)."""
    return Settings(
        config.authserv_id or config.hostname,
        tuple(config.trusted_arc_sealers),
        tuple(config.protected_domains),
        config.dmarc_reject_action,
        "mark" if config.dmarc_quarantine_action == "mark" else "quarantine",
    )


@dataclass
class Verdict:
    spf: SPFResult | None
    dkim: list[DKIMResult] = field(default_factory=list)
    arc: ARCResult = field(default_factory=lambda: ARCResult("none"))
    dmarc: DMARCResult = field(default_factory=lambda: DMARCResult("none", ""))
    spoofed: str = ""  # the protected From: domain that arrived unauthenticated
    action: str = "deliver"
    override: str = ""  # the trusted ARC sealer whose sealed pass set the policy aside
    verified: bool = True  # False: the message was too large for DKIM

    def public(self) -> dict:
        return {
            "spf": self.spf.public() if self.spf else None,
            "dkim": [s.public() for s in self.dkim],
            "arc": self.arc.public(),
            "dmarc": self.dmarc.public(),
            "spoofed": self.spoofed,
            "action": self.action,
            "override": self.override,
            "verified": self.verified,
        }

    @classmethod
    def from_public(cls, data: dict) -> Verdict:
        arc = data.get("arc") or {}
        return cls(
            SPFResult.from_public(data["spf"]) if data.get("spf") else None,
            [DKIMResult(**s) for s in data.get("dkim") or []],
            ARCResult(**arc) if arc else ARCResult("none"),
            DMARCResult.from_public(data.get("dmarc") or {"result": "none"}),
            data.get("spoofed", ""),
            data.get("action", "deliver"),
            data.get("override", ""),
            data.get("verified", True),
        )


def author_domain(message: bytes) -> str:
    """The From: domain, or "" when there is not exactly one (RFC 7489 §6.6.1)."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    values = re.findall(r"(?im)^from:[ \t]*(.*(?:\r?\n[ \t].*)*)", head)
    domains = {
        addr.rpartition("@")[2].lower().strip(".")
        for _name, addr in email.utils.getaddresses(values)
        if "@" in addr
    }
    return domains.pop() if len(values) == 1 and len(domains) == 1 else ""


def authenticate(
    message: bytes | None,
    spf: SPFResult | None,
    lookup: Lookup,
    settings: Settings,
    author: str = "",
) -> Verdict:
    """Verify ``message`` (None: too large to verify DKIM; ``author`` is then its From:
    domain) and decide what its DMARC result asks for."""
    verdict = Verdict(spf, verified=message is not None)
    if message is not None:
        author = author_domain(message)
        verdict.dkim = dkimcheck.verify(message, lookup)
        if b"\narc-seal:" in message.lower() or message.lower().startswith(b"arc-seal:"):
            verdict.arc = dkimcheck.arc(message, lookup)
    verdict.dmarc = dmarc.evaluate(lookup, author, spf, verdict.dkim)
    if not verdict.verified and verdict.dmarc.result == "fail":
        verdict.dmarc = DMARCResult("none", author, reason="too large to verify DKIM")
    if verdict.dmarc.result == "fail" and verdict.arc.result == "pass":
        verdict.override = _vouched(verdict.arc, author, settings.trusted_sealers)
    authenticated = (
        verdict.dmarc.result == "pass" or verdict.override or _aligned_pass(verdict, author)
    )
    if author and not authenticated and _protected(author, settings.protected):
        verdict.spoofed = author
    disposition = "none" if verdict.override else verdict.dmarc.disposition
    if disposition == "reject":
        verdict.action = settings.on_reject
    elif disposition == "quarantine":
        verdict.action = settings.on_quarantine
    elif verdict.spoofed:
        verdict.action = "mark"
    return verdict


def _aligned_pass(verdict: Verdict, author: str) -> bool:
    """SPF or DKIM passed for a domain aligned (relaxed) with ``author``, whether or not
    that domain publishes a DMARC record."""
    spf = verdict.spf
    spf_passed = spf is not None and spf.result == "pass" and spf.identity == "mailfrom"
    if spf_passed and dmarc.aligned(spf.domain, author, strict=False):
        return True
    return any(s.result == "pass" and dmarc.aligned(s.domain, author, False) for s in verdict.dkim)


def _vouched(chain: ARCResult, author: str, trusted: tuple[str, ...]) -> str:
    """The trusted sealer that recorded a DMARC pass for ``author``, walking the validated
    chain from the newest seal down while each sealer is trusted (an untrusted one's records,
    and everything under it, are not believed)."""
    for seal in chain.seals:
        if not any(fnmatch.fnmatchcase(seal["sealer"], m) for m in trusted):
            return ""
        if seal.get("dmarc") == "pass" and seal.get("header_from", author) == author:
            return seal["sealer"]
    return ""


def _protected(domain: str, masks: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(domain, m) for m in masks)


def _clean(text: str) -> str:
    return _CONTROLS.sub(" ", text).replace("(", "[").replace(")", "]")[:120]


def results_field(verdict: Verdict, authserv_id: str) -> str:
    """``Authentication-Results: …`` for ``verdict``, one result per line (folded)."""
    results: list = []
    spf = verdict.spf
    if spf is not None:
        props = {"smtp_mailfrom": spf.domain} if spf.identity == "mailfrom" else {}
        if spf.identity == "helo":
            props = {"smtp_helo": spf.domain}
        results.append(authres.SPFAuthenticationResult(result=spf.result, **props))
    for sig in verdict.dkim:
        results.append(
            authres.DKIMAuthenticationResult(
                result=sig.result,
                result_comment=_clean(sig.reason) or None,
                header_d=sig.domain or None,
                header_s=sig.selector or None,
            )
        )
    if not verdict.dkim:
        comment = None if verdict.verified else "not verified: message too large"
        results.append(authres.DKIMAuthenticationResult(result="none", result_comment=comment))
    d = verdict.dmarc
    comment = f"overridden: trusted ARC sealer {verdict.override}" if verdict.override else None
    results.append(
        authres.dmarc.DMARCAuthenticationResult(
            result=d.result,
            result_comment=comment,
            header_from=d.domain or None,
            policy=d.policy if d.result in ("pass", "fail") else None,
        )
    )
    arc = verdict.arc
    comment = f"{arc.sealer} i={arc.instance}" if arc.sealer else None
    results.append(authres.arc.ARCAuthenticationResult(result=arc.result, result_comment=comment))
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    lines = [f"{header.HEADER_FIELD_NAME}: {header.authserv_id};"]
    lines += [str(r) + ";" for r in header.results]
    return "\r\n\t".join(_CONTROLS.sub(" ", line) for line in lines).removesuffix(";")


def claims(value: str, authserv_id: str) -> bool:
    """Whether an Authentication-Results value (unfolded) names ``authserv_id``: such a field
    from outside is a forgery (RFC 8601 §5)."""
    want = authserv_id.lower()
    try:
        found = dkimcheck.FEATURES.parse_value(value)
        return (found.authserv_id or "").lower() == want
    except authres.AuthResError:
        first = re.split(r"[;\s(]", value.strip(), maxsplit=1)[0]
        return first.lower() == want
