"""Quarantine across the nodes of a cluster: every node's quarantine, seen from any node, and
release or delete carried out by the node that holds the message.

Each node's indexer publishes the summaries of its own quarantine to Redis
(``PREFIX:quarantine:NODE``, a hash ``status/ID`` → summary, replaced whole after every change
and kept ``PUBLISHED_TTL``) and a heartbeat (``PREFIX:node:NODE``). A command or the console
of any node lists its own quarantine (from its index or files) and the others' (from Redis),
each row naming its ``node``. To release or delete a message held by another node, it pushes
a request onto ``PREFIX:requests:NODE``; that node's indexer takes it (BLPOP), does exactly
what the local command would, and pushes the outcome onto the reply key the request named.
Messages never travel: the copy stays in the spool that holds it.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time

from mailgate.config import Config
from mailgate.ops import searching
from mailgate.runtime.cluster import LOCAL, Cluster
from mailgate.spool import STATUS_RE, NotFound, Spool, check_id, quarantine, search

PUBLISHED_TTL = 86400
HEARTBEAT_TTL = 60
REPLY_TTL = 120
ACTIONS = ("release", "delete")
SEARCHES = ("archive", "track")
MAX_ROWS = 1000  # per node and search: what a console page shows


def publish(cluster: Cluster, rows: list[dict]) -> bool:
    """Replace this node's published quarantine with ``rows``; False when Redis failed."""
    key = cluster.key("quarantine", cluster.node)
    fields = {f"{r['status']}/{r['id']}": json.dumps(r) for r in rows}

    def replace(client):
        pipe = client.pipeline(transaction=True)
        pipe.delete(key)
        if fields:
            pipe.hset(key, mapping=fields)
            pipe.expire(key, PUBLISHED_TTL)
        pipe.sadd(cluster.key("nodes"), cluster.node)
        pipe.set(cluster.key("node", cluster.node), "up", ex=HEARTBEAT_TTL)
        return pipe.execute()

    return cluster.run(replace) is not LOCAL


def heartbeat(cluster: Cluster, figures: dict) -> None:
    """This node is up, and its ``mailgate stats --json`` document for ``stats --cluster``."""
    node, document = cluster.node, json.dumps(figures)

    def beat(client):
        pipe = client.pipeline(transaction=False)
        pipe.set(cluster.key("node", node), "up", ex=HEARTBEAT_TTL)
        pipe.set(cluster.key("stats", node), document, ex=HEARTBEAT_TTL)
        pipe.sadd(cluster.key("nodes"), node)
        return pipe.execute()

    cluster.run(beat)


def figures(cluster: Cluster) -> dict | None:
    """node → its latest statistics (those heard from within ``HEARTBEAT_TTL``), or None
    when Redis does not answer."""

    def read(client):
        found = {}
        for raw in sorted(client.smembers(cluster.key("nodes"))):
            node = raw.decode("utf-8", "replace")
            document = client.get(cluster.key("stats", node))
            if document is not None:
                found[node] = json.loads(document)
        return found

    answer = cluster.run(read)
    return None if answer is LOCAL else answer


def overview(cluster: Cluster) -> dict | None:
    """``{"nodes": {node: statistics}, "sum": …}`` for the console (None: not clustered)."""
    found = figures(cluster) if cluster.enabled else None
    return {"nodes": found, "sum": summed(list(found.values()))} if found else None


def summed(documents: list) -> object:
    """The sum of several statistics documents, number by number (other values: the first)."""
    first = documents[0]
    if isinstance(first, bool) or not isinstance(first, int | float | dict):
        return first
    if isinstance(first, dict):
        keys = dict.fromkeys(k for d in documents if isinstance(d, dict) for k in d)
        return {
            k: summed([d[k] for d in documents if isinstance(d, dict) and k in d]) for k in keys
        }
    return sum(d for d in documents if isinstance(d, int | float) and not isinstance(d, bool))


def others(cluster: Cluster) -> tuple[list[dict], str | None]:
    """(the other nodes' quarantined rows, each with ``node``; a note when Redis failed)."""
    if not cluster.enabled:
        return [], None

    def read(client):
        rows = []
        for raw in sorted(client.smembers(cluster.key("nodes"))):
            node = raw.decode("utf-8", "replace")
            if node == cluster.node:
                continue
            for value in client.hgetall(cluster.key("quarantine", node)).values():
                rows.append({**json.loads(value), "node": node})
        return rows

    found = cluster.run(read)
    if found is LOCAL:
        return [], "the cluster's Redis does not answer: this node's quarantine only"
    return found, None


def holder(cluster: Cluster, queue_id: str) -> tuple[str, str] | None:
    """(node, status) of the other node that published ``queue_id`` in its quarantine."""
    rows, _note = others(cluster)
    return next(((r["node"], r["status"]) for r in rows if r["id"] == queue_id), None)


def request(
    cluster: Cluster, node: str, action: str, status: str, queue_id: str, timeout: float = 15.0
) -> str:
    """Have ``node`` carry out ``action`` on its copy; its answer, or why there is none."""
    reply = cluster.key("reply", secrets.token_hex(8))
    message = json.dumps({"action": action, "status": status, "id": queue_id, "reply": reply})
    if cluster.run(lambda c: c.rpush(cluster.key("requests", node), message)) is LOCAL:
        return f"{queue_id}: the cluster's Redis does not answer; nothing done"
    answer = cluster.run(lambda c: c.blpop([reply], timeout=timeout), blocking=True)
    if answer is LOCAL or answer is None:
        return f"{queue_id}: node {node} did not answer within {timeout:g} s (it may still act)"
    return answer[1].decode("utf-8", "replace")


def ask_all(cluster: Cluster, search: str, filters: dict, timeout: float = 5.0):
    """Run ``search`` (``archive`` or ``track``) with ``filters`` on every other live node:
    ([rows, each with its ``node``], [nodes that did not answer in time])."""
    reply = cluster.key("reply", secrets.token_hex(8))
    order = json.dumps({"action": search, "filters": filters, "reply": reply})

    def send(client):
        alive = []
        for raw in sorted(client.smembers(cluster.key("nodes"))):
            node = raw.decode("utf-8", "replace")
            if node != cluster.node and client.exists(cluster.key("node", node)):
                client.rpush(cluster.key("requests", node), order)
                alive.append(node)
        return alive

    asked = cluster.run(send)
    if asked is LOCAL:
        return [], ["(Redis)"]
    rows, waiting = [], set(asked)
    deadline = time.monotonic() + timeout
    while waiting and (left := deadline - time.monotonic()) > 0:
        wait = max(1, int(left))
        got = cluster.run(lambda c, t=wait: c.blpop([reply], timeout=t), blocking=True)
        if got is LOCAL or got is None:
            break
        answer = json.loads(got[1])
        waiting.discard(answer.get("node"))
        rows += [{**row, "node": answer.get("node")} for row in answer.get("rows", [])]
    return rows, sorted(waiting)


def _search(config: Config, spool: Spool, order: dict) -> str:
    """The rows of a search another node asked for, as JSON (at most ``MAX_ROWS``)."""
    filters = {k: v for k, v in (order.get("filters") or {}).items() if isinstance(v, str)}
    if order["action"] == "archive":
        kind = filters.pop("kind", None)
        rows, _note = searching.archived(config, spool, kind, **filters)
    else:
        since = float((order.get("filters") or {}).get("since") or 0)
        rows, _note = searching.tracked(
            config, spool, since, filters.get("sender"), filters.get("recipient"), filters.get("id")
        )
    return json.dumps({"rows": rows[-MAX_ROWS:]})


def quarantined_everywhere(
    config: Config, spool: Spool, cluster: Cluster, status: str | None = None, **filters
):
    """(rows of this node's quarantine and, clustered, every other node's, each naming its
    ``node``; notes). The other nodes' rows come from what their indexers published."""
    rows, note = searching.quarantined(config, spool, status, **filters)
    if not cluster.enabled:
        return rows, note
    theirs, trouble = others(cluster)
    rows += [r for r in theirs if search.quarantine_row_matches(r, status, **filters)]
    for row in rows:
        row.setdefault("node", cluster.node)
    return rows, "; ".join(n for n in (note, trouble) if n) or None


def archived_everywhere(
    config: Config, spool: Spool, cluster: Cluster, kind: str | None = None, **filters
):
    """(this node's archive rows and, clustered, every other live node's; a note)."""
    rows, note = searching.archived(config, spool, kind, **filters)
    if not cluster.enabled:
        return rows, note
    asked = {k: v for k, v in {**filters, "kind": kind}.items() if v}
    theirs, silent = ask_all(cluster, "archive", asked)
    return _everywhere(cluster, rows, theirs, note, silent)


def tracked_everywhere(config: Config, spool: Spool, cluster: Cluster, since: float, *filters):
    """(this node's tracked messages and, clustered, every other live node's; a note)."""
    found, note = searching.tracked(config, spool, since, *filters)
    if not cluster.enabled:
        return found, note
    sender, recipient, queue_id = [*filters, None, None, None][:3]
    asked = {"since": str(since), "sender": sender, "recipient": recipient, "id": queue_id}
    theirs, silent = ask_all(cluster, "track", {k: v for k, v in asked.items() if v})
    return _everywhere(cluster, found, theirs, note, silent)


def _everywhere(cluster: Cluster, mine: list, theirs: list, note, silent: list):
    for row in mine:
        row.setdefault("node", cluster.node)
    if silent:
        note = "; ".join(x for x in (note, f"no answer from {', '.join(silent)}") if x)
    return mine + theirs, note


def carry_out(spool: Spool, order: dict) -> str:
    """One request from another node, on this node's quarantine: the line to answer."""
    action, status, queue_id = order.get("action"), order.get("status", ""), order.get("id", "")
    if action not in ACTIONS or not STATUS_RE.match(str(status)):
        return f"{queue_id}: refused (bad request)"
    try:
        check_id(queue_id)
        found, entry = spool.find_quarantined(queue_id)
    except (ValueError, NotFound):
        return f"{queue_id}: no longer in quarantine"
    if found != status:
        return f"{queue_id}: no longer in quarantine/{status}"
    if action == "release":
        new_id = quarantine.release(spool, status, entry)
        return f"{queue_id}: released from quarantine/{status} as {new_id}"
    spool.remove(entry)
    return f"{queue_id}: deleted from quarantine/{status}"


def serve(config: Config, cluster: Cluster, spool: Spool, stop: threading.Event, log) -> None:
    """The indexer's thread answering the other nodes' requests until ``stop``."""
    queue = cluster.key("requests", cluster.node)
    while not stop.is_set():
        found = cluster.run(lambda c: c.blpop([queue], timeout=1), blocking=True)
        if found is LOCAL:
            stop.wait(cluster.retry_after)
            continue
        if found is None:
            continue
        try:
            order = json.loads(found[1])
            if order.get("action") in SEARCHES:
                answer = json.dumps(
                    {**json.loads(_search(config, spool, order)), "node": cluster.node}
                )
            else:
                answer = carry_out(spool, order)
        except (ValueError, TypeError, AttributeError, KeyError, OSError, sqlite3.Error) as exc:
            order, answer = {}, f"failed: {exc}"
        log.info("cluster_request", action=order.get("action"), qid=order.get("id"), answer=answer)
        reply = order.get("reply")
        if isinstance(reply, str) and reply.startswith(cluster.key("reply", "")):
            _answer(cluster, reply, answer)


def _answer(cluster: Cluster, reply: str, answer: str) -> None:
    cluster.run(lambda c: c.pipeline().rpush(reply, answer).expire(reply, REPLY_TTL).execute())
