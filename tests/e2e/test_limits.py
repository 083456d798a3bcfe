"""Access lists and session limits over real SMTP, and a flood from one address that must not
take service away from another."""

from __future__ import annotations

import concurrent.futures
import smtplib
import threading

from support import RawSession, make_message, wait_for


def connect(port: int, source: str) -> tuple[RawSession, str]:
    session = RawSession(port, source)
    return session, session.banner


def test_client_deny_and_allow_lists(make_gateway, tmp_path):
    listed = tmp_path / "deny.txt"
    listed.write_text("# bad neighbours\n127.0.0.3\n")
    gw = make_gateway(
        "[smtpgw.network]\nClientDeny=127.0.0.0/8, 127.0.1.*\n"
        f"ClientDeny=file:{listed}\nClientAllow=127.0.0.1, 127.0.0.3\n"
    ).start()
    for source, allowed in (
        ("127.0.0.1", True),
        ("127.0.0.2", False),
        ("127.0.1.9", False),
        ("127.0.0.3", True),
    ):
        s, banner = connect(gw.port, source)
        s.close()
        if allowed:
            assert banner.startswith("220"), (source, banner)
        else:
            assert banner == f"554 5.7.1 Access denied for {source}", banner
    assert "event='connection_refused'" in gw.log()


def test_concurrency_per_client_and_rate(make_gateway):
    gw = make_gateway("[smtpgw.limits]\nMaxSessionsPerClient=3\nConnectionRate=6\n").start()
    held = [connect(gw.port, "127.0.0.2") for _ in range(3)]
    assert all(banner.startswith("220") for _s, banner in held)
    s, banner = connect(gw.port, "127.0.0.2")
    s.close()
    assert banner.startswith("421 4.7.0 Too many connections from 127.0.0.2"), banner
    other, banner = connect(gw.port, "127.0.0.4")  # another client is served meanwhile
    other.close()
    assert banner.startswith("220")
    for s, _b in held:
        s.close()
    # Six connections a minute: three held, one refused (refusals count too), two more...
    replies = []
    for _ in range(3):
        s, banner = connect(gw.port, "127.0.0.2")
        replies.append(banner[:3])
        s.close()
    assert "421" in replies, replies


def test_errors_messages_and_bytes_per_session(make_gateway, sink):
    gw = make_gateway(
        "[smtpgw.limits]\nMaxErrors=3\nMaxMessagesPerSession=2\nMaxSessionBytes=1M\n"
    ).start()
    with RawSession(gw.port, "127.0.0.2") as s:
        assert s.cmd("EHLO x").startswith("250")
        assert s.cmd("BOGUS").startswith("500")
        assert s.cmd("MAIL FROM:<a@example.org> SIZE=zz").startswith("5")
        assert s.cmd("RCPT TO:<x@company.com>").startswith("503")  # the third error
        assert s.file.readline() == b"421 4.7.0 Too many errors, closing the session\r\n"
        assert s.file.readline() == b""  # closed
    with smtplib.SMTP(
        "127.0.0.1", gw.port, "client.example.org", source_address=("127.0.0.2", 0)
    ) as smtp:
        for i in range(2):
            smtp.sendmail("a@example.org", ["user@company.com"], make_message(f"m{i}@test"))
        code, reply = smtp.mail("a@example.org")
        assert code == 421 and b"4.7.0" in reply
    sink.wait_count(2)
    big = make_message("big@test", size=600 * 1024)
    with smtplib.SMTP("127.0.0.1", gw.port) as smtp:
        smtp.sendmail("a@example.org", ["user@company.com"], big)
        smtp.sendmail("a@example.org", ["user@company.com"], big)
        code, _reply = smtp.mail("a@example.org")
        assert code == 421
    sink.wait_count(4)


def test_a_flood_from_one_address_leaves_another_served(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nMaxSessionsPerClient=10\nConnectionRate=100\n").start()
    banners: list[str] = []
    lock = threading.Lock()
    open_sessions: list[RawSession] = []

    def flood(_n: int) -> None:
        try:
            s, banner = connect(gw.port, "127.0.0.2")
        except OSError as exc:
            banner = f"error {exc}"
            s = None
        with lock:
            banners.append(banner[:3])
            if s is not None:
                open_sessions.append(s)

    accepted_ids = []

    def legitimate() -> None:
        with smtplib.SMTP(
            "127.0.0.1", gw.port, "client.example.org", source_address=("127.0.0.3", 0), timeout=60
        ) as smtp:
            for i in range(50):
                smtp.sendmail("a@example.org", ["user@company.com"], make_message(f"good-{i}@test"))
                accepted_ids.append(f"<good-{i}@test>")

    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        good = pool.submit(legitimate)
        list(pool.map(flood, range(300)))
        good.result(timeout=120)
    for s in open_sessions:
        s.close()
    assert len(banners) == 300
    assert banners.count("220") <= 100  # ConnectionRate=100 per minute for 127.0.0.2
    assert banners.count("421") >= 200
    assert len(accepted_ids) == 50
    wait_for(lambda: set(accepted_ids) <= set(sink.ids()), 60, "all 50 legitimate messages")


def test_header_limits_and_mail_loops(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nMaxHeaders=30\nMaxHeaderSize=4K\nMaxHops=5\n").start()
    ok = make_message("ok@test")

    def refused(message: bytes) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", gw.port) as smtp:
            try:
                smtp.sendmail("a@example.org", ["user@company.com"], message)
            except smtplib.SMTPDataError as exc:
                return exc.smtp_code, exc.smtp_error
        return 250, b""

    many = b"".join(f"X-Filler-{i}: {i}\r\n".encode() for i in range(40)) + ok
    assert refused(many) == (552, b"5.3.4 Too many header fields")
    big = b"X-Big: " + b"y" * 70 + b"\r\n" + (b"\t" + b"y" * 70 + b"\r\n") * 80 + ok
    assert refused(big) == (552, b"5.3.4 Message header too large")
    hop = b"Received: from a by b; Sun, 29 Nov 2026 10:00:00 +0000\r\n"
    assert refused(hop * 4 + ok.replace(b"ok@", b"hops@")) == (250, b"")  # 4 + ours = 5
    code, text = refused(hop * 5 + ok)  # 5 + ours = 6 > MaxHops
    assert code == 554 and text.startswith(b"5.4.6 Too many hops"), text
    assert refused(ok) == (250, b"")
    assert {r.message_id for r in sink.wait_count(2)} == {"<ok@test>", "<hops@test>"}


def test_junk_commands_end_a_session_that_moves_no_mail(make_gateway, sink):
    gw = make_gateway("[smtpgw.limits]\nMaxJunkCommands=5\n").start()
    with RawSession(gw.port) as s:
        s.cmd("EHLO client.example.org")
        for command in ("NOOP", "RSET", "HELP", "VRFY x", "NOOP"):
            assert s.cmd(command)[:1] in "25", command
        assert s.cmd("NOOP").startswith("421 4.7.0")
        assert s.file.readline() == b""  # closed
    with RawSession(gw.port) as s:  # a message accepted starts the count again
        s.cmd("EHLO client.example.org")
        for _ in range(4):
            s.cmd("NOOP")
        assert s.start_data().startswith("354")  # (its EHLO is not junk)
        assert s.cmd(b"Subject: x\r\n\r\nbody\r\n.").startswith("250")
        for _ in range(5):
            assert s.cmd("NOOP").startswith("250")


def test_slots_held_from_many_addresses_cannot_shut_out_new_clients(make_gateway, sink):
    """Dozens of loopback addresses hold every slot they can get and keep them with NOOPs; the
    per-network limit, the trusted reserve and stress mode leave a newcomer served at once,
    and a trusted client always."""
    gw = make_gateway(
        "[smtpgw.limits]\nMaxSessions=30\nTrustedSessions=5\nMaxSessionsPerNetwork=10\n"
        "MaxSessionsPerClient=2\nStressAt=50\nStressTimeout=1s\nMaxJunkCommands=20\n"
    ).start()
    held, refused = [], 0
    for net in range(4):  # 4 networks of 12 addresses: 10 per network get in, 25 in all
        for host in range(2, 14):
            try:
                session = RawSession(gw.port, source=f"127.0.{net}.{host}", timeout=10)
            except OSError:
                refused += 1
                continue
            if session.banner.startswith("220"):
                held.append(session)
            else:
                assert session.banner.startswith("421 4.7.0"), session.banner
                refused += 1
                session.close()
    assert len(held) == 25 and refused == 48 - 25
    with RawSession(gw.port, source="127.0.0.1") as trusted:
        assert trusted.banner.startswith("220")  # the reserve

    stop = threading.Event()

    def keep_alive() -> None:  # the attackers: a NOOP every half second on every slot
        while not stop.wait(0.5):
            for session in held:
                try:
                    session.file.write(b"NOOP\r\n")
                    session.file.flush()
                except OSError:
                    pass

    thread = threading.Thread(target=keep_alive)
    thread.start()
    try:

        def newcomer_served() -> bool:
            with RawSession(gw.port, source="127.0.9.9", timeout=5) as s:
                return s.banner.startswith("220")

        wait_for(newcomer_served, 5, "a new client's banner")
    finally:
        stop.set()
        thread.join()
        for session in held:
            session.close()
    assert "event='connection_refused'" in gw.log()


def test_streamed_data_over_its_limits_is_refused_and_leaves_nothing(make_gateway, sink):
    """DATA goes to the spool as it arrives: an endless line and an oversized message are
    read to the end and thrown away (not kept in memory), refused with their codes, nothing
    stays in tmp/, and the session goes on to deliver a good message."""
    gw = make_gateway("[smtpgw.limits]\nMaxMessageSize=2M\nMaxLineLength=64K\n").start()
    with RawSession(gw.port) as s:
        assert s.start_data().startswith("354")
        chunk = b"x" * (1 << 20)
        for _ in range(20):  # a 20 MB line without CRLF
            s.file.write(chunk)
        s.file.write(b"\r\n.\r\n")
        s.file.flush()
        assert s.reply().startswith("500 5.5.6")
        assert s.cmd("RSET").startswith("250")
        assert s.cmd("MAIL FROM:<a@example.org>").startswith("250")
        assert s.cmd("RCPT TO:<user@company.com>").startswith("250")
        assert s.cmd("DATA").startswith("354")
        s.file.write(b"Subject: big\r\n\r\n")
        for _ in range(40):  # 3 MB of short lines, over MaxMessageSize
            s.file.write((b"y" * 76 + b"\r\n") * 1000)
        s.file.write(b".\r\n")
        s.file.flush()
        assert s.reply().startswith("552 5.3.4")
        assert s.cmd("RSET").startswith("250")
        assert s.start_data().startswith("354")
        assert s.cmd(b"Subject: fine\r\nMessage-ID: <fine@test>\r\n\r\nok\r\n.").startswith("250")
    sink.wait_count(1)
    # the sender removes a delivered message through tmp/ just after the next hop's 250
    wait_for(lambda: gw.entries("tmp") == [], 10, "tmp/ to be empty")
