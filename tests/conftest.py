from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from support import Gateway, Sink, free_port


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
