"""Unique mail for ``scripts/bench --unique``, the client that sends it, and a plain Postfix relay
measured with the same client in the same run.

Every message differs in its words, subject, addresses, Message-ID and attachment bytes, so no
cache (the iChecker, the token table's memo) answers for it; a tenth carry a zip of random
CSV-like rows. They are made before the clock starts and sent by an asyncio client that opens
one SMTP session per message (as ``smtp-source`` without ``-d``), ``sessions`` at a time.

The Postfix peer is a private instance (its own ``main.cf``, ``master.cf`` and queue in a
temporary directory, ``postfix -c DIR start``) relaying everything to the same sink: the
plain relay an administrator would put there, its queue fsync'd as Postfix always does.
"""

from __future__ import annotations

import asyncio
import base64
import io
import random
import shutil
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path

WORDS = (  # noqa: SIM905 (a sentence of words reads better than a list of 53 strings)
    "account agenda allocation analysis approval budget calendar client contract customer "
    "deadline delivery design draft estimate feedback figures forecast invoice meeting memo "
    "milestone minutes network order payment plan policy price project proposal quarter "
    "quote release report request review revenue schedule server service shipment status "
    "supplier support team ticket timeline update vendor version warehouse weekly"
).split()


# (share, smallest, largest size in bytes): most business mail is a few KB of text, some
# carries documents, a few carry large files; the shares follow published mail-size
# distributions (median around 10 KB, a long tail), rounded.
SIZE_MIX = (
    (0.60, 2 * 1024, 10 * 1024),
    (0.25, 10 * 1024, 100 * 1024),
    (0.12, 100 * 1024, 1024 * 1024),
    (0.03, 1024 * 1024, 5 * 1024 * 1024),
)


def message_sizes(count: int, size: int, mix: bool, rng: random.Random) -> list[int]:
    """``size`` for every message, or sizes drawn from ``SIZE_MIX`` (log-uniform in a band)."""
    if not mix:
        return [size] * count
    out = []
    for _ in range(count):
        pick, acc, band = rng.random(), 0.0, SIZE_MIX[-1]
        for entry in SIZE_MIX:
            acc += entry[0]
            if pick < acc:
                band = entry
                break
        _share, low, high = band
        out.append(int(low * (high / low) ** rng.random()))
    return out


def unique_messages(
    count: int, size: int = 5 * 1024, seed: int = 1, mix: bool = False
) -> list[bytes]:
    """``count`` distinct messages of about ``size`` bytes (or of ``SIZE_MIX``'s sizes), a
    tenth with a random zip. Text comes from a pool of random lines, drawn per message, so a
    5 MB message costs milliseconds to make and still differs from every other."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choice(WORDS) for _ in range(11)) for _ in range(2000)]
    out = []
    for n, target in enumerate(message_sizes(count, size, mix, rng)):
        lines = rng.choices(pool, k=max(1, target // 75))
        lines.insert(rng.randrange(len(lines) + 1), f"reference {rng.getrandbits(64):x}")
        text = "\r\n".join(lines)[: max(200, target - 600)] + "\r\n"
        head = (
            f"From: <{rng.choice(WORDS)}{n}@example.org>\r\nTo: <user@company.com>\r\n"
            f"Subject: {' '.join(rng.choice(WORDS) for _ in range(4))} {n}\r\n"
            f"Date: Wed, 02 Dec 2026 10:{n % 60:02d}:00 +0000\r\n"
            f"Message-ID: <{n}.{rng.getrandbits(64):x}@bench.example.org>\r\n"
        )
        if n % 10 == 9:
            rows = "".join(
                f"{rng.randrange(10**6)},{rng.choice(WORDS)},{rng.random():.6f}\n"
                for _ in range(60)
            )
            packed = io.BytesIO()
            with zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(f"figures-{n}.csv", rows)
            blob = base64.encodebytes(packed.getvalue()).decode().replace("\n", "\r\n")
            body = (
                head + 'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
                f"--b\r\nContent-Type: text/plain\r\n\r\n{text[: len(text) // 2]}\r\n"
                "--b\r\nContent-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n"
                f'Content-Disposition: attachment; filename="figures-{n}.zip"\r\n\r\n'
                f"{blob}--b--\r\n"
            )
        else:
            body = head + "\r\n" + text
        out.append(body.encode())
    return out


async def _reply(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    while line[3:4] == b"-":
        line = await reader.readline()
    if line[:1] not in (b"2", b"3"):
        raise RuntimeError(f"the server said {line!r}")
    return line


async def _one(port: int, message: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        for command in (
            b"EHLO bench.example.org",
            b"MAIL FROM:<bench@example.org>",
            b"RCPT TO:<user@company.com>",
            b"DATA",
        ):
            writer.write(command + b"\r\n")
            await _reply(reader)
        writer.write(message.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        await _reply(reader)
        writer.write(b"QUIT\r\n")
        await writer.drain()
    finally:
        writer.close()


def send(port: int, messages: list[bytes], sessions: int, rate: float = 0.0) -> float:
    """Send every message, ``sessions`` at a time (message ``n`` not before ``n / rate``
    seconds when a rate is given, to measure latency below the peak); the seconds it took."""

    async def run() -> None:
        queue = list(reversed(messages))
        loop = asyncio.get_running_loop()
        begin = loop.time()

        async def worker() -> None:
            while queue:
                due = begin + (len(messages) - len(queue)) / rate if rate else 0.0
                message = queue.pop()
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                await _one(port, message)

        await asyncio.gather(*(worker() for _ in range(sessions)))

    started = time.monotonic()
    asyncio.run(run())
    return time.monotonic() - started


MASTER = Path("/usr/lib/postfix/sbin/master")
QUEUES = ("incoming", "active", "deferred", "bounce", "defer", "trace", "flush", "hold")


class PostfixRelay:
    """A private Postfix listening on ``port`` and relaying to ``sink_port``: its ``master``
    in the foreground (``-c DIR -d``) on a configuration and queue of its own, logging to its
    standard output (``postfix -c`` would want the directory named in the system's main.cf)."""

    def __init__(self, port: int, sink_port: int):
        self.dir = Path(tempfile.mkdtemp(prefix="bench-postfix-"))
        self.dir.chmod(0o755)
        queue, data = self.dir / "queue", self.dir / "data"
        (self.dir / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {queue}\ndata_directory = {data}\n"
            "inet_interfaces = loopback-only\ninet_protocols = ipv4\n"
            "mydestination =\nmynetworks = 127.0.0.0/8\n"
            f"relayhost = [127.0.0.1]:{sink_port}\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject\n"
            "syslog_name = bench-postfix\nmaillog_file = /dev/stdout\n"
            "default_process_limit = 100\nsmtp_tls_security_level = none\n"
            "alias_maps =\nalias_database =\nlocal_recipient_maps =\n"
        )
        master = Path("/etc/postfix/master.cf").read_text()
        master = master.replace("smtp      inet", f"127.0.0.1:{port}      inet", 1)
        (self.dir / "master.cf").write_text(master)
        private = (*QUEUES, "corrupt", "saved", "private")
        for name in (*private, "pid", "maildrop", "public"):
            (queue / name).mkdir(parents=True)
        data.mkdir()
        for path in [data, *(queue / name for name in private)]:
            shutil.chown(path, "postfix")
            path.chmod(0o700)
        for name, mode in (("maildrop", 0o1730), ("public", 0o710)):
            shutil.chown(queue / name, "postfix", "postdrop")
            (queue / name).chmod(mode)
        self.log = open(self.dir / "maillog", "wb")  # noqa: SIM115 (closed in stop)
        self.master = subprocess.Popen(
            [str(MASTER), "-c", str(self.dir), "-d"], stdout=self.log, stderr=subprocess.STDOUT
        )

    def queued(self) -> int:
        return sum(
            1
            for name in ("maildrop", *QUEUES)
            for path in (self.dir / "queue" / name).rglob("*")
            if path.is_file()
        )

    def stop(self) -> None:
        self.master.terminate()
        try:
            self.master.wait(30)
        finally:
            self.log.close()
            shutil.rmtree(self.dir, ignore_errors=True)


def postfix_rate(port: int, sink_port: int, messages: list[bytes], sessions: int, wait_port) -> str:
    """Messages per second, accepted to delivered, through a plain Postfix relay (or why not);
    ``wait_port(port)`` returns once the relay greets."""
    if not MASTER.exists():
        return "not installed"
    try:
        relay = PostfixRelay(port, sink_port)
    except (OSError, LookupError) as exc:
        return f"could not start ({exc})"
    try:
        wait_port(port)
        started = time.monotonic()
        send(port, messages, sessions)
        deadline = time.monotonic() + 600
        while relay.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"{len(messages) / (time.monotonic() - started):.0f}"
    finally:
        relay.stop()
