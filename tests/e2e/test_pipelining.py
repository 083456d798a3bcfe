"""The sender pipelines MAIL, RCPT and DATA (RFC 2920) when the next hop announces it.

The next hop is a scripted SMTP server on loopback that keeps every read it makes, so a test
sees which commands arrived together, and answers exactly as a real server may.
"""

from __future__ import annotations

import smtplib
import socket
import threading

from support import free_port, make_message, wait_for

BODY = b"<body>"  # a step item: the message, up to and including the final dot


class ScriptedHop(threading.Thread):
    """One SMTP session: EHLO (announcing PIPELINING or not), then ``script`` in order.

    Each step is (items, reply): the server reads until every item has arrived (a command
    line starting with the item, or ``BODY``), checks them, and sends the reply. ``reads``
    holds the raw bytes of each recv, so a pipelined group is one read.
    """

    def __init__(self, script: list[tuple[list[bytes], bytes]], pipelining: bool = True):
        super().__init__(daemon=True)
        self.script = script
        self.ehlo = b"250-hop.test\r\n250 PIPELINING\r\n" if pipelining else b"250 hop.test\r\n"
        self.server = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.server.getsockname()[1]
        self.reads: list[bytes] = []
        self.error: str | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            conn, _ = self.server.accept()
            with conn:
                conn.settimeout(20)
                conn.sendall(b"220 hop.test ESMTP\r\n")
                buffer = b""
                for items, reply in [([b"EHLO"], self.ehlo), *self.script]:
                    buffer = self._expect(conn, buffer, items)
                    conn.sendall(reply)
        except Exception as exc:  # reported by the test rather than lost in the thread
            self.error = repr(exc)
        finally:
            self.server.close()
            self.done.set()

    def _expect(self, conn: socket.socket, buffer: bytes, items: list[bytes]) -> bytes:
        for item in items:
            end_mark = b"\r\n.\r\n" if item == BODY else b"\r\n"
            while (end := buffer.find(end_mark)) < 0:
                chunk = conn.recv(65536)
                if not chunk:
                    raise AssertionError(f"connection closed while waiting for {item!r}")
                self.reads.append(chunk)
                buffer += chunk
            end += len(end_mark)
            line, buffer = buffer[:end], buffer[end:]
            if item != BODY and not line.upper().startswith(item.upper()):
                raise AssertionError(f"expected {item!r}, got {line!r}")
        return buffer

    def finished(self) -> None:
        assert self.done.wait(30), "the scripted session did not finish"
        assert self.error is None, self.error


def _send(gw, rcpts: list[str], message_id: str) -> None:
    with smtplib.SMTP("127.0.0.1", gw.port) as smtp:
        smtp.sendmail("a@example.org", rcpts, make_message(message_id))


def _gateway(make_gateway, hop: ScriptedHop, domain: str):
    return make_gateway(f"[smtpgw.forward]\nForwardRoute=*@{domain} [127.0.0.1:{hop.port}]").start()


def _commands(read: bytes) -> list[bytes]:
    return [line.split(b":")[0].upper() for line in read.split(b"\r\n") if line]


def test_mail_rcpt_and_data_leave_in_one_write(make_gateway, sink):
    hop = ScriptedHop(
        [
            (
                [b"MAIL FROM:<a@example.org>", b"RCPT TO:<x@", b"RCPT TO:<y@", b"DATA"],
                b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.1.5 ok\r\n354 go on\r\n",
            ),
            ([BODY], b"250 2.0.0 queued\r\n"),
        ]
    )
    hop.start()
    gw = _gateway(make_gateway, hop, "pipe.test")
    _send(gw, ["x@pipe.test", "y@pipe.test"], "pipe@test")
    hop.finished()
    assert _commands(hop.reads[1]) == [b"MAIL FROM", b"RCPT TO", b"RCPT TO", b"DATA"]
    wait_for(lambda: "event='done'" in gw.log() and not gw.queue(), what="delivery recorded")


def test_a_pipelined_transaction_without_recipients_is_closed_cleanly(make_gateway, sink):
    """The only RCPT is refused, yet the server says 354 to the pipelined DATA: the sender
    sends the lone dot, discards that reply, resets, and bounces the recipient."""
    hop = ScriptedHop(
        [
            (
                [b"MAIL FROM:", b"RCPT TO:<gone@pipe.test>", b"DATA"],
                b"250 2.1.0 ok\r\n550 5.1.1 no such user\r\n354 go on\r\n",
            ),
            ([b".\r\n"], b"554 5.5.1 no valid recipients\r\n"),
            ([b"RSET"], b"250 2.0.0 ok\r\n"),
        ]
    )
    hop.start()
    gw = _gateway(make_gateway, hop, "pipe.test")
    _send(gw, ["gone@pipe.test"], "gone@test")
    hop.finished()
    (bounce,) = sink.wait_count(1)
    assert bounce.rcpt_tos == ["a@example.org"]
    assert b"550 5.1.1 no such user" in bounce.content


def test_lock_step_when_the_next_hop_does_not_pipeline(make_gateway, sink):
    hop = ScriptedHop(
        [
            ([b"MAIL FROM:<a@example.org>"], b"250 2.1.0 ok\r\n"),
            ([b"RCPT TO:<x@plain.test>"], b"250 2.1.5 ok\r\n"),
            ([b"DATA"], b"354 go on\r\n"),
            ([BODY], b"250 2.0.0 queued\r\n"),
        ],
        pipelining=False,
    )
    hop.start()
    gw = _gateway(make_gateway, hop, "plain.test")
    _send(gw, ["x@plain.test"], "plain@test")
    hop.finished()
    assert hop.reads[0].upper().startswith(b"EHLO ")
    assert [_commands(read) for read in hop.reads[1:4]] == [[b"MAIL FROM"], [b"RCPT TO"], [b"DATA"]]
