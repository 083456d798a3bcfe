"""Statistics, metrics, reports and traffic alerts, end to end through ``mailgate run``."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import urllib.error
import urllib.request

import pytest
from mimebuild import EICAR, TEXT, multipart, part
from support import free_port, mailgate, make_message, wait_for

from mailgate import config as configmod
from mailgate.config import passwords
from mailgate.spool import Spool
from mailgate.supervise import alerts

ADMIN = "[smtpgw.notify]\nAdministrator=admin@company.com\n"


def stats(gw) -> dict:
    return json.loads(gw.cli("stats", "--json", check=True).stdout)


def refused_relay(gw) -> None:
    """One recipient refused as relaying, from an untrusted address (127.0.0.2)."""
    with smtplib.SMTP("127.0.0.1", gw.port, source_address=("127.0.0.2", 0)) as smtp:
        smtp.ehlo("client.example.org")
        smtp.mail("someone@example.org")
        code, _ = smtp.rcpt("victim@elsewhere.net")
        assert code == 550


def test_counters_are_summed_over_processes_and_kept_across_a_restart(make_gateway, sink):
    metrics_port = free_port()
    gw = make_gateway(
        f"[smtpgw.admin]\nListen=\nMetricsListen=127.0.0.1:{metrics_port}\n" + ADMIN
    ).start()
    for i in range(3):
        gw.send(make_message(f"clean{i}@test"))
    virus = gw.send(multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="virus@test"))
    refused_relay(gw)
    wait_for(lambda: len([r for r in sink.received if r.mail_from]) == 4, what="4 deliveries")

    def settled(doc):
        t = doc["totals"]
        return t["delivered"] >= 4 and t["scanned"] >= 4 and t["received_messages"] == 4

    doc = wait_for(lambda: (lambda d: d if settled(d) else None)(stats(gw)), what="counters")
    totals = doc["totals"]
    assert totals["rejected"] == {"relay": 1}
    assert totals["virus_status"]["infected"] == 1
    assert totals["virus_status"]["clean"] == 3
    assert totals["quarantined"] == {"infected": 1}
    assert totals["actions"]["cure"] == 1 and totals["actions"]["quarantine"] == 1
    assert totals["received_bytes"] > 4 * 100
    assert totals["scan_seconds"]["count"] == 4
    assert totals["latency_seconds"]["count"] >= 4
    assert totals["notifications"] == {"admin": 1, "recipient": 1}
    assert doc["since_start"] == totals
    assert set(doc["queues"]) >= {"incoming", "ready", "deferred", "hold", "corrupt"}

    # the Prometheus endpoint shows the same numbers, and nothing but /metrics lives there
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/plain")
    assert "mailgate_received_messages_total 4.0" in text
    assert 'mailgate_rejected_total{reason="relay"} 1.0' in text
    assert 'mailgate_virus_status_total{status="infected"} 1.0' in text
    assert 'mailgate_queue_messages{state="deferred"} 0.0' in text
    assert "mailgate_scan_seconds_count 4.0" in text
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/", timeout=10)
    assert refused.value.code == 404
    refused.value.close()

    # SIGUSR1 logs every counter in one event
    gw.signal(signal.SIGUSR1)
    line = wait_for(
        lambda: [x for x in gw.log().splitlines() if "event='statistics'" in x and "totals=" in x],
        what="the statistics event",
    )[0]
    assert "'received_messages': 4" in line

    # a dead worker's counts outlive its files, which the supervisor retires
    scanner = gw.pids("scanner")[0]
    os.kill(scanner, signal.SIGKILL)
    live = gw.spool / "stats" / "live"
    wait_for(lambda: not list(live.glob(f"*_{scanner}.db")), what="the dead scanner's files gone")
    wait_for(lambda: gw.pids("scanner") not in ([], [scanner]), what="a new scanner")
    after = stats(gw)
    assert (after["totals"], after["since_start"]) == (totals, totals)

    assert gw.stop() == 0
    gw.start()
    gw.send(make_message("after-restart@test"))
    wait_for(lambda: stats(gw)["totals"]["delivered"] >= 5, what="the fifth delivery")
    doc = stats(gw)
    assert doc["totals"]["received_messages"] == 5
    assert doc["since_start"]["received_messages"] == 1
    assert doc["totals"]["rejected"] == {"relay": 1}
    assert doc["since_start"]["rejected"] == {}
    text = gw.cli("stats", check=True).stdout
    assert "received_messages" in text and "since start" in text
    assert virus in (gw.spool / "log" / "mailgate.log").read_text()


def test_report_counts_hours_viruses_and_spam_senders_and_is_mailed(make_gateway, sink):
    gw = make_gateway(ADMIN + "[smtpgw.spamtest]\nEnabled=yes\n").start()
    gw.send(make_message("one@test"))
    gw.send(multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="virus@test"))
    gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    spam = make_message("spam@test", sender="spammer@spam.example").replace(
        b"Hello from the tests.", gtube.encode()
    )
    gw.send(spam, sender="spammer@spam.example", to=["user@company.com", "boss@company.com"])
    wait_for(lambda: len(list((gw.spool / "quarantine").glob("*/*"))) == 2, what="two quarantined")
    wait_for(lambda: stats(gw)["totals"]["scanned"] >= 3, what="three scanned")

    doc = json.loads(gw.cli("report", "--since", "1d", "--format", "json", check=True).stdout)
    assert doc["received"]["messages"] == 3
    assert doc["scanned"] == 3
    assert doc["virus"]["top"] == [{"name": "Mailgate.Test.EICAR", "count": 1}]
    assert doc["spam"]["by_status"]["spam"] == 1
    # (the other test messages may score as probable spam: they are short and plain)
    assert {"address": "spammer@spam.example", "count": 1} in doc["spam"]["top_senders"]
    assert {r["address"] for r in doc["spam"]["top_recipients"]} >= {
        "user@company.com",
        "boss@company.com",
    }
    assert sum(h["received"] for h in doc["hourly"]) == 3
    assert sum(h["bytes"] for h in doc["hourly"]) == doc["received"]["bytes"]
    assert len(doc["hourly"]) in (24, 25)

    text = gw.cli("report", "--since", "1d", check=True).stdout
    assert "Mailgate.Test.EICAR" in text and "spammer@spam.example" in text
    html = gw.cli("report", "--since", "1d", "--format", "html", check=True).stdout
    assert html.startswith("<!DOCTYPE html>") and "spammer@spam.example" in html
    assert gw.cli("report", "--since", "yesterday").returncode == 2

    before = len(sink.received)
    mailed = gw.cli("report", "--since", "1d", "--mail", check=True)
    assert "mailed to admin@company.com" in mailed.stderr
    got = wait_for(
        lambda: [r for r in sink.received[before:] if "mailgate report" in r.message["Subject"]],
        what="the mailed report",
    )[0]
    assert got.rcpt_tos == ["admin@company.com"] and got.mail_from == ""
    assert b"Mailgate.Test.EICAR" in got.content


def test_report_cannot_be_mailed_without_an_administrator(gateway):
    result = gateway.cli("report", "--mail")
    assert result.returncode == 1 and "Administrator" in result.stderr


def test_traffic_thresholds_notify_the_administrator_once_a_day(make_gateway, sink):
    gw = make_gateway(ADMIN + "[smtpgw.admin]\nListen=\nMetricsListen=\nDailyMessageLimit=2\n")
    gw.start()
    for i in range(3):
        gw.send(make_message(f"t{i}@test"))
    notice = wait_for(
        lambda: [r for r in sink.received if "traffic threshold" in r.message["Subject"]],
        timeout=60,
        what="the threshold notice",
    )[0]
    assert notice.rcpt_tos == ["admin@company.com"]
    assert b"DailyMessageLimit" in notice.content and b"limit:     2" in notice.content
    # the supervisor logs the alert after it has queued the notice, which may arrive first
    wait_for(lambda: "threshold_passed" in gw.log(), what="the threshold_passed log line")

    # in-process: the next check, with more traffic, does not notify again the same day
    config = configmod.load(gw.conf)
    watch = alerts.TrafficWatch(Spool(config.spool_path))
    assert watch.check(config) == []  # the flag of today is there already


def test_protected_addresses_are_counted_over_the_window(make_gateway, sink, tmp_path):
    # this test checks the thresholds itself: no sweep of the supervisor's takes the alert first
    gw = make_gateway(
        ADMIN + "[smtpgw.admin]\nListen=\nProtectedAddressLimit=2\n"
        "[smtpgw.process]\nSweepInterval=1h\n"
    )
    config = configmod.load(gw.conf)
    spool = Spool(config.spool_path)
    spool.create()
    watch = alerts.TrafficWatch(spool)
    gw.start()
    gw.send(make_message("a@test"), to=["a@company.com", "b@company.com", "x@example.org"])
    wait_for(lambda: stats(gw)["totals"]["received_messages"] == 1, what="one received")
    assert watch.check(config) == []  # two protected addresses: not more than the limit
    gw.send(make_message("b@test"), to=["A@company.com", "c@sub.company.com"])
    wait_for(lambda: stats(gw)["totals"]["received_messages"] == 2, what="two received")
    assert watch.check(config) == ["ProtectedAddressLimit"]


def test_passwd_writes_the_hash_to_a_private_file_not_the_configuration(tmp_path):
    conf = tmp_path / "mailgate.conf"
    original = "; my gateway\n[smtpgw.path]\nSpoolDir=spool ; here\n"
    conf.write_text(original)
    config = configmod.load(conf)
    short = _passwd(conf, "short")
    assert short.returncode == 2 and not config.password_path.exists()
    done = _passwd(conf, "a long enough secret")
    assert done.returncode == 0, done.stderr
    assert conf.read_text() == original  # the configuration (often world-readable) untouched
    assert config.password_path == tmp_path / "spool" / "run" / "console.password"
    assert config.password_path.stat().st_mode & 0o777 == 0o600
    stored = passwords.stored(config)
    assert passwords.verify("a long enough secret", stored)
    assert not passwords.verify("a long enough secreT", stored)
    assert _passwd(conf, "another good secret").returncode == 0
    assert passwords.verify("another good secret", passwords.stored(config))
    assert sorted(p.name for p in config.password_path.parent.iterdir()) == ["console.password"]

    conf.write_text(original + "[smtpgw.admin]\nPasswordHash=plaintext\n")
    bad = mailgate("check-config", "-c", conf)
    assert bad.returncode == 1 and f"{conf}:5: PasswordHash" in bad.stderr


def _passwd(conf, password: str):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "mailgate", "passwd", "--stdin", "-c", str(conf)],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
