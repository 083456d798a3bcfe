"""xtext (RFC 3461 section 4): how ENVID and ORCPT travel in ESMTP parameters and DSNs."""

from __future__ import annotations

import re

XTEXT_RE = re.compile(r"^(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+$")


def xtext_decode(text: str) -> str:
    return re.sub(r"\+([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    return "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in "+=" else f"+{ord(c):02X}" for c in text
    )
