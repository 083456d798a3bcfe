"""The configuration reference and the sample file, both written from the schema.

``docs/configuration.md`` lists every option; the sample ``etc/mailgate.conf`` sets a few of
them, each under a comment taken from the schema. ``python -m mailgate.config.reference``
rewrites both in a checkout; ``--check`` only compares and exits 1 when either is stale (the
test suite runs it), so the schema stays the one place an option is described.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mailgate.config.schema import TABLE, Option, option

# What the sample sets: (section, key, value, note). The note, when there is one, is a line
# about this choice of value; the option's own description always comes from the schema.
SAMPLE = [
    ("smtpgw.network", "ListenOn", "127.0.0.1:2525", ""),
    ("smtpgw.network", "ProtectedDomains", "company.com, *.company.com", ""),
    ("smtpgw.network", "TrustedNetworks", "127.0.0.0/8, ::1/128", ""),
    ("smtpgw.forward", "ForwardRoute", "*@company.com [127.0.0.1:2526]", ""),
    (
        "smtpgw.forward",
        "ForwardRoute",
        "* [127.0.0.1:2526]",
        "everything else also goes to the next MTA (a smarthost); remove to deliver by MX",
    ),
    ("smtpgw.path", "SpoolDir", "../spool", "the spool of this checkout"),
    ("smtpgw.limits", "MaxMessageSize", "25M", ""),
    ("smtpgw.limits", "MaxRecipients", "1000", ""),
    ("smtpgw.limits", "MaxQueueSize", "10000", ""),
    ("smtpgw.limits", "MinFreeDisk", "1%", ""),
    ("smtpgw.limits", "Scanners", "2", ""),
    ("smtpgw.limits", "Senders", "2", ""),
    ("smtpgw.retry", "RetryIntervals", "1m, 5m, 15m, 30m, 1h, 2h, 4h", ""),
    ("smtpgw.retry", "MaxQueueLifetime", "5d", ""),
    ("smtpgw.retry", "DelayWarningAfter", "4h", ""),
    (
        "smtpgw.admin",
        "Listen",
        "127.0.0.1:9825",
        "set the console password with: mailgate passwd",
    ),
    ("smtpgw.admin", "MetricsListen", "127.0.0.1:9825", ""),
    ("smtpgw.process", "User", "mailgate", ""),
]

SAMPLE_HEAD = """\
; mailgate: the sample configuration (listen on 127.0.0.1:2525, relay to 127.0.0.1:2526).
; Every option not set here has a built-in default: docs/configuration.md lists them all.
; Relative paths are relative to the directory of this file.
; The comments are generated from mailgate/config/options.toml
; (python -m mailgate.config.reference); the values are yours to edit.
"""


def _default(opt: Option) -> str:
    if opt.shown:
        return opt.shown
    return f"`{opt.default}`" if opt.default else "(none)"


def markdown() -> str:
    lines = [
        "# Configuration reference",
        "",
        "Generated from `mailgate/config/options.toml` by `python -m mailgate.config.reference`;",
        "do not edit by hand. `etc/mailgate.conf` is an INI file: keys are case-insensitive,",
        "`;` and `#` start comments (also after a value, following a space), repeatable keys may",
        "appear several times, and an indented line continues the previous key. Relative paths",
        "are relative to the directory of the configuration file. `mailgate check-config`",
        "reports every problem as `FILE:LINE: message`.",
        "",
        "Reload: options marked *restart* take effect at the next `mailgate run`; every other",
        "option is re-read on SIGHUP (or `touch spool/control/reload`).",
    ]
    section = None
    for opt in TABLE:
        if opt.section != section:
            section = opt.section
            lines += [
                "",
                f"## [{section}]",
                "",
                "| key | default | meaning |",
                "| --- | --- | --- |",
            ]
        notes = []
        if opt.repeatable:
            notes.append("repeatable")
        if opt.min is not None:
            notes.append(f"at least {opt.min}")
        if opt.max is not None:
            notes.append(f"at most {opt.max}")
        if not opt.reloadable:
            notes.append("*restart*")
        extra = f" ({'; '.join(notes)})" if notes else ""
        lines.append(f"| {opt.key} | {_default(opt)} | {opt.doc}{extra} |")
    return "\n".join(lines) + "\n"


def sample() -> str:
    out = [SAMPLE_HEAD.rstrip("\n")]
    section = None
    for sect, key, value, note in SAMPLE:
        opt = option(sect, key)
        if sect != section:
            section = sect
            out += ["", f"[{sect}]"]
        default = _default(opt).replace("(none)", "none")
        out.append(f"; {key}: {opt.doc} (default: {default})")
        if note:
            out.append(f"; {note}")
        out.append(f"{key}={value}")
    return "\n".join(out) + "\n"


def outputs(root: Path) -> dict[Path, str]:
    return {
        root / "docs" / "configuration.md": markdown(),
        root / "etc" / "mailgate.conf": sample(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailgate.config.reference")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the checkout")
    parser.add_argument("--check", action="store_true", help="exit 1 if a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs(args.root).items():
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current == text:
            continue
        stale.append(path)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        verb = "stale" if args.check else "written"
        print(f"{path}: {verb}", file=sys.stderr if args.check else sys.stdout)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
