"""The README is the administrator's reference: keep it in step with the code."""

from __future__ import annotations

from support import ROOT

from mailgate import cli
from mailgate.config import OPTIONS, load
from mailgate.scan.av import avdb
from mailgate.supervise import supervisor

README = (ROOT / "README.md").read_text()


def test_every_option_is_documented():
    missing = [
        o.key
        for o in OPTIONS.values()
        if f"| {o.section} | {o.key}" not in README and f", {o.key} |" not in README
    ]
    assert missing == []


def test_every_exit_code_is_documented():
    codes = [
        cli.EXIT_OK,
        cli.EXIT_CONFIG,
        cli.EXIT_USAGE,
        cli.EXIT_NOT_FOUND,
        cli.EXIT_BUSY,
        supervisor.EXIT_ALREADY_RUNNING,
        supervisor.EXIT_CANNOT_START,
        cli.EXIT_ENGINE,
        avdb.NO_SOURCE,
        avdb.NOT_MANAGED,
        avdb.REJECTED,
        avdb.NOT_RELOADED,
    ]
    for code in codes:
        assert f"\n| {code} | " in README


def test_shipped_configuration_is_valid_and_matches_the_quick_start():
    config = load(ROOT / "etc" / "mailgate.conf")
    assert config.listen == [("127.0.0.1", 2525)]
    assert config.spool_path == (ROOT / "spool").resolve()
    assert config.route_for("x@company.com").hops[0].port == 2526
