"""Figures for the README: messages/s, accept→delivered latency, peak RSS, direct baseline.

The gateway runs as ``mailgate run`` on a private config and spool with the default pipeline
(2 scanners, 2 senders, every state change fsync'd). Latency per message is taken from the
gateway's own log and queue IDs: the ID's time (end of DATA) to the sender's ``done`` event.

Three runs, one after the other, each on a fresh spool: pass-through (anti-virus, attachment
and spam filters off); anti-virus, clamd managed by the gateway, a mix of 5 KB text messages,
10% with a zip attachment and 0.5% carrying EICAR (cured), with clamd's time per message and
iChecker's hit rate (every zip is the same file, as a mass mailing's attachment would be); and
the same with the spam filter on as well (network tests off: no DNS here). A summary puts them
side by side. ``--pass-through``, ``--av`` or ``--full`` runs only that one. The direct
smtp-source → smtp-sink rate and bare aiosmtpd's are measured once, before the runs.

``--nodes N`` measures N gateways sharing one redis-server beside one gateway alone
(``bench_nodes``). ``--unique`` sends unique mail instead (``bench_unique``: every message
distinct, a tenth with a random zip, so no cache flatters the figures; ``--size-mix`` for
sizes from 2 KB to 5 MB instead of 5 KB each) with its own client, and measures a plain Postfix
relay with the same mail and client first, so each run prints its ratio to Postfix, and
amavisd-new + clamd (+ SpamAssassin for the full run) where installed (``bench_amavis``).
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import bench_amavis
import bench_nodes
import bench_unique

from mailgate.spool import id_time

ROOT = Path(__file__).resolve().parent.parent
SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
MESSAGE_SIZE = 5 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{Path(sys.argv[0]).stem}: no SMTP greeting on port {port}")


def start_sink(port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [SINK, "-u", "nobody", f"127.0.0.1:{port}", "1000"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


DISCARD_SERVER = """
import asyncio, sys
from aiosmtpd.smtp import SMTP
class Discard:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
async def main():
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: SMTP(Discard(), enable_SMTPUTF8=True),
                             "127.0.0.1", int(sys.argv[1]))
    await asyncio.Event().wait()
asyncio.run(main())
"""


def start_discard(port: int) -> subprocess.Popen:
    """Bare aiosmtpd that accepts and discards: the machine's ceiling for any aiosmtpd gateway."""
    return subprocess.Popen([sys.executable, "-c", DISCARD_SERVER, str(port)])


def start_gateway(conf: Path, log_path: Path) -> subprocess.Popen:
    """``mailgate run -c conf``, everything it logs going to ``log_path``."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [str(ROOT / ".venv/bin/mailgate"), "run", "-c", str(conf)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def source_command(
    port: int, messages: int, sessions: int, reuse: bool, message_file: Path | None = None
) -> list[str]:
    return [
        SOURCE,
        *(["-d"] if reuse else []),
        "-s",
        str(sessions),
        *(["-F", str(message_file)] if message_file else ["-l", str(MESSAGE_SIZE)]),
        "-m",
        str(messages),
        "-f",
        "bench@example.org",
        "-t",
        "user@company.com",
        f"127.0.0.1:{port}",
    ]


def source(port: int, messages: int, sessions: int, reuse: bool) -> float:
    """smtp-source's run time; ``reuse`` keeps each session open for its next message (-d)."""
    started = time.monotonic()
    subprocess.run(
        source_command(port, messages, sessions, reuse), check=True, stdout=subprocess.DEVNULL
    )
    return time.monotonic() - started


def av_mix(work: Path, messages: int, sessions: int) -> list[tuple[int, int, Path]]:
    """(messages, sessions, file) per smtp-source of the anti-virus run's mix."""
    text = (
        "Quarterly figures attached.\n"
        + ("All numbers as discussed, nothing new. " * 2 + "\n") * 60
    )
    text = text[:MESSAGE_SIZE]
    figures = io.BytesIO()
    with zipfile.ZipFile(figures, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("figures.csv", "".join(f"{i},{i * 7 % 13},{i * 31 % 97}\n" for i in range(400)))
    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

    def write(name: str, attachment: tuple[str, str, bytes] | None) -> Path:
        head = (
            "From: <bench@example.org>\nTo: <user@company.com>\nSubject: figures\n"
            f"Date: Sun, 29 Nov 2026 10:00:00 +0000\nMessage-ID: <{name}@bench.example.org>\n"
        )
        if attachment is None:
            body = head + "\n" + text
        else:
            filename, ctype, data = attachment
            b64 = base64.encodebytes(data).decode()
            body = (
                head + 'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="b"\n\n'
                f"--b\nContent-Type: text/plain\n\n{text[:4096]}\n"
                f"--b\nContent-Type: {ctype}\nContent-Transfer-Encoding: base64\n"
                f'Content-Disposition: attachment; filename="{filename}"\n\n{b64}--b--\n'
            )
        path = work / name
        path.write_text(body)
        return path

    zips = max(1, messages // 10)
    infected = max(1, messages // 200)
    return [
        (messages - zips - infected, max(1, sessions - 2), write("plain.eml", None)),
        (zips, 1, write("zip.eml", ("figures.zip", "application/zip", figures.getvalue()))),
        (infected, 1, write("eicar.eml", ("eicar.com", "application/octet-stream", eicar))),
    ]


def sources(port: int, mix: list[tuple[int, int, Path]], reuse: bool) -> float:
    """Run the mix's smtp-source processes side by side; their total run time."""
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            source_command(port, count, sessions, reuse, path), stdout=subprocess.DEVNULL
        )
        for count, sessions, path in mix
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("smtp-source failed")
    return time.monotonic() - started


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pids(root: int) -> list[int]:
    pids, todo = [root], [root]
    while todo:
        pid = todo.pop()
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pids += map(int, children)
        todo += map(int, children)
    return pids


def cpu_by_role(root: int) -> dict[str, tuple[float, float]]:
    """CPU seconds (user, system) used so far by each kind of gateway process."""
    ticks = 100.0
    result: dict[str, tuple[float, float]] = {}
    for pid in tree_pids(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"worker" in cmdline:
            role = cmdline[cmdline.index(b"worker") + 1].decode()
        else:
            role = "clamd" if cmdline[0].endswith(b"clamd") else "supervisor"
        user, system = result.get(role, (0.0, 0.0))
        result[role] = (user + int(fields[11]) / ticks, system + int(fields[12]) / ticks)
    return result


class DoneCounter:
    """Counts the senders' ``done`` events in the gateway's log, reading only what was added
    since the last call: the wait for the last deliveries is inside the measured time, and
    re-reading the whole log every 50 ms took CPU from the gateway."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.seen = 0

    def count(self) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk.rfind(b"\n") + 1  # a line still being written is counted next time
        self.seen += chunk[:complete].count(b"event='done'")
        self.offset += complete
        return self.seen


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


MODES = {
    "pass-through": "pass-through",
    "av": "anti-virus (clamd), 10% zip, 0.5% EICAR",
    "full": "anti-virus and spam filter, 10% zip, 0.5% EICAR",
}


@dataclass
class Run:
    """The figures of one gateway run."""

    mode: str
    delivered: int
    accept_seconds: float
    total_seconds: float
    latencies: list[float]
    peak_kib: int
    cpu: dict[str, tuple[float, float]]
    scanners: dict[str, int]
    stage_ms: dict[str, list[float]]  # each message's CPU per scanner stage, from its log line

    @property
    def rate(self) -> float:
        return self.delivered / self.total_seconds

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies) if self.latencies else float("nan")

    @property
    def p99(self) -> float:
        if not self.latencies:
            return float("nan")
        return self.latencies[min(len(self.latencies) - 1, int(len(self.latencies) * 0.99))]

    @property
    def clamd_ms(self) -> float:
        return self.scanners.get("clamd_ms", 0) / max(1, self.delivered)

    @property
    def ichecker(self) -> tuple[int, int]:
        hits = self.scanners.get("ichecker_hits", 0)
        return hits, hits + self.scanners.get("ichecker_misses", 0)

    @property
    def hit_rate(self) -> float:
        hits, lookups = self.ichecker
        return hits / max(1, lookups)


def mode_options(mode: str, args: argparse.Namespace) -> dict[str, list[str]]:
    """The config sections one mode adds to the common ones (``--limit``/``--set`` last)."""
    extra: dict[str, list[str]] = {"smtpgw.limits": list(args.limit)}
    if mode != "full":
        extra["smtpgw.spamtest"] = ["Enabled=no"]
    if mode == "pass-through":
        extra["smtpgw.antivirus"] = ["Enabled=no"]
        extra["smtpgw.attachments"] = ["Enabled=no"]
    else:
        extra["smtpgw.notify"] = ["NotifyRecipients="]
    if mode == "full":
        # Measure the filter, not the quarantine: every verdict is delivered, marked.
        extra["smtpgw.spamtest"] = [
            "ActionSpam=mark",
            "ActionProbableSpam=mark",
            "ActionBlacklisted=mark",
        ]
    for item in args.set:
        section, _, setting = item.partition(":")
        extra.setdefault(section, []).append(setting)
    return extra


def run_gateway(mode: str, args: argparse.Namespace, sink_port: int) -> Run:
    """Start ``mailgate run`` on a fresh spool, push the mode's load through it, stop it."""
    work = Path(tempfile.mkdtemp(prefix="mailgate-bench-"))
    work.chmod(0o755)  # started as root, the gateway runs as [smtpgw.process] User
    gw_port = free_port()
    conf = work / "mailgate.conf"
    conf.write_text(
        f"[smtpgw.network]\nListenOn=127.0.0.1:{gw_port}\n"
        "ProtectedDomains=company.com\nTrustedNetworks=127.0.0.0/8\n"
        f"[smtpgw.forward]\nForwardRoute=* [127.0.0.1:{sink_port}]\n"
        "[smtpgw.path]\nSpoolDir=spool\n"
        "[smtpgw.admin]\nListen=\nMetricsListen=\n"
        + "".join(
            f"[{section}]\n" + "".join(f"{item}\n" for item in items)
            for section, items in mode_options(mode, args).items()
        )
    )
    log_path = work / "mailgate.log"
    gateway = start_gateway(conf, log_path)
    try:
        wait_port(gw_port)
        time.sleep(1.0)  # let every worker finish starting before the clock runs

        peak = 0
        sampling = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not sampling.is_set():
                peak = max(peak, sum(rss_kib(p) for p in tree_pids(gateway.pid)))
                sampling.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        if args.unique:
            accept_seconds = bench_unique.send(gw_port, args.unique_mail, args.sessions, args.rate)
        elif mode == "pass-through":
            accept_seconds = source(gw_port, args.messages, args.sessions, args.reuse)
        else:
            mix = av_mix(work, args.messages, args.sessions)
            accept_seconds = sources(gw_port, mix, args.reuse)
        deadline = time.monotonic() + 600
        done = DoneCounter(log_path)
        while time.monotonic() < deadline and done.count() < args.messages:
            time.sleep(0.05)
        total_seconds = time.monotonic() - started
        sampling.set()
        sampler.join()
        cpu = cpu_by_role(gateway.pid)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)

    lines = log_path.read_text(errors="replace").splitlines()
    scanners: dict[str, int] = {}
    for line in lines:
        if "proc='scanner'" in line and "event='worker_stopped'" in line:
            for key, value in re.findall(r"(\w+)=(\d+)(?:\s|$)", line):
                if key != "pid":
                    scanners[key] = scanners.get(key, 0) + int(value)
    stage_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
    stage_pattern = re.compile(r"\b(mime|av|spam)_ms=([\d.]+)")
    for line in lines:
        if "event='scanned'" in line:
            for stage, value in stage_pattern.findall(line):
                stage_ms[stage].append(float(value))
    times: dict[str, dict[str, float]] = {"queued": {}, "done": {}}
    pattern = re.compile(r"ts='([^']+)'.*?event='(queued|done)' qid='([^']+)'")
    for line in lines:
        m = pattern.search(line)
        if m:
            times[m.group(2)][m.group(3)] = parse_ts(m.group(1))
    # a queue ID encodes when DATA ended (before the fsyncs): that is "accepted"
    latencies = sorted(
        (done - id_time(qid)) * 1000
        for qid, done in times["done"].items()
        if qid in times["queued"]
    )
    if len(latencies) == args.messages:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(
            f"bench: only {len(latencies)} deliveries matched; log kept in {work}", file=sys.stderr
        )
    return Run(
        mode,
        len(latencies),
        accept_seconds,
        total_seconds,
        latencies,
        peak,
        cpu,
        scanners,
        stage_ms,
    )


STAGES = {"mime": "MIME parsing", "av": "anti-virus (mailgate's side)", "spam": "spam verdict"}


def report(run: Run, args: argparse.Namespace, direct_rate: float, discard_rate: float) -> None:
    per = max(1, run.delivered) / 1000
    per_session = "many messages" if args.reuse else "one message"
    what = MODES[run.mode] if not args.unique else f"{run.mode}, unique mail (10% zip)"
    sizes = "2 KB-5 MB" if args.size_mix else f"{MESSAGE_SIZE // 1024} KB"
    print(
        f"{what}: {args.messages} x {sizes}, {args.sessions} "
        f"sessions, {per_session} per session, "
        f"options: {' '.join(args.limit + args.set) or 'defaults'}"
    )
    print(f"delivered through mailgate: {run.delivered}")
    print(
        f"mailgate throughput: {run.rate:.0f} msg/s "
        f"(accepted in {run.accept_seconds:.1f}s, all delivered in {run.total_seconds:.1f}s)"
    )
    if run.latencies:
        print(f"accept->delivered latency: p50 {run.p50:.1f} ms, p99 {run.p99:.1f} ms")
    print(f"peak RSS, all gateway processes: {run.peak_kib / 1024:.0f} MiB")
    print(
        "CPU per message (user+system): "
        + ", ".join(
            f"{role} {(user + system) / per:.2f} ms ({user / per:.2f}+{system / per:.2f})"
            for role, (user, system) in sorted(run.cpu.items())
        )
    )
    stages = {k: run.scanners.get(f"cpu_{k}_us", 0) / 1000 / per / 1000 for k in STAGES}
    if any(stages.values()):
        print(
            "scanner CPU per message by stage, median (mean): "
            + ", ".join(
                f"{name} {statistics.median(run.stage_ms[key]):.2f} ({stages[key]:.2f}) ms"
                for key, name in STAGES.items()
                if run.stage_ms[key]
            )
        )
    if run.mode != "pass-through":
        hits, lookups = run.ichecker
        print(
            f"clamd: {run.scanners.get('clamd_objects', 0)} objects scanned, "
            f"{run.clamd_ms:.2f} ms per message; "
            f"infected found: {run.scanners.get('status_infected', 0)}, "
            f"cured: {run.scanners.get('cured', 0)}"
        )
        print(
            f"iChecker: {hits} of {lookups} objects answered "
            f"from the cache (hit rate {run.hit_rate:.1%})"
        )
    if args.unique:
        peer = args.postfix_rate
        ratio = ""
        if peer.isdigit() and not args.rate:  # a paced run says nothing of the peak
            ratio = f" (mailgate {run.rate / float(peer):.2f} of it)"
        print(f"plain Postfix relay, same unique mail and client: {peer} msg/s{ratio}")
        amavis = args.amavis_rates.get(run.mode)
        if amavis:
            spam = " + SpamAssassin" if run.mode == "full" else ""
            times = ""
            if amavis.replace(".", "", 1).isdigit() and not args.rate:
                times = f" (mailgate {run.rate / float(amavis):.1f} times it)"
            print(f"amavisd-new + clamd{spam}, same mail and client: {amavis} msg/s{times}")
    print(f"direct smtp-source -> smtp-sink: {direct_rate:.0f} msg/s")
    print(f"ratio mailgate/direct: {run.rate / direct_rate:.3f}")
    print(
        f"bare aiosmtpd accept-and-discard on this machine: {discard_rate:.0f} msg/s "
        f"(mailgate reaches {run.rate / discard_rate:.2f} of it)"
    )


def summary(runs: list[Run], discard_rate: float) -> None:
    """The runs side by side: what the README's tables hold."""
    print(f"summary (bare aiosmtpd {discard_rate:.0f} msg/s):")
    print(
        f"  {'run':<14}{'msg/s':>7}{'p50 ms':>9}{'p99 ms':>9}{'RSS MiB':>9}"
        f"{'clamd ms/msg':>14}{'iChecker':>10}{'of bare':>9}"
    )
    for run in runs:
        av = run.mode != "pass-through"
        print(
            f"  {run.mode:<14}{run.rate:>7.0f}{run.p50:>9.1f}{run.p99:>9.1f}"
            f"{run.peak_kib / 1024:>9.0f}"
            + (f"{run.clamd_ms:>14.2f}{run.hit_rate:>10.1%}" if av else f"{'-':>14}{'-':>10}")
            + f"{run.rate / discard_rate:>9.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("messages", nargs="?", type=int, default=5000)
    parser.add_argument("sessions", nargs="?", type=int, default=10)
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [smtpgw.limits] option for the gateway, e.g. Scanners=1",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="send many messages per SMTP session (smtp-source -d)"
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--pass-through", action="store_true", help="only the pass-through run (filters off)"
    )
    only.add_argument("--av", action="store_true", help="only the anti-virus run (see above)")
    only.add_argument(
        "--full", action="store_true", help="only the anti-virus run with the spam filter on too"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION:KEY=VALUE",
        help="any other option, e.g. smtpgw.antivirus:ICheckerSize=0",
    )
    parser.add_argument(
        "--unique",
        action="store_true",
        help="every message distinct (no cache answers), a tenth with a zip; a plain Postfix "
        "relay measured with the same mail and client beside it",
    )
    parser.add_argument(
        "--size-mix",
        action="store_true",
        help="with --unique: sizes from 2 KB to 5 MB in the shares of bench_unique.SIZE_MIX "
        "(median about 7 KB) instead of 5 KB each",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        metavar="MSG/S",
        help="with --unique: send at this rate rather than as fast as possible (latency "
        "below the peak, e.g. half of it)",
    )
    parser.add_argument(
        "--nodes",
        type=int,
        default=0,
        metavar="N",
        help="N gateways sharing one redis-server beside one alone (bench_nodes: unique mail "
        "from outside TrustedNetworks, the filters off, the rate limits on)",
    )
    args = parser.parse_args()
    if args.nodes:
        sink_port = free_port()
        sink = start_sink(sink_port)
        try:
            wait_port(sink_port)
            return bench_nodes.main(args, sink_port, sys.modules[__name__])
        finally:
            sink.terminate()
            sink.wait()
    if (args.rate or args.size_mix) and not args.unique:
        parser.error("--rate and --size-mix go with --unique")
    if args.unique:
        args.unique_mail = bench_unique.unique_messages(args.messages, mix=args.size_mix)
    chosen = [
        m
        for m, flag in (("pass-through", args.pass_through), ("av", args.av), ("full", args.full))
        if flag
    ]
    modes = chosen or list(MODES)

    sink_port, direct_port, discard_port = (free_port() for _ in range(3))
    sinks = [start_sink(sink_port), start_sink(direct_port), start_discard(discard_port)]
    runs = []
    try:
        wait_port(sink_port)
        wait_port(direct_port)
        direct_rate = args.messages / source(direct_port, args.messages, args.sessions, args.reuse)
        wait_port(discard_port)
        discard_rate = args.messages / source(
            discard_port, args.messages, args.sessions, args.reuse
        )
        if args.unique:
            peer_port = free_port()
            args.postfix_rate = bench_unique.postfix_rate(
                peer_port, sink_port, args.unique_mail, args.sessions, wait_port
            )
            args.amavis_rates = {}
            if {"av", "full"} & set(modes) and not args.rate:
                args.amavis_rates = bench_amavis.amavis_rates(
                    free_port(), sink_port, args.unique_mail, args.sessions, wait_port
                )
        for mode in modes:
            run = run_gateway(mode, args, sink_port)
            report(run, args, direct_rate, discard_rate)
            print()
            runs.append(run)
    finally:
        for s in sinks:
            s.terminate()
            s.wait()
    if len(runs) > 1:
        summary(runs, discard_rate)
    return 0 if all(run.delivered == args.messages for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
