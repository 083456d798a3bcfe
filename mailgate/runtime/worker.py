"""What the scanner and the sender share: claim from one queue, process, hand on, repeat.

A worker is one process with one job. It learns of new work from inotify (``Doorbell``) and,
should an event be missed, from a periodic re-listing of its queue. Signals:
SIGTERM/SIGINT finish the message (or stage) in hand and exit 0 (no claim is left behind);
SIGHUP re-reads the configuration, keeping the old one if the new one is invalid;
SIGUSR1 logs this worker's counters.

A scanner claims up to ``claims_at_once`` messages and runs them stage by stage (``steps``),
so that each stage's code and tables are still in the CPU's caches for the next message.

Invariant: every message this worker claims ends its ``steps`` handed on (released,
deferred, removed, corrupt) or, if they raised, returned to its queue with ``crashes``
raised exactly as if the worker had died, so a message that always fails ends in corrupt/;
claims given up between stages (a stop, a rest, a full disk) go back uncounted.
A storage error (disk full, quota, I/O error) is not the message's fault: the claim goes back
as it is and the worker rests, longer each time, until writes succeed again. A claim that
cannot be returned at once is kept and returned as soon as the spool allows, while the worker
lives; no storage error ends the process.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import os
import select
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from mailgate import config as configmod
from mailgate.runtime import log as logmod
from mailgate.spool import RETURNS, Entry, Spool

RESCAN_INTERVAL = 5.0
STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS})
REST_FIRST, REST_LONGEST = 0.5, 30.0
IN_MOVED_TO, IN_CREATE = 0x00000080, 0x00000100  # <sys/inotify.h>
_LIBC = ctypes.CDLL(None, use_errno=True)


class Doorbell:
    """Waits until an entry arrives in ``directory`` (IN_CREATE, IN_MOVED_TO) or a signal comes.

    inotify(7) through libc, watching arrivals only: a worker needs to know only that
    something arrived, not what left or where a move came from (watchdog's Observer reports
    both and pairs the halves of every move in a delayed queue, which at a few hundred
    messages a second cost a worker a third of its CPU). Signals reach ``wait`` through a
    self-pipe (``signal.set_wakeup_fd``): no thread, so no lock for a handler to deadlock on.
    """

    def __init__(self, directory: Path):
        self.fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        if _LIBC.inotify_add_watch(self.fd, os.fsencode(directory), IN_CREATE | IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"cannot watch {directory}")
        self.signal_r, signal_w = os.pipe()
        os.set_blocking(self.signal_r, False)
        os.set_blocking(signal_w, False)
        signal.set_wakeup_fd(signal_w)

    def wait(self, timeout: float) -> None:
        """Return after an arrival, a signal, or ``timeout`` seconds; consumes the events."""
        ready, _, _ = select.select([self.fd, self.signal_r], [], [], timeout)
        for fd in ready:
            with contextlib.suppress(BlockingIOError, InterruptedError):
                while os.read(fd, 65536):
                    pass


class Worker:
    role = "worker"
    source = "incoming"
    claims_at_once = 1
    alone_above = 256 * 1024  # bytes: a larger message is processed alone (bounded memory)

    def __init__(self, config: configmod.Config, snapshot: Path | None = None):
        self.config = config
        self.snapshot = snapshot
        self.spool = Spool(config.spool_path)
        self.log = logmod.get()
        self.stopping = False
        self.reload_wanted = False
        self.stats_wanted = False
        self.counters: collections.Counter[str] = collections.Counter()
        self.resting_until = 0.0
        self.rest = 0.0
        self.rest_reason = ""
        self.unreturned: list[tuple[Entry, bool]] = []
        self.read_ahead: dict[str, dict] = {}  # envelopes ``batchable`` read, for this pass

    # ------------------------------------------------------------ hooks

    def process(self, entry: Entry) -> None:
        """One claimed message, start to end. A worker overrides this, or ``steps``."""
        raise NotImplementedError

    def steps(self, entry: Entry) -> Iterator[None]:
        """``process`` in stages, one per ``next``: a worker that claims several messages at
        once (``claims_at_once``) runs each stage for all of them before the next stage, so
        a stage's code and tables stay in the CPU's caches from one message to the next.
        Invariant: before the last stage nothing happens that a return of the claim as it
        came would leave half done, so steps closed at a ``yield`` lose nothing."""
        self.process(entry)
        yield from ()

    def housekeeping(self) -> float:
        """Periodic work, run between passes; returns the seconds until it is due again."""
        return RESCAN_INTERVAL

    def reconfigure(self, config: configmod.Config) -> None:
        self.config = config

    def close(self) -> None:
        """Release resources when the worker stops."""

    def paused(self) -> bool:
        """True while this worker must not claim anything."""
        return False

    def batchable(self, entry: Entry) -> bool:
        """May this claim be processed beside others? Not one that was held by a worker that
        died, nor one whose processing failed (``Spool.return_claim``): alone, a death is
        its own and counts towards corrupt/. Nor one larger than ``alone_above``, so that a
        batch holds at most ``claims_at_once`` such sizes in memory (a large message gains
        nothing from warm caches: its own bytes are most of its cost)."""
        try:
            envelope = self.read_ahead[entry.name] = entry.read_envelope()
        except (OSError, ValueError):
            return False
        if envelope.get("crashes") or envelope.get("batch_crashes"):
            return False
        return envelope.get("size", 0) <= self.alone_above

    def envelope_of(self, entry: Entry) -> dict:
        """A claim's envelope, read once: ``batchable`` may have read it already."""
        return self.read_ahead.pop(entry.name, None) or entry.read_envelope()

    def wanted(self, queue_id: str) -> bool:
        """Should this pass claim ``queue_id``? (A scanner whose engine is down takes only
        the messages that have waited too long.)"""
        return True

    def update_counters(self) -> None:
        """Bring ``counters`` up to date before they are logged."""

    # ------------------------------------------------------------ loop

    def _signal(self, signum, _frame) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        elif signum == signal.SIGHUP:
            self.reload_wanted = True
        elif signum == signal.SIGUSR1:
            self.stats_wanted = True

    def run(self) -> int:
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        for sig in handled:
            signal.signal(sig, self._signal)
        doorbell = Doorbell(self.spool.state_dir(self.source))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)  # blocked since the supervisor
        self.log.info("worker_started", queue=self.source)
        next_housekeeping = 0.0
        try:
            while not self.stopping:
                self._between_passes()
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + self.housekeeping()
                worked = self.run_pass()
                if not worked and not self.stopping:
                    wake = next_housekeeping
                    if self.resting_until or self.unreturned:
                        wake = min(wake, max(self.resting_until, time.monotonic() + REST_FIRST))
                    doorbell.wait(max(0.0, wake - time.monotonic()))
        finally:
            self.close()
            self.update_counters()
            self.log.info("worker_stopped", **self.counters)
        return 0

    def _between_passes(self) -> None:
        if self.reload_wanted:
            self.reload_wanted = False
            self.reload()
        if self.stats_wanted:
            self.stats_wanted = False
            self.update_counters()
            self.log.info("statistics", **self.counters)

    def reload(self) -> None:
        logmod.reopen()
        config = configmod.reload(self.config, self.snapshot, self.log)
        if config is not None:
            self.reconfigure(config)
            self.log.info("config_reloaded")

    def run_pass(self) -> bool:
        """Claim and process every message listed now, oldest first, up to
        ``claims_at_once`` at a time. True if any was ours."""
        if self.unreturned:
            self.return_unreturned()
        self.read_ahead.clear()
        if time.monotonic() < self.resting_until:
            return False
        worked = False
        try:
            names = self.spool.names(self.source)
        except OSError as exc:
            self.storage_failed(None, exc)
            return False
        claimed: list[Entry] = []
        for queue_id in names:
            if self.stopping or self.paused() or time.monotonic() < self.resting_until:
                break
            if not self.wanted(queue_id):
                continue
            entry = self.spool.claim(self.source, queue_id)
            if entry is None:
                continue
            worked = True
            if self.claims_at_once > 1 and not self.batchable(entry):
                if claimed and not self._process_claims(claimed):
                    self._abandon([(entry, None, 0.0)])
                    return worked
                claimed = [entry]
            else:
                claimed.append(entry)
                if len(claimed) < self.claims_at_once:
                    continue
            go_on = self._process_claims(claimed)
            claimed = []
            if self.reload_wanted or self.stats_wanted:
                self._between_passes()
            if not go_on:
                return worked
        if claimed:
            self._process_claims(claimed)
        return worked

    def _process_claims(self, claimed: list[Entry]) -> bool:
        """Take every claim through its ``steps``, stage by stage. A claim that fails is
        given back on its own, one no longer ``wanted`` goes back uncounted; when the spool
        refuses a write, a rest begins or a stop is asked for, every claim not yet through
        is closed and goes back uncounted. False when the pass must end (storage error)."""
        resting = self.resting_until
        running = [(entry, self.steps(entry), time.monotonic()) for entry in claimed]
        while running:
            still = []
            for index, (entry, steps, started) in enumerate(running):
                if not self.wanted(entry.id):  # e.g. clamd went away during the batch
                    self._abandon([(entry, steps, started)])
                    continue
                try:
                    next(steps)
                except StopIteration:
                    self._processed(entry, started, resting)
                except OSError as exc:
                    if exc.errno not in STORAGE_ERRORS:
                        self.crashed(entry, exc)
                        continue
                    self.storage_failed(entry, exc)
                    self._abandon(still + running[index + 1 :])
                    return False
                except Exception as exc:
                    self.crashed(entry, exc)
                else:
                    still.append((entry, steps, started))
                if self.stopping or self.resting_until > resting:  # a new rest began
                    self._abandon(still + running[index + 1 :])
                    return True
            running = still
        return True

    def _processed(self, entry: Entry, started: float, resting: float) -> None:
        if self.rest and self.resting_until == resting:  # no new rest taken
            self.log.info("resumed", after=self.rest_reason)
            self.rest = self.resting_until = 0.0
        self.counters["processed"] += 1
        self.log.debug("processed", qid=entry.id, ms=round((time.monotonic() - started) * 1000, 1))

    def _abandon(self, running: list) -> None:
        """Close the steps of claims not yet through and return the claims uncounted."""
        for entry, steps, _started in running:
            if steps is not None:
                steps.close()
            self.unreturned.append((entry, False))
        self.return_unreturned()

    def crashed(self, entry: Entry, exc: Exception) -> None:
        self.log.exception("processing_failed", qid=entry.id, error=repr(exc))
        self.counters["failed"] += 1
        self.give_back(entry)

    def take_rest(self, why: str) -> float:
        """Claim nothing for a while, twice as long as last time (up to REST_LONGEST), until
        a message goes through again."""
        self.rest = min(REST_LONGEST, self.rest * 2 or REST_FIRST)
        self.resting_until = time.monotonic() + self.rest
        self.rest_reason = why
        return self.rest

    def storage_failed(self, entry: Entry | None, exc: OSError) -> None:
        """The spool refused a write: return the claim uncounted, rest, try again later."""
        self.counters["storage_errors"] += 1
        self.log.error(
            "storage_failed",
            qid=entry.id if entry else None,
            error=repr(exc),
            rest=self.take_rest("storage error"),
            note="retrying; the message stays queued",
        )
        if entry is not None:
            self.unreturned.append((entry, False))
            self.return_unreturned()

    def give_back(self, entry: Entry) -> None:
        """Return a claim after an unexpected error, counted like a crash."""
        self.unreturned.append((entry, True))
        self.return_unreturned()

    def return_unreturned(self) -> None:
        """Return the claims kept after a failed hand-back; those that fail again stay kept."""
        kept = []
        for entry, counted in self.unreturned:
            try:
                if counted:
                    state = self.spool.return_claim(
                        entry, RETURNS[entry.state], self.config.max_attempts
                    )
                else:
                    state = self.spool.unclaim(entry).state
            except FileNotFoundError:
                continue
            except OSError as exc:
                kept.append((entry, counted))
                self.log.error("give_back_failed", qid=entry.id, error=repr(exc), kept=True)
                continue
            self.log.warning("returned", qid=entry.id, to=state, crash=counted)
        self.unreturned = kept
