"""What an administrator does: restart after a crash, mv by hand, the queue CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

from support import make_message, wait_for

from mailgate.spool import Spool, new_queue_id
from mailgate.spool import envelope as envmod


def _plant(spool_dir, state: str, name_suffix: str = "", body_id: str = "planted@test") -> str:
    """Put a message in the spool the way a worker would have left it."""
    spool = Spool(spool_dir)
    spool.create()
    qid = new_queue_id()
    env = envmod.new(qid, "a@example.org", [envmod.recipient("user@company.com")])
    entry = spool.enqueue(make_message(body_id), env, state="hold")
    os.rename(entry.path, spool_dir / state / (qid + name_suffix))
    return qid


def test_claims_of_a_dead_run_are_recovered_at_start(make_gateway, sink):
    gw = make_gateway()
    a = _plant(gw.spool, "scanning", "@999999", "was-scanning@test")
    b = _plant(gw.spool, "sending", "@999998", "was-sending@test")
    gw.start()
    got = sink.wait_count(2)
    assert sorted(r.message_id for r in got) == ["<was-scanning@test>", "<was-sending@test>"]
    log = gw.log()
    assert f"event='claim_recovered' qid='{a}' to='incoming'" in log
    assert f"event='claim_recovered' qid='{b}' to='ready'" in log


def test_sigkilled_worker_is_restarted_and_its_claim_recovered(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nSenders=1").start()
    (sender,) = gw.pids("sender")
    os.kill(sender, signal.SIGSTOP)  # freeze it so that it holds a claim when killed
    try:
        gw.send(make_message("held@test"))
        wait_for(lambda: gw.entries("ready"), what="the message in ready/")
        # claim it on the frozen sender's behalf, as if it had been mid-delivery
        (qid,) = gw.entries("ready")
        os.rename(gw.spool / "ready" / qid, gw.spool / "sending" / f"{qid}@{sender}")
    finally:
        os.kill(sender, signal.SIGKILL)
    got = sink.wait_count(1)[0]
    assert got.message_id == "<held@test>"
    wait_for(lambda: gw.pids("sender") and gw.pids("sender") != [sender], what="a new sender")
    assert f"event='claim_recovered' qid='{qid}' to='ready'" in gw.log()
    assert f"event='worker_exited' worker='sender-0' child={sender} code=-9" in gw.log()


def test_a_worker_stuck_holding_a_claim_is_killed_and_the_message_goes_on(make_gateway, sink):
    """``MaxClaimTime``: a worker that makes no progress (frozen here, as one caught in a
    loop would be) holds its claims no longer than that; the supervisor kills it, the claim
    goes back counted, and the message is scanned and delivered by the next scanner."""
    gw = make_gateway("[smtpgw.limits]\nMaxClaimTime=2s\nRestartDelay=0.2s").start()
    (scanner,) = gw.pids("scanner")
    os.kill(scanner, signal.SIGSTOP)
    try:
        qid = gw.send(make_message("stuck@test"))
        os.rename(gw.spool / "incoming" / qid, gw.spool / "scanning" / f"{qid}@{scanner}")
        got = sink.wait_count(1)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(scanner, signal.SIGKILL)
    assert got.message_id == "<stuck@test>"
    log = gw.log()
    assert f"event='worker_stuck' child={scanner} qids='{qid}' held_longer_than='2s'" in log
    assert f"event='worker_exited' worker='scanner-0' child={scanner} code=-9" in log
    assert f"event='claim_recovered' qid='{qid}' to='incoming'" in log
    assert "worker_stuck" not in log.split(f"child={scanner} code=-9", 1)[1]


def test_manual_mv_is_picked_up(make_gateway, sink):
    gw = make_gateway().start()
    qid = _plant(gw.spool, "hold", "", "moved-by-hand@test")
    assert gw.queue("hold")[0]["id"] == qid
    os.rename(gw.spool / "hold" / qid, gw.spool / "incoming" / qid)
    assert sink.wait_count(1)[0].message_id == "<moved-by-hand@test>"


def test_queue_cli_hold_release_delete_requeue(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nSenders=0\nScanners=0").start()
    qid = gw.send(make_message("cli@test"))
    rows = gw.queue()
    assert [(r["id"], r["state"], r["sender"], r["recipients"]) for r in rows] == [
        (qid, "incoming", "sender@example.org", ["user@company.com"])
    ]
    text = gw.cli("queue", "list", check=True).stdout
    assert qid in text and "incoming" in text

    assert gw.cli("queue", "hold", qid).returncode == 0
    assert gw.entries("hold") == [qid]
    shown = json.loads(gw.cli("queue", "show", qid, "--json", check=True).stdout)
    assert shown["state"] == "hold" and shown["envelope"]["id"] == qid
    assert "Message-ID: <cli@test>" in gw.cli("queue", "show", qid, check=True).stdout

    assert gw.cli("queue", "release", qid).returncode == 0
    assert gw.entries("incoming") == [qid]  # never scanned: back to the scanner
    assert gw.cli("queue", "release", qid).returncode == 4  # not held

    assert gw.cli("queue", "delete", qid).returncode == 0
    assert gw.queue() == []
    assert gw.cli("queue", "delete", qid).returncode == 3
    bad = gw.cli("queue", "show", "../../etc/passwd")
    assert bad.returncode == 2 and "invalid queue ID" in bad.stderr

    deferred = _plant(gw.spool, "deferred", "", "deferred@test")
    os.utime(gw.spool / "deferred" / deferred, (4_000_000_000, 4_000_000_000))
    out = gw.cli("queue", "requeue", "--deferred", check=True).stdout
    assert out.startswith("1 message")
    assert gw.entries("ready") == [deferred]


def test_claimed_message_is_busy_for_the_cli(make_gateway):
    # no sweep during the test: it would hand back a claim whose owner is no mailgate worker
    gw = make_gateway("[smtpgw.limits]\nSenders=0\nScanners=0\n[smtpgw.process]\nSweepInterval=1h")
    gw.start()
    qid = _plant(gw.spool, "sending", f"@{os.getpid()}", "busy@test")
    result = gw.cli("queue", "delete", qid)
    assert result.returncode == 4 and "being processed" in result.stderr
    assert gw.queue("sending")[0]["owner"] == os.getpid()


def test_check_config_reports_file_and_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "[smtpgw.network]\nListenOn=127.0.0.1:2525\nBogusKey=1\n"
        "[smtpgw.nosuch]\nX=1\n[smtpgw.forward]\nForwardRoute=*@x.com\n"
        "ForwardRoute=*@y.com [127.0.0.1:99999]\n[smtpgw.limits]\nScanners=two\n"
        "MaxMessageSize=big\n[smtpgw.retry]\nMaxQueueLifetime=5 fortnights\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "mailgate", "check-config", "-c", str(conf)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(":")[1] for line in lines] == ["3", "4", "7", "8", "10", "11", "13"]
    assert all(line.startswith(f"{conf}:") for line in lines)
    assert "unknown key 'BogusKey'" in lines[0]
    assert "unknown section [smtpgw.nosuch]" in lines[1]
    assert "port must be 1-65535" in lines[3]


def test_minimal_config_works_from_any_directory(open_base, sink):
    from support import Gateway, free_port

    gw = Gateway(open_base / "min", free_port(), sink.port_number)
    gw.conf.write_text(
        f"[smtpgw.network]\nListenOn=127.0.0.1:{gw.port}\n"
        "ProtectedDomains=company.com\nTrustedNetworks=127.0.0.1\n"
        f"[smtpgw.forward]\nForwardRoute=* [127.0.0.1:{sink.port_number}]\n"
        "[smtpgw.path]\nSpoolDir=spool\n"
    )
    ok = subprocess.run(
        [sys.executable, "-m", "mailgate", "check-config", "-c", str(gw.conf)],
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert ok.returncode == 0, ok.stderr
    try:
        gw.start()  # cwd is / : nothing may depend on the working directory
        gw.send(make_message("minimal@test"), to="someone@company.com")
        assert sink.wait_count(1)[0].message_id == "<minimal@test>"
        assert (open_base / "min" / "spool" / "incoming").is_dir()
    finally:
        gw.stop()


def test_unscanned_message_in_ready_goes_back_to_the_scanner(make_gateway, sink):
    gw = make_gateway().start()
    qid = _plant(gw.spool, "ready", "", "unscanned@test")
    got = sink.wait_count(1)[0]
    assert got.message["X-Mailgate-Queue-ID"] == qid
    # the scanner logs after its hand-off, so the sender may deliver before the line is out
    wait_for(lambda: f"event='scanned' qid='{qid}'" in gw.log(), 10, "the scanner's log line")
    assert f"event='not_scanned' qid='{qid}'" in gw.log()


def test_workers_die_with_a_killed_supervisor_and_a_new_one_takes_over(make_gateway, sink):
    gw = make_gateway().start()
    workers = [w["pid"] for w in gw.workers()["workers"]]
    gw.process.kill()
    gw.process.wait()
    wait_for(lambda: not any(_alive(pid) for pid in workers), what="the workers to exit")
    gw.start()
    gw.send(make_message("after-kill@test"))
    assert sink.wait_count(1)[0].message_id == "<after-kill@test>"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_corrupt_message_can_be_shown_and_requeued(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nScanners=0\nSenders=0").start()
    qid = _plant(gw.spool, "corrupt", "", "poison@test")
    (gw.spool / "corrupt" / qid / "reason.txt").write_text("killed its scanner 3 times\n")
    shown = gw.cli("queue", "show", qid, check=True).stdout
    assert "reason: killed its scanner 3 times" in shown
    assert gw.cli("queue", "requeue", qid).returncode == 0
    assert gw.entries("incoming") == [qid]
    assert not (gw.spool / "incoming" / qid / "reason.txt").exists()
    bad = _plant(gw.spool, "corrupt", "", "broken@test")
    (gw.spool / "corrupt" / bad / "envelope.json").write_text("{broken")
    result = gw.cli("queue", "show", bad)
    assert result.returncode == 4 and "unreadable envelope" in result.stderr


def test_corrupt_is_never_silent(make_gateway, sink):
    """What lands in corrupt/ is logged at error level and reported to the Administrator."""
    gw = make_gateway("[smtpgw.notify]\nAdministrator=admin@company.com\n").start()
    qid = _plant(gw.spool, "corrupt", "", "aside@test")
    (gw.spool / "corrupt" / qid / "reason.txt").write_text("killed its scanner 3 times\n")
    notice = wait_for(
        lambda: [r for r in sink.received if "corrupt/" in (r.message["Subject"] or "")],
        timeout=40,
        what="the corrupt/ notice",
    )[0]
    assert notice.rcpt_tos == ["admin@company.com"] and qid in notice.message["Subject"]
    assert b"killed its scanner 3 times" in notice.content
    logged = [x for x in gw.log().splitlines() if f"event='message_corrupt' qid='{qid}'" in x]
    assert logged and "level='error'" in logged[0]
    depths = json.loads(gw.cli("stats", "--json", check=True).stdout)["queues"]
    assert depths["corrupt"] == 1


def test_spool_files_are_not_readable_by_others(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nSenders=0\n").start()
    qid = gw.send(make_message("private@test"))
    wait_for(lambda: gw.entries("ready") == [qid], what="the scanned message")
    exposed = [
        str(path)
        for path in gw.spool.rglob("*")
        if not path.is_symlink() and path.stat().st_mode & 0o077
    ]
    assert exposed == []
