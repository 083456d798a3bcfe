"""Malformed and unusual MIME from parsers' test suites goes through the gateway intact.

Every message is accepted and comes out at the next hop byte for byte as sent (after our
trace, queue-ID and scan headers), whatever its MIME structure; the few with lines longer
than SMTP allows (998 octets) come out with those lines folded, as Postfix folds them.
"""

from __future__ import annotations

import email
import re
import smtplib

import pytest
from support import ROOT, wait_for

from mailgate.scan import mime

CORPUS = ROOT.parent / "shared" / "mime-torture"
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md")


@pytest.mark.skipif(not FILES, reason="../shared/mime-torture is not beside the repository")
def test_every_torture_message_is_relayed_unchanged(make_gateway, sink):
    # A loaded CI machine must not turn a slow clamd into "unscannable": that is not what
    # this test is about (test_av_gateway covers timeouts).
    gw = make_gateway(
        "[smtpgw.limits]\nMaxMessageSize=50M\n[smtpgw.antivirus]\nObjectTimeout=300s\n"
        "MessageTimeout=600s\n"
    ).start()
    sent: dict[str, bytes] = {}
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as smtp:
        smtp.ehlo("torture")
        for number, path in enumerate(FILES):
            # an SMTP client sends CRLF lines; smtplib does not convert bytes itself
            body = re.sub(rb"\r?\n|\r", b"\r\n", path.read_bytes())
            if not body.endswith(b"\r\n"):
                body += b"\r\n"
            rcpt = f"t{number}@company.com"
            smtp.sendmail("torture@example.org", [rcpt], body, mail_options=["BODY=8BITMIME"])
            sent[rcpt] = body
    try:
        wait_for(lambda: len(sink.received) >= len(sent), 300, "every torture message")
    except AssertionError:
        states = {
            s: gw.entries(s)
            for s in ("incoming", "scanning", "ready", "sending", "deferred", "corrupt")
        }
        trouble = [
            line
            for line in gw.log().splitlines()
            if "level='warning'" in line or "level='error'" in line
        ]
        raise AssertionError(
            f"{len(sink.received)} of {len(sent)} arrived; queue {states}; "
            f"quarantine {list(gw.spool.glob('quarantine/*/*'))}; "
            f"log {trouble[-10:]}"
        ) from None
    by_rcpt = {r.rcpt_tos[0]: r.content for r in sink.received}
    folded = 0
    for rcpt, body in sent.items():
        got = by_rcpt[rcpt]
        assert max(len(line) for line in got.split(b"\r\n")) <= 998, rcpt
        if max(len(line) for line in body.split(b"\r\n")) > 998:
            folded += 1
            assert got.replace(b"\r\n ", b"").endswith(body.replace(b"\r\n ", b"")), rcpt
        else:
            assert got.endswith(body), rcpt
    assert folded >= 1
    wait_for(lambda: not gw.queue(), 30, "an empty queue")
    assert gw.entries("corrupt") == []


def _parser_split(raw: bytes) -> mime.Split:
    """``mime.split`` with the parser's own full parse, the reference for the short cut."""
    original = mime.parse
    mime.parse = lambda data: email.message_from_bytes(data, policy=mime.POLICY)
    try:
        return mime.split(raw)
    finally:
        mime.parse = original


@pytest.mark.skipif(not FILES, reason="../shared/mime-torture is not beside the repository")
def test_single_part_short_cut_parses_as_the_parser_does():
    """``mime.parse`` skips the parser's line loop for single-part bodies; on every torture
    message and the whole training corpus, in LF and CRLF form, the objects, their
    decoded bytes and defects, and the headers come out exactly as from the full parse."""
    corpus = sorted((ROOT.parent / "shared" / "corpus" / "train").rglob("*.eml"))
    short_cut = 0
    for path in FILES + corpus:
        raw = path.read_bytes()
        for data in (raw, re.sub(rb"\r?\n", b"\r\n", raw)):
            ours, reference = mime.split(data), _parser_split(data)
            assert ours.message.items() == reference.message.items(), path
            assert [type(d) for d in ours.message.defects] == [
                type(d) for d in reference.message.defects
            ], path
            assert (ours.limit, ours.subject) == (reference.limit, reference.subject), path
            assert [(o.path, o.name, o.content_type, o.data, o.defect) for o in ours.objects] == [
                (o.path, o.name, o.content_type, o.data, o.defect) for o in reference.objects
            ], path
            short_cut += not ours.message.is_multipart()
    assert short_cut > len(FILES)  # most messages took the short cut
