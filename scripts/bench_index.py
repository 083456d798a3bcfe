"""Search index figures (issue 22): indexing speed from real spool files, and search times
at a million archived messages and a million journal events.

Part 1 writes ``--files`` archived messages and journal events into a spool in a temporary
directory with the spool's own writers and times the indexer building its index from them
(reading every envelope and header, as it does in service). Part 2 adds rows up to
``--rows`` archived messages and as many journal events through the same functions the
indexer calls once it has read a file (generating a million directories would measure the
disk, not the index), then times the searches an administrator makes, cold (first query) and
warm (median of five). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mailgate.ops import index, track
from mailgate.ops.indexer import Indexer
from mailgate.spool import Spool, journal, new_queue_id
from mailgate.spool import envelope as envmod

WORDS = [
    "invoice",
    "report",
    "lunch",
    "meeting",
    "offer",
    "delivery",
    "order",
    "payment",
    "update",
    "news",
]


def summary(rng: random.Random, number: int, day: str) -> dict:
    return {
        "id": new_queue_id(),
        "kind": "received",
        "date": day,
        "sender": f"user{rng.randrange(50_000)}@domain{rng.randrange(5_000)}.example",
        "recipients": [f"staff{rng.randrange(2_000)}@company.com"],
        "subject": f"{rng.choice(WORDS).title()} {number} {rng.choice(WORDS)}",
        "size": rng.randrange(2_000, 80_000),
    }


def timed(run) -> tuple[float, float, int]:
    """(cold ms, warm median ms, rows)."""
    started = time.perf_counter()
    rows = run()
    cold = (time.perf_counter() - started) * 1000
    warm = []
    for _ in range(5):
        started = time.perf_counter()
        run()
        warm.append((time.perf_counter() - started) * 1000)
    return cold, statistics.median(warm), len(rows)


def from_files(root: Path, count: int) -> None:
    spool = Spool(root / "files")
    spool.create()
    rng = random.Random(1)
    started = time.perf_counter()
    log = journal.Journal(spool, "receiver")
    for number in range(count):
        row = summary(rng, number, "")
        message = (
            f"From: <{row['sender']}>\r\nTo: {row['recipients'][0]}\r\n"
            f"Subject: {row['subject']}\r\n\r\nbody {number}\r\n"
        ).encode()
        env = envmod.new(row["id"], row["sender"], [envmod.recipient(row["recipients"][0])])
        spool.archive("received", message, env, time.time() - 86400 * (number % 30))
        log.write("received", row["id"], **{"from": row["sender"]}, to=row["recipients"])
    log.close()
    written = time.perf_counter() - started
    started = time.perf_counter()
    indexer = Indexer(spool)
    indexer.open()
    took = time.perf_counter() - started
    print(
        f"from files: {count} archived messages and {count} journal events written in "
        f"{written:.1f} s; indexed in {took:.1f} s = {count / took:,.0f} messages/s "
        f"(each: its envelope and header read, plus its journal event)"
    )
    indexer.db.close()


def at_scale(root: Path, rows: int) -> None:
    path = root / "scale.sqlite3"
    spool = Spool(root / "scale")
    spool.create()
    indexer = Indexer(spool)
    indexer.path = path
    indexer.open()
    db = indexer.db
    rng = random.Random(2)
    days = [time.strftime("%Y-%m-%d", time.localtime(time.time() - 86400 * d)) for d in range(30)]
    started = time.perf_counter()
    for start in range(0, rows, 10_000):
        with db:
            for number in range(start, min(rows, start + 10_000)):
                day = days[number % 30]
                row = summary(rng, number, day)
                index.add_copy(db, "archive", "received", day, row)
                event = {
                    "t": time.time() - 86400 * (number % 30),
                    "ev": "received",
                    "qid": row["id"],
                    "from": row["sender"],
                    "to": row["recipients"],
                }
                index.add_event(db, day, "receiver-1.jsonl", number, event, json.dumps(event))
    took = time.perf_counter() - started
    print(
        f"at scale: {rows:,} archived rows and {rows:,} journal events added in {took:.0f} s "
        f"({rows / took:,.0f} messages/s with their events, excluding file reads)"
    )
    db.execute("ANALYZE")  # as the indexer does after building and every few minutes
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = sum(p.stat().st_size for p in root.glob("scale.sqlite3*"))
    print(f"index size: {size / 1e6:,.0f} MB = {size / rows:,.0f} bytes per message with its event")
    ro = index.connect(path, readonly=True)
    sample = json_row(ro)
    queries = {
        "sender mask *@domainNNN.example": lambda: index.archive(
            ro, sender=f"*@{sample['sender'].split('@')[1]}"
        ),
        "recipient staffNNN@company.com": lambda: index.archive(
            ro, recipient=sample["recipients"][0]
        ),
        "subject word 'payment'": lambda: index.archive(ro, subject="payment", since=days[1]),
        "one day (all of it)": lambda: index.archive(ro, since=days[3], until=days[3]),
        "sender mask and day": lambda: index.archive(
            ro, sender=f"*@{sample['sender'].split('@')[1]}", since=days[5], until=days[5]
        ),
        "queue ID": lambda: index.archive(ro, queue_id=sample["id"]),
        "track: sender, 30 days": lambda: track.grouped(
            index.events(ro, time.time() - 31 * 86400, sample["sender"], None), sample["sender"]
        ),
    }
    print(f"{'search':<34} {'cold ms':>8} {'warm ms':>8} {'rows':>7}")
    for name, run in queries.items():
        cold, warm, found = timed(run)
        print(f"{name:<34} {cold:8.1f} {warm:8.1f} {found:7d}")
    ro.close()


def json_row(db) -> dict:
    found = db.execute(
        f"SELECT {index.COLUMNS} FROM copies AS c ORDER BY c.n LIMIT 1 OFFSET 5000"
    ).fetchone()
    return index._summary("archive", found)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        from_files(Path(tmp), args.files)
        at_scale(Path(tmp), args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
