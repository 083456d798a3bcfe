"""Transfer encodings undone the way a mail reader undoes them, block by block.

The email package's own decoding stops base64 at the first padding and takes a
Content-Transfer-Encoding with trailing blanks for an unknown one, leaving the body encoded:
in both cases bytes a mail reader would show went unscanned. Here the encoding's name is
read as a reader reads it (case and surrounding blanks ignored), base64 goes on after a
stray ``=`` (and says so), and bodies of any size are decoded in blocks into a scratch file
(``decode``) or in memory (``decode_bytes``) by the same code.
"""

from __future__ import annotations

import binascii
import copy
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from typing import BinaryIO

UU = ("x-uuencode", "uuencode", "uue", "x-uue")


def transfer_encoding(part: Message) -> str:
    return str(part.get("content-transfer-encoding", "")).strip().lower()


def raw_payload(part: Message) -> bytes:
    """A leaf's body as it stands in the message, whatever its characters: read through a
    copy without Content-Transfer-Encoding, for which the parser returns the bytes as
    they were (its text form replaces what its charset cannot decode)."""
    view = copy.copy(part)
    del view["content-transfer-encoding"]
    payload = view.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


@dataclass
class Decoded:
    file: BinaryIO
    size: int
    sha256: bytes
    defect: str = ""


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_NOT_B64 = bytes(b for b in range(256) if b not in _B64)
_NOT_SPACE = bytes(b for b in range(256) if b not in b" \t\r\n")


class _Base64:
    """Base64 decoded block by block. Padding ends a run, not the data: what follows it is
    decoded too (as mail readers do), and the object is marked broken, so nothing after a
    stray ``=`` goes unscanned."""

    def __init__(self):
        self.carry = b""
        self.defect = ""
        self.padded = False

    def feed(self, block: bytes) -> bytes:
        data = block.translate(None, _NOT_B64)
        if len(data) + len(block.translate(None, _NOT_SPACE)) != len(block):
            self.defect = "broken base64"
        *closed, rest = (self.carry + data).split(b"=")
        out = []
        for run in closed:
            if run:
                out.append(self._run(run))
                self.padded = True
        usable = len(rest) - len(rest) % 4
        if usable:
            out.append(self._run(rest[:usable]))
        self.carry = rest[usable:]
        return b"".join(out)

    def _run(self, run: bytes) -> bytes:
        if self.padded:  # data after padding: decoded, and said
            self.defect = "broken base64"
        if len(run) % 4 == 1:
            self.defect = "broken base64"
            run = run[:-1]
        return binascii.a2b_base64(run + b"=" * (-len(run) % 4)) if run else b""

    def end(self) -> bytes:
        run, self.carry = self.carry, b""
        if run:
            self.defect = "broken base64"
        return self._run(run) if run else b""


def _pieces(blocks: Iterable[bytes], cte: str, base64: _Base64) -> Iterable[bytes]:
    if cte == "base64":
        return (base64.feed(block) for block in blocks)
    if cte == "quoted-printable":
        return (binascii.a2b_qp(lines) for lines in _whole_lines(blocks))
    if cte in UU:
        return _uu(_lines(blocks))
    return blocks


def decode(blocks: Iterable[bytes], cte: str, scratch) -> Decoded:
    """Decode a transfer-encoded body (base64, quoted-printable, uuencode, else as it is)
    from ``blocks`` into a new ``scratch()`` file, hashing on the way."""
    out, digest, size = scratch(), hashlib.sha256(), 0
    base64 = _Base64()
    for piece in _pieces(blocks, cte, base64):
        if piece:
            out.write(piece)
            digest.update(piece)
            size += len(piece)
    tail = base64.end()
    out.write(tail)
    digest.update(tail)
    out.seek(0)
    return Decoded(out, size + len(tail), digest.digest(), base64.defect)


def decode_bytes(data: bytes, cte: str) -> tuple[bytes, str]:
    """``decode`` for a body held in memory: (content, defect)."""
    base64 = _Base64()
    out = b"".join(_pieces([data], cte, base64)) + base64.end()
    return out, base64.defect


def _whole_lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    """The blocks cut at their last line end (the rest goes with the next block), so that
    no escape sequence is split between two pieces."""
    rest = b""
    for block in blocks:
        data = rest + block if rest else block
        cut = data.rfind(b"\n") + 1
        if cut:
            yield data[:cut]
        rest = data[cut:]
    if rest:
        yield rest


def _lines(blocks: Iterable[bytes]) -> Iterator[bytes]:
    rest = b""
    for block in blocks:
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def _uu(lines: Iterable[bytes]) -> Iterator[bytes]:
    started = False
    for line in lines:
        text = line.rstrip(b"\r\n")
        if not started:
            started = text.startswith(b"begin ")
            continue
        if text == b"end":
            return
        try:
            yield binascii.a2b_uu(text)
        except binascii.Error:
            nbytes = (((text[0] - 32) & 63) * 4 + 5) // 3 if text else 0
            try:
                yield binascii.a2b_uu(text[:nbytes])
            except binascii.Error:
                continue


def memory_file() -> BinaryIO:
    """A scratch file in memory (for a caller that has no spool)."""
    return io.BytesIO()
