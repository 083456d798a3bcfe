"""Greylisting (RFC 6647) at RCPT, off by default (``[smtpgw.greylist] Greylisting``).

A triplet is the client's network (/24, /64: a provider's pool of outgoing servers retries
from another address), the envelope sender and the recipient. Its first attempt gets
``451 4.7.1``; a retry at least ``GreylistDelay`` later and within ``GreylistWindow`` passes,
and the triplet then passes at once for ``GreylistLifetime``. A network whose triplets passed
``GreylistAutoAllow`` times is no longer greylisted. Never greylisted: TrustedNetworks,
ClientAllow, whitelisted senders, and a sender whose domain passed SPF in this session.

State is in Redis when the node is clustered (one Lua script per decision, so two nodes
never both count a first attempt), else, and whenever Redis does not answer, in
``spool/cache/greylist.sqlite3``. Times are the nodes' clocks (keep them in NTP).
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time

from mailgate.config import Config
from mailgate.message.domains import address_listed
from mailgate.receive.anvil import AccessList, network_of
from mailgate.runtime.cluster import LOCAL, Cluster

REFUSAL = "451 4.7.1 Greylisted, please try again in {wait} seconds (RFC 6647)"

SCRIPT = """
local now, delay, window, lifetime, allow = tonumber(ARGV[1]), tonumber(ARGV[2]),
    tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if allow > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') >= allow then return {1, 0} end
local seen = redis.call('HMGET', KEYS[1], 'first', 'passed')
if not seen[1] or now - tonumber(seen[1]) > window then
    if seen[2] == '1' then
        redis.call('EXPIRE', KEYS[1], lifetime)
        return {1, 0}
    end
    redis.call('HSET', KEYS[1], 'first', ARGV[1], 'passed', '0')
    redis.call('EXPIRE', KEYS[1], window)
    return {0, math.ceil(delay)}
end
if seen[2] == '1' then
    redis.call('EXPIRE', KEYS[1], lifetime)
    return {1, 0}
end
local waited = now - tonumber(seen[1])
if waited < delay then return {0, math.ceil(delay - waited)} end
redis.call('HSET', KEYS[1], 'passed', '1')
redis.call('EXPIRE', KEYS[1], lifetime)
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], lifetime)
return {1, 0}
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    key TEXT PRIMARY KEY, first REAL, passed INTEGER, expires REAL
);
CREATE TABLE IF NOT EXISTS clients (key TEXT PRIMARY KEY, passes INTEGER, expires REAL);
"""


class LocalGreylist:
    """The same decision as ``SCRIPT``, in a SQLite file of this node."""

    def __init__(self, path):
        self.db = sqlite3.connect(
            str(path), timeout=2.0, isolation_level=None, check_same_thread=False
        )
        self.lock = threading.Lock()  # one decision at a time (the receiver's store threads)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")  # losing it means a retry more, no mail
        self.db.executescript(SCHEMA)
        self.decisions = 0

    def decide(self, triplet: str, client: str, now: float, config: Config) -> tuple[bool, int]:
        with self.lock:
            return self._decide(triplet, client, now, config)

    def _decide(self, triplet: str, client: str, now: float, config: Config) -> tuple[bool, int]:
        db, lifetime = self.db, config.greylist_lifetime
        allow = config.greylist_auto_allow
        row = db.execute("SELECT passes FROM clients WHERE key=? AND expires>?", (client, now))
        passes = row.fetchone()
        if allow > 0 and passes and passes[0] >= allow:
            return True, 0
        seen = db.execute(
            "SELECT first, passed FROM triplets WHERE key=? AND expires>?", (triplet, now)
        ).fetchone()
        if seen and seen[1]:
            db.execute("UPDATE triplets SET expires=? WHERE key=?", (now + lifetime, triplet))
            return True, 0
        if seen is None or now - seen[0] > config.greylist_window:
            db.execute(
                "INSERT OR REPLACE INTO triplets VALUES (?, ?, 0, ?)",
                (triplet, now, now + config.greylist_window),
            )
            self._expire(now)
            return False, int(-(-config.greylist_delay // 1))
        waited = now - seen[0]
        if waited < config.greylist_delay:
            return False, int(-(-(config.greylist_delay - waited) // 1))
        db.execute("UPDATE triplets SET passed=1, expires=? WHERE key=?", (now + lifetime, triplet))
        db.execute(
            "INSERT INTO clients VALUES (?, 1, ?) ON CONFLICT(key) DO UPDATE SET "
            "passes = CASE WHEN expires > ? THEN passes + 1 ELSE 1 END, expires = ?",
            (client, now + lifetime, now, now + lifetime),
        )
        return True, 0

    def _expire(self, now: float) -> None:
        self.decisions += 1
        if self.decisions % 1000 == 0:
            self.db.execute("DELETE FROM triplets WHERE expires <= ?", (now,))
            self.db.execute("DELETE FROM clients WHERE expires <= ?", (now,))


class Greylisting:
    def __init__(self, config: Config, cluster: Cluster, local_path, executor):
        self.cluster = cluster
        self.local_path = local_path
        self.local: LocalGreylist | None = None
        self.executor = executor
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.allow = AccessList(config.list_items(config.client_allow))
        self.white = [m.lower() for m in config.list_items(config.whitelist_senders)]

    def exempt(self, ip: str, sender: str, spf) -> bool:
        config = self.config
        if not config.greylisting or config.is_trusted(ip) or ip in self.allow:
            return True
        if spf is not None and spf.result == "pass" and spf.identity == "mailfrom":
            return True
        return address_listed(sender, self.white)

    async def refusal(self, session, envelope, address: str) -> str | None:
        ip = session.peer[0]
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        if self.exempt(ip, sender, getattr(envelope, "spf", None)):
            return None
        network = network_of(ip)
        triplet = hashlib.sha256(f"{network}\0{sender.lower()}\0{address.lower()}".encode())
        loop = asyncio.get_running_loop()
        passed, wait = await loop.run_in_executor(
            self.executor, self.decide, triplet.hexdigest()[:32], network, time.time()
        )
        return None if passed else REFUSAL.format(wait=wait)

    def decide(self, triplet: str, network: str, now: float) -> tuple[bool, int]:
        config, cluster = self.config, self.cluster
        shared = cluster.run(
            lambda r: r.eval(
                SCRIPT,
                2,
                cluster.key("grey", triplet),
                cluster.key("grey-client", network),
                repr(now),
                repr(config.greylist_delay),
                int(config.greylist_window),
                int(config.greylist_lifetime),
                config.greylist_auto_allow,
            )
        )
        if shared is not LOCAL:
            return bool(int(shared[0])), int(shared[1])
        if self.local is None:
            self.local = LocalGreylist(self.local_path)
        return self.local.decide(triplet, network, now, config)
