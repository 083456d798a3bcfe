"""DMARC (RFC 7489): the From: domain's policy and whether SPF or DKIM passed for a domain
aligned with it.

The record is looked up at ``_dmarc.<From domain>``, else at the organisational domain's
(the registered domain of the Public Suffix List), whose ``sp`` then applies. Its tag list is
read by dkimpy's tag-value parser (DMARC uses DKIM's syntax). ``pct`` below 100 applies the
policy to that share of failing mail and the next milder policy to the rest (§6.6.4).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from dkim.util import InvalidTagValueList, parse_tag_value

from mailgate.message.domains import registered_domain
from mailgate.runtime.auth.dkimcheck import DKIMResult
from mailgate.runtime.auth.lookup import Lookup, TemporaryFailure
from mailgate.runtime.auth.spfcheck import SPFResult

POLICIES = ("none", "quarantine", "reject")
MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(frozen=True)
class Policy:
    policy: str
    strict_dkim: bool
    strict_spf: bool
    percent: int
    where: str  # the domain whose record it is


@dataclass(frozen=True)
class DMARCResult:
    result: str  # pass, fail, none, temperror, permerror
    domain: str  # the From: domain
    policy: str = "none"  # what the record asks for this message
    disposition: str = "none"  # after pct: what to do with it
    aligned: str = ""  # "spf", "dkim", "spf,dkim": the identities that passed aligned
    reason: str = ""

    def public(self) -> dict:
        return asdict(self)

    @classmethod
    def from_public(cls, data: dict) -> DMARCResult:
        return cls(**{k: str(data.get(k, "")) for k in cls.__dataclass_fields__})


def organisational(domain: str) -> str:
    return registered_domain(domain) or domain.lower().strip(".")


def aligned(identity: str, author: str, strict: bool) -> bool:
    identity, author = identity.lower().strip("."), author.lower().strip(".")
    if not identity or not author:
        return False
    return identity == author if strict else organisational(identity) == organisational(author)


def _record(lookup: Lookup, name: str) -> dict | None:
    records = [r for r in lookup.txt_records(f"_dmarc.{name}") if r[:9].upper() == b"V=DMARC1;"]
    if len(records) != 1:  # none, or several: no policy (§6.6.3)
        return None
    try:
        tags = parse_tag_value(records[0])
    except InvalidTagValueList:
        return None
    return {
        k.decode("ascii", "replace").lower(): v.decode("ascii", "replace") for k, v in tags.items()
    }


def policy_of(lookup: Lookup, domain: str) -> Policy | None:
    """The policy that applies to ``domain``; None when it publishes none. Raises
    ``TemporaryFailure`` when the DNS did not answer."""
    domain = domain.lower().strip(".")
    where, tags = domain, _record(lookup, domain)
    inherited = False
    if tags is None:
        org = organisational(domain)
        if org == domain:
            return None
        where, tags, inherited = org, _record(lookup, org), True
        if tags is None:
            return None
    requested = tags.get("p", "").strip().lower()
    if requested not in POLICIES:
        return None  # an invalid p: as if there were no record (§6.6.3 step 6)
    if inherited and tags.get("sp", "").strip().lower() in POLICIES:
        requested = tags["sp"].strip().lower()
    try:
        percent = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        percent = 100
    return Policy(
        requested,
        tags.get("adkim", "r").strip().lower() == "s",
        tags.get("aspf", "r").strip().lower() == "s",
        percent,
        where,
    )


def evaluate(
    lookup: Lookup, author: str, spf: SPFResult | None, signatures: list[DKIMResult]
) -> DMARCResult:
    """The DMARC result for a message whose From: domain is ``author``."""
    if not author:
        return DMARCResult("permerror", "", reason="no single From: domain")
    try:
        policy = policy_of(lookup, author)
    except TemporaryFailure as exc:
        return DMARCResult("temperror", author, reason=str(exc))
    if policy is None:
        return DMARCResult("none", author, reason="no DMARC record")
    passed = []
    spf_passed = spf is not None and spf.result == "pass" and spf.identity == "mailfrom"
    if spf_passed and aligned(spf.domain, author, policy.strict_spf):
        passed.append("spf")
    if any(
        s.result == "pass" and aligned(s.domain, author, policy.strict_dkim) for s in signatures
    ):
        passed.append("dkim")
    if passed:
        return DMARCResult("pass", author, policy.policy, "none", ",".join(passed))
    disposition = policy.policy
    if policy.percent < 100 and random.randrange(100) >= policy.percent:
        disposition = MILDER[disposition]
    return DMARCResult(
        "fail", author, policy.policy, disposition, reason=f"no aligned pass ({policy.where})"
    )
