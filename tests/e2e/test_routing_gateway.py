"""Routing in a running gateway: delivery by MX and bounces, with a real DNS server."""

from __future__ import annotations

from support import make_message, wait_for


def test_delivery_by_mx_end_to_end(make_gateway, sink, dns_port):
    gw = make_gateway(
        f"[smtpgw.forward]\nNameservers=127.0.0.1:{dns_port}\nDeliveryPort={sink.port_number}"
    ).start()
    gw.send(make_message("mx@test"), to=["one@mx.test", "two@amx.test"])
    got = sink.wait_count(1)
    wait_for(lambda: sum(len(r.rcpt_tos) for r in sink.received) == 2, what="both recipients")
    delivered = sorted(rcpt for r in sink.received for rcpt in r.rcpt_tos)
    assert delivered == ["one@mx.test", "two@amx.test"]
    assert got[0].message_id == "<mx@test>"


def test_unknown_domain_bounces(make_gateway, sink, dns_port):
    gw = make_gateway(f"[smtpgw.forward]\nNameservers=127.0.0.1:{dns_port}").start()
    gw.send(make_message("nx@test"), to="x@none.test", sender="author@example.org")
    report = sink.wait_count(1)[0]
    assert report.rcpt_tos == ["author@example.org"]
    assert "Status: 5.1.2" in report.message.get_payload()[1].as_string()
