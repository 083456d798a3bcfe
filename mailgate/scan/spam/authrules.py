"""Sender authentication as spam rules, so that a verdict explains it: the receiver's results
(envelope ``auth``) scored by what each says about the sender. A pass only lowers the score
a little (a spammer can authenticate his own domain); a fail of a policy the domain publishes,
or our own domain forged, raises it a lot."""

from __future__ import annotations

from mailgate.runtime.auth.verdict import Verdict

WEIGHTS = {
    "SPF_FAIL": 1.5,
    "SPF_SOFTFAIL": 0.7,
    "SPF_PERMERROR": 0.3,
    "DKIM_INVALID": 1.0,
    "DKIM_VALID_AUTHOR": -0.3,
    "DMARC_FAIL_NONE": 1.0,
    "DMARC_FAIL_QUARANTINE": 3.0,
    "DMARC_FAIL_REJECT": 4.0,
    "ARC_TRUSTED_SEALER": -0.5,
    "SPOOFED_OWN_DOMAIN": 6.0,
}


def auth_rules(envelope: dict) -> dict[str, float]:
    data = envelope.get("auth")
    if not data:
        return {}
    verdict = Verdict.from_public(data)
    hits = []
    if verdict.spf is not None and verdict.spf.result in ("fail", "softfail", "permerror"):
        hits.append(f"SPF_{verdict.spf.result.upper()}")
    results = {s.result for s in verdict.dkim}
    if "fail" in results and "pass" not in results:
        hits.append("DKIM_INVALID")
    if "dkim" in verdict.dmarc.aligned.split(","):
        hits.append("DKIM_VALID_AUTHOR")
    if verdict.override:
        hits.append("ARC_TRUSTED_SEALER")
    elif verdict.dmarc.result == "fail":
        hits.append(f"DMARC_FAIL_{verdict.dmarc.policy.upper()}")
    if verdict.spoofed:
        hits.append("SPOOFED_OWN_DOMAIN")
    return {name: WEIGHTS[name] for name in hits if name in WEIGHTS}
