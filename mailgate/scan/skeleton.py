"""A large message as the email parser sees it, with its long bodies left in the file.

The ``email`` package holds a whole message in memory several times over (the text, the
decoded payloads, the tree); for a 50 MB message that is hundreds of megabytes. A message
larger than ``IN_MEMORY`` is therefore read once, line by line, and copied into a
*skeleton*: every header block and boundary line as it is, the first bytes of each body
(``KEEP_PER_BODY``, while ``KEEP_TOTAL`` lasts: what the spam filter reads), and in place of
the rest of a body a marker line naming the stretch of the file it stands for. The parser
gets the skeleton; a leaf whose payload holds markers is decoded from the file, stream by
stream, into a scratch file (``decoding.decode``); a cured message is the generator's output
with each marker replaced by its stretch of the file (``with_file``, which gives a leaf its
encoded body the same way).

The structure must be the parser's own, so the same rules decide it: header blocks end as
``email.feedparser`` ends them (a blank line, or a line that is not a header), their
Content-Type and boundary are read by ``email`` itself (a part of multipart/digest defaults
to message/rfc822), and a cut never spans a line that closes a part of any open multipart
or holds a bare CR (a line break to the parser). ``mime.split`` checks the parse against the
skeleton (every marker found in a payload, every boundary the parser used known here) and
takes the full parse when they disagree. The marker is random per message and made of
characters that are neither base64, quoted-printable escapes, header names nor boundary
dashes, so no content can forge one and no decoder mistakes one for data.
"""

from __future__ import annotations

import email.parser
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message

from mailgate.message.content import FileRange, MessageFile, Spliced
from mailgate.message.headers import POLICY
from mailgate.scan import decoding

KEEP_PER_BODY = 256 << 10
KEEP_TOTAL = 2 << 20
HEADER_CAP = 1 << 20  # a MIME header block larger than this is a limit, not parsed
LINE_CAP = 1 << 20
_MARK_ALPHABET = "!#$%&()*,.;<>?@[]^_{|}~"
_HEADER = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")  # email.feedparser.headerRE
_header_parser = email.parser.BytesHeaderParser(policy=POLICY)


@dataclass
class Skeleton:
    data: bytes
    mark: str
    cuts: list[FileRange] = field(default_factory=list)
    boundaries: set[str] = field(default_factory=set)
    limit: str = ""

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.mark) + r"(\d+)")

    @property
    def byte_pattern(self) -> re.Pattern[bytes]:
        return re.compile(re.escape(self.mark.encode()) + rb"(\d+)")


class _Builder:
    def __init__(self, source: MessageFile, max_parts: int):
        self.source, self.max_parts, self.parts = source, max_parts, 0
        self.mark = "!" + "".join(secrets.choice(_MARK_ALPHABET) for _ in range(23))
        self.out = bytearray()
        self.cuts: list[FileRange] = []
        self.boundaries: set[str] = set()
        self.stack: list[tuple[bytes | None, bool]] = []  # (b"--"+boundary, is digest) or None
        self.in_headers = True
        self.status = False
        self.headers: list[bytes] = []
        self.header_size = 0
        self.kept_here = self.kept = 0
        self.cut: tuple[int, int, bytes] | None = None  # start, end, last line's ending

    def run(self) -> Skeleton:
        pos, line_start = 0, True
        with open(os.dup(self.source.fd), "rb", buffering=1 << 16) as f:
            f.seek(0)
            while True:
                if self.cut is not None and line_start:
                    pos = self._skip(f, pos)
                line = f.readline(LINE_CAP)
                if not line:
                    break
                start, pos = pos, pos + len(line)
                whole, line_start = line_start, line.endswith(b"\n")
                if whole and line.startswith(b"--") and self._boundary(line):
                    pass
                elif self.status:  # delivery-status fields: parsed as headers, so kept
                    self.out += line
                    self.header_size += len(line)
                    if self.header_size > HEADER_CAP:
                        return self._skeleton(f"limit:header (a MIME header over {HEADER_CAP})")
                elif not self.in_headers:
                    self._body(line, start, pos)
                elif not self._header(line, whole):
                    return self._skeleton(f"limit:header (a MIME header over {HEADER_CAP})")
                if self.parts > self.max_parts:
                    return self._skeleton(f"limit:parts (more than {self.max_parts} MIME parts)")
        self._end_cut()
        return self._skeleton()

    def _skip(self, f, pos: int) -> int:
        """Extend the cut over whole buffered lines at once, up to the first line that
        begins with ``--`` or holds a bare CR (those take the line by line way)."""
        while True:
            buffered = f.peek(1 << 16)
            chunk = buffered[: buffered.rfind(b"\n") + 1]
            if chunk.startswith(b"--"):
                return pos
            dash = chunk.find(b"\n--")
            if dash >= 0:
                chunk = chunk[: dash + 1]
            if not chunk or chunk.count(b"\r") != chunk.count(b"\r\n"):
                return pos
            f.read(len(chunk))
            pos += len(chunk)
            self.cut = (self.cut[0], pos, _ending(chunk))
            if dash >= 0:
                return pos

    def _skeleton(self, limit: str = "") -> Skeleton:
        return Skeleton(bytes(self.out), self.mark, self.cuts, self.boundaries, limit)

    def _boundary(self, line: bytes) -> bool:
        """A line that opens or closes a part of an open multipart: kept, state follows."""
        text = line.rstrip(b"\r\n").rstrip(b" \t")
        for level in range(len(self.stack) - 1, -1, -1):
            sep = self.stack[level][0]
            if sep is None or not text.startswith(sep) or text[len(sep) :] not in (b"", b"--"):
                continue
            self._end_cut()
            self._headers_end()
            closing = text[len(sep) :] == b"--"
            del self.stack[level if closing else level + 1 :]
            self.out += line
            self.in_headers = not closing
            self.status = False
            self.kept_here = 0
            return True
        return False

    def _header(self, line: bytes, whole: bool) -> bool:
        if whole and line in (b"\r\n", b"\n", b"\r"):
            self.out += line
            self._headers_end()
            return True
        if not whole or not _HEADER.match(line):  # the body starts here (a parser defect)
            self._headers_end()
            while self.in_headers:  # a message/* part: its message has no header either
                self._headers_end()
            self._body(line, None, None)
            return True
        self.header_size += len(line)
        if self.header_size > HEADER_CAP:
            return False
        self.headers.append(line)
        self.out += line
        return True

    def _headers_end(self) -> None:
        if not self.in_headers:
            return
        self.in_headers = False
        self.kept_here = 0
        self.parts += 1
        part = _header_parser.parsebytes(b"".join(self.headers))
        self.headers, self.header_size = [], 0
        if self.stack and self.stack[-1][1]:
            part.set_default_type("message/rfc822")
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            self.status = True
        elif part.get_content_maintype() == "message":
            self.stack.append((None, False))
            self.in_headers = True
        elif part.get_content_maintype() == "multipart":
            boundary = part.get_boundary()
            if boundary is None:
                return
            self.boundaries.add(boundary)
            try:
                sep = b"--" + boundary.encode("ascii", "surrogateescape")
            except UnicodeError:  # the parser cannot match it against a line either
                sep = None
            self.stack.append((sep, ctype == "multipart/digest"))

    def _body(self, line: bytes, start: int | None, end: int | None) -> None:
        cuttable = start is not None and b"\r" not in line.rstrip(b"\r\n")
        if self.cut is not None and cuttable:
            self.cut = (self.cut[0], end, _ending(line))
            return
        size = len(line)
        if not cuttable or (
            self.kept_here + size <= KEEP_PER_BODY and self.kept + size <= KEEP_TOTAL
        ):
            self._end_cut()
            self.out += line
            self.kept_here += size
            self.kept += size
            return
        self.cut = (start, end, _ending(line))

    def _end_cut(self) -> None:
        if self.cut is None:
            return
        start, end, ending = self.cut
        self.cut = None
        self.out += f"{self.mark}{len(self.cuts)}".encode() + ending
        self.cuts.append(self.source.range(start, end - len(ending)))


def _ending(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    return line[-1:] if line.endswith(b"\n") else b""


def build(source: MessageFile, max_parts: int = 1000) -> Skeleton:
    """The skeleton of the message in ``source`` (see the module's description); past
    ``max_parts`` parts it stops, with ``limit`` set."""
    return _Builder(source, max_parts).run()


def with_file(skeleton: Skeleton, data: bytes) -> Spliced:
    """``data`` taken from the skeleton (a payload, the generator's output) with every
    marker replaced by the stretch of the file it stands for."""
    pieces: list[bytes | FileRange] = []
    pos = 0
    for m in skeleton.byte_pattern.finditer(data):
        pieces += [data[pos : m.start()], skeleton.cuts[int(m.group(1))]]
        pos = m.end()
    pieces.append(data[pos:])
    return Spliced(tuple(p for p in pieces if len(p)))


def encoded(skeleton: Skeleton, part: Message) -> Iterator[bytes]:
    """The body of a leaf of the skeleton as it is encoded in the message."""
    return with_file(skeleton, decoding.raw_payload(part)).blocks()
