"""MIME nesting is measured before parsing, without recursion, so no depth crashes the scanner."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.scan import mime

LEAF = b"Content-Type: text/plain\r\n\r\nhello\r\n"


def multipart_of(children: list[bytes], boundary: bytes) -> bytes:
    parts = b"".join(b"--" + boundary + b"\r\n" + child + b"\r\n" for child in children)
    return (
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n'
        b"preamble\r\n" + parts + b"--" + boundary + b"--\r\nepilogue\r\n"
    )


def message_of(child: bytes) -> bytes:
    return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + child


trees = st.recursive(
    st.just(("leaf",)),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda c: ("multipart", c)),
        inner.map(lambda c: ("message", c)),
    ),
    max_leaves=12,
)


def render(tree, counter=None) -> tuple[bytes, int]:
    """The entity's bytes and its container depth."""
    counter = counter if counter is not None else [0]
    if tree[0] == "leaf":
        return LEAF, 0
    if tree[0] == "message":
        body, depth = render(tree[1], counter)
        return message_of(body), depth + 1
    counter[0] += 1
    boundary = b"b%d" % counter[0]  # b1, b10 …: prefixes of each other on purpose
    rendered = [render(child, counter) for child in tree[1]]
    return multipart_of([r[0] for r in rendered], boundary), 1 + max(r[1] for r in rendered)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_measured_depth_is_the_structure_depth(tree):
    body, depth = render(tree)
    raw = b"From: a@example.org\r\nMIME-Version: 1.0\r\n" + body
    assert mime.nesting_depth(raw, 1000) == depth


def test_a_thousand_levels_are_a_limit_not_a_crash():
    for wrap in (lambda x, i: multipart_of([x], b"z%d" % i), lambda x, i: message_of(x)):
        deep = LEAF
        for i in range(1000):
            deep = wrap(deep, i)
        raw = b"From: a@example.org\r\nSubject: deep\r\n" + deep
        started = time.monotonic()
        split = mime.split(raw, max_depth=20)
        assert split.limit.startswith("limit:depth"), split.limit
        assert split.subject == "deep" and split.objects == []
        assert time.monotonic() - started < 5


def test_siblings_are_not_depth():
    many = multipart_of([message_of(LEAF) for _ in range(300)], b"outer")
    raw = b"From: a@example.org\r\n" + many
    assert mime.nesting_depth(raw, 1000) == 2
    assert not mime.too_deep(raw)
    assert len(mime.split(raw, max_depth=20, max_parts=2000).objects) == 300
