"""DATA streamed to the spool as it arrives: memory per session stays bounded by one line.

aiosmtpd collects a message's lines in memory and joins them at the end (a 24 MB message cost
the receiver about three times that). Instead, from the moment the session has answered
``354``, the bytes the client sends go to a ``Capture`` (through the asyncio protocol's public
``data_received``), which frames lines on CRLF as RFC 5321 does, removes dot-stuffing, makes
bare CR and bare LF inside a line CRLF (so no reader after us sees a header field our scanners
did not), and writes them to ``tmp/ID@PID`` through the spool's ``MessageWriter``. When the
lone dot arrives, aiosmtpd is handed just that dot and finishes DATA as for an empty message;
the handler then commits the written file.

Limits are kept while streaming: past ``MaxMessageSize`` nothing more is kept (``552 5.3.4``),
a line past ``MaxLineLength`` is dropped as it arrives (``500 5.5.6``), a full disk stops the
writing (``452 4.3.1``); in every case the rest of DATA is read and thrown away until the dot,
then the reply is sent, the file removed and the session goes on. Only the first
``HEAD_BYTES`` of the message (more if MaxHeaderSize asks) are kept in memory, for the header
checks.
"""

from __future__ import annotations

import errno
from email.utils import formatdate

from mailgate.config import Config
from mailgate.message.headers import normalise_newlines
from mailgate.spool import envelope as envmod
from mailgate.spool.files import MessageWriter

HEAD_BYTES = 512 * 1024
TOO_LONG = "500 5.5.6 Line too long (see RFC 5321 4.5.3.1.6)"


class Capture:
    def __init__(
        self, writer: MessageWriter, size_limit: int, line_limit: int, head_limit: int = HEAD_BYTES
    ):
        self.writer = writer
        self.size_limit = size_limit
        self.line_limit = line_limit
        self.head_limit = head_limit
        self.partial = bytearray()
        self.head = bytearray()
        self.data_size = 0  # bytes of the message itself (not counting our Received line)
        self.failed: str | None = None
        self.fed = 0
        self.skipping_line = False
        self.cr_pending = False

    def feed(self, data: bytes) -> bytes | None:
        """Take bytes of DATA; None while DATA goes on, else what followed the lone dot.

        The bytes may be cut anywhere, a CRLF included: a CR at the end of one piece waits
        for the next to say whether it ends the line."""
        self.fed += len(data)
        pos = 0
        if not (self.partial or self.cr_pending or self.skipping_line or self.failed):
            done, pos = self._lines(data)
            if done:
                return data[pos:]
        if self.cr_pending:
            self.cr_pending = False
            if data[:1] == b"\n":
                pos = 1
                done = self._end_of_line(b"")
                if done:
                    return data[pos:]
            else:
                self._part(b"\r")
        while True:
            end = data.find(b"\r\n", pos)
            if end < 0:
                piece = data[pos:]
                if piece.endswith(b"\r"):
                    piece, self.cr_pending = piece[:-1], True
                self._part(piece)
                return None
            done = self._end_of_line(data[pos:end])
            pos = end + 2
            if done:
                return data[pos:]

    def _lines(self, data: bytes) -> tuple[bool, int]:
        """At the start of a line: every whole line of ``data`` in one go (the common case,
        a packet of short lines), with what ``_line`` does to each done to the block: a dot
        after each CRLF removed (dot-stuffing), bare CR and LF made CRLF. (True at the lone
        dot, the position after it) or (False, where the line-by-line way goes on)."""
        if data.startswith(b".\r\n"):
            return True, 3
        term = data.find(b"\r\n.\r\n")
        end = term + 2 if term >= 0 else data.rfind(b"\r\n") + 2
        if end < 2:
            return False, 0
        block = data[:end]
        if end + 2 > self.line_limit and max(map(len, block.split(b"\r\n"))) + 2 > self.line_limit:
            return False, 0  # a line too long: line by line, which refuses it
        if block[:1] == b".":
            block = block[1:]
        self._accept(normalise_newlines(block.replace(b"\r\n.", b"\r\n")))
        return (True, term + 5) if term >= 0 else (False, end)

    def _end_of_line(self, tail: bytes) -> bool:
        """A CRLF came: the line is the partial start plus ``tail``; True at the lone dot."""
        line = bytes(self.partial) + tail if self.partial else tail
        self.partial.clear()
        if self.skipping_line:
            self.skipping_line = False
            return False
        if line == b".":
            return True
        self._line(line)
        return False

    def _part(self, piece: bytes) -> None:
        """The start of a line whose CRLF has not come yet: kept up to the line limit."""
        if self.skipping_line:
            return
        self.partial += piece
        if len(self.partial) > self.line_limit:
            self.partial.clear()
            self.skipping_line = True
            self._fail(TOO_LONG)

    def _line(self, line: bytes) -> None:
        if self.failed is not None:
            return
        if len(line) + 2 > self.line_limit:
            self._fail(TOO_LONG)
            return
        if line[:1] == b".":
            line = line[1:]
        self._accept(normalise_newlines(line) + b"\r\n")

    def _accept(self, line: bytes) -> None:
        """Whole lines, unstuffed and normalised: counted, the head kept, written."""
        self.data_size += len(line)
        if self.size_limit and self.data_size > self.size_limit:
            self._fail("552 5.3.4 Message size exceeds fixed maximum message size")
            return
        if len(self.head) < self.head_limit:
            self.head += line[: self.head_limit - len(self.head)]
        try:
            self.writer.write(line)
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            self._fail(
                "452 4.3.1 Insufficient system storage, try again later"
                if full
                else "451 4.3.0 Local error in processing, try again later"
            )

    def _fail(self, reply: str) -> None:
        if self.failed is None:
            self.failed = reply
            self.writer.abort()


def received_header(config: Config, session, envelope, queue_id: str) -> bytes:
    """Our trace line, the first of every message (RFC 5321 4.4); built at DATA, so that a
    streamed message can start with it."""
    proto = "ESMTP" if session.extended_smtp else "SMTP"
    if session.ssl is not None:
        proto += "S"
    if envelope.smtp_utf8:
        proto = "UTF8" + proto
    ip = session.peer[0]
    literal = f"IPv6:{ip}" if ":" in ip else ip
    recipient = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
    text = (
        f"Received: from {session.host_name or 'unknown'} ([{literal}])\r\n"
        f"\tby {config.hostname} (mailgate) with {proto} id {queue_id}{recipient};"
        f"\r\n\t{formatdate(localtime=True)}\r\n"
    )
    return text.encode("utf-8", "surrogateescape")


def queued_envelope(queue_id: str, session, envelope, rbl: str, size: int) -> dict:
    """The spool envelope of a message accepted in ``session`` (aiosmtpd's ``envelope``)."""
    recipients = [
        envmod.recipient(
            addr,
            params["NOTIFY"].split(",") if "NOTIFY" in params else None,
            params.get("ORCPT"),
        )
        for addr, params in zip(envelope.rcpt_tos, envelope.dsn_rcpts, strict=True)
    ]
    return envmod.new(
        queue_id,
        "" if envelope.mail_from == "<>" else envelope.mail_from,
        recipients,
        ret=envelope.dsn.get("RET"),
        envid=envelope.dsn.get("ENVID"),
        body="8BITMIME" if "BODY=8BITMIME" in envelope.mail_options else "7BIT",
        smtputf8=envelope.smtp_utf8,
        size=size,
        client={
            "ip": session.peer[0],
            "port": session.peer[1],
            "helo": session.host_name,
            "tls": session.ssl is not None,
            **({"rbl": rbl} if rbl else {}),
        },
    )
