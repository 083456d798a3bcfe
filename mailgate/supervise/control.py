"""Requests an administrator drops as files in ``control/`` for ``mailgate run`` to act on.

``reload``, ``flush``, ``pause``, ``resume`` and ``stop``; any other name is logged as unknown
and removed. The action comes first and the file goes after, so once the file is gone the
request has taken effect (a crash in between repeats it, which is harmless for all of them);
``stop`` is removed before the stop, or the next start would stop again at once.
"""

from __future__ import annotations

from collections.abc import Callable

from mailgate.spool import Spool

KNOWN = ("reload", "flush", "pause", "resume", "stop")


def handle(spool: Spool, request: str, reload: Callable[[], None], log) -> bool:
    """Act on one request file, then remove it; True for ``stop``."""
    log.info("control", request=request)
    if request == "stop":
        spool.take_control_request(request)
        return True
    if request == "reload":
        reload()
    elif request == "flush":
        moved = spool.requeue_all_deferred()
        log.info("flushed", messages=len(moved))
    elif request == "pause":
        spool.paused_flag.touch()
    elif request == "resume":
        spool.paused_flag.unlink(missing_ok=True)
    else:
        log.warning("control_unknown", request=request, known=", ".join(KNOWN))
    spool.take_control_request(request)
    return False
