"""The literals a regular expression's every match must begin with, read from its source.

Python's engine tries a rule's pattern at every position of a message, about 0.1 µs per
character and rule; a C-speed substring search for the few literals a match must begin with
rules most messages out first. This reads the pattern text itself, for the plain forms rules
are written in (literal text, groups of alternatives, ``\\b`` and ``^`` in front, ``+`` and
``{n,}`` repeats) and gives up, returning None, on anything else: a filter that is unsure
never hides a match, it only does not help.
"""

from __future__ import annotations

import re

from mailgate.scan.spam.checks import fold

_ANCHORS = ("\\b", "\\A", "^")
_SPECIAL = set(".^$*+?{}[]\\|()")
_MIN_REPEAT = re.compile(r"\{(\d+)(,\d*)?\}")


class _Unknown(Exception):
    """The pattern uses a form this reader does not follow."""


def literal_starts(pattern: re.Pattern) -> tuple[str, ...] | None:
    """Folded literals one of which starts every match of ``pattern``; None if unknown.

    Only ASCII literals of at least two characters are kept (folding keeps ASCII letters in
    their place, so a folded search finds every case-insensitive occurrence).
    """
    if pattern.flags & re.VERBOSE or not isinstance(pattern.pattern, str):
        return None
    try:
        starts, end = _alternatives(pattern.pattern, 0)
    except _Unknown:
        return None
    if end != len(pattern.pattern) or any(len(s) < 2 or not s.isascii() for s in starts):
        return None
    return tuple(sorted({fold(s) for s in starts}))


def _alternatives(src: str, i: int) -> tuple[list[str], int]:
    """``alt|alt|…`` from ``i`` up to an unmatched ``)`` or the end: every alternative's starts."""
    out: list[str] = []
    while True:
        starts, i = _sequence(src, i)
        out += starts
        if i < len(src) and src[i] == "|":
            i += 1
            continue
        return out, i


def _quantifier(src: str, i: int) -> tuple[int, int]:
    """(minimum count, index after) of a quantifier at ``i``; (1, i) when there is none."""
    if i < len(src) and src[i] in "?*":
        i += 1
        return 0, i + (i < len(src) and src[i] in "?+")
    if i < len(src) and src[i] == "+":
        i += 1
        return 1, i + (i < len(src) and src[i] in "?+")
    m = _MIN_REPEAT.match(src, i)
    if m:
        i = m.end()
        return int(m.group(1)), i + (i < len(src) and src[i] in "?+")
    return 1, i


def _literal(src: str, i: int) -> tuple[str, int] | None:
    """The literal character at ``i`` (plain, or punctuation escaped) and the index after."""
    char = src[i]
    if char == "\\" and i + 1 < len(src) and not src[i + 1].isalnum():
        return src[i + 1], i + 2
    if char not in _SPECIAL:
        return char, i + 1
    return None


def _sequence(src: str, i: int) -> tuple[list[str], int]:
    """One alternative: its starts, and the index of the ``|`` or ``)`` (or end) after it."""
    while src.startswith(_ANCHORS, i):
        i += 1 if src[i] == "^" else 2
    prefix = ""
    while i < len(src) and src[i] not in "|)":
        literal = _literal(src, i)
        if literal is not None and literal[0].isascii():
            char, after = literal
            count, after_q = _quantifier(src, after)
            if count == 0:
                break
            if after_q != after:
                prefix += char * min(count, 8)
                break
            prefix += char
            i = after
            continue
        if src[i] == "(" and not prefix:
            if src.startswith("(?:", i):
                inner = i + 3
            elif src.startswith("(?", i):
                raise _Unknown
            else:
                inner = i + 1
            starts, close = _alternatives(src, inner)
            if close >= len(src) or src[close] != ")":
                raise _Unknown
            count, _after = _quantifier(src, close + 1)
            if count == 0:
                raise _Unknown
            return starts, _skip(src, close + 1)
        break
    if not prefix:
        raise _Unknown
    return [prefix], _skip(src, i)


def _skip(src: str, i: int) -> int:
    """The index of the ``|`` or unmatched ``)`` that ends the alternative ``i`` is in."""
    depth = 0
    while i < len(src):
        char = src[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i = _class_end(src, i)
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            if depth == 0:
                return i
            depth -= 1
        elif char == "|" and depth == 0:
            return i
        i += 1
    return i


def _class_end(src: str, i: int) -> int:
    """The index after the character class that opens at ``i``."""
    i += 1
    if i < len(src) and src[i] == "^":
        i += 1
    if i < len(src) and src[i] == "]":
        i += 1
    while i < len(src) and src[i] != "]":
        i += 2 if src[i] == "\\" else 1
    if i >= len(src):
        raise _Unknown
    return i + 1
