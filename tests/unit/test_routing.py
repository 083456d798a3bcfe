"""Routing on its own: the ForwardRoute table, then MX through a real DNS server (dnsmasq)."""

from __future__ import annotations

import pytest
from support import free_port, mx_router

from mailgate.send.routing import RouteError


def test_mx_records_in_preference_order(dns_port):
    targets = mx_router(dns_port, "").targets("someone@MX.test")
    assert [(t.host, t.ip, t.port) for t in targets] == [
        ("mail.mx.test", "127.0.0.1", 2600),
        ("backup.mx.test", "127.0.0.3", 2600),
    ]


def test_a_record_when_there_is_no_mx(dns_port):
    assert [t.ip for t in mx_router(dns_port, "").targets("a@amx.test")] == ["127.0.0.1"]


@pytest.mark.parametrize(
    "domain, status", [("none.test", "5.1.2"), ("nullmx.test", "5.1.10"), ("lame.test", "5.1.2")]
)
def test_permanent_routing_errors(dns_port, domain, status):
    with pytest.raises(RouteError) as info:
        mx_router(dns_port, "").targets(f"x@{domain}")
    assert not info.value.temporary
    assert str(info.value).startswith(status)


def test_dns_server_down_is_temporary():
    router = mx_router(free_port(), "")
    router.resolver.lifetime = 1.0
    with pytest.raises(RouteError) as info:
        router.targets("x@mx.test")
    assert info.value.temporary


def test_route_table_first_match_wins(dns_port):
    router = mx_router(
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
