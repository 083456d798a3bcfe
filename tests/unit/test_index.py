"""The search index answers exactly as the file walk does: a generated spool (archives over
several days, quarantine under several statuses, journal files of several writers) is
searched both ways with many filters, then changed by hand (mv, rm, expiry, release, a torn
journal line) and searched again once the indexer has caught up."""

from __future__ import annotations

import os
import random
import shutil
import time

import pytest
from support import mailgate

from mailgate.ops import index, indexer, track
from mailgate.ops.indexer import Indexer
from mailgate.spool import Spool, archive, journal, new_queue_id, quarantine, search
from mailgate.spool import envelope as envmod

DAYS = ["2026-11-28", "2026-11-29", "2026-11-30"]
SENDERS = ["alice@example.org", "bob@shop.example.com", "", "carol@EXAMPLE.org", "x@bank.test"]
SUBJECTS = ["Invoice 42", "invoice overdue", "Лекция", "re: lunch", "", "[SPAM] FREE MONEY"]
RCPTS = ["user@company.com", "sales@company.com", "Boss@Company.com", "ops@sub.company.com"]


def when(day: str, rng: random.Random) -> float:
    return time.mktime(time.strptime(day, "%Y-%m-%d")) + rng.randrange(80000)


def make_message(rng: random.Random, number: int) -> tuple[bytes, dict]:
    sender, subject = rng.choice(SENDERS), rng.choice(SUBJECTS)
    rcpts = rng.sample(RCPTS, rng.randint(1, 3))
    head = f"From: <{sender}>\r\nTo: {', '.join(rcpts)}\r\n"
    if subject:
        head += f"Subject: {subject}\r\n"
    message = (head + f"Message-ID: <{number}@test>\r\n\r\nbody {number}\r\n").encode()
    env = envmod.new(new_queue_id(), sender, [envmod.recipient(r) for r in rcpts])
    return message, env


def test_the_journal_is_read_a_chunk_at_a_time_and_an_overlong_line_is_passed_over(
    spool, monkeypatch
):
    """A rebuild reads each day's journal files from the start: never a whole file at once
    (hundreds of megabytes on a busy node), and a line longer than a chunk (none is) cannot
    stop the reading there."""
    monkeypatch.setattr(indexer, "JOURNAL_CHUNK", 1024)
    reader = Indexer(spool)
    reader.open()
    assert index.counts(reader.db)["events"] == 360
    compare(spool, reader.db)

    log = journal.Journal(spool, "sender-9")
    log.write("delivered", "BEFORE", to=["a@company.com"], replies=[])
    log.write("delivered", "OVERLONG", to=["x" * 3000 + "@company.com"], replies=[])
    for number in range(5):
        log.write("delivered", f"AFTER{number}", to=["a@company.com"], replies=[])
    log.close()
    assert reader.sync_journal() == 6
    qids = {q for (q,) in reader.db.execute("SELECT qid FROM events WHERE file LIKE 'sender-9-%'")}
    assert qids == {"BEFORE", *(f"AFTER{n}" for n in range(5))}
    assert reader.sync_journal() == 0


@pytest.fixture
def spool(tmp_path):
    rng = random.Random(7)
    made = Spool(tmp_path / "spool")
    made.create()
    for number in range(240):
        message, env = make_message(rng, number)
        if number % 3 == 0:
            env["received_at"] = when(rng.choice(DAYS), rng)
            made.quarantine(message, env, rng.choice(["spam", "infected", "dmarc"]))
        else:
            kind = "received" if number % 3 == 1 else "sent"
            made.archive(kind, message, env, when(rng.choice(DAYS), rng))
    for writer in ("receiver-1", "sender-2", "scanner-3"):
        log = journal.Journal(made, writer)
        for number in range(60):
            _m, env = make_message(rng, number)
            log.write(
                "received",
                env["id"],
                **{"from": env["mail_from"]},
                to=[r["address"] for r in env["recipients"]],
                size=100,
                client="127.0.0.2",
            )
            log.write("delivered", env["id"], to=[env["recipients"][0]["address"]], replies=[])
        log.close()
    return made


FILTERS = [
    {},
    {"sender": "*@example.org"},
    {"sender": "*@EXAMPLE.ORG"},
    {"sender": "b?b@*"},
    {"sender": "[ab]*@*"},
    {"sender": ""},
    {"recipient": "boss@company.com"},
    {"recipient": "*@sub.company.com"},
    {"recipient": "*co*"},
    {"subject": "invoice"},
    {"subject": "лекц"},
    {"subject": "re"},
    {"subject": '"'},
    {"since": "2026-11-29"},
    {"until": "2026-11-29", "sender": "*example*"},
    {"since": "2026-11-29", "until": "2026-11-29", "recipient": "user@*", "subject": "in"},
]


def compare(spool: Spool, db) -> None:
    for filters in FILTERS:
        for kind in (None, "received", "sent"):
            walked = list(archive.search(spool, kind, **filters))
            assert index.archive(db, kind, **filters) == walked, (kind, filters)
        for status in (None, "spam"):
            walked = list(search.quarantined(spool, status, **filters))
            assert index.quarantine(db, status, **filters) == walked, (status, filters)
    some = next(iter(spool.archived()))[2].id
    assert index.archive(db, queue_id=some) == list(archive.search(spool, queue_id=some))
    since = time.time() - 3600
    for sender, recipient in [
        (None, None),
        ("*@example.org", None),
        (None, "*@company.com"),
        ("x@bank.test", "ops@*"),
        ("", None),
    ]:
        expected = track.messages(spool, since, sender, recipient)
        got = track.grouped(index.events(db, since, sender, recipient), sender, recipient)
        assert got == expected, (sender, recipient)
        assert expected or sender == ""


def test_index_answers_as_the_files_do_before_and_after_changes_by_hand(spool):
    indexer = Indexer(spool)
    assert indexer.open() is True  # none yet: built
    db = index.open_ready(spool.index_path)
    assert index.counts(db) == {"archive": 160, "quarantine": 80, "events": 360}
    compare(spool, db)
    # mv between days and kinds, rm of a quarantined copy, a release, a whole day expired
    _kind, _day, entry = next(spool.archived("received"))
    other = spool.root / "archive" / "sent" / DAYS[2]
    os.rename(entry.path, other / entry.id)
    status, gone = next(spool.quarantined("spam"))
    shutil.rmtree(gone.path)
    status, freed = next(spool.quarantined("infected"))
    quarantine.release(spool, status, freed)
    shutil.rmtree(spool.root / "archive" / "received" / DAYS[0])
    with open(spool.journal_dir(journal.day_of(time.time())) / "receiver-1.jsonl", "ab") as f:
        f.write(b'{"t": 1, "ev": "received", "qid": "torn')  # a writer cut mid-line
    changed = indexer.sync_paths(
        {
            entry.path,
            os.fspath(other),
            gone.path,
            freed.path,
            os.fspath(spool.root / "archive" / "received"),
            os.fspath(spool.journal_dir(DAYS[0])),
        }
    )
    assert changed > 0
    assert indexer.sync_all() == 0  # the changed folders alone brought it up to date
    compare(spool, db)
    assert index.counts(db)["events"] == 361  # the release; not the torn line
    db.close()


def test_a_damaged_index_is_set_aside_and_rebuilt_and_commands_say_when_they_walk(spool, tmp_path):
    conf = tmp_path / "m.conf"
    conf.write_text(f"[smtpgw.path]\nSpoolDir={spool.root}\n[smtpgw.process]\nUser=\n")
    listing = mailgate("archive", "search", "--sender", "*@example.org", "--json", "-c", conf)
    assert "search index is not ready (no index yet); searched the files" in listing.stderr
    spool.index_path.parent.mkdir(mode=0o700)
    spool.index_path.write_bytes(b"this is not a database" * 100)
    built = mailgate("index", "rebuild", "-c", conf)
    assert built.returncode == 0, built.stderr
    assert (
        "ready" in built.stdout
        and "160 archived, 80 quarantined, 360 journal events" in built.stdout
    )
    assert (spool.index_path.parent / "index.sqlite3.damaged").is_file()
    again = mailgate("archive", "search", "--sender", "*@example.org", "--json", "-c", conf)
    assert again.returncode == 0 and again.stderr == ""
    assert again.stdout == listing.stdout
    quarantined = mailgate(
        "quarantine", "list", "--subject", "invoice", "--since", "2026-11-29", "--json", "-c", conf
    )
    assert quarantined.stderr == "" and quarantined.returncode == 0
    bad = mailgate("quarantine", "list", "--since", "yesterday", "-c", conf)
    assert bad.returncode == 2 and "YYYY-MM-DD" in bad.stderr
    # a half-built index (state building) is not used
    db = index.connect(spool.index_path)
    with db:
        db.execute("UPDATE meta SET value = 'building' WHERE key = 'state'")
    db.close()
    walked = mailgate("track", "--since", "1d", "--json", "-c", conf)
    assert "(index being built)" in walked.stderr


@pytest.mark.parametrize(
    ("mask", "literal"),
    [
        ("*@example.org", "@example.org"),
        ("b?b@x", "b@x"),
        ("[ab]*@longer.example", "@longer.example"),
        ("[!x]yz", "yz"),
        ("", ""),
        ("[unclosed", ""),
    ],
)
def test_the_literal_part_of_a_mask(mask, literal):
    assert index._longest_literal(mask) == literal


def test_indexing_twice_adds_nothing(spool):
    """A rebuild running beside the indexer reads the same files: nothing is doubled."""
    indexer = Indexer(spool)
    indexer.open()
    db = indexer.db
    before = index.counts(db)
    words = db.execute("SELECT COUNT(*) FROM words").fetchone()[0]
    with db:
        db.execute("UPDATE journal_files SET offset = 0")
    assert indexer.sync_journal() == 360  # read again...
    kind, day, entry = next(spool.archived())
    with db:
        index.add_copy(db, "archive", kind, day, archive.summary(kind, day, entry))
    assert index.counts(db) == before  # ...but stored once
    assert db.execute("SELECT COUNT(*) FROM words").fetchone()[0] == words
    compare(spool, db)
