"""Anti-virus end to end: smtplib → mailgate run (with clamd) → aiosmtpd sink."""

from __future__ import annotations

import email
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

from mimebuild import EICAR, TEXT, multipart, part, zipped
from support import ROOT, make_message, wait_for

from mailgate.scan.av import clamd

ADMIN = "[smtpgw.notify]\nAdministrator=admin@company.com\n"


def by_recipient(sink, address: str) -> list:
    return [r for r in sink.received if address in r.rcpt_tos]


def arrived(sink, message_id: str, timeout: float = 60.0):
    """Wait for the message with this Message-ID (notices may arrive before or after it)."""
    return wait_for(
        lambda: [r for r in sink.received if r.message_id == f"<{message_id}>"],
        timeout,
        f"<{message_id}> at the sink",
    )[0]


def test_clean_message_is_delivered_byte_for_byte_apart_from_added_headers(gateway, sink):
    raw = multipart([TEXT, part(b"%PDF-1.4 harmless\n" * 50, "application/pdf", "a.pdf")])
    qid = gateway.send(raw)
    got = sink.wait_count(1)[0]
    assert got.content.endswith(raw)
    added = got.content[: -len(raw)].decode()
    names = [line.split(":")[0] for line in added.split("\r\n") if line and line[0] not in " \t"]
    assert names == [
        "X-Mailgate-Queue-ID",
        "X-Mailgate-Virus-Status",
        "X-Mailgate-Virus-Scanner",
        "Received",
    ]
    msg = got.message
    assert msg["X-Mailgate-Queue-ID"] == qid
    assert msg["X-Mailgate-Virus-Status"] == "clean"
    assert "ClamAV" in msg["X-Mailgate-Virus-Scanner"]
    assert "database " in msg["X-Mailgate-Virus-Scanner"]


def test_infected_attachment_is_cured_quarantined_and_notified(make_gateway, sink):
    gw = make_gateway(ADMIN).start()
    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 8
    raw = multipart(
        [TEXT, part(EICAR, filename="eicar.com"), part(pdf, "application/pdf", "report.pdf")],
        subject="Quarterly report",
        msgid="cure@test",
    )
    qid = gw.send(raw, to=["user@company.com", "boss@company.com"])
    sink.wait_count(3)  # the cured message, one admin notice, one notice to the recipients
    (delivered,) = [r for r in sink.received if r.message_id == "<cure@test>"]
    msg = delivered.message
    assert EICAR not in delivered.content
    assert msg.defects == [] and all(p.defects == [] for p in msg.walk())
    parts = msg.get_payload()
    assert len(parts) == 3
    assert parts[0].get_payload(decode=True) == b"Hello, please find the file attached.\r\n"
    assert parts[2].get_payload(decode=True) == pdf
    notice = parts[1].get_payload(decode=True).decode()
    assert "eicar.com" in notice and "Mailgate.Test.EICAR" in notice and qid in notice
    assert msg["X-Mailgate-Virus-Status"] == "infected (Mailgate.Test.EICAR)"
    assert msg["X-Mailgate-Virus-Removed"] == "eicar.com (Mailgate.Test.EICAR)"
    assert msg["Subject"] == "Quarterly report"

    (admin,) = by_recipient(sink, "admin@company.com")
    assert admin.mail_from == ""  # null sender: a notice can never bounce back
    note = admin.message
    assert qid in note["Subject"] and "infected" in note["Subject"]
    assert note["Auto-Submitted"] == "auto-generated"
    body = note.get_payload(decode=True).decode()
    for text in (
        "sender@example.org",
        "user@company.com, boss@company.com",
        "Quarterly report",
        "eicar.com",
        "Mailgate.Test.EICAR",
        "cure,quarantine",
    ):
        assert text in body, text
    assert "${" not in body
    (to_recipients,) = [
        r
        for r in sink.received
        if "boss@company.com" in r.rcpt_tos and r.message_id != "<cure@test>"
    ]
    assert sorted(to_recipients.rcpt_tos) == ["boss@company.com", "user@company.com"]
    assert not by_recipient(sink, "sender@example.org")  # NotifySender is off by default

    listing = json.loads(gw.cli("quarantine", "list", "--json", check=True).stdout)
    assert [(q["id"], q["status"]) for q in listing] == [(qid, "infected")]
    kept = gw.spool / "quarantine" / "infected" / qid / "message.eml"
    assert kept.read_bytes().endswith(raw)  # the original, as received


def test_blocked_message_released_from_quarantine_is_delivered(make_gateway, sink):
    gw = make_gateway("[smtpgw.scan]\nMode=protection\n").start()
    raw = multipart(
        [TEXT, part(zipped("eicar.com", EICAR), "application/zip", "e.zip")], msgid="blocked@test"
    )
    qid = gw.send(raw)
    second = gw.send(multipart([TEXT, part(EICAR, filename="x.com")], msgid="other@test"))
    wait_for(lambda: len(gw.entries("quarantine/infected")) == 2, what="two quarantined")
    # Blocked: only the notices to the recipient arrive, not the messages.
    sink.wait_count(2)
    assert "<blocked@test>" not in sink.ids()
    assert {r.mail_from for r in sink.received} == {""}

    shown = json.loads(gw.cli("quarantine", "show", qid, "--json", check=True).stdout)
    assert shown["verdict"]["status"] == "infected"
    assert shown["verdict"]["action"] == "block,quarantine"
    assert shown["objects"][0]["name"] == "e.zip"
    released = gw.cli("quarantine", "release", qid, check=True).stdout
    new_id = released.split()[-1]
    got = wait_for(
        lambda: [r for r in sink.received if r.message_id == "<blocked@test>"],
        what="the released message",
    )[0]
    assert got.content.endswith(raw)  # delivered as it was, not scanned again
    assert got.rcpt_tos == ["user@company.com"]
    msg = got.message
    assert msg["X-Mailgate-Queue-ID"] == new_id
    assert qid in msg["X-Mailgate-Released"]
    assert gw.entries("quarantine/infected") == [second]

    assert gw.cli("quarantine", "show", "../../etc").returncode == 2
    assert gw.cli("quarantine", "list", "--status", "../x").returncode == 2
    assert json.loads(gw.cli("quarantine", "list", "--status", "banned", "--json").stdout) == []
    assert gw.cli("quarantine", "release", qid).returncode == 3
    assert gw.cli("quarantine", "delete", second, check=True).returncode == 0
    assert gw.entries("quarantine/infected") == []


def test_quarantine_expire(make_gateway, sink):
    gw = make_gateway("[smtpgw.scan]\nMode=protection\n[smtpgw.quarantine]\nRetention=1h\n")
    gw.start()
    qid = gw.send(multipart([TEXT, part(EICAR, filename="x.com")]))
    wait_for(lambda: gw.entries("quarantine/infected"), what="the quarantined copy")
    out = gw.cli("quarantine", "expire", check=True).stdout
    assert "0 expired" in out
    envelope = gw.spool / "quarantine" / "infected" / qid / "envelope.json"
    data = json.loads(envelope.read_text())
    data["quarantined_at"] -= 7200
    envelope.write_text(json.dumps(data))
    out = gw.cli("quarantine", "expire", check=True).stdout
    assert f"{qid}: expired" in out
    assert gw.entries("quarantine/infected") == []


def start_clamd(base: Path, socket_path: Path) -> subprocess.Popen:
    conf = base / "clamd.conf"
    conf.write_text(
        clamd.config_text(
            socket_path, ROOT / "mailgate" / "data" / "avdb", base, 25 << 20, base / "clamd.log"
        )
    )
    proc = subprocess.Popen(clamd.command(conf), stdout=subprocess.DEVNULL)
    assert clamd.wait_ready(socket_path, 60, proc), (base / "clamd.log").read_text()
    return proc


def test_nothing_is_delivered_while_clamd_is_down(make_gateway, sink, tmp_path):
    socket_path = tmp_path / "c.sock"
    engine = start_clamd(tmp_path, socket_path)
    try:
        gw = make_gateway(f"[smtpgw.antivirus]\nManageClamd=no\nClamdSocket={socket_path}\n")
        gw.start()
        gw.send(make_message("before@test"))
        sink.wait_count(1)
        engine.kill()
        engine.wait()
        socket_path.unlink()
        infected = multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="virus@test")
        ids = {gw.send(infected), gw.send(make_message("clean@test"))}
        wait_for(lambda: "engine_unavailable" in gw.log(), what="the scanner to notice")
        # Nothing gets past the scanner: both wait in incoming/, untouched.
        wait_for(lambda: set(gw.entries("incoming")) == ids, what="both back in incoming/")
        assert gw.entries("ready") == [] and len(sink.received) == 1
        engine = start_clamd(tmp_path, socket_path)
        virus = arrived(sink, "virus@test")
        arrived(sink, "clean@test")
        # the other scanner may have carried both before the paused one pings clamd again
        wait_for(lambda: "engine_available" in gw.log(), what="the paused scanner to resume")
        assert EICAR not in virus.content
        assert virus.message["X-Mailgate-Virus-Status"] == "infected (Mailgate.Test.EICAR)"
    finally:
        engine.kill()
        engine.wait()


def test_managed_clamd_is_restarted_when_killed(gateway, sink):
    first = gateway.pids("clamd")
    assert len(first) == 1
    os.kill(first[0], signal.SIGKILL)
    wait_for(lambda: gateway.pids("clamd") and gateway.pids("clamd") != first, what="a new clamd")
    gateway.send(multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="after@test"))
    got = arrived(sink, "after@test")
    assert got.message["X-Mailgate-Virus-Status"] == "infected (Mailgate.Test.EICAR)"
    assert EICAR not in got.content


NEW_STRING = b"MAILGATE-NEW-" + b"SIGNATURE-TEST-STRING"


def new_database(directory: Path, extra: str) -> Path:
    directory.mkdir()
    for path in (ROOT / "mailgate" / "data" / "avdb").glob("*.*db"):
        (directory / path.name).write_bytes(path.read_bytes())
    (directory / "extra.ndb").write_text(extra)
    return directory


def test_update_installs_a_database_and_rejects_a_broken_one(gateway, sink, tmp_path):
    attachment = multipart([TEXT, part(NEW_STRING * 3, filename="data.bin")], msgid="n1@test")
    gateway.send(attachment)
    assert sink.wait_count(1)[0].message["X-Mailgate-Virus-Status"] == "clean"
    before = os.readlink(gateway.spool / "avdb" / "current")

    broken = new_database(tmp_path / "broken", "Broken.Signature:0:*:zz-not-hex\n")
    result = gateway.cli("update", "--from", str(broken))
    assert result.returncode == 6, result.stderr
    assert "rejected" in result.stderr
    assert os.readlink(gateway.spool / "avdb" / "current") == before

    assert gateway.cli("update", "--from", str(tmp_path / "nothing")).returncode == 3

    good = new_database(tmp_path / "good", f"Mailgate.Test.NewSignature:0:*:{NEW_STRING.hex()}\n")
    stop = threading.Event()
    sent: list[str] = []

    def keep_sending():
        while not stop.is_set():
            sent.append(gateway.send(make_message(f"during-{len(sent)}@test")))

    sender = threading.Thread(target=keep_sending)
    sender.start()
    try:
        result = gateway.cli("update", "--from", str(good))
    finally:
        stop.set()
        sender.join()
    assert result.returncode == 0, result.stderr
    assert "clamd reloaded it" in result.stdout
    after = os.readlink(gateway.spool / "avdb" / "current")
    assert after != before
    # Every message sent during the update arrives; the same bytes are now a detection
    # (iChecker's "clean" from the old database no longer counts).
    gateway.send(attachment.replace(b"n1@test", b"n2@test"))
    wait_for(
        lambda: {f"<during-{i}@test>" for i in range(len(sent))} | {"<n2@test>"} <= set(sink.ids()),
        what="all messages",
    )
    (again,) = [r for r in sink.received if r.message_id == "<n2@test>"]
    assert again.message["X-Mailgate-Virus-Status"] == ("infected (Mailgate.Test.NewSignature)")
    assert after.removeprefix("v-") in again.message["X-Mailgate-Virus-Scanner"]
    same = gateway.cli("update", "--from", str(good))
    assert same.returncode == 0 and "already installed" in same.stdout


def test_update_watch_applies_a_database_dropped_in_a_directory(tmp_path):
    conf = tmp_path / "w.conf"
    conf.write_text("[smtpgw.path]\nSpoolDir=spool\n")
    drop = tmp_path / "drop"
    drop.mkdir()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailgate",
            "update",
            "-c",
            str(conf),
            "--watch",
            "--from",
            str(drop),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        staged = new_database(tmp_path / "staged", "Mailgate.Test.Watched:0:*:4d4747\n")
        for path in staged.iterdir():
            (drop / path.name).write_bytes(path.read_bytes())
        current = tmp_path / "spool" / "avdb" / "current"
        wait_for(lambda: (current / "extra.ndb").exists(), timeout=60, what="the update")
        assert "Watched" in (current / "extra.ndb").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "database_update" in out


def test_curing_inside_a_nested_message_keeps_both_levels_valid(gateway, sink):
    gw = gateway
    inner = multipart([TEXT, part(EICAR, filename="inner.com")], boundary="inner-b")
    raw = multipart([TEXT, b"Content-Type: message/rfc822\r\n\r\n" + inner], msgid="nest@test")
    gw.send(raw)
    got = sink.wait_count(2)  # the message and the recipients' notice
    (msg,) = [email.message_from_bytes(r.content) for r in got if r.message_id == "<nest@test>"]
    assert msg["X-Mailgate-Virus-Status"] == "infected (Mailgate.Test.EICAR)"
    attached = msg.get_payload()[1].get_payload()[0]
    assert attached["Message-ID"] == "<av@test>"
    inner_parts = attached.get_payload()
    assert inner_parts[0].get_payload(decode=True) == b"Hello, please find the file attached.\r\n"
    assert b"inner.com" in inner_parts[1].get_payload(decode=True)


def test_a_message_clamd_cannot_finish_becomes_unscannable_after_its_attempts(make_gateway, sink):
    # MessageTimeout=0s: no message can be scanned in time, so every try fails.
    gw = make_gateway("[smtpgw.antivirus]\nMessageTimeout=0s\nScanAttempts=2\n" + ADMIN)
    gw.start()
    qid = gw.send(make_message("slow@test"))
    wait_for(lambda: gw.entries("quarantine/unscannable") == [qid], what="the quarantined copy")
    (notice,) = sink.wait_count(1)  # the administrator's notice, never the message
    assert notice.rcpt_tos == ["admin@company.com"]
    assert "unscannable" in notice.message["Subject"]
    assert "scan_failed" in gw.log() and "attempt=1" in gw.log()
    assert "<slow@test>" not in sink.ids()


def test_statistics_show_the_ichecker_hit_rate(gateway, sink):
    attachment = part(zipped("figures.csv", b"1,2,3\n" * 500), "application/zip", "f.zip")
    gateway.send(multipart([TEXT, attachment], msgid="same-0@test"))
    sink.wait_count(1)  # scanned by clamd; from now on iChecker knows both objects
    for i in range(1, 4):
        gateway.send(multipart([TEXT, attachment], msgid=f"same-{i}@test"))
    sink.wait_count(4)
    gateway.signal(signal.SIGUSR1)
    line = wait_for(
        lambda: (
            (lines := [x for x in gateway.log().splitlines() if "ichecker_hits=" in x])
            and len(lines) == len(gateway.pids("scanner"))
            and lines
        ),
        what="both scanners' statistics",
    )
    hits = sum(int(x.split("ichecker_hits=")[1].split()[0]) for x in line)
    assert hits == 6  # the text and the zip of messages 2-4 came from iChecker


def test_sighup_reloads_the_managed_clamds_database(gateway):
    clamd_log = gateway.spool / "run" / "clamd.log"
    before = clamd_log.read_text().count("Database correctly reloaded")
    pid = gateway.pids("clamd")
    gateway.signal(signal.SIGHUP)
    wait_for(
        lambda: clamd_log.read_text().count("Database correctly reloaded") > before,
        what="clamd to reload its database",
    )
    assert gateway.pids("clamd") == pid  # reloaded, not restarted


def test_a_message_that_cannot_be_cured_is_quarantined_not_delivered(gateway, sink):
    # A nested multipart that Python's email generator cannot write out again (found by the
    # hypothesis test of test_hostile.py): the infected part cannot be cut out.
    broken = (
        b'Content-Type: multipart/mixed; boundary="in"\r\n\r\n--in\r\n'
        b"Content-Type: multipart/mixed\r\nContent-Transfer-Encoding: base64\r\n\r\n\x80\r\n"
    )
    raw = multipart([part(EICAR, filename="eicar.com"), broken], msgid="uncurable@test")
    raw = raw.replace(b"Subject: test\r\n", b"Subject: test\r\n:\r\n", 1)
    qid = gateway.send(raw)
    wait_for(lambda: gateway.entries("quarantine/infected") == [qid], what="the quarantined copy")
    assert "event='cure_failed'" in gateway.log()
    assert "cannot rewrite the message" in gateway.log()
    notice = sink.wait_count(1)[0]  # the recipients are told it was blocked
    assert notice.mail_from == "" and "block,quarantine" in notice.message.get_payload()
    wait_for(lambda: not gateway.queue(), what="an empty queue")
    assert all(EICAR not in r.content and r.message_id != "<uncurable@test>" for r in sink.received)


def test_a_thousand_nested_multiparts_are_quarantined_unscannable_not_corrupt(gateway, sink):
    deep = TEXT
    for level in range(1000):
        deep = multipart([deep], boundary=f"n{level}", msgid="deep@test")
    qid = gateway.send(deep)
    wait_for(lambda: gateway.entries("quarantine/unscannable") == [qid], what="the quarantine")
    verdict = json.loads(gateway.cli("quarantine", "show", qid, "--json", check=True).stdout)
    assert "limit:depth" in json.dumps(verdict["verdict"])
    assert gateway.entries("corrupt") == []
    assert "<deep@test>" not in sink.ids()


def test_sender_notices_go_to_outside_senders_only_when_asked(make_gateway, sink):
    """The sender of a virus from outside is almost always forged: NotifySender reaches only
    senders whose mail came from TrustedNetworks, unless NotifyOutsideSenders is on."""
    notify = "[smtpgw.notify]\nNotifySender=infected\nNotifyRecipients=\n"
    for name, extra, source, told in (
        ("inside", "", "127.0.0.1", True),
        ("outside", "", "127.0.0.2", False),
        ("asked", "NotifyOutsideSenders=yes\n", "127.0.0.2", True),
    ):
        sink.received.clear()
        gw = make_gateway(notify + extra, name=name).start()
        raw = multipart([TEXT, part(EICAR, filename="eicar.com")], msgid=f"{name}@test")
        gw.send(raw, sender=f"{name}@example.org", source=source)
        arrived(sink, f"{name}@test")
        wait_for(lambda gw=gw: not gw.queue(), 60, "an empty queue")
        assert bool(by_recipient(sink, f"{name}@example.org")) is told, name
        gw.stop()


def test_malware_hidden_past_the_limits_is_never_delivered_as_clean(make_gateway, sink):
    """EICAR after 3 MB of padding in a zip member, with MaxFileSize 2M written into the
    managed clamd too (which then does not look that far), and 42.zip's shape: both
    quarantined `unscannable` with the limit named, neither delivered."""
    gw = make_gateway(ADMIN + "[smtpgw.antivirus]\nMaxFileSize=2M\nMaxUnpackedSize=40M\n").start()
    assert "MaxFileSize 2048K" in (gw.spool / "run" / "clamd.conf").read_text()
    padding = random.Random(7).randbytes(3 << 20)
    hidden = zipped("report.bin", padding + EICAR)
    level = zipped("leaf.bin", (random.Random(8).randbytes(20_000) * 50)[: 1 << 20])
    for _ in range(4):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for n in range(16):
                z.writestr(f"{n}.zip", level)
        level = out.getvalue()
    ids = {}
    for name, data in (("hidden", hidden), ("recursive", level)):
        raw = multipart([TEXT, part(data, "application/zip", f"{name}.zip")], msgid=f"{name}@test")
        ids[name] = gw.send(raw)
    wait_for(
        lambda: sorted(gw.entries("quarantine/unscannable")) == sorted(ids.values()),
        60,
        "both quarantined",
    )
    for name, reason in (("hidden", "limit:max-filesize"), ("recursive", "limit:max-scansize")):
        envelope = json.loads(
            (gw.spool / "quarantine" / "unscannable" / ids[name] / "envelope.json").read_text()
        )
        details = [o["detail"] for o in envelope["verdict"]["objects"] if o["status"] != "clean"]
        assert any(d.startswith(reason) for d in details), (name, details)
    wait_for(lambda: not gw.queue(), 60, "an empty queue")
    assert not {"<hidden@test>", "<recursive@test>"} & set(sink.ids())


def test_a_large_message_is_cured_from_its_file_and_the_rest_arrives_untouched(make_gateway, sink):
    """A 6 MB message (past the in-memory size) through the whole gateway: the infected
    attachment is replaced, the 3 MB PDF and the 1.5 MB text with dot-led and over-long
    lines arrive as they were, and quarantine keeps the original."""
    gw = make_gateway(ADMIN).start()
    rng = random.Random(11)
    pdf = b"%PDF-1.4\n" + rng.randbytes(3 << 20)
    lines = [b".leading dot", b"..two dots", b"x" * 1500, b"plain words here", b"."]
    text = b"\r\n".join(rng.choice(lines) for _ in range(60_000)) + b"\r\n"
    raw = multipart(
        [
            part(text, "text/plain", encoding="8bit"),
            part(EICAR, filename="eicar.com"),
            part(pdf, "application/pdf", "report.pdf"),
        ],
        msgid="large@test",
    )
    qid = gw.send(raw)
    delivered = arrived(sink, "large@test", timeout=120)
    parts = delivered.message.get_payload()
    assert parts[2].get_payload(decode=True) == pdf
    unfolded = parts[0].get_payload(decode=True).replace(b"\r\n ", b"")
    assert unfolded == text  # lines over 998 octets come folded, as Postfix folds them
    assert EICAR not in delivered.content
    assert "eicar.com" in parts[1].get_payload(decode=True).decode()
    assert delivered.message["X-Mailgate-Virus-Status"] == "infected (Mailgate.Test.EICAR)"
    kept = gw.spool / "quarantine" / "infected" / qid / "message.eml"
    assert kept.read_bytes().endswith(raw)
