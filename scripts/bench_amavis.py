"""The amavisd-new peer of ``scripts/bench --unique``: Debian's amavisd-new with a clamd of its
own (the project's signature database), and with SpamAssassin's stock rules for the full run,
relaying to the same sink and fed the same unique mail by the same client.

amavisd-new is a content filter that answers the end of DATA only after the next hop accepted
the message, so the client's rate is the delivered rate. It runs as Debian's ``amavis`` user on
a private configuration (``amavisd -c FILE foreground``): two child processes (the package's
default, and the machine's cores), no Berkeley DB cache, no quarantine, no network tests, and a
virus discarded as the package does. Installed by ``apt-get install amavisd-new spamassassin``
(not by ``scripts/setup``: a peer is measured where it is installed, and skipped otherwise).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import bench_unique

from mailgate.scan.av import clamd

AMAVISD = Path("/usr/sbin/amavisd")
ROOT = Path(__file__).resolve().parent.parent
SIGNATURES = ROOT / "mailgate" / "data" / "avdb"
USER = "amavis"
# SpamAssassin in-process costs amavisd-new a hundred milliseconds or more per message here:
# a few hundred messages are enough for its rate.
SPAM_MESSAGES = 300


def _config(home: Path, port: int, sink_port: int, clamd_socket: Path, spam: bool) -> str:
    """amavisd.conf; ``home`` is amavis's own directory (the configuration's must not be)."""
    spam_lines = (
        "$sa_tag_level_deflt = -999;\n$sa_tag2_level_deflt = 5.0;\n$sa_kill_level_deflt = 999;\n"
        "$sa_local_tests_only = 1;\n$sa_mail_body_size_limit = 400*1024;\n"
        if spam
        else "@bypass_spam_checks_maps = (1);\n"
    )
    return (
        "use strict;\n"
        f"$MYHOME = '{home}';\n$TEMPBASE = '{home}/tmp';\n$db_home = '{home}/db';\n"
        f"$pid_file = '{home}/amavisd.pid';\n$lock_file = '{home}/amavisd.lock';\n"
        f"$daemon_user = '{USER}';\n$daemon_group = '{USER}';\n"
        "$mydomain = 'bench.example';\n$myhostname = 'amavis.bench.example';\n"
        "$max_servers = 2;\n$child_timeout = 600;\n"
        f"$inet_socket_bind = '127.0.0.1';\n$inet_socket_port = {port};\n"
        "@inet_acl = qw(127.0.0.1);\n"
        f"$forward_method = 'smtp:[127.0.0.1]:{sink_port}';\n$notify_method = $forward_method;\n"
        f"$DO_SYSLOG = 0;\n$LOGFILE = '{home}/amavis.log';\n$log_level = 0;\n"
        "$enable_db = 0;\n$enable_global_cache = 0;\n$enable_dkim_verification = 0;\n"
        "$QUARANTINEDIR = undef;\n$virus_quarantine_method = undef;\n"
        "$spam_quarantine_method = undef;\n$banned_filename_re = undef;\n"
        "@local_domains_maps = (['.']);\n"
        "$final_virus_destiny = D_DISCARD;\n$final_spam_destiny = D_PASS;\n"
        "$final_banned_destiny = D_PASS;\n$final_bad_header_destiny = D_PASS;\n"
        "$warnvirussender = 0;\n$warnvirusrecip = 0;\n$virus_admin = undef;\n"
        + spam_lines
        + "@av_scanners = (['ClamAV-clamd', \\&ask_daemon, "
        f'["CONTSCAN {{}}\\n", "{clamd_socket}"], '
        "qr/\\bOK$/m, qr/\\bFOUND$/m, qr/^.*?: (?!Infected Archive)(.*) FOUND$/m ]);\n"
        "@av_scanners_backup = ();\n1;\n"
    )


@contextlib.contextmanager
def _amavisd(port: int, sink_port: int, clamd_socket: Path, spam: bool):
    account = pwd.getpwnam(USER)
    top = Path(tempfile.mkdtemp(prefix="bench-amavis-"))
    try:
        top.chmod(0o755)
        home = top / "home"  # amavisd refuses a configuration in a directory it may write
        for path in (home, home / "tmp", home / "db"):
            path.mkdir()
            os.chown(path, account.pw_uid, account.pw_gid)
        conf = top / "amavisd.conf"
        conf.write_text(_config(home, port, sink_port, clamd_socket, spam))
        with open(top / "stdout.log", "wb") as log:
            process = subprocess.Popen(
                [str(AMAVISD), "-c", str(conf), "foreground"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield home
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def amavis_rates(port: int, sink_port: int, messages: list[bytes], sessions: int, wait_port):
    """``{"av": rate, "full": rate}`` as text (msg/s, or why there is none): amavisd-new + clamd,
    then amavisd-new + clamd + SpamAssassin (on the first ``SPAM_MESSAGES`` messages)."""
    if not AMAVISD.exists():
        return {"av": "not installed", "full": "not installed"}
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return {"av": f"no user {USER}", "full": f"no user {USER}"}
    try:
        return _rates(port, sink_port, messages, sessions, wait_port)
    except (OSError, RuntimeError) as exc:  # not root (chown), clamd would not start...
        return {"av": f"could not start ({exc})", "full": f"could not start ({exc})"}


def _rates(port: int, sink_port: int, messages: list[bytes], sessions: int, wait_port):
    rates = {}
    with clamd.temporary(SIGNATURES) as socket_path:
        # clamd's private directory and socket are its starter's (root's): amavis may connect
        socket_path.parent.chmod(0o711)
        socket_path.chmod(0o666)
        for mode, spam, batch in (
            ("av", False, messages),
            ("full", True, messages[:SPAM_MESSAGES]),
        ):
            with _amavisd(port, sink_port, socket_path, spam) as home:
                try:
                    wait_port(port, 120.0)
                except SystemExit:  # bench.wait_port gives up that way
                    log = home / "amavis.log"
                    said = log.read_text(errors="replace").splitlines() if log.exists() else []
                    rates[mode] = f"did not start ({' / '.join(said[-2:])[-300:]})"
                    continue
                started = time.monotonic()
                try:
                    bench_unique.send(port, batch, sessions)
                except (OSError, RuntimeError) as exc:
                    rates[mode] = f"failed ({exc})"
                    continue
                rate = len(batch) / (time.monotonic() - started)
                rates[mode] = f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"
    return rates
