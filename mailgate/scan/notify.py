"""Notifications: administrator, sender and recipient notices filled in from templates.

A template is a text file in the Templates directory. If its first line is a header
(``Subject: ...``) the lines up to the first blank one are headers, the rest is the body.
Variables are written ``${name}`` (``$$`` is a dollar sign); ``VARIABLES`` lists them. For a
notice of ``kind`` (admin, sender, recipient) about a message of ``status``, the file
``<kind>-<status>.txt`` is used if present, else ``<kind>.txt``. ``removed.txt`` is the text
put in place of a cured object.

Notices are new messages queued straight into ``ready/`` from the null sender, so they can
never bounce back; none is sent to a null sender, and a notice is never scanned or notified
about itself, so notices cannot loop.
"""

from __future__ import annotations

import email.utils
import re
import string
import time
from email.message import EmailMessage
from pathlib import Path

from mailgate.config import Config
from mailgate.message.headers import CONTROLS, FIELD_POLICY
from mailgate.spool import Spool, new_queue_id
from mailgate.spool import envelope as envmod

VARIABLES = {
    "queue_id": "queue ID of the message",
    "sender": "envelope sender (MAIL FROM), or <> for none",
    "recipients": "envelope recipients, comma-separated",
    "subject": "Subject of the message (decoded)",
    "status": "message status (infected, banned, ...)",
    "action": "what was done (cure, block, quarantine, ...)",
    "object_name": "names of the objects that caused the status",
    "virus_name": "detection names (viruses, rules)",
    "objects": "one line per object that is not clean: name, status, detail",
    "date": "when the message was scanned, in DateFormat",
    "hostname": "this gateway's Hostname",
    "administrator": "the Administrator address",
    "client_ip": "IP address of the client that sent the message",
    "threshold": "traffic alerts: the threshold passed (DailyTrafficLimit, ...)",
    "value": "traffic alerts: the figure that passed it",
    "limit": "traffic alerts: the configured limit",
    "reason": "corrupt/ alerts: why the message was put aside",
    "node": "cluster alerts: this node's name in the cluster",
    "redis": "cluster alerts: the Redis address, without its password",
    "error": "cluster alerts: why Redis failed",
    "calls": "cluster alerts: calls answered alone since the last check",
    "minutes": "cluster alerts: how long the node worked alone",
}
KINDS = ("admin", "sender", "recipient")
_HEADER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*:")


def check(path: Path) -> list[str]:
    """Every problem in a template, as ``FILE:LINE: message``; empty when it is valid."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [f"{path}:0: cannot read: {exc.strerror}"]
    except UnicodeDecodeError as exc:
        return [f"{path}:0: not UTF-8 text ({exc.reason})"]
    problems = []
    lines = text.splitlines()
    in_headers = bool(lines) and bool(_HEADER_RE.match(lines[0]))
    for lineno, line in enumerate(lines, 1):
        if in_headers:
            if not line.strip():
                in_headers = False
            elif not (_HEADER_RE.match(line) or line[0] in " \t"):
                problems.append(
                    f"{path}:{lineno}: expected a 'Name: value' header or a blank line "
                    f"before the body, got {line.strip()!r}"
                )
        for m in string.Template.pattern.finditer(line):
            name = m.group("named") or m.group("braced")
            if m.group("invalid") is not None:
                problems.append(
                    f"{path}:{lineno}: bad placeholder at column {m.start() + 1}: "
                    "write ${name}, or $$ for a dollar sign"
                )
            elif name and name not in VARIABLES:
                problems.append(
                    f"{path}:{lineno}: unknown variable ${{{name}}} "
                    f"(known: {', '.join(sorted(VARIABLES))})"
                )
    return problems


def find(config: Config, kind: str, status: str) -> Path:
    """The template of a ``kind`` of notice, a status-specific one (``admin-infected.txt``)
    first; an administrator's file wins over the shipped one (``Config.template``)."""
    found = config.template(f"{kind}-{status}.txt") or config.template(f"{kind}.txt")
    return found or config.templates_path / f"{kind}.txt"


def render(path: Path, variables: dict[str, str]) -> tuple[dict[str, str], str]:
    """(headers, body) of a template with ``variables`` filled in.

    The template is split into header fields and body first, and the values go into each
    field afterwards, each made one line: a value (a Subject decoded from encoded words, a
    file name) cannot end a field and start another.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    values = {k: v if k == "objects" else one_line(v) for k, v in variables.items()}
    fields: dict[str, str] = {}
    if lines and _HEADER_RE.match(lines[0]):
        last = None
        while lines:
            line = lines.pop(0)
            if not line.strip():
                break
            if line[0] in " \t" and last:
                fields[last] += " " + line.strip()
            else:
                last, _, value = line.partition(":")
                fields[last] = value.strip()
    headers = {k: one_line(string.Template(v).safe_substitute(values)) for k, v in fields.items()}
    body = string.Template("\n".join(lines)).safe_substitute(values)
    return headers, body + "\n"


def one_line(value: str) -> str:
    """``value`` with every control character (CR, LF, NUL, ...) a space."""
    return CONTROLS.sub(" ", value)


def variables(config: Config, envelope: dict, subject: str, decision, objects) -> dict:
    bad = [o for o in objects if o.status != "clean"]
    return {
        "queue_id": envelope["id"],
        "sender": envelope["mail_from"] or "<>",
        "recipients": ", ".join(r["address"] for r in envelope["recipients"]),
        "subject": subject,
        "status": decision.status,
        "action": decision.action,
        "object_name": ", ".join(o.name or f"part {o.path}" for o in bad),
        "virus_name": ", ".join(o.detail for o in bad if o.detail),
        "objects": "\n".join(
            one_line(
                f"  {o.name or 'part ' + o.path} ({o.content_type}): {o.status}"
                + (f", {o.detail}" if o.detail else "")
            )
            for o in bad
        ),
        "date": time.strftime(config.date_format, time.localtime()),
        "hostname": config.hostname,
        "administrator": config.administrator_address,
        "client_ip": (envelope.get("client") or {}).get("ip", ""),
    }


def compose(
    config: Config,
    headers: dict[str, str],
    body: str,
    to: list[str],
    qid: str,
    content_type: str = "text/plain",
) -> bytes:
    """A notice as CRLF bytes, built with the email package's message API under
    ``FIELD_POLICY``: every value is set through the header API, so none can add a field."""
    subject = headers.pop("Subject", "mailgate notice")
    message = EmailMessage(policy=FIELD_POLICY)
    message["From"] = f"mailgate <{config.sender_address}>"
    message["To"] = ", ".join(to)
    message["Subject"] = one_line(subject)
    message["Date"] = email.utils.formatdate(localtime=True)
    message["Message-ID"] = f"<{qid}@{config.hostname}>"
    message["Auto-Submitted"] = "auto-generated"
    for name, value in headers.items():
        if name.lower() not in ("from", "to"):
            message[name] = one_line(value)
    text = body.replace("\r\n", "\n")
    message.set_content(
        text,
        subtype=content_type.partition("/")[2] or "plain",
        charset="utf-8",
        cte="7bit" if text.isascii() else "quoted-printable",
    )
    return message.as_bytes()


def removal_notices(config: Config, envelope: dict, split, decision) -> dict[str, str]:
    """The text (``removed.txt``) put in place of each object the decision cures, by path."""
    values = variables(config, envelope, split.subject, decision, decision.cure)
    template = config.template("removed.txt") or config.templates_path / "removed.txt"
    removed = {}
    for obj in decision.cure:
        one = {
            **values,
            "object_name": obj.name or f"part {obj.path}",
            "virus_name": obj.detail,
            "status": obj.status,
        }
        removed[obj.path] = render(template, one)[1]
    return removed


def targets(config: Config, envelope: dict, decision) -> list[tuple[str, list[str]]]:
    """Who is told about a message's anti-virus ``decision``: (kind, addresses) for the
    administrator, the sender (a sender outside TrustedNetworks only when
    NotifyOutsideSenders: such senders are almost always forged) and the recipients."""
    out = []
    if config.administrator and decision.status in config.notify_admin:
        out.append(("admin", [config.administrator]))
    client = (envelope.get("client") or {}).get("ip", "")
    trusted = bool(client) and config.is_trusted(client)
    if (
        envelope["mail_from"]
        and decision.status in config.notify_sender
        and (trusted or config.notify_outside_senders)
    ):
        out.append(("sender", [envelope["mail_from"]]))
    if decision.status in config.notify_recipients and decision.action != "deliver":
        out.append(("recipient", [r["address"] for r in envelope["recipients"]]))
    return out


def queue(
    spool: Spool, config: Config, kind: str, status: str, to: list[str], values: dict, about: str
) -> str | None:
    """Queue one notice of ``kind`` to ``to``; returns its queue ID (None if nobody to tell)."""
    to = [a for a in dict.fromkeys(to) if a]
    if not to:
        return None
    headers, body = render(find(config, kind, status), values)
    return send(spool, config, headers, body, to, about=about)


def send(
    spool: Spool,
    config: Config,
    headers: dict[str, str],
    body: str,
    to: list[str],
    kind: str = "notification",
    content_type: str = "text/plain",
    who: str = "scanner",
    **fields,
) -> str:
    """Queue a message of ours from the null sender straight into ready/; its queue ID."""
    qid = new_queue_id()
    message = compose(config, headers, body, to, qid, content_type)
    env = envmod.new(
        qid,
        "",
        [envmod.recipient(a) for a in to],
        size=len(message),
        kind=kind,
        scanned=True,
        headers=[f"X-Mailgate-Queue-ID: {qid}"],
        body="8BITMIME",
        first_state=("ready", who),
        **fields,
    )
    spool.enqueue(message, env, state="ready")
    return qid
