"""The link of one node to the cluster's shared state in Redis (``[smtpgw.cluster] Redis``).

What is shared is only ever an optimisation or a limit, never a message: the spool stays on
each node. So every call is bounded by ``Timeout``, and a call that fails or times out makes
the caller use the node's own state (``run`` returns ``LOCAL``); the node then works alone
for ``RetryAfter`` seconds before it asks Redis again. The first failure is logged
(``cluster_unavailable``) and every fallback counted (``cluster_fallbacks``); the first
success after it is logged too (``cluster_resumed``). No mail waits longer than the timeout
for Redis, and none is lost when it is down.

Keys are ``PREFIX:what:…``, each with a TTL, so several clusters can share one Redis and
nothing grows without bound.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import TypeVar

import redis
import redis.sentinel

from mailgate.config import Config
from mailgate.runtime import log as logmod
from mailgate.runtime import stats

T = TypeVar("T")
LOCAL = object()  # "Redis did not answer: use this node's own state"
BLOCK_LIMIT = 30.0  # the longest a blocking call (``run(..., blocking=True)``) may wait


def connect(url: str, timeout: float, read_timeout: float | None = None) -> redis.Redis:
    """A client for ``url`` (``sentinel://H:P[,H:P…]/SERVICE[/DB]`` asks the sentinels for
    the current master)."""
    if url.startswith("sentinel://"):
        parsed = urllib.parse.urlsplit(url)
        hosts = []
        for item in parsed.netloc.split(","):
            host, _, port = item.rpartition(":")
            hosts.append((host.strip("[]"), int(port or 26379)))
        service, _, db = parsed.path.strip("/").partition("/")
        sentinel = redis.sentinel.Sentinel(
            hosts, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return sentinel.master_for(service, socket_timeout=read_timeout or timeout, db=int(db or 0))
    return redis.Redis.from_url(
        url,
        socket_timeout=read_timeout or timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )


class Cluster:
    def __init__(self, config: Config):
        self.prefix = config.cluster_prefix
        self.node = config.cluster_node or config.hostname
        self.retry_after = config.cluster_retry_after
        url, timeout = config.cluster_redis, config.cluster_timeout
        self.client = connect(url, timeout) if url else None
        # for BLPOP: its socket waits as long as the command may block, and a little more
        self.blocking = connect(url, timeout, BLOCK_LIMIT + timeout) if url else None
        self.down_until = 0.0
        self.down = False
        self.fallbacks = 0
        self.last_error = ""  # why Redis last failed this node, for the administrator's notice
        self.lock = threading.Lock()
        self.log = logmod.get()

    @property
    def enabled(self) -> bool:
        return self.client is not None

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def run(self, action: Callable[[redis.Redis], T], blocking: bool = False) -> T | object:
        """``action(client)``, or ``LOCAL`` when there is no cluster or Redis fails;
        ``blocking`` for a command that waits (BLPOP, at most ``BLOCK_LIMIT`` seconds)."""
        if self.client is None:
            return LOCAL
        if time.monotonic() < self.down_until:
            self._fell_back()
            return LOCAL
        try:
            result = action(self.blocking if blocking else self.client)
        except (redis.RedisError, OSError) as exc:
            with self.lock:
                self.down_until = time.monotonic() + self.retry_after
                first = not self.down
                self.down = True
                self.last_error = str(exc) or type(exc).__name__
            if first:
                self.log.error(
                    "cluster_unavailable",
                    node=self.node,
                    error=self.last_error,
                    note=f"using this node's own state; asking again every {self.retry_after:g} s",
                )
            self._fell_back()
            return LOCAL
        if self.down:
            with self.lock:
                self.down = False
            self.log.info("cluster_resumed", node=self.node)
        return result

    def count_in_window(self, key: str, window: float) -> int | object:
        """Count one event under ``key`` and return how many the cluster saw in the last
        ``window`` seconds (a sliding window, exact as the node's own deque), or ``LOCAL``."""
        now = time.time()
        member = f"{now:.6f}:{self.node}:{threading.get_ident()}"

        def count(client: redis.Redis) -> int:
            pipe = client.pipeline(transaction=True)
            pipe.zremrangebyscore(key, 0, now - window)
            pipe.zadd(key, {member: now})
            pipe.zcard(key)
            pipe.expire(key, int(window) + 1)
            return int(pipe.execute()[2])

        return self.run(count)

    def _fell_back(self) -> None:
        self.fallbacks += 1
        stats.cluster_fallback()

    def close(self) -> None:
        for client in (self.client, self.blocking):
            if client is not None:
                client.close()
