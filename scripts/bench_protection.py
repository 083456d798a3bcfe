"""Figures for the README: the gateway under a connection flood from one address.

``mailgate run`` (pass-through pipeline, ConnectionRate and MaxSessionsPerClient set, one
address denied) takes FLOOD connections from 127.0.0.2 (64 threads, each connection closed as
soon as its first reply arrives) and a few from a denied 127.0.0.5, while 127.0.0.3 sends
MESSAGES messages over one session. Prints the connections refused per reason (from the
receiver's statistics), the time from connect to the refusal (p50/p99), and the second
client's acceptance rate and throughput during the flood.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import re
import signal
import smtplib
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import free_port, start_gateway, start_sink, wait_port

ROOT = Path(__file__).resolve().parent.parent


def first_reply(port: int, source: str) -> tuple[str, float]:
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as s:
            line = s.makefile("rb").readline().decode(errors="replace")
    except OSError as exc:
        return f"error {exc.__class__.__name__}", time.monotonic() - started
    return line.strip(), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("flood", nargs="?", type=int, default=3000)
    parser.add_argument("messages", nargs="?", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailgate-bench-protection-"))
    work.chmod(0o755)  # started as root, the gateway runs as [smtpgw.process] User
    sink_port, gw_port = free_port(), free_port()
    sink = start_sink(sink_port)
    conf = work / "mailgate.conf"
    conf.write_text(
        f"[smtpgw.network]\nListenOn=127.0.0.1:{gw_port}\nProtectedDomains=company.com\n"
        "TrustedNetworks=127.0.0.1/32\nClientDeny=127.0.0.5\n"
        f"[smtpgw.forward]\nForwardRoute=* [127.0.0.1:{sink_port}]\n"
        "[smtpgw.path]\nSpoolDir=spool\n[smtpgw.admin]\nListen=\nMetricsListen=\n"
        "[smtpgw.limits]\nConnectionRate=120\nMaxSessionsPerClient=10\n"
        "[smtpgw.antivirus]\nEnabled=no\n[smtpgw.attachments]\nEnabled=no\n"
        "[smtpgw.spamtest]\nEnabled=no\n"
    )
    log_path = work / "mailgate.log"
    gateway = start_gateway(conf, log_path)
    try:
        wait_port(sink_port)
        wait_port(gw_port)
        results: list[tuple[str, float]] = []
        sent = accepted = 0
        done = threading.Event()
        good_seconds = 0.0

        def legitimate() -> None:
            nonlocal sent, accepted, good_seconds
            body = b"Subject: hello\r\n\r\n" + (b"x" * 76 + b"\r\n") * 65
            started = time.monotonic()
            with smtplib.SMTP(
                "127.0.0.1", gw_port, "client.example.org", source_address=("127.0.0.3", 0)
            ) as smtp:
                for _ in range(args.messages):
                    sent += 1
                    try:
                        smtp.sendmail("a@example.org", ["user@company.com"], body)
                        accepted += 1
                    except smtplib.SMTPException:
                        pass
            good_seconds = time.monotonic() - started
            done.set()

        good = threading.Thread(target=legitimate)
        good.start()
        flood_started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=64) as pool:
            sources = ["127.0.0.2"] * args.flood + ["127.0.0.5"] * 50
            results = list(pool.map(lambda src: first_reply(gw_port, src), sources))
        flood_seconds = time.monotonic() - flood_started
        good.join()
        gateway.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        refused: dict[str, int] = {}
        while time.monotonic() < deadline:
            m = re.search(
                r"proc='receiver'.*event='statistics'.*refused=(\{[^}]*\})",
                log_path.read_text(errors="replace"),
            )
            if m:
                refused = ast.literal_eval(m.group(1))
                break
            time.sleep(0.1)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(60)
        sink.terminate()
        sink.wait()
    refusals = [t * 1000 for line, t in results if line[:3] in ("421", "554")]
    admitted = sum(1 for line, _t in results if line.startswith("220"))
    refusals.sort()
    print(
        f"flood: {args.flood} connections from 127.0.0.2 and 50 from denied 127.0.0.5 "
        f"in {flood_seconds:.1f}s ({(args.flood + 50) / flood_seconds:.0f} connections/s)"
    )
    print(f"admitted (220): {admitted}; refused: {len(refusals)}; by reason: {refused}")
    if refusals:
        p99 = refusals[min(len(refusals) - 1, int(len(refusals) * 0.99))]
        print(
            f"time from connect to refusal: p50 {statistics.median(refusals):.2f} ms, "
            f"p99 {p99:.2f} ms"
        )
    print(
        f"second client (127.0.0.3): {accepted} of {sent} messages accepted "
        f"({accepted / max(1, sent):.1%}), {accepted / max(good_seconds, 1e-9):.0f} msg/s "
        "during the flood"
    )
    return 0 if accepted == sent else 1


if __name__ == "__main__":
    sys.exit(main())
