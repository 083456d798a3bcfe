"""Soak test: unique mail through a real gateway while everything that can fail does.

For ``--minutes`` (default 10) clients send unique messages (random text; 10% with a zip of
random bytes, 1% with EICAR, 2% GTUBE spam; 3% to a recipient the next hop refuses while it
flaps) over SMTP to ``mailgate run`` while a chaos thread, every few seconds, does one of:
SIGKILL a receiver, scanner or sender; SIGKILL clamd; SIGKILL the supervisor (and start a new
one, as systemd would); fill the spool's file system to the last block and free it again
(when the spool can be a small tmpfs: root, and mount allowed); take the next hop down, make
it answer 451, or 550 for some recipients. Then the next hop is made healthy, the queue
drains, and the result is printed:

  accepted     messages the gateway answered 250 to
  delivered    of those, seen by the next hop (at least once)
  quarantined  of those, held in quarantine/ (spam; an infected copy is also delivered cured)
  bounced      of those, refused for good by the next hop, a DSN delivered to the sender
  queued       of those, still in a queue (deferred, hold) or corrupt/ when the drain ends
  lost         accepted and none of the above: must be 0
  duplicated   delivered more than once; each is matched with the chaos event that opened
               its window (a sender or the supervisor killed, or the disk filled, between
               the next hop's 250 and the local commit); unexplained ones are listed

``--json`` prints the same as one JSON object. Exit status: 0 when lost and unexplained
duplicates are 0, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import base64
import collections
import io
import json
import os
import random
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from aiosmtpd.controller import Controller
from bench import free_port, wait_port  # scripts/ is on the path of a script run there

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
WORDS = tuple(
    [
        "invoice",
        "meeting",
        "report",
        "quarter",
        "budget",
        "schedule",
        "project",
        "review",
        "draft",
        "contract",
        "customer",
        "delivery",
        "order",
        "payment",
        "account",
        "update",
        "travel",
        "office",
        "support",
        "request",
        "minutes",
        "agenda",
    ]
)
MSGID_RE = re.compile(rb"<soak-\d+@soak\.test>")
ROLES = ("receiver", "scanner", "sender")
STATES = ("incoming", "scanning", "ready", "sending", "deferred", "hold", "corrupt")


class NextHop:
    """The next MTA, an aiosmtpd on loopback whose behaviour the chaos thread changes."""

    def __init__(self, port: int):
        self.port = port
        self.mode = "ok"  # ok | tempfail | reject-some
        self.lock = threading.Lock()
        self.deliveries: list[tuple[float, bytes]] = []  # (time, Message-ID)
        self.dsns: list[bytes] = []  # Message-IDs a delivered DSN reports on
        self.controller: Controller | None = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.mode == "tempfail":
            return "451 4.3.0 next hop busy"
        if self.mode == "reject-some" and address.startswith("reject"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        content = envelope.original_content or b""
        with self.lock:
            if envelope.mail_from in ("", "<>"):
                self.dsns.extend(MSGID_RE.findall(content))
            else:
                found = MSGID_RE.search(content)
                if found:
                    self.deliveries.append((time.time(), found.group(0)))
        return "250 OK"

    def up(self) -> None:
        if self.controller is None:
            self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
            self.controller.start()

    def down(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


class Gateway:
    def __init__(self, work: Path, port: int, hop: int, python: str):
        self.work, self.port, self.python = work, port, python
        self.spool = work / "spool"
        self.conf = work / "mailgate.conf"
        self.log = work / "mailgate.log"
        self.process: subprocess.Popen | None = None
        self.conf.write_text(
            f"[smtpgw.network]\nListenOn=127.0.0.1:{port}\nProtectedDomains=soak.test\n"
            "TrustedNetworks=127.0.0.1/32\n"
            f"[smtpgw.forward]\nForwardRoute=* [127.0.0.1:{hop}]\n"
            "[smtpgw.path]\nSpoolDir=spool\n"
            "[smtpgw.process]\nUser=\n"
            "[smtpgw.admin]\nListen=\nMetricsListen=\n"
            "[smtpgw.limits]\nMinFreeDisk=8M\nMaxAttempts=10\nRestartDelay=0.2s\n"
            "MaxRestartDelay=2s\n"
            "[smtpgw.retry]\nRetryIntervals=2s\n"
            "[smtpgw.spamtest]\nEnabled=yes\nNetwork=no\nActionSpam=mark\nActionProbableSpam=mark\n"
        )

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.python, "-m", "mailgate", "run", "-c", str(self.conf)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def workers(self) -> dict:
        try:
            return json.loads((self.spool / "run" / "workers.json").read_text())
        except (OSError, ValueError):
            return {}

    def pids(self, role: str) -> list[int]:
        table = self.workers()
        if table.get("supervisor") != (self.process.pid if self.process else None):
            return []
        return [w["pid"] for w in table.get("workers", []) if w["role"] == role]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def queued(self) -> dict[str, list[str]]:
        return {
            state: sorted(os.listdir(self.spool / state))
            for state in STATES
            if (self.spool / state).is_dir()
        }


def message(n: int, rng: random.Random) -> tuple[bytes, str]:
    """A unique message and its recipient."""
    msgid = f"<soak-{n}@soak.test>"
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 600)))
    text += f"\r\nreference {rng.getrandbits(64):x}\r\n"
    roll = rng.random()
    to = f"reject-{n}@soak.test" if roll < 0.03 else f"user{rng.randint(1, 50)}@soak.test"
    if 0.03 <= roll < 0.05:
        text = GTUBE.decode() + "\r\n" + text
    head = (
        f"From: <client@soak.test>\r\nTo: <{to}>\r\nSubject: {rng.choice(WORDS)} {n}\r\n"
        f"Message-ID: {msgid}\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
    )
    attachment = None
    if 0.05 <= roll < 0.06:
        attachment = ("eicar.com", EICAR)
    elif 0.06 <= roll < 0.16:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("data.bin", rng.randbytes(rng.randint(1000, 40000)))
        attachment = ("data.zip", buf.getvalue())
    if attachment is None:
        body = head + "Content-Type: text/plain\r\n\r\n" + text + "\r\n"
    else:
        encoded = base64.encodebytes(attachment[1]).decode().replace("\n", "\r\n")
        body = (
            head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: text/plain\r\n\r\n" + text + "\r\n--b\r\n"
            f'Content-Type: application/octet-stream; name="{attachment[0]}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + encoded + "--b--\r\n"
        )
    return body.encode(), to


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.rng = random.Random(args.seed)
        self.hop = NextHop(free_port())
        self.gw = Gateway(work, free_port(), self.hop.port, args.python)
        self.small_disk = False
        self.accepted: set[bytes] = set()
        self.events: list[tuple[float, float, str]] = []  # (start, end, what)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counter = iter(range(10**9))

    def mount(self) -> None:
        self.gw.spool.mkdir()
        if os.geteuid() != 0 or self.args.no_disk:
            return
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256m,mode=0700", "tmpfs", str(self.gw.spool)],
            capture_output=True,
        )
        self.small_disk = done.returncode == 0

    def client(self, index: int) -> None:
        rng = random.Random(self.args.seed * 1000 + index)
        while not self.stop.is_set():
            with self.lock:
                n = next(self.counter)
            data, to = message(n, rng)
            try:
                with smtplib.SMTP("127.0.0.1", self.gw.port, timeout=30) as smtp:
                    smtp.sendmail("client@soak.test", [to], data)
                with self.lock:
                    self.accepted.add(f"<soak-{n}@soak.test>".encode())
            except (OSError, smtplib.SMTPException):
                self.stop.wait(0.2)  # refused (452, a restart): try the next one shortly

    def chaos(self) -> None:
        actions = ["kill-receiver", "kill-scanner", "kill-sender", "kill-clamd", "kill-supervisor"]
        actions += ["hop-down", "hop-tempfail", "hop-reject"] + ["disk-full"] * self.small_disk
        deck: list[str] = []  # every kind of fault once, in random order, then again
        while not self.stop.wait(self.rng.uniform(2.0, 5.0)):
            self.keep_running()
            if not deck:
                deck = self.rng.sample(actions, len(actions))
            what = deck.pop()
            started = time.time()
            if what.startswith("kill-"):
                role = what[5:]
                if role == "supervisor":
                    if self.gw.process is not None:
                        self.gw.process.kill()
                        self.gw.process.wait()
                    self.gw.start()
                else:
                    pids = self.gw.pids(role)
                    if not pids:
                        continue
                    try:
                        os.kill(self.rng.choice(pids), signal.SIGKILL)
                    except ProcessLookupError:
                        continue
            elif what.startswith("hop-"):
                if what == "hop-down":
                    self.hop.down()
                else:
                    self.hop.mode = "tempfail" if what == "hop-tempfail" else "reject-some"
                self.stop.wait(self.rng.uniform(1.0, 4.0))
                self.hop.mode = "ok"
                self.hop.up()
            elif what == "disk-full":
                ballast = self.gw.spool / "ballast"
                fill(ballast)
                self.stop.wait(self.rng.uniform(1.0, 4.0))
                ballast.unlink(missing_ok=True)
            self.events.append((started, time.time(), what))

    def keep_running(self) -> None:
        """Start ``mailgate run`` again if it ended (as systemd's Restart= would): a new
        supervisor may find the port still held by the old receiver for a moment."""
        if self.gw.process is None or self.gw.process.poll() is not None:
            self.gw.start()

    def run(self) -> dict:
        self.mount()
        self.hop.up()
        self.gw.start()
        wait_port(self.gw.port, 180)
        clients = [threading.Thread(target=self.client, args=(i,)) for i in range(4)]
        chaos = threading.Thread(target=self.chaos)
        for t in [*clients, chaos]:
            t.start()
        self.stop.wait(self.args.minutes * 60)
        self.stop.set()
        for t in [*clients, chaos]:
            t.join(120)
        self.hop.mode = "ok"
        self.hop.up()
        deadline = time.time() + self.args.drain
        while time.time() < deadline:
            self.keep_running()
            queued = self.gw.queued()
            if not any(queued[s] for s in ("incoming", "scanning", "ready", "sending")):
                if not queued["deferred"]:
                    break
                requeue = ("queue", "-c", str(self.gw.conf), "requeue", "--deferred")
                subprocess.run([self.args.python, "-m", "mailgate", *requeue], capture_output=True)
            time.sleep(1.0)
        result = self.result()
        self.gw.stop()
        return result

    def quarantined(self) -> set[bytes]:
        found = set()
        for path in (self.gw.spool / "quarantine").glob("*/*/message.eml"):
            m = MSGID_RE.search(path.read_bytes()[:20000])
            if m:
                found.add(m.group(0))
        return found

    def result(self) -> dict:
        with self.hop.lock:
            deliveries = list(self.hop.deliveries)
            dsns = set(self.hop.dsns)
        times: dict[bytes, list[float]] = collections.defaultdict(list)
        for when, msgid in deliveries:
            times[msgid].append(when)
        delivered = set(times) & self.accepted
        quarantined = self.quarantined() & self.accepted
        queued_ids = set()
        for state, names in self.gw.queued().items():
            for name in names:
                eml = self.gw.spool / state / name / "message.eml"
                try:
                    m = MSGID_RE.search(eml.read_bytes()[:20000])
                except OSError:
                    continue
                if m:
                    queued_ids.add(m.group(0))
        bounced = (dsns & self.accepted) - delivered
        lost = self.accepted - delivered - quarantined - bounced - queued_ids
        windows = collections.Counter()
        unexplained = []
        for msgid, seen in times.items():
            if len(seen) < 2:
                continue
            first, last = min(seen), max(seen)
            cause = next(
                (
                    what
                    for start, end, what in self.events
                    if what in ("kill-sender", "kill-supervisor", "disk-full")
                    and start <= last
                    and end >= first - 1.0
                ),
                None,
            )
            if cause:
                windows[cause] += 1
            else:
                unexplained.append(msgid.decode())
        return {
            "minutes": self.args.minutes,
            "disk_filled": self.small_disk,
            "chaos": dict(collections.Counter(w for _s, _e, w in self.events)),
            "accepted": len(self.accepted),
            "delivered": len(delivered),
            "quarantined": len(quarantined - delivered),
            "bounced": len(bounced),
            "queued": len(queued_ids & (self.accepted - delivered)),
            "lost": len(lost),
            "lost_ids": sorted(m.decode() for m in lost)[:20],
            "duplicated": sum(1 for seen in times.values() if len(seen) > 1),
            "duplicate_windows": dict(windows),
            "unexplained_duplicates": unexplained[:20],
        }


def fill(path: Path) -> None:
    chunk = b"\0" * (1 << 20)
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError:
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--drain", type=float, default=180.0, help="seconds to let it drain")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-disk", action="store_true", help="never fill the disk")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--python", default=sys.executable, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be above 0")
    work = Path(tempfile.mkdtemp(prefix="mailgate-soak-"))
    soak = Soak(args, work)
    try:
        result = soak.run()
    finally:
        soak.stop.set()
        soak.gw.stop()
        soak.hop.down()
        if soak.small_disk:
            subprocess.run(["umount", "-l", str(soak.gw.spool)], check=False)
        if args.keep:
            print(f"soak: work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>24}  {value}")
    return 0 if result["lost"] == 0 and not result["unexplained_duplicates"] else 1


if __name__ == "__main__":
    sys.exit(main())
