"""Scanner stage: incoming/ → ready/, one message at a time per process.

Each message passes through the filters in ``FILTERS`` in order. A filter looks at the
message and its envelope and adds to the ``Verdict``: headers for the sender to prepend (the
original ``message.eml`` stays untouched) and, in later stages of the project, a decision
other than delivery. Here the pipeline is a pass-through that stamps the queue ID; the
anti-virus and spam filters plug in as further entries of ``FILTERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mailgate import envelope as envmod
from mailgate.spool import Entry
from mailgate.worker import Worker


@dataclass
class Verdict:
    queue_id: str
    envelope: dict
    message: bytes
    headers: list[str] = field(default_factory=list)


def stamp_queue_id(verdict: Verdict) -> None:
    verdict.headers.append(f"X-Mailgate-Queue-ID: {verdict.queue_id}")


FILTERS: list[Callable[[Verdict], None]] = [stamp_queue_id]


class Scanner(Worker):
    role = "scanner"
    source = "incoming"

    def process(self, entry: Entry) -> None:
        envelope = entry.read_envelope()
        verdict = Verdict(entry.id, envelope, entry.read_message())
        for apply in FILTERS:
            apply(verdict)
        envelope["headers"] = verdict.headers
        envelope["scanned"] = True
        envmod.record(envelope, "ready", self.role)
        self.spool.release(entry, "ready", envelope, durable=False)
        self.counters["scanned"] += 1
        self.log.info("scanned", qid=entry.id, result="pass", to="ready")
