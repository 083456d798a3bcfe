"""``scripts/bench --nodes N``: N gateways sharing one redis-server beside one gateway alone.

Each gateway is ``mailgate run`` on its own spool and port, with the filters off (this
measures what the cluster adds, not the scanners), the client outside TrustedNetworks and the
rate limits on (ConnectionRate, MessageRate, SenderRate: each a Redis call when clustered), so
every message costs the Redis round trips an outside message costs. The same unique mail is
split over the nodes and sent to all at once. Printed: messages/s, the Redis commands per
message (from its INFO commandstats) and redis-server's CPU per message (from /proc), then
the cost of each kind of call measured alone, for the capacity model in docs/scale-out.md.
On one machine the nodes share its cores, so N nodes here measure the overhead, not the
scaling; the model projects the scaling from these costs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import types
from pathlib import Path

import bench_unique

from mailgate.runtime.cluster import Cluster

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _commands(port: int) -> int:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "stats"], capture_output=True, text=True
    ).stdout
    return int(
        next(x for x in out.splitlines() if x.startswith("total_commands_processed:")).split(":")[1]
    )


def _config(port: int, sink_port: int, redis_port: int | None, name: str) -> str:
    cluster = f"[smtpgw.cluster]\nRedis=redis://127.0.0.1:{redis_port}/0\n" if redis_port else ""
    return (
        f"[smtpgw.network]\nListenOn=127.0.0.1:{port}\nHostname={name}\n"
        "ProtectedDomains=company.com\nTrustedNetworks=192.0.2.1/32\n"
        f"[smtpgw.forward]\nForwardRoute=* [127.0.0.1:{sink_port}]\n"
        "[smtpgw.path]\nSpoolDir=spool\n[smtpgw.admin]\nListen=\nMetricsListen=\n"
        "[smtpgw.antivirus]\nEnabled=no\n[smtpgw.attachments]\nEnabled=no\n"
        "[smtpgw.spamtest]\nEnabled=no\n[smtpgw.auth]\nEnabled=no\n[smtpgw.index]\nEnabled=no\n"
        "[smtpgw.limits]\nConnectionRate=1000000\nMessageRate=1000000\n"
        "NetworkMessageRate=1000000\nSenderRate=100000000\n" + cluster
    )


def _run(nodes: int, mail: list[bytes], sessions: int, sink_port: int, redis_port, tools) -> dict:
    work = Path(tempfile.mkdtemp(prefix="mailgate-nodes-"))
    work.chmod(0o755)
    gateways, ports, logs = [], [], []
    for n in range(nodes):
        port = tools.free_port()
        folder = work / f"node{n}"
        folder.mkdir()
        conf = folder / "mailgate.conf"
        conf.write_text(_config(port, sink_port, redis_port, f"node{n}.bench"))
        logs.append(folder / "mailgate.log")
        gateways.append(tools.start_gateway(conf, logs[-1]))
        ports.append(port)
    try:
        for port in ports:
            tools.wait_port(port)
        time.sleep(1.0)  # every worker started before the clock runs
        redis_pid = _redis_pid(redis_port)
        cpu0 = _cpu_seconds(redis_pid) if redis_pid else 0.0
        commands0 = _commands(redis_port) if redis_port else 0
        shares = [mail[n::nodes] for n in range(nodes)]
        started = time.monotonic()
        threads = [
            threading.Thread(target=bench_unique.send, args=(p, share, max(1, sessions // nodes)))
            for p, share in zip(ports, shares, strict=True)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        counters = [tools.DoneCounter(log) for log in logs]
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and sum(c.count() for c in counters) < len(mail):
            time.sleep(0.05)
        seconds = time.monotonic() - started
        result = {
            "nodes": nodes,
            "rate": len(mail) / seconds,
            "delivered": sum(c.count() for c in counters),
        }
        if redis_port:
            result["commands"] = (_commands(redis_port) - commands0) / len(mail)
            result["redis_cpu_ms"] = (_cpu_seconds(redis_pid) - cpu0) * 1000 / len(mail)
        return result
    finally:
        for gateway in gateways:
            gateway.send_signal(signal.SIGTERM)
        for gateway in gateways:
            gateway.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def _redis_pid(port: int | None) -> int | None:
    if not port:
        return None
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "INFO", "server"], capture_output=True, text=True
    ).stdout
    return int(next(x for x in out.splitlines() if x.startswith("process_id:")).split(":")[1])


def micro(redis_port: int, count: int = 2000) -> list[tuple[str, float]]:
    """Wall µs of each kind of call, alone, on loopback."""
    config = types.SimpleNamespace(
        cluster_prefix="bench",
        cluster_node="",
        hostname="bench",
        cluster_retry_after=5.0,
        cluster_redis=f"redis://127.0.0.1:{redis_port}/0",
        cluster_timeout=1.0,
    )
    cluster = Cluster(config)
    found = []
    calls = {
        "rate (sliding window, 1 pipeline)": lambda i: cluster.count_in_window(
            cluster.key("rate", f"10.0.{i % 250}.1"), 60.0
        ),
        "iChecker lookup (HMGET)": lambda i: cluster.run(
            lambda r: r.hmget(cluster.key("ichk", "v", str(i)), "status", "detail", "kind")
        ),
    }
    for name, call in calls.items():
        started = time.perf_counter()
        for i in range(count):
            call(i)
        found.append((name, (time.perf_counter() - started) * 1e6 / count))
    cluster.close()
    return found


def main(args, sink_port: int, tools) -> int:
    redis_port = tools.free_port()
    server = subprocess.Popen(
        [
            REDIS,
            "--port",
            str(redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while (
            subprocess.run(
                ["redis-cli", "-p", str(redis_port), "PING"], capture_output=True, text=True
            ).stdout.strip()
            != "PONG"
        ):
            if time.monotonic() > deadline:
                raise SystemExit("bench: redis-server did not start")
            time.sleep(0.05)
        mail = bench_unique.unique_messages(args.messages)
        alone = _run(1, mail, args.sessions, sink_port, None, tools)
        shared = _run(args.nodes, mail, args.sessions, sink_port, redis_port, tools)
        print(f"{'setup':<34} {'msg/s':>8} {'Redis cmds/msg':>15} {'redis CPU ms/msg':>17}")
        print(f"{'1 node, no Redis':<34} {alone['rate']:8.0f} {'-':>15} {'-':>17}")
        print(
            f"{f'{args.nodes} nodes, one shared Redis':<34} {shared['rate']:8.0f} "
            f"{shared['commands']:15.1f} {shared['redis_cpu_ms']:17.3f}"
        )
        for name, micros in micro(redis_port):
            print(f"  {name}: {micros:.0f} µs per call (wall, loopback)")
        ok = alone["delivered"] == shared["delivered"] == len(mail)
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait()
