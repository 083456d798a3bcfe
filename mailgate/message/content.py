"""A message's bytes without holding them: pieces in memory and ranges of an open file.

A 50 MB message must cross the scanner and the sender in a bounded amount of memory, yet a
header edit, a cure or a quarantine copy is naturally "these new bytes, then that stretch of
the original". ``Spliced`` says exactly that and is written out block by block
(``blocks``); plain ``bytes`` is still the form of every small message, and every writer of
the spool takes either (``Content``).

Ranges refer to a file descriptor, not a path, and are read with ``os.pread``: the original
stays readable after a cured copy is renamed over its name, and nobody's file position moves.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BLOCK = 1 << 20


@dataclass(frozen=True)
class FileRange:
    """``end - start`` bytes of the file open as ``fd``, from ``start``."""

    fd: int
    start: int
    end: int

    def __len__(self) -> int:
        return self.end - self.start

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        pos = self.start
        while pos < self.end:
            data = os.pread(self.fd, min(size, self.end - pos), pos)
            if not data:
                raise OSError(f"the file ended at {pos}, before {self.end}: changed under us")
            pos += len(data)
            yield data


@dataclass(frozen=True)
class Spliced:
    """Bytes made of pieces, each ``bytes`` or a ``FileRange``, in order."""

    pieces: tuple[bytes | FileRange, ...]

    def __len__(self) -> int:
        return sum(len(p) for p in self.pieces)

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        for piece in self.pieces:
            if isinstance(piece, FileRange):
                yield from piece.blocks(size)
            elif piece:
                yield piece

    def after(self, offset: int) -> Spliced:
        """The bytes from ``offset`` on, as pieces (nothing is read)."""
        pieces: list[bytes | FileRange] = []
        for piece in self.pieces:
            if offset >= len(piece):
                offset -= len(piece)
                continue
            if offset:
                piece = (
                    FileRange(piece.fd, piece.start + offset, piece.end)
                    if isinstance(piece, FileRange)
                    else piece[offset:]
                )
                offset = 0
            pieces.append(piece)
        return Spliced(tuple(pieces))

    def head(self, limit: int) -> bytes:
        """The first ``limit`` bytes (fewer if there are not so many)."""
        out = bytearray()
        for block in self.blocks(min(BLOCK, max(limit, 1))):
            out += block
            if len(out) >= limit:
                break
        return bytes(out[:limit])


Content = bytes | Spliced | Iterable[bytes]


def blocks(content: Content, size: int = BLOCK) -> Iterator[bytes]:
    """The bytes of ``content`` in blocks (of about ``size`` for a ``Spliced``; an iterable
    of blocks, which can be read once, as it comes)."""
    if isinstance(content, bytes | bytearray):
        if content:
            yield content
    elif isinstance(content, Spliced):
        yield from content.blocks(size)
    else:
        yield from content


def head(content: Content, limit: int) -> bytes:
    return content.head(limit) if isinstance(content, Spliced) else content[:limit]


IN_MEMORY = 1 << 20  # a message up to this size is simply read; a larger one is spliced


class MessageFile:
    """A message in the spool, open for reading by ranges (a context manager)."""

    def __init__(self, path: str | os.PathLike):
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def range(self, start: int = 0, end: int | None = None) -> FileRange:
        return FileRange(self.fd, start, self.size if end is None else end)

    def whole(self) -> Spliced:
        return Spliced((self.range(),))

    def read(self) -> bytes:
        return b"".join(self.range().blocks()) if self.size else b""

    def head(self, limit: int) -> bytes:
        return os.pread(self.fd, min(limit, self.size), 0) if self.size else b""

    def content(self) -> Content:
        """The whole message: its bytes when small, else a ``Spliced`` view of the file."""
        return self.read() if self.size <= IN_MEMORY else self.whole()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> MessageFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
