"""Durable file writes: the only way a spool file is created (fsync'd, mode 0600)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
from pathlib import Path

from mailgate.message.content import Content, blocks
from mailgate.spool.layout import ENVELOPE, MESSAGE


def fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path | str, data: Content, durable: bool = True) -> None:
    """Create ``path`` (it must not exist), write ``data``, fsync it if durable; mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for block in blocks(data):
            view = memoryview(block)
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


def make_fresh_dir(work: str) -> None:
    """Create the empty directory ``work``; what an earlier attempt left there goes first (the
    common case, nothing there, costs one mkdir)."""
    try:
        os.mkdir(work, 0o700)
    except FileExistsError:
        shutil.rmtree(work, ignore_errors=True)
        os.mkdir(work, 0o700)


def write_entry(work: str, message: Content, envelope: dict, durable: bool = True) -> None:
    """Create the message directory ``work`` (any earlier attempt there goes first) with its
    two files, fsync'd with the directory when ``durable``. A write that fails (a full disk)
    leaves nothing behind, so no half message ever waits in tmp/ for a sweep."""
    make_fresh_dir(work)
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


class MessageWriter:
    """A message being received, written to ``tmp/ID@PID/message.eml`` as it arrives.

    Writes are gathered into blocks of ``BLOCK`` bytes, so a message costs a few write calls
    whatever its line count; ``commit`` makes it durable and queues it exactly as
    ``Spool.enqueue`` does (file and envelope fsync'd, entry renamed, queue fsync'd);
    ``abort`` leaves nothing behind.
    """

    BLOCK = 1 << 16

    def __init__(self, work: str, queue: str):
        self.work, self.queue = work, queue
        self.queue_id = os.path.basename(work).partition("@")[0]
        make_fresh_dir(work)
        self.fd: int | None = os.open(
            f"{work}/{MESSAGE}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
        )
        self.pending = bytearray()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if not self.pending and len(data) >= self.BLOCK:  # a whole message: no copy
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            return
        self.pending += data
        if len(self.pending) >= self.BLOCK:
            self._flush()

    def _flush(self) -> None:
        while self.pending:
            del self.pending[: os.write(self.fd, self.pending)]

    def read(self) -> bytes:
        """The message written so far (for an archive copy, say)."""
        self._flush()
        with open(f"{self.work}/{MESSAGE}", "rb") as f:
            return f.read()

    def commit(self, envelope: dict) -> str:
        """Queue the message (durably); the path of its entry."""
        try:
            self._flush()
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
            write_file(f"{self.work}/{ENVELOPE}", dump(envelope))
            fsync_dir(self.work)
        except OSError:
            self.abort()
            raise
        target = f"{self.queue}/{envelope['id']}"
        os.rename(self.work, target)
        fsync_dir(self.queue)
        return target

    def abort(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
        shutil.rmtree(self.work, ignore_errors=True)
