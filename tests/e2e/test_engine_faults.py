"""Engine errors are not verdicts and not crashes: whatever clamd (or what sits on its socket)
answers, the message waits, is retried with a pause, and ends ``unscannable`` with the reason
after a bounded time; the scanner's crash counter stays at zero."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from support import make_message, wait_for

ADMIN = "[smtpgw.notify]\nAdministrator=admin@company.com\n"


class BrokenEngine(threading.Thread):
    """A unix socket that answers PING and VERSION as clamd does, and ``reply`` to a scan.

    It stands for a clamd that misbehaves (a protocol it does not speak, a reply cut short,
    a connection dropped): the faults a real clamd shows only under load or mid-upgrade.
    """

    def __init__(self, path: Path, reply: bytes):
        super().__init__(daemon=True)
        self.path, self.reply = path, reply
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(16)
        self.scans = 0

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            command = b""
            while not command.endswith((b"\0", b"\n")):  # zCOMMAND\0 or nCOMMAND\n
                byte = stream.read(1)
                if not byte:
                    return
                command += byte
            name, end = command[1:-1], command[-1:]
            if name == b"PING":
                conn.sendall(b"PONG" + end)
            elif name == b"VERSION":
                conn.sendall(b"ClamAV 1.0.0/27000/Mon Nov 30 09:00:00 2026" + end)
            elif name == b"INSTREAM":
                while True:  # the chunks, up to the zero-length one that ends the stream
                    size = int.from_bytes(stream.read(4), "big")
                    if size == 0:
                        break
                    stream.read(size)
                self.scans += 1
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(
    "reply",
    [b"garbage without a colon\0", b"stream: \0", b"", b"stream: OK", b"other: OK\0"],
    ids=["nonsense", "empty-verdict", "silence", "cut-short", "not-our-stream"],
)
def test_an_engine_that_answers_nonsense_makes_the_message_unscannable_not_a_crash(
    make_gateway, sink, tmp_path, reply
):
    engine = BrokenEngine(tmp_path / "broken.sock", reply)
    engine.start()
    try:
        gw = make_gateway(
            "[smtpgw.antivirus]\nManageClamd=no\n"
            f"ClamdSocket={engine.path}\nScanAttempts=2\nObjectTimeout=2s\n" + ADMIN
        ).start()
        qid = gw.send(make_message("nonsense@test"))
        wait_for(lambda: gw.entries("quarantine/unscannable") == [qid], 60, "the quarantine")
        envelope = json.loads(
            (gw.spool / "quarantine" / "unscannable" / qid / "envelope.json").read_text()
        )
        assert envelope["crashes"] == 0 and envelope["scan_failures"] == 1
        assert envelope["verdict"]["status"] == "unscannable"
        log = gw.log()
        assert "event='processing_failed'" not in log and "event='worker_exited'" not in log
        assert "<nonsense@test>" not in sink.ids()
        assert "rest=" in log  # the second try came after a pause
    finally:
        engine.close()


def test_a_message_waits_for_an_absent_clamd_then_is_unscannable_with_the_reason(
    make_gateway, sink, tmp_path
):
    gw = make_gateway(
        "[smtpgw.antivirus]\nManageClamd=no\n"
        f"ClamdSocket={tmp_path / 'nobody.sock'}\nScanRetryTime=3s\n" + ADMIN
    ).start()
    qid = gw.send(make_message("waiting@test"))
    wait_for(lambda: "event='engine_unavailable'" in gw.log(), 30, "the scanner to notice")
    wait_for(lambda: gw.entries("quarantine/unscannable") == [qid], 60, "the quarantine")
    envelope = json.loads(
        (gw.spool / "quarantine" / "unscannable" / qid / "envelope.json").read_text()
    )
    (obj,) = envelope["verdict"]["objects"]
    assert obj["status"] == "unscannable" and obj["detail"].startswith("engine:unavailable")
    assert envelope["crashes"] == 0
    assert "<waiting@test>" not in sink.ids()
    log = gw.log()
    assert "event='processing_failed'" not in log and "event='worker_exited'" not in log
