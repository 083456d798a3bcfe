"""Sender authentication against a real DNS server on loopback (dnsmasq) serving SPF, DKIM,
DMARC and ARC keys: every SPF result, DKIM over changed bodies and l=, DMARC alignment and
policies, a two-hop ARC chain, the Authentication-Results field, and our signature checked
by dkimpy's own verifier."""

from __future__ import annotations

import functools

import dkim
import pytest
from support import dnsmasq, free_port, mailgate, spam_envelope, wait_for

from mailgate import config as configmod
from mailgate.runtime.auth import dkimcheck, dmarc, keys, lookup, spfcheck
from mailgate.runtime.auth.dmarc import DMARCResult
from mailgate.runtime.auth.verdict import Settings, Verdict, authenticate, claims, results_field
from mailgate.scan import edits, mime
from mailgate.scan.spam import spamtest

SPF = {
    "pass.test": "v=spf1 ip4:127.0.0.2 -all",
    "soft.test": "v=spf1 ~all",
    "neutral.test": "v=spf1 ?all",
    "helo.test": "v=spf1 ip4:127.0.0.2 -all",
    "void.test": "v=spf1 a:n1.test a:n2.test a:n3.test -all",
    "loop0.test": "v=spf1 include:loop1.test -all",
    "bad-syntax.test": "v=spf1 ip4:not-an-address -all",
    **{f"loop{i}.test": f"v=spf1 include:loop{i + 1}.test -all" for i in range(1, 12)},
}
DMARC = {
    "signed.test": "v=DMARC1; p=reject",
    "relaxed.test": "v=DMARC1; p=reject; adkim=r",
    "strict.test": "v=DMARC1; p=reject; adkim=s; aspf=s",
    "org.test": "v=DMARC1; p=none; sp=reject",
    "quarantined.test": "v=DMARC1; p=quarantine",
    "sampled.test": "v=DMARC1; p=reject; pct=0",
    "origin.test": "v=DMARC1; p=reject",
    "company.test": "v=DMARC1; p=none",
}
SIGNERS = [
    "signed.test",
    "mail.relaxed.test",
    "mail.strict.test",
    "origin.test",
    "list1.test",
    "list2.test",
    "sub.org.test",
    "company.test",
]


@functools.cache
def key_pair() -> tuple[bytes, str]:
    return keys.generate(1024)


def txt(name: str, text: str) -> str:
    return "--txt-record=" + name + "," + ",".join(keys.txt_strings(text))


@pytest.fixture(scope="module")
def dns_lookup():
    port, dead = free_port(), free_port()
    _pem, record = key_pair()
    records = ["--local=/test/", f"--server=/slow.example/127.0.0.1#{dead}"]
    records += [txt(name, value) for name, value in SPF.items()]
    records += [txt(f"_dmarc.{name}", value) for name, value in DMARC.items()]
    records += [txt(f"sel._domainkey.{d}", record) for d in SIGNERS]
    records += [
        "--txt-record=sel._domainkey.slow.test",
        f"--server=/keys.slow.example/127.0.0.1#{dead}",
    ]
    proc = dnsmasq(port, records)
    made = lookup.configure([("127.0.0.1", port)], 1.0)

    def answers() -> bool:
        try:
            return bool(made.txt_records("pass.test"))
        except lookup.TemporaryFailure:
            return proc.poll() is not None  # exited: fail below with its code

    try:
        wait_for(answers, 10, "the DNS server")
        assert proc.poll() is None, f"dnsmasq exited with {proc.returncode}"
        yield made
    finally:
        proc.terminate()
        proc.wait()


def message(
    sender: str = "a@signed.test", body: str = "Hello there.\r\n", extra: str = ""
) -> bytes:
    return (
        f"From: Someone <{sender}>\r\nTo: b@example.org\r\nSubject: test\r\n"
        f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@x>\r\n{extra}\r\n{body}"
    ).encode()


def signed(msg: bytes, domain: str, length: bool = False) -> bytes:
    pem, _record = key_pair()
    sig = dkim.sign(
        msg, b"sel", domain.encode(), pem, include_headers=[b"from", b"subject"], length=length
    )
    return sig + msg


@pytest.mark.parametrize(
    ("ip", "sender", "helo", "expected"),
    [
        ("127.0.0.2", "x@pass.test", "h", "pass"),
        ("127.0.0.3", "x@pass.test", "h", "fail"),
        ("127.0.0.3", "x@soft.test", "h", "softfail"),
        ("127.0.0.3", "x@neutral.test", "h", "neutral"),
        ("127.0.0.3", "x@nothing.test", "h", "none"),
        ("127.0.0.3", "x@void.test", "h", "permerror"),
        ("127.0.0.3", "x@loop0.test", "h", "permerror"),
        ("127.0.0.3", "x@bad-syntax.test", "h", "permerror"),
        ("127.0.0.3", "x@dead.slow.example", "h", "temperror"),
        ("127.0.0.2", "", "helo.test", "pass"),
    ],
)
def test_spf_results(dns_lookup, ip, sender, helo, expected):
    result = spfcheck.check(ip, sender, helo, 1.0)
    assert result.result == expected, result
    assert result.identity == ("mailfrom" if sender else "helo")


def test_dkim_pass_fail_length_and_key_errors(dns_lookup):
    good = signed(message(), "signed.test")
    assert [r.result for r in dkimcheck.verify(good, dns_lookup)] == ["pass"]
    changed = good.replace(b"Hello there.", b"Hello thief.")
    (bad,) = dkimcheck.verify(changed, dns_lookup)
    assert (bad.result, bad.domain, bad.selector) == ("fail", "signed.test", "sel")
    # l= covers the first part of the body: a footer added on the way keeps it valid
    footer = signed(message(), "signed.test", length=True) + b"-- \r\nlist footer\r\n"
    assert [r.result for r in dkimcheck.verify(footer, dns_lookup)] == ["pass"]
    # two signatures, one by a domain without a key, one whose key lookup fails
    unkeyed = signed(good, "nokey.test")
    assert [r.result for r in dkimcheck.verify(unkeyed, dns_lookup)] == ["permerror", "pass"]
    slow = signed(message(), "keys.slow.example")
    assert [r.result for r in dkimcheck.verify(slow, dns_lookup)] == ["temperror"]
    assert dkimcheck.verify(message(), dns_lookup) == []
    many = message()
    for _ in range(dkimcheck.MAX_SIGNATURES + 4):  # each would cost a key lookup
        many = signed(many, "nokey.test")
    assert len(dkimcheck.verify(many, dns_lookup)) == dkimcheck.MAX_SIGNATURES
    garbled = b"DKIM-Signature: v=1; a=rsa-sha256; d=signed.test\r\n" + message()
    assert [r.result for r in dkimcheck.verify(garbled, dns_lookup)] == ["permerror"]


def test_dmarc_alignment_policies_and_subdomains(dns_lookup):
    spf_pass = spfcheck.SPFResult("pass", "mailfrom", "pass.test")
    settings = Settings("mx.company.test", protected=("company.test",))

    def verdict(msg, spf=None):
        return authenticate(msg, spf, dns_lookup, settings)

    relaxed = verdict(signed(message("a@relaxed.test"), "mail.relaxed.test"))
    assert (relaxed.dmarc.result, relaxed.dmarc.aligned, relaxed.action) == (
        "pass",
        "dkim",
        "deliver",
    )
    strict = verdict(signed(message("a@strict.test"), "mail.strict.test"))
    assert (strict.dmarc.result, strict.dmarc.policy, strict.action) == ("fail", "reject", "reject")
    forged = verdict(message("a@signed.test"), spf_pass)  # SPF passes for another domain
    assert (forged.dmarc.result, forged.action) == ("fail", "reject")
    sub = verdict(message("a@sub.org.test"))  # no record of its own: the org's sp=reject
    assert (sub.dmarc.result, sub.dmarc.policy) == ("fail", "reject")
    assert verdict(message("a@org.test")).action == "deliver"  # p=none
    assert verdict(message("a@quarantined.test")).action == "quarantine"
    sampled = verdict(message("a@sampled.test"))  # pct=0: the next milder policy
    assert (sampled.dmarc.policy, sampled.dmarc.disposition, sampled.action) == (
        "reject",
        "quarantine",
        "quarantine",
    )
    assert verdict(message("a@nothing.test")).dmarc.result == "none"
    assert verdict(message("a@dead.slow.example")).dmarc.result == "temperror"
    two = message().replace(b"To:", b"From: other@pass.test\r\nTo:")
    assert verdict(two).dmarc.result == "permerror"
    # our own domain from outside without an aligned pass: spoofed, even under p=none
    spoof = verdict(message("ceo@company.test"))
    assert (spoof.spoofed, spoof.action) == ("company.test", "mark")
    assert verdict(signed(message("ceo@company.test"), "company.test")).spoofed == ""
    # too large to verify DKIM: DMARC on SPF alone, and never a fail from what was not checked
    large = authenticate(None, None, dns_lookup, settings, author="signed.test")
    assert (large.verified, large.dmarc.result, large.action) == (False, "none", "deliver")
    assert "dkim=none (not verified: message too large)" in results_field(large, "mx")
    by_spf = authenticate(
        None,
        spfcheck.SPFResult("pass", "mailfrom", "signed.test"),
        dns_lookup,
        settings,
        author="signed.test",
    )
    assert by_spf.dmarc.result == "pass"
    onto = dmarc.evaluate(
        dns_lookup, "signed.test", spfcheck.SPFResult("pass", "mailfrom", "bounce.signed.test"), []
    )
    assert (onto.result, onto.aligned) == ("pass", "spf")


def arc_hop(msg: bytes, sealer: str, recorded: str, edit: bytes = b"") -> bytes:
    pem, _record = key_pair()
    msg = f"Authentication-Results: {sealer}; {recorded}\r\n".encode() + msg + edit
    seal = dkim.arc_sign(
        msg,
        b"sel",
        sealer.encode(),
        pem,
        sealer.encode(),
        include_headers=[b"from", b"subject", b"to"],
    )
    return b"".join(seal) + msg


def test_arc_chain_of_two_hops_sets_a_dmarc_fail_aside_only_for_trusted_sealers(dns_lookup):
    original = signed(message("news@origin.test"), "origin.test")
    hop1 = arc_hop(
        original,
        "list1.test",
        "dkim=pass header.d=origin.test; dmarc=pass header.from=origin.test",
        b"-- \r\nlist1 footer\r\n",
    )
    hop2 = arc_hop(
        hop1,
        "list2.test",
        "arc=pass; dkim=fail header.d=origin.test; dmarc=fail header.from=origin.test",
    )
    chain = dkimcheck.arc(hop2, dns_lookup)
    assert (chain.result, chain.sealer, chain.instance) == ("pass", "list2.test", 2)
    assert [s["sealer"] for s in chain.seals] == ["list2.test", "list1.test"]
    assert chain.seals[1]["dmarc"] == "pass"

    def action(*trusted):
        v = authenticate(hop2, None, dns_lookup, Settings("mx.test", trusted_sealers=trusted))
        assert v.dmarc.result == "fail" and [s.result for s in v.dkim] == ["fail"]
        return v.action, v.override

    assert action() == ("reject", "")
    assert action("list2.test") == ("reject", "")  # list2 saw a fail; list1 is not believed
    assert action("list1.test") == ("reject", "")  # an untrusted newest sealer: nothing below
    assert action("list*.test") == ("deliver", "list1.test")
    broken = hop2.replace(b"list1 footer", b"list1 f00ter")
    assert dkimcheck.arc(broken, dns_lookup).result == "fail"


def test_results_field_and_forged_claims(dns_lookup):
    v = authenticate(
        signed(message(), "signed.test"),
        spfcheck.SPFResult("fail", "mailfrom", "x.test"),
        dns_lookup,
        Settings("mx.company.test"),
    )
    field = results_field(v, "mx.company.test")
    assert field.startswith("Authentication-Results: mx.company.test;\r\n\t")
    flat = field.replace("\r\n\t", " ")
    assert "spf=fail smtp.mailfrom=x.test" in flat
    assert "dkim=pass header.d=signed.test header.s=sel" in flat
    assert "dmarc=pass header.from=signed.test policy.dmarc=reject; arc=none" in flat
    assert all(len(line) < 200 for line in field.split("\r\n"))
    assert claims("mx.company.test; spf=pass smtp.mailfrom=x", "MX.company.test")
    assert claims("mx.company.test 1; dkim=pass", "mx.company.test")
    assert not claims("other.example; spf=pass", "mx.company.test")
    assert claims("mx.company.test;;; garbage(((", "mx.company.test")


def test_our_signature_verifies_with_dkimpy():
    pem, record = key_pair()
    msg = message("boss@company.test")
    sig = dkimcheck.sign(msg, "company.test", "sel", pem, ["From", "Subject", "Date", "X-None"])
    assert sig.startswith(b"DKIM-Signature: ")
    published = {b"sel._domainkey.company.test.": record.encode()}
    assert dkim.verify(sig + msg, dnsfunc=lambda name, timeout=5: published.get(name))
    assert not dkim.verify(
        sig + msg.replace(b"Hello", b"Jello"), dnsfunc=lambda n, timeout=5: published.get(n)
    )


def test_results_become_spam_rules_that_explain_the_verdict(tmp_path):
    conf = tmp_path / "spam.conf"
    conf.write_text(
        "[smtpgw.network]\nTrustedNetworks=127.0.0.1/32\nProtectedDomains=company.test\n"
        "[smtpgw.path]\nSpoolDir=spool\n"
    )
    spam = spamtest.Spamtest(configmod.load(conf), None, network=False)
    raw = message("ceo@company.test")
    forged = Verdict(
        spfcheck.SPFResult("fail", "mailfrom", "company.test"),
        [dkimcheck.DKIMResult("fail", "company.test", "sel", "body hash mismatch")],
        dmarc=DMARCResult("fail", "company.test", "reject", "reject"),
        spoofed="company.test",
    )
    env = spam_envelope(ip="127.0.0.2")
    plain = spam.check(mime.split(raw), env)
    judged = spam.check(mime.split(raw), {**env, "auth": forged.public()})
    added = set(judged.rules) - set(plain.rules)
    assert added == {"SPF_FAIL", "DKIM_INVALID", "DMARC_FAIL_REJECT", "SPOOFED_OWN_DOMAIN"}
    assert judged.score == pytest.approx(plain.score + sum(judged.rules[r] for r in added))
    assert judged.status == "spam"
    good = Verdict(
        spfcheck.SPFResult("pass", "mailfrom", "company.test"),
        [dkimcheck.DKIMResult("pass", "company.test", "sel")],
        dmarc=DMARCResult("pass", "company.test", "reject", "none", "spf,dkim"),
    )
    passed = spam.check(mime.split(raw), {**env, "auth": good.public()})
    assert set(passed.rules) - set(plain.rules) == {"DKIM_VALID_AUTHOR"}


def test_forged_results_fields_are_removed_whole_and_others_kept():
    head = (
        b"Received: from x\r\n"
        b"Authentication-Results: mx.company.test;\r\n\tdmarc=pass header.from=bank.test\r\n"
        b"Authentication-Results: other.example; spf=pass smtp.mailfrom=a.test\r\n"
        b"authentication-results:MX.Company.Test (forged); dkim=pass\r\n"
        b"Subject: hi\r\n\r\n"
    )
    raw = head + b"Authentication-Results: mx.company.test; in the body, untouched\r\n"
    assert edits.has_untrusted_headers(raw, (), "mx.company.test")
    assert not edits.has_untrusted_headers(raw, (), "elsewhere.test")
    edited = edits.edit_headers(raw, "", (), "mx.company.test")
    assert edited == (
        b"Received: from x\r\n"
        b"Authentication-Results: other.example; spf=pass smtp.mailfrom=a.test\r\n"
        b"Subject: hi\r\n\r\n"
        b"Authentication-Results: mx.company.test; in the body, untouched\r\n"
    )


def test_check_config_refuses_unusable_signing_keys(tmp_path):
    pem, _record = key_pair()
    good = tmp_path / "good.key"
    good.write_bytes(pem)
    good.chmod(0o600)
    loose = tmp_path / "loose.key"
    loose.write_bytes(pem)
    loose.chmod(0o644)
    junk = tmp_path / "junk.key"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    conf = tmp_path / "keys.conf"
    conf.write_text(
        "[smtpgw.network]\nProtectedDomains=company.test, other.test\n[smtpgw.dkim]\n"
        f"SigningKey=company.test a {good}\nSigningKey=other.test b {loose}\n"
        f"SigningKey=other.test c {junk}\nSigningKey=other.test d missing.key\n"
        f"SigningKey=stranger.test e {good}\nSigningKey=company.test\n"
    )
    result = mailgate("check-config", "-c", conf)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert all(line.startswith(f"{conf}:") for line in lines), lines
    text = result.stderr
    assert "loose.key: mode 644: readable or writable by others" in text
    assert "junk.key: not a PEM RSA private key" in text
    assert "missing.key: No such file or directory" in text
    assert "stranger.test is not in ProtectedDomains" in text
    assert "expected DOMAIN SELECTOR KEYFILE" in text
    assert "good.key" not in text
    conf.write_text(
        "[smtpgw.network]\nProtectedDomains=company.test\n[smtpgw.dkim]\n"
        f"SigningKey=company.test a {good}\n"
    )
    assert mailgate("check-config", "-c", conf).returncode == 0
