"""The web console, through Debian's headless chromium (Selenium + chromedriver) and plain HTTP.

Set MAILGATE_SCREENSHOTS=DIR to keep screenshots of the dashboard and quarantine pages
(``scripts/console-screenshots`` does, for docs/).
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import os
import re
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mimebuild import EICAR, TEXT, multipart, part
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from support import free_port, make_message, wait_for

from mailgate.config import passwords

PASSWORD = "console secret 42"
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)


@contextlib.contextmanager
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    with tempfile.TemporaryDirectory() as profile:
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def console_gateway(make_gateway, extra: str = ""):
    port = free_port()
    gw = make_gateway(
        "[smtpgw.scan]\nMode=protection\n"
        f"[smtpgw.admin]\nListen=127.0.0.1:{port}\nMetricsListen=127.0.0.1:{port}\n"
        f"PasswordHash={passwords.hash_password(PASSWORD)}\n" + extra
    ).start()
    gw.console = f"http://127.0.0.1:{port}"

    def answers():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False

    wait_for(answers, 30, "the console to listen")
    return gw


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("MAILGATE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / name))


def element(driver, element_id: str):
    """The element once the page that holds it has loaded: a click that submits a form or
    follows a link returns before the next page is there."""
    return wait_for(lambda: driver.find_elements(By.ID, element_id), what=f"#{element_id}")[0]


def log_in(driver, gw, password: str = PASSWORD) -> None:
    driver.get(gw.console + "/")
    assert driver.current_url.endswith("/login")
    box = driver.find_element(By.ID, "password")
    box.send_keys(password)
    driver.find_element(By.ID, "login").click()


def test_log_in_see_a_quarantined_eicar_message_and_release_it(make_gateway, sink):
    gw = console_gateway(make_gateway)
    virus = multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="eicar@test")
    qid = gw.send(virus)
    gw.send(make_message("clean@test"))
    wait_for(lambda: gw.entries("quarantine/infected") == [qid], what="the quarantined copy")
    wait_for(lambda: "<clean@test>" in sink.ids(), what="the clean message")
    assert "<eicar@test>" not in sink.ids()  # blocked: Mode=protection

    with browser() as driver:
        log_in(driver, gw, "not the password")
        assert element(driver, "login-error").text == "Wrong password."
        assert driver.current_url.endswith("/login")

        log_in(driver, gw)
        roles = element(driver, "processes").text
        assert "receiver" in roles and "scanner" in roles and "sender" in roles
        assert "down" not in roles
        assert driver.find_element(By.ID, "today-received").text == "2"
        assert driver.find_element(By.ID, "quarantine-total").text == "1"
        legend = element(driver, "chart-legend").text
        assert "received" in legend and "spam" in legend and "viruses" in legend
        assert "Messages accepted (250 after DATA)" in driver.page_source
        cookie = driver.get_cookie("mailgate_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        screenshot(driver, "console-dashboard.png")

        driver.find_element(By.LINK_TEXT, "Quarantine").click()
        table = element(driver, "quarantine").text
        assert qid in table and "Mailgate.Test.EICAR" in table and "infected" in table
        screenshot(driver, "console-quarantine.png")

        driver.find_element(By.LINK_TEXT, qid).click()
        assert "Mailgate.Test.EICAR" in element(driver, "objects").text
        driver.find_element(By.LINK_TEXT, "Quarantine").click()

        element(driver, f"select-{qid}").click()
        driver.find_element(By.ID, "release-selected").click()
        assert "released as" in element(driver, "result").text

        got = wait_for(
            lambda: [r for r in sink.received if r.message_id == "<eicar@test>"],
            60,
            "the released message at the sink",
        )[0]
        assert got.rcpt_tos == ["user@company.com"]
        assert qid in got.message["X-Mailgate-Released"]
        assert gw.entries("quarantine/infected") == []

        driver.get(gw.console + f"/logs?qid={qid}")
        log = element(driver, "log").text
        assert "queued" in log and "scanned" in log

        # a forged POST with the browser's own session cookie but no CSRF token fails
        cookie = driver.get_cookie("mailgate_session")["value"]
        second = gw.send(virus)
        wait_for(lambda: gw.entries("quarantine/infected") == [second], what="a second copy")
        forged = post(gw, "/quarantine", {"action": "delete", "item": f"infected/{second}"}, cookie)
        assert forged == 400
        assert gw.entries("quarantine/infected") == [second]


class Client:
    """A plain HTTP client with a cookie jar (what a script or an attacker would use)."""

    def __init__(self, base: str, forwarded_for: str | None = None):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()
        )
        if forwarded_for:
            self.opener.addheaders.append(("X-Forwarded-For", forwarded_for))

    def cookie(self) -> str:
        return next(c.value for c in self.jar if c.name == "mailgate_session")

    def request(self, path: str, data: dict | None = None):
        body = urllib.parse.urlencode(data, doseq=True).encode() if data is not None else None
        try:
            with self.opener.open(self.base + path, body, timeout=30) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers), exc.read()

    def csrf(self, path: str = "/login") -> str:
        _, _, body = self.request(path)
        return re.search(rb'name="csrf" value="([^"]+)"', body).group(1).decode()

    def log_in(self, password: str = PASSWORD) -> int:
        return self.request("/login", {"csrf": self.csrf(), "password": password})[0]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def with_cookie(gw, path: str, cookie: str) -> int:
    """The status of a GET that carries ``cookie`` (say, one copied from a browser)."""
    request = urllib.request.Request(
        gw.console + path, headers={"Cookie": f"mailgate_session={cookie}"}
    )
    try:
        with urllib.request.build_opener(NoRedirect()).open(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def post(gw, path: str, data: dict, cookie: str) -> int:
    request = urllib.request.Request(
        gw.console + path,
        urllib.parse.urlencode(data).encode(),
        headers={"Cookie": f"mailgate_session={cookie}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code


def test_console_security_login_throttling_validation_and_downloads(make_gateway, sink):
    gw = console_gateway(make_gateway, "[smtpgw.archive]\nReceived=yes\n")
    raw = multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="dl@test")
    qid = gw.send(raw)
    wait_for(lambda: gw.entries("quarantine/infected") == [qid], what="the quarantined copy")

    anonymous = Client(gw.console)
    for path in ("/", "/queue", "/quarantine", f"/quarantine/infected/{qid}/download", "/config"):
        status, headers, _ = anonymous.request(path)
        assert status == 302 and headers["Location"].endswith("/login"), path
    assert anonymous.request("/metrics")[0] == 200  # Prometheus scrapers do not log in

    client = Client(gw.console)
    assert client.log_in() == 302
    status, headers, body = client.request(f"/quarantine/infected/{qid}/download")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert headers["Content-Disposition"] == f'attachment; filename="{qid}.eml"'
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body.endswith(raw)  # the message as received, byte for byte
    assert "script-src 'none'" in headers["Content-Security-Policy"]
    status, headers, body = client.request(f"/archive/received/{qid}/download")
    assert status == 200 and headers["Content-Disposition"].startswith("attachment")
    for bad in (
        "/quarantine/infected/..%2F..%2Frun/download",
        "/quarantine/../../run/x/download",
        "/quarantine/Infected!/X/download",
        f"/archive/../{qid}/download",
        "/queue/not-an-id",
        "/logs?qid=../../etc/passwd",
    ):
        assert client.request(bad)[0] in (400, 404), bad

    # every state-changing form needs the token
    assert client.request(f"/queue/{qid}/delete", {})[0] == 400
    assert client.request("/logout", {})[0] == 400
    token = client.csrf("/")
    assert client.request("/quarantine", {"csrf": token, "action": "x", "item": "a/b"})[0] == 400
    status, _, body = client.request(
        "/quarantine", {"csrf": token, "action": "delete", "item": f"infected/{qid}"}
    )
    assert status == 200 and b"deleted" in body
    assert gw.entries("quarantine/infected") == []
    status, _, body = client.request("/config")
    assert status == 200 and b"config-ok" in body

    attacker = Client(gw.console)
    for _ in range(5):
        assert attacker.log_in("guess") == 401
    assert attacker.log_in() == 429  # throttled even with the right password now
    assert "console_login_throttled" in gw.log()
    assert client.request("/")[0] == 200  # a session opened before is not affected


def test_without_a_password_nobody_logs_in(make_gateway, sink):
    port = free_port()
    gw = make_gateway(f"[smtpgw.admin]\nListen=127.0.0.1:{port}\n").start()
    gw.console = f"http://127.0.0.1:{port}"
    wait_for(lambda: "console_listening" in gw.log(), 30, "the console to listen")
    client = Client(gw.console)
    status, _, body = client.request("/login")
    assert status == 200 and b"mailgate passwd" in body
    assert client.log_in("") == 401
    assert client.log_in("anything at all") == 401
    ready = f"console http://127.0.0.1:{port}/ (no login until a password is set: mailgate passwd)"
    assert ready in gw.log()


def test_queue_pages_hold_release_requeue_and_delete(make_gateway, sink):
    gw = console_gateway(make_gateway, "[smtpgw.limits]\nSenders=0\n[smtpgw.archive]\nSent=no\n")
    first = gw.send(make_message("first@test"))
    second = gw.send(make_message("second@test", subject="find me"))
    wait_for(lambda: set(gw.entries("ready")) == {first, second}, what="both scanned")
    client = Client(gw.console)
    assert client.log_in() == 302

    status, _, body = client.request(f"/queue?state=ready&q={second[-8:]}")
    assert status == 200 and second.encode() in body and first.encode() not in body
    status, _, body = client.request(f"/queue/{second}")
    assert status == 200 and b"find me" in body and b"user@company.com" in body

    token = client.csrf("/queue")
    status, _, body = client.request(f"/queue/{first}/hold", {"csrf": token})
    assert status == 200 and b"held" in body
    assert gw.entries("hold") == [first]
    status, _, body = client.request(f"/queue/{first}/hold", {"csrf": token})
    assert status == 409  # only queued mail can be held
    assert client.request(f"/queue/{first}/release", {"csrf": token})[0] == 200
    assert first in gw.entries("ready")
    assert client.request(f"/queue/{second}/delete", {"csrf": token})[0] == 200
    assert gw.entries("ready") == [first]
    assert client.request(f"/queue/{first}/explode", {"csrf": token})[0] == 404

    status, _, body = client.request(f"/logs?qid={first}")
    assert status == 200 and b"event=&#39;queued&#39;" in body


def test_a_session_ends_at_logout_even_for_a_copy_of_its_cookie(make_gateway, sink):
    gw = console_gateway(make_gateway)
    client = Client(gw.console)
    assert client.log_in() == 302 and client.request("/")[0] == 200
    copied = client.cookie()
    assert with_cookie(gw, "/", copied) == 200
    assert client.request("/logout", {"csrf": client.csrf("/")})[0] == 302
    assert with_cookie(gw, "/", copied) == 302  # the server has forgotten the session


def test_a_new_password_ends_every_session(make_gateway, sink):
    gw = console_gateway(make_gateway)
    client = Client(gw.console)
    assert client.log_in() == 302 and client.request("/")[0] == 200
    done = subprocess.run(
        [sys.executable, "-m", "mailgate", "passwd", "--stdin", "-c", str(gw.conf)],
        input="a brand new secret\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert client.request("/")[0] == 302
    assert client.log_in() == 401  # the old password is gone with the sessions
    assert Client(gw.console).log_in("a brand new secret") == 302


def test_wrong_guesses_slow_down_but_never_lock_out(make_gateway, sink):
    gw = console_gateway(make_gateway)
    attacker = Client(gw.console)
    for _ in range(6):
        assert attacker.log_in("guess") in (401, 429)
    assert attacker.log_in() == 429  # waiting out the back-off, even with the right password
    wait_for(lambda: Client(gw.console).log_in() == 302, 10, "the back-off to pass")


def test_metrics_only_for_metrics_allow_and_secure_cookies_when_asked(make_gateway, sink):
    gw = console_gateway(make_gateway, "MetricsAllow=127.0.0.1/32\nSecureCookie=yes\n")
    assert Client(gw.console).request("/metrics")[0] == 200
    port = int(gw.console.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        assert s.recv(64).split()[1] == b"403"
    _, headers, _ = Client(gw.console).request("/login")
    assert "Secure" in headers.get("Set-Cookie", ""), headers


@pytest.mark.parametrize("proxy", [True, False], ids=["behind-a-trusted-proxy", "header-ignored"])
def test_the_back_off_counts_the_forwarded_client_only_behind_a_trusted_proxy(
    make_gateway, sink, proxy
):
    gw = console_gateway(make_gateway, "TrustedProxies=127.0.0.1/32\n" if proxy else "")
    attacker = Client(gw.console, forwarded_for="192.0.2.66")
    for _ in range(6):
        attacker.log_in("guess")
    assert attacker.log_in() == 429
    colleague = Client(gw.console, forwarded_for="198.51.100.7")  # same proxy, other person
    assert colleague.log_in() == (302 if proxy else 429)


def test_the_tracking_page_shows_a_message_life_with_links(make_gateway, sink):
    gw = console_gateway(make_gateway)
    virus = gw.send(multipart([TEXT, part(EICAR, filename="eicar.com")], msgid="track-v@test"))
    clean = gw.send(make_message("track-c@test"))
    wait_for(lambda: "<track-c@test>" in sink.ids(), what="the clean message")
    wait_for(lambda: gw.entries("quarantine/infected") == [virus], what="the quarantined copy")
    client = Client(gw.console)
    assert client.log_in() == 302
    status, _, body = client.request(f"/track?id={virus}")
    assert status == 200 and virus.encode() in body and clean.encode() not in body
    assert b"quarantined" in body and b"Mailgate.Test.EICAR" in body
    assert f"/quarantine/infected/{virus}".encode() in body
    wait_for(lambda: b"delivered" in client.request(f"/track?id={clean}")[2], what="delivery")
    status, _, body = client.request("/track?sender=*@EXAMPLE.org")
    assert status == 200 and virus.encode() in body and clean.encode() in body
    assert client.request("/track?since=yesterday")[0] == 400
    assert client.request("/track?id=..%2Fx")[0] == 404
