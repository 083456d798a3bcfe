"""A full disk is a state, not a crash: the spool on a small tmpfs, filled to the last block
while acknowledged mail is in every queue and a scanner is killed, then freed.

Needs mount(2) (root in a machine that allows it); skipped with the reason where it does not.
"""

from __future__ import annotations

import collections
import errno
import os
import signal
import smtplib
import subprocess
from pathlib import Path

import pytest
from support import make_message, wait_for

SPOOL_SIZE = "40m"
FLOOR = 6 * 2**20


def mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SPOOL_SIZE},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system for the spool: {done.stderr.strip()}")


def fill(path: Path, leave: int = 0) -> int:
    """Write ``path`` until the file system has ``leave`` bytes free (0: until ENOSPC)."""
    written = 0
    chunk = b"\0" * 65536
    with open(path, "ab", buffering=0) as f:
        while True:
            st = os.statvfs(path)
            room = st.f_bavail * st.f_frsize - leave
            if leave and room <= 0:
                return written
            try:
                written += f.write(chunk[: max(1, min(len(chunk), room))] if leave else chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                return written


def send(port: int, msgid: str, size: int, declared: bool = False) -> tuple[int | None, str]:
    """One message; (the first non-2xx code, or 250 after DATA; its text)."""
    message = make_message(msgid, size=size)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            smtp.ehlo("client.example.org")
            options = [f"SIZE={len(message)}"] if declared else []
            code, text = smtp.mail("sender@example.org", options)
            if code != 250:
                return code, text.decode()
            code, text = smtp.rcpt("user@company.com")
            if code != 250:
                return code, text.decode()
            code, text = smtp.data(message)
            return code, text.decode()
    except smtplib.SMTPResponseException as exc:
        return exc.smtp_code, exc.smtp_error.decode(errors="replace")


@pytest.mark.slow
def test_a_full_spool_refuses_mail_with_452_and_loses_nothing(make_gateway, sink):
    gw = make_gateway(
        f"[smtpgw.limits]\nMinFreeDisk={FLOOR}\nRestartDelay=0.2s\nMaxRestartDelay=1s\n"
        "[smtpgw.retry]\nRetryIntervals=1s\n"
    )
    mount_tmpfs(gw.spool)
    try:
        _flood_fill_and_free(gw, sink)
    finally:
        gw.stop()
        subprocess.run(["umount", "-l", str(gw.spool)], check=False)


def _flood_fill_and_free(gw, sink) -> None:
    gw.start(wait=False)
    gw.wait_ready(timeout=120)
    ballast = gw.spool / "ballast"
    codes: collections.Counter[int | None] = collections.Counter()
    acked: list[str] = []

    # The next hop defers everything until the disk is freed: acknowledged mail piles up.
    sink.rcpt_replies["user@company.com"] = ["451 4.3.0 later"] * 100_000
    fill(ballast, leave=FLOOR + 3 * 2**20)
    for n in range(200):  # until the floor is reached: the receiver must say 452 by itself
        code, text = send(gw.port, f"full-{n}@test", 60_000)
        codes[code] += 1
        if code == 250:
            acked.append(f"<full-{n}@test>")
        elif code == 452:
            assert "4.3.1" in text, text
            break
        else:
            pytest.fail(f"unexpected reply {code} {text}")
    assert codes[452] == 1 and acked, codes

    # A declared SIZE that does not fit is refused at MAIL, before any data is sent.
    code, text = send(gw.port, "declared@test", 4 * 2**20, declared=True)
    assert (code, text[:5]) == (452, "4.3.1"), (code, text)

    # Now every last block: the workers' own writes fail (envelopes, quarantine, journal).
    fill(ballast)
    try:
        wait_for(lambda: "event='storage_failed'" in gw.log(), 60, "a worker to meet the full disk")
    except AssertionError as exc:  # say what the workers were doing instead
        raise AssertionError(f"{exc}\n{gw.log()[-4000:]}") from None
    scanners = gw.pids("scanner")
    os.kill(scanners[0], signal.SIGKILL)  # its claims must come back without a free block
    wait_for(lambda: _exits(gw.log()), 30, "the supervisor to reap the scanner")
    code, _ = send(gw.port, "while-full@test", 1000)
    assert code == 452
    assert gw.process.poll() is None, "the supervisor died on a full disk"

    ballast.unlink()
    sink.rcpt_replies["user@company.com"] = []
    wait_for(lambda: set(acked) <= set(sink.ids()), 120, "every acknowledged message delivered")
    # The receiver looks at the disk at most every Storage.CACHE_SECONDS: the delivery can
    # finish inside that half second after the last refusal, so the first MAIL may still see it.
    replies = []
    wait_for(
        lambda: replies.append(send(gw.port, "after@test", 1000)) or replies[-1][0] == 250,
        10,
        "mail accepted again by itself",
    )
    assert {code for code, _ in replies} <= {250, 452}, replies
    wait_for(lambda: "<after@test>" in sink.ids(), 60, "mail after the disk was freed")
    wait_for(lambda: not gw.queue(), 60, "an empty queue")

    counts = collections.Counter(sink.ids())
    assert [mid for mid, n in counts.items() if n > 1] == []
    assert gw.entries("corrupt") == []
    wait_for(lambda: gw.entries("tmp") == [], 30, "tmp/ to be empty")
    log = gw.log()
    exits = _exits(log)
    assert len(exits) == 1 and f"child={scanners[0]}" in exits[0], exits
    assert "event='processing_failed'" not in log
    assert gw.process.poll() is None


def _exits(log: str) -> list[str]:
    return [line for line in log.splitlines() if "event='worker_exited'" in line]
