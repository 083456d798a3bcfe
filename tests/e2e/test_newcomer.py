"""A newcomer's first ten minutes: the ready line, the help, the queue and report they read."""

from __future__ import annotations

import json
import os
import re
import time

from mimebuild import EICAR, TEXT, multipart, part
from support import mailgate, make_message, wait_for

from mailgate.spool import Spool, new_queue_id
from mailgate.spool import envelope as envmod


def test_run_prints_one_ready_line_saying_where_everything_is(gateway):
    line = wait_for(
        lambda: [x for x in gateway.log().splitlines() if x.startswith("mailgate ready:")],
        what="the ready line",
    )
    assert len(line) == 1
    text = line[0]
    assert f"listening on 127.0.0.1:{gateway.port}" in text
    assert f"*@company.com → [127.0.0.1]:{gateway.sink_port}" in text
    assert f"spool {gateway.spool.resolve()}" in text
    assert f"log {gateway.spool.resolve() / 'log' / 'mailgate.log'}" in text
    assert "clamd " in text and "(managed)" in text
    assert "console off ([smtpgw.admin] Listen is empty)" in text  # the tests turn it off


def test_bare_command_prints_help_without_the_internal_worker_and_version_works():
    bare = mailgate()
    assert bare.returncode == 0
    assert "queue" in bare.stdout and "check-config" in bare.stdout
    assert not re.search(r"^\s+worker\b", bare.stdout, re.M)
    version = mailgate("--version")
    assert version.returncode == 0 and re.fullmatch(r"mailgate \d+\.\d+\.\d+\n", version.stdout)


def test_queue_list_shows_when_a_deferred_message_is_tried_next(make_gateway):
    gw = make_gateway()
    spool = Spool(gw.spool)
    spool.create()
    qid = new_queue_id()
    env = envmod.new(qid, "a@example.org", [envmod.recipient("user@company.com")])
    entry = spool.enqueue(make_message("later@test"), env, state="hold")
    spool.defer(entry, env, time.time() + 3 * 3600 + 60)
    text = gw.cli("queue", "list", check=True).stdout
    (row,) = [x for x in text.splitlines() if x.startswith(qid)]
    assert re.search(r"next try \d\d:\d\d \(in 3h\)", row), row
    (item,) = json.loads(gw.cli("queue", "list", "--json", check=True).stdout)
    assert isinstance(item["next_attempt"], float | int)  # JSON keeps epoch seconds


def test_notices_name_postmaster_when_no_administrator_is_set(make_gateway, sink):
    gw = make_gateway().start()
    gw.send(multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="named@test"))
    host = os.uname().nodename
    got = wait_for(
        lambda: [r for r in sink.received if f"postmaster@{host}".encode() in r.content],
        what="a notice naming postmaster",
    )
    assert b"Ask  " not in got[0].content


def test_report_counts_notices_apart_and_skips_empty_hours(make_gateway, sink):
    gw = make_gateway().start()
    gw.send(make_message("plain@test"))
    gw.send(multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="virus@test"))
    wait_for(lambda: len(sink.received) >= 3, what="two messages and a notice delivered")

    def doc():
        return json.loads(gw.cli("report", "--since", "1d", "--format", "json").stdout)

    wait_for(lambda: doc()["notices"]["messages"] >= 1, what="the notice in the journal")
    report = doc()
    assert report["delivered"]["messages"] == 2
    assert report["notices"]["by_kind"] == {"notification": report["notices"]["messages"]}
    assert len(report["hourly"]) in (24, 25)  # JSON keeps every hour
    text = gw.cli("report", "--since", "1d", check=True).stdout
    hours = [x for x in text.splitlines() if re.match(r"  \d{4}-\d\d-\d\d \d\d:00 ", x)]
    assert 1 <= len(hours) <= 2
    assert "notices" in text
    html = gw.cli("report", "--since", "1d", "--format", "html", check=True).stdout
    assert html.count("<tr><td>20") == len(hours)
