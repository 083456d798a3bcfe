"""The literal prefilter of body rules never hides a match, whatever the pattern and text."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.scan.spam.checks import fold
from mailgate.scan.spam.literals import literal_starts
from mailgate.scan.spam.rules import first_start

CHARS = "abKs \u0130\u0131\u017f\u212a$.!-"
literal = st.sampled_from(["a", "b", "K", "s", " ", "ab", "sa", r"\$", r"\.", "!", "-", "\u0130"])
quantifier = st.sampled_from(["", "", "", "?", "*", "+", "{2}", "{0,2}", "{3,}", "+?"])
atom = st.one_of(
    st.tuples(literal, quantifier).map("".join),
    st.sampled_from([r"\b", "^", r"\s", r"\d", ".", "[ab]", "[^a]", r"\w+"]),
)


@st.composite
def patterns(draw, depth: int = 2):
    def sequence(level: int) -> str:
        parts = draw(st.lists(atom, min_size=1, max_size=4))
        if level > 0 and draw(st.booleans()):
            alternatives = draw(st.lists(st.just(None), min_size=1, max_size=3))
            group = "|".join(sequence(level - 1) for _ in alternatives)
            opener = draw(st.sampled_from(["(", "(?:"]))
            parts.insert(draw(st.integers(0, len(parts))), opener + group + ")" + draw(quantifier))
        return "".join(parts)

    return "|".join(sequence(depth) for _ in range(draw(st.integers(1, 3))))


@settings(max_examples=600, deadline=None)
@given(patterns(), st.text(alphabet=CHARS, max_size=40), st.booleans())
def test_a_match_never_begins_before_the_first_literal_start(source, text, ignore_case):
    try:
        pattern = re.compile(source, re.I if ignore_case else 0)
    except re.error:
        return
    starts = literal_starts(pattern)
    match = pattern.search(text)
    if starts is None or match is None:
        return
    at = first_start(fold(text), starts)
    assert 0 <= at <= match.start(), (source, text, starts)
    assert pattern.search(text, at) is not None


def test_the_forms_rules_are_written_in_are_read():
    assert literal_starts(re.compile(r"\b(sum|amount) of|million dollars", re.I)) == (
        "amount",
        "million dollars",
        "sum",
    )
    assert literal_starts(re.compile(r"\bdear (sir|madam)\b", re.I)) == ("dear ",)
    assert literal_starts(re.compile(r"!{3,}")) == ("!!!",)
    assert literal_starts(re.compile(r"<a[^>]+href", re.I)) == ("<a",)
    for unknown in (r"[ab]x|!{0,3}", r"(?i)abc", r"u\.?s", r"(ab)?cd", r"(?=ab)ab", r"ab|c"):
        assert literal_starts(re.compile(unknown)) is None, unknown
