"""Durable file writes: the only way a spool file is created (fsync'd, mode 0600)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from mailgate.spool.layout import ENVELOPE, MESSAGE


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path | str, data: bytes, durable: bool = True) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync it if durable; mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def write_file_replacing(path: Path | str, data: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    write_file(path, data)


def dump(envelope: dict) -> bytes:
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8") + b"\n"


def write_entry(work: str, message: bytes, envelope: dict, durable: bool = True) -> None:
    """Create the message directory ``work`` (any earlier attempt there goes first) with its
    two files, fsync'd with the directory when ``durable``. A write that fails (a full disk)
    leaves nothing behind, so no half message ever waits in tmp/ for a sweep."""
    shutil.rmtree(work, ignore_errors=True)
    os.mkdir(work, 0o700)
    try:
        write_file(f"{work}/{MESSAGE}", message, durable)
        write_file(f"{work}/{ENVELOPE}", dump(envelope), durable)
        if durable:
            fsync_dir(work)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        raise
