"""Never an open relay: address tricks from an untrusted client, and what a trusted one may do.

The test gateway trusts only 127.0.0.1; the untrusted client binds to 127.0.0.2. Every form
is sent over real SMTP; whatever gets a 250 is then sent through DATA, and the sink shows
where mail actually went.
"""

from __future__ import annotations

import pytest
from support import RawSession, make_message, wait_for

# (address, accepted from an untrusted client?) — the decisions the README documents.
FORMS = [
    ("user@company.com", True),
    ("User@COMPANY.COM", True),
    ("user@sub.company.com", True),
    ('"user"@company.com', True),
    ("user@company.com.", False),  # trailing dot: malformed (553)
    ("user%other.org@company.com", False),  # percent hack
    ("other.org!user@company.com", False),  # bang path
    ("@company.com:user@other.org", False),  # source route: the real address is other.org
    ("@a.example,@company.com:user@other.org", False),
    ('"user@other.org"@company.com', False),  # quoted local part hiding an @
    ("user\\@other.org@company.com", False),  # escaped @
    ("user@[1.2.3.4]", False),  # IP literal
    ("user@[IPv6:::1]", False),
    ("user@other.org", False),
    ("user@other.org.", False),
    ("user@company.com@other.org", False),
    ("user@evilcompany.com", False),  # a mask is not a suffix match
    ("user@company.com.evil.org", False),
    ("user@company.com%other.org", False),
    ("user@@company.com", False),
    ("user@company..com", False),
    ("postmaster", False),  # no local delivery here: a domain is required
    ("user@", False),
    ("", False),
]


def dialogue(port: int, source: str, forms: list[str]) -> dict[str, str]:
    replies = {}
    with RawSession(port, source) as s:
        assert s.banner.startswith("220")
        s.cmd("EHLO client.example.org")
        assert s.cmd("MAIL FROM:<a@example.org>").startswith("250")
        for form in forms:
            replies[form] = s.cmd(f"RCPT TO:<{form}>")
        if any(r.startswith("250") for r in replies.values()):
            assert s.cmd("DATA").startswith("354")
            assert s.cmd(make_message("battery@test") + b".").startswith("250")
        s.cmd("QUIT")
    return replies


def test_address_tricks_never_open_the_relay(make_gateway, sink):
    # One session tries every form: more refusals than MaxErrors allows by default.
    gateway = make_gateway("[smtpgw.limits]\nMaxErrors=100\n").start()
    assert len(FORMS) >= 20
    replies = dialogue(gateway.port, "127.0.0.2", [form for form, _ok in FORMS])
    for form, accepted in FORMS:
        reply = replies[form]
        if accepted:
            assert reply.startswith("250 2.1.5"), (form, reply)
        else:
            assert reply[:1] == "5" and reply[4:5] == "5", (form, reply)
    relay_denials = [f for f, _ in FORMS if replies[f].startswith("550 5.7.1")]
    assert "user%other.org@company.com" in relay_denials
    assert "@company.com:user@other.org" in relay_denials
    (got,) = sink.wait_count(1)
    domains = {r.rpartition("@")[2].lower() for r in got.rcpt_tos}
    assert domains <= {"company.com", "sub.company.com"}, got.rcpt_tos


@pytest.mark.parametrize(
    "form",
    [
        "user%other.org@company.com",
        "other.org!user@company.com",
        "user@other.org",
        "user@[127.0.0.1]",
    ],
)
def test_a_trusted_client_may_route_anywhere(gateway, sink, form):
    replies = dialogue(gateway.port, "127.0.0.1", [form])
    assert replies[form].startswith("250 2.1.5"), replies
    wait_for(lambda: gateway.log().count("event='queued'") >= 1, what="the message queued")
