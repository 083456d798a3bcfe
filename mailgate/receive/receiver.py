"""Receiver: SMTP in, durable message in incoming/ out.

Invariants:
- DATA is written to ``tmp/`` as it arrives (``receive.data``), so a session holds one line
  in memory, not the message; 250 after DATA is sent only once the message, its envelope and
  its name are fsync'd in incoming/. Any failure to store answers 451 (452 for want of
  space) and leaves nothing in a queue or in tmp/.
- Bare CR and bare LF in DATA become CRLF before anything looks at the message, so every
  later reader (our scanners, the next hop) sees the same lines and header fields.
- A recipient outside ProtectedDomains from a client outside TrustedNetworks is refused with
  550 5.7.1: the gateway is never an open relay.
- When incoming/ holds MaxQueueSize messages, the spool's file system has less than
  MinFreeDisk free, or the SIZE a client declares (RFC 1870) would not fit above that floor,
  MAIL is answered 452 4.3.1 and the session stays usable; a store that fails for want of
  space answers 452 4.3.1 too and leaves nothing behind. Mail is accepted again by itself
  once space returns (the check is at most half a second old).
- On SIGTERM the listeners close, transactions under way finish, and the next command of any
  session gets 421; sessions still open after ``STOP_GRACE`` seconds are closed.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import signal
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiosmtpd.smtp import Envelope, Session

from mailgate import config as configmod
from mailgate.message.headers import normalise_newlines
from mailgate.receive import restrictions
from mailgate.receive.anvil import AccessList, Anvil
from mailgate.receive.authentication import SenderChecks
from mailgate.receive.data import HEAD_BYTES, Capture, queued_envelope, received_header
from mailgate.receive.gate import Gate
from mailgate.receive.greylisting import Greylisting
from mailgate.receive.rates import Rates
from mailgate.receive.smtp import GatewaySMTP, IntrospectedNames
from mailgate.receive.storing import Storing
from mailgate.receive.verify import Verifier
from mailgate.runtime import log as logmod
from mailgate.runtime import privileges, stats
from mailgate.runtime.cluster import Cluster
from mailgate.runtime.dnsbl import Checker
from mailgate.spool import Spool, new_queue_id
from mailgate.spool.journal import Journal

STOP_GRACE = 30.0
NO_IDLE_TIMER = 30 * 86400.0  # aiosmtpd's own idle timer; GatewaySMTP keeps the real ones


class Receiver(Storing, IntrospectedNames):
    """aiosmtpd handler: policy at MAIL/RCPT, durable queueing at DATA."""

    def __init__(self, config: configmod.Config, spool: Spool):
        self.config = config
        self.spool = spool
        self.log = logmod.get()
        self.executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="store")
        self.counters: collections.Counter[str] = collections.Counter()
        self.metrics = stats.metrics()
        self.journal = Journal(spool, "receiver")
        self.storage = restrictions.Storage(spool)
        self.recipients = restrictions.Recipients(config)
        self.dns = Checker(config.nameservers, config.dns_timeout)
        self.verifier = Verifier(config, self.executor)
        self.sender_checks = SenderChecks(config)
        self.cluster = Cluster(config)
        self.allowed = AccessList(config.list_items(config.client_allow))
        self.rates = Rates(config, self.cluster, self.executor)
        greylist = self.spool.cache_path("greylist.sqlite3")
        self.greylisting = Greylisting(config, self.cluster, greylist, self.executor)

    def reconfigure(self, config: configmod.Config) -> None:
        self.config = config
        self.sender_checks.reconfigure(config)
        self.greylisting.reconfigure(config)
        self.rates.config = config
        self.allowed = AccessList(config.list_items(config.client_allow))
        self.verifier.reconfigure(config)
        self.recipients = restrictions.Recipients(config)
        self.dns = Checker(config.nameservers, config.dns_timeout)

    async def connect_refusal(self, ip: str) -> tuple[str | None, str]:
        """Screen a new client outside TrustedNetworks: the cluster's connection rate (the
        node's own was counted by the anvil), then the ConnectRBL zones: (the refusal or
        None, the mark to carry in ``X-Mailgate-RBL`` when the action is ``mark``)."""
        config = self.config
        if config.is_trusted(ip):
            return None, ""
        if ip not in self.allowed and (refusal := await self.rates.connection_refusal(ip)):
            self.refused("rate")
            return refusal, ""
        if not config.connect_rbl:
            return None, ""
        hit = await self.dns.listed(ip, config.connect_rbl)
        if hit is None:
            return None, ""
        zone, why = hit
        self.counters["rbl_listed"] += 1
        self.log.info("rbl_listed", client=ip, zone=zone, why=why, action=config.connect_rbl_action)
        if config.connect_rbl_action == "mark":
            return None, f"{zone} ({why})"
        self.refused("rbl")
        return f"554 5.7.1 Service unavailable; client [{ip}] blocked using {zone}", ""

    def refused(self, reason: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        stats.rejected(reason)

    # ------------------------------------------------------------ checks

    def helo_refusal(self, session: Session, hostname: str) -> str | None:
        refusal = restrictions.helo_refusal(self.config, hostname, session.peer[0])
        if refusal:
            self.refused("helo")
        return refusal

    async def handle_HELO(self, server, session, envelope, hostname):
        refusal = self.helo_refusal(session, hostname)
        if refusal:
            return refusal
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        refusal = self.helo_refusal(session, hostname)
        if refusal:
            return [refusal]
        session.host_name = hostname
        lines = [r[4:] for r in responses[1:] if not r[4:].startswith(("AUTH", "HELP"))]
        lines += ["PIPELINING", "ENHANCEDSTATUSCODES", "DSN"]
        server.command_size_limits["MAIL"] = 512 + 26 + 10 + 120
        server.command_size_limits["RCPT"] = 512 + 520
        return [responses[0]] + [f"250-{x}" for x in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_MAIL(self, server, session, envelope: Envelope, address, mail_options):
        reason = self.storage.refusal(self.config, restrictions.declared_size(mail_options))
        if reason:
            self.refused("overload")
            self.log.warning("backpressure", client=session.peer[0], reason=reason)
            return "452 4.3.1 Insufficient system storage, try again later"
        refusal = await self.rates.refusal(session.peer[0], "" if address == "<>" else address)
        if refusal:
            self.refused("message_rate")
            self.log.info("mail_refused", client=session.peer[0], reply=refusal)
            return refusal
        dsn = getattr(session, "dsn_mail", {})
        envelope.mail_from = address  # "<>" for the null sender: aiosmtpd wants it truthy
        envelope.mail_options.extend(mail_options)
        envelope.dsn = dsn
        envelope.dsn_rcpts = []
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(self, server, session, envelope: Envelope, address, rcpt_options):
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            self.refused("recipients")
            return "452 4.5.3 Too many recipients"
        refusal = restrictions.relay_refusal(self.config, session.peer[0], address)
        if refusal:
            return self._rcpt_refused(session, address, "relay", refusal)
        if self.recipients.unknown(address):
            unknown = f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
            return self._rcpt_refused(session, address, "unknown_user", unknown)
        refusal = await self.verifier.refusal(address)
        if refusal:
            reason = "unverified" if refusal[0] == "4" else "unknown_user"
            return self._rcpt_refused(session, address, reason, refusal)
        refusal = await self.sender_checks.at_rcpt(session, envelope)
        if refusal:
            return self._rcpt_refused(session, address, "spf", refusal)
        refusal = await self.greylisting.refusal(session, envelope, address)
        if refusal:
            return self._rcpt_refused(session, address, "greylisted", refusal)
        params = getattr(session, "dsn_rcpt", {})
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.dsn_rcpts.append(params)
        return "250 2.1.5 Recipient ok"

    def _rcpt_refused(self, session, address: str, reason: str, reply: str) -> str:
        self.refused(reason)
        self.log.info("rcpt_refused", client=session.peer[0], to=address, reply=reply)
        return reply

    def open_data(self, server) -> Capture | None:
        """GatewaySMTP's call at its 354: where this message's DATA is written as it comes
        (None: keep it in memory, as when the spool cannot take a new file now)."""
        queue_id = new_queue_id()
        try:
            writer = self.spool.open_message(queue_id)
            writer.write(received_header(self.config, server.session, server.envelope, queue_id))
        except OSError as exc:
            self.log.error("store_failed", qid=queue_id, error=repr(exc))
            return None
        config = self.config
        head = max(HEAD_BYTES, config.max_header_size + 1024)
        return Capture(writer, config.max_message_size, config.max_line_length + 2, head)

    async def handle_DATA(self, server, session, envelope: Envelope):
        capture = server.take_capture()
        if capture is not None and capture.fed == 0:  # the whole message came before our 354
            capture.writer.abort()
            capture = None
        if capture is not None and (capture.failed or envelope.original_content):
            capture.writer.abort()
            self.refused("data")
            return capture.failed or "503 5.5.0 Improper pipelining: data sent before the 354"
        data = b""
        if capture is None:
            data = normalise_newlines(envelope.original_content or b"")
        refusal = restrictions.header_refusal(self.config, bytes(capture.head) if capture else data)
        if refusal:
            return self._data_refused(capture, session, "header", refusal)
        if capture is None:
            queue_id = new_queue_id()
            if not data.endswith(b"\r\n"):
                data += b"\r\n"
            message = received_header(self.config, session, envelope, queue_id) + data
            size = len(message)
        else:
            queue_id, size = capture.writer.queue_id, capture.writer.size
        verdict = await self.sender_checks.at_data(
            session,
            envelope,
            capture.writer.read if capture is not None else (lambda: message),
            size,
            bytes(capture.head) if capture is not None else message[:HEAD_BYTES],
        )
        refusal = self.sender_checks.refusal(verdict)
        if refusal:
            return self._data_refused(capture, session, "dmarc", refusal)
        env = queued_envelope(queue_id, session, envelope, server.rbl, size)
        mail_from = env["mail_from"]
        if verdict is not None:
            env["auth"] = verdict.public()
        loop = asyncio.get_running_loop()
        try:
            if capture is None:
                await loop.run_in_executor(self.executor, self._store, message, env)
            else:
                await loop.run_in_executor(self.executor, self._commit, capture.writer, env)
        except Exception as exc:
            self.counters["store_failed"] += 1
            self.log.error("store_failed", qid=queue_id, error=repr(exc))
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self.storage.checked = 0.0  # look at the disk again before the next MAIL
                return "452 4.3.1 Insufficient system storage, try again later"
            return "451 4.3.0 Local error in processing, try again later"
        self.counters["received"] += 1
        self.metrics.received_messages.inc()
        self.metrics.received_bytes.inc(size)
        self.journal.write(
            "received",
            queue_id,
            **{"from": mail_from},
            to=envelope.rcpt_tos,
            size=size,
            client=session.peer[0],
        )
        server.messages += 1
        server.junk = 0  # a message went through: the session is making progress
        server.bytes += size
        self.log.info(
            "queued",
            qid=queue_id,
            client=session.peer[0],
            **{"from": mail_from},
            nrcpt=len(env["recipients"]),
            size=size,
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _data_refused(self, capture: Capture | None, session, reason: str, reply: str) -> str:
        """Refuse a message at the end of DATA: nothing of it stays in tmp/."""
        if capture is not None:
            capture.writer.abort()
        self.refused(reason)
        self.log.info("data_refused", client=session.peer[0], reply=reply)
        return reply


class Listener:
    """The receiver process: one asyncio loop, one server per ListenOn address."""

    def __init__(self, config: configmod.Config, snapshot: Path | None = None):
        self.config = config
        self.snapshot = snapshot
        self.spool = Spool(config.spool_path)
        self.handler = Receiver(config, self.spool)
        self.log = logmod.get()
        self.sessions: set[GatewaySMTP] = set()
        self.anvil = Anvil(config, self.spool.paused_flag)
        self.stopped = asyncio.Event()
        self.tls = configmod.tls_context(config)  # loaded once, not per connection; again on reload

    def factory(self) -> Gate:
        return Gate(self.anvil, self.handler.connect_refusal, self.session)

    def session(self, ip: str, rbl: str) -> GatewaySMTP:
        """A new SMTP session for an admitted client (``rbl``: its connect-time mark)."""
        cfg = self.config
        # aiosmtpd sizes its line reader from this class attribute when a session starts
        TrackedSMTP.line_length_limit = cfg.max_line_length + 2
        smtp = TrackedSMTP(
            self.handler,
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=cfg.hostname,
            ident="ESMTP mailgate",
            tls_context=self.tls,
            timeout=NO_IDLE_TIMER,
        )
        smtp.registry = self.sessions
        smtp.anvil = self.anvil
        smtp.counted = ip
        smtp.rbl = rbl
        smtp.limits = cfg
        smtp.session_timeout = cfg.session_timeout
        smtp.data_timeout = cfg.data_timeout
        return smtp

    def reload(self) -> None:
        logmod.reopen()
        config = configmod.reload(self.config, self.snapshot, self.log)
        if config is not None:
            try:
                self.tls = configmod.tls_context(config)
            except (OSError, ssl.SSLError) as exc:
                self.log.error("tls_certificate_unusable", error=str(exc), kept="previous")
            self.config = config
            self.handler.reconfigure(config)
            self.anvil.configure(config)
            self.log.info("config_reloaded")

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        servers = []
        inherited = privileges.inherited_sockets()
        if inherited is not None:  # bound by the supervisor (perhaps as root, before User)
            for sock in inherited:
                servers.append(await loop.create_server(self.factory, sock=sock))
                host, port = sock.getsockname()[:2]
                self.log.info("listening", address=f"{host}:{port}", passed=True)
        else:
            for host, port in self.config.listen:
                servers.append(await loop.create_server(self.factory, host, port))
                self.log.info("listening", address=f"{host}:{port}")
        loop.add_signal_handler(signal.SIGTERM, self.stopped.set)
        loop.add_signal_handler(signal.SIGINT, self.stopped.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(
            signal.SIGUSR1,
            lambda: self.log.info(
                "statistics",
                sessions=len(self.sessions),
                refused=dict(self.anvil.refused),
                **self.handler.counters,
            ),
        )
        # blocked since the supervisor forked us; the handlers are in place now
        signal.pthread_sigmask(
            signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        )
        await self.stopped.wait()
        self.log.info("stopping", sessions=len(self.sessions))
        GatewaySMTP.stopping = True
        for server in servers:
            server.close()
        deadline = loop.time() + STOP_GRACE
        while self.sessions and loop.time() < deadline:
            for smtp in list(self.sessions):
                if not smtp.in_transaction():
                    smtp.goodbye()
            await asyncio.sleep(0.05)
        for smtp in list(self.sessions):
            smtp.goodbye()
        self.handler.executor.shutdown(wait=True)
        self.log.info("worker_stopped", **self.handler.counters)
        return 0


class TrackedSMTP(GatewaySMTP):
    """Keeps a registry of live sessions so that a stop can wait for them."""

    registry: set
    anvil: Anvil
    counted: str | None = None  # the client address the anvil counts for this session

    def connection_made(self, transport):
        self.registry.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc):
        self.registry.discard(self)
        if self.counted is not None:
            self.anvil.release(self.counted)
            self.counted = None
        super().connection_lost(exc)

    def in_transaction(self) -> bool:
        return self.envelope is not None and self.envelope.mail_from is not None

    def goodbye(self) -> None:
        """Tell an idle client we are going away and close its session."""
        self.registry.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
            self.transport.close()


def run(config: configmod.Config, snapshot: Path | None = None) -> int:
    return asyncio.run(Listener(config, snapshot).serve())
