"""From object verdicts to what happens to the message: deliver, cure, block, quarantine.

Each object carries the actions of its own status (the anti-virus Action* options, or the
attachment rule that banned it). The message is delivered only if every object's actions
allow it (``deliver`` or ``cure``, never ``block``, and not ``quarantine`` alone, which means
"keep it here instead"); objects whose actions say ``cure`` are replaced by a notice; one copy
of the original goes to ``quarantine/<status>/`` under the worst status that asks for it.
The message status is the worst object status, in the order of ``ORDER``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ORDER = ("infected", "suspicious", "banned", "unscannable", "corrupted", "encrypted", "clean")
RANK = {status: rank for rank, status in enumerate(ORDER)}


@dataclass
class ObjectVerdict:
    path: str
    name: str
    content_type: str
    true_type: str
    status: str
    detail: str
    actions: tuple[str, ...] = ("deliver",)
    curable: bool = True

    def public(self) -> dict:
        return {
            "name": self.name,
            "content_type": self.content_type,
            "true_type": self.true_type,
            "status": self.status,
            "detail": self.detail,
        }


@dataclass
class Decision:
    status: str
    actions: tuple[str, ...]
    deliver: bool
    cure: list[ObjectVerdict] = field(default_factory=list)
    quarantine: str | None = None

    @property
    def action(self) -> str:
        return ",".join(self.actions)


def worst(statuses) -> str:
    return min(statuses, key=RANK.__getitem__, default="clean")


def _delivers(obj: ObjectVerdict) -> bool:
    if "block" in obj.actions:
        return False
    if "cure" in obj.actions:
        return obj.curable
    return "deliver" in obj.actions


def decide(objects: list[ObjectVerdict]) -> Decision:
    status = worst(o.status for o in objects)
    deliver = all(_delivers(o) for o in objects)
    cure = [o for o in objects if deliver and "cure" in o.actions and o.status != "clean"]
    asking = [o.status for o in objects if "quarantine" in o.actions]
    quarantine = worst(asking) if asking else None
    actions = ["cure" if cure else "deliver"] if deliver else ["block"]
    if quarantine:
        actions.append("quarantine")
    return Decision(status, tuple(actions), deliver, cure, quarantine)


@dataclass
class SpamOutcome:
    """What happens to the recipients of one group for the message's spam status."""

    actions: tuple[str, ...]
    recipients: list[dict]

    @property
    def deliver(self) -> bool:
        return "block" not in self.actions and ("deliver" in self.actions or self.mark)

    @property
    def mark(self) -> bool:
        return "mark" in self.actions

    @property
    def quarantine(self) -> bool:
        return "quarantine" in self.actions


def spam_outcomes(config, envelope: dict, status: str) -> list[SpamOutcome]:
    """The pending recipients, partitioned by the actions their group takes for ``status``.

    One outcome means every recipient is treated alike (the usual case); more mean the
    message must be split so that each part gets its group's treatment.
    """
    by_actions: dict[tuple[str, ...], list[dict]] = {}
    sender = envelope.get("mail_from", "")
    for rcpt in envelope["recipients"]:
        if rcpt.get("status", "pending") != "pending":
            continue
        group = config.group_of(rcpt["address"], sender)
        by_actions.setdefault(config.spam_actions(status, group), []).append(rcpt)
    return [SpamOutcome(actions, rcpts) for actions, rcpts in by_actions.items()]
