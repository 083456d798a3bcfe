"""Learning on site: users' folders (Maildir, mbox, plain files), corrections that move a
message to the other class, ``--forget`` that takes it back out exactly, and auto-learned
messages merged by whichever process finds the table free."""

from __future__ import annotations

import gzip
import mailbox
import os
from email.message import EmailMessage

import pytest
from support import mailgate, spam_envelope

from mailgate import config as configmod
from mailgate.runtime import privileges
from mailgate.runtime.auth import spfcheck
from mailgate.runtime.auth.verdict import Verdict
from mailgate.scan import mime
from mailgate.scan.spam import bayes, learning, spamtest
from mailgate.spool import Spool


def message(n: int, words: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"sender{n}@example.org"
    msg["To"] = "user@company.com"
    msg["Subject"] = f"note {n}"
    msg["Message-ID"] = f"<learn{n}@test>"
    msg.set_content(f"{words} number{n}\n")
    return bytes(msg)


def table(spool_dir) -> bayes.Model:
    return bayes.Model.load(spool_dir / "spamdb")


def setup(tmp_path):
    conf = tmp_path / "l.conf"
    conf.write_text("[smtpgw.path]\nSpoolDir=spool\n")
    return conf, tmp_path / "spool"


def test_maildir_mbox_and_files_are_learned_then_forgotten_exactly(tmp_path):
    conf, spool = setup(tmp_path)
    junk = mailbox.Maildir(tmp_path / "Junk")
    for n in range(3):
        junk.add(message(n, "cheap pills zorblax"))
    box = mailbox.mbox(tmp_path / "NotJunk.mbox")
    for n in range(3, 5):
        box.add(message(n, "meeting agenda quarterly"))
    box.close()
    single = tmp_path / "one.eml"
    single.write_bytes(message(5, "invoice attached"))
    seeded = mailgate("learn", "-c", conf, "--ham", single)
    assert seeded.returncode == 0, seeded.stderr
    base = table(spool)

    spam = mailgate("learn", "-c", conf, "--spam", tmp_path / "Junk")
    ham = mailgate("learn", "-c", conf, "--ham", tmp_path / "NotJunk.mbox")
    assert (spam.returncode, ham.returncode) == (0, 0), spam.stderr + ham.stderr
    assert "3 learned" in spam.stdout and "2 learned" in ham.stdout
    learned = table(spool)
    assert (learned.nspam, learned.nham) == (base.nspam + 3, base.nham + 2)
    assert learned.counts["zorblax"][0] == base.counts.get("zorblax", [0, 0])[0] + 3

    moved = mailgate("learn", "-c", conf, "--ham", tmp_path / "Junk")
    assert "3 moved" in moved.stdout
    after_move = table(spool)
    assert (after_move.nspam, after_move.nham) == (base.nspam, base.nham + 5)

    for path in (tmp_path / "Junk", tmp_path / "NotJunk.mbox"):
        forgot = mailgate("learn", "-c", conf, "--forget", path)
        assert forgot.returncode == 0 and "forgotten" in forgot.stdout, forgot.stderr
    assert table(spool).counts == base.counts
    assert (table(spool).nspam, table(spool).nham) == (base.nspam, base.nham)
    unknown = mailgate("learn", "-c", conf, "--forget", tmp_path / "Junk")
    assert "3 unknown" in unknown.stdout
    assert mailgate("learn", "-c", conf, "--spam", tmp_path / "nope").returncode == 2


def test_what_is_not_a_message_file_is_passed_over_and_never_waited_on(tmp_path):
    """A FIFO (or a link to one) in a folder would block a plain read for ever, a device
    would never end, a huge file would fill memory: each is named and counted, the rest is
    learned, and the command ends."""
    conf, spool = setup(tmp_path)
    conf.write_text(conf.read_text() + "[smtpgw.limits]\nMaxMessageSize=2K\n")
    junk = mailbox.Maildir(tmp_path / "Junk")
    junk.add(message(1, "cheap pills zorblax"))
    cur = tmp_path / "Junk" / "cur"
    os.mkfifo(cur / "fifo:2,S")
    (cur / "link:2,S").symlink_to(cur / "fifo:2,S")
    (cur / "null:2,S").symlink_to("/dev/zero")
    (cur / "big:2,S").write_bytes(message(2, "huge " * 1000))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "one.eml").write_bytes(message(3, "folder note"))
    (folder / "sub").mkdir()  # a folder inside is not a message: not counted
    os.mkfifo(folder / "pipe")
    box = mailbox.mbox(tmp_path / "box.mbox")
    box.add(message(4, "small note"))
    box.add(message(5, "large " * 1000))
    box.close()

    runs = [
        mailgate("learn", "-c", conf, "--spam", tmp_path / "Junk", timeout=60),
        mailgate("learn", "-c", conf, "--ham", folder, timeout=60),
        mailgate("learn", "-c", conf, "--ham", tmp_path / "box.mbox", timeout=60),
    ]
    assert [r.returncode for r in runs] == [0, 0, 0], [r.stderr for r in runs]
    assert "1 learned, 4 unreadable" in runs[0].stdout
    for name, why in (
        ("fifo:2,S", "not a regular file"),
        ("link:2,S", "not a regular file"),
        ("null:2,S", "not a regular file"),
        ("big:2,S", "larger than 2048 bytes"),
    ):
        assert f"{cur / name}: {why} (passed over)" in runs[0].stderr
    assert "1 learned, 1 unreadable" in runs[1].stdout
    assert f"{folder / 'pipe'}: not a regular file" in runs[1].stderr
    assert "1 learned, 1 unreadable" in runs[2].stdout
    assert "box.mbox message 2: larger than 2048 bytes" in runs[2].stderr
    assert table(spool).counts["zorblax"][0] >= 1

    os.mkfifo(tmp_path / "lone-fifo")
    lone = mailgate("learn", "-c", conf, "--spam", tmp_path / "lone-fifo", timeout=60)
    assert lone.returncode == 2 and "not a regular file; nothing learned" in lone.stderr


def test_auto_learned_messages_are_merged_when_the_table_is_free(tmp_path):
    conf, spool_dir = setup(tmp_path)
    config = configmod.load(conf)
    spool = Spool(config.spool_path)
    spool.create()
    shipped = config.shipped("spam_database", "spamdb")
    spamtest.ensure_seeded(spool, shipped)
    base = table(spool_dir)
    tokens = {"auto:zorblax", "auto:frobnicator"}
    learning.queue(spool, "1" * 21, tokens, True)
    learning.queue(spool, "2" * 21, {"auto:agenda"}, False)
    assert learning.queued(spool)
    holder = spamtest.database_lock(spool)
    with holder:  # `mailgate learn` at work: the scanner does not wait, nothing is lost
        assert learning.merge_if_free(spool, shipped) == 0
    assert learning.queued(spool)
    assert learning.merge_if_free(spool, shipped) == 2
    assert not learning.queued(spool)
    merged = table(spool_dir)
    assert merged.counts["auto:zorblax"] == [1, 0] and merged.counts["auto:agenda"] == [0, 1]
    assert (merged.nspam, merged.nham) == (base.nspam + 1, base.nham + 1)
    with gzip.open(spool_dir / "spamdb" / bayes.MODEL_FILE, "rt") as f:
        assert f.readline().startswith("#mailgate-tokens")  # a whole table, loadable


def test_what_is_sure_is_learned_and_trusted_ham_only_when_asked(tmp_path):
    conf, _ = setup(tmp_path)
    conf.write_text(conf.read_text() + "[smtpgw.network]\nTrustedNetworks=10.0.0.0/8\n")
    config = configmod.load(conf)
    spool = Spool(config.spool_path)
    spool.create()

    def verdict(score, status="clean"):
        return spamtest.SpamVerdict(status, score, 5.0, {}, {"tok"})

    def env(n, ip):
        return {"id": str(n) * 21, "client": {"ip": ip}}

    assert learning.auto_learn(config, spool, env(1, "192.0.2.1"), verdict(15, "spam")) == "spam"
    assert learning.auto_learn(config, spool, env(2, "192.0.2.1"), verdict(-4)) == "ham"
    assert learning.auto_learn(config, spool, env(3, "10.1.1.1"), verdict(-4)) is None
    assert learning.auto_learn(config, spool, env(4, "192.0.2.1"), verdict(2)) is None
    listed = verdict(0, "whitelisted")
    assert learning.auto_learn(config, spool, env(5, "192.0.2.1"), listed) is None
    conf.write_text(conf.read_text() + "[smtpgw.spamtest]\nAutoLearnTrustedHam=yes\n")
    asked = configmod.load(conf)
    assert learning.auto_learn(asked, spool, env(6, "10.1.1.1"), verdict(-4)) == "ham"
    assert sorted(p.name[-4:] for p in (spool.spamdb_root / "autolearn").iterdir()) == [
        ".ham",
        ".ham",
        "spam",
    ]


def test_a_reader_streams_every_item_back_and_reports_its_failure(tmp_path):
    """``read_as_owner`` (a child process when run by root): many items in order, through a
    pipe that fills many times over, then the producer's error with its message."""

    def produce(path):
        for n in range(20_000):
            yield [str(path), n, "x" * 20]
        raise ValueError("the folder broke")

    got = []
    with pytest.raises((privileges.ReaderFailed, ValueError), match="the folder broke"):
        for item in privileges.read_as_owner(tmp_path, produce):
            got.append(item)
    assert got == [[str(tmp_path), n, "x" * 20] for n in range(20_000)]


def newsletter(n: int, sender: str = "news@shop.example", to: str = "user@company.com") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Shop News <{sender}>"
    msg["To"] = to
    msg["Subject"] = f"FREE shipping, {n}0% off!!"
    msg["Date"] = "Thu, 03 Dec 2026 10:00:00 +0000"
    msg["Message-ID"] = f"<issue{n}@shop.example>"
    msg.set_content(
        f"Limited time offer number {n}! Click here to order now, 100% satisfaction guaranteed."
        "\nAct now: this special promotion ends soon. To unsubscribe reply with remove.\n"
    )
    return bytes(msg)


def test_a_sender_learned_as_ham_keeps_its_next_issue_out_of_the_spam_folder(tmp_path):
    """``mailgate learn --ham`` of a newsletter's issues (a user's Not-junk) is remembered for
    its address, not for its domain, nor when its From forges the recipient's own domain,
    Reply-To sends answers elsewhere or authentication fails; one spam learned ends it."""
    conf, _ = setup(tmp_path)
    config = configmod.load(conf)
    spool = Spool(config.spool_path)

    def judged(raw: bytes, auth: dict | None = None):
        env = spam_envelope(ip="192.0.2.10")
        return spamtest.Spamtest(config, spool).check(mime.split(raw), {**env, **(auth or {})})

    before = judged(newsletter(9))
    assert before.status != "clean" and "KNOWN_HAM_SENDER" not in before.rules
    for n in (1, 2):
        (tmp_path / f"issue{n}.eml").write_bytes(newsletter(n))
        (tmp_path / f"owner{n}.eml").write_bytes(newsletter(n, "user@company.com"))
    once = mailgate("learn", "-c", conf, "--ham", tmp_path / "issue1.eml")
    assert once.returncode == 0, once.stderr
    assert "KNOWN_HAM_SENDER" not in judged(newsletter(9)).rules  # one issue is not a history
    learned = mailgate("learn", "-c", conf, "--ham", tmp_path / "issue2.eml")
    owner = mailgate("learn", "-c", conf, "--ham", tmp_path / "owner1.eml", tmp_path / "owner2.eml")
    assert (learned.returncode, owner.returncode) == (0, 0), learned.stderr + owner.stderr

    after = judged(newsletter(9))
    weight = after.rules["KNOWN_HAM_SENDER"]
    assert weight < 0 and (before.status, after.status) == ("spam", "probable-spam")
    assert after.score - weight >= after.required  # the sender's history made the difference
    assert "KNOWN_HAM_SENDER" not in judged(newsletter(9, "deals@shop.example")).rules
    assert "KNOWN_HAM_SENDER" not in judged(newsletter(9, "user@company.com")).rules  # forged
    borrowed = newsletter(9).replace(b"To:", b"Reply-To: claims@refund.example\nTo:")
    assert "KNOWN_HAM_SENDER" not in judged(borrowed).rules  # answers would go elsewhere
    same = newsletter(9).replace(b"To:", b"Reply-To: help@support.shop.example\nTo:")
    assert "KNOWN_HAM_SENDER" in judged(same).rules
    failed = Verdict(spfcheck.SPFResult("fail", "mailfrom", "shop.example"), [])
    assert "KNOWN_HAM_SENDER" not in judged(newsletter(9), {"auth": failed.public()}).rules

    toks = learning.tokens_of(newsletter(1))  # learned before addresses were counted: known
    address = {t for t in toks if t.startswith(bayes.HISTORY)}
    assert address and learning.digest(toks) == learning.digest(toks - address)

    (tmp_path / "bad.eml").write_bytes(newsletter(7).replace(b"Limited", b"Cheap pills"))
    assert mailgate("learn", "-c", conf, "--spam", tmp_path / "bad.eml").returncode == 0
    assert "KNOWN_HAM_SENDER" not in judged(newsletter(9)).rules
