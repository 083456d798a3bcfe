"""``mailgate passwd``: set the web console password."""

from __future__ import annotations

import argparse
import getpass
import sys

from mailgate.cli.common import EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import Config, passwords
from mailgate.runtime import privileges


def run(args: argparse.Namespace, config: Config) -> int:

    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New console password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the two passwords differ; nothing changed", EXIT_USAGE)
    if len(password) < passwords.MIN_LENGTH:
        raise CommandError(
            f"a password needs at least {passwords.MIN_LENGTH} characters; nothing changed",
            EXIT_USAGE,
        )
    path = config.password_path
    try:
        acct = privileges.account(config.user)
    except privileges.PrivilegeError:
        acct = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        passwords.write_password_file(
            path, passwords.hash_password(password), (acct.uid, acct.gid) if acct else None
        )
    except OSError as exc:
        problem = f"cannot write {path}: {exc.strerror}; nothing changed"
        raise CommandError(problem, EXIT_USAGE) from None
    print(f"{path}: password set; it takes effect at the next login and ends every session")
    return EXIT_OK
