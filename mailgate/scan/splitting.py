"""Split copies of a scanned message (a mixin of ``Scanner``, kept apart so that the
scanner's module reads as the order of a message's handling): when recipient groups get
different treatment, each group but the first gets a copy staged inside the claim, and the
original's envelope records the split before anything is handed on (``Spool.stage_copy``,
``Spool.hand_on_copies``), so a scanner that dies in between neither loses nor doubles one."""

from __future__ import annotations

from mailgate.message.content import Content, blocks
from mailgate.scan import authn, edits
from mailgate.scan.spam.spamtest import SpamVerdict
from mailgate.spool import Entry
from mailgate.spool import envelope as envmod


class Splitting:
    def _prefix(self, spam: SpamVerdict | None) -> str:
        if spam is None:
            return ""
        if spam.status == "probable-spam":
            return self.config.probable_prefix
        return self.config.subject_prefix

    def _stage_copy(
        self,
        entry: Entry,
        envelope: dict,
        message: Content,
        headers: list[str],
        outcome,
        spam,
        queue_id: str,
    ) -> None:
        """Stage a copy for the recipients of another group, with that group's treatment;
        ``_to_ready`` hands it on once the original's envelope records the split."""
        if outcome.mark:
            message = edits.edit_headers(message, self._prefix(spam), ())
        fields = [f"X-Mailgate-Queue-ID: {queue_id}", *headers[1:]]
        copy = {
            **envelope,
            "id": queue_id,
            "recipients": outcome.recipients,
            "headers": authn.signed(
                self.config,
                {**envelope, "id": queue_id},
                fields,
                lambda: b"".join(blocks(message)),
                len(message),
                self.log,
            ),
            "scanned": True,
            "split_from": envelope["id"],
            "size": len(message),
            "history": [],
        }
        envmod.record(copy, "ready", self.role)
        self.spool.stage_copy(entry, message, copy)
        self.counters["split"] += 1
        self.log.info(
            "split",
            qid=envelope["id"],
            part=queue_id,
            rcpts=len(outcome.recipients),
            spam_action=",".join(outcome.actions),
        )

    def _finish_split(self, entry: Entry, envelope: dict) -> None:
        """A scanner died after recording a split: hand on what it had not, scan nothing."""
        moved = self.spool.hand_on_copies(entry)
        envmod.record(envelope, "ready", self.role)
        self.spool.release(entry, "ready", envelope)
        self.log.info("split_finished", qid=entry.id, parts=moved, to="ready")
