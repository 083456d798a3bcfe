"""``mailgate track``: a message's life read back from the journal, through a real gateway."""

from __future__ import annotations

import json

from mimebuild import EICAR, TEXT, multipart, part
from support import make_message, wait_for


def tracked(gw, *args: str) -> list[dict]:
    result = gw.cli("track", "--json", *args, check=True)
    return json.loads(result.stdout)["messages"]


def events_of(gw, queue_id: str) -> list[str]:
    found = tracked(gw, "--id", queue_id)
    return [e["ev"] for e in found[0]["events"]] if found else []


def test_track_shows_each_message_from_receipt_to_delivery(make_gateway, sink):
    gw = make_gateway("[smtpgw.retry]\nRetryIntervals=1s\n").start()
    sink.rcpt_replies["later@company.com"] = ["451 4.3.0 try again later"]
    deferred = gw.send(make_message("deferred@test"), to="later@company.com")
    infected = gw.send(
        multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="eicar@test"),
        sender="bad@example.net",
    )
    wait_for(lambda: events_of(gw, deferred)[-1:] == ["delivered"], 30, "the retried delivery")
    wait_for(lambda: "delivered" in events_of(gw, infected), 30, "the cured delivery")

    (life,) = tracked(gw, "--id", deferred)
    assert (life["from"], life["to"]) == ("sender@example.org", ["later@company.com"])
    assert [e["ev"] for e in life["events"]] == ["received", "scanned", "deferred", "delivered"]
    received, scanned, waited, done = life["events"]
    assert received["size"] > 0 and received["client"]
    assert scanned["virus"] == "clean"
    assert "451 4.3.0 try again later" in waited["reply"] and waited["retry"] >= waited["t"]
    (address, reply, hop) = done["replies"][0]
    assert address == "later@company.com" and reply.startswith("250") and hop

    (bad,) = tracked(gw, "--id", infected)
    kinds = [e["ev"] for e in bad["events"]]
    assert kinds[0] == "received" and sorted(kinds[1:3]) == ["quarantined", "scanned"]
    (verdict,) = [e for e in bad["events"] if e["ev"] == "scanned"]
    assert verdict["viruses"] == ["Mailgate.Test.EICAR"]
    released = gw.cli("quarantine", "release", infected, check=True).stdout.split()[-1]
    wait_for(lambda: events_of(gw, infected)[-1:] == ["delivered"], 30, "the released copy")
    after = [e["ev"] for e in tracked(gw, "--id", infected)[0]["events"]]
    assert after[-2:] == ["released", "delivered"]
    assert tracked(gw, "--id", released)[0]["id"] == infected  # shown under the original

    assert [m["id"] for m in tracked(gw, "--sender", "*@EXAMPLE.net")] == [infected]
    assert [m["id"] for m in tracked(gw, "--recipient", "later@*")] == [deferred]
    assert tracked(gw, "--recipient", "nobody@*") == []
    text = gw.cli("track", "--id", deferred, check=True).stdout
    assert deferred in text and "451 4.3.0 try again later" in text and "delivered" in text
    assert gw.cli("track", "--since", "yesterday").returncode == 2
