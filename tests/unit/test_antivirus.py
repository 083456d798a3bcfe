"""Anti-virus with a real clamd: offline verdicts (``mailgate scan``) and end to end over SMTP."""

from __future__ import annotations

import base64
import bz2
import email
import gzip
import hashlib
import io
import json
import lzma
import random
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from mimebuild import (
    EICAR,
    SUSPICIOUS,
    TESTFILES,
    TEXT,
    encrypted_zip,
    multipart,
    nested,
    part,
    zipped,
)
from support import ROOT, mailgate

from mailgate import config as configmod
from mailgate.scan import mime
from mailgate.scan.av import clamd
from mailgate.scan.av.engine import CHUNK, Engine
from mailgate.scan.av.ichecker import IChecker
from mailgate.scan.inspection import Inspector


@pytest.fixture(scope="session")
def clamd_socket(tmp_path_factory):
    """One clamd on the shipped database for the offline tests of this module."""
    with clamd.temporary(ROOT / "mailgate" / "data" / "avdb") as socket_path:
        yield socket_path


@pytest.fixture
def scan(tmp_path, clamd_socket):
    """Run ``mailgate scan --json`` on messages (bytes); return its exit code and verdicts."""

    def run(messages: dict[str, bytes], extra: str = "") -> tuple[int, dict[str, dict], str]:
        conf = tmp_path / "scan.conf"
        conf.write_text(
            "[smtpgw.path]\nSpoolDir=spool\n"
            f"[smtpgw.antivirus]\nManageClamd=no\nClamdSocket={clamd_socket}\n" + extra
        )
        files = []
        for name, data in messages.items():
            (tmp_path / name).write_bytes(data)
            files.append(str(tmp_path / name))
        result = mailgate("scan", "-c", str(conf), "--json", *files)
        verdicts = {}
        for line in result.stdout.splitlines():
            item = json.loads(line)
            verdicts[Path(item["file"]).name] = item
        return result.returncode, verdicts, result.stderr

    return run


def bad(verdict: dict) -> list[dict]:
    return [o for o in verdict["objects"] if o["status"] != "clean"]


def test_eicar_is_found_in_every_wrapping(scan):
    inner = multipart(
        [TEXT, part(zipped("eicar.com", EICAR), "application/zip", "eicar.zip")], boundary="in1"
    )
    messages = {
        "plain.eml": multipart(
            [TEXT, part(EICAR, "application/octet-stream", "eicar.com", "7bit")]
        ),
        "base64.eml": multipart([TEXT, part(EICAR, filename="eicar.com")]),
        "qp.eml": multipart([TEXT, part(EICAR, "text/plain", "eicar.txt", "quoted-printable")]),
        "zip.eml": multipart([TEXT, part(zipped("eicar.com", EICAR), "application/zip", "e.zip")]),
        "nested.eml": multipart([TEXT, nested(inner)]),
        "deeper.eml": multipart([TEXT, nested(multipart([nested(inner)], boundary="in2"))]),
        "body.eml": b"From: <a@example.org>\r\nSubject: body\r\n\r\n" + EICAR + b"\r\n",
    }
    code, verdicts, stderr = scan(messages)
    assert code == 0, stderr
    assert set(verdicts) == set(messages)
    for name, verdict in verdicts.items():
        assert verdict["status"] == "infected", (name, verdict)
        assert verdict["action"] == "cure,quarantine", name  # Mode=recommended
        (found,) = bad(verdict)
        assert found["detail"] == "Mailgate.Test.EICAR", name
        assert set(verdict["spam"]) == {"status", "score", "required", "rules"}
    assert bad(verdicts["zip.eml"])[0]["name"] == "e.zip"
    assert bad(verdicts["nested.eml"])[0]["name"] == "eicar.zip"
    assert bad(verdicts["qp.eml"])[0]["content_type"] == "text/plain"


@pytest.mark.skipif(not TESTFILES.is_dir(), reason="clamav-testfiles not installed")
def test_clamav_testfiles_are_all_detected(scan):
    files = sorted(p for p in TESTFILES.iterdir() if p.is_file())
    assert len(files) > 30
    messages = {
        f"{p.name}.eml": multipart([TEXT, part(p.read_bytes(), filename=p.name)]) for p in files
    }
    code, verdicts, stderr = scan(messages)
    assert code == 0, stderr
    missed = [name for name, v in verdicts.items() if v["status"] != "infected"]
    assert missed == []
    assert {bad(v)[0]["detail"] for v in verdicts.values()} == {"Mailgate.Test.ClamAV-TestFile"}


def test_each_status_and_the_attachment_filter(scan, tmp_path):
    harmless_exe = b"MZ\x90\x00" + b"\x00" * 60 + b"PE\x00\x00" + b"\x00" * 400
    rfc2047 = "=?utf-8?b?" + base64.b64encode("Rechnung ü.scr".encode()).decode() + "?="
    broken_b64 = (
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        b'Content-Disposition: attachment; filename="data.bin"\r\n\r\nQUJD!!!RE*VG\r\n'
    )
    deep = TEXT
    for _ in range(6):
        deep = nested(multipart([deep], boundary=f"b{len(deep)}"))
    messages = {
        "clean.eml": multipart([TEXT, part(b"%PDF-1.4 harmless", "application/pdf", "a.pdf")]),
        "encrypted.eml": multipart(
            [TEXT, part(encrypted_zip(tmp_path, "eicar.com", EICAR), "application/zip", "x.zip")]
        ),
        "suspicious.eml": multipart([TEXT, part(SUSPICIOUS, filename="notes.bin")]),
        "corrupted.eml": multipart([TEXT, broken_b64]),
        "renamed.eml": multipart([TEXT, part(harmless_exe, "text/plain", "readme.txt")]),
        "double.eml": multipart([TEXT, part(b"hello", "application/pdf", "invoice.pdf.exe")]),
        "rfc2047.eml": multipart([TEXT, part(b"hello", filename=rfc2047)]),
        "rfc2231.eml": multipart(
            [TEXT, part(b"hello", disposition_raw="attachment; filename*=utf-8''%E2%82%AC.cmd")]
        ),
        "deep.eml": multipart([deep]),
    }
    code, verdicts, stderr = scan(messages, "MaxDepth=8\n")
    assert code == 0, stderr
    status = {name: v["status"] for name, v in verdicts.items()}
    assert status == {
        "clean.eml": "clean",
        "encrypted.eml": "encrypted",
        "suspicious.eml": "suspicious",
        "corrupted.eml": "corrupted",
        "renamed.eml": "banned",
        "double.eml": "banned",
        "rfc2047.eml": "banned",
        "rfc2231.eml": "banned",
        "deep.eml": "unscannable",
    }
    assert verdicts["clean.eml"]["action"] == "deliver"
    renamed = bad(verdicts["renamed.eml"])[0]
    assert renamed["true_type"] == "application/x-dosexec"
    assert renamed["content_type"] == "text/plain"
    assert "double extension" in bad(verdicts["double.eml"])[0]["detail"]
    assert bad(verdicts["rfc2047.eml"])[0]["name"] == "Rechnung ü.scr"
    assert bad(verdicts["rfc2231.eml"])[0]["name"] == "€.cmd"
    assert "nesting" in bad(verdicts["deep.eml"])[0]["detail"]
    assert verdicts["encrypted.eml"]["action"] == "deliver"


def test_presets_and_explicit_actions(scan):
    messages = {"eicar.eml": multipart([TEXT, part(EICAR, filename="eicar.com")])}
    assert scan(messages, "[smtpgw.scan]\nMode=protection\n")[1]["eicar.eml"]["action"] == (
        "block,quarantine"
    )
    assert scan(messages, "[smtpgw.scan]\nMode=speed\n")[1]["eicar.eml"]["action"] == "cure"
    explicit = "ActionInfected=deliver, quarantine\n[smtpgw.scan]\nMode=protection\n"
    assert scan(messages, explicit)[1]["eicar.eml"]["action"] == "deliver,quarantine"


def test_scan_exit_codes(tmp_path, scan):
    code, _, _ = scan({}, "")  # no files at all: argparse refuses
    assert code == 2
    conf = tmp_path / "down.conf"
    conf.write_text(f"[smtpgw.antivirus]\nManageClamd=no\nClamdSocket={tmp_path / 'none.sock'}\n")
    msg = tmp_path / "m.eml"
    msg.write_bytes(multipart([TEXT]))
    run = ["scan", "-c", str(conf), "--json"]
    down = mailgate(*run, msg)
    assert down.returncode == 3, down.stderr
    assert "clamd does not answer" in down.stderr
    missing = mailgate(*run, tmp_path / "nope.eml")
    assert missing.returncode == 2
    assert "no such file" in missing.stderr


def test_scan_starts_its_own_clamd_when_managed_and_none_runs(tmp_path):
    conf = tmp_path / "managed.conf"
    conf.write_text("[smtpgw.path]\nSpoolDir=spool\n")
    msg = tmp_path / "m.eml"
    msg.write_bytes(multipart([TEXT, part(EICAR, filename="eicar.com")]))
    result = mailgate("scan", "-c", str(conf), "--json", str(msg))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["status"] == "infected"


def test_action_errors_name_file_and_line(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text(
        "[smtpgw.antivirus]\nActionInfected=deliver, block\nActionSuspicious=explode\n"
        "[smtpgw.attachments]\nNameRule=*.exe\n[smtpgw.scan]\nMode=paranoid\n"
    )
    result = mailgate("check-config", "-c", str(conf))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(":")[1] for line in lines] == ["2", "3", "5", "7"]
    assert "cannot be combined" in lines[0] and "unknown action 'explode'" in lines[1]


def test_ichecker_answers_for_bytes_already_scanned(tmp_path, clamd_socket):
    conf = tmp_path / "i.conf"
    conf.write_text(f"[smtpgw.antivirus]\nManageClamd=no\nClamdSocket={clamd_socket}\n")
    cache = IChecker(tmp_path / "ichecker.sqlite3", 1000)
    engine = Engine(clamd_socket, 10.0, cache)
    inspector = Inspector(configmod.load(conf), engine)
    attachment = part(zipped("report.txt", b"quarterly figures " * 100), "application/zip", "r.zip")
    clean = multipart([TEXT, attachment])
    infected = multipart([TEXT, part(EICAR, filename="eicar.com")])
    for _ in range(2):
        assert inspector.inspect(clean).decision.status == "clean"
        assert inspector.inspect(infected).decision.status == "infected"
    # TEXT, the zip and EICAR went to clamd once each; all else came from the cache,
    # true types included.
    assert (engine.scanned, cache.hits, cache.misses) == (3, 5, 3)
    assert inspector.inspect(infected).objects[1].true_type == "text/plain"
    # Another database version: nothing known any more, and old rows are dropped.
    engine.db_version = "another"
    cache.forget_other_versions("another")
    assert inspector.inspect(clean).decision.status == "clean"
    assert engine.scanned == 5
    # Persistent: a second process (here: connection) sees what the first stored.
    again = IChecker(tmp_path / "ichecker.sqlite3", 1000)
    zip_bytes = mime.split(clean).objects[1].data
    assert again.get(hashlib.sha256(zip_bytes).digest(), "another") == (
        "clean",
        "",
        "application/zip",
    )


def test_ichecker_is_bounded(tmp_path):
    cache = IChecker(tmp_path / "small.sqlite3", 200)
    for i in range(1000):
        cache.put(i.to_bytes(32, "big"), "v1", "clean", "", "text/plain")
    (count,) = cache.db.execute("SELECT COUNT(*) FROM objects").fetchone()
    assert count <= 200
    assert cache.get((999).to_bytes(32, "big"), "v1") == ("clean", "", "text/plain")


def test_empty_and_chunk_sized_objects_scan_clean_under_concurrency(clamd_socket):
    """An empty object, or one a whole number of stream chunks long, ends its INSTREAM with
    exactly one terminator: a second one could hit a connection clamd had already closed
    (EPIPE, seen as 'unscannable' on a torture message with an empty part)."""
    failures: list[BaseException] = []

    def scan_many() -> None:
        engine = Engine(clamd_socket, 10.0)
        for _ in range(150):
            for data in (b"", b"x" * CHUNK):
                try:
                    assert engine.scan(data) == ("clean", "")
                except Exception as exc:
                    failures.append(exc)

    threads = [threading.Thread(target=scan_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_ichecker_hit_writes_only_when_the_row_is_stale(tmp_path):
    cache = IChecker(tmp_path / "touch.sqlite3", 100)
    digest = (7).to_bytes(32, "big")
    cache.put(digest, "v1", "clean", "", "text/plain")
    writes = cache.db.total_changes
    assert cache.get(digest, "v1") == ("clean", "", "text/plain")
    assert cache.db.total_changes == writes  # a fresh row: a read alone
    cache.db.execute("UPDATE objects SET used=used-3600")
    writes = cache.db.total_changes
    assert cache.get(digest, "v1") == ("clean", "", "text/plain")
    assert cache.db.total_changes == writes + 1
    (used,) = cache.db.execute("SELECT used FROM objects").fetchone()
    assert time.time() - used < 60


def test_check_template(tmp_path):
    good = [str(p) for p in sorted((ROOT / "mailgate" / "data" / "templates").glob("*.txt"))]
    ok = mailgate("check-template", *good)
    assert ok.returncode == 0, ok.stderr
    broken = tmp_path / "admin.txt"
    broken.write_text(
        "Subject: virus from ${sender}\nthis is not a header\n\n"
        "Found ${virus_nam} in ${object_name}.\nCost: $ 5\n"
    )
    result = mailgate("check-template", broken)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert [line.split(":")[1] for line in lines] == ["2", "4", "5"]
    assert "unknown variable ${virus_nam}" in lines[1]
    assert "bad placeholder at column 7" in lines[2]


def test_encrypted_zip_fixture_really_is_encrypted(tmp_path):
    data = encrypted_zip(tmp_path, "a.txt", b"secret text")
    info = __import__("zipfile").ZipFile(__import__("io").BytesIO(data)).infolist()[0]
    assert info.flag_bits & 0x1


def test_cure_keeps_structure_headers_and_other_parts():
    from mailgate.scan import mime

    pdf = b"%PDF-1.4\n" + bytes(range(256)) * 4
    raw = multipart(
        [TEXT, part(EICAR, filename="eicar.com"), part(pdf, "application/pdf", "a.pdf")],
        subject="=?utf-8?q?Gr=C3=BC=C3=9Fe?=",
    )
    split = mime.split(raw)
    assert [o.path for o in split.objects] == ["1", "2", "3"]
    cured = mime.cure(split, {"2": "removed: eicar.com\n"})
    msg = email.message_from_bytes(cured)
    original = email.message_from_bytes(raw)
    assert msg.defects == [] and all(p.defects == [] for p in msg.walk())
    for header in ("From", "To", "Subject", "Message-ID", "Date", "Content-Type"):
        assert msg[header] == original[header]
    parts = msg.get_payload()
    assert len(parts) == 3
    assert parts[0].get_payload(decode=True) == original.get_payload()[0].get_payload(decode=True)
    assert parts[2].get_payload(decode=True) == pdf
    assert parts[2].get_filename() == "a.pdf"
    assert parts[1].get_content_type() == "text/plain"
    assert parts[1].get_payload(decode=True) == b"removed: eicar.com\r\n"
    assert EICAR not in cured and base64.b64encode(EICAR)[:40] not in cured
    assert b"\n" not in cured.replace(b"\r\n", b"")


def archive(kind: str, members: list[tuple[str, bytes]]) -> bytes:
    """An archive built here, at test time: zip, tar, or tar compressed with gz/bz2/xz."""
    out = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members:
                z.writestr(name, data)
        return out.getvalue()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    plain = out.getvalue()
    return {"tar": lambda b: b, "gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[
        kind
    ](plain)


def noise(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def recursive_bomb(levels: int, copies: int, leaf: bytes) -> bytes:
    """42.zip's shape: every level a zip of ``copies`` copies of the level below."""
    level = archive("zip", [("leaf.bin", leaf)])
    for _ in range(levels):
        level = archive("zip", [(f"{n}.zip", level) for n in range(copies)])
    return level


LIMITS = "MaxFileSize=2M\nMaxUnpackedSize=40M\nMaxRecursion=6\n"
SHAPES = {
    # a member over MaxFileSize, its padding keeping the ratio low (the end-to-end test puts
    # EICAR after it, where a clamd held to the same limit does not look)
    "over-max-filesize": (archive("zip", [("big.bin", noise(3 << 20))]), "limit:max-filesize"),
    # 4 levels of 16 copies of a leaf that compresses only 50:1: no member looks like a bomb
    "recursive": (recursive_bomb(4, 16, (noise(20_000) * 50)[: 1 << 20]), "limit:max-scansize"),
    # bytes before the first PK header (a self-extractor's stub), a 4000:1 member
    "prefixed": (b"MZ" + noise(5000) + archive("zip", [("z", bytes(2_000_000))]), "limit:ratio"),
    "gzip": (gzip.compress(bytes(3 << 20)), "limit:max-filesize"),
    "bzip2": (bz2.compress(bytes(3 << 20)), "limit:max-filesize"),
    "xz": (lzma.compress(bytes(3 << 20)), "limit:max-filesize"),
    "tar.gz-of-zip": (
        archive("gz", [("in.zip", archive("zip", [("x.bin", noise(3 << 20))]))]),
        "limit:max-filesize",
    ),
    "tar.xz-many": (archive("xz", [(f"f{n}", b"x") for n in range(300)]), "limit:max-files"),
    "nested-too-deep": (recursive_bomb(8, 1, b"deep"), "limit:max-recursion"),
}


def test_archives_that_would_be_scanned_only_in_part_are_unscannable(scan):
    messages = {
        f"{name}.eml": multipart([TEXT, part(data, "application/octet-stream", f"{name}.bin")])
        for name, (data, _reason) in SHAPES.items()
    }
    fine = archive("gz", [("notes.txt", b"meeting at ten\n" * 1000), ("a.zip", zipped("b", b"x"))])
    messages["fine.eml"] = multipart([TEXT, part(fine, "application/gzip", "fine.tar.gz")])
    code, verdicts, stderr = scan(messages, LIMITS + "MaxFiles=200\n")
    assert code == 0, stderr
    for name, (_data, reason) in SHAPES.items():
        verdict = verdicts[f"{name}.eml"]
        assert verdict["status"] == "unscannable", (name, verdict)
        assert bad(verdict)[0]["detail"].startswith(reason), (name, bad(verdict))
        assert verdict["action"] == "block,quarantine"  # kept in quarantine, not delivered
    assert verdicts["fine.eml"]["status"] == "clean", verdicts["fine.eml"]


def test_check_config_warns_about_an_external_clamd_that_would_stop_silently(tmp_path):
    clamd_conf = tmp_path / "clamd.conf"
    conf = tmp_path / "m.conf"
    conf.write_text(
        "[smtpgw.antivirus]\nManageClamd=no\nClamdSocket=/run/clamav/clamd.ctl\n"
        f"ClamdConfig={clamd_conf}\n"
    )
    clamd_conf.write_text("# a stock Debian clamd.conf says nothing of AlertExceedsMax\n")
    stock = mailgate("check-config", "-c", str(conf))
    assert stock.returncode == 0 and "AlertExceedsMax is off" in stock.stderr
    clamd_conf.write_text("AlertExceedsMax yes\nMaxFileSize 10M\nMaxRecursion 30\n")
    low = mailgate("check-config", "-c", str(conf))
    assert low.returncode == 0 and "AlertExceedsMax" not in low.stderr
    assert "MaxFileSize 10M is below mailgate's" in low.stderr
    assert "MaxRecursion" not in low.stderr
    clamd_conf.write_text("AlertExceedsMax yes\nMaxFileSize 100M\nMaxRecursion 20\n")
    assert "warning" not in mailgate("check-config", "-c", str(conf)).stderr


def test_a_large_message_is_scanned_from_its_file(scan):
    """Past IN_MEMORY a message is parsed from its skeleton: EICAR in a zip at the end of a
    3 MB attachment, and EICAR after 2 MB of text, are found all the same."""
    rng = random.Random(7)
    padding = rng.randbytes(3 << 20)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        z.writestr("padding.bin", padding)
        z.writestr("eicar.com", EICAR)
    text = b"nothing to see here\r\n" * 100_000
    code, verdicts, _ = scan(
        {
            "zip.eml": multipart([TEXT, part(archive.getvalue(), filename="big.zip")]),
            "text.eml": multipart([part(text + EICAR, "text/plain", encoding="7bit")]),
            "clean.eml": multipart([TEXT, part(padding, filename="big.bin")]),
        }
    )
    assert code == 0, verdicts
    assert [o["name"] for o in bad(verdicts["zip.eml"])] == ["big.zip"]
    assert bad(verdicts["zip.eml"])[0]["status"] == "infected"
    assert bad(verdicts["text.eml"])[0]["status"] == "infected"
    assert verdicts["clean.eml"]["status"] == "clean"


def test_transfer_encodings_are_undone_as_a_mail_reader_undoes_them(scan):
    """A body a reader decodes is decoded for the scan too: an encoding name in capitals
    with blanks around it, and base64 that goes on after a stray padding."""
    encoded = base64.encodebytes(EICAR).replace(b"\n", b"\r\n")
    blank = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding:  BASE64 \r\n\r\n" + encoded
    )
    padded = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nQQ==\r\n" + encoded
    )
    code, verdicts, _ = scan(
        {"blank.eml": multipart([TEXT, blank]), "padded.eml": multipart([TEXT, padded])}
    )
    assert code == 0
    for name in ("blank.eml", "padded.eml"):
        assert "Mailgate.Test.EICAR" in bad(verdicts[name])[0]["detail"], name


def test_text_is_typed_in_detail_only_when_a_type_rule_could_tell(tmp_path, scan):
    """libmagic's full database costs 0.3 ms an object: the scanner types text by its
    built-in tests unless a TypeRule could match a text type; then HTML renamed .txt is
    caught as HTML. ``mailgate scan`` always shows the detail."""
    page = b"<!DOCTYPE html>\n<html><head><title>x</title></head><body>hi</body></html>\n"
    message = multipart([TEXT, part(page, "text/plain", "notes.txt")])
    conf = tmp_path / "types.conf"
    conf.write_text("[smtpgw.antivirus]\nEnabled=no\n")
    fast = Inspector(configmod.load(conf), None).inspect(message)
    assert [o.true_type for o in fast.objects] == ["text/plain", "text/plain"]
    conf.write_text(conf.read_text() + "[smtpgw.attachments]\nTypeRule=block text/*html\n")
    ruled = Inspector(configmod.load(conf), None).inspect(message)
    assert [o.true_type for o in ruled.objects] == ["text/plain", "text/html"]
    assert ruled.decision.status == "banned"
    _, shown, _ = scan({"m.eml": message})
    assert [o["true_type"] for o in shown["m.eml"]["objects"]] == ["text/plain", "text/html"]
