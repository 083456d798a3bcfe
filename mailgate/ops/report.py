"""Reports (``mailgate report``): what came in, what was caught, hour by hour, from the journal.

The report is one document (``build``) rendered three ways (text, JSON, HTML); the JSON form is
the contract, the others show the same numbers. Mailing it queues one message to the
Administrator straight into ``ready/``, like the notifications.
"""

from __future__ import annotations

import collections
import json
import re
import time

import jinja2

from mailgate.config import BadValue, Config, parse_duration
from mailgate.scan import notify
from mailgate.spool import Spool, journal

SPAM = ("spam", "probable-spam", "blacklisted")
VIRUS = ("infected", "suspicious")
HOURLY = ("hour", "received", "bytes", "virus", "spam", "delivered")


def parse_since(text: str, now: float | None = None) -> float:
    """``1d``, ``12h`` (that long ago) or a date ``YYYY-MM-DD`` (its local midnight)."""
    now = time.time() if now is None else now
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        try:
            return time.mktime(time.strptime(text.strip(), "%Y-%m-%d"))
        except ValueError:
            raise BadValue(f"no such date {text!r}") from None
    return now - parse_duration(text)


def _top(counter: collections.Counter, key: str, limit: int) -> list[dict]:
    return [{key: k, "count": n} for k, n in counter.most_common(limit)]


def _hour(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:00", time.localtime(when))


def build(
    spool: Spool,
    since: float,
    until: float | None = None,
    top: int = 10,
    events: list[dict] | None = None,
) -> dict:
    """The report document for ``since <= t < until`` (docs/operations.md lists its fields).

    ``events``: journal events already read (covering the period), so that several reports
    over overlapping periods read the journal once.
    """
    until = time.time() if until is None else until
    if events is None:
        events = list(journal.read(spool, since, until))
    received = {"messages": 0, "bytes": 0}
    virus_status: collections.Counter = collections.Counter()
    spam_status: collections.Counter = collections.Counter()
    viruses: collections.Counter = collections.Counter()
    spam_senders: collections.Counter = collections.Counter()
    spam_rcpts: collections.Counter = collections.Counter()
    delivered = {"messages": 0, "recipients": 0}
    notices: collections.Counter = collections.Counter()
    bounced = 0
    hourly: dict[str, collections.Counter] = {}
    start = since - since % 3600
    for hour_start in range(int(start), int(until) + 1, 3600):
        hourly[_hour(hour_start)] = collections.Counter()
    for event in events:
        if not since <= event["t"] < until:
            continue
        hour = hourly.setdefault(_hour(event["t"]), collections.Counter())
        kind = event.get("ev")
        if kind == "received":
            received["messages"] += 1
            received["bytes"] += event.get("size", 0)
            hour["received"] += 1
            hour["bytes"] += event.get("size", 0)
        elif kind == "scanned":
            virus_status[event.get("virus") or "clean"] += 1
            if event.get("spam"):
                spam_status[event["spam"]] += 1
            if event.get("virus") in VIRUS:
                hour["virus"] += 1
                viruses.update(event.get("viruses") or ["(unnamed)"])
            if event.get("spam") in SPAM:
                hour["spam"] += 1
                spam_senders[(event.get("from") or "<>").lower()] += 1
                spam_rcpts.update(a.lower() for a in event.get("to") or [])
        elif kind == "delivered" and event.get("kind", "message") != "message":
            notices[event["kind"]] += 1
        elif kind == "delivered":
            delivered["messages"] += 1
            delivered["recipients"] += len(event.get("to") or [])
            hour["delivered"] += 1
        elif kind == "bounced":
            bounced += len(event.get("to") or [])
    return {
        "from": _iso(since),
        "to": _iso(until),
        "received": received,
        "scanned": sum(virus_status.values()),
        "virus": {"by_status": dict(virus_status), "top": _top(viruses, "name", top)},
        "spam": {
            "by_status": dict(spam_status),
            "top_senders": _top(spam_senders, "address", top),
            "top_recipients": _top(spam_rcpts, "address", top),
        },
        "delivered": delivered,
        "notices": {"messages": sum(notices.values()), "by_kind": dict(notices)},
        "bounced": {"recipients": bounced},
        "hourly": [
            {
                "hour": hour,
                **{k: counts[k] for k in HOURLY[1:]},
            }
            for hour, counts in sorted(hourly.items())
        ],
    }


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when))


def render(doc: dict, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "html":
        return render_html(doc)
    return render_text(doc)


def busy_hours(doc: dict) -> list[dict]:
    """The hours in which anything happened (text and HTML skip the empty ones; JSON keeps
    every hour, so a script sees a regular series)."""
    return [row for row in doc["hourly"] if any(row[k] for k in HOURLY[1:])]


def render_text(doc: dict) -> str:
    notices = doc.get("notices", {}).get("messages", 0)
    lines = [
        f"mailgate report {doc['from']} .. {doc['to']}",
        "",
        f"received   {doc['received']['messages']} messages, {doc['received']['bytes']} bytes",
        f"scanned    {doc['scanned']}",
        f"delivered  {doc['delivered']['messages']} messages, "
        f"{doc['delivered']['recipients']} recipients",
        f"notices    {notices} sent by mailgate (DSNs, notifications, reports)",
        f"bounced    {doc['bounced']['recipients']} recipients",
        "anti-virus " + _statuses(doc["virus"]["by_status"]),
        "spam       " + _statuses(doc["spam"]["by_status"]),
    ]
    for title, rows, key in (
        ("Top viruses", doc["virus"]["top"], "name"),
        ("Top spam senders", doc["spam"]["top_senders"], "address"),
        ("Top spam recipients", doc["spam"]["top_recipients"], "address"),
    ):
        lines += ["", title + ":"]
        lines += [f"  {row['count']:>7}  {row[key]}" for row in rows] or ["  (none)"]
    head = f"  {'hour':16} {'received':>9} {'bytes':>12} {'virus':>6} {'spam':>6}"
    busy = busy_hours(doc)
    lines += ["", "Per hour (hours with traffic):", head]
    for row in busy:
        lines.append(
            f"  {row['hour']:16} {row['received']:>9} {row['bytes']:>12} "
            f"{row['virus']:>6} {row['spam']:>6}"
        )
    if not busy:
        lines.append("  (no traffic)")
    return "\n".join(lines) + "\n"


def _statuses(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing scanned"


_HTML = jinja2.Environment(
    loader=jinja2.PackageLoader("mailgate", "data/reports"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(doc: dict) -> str:
    """The same document as HTML, from ``data/reports/report.html`` (Jinja2, escaped)."""
    peak = max([row["received"] for row in doc["hourly"]] or [0]) or 1
    return _HTML.get_template("report.html").render(
        doc=doc,
        peak=peak,
        busy=busy_hours(doc),
        columns=HOURLY,
        virus_statuses=_statuses(doc["virus"]["by_status"]),
        spam_statuses=_statuses(doc["spam"]["by_status"]),
    )


def mail(spool: Spool, config: Config, subject: str, text: str, content_type: str) -> str:
    """Queue ``text`` to the Administrator; the queue ID. Raises ValueError with no address."""
    if not config.administrator:
        raise ValueError("no [smtpgw.notify] Administrator address to mail the report to")
    return notify.send(
        spool,
        config,
        {"Subject": subject},
        text,
        [config.administrator],
        kind="report",
        content_type=content_type,
        who="report",
    )
