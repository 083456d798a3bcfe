"""The indexer in a running gateway: archive search, quarantine list and track answer from the
index exactly as from the files, follow changes made by hand, and survive the indexer's death
and the index file's loss."""

from __future__ import annotations

import json
import os
import signal
import time

from mimebuild import EICAR, multipart, part
from support import make_message, wait_for

from mailgate.ops import track
from mailgate.spool import Spool, archive, search


def walked(gw) -> dict:
    """What the file walk answers, as the commands print it (JSON)."""
    spool = Spool(gw.spool)
    since = time.time() - 86400
    return {
        "archive": json.loads(json.dumps(list(archive.search(spool, sender="*@example.org")))),
        "quarantine": json.loads(json.dumps(list(search.quarantined(spool)))),
        "track": json.loads(json.dumps(track.messages(spool, since, recipient="*@company.com"))),
    }


def indexed(gw) -> dict:
    """What the commands answer; they must not have walked the files (no note on stderr)."""
    found = {}
    for name, args in (
        ("archive", ("archive", "search", "--sender", "*@example.org", "--json")),
        ("quarantine", ("quarantine", "list", "--json")),
        ("track", ("track", "--recipient", "*@company.com", "--json")),
    ):
        result = gw.cli(*args, check=True)
        if result.stderr:
            return {"note": result.stderr}
        found[name] = json.loads(result.stdout)
        if name == "track":
            found[name] = found[name]["messages"]
    return found


def same_answers(gw) -> bool:
    return indexed(gw) == walked(gw)


def test_index_follows_the_spool(make_gateway, sink):
    gw = make_gateway(  # a day moved to 2000 by hand stays until the test expires it
        "[smtpgw.archive]\nReceived=yes\nSent=yes\n[smtpgw.index]\nEnabled=yes\n"
        "[smtpgw.process]\nSweepInterval=1h\n"
    ).start()
    wait_for(lambda: gw.pids("indexer"), what="the indexer")
    wait_for(lambda: gw.spool.joinpath("index", "index.sqlite3").is_file(), what="the index")
    for n in range(4):
        gw.send(make_message(f"i{n}@test", subject=f"Report {n}"), sender=f"u{n}@example.org")
    infected = multipart([part(EICAR, "application/octet-stream", "eicar.com")])
    gw.send(infected, sender="bad@example.org")
    sink.wait_count(5)
    wait_for(lambda: gw.entries("quarantine/infected"), what="the quarantined copy")
    wait_for(lambda: same_answers(gw), what="the index to catch up")
    answers = indexed(gw)
    assert len(answers["archive"]) == 10 and len(answers["quarantine"]) == 1  # infected: cured
    assert len(answers["track"]) >= 5  # and the notice about the cured one
    # moved by hand to another day, and a quarantined copy deleted by hand
    first = answers["archive"][0]
    day = gw.spool / "archive" / first["kind"]
    (day / "2000-01-01").mkdir()
    os.rename(day / first["date"] / first["id"], day / "2000-01-01" / first["id"])
    qid = answers["quarantine"][0]["id"]
    os.rename(gw.spool / "quarantine" / "infected" / qid, gw.spool / "tmp" / "gone")
    wait_for(lambda: same_answers(gw), what="the index to see the changes")
    assert any(r["date"] == "2000-01-01" for r in indexed(gw)["archive"])
    # the indexer dies: the supervisor starts another; the index file is lost: built again
    (old,) = gw.pids("indexer")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: gw.pids("indexer") and gw.pids("indexer") != [old], what="a new indexer")
    gw.spool.joinpath("index", "index.sqlite3").unlink()
    gw.send(make_message("late@test", subject="After"), sender="late@example.org")
    sink.wait_count(6)
    wait_for(lambda: same_answers(gw), what="the index to be rebuilt")
    status = gw.cli("index", "status", check=True).stdout
    assert "ready" in status and "archived" in status
