"""A worker that claims several messages at once (the scanner) runs them stage by stage, and
a claim that fails, or that the worker must give up, goes back on its own terms: a crash
counted, the others delivered or returned as they came."""

from __future__ import annotations

import errno

import pytest

from mailgate import config as configmod
from mailgate.runtime.worker import Worker
from mailgate.spool import envelope as envmod
from mailgate.spool import new_queue_id

STAGES = 3


class Recorder(Worker):
    """Three stages per message; ``faults[(qid, stage)]`` is raised (or called) there. The
    last stage hands the message on to ready/, the only durable step."""

    role = "scanner"
    claims_at_once = 4

    def __init__(self, config, faults):
        super().__init__(config)
        self.faults = faults
        self.trace: list[tuple[str, int]] = []
        self.closed: list[str] = []
        self.unwanted: set[str] = set()

    def wanted(self, queue_id):
        return queue_id not in self.unwanted

    def steps(self, entry):
        assert self.envelope_of(entry)["id"] == entry.id
        try:
            for stage in range(STAGES):
                fault = self.faults.get((entry.id, stage))
                if callable(fault):
                    fault()
                elif fault is not None:
                    raise fault
                self.trace.append((entry.id, stage))
                if stage < STAGES - 1:
                    yield
            self.spool.release(entry, "ready")
        except GeneratorExit:
            self.closed.append(entry.id)
            raise


@pytest.fixture
def worker_for(tmp_path):
    conf = tmp_path / "mailgate.conf"
    conf.write_text(f"[smtpgw.path]\nSpoolDir={tmp_path / 'spool'}\n")
    config = configmod.load(conf)

    def make(count: int, faults_of=lambda ids: {}) -> tuple[Recorder, list[str]]:
        worker = Recorder(config, {})
        worker.spool.create()
        ids = []
        for _ in range(count):
            qid = new_queue_id()
            envelope = envmod.new(qid, "a@example.org", [envmod.recipient("b@company.com")])
            worker.spool.enqueue(b"Subject: x\r\n\r\nbody\r\n", envelope)
            ids.append(qid)
        worker.faults = faults_of(ids)
        return worker, ids

    return make


def where(worker: Recorder, qid: str) -> tuple[str, int]:
    entry = worker.spool.find(qid)
    return entry.state, entry.read_envelope().get("crashes", 0)


def test_claims_run_stage_by_stage_in_batches_of_claims_at_once(worker_for):
    worker, ids = worker_for(6)
    assert worker.run_pass()
    first, second = ids[:4], ids[4:]
    expected = [(q, s) for s in range(STAGES) for q in first]
    expected += [(q, s) for s in range(STAGES) for q in second]
    assert worker.trace == expected
    assert all(where(worker, q) == ("ready", 0) for q in ids)
    assert worker.counters["processed"] == 6
    assert worker.read_ahead == {}  # each envelope read at the claim was taken by its steps


def test_a_claim_that_fails_goes_back_counted_and_the_rest_of_its_batch_goes_on(worker_for):
    worker, ids = worker_for(4, lambda ids: {(ids[1], 1): ValueError("bad message")})
    worker.run_pass()
    assert where(worker, ids[1]) == ("incoming", 1)
    assert [where(worker, q) for q in ids[:1] + ids[2:]] == [("ready", 0)] * 3
    assert worker.counters["failed"] == 1 and worker.counters["processed"] == 3


@pytest.mark.parametrize("stage", range(STAGES))
def test_a_full_disk_returns_every_claim_not_yet_through_uncounted(worker_for, stage):
    full = OSError(errno.ENOSPC, "No space left on device")
    worker, ids = worker_for(4, lambda ids: {(ids[2], stage): full})
    worker.run_pass()
    through = ids[:2] if stage == STAGES - 1 else []
    for qid in ids:
        assert where(worker, qid) == ("ready" if qid in through else "incoming", 0)
    assert worker.counters["storage_errors"] == 1 and worker.resting_until > 0
    unstarted = {ids[3]} if stage == 0 else set()  # closing it runs nothing
    assert set(worker.closed) == set(ids) - set(through) - {ids[2]} - unstarted
    assert not worker.unreturned


def test_a_rest_begun_inside_a_batch_returns_the_claims_not_yet_through(worker_for):
    worker, ids = worker_for(4)
    worker.faults = {(ids[0], 1): lambda: worker.take_rest("clamd error")}
    worker.run_pass()
    assert worker.trace == [(q, 0) for q in ids] + [(ids[0], 1)]
    assert [where(worker, q) for q in ids] == [("incoming", 0)] * 4
    assert sorted(worker.closed) == sorted(ids)


def test_a_stop_asked_for_inside_a_batch_returns_the_claims_not_yet_through(worker_for):
    worker, ids = worker_for(4)

    def stop():
        worker.stopping = True

    worker.faults = {(ids[3], 0): stop}
    worker.run_pass()
    assert [where(worker, q) for q in ids] == [("incoming", 0)] * 4
    assert worker.trace == [(q, 0) for q in ids]
    assert sorted(worker.closed) == sorted(ids)


def test_claims_no_longer_wanted_inside_a_batch_go_back_uncounted(worker_for):
    """As a scanner's, when clamd goes away while it holds a batch."""
    worker, ids = worker_for(4)
    worker.faults = {(ids[1], 1): lambda: worker.unwanted.update(ids[2:])}
    worker.run_pass()
    assert [where(worker, q) for q in ids] == [("ready", 0)] * 2 + [("incoming", 0)] * 2
    assert sorted(worker.closed) == sorted(ids[2:])
    assert (ids[2], 1) not in worker.trace and (ids[3], 1) not in worker.trace


@pytest.mark.parametrize(
    ("field", "value"), [("crashes", 1), ("batch_crashes", 1), ("size", 256 * 1024 + 1)]
)
def test_a_message_whose_worker_died_or_failed_or_a_large_one_is_processed_alone(
    worker_for, field, value
):
    """So that, should it kill the worker again, the death is its own (``Spool.recover``);
    and so that a batch's memory stays bounded."""
    worker, ids = worker_for(5)
    entry = worker.spool.find(ids[2])
    envelope = entry.read_envelope()
    envelope[field] = value
    worker.spool.write_envelope(entry, envelope)
    worker.run_pass()
    expected = [(q, s) for s in range(STAGES) for q in ids[:2]]
    expected += [(ids[2], s) for s in range(STAGES)]
    expected += [(q, s) for s in range(STAGES) for q in ids[3:]]
    assert worker.trace == expected
    assert all(where(worker, q)[0] == "ready" for q in ids)


def test_a_batch_after_a_rest_goes_through_whole_and_ends_the_rest(worker_for):
    """The first message through ends the rest (``resumed``); that is no reason to stop."""
    worker, ids = worker_for(4)
    worker.take_rest("clamd error")
    worker.resting_until = 0.5  # over, long ago
    worker.run_pass()
    assert [where(worker, q) for q in ids] == [("ready", 0)] * 4
    assert worker.rest == 0.0 and worker.closed == []
