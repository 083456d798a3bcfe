"""The supervisor's periodic chores, apart from watching its own children.

Every sweep: claims whose owner is gone but was never our child to reap (a worker of an
earlier supervisor, still finishing its message when this one started, then killed) go back
to their queue; archived days and journal days past their retention go; the traffic
thresholds are checked and what arrived in corrupt/ is reported (``alerts``). Each chore
logs what it did.
"""

from __future__ import annotations

from pathlib import Path

from mailgate.config import Config
from mailgate.spool import Spool, journal
from mailgate.supervise import alerts


class Housekeeping:
    def __init__(self, spool: Spool, log):
        self.spool = spool
        self.log = log
        self.traffic = alerts.TrafficWatch(spool)
        self.corrupt = alerts.CorruptWatch(spool, log)

    def sweep(self, config: Config, children: set[int]) -> None:
        moved = self.spool.recover(
            config.max_attempts, alive=lambda pid: pid in children or is_worker_alive(pid)
        )
        for queue_id, state in moved:
            self.log.warning("claim_recovered", qid=queue_id, to=state, child="not ours")
        for day in self.spool.expire_archive(config.archive_retention):
            self.log.info("archive_expired", day=day)
        for day in journal.expire(self.spool, config.stats_retention):
            self.log.info("journal_expired", day=day)
        self.corrupt.check(config)
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
