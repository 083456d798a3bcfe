"""The console password: an scrypt hash in the configuration, written by ``mailgate passwd``.

Format: ``scrypt$N$r$p$SALT$HASH`` (salt and hash in unpadded base64), from the standard
library's ``hashlib.scrypt``; checking costs about 50 ms and 16 MiB, which is what makes a
stolen configuration file slow to attack. The cleartext is never stored anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from pathlib import Path

_N, _R, _P = 2**14, 8, 1
_FORMAT = re.compile(r"^scrypt\$(\d+)\$(\d+)\$(\d+)\$([A-Za-z0-9+/]+)\$([A-Za-z0-9+/]+)$")
MIN_LENGTH = 8


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str) -> str:
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def well_formed(text: str) -> bool:
    m = _FORMAT.match(text)
    return bool(m) and int(m.group(1)) > 1 and (int(m.group(1)) & (int(m.group(1)) - 1)) == 0


def verify(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; an empty or odd ``stored`` matches nothing."""
    m = _FORMAT.match(stored or "")
    if not m:
        return False
    n, r, p = (int(m.group(i)) for i in (1, 2, 3))
    try:
        digest = hashlib.scrypt(
            password.encode(), salt=_unb64(m.group(4)), n=n, r=r, p=p, dklen=32, maxmem=2**26
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest, _unb64(m.group(5)))


def with_hash(text: str, stored: str) -> str:
    """The configuration ``text`` with ``[smtpgw.admin] PasswordHash`` set to ``stored``.

    The line is replaced where it is, or added under the section, or the section is added at
    the end; every other line (comments included) stays as it was.
    """
    lines = text.splitlines(keepends=True)
    section_at = None
    current = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        header = re.fullmatch(r"\[([^\]]+)\]", stripped)
        if header:
            current = header.group(1).strip().lower()
            if current == "smtpgw.admin" and section_at is None:
                section_at = index
            continue
        key = stripped.split("=", 1)[0].strip().lower()
        if current == "smtpgw.admin" and "=" in stripped and key == "passwordhash":
            lines[index] = f"PasswordHash={stored}\n"
            return "".join(lines)
    if section_at is not None:
        lines.insert(section_at + 1, f"PasswordHash={stored}\n")
        return "".join(lines)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return "".join(lines) + f"\n[smtpgw.admin]\nPasswordHash={stored}\n"


def write_config(path: Path, text: str) -> None:
    """Replace the configuration file in one rename, keeping its permissions."""
    mode = path.stat().st_mode & 0o7777
    new = path.with_name(path.name + ".new")
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(new, path)
