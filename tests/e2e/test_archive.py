"""Archives of received and sent mail: copies, search, export, expiry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from support import make_message, wait_for


def export(gw, queue_id: str, kind: str) -> bytes:
    """``mailgate archive export`` as bytes (CRLF kept)."""
    command = [sys.executable, "-m", "mailgate", "archive", "-c", str(gw.conf), "export"]
    return subprocess.run(
        [*command, queue_id, "--kind", kind], capture_output=True, check=True
    ).stdout


def test_received_and_sent_copies_are_searchable_and_exported(make_gateway, sink):
    gw = make_gateway(  # expiry is asked of the CLI here, not left to the supervisor's sweep
        "[smtpgw.archive]\nReceived=yes\nSent=yes\nRetention=2d\n[smtpgw.process]\nSweepInterval=1h\n"
    ).start()
    first = gw.send(make_message("a1@test", subject="Quarterly report"), sender="ann@example.org")
    second = gw.send(make_message("a2@test", subject="Lunch"), to="bob@company.com")
    sink.wait_count(2)
    wait_for(
        lambda: len(json.loads(gw.cli("archive", "list", "--json", check=True).stdout)) == 4,
        what="two received and two sent copies",
    )
    rows = json.loads(gw.cli("archive", "search", "--sender", "ann@*", "--json", check=True).stdout)
    assert {(r["id"], r["kind"]) for r in rows} == {(first, "received"), (first, "sent")}
    rows = json.loads(
        gw.cli(
            "archive", "search", "--subject", "lunch", "--kind", "sent", "--json", check=True
        ).stdout
    )
    assert [(r["id"], r["recipients"]) for r in rows] == [(second, ["bob@company.com"])]
    today = time.strftime("%Y-%m-%d")
    assert (
        json.loads(
            gw.cli("archive", "search", "--until", "2000-01-01", "--json", check=True).stdout
        )
        == []
    )
    assert (
        len(json.loads(gw.cli("archive", "search", "--since", today, "--json", check=True).stdout))
        == 4
    )
    exported = export(gw, first, "sent")
    delivered = next(r for r in sink.received if r.message_id == "<a1@test>")
    assert exported == delivered.content  # the sent copy is what the next hop got
    received = gw.cli("archive", "export", first, "--kind", "received", check=True).stdout
    assert "X-Mailgate-Queue-ID" not in received and "Quarterly report" in received
    assert gw.cli("archive", "show", "../etc").returncode == 2
    assert gw.cli("archive", "show", "0" * 21).returncode == 3
    assert gw.cli("archive", "search", "--since", "yesterday").returncode == 2

    old = gw.spool / "archive" / "received" / "2000-01-01"
    old.mkdir()
    (old / "README").write_text("not a message")
    out = gw.cli("archive", "expire", check=True).stdout
    assert "received/2000-01-01: expired" in out
    assert not old.exists()
    assert len(os.listdir(gw.spool / "archive" / "received" / today)) == 2


def test_archives_are_off_by_default(gateway, sink):
    gateway.send(make_message("none@test"))
    sink.wait_count(1)
    assert json.loads(gateway.cli("archive", "list", "--json", check=True).stdout) == []
