"""Message tracking: each message's life read back from the journal ("where is my mail?").

Every stage appends one line per message event to the journal (``spool.journal``):
received (client, size), scanned (virus and spam verdicts with the rules), quarantined,
delivered / deferred (with the next hop's reply) / bounced, released. ``messages`` groups them
by queue ID, in time order, and keeps the messages whose sender or a recipient matches a mask
(``*`` and ``?``, case-insensitive, as ``fnmatch``) or whose ID is given; a released copy is
shown under the message it came from. ``render`` prints one block per message.
"""

from __future__ import annotations

import fnmatch
import time
from collections import defaultdict
from collections.abc import Iterable

from mailgate.spool import Spool, journal

DETAIL = {
    "received": lambda e: f"from {e.get('client') or '?'}, {e.get('size', '?')} bytes",
    "scanned": lambda e: _verdict(e),
    "quarantined": lambda e: f"in quarantine/{e.get('status')}",
    "deferred": lambda e: f"{', '.join(e.get('to') or [])}: {e.get('reply') or ''}",
    "delivered": lambda e: "; ".join(_reply(r) for r in e.get("replies") or []),
    "bounced": lambda e: "; ".join(_reply(r) for r in e.get("replies") or []),
    "released": lambda e: f"from quarantine/{e.get('status')} as {e.get('new_id')}",
}


def _verdict(event: dict) -> str:
    virus = event.get("virus") or "?"
    if event.get("viruses"):
        virus += f" ({', '.join(event['viruses'])})"
    text = f"virus: {virus}"
    if event.get("spam"):
        rules = ", ".join(f"{k}({v:g})" for k, v in sorted((event.get("rules") or {}).items()))
        text += f"; spam: {event['spam']} {event.get('score')}" + (f" [{rules}]" if rules else "")
    if event.get("actions"):
        text += f"; actions: {','.join(event['actions'])}"
    return text


def _reply(item: list) -> str:
    address, reply, hop = [*item, None, None, None][:3]
    return f"{address}: {reply or ''}" + (f" (via {hop})" if hop else "")


def _matches(value: str, mask: str) -> bool:
    return fnmatch.fnmatchcase(value.lower(), mask.lower())


def messages(
    spool: Spool,
    since: float,
    sender: str | None = None,
    recipient: str | None = None,
    queue_id: str | None = None,
) -> list[dict]:
    """``[{"id", "from", "to", "events": [...]}]`` of the messages seen since ``since``,
    oldest first; the filters are combined (all must match). Read from the journal files."""
    return grouped(journal.read(spool, since), sender, recipient, queue_id)


def grouped(
    events: Iterable[dict],
    sender: str | None = None,
    recipient: str | None = None,
    queue_id: str | None = None,
) -> list[dict]:
    """The messages of these journal events (read from the files or from the index), as
    ``messages`` gives them."""
    by_id: dict[str, list[dict]] = defaultdict(list)
    released: dict[str, str] = {}
    for event in events:
        qid = event.get("qid")
        if isinstance(qid, str):
            by_id[qid].append(event)
            if event.get("ev") == "released" and event.get("new_id"):
                released[event["new_id"]] = qid
    for new_id, origin in released.items():  # a released copy's life goes on under the original
        by_id[origin] += by_id.pop(new_id, [])
    out = []
    for qid, events in by_id.items():
        events.sort(key=lambda e: e.get("t", 0))
        mail_from = next((e["from"] for e in events if isinstance(e.get("from"), str)), "")
        rcpts = next((e["to"] for e in events if e.get("ev") == "received" and e.get("to")), [])
        rcpts = rcpts or next((e["to"] for e in events if e.get("to")), [])
        if queue_id and queue_id not in (qid, *(k for k, v in released.items() if v == qid)):
            continue
        if sender is not None and not _matches(mail_from, sender):
            continue
        if recipient is not None and not any(_matches(r, recipient) for r in rcpts):
            continue
        out.append({"id": qid, "from": mail_from, "to": rcpts, "events": events})
    out.sort(key=lambda m: m["events"][0].get("t", 0))
    return out


def detail(event: dict) -> str:
    """One line saying what an event was about (the reply, the verdict, the quarantine...)."""
    return DETAIL.get(event.get("ev"), lambda e: "")(event)


def render(found: list[dict]) -> str:
    lines = []
    for message in found:
        node = f"  (on {message['node']})" if message.get("node") else ""
        lines.append(
            f"{message['id']}  from <{message['from']}> to {', '.join(message['to']) or '?'}{node}"
        )
        for event in message["events"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.get("t", 0)))
            lines.append(f"  {when}  {event.get('ev', '?'):<11} {detail(event)}".rstrip())
        lines.append("")
    return "\n".join(lines) + ("\n" if lines else "no message matches\n")
