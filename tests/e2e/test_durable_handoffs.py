"""Durable at every hand-off, proved from the system calls of real message lives; and split
copies that neither vanish nor double when the scanner dies between its steps."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from support import make_message, wait_for
from syscalls import check, command

from mailgate.scan.spam import checks
from mailgate.spool import Entry, Spool, derived_id, new_queue_id
from mailgate.spool import envelope as envmod

GROUPS = (
    "[smtpgw.spamtest]\nEnabled=yes\nActionSpam=quarantine\n"
    "Group=management *@management.company.com\nGroupAction=management spam deliver\n"
    "Group=sales *@sales.company.com\nGroupAction=sales spam mark\nSubjectPrefix=[SPAM]\n"
)
WORKERS = "[smtpgw.limits]\nScanners=2\nSenders=2\n"  # the default: two of each at work
RECIPIENTS = ["boss@management.company.com", "rep@sales.company.com", "user@company.com"]


def gtube(msgid: str) -> bytes:
    return make_message(msgid, subject="offer").replace(b"Hello", checks.GTUBE.encode())


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_every_rename_into_spool_state_moves_only_fsynced_data(make_gateway, sink, tmp_path):
    trace = tmp_path / "trace" / "t"
    trace.parent.mkdir()
    gw = make_gateway(GROUPS + WORKERS + "[smtpgw.retry]\nRetryIntervals=1s\n")
    gw.wrapper = command(trace)
    gw.start(wait=False)
    gw.wait_ready(timeout=180)
    # A split (one copy per delivered group, one quarantined), and a deferral then a retry.
    gw.send(gtube("split@test"), to=RECIPIENTS)
    sink.rcpt_replies["late@company.com"] = ["451 4.3.0 later"]
    gw.send(make_message("late@test", to="late@company.com"), to="late@company.com")
    wait_for(lambda: len(sink.received) >= 3, 120, "the copies and the retried message")
    wait_for(lambda: not gw.queue(), 60, "an empty queue")
    # An administrator's moves, from the command line, traced the same way.
    sink.rcpt_replies["held@company.com"] = ["451 4.3.0 later"] * 1000
    qid = gw.send(make_message("held@test", to="held@company.com"), to="held@company.com")
    wait_for(lambda: qid in gw.entries("deferred"), 60, "the deferral")
    for action in ("hold", "release"):
        mailgate = (gw.python, "-m", "mailgate", "queue", "-c", str(gw.conf), action, qid)
        cli = subprocess.run(
            [*command(tmp_path / "trace" / f"cli-{action}"), *mailgate],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
    assert gw.stop() == 0

    report = check(trace, gw.spool)
    for kind in ("incoming", "ready", "deferred", "quarantine", "claim"):
        assert report.handoffs.get(kind), (kind, report.handoffs)
    assert report.violations == []
    for action in ("hold", "release"):
        cli_report = check(tmp_path / "trace" / f"cli-{action}", gw.spool)
        assert sum(cli_report.handoffs.values()) >= 1 and cli_report.violations == []


@pytest.mark.parametrize("recorded", [False, True], ids=["before-recording", "after-recording"])
def test_split_copies_are_neither_lost_nor_doubled_when_the_scanner_died(
    make_gateway, sink, recorded
):
    """The scanner's state at its death is built by hand: copies staged inside the claim,
    the split recorded in the original's envelope (or not yet)."""
    gw = make_gateway(GROUPS + WORKERS)
    spool = Spool(gw.spool)
    spool.create()
    qid = new_queue_id()
    message = gtube("died@test")
    envelope = envmod.new(
        qid, "sender@example.org", [envmod.recipient(a) for a in RECIPIENTS], size=len(message)
    )
    entry = spool.enqueue(message, envelope)
    copy_id = derived_id(qid, 1)
    copy = {
        **envelope,
        "id": copy_id,
        "recipients": [envmod.recipient("rep@sales.company.com")],
        "scanned": True,
        "headers": [f"X-Mailgate-Queue-ID: {copy_id}"],
        "split_from": qid,
    }
    spool.stage_copy(entry, message, copy)
    if recorded:
        spool.write_envelope(
            entry,
            {
                **envelope,
                "recipients": [envmod.recipient("boss@management.company.com")],
                "scanned": True,
                "split_into": [copy_id],
                "headers": [f"X-Mailgate-Queue-ID: {qid}"],
            },
        )
    assert spool.staged_copies(Entry("incoming", qid, entry.where)) == [copy_id]
    gw.start()
    wait_for(lambda: len(sink.received) >= 2, 60, "both copies")
    wait_for(lambda: not gw.queue(), 60, "an empty queue")
    got = sorted(a for r in sink.received for a in r.rcpt_tos)
    assert got == ["boss@management.company.com", "rep@sales.company.com"]
    log = gw.log()
    if recorded:  # finished as it was, not scanned again
        assert "event='split_finished'" in log and "event='scanned'" not in log
    else:  # the staged copy is discarded and the scan done again, to the same IDs
        assert "event='scanned'" in log and f"part='{copy_id}'" in log
        quarantined = json.loads(
            (gw.spool / "quarantine" / "spam" / derived_id(qid, 2) / "envelope.json").read_text()
        )
        assert [r["address"] for r in quarantined["recipients"]] == ["user@company.com"]
