"""Races between workers: as many scanners and senders as the configuration allows, over the
same queues, with the shortest retry interval, lose nothing, duplicate nothing, kill nobody."""

from __future__ import annotations

import collections
import threading

from support import make_message, wait_for

from mailgate.config import schema

MESSAGES = 1000


def test_deferred_mail_is_delivered_once_by_the_most_workers_allowed(make_gateway, sink):
    scanners = schema.option("smtpgw.limits", "Scanners").max
    senders = schema.option("smtpgw.limits", "Senders").max
    gw = make_gateway(
        f"[smtpgw.limits]\nScanners={scanners}\nSenders={senders}\n"
        "[smtpgw.retry]\nRetryIntervals=1s\n"
        "[smtpgw.antivirus]\nEnabled=no\n[smtpgw.attachments]\nEnabled=no\n"
    ).start(wait=False)
    gw.wait_ready(timeout=120)
    wait_for(lambda: len(gw.pids("sender")) == senders, 120, "every sender")
    for i in range(MESSAGES):  # every first attempt is deferred, the second delivers
        sink.rcpt_replies[f"r{i}@company.com"] = ["451 4.3.0 try again later"]

    def client(first: int) -> None:
        for i in range(first, MESSAGES, 4):
            gw.send(make_message(f"race{i}@test", to=f"r{i}@company.com"), to=f"r{i}@company.com")

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    sink.wait_count(MESSAGES, timeout=300)
    wait_for(lambda: not gw.queue(), 60, "an empty queue")
    counts = collections.Counter(sink.ids())
    assert sorted(counts) == sorted(f"<race{i}@test>" for i in range(MESSAGES))
    assert [mid for mid, n in counts.items() if n > 1] == []
    log = gw.log()
    assert "event='worker_exited'" not in log
    assert log.count("event='deferred'") >= MESSAGES  # each went through deferred/
    assert gw.entries("corrupt") == []
