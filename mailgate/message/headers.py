"""The header block of a message as every stage reads it, without parsing the body.

The compat32 policy with CRLF line ends is the one policy every stage uses to parse and write
messages: it never raises on bad input and keeps each header as written, so what mailgate
passes on is what it received apart from the headers it edits on purpose.
"""

from __future__ import annotations

import email.errors
import email.header
import re
from email import policy as email_policy

POLICY = email_policy.compat32.clone(linesep="\r\n")

# For the fields mailgate writes itself: the header API of this policy refuses (ValueError) a
# value holding CR or LF, folds values longer than a line may be (RFC 5322 2.1.1: 998) and
# encodes non-ASCII ones (RFC 2047); a long reply in a DSN stays readable text.
FIELD_POLICY = email_policy.SMTP.clone(max_line_length=998)


# A field name (printable ASCII but the colon) and its colon, obsolete space before it allowed
_FIELD = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")


_FIELD_NAME = re.compile(rb"(?m)^([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
CONTROLS = re.compile(r"[\x00-\x1f\x7f]")  # C0 and DEL: never in a command or a header value


def header_field(name: str, value: str) -> bytes:
    """One header field, built by the email package's header API under ``FIELD_POLICY``:
    a value that would end the field and start another is refused, never written."""
    return FIELD_POLICY.fold_binary(*FIELD_POLICY.header_store_parse(name, value))


def normalise_newlines(data: bytes) -> bytes:
    """Every bare CR and bare LF made CRLF, as Postfix's ``smtpd_forbid_bare_newline =
    normalize`` does: whatever reads the message after us (a parser that ends lines at LF, or
    at CR) sees the same lines, and so the same header fields, as our scanners saw."""
    lines = data.count(b"\r\n")
    if data.count(b"\n") == lines and data.count(b"\r") == lines:
        return data
    return _BARE_NEWLINE.sub(b"\r\n", data)


def line_ending(message: bytes) -> bytes:
    """The message's line ending, judged by its first line: CRLF, or a bare LF; CRLF (SMTP's)
    for a message that has no line ending at all."""
    first = message.find(b"\n")
    if first < 0:
        return b"\r\n"
    return b"\r\n" if first > 0 and message[first - 1 : first] == b"\r" else b"\n"


def header_end(message: bytes) -> int:
    """Where the header block ends: just after the line ending of its last field.

    RFC 5322 2.1: a blank line separates header and body. A message without one has no body
    if every line is a field, else its body begins at the first line that is neither a field
    nor the continuation of one (as Python's email parser reads it). So ``message[end:]`` is
    the blank line and the body, or the body alone, and is never edited by a header edit.
    """
    sep = line_ending(message)
    pos, size = 0, len(message)
    while pos < size:
        nl = message.find(sep, pos)
        line = message[pos : size if nl < 0 else nl]
        if not line or not (_FIELD.match(line) or (pos and line[:1] in b" \t")):
            return pos
        if nl < 0:
            return size
        pos = nl + len(sep)
    return size


def field_names(message: bytes) -> list[str]:
    """The names of the top-level header fields of ``message`` (or of its first bytes)."""
    return [m.decode("latin-1") for m in _FIELD_NAME.findall(header_block(message))]


def header_block(message: bytes) -> bytes:
    """The top-level header lines of a message with their line ends, without the blank line."""
    return message[: header_end(message)]


def decode_words(value: str | None) -> str:
    """A header value or file name with RFC 2047 encoded words decoded; never raises."""
    if not value:
        return ""
    value = str(value)
    if "=?" not in value:
        return value
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return value
