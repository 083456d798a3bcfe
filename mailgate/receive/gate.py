"""The gate: what a new connection meets before any SMTP is spoken.

Every connection first gets this protocol, with reading paused. The anvil's limits (pause,
access lists, connection rate, sessions in all and per client) are checked at once, then the
connect-time screening (block lists at connect, over DNS) runs without blocking the loop. A
refused client gets one reply and the connection closes; an admitted one is handed to a new
SMTP session with ``transport.set_protocol`` and only then sees the 220 greeting, so a client
that talks before the greeting is read by the session, never by the gate.

Invariant: a client the anvil counted is released exactly once, by the gate if it never
reaches a session, else by the session when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mailgate.receive.anvil import Anvil
from mailgate.runtime import log as logmod

Screen = Callable[[str], Awaitable[tuple[str | None, str]]]


class Gate(asyncio.Protocol):
    def __init__(self, anvil: Anvil, screen: Screen, open_session: Callable[[str, str], object]):
        self.anvil = anvil
        self.screen = screen
        self.open_session = open_session
        self.transport: asyncio.Transport | None = None
        self.ip = ""
        self.counted = False
        self.task: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        refusal = self.anvil.admit(self.ip)
        if refusal is not None:
            logmod.get().info("connection_refused", client=self.ip, reply=refusal)
            self._refuse(refusal)
            return
        self.counted = True
        self.task = asyncio.get_running_loop().create_task(self._screen())

    async def _screen(self) -> None:
        try:
            refusal, mark = await self.screen(self.ip)
        except Exception as exc:  # a screening fault must not turn into a refusal
            logmod.get().error("connect_screen_failed", client=self.ip, error=repr(exc))
            refusal, mark = None, ""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if refusal is not None:
            self._refuse(refusal)
            return
        session = self.open_session(self.ip, mark)
        self.counted = False  # the session releases the client from now on
        transport.set_protocol(session)
        session.connection_made(transport)
        transport.resume_reading()

    def _refuse(self, reply: str) -> None:
        self.transport.write(reply.encode("ascii") + b"\r\n")
        self.transport.close()

    def connection_lost(self, exc) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.counted:
            self.counted = False
            self.anvil.release(self.ip)
