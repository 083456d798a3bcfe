"""Sender authentication through the whole gateway, with a real DNS server on loopback: a
DMARC p=reject forgery refused at the end of DATA, p=quarantine quarantined, forged
Authentication-Results removed, our own domain flagged when forged, SPF refusals at RCPT,
outgoing mail signed with a key from ``mailgate dkim keygen`` and verified by dkimpy, and
``mailgate scan --json`` reporting the same results."""

from __future__ import annotations

import json
import smtplib

import dkim
import pytest
from support import dnsmasq, free_port, mailgate, make_message, wait_for

from mailgate.runtime.auth import keys, lookup

SPF = {
    "bank.test": "v=spf1 ip4:192.0.2.1 -all",
    "shop.test": "v=spf1 ip4:192.0.2.1 -all",
    "fine.test": "v=spf1 ip4:127.0.0.2 -all",
}
DMARC = {
    "bank.test": "v=DMARC1; p=reject",
    "shop.test": "v=DMARC1; p=quarantine",
    "fine.test": "v=DMARC1; p=reject",
}


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    """A key made by ``mailgate dkim keygen`` and a DNS server publishing its record."""
    folder = tmp_path_factory.mktemp("dkim")
    conf = folder / "keys.conf"
    conf.write_text("[smtpgw.network]\nProtectedDomains=company.com\n[smtpgw.process]\nUser=\n")
    made = mailgate("dkim", "keygen", "company.com", "mg", "--bits", "1024", "-c", conf)
    assert made.returncode == 0, made.stderr
    key = folder / "dkim" / "company.com.mg.key"
    assert key.stat().st_mode & 0o777 == 0o600
    zone = next(line for line in made.stdout.splitlines() if "IN TXT" in line)
    record = "".join(zone.split("(", 1)[1].rsplit(")", 1)[0].split('"')[1::2])
    assert record.startswith("v=DKIM1; k=rsa; p=")
    again = mailgate("dkim", "keygen", "company.com", "mg", "-c", conf)
    assert again.returncode == 4 and "exists" in again.stderr
    port, dead = free_port(), free_port()
    args = ["--local=/test/", "--local=/company.com/", f"--server=/slow.example/127.0.0.1#{dead}"]
    args += [f"--txt-record={n},{v}" for n, v in SPF.items()]
    args += [f"--txt-record=_dmarc.{n},{v}" for n, v in DMARC.items()]
    args.append("--txt-record=mg._domainkey.company.com," + ",".join(keys.txt_strings(record)))
    proc = dnsmasq(port, args)
    resolver = lookup.Lookup(lookup.resolver([("127.0.0.1", port)], 2.0))

    def up() -> bool:
        try:
            return bool(resolver.txt_records("bank.test"))
        except lookup.TemporaryFailure:
            return False

    try:
        wait_for(up, 10, "the DNS server")
        yield port, key, resolver
    finally:
        proc.terminate()
        proc.wait()


def config(port: int, extra: str = "") -> str:
    return (
        "[smtpgw.auth]\nEnabled=yes\nAuthservID=mx.company.com\nDNSTimeout=1s\n"
        + extra
        + f"[smtpgw.forward]\nNameservers=127.0.0.1:{port}\n"
    )


def mail(sender: str, headers: str = "", body: str = "Quarterly figures attached.") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: user@company.com\r\nSubject: figures\r\n"
        f"Message-ID: <{sender.replace('@', '.')}@test>\r\n{headers}\r\n{body}\r\n"
    ).encode()


def session(gw, source: str, sender: str, message: bytes) -> tuple[int, str, int, str]:
    """(RCPT code, reply, DATA code, reply) of one transaction from ``source``."""
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.example.org")
        smtp.mail(sender)
        code, reply = smtp.rcpt("user@company.com")
        if code != 250:
            return code, reply.decode(), 0, ""
        data_code, data_reply = smtp.data(message)
        return code, reply.decode(), data_code, data_reply.decode()


def test_dmarc_policies_forged_results_and_spoofing_from_outside(make_gateway, sink, signing):
    port, _key, _resolver = signing
    gw = make_gateway(config(port)).start()
    # p=reject, SPF fails and nothing is signed: 550 at the end of DATA, nothing queued
    rcpt, _r, code, reply = session(gw, "127.0.0.2", "ceo@bank.test", mail("ceo@bank.test"))
    assert (rcpt, code) == (250, 550) and reply.startswith("5.7.1 DMARC: bank.test")
    assert gw.entries("incoming") == [] and gw.entries("tmp") == []
    # p=quarantine: accepted, then kept in quarantine/dmarc, not delivered
    qid = gw.send(mail("offers@shop.test"), sender="offers@shop.test", source="127.0.0.2")
    wait_for(lambda: gw.entries("quarantine/dmarc") == [qid], what="the quarantined copy")
    # an aligned SPF pass: delivered with our one result; a forged one of ours is removed
    forged = (
        "Authentication-Results: mx.company.com; dmarc=pass header.from=bank.test\r\n"
        "Authentication-Results: relay.example; spf=pass smtp.mailfrom=fine.test\r\n"
    )
    gw.send(mail("news@fine.test", forged), sender="news@fine.test", source="127.0.0.2")
    # our own domain from outside, unauthenticated: delivered (no DMARC record), flagged
    gw.send(mail("ceo@company.com"), sender="ceo@company.com", source="127.0.0.2")
    arrived = sink.wait_count(2)
    got = {r.mail_from: r.message for r in arrived}
    content = {r.mail_from: r.content for r in arrived}
    assert set(got) == {"news@fine.test", "ceo@company.com"}
    fine = got["news@fine.test"]
    ours = [v for v in fine.get_all("Authentication-Results") if v.startswith("mx.company.com")]
    assert len(ours) == 1
    flat = " ".join(ours[0].split())
    assert "spf=pass smtp.mailfrom=fine.test" in flat and "dkim=none" in flat
    assert "dmarc=pass header.from=fine.test" in flat
    assert b"header.from=bank.test" not in content["news@fine.test"]
    assert fine.get_all("X-Untrusted-Authentication-Results") is None
    assert any(v.startswith("relay.example") for v in fine.get_all("Authentication-Results"))
    assert fine["X-Mailgate-Spoofed"] is None
    spoofed = got["ceo@company.com"]
    assert spoofed["X-Mailgate-Spoofed"].startswith("From: company.com is ours")
    assert "spf=none" in spoofed["Authentication-Results"]
    # trusted clients are not judged: the same forgery from inside is delivered untouched
    gw.send(mail("ceo@bank.test"), sender="ceo@bank.test")
    inside = next(r for r in sink.wait_count(3) if r.mail_from == "ceo@bank.test").message
    assert inside["Authentication-Results"] is None


def test_spf_reject_at_rcpt_and_temperror(make_gateway, signing):
    port, _key, _resolver = signing
    gw = make_gateway(config(port, "SPFAction=reject\n")).start()
    rcpt, reply, _c, _r = session(gw, "127.0.0.2", "ceo@bank.test", mail("ceo@bank.test"))
    assert rcpt == 550 and reply.startswith("5.7.23 SPF: bank.test does not allow [127.0.0.2]")
    rcpt, reply, _c, _r = session(gw, "127.0.0.2", "x@dead.slow.example", mail("x@a.test"))
    assert rcpt == 451 and reply.startswith("4.4.3")
    rcpt, _reply, code, _r = session(gw, "127.0.0.2", "news@fine.test", mail("news@fine.test"))
    assert (rcpt, code) == (250, 250)


def test_outgoing_mail_is_signed_after_every_edit(make_gateway, sink, signing):
    port, key, resolver = signing
    gw = make_gateway(
        config(port) + f"[smtpgw.dkim]\nSigningKey=company.com mg {key}\n"
        "[smtpgw.spamtest]\nEnabled=yes\nNetwork=no\n"
    ).start()
    gw.send(
        mail("boss@company.com").replace(b"To: user@company.com", b"To: a@example.org"),
        to="a@example.org",
        sender="boss@company.com",
    )
    gw.send(make_message("other@example.org"), to="a@example.org")  # not our domain
    got = {r.mail_from: r for r in sink.wait_count(2)}
    signed = got["boss@company.com"].content
    assert signed.startswith(b"DKIM-Signature: ")
    assert b"X-Spam-Status:" in signed  # added by the scanner, and inside the signed message
    assert dkim.verify(signed, dnsfunc=resolver.txt)
    assert not dkim.verify(signed.replace(b"Quarterly", b"Quarrelly"), dnsfunc=resolver.txt)
    assert b"DKIM-Signature" not in got["sender@example.org"].content


def test_scan_json_reports_the_results(tmp_path, signing):
    port, key, _resolver = signing
    conf = tmp_path / "scan.conf"
    conf.write_text(
        config(port) + "[smtpgw.antivirus]\nEnabled=no\n[smtpgw.spamtest]\nEnabled=no\n"
        "[smtpgw.network]\nProtectedDomains=company.com\n"
    )
    pem = key.read_bytes()
    message = mail("boss@company.com")
    signed = dkim.sign(message, b"mg", b"company.com", pem, include_headers=[b"from"]) + message
    (tmp_path / "signed.eml").write_bytes(signed)
    (tmp_path / "bank.eml").write_bytes(mail("ceo@bank.test"))
    result = mailgate(
        "scan",
        "--json",
        "--client",
        "127.0.0.2",
        "--mail-from",
        "ceo@bank.test",
        "-c",
        conf,
        tmp_path / "signed.eml",
        tmp_path / "bank.eml",
    )
    assert result.returncode == 0, result.stderr
    first, second = (json.loads(line)["auth"] for line in result.stdout.splitlines())
    assert [d["result"] for d in first["dkim"]] == ["pass"]
    assert first["dmarc"]["result"] == "none" and first["spoofed"] == ""
    assert second["spf"]["result"] == "fail"
    assert (second["dmarc"]["result"], second["action"]) == ("fail", "reject")
