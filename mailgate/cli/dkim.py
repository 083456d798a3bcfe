"""``mailgate dkim keygen DOMAIN SELECTOR``: a signing key and the record that publishes it.

The key is written with O_EXCL and mode 0600 (never over an existing key: a selector's key
is replaced by publishing a new selector), owned by the service ``User`` when root runs the
command, so that the scanners can read it and nobody else can.
"""

from __future__ import annotations

import argparse
import os
import re

from mailgate.cli.common import EXIT_BUSY, EXIT_OK, EXIT_USAGE, CommandError
from mailgate.config import Config
from mailgate.runtime import privileges
from mailgate.runtime.auth import keys

LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def run(args: argparse.Namespace, config: Config) -> int:
    domain, selector = args.domain.lower().strip("."), args.selector
    if not all(LABEL.fullmatch(p) for p in domain.split(".")) or "." not in domain:
        raise CommandError(f"not a domain name: {args.domain!r}", EXIT_USAGE)
    if not all(LABEL.fullmatch(p) for p in selector.split(".")):
        raise CommandError(f"not a selector: {selector!r}", EXIT_USAGE)
    directory = args.directory or config.path.parent / "dkim"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{domain}.{selector}.key"
    pem, record = keys.generate(args.bits)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CommandError(f"{path} exists: choose a new selector", EXIT_BUSY) from None
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
        out.flush()
        os.fsync(out.fileno())
    account = privileges.account(config.user) if config.user else None
    if account is not None:
        os.chown(path, account.uid, account.gid)
    print(f"wrote {path}")
    print("publish in DNS:")
    print(f"  {keys.zone_line(domain, selector, record)}")
    print("and add to mailgate.conf:")
    print(f"  [smtpgw.dkim]\n  SigningKey = {domain} {selector} {path}")
    if not config.is_protected(domain):
        print(f"note: {domain} is not in ProtectedDomains; only those are signed")
    return EXIT_OK
