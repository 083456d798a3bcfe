"""Malformed and unusual MIME from parsers' test suites goes through the relay core intact.

The scanner stage is a pass-through here, so every message must come out at the next hop
byte for byte as sent (after our trace and queue-ID headers), whatever its MIME structure.
"""

from __future__ import annotations

import re
import smtplib

import pytest
from support import ROOT, wait_for

CORPUS = ROOT.parent / "shared" / "mime-torture"
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md")


@pytest.mark.skipif(not FILES, reason="../shared/mime-torture is not beside the repository")
def test_every_torture_message_is_relayed_unchanged(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nMaxMessageSize=50M").start()
    sent: dict[str, bytes] = {}
    refused: list[str] = []
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as smtp:
        smtp.ehlo("torture")
        for number, path in enumerate(FILES):
            # an SMTP client sends CRLF lines; smtplib does not convert bytes itself
            body = re.sub(rb"\r?\n|\r", b"\r\n", path.read_bytes())
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            rcpt = f"t{number}@company.com"
            try:
                smtp.sendmail("torture@example.org", [rcpt], body, mail_options=["BODY=8BITMIME"])
            except smtplib.SMTPDataError as exc:
                # RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF
                assert exc.smtp_code == 500 and b"Line too long" in exc.smtp_error
                assert max(len(line) for line in body.split(b"\r\n")) > 998, path
                refused.append(path.name)
                continue
            sent[rcpt] = body
    assert len(sent) > 0.9 * len(FILES), refused
    wait_for(lambda: len(sink.received) >= len(sent), 120, "every torture message")
    by_rcpt = {r.rcpt_tos[0]: r.content for r in sink.received}
    for rcpt, body in sent.items():
        assert by_rcpt[rcpt].endswith(body), rcpt
    wait_for(lambda: not gw.queue(), 30, "an empty queue")
    assert gw.entries("corrupt") == []
