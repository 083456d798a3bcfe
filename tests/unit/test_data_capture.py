"""DATA as the receiver streams it: however the client's bytes are cut into packets (a CRLF
split in two included), the message written, the end of DATA and what follows are the same."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.message.headers import normalise_newlines
from mailgate.receive.data import Capture
from mailgate.spool.files import MessageWriter

pieces = st.lists(
    st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b"x" * 30, b"Subject: s"]),
    max_size=60,
)


def capture_of(
    tmp, cuts: list[int], stream: bytes, line_limit: int = 1000
) -> tuple[bytes, bytes | None, Capture]:
    (tmp / "q").mkdir(exist_ok=True)
    writer = MessageWriter(str(tmp / "w@1"), str(tmp / "q"))
    capture = Capture(writer, 10**6, line_limit)
    rest, start = None, 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if rest is not None or cut <= start:
            continue
        rest = capture.feed(stream[start:cut])
        start = cut
    if rest is not None:
        rest += stream[start:]
    if capture.failed is None:
        writer._flush()
    path = tmp / "w@1" / "message.eml"
    written = path.read_bytes() if path.exists() else b""  # a refused line removes the file
    writer.abort()
    return written, rest, capture


@settings(max_examples=300, deadline=None)
@given(body=pieces, cuts=st.lists(st.integers(0, 400), max_size=40))
def test_any_cutting_of_the_stream_gives_the_same_message(tmp_path_factory, body, cuts):
    text = b"".join(body)
    stuffed = re.sub(rb"(^|\r\n)\.", rb"\1..", text)  # as a client sends it (RFC 5321 4.5.2)
    stream = stuffed + b"\r\n.\r\nQUIT\r\n"
    tmp = tmp_path_factory.mktemp("cap")
    whole, rest_whole, _ = capture_of(tmp, [], stream)
    cut, rest_cut, _ = capture_of(tmp, cuts, stream)
    bytewise, rest_bytes, _ = capture_of(tmp, list(range(len(stream))), stream)
    assert cut == whole == bytewise
    assert rest_whole == rest_cut == rest_bytes == b"QUIT\r\n"
    assert whole == normalise_newlines(text + b"\r\n")


def test_dot_stuffing_is_removed_and_a_bare_lf_dot_does_not_end_data(tmp_path):
    stream = b"..leading\r\nfirst\n.\nstill data\r\n.\r\n"
    written, rest, capture = capture_of(tmp_path, [9, 10, 11, 21], stream)
    assert rest == b""
    assert written == b".leading\r\nfirst\r\n.\r\nstill data\r\n"
    assert capture.failed is None


@settings(max_examples=300, deadline=None)
@given(body=pieces, cuts=st.lists(st.integers(0, 400), max_size=40))
def test_a_line_over_the_limit_is_refused_however_the_stream_is_cut(tmp_path_factory, body, cuts):
    """Whole packets of lines take a faster way than a line at a time: both refuse the same
    over-long lines (a 40-octet limit here) and read to the same end of DATA."""
    stream = re.sub(rb"(^|\r\n)\.", rb"\1..", b"".join(body)) + b"\r\n.\r\nQUIT\r\n"
    tmp = tmp_path_factory.mktemp("lim")
    whole, rest_whole, first = capture_of(tmp, [], stream, 40)
    cut, rest_cut, second = capture_of(tmp, cuts, stream, 40)
    bytewise, rest_bytes, third = capture_of(tmp, list(range(len(stream))), stream, 40)
    assert first.failed == second.failed == third.failed
    assert rest_whole == rest_cut == rest_bytes == b"QUIT\r\n"
    if first.failed is None:
        assert whole == cut == bytewise
