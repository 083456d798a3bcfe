"""DKIM (RFC 6376) and ARC (RFC 8617) by dkimpy: every signature verified, the ARC chain
checked, outgoing mail signed.

A signature's result is ``pass``, ``fail`` (bad signature or body hash, as after an edit on
the way), ``permerror`` (no key published, a malformed signature or key) or ``temperror``
(the key's lookup failed), each with the signing domain and selector.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import authres
import authres.arc
import authres.dmarc
import dkim

from mailgate.runtime.auth.lookup import Lookup, TemporaryFailure

MIN_KEY_BITS = 1024
MAX_SIGNATURES = 8  # each costs a key lookup: a message with a thousand must not hold us up
SigningError = dkim.DKIMException
FEATURES = authres.FeatureContext(authres.dmarc, authres.arc)


@dataclass(frozen=True)
class DKIMResult:
    result: str
    domain: str
    selector: str
    reason: str = ""

    def public(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ARCResult:
    result: str  # pass, fail, none
    sealer: str = ""  # the d= of the newest ARC-Seal
    instance: int = 0
    # per instance, newest first: sealer, and what it recorded (method → result, header_from)
    seals: list = field(default_factory=list)
    reason: str = ""

    def public(self) -> dict:
        return asdict(self)


class _KeyLookup:
    """dkimpy's ``dnsfunc``: remembers whether a key was missing (a ``permerror``)."""

    def __init__(self, lookup: Lookup):
        self.lookup = lookup
        self.missing = False

    def __call__(self, name, timeout=5):
        value = self.lookup.txt(name)
        self.missing = value is None
        return value


def _text(value) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")


def verify(message: bytes, lookup: Lookup) -> list[DKIMResult]:
    """One result per DKIM-Signature field, topmost first, for the first ``MAX_SIGNATURES``
    (the rest are not verified and not reported)."""
    try:
        parsed = dkim.DKIM(message)
    except dkim.DKIMException as exc:
        return [DKIMResult("permerror", "", "", f"message: {exc}")]
    count = sum(1 for name, _v in parsed.headers if name.lower() == b"dkim-signature")
    results = []
    for index in range(min(count, MAX_SIGNATURES)):
        keys = _KeyLookup(lookup)
        checker = dkim.DKIM(message, minkey=MIN_KEY_BITS, timeout=lookup.timeout)
        try:
            good = checker.verify(idx=index, dnsfunc=keys)
        except TemporaryFailure as exc:
            results.append(_result(checker, "temperror", str(exc)))
            continue
        except (
            dkim.ValidationError
        ) as exc:  # a bad body hash fails; a bad signature field is an error
            result = "fail" if "body hash mismatch" in str(exc) else "permerror"
            results.append(_result(checker, result, str(exc)))
            continue
        except dkim.DKIMException as exc:
            results.append(_result(checker, "permerror", str(exc)))
            continue
        if good:
            results.append(_result(checker, "pass"))
        elif keys.missing:
            results.append(_result(checker, "permerror", "no key published"))
        else:
            results.append(_result(checker, "fail", "signature did not verify"))
    return results


def _result(checker: dkim.DKIM, result: str, reason: str = "") -> DKIMResult:
    reason = re.sub(r"[\x00-\x1f\x7f]+", " ", reason)[:200]
    return DKIMResult(result, _text(checker.domain).lower(), _text(checker.selector), reason)


def arc(message: bytes, lookup: Lookup) -> ARCResult:
    """The chain's validation and, per instance, its sealer and what it recorded in its
    ARC-Authentication-Results."""
    try:
        cv, instances, reason = dkim.arc_verify(
            message, dnsfunc=_KeyLookup(lookup), minkey=MIN_KEY_BITS, timeout=lookup.timeout
        )
    except TemporaryFailure as exc:
        return ARCResult("fail", reason=f"temperror: {exc}")
    except dkim.DKIMException as exc:
        return ARCResult("fail", reason=str(exc))
    cv = _text(cv).lower()
    if cv != "pass" or not instances:
        return ARCResult(cv if cv in ("none", "fail") else "fail", reason=_text(reason))
    recorded = _recorded(message)
    seals = [
        {
            "instance": int(i.get("instance", 0)),
            "sealer": _text(i.get("as-domain")).lower(),
            **recorded.get(int(i.get("instance", 0)), {}),
        }
        for i in sorted(instances, key=lambda i: -int(i.get("instance", 0)))
    ]
    return ARCResult("pass", seals[0]["sealer"], seals[0]["instance"], seals)


def _recorded(message: bytes) -> dict[int, dict]:
    """instance → {method: result, "header_from": …} of each ARC-Authentication-Results."""
    found: dict[int, dict] = {}
    for name, value in dkim.DKIM(message).headers:
        if name.lower() != b"arc-authentication-results":
            continue
        text = re.sub(r"\r?\n[ \t]", " ", _text(value)).strip()
        number, _, rest = text.partition(";")
        number = number.replace(" ", "").lower()
        if not re.fullmatch(r"i=\d{1,2}", number):
            continue
        try:
            header = FEATURES.parse_value(rest)
        except authres.AuthResError:
            continue
        results: dict = {}
        for one in header.results:
            results.setdefault(one.method, one.result)
            if one.method == "dmarc" and getattr(one, "header_from", None):
                results.setdefault("header_from", str(one.header_from).lower())
        found.setdefault(int(number[2:]), results)
    return found


def sign(message: bytes, domain: str, selector: str, key: bytes, headers: list[str]) -> bytes:
    """The ``DKIM-Signature: …\\r\\n`` field for ``message`` (relaxed/relaxed, rsa-sha256)."""
    present = {n.lower() for n, _v in dkim.DKIM(message).headers}
    wanted = [h.lower().encode() for h in headers if h.lower().encode() in present]
    if b"from" not in wanted:
        wanted.insert(0, b"from")
    return dkim.sign(
        message,
        selector.encode(),
        domain.encode(),
        key,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=wanted,
    )
