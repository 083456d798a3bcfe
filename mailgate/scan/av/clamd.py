"""A clamd of our own: its configuration, its command line, waiting until it answers.

With ``ManageClamd=yes`` the supervisor runs clamd as one of its children, on the database in
the spool's ``avdb/current`` and a socket in ``run/``, restarting it like any worker. The same
code starts short-lived private instances: ``update`` tries a new database on one before
installing it, and ``scan`` uses one when no clamd is running.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mailgate.scan.av.archives import DEFAULT_LIMITS, Limits
from mailgate.scan.av.engine import Engine

CLAMD_CANDIDATES = ("/usr/sbin/clamd", "/usr/local/sbin/clamd")


def binary() -> str:
    found = shutil.which("clamd") or next(
        (c for c in CLAMD_CANDIDATES if os.access(c, os.X_OK)), None
    )
    if found is None:
        raise FileNotFoundError("clamd not found: install clamav-daemon (scripts/setup does)")
    return found


def config_text(
    socket_path: Path,
    database: Path,
    work_dir: Path,
    max_object_size: int,
    log_file: Path,
    limits: Limits = DEFAULT_LIMITS,
    scan_time: float = 120.0,
) -> str:
    """clamd.conf for an instance of ours. AlertEncrypted* and AlertBrokenExecutables turn
    password-protected and broken objects into detections that ``classify`` maps to the
    ``encrypted`` and ``corrupted`` statuses; the limits are written out (the same ones
    ``archives`` checks), and AlertExceedsMax with heuristic alerts turns an object clamd
    stops scanning at one of them into ``Heuristics.Limits.Exceeded.*``, which is
    ``unscannable``, instead of a silent partial scan."""
    return "\n".join(
        [
            f"LocalSocket {socket_path}",
            "LocalSocketMode 600",
            f"DatabaseDirectory {database}",
            f"TemporaryDirectory {work_dir}",
            f"LogFile {log_file}",
            "LogTime yes",
            "Foreground yes",
            "ConcurrentDatabaseReload yes",
            "AlertEncrypted yes",
            "AlertEncryptedArchive yes",
            "AlertEncryptedDoc yes",
            "AlertBrokenExecutables yes",
            "AlertExceedsMax yes",
            "HeuristicAlerts yes",
            f"MaxFileSize {max(1, limits.max_file_size // 1024)}K",
            f"MaxScanSize {max(1, limits.max_scan_size // 1024)}K",
            f"MaxFiles {limits.max_files}",
            f"MaxRecursion {limits.max_recursion}",
            f"MaxScanTime {max(1000, int(scan_time * 1000))}",
            f"StreamMaxLength {max(1, max_object_size // 1024 + 1)}K",
            "MaxThreads 8",
            "",
        ]
    )


def command(conf: Path) -> list[str]:
    return [binary(), "--foreground", f"--config-file={conf}"]


def wait_ready(socket_path: Path, timeout: float, process: subprocess.Popen | None = None) -> bool:
    """Poll PING until clamd answers, ``process`` exits, or ``timeout`` passes."""
    engine = Engine(socket_path, 5.0)
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        if socket_path.exists() and engine.ping():
            return True
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    return False


@contextlib.contextmanager
def temporary(database: Path, timeout: float = 120.0) -> Iterator[Path]:
    """A private clamd on ``database`` for the duration of the block; yields its socket.

    Raises ``RuntimeError`` with clamd's own words when it does not come up (for instance
    because the database does not load).
    """
    work = Path(tempfile.mkdtemp(prefix="mailgate-clamd-"))
    socket_path = work / "clamd.sock"
    conf = work / "clamd.conf"
    log_file = work / "clamd.log"
    conf.write_text(config_text(socket_path, database, work, 25 * 1024 * 1024, log_file))
    process = subprocess.Popen(
        command(conf), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        if not wait_ready(socket_path, timeout, process):
            if process.poll() is None:
                process.kill()
            output, _ = process.communicate(timeout=10)
            text = output.decode(errors="replace")
            if log_file.exists():
                text += log_file.read_text(errors="replace")
            problems = [
                line.strip()
                for line in text.splitlines()
                if "ERROR" in line or "Malformed" in line or "Can't" in line
            ]
            raise RuntimeError("; ".join(problems) or "clamd did not start")
        yield socket_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
        shutil.rmtree(work, ignore_errors=True)


_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_LIMIT_KEYS = {
    "MaxFileSize": "max_file_size",
    "MaxScanSize": "max_scan_size",
    "MaxFiles": "max_files",
    "MaxRecursion": "max_recursion",
}
# clamd's own defaults, for keys its configuration leaves out (man clamd.conf)
_CLAMD_DEFAULTS = {
    "AlertExceedsMax": "no",
    "HeuristicAlerts": "yes",
    "MaxFileSize": "100M",
    "MaxScanSize": "400M",
    "MaxFiles": "10000",
    "MaxRecursion": "17",
}


def external_warnings(conf: Path, limits: Limits) -> list[str]:
    """What in an external clamd's configuration could let a partial scan pass as clean."""
    try:
        text = conf.read_text(errors="replace")
    except OSError as exc:
        return [f"{conf}: cannot read the external clamd's configuration ({exc.strerror})"]
    settings = dict(_CLAMD_DEFAULTS)
    for line in text.splitlines():
        words = line.split(None, 1)
        if len(words) == 2 and not words[0].startswith("#"):
            settings[words[0]] = words[1].strip()
    warnings = []
    for key in ("AlertExceedsMax", "HeuristicAlerts"):
        if settings[key].lower() not in ("yes", "true", "1"):
            warnings.append(
                f"{conf}: {key} is off: clamd would stop at its limits without a word "
                "(set it to yes)"
            )
    for key, attr in _LIMIT_KEYS.items():
        m = re.fullmatch(r"(\d+)\s*([kmg]?)b?", settings[key].lower())
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2)] if m else None
        ours = getattr(limits, attr)
        if value is not None and value and ours and value < ours:
            warnings.append(
                f"{conf}: {key} {settings[key]} is below mailgate's ({ours}): clamd stops "
                "scanning sooner than mailgate checks"
            )
    return warnings
