"""A message's verdict, with no spool and no side effects: what the scanner and ``mailgate scan``
share.

``Inspector.inspect`` splits a message into its MIME objects (``mime``), gives each a status
from clamd (``av.engine``, through the iChecker cache) and the attachment filter
(``av.attachments``), asks the spam filter when there is one, and lets ``policy`` decide.
Invariant: an object that was not scanned to the end is never ``clean``: a size, depth or
time limit, or an engine error on the last try, makes it ``unscannable``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Generator
from dataclasses import dataclass, field

from mailgate.config import Config
from mailgate.message.content import MessageFile
from mailgate.message.headers import CONTROLS, header_field
from mailgate.scan import mime, policy
from mailgate.scan.av import archives, attachments
from mailgate.scan.av.engine import Engine, ObjectError
from mailgate.scan.av.ichecker import IChecker
from mailgate.scan.policy import Decision, ObjectVerdict
from mailgate.scan.spam.spamtest import Spamtest, SpamVerdict


@dataclass
class Inspection:
    split: mime.Split
    objects: list[ObjectVerdict]
    decision: Decision
    spam: SpamVerdict | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # seconds per stage: mime, spam, av

    def public(self) -> dict:
        return {
            "status": self.decision.status,
            "action": self.decision.action,
            "objects": [o.public() for o in self.objects],
            "spam": self.spam.public() if self.spam else {},
        }


class Inspector:
    """Gives a message its verdict; no spool, no side effects (``mailgate scan`` uses it)."""

    def __init__(
        self,
        config: Config,
        engine: Engine | None,
        installed=None,
        types=None,
        spam: Spamtest | None = None,
    ):
        self.config = config
        self.engine = engine
        self.installed = installed or (lambda: None)
        self.types = config.attachments_enabled if types is None else types
        self.text_detail = types is True or attachments.rules_see_text(config)
        self.spamtest = spam

    def inspect(self, *args, **kwargs) -> Inspection:
        """``stages`` run to the end: one message's verdict (``mailgate scan``; a scanner's
        scan without clamd)."""
        stages = self.stages(*args, **kwargs)
        while True:
            try:
                next(stages)
            except StopIteration as done:
                return done.value

    def stages(
        self,
        raw: bytes | MessageFile,
        last_try: bool = True,
        envelope: dict | None = None,
        engine_lost: str = "",
        scratch=None,
    ) -> Generator[None, None, Inspection]:
        """A message's verdict in three stages (parse, spam verdict, objects), for a scanner
        that runs each stage for several messages in a row (``Worker.steps``); no side
        effects. Raises EngineUnavailable; raises ObjectError unless ``last_try`` (then such
        objects are ``unscannable``). ``envelope`` (sender, recipients, client) informs the
        spam filter; an offline scan has none. With ``engine_lost`` (the reason) clamd is
        not asked and every object it has not seen before is ``unscannable``. A large
        message is read from its file (``mime.split``), its long objects decoded into
        ``scratch()`` files: the caller closes ``Inspection.split`` when done."""
        config = self.config
        started = time.process_time()
        split = mime.split(raw, config.max_depth, config.max_parts, scratch)
        cpu = {"mime": time.process_time() - started}
        try:
            yield
            envelope = envelope or {"mail_from": "", "recipients": []}
            spam = None
            started = time.process_time()
            if self.spamtest is not None and envelope.get("kind", "message") == "message":
                spam = self.spamtest.check(split, envelope)
            cpu["spam"] = time.process_time() - started
            yield
            started = time.process_time()
            verdicts = self._objects(split, last_try, engine_lost)
            cpu["av"] = time.process_time() - started
        except BaseException:
            split.close()
            raise
        return Inspection(split, verdicts, policy.decide(verdicts), spam, cpu)

    def _objects(self, split: mime.Split, last_try: bool, engine_lost: str) -> list:
        config = self.config
        deadline = time.monotonic() + config.message_timeout
        verdicts = []
        if split.limit:
            verdicts.append(
                ObjectVerdict(
                    "0",
                    "",
                    "message/rfc822",
                    "",
                    "unscannable",
                    split.limit,
                    config.actions("unscannable"),
                    curable=False,
                )
            )
        if self.engine is not None and not engine_lost:
            try:
                self.engine.refresh_version(self.installed())
            except ObjectError as exc:
                if not last_try:
                    raise
                engine_lost = f"engine:error ({exc})"
        for obj in split.objects:
            verdicts.append(self._object(obj, deadline, last_try, engine_lost))
        return verdicts

    def _object(
        self, obj: mime.MimeObject, deadline: float, last_try: bool, engine_lost: str
    ) -> ObjectVerdict:
        config, engine = self.config, self.engine
        found = [("corrupted", obj.defect)] if obj.defect else []
        cache = engine.ichecker if engine is not None else None
        digest = b""
        if cache is not None:
            digest = obj.sha256 or hashlib.sha256(obj.data).digest()
        known = cache.get(digest, engine.db_version) if cache is not None else None
        if known is not None:
            found.append(known[:2])
            kind = known[2]
        else:
            kind = ""
            if self.types:
                head = obj.head(attachments.MAGIC_BYTES)
                kind = attachments.true_type(head, self.text_detail)
        if engine is not None and known is None:
            if engine_lost:
                found.append(("unscannable", engine_lost))
            elif obj.size > config.max_object_size:
                found.append(("unscannable", f"larger than MaxObjectSize ({obj.size} bytes)"))
            else:
                try:
                    if time.monotonic() > deadline:
                        raise ObjectError("the message took longer than MessageTimeout")
                    verdict = engine.scan(obj.data if obj.file is None else obj.blocks())
                except ObjectError as exc:
                    if not last_try:
                        raise
                    found.append(("unscannable", str(exc)))
                else:
                    found.append(verdict)
                    if cache is not None:
                        cache.put(digest, engine.db_version, *verdict, kind)
        limit = archives.limit_broken(obj.reader(), archives.limits_of(config))
        if limit is not None:
            found.append(("unscannable", limit))
        ban = attachments.check(config, obj.name, kind)
        if ban is not None:
            found.append(("banned", ban.detail))
        status = policy.worst(s for s, _ in found) if found else "clean"
        detail = "; ".join(d for s, d in found if s == status and d)
        actions = ban.actions if status == "banned" and ban else config.actions(status)
        return ObjectVerdict(
            obj.path,
            obj.name,
            obj.content_type,
            kind,
            status,
            detail,
            actions,
            curable=obj.part is not None,
        )


def engine_for(config: Config, ichecker: IChecker | None = None) -> Engine | None:
    if not config.av_enabled:
        return None
    return Engine(config.clamd_socket_path, config.object_timeout, ichecker)


def status_header(inspection: Inspection) -> str:
    status = inspection.decision.status
    names = sorted({o.detail for o in inspection.objects if o.status == status and o.detail})
    return f"{status} ({', '.join(names)})" if names and status != "clean" else status


def virus_headers(inspection: Inspection, scanner: str, db_version: str) -> list[str]:
    """The X-Mailgate-Virus-* headers of a verdict (``scanner``: program and engine)."""
    headers = [f"X-Mailgate-Virus-Status: {status_header(inspection)}"]
    cured = inspection.decision.cure
    if cured:  # file names come from the sender: through the header API
        removed = "; ".join(f"{mime_name(o)} ({o.detail or o.status})" for o in cured)
        field = header_field("X-Mailgate-Virus-Removed", removed)
        headers.append(field.decode("ascii").removesuffix("\r\n"))
    headers.append(f"X-Mailgate-Virus-Scanner: {scanner}, database {db_version}")
    return headers


def spam_headers(spam: SpamVerdict, tagged: bool) -> list[str]:
    """X-Spam-Status (``Yes`` exactly when the copy is ``tagged``: marked as spam or probable
    spam by the policy), X-Spam-Level, and X-Spam-Flag: YES on a tagged copy."""
    headers = [
        f"X-Spam-Status: {spam.header_status(tagged)}",
        f"X-Spam-Level: {spam.header_level()}",
    ]
    if tagged:
        headers.append("X-Spam-Flag: YES")
    return headers


def mime_name(obj: ObjectVerdict) -> str:
    """An object's name for a header: controls and runs of blanks made one space, ``;``
    (the list separator there) a comma."""
    name = CONTROLS.sub(" ", obj.name or f"part {obj.path}")
    return " ".join(name.split()).replace(";", ",")
