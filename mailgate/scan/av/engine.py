"""The anti-virus engine: a real clamd, spoken to with pyclamd over its unix socket.

Each decoded MIME object goes to clamd with INSTREAM. What clamd answers becomes one of the
object statuses (``classify``); what it cannot answer is either the engine's fault
(``EngineUnavailable``: it does not answer PING, so the message waits, unscanned, until it
does) or the object's (``ObjectError``: an error, a timeout or an answer pyclamd cannot parse
while clamd is up, counted against the message's ScanAttempts). No exception of pyclamd's
leaves this module as anything else: a scanner only crashes on its own bugs.

Which database clamd has loaded is learnt from clamd itself: every database installed by
``avdb`` carries a generated signature that names its version and matches only ``CANARY``,
so scanning the canary answers "which version is loaded now", even mid-reload. iChecker keys
its memory by that version. A clamd not fed by ``avdb`` is identified by its VERSION reply.
"""

from __future__ import annotations

import re
import socket
import struct
import time
from collections.abc import Iterable
from pathlib import Path

import pyclamd

from mailgate.scan.av.ichecker import IChecker

CANARY = b"MAILGATE-AVDB-VERSION-CANARY-7Q3XK9"
CANARY_PREFIX = "Mailgate.DatabaseVersion."
LIMITS_PREFIX = "Heuristics.Limits.Exceeded."
VERSION_CHECK_INTERVAL = 2.0
CHUNK = 65536
# pyclamd reads a reply up to five times before it gives up, each read waiting the socket's
# whole timeout; its socket gets a fifth of ObjectTimeout so a silent clamd costs ObjectTimeout.
PYCLAMD_READ_TRIES = 5
LONGEST_REPLY = 65536


class EngineUnavailable(Exception):
    """clamd does not answer: nothing can be scanned until it does."""


class ObjectError(Exception):
    """clamd is up but could not give a verdict on this object (error reply or timeout)."""


class TooLarge(Exception):
    """The object is over clamd's StreamMaxLength (or ours): a limit, not an error."""


def classify(name: str) -> str:
    """The object status for a clamd detection name."""
    name = name.removesuffix(".UNOFFICIAL")
    if name.startswith("Heuristics.Encrypted"):
        return "encrypted"
    if name.startswith("Heuristics.Broken"):
        return "corrupted"
    if name.startswith("Heuristics.Limits"):
        return "unscannable"
    if name.startswith(("Heuristics.", "PUA.", "Suspicious.")) or ".Suspicious." in name:
        return "suspicious"
    return "infected"


class Engine:
    """One scanner process's connection to clamd (a new socket per command, as clamd likes)."""

    def __init__(self, socket_path: Path, object_timeout: float, ichecker: IChecker | None = None):
        self.socket_path = str(socket_path)
        self.timeout = max(0.05, object_timeout / PYCLAMD_READ_TRIES)
        self.object_timeout = object_timeout
        self.ichecker = ichecker
        self.db_version = ""
        self._version_checked = 0.0
        self._client: pyclamd.ClamdUnixSocket | None = None
        self.scanned = 0
        self.scan_seconds = 0.0

    def _clamd(self) -> pyclamd.ClamdUnixSocket:
        if self._client is None:
            try:
                self._client = pyclamd.ClamdUnixSocket(self.socket_path, timeout=self.timeout)
            except (pyclamd.ConnectionError, OSError) as exc:
                raise EngineUnavailable(f"clamd not reachable at {self.socket_path}") from exc
        return self._client

    def ping(self) -> bool:
        """Does clamd answer PING? Spoken here, on a socket that is closed whatever happens
        (pyclamd leaves its socket open when the connection fails)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(min(self.timeout, 10.0))
                sock.connect(self.socket_path)
                sock.sendall(b"zPING\0")
                reply = sock.recv(64)
        except OSError:
            return False
        return reply.rstrip(b"\0\n") == b"PONG"

    def reload(self) -> None:
        """Ask clamd to re-read its database directory (it goes on scanning meanwhile)."""
        try:
            self._clamd().reload()
        except Exception as exc:
            raise EngineUnavailable(f"clamd RELOAD failed: {exc!r}") from exc

    def engine_version(self) -> str:
        """clamd's own VERSION reply, e.g. ``ClamAV 1.4.6``."""
        try:
            return str(self._clamd().version())
        except Exception as exc:
            raise EngineUnavailable(f"clamd VERSION failed: {exc!r}") from exc

    def loaded_version(self) -> str:
        """The database version clamd has loaded now (see the module docstring)."""
        answer = self._instream(CANARY)
        if answer and answer[0] == "FOUND" and CANARY_PREFIX in answer[1]:
            return answer[1].split(CANARY_PREFIX, 1)[1].removesuffix(".UNOFFICIAL")
        return self.engine_version()

    def refresh_version(self, installed: str | None = None) -> str:
        """Re-learn the loaded database version every few seconds, and at once while it
        differs from ``installed`` (the version ``avdb`` says is current: a reload is
        under way, or just done)."""
        now = time.monotonic()
        stale = installed is not None and installed != self.db_version
        if stale or now - self._version_checked >= VERSION_CHECK_INTERVAL or not self.db_version:
            version = self.loaded_version()
            if version != self.db_version and self.ichecker is not None:
                self.ichecker.forget_other_versions(version)
            self.db_version = version
            self._version_checked = now
        return self.db_version

    def _instream(self, data: bytes | Iterable[bytes]) -> tuple[str, str] | None:
        """clamd's answer to INSTREAM: None (clean) or (FOUND|ERROR, text)."""
        try:
            reply = instream(self.socket_path, data, self.object_timeout)
        except Exception as exc:  # a socket error, a timeout, a reply cut short
            if not self.ping():
                raise EngineUnavailable(f"clamd stopped answering: {exc!r}") from exc
            raise ObjectError(f"clamd gave no usable answer ({exc!r})") from exc
        if reply == "INSTREAM size limit exceeded. ERROR":
            raise TooLarge(reply)
        name, sep, verdict = reply.partition(": ")
        if not sep or name != "stream":
            raise ObjectError(f"clamd's answer was not understood ({reply!r:.200})")
        if verdict == "OK":
            return None
        text, _, status = verdict.rpartition(" ")
        if status not in ("FOUND", "ERROR") or not text:
            raise ObjectError(f"clamd's answer was not understood ({reply!r:.200})")
        return status, text

    def scan(self, data: bytes | Iterable[bytes]) -> tuple[str, str]:
        """(status, detail) of one object (its bytes, or its blocks read once), from clamd."""
        started = time.monotonic()
        answer = self._instream(data)
        self.scan_seconds += time.monotonic() - started
        self.scanned += 1
        if answer is None:
            return ("clean", "")
        if answer[0] != "FOUND":
            raise ObjectError(f"clamd error: {answer[1]}")
        name = answer[1].removesuffix(".UNOFFICIAL")
        if name.startswith(CANARY_PREFIX):
            return ("clean", "")
        if name.startswith(LIMITS_PREFIX):  # e.g. ...Exceeded.MaxFileSize: limit:max-filesize
            which = name[len(LIMITS_PREFIX) :]
            return ("unscannable", f"limit:{re.sub(r'^Max', 'max-', which).lower()} ({name})")
        return (classify(name), name)


def instream(socket_path: str, data: bytes | Iterable[bytes], timeout: float) -> str:
    """Send ``data`` (bytes, or blocks of them as they are read) to clamd with INSTREAM
    (``man clamd``) and return its reply, without the closing NUL.

    This one command is spoken here rather than through pyclamd: its ``scan_stream`` returns
    the same None for "stream: OK" and for a connection closed with no reply at all, and a
    scanner must never take silence for a clean verdict. A reply that does not end with NUL
    raises ``ConnectionError``. When clamd stops reading early (its StreamMaxLength), the
    broken pipe is ignored and the reply it sent is read.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        try:
            sock.sendall(b"zINSTREAM\0")
            for block in [data] if isinstance(data, bytes | bytearray) else data:
                view = memoryview(block)
                for start in range(0, len(view), CHUNK):
                    chunk = view[start : start + CHUNK]
                    sock.sendall(struct.pack("!L", len(chunk)))
                    sock.sendall(chunk)
            sock.sendall(b"\0\0\0\0")
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = bytearray()
        while not reply.endswith(b"\0"):
            got = sock.recv(4096)
            if not got:
                raise ConnectionError(
                    f"clamd closed the connection without a verdict ({reply!r:.80})"
                )
            reply += got
            if len(reply) > LONGEST_REPLY:
                raise ConnectionError("clamd's reply has no end")
    return reply[:-1].decode("utf-8", "replace").strip()
