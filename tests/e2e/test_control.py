"""Control files: dropping reload, flush, pause, resume or stop into spool/control/."""

from __future__ import annotations

from support import RawSession, make_message, wait_for


def drop(gw, name: str) -> None:
    (gw.spool / "control" / name).write_text("")
    wait_for(lambda: not (gw.spool / "control" / name).exists(), what=f"{name} taken")


def test_pause_resume_flush_reload_and_stop(make_gateway, sink):
    gw = make_gateway().start()
    drop(gw, "pause")
    with RawSession(gw.port) as s:
        assert s.banner == "421 4.3.2 Service paused, try again later"
    drop(gw, "resume")
    with RawSession(gw.port) as s:
        assert s.banner.startswith("220")

    sink.data_replies["*"] = ["451 4.3.0 try later"]
    gw.send(make_message("flush@test"))
    wait_for(lambda: gw.entries("deferred"), what="the deferral")  # next try in a minute
    drop(gw, "flush")
    assert sink.wait_count(1)[0].message_id == "<flush@test>"
    assert "event='flushed'" in gw.log()

    drop(gw, "reload")
    wait_for(lambda: "config_reloaded" in gw.log(), what="the reload")
    drop(gw, "nonsense")
    wait_for(lambda: "control_unknown" in gw.log(), what="the warning")
    drop(gw, "stop")
    assert gw.process.wait(60) == 0
