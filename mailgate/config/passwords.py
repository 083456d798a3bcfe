"""The console password: an scrypt hash in ``PasswordFile`` (0600, the service's), written by
``mailgate passwd``; ``PasswordHash`` in the configuration is read when there is no such file.

Format: ``scrypt$N$r$p$SALT$HASH`` (salt and hash in unpadded base64), from the standard
library's ``hashlib.scrypt``; checking costs about 50 ms and 16 MiB, which is what makes a
stolen configuration file slow to attack. The cleartext is never stored anywhere.
"""

from __future__ import annotations

import base64
import contextlib
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


def stored(config) -> str:
    """The hash a login is checked against now: ``PasswordFile``'s, else ``PasswordHash``.
    Read at every login, so ``mailgate passwd`` takes effect without a reload."""
    try:
        with open(config.password_path, encoding="ascii") as handle:
            text = handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return config.password_hash
    return text if well_formed(text) else ""


def fingerprint(hashed: str) -> str:
    """A short digest of a stored hash: sessions carry it, so a new password ends them."""
    return hashlib.sha256(hashed.encode()).hexdigest()[:16]


def write_password_file(path: Path, hashed: str, owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``hashed`` in one rename: mode 0600, never through a symlink,
    owned by ``owner`` (uid, gid) when given (root setting the service's password)."""
    new = path.with_name(path.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(new)
    fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, hashed.encode("ascii") + b"\n")
        os.fsync(fd)
        if owner is not None:
            os.fchown(fd, *owner)
    finally:
        os.close(fd)
    os.replace(new, path)
