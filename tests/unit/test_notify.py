"""Notices are built from templates with values an attacker chose (a Subject, a file name):
no value can add a header field to a notice, whatever control characters it carries."""

from __future__ import annotations

import email
import email.policy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate import config as configmod
from mailgate.message.headers import header_field
from mailgate.message.xtext import xtext_encode
from mailgate.scan import notify
from mailgate.send import dsn
from mailgate.supervise import alerts

TEMPLATE = "Subject: Virus in ${subject}\nX-Object: ${object_name}\n\nFound in ${subject}.\n"
hostile = st.lists(
    st.sampled_from(["a", " ", ":", "\r", "\n", "\x00", "\x0b", "\x1b", "Bcc", "é", "\t"]),
    max_size=40,
).map(lambda parts: "".join(parts) + "\r\nBcc: victim@example.org\nX-Injected: yes")


@settings(max_examples=200, deadline=None)
@given(subject=hostile, name=hostile)
def test_no_value_adds_a_header_field_to_a_notice(tmp_path_factory, subject, name):
    folder = tmp_path_factory.mktemp("tpl")
    template = folder / "admin.txt"
    template.write_text(TEMPLATE, encoding="utf-8")
    config = configmod.load(None)
    headers, body = notify.render(template, {"subject": subject, "object_name": name})
    assert sorted(headers) == ["Subject", "X-Object"]
    raw = notify.compose(config, headers, body, ["admin@company.com"], "1" * 21)
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Bcc"] is None and message["X-Injected"] is None
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(line[:1] in b" \t" or b":" in line for line in head.split(b"\r\n"))
    assert b"\r" not in head.replace(b"\r\n", b"") and b"\x00" not in head


@settings(max_examples=200, deadline=None)
@given(reply=hostile, envid=hostile, orcpt=hostile)
def test_no_value_adds_a_field_to_a_dsn(reply, envid, orcpt):
    """A next hop's reply and the client's ENVID and ORCPT (xtext-decoded) stay inside their
    own fields of the DSN, whatever they hold."""
    envelope = {
        "id": "2" * 21,
        "mail_from": "a@example.org",
        "received_at": 1.7e9,
        "envid": xtext_encode(envid),
        "ret": "HDRS",
    }
    rcpt = {
        "address": "u@company.com",
        "reply": "550 5.1.1 " + reply,
        "orcpt": "rfc822;" + xtext_encode(orcpt),
    }
    raw = dsn.build(envelope, b"Subject: s\r\n\r\nbody\r\n", [rcpt], "failed", "gw.example")
    report = email.message_from_bytes(raw, policy=email.policy.default)
    assert report["Bcc"] is None and report["X-Injected"] is None
    status = report.get_payload()[1].get_payload()
    names = [name.lower() for block in status for name in block]
    assert "bcc" not in names and "x-injected" not in names
    assert b"\x00" not in raw and b"\r" not in raw.replace(b"\r\n", b"")


def test_the_header_api_refuses_a_value_that_would_start_a_field():
    for value in ("a\r\nBcc: b", "a\nb", "a\rb"):
        with pytest.raises(ValueError):
            header_field("X-Test", value)
    assert header_field("X-Test", "plain") == b"X-Test: plain\r\n"


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@redis.example:6379/0",
        "rediss://user:s3cret@redis.example/1",
        "unix://:s3@cret@/run/redis/redis.sock?db=2",
        "redis://user:s3cret@[::1]:6379",
    ],
)
def test_the_redis_address_in_a_notice_carries_no_password(url):
    shown = alerts.redact(url)
    assert "s3" not in shown and "cret" not in shown and "***@" in shown
    assert shown.split("***@")[1] == url.rpartition("@")[2]


def test_a_redis_address_without_password_is_shown_as_is():
    for url in ("redis://127.0.0.1:6379/0", "sentinel://a:26379,b:26379/mymaster/0"):
        assert alerts.redact(url) == url
