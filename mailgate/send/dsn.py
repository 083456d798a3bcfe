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

from mailgate.message.headers import header_block
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


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
    fields = [f"Reporting-MTA: dns; {reporting_mta}", f"X-Mailgate-Queue-ID: {envelope['id']}"]
    if envelope.get("envid"):
        fields.append(f"Original-Envelope-Id: {xtext_decode(envelope['envid'])}")
    fields.append(f"Arrival-Date: {_date(envelope['received_at'])}")
    blocks = ["\r\n".join(fields)]
    for rcpt in recipients:
        lines = [f"Final-Recipient: rfc822; {rcpt['address']}"]
        if rcpt.get("orcpt"):
            kind, _, value = rcpt["orcpt"].partition(";")
            lines.append(f"Original-Recipient: {kind}; {xtext_decode(value)}")
        lines += [f"Action: {action}", f"Status: {status_of(rcpt.get('reply'), action)}"]
        if rcpt.get("remote"):
            lines.append(f"Remote-MTA: dns; {rcpt['remote']}")
        if rcpt.get("reply"):
            lines.append(f"Diagnostic-Code: smtp; {_one_line(rcpt['reply'])}")
        lines.append(f"Last-Attempt-Date: {_date(rcpt.get('at') or now)}")
        if action == "delayed" and retry_until:
            lines.append(f"Will-Retry-Until: {_date(retry_until)}")
        blocks.append("\r\n".join(lines))

    if envelope.get("ret") == "FULL" and full:
        returned_type, returned = "message/rfc822", message
    else:
        returned_type, returned = "text/rfc822-headers", header_block(message)
    eight_bit = any(b > 127 for b in returned)
    head = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{envelope['mail_from']}>",
        f"Subject: {ACTIONS[action]}",
        f"Date: {formatdate(now, localtime=False)}",
        f"Message-ID: {make_msgid('dsn', domain=reporting_mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
    ]
    parts = [
        "\r\n".join(head).encode() + b"\r\n\r\nThis is a MIME-encapsulated message.\r\n",
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: 8bit\r\n\r\n".encode()
        + "\r\n".join(human).encode()
        + b"\r\n",
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n".encode()
        + "\r\n\r\n".join(blocks).encode()
        + b"\r\n",
        f"--{boundary}\r\nContent-Type: {returned_type}\r\n"
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}\r\n\r\n".encode()
        + returned
        + (b"" if returned.endswith(b"\r\n") else b"\r\n"),
        f"--{boundary}--\r\n".encode(),
    ]
    return b"".join(parts)
