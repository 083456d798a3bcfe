"""Durable file writes: the only way a spool file is created (fsync'd, mode 0600)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
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


class RootSafeLock:
    """An exclusive ``flock`` on ``run/NAME``, taken by a process that may still be root in a
    directory the service user can write.

    filelock would follow a symlink planted there (and truncate what it points to); here the
    directory and the file are opened with O_NOFOLLOW, and anything but a regular file is
    refused with ``UnsafePath``. ``acquire`` is False when another process holds the lock.
    """

    def __init__(self, folder: Path | str, name: str):
        self.folder, self.name = os.fspath(folder), name
        self.fd: int | None = None

    def acquire(self) -> bool:
        try:
            dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise UnsafePath(f"{self.folder}: {exc.strerror} (a symlink planted there?)") from None
        try:
            fd = os.open(
                self.name,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise UnsafePath(
                f"{self.folder}/{self.name}: {exc.strerror} (a symlink planted there?)"
            ) from None
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafePath(f"{self.folder}/{self.name} is not a regular file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class UnsafePath(OSError):
    """A path in the spool is not what mailgate made there (a symlink, a device...)."""
