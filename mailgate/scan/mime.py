"""A message as the scanner sees it: a tree of MIME parts whose leaves are the objects.

``split`` parses a message (``email`` with the compat32 policy, which never raises on bad
input and keeps every header as written), walks it depth first, nested ``message/rfc822``
included, and returns one ``MimeObject`` per leaf with its content decoded (base64,
quoted-printable, uuencode) and its file name decoded (RFC 2231 parameters, RFC 2047 words).

``cure`` replaces chosen leaves with a text notice and serialises the tree again: every other
part keeps its headers and its encoded body as they were, so the message stays valid and
everything not removed reaches the recipient unchanged.

Invariants: ``split`` never raises on any input; a leaf it cannot decode is still returned
(with ``defect`` set) so that its raw bytes are scanned; beyond ``max_depth`` or ``max_parts``
it stops and says so in ``Split.limit`` instead of recursing further. A message file over
``IN_MEMORY`` is parsed from a skeleton (``skeleton``) with the same result, its long objects
decoded into scratch files, so that memory stays bounded whatever the size.
"""

from __future__ import annotations

import email
import email.errors
import email.header
import io
import quopri
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import Message
from typing import BinaryIO

from mailgate.message.content import BLOCK, IN_MEMORY, Content, MessageFile
from mailgate.message.headers import POLICY, decode_words, header_block
from mailgate.scan import decoding, skeleton

_STRUCTURE_DEFECTS = (
    email.errors.StartBoundaryNotFoundDefect,
    email.errors.CloseBoundaryNotFoundDefect,
    email.errors.MultipartInvariantViolationDefect,
    email.errors.NoBoundaryInMultipartDefect,
)


@dataclass
class MimeObject:
    """One leaf of the MIME tree. ``path`` is its position, e.g. ``2.1`` (1-based).

    Its decoded content is ``data``, or, for a body cut out of a large message, ``file`` (a
    scratch file of ``size`` bytes whose ``sha256`` was taken while decoding); ``size``,
    ``head``, ``blocks`` and ``reader`` serve both alike."""

    path: str
    name: str
    content_type: str
    data: bytes
    defect: str = ""
    part: Message | None = field(default=None, repr=False)
    file: BinaryIO | None = field(default=None, repr=False)
    file_size: int = 0
    sha256: bytes = b""

    @property
    def label(self) -> str:
        return self.name or f"part {self.path} ({self.content_type})"

    @property
    def size(self) -> int:
        return self.file_size if self.file is not None else len(self.data)

    def head(self, limit: int) -> bytes:
        if self.file is None:
            return self.data[:limit]
        self.file.seek(0)
        return self.file.read(limit)

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        if self.file is None:
            if self.data:
                yield self.data
            return
        self.file.seek(0)
        while block := self.file.read(size):
            yield block

    def reader(self) -> BinaryIO:
        """A seekable binary file of the content (the same scratch file, rewound)."""
        if self.file is None:
            return io.BytesIO(self.data)
        self.file.seek(0)
        return self.file


@dataclass
class Split:
    message: Message
    objects: list[MimeObject]
    limit: str = ""
    subject: str = ""
    skeleton: skeleton.Skeleton | None = field(default=None, repr=False)

    def close(self) -> None:
        """Let go of the scratch files of cut-out objects."""
        for obj in self.objects:
            if obj.file is not None:
                obj.file.close()


def file_name(part: Message) -> str:
    try:
        name = part.get_filename()
    except (LookupError, UnicodeError, ValueError):
        return ""
    return " ".join(decode_words(name).split()) if name else ""


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except (AttributeError, ValueError):
        return "application/octet-stream"


def _decode(part: Message) -> tuple[bytes, str]:
    """The decoded body of a leaf and, if decoding found problems, what they were: the
    bytes as they stand, undone as a mail reader undoes their transfer encoding
    (``decoding``), which never raises."""
    return decoding.decode_bytes(decoding.raw_payload(part), decoding.transfer_encoding(part))


# The email parser recurses once per nested container and fails near Python's recursion limit
# (about 400 levels); nothing deeper than this is handed to it.
PARSER_SAFE_DEPTH = 100
_CONTAINER = re.compile(rb"content-type:[ \t]*(?:multipart/|message/rfc822)", re.I)
_CONTENT_TYPE = re.compile(rb"content-type:[ \t]*([^;\s]+)(.*)", re.I | re.S)
_BOUNDARY = re.compile(rb'boundary[ \t]*=[ \t]*(?:"([^"]*)"|([^;\s]+))', re.I)


def nesting_depth(raw: bytes, stop: int) -> int:
    """How deep multiparts and message/rfc822 parts nest in ``raw``, read line by line
    without recursion (so any depth is measured safely); counting stops past ``stop``."""
    stack: list[bytes | None] = []  # each open container: its boundary, None for a message
    deepest, in_headers, fields = 0, True, []
    for raw_line in raw.split(b"\n"):
        line = raw_line.rstrip(b"\r")
        if in_headers:
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1] += line
            elif line:
                fields.append(line)
            else:
                kind, boundary = b"", None
                for field in fields:
                    m = _CONTENT_TYPE.match(field)
                    if m:
                        kind = m.group(1).lower()
                        b = _BOUNDARY.search(m.group(2))
                        boundary = (b.group(1) or b.group(2)) if b else None
                fields = []
                if kind.startswith(b"multipart/") and boundary:
                    stack.append(boundary)
                    in_headers = False
                elif kind == b"message/rfc822":
                    stack.append(None)
                else:
                    in_headers = False
                deepest = max(deepest, len(stack))
                if deepest > stop:
                    return deepest
            continue
        if line.startswith(b"--"):
            for level in range(len(stack) - 1, -1, -1):
                boundary = stack[level]
                if boundary is None or not line.startswith(b"--" + boundary):
                    continue
                rest = line[len(boundary) + 2 :].rstrip(b" \t")
                if rest not in (b"", b"--"):
                    continue
                del stack[level if rest == b"--" else level + 1 :]
                in_headers = rest == b""
                break
    return deepest


def too_deep(raw: bytes) -> bool:
    """Does ``raw`` nest containers deeper than the email parser can follow safely?"""
    if len(_CONTAINER.findall(raw, 0)) <= PARSER_SAFE_DEPTH:
        return False
    return nesting_depth(raw, PARSER_SAFE_DEPTH) > PARSER_SAFE_DEPTH


def parse(raw: bytes) -> Message:
    """``email.message_from_bytes`` (compat32), with a short cut for single-part messages.

    The parser feeds the body through its line machinery even when it only keeps it as one
    string (every type but multipart/* and message/*), which is most of the cost of
    parsing a plain 5 KB message. Here the header block alone is parsed; when the parser
    took all of it as headers and the type is single-part, the body is set as the parser
    would have set it (the bytes after the blank line, as ASCII with surrogateescape).
    Anything else takes the full parse, so the result is always the parser's.
    """
    end, blank = raw.find(b"\r\n\r\n"), 4
    if end < 0:
        end, blank = raw.find(b"\n\n"), 2
    if end >= 0:
        head = email.message_from_bytes(raw[: end + blank], policy=POLICY)
        if (
            head.get_content_maintype() not in ("multipart", "message")
            and not head.get_payload()
            and not head.defects
        ):
            head.set_payload(raw[end + blank :].decode("ascii", "surrogateescape"))
            return head
    return email.message_from_bytes(raw, policy=POLICY)


def split(
    raw: bytes | MessageFile, max_depth: int = 20, max_parts: int = 1000, scratch=None
) -> Split:
    """The objects of a message. A ``MessageFile`` larger than ``IN_MEMORY`` is parsed from
    its skeleton (``skeleton``), its long bodies decoded into ``scratch()`` files (by
    default unnamed temporary files); the caller ``close``-s the result."""
    if isinstance(raw, MessageFile):
        if raw.size > IN_MEMORY:
            return _split_large(raw, max_depth, max_parts, scratch or tempfile.TemporaryFile)
        raw = raw.read()
    return _split(raw, max_depth, max_parts)


def _split_large(source: MessageFile, max_depth: int, max_parts: int, scratch) -> Split:
    sk = skeleton.build(source, max_parts)
    if sk.limit:
        message = email.message_from_bytes(header_block(sk.data), policy=POLICY)
        return Split(message, [], limit=sk.limit, subject=decode_words(message.get("Subject")))
    result = _split(sk.data, max_depth, max_parts, sk, scratch)
    if result.limit or _agrees(result, sk):
        return result
    result.close()  # the parser read the skeleton otherwise than the builder: no short cut
    return _split(source.read(), max_depth, max_parts)


def _agrees(result: Split, sk: skeleton.Skeleton) -> bool:
    """Did the parser see the skeleton's structure: every cut in a body it decoded or in a
    preamble or epilogue, and no boundary the builder did not know?"""
    found: set[str] = set()
    for obj in result.objects:
        payload = obj.part.get_payload() if obj.part is not None else None
        if isinstance(payload, str):
            found.update(sk.pattern.findall(payload))
    for part in result.message.walk():
        for text in (part.preamble, part.epilogue):
            if isinstance(text, str):
                found.update(sk.pattern.findall(text))
        if part.get_content_maintype() == "multipart":
            boundary = part.get_boundary()
            if boundary is not None and boundary not in sk.boundaries:
                return False
    return found == {str(i) for i in range(len(sk.cuts))}


def _split(
    raw: bytes, max_depth: int, max_parts: int, sk: skeleton.Skeleton | None = None, scratch=None
) -> Split:
    if too_deep(raw):  # only the top-level header is read; the rest stays unscanned
        message = email.message_from_bytes(header_block(raw), policy=POLICY)
        depth = f"limit:depth (MIME nesting deeper than {max_depth})"
        return Split(message, [], limit=depth, subject=decode_words(message.get("Subject")))
    message = parse(raw)
    result = Split(message, [], subject=decode_words(message.get("Subject")), skeleton=sk)
    count = 0

    def walk(part: Message, path: str, depth: int) -> None:
        nonlocal count
        if result.limit:
            return
        count += 1
        if count > max_parts:
            result.limit = f"limit:parts (more than {max_parts} MIME parts)"
            return
        if depth > max_depth:
            result.limit = f"limit:depth (MIME nesting deeper than {max_depth})"
            return
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            structure = [d for d in part.defects if isinstance(d, _STRUCTURE_DEFECTS)]
            if structure and not payload:
                leaf(part, path, f"broken multipart ({structure[0].__class__.__name__})")
                return
            for index, child in enumerate(payload, 1):
                walk(child, f"{path}.{index}" if path else str(index), depth + 1)
            return
        structure = [d for d in part.defects if isinstance(d, _STRUCTURE_DEFECTS)]
        leaf(
            part,
            path or "1",
            f"broken multipart ({structure[0].__class__.__name__})" if structure else "",
        )

    def leaf(part: Message, path: str, defect: str) -> None:
        payload = part.get_payload()
        if sk is not None and isinstance(payload, str) and sk.mark in payload:
            cte = decoding.transfer_encoding(part)
            decoded = decoding.decode(skeleton.encoded(sk, part), cte, scratch)
            result.objects.append(
                MimeObject(
                    path=path,
                    name=file_name(part),
                    content_type=_content_type(part),
                    data=b"",
                    defect=defect or decoded.defect,
                    part=part,
                    file=decoded.file,
                    file_size=decoded.size,
                    sha256=decoded.sha256,
                )
            )
            return
        data, decode_defect = _decode(part)
        result.objects.append(
            MimeObject(
                path=path,
                name=file_name(part),
                content_type=_content_type(part),
                data=data,
                defect=defect or decode_defect,
                part=part,
            )
        )

    try:
        walk(message, "", 0)
    except RecursionError:
        result.limit = "limit:depth (MIME nesting too deep to follow)"
    return result


class CureError(ValueError):
    """The message cannot be written out again (some part defeats the generator)."""


def cure(split_message: Split, removed: dict[str, str]) -> Content:
    """The message with each leaf whose path is in ``removed`` replaced by its notice text.

    Raises ``CureError`` when the tree cannot be serialised again; the caller must then not
    deliver the message (the object to remove would still be in it)."""
    for obj in split_message.objects:
        notice = removed.get(obj.path)
        if notice is None or obj.part is None:
            continue
        part = obj.part
        for header in [k for k in part if k.lower().startswith("content-")]:
            del part[header]
        part["Content-Type"] = 'text/plain; charset="utf-8"'
        part["Content-Transfer-Encoding"] = "quoted-printable"
        part["Content-Disposition"] = 'inline; filename="removed-object.txt"'
        body = notice.replace("\r\n", "\n").encode("utf-8")
        part.set_payload(quopri.encodestring(body).decode("ascii"))
    out = io.BytesIO()
    try:
        BytesGenerator(out, mangle_from_=False, policy=POLICY).flatten(split_message.message)
    except (UnicodeError, LookupError, ValueError, TypeError, AttributeError) as exc:
        raise CureError(f"cannot rewrite the message: {exc.__class__.__name__}") from exc
    if split_message.skeleton is not None:
        return skeleton.with_file(split_message.skeleton, out.getvalue())
    return out.getvalue()
