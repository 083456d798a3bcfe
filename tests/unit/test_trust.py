"""The trust boundary: the client checks judge the hop where mail entered from outside."""

from __future__ import annotations

from mailgate.config import in_networks, parse_networks
from mailgate.scan.spam import checks, trust

NETS = parse_networks("10.0.0.0/8, 127.0.0.1/32")


def trusted(ip: str) -> bool:
    return in_networks(ip, NETS)


def hop(helo: str, ip: str, by: str) -> str:
    return f"from {helo} (rdns.example [{ip}]) by {by} with ESMTP id X; Wed, 2 Dec 2026 10:00 +0000"


def test_an_outside_client_is_judged_itself():
    judged = trust.boundary({"ip": "192.0.2.7", "helo": "bad.example"}, [], trusted)
    assert (judged.helo, judged.ip, judged.inside) == ("bad.example", "192.0.2.7", 0)


def test_behind_a_trusted_relay_the_first_outside_hop_is_judged():
    chain = [
        hop("mx1.corp", "10.1.1.1", "relay.corp"),  # inside: the relay got it from our MX
        hop("[198.51.100.9]", "198.51.100.9", "mx1.corp"),  # where it came in from outside
        hop("forged.example", "203.0.113.5", "somewhere.example"),  # written outside
    ]
    judged = trust.boundary({"ip": "10.0.0.5", "helo": "relay.corp"}, chain, trusted)
    assert (judged.helo, judged.ip, judged.inside) == ("[198.51.100.9]", "198.51.100.9", 2)


def test_mail_written_inside_has_no_hop_to_judge():
    local = "by app.corp (Postfix, from userid 1000) id 1; Wed, 2 Dec 2026 10:00 +0000"
    for chain in ([], [hop("app.corp", "10.2.2.2", "relay.corp")], [local]):
        judged = trust.boundary({"ip": "127.0.0.1", "helo": "gw"}, chain, trusted)
        assert not judged.judged and judged.helo == "" and judged.inside == len(chain)


def test_missing_fields_are_added_for_trusted_clients_only():
    envelope = {
        "id": "1" * 21,
        "mail_from": "app@company.com",
        "received_at": 1.79e9,
        "client": {"ip": "127.0.0.1"},
    }
    added = dict(trust.missing_fields(["Subject"], envelope, trusted, "gw.company.com"))
    assert added["From"] == "app@company.com"
    assert added["Message-ID"] == f"<{'1' * 21}@gw.company.com>"
    assert "Date" in added
    assert trust.missing_fields(["DATE", "message-id", "From"], envelope, trusted, "gw") == []
    outside = {**envelope, "client": {"ip": "192.0.2.1"}}
    assert trust.missing_fields(["Subject"], outside, trusted, "gw") == []
    notice = {**envelope, "kind": "notification"}
    assert trust.missing_fields(["Subject"], notice, trusted, "gw") == []


def test_the_forgery_check_reads_only_what_was_written_outside():
    claims_us = "from x ([192.0.2.1]) by gw.company.com with SMTP; Wed, 2 Dec 2026 10:00 +0000"
    facts = checks.Facts(
        message=None,
        headers={},
        text="",
        raw_text="",
        html_only=False,
        obfuscated=False,
        links=[],
        urls=[],
        mail_from="",
        helo="",
        client_ip="",
        hostname="gw.company.com",
    )
    facts.__dict__["received"] = [(claims_us, None)]
    assert checks.CHECKS["received_forged"](facts)
    facts.inside = 1
    assert not checks.CHECKS["received_forged"](facts)
