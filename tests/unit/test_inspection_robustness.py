"""Hostile MIME against the scanner's inspection: random trees and the torture corpus, never a
crash and never more than a few seconds."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import ROOT

from mailgate import config as configmod
from mailgate.scan import mime
from mailgate.scan.inspection import Inspector
from mailgate.scan.spam.spamtest import Spamtest

mime_leaf = st.builds(
    lambda ctype, cte, name, body: (
        (
            f"Content-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n"
            + (f'Content-Disposition: attachment; filename="{name}"\r\n' if name else "")
            + "\r\n"
        ).encode()
        + body
    ),
    st.sampled_from(
        [
            "text/plain",
            "text/html; charset=bogus-8",
            "application/octet-stream",
            "image/png",
            "message/rfc822",
            "multipart/mixed",
            "text/plain; charset=utf-8",
        ]
    ),
    st.sampled_from(["base64", "quoted-printable", "7bit", "8bit", "x-uuencode", "garbage"]),
    st.one_of(st.none(), st.sampled_from(["a.exe", "=?utf-8?b?w6k=?=.scr", "x", "../../etc"])),
    st.binary(max_size=300),
)


def tree(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(
        lambda boundary, parts, close: (
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode()
            + b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts)
            + (f"--{boundary}--\r\n".encode() if close else b"")
        ),
        st.sampled_from(["b1", "b2", "=_x", "", "b1 b2", "a" * 80]),
        st.lists(children, max_size=4),
        st.booleans(),
    )


mime_trees = st.recursive(mime_leaf, tree, max_leaves=25)


@pytest.fixture(scope="module")
def offline_inspector(tmp_path_factory):
    conf = tmp_path_factory.mktemp("mime") / "m.conf"
    conf.write_text(
        "[smtpgw.path]\nSpoolDir=spool\n[smtpgw.antivirus]\nEnabled=no\nMaxDepth=6\n"
        "MaxParts=40\n[smtpgw.spamtest]\nNetwork=no\n"
    )
    config = configmod.load(conf)
    return Inspector(config, None, types=True, spam=Spamtest(config, None, network=False))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=mime_trees, headers=st.binary(max_size=200))
def test_random_mime_trees_never_crash_the_scanner(offline_inspector, body, headers):
    raw = b"From: a@example.org\r\nSubject: t\r\n" + headers + b"\r\nMIME-Version: 1.0\r\n" + body
    started = time.monotonic()
    inspection = offline_inspector.inspect(raw)
    assert inspection.decision.status in ("clean", "banned", "corrupted", "unscannable")
    assert inspection.spam is not None
    removed = {o.path: "removed\n" for o in inspection.split.objects[:2]}
    try:
        cured = mime.cure(inspection.split, removed)
    except mime.CureError:
        pass  # the scanner then quarantines the message and delivers nothing
    else:
        assert isinstance(cured, bytes)
    assert time.monotonic() - started < 5


def test_the_torture_corpus_is_inspected_without_errors(offline_inspector):
    corpus = ROOT.parent / "shared" / "mime-torture"
    files = [p for p in corpus.rglob("*") if p.is_file()] if corpus.is_dir() else []
    if not files:
        pytest.skip("no ../shared/mime-torture beside the repository")
    for path in files:
        inspection = offline_inspector.inspect(path.read_bytes())
        assert inspection.decision.status, path
