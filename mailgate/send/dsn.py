"""Delivery status notifications (RFC 3464 multipart/report) for bounces, delays and relays.

The original message is returned untouched: in full as message/rfc822 when the sender asked
for RET=FULL (and it is at most ``FULL_LIMIT`` bytes, as Postfix's bounce_size_limit keeps
reports small), else its header only as text/rfc822-headers. The report is addressed to the
original envelope sender and sent from the null sender, so it can never cause another report.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from email.utils import format_datetime, formatdate, make_msgid

from mailgate.message.headers import CONTROLS, header_block, header_field
from mailgate.message.xtext import xtext_decode

ACTIONS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "relayed": "Successful Mail Delivery Report (relayed)",
}
_INTRO = {
    "failed": "Your message could not be delivered to one or more recipients.\r\n"
    "It has been returned; the reasons are given below.",
    "delayed": "Your message has not yet been delivered to one or more recipients.\r\n"
    "Delivery is still being attempted; you need not send it again.",
    "relayed": "Your message was relayed to a mail system that does not report delivery.\r\n"
    "No further notification of its delivery will come from us.",
}
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def status_of(reply: str | None, action: str) -> str:
    """The RFC 3463 status for a recipient: taken from the reply when it has one."""
    m = _ENHANCED.search(reply or "")
    if m:
        return m.group(0)
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")


def _date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC))


FULL_LIMIT = 10 << 20  # a larger original is returned as its header block only
HEAD_LIMIT = 1 << 20  # what is read of it to find that block


def _fields(fields: list[tuple[str, str]]) -> bytes:
    """Fields written by the header API (``header_field``): no value can start a field."""
    return b"".join(header_field(name, value) for name, value in fields)


def _one_line(text: str) -> str:
    """``text`` on one line: every control character (NUL, CR, LF...) and run of blanks a
    single space."""
    return " ".join(CONTROLS.sub(" ", str(text)).split())


def build(
    envelope: dict,
    message: bytes,
    recipients: list[dict],
    action: str,
    reporting_mta: str,
    retry_until: float | None = None,
    full: bool = True,
) -> bytes:
    """The DSN for ``recipients`` of ``envelope`` as CRLF bytes, ready for the spool.

    The whole message goes back only when the sender asked (RET=FULL) and ``full`` allows it
    (``BounceContent``); otherwise its header block."""
    boundary = f"=_mailgate_{envelope['id']}_{int(time.time() * 1000)}"
    now = time.time()
    human = [_INTRO[action], ""]
    for rcpt in recipients:
        human.append(f"<{rcpt['address']}>: {_one_line(rcpt.get('reply') or action)}")
    fields = [("Reporting-MTA", f"dns; {reporting_mta}"), ("X-Mailgate-Queue-ID", envelope["id"])]
    if envelope.get("envid"):
        fields.append(("Original-Envelope-Id", _one_line(xtext_decode(envelope["envid"]))))
    fields.append(("Arrival-Date", _date(envelope["received_at"])))
    blocks = [fields]
    for rcpt in recipients:
        lines = [("Final-Recipient", f"rfc822; {rcpt['address']}")]
        if rcpt.get("orcpt"):
            kind, _, value = rcpt["orcpt"].partition(";")
            lines.append(("Original-Recipient", _one_line(f"{kind}; {xtext_decode(value)}")))
        lines += [("Action", action), ("Status", status_of(rcpt.get("reply"), action))]
        if rcpt.get("remote"):
            lines.append(("Remote-MTA", f"dns; {rcpt['remote']}"))
        if rcpt.get("reply"):
            lines.append(("Diagnostic-Code", f"smtp; {_one_line(rcpt['reply'])}"))
        lines.append(("Last-Attempt-Date", _date(rcpt.get("at") or now)))
        if action == "delayed" and retry_until:
            lines.append(("Will-Retry-Until", _date(retry_until)))
        blocks.append(lines)

    if envelope.get("ret") == "FULL" and full:
        returned_type, returned = "message/rfc822", message
    else:
        returned_type, returned = "text/rfc822-headers", header_block(message)
    eight_bit = any(b > 127 for b in returned)
    head = [
        ("From", f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"),
        ("To", f"<{envelope['mail_from']}>"),
        ("Subject", ACTIONS[action]),
        ("Date", formatdate(now, localtime=False)),
        ("Message-ID", make_msgid("dsn", domain=reporting_mta)),
        ("Auto-Submitted", "auto-replied"),
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/report; report-type=delivery-status; boundary="{boundary}"'),
    ]
    parts = [
        _fields(head) + b"\r\nThis is a MIME-encapsulated message.\r\n",
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n".encode()
        + "\r\n".join(human).encode()
        + b"\r\n",
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n".encode()
        + b"\r\n".join(_fields(block) for block in blocks),
        f"--{boundary}\r\nContent-Type: {returned_type}\r\n"
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}\r\n\r\n".encode()
        + returned
        + (b"" if returned.endswith(b"\r\n") else b"\r\n"),
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)
