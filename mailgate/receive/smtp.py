"""aiosmtpd's SMTP server with what a relay needs and aiosmtpd lacks.

- DSN (RFC 3461): aiosmtpd refuses every MAIL/RCPT parameter it does not know and upper-cases
  the rest. ``RET``/``ENVID`` and ``NOTIFY``/``ORCPT`` are taken off the command line here,
  validated and kept exactly as sent (ENVID and ORCPT are case-sensitive xtext), then the rest
  of the command goes to aiosmtpd as usual. The handler finds them in ``session.dsn_mail`` and
  ``session.dsn_rcpt``.
- Enhanced status codes (RFC 2034, RFC 3463): every 2xx/4xx/5xx reply but the greeting and the
  EHLO/HELO lines carries one; aiosmtpd's own replies get the code that fits their basic code.
- A stopping server answers 421 to the next command instead of starting a new transaction.
- A session must make progress: NOOP, RSET, HELP and VRFY count as junk; past
  ``MaxJunkCommands`` without a message accepted the session gets 421 and is closed. Under
  stress (the anvil's ``stressed``) the command timeout drops to ``StressTimeout`` and the
  junk limit to a tenth, so idle or NOOP-ing clients cannot hold the slots.
- No control character (C0, DEL) gets in through a command: HELO/EHLO with one is refused
  with 501 5.5.2, MAIL/RCPT with one anywhere on the line with 553 5.1.7 / 553 5.1.3, and an
  ENVID or ORCPT whose xtext decodes to one with 501 5.5.4, so none can reach a header, a DSN
  or a log line downstream.
- Per-connection cost: aiosmtpd builds each session's command, hook and AUTH tables by
  walking ``dir()`` of the protocol and of the handler; both list only the names it looks
  for (:class:`IntrospectedNames`), so a connection does not pay for ~250 lookups.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import time

from aiosmtpd.smtp import SMTP

from mailgate.message.headers import CONTROLS
from mailgate.message.xtext import XTEXT_RE, xtext_decode
from mailgate.runtime import stats

_ENHANCED_RE = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}\b")
_DEFAULT_ENHANCED = {
    "221": "2.0.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.0.0",
    "421": "4.3.2",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "521": "5.3.2",
    "530": "5.7.0",
    "535": "5.7.8",
    "550": "5.7.1",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.3.0",
    "555": "5.5.4",
}
_NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}


class ParameterError(ValueError):
    """A DSN parameter that breaks RFC 3461; its text is the SMTP reply."""


def _split_params(arg: str) -> tuple[str, list[str]]:
    """``FROM:<a@b> SIZE=10 RET=HDRS`` → (``FROM:<a@b>``, [``SIZE=10``, ``RET=HDRS``])."""
    end = arg.rfind(">")
    if end >= 0:
        return arg[: end + 1], arg[end + 1 :].split()
    words = arg.split()
    if len(words) > 1 and words[0].endswith(":"):
        return " ".join(words[:2]), words[2:]
    return (words[0] if words else arg), words[1:]


def _take(arg: str, names: set[str]) -> tuple[str, dict[str, str]]:
    path, params = _split_params(arg)
    taken: dict[str, str] = {}
    rest = []
    for param in params:
        key, sep, value = param.partition("=")
        if key.upper() not in names:
            rest.append(param)
            continue
        if key.upper() in taken:
            raise ParameterError(f"501 5.5.4 Duplicate {key.upper()} parameter")
        if not sep or not value:
            raise ParameterError(f"501 5.5.4 {key.upper()} needs a value")
        taken[key.upper()] = value
    return " ".join([path, *rest]), taken


def parse_mail_dsn(arg: str) -> tuple[str, dict[str, str]]:
    rest, params = _take(arg, {"RET", "ENVID"})
    if "RET" in params:
        params["RET"] = params["RET"].upper()
        if params["RET"] not in ("FULL", "HDRS"):
            raise ParameterError("501 5.5.4 RET must be FULL or HDRS")
    if "ENVID" in params and (
        len(params["ENVID"]) > 100
        or not XTEXT_RE.match(params["ENVID"])
        or CONTROLS.search(xtext_decode(params["ENVID"]))
    ):
        raise ParameterError(
            "501 5.5.4 ENVID must be xtext of at most 100 characters, without controls"
        )
    return rest, params


def parse_rcpt_dsn(arg: str) -> tuple[str, dict[str, str]]:
    rest, params = _take(arg, {"NOTIFY", "ORCPT"})
    if "NOTIFY" in params:
        words = params["NOTIFY"].upper().split(",")
        if words != ["NEVER"] and (
            not set(words) <= _NOTIFY_WORDS or len(set(words)) != len(words)
        ):
            raise ParameterError(
                "501 5.5.4 NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY"
            )
        params["NOTIFY"] = ",".join(words)
    if "ORCPT" in params:
        addr_type, sep, value = params["ORCPT"].partition(";")
        if (
            not sep
            or not re.fullmatch(r"[A-Za-z0-9-]+", addr_type)
            or not XTEXT_RE.match(value)
            or CONTROLS.search(xtext_decode(value))
            or len(params["ORCPT"]) > 500
        ):
            raise ParameterError("501 5.5.4 ORCPT must be addr-type;xtext, without controls")
    return rest, params


_SYNTAX_ATTRS = ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__")


class IntrospectedNames:
    """``dir()`` limited to the prefixes aiosmtpd's ``SMTP.__init__`` looks up by name.

    aiosmtpd collects ``smtp_*`` commands, ``auth_*`` mechanisms and ``handle_*`` hooks with
    ``dir()``/``inspect.getmembers`` on every new connection, which cost a third of a
    connection's set-up here. The list is computed once per class; the lookups that follow
    still bind each name to the instance, so the tables are the same as aiosmtpd's.
    """

    _introspected = ("smtp_", "auth_", "handle_")
    _names_of: dict[type, list[str]] = {}

    def __init_subclass__(cls, **kwargs):
        """Give each ``handle_*`` hook its signature once (PEP 362 ``__signature__``), and
        each overridden ``smtp_*`` command the HELP text of the one it overrides.

        aiosmtpd asks ``inspect.signature(handle_EHLO)`` per connection to tell its two
        hook forms apart; a stored signature makes that an attribute read. HELP lists only
        commands carrying aiosmtpd's ``@syntax`` attributes, which an override lacks.
        """
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():
            if not inspect.isfunction(value):
                continue
            if name.startswith("handle_"):
                value.__signature__ = inspect.signature(value)
            elif name.startswith("smtp_") and not hasattr(value, "__smtp_syntax__"):
                inherited = getattr(super(cls, cls), name, None)
                for attr in _SYNTAX_ATTRS:
                    if hasattr(inherited, attr):
                        setattr(value, attr, getattr(inherited, attr))

    def __dir__(self):
        cls = type(self)
        names = IntrospectedNames._names_of.get(cls)
        if names is None:
            names = [n for n in object.__dir__(self) if n.startswith(self._introspected)]
            IntrospectedNames._names_of[cls] = names
        return names


class GatewaySMTP(IntrospectedNames, SMTP):
    """One SMTP session. Everything else about the protocol is aiosmtpd's.

    Session limits (a ``limits`` config is set by the receiver; none in the tests' sinks):
    after ``MaxErrors`` 5xx replies, or at a MAIL past ``MaxMessagesPerSession`` messages or
    ``MaxSessionBytes`` bytes, the client gets ``421 4.7.0`` and the session is closed. What
    a client meets before the session (limits per address, access lists, block lists) is the
    receiver's ``Gate``.

    Timeouts (when ``session_timeout`` is set, aiosmtpd's own idle timer is given a duration
    that never ends): the client must complete a line within ``session_timeout`` of its last
    one, or within ``data_timeout`` while it sends DATA (RFC 5321 4.5.3.2.6: a slow transfer
    that keeps sending lines is never cut, a stalled or byte-dripping one is). The protocol's
    ``data_received`` notes the time of each newline; one timer looks at it when it fires, so
    a line costs a clock read, not a timer. A client that runs out of time is told
    ``421 4.4.2`` before the connection closes.
    """

    stopping = False  # set on the class by the receiver when it shuts down
    limits = None
    session_timeout: float | None = None  # None: aiosmtpd's own idle timeout (the test sinks)
    data_timeout: float | None = None

    def __init__(self, handler, **kwargs):
        super().__init__(handler, **kwargs)
        self._open_data = getattr(handler, "open_data", None)  # streams DATA when present
        self._capture = None
        self._captured = None
        self._plain_replies = False
        self._held: list[str] = []  # lines of a multi-line reply not yet written
        self.errors = 0
        self.junk = 0
        self.messages = 0
        self.bytes = 0
        self.rbl = ""
        self._last_line = 0.0
        self._in_data = False
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.session_timeout is not None and self._idle is None:
            self._last_line = time.monotonic()
            self._idle = self.loop.call_later(self.session_timeout, self._idle_check)

    def data_received(self, data: bytes) -> None:
        if b"\n" in data:
            self._last_line = time.monotonic()
        if self._capture is not None:  # DATA goes to the spool file, not to aiosmtpd
            rest = self._capture.feed(data)
            if rest is None:
                return
            self._captured, self._capture = self._capture, None
            data = b".\r\n" + rest  # aiosmtpd ends DATA on the dot, then reads what follows
        super().data_received(data)

    def take_capture(self):
        """The DATA just streamed to the spool (see ``receive.data``), or None."""
        captured, self._captured = self._captured, None
        return captured

    def _drop_capture(self) -> None:
        for capture in (self._capture, self._captured):
            if capture is not None:
                capture.writer.abort()
        self._capture = self._captured = None

    def connection_lost(self, exc) -> None:
        self._drop_capture()
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        super().connection_lost(exc)

    def _stressed(self) -> bool:
        anvil = getattr(self, "anvil", None)
        return anvil is not None and anvil.stressed()

    def _idle_check(self) -> None:
        limit = self.data_timeout if self._in_data else self.session_timeout
        stress = self.limits.stress_timeout if self.limits is not None else None
        if stress and self._stressed():
            limit = min(limit or stress, stress)
        left = self._last_line + (limit or 0.0) - time.monotonic()
        if left > 0:  # look again at least every StressTimeout: stress may begin meanwhile
            self._idle = self.loop.call_later(min(left, stress or left), self._idle_check)
            return
        self._idle = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"421 4.4.2 Timeout exceeded, closing the session\r\n")
            if self.limits is not None:
                stats.rejected("timeout")
            self.transport.close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def push(self, status):
        if self.limits is not None and isinstance(status, str) and status.startswith("552 Error"):
            stats.rejected("size")  # aiosmtpd's own SIZE and DATA size refusals
        if isinstance(status, str) and (not self._plain_replies or status[:1] in "45"):
            status = with_enhanced_code(status)  # EHLO's 250 lines stay plain, errors do not
        if isinstance(status, str) and status[:3] == "354" and self._open_data is not None:
            self._capture = self._open_data(self)  # before the reply: the client may be quick
        if isinstance(status, str) and status[3:4] == "-":
            self._held.append(status)  # a multi-line reply leaves in one write, at its end
            return None
        if self._held:
            last = status if isinstance(status, str) else status.decode()
            status, self._held = "\r\n".join([*self._held, last]), []
        result = await super().push(status)
        if isinstance(status, str) and status[:1] == "5" and self.limits is not None:
            self.errors += 1
            if self.limits.max_errors and self.errors >= self.limits.max_errors:
                stats.rejected("errors")
                await super().push("421 4.7.0 Too many errors, closing the session")
                self._close()
        return result

    async def smtp_EHLO(self, hostname: str):
        if hostname and CONTROLS.search(hostname):
            return await self.push("501 5.5.2 Control characters are not allowed in EHLO")
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_HELO(self, hostname: str):
        if hostname and CONTROLS.search(hostname):
            return await self.push("501 5.5.2 Control characters are not allowed in HELO")
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    async def _junk(self) -> bool:
        """Count a command that moves no mail; True (and the session closed) past the limit."""
        limits = self.limits
        if limits is None or not limits.max_junk_commands:
            return False
        self.junk += 1
        allowed = limits.max_junk_commands
        if self._stressed():
            allowed = max(1, allowed // 10)
        if self.junk <= allowed:
            return False
        stats.rejected("junk")
        await super().push("421 4.7.0 Too many commands without mail, closing the session")
        self._close()
        return True

    async def smtp_NOOP(self, arg: str):
        if not await self._junk():
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str):
        if not await self._junk():
            await super().smtp_RSET(arg)

    async def smtp_HELP(self, arg: str):
        if not await self._junk():
            await super().smtp_HELP(arg)

    async def smtp_VRFY(self, arg: str):
        if not await self._junk():
            await super().smtp_VRFY(arg)

    async def _refuse_if_stopping(self) -> bool:
        if not GatewaySMTP.stopping:
            return False
        await self.push("421 4.3.2 Service shutting down, try again later")
        self._close()
        return True

    async def smtp_DATA(self, arg: str) -> None:
        self._in_data = True
        self._last_line = time.monotonic()
        try:
            return await super().smtp_DATA(arg)
        finally:
            self._drop_capture()  # whatever the handler did not take (DATA cut short)
            self._in_data = False
            self._last_line = time.monotonic()  # the client waited for our reply

    async def smtp_MAIL(self, arg: str | None):
        if await self._refuse_if_stopping():
            return
        limits = self.limits
        if limits is not None and (
            (limits.max_messages_per_session and self.messages >= limits.max_messages_per_session)
            or (limits.max_session_bytes and self.bytes >= limits.max_session_bytes)
        ):
            stats.rejected("session_limit")
            await self.push("421 4.7.0 Too much mail in one session, reconnect to send more")
            self._close()
            return
        if arg and CONTROLS.search(arg):
            return await self.push("553 5.1.7 Control characters are not allowed in MAIL")
        await self._with_dsn(arg, parse_mail_dsn, "dsn_mail", super().smtp_MAIL)

    async def smtp_RCPT(self, arg: str | None):
        if arg and CONTROLS.search(arg):
            return await self.push("553 5.1.3 Control characters are not allowed in RCPT")
        await self._with_dsn(arg, parse_rcpt_dsn, "dsn_rcpt", super().smtp_RCPT)

    async def _with_dsn(self, arg: str | None, parse, attr: str, command) -> None:
        """Take the DSN parameters off ``arg`` into ``session.<attr>``, then run ``command``."""
        if arg is None or self.session is None:
            return await command(arg)
        try:
            rest, params = parse(arg)
        except ParameterError as exc:
            return await self.push(str(exc))
        if params and not self.session.extended_smtp:
            return await self.push("555 5.5.4 DSN parameters need EHLO")
        setattr(self.session, attr, params)
        return await command(rest)


def with_enhanced_code(status: str) -> str:
    """Insert the enhanced status code that fits a reply lacking one (first line only)."""
    code = status[:3]
    if not code.isdigit() or code[0] not in "245" or code == "220" or _ENHANCED_RE.match(status):
        return status
    enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    sep = status[3:4] or " "
    return f"{code}{sep}{enhanced} {status[4:]}".rstrip()
