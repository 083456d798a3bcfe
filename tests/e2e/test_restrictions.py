"""HELO checks, recipient verification and block lists at connect, over real SMTP."""

from __future__ import annotations

import pytest
from support import RawSession, dnsmasq, free_port, make_message, wait_for


def dialogue(port: int, source: str, lines: list[str]) -> list[str]:
    """The banner and the reply to each line (only the banner if it refuses)."""
    with RawSession(port, source) as s:
        if not s.banner.startswith("220"):
            return [s.banner]
        return [s.banner] + [s.cmd(line) for line in lines]


def test_helo_claiming_to_be_us_or_invalid(make_gateway):
    gw = make_gateway("[smtpgw.network]\nHostname=gw.company.com\nRejectInvalidHelo=yes\n").start()
    for helo, expected in (
        ("EHLO gw.company.com", "550 5.7.1"),
        ("HELO GW.Company.Com", "550 5.7.1"),
        ("EHLO [127.0.0.1]", "550 5.7.1"),  # our ListenOn address
        ("EHLO bad_name!here", "501 5.5.2"),
        ("HELO [999.1.1.1]", "501 5.5.2"),
        ("EHLO client.example.org", "250"),
        ("EHLO [192.0.2.7]", "250"),
    ):
        reply = dialogue(gw.port, "127.0.0.2", [helo])[1]
        assert reply.startswith(expected), (helo, reply)
    # A refused HELO leaves the session without a name: MAIL must wait for a good one.
    replies = dialogue(gw.port, "127.0.0.2", ["EHLO gw.company.com", "MAIL FROM:<a@b.org>"])
    assert replies[2].startswith("503")
    # Trusted clients are not checked.
    assert dialogue(gw.port, "127.0.0.1", ["EHLO gw.company.com"])[1].startswith("250")


def test_recipient_verification_refuses_unknown_users(make_gateway, sink, tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("# the people of company.com\nalice@company.com\n*@sub.company.com\n")
    gw = make_gateway(f"[smtpgw.network]\nValidRecipients=file:{users}\n").start()
    replies = dialogue(
        gw.port,
        "127.0.0.2",
        [
            "EHLO x.example.org",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<bob@company.com>",
            "RCPT TO:<Alice@Company.com>",
            "RCPT TO:<anyone@sub.company.com>",
            "RCPT TO:<x@other.org>",
        ],
    )
    assert replies[3] == ("550 5.1.1 <bob@company.com>: Recipient address rejected: User unknown")
    assert replies[4].startswith("250") and replies[5].startswith("250")
    assert replies[6].startswith("550 5.7.1")  # relay control comes first


@pytest.fixture
def rbl_dns():
    port = free_port()
    proc = dnsmasq(port, ["--local=/test/", "--host-record=2.0.0.127.bl.test,127.0.0.2"])
    yield port
    proc.terminate()
    proc.wait()


def test_block_list_at_connect_rejects(make_gateway, rbl_dns):
    gw = make_gateway(
        f"[smtpgw.network]\nConnectRBL=bl.test 127.0.0.2\n"
        f"[smtpgw.forward]\nNameservers=127.0.0.1:{rbl_dns}\n"
    ).start()
    banner = wait_for(
        lambda: (b := dialogue(gw.port, "127.0.0.2", [])[0]).startswith("554") and b,
        10,
        "the listing to be seen",
    )
    assert banner == "554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
    assert dialogue(gw.port, "127.0.0.3", [])[0].startswith("220")  # not listed
    assert dialogue(gw.port, "127.0.0.1", [])[0].startswith("220")  # trusted: not asked


def test_block_list_at_connect_only_marks(make_gateway, sink, rbl_dns):
    gw = make_gateway(
        "[smtpgw.network]\nConnectRBL=bl.test\nConnectRBLAction=mark\n"
        f"[smtpgw.forward]\nNameservers=127.0.0.1:{rbl_dns}\n"
    ).start()
    gw.send(make_message("marked@test"), source="127.0.0.2")
    got = sink.wait_count(1)[0]
    assert got.message["X-Mailgate-RBL"].startswith("listed in bl.test")


def test_recipients_are_verified_at_the_next_hop_and_remembered(make_gateway, sink):
    closed = free_port()
    gw = make_gateway(
        "[smtpgw.network]\nRecipientVerification=next-hop\nProtectedDomains=down.example\n"
        f"[smtpgw.forward]\nForwardRoute=*@down.example [127.0.0.1:{closed}]\n"
    ).start()
    sink.rcpt_replies["ghost@company.com"] = ["550 5.1.1 no such user here"]
    with RawSession(gw.port, source="127.0.0.2") as s:  # from outside: verified
        s.cmd("EHLO client.example.org")
        s.cmd("MAIL FROM:<a@example.org>")
        assert s.cmd("RCPT TO:<ghost@company.com>").startswith("550 5.1.1")
        probes = sink.sessions
        # the next hop would say yes now (its one 550 is used up): the answer is remembered
        assert s.cmd("RCPT TO:<Ghost@company.com>").startswith("550 5.1.1")
        assert sink.sessions == probes
        assert s.cmd("RCPT TO:<x@down.example>").startswith("450 4.1.1")  # no answer
        assert s.cmd("RCPT TO:<user@company.com>").startswith("250")
        assert s.cmd("DATA").startswith("354")
        assert s.cmd(b"Subject: verified\r\nMessage-ID: <v@test>\r\n\r\nhi\r\n.").startswith("250")
    (got,) = sink.wait_count(1)
    assert got.rcpt_tos == ["user@company.com"]
    assert "event='rcpt_refused'" in gw.log()
