"""Console logins: the session signing key and the throttle on wrong passwords.

After ``MAX_FAILURES`` wrong passwords from one address within ``FAILURE_WINDOW`` seconds,
that address gets 429 until the window has passed, without the password being checked.
"""

from __future__ import annotations

import collections
import secrets
import threading
import time

from mailgate.spool import Spool, write_file

MAX_FAILURES = 5
FAILURE_WINDOW = 300.0
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
            return bool(window) and len(window) >= MAX_FAILURES

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
