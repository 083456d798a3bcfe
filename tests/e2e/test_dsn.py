"""DSN parameters (RFC 3461) are accepted, stored, passed on, and honoured in our own DSNs."""

from __future__ import annotations

import json
import signal

import pytest
from support import Sink, make_message, wait_for


@pytest.fixture
def dsn_sink():
    s = Sink(dsn=True)
    s.start()
    yield s
    s.stop()


def test_dsn_parameters_are_stored_and_passed_on(make_gateway, dsn_sink):
    route = f"[smtpgw.forward]\nForwardRoute=*@dsn.example [127.0.0.1:{dsn_sink.port_number}]\n"
    gw = make_gateway(route + "[smtpgw.limits]\nSenders=0").start()
    qid = gw.send(
        make_message("dsnparams@test"),
        to="Rcpt@dsn.example",
        mail_options=("RET=HDRS", "ENVID=Env+2BId-42"),
        rcpt_options=("NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;Orig+2BRcpt@Dsn.Example"),
    )
    wait_for(lambda: gw.entries("ready"), what="the message in ready/")
    envelope = json.loads((gw.spool / "ready" / qid / "envelope.json").read_text())
    assert envelope["ret"] == "HDRS"
    assert envelope["envid"] == "Env+2BId-42"
    assert envelope["recipients"][0]["notify"] == ["SUCCESS", "DELAY"]
    assert envelope["recipients"][0]["orcpt"] == "rfc822;Orig+2BRcpt@Dsn.Example"
    gw.write_config(route)
    gw.signal(signal.SIGHUP)
    got = dsn_sink.wait_count(1)[0]
    assert got.mail_dsn == {"RET": "HDRS", "ENVID": "Env+2BId-42"}
    assert got.rcpt_dsn == [{"NOTIFY": "SUCCESS,DELAY", "ORCPT": "rfc822;Orig+2BRcpt@Dsn.Example"}]


def test_notify_never_suppresses_the_bounce(gateway, sink):
    sink.rcpt_replies["gone@company.com"] = ["550 5.1.1 gone"]
    qid = gateway.send(
        make_message("never@test"), to="gone@company.com", rcpt_options=("NOTIFY=NEVER",)
    )
    wait_for(lambda: f"event='done' qid='{qid}'" in gateway.log(), what="the failure")
    assert "dsn_queued" not in gateway.log()
    assert sink.received == []


def test_ret_full_returns_the_whole_message_with_envid(gateway, sink):
    sink.rcpt_replies["gone@company.com"] = ["550 5.1.1 gone"]
    gateway.send(
        make_message("full@test", size=3000),
        to="gone@company.com",
        mail_options=("RET=FULL", "ENVID=abc123"),
        rcpt_options=("NOTIFY=FAILURE", "ORCPT=rfc822;gone@company.com"),
    )
    report = sink.wait_count(1)[0].message
    status, returned = report.get_payload()[1], report.get_payload()[2]
    text = status.as_string()
    assert "Original-Envelope-Id: abc123" in text
    assert "Original-Recipient: rfc822; gone@company.com" in text
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Message-ID"] == "<full@test>"
    assert "x" * 76 in inner.get_payload()


@pytest.mark.parametrize("content", ["", "full"])
def test_a_bounce_to_an_outside_sender_returns_only_the_headers(make_gateway, sink, content):
    """A sender whose mail came from outside TrustedNetworks is mostly forged: RET=FULL would
    mail the whole spam to its victim (backscatter). Unless BounceContent=full, headers only."""
    gw = make_gateway(f"[smtpgw.retry]\nBounceContent={content}\n" if content else "").start()
    sink.rcpt_replies["gone@company.com"] = ["550 5.1.1 gone"]
    gw.send(
        make_message("outside@test", size=3000),
        to="gone@company.com",
        source="127.0.0.2",
        mail_options=("RET=FULL",),
    )
    report = sink.wait_count(1)[0].message
    returned = report.get_payload()[2]
    if content == "full":
        assert returned.get_content_type() == "message/rfc822"
    else:
        assert returned.get_content_type() == "text/rfc822-headers"
        assert "Message-ID: <outside@test>" in returned.get_payload()
        assert "x" * 76 not in report.as_string()


def test_success_notification_when_next_hop_lacks_dsn(gateway, sink):
    gateway.send(
        make_message("success@test"),
        to="happy@company.com",
        sender="author@example.org",
        rcpt_options=("NOTIFY=SUCCESS",),
    )
    original, report = sink.wait_count(2)
    assert original.message_id == "<success@test>"
    assert report.mail_from == "" and report.rcpt_tos == ["author@example.org"]
    assert "Action: relayed" in report.message.get_payload()[1].as_string()


def test_delay_warning_then_expiry_bounce(make_gateway, sink):
    sink.rcpt_replies["late@company.com"] = ["451 4.2.0 mailbox busy"] * 50
    gw = make_gateway(
        "[smtpgw.retry]\nRetryIntervals=1s\nDelayWarningAfter=0s\nMaxQueueLifetime=3s"
    ).start()
    gw.send(
        make_message("late@test"),
        to="late@company.com",
        sender="author@example.org",
        rcpt_options=("NOTIFY=DELAY,FAILURE",),
    )
    warning, bounce = sink.wait_count(2)
    assert "Action: delayed" in warning.message.get_payload()[1].as_string()
    assert "Will-Retry-Until:" in warning.message.get_payload()[1].as_string()
    status = bounce.message.get_payload()[1].as_string()
    assert "Action: failed" in status and "Status: 5.4.7" in status
    wait_for(lambda: not gw.queue(), what="the expired message to leave the queue")
    assert len(sink.received) == 2
