"""A large message is parsed from its file (a skeleton with the long bodies left on disk) and
must come out exactly as the in-memory parse sees it: same objects, same bytes, same cure.

The skeleton's keep sizes are made tiny here, so that messages of a few kilobytes take the
large-message way with cuts everywhere; the shapes are generated (hypothesis) rather than
picked, and the malformed-MIME collection is read both ways too.
"""

from __future__ import annotations

import base64
import contextlib
import random
import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mimebuild import encode
from support import ROOT

from mailgate.message.content import FileRange, MessageFile, Spliced, blocks
from mailgate.scan import decoding, edits, mime, skeleton
from mailgate.send.client import fold_long_lines, send_body, sent_blocks

TORTURE = ROOT.parent / "shared" / "mime-torture"


@pytest.fixture
def tiny_keep(monkeypatch):
    monkeypatch.setattr(skeleton, "KEEP_PER_BODY", 40)
    monkeypatch.setattr(skeleton, "KEEP_TOTAL", 200)


@contextlib.contextmanager
def large_split(path: Path) -> Iterator[mime.Split]:
    """The message at ``path`` split the large-message way (its file stays open)."""
    with MessageFile(path) as source:
        split = mime._split_large(source, 20, 1000, decoding.memory_file)
        try:
            yield split
        finally:
            split.close()


def same_objects(ours: mime.Split, reference: mime.Split) -> None:
    assert [(o.path, o.name, o.content_type) for o in ours.objects] == [
        (o.path, o.name, o.content_type) for o in reference.objects
    ]
    for a, b in zip(ours.objects, reference.objects, strict=True):
        assert b"".join(a.blocks()) == b.data, a.path
        assert a.size == len(b.data)


def body(rng: random.Random, size: int, kind: str) -> bytes:
    if kind == "text":
        words = [b"alpha", b"beta", b".dot", b"--dash", b"gamma", b"=3D", b"\xe9t\xe9"]
        lines, total = [], 0
        while total < size:
            line = b" ".join(rng.choice(words) for _ in range(rng.randint(0, 12)))
            lines.append(line)
            total += len(line) + 2
        return b"\r\n".join(lines) + b"\r\n"
    return rng.randbytes(size)


@st.composite
def messages(draw) -> bytes:
    """A MIME tree up to three levels deep: multiparts (mixed, digest), message/rfc822
    parts, leaves of text or binary in 7bit, base64 or quoted-printable, preambles and
    epilogues, lines that begin with dashes but close nothing."""
    rng = random.Random(draw(st.integers(0, 2**32)))

    def leaf() -> bytes:
        kind = draw(st.sampled_from(["text", "binary"]))
        cte = draw(st.sampled_from(["7bit", "base64", "quoted-printable"]))
        if kind == "binary" and cte == "7bit":
            cte = "base64"
        data = body(rng, draw(st.integers(0, 600)), kind)
        ctype = "text/plain" if kind == "text" else "application/octet-stream"
        name = "" if kind == "text" else f'; name="f{rng.randint(0, 99)}.bin"'
        return (
            f"Content-Type: {ctype}{name}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode()
            + encode(data, cte)
        )

    def node(depth: int) -> bytes:
        shape = draw(st.sampled_from(["leaf", "multipart", "message"] if depth < 3 else ["leaf"]))
        if shape == "leaf":
            return leaf()
        if shape == "message":
            return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + node(depth + 1)
        boundary = f"b{depth}-{rng.randint(0, 10**6)}"
        digest = draw(st.booleans())
        head = f'Content-Type: multipart/{"digest" if digest else "mixed"}; boundary="{boundary}"'
        out = head.encode() + b"\r\n\r\n" + body(rng, draw(st.integers(0, 100)), "text")
        for _ in range(draw(st.integers(1, 4))):
            child = node(depth + 1)
            if digest and not child.startswith(b"Content-Type"):
                child = b"\r\n" + child
            out += f"--{boundary}\r\n".encode() + (b"Subject: x\r\n" if digest else b"") + child
            out += b"\r\n"
        out += f"--{boundary}--\r\n".encode() + body(rng, draw(st.integers(0, 80)), "text")
        return out

    return b"From: a@example.org\r\nSubject: generated\r\nMIME-Version: 1.0\r\n" + node(0)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=messages())
def test_the_file_way_sees_what_the_memory_way_sees(raw, tmp_path, tiny_keep):
    path = tmp_path / "message.eml"
    path.write_bytes(raw)
    reference = mime.split(raw)
    with large_split(path) as ours:
        assert ours.limit == reference.limit
        same_objects(ours, reference)
        removed = {o.path: "removed" for o in reference.objects[::2]}
        expected = mime.cure(reference, removed)
        assert b"".join(blocks(mime.cure(ours, removed))) == expected


@pytest.mark.skipif(not TORTURE.is_dir(), reason="needs ../shared/mime-torture")
def test_malformed_mime_reads_the_same_from_the_file(tmp_path, tiny_keep):
    """Each malformed message gives the same objects either way; where the parser reads
    the skeleton otherwise than the builder, the full parse is taken (never fewer bytes)."""
    files = sorted(p for p in TORTURE.rglob("*") if p.is_file())
    assert files
    for path in files:
        raw = path.read_bytes()
        reference = mime.split(raw)
        copy = tmp_path / "m.eml"
        copy.write_bytes(raw)
        with large_split(copy) as ours:
            assert ours.limit == reference.limit, path
            for a, b in zip(ours.objects, reference.objects, strict=True):
                data = b"".join(a.blocks())
                assert data == b.data or (a.defect and b.defect and len(data) >= len(b.data)), (
                    path,
                    a.path,
                )


def test_a_marker_in_the_content_cannot_be_forged(tmp_path, tiny_keep):
    """Text that looks like a marker of another message is only text."""
    with MessageFile(write(tmp_path, b"Subject: x\r\n\r\n" + b"a" * 500)) as other:
        sk_other = skeleton.build(other)
    forged = f"{sk_other.mark}0\r\n".encode() * 3
    raw = b"Subject: y\r\n\r\n" + forged + b"b" * 500 + b"\r\n"
    with large_split(write(tmp_path, raw)) as ours:
        assert b"".join(ours.objects[0].blocks()) == mime.split(raw).objects[0].data


def write(tmp_path: Path, raw: bytes) -> Path:
    path = tmp_path / f"m{len(raw)}.eml"
    path.write_bytes(raw)
    return path


def test_a_large_message_is_read_in_bounded_memory(tmp_path):
    """A 40 MB attachment: the skeleton stays small, the object goes to a scratch file."""
    blob = random.Random(1).randbytes(30 << 20)
    raw = (
        b'Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n'
        b"\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + encode(blob, "base64")
        + b"--b--\r\n"
    )
    path = write(tmp_path, raw)
    with MessageFile(path) as source:
        split = mime.split(source, scratch=decoding.memory_file)
        try:
            assert split.skeleton is not None and len(split.skeleton.data) < skeleton.KEEP_TOTAL
            big = split.objects[1]
            assert big.data == b"" and big.size == len(blob)
            assert b"".join(big.blocks()) == blob
            cured = mime.cure(split, {"2": "gone"})
            assert isinstance(cured, Spliced) and len(cured) < 4096
        finally:
            split.close()


def test_base64_after_padding_is_decoded_and_marked_broken(tmp_path, tiny_keep):
    hidden = b"payload after the padding " * 20
    encoded = base64.b64encode(b"A") + b"\r\n" + encode(hidden, "base64")
    raw = (
        b"Subject: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded
    )
    with large_split(write(tmp_path, raw)) as ours:
        (obj,) = ours.objects
        assert b"".join(obj.blocks()) == b"A" + hidden
        assert obj.defect == "broken base64"


def test_header_edits_of_a_spliced_message_leave_the_body_in_the_file(tmp_path):
    raw = b"Subject: hi\r\nX-Spam-Flag: YES\r\n\r\n" + b"body line\r\n" * 1000
    with MessageFile(write(tmp_path, raw)) as source:
        edited = edits.edit_headers(source.whole(), "[SPAM]")
        assert isinstance(edited.pieces[-1], FileRange)
        assert b"".join(edited.blocks()) == edits.edit_headers(raw, "[SPAM]")
        assert edits.has_untrusted_headers(source.whole())


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.sampled_from([b"", b".", b"..x", b"text", b"-- x", b"y" * 1500, b".lead", b" fold"]),
        max_size=60,
    ),
    size=st.integers(1, 300),
)
def test_the_sender_streams_what_it_would_have_sent_at_once(lines, size):
    """Blocks of any size give the same folded, dot-stuffed bytes as the whole message."""
    message = b"Subject: s\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    envelope = {"headers": ["X-Mailgate-Queue-ID: 1"]}
    whole = fold_long_lines(b"X-Mailgate-Queue-ID: 1\r\n" + message)
    streamed = list(sent_blocks(envelope, Spliced((message,)), size))
    assert b"".join(streamed) == whole

    class Wire:
        def __init__(self):
            self.sent = b""

        def send(self, data):
            self.sent += data

        def getreply(self):
            return 250, b"ok"

    one, many = Wire(), Wire()
    send_body(one, [whole])
    send_body(many, iter(streamed))
    assert many.sent == one.sent
    reference = smtplib.quotedata(whole.decode("latin-1")).encode("latin-1")
    assert one.sent == reference + b".\r\n"
