"""Started as root, mailgate binds its ports, then everything runs as ``User`` (mailgate)."""

from __future__ import annotations

import os
import pwd
import socket
import stat
from pathlib import Path

import pytest
from mimebuild import EICAR, TEXT, multipart, part
from support import Gateway, mailgate, make_message, wait_for

from mailgate.scan.spam import bayes

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")

USER = "[smtpgw.process]\nUser=mailgate\n"


def privileged_port() -> int:
    """A free port below 1024: only root may bind it."""
    for port in range(1000, 600, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below 1024")


def uids(pid: int) -> set[int]:
    """Real, effective, saved and file-system uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(x) for x in line.split()[1:]}
    raise AssertionError(f"no Uid line for {pid}")


def test_root_binds_port_below_1024_then_every_process_runs_as_mailgate(open_base, sink):
    mailgate = pwd.getpwnam("mailgate")
    gw = Gateway(
        open_base, privileged_port(), sink.port_number, USER + "[smtpgw.scan]\nMode=protection\n"
    )
    try:
        gw.start()
        table = gw.workers()
        pids = [table["supervisor"]] + [w["pid"] for w in table["workers"]]
        roles = {w["role"] for w in table["workers"]}
        assert {"clamd", "receiver", "scanner", "sender"} <= roles
        for pid in pids:
            assert uids(pid) == {mailgate.pw_uid}, pid

        gw.send(make_message("clean@test"))
        qid = gw.send(multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="v@test"))
        wait_for(lambda: "<clean@test>" in sink.ids(), 60, "the clean message")
        wait_for(lambda: gw.entries("quarantine/infected") == [qid], 60, "the quarantined copy")

        # root's CLI acts as the spool's owner: what it writes, the workers can use
        assert gw.cli("quarantine", "release", qid).returncode == 0
        got = wait_for(
            lambda: [r for r in sink.received if r.message_id == "<v@test>"], 60, "the release"
        )[0]
        assert qid in got.message["X-Mailgate-Released"]

        for folder, dirs, files in os.walk(gw.spool):
            for name in [folder] + [os.path.join(folder, n) for n in dirs + files]:
                st = os.lstat(name)
                assert st.st_uid == mailgate.pw_uid, name
                if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                    assert st.st_mode & 0o077 == 0, f"{name} is {oct(st.st_mode)}"
        assert "privileges_dropped" in gw.log()
    finally:
        assert gw.stop() == 0


def test_a_missing_user_or_an_unreachable_spool_stops_the_start(open_base, tmp_path, sink):
    nobody_here = Gateway(
        open_base / "a", privileged_port(), sink.port_number, "[smtpgw.process]\nUser=nobody-x\n"
    )
    nobody_here.start(wait=False)
    assert nobody_here.process.wait(60) == 8
    assert "no such user 'nobody-x'" in nobody_here.log()

    hidden = Gateway(tmp_path / "b", privileged_port(), sink.port_number, USER)  # under 0700
    hidden.start(wait=False)
    assert hidden.process.wait(60) == 8
    assert "user 'mailgate' cannot run the gateway" in hidden.log()
    assert "cannot use the spool" in hidden.log()

    # a list root can read and the user cannot: every worker would die as it starts
    closed = open_base / "closed"
    closed.mkdir(mode=0o700)
    (closed / "senders.txt").write_text("*@friend.example\n")
    listed = Gateway(
        open_base / "c",
        privileged_port(),
        sink.port_number,
        USER + f"[smtpgw.spamtest]\nWhitelistSenders=file:{closed / 'senders.txt'}\n",
    )
    listed.start(wait=False)
    assert listed.process.wait(60) == 8
    line = next(
        n for n, text in enumerate(listed.conf.read_text().splitlines(), 1) if "file:" in text
    )
    assert (
        f"user 'mailgate' cannot use the configuration as it stands: {listed.conf}:{line}: "
        f"WhitelistSenders: cannot read (Permission denied): '{closed / 'senders.txt'}'"
    ) in listed.log()
    assert "worker_spawned" not in listed.log()


def test_symlinks_planted_in_the_spool_are_refused_not_followed_by_root(open_base, sink):
    """The mailgate user owns the spool, so it could plant links where root would write."""
    victim = open_base / "victim"
    victim.write_text("precious\n")
    gw = Gateway(open_base / "gw", privileged_port(), sink.port_number, USER)
    (gw.spool / "run").mkdir(parents=True)
    (gw.spool / "log").mkdir()
    (gw.spool / "log" / "mailgate.log").symlink_to(victim)
    try:
        gw.start()
        gw.send(make_message("linked@test"))
        wait_for(lambda: "<linked@test>" in sink.ids(), 60, "delivery")
    finally:
        assert gw.stop() == 0
    assert victim.read_text() == "precious\n"
    assert "cannot open log file" in gw.log() and "Too many levels of symbolic links" in gw.log()

    (gw.spool / "run" / "supervisor.lock").unlink(missing_ok=True)
    (gw.spool / "run" / "supervisor.lock").symlink_to(victim)
    gw.start(wait=False)
    assert gw.process.wait(60) == 8
    assert "refusing to start" in gw.log() and "supervisor.lock" in gw.log()
    assert victim.read_text() == "precious\n"


def users_spool(base: Path) -> tuple[Path, Path]:
    """A spool owned by the mailgate user, and a configuration (User=mailgate) naming it."""
    spool = base / "spool"
    spool.mkdir()
    user = pwd.getpwnam("mailgate")
    os.chown(spool, user.pw_uid, user.pw_gid)
    conf = base / "users-spool.conf"
    conf.write_text(f"[smtpgw.path]\nSpoolDir={spool}\n{USER}")
    conf.chmod(0o644)
    return spool, conf


def test_learn_run_by_root_reads_a_users_folder_with_her_rights(open_base):
    """``mailgate learn --spam ~alice/Maildir/.Junk`` run by root: her 0700 folder is read
    (as her), a link she planted to a file only root may read is not followed, and the
    spool's table stays the gateway user's."""
    alice = pwd.getpwnam("nobody")
    secret = open_base / "secret.eml"
    secret.write_bytes(make_message("secret@test").replace(b"Hello", b"secretzorp"))
    secret.chmod(0o600)
    junk = open_base / "home" / "Junk"
    for folder in ("cur", "new", "tmp"):
        (junk / folder).mkdir(parents=True)
    (junk / "cur" / "1:2,S").write_bytes(make_message("junk@test").replace(b"Hello", b"junkzorp"))
    (junk / "cur" / "2:2,S").symlink_to(secret)
    for path in (open_base / "home", junk, *junk.rglob("*")):
        os.lchown(path, alice.pw_uid, alice.pw_gid)
        if not path.is_symlink():
            path.chmod(0o700)
    spool, conf = users_spool(open_base)
    mailgate_user = pwd.getpwnam("mailgate")

    learned = mailgate("learn", "-c", conf, "--spam", junk, timeout=60)
    assert learned.returncode == 0, learned.stderr
    assert "1 learned, 1 unreadable" in learned.stdout
    assert f"{junk / 'cur' / '2:2,S'}: Permission denied (passed over)" in learned.stderr
    table = bayes.Model.load(spool / "spamdb")
    assert "junkzorp" in table.counts and "secretzorp" not in table.counts
    for path in (spool / "spamdb").iterdir():
        assert path.stat().st_uid == mailgate_user.pw_uid, path


def test_update_from_a_folder_closed_to_the_spools_user_is_a_clear_error(open_base):
    """Run by root, ``update`` acts as the spool's owner: a source only root can read is
    exit 3 with the reason, not a traceback."""
    source = open_base / "closed"
    source.mkdir(mode=0o700)
    (source / "local.hdb").write_text("44d88612fea8a8f36de82e1278abb02f:68:Test.Closed\n")
    _spool, conf = users_spool(open_base)
    result = mailgate("update", "-c", conf, "--from", source, timeout=60)
    assert result.returncode == 3, result.stderr
    assert f"cannot read {source}: Permission denied" in result.stderr
    assert "Traceback" not in result.stderr
