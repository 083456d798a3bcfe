"""Supervisor (``mailgate run``): starts, watches and restarts the workers; handles signals.

One receiver, ``Scanners`` scanners, ``Senders`` senders, the ``admin`` process (console,
``/metrics``) and the ``indexer`` (the search index), each ``mailgate worker ROLE``; with
ManageClamd a clamd on the spool's database, started first and waited for (PING), stopped
last, restarted like a worker when it dies.
The supervisor touches a message only to recover the claims of a worker it has reaped.

At start it binds the ListenOn sockets (and, started as root, then becomes User: see
``privileges``), keeps them, and passes them to every receiver it starts; it folds the last
run's counters into the history (``stats``); every ``SweepInterval`` it runs the
housekeeping (``housekeeping``: claims of strangers, expiry, traffic thresholds).

Invariants:
- One supervisor per spool (a file lock in ``run/``); workers die with their supervisor, and
  a new supervisor leaves alone the claims of workers of a dead one that are still finishing.
- Workers read the configuration from ``run/mailgate.conf``, a snapshot the supervisor writes
  only after the configuration validated, so a bad edit never reaches a restarting worker.
- Workers start with the supervisor's signals blocked (the mask survives exec) and unblock
  them once their handlers are installed, so an early SIGHUP or SIGUSR1 cannot kill them.
- A worker that dies is restarted after a back-off that doubles with each quick death
  (RestartDelay up to MaxRestartDelay) and resets once it has run for a minute.
- ``run/workers.json`` lists the live workers (role, slot, pid), for administrators and tests.

Signals: SIGHUP re-reads the configuration (kept when invalid), SIGTERM/SIGINT stop gracefully
and exit 0, SIGUSR1 logs the queue depths and every counter and asks every worker to log its
own.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from mailgate import config as configmod
from mailgate.runtime import log as logmod
from mailgate.runtime import privileges, stats
from mailgate.spool import Spool, write_file_replacing
from mailgate.spool.files import RootSafeLock, UnsafePath
from mailgate.supervise import control, engine, ready
from mailgate.supervise.housekeeping import Housekeeping
from mailgate.supervise.slot import Slot

SIGNALS = (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
STOP_TIMEOUT = 40.0
STABLE_AFTER = 60.0
EXIT_ALREADY_RUNNING = 5
EXIT_CANNOT_START = 8
WORKER_ROLES = ("receiver", "scanner", "sender", "admin", "indexer")


class Supervisor:
    def __init__(self, config: configmod.Config):
        self.config = config
        self.spool = Spool(config.spool_path)
        self.log = logmod.get()
        self.slots: list[Slot] = []
        self.stopping = False
        self.housekeeping = Housekeeping(self.spool, self.log)
        self.listeners: list = []
        self.clamd = engine.ManagedClamd(self.spool)

    # ------------------------------------------------------------ processes

    def _snapshot(self, config: configmod.Config) -> None:
        write_file_replacing(self.spool.run_path("mailgate.conf.new"), config.text.encode("utf-8"))
        os.replace(self.spool.run_path("mailgate.conf.new"), self.spool.run_path("mailgate.conf"))

    def _first_snapshot(self) -> bool:
        """Write the snapshot the workers start from, waiting out a full disk; False if a
        stop signal came first."""
        delay = 0.5
        while True:
            try:
                self._snapshot(self.config)
                return True
            except OSError as exc:
                self.log.error("snapshot_failed", error=repr(exc), retry_in=delay)
            info = signal.sigtimedwait(SIGNALS, delay)
            if info and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                return False
            delay = min(delay * 2, 30.0)

    def _start_clamd(self, slot: Slot) -> None:
        slot.process = self.clamd.start(self.config, self.log)
        slot.started = time.monotonic()
        self.log.info("worker_spawned", worker=slot.name, child=slot.process.pid)

    def _managed_clamd(self) -> bool:
        return self.config.manage_clamd and self.config.av_enabled

    def _start(self, slot: Slot) -> None:
        if slot.role == "clamd":
            self._start_clamd(slot)
            return
        command = [
            sys.executable,
            "-m",
            "mailgate",
            "worker",
            slot.role,
            "-c",
            str(self.config.path),
            "--snapshot",
            str(self.spool.run_path("mailgate.conf")),
        ]
        env = {
            **os.environ,
            privileges.SUPERVISOR_ENV: str(os.getpid()),
            stats.ENV: str(self.spool.stats_path("live")),
        }
        fds = ()
        if slot.role == "receiver":
            fds = tuple(sock.fileno() for sock in self.listeners)
            env[privileges.LISTEN_FDS_ENV] = ",".join(map(str, fds))
        slot.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, env=env, pass_fds=fds)
        slot.started = time.monotonic()
        self.log.info("worker_spawned", worker=slot.name, child=slot.process.pid)

    def _wanted(self) -> dict[str, int]:
        return {
            "clamd": 1 if self._managed_clamd() else 0,
            "receiver": 1,
            "scanner": self.config.scanners,
            "sender": self.config.senders,
            "admin": 1 if self.config.admin_listen or self.config.metrics_listen else 0,
            "indexer": 1 if self.config.index_enabled else 0,
        }

    def _fit_slots(self) -> None:
        """Start slots the configuration asks for; retire (SIGTERM) those it no longer does."""
        for role, count in self._wanted().items():
            have = [s for s in self.slots if s.role == role and not s.retired]
            for slot in have[count:]:
                slot.retired = True
                if slot.process is not None:
                    slot.process.send_signal(signal.SIGTERM)
            for index in range(len(have), count):
                slot = Slot(role, index)
                self.slots.append(slot)
                self._start(slot)
        self._write_table()

    def _write_table(self) -> None:
        table = {
            "supervisor": os.getpid(),
            "workers": [
                {"role": s.role, "slot": s.index, "pid": s.process.pid, "restarts": s.restarts}
                for s in self.slots
                if s.process is not None and s.process.returncode is None
            ],
        }
        path = self.spool.run_path("workers.json")
        try:
            write_file_replacing(path.with_suffix(".new"), json.dumps(table).encode())
            os.replace(path.with_suffix(".new"), path)
        except OSError as exc:
            self.log.error("worker_table_failed", error=repr(exc))

    def _reap(self) -> None:
        now = time.monotonic()
        changed = False
        for slot in list(self.slots):
            proc = slot.process
            if proc is None or proc.poll() is None:
                continue
            changed = True
            slot.process = None
            try:
                moved = self.spool.recover(self.config.max_attempts, proc.pid)
            except OSError as exc:
                moved = []
                self.log.error(
                    "recover_failed", child=proc.pid, error=repr(exc), note="the sweep retries"
                )
            for queue_id, state in moved:
                self.log.warning("claim_recovered", qid=queue_id, to=state, child=proc.pid)
            try:
                stats.retire(self.spool, proc.pid)
            except OSError as exc:
                self.log.error("statistics_not_retired", child=proc.pid, error=repr(exc))
            expected = self.stopping or slot.retired
            (self.log.info if expected else self.log.error)(
                "worker_exited", worker=slot.name, child=proc.pid, code=proc.returncode
            )
            if expected:
                if slot.retired:
                    self.slots.remove(slot)
                continue
            lived = now - slot.started
            slot.backoff = (
                self.config.restart_delay
                if lived >= STABLE_AFTER or not slot.backoff
                else min(slot.backoff * 2, self.config.max_restart_delay)
            )
            slot.restart_at = now + (0.0 if lived >= STABLE_AFTER else slot.backoff)
            slot.restarts += 1
        for slot in self.slots:
            if slot.process is None and not self.stopping and slot.restart_at <= now:
                self._start(slot)
                changed = True
        if changed:
            self._write_table()

    def _signal_all(self, signum: int, roles: tuple[str, ...] = WORKER_ROLES):
        for slot in self.slots:
            if slot.role in roles and slot.process is not None and slot.process.returncode is None:
                slot.process.send_signal(signum)

    # ------------------------------------------------------------ signals

    def reload(self) -> None:
        logmod.reopen()
        config = configmod.reload(self.config, None, self.log)
        if config is None:
            return
        frozen = configmod.restart_needed(self.config, config)
        if frozen:
            self._keep_config(*(f"{key} changes need a restart" for key in frozen))
            return
        network_changed = (config.listen, config.tls_certificate, config.tls_key) != (
            self.config.listen,
            self.config.tls_certificate,
            self.config.tls_key,
        )
        console_moved = (config.admin_listen, config.metrics_listen) != (
            self.config.admin_listen,
            self.config.metrics_listen,
        )
        if network_changed and config.listen != self.config.listen:
            try:
                listeners = privileges.bind(config.listen)
            except OSError as exc:
                self._keep_config(f"ListenOn: {exc.strerror}")
                return
            for sock in self.listeners:
                sock.close()
            self.listeners = listeners
        clamd_before = self.clamd.config_text(self.config) if self._managed_clamd() else None
        try:
            self._snapshot(config)
        except OSError as exc:
            self._keep_config(f"cannot write the workers' snapshot: {exc.strerror}")
            return
        self.config = config
        self._signal_all(signal.SIGHUP)
        if self._managed_clamd():
            restart = (
                clamd_before is not None and self.clamd.config_text(self.config) != clamd_before
            )
            if restart:
                self.clamd.write_config(self.config)
            self._signal_all(signal.SIGTERM if restart else signal.SIGUSR2, ("clamd",))
        for role, moved in (("receiver", network_changed), ("admin", console_moved)):
            for slot in self.slots:
                if moved and slot.role == role and slot.process is not None:
                    slot.process.send_signal(signal.SIGTERM)
                    slot.backoff, slot.started = 0.0, time.monotonic() - STABLE_AFTER
        self._fit_slots()
        self.log.info("config_reloaded", receiver_restarted=network_changed)

    def _keep_config(self, *problems: str) -> None:
        note = "keeping the running configuration"
        self.log.error("config_reload_failed", problems=list(problems), note=note)

    def statistics(self) -> None:
        """SIGUSR1: log every counter (totals and since start), then ask workers for theirs."""
        snapshot = stats.Snapshot(self.spool).as_json()
        restarts = {s.name: s.restarts for s in self.slots}
        self.log.info(
            "statistics",
            queues=snapshot["queues"],
            restarts=restarts,
            totals=snapshot["totals"],
            since_start=snapshot["since_start"],
        )
        self._signal_all(signal.SIGUSR1)

    def stop(self) -> int:
        self.stopping = True
        self.log.info("stopping")
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        engines_last = sorted(self.slots, key=lambda s: s.role == "clamd")
        for slot in engines_last:
            if slot.process is None:
                continue
            if slot.role == "clamd":
                slot.process.send_signal(signal.SIGTERM)
            try:
                slot.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log.error("worker_killed", worker=slot.name, child=slot.process.pid)
                slot.process.kill()
                slot.process.wait()
        self._reap()
        self.clamd.close()
        self.spool.run_path("workers.json").unlink(missing_ok=True)
        self.log.info("stopped")
        return 0

    # ------------------------------------------------------------ main loop

    def run(self) -> int:
        os.umask(0o077)  # spool, quarantine, caches, logs of clamd: readable by us alone
        self.spool.create()
        lock = RootSafeLock(self.spool.run_dir, "supervisor.lock")
        try:
            if not lock.acquire():
                self.log.error("already_running", spool=str(self.spool.root))
                return EXIT_ALREADY_RUNNING
        except UnsafePath as exc:
            self.log.error("cannot_start", error=str(exc))
            print(f"mailgate: refusing to start: {exc}", file=sys.stderr)
            return EXIT_CANNOT_START
        try:
            try:
                self._take_privileged_resources()
            except (OSError, privileges.PrivilegeError) as exc:
                self.log.error("cannot_start", error=str(exc))
                print(f"mailgate: {exc}", file=sys.stderr)
                return EXIT_CANNOT_START
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
            self.housekeeping.recover(self.config)
            if not self._first_snapshot():
                return 0
            try:
                stats.fold(self.spool)
            except OSError as exc:
                self.log.error("statistics_not_folded", error=repr(exc))
            self.log.info(
                "supervisor_started",
                spool=str(self.spool.root),
                uid=os.getuid(),
                listen=[f"{h}:{p}" for h, p in self.config.listen],
                paused=self.spool.paused_flag.exists(),
            )
            if self._managed_clamd():
                self._start_engine()
            self._fit_slots()
            with contextlib.suppress(OSError):  # stdout on a full disk
                print(ready.line(self.config, self._managed_clamd()), flush=True)
            next_sweep = time.monotonic() + self.config.sweep_interval
            while True:
                pending = [s.restart_at for s in self.slots if s.process is None]
                timeout = max(0.05, min([1.0, *(t - time.monotonic() for t in pending)]))
                info = signal.sigtimedwait(SIGNALS, timeout)
                signum = info.si_signo if info else None
                if signum in (signal.SIGTERM, signal.SIGINT):
                    return self.stop()
                try:
                    if self._tend(signum, next_sweep):
                        return self.stop()
                except OSError as exc:  # a full or failing disk is waited out, never fatal
                    self.log.error("supervisor_storage_failed", error=repr(exc))
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.config.sweep_interval
        finally:
            lock.release()

    def _tend(self, signum: int | None, next_sweep: float) -> bool:
        """One turn of the main loop after a signal or a timeout; True to stop."""
        if signum == signal.SIGHUP:
            self.reload()
        elif signum == signal.SIGUSR1:
            self.statistics()
        self._reap()
        for request in self.spool.control_requests():
            if control.handle(self.spool, request, self.reload, self.log):
                return True
        if time.monotonic() >= next_sweep:
            children = {s.process.pid for s in self.slots if s.process is not None}
            self.housekeeping.sweep(self.config, children)
        return False

    def _take_privileged_resources(self) -> None:
        """Bind ListenOn; then, if root and User is set, hand the spool over and become User."""
        self.listeners = privileges.bind(self.config.listen)
        acct = privileges.account(self.config.user)
        if acct is None:
            return
        privileges.hand_over(self.spool.root, acct)
        privileges.probe(acct, self.spool.root, self.config.path)
        privileges.drop(acct)
        logmod.reopen()  # the log file is opened only now, as User (see cli.main)
        self.log.info("privileges_dropped", user=acct.name, uid=acct.uid)

    def _start_engine(self) -> None:
        """Start clamd and wait for its PING before any scanner starts."""
        slot = Slot("clamd", 0)
        self.slots.append(slot)
        self._start(slot)
        self.clamd.wait_ready(self.config, slot.process, self.log)


def run(config: configmod.Config) -> int:
    return Supervisor(config).run()
