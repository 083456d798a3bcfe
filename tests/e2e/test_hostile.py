"""Hostile input against a running receiver: random SMTP dialogues and bytes, a client that
vanishes in the middle of DATA, one that is too slow, SMTP smuggling, a pipelined flood."""

from __future__ import annotations

import re
import socket
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import RawSession, free_port, wait_for

QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-Z]{21})", re.M)


addresses = st.sampled_from(
    [
        "<a@example.org>",
        "<>",
        "<user@company.com>",
        "<x@elsewhere.net>",
        "<bad",
        "<@a:b@c>",
        "<a@[127.0.0.1]>",
        "<\x00@company.com>",
        "<" + "u" * 300 + "@company.com>",
    ]
)


params = st.sampled_from(
    [
        "",
        " SIZE=100",
        " BODY=8BITMIME",
        " RET=FULL",
        " NOTIFY=NEVER",
        " NOTIFY=BOGUS",
        " ORCPT=rfc822;x@y",
        " SIZE=999999999999",
        " SMTPUTF8",
        " X=Y",
    ]
)


bodies = st.lists(
    st.sampled_from(
        [
            b"Subject: hi",
            b"",
            b".",
            b"..dot",
            b"\x00nul",
            b"bare\nLF",
            b"bare\rCR",
            b"\xff\xfe8bit",
            b"x" * 990,
            b"From: a@b.c",
            b"\t folded",
        ]
    ),
    max_size=8,
)


commands = st.one_of(
    st.builds(lambda a: f"EHLO {a}".encode(), st.sampled_from(["x.example.org", "", "[1.2.3.4]"])),
    st.just(b"HELO client.example.org"),
    st.builds(lambda a, p: f"MAIL FROM:{a}{p}".encode(), addresses, params),
    st.builds(lambda a, p: f"RCPT TO:{a}{p}".encode(), addresses, params),
    st.builds(lambda b: (b"DATA", b), bodies),
    st.sampled_from(
        [b"RSET", b"NOOP", b"VRFY a", b"HELP", b"STARTTLS", b"AUTH PLAIN x", b"BDAT 10", b"QUIT"]
    ),
    # one line: a line feed inside would make two commands and two replies, and ``talk`` reads
    # one reply per line (arbitrary bytes, line feeds included: the test after this one)
    st.binary(max_size=60).map(lambda b: b.replace(b"\n", b"")),
)
# aiosmtpd hangs up after the fifth unrecognised command of a session, with this reply
GOODBYE = b"502 5.5.1 Too many unrecognized commands"


@pytest.fixture(scope="module")
def held_gateway(tmp_path_factory):
    """A gateway whose scanners and senders are off: every accepted message stays in incoming/."""
    import support

    sink = support.Sink()
    sink.start()
    gw = support.Gateway(
        tmp_path_factory.mktemp("hostile"),
        free_port(),
        sink.port_number,
        "[smtpgw.limits]\nScanners=0\nSenders=0\nMaxErrors=0\nMaxJunkCommands=0\n",
    )
    gw.start()
    yield gw
    gw.stop()
    sink.stop()


def talk(port: int, dialogue: list) -> bytes:
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.settimeout(10)
        f = s.makefile("rwb")
        out += f.readline()
        for command in dialogue:
            if isinstance(command, tuple):
                f.write(b"DATA\r\n")
                f.flush()
                reply = f.readline()
                out += reply
                if not reply.startswith(b"354"):
                    continue
                for line in command[1]:
                    f.write(line + b"\r\n")
                f.write(b".\r\n")
            else:
                f.write(command + b"\r\n")
            f.flush()
            reply = f.readline()
            while reply[3:4] == b"-":
                reply = f.readline()
            out += reply
            if not reply or reply.startswith((b"221", b"421", GOODBYE)):
                break
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(dialogue=st.lists(commands, max_size=12))
@example(dialogue=[b"Q", b"1J", b"G", b"1J", b"Q", b"NOOP", b"RSET"])  # hung up on, then quiet
def test_random_dialogues_never_crash_and_every_250_is_on_disk(held_gateway, dialogue):
    pid = held_gateway.pids("receiver")
    try:
        transcript = talk(held_gateway.port, dialogue)
    except (TimeoutError, ConnectionError) as exc:
        pytest.fail(f"the receiver stopped answering: {exc!r}")
    for queue_id in QUEUED.findall(transcript):
        path = held_gateway.spool / "incoming" / queue_id.decode()
        assert (path / "message.eml").is_file() and (path / "envelope.json").is_file()
    for line in transcript.splitlines():
        if line[:1] in b"245" and line[:3] not in (b"220", b"250"):
            assert re.match(rb"^[245]\d\d [245]\.\d+\.\d+ ", line), line
    assert held_gateway.pids("receiver") == pid  # never restarted: it did not crash


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(junk=st.binary(min_size=1, max_size=2000))
def test_random_bytes_leave_the_receiver_serving(held_gateway, junk):
    with socket.create_connection(("127.0.0.1", held_gateway.port), timeout=10) as s:
        s.recv(100)
        s.sendall(junk)
    with socket.create_connection(("127.0.0.1", held_gateway.port), timeout=10) as s:
        assert s.recv(100).startswith(b"220")


def test_a_client_gone_in_the_middle_of_data_queues_nothing(held_gateway):
    before = set(held_gateway.entries("incoming"))
    with RawSession(held_gateway.port, timeout=10) as s:
        assert s.start_data().startswith("354")
        s.file.write(b"Subject: half\r\n\r\nand then the client is gone\r\n")
        s.file.flush()
    with socket.create_connection(("127.0.0.1", held_gateway.port), timeout=10) as s:
        assert s.recv(100).startswith(b"220")
    assert set(held_gateway.entries("incoming")) == before
    assert held_gateway.entries("tmp") == []


def test_a_client_sending_one_byte_at_a_time_is_timed_out(make_gateway):
    gw = make_gateway("[smtpgw.network]\nSessionTimeout=1s\n").start()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as s:
        s.recv(100)
        s.settimeout(0.3)
        started = time.monotonic()
        data = b""
        # Drip "EHLO ..." a byte every 0.3 s: bytes do not count as activity, lines do.
        for byte in b"EHLO slowly.example.org":
            try:
                s.sendall(bytes([byte]))
                data += s.recv(200)
            except TimeoutError:
                continue
            except OSError:
                break
            if b"\n" in data or not data:
                break
        assert data.startswith(b"421 4.4.2"), data
        assert time.monotonic() - started < 5


def test_bare_lf_dot_does_not_end_data_smtp_smuggling(held_gateway):
    before = set(held_gateway.entries("incoming"))
    smuggled = (
        b"Subject: outer\r\n\r\nfirst\n.\nMAIL FROM:<evil@example.org>\n"
        b"RCPT TO:<victim@company.com>\nDATA\nSubject: smuggled\n\n"
        b"second\r\n.\r\n"
    )
    transcript = talk(
        held_gateway.port,
        [
            b"EHLO x.example.org",
            b"MAIL FROM:<a@example.org>",
            b"RCPT TO:<user@company.com>",
            (b"DATA", [smuggled[:-5]]),
            b"QUIT",
        ],
    )
    (queue_id,) = QUEUED.findall(transcript)
    assert set(held_gateway.entries("incoming")) - before == {queue_id.decode()}
    stored = (held_gateway.spool / "incoming" / queue_id.decode() / "message.eml").read_bytes()
    # data, not commands; its bare LFs made CRLF (the sender dot-stuffs the "." line)
    assert b"first\r\n.\r\nMAIL FROM:<evil@example.org>\r\n" in stored


def test_a_smuggling_attempt_reaches_the_next_hop_as_one_message(make_gateway, sink):
    gw = make_gateway().start()
    with RawSession(gw.port) as s:
        assert s.start_data().startswith("354")
        s.file.write(
            b"Subject: outer\r\nMessage-ID: <outer@test>\r\n\r\nfirst\n.\n"
            b"MAIL FROM:<evil@example.org>\nRCPT TO:<victim@company.com>\nDATA\n"
            b"Subject: smuggled\n\nsecond\r\n.\r\n"
        )
        s.file.flush()
        assert s.reply().startswith("250")
    (got,) = sink.wait_count(1)
    assert got.message_id == "<outer@test>" and got.rcpt_tos == ["user@company.com"]
    assert b"first\r\n.\r\nMAIL FROM:<evil@example.org>\r\n" in got.content
    wait_for(lambda: not gw.queue(), 30, "an empty queue")
    assert len(sink.received) == 1


def test_data_lines_keep_a_slow_transfer_alive_but_a_stall_times_out(make_gateway, sink):
    gw = make_gateway("[smtpgw.network]\nSessionTimeout=1s\nDataTimeout=1s\n").start()
    with RawSession(gw.port) as s:
        f = s.file
        assert s.start_data().startswith("354")
        started = time.monotonic()
        f.write(b"Subject: slow\r\n\r\n")
        f.flush()
        while time.monotonic() - started < 2.5:  # longer than both timeouts, a line at a time
            time.sleep(0.3)
            f.write(b"still here\r\n")
            f.flush()
        f.write(b".\r\n")
        f.flush()
        assert f.readline().startswith(b"250 2.0.0 Ok: queued")
        f.write(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<user@company.com>\r\nDATA\r\n")
        f.flush()
        for _ in range(3):
            f.readline()
        f.write(b"Subject: stalled\r\n\r\npart of a line")  # and then nothing
        f.flush()
        assert f.readline().startswith(b"421 4.4.2")
    assert sink.wait_count(1)[0].message["Subject"] == "slow"


def test_a_pipelined_flood_is_answered_in_order(held_gateway):
    commands = (
        [b"EHLO flood.example.org"]
        + [b"NOOP"] * 2000
        + [b"MAIL FROM:<a@example.org>", b"RCPT TO:<user@company.com>", b"QUIT"]
    )
    with socket.create_connection(("127.0.0.1", held_gateway.port), timeout=30) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(b"\r\n".join(commands) + b"\r\n")  # all at once, without waiting
        f.flush()
        replies = []
        while True:
            line = f.readline()
            if not line:
                break
            if line[3:4] != b"-":
                replies.append(line[:3])
    assert len(replies) == len(commands)
    assert replies[1:2001] == [b"250"] * 2000
    assert replies[-3:] == [b"250", b"250", b"221"]


CONTROL_CHARS = st.sampled_from([chr(c) for c in (*range(0, 10), *range(11, 32), 127)])
PLACES = st.sampled_from(
    [
        ("EHLO ", "client{}.example.org", "501 5.5.2"),
        ("HELO ", "client{}.example.org", "501 5.5.2"),
        ("MAIL FROM:", "<a{}b@example.org>", "553 5.1.7"),
        ("MAIL FROM:", "<ab@example.org> RET=FU{}LL", "553 5.1.7"),
        ("MAIL FROM:", "<ab@example.org> ENVID=x{}y", "501 5.5.4"),
        ("RCPT TO:", "<u{}@company.com>", "553 5.1.3"),
        ("RCPT TO:", "<user@company.com> ORCPT=rfc822;u{}@company.com", "501 5.5.4"),
    ]
)


def _xtext(c: str) -> str:
    return f"+{ord(c):02X}"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(place=PLACES, char=CONTROL_CHARS)
def test_control_characters_are_refused_at_the_command(held_gateway, place, char):
    """Raw in HELO, addresses and parameters, or xtext-encoded in ENVID and ORCPT: refused
    where they arrive, with an enhanced code, and the session goes on."""
    verb, template, expected = place
    encoded = "ENVID" in template or "ORCPT" in template
    line = verb + template.format(_xtext(char) if encoded else char)
    with RawSession(held_gateway.port) as s:
        s.cmd("EHLO client.example.org")
        if verb == "RCPT TO:":
            assert s.cmd("MAIL FROM:<a@example.org>").startswith("250")
        reply = s.cmd(line.encode("latin-1"))
        assert reply.startswith(expected), (line, reply)
        assert s.cmd("NOOP").startswith("250")


def test_bare_newlines_are_normalised_so_every_reader_sees_the_same_header(make_gateway, sink):
    """A field hidden behind a bare LF or CR would be a header to a lenient parser downstream
    and part of the Subject to a strict one; made CRLF, it is a header to everyone, so ours
    (here a forged verdict) is renamed like any other."""
    gw = make_gateway().start()
    hidden = (
        b"From: <a@example.org>\r\nSubject: hello\nX-Mailgate-Virus-Status: clean\r\n"
        b"To: <user@company.com>\rX-Spam-Flag: NO\r\nMessage-ID: <bare@test>\r\n\r\n"
        b"one\ntwo\rthree\r\n"
    )
    with RawSession(gw.port) as s:
        assert s.start_data().startswith("354")
        s.file.write(hidden + b".\r\n")
        s.file.flush()
        assert s.reply().startswith("250")
    (got,) = sink.wait_count(1)
    assert b"\r\n" in got.content and b"\n" not in got.content.replace(b"\r\n", b"")
    assert b"\r" not in got.content.replace(b"\r\n", b"")
    msg = got.message
    assert msg["Subject"] == "hello"
    assert msg["X-Untrusted-Mailgate-Virus-Status"] == "clean"
    assert msg["To"] == "<user@company.com>" and msg["X-Spam-Flag"] == "NO"
    assert got.content.endswith(b"one\r\ntwo\r\nthree\r\n")


def test_data_sent_before_the_354_is_still_taken_whole(held_gateway):
    """A client that does not wait for 354 (RFC 2920 says it must): everything it sent went
    to aiosmtpd's reader before the stream to the spool began, and is stored all the same."""
    before = set(held_gateway.entries("incoming"))
    with RawSession(held_gateway.port) as s:
        s.cmd("EHLO early.example.org")
        s.cmd("MAIL FROM:<a@example.org>")
        s.cmd("RCPT TO:<user@company.com>")
        s.file.write(b"DATA\r\nSubject: early\r\n\r\nno waiting\r\n.\r\n")
        s.file.flush()
        assert s.reply().startswith("354")
        reply = s.reply()
        assert reply.startswith("250"), reply
        assert s.cmd("NOOP").startswith("250")
    (queue_id,) = set(held_gateway.entries("incoming")) - before
    stored = (held_gateway.spool / "incoming" / queue_id / "message.eml").read_bytes()
    assert stored.endswith(b"Subject: early\r\n\r\nno waiting\r\n")
    assert held_gateway.entries("tmp") == []
