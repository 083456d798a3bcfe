"""How the receiver stores an accepted message: durably queued, then (if asked) archived
(a mixin of ``Receiver``; the archive copy is a copy, not mail: its failure is logged and
never refuses the message)."""

from __future__ import annotations

from mailgate.spool.files import MessageWriter


class Storing:
    def _commit(self, writer: MessageWriter, env: dict) -> None:
        """Queue a streamed message durably; then, if asked, archive it. The copy is read
        before the message is queued: once in incoming/, a scanner may take it at once."""
        copy = None
        if self.config.archive_received:
            try:
                copy = writer.read()
            except OSError as exc:
                self.log.error("archive_failed", qid=env["id"], error=repr(exc))
        writer.commit(env)
        if copy is not None:
            self._archive(copy, env)

    def _store(self, message: bytes, env: dict) -> None:
        """Queue the message durably; then, if asked, keep a copy in the received archive."""
        self.spool.enqueue(message, env)
        if self.config.archive_received:
            self._archive(message, env)

    def _archive(self, message: bytes, env: dict) -> None:
        try:
            self.spool.archive("received", message, env, env["received_at"])
        except OSError as exc:
            self.log.error("archive_failed", qid=env["id"], error=repr(exc))
