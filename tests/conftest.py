from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from support import Gateway, Sink, dnsmasq, free_port, mx_answers, mx_router, wait_for


@pytest.fixture
def open_base():
    """A directory the mailgate user can reach (pytest's tmp_path is root's alone), for a
    gateway that, started as root, runs as that user."""
    base = Path(tempfile.mkdtemp(prefix="mailgate-user-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sink():
    s = Sink()
    s.start()
    yield s
    s.stop()


@pytest.fixture
def make_gateway(tmp_path, sink):
    """Build gateways (not started) relaying company.com and example.org to ``sink``."""
    made: list[Gateway] = []

    def make(extra: str = "", name: str = "gw") -> Gateway:
        gw = Gateway(tmp_path / name, free_port(), sink.port_number, extra)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.stop()


@pytest.fixture
def gateway(make_gateway):
    return make_gateway().start()


@pytest.fixture(scope="module")
def dns_port():
    """A dnsmasq on loopback with the MX test domains (``mx.test``, ``nullmx.test`` …)."""
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
    router = mx_router(port, "")
    wait_for(lambda: mx_answers(router), 10, "dnsmasq to answer")
    yield port
    proc.terminate()
    proc.wait()
