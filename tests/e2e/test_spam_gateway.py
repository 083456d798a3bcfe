"""Spamtest in a running gateway: GTUBE end to end, groups that split a message, a list file
re-read on SIGHUP, our own Received header."""

from __future__ import annotations

import json
import re
import signal
import smtplib
import subprocess

from support import make_message, wait_for

from mailgate.scan.spam import bayes, checks

GTUBE = checks.GTUBE


SPAM_ON = "[smtpgw.spamtest]\nEnabled=yes\n"


def test_gtube_end_to_end_is_quarantined_and_outside_headers_are_not_trusted(make_gateway, sink):
    gw = make_gateway(SPAM_ON).start()
    gtube = make_message("gtube@test").replace(b"Hello", GTUBE.encode())
    qid = gw.send(gtube)
    wait_for(lambda: gw.entries("quarantine/spam") == [qid], what="the quarantined copy")
    forged = b"X-Spam-Status: No, score=-100\r\nX-Mailgate-Virus-Status: clean\r\n" + (
        make_message("fine@test")
    )
    gw.send(forged)
    got = sink.wait_count(1)[0]
    assert got.message_id == "<fine@test>"
    msg = got.message
    assert msg["X-Untrusted-Spam-Status"] == "No, score=-100"
    assert msg.get_all("X-Spam-Status")[0].startswith("No, score=")
    assert len(msg.get_all("X-Spam-Status")) == 1
    assert "X-Spam-Level" in msg
    assert msg["X-Mailgate-Virus-Status"] == "clean"
    assert msg["X-Untrusted-Mailgate-Virus-Status"] == "clean"

    # each scanned line names the CPU its stages took (scripts/bench takes medians of them)
    def scanned() -> list[str]:
        return [line for line in gw.log().splitlines() if "event='scanned'" in line]

    wait_for(lambda: len(scanned()) == 2, what="both scanned lines")
    for line in scanned():
        cpu = dict(re.findall(r"\b(mime|av|spam)_ms=([\d.]+)", line))
        assert set(cpu) == {"mime", "av", "spam"}, line
        assert 0 < float(cpu["mime"]) + float(cpu["spam"]) < 10_000, line


def test_groups_split_a_message_into_differently_treated_copies(make_gateway, sink):
    gw = make_gateway(
        SPAM_ON + "ActionSpam=block\nGroup=management *@management.company.com\n"
        "GroupAction=management spam mark\nSubjectPrefix=[SPAM]\n"
    ).start()
    gtube = make_message("split@test", subject="offer").replace(b"Hello", GTUBE.encode())
    qid = gw.send(
        gtube, to=["boss@management.company.com", "user@company.com", "cfo@management.company.com"]
    )
    got = sink.wait_count(1)[0]
    assert sorted(got.rcpt_tos) == ["boss@management.company.com", "cfo@management.company.com"]
    msg = got.message
    assert msg["Subject"] == "[SPAM] offer"
    assert msg["X-Spam-Flag"] == "YES"
    assert "GTUBE(1000)" in msg["X-Spam-Status"].replace("\r\n\t", "")
    wait_for(lambda: "event='scanned'" in gw.log(), what="the scan log")
    assert f"qid='{qid}'" in gw.log()
    assert not any("user@company.com" in r.rcpt_tos for r in sink.received)
    # Both groups again, this time management blocks and everyone else gets it marked:
    # the copy for the other group is a new queue entry of its own.
    gw2 = make_gateway(
        SPAM_ON + "ActionSpam=mark\nGroup=management *@management.company.com\n"
        "GroupAction=management spam quarantine\n",
        name="gw2",
    ).start()
    qid2 = gw2.send(
        gtube.replace(b"split@test", b"split2@test"),
        to=["boss@management.company.com", "user@company.com"],
    )
    got = wait_for(
        lambda: [r for r in sink.received if r.message_id == "<split2@test>"],
        what="the marked copy",
    )[0]
    assert got.rcpt_tos == ["user@company.com"]
    assert got.message["Subject"].startswith("[SPAM]")
    quarantined = wait_for(lambda: gw2.entries("quarantine/spam"), what="quarantine")
    assert quarantined == [qid2]
    kept = json.loads((gw2.spool / "quarantine" / "spam" / qid2 / "envelope.json").read_text())
    assert [r["address"] for r in kept["recipients"]] == ["boss@management.company.com"]


def test_blacklist_file_is_reread_on_sighup(make_gateway, sink, tmp_path):
    listed = tmp_path / "black.txt"
    listed.write_text("# nobody yet\n")
    gw = make_gateway(SPAM_ON + f"BlacklistSenders=file:{listed}\n").start()
    gw.send(make_message("first@test"), sender="pest@nuisance.example")
    sink.wait_count(1)
    listed.write_text("*@nuisance.example\n")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: gw.log().count("config_reloaded") >= 4, what="every worker reloaded")
    gw.send(make_message("second@test"), sender="pest@nuisance.example")
    wait_for(lambda: "spam='blacklisted'" in gw.log(), what="the blacklisted verdict")
    gw.send(make_message("third@test"), sender="friend@example.org")
    wait_for(lambda: "<third@test>" in sink.ids(), what="the third message")
    assert "<second@test>" not in sink.ids()


def test_our_own_received_header_is_not_evidence(make_gateway, sink):
    gw = make_gateway(SPAM_ON + "ActionProbableSpam=deliver\nActionSpam=deliver\n").start()
    gw.send(make_message("own@test"))
    status = sink.wait_count(1)[0].message["X-Spam-Status"].replace("\r\n\t", "")
    assert "RECEIVED_FORGED" not in status and "HELO_IS_US" not in status


def test_mail_from_trusted_networks_is_judged_by_its_content_only(make_gateway, sink):
    """The README's swaks example and an application's bare smtplib message (HELO our own
    name, no Date, Message-ID or From) from 127.0.0.1, a trusted network, arrive untagged,
    the missing fields added as Postfix's cleanup adds them; the same bare message from
    127.0.0.2, outside TrustedNetworks (where HELO with our name is refused, so a bare IP),
    is still judged on its HELO and missing headers."""
    gw = make_gateway(SPAM_ON + "[smtpgw.network]\nHostname=gw.company.com\n").start()
    swaks = subprocess.run(
        [
            "swaks",
            "--server",
            f"127.0.0.1:{gw.port}",
            "--helo",
            "client.example.org",
            "--from",
            "me@example.org",
            "--to",
            "someone@company.com",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert swaks.returncode == 0, swaks.stdout[-2000:]
    bare = b"Subject: nightly report\r\n\r\nThe backup finished at 02:00.\r\n"
    for source, helo in (("127.0.0.1", "gw.company.com"), ("127.0.0.2", "[127.0.0.2]")):
        with smtplib.SMTP(
            "127.0.0.1", gw.port, local_hostname=helo, source_address=(source, 0)
        ) as smtp:
            smtp.sendmail("app@company.com", ["ops@company.com"], bare)
    sink.wait_count(3)
    by_rcpt = {r.rcpt_tos[0]: r.message for r in sink.received}
    example = by_rcpt["someone@company.com"]
    assert example["Subject"].startswith("test")  # swaks's own subject, no prefix
    assert example["X-Spam-Status"].startswith("No, ")
    assert example["X-Spam-Flag"] is None
    inside = [r.message for r in sink.received if r.rcpt_tos == ["ops@company.com"]]
    trusted = next(m for m in inside if "[127.0.0.1]" in m.get_all("Received")[0])
    outside = next(m for m in inside if "[127.0.0.2]" in m.get_all("Received")[0])
    assert trusted["Subject"] == "nightly report"
    assert trusted["X-Spam-Status"].startswith("No, ")
    status = trusted["X-Spam-Status"].replace("\r\n\t", "")
    for rule in ("HELO_IS_US", "HELO_BARE_IP", "MISSING_DATE", "MISSING_FROM"):
        assert rule not in status
    assert trusted["Date"] and trusted["Message-ID"] and trusted["From"] == "app@company.com"
    judged = outside["X-Spam-Status"].replace("\r\n\t", "")
    assert "HELO_BARE_IP" in judged and "MISSING_DATE" in judged
    assert outside["Date"] is None and outside["Message-ID"] is None


def test_x_spam_status_says_yes_exactly_on_the_copies_that_are_tagged(make_gateway, sink):
    gw = make_gateway(
        SPAM_ON + "ActionSpam=mark\nGroup=plain *@plain.company.com\n"
        "GroupAction=plain spam deliver\n"
    ).start()
    gtube = make_message("tagged@test", subject="offer").replace(b"Hello", GTUBE.encode())
    gw.send(gtube, to=["user@company.com", "x@plain.company.com"])
    sink.wait_count(2)
    by_rcpt = {r.rcpt_tos[0]: r.message for r in sink.received}
    marked, plain = by_rcpt["user@company.com"], by_rcpt["x@plain.company.com"]
    assert marked["Subject"] == "[SPAM] offer"
    assert marked["X-Spam-Status"].startswith("Yes, ") and marked["X-Spam-Flag"] == "YES"
    assert plain["Subject"] == "offer"
    assert plain["X-Spam-Status"].startswith("No, ") and plain["X-Spam-Flag"] is None
    for msg in (marked, plain):
        assert "status=spam" in msg["X-Spam-Status"].replace("\r\n\t", "")


def test_a_sure_verdict_is_learned_and_kept_across_a_restart(make_gateway, sink):
    gw = make_gateway(SPAM_ON + "ActionSpam=mark\n").start()
    table = gw.spool / "spamdb"
    wait_for(lambda: (table / bayes.MODEL_FILE).exists(), what="the spool's token table")
    before = bayes.Model.load(table).nspam
    gw.send(make_message("sure@test").replace(b"Hello", GTUBE.encode()))
    sink.wait_count(1)
    wait_for(lambda: bayes.Model.load(table).nspam == before + 1, 30, "the auto-learned message")
    assert "event='autolearn_merged'" in gw.log()
    assert not list((table / "autolearn").iterdir())
    gw.stop()
    gw.start()
    gw.send(make_message("after@test"))
    sink.wait_count(2)
    assert bayes.Model.load(table).nspam == before + 1  # not replaced by the shipped table
