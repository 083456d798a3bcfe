"""Traffic thresholds: tell the administrator when a day's traffic or the protected addresses
pass what the configuration allows (the limits a licence would set, as alerts).

The supervisor calls ``TrafficWatch.check`` from its sweep; in a cluster the thresholds are the
cluster's: each node adds its figures in Redis and one node alerts. It reads only what the
receivers appended to the journal since the last call (file offsets), so a check costs little
however busy the day. Each threshold alerts at most once per day: a flag ``stats/alert-DAY-
NAME`` is written after the notice is queued (a crash in between can only repeat the notice).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from pathlib import Path

from mailgate.config import Config
from mailgate.runtime import stats
from mailgate.runtime.cluster import LOCAL, Cluster
from mailgate.scan import notify
from mailgate.spool import Spool, journal


def tell_administrator(spool: Spool, config: Config, status: str, about: str, **values) -> None:
    """Queue the ``admin-<status>.txt`` notice to the Administrator (none when unset)."""
    if not config.administrator:
        return
    values.update(
        date=time.strftime(config.date_format, time.localtime()),
        hostname=config.hostname,
        administrator=config.administrator,
    )
    notify.queue(spool, config, "admin", status, [config.administrator], values, about)


class SharedCluster:
    """The supervisor's one link to the cluster's Redis, made at the first chore that needs it
    (the traffic and the cluster watches share it)."""

    def __init__(self) -> None:
        self._cluster: Cluster | None = None

    def __call__(self, config: Config) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster(config)
        return self._cluster


class TrafficWatch:
    def __init__(self, spool: Spool, cluster: SharedCluster | None = None):
        self.spool = spool
        self.offsets: dict[Path, int] = {}
        self.messages: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.addresses: dict[str, set[str]] = defaultdict(set)
        self.cluster = cluster or SharedCluster()
        self.shared: dict[str, set[str]] = {}  # protected addresses already sent to Redis

    def wanted(self, config: Config) -> bool:
        return bool(
            config.daily_traffic_limit
            or config.daily_message_limit
            or config.protected_address_limit
        )

    def check(self, config: Config, now: float | None = None) -> list[str]:
        """Read new journal lines, queue a notice per threshold newly passed; their names."""
        if not self.wanted(config):
            return []
        now = time.time() if now is None else now
        earliest = journal.day_of(now - max(config.address_window, 86400))
        self._forget_before(earliest)
        self._read(config, earliest)
        today = journal.day_of(now)
        first = journal.day_of(now - config.address_window + 1)
        addresses = set().union(*(a for d, a in self.addresses.items() if first <= d <= today))
        figures = (self.bytes[today], self.messages[today], len(addresses))
        if config.cluster_redis:
            figures = self._cluster_figures(config, today, first, figures)
        passed = []
        for name, value, limit in zip(
            ("DailyTrafficLimit", "DailyMessageLimit", "ProtectedAddressLimit"),
            figures,
            (
                config.daily_traffic_limit,
                config.daily_message_limit,
                config.protected_address_limit,
            ),
            strict=True,
        ):
            if limit and value > limit and self._alert(config, today, name, value, limit):
                passed.append(name)
        return passed

    def _forget_before(self, day: str) -> None:
        """Drop the figures and file offsets of days no threshold looks at any more."""
        for table in (self.messages, self.bytes, self.addresses):
            for old in [d for d in table if d < day]:
                del table[old]
        self.offsets = {p: o for p, o in self.offsets.items() if p.parent.name >= day}

    def _read(self, config: Config, earliest: str) -> None:
        """Take in what was written since the last call (at the first, the whole window)."""
        for day in self.spool.journal_days():
            if day < earliest:
                continue
            folder = self.spool.journal_dir(day)
            for name in os.listdir(folder):
                if name.startswith("receiver-"):
                    self._read_file(config, day, folder / name)

    def _read_file(self, config: Config, day: str, path: Path) -> None:
        offset = self.offsets.get(path, 0)
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return
        complete = data.rfind(b"\n") + 1  # a line still being written waits for next time
        self.offsets[path] = offset + complete
        for raw in data[:complete].splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("ev") != "received":
                continue
            self.messages[day] += 1
            self.bytes[day] += event.get("size", 0)
            for address in event.get("to") or []:
                if config.is_protected(address.rpartition("@")[2]):
                    self.addresses[day].add(address.lower())

    def _cluster_figures(self, config: Config, today: str, first: str, mine: tuple) -> tuple:
        """(bytes, messages, addresses) of the whole cluster: this node publishes its own
        day and its new protected addresses, and sums every node's. Its own figures when
        Redis does not answer."""
        cluster = self.cluster(config)
        node = cluster.node
        fresh = {d: a - self.shared.get(d, set()) for d, a in self.addresses.items()}
        days = sorted(d for d in self.addresses if first <= d <= today) or [today]
        keep = int(config.address_window) + 2 * 86400

        def share(client):
            pipe = client.pipeline(transaction=False)
            key = cluster.key("traffic", today)
            pipe.hset(key, mapping={f"{node}:bytes": mine[0], f"{node}:messages": mine[1]})
            pipe.expire(key, 3 * 86400)
            for day, new in fresh.items():
                if new:
                    pipe.sadd(cluster.key("addresses", day), *sorted(new))
                    pipe.expire(cluster.key("addresses", day), keep)
            pipe.hgetall(key)
            pipe.sunion([cluster.key("addresses", d) for d in days])
            return pipe.execute()[-2:]

        found = cluster.run(share)
        if found is LOCAL:
            return mine
        for day, new in fresh.items():
            self.shared.setdefault(day, set()).update(new)
        traffic, addresses = found
        total = defaultdict(int)
        for field, value in traffic.items():
            total[field.decode().rpartition(":")[2]] += int(value)
        return total["bytes"], total["messages"], len(addresses)

    def _alert(self, config: Config, day: str, name: str, value: int, limit: int) -> bool:
        flag = self.spool.stats_path(f"alert-{day}-{name}")
        if flag.exists():
            return False
        if config.cluster_redis:  # once per cluster: the node that sets the key tells
            cluster = self.cluster(config)
            key = cluster.key("alert", day, name)
            won = cluster.run(lambda c: c.set(key, cluster.node, nx=True, ex=172800))
            if won is not LOCAL and not won:
                flag.write_text(f"{value} > {limit} (told by another node)\n")
                return False
        tell_administrator(
            self.spool, config, "threshold", "", threshold=name, value=str(value), limit=str(limit)
        )
        flag.write_text(f"{value} > {limit}\n")
        return True


class CorruptWatch:
    """corrupt/ is never silent: each message that lands there (its processing killed a
    worker ``MaxAttempts`` times, its envelope is unreadable, an administrator moved it) is
    logged at error level and reported to the Administrator once; the queue-depth gauge
    (``mailgate_queue_messages{state="corrupt"}``, ``mailgate stats``) counts what waits there.

    The supervisor calls ``check`` from its sweep; what was already there when it started is
    logged once as waiting (it was reported by the run that put it there).
    """

    def __init__(self, spool: Spool, log):
        self.spool = spool
        self.log = log
        self.known = self._names()
        if self.known:
            self.log.error("corrupt_waiting", count=len(self.known), ids=sorted(self.known)[:20])

    def check(self, config: Config) -> list[str]:
        """Report every entry new in corrupt/ since the last call; their queue IDs."""
        now = self._names()
        new = sorted(now - self.known)
        self.known = now
        for queue_id in new:
            reason = self._reason(queue_id)
            self.log.error("message_corrupt", qid=queue_id, reason=reason)
            tell_administrator(
                self.spool, config, "corrupt", queue_id, queue_id=queue_id, reason=reason
            )
        return new

    def _names(self) -> set[str]:
        try:
            return set(self.spool.names("corrupt"))
        except FileNotFoundError:  # no spool yet: the supervisor creates it after this
            return set()

    def _reason(self, queue_id: str) -> str:
        try:
            entry = self.spool.find(queue_id, ("corrupt",))
        except (LookupError, ValueError):
            return "gone again"
        return " ".join((entry.read_reason() or "no reason.txt (moved there by hand?)").split())


class ClusterWatch:
    """A node that works alone because Redis failed is told to the Administrator, once per
    outage, and once more when the node shares again (the workers only log it).

    An outage is what this node saw: the supervisor's own ping failed, or a worker answered a
    call alone since the last check (``cluster_fallbacks`` grew), which catches an outage
    shorter than a sweep. It is over at the first check where both are quiet again.
    """

    def __init__(self, spool: Spool, log, cluster: SharedCluster | None = None):
        self.spool = spool
        self.log = log
        self.cluster = cluster or SharedCluster()
        self.seen = 0  # cluster_fallbacks of this run at the last check
        self.since: float | None = None  # when the current outage was noticed

    def check(self, config: Config, now: float | None = None) -> str | None:
        """``"down"`` or ``"back"`` when a notice was queued, else None."""
        if not config.cluster_redis:
            return None
        cluster = self.cluster(config)
        now = time.time() if now is None else now
        answered = cluster.run(lambda client: client.ping()) is not LOCAL
        fallbacks = stats.live_count(self.spool, "cluster_fallbacks")
        calls, self.seen = max(fallbacks - self.seen, 0), fallbacks
        if (not answered or calls) and self.since is None:
            self.since = now
            error = cluster.last_error if not answered else "a worker's call failed"
            self.log.error("cluster_alert", node=cluster.node, error=error, calls=calls)
            self._tell(config, "down", cluster.node, error=error, calls=str(calls))
            return "down"
        if answered and not calls and self.since is not None:
            minutes = f"{(now - self.since) / 60:.1f}"
            self.since = None
            self.log.info("cluster_alert_over", node=cluster.node, minutes=minutes)
            self._tell(config, "back", cluster.node, minutes=minutes)
            return "back"
        return None

    def _tell(self, config: Config, state: str, node: str, **values: str) -> None:
        values.update(node=node, redis=redact(config.cluster_redis))
        tell_administrator(self.spool, config, f"cluster-{state}", "", **values)


def redact(url: str) -> str:
    """``url`` without the password a Redis address may carry."""
    scheme, sep, rest = url.partition("://")
    place, slash, path = rest.partition("/")
    if "@" not in place:
        return url
    return f"{scheme}{sep}***@{place.rpartition('@')[2]}{slash}{path}"
