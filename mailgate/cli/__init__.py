"""The ``mailgate`` command: parse the arguments, load the configuration, run one command.

Each command group lives in its own module (``queue``, ``scan``, ``quarantine`` …) and is
imported only when it runs, by name from ``COMMANDS``: a worker process or a quick ``queue
list`` does not load the web console, clamd's client or the SMTP server it does not use.
Exit codes are in ``common`` (and the README).
"""

from __future__ import annotations

import importlib
import os
import sys

from mailgate import config as configmod
from mailgate.cli.common import (
    EXIT_BUSY,
    EXIT_CONFIG,
    EXIT_ENGINE,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
)
from mailgate.cli.parser import build, build_worker
from mailgate.runtime import log as logmod
from mailgate.runtime import privileges, stats
from mailgate.spool import Spool

__all__ = ["EXIT_BUSY", "EXIT_CONFIG", "EXIT_ENGINE", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE"]

# command: "module:function" of this package
COMMANDS = {
    "run": "mailgate.supervise.supervisor:run",
    "queue": "mailgate.cli.queue:run",
    "scan": "mailgate.cli.scan:run",
    "check-template": "mailgate.cli.scan:check_templates",
    "quarantine": "mailgate.cli.quarantine:run",
    "archive": "mailgate.cli.archive:run",
    "update": "mailgate.cli.update:run",
    "stats": "mailgate.cli.stats:stats_command",
    "report": "mailgate.cli.stats:report_command",
    "track": "mailgate.cli.stats:track_command",
    "passwd": "mailgate.cli.passwd:run",
    "train": "mailgate.cli.spam:train",
    "learn": "mailgate.cli.spam:learn",
    "dkim": "mailgate.cli.dkim:run",
    "index": "mailgate.cli.archive:index_command",
}
# worker role (started by the supervisor as ``mailgate worker ROLE``): the module whose
# ``run(config, snapshot)`` is that process
ROLES = {
    "receiver": "mailgate.receive.receiver",
    "scanner": "mailgate.scan.scanner",
    "sender": "mailgate.send.sender",
    "admin": "mailgate.ops.console",
    "indexer": "mailgate.ops.indexer",
}
# commands that act on the spool: run as the spool's owner when started by root (``learn``
# too, after it has started its readers of users' folders: cli.spam.learn)
SPOOL_COMMANDS = (
    "queue",
    "quarantine",
    "archive",
    "update",
    "index",
    "report",
    "stats",
    "track",
)


def _function(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_worker() if argv[:1] == ["worker"] else build()
    args = parser.parse_args(argv[1:] if argv[:1] == ["worker"] else argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    try:
        config = configmod.load(args.config, text_from=getattr(args, "snapshot", None))
    except configmod.ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return _function("mailgate.cli.scan:check_config")(args, config)
    if args.command in ("run", "worker"):
        os.umask(0o077)  # spool, logs, quarantine, caches: readable by the gateway alone
    logmod.setup(
        getattr(args, "role", None) or args.command,
        config.log_level,
        logmod.file_for(config) if args.command in ("run", "worker") else None,
        open_now=not (args.command == "run" and privileges.account_wanted(config.user)),
    )
    if args.command in SPOOL_COMMANDS:
        privileges.act_as_spool_owner(config.user, config.spool_path)
    if args.command == "run":
        return _function(COMMANDS["run"])(config)
    if args.command == "worker":
        return _worker(args.role, config, args.snapshot)
    try:
        return _function(COMMANDS[args.command])(args, config)
    except CommandError as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return exc.code


def _worker(role: str, config: configmod.Config, snapshot) -> int:
    privileges.exit_with_parent()
    stats.start(Spool(config.spool_path))
    return importlib.import_module(ROLES[role]).run(config, snapshot)
