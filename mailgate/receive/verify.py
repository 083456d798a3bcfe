"""Recipient verification at RCPT time, as Postfix's verify(8) does it.

With ``RecipientVerification = next-hop``, a recipient in ``ProtectedDomains`` whose
``ForwardRoute`` leads to a fixed ``[host]:port`` is checked there before the gateway answers
RCPT: ``MAIL FROM:<>``, ``RCPT TO:<address>``, ``RSET``, ``QUIT``. A 2xx is a yes, a 5xx a no
(``550 5.1.1``), anything else (4xx, no answer within ``VerifyTimeout``) leaves the address
unverified (``450 4.1.1``: the client tries again later). Answers are remembered per address,
yes for ``VerifyCacheTime``, no for ``VerifyNegativeCacheTime``, in a bounded table, so a
dictionary attack costs the next hop one probe per address and the gateway none after.

Mail to unknown users is thus refused in the session, and never accepted only to bounce
later to a sender who is most likely forged (backscatter). Nothing the next hop says is
passed to the client: only its reply code decides.
"""

from __future__ import annotations

import asyncio
import collections
import smtplib
import time
from concurrent.futures import Executor

from mailgate.config import Config

CACHE_SIZE = 100_000


class Verifier:
    def __init__(self, config: Config, executor: Executor):
        self.config = config
        self.executor = executor
        self.cache: collections.OrderedDict[str, tuple[float, bool]] = collections.OrderedDict()
        self.probes = 0

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.cache.clear()

    async def refusal(self, address: str) -> str | None:
        """The reply that refuses ``address`` at RCPT, or None to accept it."""
        config = self.config
        if config.recipient_verification != "next-hop":
            return None
        domain = address.rpartition("@")[2]
        route = config.route_for(address) if config.is_protected(domain) else None
        hops = [h for h in route.hops if not h.mx] if route else []
        if not hops:
            return None  # delivered by MX, or not ours: nothing fixed to ask
        key = address.lower()
        known = self.cache.get(key)
        if known is not None and known[0] > time.monotonic():
            self.cache.move_to_end(key)
            ok = known[1]
        else:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self.executor, self._probe, hops[0], address)
            if ok is not None:
                ttl = config.verify_cache_time if ok else config.verify_negative_cache_time
                self.cache[key] = (time.monotonic() + ttl, ok)
                self.cache.move_to_end(key)
                while len(self.cache) > CACHE_SIZE:
                    self.cache.popitem(last=False)
        if ok is None:
            return f"450 4.1.1 <{address}>: Recipient address rejected: unverified, try later"
        if not ok:
            return f"550 5.1.1 <{address}>: Recipient address rejected: undeliverable address"
        return None

    def _probe(self, hop, address: str) -> bool | None:
        """True (the next hop takes it), False (it refuses it), None (no clear answer)."""
        self.probes += 1
        try:
            with smtplib.SMTP(hop.host, hop.port or 25, timeout=self.config.verify_timeout) as s:
                s.ehlo(self.config.hostname)
                code, _ = s.mail("")
                if code // 100 != 2:
                    return None
                code, _ = s.rcpt(address)
                s.rset()
        except (OSError, smtplib.SMTPException):
            return None
        if code // 100 == 2:
            return True
        return False if code // 100 == 5 else None
