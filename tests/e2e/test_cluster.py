"""Greylisting with a real SMTP client retrying, alone and across two nodes that share a real
redis-server: a triplet greylisted on one node passes on the other after the delay, a flood
split over both is held to the shared connection rate, an object scanned on one node is an
iChecker hit on the other, and Redis stopped in the middle of a flood delays and loses
nothing (each node works alone, then shares again)."""

from __future__ import annotations

import json
import shutil
import smtplib
import socket
import subprocess
import threading
import time
import types

import pytest
from mimebuild import EICAR, multipart, part
from support import free_port, make_message, wait_for

from mailgate.config import passwords
from mailgate.runtime.cluster import Cluster

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, port: int):
        self.port = port
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                REDIS,
                "--port",
                str(self.port),
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
        wait_for(self.answers, 10, "redis-server")
        return self

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def redis_server():
    server = RedisServer(free_port()).start()
    yield server
    server.stop()


def attempt(gw, source: str, sender: str, rcpt: str) -> int:
    """One SMTP transaction from ``source``: the RCPT reply code (DATA sent when 250)."""
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.example.org")
        smtp.mail(sender)
        code, _reply = smtp.rcpt(rcpt)
        if code == 250:
            assert smtp.data(make_message(f"{time.time()}@test"))[0] == 250
        return code


def retry_until_accepted(gw, source, sender, rcpt, deadline=20.0) -> tuple[int, float]:
    """Retry as a mail server does (here every 0.2 s): (attempts, seconds until accepted)."""
    started, tries = time.monotonic(), 0
    while time.monotonic() - started < deadline:
        tries += 1
        if attempt(gw, source, sender, rcpt) == 250:
            return tries, time.monotonic() - started
        time.sleep(0.2)  # the client's own retry interval, not a wait for the gateway
    raise AssertionError(f"{sender} → {rcpt} still greylisted after {deadline} s")


GREY = "[smtpgw.greylist]\nGreylisting=yes\nGreylistDelay=1s\nGreylistAutoAllow=2\n"


def test_greylisting_on_one_node(make_gateway, sink):
    gw = make_gateway(GREY).start()
    assert attempt(gw, "127.0.0.2", "a@example.org", "user@company.com") == 451
    tries, waited = retry_until_accepted(gw, "127.0.0.2", "a@example.org", "user@company.com")
    assert tries >= 2 and waited >= 0.9
    # the triplet passes at once from now on, from any address of the same /24
    assert attempt(gw, "127.0.0.9", "a@example.org", "user@company.com") == 250
    assert attempt(gw, "127.0.0.2", "b@example.org", "user@company.com") == 451
    retry_until_accepted(gw, "127.0.0.2", "b@example.org", "user@company.com")
    # two passes: the network is allowed; trusted clients never wait
    assert attempt(gw, "127.0.0.2", "c@example.org", "sales@company.com") == 250
    assert attempt(gw, "127.0.0.1", "d@example.org", "ops@company.com") == 250
    assert "reply='451 4.7.1 Greylisted" in gw.log()
    sink.wait_count(5)


def two_nodes(make_gateway, redis_server, extra: str = ""):
    shared = (
        f"[smtpgw.cluster]\nRedis=redis://127.0.0.1:{redis_server.port}/0\nTimeout=0.3s\n"
        "RetryAfter=1s\n" + extra
    )
    return (
        make_gateway(shared + "[smtpgw.network]\nHostname=node-a.test\n", name="a").start(),
        make_gateway(shared + "[smtpgw.network]\nHostname=node-b.test\n", name="b").start(),
    )


def test_two_nodes_share_greylisting_and_the_connection_rate(make_gateway, sink, redis_server):
    node_a, node_b = two_nodes(
        make_gateway, redis_server, GREY + "[smtpgw.limits]\nConnectionRate=20\n"
    )
    assert attempt(node_a, "127.0.0.2", "x@example.org", "user@company.com") == 451
    _tries, waited = retry_until_accepted(node_b, "127.0.0.2", "x@example.org", "user@company.com")
    assert waited < 5  # B knew the triplet's first attempt on A
    # 30 connections from one address, alternating: 20 in all may pass, not 20 per node
    banners = []
    for i in range(30):
        node = (node_a, node_b)[i % 2]
        with socket.create_connection(
            ("127.0.0.1", node.port), source_address=("127.0.0.5", 0), timeout=10
        ) as sock:
            banners.append(sock.makefile("rb").readline().decode())
    admitted = [b for b in banners if b.startswith("220")]
    assert len(admitted) == 20, banners
    assert all(b.startswith("421 4.7.0 Too many connections") for b in banners[20:])


def stats(gw) -> dict:
    return json.loads(gw.cli("stats", "--json", check=True).stdout)["totals"]


def test_an_object_scanned_on_one_node_is_known_on_the_other(make_gateway, sink, redis_server):
    node_a, node_b = two_nodes(make_gateway, redis_server)
    unique = f"figures {time.time()}\n".encode() * 200
    message = multipart([part(unique, "application/octet-stream", "figures.bin")])
    node_a.send(message)
    sink.wait_count(1)
    assert stats(node_b).get("ichecker_hits", 0) == 0
    node_b.send(message)
    sink.wait_count(2)
    wait_for(lambda: stats(node_b).get("ichecker_hits", 0) >= 1, what="B's iChecker hit")


def flood(gw, count: int, failures: list) -> None:
    for i in range(count):
        try:
            gw.send(make_message(f"flood-{gw.port}-{i}@test"), source="127.0.0.2")
        except (AssertionError, OSError, smtplib.SMTPException) as exc:
            failures.append(repr(exc))


def notices(sink, subject: str) -> list:
    return [r for r in sink.received if subject in (r.message["Subject"] or "")]


def test_redis_stopped_mid_flood_delays_and_loses_nothing(make_gateway, sink, redis_server):
    node_a, node_b = two_nodes(
        make_gateway,
        redis_server,
        "[smtpgw.limits]\nConnectionRate=1000\n[smtpgw.notify]\nAdministrator=admin@company.com\n",
    )
    failures: list = []
    threads = [threading.Thread(target=flood, args=(n, 40, failures)) for n in (node_a, node_b)]
    for thread in threads:
        thread.start()
    wait_for(lambda: len(sink.received) >= 10, what="the flood under way")
    redis_server.stop()
    wait_for(lambda: "cluster_unavailable" in node_a.log() + node_b.log(), what="the fallback")
    started = time.monotonic()
    wait_for(lambda: len(sink.received) >= 50, what="mail flowing without Redis")
    assert time.monotonic() - started < 20
    redis_server.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    wait_for(lambda: len({i for i in sink.ids() if "flood-" in i}) >= 80, what="the flood")
    flooded = [i for i in sink.ids() if "flood-" in i]
    assert len(flooded) == len(set(flooded)) == 80  # every message once

    def resumed() -> bool:  # the next connections find Redis again
        node_a.send(make_message(f"after-{time.time()}@test"), source="127.0.0.2")
        return "cluster_resumed" in node_a.log()

    wait_for(resumed, what="node A sharing again")
    assert stats(node_a).get("cluster_fallbacks", 0) + stats(node_b).get("cluster_fallbacks", 0) > 0
    # the administrator hears of it once per node and outage, and again when it is over
    wait_for(lambda: len(notices(sink, "shares the cluster's state again")) == 2, timeout=60)
    down = notices(sink, "works alone")
    assert sorted(r.message["Subject"].split()[1] for r in down) == ["node-a.test", "node-b.test"]
    assert all(b"redis://127.0.0.1:" in r.content for r in down)


def mail_reply(gw, source: str, sender: str) -> int:
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.example.org")
        return smtp.mail(sender)[0]


def test_message_rates_are_the_clusters(make_gateway, sink, redis_server):
    node_a, node_b = two_nodes(
        make_gateway, redis_server, "[smtpgw.limits]\nSenderRate=3\nMessageRate=5\n"
    )
    codes = [mail_reply((node_a, node_b)[i % 2], "127.0.0.2", "bulk@example.org") for i in range(4)]
    assert codes == [250, 250, 250, 450]  # three an hour for this sender, over both nodes
    codes = [
        mail_reply((node_b, node_a)[i % 2], "127.0.0.3", f"s{i}@example.org") for i in range(6)
    ]
    assert codes == [250] * 5 + [450]  # five a minute for this client
    assert mail_reply(node_a, "127.0.0.1", "bulk@example.org") == 250  # trusted: no limit
    redis_server.stop()  # alone again: each node counts for itself
    assert mail_reply(node_b, "127.0.0.4", "bulk@example.org") == 250


def test_every_nodes_quarantine_is_seen_and_released_from_any_node(
    make_gateway, sink, redis_server
):
    from test_console import PASSWORD, Client  # the console tests' HTTP client

    console = free_port()
    shared = (
        f"[smtpgw.cluster]\nRedis=redis://127.0.0.1:{redis_server.port}/0\n"
        "[smtpgw.index]\nEnabled=yes\n[smtpgw.scan]\nMode=protection\n"
        "[smtpgw.archive]\nReceived=yes\n"
    )
    node_a = make_gateway(
        shared + "[smtpgw.network]\nHostname=node-a.test\n"
        f"[smtpgw.admin]\nListen=127.0.0.1:{console}\nMetricsListen=127.0.0.1:{console}\n"
        f"PasswordHash={passwords.hash_password(PASSWORD)}\n",
        name="a",
    ).start()
    node_b = make_gateway(shared + "[smtpgw.network]\nHostname=node-b.test\n", name="b").start()
    first = node_b.send(multipart([part(EICAR, filename="eicar.com")], msgid="v1@test"))
    second = node_b.send(multipart([part(EICAR, filename="eicar.com")], msgid="v2@test"))
    wait_for(lambda: len(node_b.entries("quarantine/infected")) == 2, what="B's quarantine")

    def listed_on_a() -> dict:
        rows = json.loads(node_a.cli("quarantine", "list", "--json", check=True).stdout)
        return {r["id"]: r["node"] for r in rows}

    wait_for(
        lambda: listed_on_a() == {first: "node-b.test", second: "node-b.test"},
        what="B's quarantine listed on A",
    )
    client = Client(f"http://127.0.0.1:{console}")
    wait_for(lambda: client.log_in() == 302, what="A's console")
    status, _, body = client.request("/quarantine")
    assert status == 200 and first.encode() in body and b"on node-b.test" in body
    form = {
        "csrf": client.csrf("/quarantine"),
        "action": "release",
        "item": f"node-b.test:infected/{first}",
    }
    status, _, body = client.request("/quarantine", form)
    assert status == 200 and b"released from quarantine/infected as" in body
    # the recipients' notices about B's two infected messages may arrive first
    wait_for(lambda: "<v1@test>" in sink.ids(), what="the released copy at the next hop")
    deleted = node_a.cli("quarantine", "delete", second)
    assert deleted.returncode == 0 and "deleted from quarantine/infected" in deleted.stdout
    assert node_b.entries("quarantine/infected") == []
    wait_for(lambda: listed_on_a() == {}, what="A's list to follow")
    gone = node_a.cli("quarantine", "release", second)
    assert gone.returncode == 3

    def cluster_stats() -> dict:
        return json.loads(node_a.cli("stats", "--cluster", "--json", check=True).stdout)

    wait_for(
        lambda: set(cluster_stats()["nodes"]) == {"node-a.test", "node-b.test"},
        what="both nodes' figures",
        timeout=30,
    )
    found = cluster_stats()
    received = [found["nodes"][n]["totals"]["received_messages"] for n in found["nodes"]]
    assert found["sum"]["totals"]["received_messages"] == sum(received) >= 2
    status, _, body = client.request("/")
    assert status == 200 and b'id="cluster"' in body and b"node-b.test" in body
    # the archive and tracking pages of A ask B too
    status, _, body = client.request(f"/archive?queue_id={first}")
    assert status == 200 and first.encode() in body and b"on node-b.test" in body
    status, _, body = client.request(f"/track?id={first}")
    assert status == 200 and f"{first} (on node-b.test)".encode() in body
    # and so do the command line's archive search and track
    rows = json.loads(node_a.cli("archive", "search", "--id", first, "--json", check=True).stdout)
    assert [(r["id"], r["node"]) for r in rows] == [(first, "node-b.test")]
    tracked = node_a.cli("track", "--id", first, check=True).stdout
    assert "(on node-b.test)" in tracked and "quarantined" in tracked
    status, _, body = client.request("/metrics")
    assert status == 200 and b'mailgate_received_messages_total{node="node-a.test"}' in body


WORDS = "zorblax quintessa glimmerwort vantrobel frisquel dombatic pellucard yarnisty"


def made_up(n: int) -> bytes:
    return (
        f"From: promo{n}@offers.example\r\nTo: user@company.com\r\nSubject: {WORDS.split()[n % 8]}"
        f"\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <mu{n}@offers.example>\r\n\r\n"
        f"{WORDS} {WORDS.upper()} offer number {n}\r\n"
    ).encode()


def bayes_rule(message) -> str:
    status = " ".join(message["X-Spam-Status"].split())
    rules = [t.split("(")[0].strip() for t in status.split("tests=")[1].split(",")]
    return next((t for t in rules if t.startswith("BAYES")), "")


def test_learning_on_one_node_changes_the_verdict_on_the_other(
    make_gateway, sink, redis_server, tmp_path
):
    node_a, node_b = two_nodes(make_gateway, redis_server, "[smtpgw.spamtest]\nNetwork=no\n")
    node_b.send(made_up(100), source="127.0.0.2")
    before = bayes_rule(sink.wait_count(1)[0].message)
    folder = tmp_path / "junk"
    folder.mkdir()
    for n in range(30):
        (folder / f"{n}.eml").write_bytes(made_up(n))
    learned = node_a.cli("learn", "--spam", str(folder))
    assert learned.returncode == 0, learned.stderr
    again = node_b.cli("learn", "--spam", str(folder))  # B knows they were learned (on A)
    assert "30 already" in again.stdout, again.stdout

    def after() -> str:
        count = len(sink.received)
        node_b.send(made_up(1000 + count), source="127.0.0.2")
        arrived = sink.wait_count(count + 1)
        wanted = f"<mu{1000 + count}@offers.example>"
        return bayes_rule(next(r.message for r in arrived if r.message_id == wanted))

    def strength(rule: str) -> float:
        return float("0." + rule.removeprefix("BAYES_")) if rule else 0.5

    rule = wait_for(
        lambda: (r := after()) and strength(r) >= 0.95 and r,
        what="B's verdict to follow A's learning",
    )
    assert strength(before) < 0.95 <= strength(rule), (before, rule)


def test_traffic_thresholds_are_the_clusters_and_alert_once(make_gateway, sink, redis_server):
    node_a, node_b = two_nodes(
        make_gateway,
        redis_server,
        "[smtpgw.notify]\nAdministrator=admin@company.com\n[smtpgw.admin]\nListen=\n"
        "MetricsListen=\nDailyMessageLimit=3\n",
    )
    for i in range(2):  # two each: under the limit on either node, over it in the cluster
        node_a.send(make_message(f"ta{i}@test"))
        node_b.send(make_message(f"tb{i}@test"))
    day = time.strftime("%Y-%m-%d")

    def flags() -> list[str]:
        found = []
        for node in (node_a, node_b):
            flag = node.spool / "stats" / f"alert-{day}-DailyMessageLimit"
            if flag.exists():
                found.append(flag.read_text())
        return found

    wait_for(lambda: len(flags()) == 2, timeout=60, what="both nodes to pass the threshold")
    assert sorted("another node" in f for f in flags()) == [False, True]
    notices = wait_for(
        lambda: [r for r in sink.received if "traffic threshold" in (r.message["Subject"] or "")],
        what="the notice",
    )
    assert len(notices) == 1 and b"DailyMessageLimit" in notices[0].content


def test_redis_by_unix_socket_tls_and_sentinel(tmp_path, redis_server):
    """Every address form of [smtpgw.cluster] Redis reaches a real server."""

    def config(url: str):
        return types.SimpleNamespace(
            cluster_prefix="t",
            cluster_node="n",
            hostname="n",
            cluster_retry_after=1.0,
            cluster_redis=url,
            cluster_timeout=2.0,
        )

    def works(url: str) -> bool:
        cluster = Cluster(config(url))
        try:
            return cluster.count_in_window(cluster.key("probe", url), 60.0) == 1
        finally:
            cluster.close()

    socket_path = tmp_path / "redis.sock"
    sentinel_port, tls_port = free_port(), free_port()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            tmp_path / "key.pem",
            "-out",
            tmp_path / "cert.pem",
        ],
        check=True,
        capture_output=True,
    )
    (tmp_path / "sentinel.conf").write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\n"
        f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n"
    )
    servers = [
        subprocess.Popen(
            [REDIS, "--port", "0", "--unixsocket", str(socket_path), "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [REDIS, str(tmp_path / "sentinel.conf"), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [
                REDIS,
                "--port",
                "0",
                "--tls-port",
                str(tls_port),
                "--save",
                "",
                "--tls-cert-file",
                str(tmp_path / "cert.pem"),
                "--tls-key-file",
                str(tmp_path / "key.pem"),
                "--tls-ca-cert-file",
                str(tmp_path / "cert.pem"),
                "--tls-auth-clients",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_for(lambda: works(f"unix://{socket_path}?db=0"), 10, "redis on a unix socket")
        wait_for(
            lambda: works(f"sentinel://127.0.0.1:{sentinel_port}/mymaster/0"),
            20,
            "the master named by the sentinel",
        )
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={tmp_path / 'cert.pem'}"
        wait_for(lambda: works(url), 10, "redis over TLS")
    finally:
        for server in servers:
            server.terminate()
            server.wait()
