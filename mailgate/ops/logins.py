"""Console logins: the session signing key, the sessions the server knows, and the throttle
on wrong passwords.

After ``MAX_FAILURES`` wrong passwords from one address within ``FAILURE_WINDOW`` seconds,
each further try from it must wait twice as long as the last (1 s, 2 s, 4 s... up to
``LONGEST_WAIT``), or gets 429 without the password being checked: guessing is slowed to a
crawl, yet nobody (say, another user behind the same proxy) can lock the administrator out
for longer than ``LONGEST_WAIT``.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import secrets
import threading
import time
from pathlib import Path

from mailgate.spool import Spool, write_file

MAX_FAILURES = 5
FAILURE_WINDOW = 300.0
LONGEST_WAIT = 60.0
SESSION_HOURS = 8


class Throttle:
    """Failed logins per client address in a sliding window."""

    def __init__(self):
        self.failures: dict[str, collections.deque] = {}
        self.lock = threading.Lock()

    def blocked(self, ip: str) -> bool:
        with self.lock:
            window = self.failures.get(ip)
            now = time.monotonic()
            while window and window[0] <= now - FAILURE_WINDOW:
                window.popleft()
            if window is not None and not window:
                del self.failures[ip]  # forget addresses whose failures have all expired
                return False
            if not window or len(window) < MAX_FAILURES:
                return False
            wait = min(LONGEST_WAIT, 2.0 ** (len(window) - MAX_FAILURES))
            return now - window[-1] < wait

    def failed(self, ip: str) -> None:
        with self.lock:
            self.failures.setdefault(ip, collections.deque()).append(time.monotonic())

    def succeeded(self, ip: str) -> None:
        with self.lock:
            self.failures.pop(ip, None)


def session_key(spool: Spool) -> bytes:
    """The session signing key, made once per spool and kept in ``run/`` (0600)."""
    path = spool.run_path("console.key")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        write_file(path, key)
        return key


class Sessions:
    """The console sessions the server knows, one file each in ``run/console-sessions/``.

    A file is named by the SHA-256 of its session's token (the token itself is only in the
    signed cookie) and holds when it was opened and the fingerprint of the password hash it
    was opened with. Logging out removes the file, so a copied cookie dies with it; a new
    password changes the fingerprint, so it ends every session at once.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def _path(self, token: str) -> Path:
        return self.folder / hashlib.sha256(token.encode()).hexdigest()

    def open(self, fingerprint: str) -> str:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.expire()
        token = secrets.token_urlsafe(32)
        write_file(self._path(token), f"{time.time()}\n{fingerprint}\n".encode(), durable=False)
        return token

    def valid(self, token: str, fingerprint: str) -> bool:
        if not token:
            return False
        try:
            opened, kept = self._path(token).read_text().split()
        except (OSError, ValueError):
            return False
        fresh = time.time() - float(opened) < SESSION_HOURS * 3600
        return fresh and hmac.compare_digest(kept, fingerprint)

    def close(self, token: str) -> None:
        if token:
            self._path(token).unlink(missing_ok=True)

    def expire(self) -> None:
        cutoff = time.time() - SESSION_HOURS * 3600
        for path in self.folder.iterdir():
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()
