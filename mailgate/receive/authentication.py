"""Sender authentication in the SMTP session, for clients outside TrustedNetworks.

SPF is checked at the first accepted RCPT (``SPFAction=reject`` refuses a fail there, and a
temperror with 451 4.4.3, RFC 7208 §8.6); DKIM, ARC and DMARC at the end of DATA, the last
moment a DMARC ``p=reject`` can be honoured without a bounce to a forged sender. The verdict
goes into the envelope (``auth``) for the scanner, which writes Authentication-Results.

The pyspf and dkimpy calls block; they run in a pool of ``WORKERS`` threads, which also
bounds the memory held by messages being verified (at most ``WORKERS`` times ``MaxSize``). A
whole verification is bounded in time too: past it the result is a ``temperror``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from mailgate.config import Config
from mailgate.runtime import log as logmod
from mailgate.runtime.auth import lookup, spfcheck
from mailgate.runtime.auth.dmarc import DMARCResult
from mailgate.runtime.auth.verdict import Verdict, authenticate, author_domain, settings_of

WORKERS = 2
LOOKUPS_PER_MESSAGE = 8  # DKIM keys, ARC keys and DMARC records before a verification gives up


class SenderChecks:
    def __init__(self, config: Config):
        self.executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="auth")
        self.log = logmod.get()
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.lookup = lookup.configure(config.nameservers, config.auth_dns_timeout)
        self.settings = settings_of(config)

    def wanted(self, ip: str) -> bool:
        return self.config.auth_enabled and not self.config.is_trusted(ip)

    async def at_rcpt(self, session, envelope) -> str | None:
        """The refusal SPF asks for, if any; the result stays on the envelope (once per
        transaction: later RCPTs get the same answer without asking the DNS again)."""
        ip = session.peer[0]
        if not self.wanted(ip):
            return None
        result = getattr(envelope, "spf", None)
        if result is None:
            mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from
            helo = session.host_name or ""
            result = await asyncio.get_running_loop().run_in_executor(
                self.executor, spfcheck.check, ip, mail_from, helo, self.config.auth_dns_timeout
            )
            envelope.spf = result
            self.log.info("spf", client=ip, result=result.result, domain=result.domain)
        if self.config.spf_action != "reject":
            return None
        if result.result == "fail":
            return (
                f"550 5.7.23 SPF: {result.domain} does not allow [{ip}] to send its mail (RFC 7208)"
            )
        if result.result == "temperror":
            return "451 4.4.3 SPF: temporary DNS error, try again later"
        return None

    async def at_data(self, session, envelope, read, size: int, head: bytes) -> Verdict | None:
        """The message's verdict (None for a trusted client). ``read`` returns the message
        (from the spool's file); it is called, in the pool, only for a message of at most
        ``MaxSize``."""
        if not self.wanted(session.peer[0]):
            return None
        spf = getattr(envelope, "spf", None)
        whole = size <= self.config.auth_max_size
        job = asyncio.get_running_loop().run_in_executor(
            self.executor, self._verify, read if whole else None, spf, author_domain(head)
        )
        try:
            return await asyncio.wait_for(job, self.config.auth_dns_timeout * LOOKUPS_PER_MESSAGE)
        except TimeoutError:
            reason = "verification timed out"
        except OSError as exc:
            reason = f"message unreadable: {exc.strerror}"
        return Verdict(spf, dmarc=DMARCResult("temperror", author_domain(head), reason=reason))

    def _verify(self, read, spf, author: str) -> Verdict:
        message = read() if read is not None else None
        return authenticate(message, spf, self.lookup, self.settings, author)

    def refusal(self, verdict: Verdict | None) -> str | None:
        if verdict is None or verdict.action != "reject":
            return None
        return (
            f"550 5.7.1 DMARC: {verdict.dmarc.domain} asks to reject mail that fails"
            " its authentication (RFC 7489)"
        )
