"""The README is a newcomer's first ten minutes; docs/ holds the reference. Keep both true."""

from __future__ import annotations

import re

from support import ROOT

from mailgate import cli
from mailgate.config import TABLE, load
from mailgate.scan.av import avdb
from mailgate.supervise import supervisor

README = (ROOT / "README.md").read_text()


def test_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) <= 300
    links = re.findall(r"\]\(([^)#]+)\)", README)
    assert "docs/configuration.md" in links
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert missing == []


def test_links_between_documents_resolve():
    missing = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", doc.read_text()):
            if not (doc.parent / link).exists():
                missing.append(f"{doc.name}: {link}")
    assert missing == []


def test_every_option_is_in_the_reference():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [o.key for o in TABLE if f"\n| {o.key} | " not in reference]
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


def test_every_command_in_the_help_is_in_the_readme():
    commands = set(cli.COMMANDS) | {"check-config"}
    missing = [c for c in sorted(commands) if f"`mailgate {c}" not in README]
    assert missing == []


def test_shipped_configuration_is_valid_and_matches_the_quick_start():
    config = load(ROOT / "etc" / "mailgate.conf")
    assert config.listen == [("127.0.0.1", 2525)]
    assert config.spool_path == (ROOT / "spool").resolve()
    assert config.route_for("x@company.com").hops[0].port == 2526
