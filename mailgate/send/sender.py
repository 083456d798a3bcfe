"""Sender stage: ready/ → next MTA, with per-recipient results.

For one claimed message: group the pending recipients by next hop (routing), run one SMTP
transaction per hop over a cached connection, and record each recipient's result:
2xx delivered, 5xx failed (bounce DSN when NOTIFY asks and the sender is not null),
4xx or no connection stays pending (the message goes to deferred/ with back-off, and is
bounced once older than MaxQueueLifetime). A delay DSN goes out once after DelayWarningAfter
for recipients whose NOTIFY includes DELAY.

Duplicate window (at-least-once): between the next hop's 250 after DATA and the durable
record of that result. The record is written right after each hop's transaction (envelope
rewrite, or removal of the message when nothing is left), so the window is one fsync long.
A crash there re-sends to that hop only. DSNs are queued before the results that cause them
are recorded, so a crash may duplicate a DSN but never lose one.
"""

from __future__ import annotations

import smtplib
import time
from collections import defaultdict
from pathlib import Path

from mailgate.config import Config
from mailgate.message.content import Content, MessageFile, blocks, head
from mailgate.runtime import stats
from mailgate.runtime.worker import RESCAN_INTERVAL, Worker
from mailgate.send import dsn
from mailgate.send.client import (
    Connections,
    describe,
    envelope_command,
    reply_text,
    send_body,
    sent_blocks,
    sent_size,
)
from mailgate.send.routing import RouteError, Router, Target
from mailgate.spool import Entry, new_queue_id
from mailgate.spool import envelope as envmod
from mailgate.spool.journal import Journal

PIPELINE_RCPTS = 100


class Sender(Worker):
    role = "sender"
    source = "ready"

    def __init__(self, config: Config, snapshot=None):
        super().__init__(config, snapshot)
        self.router = Router(config)
        self.connections = Connections(config)
        self.metrics = stats.metrics()
        self.journal = Journal(self.spool, "sender")

    def reconfigure(self, config: Config) -> None:
        super().reconfigure(config)
        self.connections.expire(force=True)
        self.router = Router(config)
        self.connections = Connections(config)

    def housekeeping(self) -> float:
        moved, next_due = self.spool.promote_due()
        for queue_id in moved:
            self.log.info("requeued", qid=queue_id, reason="retry due")
        self.connections.expire()
        wait = min(RESCAN_INTERVAL, self.config.connection_cache_time)
        if next_due is not None:
            wait = min(wait, max(0.05, next_due - time.time()))
        return wait

    def close(self) -> None:
        self.connections.expire(force=True)

    # ------------------------------------------------------------ one message

    def process(self, entry: Entry) -> None:
        envelope = entry.read_envelope()
        if not envelope.get("scanned"):
            # fail closed: whatever put it in ready/ (a hand-made mv, a hand-off undone by a
            # power loss), nothing leaves unscanned
            envmod.record(envelope, "incoming", self.role)
            self.spool.release(entry, "incoming", envelope)
            self.log.warning("not_scanned", qid=entry.id, to="incoming")
            return
        with MessageFile(entry.message_path) as source:
            self._attempt(entry, envelope, source.content())

    def _attempt(self, entry: Entry, envelope: dict, message: Content) -> None:
        envelope["attempts"] = envelope.get("attempts", 0) + 1
        groups: dict[tuple[Target, ...], list[dict]] = defaultdict(list)
        for rcpt in envmod.pending(envelope):
            try:
                groups[tuple(self.router.targets(rcpt["address"]))].append(rcpt)
            except RouteError as exc:
                code = 450 if exc.temporary else 550
                self._result(envelope, rcpt, f"{code} {exc}", None)
        hops = list(groups.items())
        for index, (targets, rcpts) in enumerate(hops):
            self._deliver(envelope, message, targets, rcpts)
            if index < len(hops) - 1 and any(r["status"] != envmod.PENDING for r in rcpts):
                self.spool.write_envelope(entry, envelope)
        self._finish(entry, envelope, message)

    def _result(self, envelope: dict, rcpt: dict, reply: str, target: Target | None) -> None:
        """Record one recipient's reply; 4xx leaves it pending for a later attempt."""
        rcpt["reply"] = reply
        rcpt["remote"] = target.host if target else None
        rcpt["at"] = time.time()
        if reply[0] == "2":
            rcpt["status"] = envmod.DELIVERED
            self.counters["delivered"] += 1
            self.metrics.delivered.inc()
        elif reply[0] == "5":
            rcpt["status"] = envmod.FAILED
            self.counters["failed_rcpt"] += 1
        else:
            envelope["last_error"] = reply
        self.log.info(
            "delivery",
            qid=envelope["id"],
            to=rcpt["address"],
            relay=str(target) if target else None,
            reply=reply,
            status=rcpt["status"] if reply[0] != "4" else "deferred",
        )

    def _deliver(
        self, envelope: dict, message: Content, targets: tuple[Target, ...], rcpts: list[dict]
    ) -> None:
        """One transaction with the first target that answers; results into ``rcpts``.

        A cached connection that turns out to be closed is replaced once by a fresh one;
        results of a transaction cut short are discarded, as the next hop discards them.
        """
        last_error = "451 4.4.1 no next hop answered"
        for target in targets:
            for _try in range(2):
                fresh = (target.ip, target.port) not in self.connections.open
                try:
                    conn = self.connections.get(target)
                except (OSError, smtplib.SMTPException) as exc:
                    last_error = f"451 4.4.1 connection to {target} failed: {describe(exc)}"
                    break
                try:
                    results, dsn_ok = self._transaction(conn, envelope, message, rcpts)
                except (OSError, smtplib.SMTPException) as exc:
                    conn.close()
                    last_error = f"451 4.4.2 {target}: {describe(exc)}"
                    if fresh or not isinstance(exc, smtplib.SMTPServerDisconnected):
                        break
                    continue
                self.connections.put(target, conn)
                for rcpt, reply in results:
                    self._result(envelope, rcpt, reply, target)
                    if (
                        rcpt["status"] == envmod.DELIVERED
                        and not dsn_ok
                        and envmod.wants(rcpt, "SUCCESS")
                    ):
                        rcpt["status"] = envmod.RELAYED
                return
        for rcpt in rcpts:
            self._result(envelope, rcpt, last_error, None)

    def _transaction(
        self, conn: smtplib.SMTP, envelope: dict, message: Content, rcpts: list[dict]
    ) -> tuple[list[tuple[dict, str]], bool]:
        """MAIL, RCPT per recipient, DATA: each recipient's reply, and whether DSN was on.

        When the next hop announces PIPELINING (RFC 2920), MAIL, the RCPTs and DATA leave in
        one write and their replies are read in order: one round trip where lock-step takes
        two plus one per recipient (on a WAN link, most of a message's time). Lock-step
        otherwise, or past ``PIPELINE_RCPTS`` recipients (their replies must fit the socket
        buffers while we write). A failed transaction ends with RSET, so the cached
        connection starts clean.
        """
        dsn_ok = conn.has_extn("dsn")
        options = []
        if conn.has_extn("size"):
            options.append(f"SIZE={sent_size(envelope, message)}")
        if envelope.get("body") == "8BITMIME" and conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if envelope.get("smtputf8") and conn.has_extn("smtputf8"):
            options.append("SMTPUTF8")
        if dsn_ok and envelope.get("ret"):
            options.append(f"RET={envelope['ret']}")
        if dsn_ok and envelope.get("envid"):
            options.append(f"ENVID={envelope['envid']}")
        conn.command_encoding = "utf-8" if "SMTPUTF8" in options else "ascii"
        mail = envelope_command("MAIL FROM", envelope["mail_from"], options)
        rcpt_commands = []
        for rcpt in rcpts:
            rcpt_options = []
            if dsn_ok and rcpt.get("notify"):
                rcpt_options.append("NOTIFY=" + ",".join(rcpt["notify"]))
            if dsn_ok and rcpt.get("orcpt"):
                rcpt_options.append(f"ORCPT={rcpt['orcpt']}")
            rcpt_commands.append(envelope_command("RCPT TO", rcpt["address"], rcpt_options))
        if conn.has_extn("pipelining") and len(rcpts) <= PIPELINE_RCPTS:
            conn.send("".join(f"{line}\r\n" for line in (mail, *rcpt_commands, "DATA")))
            mail_reply = conn.getreply()
            rcpt_replies = [conn.getreply() for _ in rcpts]
            data_reply: tuple[int, bytes] | None = conn.getreply()
        else:
            mail_reply, rcpt_replies, data_reply = conn.docmd(mail), [], None
            if mail_reply[0] == 250:
                rcpt_replies = [conn.docmd(line) for line in rcpt_commands]
                if any(code in (250, 251) for code, _text in rcpt_replies):
                    data_reply = conn.docmd("DATA")
        results, accepted = [], []
        if mail_reply[0] != 250:
            results = [(rcpt, reply_text(*mail_reply)) for rcpt in rcpts]
        else:
            for rcpt, (code, text) in zip(rcpts, rcpt_replies, strict=True):
                if code in (250, 251):
                    accepted.append(rcpt)
                else:
                    results.append((rcpt, reply_text(code, text)))
        if data_reply is not None and data_reply[0] == 354:
            if accepted:
                final = send_body(conn, sent_blocks(envelope, message))
                return results + [(rcpt, reply_text(*final)) for rcpt in accepted], dsn_ok
            conn.send(".\r\n")  # DATA went ahead in the pipeline of a failed transaction
            conn.getreply()
        elif accepted and data_reply is not None:
            results += [(rcpt, reply_text(*data_reply)) for rcpt in accepted]
        conn.rset()
        return results, dsn_ok

    # ------------------------------------------------------------ after the attempt

    def _finish(self, entry: Entry, envelope: dict, message: Content) -> None:
        now = time.time()
        pending = envmod.pending(envelope)
        age = now - envelope["received_at"]
        if pending and age >= self.config.max_queue_lifetime:
            for rcpt in pending:
                rcpt["status"] = envmod.FAILED
                rcpt["reply"] = (
                    f"550 5.4.7 message expired after {envelope['attempts']} "
                    f"attempts; last error: {rcpt.get('reply') or 'none'}"
                )
            pending = []
        newly_failed = [
            r
            for r in envelope["recipients"]
            if r["status"] == envmod.FAILED and not r.get("reported")
        ]
        if newly_failed:
            self.metrics.bounced.inc(len(newly_failed))
            self.journal.write(
                "bounced",
                entry.id,
                to=[r["address"] for r in newly_failed],
                replies=_replies(newly_failed),
            )
        self._report(envelope, message, newly_failed, "failed")
        relayed = [
            r
            for r in envelope["recipients"]
            if r["status"] == envmod.RELAYED and not r.get("reported")
        ]
        self._report(envelope, message, relayed, "relayed")
        if pending and not envelope.get("warned") and age >= self.config.delay_warning_after:
            delayed = [r for r in pending if envmod.wants(r, "DELAY")]
            if delayed:
                self._report(
                    envelope,
                    message,
                    delayed,
                    "delayed",
                    envelope["received_at"] + self.config.max_queue_lifetime,
                )
            envelope["warned"] = True
        if not pending:
            delivered = [
                r
                for r in envelope["recipients"]
                if r["status"] in (envmod.DELIVERED, envmod.RELAYED)
            ]
            if delivered:
                self.metrics.latency_seconds.observe(max(0.0, now - envelope["received_at"]))
                kind = envelope.get("kind", "message")
                extra = {} if kind == "message" else {"kind": kind}
                to = [r["address"] for r in delivered]
                self.journal.write(
                    "delivered", entry.id, to=to, replies=_replies(delivered), **extra
                )
            if delivered and self.config.archive_sent:
                self._archive_sent(envelope, message)
            self.spool.remove(entry)
            self.log.info(
                "done",
                qid=entry.id,
                attempts=envelope["attempts"],
                delivered=sum(
                    r["status"] in (envmod.DELIVERED, envmod.RELAYED)
                    for r in envelope["recipients"]
                ),
                failed=sum(r["status"] == envmod.FAILED for r in envelope["recipients"]),
            )
            return
        intervals = self.config.retry_intervals
        delay = intervals[min(envelope["attempts"], len(intervals)) - 1]
        next_attempt = min(now + delay, envelope["received_at"] + self.config.max_queue_lifetime)
        envelope["next_attempt"] = next_attempt
        envmod.record(envelope, "deferred", self.role)
        self.spool.defer(entry, envelope, next_attempt)
        self.journal.write(
            "deferred",
            entry.id,
            to=[r["address"] for r in pending],
            reply=envelope.get("last_error"),
            retry=round(next_attempt),
        )
        self.counters["deferred"] += 1
        self.metrics.deferred.inc()
        self.log.info(
            "deferred",
            qid=entry.id,
            pending=len(pending),
            retry_in=round(next_attempt - now, 1),
            error=envelope.get("last_error"),
        )

    def _archive_sent(self, envelope: dict, message: Content) -> None:
        try:
            self.spool.archive("sent", sent_blocks(envelope, message), envelope, time.time())
        except OSError as exc:
            self.log.error("archive_failed", qid=envelope["id"], error=repr(exc))

    def _report(
        self,
        envelope: dict,
        message: Content,
        rcpts: list[dict],
        action: str,
        retry_until: float | None = None,
    ) -> None:
        """Queue one DSN for ``rcpts`` (those whose NOTIFY asks), then mark them reported."""
        wanted = [
            r
            for r in rcpts
            if envmod.wants(r, {"failed": "FAILURE", "delayed": "DELAY"}.get(action, "SUCCESS"))
        ]
        if wanted and envelope["mail_from"]:
            client = (envelope.get("client") or {}).get("ip", "")
            full = self.config.bounce_content == "full" or (
                bool(client) and self.config.is_trusted(client)
            )
            if len(message) <= dsn.FULL_LIMIT:
                returned = message if isinstance(message, bytes) else b"".join(blocks(message))
            else:  # as Postfix's bounce_size_limit: a large original goes back as headers
                returned, full = head(message, dsn.HEAD_LIMIT), False
            report = dsn.build(
                envelope, returned, wanted, action, self.config.hostname, retry_until, full
            )
            queue_id = new_queue_id()
            report_env = envmod.new(
                queue_id,
                "",
                [envmod.recipient(envelope["mail_from"])],
                size=len(report),
                kind="dsn",
                scanned=True,
                headers=[f"X-Mailgate-Queue-ID: {queue_id}"],
                body="8BITMIME",
                first_state=("ready", self.role),
            )
            self.spool.enqueue(report, report_env, state="ready")
            self.counters[f"dsn_{action}"] += 1
            self.log.info(
                "dsn_queued",
                qid=envelope["id"],
                dsn=queue_id,
                action=action,
                to=envelope["mail_from"],
                rcpts=len(wanted),
            )
        if action != "delayed":
            for rcpt in rcpts:
                rcpt["reported"] = True


def _replies(rcpts: list[dict]) -> list[list]:
    """``[address, reply, next hop]`` of each recipient, for the journal."""
    return [[r["address"], r.get("reply"), r.get("remote")] for r in rcpts]


def run(config: Config, snapshot: Path | None = None) -> int:
    """The ``sender`` worker process (``mailgate worker sender``)."""
    return Sender(config, snapshot).run()
