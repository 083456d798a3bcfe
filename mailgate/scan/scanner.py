"""Scanner stage: incoming/ → ready/ (or quarantine/, or nowhere).

Up to ``CLAIMS_AT_ONCE`` claims go through three stages together (parse; spam verdict;
objects, decision, hand-off) for the CPU's caches. Before the last, nothing changes but the
removal of copies a dead scanner left staged, which every scan of a message does first.

``Inspector`` (``inspection``) gives a message its verdict; ``mailgate scan`` uses it alone,
the ``Scanner`` worker then carries the decision out, in an
order that survives a crash at any point: quarantine copy, notices, then the cured message
replaces the original (or the message is removed when blocked), then the move to ready/.
A crash before the move means the message is scanned again; a cured message is clean the
second time, so nothing is quarantined or notified twice except a notice queued just before
the crash.

Never deliver unscanned: when clamd does not answer, the message goes back to incoming/
untouched and this scanner takes only messages older than ScanRetryTime until clamd answers
PING again; those it scans without clamd, their objects ``unscannable`` (reason
``engine:unavailable``), so that no message waits without bound. When clamd answers with an
error, times out or answers what pyclamd cannot read, the attempt is counted in
``scan_failures``, the message goes back and the scanner rests (longer each time); at
ScanAttempts the objects it could not scan are ``unscannable`` and their action applies. None
of this counts as a crash: ``crashes`` is for the scanner's own deaths.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

from mailgate.config import Config
from mailgate.message.content import Content, MessageFile
from mailgate.message.headers import field_names, header_field
from mailgate.runtime import stats
from mailgate.runtime.cluster import Cluster
from mailgate.runtime.worker import RESCAN_INTERVAL, Worker
from mailgate.scan import authn, edits, mime, notify, policy
from mailgate.scan.av import avdb
from mailgate.scan.av.engine import EngineUnavailable, ObjectError
from mailgate.scan.av.ichecker import IChecker
from mailgate.scan.inspection import (
    Inspection,
    Inspector,
    engine_for,
    spam_headers,
    status_header,
)
from mailgate.scan.policy import Decision
from mailgate.scan.reporting import Reporting
from mailgate.scan.spam import learning, trust
from mailgate.scan.spam.spamtest import Spamtest, SpamVerdict
from mailgate.scan.splitting import Splitting
from mailgate.spool import Entry, derived_id, id_time
from mailgate.spool import envelope as envmod
from mailgate.spool.journal import Journal

ENGINE_RETRY = 1.0
CLAIMS_AT_ONCE = 16
HEADER_READ = 1 << 20


class Scanner(Reporting, Splitting, Worker):
    role = "scanner"
    source = "incoming"

    def __init__(self, config: Config, snapshot=None):
        super().__init__(config, snapshot)
        self.cluster = Cluster(config)
        self.ichecker = IChecker(
            self.spool.cache_path("ichecker.sqlite3"), config.ichecker_size, self.cluster
        )
        self.engine = engine_for(config, self.ichecker)
        self.spamtest = self._spam_filter(config)
        self.inspector = Inspector(config, self.engine, self._installed, spam=self.spamtest)
        self.engine_down = False
        self.engine_name = ""
        self.metrics = stats.metrics()
        self.journal = Journal(self.spool, "scanner")
        self._ichecker_seen = (0, 0)

    def reconfigure(self, config: Config) -> None:
        super().reconfigure(config)
        self.engine = engine_for(config, self.ichecker)
        self.spamtest = self._spam_filter(config)
        self.inspector = Inspector(config, self.engine, self._installed, spam=self.spamtest)

    @property
    def claims_at_once(self) -> int:
        """A batch only when the scanner looks inside messages: else it would gain nothing."""
        return CLAIMS_AT_ONCE if _scans(self.config) else 1

    def _spam_filter(self, config: Config) -> Spamtest | None:
        """The spam filter of ``config``; a rule line that does not parse is logged as an
        error (``check-config`` refuses it), never dropped without a word."""
        if not config.spam_enabled:
            return None
        spamtest = Spamtest(config, self.spool)
        for problem in spamtest.problems:
            self.log.error("spam_rule_invalid", problem=problem)
        return spamtest

    def _installed(self) -> str | None:
        """The database version installed in the spool (one readlink), when we manage it."""
        return avdb.current_version(self.spool) if self.config.manage_clamd else None

    def close(self) -> None:
        self.ichecker.close()

    def wanted(self, queue_id: str) -> bool:
        return not self.engine_down or self._waited_too_long(id_time(queue_id))

    def _waited_too_long(self, received_at: float) -> bool:
        return time.time() - received_at >= self.config.scan_retry_time

    def housekeeping(self) -> float:
        if self.spamtest is not None and learning.queued(self.spool):
            shipped = self.config.shipped("spam_database", "spamdb")
            if merged := learning.merge_if_free(self.spool, shipped, self.cluster):
                self.log.info("autolearn_merged", messages=merged)
        return ENGINE_RETRY if self.engine_down else RESCAN_INTERVAL

    def run_pass(self) -> bool:
        if self.engine_down and self.engine.ping():
            self.engine_down = False
            self.log.info("engine_available", socket=self.engine.socket_path)
        return super().run_pass()

    def update_counters(self) -> None:
        self.counters["ichecker_hits"] = self.ichecker.hits
        self.counters["ichecker_misses"] = self.ichecker.misses
        self.counters["ichecker_hit_rate"] = self.ichecker.hit_rate
        self.counters["ichecker_shared_hits"] = self.ichecker.shared_hits
        self.counters["cluster_fallbacks"] = self.cluster.fallbacks
        if self.engine is not None:
            self.counters["clamd_objects"] = self.engine.scanned
            self.counters["clamd_ms"] = round(self.engine.scan_seconds * 1000)

    def steps(self, entry: Entry) -> Iterator[None]:
        """Read and parse, spam verdict, anti-virus and the rest (``Worker.steps``).
        ``headers`` collects what the sender prepends to the message as queued."""
        envelope = self.envelope_of(entry)
        if envelope.get("scanned") and envelope.get("split_into") is not None:
            self._finish_split(entry, envelope)
            return
        self.spool.discard_copies(entry)
        headers = [f"X-Mailgate-Queue-ID: {entry.id}"]
        rbl = (envelope.get("client") or {}).get("rbl")
        if rbl:
            headers.append(f"X-Mailgate-RBL: listed in {rbl}")
        headers += authn.result_fields(self.config, envelope)
        if not _scans(self.config):
            if trust.cleaned_up(envelope, self.config.is_trusted):  # else no need to read
                with MessageFile(entry.message_path) as source:
                    names = field_names(source.head(HEADER_READ))
                headers += self._added_fields(envelope, names)
            self._rename_forged(entry, envelope)
            self._to_ready(entry, envelope, headers)
            self.counters["scanned"] += 1
            self._account(envelope, "not-scanned", [], None, ["deliver"])
            self.log.info(
                "scanned", qid=entry.id, status="not-scanned", action="deliver", to="ready"
            )
            return
        with MessageFile(entry.message_path) as source:
            yield from self._scan(entry, envelope, source, headers)

    def _scan(
        self, entry: Entry, envelope: dict, source: MessageFile, headers: list[str]
    ) -> Iterator[None]:
        """A large message is never read whole: it is parsed from the file (``mime.split``),
        its objects are decoded into unnamed files in tmp/, and what goes on is spliced
        from ranges of the file (``Spliced``)."""
        raw = source.content()
        failures = envelope.get("scan_failures", 0)
        started = time.monotonic()
        scratch = self.spool.scratch_file
        message = raw if isinstance(raw, bytes) else source
        try:
            inspection = yield from self.inspector.stages(
                message, failures + 1 >= self.config.scan_attempts, envelope, scratch=scratch
            )
        except EngineUnavailable as exc:
            self.engine_down = True
            self.counters["engine_unavailable"] += 1
            if not self._waited_too_long(envelope.get("received_at", id_time(entry.id))):
                self.spool.unclaim(entry)
                self.log.error("engine_unavailable", qid=entry.id, error=str(exc), to="incoming")
                return
            inspection = self.inspector.inspect(
                message, True, envelope, f"engine:unavailable ({exc})", scratch
            )
        except ObjectError as exc:
            envelope["scan_failures"] = failures + 1
            envmod.record(envelope, "incoming", self.role)
            self.spool.release(entry, "incoming", envelope)
            self.counters["scan_retried"] += 1
            self.log.warning(
                "scan_failed",
                qid=entry.id,
                error=str(exc),
                attempt=failures + 1,
                to="incoming",
                rest=self.take_rest("clamd error"),
            )
            return
        self.metrics.scan_seconds.observe(time.monotonic() - started)
        for stage, seconds in inspection.cpu.items():  # CPU per stage, for scripts/bench
            self.counters[f"cpu_{stage}_us"] += round(seconds * 1e6)
        try:
            self._carry_out(entry, envelope, raw, inspection, headers)
        finally:
            inspection.split.close()

    def _carry_out(
        self, entry: Entry, envelope: dict, raw: Content, inspection: Inspection, headers: list[str]
    ) -> None:
        decision = inspection.decision
        cured: Content = b""
        if decision.deliver and decision.cure:
            try:
                cured = self._cured(envelope, inspection)
            except mime.CureError as exc:
                # What had to go cannot be cut out: keep the original, deliver nothing.
                self.counters["cure_failed"] += 1
                self.log.warning("cure_failed", qid=entry.id, error=str(exc))
                decision = inspection.decision = Decision(
                    decision.status, ("block", "quarantine"), False, [], decision.status
                )
        if decision.deliver and authn.quarantined(envelope):  # DMARC p=quarantine
            decision = Decision(decision.status, ("block", "quarantine"), False, [], "dmarc")
            inspection.decision = decision
        envelope["verdict"] = inspection.public()
        if decision.quarantine:
            self._quarantine(raw, envelope, decision.quarantine)
        if decision.status != "clean":
            self._notify(envelope, inspection)
        self.counters[f"status_{decision.status}"] += 1
        self.counters["scanned"] += 1
        log_fields = dict(qid=entry.id, status=decision.status, action=decision.action)
        log_fields.update(_cpu_fields(inspection))
        found = sorted({o.detail for o in inspection.objects if o.status != "clean" and o.detail})
        actions = decision.action.split(",")
        if decision.status != "clean":
            log_fields["found"] = status_header(inspection)
        if not decision.deliver:
            self.spool.remove(entry)
            self.counters["blocked"] += 1
            self._account(envelope, decision.status, found, inspection.spam, actions)
            self.log.info(
                "scanned", **log_fields, to="quarantine" if decision.quarantine else "nowhere"
            )
            return
        message, changed = raw, False
        if decision.cure:
            message, changed = cured, True
            self.counters["cured"] += 1
        untrusted = edits.UNTRUSTED if self.config.spam_enabled else (b"x-mailgate-",)
        claimed = authn.claimed_id(self.config, envelope)
        if edits.has_untrusted_headers(message, untrusted, claimed):
            message = edits.edit_headers(message, untrusted=untrusted, claimed=claimed)
            changed = True
        if self.engine is not None and self.config.av_headers:
            headers += self._headers(inspection)
        headers += self._added_fields(envelope, inspection.split.message.keys())
        spam = inspection.spam
        if spam is not None:
            self.counters[f"spam_{spam.status}"] += 1
            log_fields.update(spam=spam.status, score=round(spam.score, 2))
            if learned := learning.auto_learn(self.config, self.spool, envelope, spam):
                log_fields["learned"] = learned
        outcomes = policy.spam_outcomes(self.config, envelope, spam.status if spam else "clean")
        kept = [r for r in envelope["recipients"] if r.get("status", "pending") != "pending"]
        delivered = [o for o in outcomes if o.deliver]
        split_into, first = [], delivered[0] if delivered else None
        for index, outcome in enumerate(outcomes):
            queue_id = entry.id if index == 0 else derived_id(entry.id, index)
            if outcome.quarantine:
                copy = {**envelope, "id": queue_id, "recipients": outcome.recipients}
                self._quarantine(raw, copy, "spam")
            if outcome.deliver and outcome is not first:
                fields = headers + self._spam_fields(spam, outcome.mark)
                self._stage_copy(entry, envelope, message, fields, outcome, spam, queue_id)
                split_into.append(queue_id)
        if spam is not None:  # the spam actions, after the anti-virus ones if it found any
            virus_actions = actions if decision.status != "clean" else []
            actions = virus_actions + ([a for o in outcomes for a in o.actions] or ["deliver"])
        if not delivered:
            self.spool.remove(entry)
            self.counters["blocked"] += 1
            self._account(envelope, decision.status, found, spam, actions)
            self.log.info("scanned", **log_fields, spam_action="block", to="nowhere")
            return
        if first.mark:
            message, changed = edits.edit_headers(message, self._prefix(spam), untrusted), True
        if changed:
            self.spool.replace_message(entry, message)
        self._account(envelope, decision.status, found, spam, actions)
        envelope["recipients"] = kept + first.recipients
        if split_into:
            envelope["split_into"] = split_into
        self._to_ready(entry, envelope, headers + self._spam_fields(spam, first.mark))
        if spam is not None:
            log_fields["spam_action"] = ",".join(first.actions)
        self.log.info("scanned", **log_fields, to="ready")

    def _cured(self, envelope: dict, inspection: Inspection) -> Content:
        split, decision = inspection.split, inspection.decision
        return mime.cure(split, notify.removal_notices(self.config, envelope, split, decision))

    def _spam_fields(self, spam: SpamVerdict | None, tagged: bool) -> list[str]:
        """X-Spam-* of a copy: ``Yes`` and the flag exactly when that copy is tagged."""
        return spam_headers(spam, tagged) if spam is not None and self.config.spam_headers else []

    def _added_fields(self, envelope: dict, names) -> list[str]:
        """Date and Message-ID for a trusted client's message that lacks them (``trust``)."""
        config = self.config
        added = trust.missing_fields(names, envelope, config.is_trusted, config.hostname)
        return [header_field(n, v).decode("ascii").removesuffix("\r\n") for n, v in added]

    def _rename_forged(self, entry: Entry, envelope: dict) -> None:
        """Unscanned mail from outside loses Authentication-Results naming us, too."""
        claimed = authn.claimed_id(self.config, envelope)
        if not claimed:
            return
        with MessageFile(entry.message_path) as source:
            raw = source.content()
            if edits.has_untrusted_headers(raw, (), claimed):
                self.spool.replace_message(entry, edits.edit_headers(raw, "", (), claimed))

    def _to_ready(self, entry: Entry, envelope: dict, headers: list[str]) -> None:
        """Hand the message to the senders, marked scanned, with the headers to prepend
        (a DKIM signature over all of it first, when ``authn.signed`` asks for one)."""
        path = entry.message_path
        size = path.stat().st_size
        headers = authn.signed(self.config, envelope, headers, path.read_bytes, size, self.log)
        envelope["headers"] = headers
        envelope["scanned"] = True
        envmod.record(envelope, "ready", self.role)
        if envelope.get("split_into"):
            self.spool.write_envelope(entry, envelope)
            self.spool.hand_on_copies(entry)
            self.spool.release(entry, "ready")
        else:
            self.spool.release(entry, "ready", envelope)


def _scans(config: Config) -> bool:
    """Does this scanner look inside messages?"""
    return config.av_enabled or config.attachments_enabled or config.spam_enabled


def _cpu_fields(inspection: Inspection) -> dict[str, float]:
    """The CPU milliseconds of each stage for this message (``mime_ms``, ``av_ms``,
    ``spam_ms`` when the spam filter judged it), so a slow message shows in its own log
    line and ``scripts/bench`` reports medians, not only the means of the counters."""
    cpu = inspection.cpu
    stages = ("mime", "av", "spam") if inspection.spam is not None else ("mime", "av")
    return {f"{stage}_ms": round(cpu[stage] * 1000, 2) for stage in stages if stage in cpu}


def run(config: Config, snapshot: Path | None = None) -> int:
    """The ``scanner`` worker process (``mailgate worker scanner``)."""
    return Scanner(config, snapshot).run()
