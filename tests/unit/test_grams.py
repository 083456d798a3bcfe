"""The character model (``scan.spam.grams``): what it reads, how it learns and is stored, and
how its probability reaches the score as a ``GRAMS_*`` rule."""

from __future__ import annotations

import gzip
import time

import pytest
from support import spam_envelope as envelope

from mailgate import config as configmod
from mailgate.scan import mime
from mailgate.scan.spam import grams, spamtest
from mailgate.scan.spam import rules as spamrules

SPAM_TEXTS = [
    "cheap viagra pills, order now and save big on your meds",
    "lowest prices on viagra and cialis, no prescription needed, order today",
    "order cheap pills online now, discreet shipping, best meds prices",
]
HAM_TEXTS = [
    "the meeting agenda for tuesday is attached, please review the minutes",
    "can we move the project review meeting to thursday afternoon",
    "minutes of the tuesday meeting: review of the release schedule",
]


def examples() -> list[tuple[frozenset[str], bool]]:
    return [(grams.of(t), True) for t in SPAM_TEXTS] + [(grams.of(t), False) for t in HAM_TEXTS]


def test_reads_at_most_read_bytes_of_any_input():
    endless = "spam " * 2_000_000 + "".join(chr(c) for c in range(0x2000, 0x2400))
    started = time.process_time()
    found = grams.of(grams.text_of({"subject": "x" * 1_000_000}, endless))
    assert time.process_time() - started < 0.5  # bounded work on 10 MB, not a time goal
    assert 0 < len(found) <= grams.READ - grams.GRAM + 1
    assert all(0 <= b < grams.BUCKETS for b in found)
    huge = {name: "y" * 1_000_000 for name in grams.HEADERS}
    started = time.process_time()
    for _ in range(20):
        grams.text_of(huge, "")
    assert time.process_time() - started < 0.5  # each header cut to READ before folding
    assert len(grams.text_of(huge, "")) == grams.READ
    assert grams.of("abc") == frozenset() and grams.of("") == frozenset()
    assert len(grams.of("abcdef")) == 3 and len(grams.of("abcdabcdabcd")) == 4  # once each
    assert grams.of("abcd") == grams.of("xabcd") - grams.of("xabc")  # position does not matter
    # little-endian numbers, whatever the machine: b"abcd" is 0x64636261
    assert grams.of("abcd") == {0x64636261 % grams.BUCKETS}
    odd = "a\x00b\r\nc\U0001d400d\udcff" * 10  # NUL, CR/LF, astral, a lone surrogate
    assert len(grams.of(odd)) > 10


def test_reads_the_authors_headers_not_the_relays():
    headers = {
        "from": "Ann <ann@example.org>",
        "subject": "Quarterly   report",
        "received": "from relay.isp.example by mx.company.com",
        "x-mailer": "Relay 1.0",
    }
    text = grams.text_of(headers, "Dear  team,\r\n\r\n  the figures\tare in.")
    assert "from: Ann <ann@example.org>" in text and "subject: Quarterly report" in text
    assert "relay.isp" not in text and "Relay 1.0" not in text
    assert text.endswith("\nDear team, the figures are in.")


def test_learns_and_recognises_variants_it_never_saw():
    model = grams.Model.train(examples())
    assert model.margin(grams.of("cheap v1agra pi11s, order n0w")) > 0
    assert model.margin(grams.of("agenda of the thursday meeting, review attached")) < 0
    assert model.margin(frozenset()) == 0.0
    again = grams.Model.train(examples())
    assert again.weights == model.weights  # the same mail gives the same table


def test_saved_table_loads_back_pruned_and_is_replaced_whole(tmp_path):
    model = grams.Model.train(examples())
    model.weights[7] = grams.PRUNE / 2
    path = model.save(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [grams.MODEL_FILE]
    loaded = grams.Model.load(path)
    assert loaded.weights[7] == 0.0
    for bucket, weight in enumerate(model.weights):
        if abs(weight) >= grams.PRUNE:
            assert abs(loaded.weights[bucket] - weight) < 1e-4
    assert sum(1 for w in loaded.weights if w) > 100


@pytest.mark.parametrize(
    "content",
    [
        "#mailgate-tokens\t1\t1\n",
        f"#mailgate-grams\t{grams.VERSION}\t7\n",  # another number of buckets
        f"#mailgate-grams\t{grams.VERSION}\t{grams.BUCKETS}\n{grams.BUCKETS}\t0.5\n",
        f"#mailgate-grams\t{grams.VERSION}\t{grams.BUCKETS}\n-1\t0.5\n",
        f"#mailgate-grams\t{grams.VERSION}\t{grams.BUCKETS}\n3\tnan\n",
        f"#mailgate-grams\t{grams.VERSION}\t{grams.BUCKETS}\n3 0.5\n",
    ],
)
def test_a_damaged_or_foreign_table_is_refused(tmp_path, content):
    with gzip.open(tmp_path / grams.MODEL_FILE, "wt") as f:
        f.write(content)
    with pytest.raises(ValueError):
        grams.Model.load(tmp_path / grams.MODEL_FILE)


def test_grams_rules_parse_and_fire_on_the_probability():
    rule = spamrules.parse_rule("GRAMS_95 2.0 grams 0.95 0.99")
    top = spamrules.parse_rule("GRAMS_99 2.5 grams 0.99 1.00")

    class Facts:
        grams = 0.97

    assert rule.test(Facts) and not top.test(Facts)
    Facts.grams = 1.0
    assert top.test(Facts)
    Facts.grams = None
    assert not rule.test(Facts) and not top.test(Facts)
    for bad in ("X 1 grams 0.9", "X 1 grams 0.99 0.95", "X 1 grams 0 2"):
        with pytest.raises(spamrules.RuleError):
            spamrules.parse_rule(bad)


def _checker(tmp_path, extra: str = "") -> spamtest.Spamtest:
    conf = tmp_path / "g.conf"
    conf.write_text(f"[smtpgw.path]\nSpoolDir=spool\n[smtpgw.spamtest]\n{extra}")
    return spamtest.Spamtest(configmod.load(conf), None, network=False)


def test_the_shipped_model_scores_every_message_with_one_range(tmp_path):
    spam = _checker(tmp_path)
    assert spam.grams is not None and sum(1 for w in spam.grams.weights if w) > 1000
    raw = (
        b"From: Deals <deals@promo.example>\r\nTo: user@company.com\r\n"
        b"Subject: LOWEST PRICES - order now!!!\r\n\r\n"
        b"Click here to order cheap meds online, no prescription, 100% satisfaction.\r\n"
    )
    verdict = spam.check(mime.split(raw), envelope())
    ranges = [name for name in verdict.rules if name.startswith("GRAMS_")]
    assert len(ranges) == 1, verdict.rules


def test_a_database_without_a_character_model_falls_back_to_the_package(tmp_path):
    (tmp_path / "db").mkdir()
    spam = _checker(tmp_path, f"Database={tmp_path / 'db'}\n")
    shipped = _checker(tmp_path)
    assert spam.grams is not None and spam.grams.weights == shipped.grams.weights
    own = grams.Model.train(examples())
    own.save(tmp_path / "db")
    mine = _checker(tmp_path, f"Database={tmp_path / 'db'}\n")
    assert mine.grams.weights == grams.Model.load(tmp_path / "db" / grams.MODEL_FILE).weights


def test_a_damaged_character_model_in_the_database_is_logged_and_the_shipped_one_used(
    tmp_path, capsys
):
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / grams.MODEL_FILE).write_bytes(gzip.compress(b"#mailgate-grams\t1\t7\n"))
    spam = _checker(tmp_path, f"Database={tmp_path / 'db'}\n")
    assert spam.grams is not None and spam.grams.weights == _checker(tmp_path).grams.weights
    logged = capsys.readouterr().out
    assert "spam_model_unreadable" in logged and str(tmp_path / "db") in logged


def test_a_corpus_is_held_two_bytes_a_bucket_and_trains_the_same(tmp_path):
    assert grams.BUCKETS < 1 << 16
    sets = examples()
    packed = [(grams.packed(found), is_spam) for found, is_spam in sets]
    assert all(
        p.itemsize == 2 and sorted(p) == sorted(f)
        for (p, _), (f, _) in zip(packed, sets, strict=True)
    )
    assert grams.Model.train(packed).weights == grams.Model.train(sets).weights
