"""``mailgate passwd``: set the web console password."""

from __future__ import annotations

import argparse
import getpass
import sys

from mailgate.cli.common import EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import Config, parse, passwords


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
    text = passwords.with_hash(config.text, passwords.hash_password(password))
    parse(text, config.path)  # the edit must leave a valid file
    passwords.write_config(config.path, text)
    print(f"{config.path}: PasswordHash written; 'mailgate run' picks it up on reload (SIGHUP)")
    return EXIT_OK
