"""iChecker: remember what clamd said about an object, so the same bytes are not scanned twice.

The key is the SHA-256 of the decoded object; each row holds clamd's verdict, the true type
libmagic saw (content decides it, and libmagic costs as much as clamd on text), and the
database version it was scanned with; a lookup only counts when that version is the one
clamd has loaded now. A database update therefore invalidates every row at once, and
``forget_other_versions`` reclaims their space. Only definite answers are stored (clean or
a detection), never errors.

The cache is one SQLite file in the spool's ``cache/`` (WAL mode), shared by every scanner
process through the file system alone; in a cluster (``[smtpgw.cluster] Redis``) verdicts are
also written to Redis (``ichk:DATABASE:DIGEST``, kept ``SHARED_TTL``) and a local miss asks
there, so an object one node scanned is not scanned again by the others. It is bounded: past
``size`` rows the least recently used tenth is deleted; "used" is refreshed on a hit only when
older than ``TOUCH_AFTER`` seconds, so a busy cache answers from a read alone instead of a
write per hit (the order in which rows are evicted needs no finer clock). It is only an
optimisation; any SQLite error disables it for the call and the object is scanned.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
from pathlib import Path

from mailgate.runtime.cluster import LOCAL, Cluster

TOUCH_AFTER = 60.0
SHARED_TTL = 7 * 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    digest  BLOB PRIMARY KEY,
    version TEXT NOT NULL,
    status  TEXT NOT NULL,
    detail  TEXT NOT NULL,
    kind    TEXT NOT NULL,
    used    REAL NOT NULL
) WITHOUT ROWID
"""


def shared_version(version: str) -> str:
    """The part of a database version every node shares: a database installed by ``avdb``
    is ``INSTALLED-AT-DIGEST`` and only the digest of its files says what it is."""
    found = re.fullmatch(r"\d{14}-([0-9a-f]{16})", version)
    return found.group(1) if found else version


class IChecker:
    def __init__(self, path: Path, size: int, cluster: Cluster | None = None):
        self.size = size
        self.cluster = cluster if cluster is not None and cluster.enabled else None
        self.shared_hits = 0
        self.hits = 0
        self.misses = 0
        self._since_trim = 0
        self.db: sqlite3.Connection | None = None
        if size <= 0:
            return
        self.db = sqlite3.connect(str(path), timeout=5.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute(_SCHEMA)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return round(self.hits / total, 3) if total else 0.0

    def get(self, digest: bytes, version: str) -> tuple[str, str, str] | None:
        """(status, detail, true type) remembered for these bytes under ``version``."""
        if self.db is None or not version:
            return None
        try:
            row = self.db.execute(
                "SELECT status, detail, kind, used FROM objects WHERE digest=? AND version=?",
                (digest, version),
            ).fetchone()
        except sqlite3.Error:
            return None
        if row is None:
            shared = self._shared(digest, version)
            if shared is None:
                self.misses += 1
                return None
            self.hits += 1
            self.shared_hits += 1
            self._store(digest, version, *shared)
            return shared
        self.hits += 1
        now = time.time()
        if now - row[3] > TOUCH_AFTER:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("UPDATE objects SET used=? WHERE digest=?", (now, digest))
        return row[0], row[1], row[2]

    def _shared(self, digest: bytes, version: str) -> tuple[str, str, str] | None:
        if self.cluster is None:
            return None
        key = self.cluster.key("ichk", shared_version(version), digest.hex())
        found = self.cluster.run(lambda r: r.hmget(key, "status", "detail", "kind"))
        if found is LOCAL or None in found:
            return None
        return tuple(v.decode("utf-8", "replace") for v in found)

    def put(self, digest: bytes, version: str, status: str, detail: str, kind: str) -> None:
        if self.db is None or not version:
            return
        if self.cluster is not None:
            key = self.cluster.key("ichk", shared_version(version), digest.hex())
            fields = {"status": status, "detail": detail, "kind": kind}
            self.cluster.run(
                lambda r: r.pipeline().hset(key, mapping=fields).expire(key, SHARED_TTL).execute()
            )
        self._store(digest, version, status, detail, kind)

    def _store(self, digest: bytes, version: str, status: str, detail: str, kind: str) -> None:
        try:
            self.db.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
                (digest, version, status, detail, kind, time.time()),
            )
            self._since_trim += 1
            if self._since_trim >= max(100, self.size // 20):
                self._since_trim = 0
                self._trim()
        except sqlite3.Error:
            pass

    def _trim(self) -> None:
        (count,) = self.db.execute("SELECT COUNT(*) FROM objects").fetchone()
        if count > self.size:
            self.db.execute(
                "DELETE FROM objects WHERE digest IN "
                "(SELECT digest FROM objects ORDER BY used LIMIT ?)",
                (count - self.size + self.size // 10,),
            )

    def forget_other_versions(self, version: str) -> None:
        if self.db is None or not version:
            return
        with contextlib.suppress(sqlite3.Error):
            self.db.execute("DELETE FROM objects WHERE version != ?", (version,))

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None
