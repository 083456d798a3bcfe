"""One schema: a frozen Config, bounds with FILE:LINE, shipped data an administrator overrides."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
from support import ROOT

from mailgate import config as configmod
from mailgate.config import schema


def write(tmp_path, text: str):
    path = tmp_path / "mailgate.conf"
    path.write_text(text)
    return path


def test_config_is_frozen_and_typed_from_the_schema(tmp_path):
    config = configmod.load(write(tmp_path, "[smtpgw.path]\nSpoolDir=spool\n"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.max_message_size = 1
    fields = {f.name: f.type for f in dataclasses.fields(config)}
    assert set(fields) == {"path", "text"} | {o.attr for o in schema.TABLE}
    assert fields["max_message_size"] is int
    assert fields["session_timeout"] is float
    assert config.max_message_size == 25 << 20


def test_every_option_is_declared_once_with_a_parser_and_a_doc():
    keys = [(o.section.lower(), o.key.lower()) for o in schema.TABLE]
    assert len(keys) == len(set(keys))
    attrs = [o.attr for o in schema.TABLE]
    assert len(attrs) == len(set(attrs))
    for opt in schema.TABLE:
        assert opt.doc, opt.key
        opt.parse(opt.default)


def test_bounds_from_the_schema_are_errors_with_file_and_line(tmp_path):
    path = write(
        tmp_path,
        "[smtpgw.path]\nSpoolDir=spool\n[smtpgw.limits]\nMaxLineLength=500\nMaxAttempts=0\n",
    )
    with pytest.raises(configmod.ConfigError) as caught:
        configmod.load(path)
    assert f"{path}:4: MaxLineLength must be at least 1001" in caught.value.problems
    assert f"{path}:5: MaxAttempts must be at least 1" in caught.value.problems
    path = write(
        tmp_path,
        "[smtpgw.path]\nSpoolDir=spool\n[smtpgw.limits]\nSenders=17\n"
        "[smtpgw.retry]\nRetryIntervals=0s, 5m\n",
    )
    with pytest.raises(configmod.ConfigError) as caught:
        configmod.load(path)
    assert f"{path}:4: Senders must be at most 16" in caught.value.problems
    assert any(
        p.startswith(f"{path}:6: RetryIntervals: every interval") for p in caught.value.problems
    )


def test_a_named_file_that_is_missing_not_a_file_or_unreachable_is_an_error_with_its_line(
    tmp_path,
):
    """Never a traceback, never a wait on a FIFO: each named file's trouble, on its line."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("x\n")
    path = write(
        tmp_path,
        "[smtpgw.path]\nSpoolDir=spool\n[smtpgw.spamtest]\n"
        f"WhitelistSenders=file:{tmp_path / 'fifo'}\n"
        f"BlacklistSenders=file:{tmp_path / 'folder'}\n"
        f"WhitelistNetworks=file:{tmp_path / 'plain' / 'below'}\n"
        f"BlacklistNetworks=file:{tmp_path / 'absent'}\n",
    )
    with pytest.raises(configmod.ConfigError) as caught:
        configmod.load(path)
    assert caught.value.problems == [
        f"{path}:4: WhitelistSenders: not a regular file: '{tmp_path / 'fifo'}'",
        f"{path}:5: BlacklistSenders: not a regular file: '{tmp_path / 'folder'}'",
        f"{path}:6: WhitelistNetworks: cannot read (Not a directory): "
        f"'{tmp_path / 'plain' / 'below'}'",
        f"{path}:7: BlacklistNetworks: no such file '{tmp_path / 'absent'}'",
    ]
    (tmp_path / "notices").mkdir()
    (tmp_path / "notices" / "admin.txt").write_text("Subject: x\n\nbody\n")
    os.mkfifo(tmp_path / "notices" / "sender.txt")
    for folder, problem in (
        ("notices", f"not a regular file: '{tmp_path / 'notices' / 'sender.txt'}'"),
        ("absent", "no such directory 'absent'"),
        ("plain", f"cannot read '{tmp_path / 'plain'}': Not a directory"),
    ):
        path = write(tmp_path, f"[smtpgw.notify]\nTemplates={folder}\n")
        with pytest.raises(configmod.ConfigError) as caught:
            configmod.load(path)
        assert caught.value.problems == [f"{path}:2: Templates: {problem}"]


def test_a_file_beside_the_configuration_overrides_the_shipped_one(tmp_path):
    config = configmod.load(write(tmp_path, "[smtpgw.path]\nSpoolDir=spool\n"))
    shipped = config.template("admin.txt")
    assert shipped is not None and shipped.parent == configmod.data_path("templates")
    assert config.signatures_path == configmod.data_path("avdb")
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "admin.txt").write_text("Subject: ours\n\nbody\n")
    (tmp_path / "avdb").mkdir()
    assert config.template("admin.txt") == tmp_path / "templates" / "admin.txt"
    assert config.template("recipient.txt").parent == configmod.data_path("templates")
    assert config.signatures_path == (tmp_path / "avdb").resolve()


def test_check_config_reports_spam_rule_errors_with_file_and_line(tmp_path):
    rules = tmp_path / "rules.conf"
    rules.write_text("MISSING_DATE 1.20 missing date\nTHIS_IS not a rule\n")
    path = write(
        tmp_path,
        f"[smtpgw.path]\nSpoolDir=spool\n[smtpgw.spamtest]\nRules={rules}\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "mailgate", "check-config", "-c", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{rules}:2: " in result.stderr


def test_options_that_need_a_restart_are_named_by_the_schema(tmp_path):
    before = configmod.load(write(tmp_path, "[smtpgw.path]\nSpoolDir=spool\n"))
    moved = configmod.parse(
        "[smtpgw.path]\nSpoolDir=elsewhere\n[smtpgw.process]\nUser=\n", before.path
    )
    assert configmod.restart_needed(before, moved) == ["SpoolDir", "User"]
    bigger = configmod.parse(
        "[smtpgw.path]\nSpoolDir=spool\n[smtpgw.limits]\nScanners=4\n", before.path
    )
    assert configmod.restart_needed(before, bigger) == []


def test_check_config_without_a_file_says_it_checked_the_built_in_defaults(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mailgate", "check-config"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("built-in defaults (no ") and result.stdout.endswith(": OK\n")


def test_min_free_disk_is_a_size_or_a_share_of_the_file_system(tmp_path):
    conf = tmp_path / "m.conf"
    for text, total, floor in (("100M", 10**12, 100 * 2**20), ("2%", 10**9, 2 * 10**7)):
        conf.write_text(f"[smtpgw.limits]\nMinFreeDisk={text}\n")
        assert configmod.load(conf).min_free_disk.of(total) == floor
    conf.write_text("[smtpgw.limits]\n\nMinFreeDisk=101%\n")
    with pytest.raises(configmod.ConfigError, match=r"m\.conf:3"):
        configmod.load(conf)
