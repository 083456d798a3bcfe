"""Who may open a session now: access lists, concurrency and connection-rate limits.

Named after Postfix's anvil, which keeps the same counts for smtpd. The receiver is one
process, so the counts live in its memory: concurrent sessions in total, per client address
and per client network (/24, /64), and each client's connections in a sliding window of
``RATE_WINDOW`` seconds. A refused client gets one reply and the connection is closed;
everybody else keeps service.

Slots cannot all be taken from outside: ``TrustedSessions`` of ``MaxSessions`` are kept for
``TrustedNetworks``, and past ``StressAt`` percent of them the receiver is under stress
(``stressed``): sessions then get ``StressTimeout`` per command and a tenth of the junk
commands, so slots held by idle or NOOP-ing clients come free within seconds.

Access: an address in ``ClientAllow`` is always let in (an exception to the deny list); one in
``ClientDeny`` is refused with ``554 5.7.1``. Entries are addresses, CIDR networks (IPv4 and
IPv6) or masks such as ``192.0.2.*``, inline or from ``file:PATH`` lists.
"""

from __future__ import annotations

import collections
import fnmatch
import ipaddress
import time
from pathlib import Path

from mailgate.config import Config, client_address
from mailgate.runtime import stats

RATE_WINDOW = 60.0


class AccessList:
    def __init__(self, items: list[str]):
        self.networks = []
        self.masks = []
        for item in items:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.masks.append(item.lower())

    def __contains__(self, ip: str) -> bool:
        addr = client_address(ip)
        if addr is None:
            return False
        if any(addr in net for net in self.networks):
            return True
        return any(fnmatch.fnmatchcase(str(addr), mask) for mask in self.masks)


class Anvil:
    def __init__(self, config: Config, paused: Path | None = None):
        self.paused = paused  # a file whose presence means "accept nothing now"
        self.configure(config)
        self.sessions: collections.Counter[str] = collections.Counter()
        self.networks: collections.Counter[str] = collections.Counter()
        self.total = 0
        self.outside: collections.Counter[str] = collections.Counter()  # outside TrustedNetworks
        self.recent: dict[str, collections.deque] = {}
        self.refused: collections.Counter[str] = collections.Counter()

    def configure(self, config: Config) -> None:
        self.config = config
        self.allow = AccessList(config.list_items(config.client_allow))
        self.deny = AccessList(config.list_items(config.client_deny))

    def admit(self, ip: str) -> str | None:
        """None to let the client in (and count it), else the reply that refuses it."""
        config = self.config
        if self.paused is not None and self.paused.exists():
            return self._refuse("paused", "421 4.3.2 Service paused, try again later")
        trusted = config.is_trusted(ip)
        net = network_of(ip)
        if ip not in self.allow:
            if ip in self.deny:
                return self._refuse("denied", f"554 5.7.1 Access denied for {ip}")
            if config.connection_rate and not self._within_rate(ip):
                return self._refuse(
                    "rate", f"421 4.7.0 Too many connections from {ip} per minute, try later"
                )
            if config.max_sessions and self.total >= config.max_sessions:
                return self._refuse("sessions", "421 4.7.0 Too many connections, try later")
            outside_cap = max(0, config.max_sessions - config.trusted_sessions)
            if config.max_sessions and not trusted and self.outside.total() >= outside_cap:
                return self._refuse("sessions", "421 4.7.0 Too many connections, try later")
            per_client = config.max_sessions_per_client
            if per_client and self.sessions[ip] >= per_client:
                return self._refuse(
                    "client_sessions", f"421 4.7.0 Too many connections from {ip}, try later"
                )
            per_network = config.max_sessions_per_network
            if per_network and not trusted and self.networks[net] >= per_network:
                return self._refuse(
                    "network_sessions",
                    f"421 4.7.0 Too many connections from your network {net}, try later",
                )
        self.sessions[ip] += 1
        self.networks[net] += 1
        self.total += 1
        if not trusted:
            self.outside[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        _decrement(self.sessions, ip)
        _decrement(self.networks, network_of(ip))
        if ip in self.outside:
            _decrement(self.outside, ip)

    def stressed(self) -> bool:
        """Are so many slots in use that idle sessions should make room (Postfix's stress)?"""
        config = self.config
        if not config.stress_at or not config.max_sessions:
            return False
        return self.total * 100 >= config.max_sessions * config.stress_at

    def _within_rate(self, ip: str) -> bool:
        """Count this attempt (refused ones too: a flood stays refused) and say if it fits."""
        now = time.monotonic()
        window = self.recent.setdefault(ip, collections.deque())
        while window and window[0] <= now - RATE_WINDOW:
            window.popleft()
        window.append(now)
        if len(window) > self.config.connection_rate:
            return False
        if len(self.recent) > 100_000:
            self.recent = {k: v for k, v in self.recent.items() if v and v[-1] > now - RATE_WINDOW}
        return True

    def _refuse(self, reason: str, reply: str) -> str:
        self.refused[reason] += 1
        stats.rejected(reason)
        return reply


def _decrement(counter: collections.Counter, key: str) -> None:
    counter[key] -= 1
    if counter[key] <= 0:
        del counter[key]


def network_of(ip: str) -> str:
    """The client's network as the per-network limit counts it: /24 (IPv4), /64 (IPv6)."""
    addr = client_address(ip)
    if addr is None:
        return ip
    prefix = 24 if addr.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))
