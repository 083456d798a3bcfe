"""Header edits touch only the header block: the body is copied byte for byte, whatever it
holds (header-like lines, no blank line before it, no headers at all)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.message.headers import header_end, line_ending
from mailgate.scan import edits

field = st.sampled_from(
    [
        b"Subject: hello",
        b"X-Spam-Score: 99",
        b"X-Mailgate-Virus-Status: clean",
        b"From: a@example.org",
        b"Received: from x by y; Mon, 1 Jan 2024 00:00:00 +0000",
        b"\tfolded continuation",
    ]
)
body_line = st.one_of(
    field,
    st.sampled_from([b"", b"plain text", b"  indented", b"X-Spam-Flag: YES", b"Subject:", b":"]),
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)


@st.composite
def messages(draw):
    sep = draw(st.sampled_from([b"\r\n", b"\n"]))
    head = draw(st.lists(field, max_size=6))
    if head and head[0].startswith(b"\t"):
        head = head[1:]
    body = draw(st.lists(body_line, max_size=8))
    blank = draw(st.booleans())
    lines = head + ([b""] if blank else []) + body
    return sep.join(lines) + (sep if draw(st.booleans()) else b""), sep


@settings(max_examples=400, deadline=None)
@given(messages(), st.sampled_from(["", "[SPAM]"]))
def test_the_body_is_never_altered(message, prefix):
    raw, _generated_with = message
    sep = line_ending(raw)
    end = header_end(raw)
    edited = edits.edit_headers(raw, prefix)
    assert edited.endswith(raw[end:])  # the body, byte for byte
    head = edited[: len(edited) - (len(raw) - end)]
    for line in head.split(sep):
        assert not line.lower().startswith((b"x-spam-", b"x-mailgate-")), line
    if prefix:
        subjects = [x for x in head.split(sep) if x.lower().startswith(b"subject:")]
        assert subjects and all(b"[SPAM]" in x for x in subjects[:1])


def test_a_message_without_a_blank_line_keeps_its_body():
    raw = b"Subject: hi\r\nFrom: a@example.org\r\nnot a field\r\nX-Spam-Score: 99\r\nSubject: x\r\n"
    edited = edits.edit_headers(raw, "[SPAM]")
    assert edited == (
        b"Subject: [SPAM] hi\r\nFrom: a@example.org\r\nnot a field\r\nX-Spam-Score: 99\r\n"
        b"Subject: x\r\n"
    )
    assert edits.edit_headers(b"just text\r\n", "[SPAM]") == b"Subject: [SPAM]\r\njust text\r\n"
    assert not edits.has_untrusted_headers(b"From: a@b.c\r\nbody\r\nX-Spam-Flag: YES\r\n")
