"""Notices are built from templates with values an attacker chose (a Subject, a file name):
no value can add a header field to a notice, whatever control characters it carries."""

from __future__ import annotations

import email
import email.policy

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate import config as configmod
from mailgate.scan import notify

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
