"""The wheel is complete: installed in a fresh venv outside the checkout, it relays and scans.

Everything the package reads at run time (option schema, templates, rules, token table,
signatures, console assets) must travel inside it; a file found only through the checkout
would pass every other test and fail here.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv

import pytest
from mimebuild import EICAR, TEXT, multipart, part
from support import ROOT, Gateway, free_port, make_message, wait_for


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv outside the checkout with the freshly built wheel installed (and its deps)."""
    base = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(base / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = next((base / "dist").glob("mailgate-*.whl"))
    venv.create(base / "venv", with_pip=True)
    python = base / "venv" / "bin" / "python"
    pip = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=base,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    where = subprocess.run(
        [str(python), "-c", "import mailgate; print(mailgate.__file__)"],
        capture_output=True,
        text=True,
        cwd=base,
        timeout=60,
    )
    assert where.stdout.startswith(str(base / "venv")), where.stdout + where.stderr
    return python


def test_installed_wheel_checks_config_relays_and_quarantines_eicar(installed, tmp_path, sink):
    gw = Gateway(tmp_path / "gw", free_port(), sink.port_number, python=str(installed))
    check = gw.cli("check-config", check=True)
    assert check.stdout.strip() == f"{gw.conf}: OK"
    offer, conf = tmp_path / "offer.eml", tmp_path / "spam.conf"
    offer.write_bytes(make_message(subject="Lowest prices, order now!!!", msgid="o@test"))
    conf.write_text(f"[smtpgw.path]\nSpoolDir={tmp_path / 'spam-spool'}\n")
    scan = [str(installed), "-m", "mailgate", "scan", "--json", "--no-network", "-c", str(conf)]
    scanned = subprocess.run([*scan, str(offer)], capture_output=True, text=True, cwd="/")
    assert scanned.returncode == 0, scanned.stderr
    rules = json.loads(scanned.stdout)["spam"]["rules"]
    assert any(r.startswith("BAYES_") for r in rules), rules  # the shipped token table
    assert any(r.startswith("GRAMS_") for r in rules), rules  # and character model, loaded
    gw.start()
    try:
        gw.send(make_message(subject="from the wheel", msgid="wheel@test"))
        got = sink.wait_count(1)
        assert got[0].message["Subject"] == "from the wheel"
        qid = gw.send(multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="eicar@test"))
        wait_for(lambda: gw.entries("quarantine/infected") == [qid], what="EICAR quarantined")
        listing = json.loads(gw.cli("quarantine", "list", "--json", check=True).stdout)
        assert [row["id"] for row in listing] == [qid]
    finally:
        gw.stop()
