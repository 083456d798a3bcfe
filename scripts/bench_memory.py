"""Peak memory of every gateway process under the inputs that used to blow it up.

Four loads, one after the other, through ``mailgate run`` (anti-virus on, managed clamd,
spam filter on) into smtp-sink, while a thread samples every process's RSS from /proc every
20 ms:

- one 200 MB DATA line without CRLF (refused with 500 at the end of DATA);
- forty concurrent 250 KB messages, the largest a scanner takes into a batch of 16;
- ten concurrent 24 MB messages (text and a base64 attachment);
- one 50 MB message.

Prints, per load, the peak RSS of each kind of process (receiver, scanner, sender,
supervisor, clamd) and how the load ended. Asserts nothing: the figures go in
docs/benchmarks.md.
"""

from __future__ import annotations

import base64
import random
import smtplib
import socket
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from bench import free_port, rss_kib, start_gateway, start_sink, tree_pids, wait_port


def role_of(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    if b"worker" in cmdline:
        return cmdline[cmdline.index(b"worker") + 1].decode()
    return "clamd" if cmdline[0].endswith(b"clamd") else "supervisor"


class Sampler(threading.Thread):
    def __init__(self, root: int):
        super().__init__(daemon=True)
        self.root = root
        self.peaks: dict[str, int] = defaultdict(int)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for pid in tree_pids(self.root):
                role = role_of(pid)
                self.peaks[role] = max(self.peaks[role], rss_kib(pid))

    def take(self) -> dict[str, int]:
        peaks = dict(self.peaks)
        self.peaks.clear()
        return peaks


def message(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    text = " ".join(rng.choice(["alpha", "beta", "gamma", "delta"]) for _ in range(15)) + "\r\n"
    body = (text * (size // 2 // len(text))).encode()
    blob = base64.encodebytes(rng.randbytes(size // 3)).replace(b"\n", b"\r\n")
    return (
        b"From: <a@example.org>\r\nTo: <user@company.com>\r\nSubject: big\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\n" + body + b"\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + blob
        + b"--b--\r\n"
    )


def send(port: int, data: bytes) -> str:
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=300) as smtp:
            smtp.sendmail("a@example.org", ["user@company.com"], data)
        return "250"
    except smtplib.SMTPException as exc:
        return str(getattr(exc, "smtp_code", exc))


def endless_line(port: int, size: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=300) as s:
        f = s.makefile("rwb")
        f.readline()
        for line in (b"EHLO bench", b"MAIL FROM:<a@example.org>", b"RCPT TO:<user@company.com>"):
            f.write(line + b"\r\n")
            f.flush()
            while f.readline()[3:4] == b"-":
                pass
        f.write(b"DATA\r\n")
        f.flush()
        f.readline()
        chunk = b"x" * (1 << 20)
        for _ in range(size >> 20):
            f.write(chunk)
        f.write(b"\r\n.\r\n")
        f.flush()
        return f.readline().decode().strip()


def concurrently(port: int, messages: list[bytes]) -> list[str]:
    """Send ``messages`` each in its own session, all at once; their replies."""
    replies: list[str] = []
    threads = [threading.Thread(target=lambda m=m: replies.append(send(port, m))) for m in messages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return replies


def drained(spool: Path, timeout: float = 600.0) -> None:
    """Wait until no message is left in the queues that lead to delivery."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queues = ("incoming", "scanning", "ready", "sending")
        if not any(any((spool / q).iterdir()) for q in queues):
            return
        time.sleep(0.2)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mailgate-bench-memory-"))
    work.chmod(0o755)
    port, sink_port = free_port(), free_port()
    conf = work / "mailgate.conf"
    conf.write_text(
        f"[smtpgw.network]\nListenOn=127.0.0.1:{port}\nProtectedDomains=company.com\n"
        f"[smtpgw.forward]\nForwardRoute=* [127.0.0.1:{sink_port}]\n"
        "[smtpgw.path]\nSpoolDir=spool\n[smtpgw.admin]\nListen=\nMetricsListen=\n"
        "[smtpgw.limits]\nMaxMessageSize=60M\nMinFreeDisk=64M\nMaxSessionsPerClient=0\n"
        "[smtpgw.antivirus]\nMaxObjectSize=60M\n"
        "[smtpgw.spamtest]\nNetwork=no\n"
    )
    sink = start_sink(sink_port)
    gateway = start_gateway(conf, work / "mailgate.log")
    try:
        wait_port(port, 180)
        time.sleep(1.0)
        sampler = Sampler(gateway.pid)
        sampler.start()
        time.sleep(1.0)
        results = [("idle", "-", sampler.take())]
        outcome = endless_line(port, 200 << 20)
        results.append(("one 200 MB line without CRLF", outcome, sampler.take()))
        for name, size, count in (
            ("forty concurrent 250 KB messages", 250_000, 40),
            ("ten concurrent 24 MB messages", 24 << 20, 10),
        ):
            replies = concurrently(port, [message(size, n) for n in range(count)])
            drained(work / "spool")  # the scanners and senders work through them meanwhile
            results.append((name, ",".join(sorted(set(replies))), sampler.take()))
        outcome = send(port, message(50 << 20, 99))
        drained(work / "spool")
        results.append(("one 50 MB message", outcome, sampler.take()))
        sampler.stop.set()
    finally:
        gateway.terminate()
        gateway.wait(60)
        sink.terminate()
    roles = ("receiver", "scanner", "sender", "supervisor", "clamd")
    print("peak RSS in MiB per process kind (the largest single process of that kind)")
    print(f"{'load':<34} {'reply':<22} " + " ".join(f"{r:>10}" for r in roles))
    for name, reply, peaks in results:
        cells = " ".join(f"{peaks.get(r, 0) / 1024:>10.0f}" for r in roles)
        print(f"{name:<34} {reply[:22]:<22} {cells}")
    print(f"work directory: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
