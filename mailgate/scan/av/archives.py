"""Archives that would make a scan partial: bombs and anything past clamd's limits.

clamd is the one that looks inside archives for malware, but what it cannot open to the end
it skips without a word unless it alerts, and for zip members over MaxFileSize it does not
alert (ClamAV issue #633): a virus at the end of a big enough member, or a bomb nested a few
levels deep, came out "clean". So every object is walked here first, at every nesting level,
with the same limits mailgate writes into the clamd it manages:

- zip (a central directory anywhere in the data: prefixed and self-extracting archives, zip64
  and data descriptors as Python's zipfile reads them), tar, and the single-stream
  compressors gzip, bzip2 and xz, recognised by their content;
- member sizes come from the archive's own directory (nothing inflated for that); a member is
  unpacked only to look inside it when it is itself an archive, and a compressed stream is
  inflated chunk by chunk, never past the limit it is checked against.

The first limit broken is the reason the object is ``unscannable``: ``limit:max-filesize``
(one member over MaxFileSize), ``limit:max-scansize`` (more than MaxUnpackedSize unpacked in
all), ``limit:max-files``, ``limit:max-recursion``, ``limit:ratio`` (over 1000:1 and 1 MiB:
a decompression bomb). 7z and rar are left to clamd, whose own limit alerts (AlertExceedsMax)
are ``unscannable`` too.
"""

from __future__ import annotations

import bz2
import io
import lzma
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from mailgate.config import Config

CHUNK = 1 << 16
NESTED_KEEP = 32 << 20  # larger members are not unpacked to look inside (clamd still does)
RATIO = 1000
RATIO_FLOOR = 1 << 20
SNIFF = 512
SPOOLED = 1 << 20


@dataclass(frozen=True)
class Limits:
    max_file_size: int
    max_scan_size: int
    max_files: int
    max_recursion: int


DEFAULT_LIMITS = Limits(100 << 20, 400 << 20, 10000, 20)


def limits_of(config: Config) -> Limits:
    return Limits(
        config.max_file_size, config.max_unpacked_size, config.max_files, config.max_recursion
    )


class LimitBroken(Exception):
    """An archive goes past a limit; the text is the reason (``limit:…``)."""


@dataclass
class _Budget:
    limits: Limits
    unpacked: int = 0
    files: int = 0

    def member(self, size: int, packed: int | None = None) -> None:
        limits = self.limits
        self.files += 1
        if limits.max_files and self.files > limits.max_files:
            raise LimitBroken(f"limit:max-files (more than {limits.max_files} members)")
        if limits.max_file_size and size > limits.max_file_size:
            raise LimitBroken(
                f"limit:max-filesize (a member of {size} bytes, over {limits.max_file_size})"
            )
        self.unpacked += size
        if limits.max_scan_size and self.unpacked > limits.max_scan_size:
            raise LimitBroken(
                f"limit:max-scansize (unpacks to over {limits.max_scan_size} bytes in all)"
            )
        if packed is not None and size > RATIO_FLOOR and size > RATIO * max(1, packed):
            raise LimitBroken(f"limit:ratio (a member unpacks {size // max(1, packed)}:1)")


def limit_broken(data: bytes | BinaryIO, limits: Limits) -> str | None:
    """The reason ``data`` (bytes, or a seekable binary file) cannot be scanned to the end,
    or None."""
    try:
        _walk(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data, 0, _Budget(limits))
    except LimitBroken as exc:
        return str(exc)
    return None


def _size(f: BinaryIO) -> int:
    return f.seek(0, io.SEEK_END)


def kind_of(f: BinaryIO) -> str | None:
    """Which archive the file ``f`` is, judged by its content; None for anything else."""
    f.seek(0)
    head = f.read(SNIFF)
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    size = _size(f)
    f.seek(max(0, size - (65536 + 22)))
    if b"PK\x05\x06" in f.read() and zipfile.is_zipfile(f):
        return "zip"
    return None


def _walk(f: BinaryIO, depth: int, budget: _Budget) -> None:
    kind = kind_of(f)
    if kind is None:
        return
    if budget.limits.max_recursion and depth >= budget.limits.max_recursion:
        raise LimitBroken(f"limit:max-recursion (archives nested over {depth} deep)")
    f.seek(0)
    if kind == "zip":
        _zip(f, depth, budget)
    elif kind == "tar":
        _tar(f, depth, budget)
    else:
        with _inflate(kind, f, budget) as inner:
            _walk(inner, depth + 1, budget)


def _zip(f: BinaryIO, depth: int, budget: _Budget) -> None:
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError):
        return  # clamd judges what Python cannot read
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        for m in members:
            budget.member(m.file_size, m.compress_size)
        for m in members:
            _nested(lambda m=m: archive.open(m), m.file_size, depth, budget)


def _tar(f: BinaryIO, depth: int, budget: _Budget) -> None:
    try:
        archive = tarfile.open(fileobj=f, mode="r:")  # noqa: SIM115
    except (tarfile.TarError, ValueError, OSError, EOFError):
        return
    with archive:
        try:
            members = [m for m in archive if m.isfile()]
        except (tarfile.TarError, ValueError, OSError, EOFError):
            return
        for m in members:
            budget.member(m.size)
        for m in members:
            _nested(lambda m=m: archive.extractfile(m), m.size, depth, budget)


def _scratch() -> BinaryIO:
    """Room for an unpacked member: memory while small, an unnamed temporary file after."""
    return tempfile.SpooledTemporaryFile(max_size=SPOOLED)


def _nested(opener, size: int, depth: int, budget: _Budget) -> None:
    """Look inside a member when its first bytes say it is an archive itself."""
    if size > NESTED_KEEP:
        return
    with _scratch() as copy:
        try:
            with opener() as member:
                head = member.read(SNIFF)
                if kind_of(io.BytesIO(head)) is None and not head.startswith(b"PK"):
                    return
                copy.write(head)
                left = size + 1 - len(head)  # the budget has allowed ``size``
                while left > 0 and (block := member.read(min(CHUNK, left))):
                    copy.write(block)
                    left -= len(block)
        except (zipfile.BadZipFile, tarfile.TarError, ValueError, OSError, EOFError, zlib.error):
            return
        except (NotImplementedError, RuntimeError):  # encrypted, or an unknown method: clamd's
            return
        _walk(copy, depth + 1, budget)


def _inflate(kind: str, f: BinaryIO, budget: _Budget) -> BinaryIO:
    """The content of a gzip, bzip2 or xz stream, inflated no further than the limits (what
    is kept for a look inside stops at NESTED_KEEP; the rest is only counted)."""
    if kind == "gzip":
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 16)
    elif kind == "bzip2":
        inflater = bz2.BZ2Decompressor()
    else:
        inflater = lzma.LZMADecompressor()
    limits = budget.limits
    cap = min(x for x in (limits.max_file_size, limits.max_scan_size - budget.unpacked) if x)
    kept, produced = _scratch(), 0
    try:
        while produced <= cap and not inflater.eof:
            if kind == "gzip":
                feed = inflater.unconsumed_tail
                if not feed:
                    feed = f.read(CHUNK)
            elif inflater.needs_input:
                feed = f.read(CHUNK)
            else:
                feed = b""
            if not feed and (kind == "gzip" or inflater.needs_input):
                break  # the stream ends before its end marker
            piece = inflater.decompress(feed, min(CHUNK * 16, cap + 1 - produced))
            if produced < NESTED_KEEP:
                kept.write(piece)
            produced += len(piece)
    except (zlib.error, OSError, EOFError, lzma.LZMAError, ValueError):
        pass  # a damaged stream: clamd reports it (Heuristics.Broken...) or scans what it can
    try:
        budget.member(produced, _size(f))  # the ratio is to the whole compressed stream
    except LimitBroken:
        kept.close()
        raise
    if produced > NESTED_KEEP:
        kept.truncate(0)
    kept.seek(0)
    return kept
