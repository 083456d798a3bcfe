"""The spool on its own: durable enqueue, claims by rename, recovery, poison messages."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest

from mailgate.spool import (
    ID_RE,
    InvalidQueueID,
    NotFound,
    Spool,
    derived_id,
    id_time,
    new_queue_id,
)
from mailgate.spool import envelope as envmod


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool")
    s.create()
    return s


def _enqueue(spool: Spool, body: bytes = b"Subject: x\r\n\r\nbody\r\n") -> str:
    qid = new_queue_id()
    spool.enqueue(body, envmod.new(qid, "a@example.org", [envmod.recipient("b@company.com")]))
    return qid


def test_queue_ids_are_unique_sortable_and_safe():
    ids = [new_queue_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert all(ID_RE.match(i) for i in ids)
    assert all(id_time(a) <= id_time(b) for a, b in itertools.pairwise(ids))
    assert sorted(ids, key=id_time) == sorted(ids)
    other = subprocess.run(
        [sys.executable, "-c", "from mailgate.spool import new_queue_id as n; print(n())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert other not in ids and ID_RE.match(other)


def test_enqueue_writes_message_and_envelope_in_incoming(spool):
    qid = _enqueue(spool, b"hello\r\n")
    entry = spool.find(qid)
    assert entry.state == "incoming"
    assert entry.read_message() == b"hello\r\n"
    assert entry.read_envelope()["id"] == qid
    assert os.listdir(spool.state_dir("tmp")) == []
    assert oct(os.stat(entry.message_path).st_mode & 0o777) == "0o600"


def test_what_an_earlier_attempt_left_under_the_same_name_goes_first(spool):
    qid = new_queue_id()
    left = spool.state_dir("tmp") / f"{qid}@{os.getpid()}"
    left.mkdir()
    (left / "message.eml").write_bytes(b"half a message from a crashed attempt")
    (left / "stray").write_bytes(b"x")
    writer = spool.open_message(qid)
    writer.write(b"Subject: whole\r\n\r\nbody\r\n")
    writer.commit(envmod.new(qid, "a@example.org", [envmod.recipient("b@company.com")]))
    entry = spool.find(qid)
    assert sorted(os.listdir(entry.where)) == ["envelope.json", "message.eml"]
    assert entry.read_message() == b"Subject: whole\r\n\r\nbody\r\n"
    assert os.listdir(spool.state_dir("tmp")) == []


def test_claim_is_exclusive(spool):
    qid = _enqueue(spool)
    first = spool.claim("incoming", qid)
    assert first is not None and first.state == "scanning" and first.owner == os.getpid()
    assert spool.claim("incoming", qid) is None
    spool.release(first, "ready")
    assert spool.names("ready") == [qid]


def test_invalid_ids_never_reach_the_file_system(spool):
    for bad in ("../x", "..", "/etc/passwd", "A" * 20, "a" * 21, "", "ID@1"):
        with pytest.raises(InvalidQueueID):
            spool.find(bad)
    with pytest.raises(NotFound):
        spool.find(new_queue_id())


def test_recovery_returns_claims_and_counts_crashes(spool):
    qid = _enqueue(spool)
    for attempt in (1, 2):
        entry = spool.claim("incoming", qid)
        assert spool.recover(max_attempts=3) == [(qid, "incoming")]
        assert spool.find(qid).read_envelope()["crashes"] == attempt
    entry = spool.claim("incoming", qid)
    assert spool.recover(max_attempts=3) == [(qid, "corrupt")]
    corrupt = spool.find(qid)
    assert corrupt.state == "corrupt"
    assert "MaxAttempts=3" in corrupt.read_reason()
    assert entry.path.exists() is False


def test_recovery_of_one_pid_leaves_other_claims(spool):
    mine, theirs = _enqueue(spool), _enqueue(spool)
    spool.claim("incoming", mine)
    other = Spool(spool.root)
    other.pid = 999999
    other.claim("incoming", theirs)
    assert spool.recover(max_attempts=3, pid=999999) == [(theirs, "incoming")]
    assert spool.find(mine).state == "scanning"


def test_claims_held_together_by_a_dead_worker_do_not_count_towards_corrupt(spool):
    """A scanner holds a batch: which message killed it is unknown, so with MaxAttempts=1
    none of them goes to corrupt/; a claim held alone still counts as before."""
    batch, alone = [_enqueue(spool) for _ in range(3)], _enqueue(spool)
    other, lone = Spool(spool.root), Spool(spool.root)
    other.pid, lone.pid = 999998, 999999
    for qid in batch:
        other.claim("incoming", qid)
    lone.claim("incoming", alone)
    moved = spool.recover(max_attempts=1, alive=lambda pid: False)
    assert sorted(moved) == sorted([(q, "incoming") for q in batch] + [(alone, "corrupt")])
    for qid in batch:
        envelope = spool.find(qid).read_envelope()
        assert envelope["batch_crashes"] == 1 and envelope["crashes"] == 0


def test_unreadable_envelope_goes_to_corrupt(spool):
    qid = _enqueue(spool)
    entry = spool.claim("incoming", qid)
    (entry.path / "envelope.json").write_text("{not json")
    assert spool.recover(max_attempts=3) == [(qid, "corrupt")]
    assert "unreadable envelope" in spool.find(qid).read_reason()


def test_deferred_due_time_is_the_mtime(spool):
    qid = _enqueue(spool)
    entry = spool.claim("incoming", qid)
    spool.defer(entry, entry.read_envelope(), next_attempt=2_000_000_000)
    moved, next_due = spool.promote_due(now=1_999_999_999)
    assert moved == [] and next_due == 2_000_000_000
    assert spool.promote_due(now=2_000_000_000) == ([qid], None)
    assert spool.names("ready") == [qid]


def test_write_envelope_replaces_atomically(spool):
    qid = _enqueue(spool)
    entry = spool.claim("incoming", qid)
    env = entry.read_envelope()
    env["attempts"] = 7
    spool.write_envelope(entry, env)
    assert json.loads((entry.path / "envelope.json").read_text())["attempts"] == 7
    assert sorted(os.listdir(entry.path)) == ["envelope.json", "message.eml"]


def test_large_listing_is_complete_and_ordered(spool):
    """names() is one scandir and a sort (its speed on 100,000 entries: scripts/bench-spool)."""
    for _ in range(20000):
        os.mkdir(spool.state_dir("deferred") / new_queue_id())
    names = spool.names("deferred")
    assert len(names) == 20000 and names == sorted(names)


def test_derived_ids_are_valid_stable_and_distinct():
    qid = new_queue_id()
    copies = [derived_id(qid, n) for n in range(1, 50)]
    assert copies == [derived_id(qid, n) for n in range(1, 50)]
    assert len(set(copies) | {qid}) == 50
    assert all(ID_RE.match(c) and c[:11] == qid[:11] for c in copies)
    assert abs(id_time(copies[0]) - id_time(qid)) < 1e-6
    with pytest.raises(InvalidQueueID):
        derived_id("../etc", 1)


def test_a_failed_write_leaves_nothing_in_tmp(spool, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError):
        spool.enqueue(b"x\r\n", envmod.new(new_queue_id(), "a@b.example", []))
    assert os.listdir(spool.state_dir("tmp")) == []
    assert spool.names("incoming") == []


def test_tmp_is_swept_by_owner_and_by_age(spool):
    tmp = spool.state_dir("tmp")
    mine, dead, old = (tmp / f"{new_queue_id()}@{os.getpid()}", tmp / "x@999999", tmp / "stray")
    for path in (mine, dead, old):
        path.mkdir()
    os.utime(old, (1, 1))
    assert spool.clean_tmp(older_than=3600) == ["stray"]
    assert sorted(spool.clean_tmp(alive=lambda pid: pid == os.getpid())) == ["x@999999"]
    assert os.listdir(tmp) == [mine.name]


def test_unclaim_puts_a_claim_back_without_writing(spool):
    entry = spool.enqueue(b"x\r\n", envmod.new(new_queue_id(), "a@b.example", []))
    claim = spool.claim("incoming", entry.id)
    before = claim.read_envelope()
    back = spool.unclaim(claim)
    assert back.state == "incoming" and back.read_envelope() == before


def test_staged_copies_move_with_one_rename_each(spool):
    entry = spool.enqueue(b"x\r\n", envmod.new(new_queue_id(), "a@b.example", []))
    claim = spool.claim("incoming", entry.id)
    ids = [derived_id(entry.id, n) for n in (1, 2)]
    for qid in ids:
        spool.stage_copy(claim, b"copy\r\n", envmod.new(qid, "a@b.example", []))
    assert spool.staged_copies(claim) == sorted(ids)
    assert spool.hand_on_copies(claim) == sorted(ids)
    assert spool.names("ready") == sorted(ids) and spool.staged_copies(claim) == []
    assert sorted(os.listdir(claim.where)) == ["envelope.json", "message.eml"]
    spool.stage_copy(claim, b"copy\r\n", envmod.new(derived_id(entry.id, 3), "a@b.example", []))
    spool.discard_copies(claim)
    assert spool.staged_copies(claim) == []
