"""Real components for the tests: an SMTP sink, a running gateway, a DNS server, polling.

Nothing here mocks a protocol: the sink is an aiosmtpd server on loopback, the gateway is
``mailgate run`` as a child process, the DNS server is dnsmasq.
"""

from __future__ import annotations

import contextlib
import email
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller

from mailgate import config as configmod
from mailgate.receive.smtp import GatewaySMTP
from mailgate.send.routing import RouteError, Router

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RawSession:
    """An SMTP session on a bare socket, for what smtplib will not do (odd commands, a chosen
    source address, half a DATA). ``banner`` is the server's first line."""

    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 30):
        self.sock = socket.create_connection(
            ("127.0.0.1", port), source_address=(source, 0), timeout=timeout
        )
        self.file = self.sock.makefile("rwb")
        self.banner = self.file.readline().decode(errors="replace").strip()

    def reply(self) -> str:
        """The last line of the next (possibly multi-line) reply."""
        line = self.file.readline()
        while line[3:4] == b"-":
            line = self.file.readline()
        return line.decode(errors="replace").strip()

    def cmd(self, line: str | bytes) -> str:
        self.file.write((line.encode() if isinstance(line, str) else line) + b"\r\n")
        self.file.flush()
        return self.reply()

    def start_data(self, rcpt: str = "user@company.com") -> str:
        """EHLO, MAIL, RCPT, DATA; the reply to DATA (354 when all went well)."""
        self.cmd("EHLO client.example.org")
        self.cmd("MAIL FROM:<a@example.org>")
        self.cmd(f"RCPT TO:<{rcpt}>")
        return self.cmd("DATA")

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawSession:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()


def mailgate(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m mailgate ARGS…``, its output captured as text (a command-line check)."""
    return subprocess.run(
        [sys.executable, "-m", "mailgate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def make_message(
    msgid: str,
    size: int = 0,
    subject: str = "test",
    to: str = "user@company.com",
    sender: str = "sender@example.org",
) -> bytes:
    """An RFC 5322 message with CRLF line ends (smtplib does not fix bare LF for bytes)."""
    body = "Hello from the tests.\r\n"
    if size > len(body):
        line = "x" * 76 + "\r\n"
        body += line * ((size - len(body)) // len(line))
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{msgid}>\r\nDate: Sun, 29 Nov 2026 10:00:00 +0000\r\n\r\n"
        f"{body}"
    ).encode()


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    mail_dsn: dict
    rcpt_dsn: list[dict]

    @property
    def message(self) -> email.message.Message:
        return email.message_from_bytes(self.content)

    @property
    def message_id(self) -> str | None:
        return self.message.get("Message-ID")


class _SinkHandler:
    def __init__(self, sink: Sink):
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.sink.cond:
            self.sink.sessions += 1
        extra = ["250-DSN"] if self.sink.dsn else []
        if self.sink.pipelining:  # as Postfix and Exim announce it; the sender pipelines
            extra.append("250-PIPELINING")
        return [*responses[:-1], *extra, responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, options):
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.dsn_mail = getattr(session, "dsn_mail", {})
        envelope.dsn_rcpts = []
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, options):
        reply = self.sink.next_reply(self.sink.rcpt_replies, address)
        if reply and not reply.startswith("2"):
            return reply
        envelope.rcpt_tos.append(address)
        envelope.dsn_rcpts.append(getattr(session, "dsn_rcpt", {}))
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        reply = self.sink.next_reply(self.sink.data_replies, "*")
        if reply and not reply.startswith("2"):
            return reply
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from
        self.sink.record(
            Received(
                mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                envelope.dsn_mail,
                envelope.dsn_rcpts,
            )
        )
        return "250 2.0.0 Ok: delivered"


class Sink(Controller):
    """The next-hop MTA: an aiosmtpd server in a thread that keeps what it accepts.

    ``rcpt_replies[address]`` and ``data_replies["*"]`` are lists of replies used up one per
    command (then 250), e.g. ["451 4.3.0 try later"] to defer the first attempt.
    """

    def __init__(
        self,
        port: int | None = None,
        dsn: bool = False,
        host: str = "127.0.0.1",
        pipelining: bool = True,
    ):
        self.port_number = port or free_port()
        self.dsn = dsn
        self.pipelining = pipelining
        self.received: list[Received] = []
        self.sessions = 0  # EHLOs seen: how many SMTP sessions the gateway opened
        self.rcpt_replies: dict[str, list[str]] = {}
        self.data_replies: dict[str, list[str]] = {}
        self.cond = threading.Condition()
        super().__init__(_SinkHandler(self), hostname=host, port=self.port_number)

    def factory(self):
        return GatewaySMTP(self.handler, **self.SMTP_kwargs)

    def next_reply(self, table: dict[str, list[str]], key: str) -> str | None:
        with self.cond:
            queue = table.get(key)
            return queue.pop(0) if queue else None

    def record(self, item: Received) -> None:
        with self.cond:
            self.received.append(item)
            self.cond.notify_all()

    def wait_count(self, count: int, timeout: float = 30.0) -> list[Received]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.received) >= count, timeout)
            assert ok, f"sink got {len(self.received)} messages, expected {count}"
            return list(self.received)

    def ids(self) -> list[str]:
        with self.cond:
            return [r.message_id for r in self.received]


@dataclass
class Gateway:
    """``mailgate run`` on a private config and spool under ``base``."""

    base: Path
    port: int
    sink_port: int
    extra: str = ""
    python: str = sys.executable  # the interpreter that runs mailgate (a wheel's venv, say)
    wrapper: tuple[str, ...] = ()  # a command that runs ``mailgate run`` (strace, say)
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self):
        self.base.mkdir(parents=True, exist_ok=True)
        self.conf = self.base / "mailgate.conf"
        self.spool = self.base / "spool"
        self.log_path = self.base / "mailgate.log"
        self.write_config(self.extra)

    def write_config(self, extra: str = "") -> None:
        sections = {
            "smtpgw.network": [
                f"ListenOn=127.0.0.1:{self.port}",
                "ProtectedDomains=company.com, *.company.com",
                "TrustedNetworks=127.0.0.1/32",
            ],
            "smtpgw.forward": [
                f"ForwardRoute=*@company.com [127.0.0.1:{self.sink_port}]",
                f"ForwardRoute=*@*.company.com [127.0.0.1:{self.sink_port}]",
                f"ForwardRoute=*@example.org [127.0.0.1:{self.sink_port}]",
            ],
            "smtpgw.path": ["SpoolDir=spool"],
        }
        limits = sections["smtpgw.limits"] = []
        if "MinFreeDisk" not in extra:
            # the default (1% of the file system) could refuse mail on a nearly full test disk
            limits.append("MinFreeDisk=8M")
        # One scanner and one sender unless a test asks for more: a worker costs about half a
        # second of CPU to start and the suite starts some 140 gateways; the tests about
        # concurrent workers (crash, races, durable hand-offs, reload) ask for theirs.
        limits += [
            f"{role}=1"
            for role in ("Scanners", "Senders")
            if not re.search(rf"(?m)^\s*{role}\s*=", extra)
        ]
        # the supervisor's chores (recovery, alerts) every second: tests wait for them
        sections["smtpgw.process"] = [] if "SweepInterval" in extra else ["SweepInterval=1s"]
        if "User=" not in extra:
            sections["smtpgw.process"].append("User=")  # tmp_path is root's; privileges drop
        if "[smtpgw.admin]" not in extra:
            sections["smtpgw.admin"] = ["Listen=", "MetricsListen="]  # tests run side by side
        if "[smtpgw.spamtest]" not in extra:
            # The relay and anti-virus tests compare bytes; the spam tests turn it on.
            sections["smtpgw.spamtest"] = ["Enabled=no"]
        if "[smtpgw.index]" not in extra:
            # archive and quarantine tests read the files at once; the index tests turn it on
            sections["smtpgw.index"] = ["Enabled=no"]
        if "[smtpgw.auth]" not in extra:
            # SPF/DKIM/DMARC ask the DNS, which tests have only as their own dnsmasq
            sections["smtpgw.auth"] = ["Enabled=no"]
        current = None
        for line in extra.strip().splitlines():
            line = line.strip()
            if line.startswith("["):
                current = line[1:-1]
                sections.setdefault(current, [])
            elif line:
                assert current, "extra config must start with a [section]"
                sections[current].append(line)
        text = "".join(
            f"[{name}]\n" + "".join(f"{x}\n" for x in lines) + "\n"
            for name, lines in sections.items()
        )
        self.conf.write_text(text)

    def start(self, wait: bool = True) -> Gateway:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.wrapper, self.python, "-m", "mailgate", "run", "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd="/",
            )
        if wait:
            self.wait_ready()
        return self

    def workers(self) -> dict:
        try:
            return json.loads((self.spool / "run" / "workers.json").read_text())
        except (OSError, ValueError):
            return {}

    def pids(self, role: str) -> list[int]:
        return [w["pid"] for w in self.workers().get("workers", []) if w["role"] == role]

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready():
            assert self.process.poll() is None, f"mailgate run exited:\n{self.log()}"
            if not self.pids("receiver") or "event='listening'" not in self.log():
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                return s.recv(100).startswith(b"220")
            return False

        wait_for(ready, timeout, "the gateway to accept connections")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        supervisor = self.workers().get("supervisor") if self.wrapper else None
        if supervisor:  # the wrapper's child; the wrapper ends with it
            os.kill(supervisor, signal.SIGTERM)
        else:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(
                f"mailgate run did not stop on SIGTERM:\n{self.log()[-3000:]}"
            ) from None

    def cli(self, *args: str, check: bool | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [self.python, "-m", "mailgate", *args, "-c", str(self.conf)]
            if args[0] != "queue"
            else [self.python, "-m", "mailgate", "queue", "-c", str(self.conf), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def queue(self, state: str | None = None) -> list[dict]:
        args = ["queue", "list", "--json"] + (["--state", state] if state else [])
        return json.loads(self.cli(*args, check=True).stdout)

    def entries(self, state: str) -> list[str]:
        path = self.spool / state
        return sorted(os.listdir(path)) if path.is_dir() else []

    def send(
        self,
        message: bytes,
        to: list[str] | str = "user@company.com",
        sender: str = "sender@example.org",
        source: str | None = None,
        mail_options: tuple = (),
        rcpt_options: tuple = (),
    ) -> str:
        """Send over real SMTP; return the queue ID from the 250 reply."""
        to = [to] if isinstance(to, str) else to
        with smtplib.SMTP(
            "127.0.0.1", self.port, timeout=30, source_address=(source, 0) if source else None
        ) as smtp:
            smtp.ehlo("client.example.org")
            code, reply = smtp.mail(sender, list(mail_options))
            assert code == 250, (code, reply)
            for rcpt in to:
                code, reply = smtp.rcpt(rcpt, list(rcpt_options))
                assert code == 250, (code, reply)
            code, reply = smtp.data(message)
            assert code == 250, (code, reply)
        text = reply.decode()
        assert "queued as " in text, text
        return text.rsplit(" ", 1)[1]


def dnsmasq(port: int, records: list[str]) -> subprocess.Popen:
    """A real DNS server on 127.0.0.1:port answering only the given dnsmasq records."""
    binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    proc = subprocess.Popen(
        [
            binary,
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--user=root",
            "--pid-file=",
            "--local-ttl=300",  # as real lists and zones publish; 0 would forbid caching
            *records,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc


def mx_router(port: int, routes: str, tmp: Path = Path("/tmp")) -> Router:
    text = (
        f"[smtpgw.forward]\nNameservers=127.0.0.1:{port}\nDeliveryPort=2600\n{routes}\n"
        "[smtpgw.path]\nSpoolDir=spool\n"
    )
    """A Router on its own configuration, asking the DNS server on 127.0.0.1:``port``."""
    return Router(configmod.parse(text, tmp / "routing.conf"))


def mx_answers(router: Router) -> bool:
    try:
        return bool(router.targets("x@amx.test"))
    except RouteError:
        return False


def spam_envelope(
    sender="a@example.org", rcpts=("user@company.com",), ip="192.0.2.10", helo="mx.ex"
):
    """The envelope a scanner hands the spam filter: sender, recipients and client."""
    return {
        "mail_from": sender,
        "recipients": [{"address": r, "status": "pending"} for r in rcpts],
        "client": {"ip": ip, "helo": helo},
    }
