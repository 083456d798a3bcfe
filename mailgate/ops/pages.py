"""What the console's pages read: spool look-ups checked against their patterns, log lines,
the process table, formatting, and the ``/metrics`` response.

Anything from the browser (queue ID, status) is checked here before it becomes part of a
path; a miss is a 404, never an exception.
"""

from __future__ import annotations

import collections
import email
import json
import os
import re
import time
from pathlib import Path

from flask import Response, abort
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mailgate import config as configmod
from mailgate.message.headers import POLICY, decode_words, header_block
from mailgate.runtime import stats
from mailgate.spool import InvalidQueueID, NotFound, Spool, check_id

LOG_LINES = 500
LOG_TAIL = 64 * 1024 * 1024
_STATUS_RE = re.compile(r"^[a-z][a-z-]{0,30}$")


def checked_id(queue_id: str) -> str:
    try:
        return check_id(queue_id)
    except InvalidQueueID:
        abort(404)


def checked_status(status: str) -> str:
    if not _STATUS_RE.match(status):
        abort(404)
    return status


def decoded_header(raw: bytes) -> list[tuple[str, str]]:
    message = email.message_from_bytes(header_block(raw), policy=POLICY)
    return [(name, decode_words(value)) for name, value in message.items()]


def download(data: bytes, name: str) -> Response:
    response = Response(data, mimetype="text/plain")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


ARCHIVE_FILTERS = ("sender", "recipient", "subject", "since", "until", "queue_id")


def find(spool: Spool, queue_id: str):
    try:
        return spool.find(queue_id)
    except NotFound:
        abort(404)


def quarantined(spool: Spool, status: str, queue_id: str):
    """The quarantined message ``status/queue_id``, or None."""
    try:
        found_status, entry = spool.find_quarantined(queue_id)
    except NotFound:
        return None
    return entry if found_status == status else None


def quarantined_page(spool: Spool, status: str, queue_id: str):
    entry = quarantined(spool, checked_status(status), checked_id(queue_id))
    if entry is None:
        abort(404)
    return entry


def matches(text: str, row: dict) -> bool:
    hay = " ".join(
        [row.get("id", ""), row.get("sender") or "", row.get("subject") or "", *row["recipients"]]
    )
    return text in hay.lower()


def still_quarantined(spool: Spool, message: dict) -> str | None:
    """The quarantine status under which a tracked message still waits, if it does."""
    if not any(e.get("ev") == "quarantined" for e in message["events"]):
        return None
    try:
        return spool.find_quarantined(message["id"])[0]
    except (NotFound, InvalidQueueID, OSError):
        return None


def fmt_time(when) -> str:
    if not when:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(when)))


def processes(spool: Spool) -> list[dict]:
    try:
        table = json.loads(spool.run_path("workers.json").read_text())
    except (OSError, ValueError):
        return []
    rows = [{"role": "supervisor", "slot": "", "pid": table.get("supervisor"), "restarts": ""}]
    rows += table.get("workers", [])
    for row in rows:
        row["alive"] = alive(row.get("pid"))
    return rows


def alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def log_lines(path: Path | None, queue_id: str) -> list[str]:
    """The log lines that mention ``queue_id`` (rotated ``.1`` first), the last LOG_LINES,
    looking at no more than the last ``LOG_TAIL`` bytes of each file (a page stays quick)."""
    if path is None:
        return []
    found: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
    needle = queue_id.encode()
    for candidate in (path.with_name(path.name + ".1"), path):
        try:
            with open(candidate, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - LOG_TAIL))
                if size > LOG_TAIL:
                    handle.readline()  # a partial first line
                for line in handle:
                    if needle in line:
                        found.append(line.decode("utf-8", "replace").rstrip("\n"))
        except FileNotFoundError:
            continue
    return list(found)


def metrics_response(spool: Spool, config: configmod.Config) -> Response:
    node = (config.cluster_node or config.hostname) if config.cluster_redis else None
    return Response(
        stats.Snapshot(spool).prometheus_text(node),
        mimetype=None,
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def metrics_app(config: configmod.Config):
    """The metrics endpoint alone, for a MetricsListen apart from the console."""
    spool = Spool(config.spool_path)

    def application(environ, start_response):
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"only /metrics here\n"]
        if not configmod.in_networks(environ.get("REMOTE_ADDR", ""), config.metrics_allow):
            start_response("403 Forbidden", [("Content-Type", "text/plain")])
            return [b"not in MetricsAllow\n"]
        response = metrics_response(spool, config)
        return response(environ, start_response)

    return application
