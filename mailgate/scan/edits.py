"""Edits of a message's top-level header block that leave its body byte for byte as it was.

A message is ``bytes`` or, when large, a ``Spliced`` view of its file: then only the header
block (within its first ``HEAD_LIMIT`` bytes) is read and rewritten, and the body stays a
range of the file, so a 50 MB message is edited in a few kilobytes of memory.
"""

from __future__ import annotations

from mailgate.message.content import Content, Spliced
from mailgate.message.headers import header_block, header_end, line_ending
from mailgate.scan import authn

UNTRUSTED = (b"x-spam-", b"x-mailgate-")
HEAD_LIMIT = 1 << 20


def edit_headers(
    raw: Content,
    subject_prefix: str = "",
    untrusted: tuple[bytes, ...] = UNTRUSTED,
    claimed: str = "",
) -> Content:
    """The message with its top-level header block edited in place, the body untouched
    (everything from ``header_end`` on is kept as it is).

    Headers from outside that look like ours (``X-Spam-*``, ``X-Mailgate-*``) are renamed to
    ``X-Untrusted-*`` so that nobody, not even a filter further on, mistakes them for this
    gateway's verdict; Authentication-Results fields that name our authserv-id ``claimed``
    are removed (RFC 8601 §5: only we may write those); ``subject_prefix`` (e.g.
    ``[SPAM]``) is put in front of the Subject (once), or a Subject is added.
    """
    if isinstance(raw, Spliced):
        first = raw.head(HEAD_LIMIT)
        end = header_end(first)
        return Spliced(
            (
                _edited(first[:end], line_ending(first), subject_prefix, untrusted, claimed),
                *raw.after(end).pieces,
            )
        )
    end = header_end(raw)
    return _edited(raw[:end], line_ending(raw), subject_prefix, untrusted, claimed) + raw[end:]


def _forged_lines(lines: list[bytes], claimed: str) -> set[int]:
    """Indexes of every line (continuations too) of the Authentication-Results fields that
    claim ``claimed``."""
    found: set[int] = set()
    if not claimed:
        return found
    for i, line in enumerate(lines):
        if line[:23].lower() == b"authentication-results:":
            end = i + 1
            while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
                end += 1
            if authn.forged(b"\r\n".join([line[23:], *lines[i + 1 : end]]), claimed):
                found.update(range(i, end))
    return found


def _edited(
    head: bytes, sep: bytes, subject_prefix: str, untrusted: tuple[bytes, ...], claimed: str
) -> bytes:
    lines = head.split(sep)  # ends with b"" when the last field has its line ending
    forged = _forged_lines(lines, claimed)
    lines = [line for i, line in enumerate(lines) if i not in forged]
    prefix = subject_prefix.encode("utf-8")
    seen_subject = False
    for i, line in enumerate(lines):
        low = line.lower()
        if untrusted and low.startswith(untrusted) and b":" in line:
            lines[i] = b"X-Untrusted-" + line.split(b"-", 1)[1]
        elif prefix and low.startswith(b"subject:") and not seen_subject:
            seen_subject = True
            value = line[8:].lstrip(b" \t")
            if not value.startswith(prefix):
                lines[i] = b"Subject: " + prefix + (b" " + value if value else b"")
    if prefix and not seen_subject:
        lines.insert(len(lines) - 1 if lines[-1] == b"" else len(lines), b"Subject: " + prefix)
    return sep.join(lines)


def has_untrusted_headers(
    raw: Content, untrusted: tuple[bytes, ...] = UNTRUSTED, claimed: str = ""
) -> bool:
    first = raw.head(HEAD_LIMIT) if isinstance(raw, Spliced) else raw
    block = header_block(first)
    head = block.lower()
    if any(b"\n" + name in head for name in untrusted) or head.startswith(untrusted):
        return True
    if claimed and b"authentication-results:" in head:
        return bool(_forged_lines(block.split(line_ending(first)), claimed))
    return False
