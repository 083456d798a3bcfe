"""Routing: the ForwardRoute table, then MX through a real DNS server (dnsmasq) on loopback."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import dnsmasq, free_port, make_message, wait_for

from mailgate import config as configmod
from mailgate.send.routing import RouteError, Router


@pytest.fixture(scope="module")
def dns_port():
    port = free_port()
    proc = dnsmasq(
        port,
        [
            "--local=/test/",
            "--mx-host=mx.test,mail.mx.test,10",
            "--mx-host=mx.test,backup.mx.test,20",
            "--host-record=mail.mx.test,127.0.0.1",
            "--host-record=backup.mx.test,127.0.0.3",
            "--host-record=amx.test,127.0.0.1",
            "--mx-host=nullmx.test,.,0",
            "--mx-host=lame.test,nowhere.lame.test,10",
        ],
    )
    router = _router(port, "")
    wait_for(lambda: _answers(router), 10, "dnsmasq to answer")
    yield port
    proc.terminate()
    proc.wait()


def _answers(router: Router) -> bool:
    try:
        return bool(router.targets("x@amx.test"))
    except RouteError:
        return False


def _router(port: int, routes: str, tmp: Path = Path("/tmp")) -> Router:
    text = (
        f"[smtpgw.forward]\nNameservers=127.0.0.1:{port}\nDeliveryPort=2600\n{routes}\n"
        "[smtpgw.path]\nSpoolDir=spool\n"
    )
    return Router(configmod.parse(text, tmp / "routing.conf"))


def test_mx_records_in_preference_order(dns_port):
    targets = _router(dns_port, "").targets("someone@MX.test")
    assert [(t.host, t.ip, t.port) for t in targets] == [
        ("mail.mx.test", "127.0.0.1", 2600),
        ("backup.mx.test", "127.0.0.3", 2600),
    ]


def test_a_record_when_there_is_no_mx(dns_port):
    assert [t.ip for t in _router(dns_port, "").targets("a@amx.test")] == ["127.0.0.1"]


@pytest.mark.parametrize(
    "domain, status", [("none.test", "5.1.2"), ("nullmx.test", "5.1.10"), ("lame.test", "5.1.2")]
)
def test_permanent_routing_errors(dns_port, domain, status):
    with pytest.raises(RouteError) as info:
        _router(dns_port, "").targets(f"x@{domain}")
    assert not info.value.temporary
    assert str(info.value).startswith(status)


def test_dns_server_down_is_temporary():
    router = _router(free_port(), "")
    router.resolver.lifetime = 1.0
    with pytest.raises(RouteError) as info:
        router.targets("x@mx.test")
    assert info.value.temporary


def test_route_table_first_match_wins(dns_port):
    router = _router(
        dns_port,
        "ForwardRoute=*@special.mx.test [10.1.1.1]:1025\n"
        "ForwardRoute=*.mx.test [10.2.2.2:1026]\n"
        "ForwardRoute=?@mx.test mx.test:2700\n",
    )
    assert [(t.ip, t.port) for t in router.targets("a@special.mx.test")] == [("10.1.1.1", 1025)]
    assert [(t.ip, t.port) for t in router.targets("a@other.mx.test")] == [("10.2.2.2", 1026)]
    assert [(t.ip, t.port) for t in router.targets("a@mx.test")] == [
        ("127.0.0.1", 2700),
        ("127.0.0.3", 2700),
    ]
    assert [(t.ip, t.port) for t in router.targets("ab@mx.test")] == [
        ("127.0.0.1", 2600),
        ("127.0.0.3", 2600),
    ]


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
