"""Reading ``strace -ff -y`` output to check the spool's durability rules, syscall by syscall.

The rules, for every thread of every process (each writes and hands off on its own):
- a rename into a spool state (a queue, or quarantine/<status>) or a claim moves nothing this
  thread created or changed without fsync'ing it: no file, no directory whose entries changed;
- after a rename into a spool state, the destination directory is fsync'd before the thread
  creates, opens for writing or renames anything else (and before it ends).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

CALL_RE = re.compile(r"^(\w+)\((.*)\)\s+=\s+(-?\d+)")
STRING_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
DIRFD_RE = re.compile(r"^(?:AT_FDCWD|\d+)<(.*?)>")
FD_RE = re.compile(r"^\d+<(.*)>$")
TRACED = (
    "openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,fsync,fdatasync,"
    "rmdir,unlink,unlinkat"
)
STATES = ("incoming", "ready", "deferred", "hold", "corrupt")
CLAIMS = ("scanning", "sending")


@dataclass
class Report:
    handoffs: dict[str, int] = field(default_factory=dict)  # destination kind -> renames seen
    violations: list[str] = field(default_factory=list)


def command(prefix: Path) -> tuple[str, ...]:
    return ("strace", "-ff", "-qq", "-y", "-o", str(prefix), "-e", f"trace={TRACED}")


def check(prefix: Path, spool: Path) -> Report:
    report = Report()
    for path in sorted(prefix.parent.glob(prefix.name + ".*")):
        _check_thread(path, os.path.realpath(spool), report)
    return report


def _kind(directory: str, spool: str) -> str | None:
    """``incoming`` … for a queue, ``quarantine`` for quarantine/<status>, ``claim``, None."""
    rel = os.path.relpath(directory, spool)
    if rel in STATES:
        return rel
    if rel in CLAIMS:
        return "claim"
    parts = rel.split("/")
    if len(parts) == 2 and parts[0] == "quarantine":
        return "quarantine"
    return None


def _paths(args: str) -> list[str]:
    """The path arguments of a call, each made absolute with the directory fd before it."""
    found = []
    for m in STRING_RE.finditer(args):
        path = m.group(1)
        if not path.startswith("/"):
            token = args[: m.start()].rstrip(", ").rsplit(", ", 1)[-1]
            d = DIRFD_RE.match(token)
            if d:
                path = os.path.join(d.group(1), path)
        found.append(os.path.normpath(path))
    return found


def _check_thread(trace: Path, spool: str, report: Report) -> None:
    dirty: set[str] = set()
    owed: dict[str, str] = {}  # state directory -> what was renamed into it
    where = f"{trace.name}"

    def going_on(what: str) -> None:
        for folder, moved in owed.items():
            report.violations.append(
                f"{where}: {moved} handed off but {folder} not fsync'd before {what}"
            )
        owed.clear()

    for line in trace.read_text(errors="replace").splitlines():
        m = CALL_RE.match(line)
        if not m or int(m.group(3)) < 0:
            continue
        name, args = m.group(1), m.group(2)
        if name in ("fsync", "fdatasync"):
            fd = FD_RE.match(args.strip())
            if fd:
                dirty.discard(fd.group(1))
                owed.pop(fd.group(1), None)
            continue
        paths = _paths(args)
        if not paths or not any(p.startswith(spool + "/") for p in paths):
            continue
        if name in ("open", "openat", "creat"):
            writing = name == "creat" or re.search(r"O_WRONLY|O_RDWR|O_CREAT", args)
            if writing:
                going_on(f"writing {paths[0]}")
                dirty.add(paths[0])
                if "O_CREAT" in args or name == "creat":
                    dirty.add(os.path.dirname(paths[0]))
        elif name in ("mkdir", "mkdirat"):
            going_on(f"making {paths[0]}")
            dirty.update((paths[0], os.path.dirname(paths[0])))
        elif name in ("rmdir", "unlink", "unlinkat"):
            gone = paths[0]
            dirty = {p for p in dirty if p != gone and not p.startswith(gone + "/")}
            dirty.add(os.path.dirname(gone))
        elif name.startswith("rename") and len(paths) == 2:
            src, dst = paths
            target = os.path.dirname(dst)
            kind = _kind(target, spool)
            if owed and target not in owed:  # several entries into one directory: one fsync
                going_on(f"renaming {src}")
            if kind is not None:
                unsynced = sorted(p for p in dirty if p == src or p.startswith(src + "/"))
                if unsynced:
                    report.violations.append(
                        f"{where}: {src} -> {dst} moves what was not fsync'd: {unsynced}"
                    )
                report.handoffs[kind] = report.handoffs.get(kind, 0) + 1
            dirty = {dst + p[len(src) :] if p.startswith(src + "/") else p for p in dirty}
            dirty.update((os.path.dirname(src), target))
            if kind is not None and kind != "claim":
                owed[target] = dst
    going_on("the end of the trace")
