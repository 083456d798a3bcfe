"""Crash test: SIGKILL receiver, scanner and sender processes at random moments under load.

Every message that got a 250 must reach the sink (checked by Message-ID); duplicates are
allowed by the at-least-once contract and are counted and reported, not hidden.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import smtplib
import threading
import time

import pytest
from support import make_message, wait_for

from mailgate.supervise.housekeeping import is_worker_alive

CLIENTS = 5
MESSAGES = 550  # at least this many are sent, and the load goes on until the killing ends
KILLS_PER_ROLE = 4


@pytest.mark.slow
def test_no_acknowledged_message_is_lost_when_workers_are_killed(make_gateway, sink, capsys):
    gw = make_gateway(
        "[smtpgw.limits]\nScanners=2\nSenders=2\nMaxAttempts=50\nRestartDelay=0.2s\n"
        "MaxRestartDelay=1s\n[smtpgw.retry]\nRetryIntervals=1s"
    ).start()
    acked: set[str] = set()
    unacked: set[str] = set()
    lock = threading.Lock()
    done = threading.Event()
    next_number = iter(range(10**9))

    def client(index: int) -> None:
        rng = random.Random(index)
        while True:
            with lock:
                if len(acked) >= MESSAGES and done.is_set():
                    return
                msgid = f"crash-{next(next_number)}@test"
            message = make_message(msgid, size=rng.randint(200, 6000))
            try:
                with smtplib.SMTP("127.0.0.1", gw.port, timeout=20) as smtp:
                    code, _ = smtp.ehlo("loadgen")
                    smtp.mail("load@example.org")
                    smtp.rcpt(f"user{index}@company.com")
                    code, _ = smtp.data(message)
            except (OSError, smtplib.SMTPException):
                code = None
            with lock:
                (acked if code == 250 else unacked).add(f"<{msgid}>")
            if code is None:
                time.sleep(0.05)  # the receiver is being restarted: give it a moment

    kills: collections.Counter[str] = collections.Counter()

    def killer() -> None:
        rng = random.Random(42)
        roles = ["receiver", "scanner", "sender"] * KILLS_PER_ROLE
        rng.shuffle(roles)
        while roles:
            time.sleep(rng.uniform(0.2, 0.8))
            pids = [p for p in gw.pids(roles[-1]) if is_worker_alive(p)]
            if pids:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills[roles.pop()] += 1
        done.set()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    chaos = threading.Thread(target=killer)
    chaos.start()
    for t in threads:
        t.start()
    chaos.join(timeout=120)
    done.set()
    for t in threads:
        t.join(timeout=300)

    assert len(acked) >= MESSAGES
    assert all(kills[r] == KILLS_PER_ROLE for r in ("receiver", "scanner", "sender")), kills

    def all_delivered():
        return acked <= set(sink.ids())

    try:
        wait_for(all_delivered, 180, "every acknowledged message at the sink")
    finally:
        delivered = collections.Counter(sink.ids())
        missing = acked - set(delivered)
        duplicates = {mid: n for mid, n in delivered.items() if n > 1}
        with capsys.disabled():
            print(
                f"\ncrash test: {len(acked)} acknowledged, {len(unacked)} not acknowledged, "
                f"kills {dict(kills)}, delivered {len(delivered)} distinct "
                f"({sum(delivered.values())} total), duplicates {len(duplicates)}, "
                f"missing {len(missing)}"
            )
    assert not missing
    assert set(delivered) <= acked | unacked  # nothing invented
    wait_for(lambda: not gw.queue(), 60, "the queue to drain")
    assert gw.entries("corrupt") == []
