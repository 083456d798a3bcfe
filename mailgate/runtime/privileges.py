"""Running as ``[smtpgw.process] User`` instead of root, and the listening sockets that need root.

Started as root, ``mailgate run`` does only three things as root: take the spool lock, bind the
ListenOn sockets (port 25 needs root), and hand the spool to User (``chown``). Then it checks
that User can run the program and use the spool (a child process tries, as User), and the
supervisor itself becomes User; every worker and clamd it starts inherit that. Nothing of
mailgate runs as root after start-up.

The listening sockets stay open in the supervisor and are passed to each receiver it starts
(``MAILGATE_LISTEN_FDS``), so a restarted receiver needs no privilege and loses no connection
waiting in the backlog.

Invariants:
- ``account`` is None unless the process is root and User is set; a User that does not exist
  is an error, never a silent run as root.
- ``drop`` sets the supplementary groups, the group and then the user, and verifies that root
  cannot be regained.
- CLI commands run by root on a spool owned by User act as User (``act_as_spool_owner``), so
  nothing they write is unreadable to the workers; what such a command reads from users'
  folders is read with the folder owner's rights (``read_as_owner``), never with root's.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

LISTEN_FDS_ENV = "MAILGATE_LISTEN_FDS"


class PrivilegeError(Exception):
    """User cannot be become, or cannot run mailgate; the message says what to change."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def account_wanted(user: str) -> bool:
    """Will this process become ``user`` (root, with a User set)?"""
    return os.geteuid() == 0 and bool(user)


def account(user: str) -> Account | None:
    """The account to become: None when not root or when ``user`` is empty."""
    if not account_wanted(user):
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(
            f"[smtpgw.process] User: no such user {user!r} (scripts/setup creates 'mailgate'; "
            "set User= to an existing account)"
        ) from None
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)


def drop(acct: Account) -> None:
    """Become ``acct`` for good (this process and everything it starts)."""
    os.setgroups(list(acct.groups))
    os.setgid(acct.gid)
    os.setuid(acct.uid)
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("still able to become root after dropping privileges")


def hand_over(root: Path, acct: Account) -> None:
    """Make everything under the spool ``root`` owned by ``acct`` (what is not already)."""
    for folder, dirs, files in os.walk(root):
        for name in (folder, *(os.path.join(folder, n) for n in dirs + files)):
            st = os.lstat(name)
            if (st.st_uid, st.st_gid) != (acct.uid, acct.gid):
                os.lchown(name, acct.uid, acct.gid)


def probe(acct: Account, spool_root: Path, config_path: Path) -> None:
    """Check, in children running as ``acct``, that it can run mailgate, use the spool and
    load the configuration as a worker will (``mailgate check-config``): a list, template or
    key that root could read and ``acct`` cannot would otherwise stop every worker as it
    starts, over and over, behind a supervisor that said it was ready."""
    check = (
        "import os, sys, mailgate\n"
        "spool, conf = sys.argv[1], sys.argv[2]\n"
        "if not os.access(spool, os.R_OK | os.W_OK | os.X_OK):\n"
        "    sys.exit(f'cannot use the spool {spool}')\n"
        "if not os.access(conf, os.R_OK):\n"
        "    sys.exit(f'cannot read the configuration {conf} (needed for reloads)')\n"
    )

    def run_as_user(*argv: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                [sys.executable, *argv],
                preexec_fn=lambda: drop(acct),
                capture_output=True,
                text=True,
                timeout=120,
                cwd="/",
                check=False,
            )
        except OSError as exc:
            raise PrivilegeError(f"user {acct.name!r} cannot run {sys.executable}: {exc}") from None

    result = run_as_user("-c", check, str(spool_root), str(config_path))
    if result.returncode != 0:
        why = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise PrivilegeError(
            f"user {acct.name!r} cannot run the gateway ({sys.executable}): {why}. Put "
            "mailgate, its spool and its configuration where that user can reach them "
            "(scripts/setup builds .venv on /usr/bin/python3), or set [smtpgw.process] "
            "User= to keep running as root"
        )
    checked = run_as_user("-m", "mailgate", "check-config", "-c", str(config_path))
    if checked.returncode != 0:
        problems = [line for line in checked.stderr.splitlines() if line.strip()]
        raise PrivilegeError(
            f"user {acct.name!r} cannot use the configuration as it stands: "
            + "; ".join(problems[-5:] or ["no reason given"])
            + f". Make what it names readable by that user (e.g. chgrp {acct.name} and "
            "chmod 640, and the folders on the way), or set [smtpgw.process] User="
        )


def act_as_spool_owner(user: str, spool_root: Path) -> None:
    """For a CLI command run by root: become User if the spool belongs to User."""
    try:
        acct = account(user)
    except PrivilegeError:
        return
    if acct is None:
        return
    try:
        owner = spool_root.stat().st_uid
    except FileNotFoundError:
        return
    if owner == acct.uid:
        drop(acct)


class ReaderFailed(Exception):
    """A ``read_as_owner`` child could not produce what it was asked; the message says why."""


def read_as_owner(path: Path, produce: Callable[[Path], Iterable[Any]]) -> Iterator[Any]:
    """What ``produce(path)`` yields, read with the rights of ``path``'s owner when this
    process is root (else simply here).

    A command run by root on a user's folder (``mailgate learn ~alice/Maildir/.Junk``)
    must not read it as root: a link she plants there would reach any file. So a child
    forked now becomes the owner of ``path`` as given (a symlink counts as its own owner's),
    runs ``produce`` and sends its items back as JSON lines over a pipe; the caller may give
    up root before iterating. A root-owned ``path`` is read as root. An exception in the
    child comes back as ``ReaderFailed`` when the iteration reaches it."""
    if os.geteuid() != 0:
        return iter(produce(path))
    owner = os.lstat(path)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _produce_as(owner, path, produce, write_fd)
    os.close(write_fd)
    return _items_from(pid, read_fd)


def _produce_as(owner: os.stat_result, path: Path, produce, write_fd: int) -> NoReturn:
    status = 1
    try:
        with open(write_fd, "w", encoding="utf-8") as out:
            try:
                if owner.st_uid != 0:
                    drop(_account_of(owner.st_uid, owner.st_gid))
                for item in produce(path):
                    out.write(json.dumps(["item", item]) + "\n")
                status = 0
            except Exception as exc:
                out.write(json.dumps(["failed", str(exc)]) + "\n")
    finally:
        os._exit(status)


def _items_from(pid: int, read_fd: int) -> Iterator[Any]:
    try:
        with open(read_fd, encoding="utf-8") as lines:
            for line in lines:
                kind, value = json.loads(line)
                if kind == "failed":
                    raise ReaderFailed(value)
                yield value
    finally:
        _, status = os.waitpid(pid, 0)
    if status:
        raise ReaderFailed(f"the reading process ended with status {status:#x}")


def _account_of(uid: int, gid: int) -> Account:
    """The account of ``uid`` with its groups; one without a passwd entry (a user removed
    since) is ``uid`` and ``gid`` with no other group."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Account(str(uid), uid, gid, ())
    return Account(
        entry.pw_name, uid, entry.pw_gid, tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    )


def bind(addresses: list[tuple[str, int]]) -> list[socket.socket]:
    """Listening sockets for every ``(host, port)`` (a name may give several addresses)."""
    sockets = []
    try:
        for host, port in addresses:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    sock.bind(address)
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}"
                    ) from None
                sock.listen(512)
                sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def inherited_sockets() -> list[socket.socket] | None:
    """In a receiver: the listening sockets the supervisor passed, or None (started by hand)."""
    value = os.environ.get(LISTEN_FDS_ENV)
    if not value:
        return None
    return [socket.socket(fileno=int(fd)) for fd in value.split(",") if fd]


PR_SET_PDEATHSIG = 1
SUPERVISOR_ENV = "MAILGATE_SUPERVISOR_PID"


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the supervisor dies (clamd cannot ask itself)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def exit_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies, so no worker outlives it.

    Without this, a supervisor killed with SIGKILL would leave its workers running and
    holding claims, and a new supervisor would start a second set beside them.
    """
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if not supervisor:
        return  # started by hand, not by ``mailgate run``
    die_with_parent()
    if os.getppid() != int(supervisor):  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)
