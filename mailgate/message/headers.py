"""The header block of a message as every stage reads it, without parsing the body.

The compat32 policy with CRLF line ends is the one policy every stage uses to parse and write
messages: it never raises on bad input and keeps each header as written, so what mailgate
passes on is what it received apart from the headers it edits on purpose.
"""

from __future__ import annotations

import email.errors
import email.header
from email import policy as email_policy

POLICY = email_policy.compat32.clone(linesep="\r\n")


def header_block(message: bytes) -> bytes:
    """The top-level header lines of a message (CRLF line ends), without the blank line."""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


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
