"""The supervisor's periodic chores, apart from watching its own children.

Every sweep: claims whose owner is gone but was never our child to reap (a worker of an
earlier supervisor, still finishing its message when this one started, then killed), or whose
hand-back failed when the worker died (a full disk), go back to their queue; a child holding
a claim for longer than ``MaxClaimTime`` is killed as stuck; what was left in
tmp/ by a dead writer, or untouched there for ``TMP_MAX_AGE``, goes; archived days and journal
days past their retention go; the traffic thresholds are checked, and what arrived in
corrupt/ is reported, as is a node working alone while Redis fails (``alerts``). Each chore
logs what it did. A chore that fails (a storage error, a file caught half written) is logged
and tried again at the next sweep; none can stop the supervisor, which keeps the mail moving.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from mailgate.config import Config
from mailgate.spool import RETURNS, Spool, journal
from mailgate.supervise import alerts

TMP_MAX_AGE = 3600.0  # no write in tmp/ takes an hour: a receiver stores a message in one go


class Housekeeping:
    def __init__(self, spool: Spool, log):
        self.spool = spool
        self.log = log
        redis = alerts.SharedCluster()
        self.traffic = alerts.TrafficWatch(spool, redis)
        self.corrupt = alerts.CorruptWatch(spool, log)
        self.cluster = alerts.ClusterWatch(spool, log, redis)

    def recover(self, config: Config) -> None:
        """At start: what a previous run left claimed or half written."""
        self.sweep(config, set(), (self._claims, self._tmp))

    def sweep(self, config: Config, children: set[int], chores=None) -> None:
        for chore in chores or (self._claims, self._stuck, self._tmp, self._expiry, self._alerts):
            try:
                chore(config, children)
            except Exception as exc:  # a chore's failure waits for the next sweep, the mail not
                self.log.error("sweep_failed", chore=chore.__name__.strip("_"), error=repr(exc))

    def _claims(self, config: Config, children: set[int]) -> None:
        moved = self.spool.recover(
            config.max_attempts, alive=lambda pid: pid in children or is_worker_alive(pid)
        )
        for queue_id, state in moved:
            self.log.warning("claim_recovered", qid=queue_id, to=state, child="not ours")

    def _stuck(self, config: Config, children: set[int]) -> None:
        """A child that has held a claim for ``MaxClaimTime`` is stuck (a loop, a call that
        never returns), and the other claims of its batch with it: killed, it is reaped as
        any dead worker is, its claims go back and the death counts against the message it
        held alone, which ends in corrupt/ if it always hangs."""
        if not config.max_claim_time:
            return
        since = time.time() - config.max_claim_time
        stuck: dict[int, list[str]] = {}
        for state in RETURNS:
            for entry in self.spool.entries(state):
                if entry.owner not in children:
                    continue
                try:
                    if entry.changed_at() < since:
                        stuck.setdefault(entry.owner, []).append(entry.id)
                except FileNotFoundError:
                    continue  # handed on meanwhile
        for pid, queue_ids in stuck.items():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.log.error(
                "worker_stuck",
                child=pid,
                qids=",".join(queue_ids),
                held_longer_than=f"{config.max_claim_time:g}s",
                note="killed; its claims go back",
            )

    def _tmp(self, config: Config, children: set[int]) -> None:
        for name in self.spool.clean_tmp(older_than=TMP_MAX_AGE):
            self.log.warning("tmp_removed", name=name, why=f"untouched for {TMP_MAX_AGE:.0f}s")

    def _expiry(self, config: Config, children: set[int]) -> None:
        for day in self.spool.expire_archive(config.archive_retention):
            self.log.info("archive_expired", day=day)
        for day in journal.expire(self.spool, config.stats_retention):
            self.log.info("journal_expired", day=day)

    def _alerts(self, config: Config, children: set[int]) -> None:
        self.corrupt.check(config)
        self.cluster.check(config)
        for threshold in self.traffic.check(config):
            self.log.warning(
                "threshold_passed", threshold=threshold, notified=config.administrator or None
            )


def is_worker_alive(pid: int) -> bool:
    """Is ``pid`` a running mailgate worker (say, one left by a supervisor that was killed)?"""
    try:
        return b"mailgate\x00worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
