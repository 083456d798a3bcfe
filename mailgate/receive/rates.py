"""For clients outside TrustedNetworks: the cluster's connection rate at connect, and message
rate limits at MAIL, per client address and per client network (a minute), per envelope
sender (an hour).

Each is a sliding window: exact counts of the last window, like the anvil's connection rate.
Clustered, the count is the cluster's (``Cluster.count_in_window``), so a sender spread over
several nodes gets one allowance; when Redis does not answer, this node's own count applies.
A refused MAIL counts too: a client that keeps trying stays refused.
"""

from __future__ import annotations

import asyncio
import collections
import time

from mailgate.config import Config
from mailgate.receive.anvil import network_of
from mailgate.runtime.cluster import LOCAL, Cluster

MAX_KEYS = 100_000


class Rates:
    def __init__(self, config: Config, cluster: Cluster, executor):
        self.config = config
        self.cluster = cluster
        self.executor = executor
        self.local: dict[str, collections.deque] = {}

    def limits(self, ip: str, sender: str) -> list[tuple[str, int, float, str]]:
        """(key, limit, window, what) of every limit that applies."""
        config = self.config
        found = []
        if config.message_rate:
            found.append((f"mail:{ip}", config.message_rate, 60.0, f"client [{ip}]"))
        if config.network_message_rate:
            net = network_of(ip)
            found.append((f"mail-net:{net}", config.network_message_rate, 60.0, f"network {net}"))
        if config.sender_rate and sender:
            found.append((f"sender:{sender.lower()}", config.sender_rate, 3600.0, "this sender"))
        return found

    async def connection_refusal(self, ip: str) -> str | None:
        """The cluster's count of this client's connections (the anvil counted this node's:
        no need to count them twice when Redis does not answer)."""
        rate = self.config.connection_rate
        if not rate or not self.cluster.enabled:
            return None
        seen = await asyncio.get_running_loop().run_in_executor(
            self.executor, self.cluster.count_in_window, self.cluster.key("conn", ip), 60.0
        )
        if seen is not LOCAL and seen > rate:
            return f"421 4.7.0 Too many connections from {ip} per minute, try later"
        return None

    async def refusal(self, ip: str, sender: str) -> str | None:
        if self.config.is_trusted(ip):
            return None
        loop = asyncio.get_running_loop()
        for key, limit, window, what in self.limits(ip, sender):
            seen = await loop.run_in_executor(self.executor, self.count, key, window)
            if seen > limit:
                per = "minute" if window == 60.0 else "hour"
                return f"450 4.7.1 Too many messages from {what} per {per}, try again later"
        return None

    def count(self, key: str, window: float) -> int:
        shared = self.cluster.count_in_window(self.cluster.key("rate", key), window)
        local = self._count_local(key, window)
        return local if shared is LOCAL else int(shared)

    def _count_local(self, key: str, window: float) -> int:
        now = time.monotonic()
        seen = self.local.setdefault(key, collections.deque())
        while seen and seen[0] <= now - window:
            seen.popleft()
        seen.append(now)
        if len(self.local) > MAX_KEYS:
            self.local = {k: v for k, v in self.local.items() if v and v[-1] > now - 3600}
        return len(seen)
