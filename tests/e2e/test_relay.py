"""End to end over real SMTP: smtplib → mailgate run → aiosmtpd sink."""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import subprocess
import sys

from support import make_message, wait_for


def test_message_is_relayed_with_trace_and_queue_id(gateway, sink):
    qid = gateway.send(make_message("one@test"), to="user@company.com")
    got = sink.wait_count(1)[0]
    assert got.mail_from == "sender@example.org"
    assert got.rcpt_tos == ["user@company.com"]
    msg = got.message
    assert msg["X-Mailgate-Queue-ID"] == qid
    assert msg["Message-ID"] == "<one@test>"
    assert f"id {qid}" in " ".join(msg["Received"].split())
    assert got.content.endswith(b"Hello from the tests.\r\n")
    wait_for(lambda: not gateway.queue(), what="the spool to empty")


def test_every_reply_has_an_enhanced_status_code(gateway):
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        f = s.makefile("rwb")
        assert f.readline().startswith(b"220 ")

        def cmd(line: bytes) -> list[bytes]:
            f.write(line + b"\r\n")
            f.flush()
            lines = [f.readline()]
            while lines[-1][3:4] == b"-":
                lines.append(f.readline())
            return lines

        ehlo = cmd(b"EHLO client.example.org")
        keywords = {line[4:].split()[0].upper() for line in ehlo[1:]}
        assert {
            b"PIPELINING",
            b"SIZE",
            b"8BITMIME",
            b"ENHANCEDSTATUSCODES",
            b"DSN",
            b"SMTPUTF8",
        } <= keywords
        assert b"STARTTLS" not in keywords  # no certificate configured
        listed = cmd(b"HELP")[0].split(b":", 1)[1].split()
        assert {b"EHLO", b"HELO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"QUIT"} <= set(listed)
        for line, code in [
            (b"NOOP", b"250 2."),
            (b"RCPT TO:<a@company.com>", b"503 5."),
            (b"BOGUS", b"500 5."),
            (b"MAIL FROM:<a@b.org> RET=BAD", b"501 5."),
            (b"MAIL FROM:<a@b.org>", b"250 2."),
            (b"RCPT TO:<a@company.com> NOTIFY=SOMETIMES", b"501 5."),
            (b"RCPT TO:<x@elsewhere.net>", b"250 2."),  # 127.0.0.1 is trusted
            (b"RSET", b"250 2."),
            (b"VRFY a", b"252 2."),
            (b"HELP MAIL", b"250 2."),
            (b"QUIT", b"221 2."),
        ]:
            reply = cmd(line)
            assert reply[0].startswith(code), (line, reply)


def test_pipelined_transactions(gateway, sink):
    """RFC 2920: a client may send MAIL, RCPT, RCPT, DATA in one write."""
    body = make_message("pipe@test").replace(b"\r\n.", b"\r\n..")
    with socket.create_connection(("127.0.0.1", gateway.port)) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(b"EHLO client\r\n")
        f.flush()
        while f.readline()[3:4] == b"-":
            pass
        f.write(
            b"MAIL FROM:<p@example.org>\r\nRCPT TO:<a@company.com>\r\n"
            b"RCPT TO:<b@company.com>\r\nDATA\r\n"
        )
        f.flush()
        replies = [f.readline() for _ in range(4)]
        assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"354"], replies
        f.write(body + b".\r\nQUIT\r\n")
        f.flush()
        assert f.readline().startswith(b"250 2.0.0 Ok: queued as ")
        assert f.readline().startswith(b"221")
    got = sink.wait_count(1)[0]
    assert sorted(got.rcpt_tos) == ["a@company.com", "b@company.com"]


def test_relay_denied_for_untrusted_client(gateway, sink):
    with smtplib.SMTP("127.0.0.1", gateway.port, source_address=("127.0.0.2", 0)) as smtp:
        smtp.ehlo("outside.example.net")
        assert smtp.mail("a@outside.example.net")[0] == 250
        code, reply = smtp.rcpt("victim@elsewhere.net")
        assert (code, reply[:5]) == (550, b"5.7.1")
        code, reply = smtp.rcpt("user%victim@elsewhere.net@company.com")
        assert code in (550, 501, 553), reply
        assert smtp.rcpt("user@sub.company.com")[0] == 250
        code, reply = smtp.data(make_message("inbound@test", to="user@sub.company.com"))
        assert code == 250
    got = sink.wait_count(1)
    assert [r.rcpt_tos for r in got] == [["user@sub.company.com"]]


def test_size_limit_from_parameter_and_data(make_gateway):
    gw = make_gateway("[smtpgw.limits]\nMaxMessageSize=10K").start()
    with smtplib.SMTP("127.0.0.1", gw.port) as smtp:
        smtp.ehlo("c")
        assert smtp.esmtp_features["size"] == str(10 * 1024)
        code, reply = smtp.mail("a@example.org", ["SIZE=20000"])
        assert (code, reply[:5]) == (552, b"5.3.4")
        assert smtp.mail("a@example.org")[0] == 250
        assert smtp.rcpt("u@company.com")[0] == 250
        code, reply = smtp.data(make_message("big@test", size=30_000))
        assert (code, reply[:5]) == (552, b"5.3.4")
    assert gw.queue() == []


def test_backpressure_when_queue_full(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nMaxQueueSize=2\nScanners=0").start()
    gw.send(make_message("bp1@test"))
    gw.send(make_message("bp2@test"))

    def refused():
        with smtplib.SMTP("127.0.0.1", gw.port) as smtp:
            smtp.ehlo("c")
            code, reply = smtp.mail("a@example.org")
            if code == 250:
                smtp.rset()
                return False
            assert smtp.noop()[0] == 250  # the session stays usable
            return code, reply

    code, reply = wait_for(refused, what="452 once incoming/ is full")
    assert (code, reply[:5]) == (452, b"4.3.1")
    assert len(gw.entries("incoming")) == 2


def test_backpressure_when_disk_low(make_gateway):
    gw = make_gateway("[smtpgw.limits]\nMinFreeDisk=1000000G").start()
    with smtplib.SMTP("127.0.0.1", gw.port) as smtp:
        smtp.ehlo("c")
        code, reply = smtp.mail("a@example.org")
        assert (code, reply[:5]) == (452, b"4.3.1")


def test_deferral_then_delivery(make_gateway, sink):
    sink.rcpt_replies["slow@company.com"] = ["451 4.3.0 try again later"]
    gw = make_gateway("[smtpgw.retry]\nRetryIntervals=1s").start()
    qid = gw.send(make_message("defer@test"), to=["slow@company.com", "fast@company.com"])
    first = sink.wait_count(1)[0]
    assert first.rcpt_tos == ["fast@company.com"]
    second = sink.wait_count(2)[1]
    assert second.rcpt_tos == ["slow@company.com"]
    assert second.message_id == "<defer@test>"
    assert "event='deferred' qid='" + qid in gw.log()
    wait_for(lambda: not gw.queue(), what="the spool to empty")


def test_bounce_on_550_goes_to_sender_as_dsn(gateway, sink):
    sink.rcpt_replies["nobody@company.com"] = ["550 5.1.1 no such user"]
    qid = gateway.send(
        make_message("bounce@test"), to="nobody@company.com", sender="author@example.org"
    )
    dsn = sink.wait_count(1)[0]
    assert dsn.mail_from == ""
    assert dsn.rcpt_tos == ["author@example.org"]
    report = dsn.message
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = report.get_payload()
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    fields = status.as_string()
    assert "Final-Recipient: rfc822; nobody@company.com" in fields
    assert "Action: failed" in fields
    assert "Status: 5.1.1" in fields
    assert f"X-Mailgate-Queue-ID: {qid}" in fields
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <bounce@test>" in parts[2].get_payload()
    wait_for(lambda: not gateway.queue(), what="the spool to empty")


def test_no_bounce_to_null_sender(make_gateway, sink):
    sink.rcpt_replies["nobody@company.com"] = ["550 5.1.1 no such user"]
    gw = make_gateway("[smtpgw.limits]\nSenders=0").start()
    qid = gw.send(make_message("null@test"), to="nobody@company.com", sender="")
    assert gw.queue()[0]["sender"] == ""
    gw.write_config("")
    gw.signal(signal.SIGHUP)
    wait_for(lambda: f"event='done' qid='{qid}'" in gw.log(), what="the failure")
    assert "dsn_queued" not in gw.log()
    assert gw.queue() == []
    assert sink.received == []


def test_graceful_stop_exits_zero(gateway, sink):
    gateway.send(make_message("stop@test"))
    sink.wait_count(1)
    assert gateway.stop() == 0
    assert "event='stopped'" in gateway.log()
    assert not (gateway.spool / "run" / "workers.json").exists()


def test_second_supervisor_on_same_spool_is_refused(gateway):
    second = gateway.cli("run")
    assert second.returncode == 5, second.stderr
    assert "already_running" in second.stderr


def test_sighup_keeps_old_config_when_new_one_is_bad(make_gateway, sink):
    gateway = make_gateway("[smtpgw.limits]\nSenders=2").start()
    wait_for(lambda: len(gateway.pids("sender")) == 2, what="two senders")
    gateway.conf.write_text(gateway.conf.read_text() + "\n[smtpgw.limits]\nScanners=many\n")
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: "config_reload_failed" in gateway.log(), what="reload failure")
    gateway.send(make_message("afterbadhup@test"))
    assert sink.wait_count(1)[0].message_id == "<afterbadhup@test>"
    gateway.write_config("[smtpgw.limits]\nSenders=1")
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: len(gateway.pids("sender")) == 1, what="one sender after reload")
    gateway.send(make_message("aftergoodhup@test"))
    assert sink.wait_count(2)[1].message_id == "<aftergoodhup@test>"
    gateway.conf.write_text(gateway.conf.read_text().replace("SpoolDir=spool", "SpoolDir=other"))
    gateway.signal(signal.SIGHUP)
    wait_for(lambda: "SpoolDir changes need a restart" in gateway.log(), what="a refused reload")
    gateway.send(make_message("aftermovedhup@test"))
    assert sink.wait_count(3)[2].message_id == "<aftermovedhup@test>"


def test_starttls_when_a_certificate_is_configured(make_gateway, sink, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=mailgate.test",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    gw = make_gateway(f"[smtpgw.network]\nTLSCertificate={cert}\nTLSKey={key}").start()
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP("127.0.0.1", gw.port) as smtp:
        smtp.ehlo("c")
        assert smtp.has_extn("starttls")
        assert smtp.starttls(context=context)[0] == 220
        smtp.ehlo("c")
        assert not smtp.has_extn("starttls")
        smtp.sendmail("a@example.org", ["tls@company.com"], make_message("tls@test"))
    received = " ".join(sink.wait_count(1)[0].message["Received"].split())
    assert "with ESMTPS id" in received


def test_check_config_refuses_a_certificate_that_does_not_load(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("not a key\n")
    cert.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
    conf = tmp_path / "tls.conf"
    conf.write_text(
        f"[smtpgw.network]\nListenOn=127.0.0.1:2525\nTLSCertificate={cert}\nTLSKey={key}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mailgate", "check-config", "-c", str(conf)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"{conf}:3: TLSCertificate/TLSKey do not load")


def test_sigusr1_logs_statistics(gateway, sink):
    gateway.send(make_message("stats@test"))
    sink.wait_count(1)
    workers = sum(len(gateway.pids(role)) for role in ("receiver", "scanner", "sender"))
    gateway.signal(signal.SIGUSR1)
    wait_for(
        lambda: (
            "proc='run'" in gateway.log()
            and "event='statistics' queues=" in gateway.log()
            and gateway.log().count("event='statistics'") >= 1 + workers
        ),
        what="statistics from the supervisor and every worker",
    )
    assert "received=1" in gateway.log()


def test_connections_to_a_next_hop_are_reused(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nSenders=1").start()
    for n in range(3):
        gw.send(make_message(f"reuse{n}@test"), to=f"user{n}@company.com")
        sink.wait_count(n + 1)
    assert sink.sessions == 1


def test_smtputf8_and_8bitmime_pass_through(gateway, sink):
    message = (
        "From: <jürgen@example.org>\r\nTo: <zoë@company.com>\r\nSubject: grüße\r\n"
        "Message-ID: <utf8@test>\r\n\r\nGrüße aus Köln\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", gateway.port) as smtp:
        smtp.ehlo("c")
        code, _ = smtp.mail("jürgen@example.org", ["SMTPUTF8", "BODY=8BITMIME"])
        assert code == 250
        assert smtp.rcpt("zoë@company.com")[0] == 250
        assert smtp.data(message)[0] == 250
    got = sink.wait_count(1)[0]
    assert got.mail_from == "jürgen@example.org"
    assert got.rcpt_tos == ["zoë@company.com"]
    assert got.content.endswith("Grüße aus Köln\r\n".encode())


def test_lines_starting_with_a_dot_and_quoted_addresses_arrive_unchanged(gateway, sink):
    """The sender's own DATA stuffing and MAIL/RCPT commands against a real next hop."""
    body = b".first line\r\n..\r\n.\r\nmiddle\r\n...three\r\nlast .\r\n"
    message = b"Subject: dots\r\nMessage-ID: <dots@test>\r\n\r\n" + body
    sender, rcpt = '"odd sender"@example.org', "dots@company.com"
    with smtplib.SMTP("127.0.0.1", gateway.port) as smtp:
        smtp.ehlo("c")
        assert smtp.sendmail(f"<{sender}>", [rcpt], message) == {}
    got = sink.wait_count(1)[0]
    assert got.content.endswith(b"\r\n\r\n" + body)
    assert (got.mail_from, got.rcpt_tos) == (sender, [rcpt])


def test_listen_on_ipv6_loopback(make_gateway, sink):
    gw = make_gateway()
    gw.write_config(f"[smtpgw.network]\nListenOn=[::1]:{gw.port}\nTrustedNetworks=::1/128")
    text = gw.conf.read_text().replace(f"ListenOn=127.0.0.1:{gw.port}\n", "")
    gw.conf.write_text(text)
    gw.start(wait=False)
    wait_for(lambda: "event='listening' address='::1:" in gw.log(), what="IPv6 listener")
    with smtplib.SMTP("::1", gw.port) as smtp:
        smtp.ehlo("c")
        smtp.sendmail("a@example.org", ["anyone@elsewhere.company.com"], make_message("ipv6@test"))
    got = sink.wait_count(1)[0]
    assert "[IPv6:::1]" in " ".join(got.message["Received"].split())


def test_a_body_without_a_blank_line_before_it_arrives_unchanged(gateway, sink):
    """Header edits stop at the first line that is not a field: a body that looks like
    headers, with no blank line before it, is delivered byte for byte."""
    body = b"no blank line above\r\nX-Mailgate-Virus-Status: forged in the body\r\nSubject: x\r\n"
    message = b"Message-ID: <noblank@test>\r\nX-Mailgate-Virus-Status: clean\r\n" + body
    gateway.send(message)
    got = sink.wait_count(1)[0]
    assert got.content.endswith(b"X-Untrusted-Mailgate-Virus-Status: clean\r\n" + body)
