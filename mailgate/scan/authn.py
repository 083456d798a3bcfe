"""The scanner's part of sender authentication: the receiver's verdict (envelope ``auth``)
reported in one Authentication-Results field, forged ones renamed, a DMARC quarantine
carried out, and DKIM signatures on mail leaving for the outside.

Signing comes last, over the message and every field the sender will prepend, so nothing
this gateway adds afterwards can break it; a message over ``[smtpgw.auth] MaxSize`` is not
signed (logged). Key files are read once per change of their modification time.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mailgate.config import Config
from mailgate.runtime.auth import dkimcheck
from mailgate.runtime.auth.verdict import Verdict, author_domain, claims, results_field

_NOT_DOMAIN = re.compile(r"[^a-z0-9.-]")
_keys: dict[Path, tuple[float, bytes]] = {}


def verdict_of(envelope: dict) -> Verdict | None:
    data = envelope.get("auth")
    return Verdict.from_public(data) if data else None


def authserv_id(config: Config) -> str:
    return config.authserv_id or config.hostname


def from_outside(config: Config, envelope: dict) -> bool:
    ip = (envelope.get("client") or {}).get("ip") or ""
    return bool(ip) and not config.is_trusted(ip)


def claimed_id(config: Config, envelope: dict) -> str:
    """Our authserv-id when a message from outside must not carry it (else "")."""
    return authserv_id(config) if config.auth_enabled and from_outside(config, envelope) else ""


def result_fields(config: Config, envelope: dict) -> list[str]:
    """Authentication-Results, and X-Mailgate-Spoofed for a protected From: domain that
    arrived from outside without an aligned pass."""
    verdict = verdict_of(envelope)
    if verdict is None:
        return []
    fields = [results_field(verdict, authserv_id(config))]
    if verdict.spoofed:
        domain = _NOT_DOMAIN.sub("", verdict.spoofed.lower())
        fields.append(
            f"X-Mailgate-Spoofed: From: {domain} is ours but arrived from outside without an"
            " aligned SPF or DKIM pass"
        )
    return fields


def quarantined(envelope: dict) -> bool:
    verdict = verdict_of(envelope)
    return verdict is not None and verdict.action == "quarantine"


def forged(value: bytes, authserv: str) -> bool:
    """Whether an Authentication-Results value (possibly folded) claims ``authserv``."""
    text = re.sub(r"\r?\n[ \t]", " ", value.decode("utf-8", "replace"))
    return claims(text, authserv)


def _key(path: Path) -> bytes:
    mtime = os.stat(path).st_mtime
    cached = _keys.get(path)
    if cached is None or cached[0] != mtime:
        _keys[path] = cached = (mtime, path.read_bytes())
    return cached[1]


def signed(config: Config, envelope: dict, headers: list[str], read, size: int, log) -> list[str]:
    """``headers`` with a DKIM-Signature in front when the message came from TrustedNetworks
    and its From: domain has a SigningKey. ``read`` returns the message as queued."""
    if not config.dkim_keys or envelope.get("kind", "message") != "message":
        return headers
    ip = (envelope.get("client") or {}).get("ip") or ""
    if not ip or not config.is_trusted(ip):
        return headers
    if size > config.auth_max_size:
        log.warning("dkim_not_signed", qid=envelope["id"], reason="message over MaxSize")
        return headers
    prepended = "".join(h + "\r\n" for h in headers).encode()
    message = prepended + read()
    domain = author_domain(message)
    key = next((k for k in config.dkim_keys if k.domain == domain), None)
    if key is None:
        return headers
    names = [n.strip() for n in config.dkim_sign_headers.split(",") if n.strip()]
    try:
        field = dkimcheck.sign(message, domain, key.selector, _key(config.resolve(key.path)), names)
    except (OSError, dkimcheck.SigningError) as exc:
        log.error("dkim_not_signed", qid=envelope["id"], domain=domain, error=str(exc))
        return headers
    log.info("dkim_signed", qid=envelope["id"], domain=domain, selector=key.selector)
    return [field.decode("ascii").removesuffix("\r\n"), *headers]
