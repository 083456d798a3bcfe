"""What a scanner reports about each message: its journal line and metrics, the quarantine
copy, the notices, the anti-virus headers (a mixin of ``Scanner``, kept apart so that the
scanner's module reads as the order of a message's handling)."""

from __future__ import annotations

from mailgate import __version__
from mailgate.message.content import Content
from mailgate.scan import notify
from mailgate.scan.inspection import Inspection, virus_headers


class Reporting:
    def _account(
        self, envelope: dict, status: str, found: list[str], spam, actions: list[str]
    ) -> None:
        """Count one scanned message and write its journal line."""
        m = self.metrics
        m.scanned.inc()
        m.virus_status.labels(status).inc()
        if spam is not None:
            m.spam_status.labels(spam.status).inc()
        for action in dict.fromkeys(actions):
            m.actions.labels(action).inc()
        hits, misses = self.ichecker.hits, self.ichecker.misses
        seen_hits, seen_misses = self._ichecker_seen
        m.ichecker_hits.inc(max(0, hits - seen_hits))
        m.ichecker_lookups.inc(max(0, hits + misses - seen_hits - seen_misses))
        self._ichecker_seen = (hits, misses)
        self.journal.write(
            "scanned",
            envelope["id"],
            **{"from": envelope["mail_from"]},
            to=[r["address"] for r in envelope["recipients"]],
            virus=status,
            viruses=found,
            spam=spam.status if spam is not None else None,
            score=round(spam.score, 2) if spam is not None else None,
            rules={k: round(v, 2) for k, v in spam.rules.items()} if spam is not None else None,
            actions=list(dict.fromkeys(actions)),
        )

    def _quarantine(self, raw: Content, envelope: dict, status: str) -> None:
        self.spool.quarantine(raw, envelope, status)
        self.journal.write("quarantined", envelope["id"], status=status)
        self.counters["quarantined"] += 1
        self.metrics.quarantined.labels(status).inc()

    def _headers(self, inspection: Inspection) -> list[str]:
        if not self.engine_name:
            self.engine_name = self.engine.engine_version()
        return virus_headers(
            inspection, f"mailgate {__version__}, {self.engine_name}", self.engine.db_version
        )

    def _notify(self, envelope: dict, inspection: Inspection) -> None:
        config, decision = self.config, inspection.decision
        if envelope.get("kind", "message") != "message":
            return
        values = notify.variables(
            config, envelope, inspection.split.subject, decision, inspection.objects
        )
        for kind, to in notify.targets(config, envelope, decision):
            qid = notify.queue(
                self.spool, config, kind, decision.status, to, values, envelope["id"]
            )
            if qid:
                self.counters[f"notice_{kind}"] += 1
                self.metrics.notifications.labels(kind).inc()
                self.log.info(
                    "notice_queued", qid=envelope["id"], notice=qid, kind=kind, to=",".join(to)
                )
